"""
Title: Distributed SigLIP 2 training with keras.distribution
Author: keras-siglip2 contributors
Description: Data parallelism, FSDP weight sharding and the ring sigmoid
loss on a device mesh, from 8 virtual CPU devices to a TPU pod slice.
Accelerator: None (8 virtual CPU devices); the same script runs on TPU.
"""

# ## Introduction
#
# SigLIP 2 was trained with FSDP on up to 2048 TPU chips at a batch of 32k.
# In Keras 3 (JAX backend) that is a `keras.distribution` set before the
# model is built:
#
# - a **device mesh** with two named axes: `"batch"` (data parallelism:
#   each row of the mesh sees a slice of the global batch) and `"model"`
#   (each large weight, and its optimizer state, is split over the devices
#   of a row; XLA gathers it when it is needed);
# - a **layout map** that says, by a regex on each weight's path, which
#   dimension of the weight is split over `"model"`.
#
# The training step itself does not change: `fit` runs the same
# `compute_loss` on one device or on a thousand. This guide runs on 8
# virtual CPU devices, which XLA creates when the flag below is set before
# JAX starts; on GPUs or TPUs the flag does nothing (it only concerns the
# host CPU platform) and the real devices are used.

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_siglip2 import distribution as siglip2_distribution  # noqa: E402
from keras_siglip2.losses.ring import ring_sigmoid_loss  # noqa: E402
from keras_siglip2.models import SigLIP2Backbone  # noqa: E402
from keras_siglip2.models import SigLIP2TextEncoder  # noqa: E402
from keras_siglip2.models import SigLIP2VisionEncoder  # noqa: E402

devices = keras.distribution.list_devices()
print(f"devices: {len(devices)} ({devices[0]}, ...)")

# ## A tiny model and a batch
#
# The recipe trains So400m at 384 px; here a two-block model on 32 px
# images keeps the guide fast. Weights are created when the model is
# built, and each weight is placed on the mesh at that moment, so **set
# the distribution first, then build the model**.


def build_backbone():
    vision = SigLIP2VisionEncoder(
        image_size=32,
        patch_size=8,
        hidden_dim=32,
        num_layers=2,
        num_heads=2,
        intermediate_dim=64,
    )
    text = SigLIP2TextEncoder(
        vocabulary_size=64,
        hidden_dim=32,
        num_layers=2,
        num_heads=2,
        intermediate_dim=64,
        max_sequence_length=16,
    )
    return SigLIP2Backbone(vision, text)


# The global batch is split over the `"batch"` axis, so it must be a
# multiple of that axis' size.

global_batch_size = 32
rng = np.random.default_rng(0)
batch = {
    "images": rng.uniform(-1, 1, (global_batch_size, 32, 32, 3)).astype(
        "float32"
    ),
    "token_ids": rng.integers(1, 64, (global_batch_size, 16)).astype("int32"),
}

# ## Data parallelism
#
# `configure_distribution("data_parallel")` puts every device on the
# `"batch"` axis (mesh `(8, 1)`): each device holds all weights and an
# eighth of the batch; gradients are averaged across devices by XLA.
# Without a compiled loss, the backbone trains with the sigmoid loss
# (image `i` matches text `i`).

siglip2_distribution.configure_distribution(
    "data_parallel", global_batch_size=global_batch_size
)
keras.utils.set_random_seed(0)
backbone = build_backbone()
backbone.compile(optimizer=keras.optimizers.Adam(1e-3))
history = backbone.fit(batch, batch_size=global_batch_size, verbose=0)
print(f"data_parallel (8, 1): loss {history.history['loss'][0]:.4f}")

# ## FSDP: sharding the weights
#
# For models that do not fit in one device's memory, split the weights.
# With mesh `(2, 4)`, two groups of four devices each hold half of the
# batch, and within a group every large weight is split four ways. The
# layout map comes from `LAYOUT_RULES`: one rule per kind of weight
# (attention, MLP, embeddings, heads, and the small weights that are
# replicated).

for pattern, axes in siglip2_distribution.LAYOUT_RULES:
    print(f"  {pattern:40s} -> {axes}")

distribution = siglip2_distribution.configure_distribution(
    "fsdp", mesh_shape=(2, 4), global_batch_size=global_batch_size
)
keras.utils.set_random_seed(0)
backbone = build_backbone()

# Keras silently replicates a weight that no rule matches; at 400M
# parameters that is an out-of-memory error waiting to happen.
# `validate_layout_map` checks every weight against the map instead.

layout_map = siglip2_distribution.get_layout_map(distribution.device_mesh)
siglip2_distribution.validate_layout_map(backbone, layout_map)

for weight in backbone.weights[:3] + backbone.weights[5:6]:
    value = weight.value
    shard = value.addressable_shards[0].data
    print(
        f"{weight.path}: {tuple(value.shape)} split as "
        f"{value.sharding.spec} -> {tuple(shard.shape)} per device"
    )
total = sum(w.value.nbytes for w in backbone.weights)
per_device = sum(
    w.value.addressable_shards[0].data.nbytes for w in backbone.weights
)
print(f"weight bytes per device: {per_device} of {total}")

backbone.compile(optimizer=keras.optimizers.Adam(1e-3))
history = backbone.fit(batch, batch_size=global_batch_size, verbose=0)
print(f"fsdp (2, 4): loss {history.history['loss'][0]:.4f}")

# The optimizer state (Adam's two moments) is created with each weight's
# layout, so it is split the same way.

# ## Adding your own layers
#
# A new head is covered if its weights follow the library's naming
# (`.../query/kernel`, `.../Dense_0/kernel`, `.../head/kernel`, ...).
# Otherwise the check lists what is missing, and you add rules.

extra = keras.layers.Dense(16, name="my_projection")
extra.build((None, 32))
try:
    siglip2_distribution.validate_layout_map(
        backbone.weights + extra.weights, layout_map
    )
except ValueError as error:
    print(f"unmatched: {error}")
rules = siglip2_distribution.LAYOUT_RULES + (
    (r"(.*/)?my_projection/kernel", ("model", None)),
)
siglip2_distribution.validate_layout_map(
    backbone.weights + extra.weights,
    siglip2_distribution.get_layout_map(distribution.device_mesh, rules),
)
print("my_projection covered")

# ## The ring sigmoid loss
#
# The sigmoid loss compares every image with every text of the *global*
# batch. Computed directly, each device holds a `(B / n, B)` slice of the
# logits: 512 MiB per device at B = 32k on 8 devices, for each of several
# buffers. `ring_sigmoid_loss` takes the embeddings instead: each device
# keeps its images, the text embeddings travel around the ring of devices
# on the `"batch"` axis, and each device only ever holds a
# `(B / n, B / n)` block (see `benchmarks/RESULTS.md`).
#
# It equals the plain loss and its gradients to float32 precision. To train
# with it, return the embeddings from the model and compute the loss in
# `compute_loss`; the rest of `fit` is unchanged. `StageAModel` and
# `StageBModel` (and so the recipe, `RecipeConfig(ring_loss=True)`) do this
# for you with `ring_loss=True`.


class RingSigLIP(keras.Model):
    """The backbone's towers, trained with the ring sigmoid loss."""

    def __init__(self, backbone, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, inputs, training=False):
        return {
            "images": self.backbone.get_vision_embeddings(
                inputs["images"], training=training
            ),
            "texts": self.backbone.get_text_embeddings(
                inputs["token_ids"], training=training
            ),
        }

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        logits = self.backbone.contrastive_logits
        # Uses the mesh and batch axis of the current keras.distribution.
        return ring_sigmoid_loss(
            y_pred["images"],
            y_pred["texts"],
            logits.logit_scale,
            logits.logit_bias,
        )


model = RingSigLIP(backbone)
model.compile(optimizer=keras.optimizers.Adam(1e-3))
history = model.fit(batch, batch_size=global_batch_size, verbose=0)
print(f"fsdp (2, 4) with the ring loss: loss {history.history['loss'][0]:.4f}")
keras.distribution.set_distribution(None)

# ## Mixed precision
#
# `keras.mixed_precision.set_dtype_policy("mixed_bfloat16")` (or
# `dtype="mixed_bfloat16"` on the towers and backbone) computes in
# bfloat16 and keeps float32 weights. The logits layer and both losses
# compute in float32: with a bias of -10, bfloat16 logits would be
# rounded to steps of 0.06.

# ## On a TPU pod slice
#
# The same script scales out with three changes:
#
# 1. Drop the virtual-device flag and start JAX on every host: run the
#    script on all workers at once (for example `gcloud compute tpus
#    tpu-vm ssh NAME --worker=all --command="python train.py"`) and call
#    `keras.distribution.initialize()` before anything else touches JAX.
#    `keras.distribution.list_devices()` then returns every chip of the
#    slice (256 on a v5e-256), not just the host's.
# 2. Choose the mesh for the slice: `mesh_shape=(batch, model)` with
#    `batch * model` = number of chips. The `"model"` axis trades weight
#    memory for communication; keep it within fast interconnect (for
#    example `(16, 16)` on 256 chips, or `(1, 256)` for full FSDP of a
#    g-sized model). Every SigLIP 2 width splits up to 128 ways
#    (`validate_layout_map` tells you when a shape does not).
# 3. Feed each host its share of the global batch: pass a `tf.data`
#    dataset to `fit` and Keras shards it across hosts
#    (`distribution.distribute_dataset`; set `auto_shard_dataset=False`
#    if your input pipeline already reads a per-host shard). At batch 32k
#    on 256 chips each host (4 chips) loads 512 examples per step.
#
# The ring loss then passes text embeddings between neighbouring chips of
# the `"batch"` axis with collective permutes, which the TPU torus
# serves directly.
