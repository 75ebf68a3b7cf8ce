"""The tiny random-init backbone that many tests share."""

import keras

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder


def tiny_backbone(
    vocabulary_size: int,
    max_sequence_length: int,
    naflex: bool = False,
    seed: int = 0,
) -> SigLIP2Backbone:
    """16-px images in 4-px patches, width 16, one layer per tower.

    Seeds Keras (`keras.utils.set_random_seed(seed)`) first, so the same
    arguments give the same weights.
    """
    keras.utils.set_random_seed(seed)
    return SigLIP2Backbone(
        SigLIP2VisionEncoder(
            image_size=16,
            patch_size=4,
            hidden_dim=16,
            num_layers=1,
            num_heads=2,
            intermediate_dim=32,
        ),
        SigLIP2TextEncoder(
            vocabulary_size=vocabulary_size,
            hidden_dim=16,
            num_layers=1,
            num_heads=2,
            intermediate_dim=32,
            max_sequence_length=max_sequence_length,
        ),
        naflex=naflex,
    )
