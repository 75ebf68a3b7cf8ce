"""Losses of the SigLIP 2 recipe (pure math on tensors)."""

from keras_siglip2.losses.decoder import decoder_loss
from keras_siglip2.losses.ring import global_sigmoid_loss
from keras_siglip2.losses.ring import ring_sigmoid_loss
from keras_siglip2.losses.sigmoid import SigmoidLoss
from keras_siglip2.losses.sigmoid import sigmoid_loss

__all__ = [
    "SigmoidLoss",
    "decoder_loss",
    "global_sigmoid_loss",
    "ring_sigmoid_loss",
    "sigmoid_loss",
]
