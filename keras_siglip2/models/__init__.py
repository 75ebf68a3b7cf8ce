"""SigLIP 2 encoders and backbone."""

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder

__all__ = ["SigLIP2Backbone", "SigLIP2TextEncoder", "SigLIP2VisionEncoder"]
