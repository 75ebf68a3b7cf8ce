"""Training stages of the SigLIP 2 recipe."""
