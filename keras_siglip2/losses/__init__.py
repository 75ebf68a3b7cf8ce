"""Losses of the SigLIP 2 recipe (pure math on tensors)."""

from keras_siglip2.losses.sigmoid import SigmoidLoss
from keras_siglip2.losses.sigmoid import sigmoid_loss

__all__ = ["SigmoidLoss", "sigmoid_loss"]
