"""Data: generated grounded dataset, real-format readers, NaFlex, LocCa."""

from keras_siglip2.data.generated import GeneratedConfig
from keras_siglip2.data.generated import generated_dataset
from keras_siglip2.data.generated import generated_examples
from keras_siglip2.data.generated import generated_texts
from keras_siglip2.data.generated import zero_shot_class_names
from keras_siglip2.data.naflex import naflex_batches
from keras_siglip2.data.naflex import naflex_preprocess
from keras_siglip2.data.naflex import naflex_preprocess_batch
from keras_siglip2.data.readers import SkipCounter
from keras_siglip2.data.readers import read_jsonl
from keras_siglip2.data.readers import read_tfrecord
from keras_siglip2.data.readers import read_webdataset
from keras_siglip2.data.readers import write_jsonl
from keras_siglip2.data.readers import write_tfrecord
from keras_siglip2.data.readers import write_webdataset
from keras_siglip2.data.vocabulary import train_demo_sentencepiece
from keras_siglip2.data.vocabulary import train_sentencepiece

__all__ = [
    "GeneratedConfig",
    "SkipCounter",
    "generated_dataset",
    "generated_examples",
    "generated_texts",
    "naflex_batches",
    "naflex_preprocess",
    "naflex_preprocess_batch",
    "read_jsonl",
    "read_tfrecord",
    "read_webdataset",
    "train_demo_sentencepiece",
    "train_sentencepiece",
    "write_jsonl",
    "write_tfrecord",
    "write_webdataset",
    "zero_shot_class_names",
]
