"""SigLIP 2 encoders, backbone, decoder, tokenizers and preprocessors."""

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.image_converter import SigLIP2ImageConverter
from keras_siglip2.models.locca_decoder import LocCaDecoder
from keras_siglip2.models.preprocessor import SigLIP2Preprocessor
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.tokenizer import SigLIP2Tokenizer
from keras_siglip2.models.tokenizer import SigLIPTokenizer
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder

__all__ = [
    "LocCaDecoder",
    "SigLIP2Backbone",
    "SigLIP2ImageConverter",
    "SigLIP2Preprocessor",
    "SigLIP2TextEncoder",
    "SigLIP2Tokenizer",
    "SigLIP2VisionEncoder",
    "SigLIPTokenizer",
]
