"""`save_hf_checkpoint(..., preprocessor=...)`: HF's processor matches ours.

Oracle: transformers' `AutoProcessor` and `AutoModel` loading what we
write. Token ids must be equal; pixels agree to the resizing differences
`SigLIP2ImageConverter` documents (HF resizes 8-bit images), exactly when
no resize is needed; on such images HF's model on HF's inputs gives our
logits.
"""

import json

import keras
import numpy as np
import pytest
import sentencepiece_fixture as fixture
import torch
import transformers
from tiny_models import tiny_backbone

from keras_siglip2.convert.hf import save_hf_checkpoint
from keras_siglip2.convert.hf_processor import save_hf_preprocessor
from keras_siglip2.models.image_converter import SigLIP2ImageConverter
from keras_siglip2.models.preprocessor import SigLIP2Preprocessor
from keras_siglip2.models.tokenizer import SigLIP2Tokenizer
from keras_siglip2.models.tokenizer import SigLIPTokenizer

STEP = 1.0 / 127.5  # One uint8 step in [-1, 1].
LENGTH = 16


@pytest.fixture(scope="module")
def gemma_proto():
    return fixture.train_gemma_like()


@pytest.fixture(scope="module")
def strings():
    return fixture.oracle_strings(num_random=150, seed=11)


def _backbone(vocabulary_size, naflex):
    backbone = tiny_backbone(vocabulary_size, LENGTH, naflex)
    rng = np.random.default_rng(0)
    for variable in backbone.weights:  # Spread weights so all matter.
        scale = 1.0 if len(variable.shape) == 0 else 0.3
        variable.assign(rng.normal(0, scale, variable.shape))
    return backbone


def _converter(naflex, **kwargs):
    if naflex:
        return SigLIP2ImageConverter(
            naflex=True, patch_size=4, max_num_patches=20, **kwargs
        )
    return SigLIP2ImageConverter(image_size=16, **kwargs)


def _export(tmp_path, proto, naflex, **converter_kwargs):
    tokenizer = SigLIP2Tokenizer(proto=proto, sequence_length=LENGTH)
    preprocessor = SigLIP2Preprocessor(
        tokenizer, _converter(naflex, **converter_kwargs)
    )
    backbone = _backbone(tokenizer.vocabulary_size(), naflex)
    save_hf_checkpoint(backbone, tmp_path, preprocessor=preprocessor)
    processor = transformers.AutoProcessor.from_pretrained(tmp_path)
    return backbone, preprocessor, processor


def _hf_inputs(processor, images, texts):
    # `Siglip2Processor` passes its own NaFlex defaults (256 patches of 16
    # px) to the image processor unless told otherwise.
    naflex = {}
    if type(processor).__name__ == "Siglip2Processor":
        naflex = {"max_num_patches": 20, "patch_size": 4}
    return processor(
        text=texts,
        images=images,
        padding="max_length",
        max_length=LENGTH,
        truncation=True,
        return_tensors="np",
        **naflex,
    )


@pytest.mark.parametrize("naflex", [False, True], ids=["fixed", "naflex"])
def test_hf_processor_gives_our_ids_and_pixels(
    gemma_proto, strings, tmp_path, naflex
):
    _, preprocessor, processor = _export(
        tmp_path,
        gemma_proto,
        naflex,
        **({} if naflex else {"interpolation": "bilinear"}),
    )
    expected_class = "Siglip2Processor" if naflex else "SiglipProcessor"
    assert type(processor).__name__ == expected_class
    assert type(processor.tokenizer).__name__ == "Siglip2Tokenizer"
    ids = processor.tokenizer(
        strings, padding="max_length", max_length=LENGTH, truncation=True
    )["input_ids"]
    ours = np.asarray(preprocessor.tokenizer(strings))
    assert (ours == np.asarray(ids)).all()

    rng = np.random.default_rng(0)
    sizes = [(37, 23), (16, 16), (9, 50), (64, 40)]
    images = [rng.integers(0, 256, s + (3,)).astype("uint8") for s in sizes]
    theirs = _hf_inputs(processor, images, strings[:4])
    inputs = preprocessor({"images": images, "prompts": strings[:4]})
    np.testing.assert_array_equal(inputs["token_ids"], theirs["input_ids"])
    if naflex:
        # The image processor alone reads its sizes from the saved config.
        alone = processor.image_processor(images, return_tensors="np")
        for key in ("pixel_values", "spatial_shapes"):
            np.testing.assert_array_equal(alone[key], theirs[key])
        np.testing.assert_array_equal(
            inputs["spatial_shapes"], theirs["spatial_shapes"]
        )
        np.testing.assert_array_equal(
            inputs["patch_mask"], theirs["pixel_attention_mask"]
        )
        difference = np.abs(inputs["patches"] - theirs["pixel_values"])
        assert difference.max() <= 2 * STEP + 1e-6
    else:
        pixels = np.transpose(theirs["pixel_values"], (0, 2, 3, 1))
        difference = np.abs(np.asarray(inputs["images"]) - pixels)
        assert difference.max() <= STEP * 1.001
    assert difference.mean() <= 0.5 * STEP


@pytest.mark.parametrize("naflex", [False, True], ids=["fixed", "naflex"])
def test_hf_model_on_hf_inputs_gives_our_logits(gemma_proto, tmp_path, naflex):
    """Images that need no resize: identical inputs, so the whole
    pipeline (processor and model) must give our logits."""
    backbone, preprocessor, processor = _export(tmp_path, gemma_proto, naflex)
    model = transformers.AutoModel.from_pretrained(tmp_path).eval()
    rng = np.random.default_rng(1)
    # 16 x 16 fits both the fixed size and a 4 x 4 NaFlex grid (<= 20).
    images = [rng.integers(0, 256, (16, 16, 3)).astype("uint8")] * 2
    images[1] = images[1][::-1].copy()
    texts = ["a red circle", "ein blauer Kreis", "LARGE Green Star"]
    theirs = _hf_inputs(processor, images, texts)
    with torch.no_grad():
        hf = {k: torch.from_numpy(np.asarray(v)) for k, v in theirs.items()}
        expected = model(**hf).logits_per_image.numpy()
    ours = keras.ops.convert_to_numpy(
        backbone(preprocessor({"images": images, "prompts": texts}))
    )
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)


def test_siglip_v1_tokenizer_files(tmp_path, strings):
    tokenizer = SigLIPTokenizer(
        proto=fixture.train_t5_like(), sequence_length=LENGTH
    )
    preprocessor = SigLIP2Preprocessor(tokenizer, _converter(False))
    save_hf_preprocessor(preprocessor, tmp_path)
    assert (tmp_path / "spiece.model").read_bytes() == tokenizer.proto
    processor = transformers.AutoProcessor.from_pretrained(tmp_path)
    assert type(processor.tokenizer).__name__ == "SiglipTokenizer"
    # HF's SiglipTokenizer maps literal special tokens; ours (canonicalised
    # text) does not: a known difference (tests/models/test_tokenizer.py).
    texts = [t for t in strings if "</s>" not in t and "<unk>" not in t]
    ids = processor.tokenizer(
        texts, padding="max_length", max_length=LENGTH, truncation=True
    )["input_ids"]
    assert (np.asarray(tokenizer(texts)) == np.asarray(ids)).all()


def test_image_processor_config_holds_scale_and_filter(tmp_path, gemma_proto):
    converter = SigLIP2ImageConverter(
        image_size=(16, 24), scale=(2 / 255, 1 / 255, 1 / 127.5), offset=0.5
    )
    tokenizer = SigLIP2Tokenizer(proto=gemma_proto, sequence_length=LENGTH)
    save_hf_preprocessor(SigLIP2Preprocessor(tokenizer, converter), tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert config["size"] == {"height": 16, "width": 24}
    assert config["resample"] == 3  # PIL bicubic.
    # (x / 255 - mean) / std == x * scale + offset for every channel.
    x = np.array([0.0, 100.0, 255.0])[:, None]
    mean, std = np.array(config["image_mean"]), np.array(config["image_std"])
    np.testing.assert_allclose(
        (x * config["rescale_factor"] - mean) / std,
        x * np.array([2 / 255, 1 / 255, 1 / 127.5]) + 0.5,
        atol=1e-12,
    )


@pytest.mark.parametrize(
    "tokenizer_kwargs, converter_kwargs, message",
    [
        ({"truncation": "cut"}, {}, "truncation='cut'"),
        ({"parse_special_tokens": False}, {}, "parse_special_tokens=False"),
        ({}, {"antialias": False}, "antialias=False"),
        ({}, {"crop_to_aspect_ratio": True}, "crop_to_aspect_ratio=True"),
        ({}, {"interpolation": "lanczos5"}, "lanczos5"),
        ({}, {"image_size": 20}, r"\(20, 20\) images, the backbone takes 16"),
        ({"sequence_length": LENGTH + 1}, {}, "takes at most 16"),
    ],
)
def test_what_hf_cannot_reproduce_is_refused_before_writing(
    gemma_proto, tmp_path, tokenizer_kwargs, converter_kwargs, message
):
    tokenizer = SigLIP2Tokenizer(
        proto=gemma_proto, **{"sequence_length": LENGTH, **tokenizer_kwargs}
    )
    converter = SigLIP2ImageConverter(**{"image_size": 16, **converter_kwargs})
    backbone = _backbone(tokenizer.vocabulary_size(), naflex=False)
    with pytest.raises(ValueError, match=message):
        save_hf_checkpoint(
            backbone,
            tmp_path / "out",
            preprocessor=SigLIP2Preprocessor(tokenizer, converter),
        )
    assert not (tmp_path / "out").exists()


def test_preprocessor_of_another_backbone_is_refused(gemma_proto, tmp_path):
    tokenizer = SigLIP2Tokenizer(proto=gemma_proto, sequence_length=LENGTH)
    fixed = SigLIP2Preprocessor(tokenizer, _converter(False))
    naflex_backbone = _backbone(tokenizer.vocabulary_size(), naflex=True)
    with pytest.raises(ValueError, match="fixed-resolution, the backbone N"):
        save_hf_checkpoint(naflex_backbone, tmp_path, preprocessor=fixed)
    other_vocabulary = _backbone(tokenizer.vocabulary_size() + 1, False)
    with pytest.raises(ValueError, match="1000 pieces, the text tower 1001"):
        save_hf_checkpoint(other_vocabulary, tmp_path, preprocessor=fixed)
    assert list(tmp_path.iterdir()) == []


def test_convert_to_hf_with_the_processor_of_a_preset(gemma_proto, tmp_path):
    from keras_siglip2.__main__ import convert_checkpoint

    tokenizer = SigLIP2Tokenizer(proto=gemma_proto, sequence_length=LENGTH)
    preprocessor = SigLIP2Preprocessor(tokenizer, _converter(False))
    backbone = _backbone(tokenizer.vocabulary_size(), naflex=False)
    preset = tmp_path / "preset"
    backbone.save_to_preset(str(preset))
    preprocessor.save_to_preset(str(preset))
    with pytest.raises(ValueError, match="for `--to hf`"):
        convert_checkpoint(
            "keras",
            "keras",
            str(preset),
            str(tmp_path / "k"),
            verbose=False,
            processor=str(preset),
        )
    convert_checkpoint(
        "keras",
        "hf",
        str(preset),
        str(tmp_path / "hf"),
        verbose=False,
        processor=str(preset),
    )
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "hf")
    texts = ["A Red Circle", "zwei blaue Kreise"]
    theirs = _hf_inputs(processor, [np.zeros((16, 16, 3), "uint8")], texts)
    np.testing.assert_array_equal(theirs["input_ids"], tokenizer(texts))
