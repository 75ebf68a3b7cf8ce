"""Stage A: sigmoid image-text loss plus the LocCa decoder loss."""

import keras

from keras_siglip2.losses.decoder import decoder_loss
from keras_siglip2.losses.ring import ring_sigmoid_loss
from keras_siglip2.losses.sigmoid import sigmoid_loss
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.locca_decoder import LocCaDecoder

NAFLEX_KEYS = ("patches", "patch_mask", "spatial_shapes")


def vision_inputs(backbone: SigLIP2Backbone, inputs: dict):
    """The vision-encoder input in a batch dict (images or NaFlex dict)."""
    if backbone.naflex:
        return {key: inputs[key] for key in NAFLEX_KEYS}
    return inputs["images"]


@keras.saving.register_keras_serializable(package="keras_siglip2")
class StageAModel(keras.Model):
    """SigLIP 2 Stage A: `sigmoid + decoder_loss_weight * LocCa`.

    The decoder cross-attends to the image tower's unpooled tokens and
    trains on captioning (half in parallel prediction), referring
    expressions and grounded captioning, mixed per batch (see
    `keras_siglip2.data.locca`). The loss is the model's `compute_loss`,
    so Keras' own train step (any backend, distribution, mixed precision,
    gradient accumulation) runs it; each term is reported as a metric.

    With `ring_loss=True` the sigmoid loss is computed by
    `ring_sigmoid_loss` from the pooled embeddings: under the JAX backend
    with a `keras.distribution` whose batch axis spans several devices,
    each device keeps its images and the text embeddings travel around
    the batch axis, so no device holds a `(batch / n, batch)` slice of
    the logits. Loss and gradients are those of the plain loss; on one
    device, without a distribution, and on TensorFlow and PyTorch it is
    the plain loss. `call` then also returns `"image_embeddings"` and
    `"text_embeddings"`; the logits it returns are left out of the
    compiled train step when nothing reads them.

    Inputs are dicts with the backbone inputs (`"images"` or the NaFlex
    keys, `"token_ids"`) and the decoder batch: `"decoder_inputs"`,
    `"decoder_targets"` int `(batch, length)`, `"decoder_loss_weights"`
    float `(batch, length)` and `"parallel"` bool `(batch,)`.

    Args:
        backbone: a `SigLIP2Backbone`.
        decoder: a `LocCaDecoder`.
        decoder_loss_weight: float. Weight of the decoder loss (1.0).
        decoder_chunk_size: int or None. Tokens per chunk of the decoder
            cross-entropy (bounds logits memory); None = unchunked.
        ring_loss: bool. Compute the sigmoid loss around the ring of
            devices of the distribution's batch axis (False).
        **kwargs: `keras.Model` arguments.
    """

    def __init__(
        self,
        backbone: SigLIP2Backbone,
        decoder: LocCaDecoder,
        decoder_loss_weight: float = 1.0,
        decoder_chunk_size: int | None = None,
        ring_loss: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(ring_loss, bool):
            raise TypeError(
                f"`ring_loss` must be a bool; got {ring_loss!r} of type "
                f"{type(ring_loss).__name__}."
            )
        self.backbone = backbone
        self.decoder = decoder
        self.decoder_loss_weight = decoder_loss_weight
        self.decoder_chunk_size = decoder_chunk_size
        self.ring_loss = ring_loss
        if not decoder.built:
            decoder.build((None, decoder.max_sequence_length))
        self.sigmoid_loss_tracker = keras.metrics.Mean(name="sigmoid_loss")
        self.decoder_loss_tracker = keras.metrics.Mean(name="decoder_loss")

    def call(self, inputs, training=False):
        vision = self.backbone.vision_encoder(
            vision_inputs(self.backbone, inputs), training=training
        )
        text = self.backbone.text_encoder(
            inputs["token_ids"], training=training
        )
        logits = self.backbone.contrastive_logits(
            vision["pooled_output"], text["pooled_output"]
        )
        hidden = self.decoder(
            inputs["decoder_inputs"],
            vision["sequence_output"],
            parallel=inputs.get("parallel"),
            image_mask=inputs.get("patch_mask"),
            training=training,
        )
        outputs = {"logits": logits, "decoder_hidden": hidden}
        if self.ring_loss:
            outputs["image_embeddings"] = vision["pooled_output"]
            outputs["text_embeddings"] = text["pooled_output"]
        return outputs

    def build(self, input_shape=None):
        # Both parts are built at construction.
        self.built = True

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        image_text = self._image_text_loss(y_pred)
        captioning = decoder_loss(
            y_pred["decoder_hidden"],
            self.decoder.head.kernel,
            self.decoder.head.bias,
            x["decoder_targets"],
            x["decoder_loss_weights"],
            chunk_size=self.decoder_chunk_size,
        )
        self.sigmoid_loss_tracker.update_state(image_text)
        self.decoder_loss_tracker.update_state(captioning)
        total = image_text + self.decoder_loss_weight * captioning
        for extra in self.losses:
            total = total + keras.ops.cast(extra, total.dtype)
        return total

    def _image_text_loss(self, y_pred):
        if not self.ring_loss:
            return sigmoid_loss(y_pred["logits"])
        logits = self.backbone.contrastive_logits
        return ring_sigmoid_loss(
            y_pred["image_embeddings"],
            y_pred["text_embeddings"],
            logits.logit_scale,
            logits.logit_bias,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.layers.serialize(self.backbone),
                "decoder": keras.layers.serialize(self.decoder),
                "decoder_loss_weight": self.decoder_loss_weight,
                "decoder_chunk_size": self.decoder_chunk_size,
                "ring_loss": self.ring_loss,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        config["decoder"] = keras.layers.deserialize(config["decoder"])
        return cls(**config)
