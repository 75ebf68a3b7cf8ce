"""A tiny random keras-hub `SigLIPBackbone`, shared by the preset tests."""

import keras_hub


def tiny_keras_hub_siglip(
    image_size: int, vocabulary_size: int, length: int
) -> keras_hub.models.SigLIPBackbone:
    """A width-8, one-layer keras-hub SigLIP backbone (patch 4).

    Args:
        image_size: int. Square input side in pixels.
        vocabulary_size: int. Text vocabulary.
        length: int. The text tower's `max_sequence_length`.
    """
    vision = keras_hub.models.SigLIPVisionEncoder(
        patch_size=4,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=8,
        image_shape=(image_size, image_size, 3),
    )
    text = keras_hub.models.SigLIPTextEncoder(
        vocabulary_size=vocabulary_size,
        embedding_dim=8,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=8,
        max_sequence_length=length,
        projection_dim=8,
    )
    return keras_hub.models.SigLIPBackbone(vision, text)
