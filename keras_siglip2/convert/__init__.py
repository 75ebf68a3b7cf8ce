"""Checkpoint converters."""

from keras_siglip2.convert.hf import load_hf_checkpoint

__all__ = ["load_hf_checkpoint"]
