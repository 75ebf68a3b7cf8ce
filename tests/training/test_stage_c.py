"""Stage C: a fixed-resolution run keeps every loss with an EMA teacher
resized like the student; a NaFlex run halves the batch and doubles the
steps at the longest length, with an exact data position for resume."""

import math

import keras
import numpy as np
import pytest

from keras_siglip2.data.generated import generated_dataset
from keras_siglip2.data.pipeline import batch_sequence_lengths
from keras_siglip2.data.pipeline import split_longest_batches
from keras_siglip2.data.pipeline import training_batches
from keras_siglip2.data.vocabulary import train_demo_sentencepiece
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.resolution import resize_vision_weights
from keras_siglip2.models.resolution import with_image_size
from keras_siglip2.models.resolution import with_patch_size
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.tokenizer import SigLIP2Tokenizer
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder
from keras_siglip2.training import checkpoint as ckpt
from keras_siglip2.training.optimizer import siglip2_optimizer
from keras_siglip2.training.recipe import RecipeConfig
from keras_siglip2.training.recipe import SigLIP2Recipe
from keras_siglip2.training.recipe import naflex_step_sizes
from keras_siglip2.training.recipe import stage_plan
from keras_siglip2.training.stage_b import StageBModel

TEXT_LENGTH = 8


@pytest.fixture(scope="module")
def tokenizer():
    proto = train_demo_sentencepiece(vocab_size=600, num_examples=100)
    return SigLIP2Tokenizer(proto=proto, sequence_length=TEXT_LENGTH)


def _backbone(vocabulary_size, image_size=16, patch_size=4):
    vision = SigLIP2VisionEncoder(
        image_size=image_size,
        patch_size=patch_size,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
    )
    text = SigLIP2TextEncoder(
        vocabulary_size=vocabulary_size,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
        max_sequence_length=TEXT_LENGTH,
    )
    return SigLIP2Backbone(vision, text)


def _examples(start):
    return generated_dataset("train", seed=0, start=start, side_range=(16, 40))


def _as_numpy(dataset):
    return [{k: np.asarray(v) for k, v in b.items()} for b in dataset]


def _recipe(tokenizer, **overrides):
    config = RecipeConfig(
        **{
            "total_examples": 40,
            "batch_size": 4,
            "checkpoint_every": 1,
            "image_size": 16,
            "decoder_length": 12,
            "num_location_bins": 8,
            "num_local_crops": 2,
            "local_crop_size": 8,
            "head_hidden_dim": 8,
            "head_bottleneck_dim": 4,
            "num_prototypes": 8,
            "num_patch_prototypes": 8,
            **overrides,
        }
    )
    backbone = _backbone(tokenizer.vocabulary_size())
    return SigLIP2Recipe(config, backbone, tokenizer, _examples)


def _stage(recipe, name):
    return next(s for s in recipe.plan if s.name == name)


@pytest.mark.parametrize("patch_size", [None, 8])
def test_teacher_encoder_is_resized_like_the_student(patch_size):
    keras.utils.set_random_seed(0)
    backbone = _backbone(32)
    table = backbone.vision_encoder.position_embedding.embeddings
    table.assign(np.random.default_rng(0).normal(size=table.shape))
    if patch_size is None:
        oracle = with_image_size(backbone, 20)
    else:
        oracle = with_patch_size(backbone, patch_size, 24)
    config = oracle.vision_encoder.get_config()
    target = SigLIP2VisionEncoder.from_config({**config, "name": "target"})
    target.build((None, config["image_size"], config["image_size"], 3))
    resize_vision_weights(backbone.vision_encoder, target)
    for expected, got in zip(oracle.vision_encoder.weights, target.weights):
        np.testing.assert_allclose(
            np.asarray(got), np.asarray(expected), atol=1e-6, rtol=1e-6
        )


def test_fixed_resolution_stage_c_keeps_all_losses(tokenizer, tmp_path):
    recipe = _recipe(tokenizer, stage_c_image_size=20)
    b, c = _stage(recipe, "B"), _stage(recipe, "C")
    model = recipe.stage_b_model
    # A Stage B state where the EMA teacher differs from the student.
    rng = np.random.default_rng(1)
    for variable in model.teacher_encoder.weights:
        variable.assign(variable + rng.normal(size=variable.shape) * 0.1)
    model.global_center.assign(rng.normal(size=(8,)))
    model.teacher_initialized.assign(1)
    optimizer = siglip2_optimizer(total_steps=10)
    optimizer.build(model.trainable_variables)
    state = {"step": c.start_step, "stage": "B", "config": recipe.config_json()}
    ckpt.save_checkpoint(tmp_path, model, optimizer, state)
    teacher = SigLIP2Backbone(
        SigLIP2VisionEncoder.from_config(
            {**model.teacher_encoder.get_config(), "name": "vision_encoder"}
        ),
        model.backbone.text_encoder,
    )
    teacher.vision_encoder.set_weights(model.teacher_encoder.get_weights())
    expected_teacher = with_image_size(teacher, 20).vision_encoder
    expected_student = with_image_size(model.backbone, 20).vision_encoder

    state, weights, _ = ckpt.read_checkpoint(ckpt.latest_checkpoint(tmp_path))
    backbone, stage_c = recipe._restore(c, state, weights)
    assert isinstance(stage_c, StageBModel)
    assert stage_c is not model
    assert backbone.vision_encoder.image_size == 20
    assert stage_c.backbone is backbone
    assert int(stage_c.teacher_initialized.numpy()) == 1
    assert int(stage_c.distillation_start_step.numpy()) == b.start_step
    # Momentum and temperature schedules span stages B and C.
    assert stage_c.ema_momentum_steps == c.end_step - b.start_step
    np.testing.assert_array_equal(
        np.asarray(stage_c.global_center), np.asarray(model.global_center)
    )
    for expected, encoder in (
        (expected_teacher, stage_c.teacher_encoder),
        (expected_student, backbone.vision_encoder),
    ):
        for e, g in zip(expected.weights, encoder.weights):
            np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=1e-6)
    for new, old in (
        (stage_c.teacher_global_head, model.teacher_global_head),
        (stage_c.patch_head, model.patch_head),
    ):
        for e, g in zip(old.weights, new.weights):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(e))
    # The Stage C data has the self-distillation views at 20 px.
    batch = next(iter(recipe.stage_batches("C")))
    assert tuple(batch["images"].shape) == (4, 20, 20, 3)
    assert tuple(batch["global_view"].shape) == (4, 20, 20, 3)
    assert tuple(batch["local_crops"].shape) == (4, 2, 8, 8, 3)


def test_naflex_longest_length_becomes_two_half_batch_steps(tokenizer):
    lengths = (8, 16, 32)
    data = training_batches(
        generated_dataset(
            "train", seed=0, num_examples=48, side_range=(16, 40)
        ),
        tokenizer,
        4,
        naflex_patch_size=4,
        sequence_lengths=lengths,
        seed=3,
    )
    batches = _as_numpy(data)
    steps = _as_numpy(split_longest_batches(data, 32))
    drawn = [b["patches"].shape[1] for b in batches]
    assert drawn == list(batch_sequence_lengths(12, lengths, seed=3))
    assert 32 in drawn and drawn != [32] * 12
    expected = []
    for batch, length in zip(batches, drawn):
        if length == 32:
            expected += [
                {k: v[:2] for k, v in batch.items()},
                {k: v[2:] for k, v in batch.items()},
            ]
        else:
            expected.append(batch)
    assert len(steps) == len(expected) == 12 + drawn.count(32)
    for e, g in zip(expected, steps):
        assert e.keys() == g.keys()
        for key in e:
            np.testing.assert_array_equal(g[key], e[key], err_msg=key)
    config = RecipeConfig(
        total_examples=48,
        batch_size=4,
        naflex=True,
        naflex_sequence_lengths=lengths,
        seed=3,
    )
    sizes = naflex_step_sizes(config, 0, len(steps))
    assert list(sizes) == [len(s["token_ids"]) for s in steps]


def test_naflex_plan_stretches_and_counts_the_extra_steps():
    config = RecipeConfig(
        total_examples=1000 * 32,
        batch_size=32,
        checkpoint_every=10,
        naflex=True,
    )
    plan = {s.name: (s.start_step, s.end_step) for s in stage_plan(config)}
    # 100 remaining batches stretched x3.75; each batch of length 1024
    # adds a step; rounded up to whole checkpoint segments.
    drawn = batch_sequence_lengths(375, config.naflex_sequence_lengths, 0, 900)
    extra = int((drawn == 1024).sum())
    assert 50 < extra < 100
    assert plan["C"] == (900, 900 + math.ceil((375 + extra) / 10) * 10)
    halved = RecipeConfig(
        total_examples=1000 * 32,
        batch_size=32,
        checkpoint_every=10,
        naflex=True,
        naflex_half_batch_at_longest=False,
    )
    assert stage_plan(halved)[-1].end_step == 900 + 380


def test_naflex_resume_position_is_exact_mid_split(tokenizer):
    recipe = _recipe(
        tokenizer,
        naflex=True,
        naflex_sequence_lengths=(8, 16),
        total_examples=16,
        naflex_stretch=4.0,
    )
    c = _stage(recipe, "C")
    backbone = recipe._naflex_backbone()
    assert backbone.naflex
    full = _as_numpy(recipe.stage_batches("C").take(c.end_step - c.start_step))
    sizes = [len(b["token_ids"]) for b in full]
    assert 2 in sizes and 4 in sizes
    position = recipe._examples_before(c.start_step)
    for offset, expected in enumerate(full):
        step = c.start_step + offset
        assert recipe._examples_before(step) == position + sum(sizes[:offset])
        resumed = _as_numpy(recipe._dataset(c, step).take(1))[0]
        for key in expected:
            np.testing.assert_array_equal(resumed[key], expected[key])
    # The learning rate follows the stretched cosine to 0 at the end.
    schedule = recipe._schedule()
    assert float(schedule(c.end_step)) == pytest.approx(0.0, abs=1e-9)
    assert float(schedule(c.start_step)) > 0.0
