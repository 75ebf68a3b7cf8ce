"""Building blocks of the SigLIP 2 towers."""

from keras_siglip2.layers.attention import MultiHeadAttention
from keras_siglip2.layers.contrastive_logits import ContrastiveLogits
from keras_siglip2.layers.initializers import RowChunkedRandomNormal
from keras_siglip2.layers.interpolation import linear_interpolation_matrix
from keras_siglip2.layers.interpolation import linear_interpolation_weights
from keras_siglip2.layers.interpolation import resize_grid
from keras_siglip2.layers.map_head import MAPHead
from keras_siglip2.layers.mlp import MlpBlock
from keras_siglip2.layers.patch_embedding import PatchEmbedding
from keras_siglip2.layers.patch_embedding import patchify
from keras_siglip2.layers.position_embedding import PositionEmbedding2D
from keras_siglip2.layers.transformer_encoder import TransformerEncoderBlock

__all__ = [
    "ContrastiveLogits",
    "MAPHead",
    "MlpBlock",
    "MultiHeadAttention",
    "PatchEmbedding",
    "PositionEmbedding2D",
    "RowChunkedRandomNormal",
    "TransformerEncoderBlock",
    "linear_interpolation_matrix",
    "linear_interpolation_weights",
    "patchify",
    "resize_grid",
]
