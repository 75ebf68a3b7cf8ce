"""Checkpoint converters: HF transformers, big_vision `.npz`, keras-hub."""

from keras_siglip2.convert.big_vision import load_big_vision_npz
from keras_siglip2.convert.big_vision import save_big_vision_npz
from keras_siglip2.convert.hf import load_hf_checkpoint
from keras_siglip2.convert.hf import save_hf_checkpoint
from keras_siglip2.convert.hf_processor import save_hf_preprocessor
from keras_siglip2.convert.keras_hub import backbone_from_keras_hub
from keras_siglip2.convert.keras_hub import load_preset
from keras_siglip2.convert.keras_hub import save_keras_hub_preset
from keras_siglip2.convert.keras_hub import to_keras_hub_backbone

__all__ = [
    "backbone_from_keras_hub",
    "load_big_vision_npz",
    "load_hf_checkpoint",
    "load_preset",
    "save_big_vision_npz",
    "save_hf_checkpoint",
    "save_hf_preprocessor",
    "save_keras_hub_preset",
    "to_keras_hub_backbone",
]
