"""Data: NaFlex preprocessing, readers and generated datasets."""
