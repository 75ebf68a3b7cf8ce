"""Evaluation: zero-shot, retrieval, referring expressions, dense probe."""

from keras_siglip2.eval.dense_probe import confusion_matrix
from keras_siglip2.eval.dense_probe import evaluate_dense_probe
from keras_siglip2.eval.dense_probe import fit_linear_probe
from keras_siglip2.eval.dense_probe import mean_iou
from keras_siglip2.eval.dense_probe import patch_labels
from keras_siglip2.eval.dense_probe import per_class_iou
from keras_siglip2.eval.encoders import BackboneEncoder
from keras_siglip2.eval.encoders import as_examples
from keras_siglip2.eval.referring import box_iou
from keras_siglip2.eval.referring import evaluate_referring
from keras_siglip2.eval.referring import referring_accuracy
from keras_siglip2.eval.report import format_table
from keras_siglip2.eval.report import read_json
from keras_siglip2.eval.report import write_json
from keras_siglip2.eval.retrieval import evaluate_retrieval
from keras_siglip2.eval.retrieval import recall_at_k
from keras_siglip2.eval.retrieval import retrieval_ranks
from keras_siglip2.eval.zero_shot import DEFAULT_TEMPLATES
from keras_siglip2.eval.zero_shot import MULTILINGUAL_TEMPLATES
from keras_siglip2.eval.zero_shot import class_embeddings
from keras_siglip2.eval.zero_shot import evaluate_zero_shot
from keras_siglip2.eval.zero_shot import top_k_accuracy

__all__ = [
    "DEFAULT_TEMPLATES",
    "MULTILINGUAL_TEMPLATES",
    "BackboneEncoder",
    "as_examples",
    "box_iou",
    "class_embeddings",
    "confusion_matrix",
    "evaluate_dense_probe",
    "evaluate_referring",
    "evaluate_retrieval",
    "evaluate_zero_shot",
    "fit_linear_probe",
    "format_table",
    "mean_iou",
    "patch_labels",
    "per_class_iou",
    "read_json",
    "recall_at_k",
    "referring_accuracy",
    "retrieval_ranks",
    "top_k_accuracy",
    "write_json",
]
