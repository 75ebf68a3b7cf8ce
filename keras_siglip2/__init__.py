"""keras-siglip2: the SigLIP 2 recipe as a Keras 3 multi-backend library.

JAX is the default backend: when `KERAS_BACKEND` is unset and keras has not
been imported yet, importing this package selects "jax". Set
`KERAS_BACKEND` (or import keras first) to use TensorFlow or PyTorch.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

# ruff: noqa: E402

from keras_siglip2.losses import SigmoidLoss
from keras_siglip2.losses import sigmoid_loss
from keras_siglip2.models import LocCaDecoder
from keras_siglip2.models import SigLIP2Backbone
from keras_siglip2.models import SigLIP2ImageConverter
from keras_siglip2.models import SigLIP2Preprocessor
from keras_siglip2.models import SigLIP2TextEncoder
from keras_siglip2.models import SigLIP2Tokenizer
from keras_siglip2.models import SigLIP2VisionEncoder
from keras_siglip2.models import SigLIPTokenizer

__version__ = "0.1.0"

__all__ = [
    "LocCaDecoder",
    "SigLIP2Backbone",
    "SigLIP2ImageConverter",
    "SigLIP2Preprocessor",
    "SigLIP2TextEncoder",
    "SigLIP2Tokenizer",
    "SigLIP2VisionEncoder",
    "SigLIPTokenizer",
    "SigmoidLoss",
    "sigmoid_loss",
]
