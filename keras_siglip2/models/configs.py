"""Architecture configs of every SigLIP 2 size, patch size and resolution.

Names read `{size}_patch{patch}_{resolution}`, e.g. `so400m_patch14_384`.
Sizes follow the paper and the released checkpoints (width, depth, MLP
width, heads); the g model pairs a g image tower with an So400m text tower
whose head projects to the image width. These are architectures only; no
weights are attached (presets and converters provide weights).
"""

import dataclasses

SIZES = {
    "base": dict(
        hidden_dim=768, num_layers=12, intermediate_dim=3072, num_heads=12
    ),
    "large": dict(
        hidden_dim=1024, num_layers=24, intermediate_dim=4096, num_heads=16
    ),
    "so400m": dict(
        hidden_dim=1152, num_layers=27, intermediate_dim=4304, num_heads=16
    ),
    "giant": dict(
        hidden_dim=1536, num_layers=40, intermediate_dim=6144, num_heads=16
    ),
}
TEXT_SIZE = {"base": "base", "large": "large", "so400m": "so400m"}
TEXT_SIZE["giant"] = "so400m"
SIZE_ALIASES = {"b": "base", "l": "large", "g": "giant"}
PATCH_SIZES = (14, 16, 32)
RESOLUTIONS = (224, 256, 384, 512)
VOCABULARY_SIZE = 256_000
MAX_SEQUENCE_LENGTH = 64


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """Everything needed to build a `SigLIP2Backbone`.

    Attributes:
        vision: keyword arguments of `SigLIP2VisionEncoder`.
        text: keyword arguments of `SigLIP2TextEncoder`.
    """

    vision: dict
    text: dict


def config_names() -> list[str]:
    """Returns every architecture name, e.g. `"base_patch16_224"`."""
    return [
        f"{size}_patch{patch}_{resolution}"
        for size in SIZES
        for patch in PATCH_SIZES
        for resolution in RESOLUTIONS
    ]


def get_config(
    name: str,
    vocabulary_size: int = VOCABULARY_SIZE,
    max_sequence_length: int = MAX_SEQUENCE_LENGTH,
) -> BackboneConfig:
    """Returns the `BackboneConfig` of an architecture name.

    Args:
        name: string like `"so400m_patch14_384"`; the size may also be
            written `b`, `l` or `g`.
        vocabulary_size: int. Text vocabulary (256k Gemma by default; the
            SigLIP v1 English models use 32k).
        max_sequence_length: int. Text length (64).

    Returns:
        A `BackboneConfig`.
    """
    parts = name.lower().split("_")
    try:
        size, patch, resolution = parts
        size = SIZE_ALIASES.get(size, size)
        if not patch.startswith("patch"):
            raise ValueError
        patch_size, image_size = int(patch[5:]), int(resolution)
    except ValueError:
        raise ValueError(
            f"Unknown config name {name!r}; expected "
            "'{size}_patch{patch}_{resolution}', e.g. 'so400m_patch14_384'."
        ) from None
    if (
        size not in SIZES
        or patch_size not in PATCH_SIZES
        or image_size not in RESOLUTIONS
    ):
        raise ValueError(
            f"Unknown config name {name!r}. Sizes: {sorted(SIZES)}, patch "
            f"sizes: {PATCH_SIZES}, resolutions: {RESOLUTIONS}."
        )
    vision = dict(SIZES[size], image_size=image_size, patch_size=patch_size)
    text = dict(
        SIZES[TEXT_SIZE[size]],
        vocabulary_size=vocabulary_size,
        max_sequence_length=max_sequence_length,
        projection_dim=vision["hidden_dim"],
    )
    return BackboneConfig(vision=vision, text=text)
