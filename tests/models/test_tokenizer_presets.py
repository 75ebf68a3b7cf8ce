"""`SigLIP2Tokenizer.from_preset`/`SigLIPTokenizer.from_preset`.

keras-hub presets are written here by keras-hub's own `save_to_preset`
(`GemmaTokenizer` for SigLIP 2, `SigLIPTokenizer` and
`SigLIPPreprocessor` for SigLIP, `SigLIPBackbone` for the text length),
around SentencePiece models trained at test time. Oracles: HF's
`Siglip2Tokenizer`/`SiglipTokenizer` built from the same model file, and
keras-hub's own tokenizer and preprocessor run on the same preset. Preset
names go through keras-hub's `get_file`, replaced here by a local copy, so
nothing is downloaded. HF checkpoint directories are written by HF's own
`save_pretrained`.
"""

import json
import shutil

import keras
import keras_hub
import numpy as np
import pytest
import sentencepiece_fixture as fixture
import tensorflow as tf
from keras_hub.src.utils import preset_utils
from keras_hub_models import tiny_keras_hub_siglip
from tokenizers import normalizers

from keras_siglip2.models.presets import get_preset
from keras_siglip2.models.tokenizer import SigLIP2Tokenizer
from keras_siglip2.models.tokenizer import SigLIPTokenizer

VOCABULARY = "assets/tokenizer/vocabulary.spm"


@pytest.fixture(scope="module")
def gemma_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma") / "tokenizer.model"
    path.write_bytes(fixture.train_gemma_like())
    return path


@pytest.fixture(scope="module")
def t5_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("t5") / "spiece.model"
    path.write_bytes(fixture.train_t5_like())
    return path


@pytest.fixture(scope="module")
def strings():
    return fixture.oracle_strings(num_random=200, seed=3)


@pytest.fixture(scope="module")
def gemma_preset(tmp_path_factory, gemma_file):
    """A keras-hub SigLIP 2 preset's tokenizer: `GemmaTokenizer`."""
    path = tmp_path_factory.mktemp("keras_hub_siglip2")
    keras_hub.tokenizers.GemmaTokenizer(
        proto=gemma_file.read_bytes()
    ).save_to_preset(str(path))
    return path


@pytest.fixture(scope="module")
def siglip_preset(tmp_path_factory, t5_file):
    """A keras-hub SigLIP preprocessor preset (tokenizer `add_eos=True`,
    as keras-hub's SigLIP presets)."""
    path = tmp_path_factory.mktemp("keras_hub_siglip")
    tokenizer = keras_hub.tokenizers.SigLIPTokenizer(
        proto=t5_file.read_bytes(), add_eos=True
    )
    preprocessor = keras_hub.models.SigLIPPreprocessor(
        tokenizer, sequence_length=16
    )
    preprocessor.save_to_preset(str(path))
    return path, preprocessor


def _rows_equal(actual, expected, texts):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    bad = np.flatnonzero(np.any(actual != expected, axis=-1))
    assert bad.size == 0, (
        f"{bad.size} of {len(texts)} rows differ; first: {texts[bad[0]]!r}\n"
        f"ours     {actual[bad[0]].tolist()}\n"
        f"expected {expected[bad[0]].tolist()}"
    )


def _tf_data_ids(tokenizer, texts):
    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(64)
    return np.concatenate([b.numpy() for b in dataset.map(tokenizer)])


def _keras_hub_siglip2_ids(preset, texts, length=64):
    """keras-hub's Gemma tokenizer in the SigLIP 2 pipeline: HF's
    lower-casing, no BOS, EOS kept on truncation, `<pad>` (0) padding."""
    # keras-hub's `KerasPresetLoader.load_tokenizer`, without the
    # `config.json` its `from_preset` asks for.
    config = json.loads((preset / "tokenizer.json").read_text())
    tokenizer = keras.saving.deserialize_keras_object(config)
    assert isinstance(tokenizer, keras_hub.tokenizers.GemmaTokenizer)
    tokenizer.load_preset_assets(str(preset))
    lower = normalizers.Lowercase()
    rows = []
    for text in texts:
        ids = np.asarray(tokenizer(lower.normalize_str(text))).tolist()
        ids = ids[: length - 1] + [tokenizer.end_token_id]
        rows.append(ids + [tokenizer.pad_token_id] * (length - len(ids)))
    return np.asarray(rows)


# --- keras-hub presets --------------------------------------------------------


def test_keras_hub_siglip2_preset_matches_hf(gemma_preset, gemma_file, strings):
    tokenizer = SigLIP2Tokenizer.from_preset(str(gemma_preset))
    assert isinstance(tokenizer, SigLIP2Tokenizer)
    assert tokenizer.sequence_length == 64 and tokenizer.lowercase
    assert tokenizer.truncation == "sticky"
    hf = fixture.hf_siglip2_tokenizer(str(gemma_file.parent))
    expected = np.asarray(fixture.hf_ids(hf, strings))
    assert (expected[:, -1] == 1).sum() >= 10  # truncated rows keep EOS
    _rows_equal(tokenizer(strings), expected, strings)
    _rows_equal(_tf_data_ids(tokenizer, strings), expected, strings)


def test_keras_hub_siglip2_preset_matches_keras_hub_tokenizer(
    gemma_preset, strings
):
    # keras-hub's SentencePiece tokenizes literal `<eos>` as text.
    tokenizer = SigLIP2Tokenizer.from_preset(
        gemma_preset, parse_special_tokens=False
    )
    expected = _keras_hub_siglip2_ids(gemma_preset, strings)
    _rows_equal(tokenizer(strings), expected, strings)


def test_keras_hub_siglip_preprocessor_preset(siglip_preset, t5_file, strings):
    path, keras_hub_preprocessor = siglip_preset
    tokenizer = SigLIPTokenizer.from_preset(str(path))
    assert isinstance(tokenizer, SigLIPTokenizer)
    assert tokenizer.sequence_length == 16 and tokenizer.canonicalize
    texts = [t for t in strings if "</s>" not in t and "<unk>" not in t]
    hf = fixture.hf_siglip_tokenizer(str(t5_file))
    _rows_equal(tokenizer(texts), fixture.hf_ids(hf, texts, 16), texts)
    # keras-hub's own pipeline lower-cases with ICU and collapses RE2's
    # `\s` (no `\v` or `\x1c`-`\x1f`, which Python's `\s`, and so HF's
    # and ours, include): compare on printable ASCII.
    ascii_texts = [
        t
        for t in texts
        if all(c.isascii() and (c.isprintable() or c in "\t\n\r") for c in t)
    ]
    assert len(ascii_texts) >= 50
    theirs = keras_hub_preprocessor(
        {"prompts": ascii_texts, "images": np.zeros((1, 4, 4, 3))}
    )["token_ids"]
    _rows_equal(tokenizer(ascii_texts), theirs, ascii_texts)


def test_v1_and_v2_from_either_class(gemma_preset, siglip_preset):
    v1_dir = siglip_preset[0]
    assert isinstance(SigLIP2Tokenizer.from_preset(v1_dir), SigLIPTokenizer)
    v2 = SigLIPTokenizer.from_preset(gemma_preset)
    assert isinstance(v2, SigLIP2Tokenizer)


def test_keras_hub_backbone_sets_the_length(tmp_path, t5_file, strings):
    """Backbone + tokenizer presets (no preprocessor): the text tower's
    `max_sequence_length`, which keras-hub's model requires exactly."""
    tiny_keras_hub_siglip(8, 800, 12).save_to_preset(str(tmp_path))
    keras_hub.tokenizers.SigLIPTokenizer(
        proto=t5_file.read_bytes(), add_eos=True
    ).save_to_preset(str(tmp_path))
    tokenizer = SigLIPTokenizer.from_preset(tmp_path)
    assert tokenizer.sequence_length == 12
    texts = [t for t in strings if "</s>" not in t and "<unk>" not in t][:80]
    hf = fixture.hf_siglip_tokenizer(str(t5_file))
    _rows_equal(tokenizer(texts), fixture.hf_ids(hf, texts, 12), texts)
    # Disagreeing lengths are refused.
    config = json.loads((tmp_path / "config.json").read_text())
    config["config"]["text_encoder"]["config"]["max_sequence_length"] = 13
    (tmp_path / "config.json").write_text(json.dumps(config))
    keras_hub.models.SigLIPPreprocessor(
        tokenizer=keras_hub.tokenizers.SigLIPTokenizer(
            proto=t5_file.read_bytes()
        ),
        sequence_length=12,
    ).save_to_preset(str(tmp_path))
    with pytest.raises(ValueError, match="sequence lengths disagree"):
        SigLIPTokenizer.from_preset(tmp_path)


# --- Ours ---------------------------------------------------------------------


@pytest.mark.parametrize("family", ["siglip2", "siglip"])
def test_our_save_to_preset_round_trips(
    family, gemma_file, t5_file, strings, tmp_path
):
    if family == "siglip2":
        tokenizer = SigLIP2Tokenizer(
            proto=gemma_file.read_bytes(),
            sequence_length=20,
            truncation="cut",
            parse_special_tokens=False,
        )
    else:
        tokenizer = SigLIPTokenizer(
            proto=t5_file.read_bytes(), sequence_length=10, canonicalize=False
        )
    tokenizer.save_to_preset(str(tmp_path))
    restored = type(tokenizer).from_preset(str(tmp_path))
    assert type(restored) is type(tokenizer)
    assert restored.get_config() == tokenizer.get_config()
    _rows_equal(restored(strings), tokenizer(strings), strings)
    override = type(tokenizer).from_preset(tmp_path, sequence_length=7)
    assert override(strings).shape == (len(strings), 7)


# --- Preset names -------------------------------------------------------------


@pytest.fixture
def served(monkeypatch):
    """Serves handles from local directories through keras-hub's
    `get_file`, recording the requests."""
    sources, requests = {}, []

    def get_file(handle, path):
        requests.append((handle, path))
        if handle not in sources:
            raise AssertionError(f"unexpected download of {handle}")
        local = sources[handle] / path
        if not local.is_file():
            raise FileNotFoundError(f"`{path}` doesn't exist in {handle}.")
        return str(local)

    monkeypatch.setattr(preset_utils, "get_file", get_file)
    return sources, requests


@pytest.mark.parametrize(
    "name, expected_cls",
    [
        ("siglip2_so400m_patch16_256", SigLIP2Tokenizer),
        ("siglip_base_patch16_224", SigLIPTokenizer),
    ],
)
def test_preset_name_downloads_through_keras_hub(
    name, expected_cls, served, gemma_preset, siglip_preset
):
    sources, requests = served
    handle = get_preset(name).kaggle_handle
    sources[handle] = (
        gemma_preset if expected_cls is SigLIP2Tokenizer else siglip_preset[0]
    )
    tokenizer = SigLIP2Tokenizer.from_preset(name)
    assert type(tokenizer) is expected_cls
    local = SigLIP2Tokenizer.from_preset(sources[handle])
    _rows_equal(tokenizer(["A photo."]), local(["A photo."]), ["A photo."])
    assert {h for h, _ in requests} == {handle}
    assert {p for _, p in requests} <= {
        "tokenizer.json",
        VOCABULARY,
        "preprocessor.json",
        "config.json",
    }


def test_handle_with_missing_vocabulary_names_it(
    served, tmp_path, gemma_preset
):
    sources, _ = served
    shutil.copy(gemma_preset / "tokenizer.json", tmp_path / "tokenizer.json")
    sources["kaggle://someone/siglip/keras/mine"] = tmp_path
    with pytest.raises(ValueError, match="no `assets/tokenizer/vocabulary"):
        SigLIP2Tokenizer.from_preset("kaggle://someone/siglip/keras/mine")


def test_unknown_preset_name_lists_close_matches():
    with pytest.raises(ValueError, match="Did you mean: siglip2_base_patch16"):
        SigLIP2Tokenizer.from_preset("siglip2_base_patch16_225")
    with pytest.raises(ValueError, match="no such preset directory"):
        SigLIPTokenizer.from_preset("./no/such/dir")


# --- Bad presets --------------------------------------------------------------


@pytest.fixture
def preset_copy(gemma_preset, tmp_path):
    path = tmp_path / "preset"
    shutil.copytree(gemma_preset, path)
    return path


def test_missing_tokenizer_json(preset_copy):
    (preset_copy / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="no `tokenizer.json`"):
        SigLIP2Tokenizer.from_preset(preset_copy)


def test_missing_vocabulary(preset_copy):
    (preset_copy / VOCABULARY).unlink()
    with pytest.raises(ValueError, match="no `assets/tokenizer/vocabulary"):
        SigLIP2Tokenizer.from_preset(preset_copy)


def test_corrupt_vocabulary_is_named(preset_copy):
    (preset_copy / VOCABULARY).write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match=r"Could not parse.*vocabulary\.spm"):
        SigLIP2Tokenizer.from_preset(preset_copy)


def test_vocabulary_of_the_wrong_family_is_named(preset_copy, t5_file):
    shutil.copy(t5_file, preset_copy / VOCABULARY)
    with pytest.raises(ValueError, match=r"vocabulary\.spm.*special token"):
        SigLIP2Tokenizer.from_preset(preset_copy)


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", r"tokenizer\.json: not valid JSON"),
        ("[1, 2]", r"tokenizer\.json: expected a JSON object"),
        ('{"config": {}}', "not a serialized Keras object"),
        (
            '{"registered_name": "keras_hub>BertTokenizer", "config": {}}',
            "keras_hub>BertTokenizer",
        ),
        (
            '{"registered_name": "keras_siglip2>SigLIP2Tokenizer", '
            '"config": {"sequence_length": -1}}',
            "sequence_length",
        ),
    ],
)
def test_bad_tokenizer_json(preset_copy, content, match):
    (preset_copy / "tokenizer.json").write_text(content)
    with pytest.raises(ValueError, match=match):
        SigLIP2Tokenizer.from_preset(preset_copy)


def test_unreproducible_keras_hub_preprocessor_is_refused(
    siglip_preset, tmp_path
):
    shutil.copytree(siglip_preset[0], tmp_path / "p")
    path = tmp_path / "p" / "preprocessor.json"
    config = json.loads(path.read_text())
    config["config"]["add_start_token"] = True
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="add_start_token"):
        SigLIPTokenizer.from_preset(tmp_path / "p")


# --- HF checkpoints -----------------------------------------------------------


@pytest.mark.parametrize("family", ["siglip2", "siglip"])
def test_hf_checkpoint_directory(
    family, gemma_file, t5_file, strings, tmp_path
):
    """An HF checkpoint directory (config, tokenizer files): the family
    from the SentencePiece file, the length from the text positions."""
    from transformers import Siglip2Config
    from transformers import SiglipConfig

    config_cls = Siglip2Config if family == "siglip2" else SiglipConfig
    config_cls(text_config={"max_position_embeddings": 24}).save_pretrained(
        tmp_path
    )
    if family == "siglip2":
        hf = fixture.hf_siglip2_tokenizer(str(gemma_file.parent))
        # Hub checkpoints ship the SentencePiece model beside HF's files.
        shutil.copy(gemma_file, tmp_path / "tokenizer.model")
        texts, expected_cls = strings, SigLIP2Tokenizer
    else:
        hf = fixture.hf_siglip_tokenizer(str(t5_file))
        texts = [t for t in strings if "</s>" not in t and "<unk>" not in t]
        expected_cls = SigLIPTokenizer
    hf.save_pretrained(tmp_path)
    tokenizer = SigLIP2Tokenizer.from_preset(tmp_path)
    assert type(tokenizer) is expected_cls
    assert tokenizer.sequence_length == 24
    _rows_equal(tokenizer(texts), fixture.hf_ids(hf, texts, 24), texts)
    vocabulary = "tokenizer.model" if family == "siglip2" else "spiece.model"
    (tmp_path / vocabulary).unlink()
    if family == "siglip2":
        # What `save_pretrained` writes on its own: `tokenizer.json` only,
        # converted back to SentencePiece.
        assert (tmp_path / "tokenizer.json").is_file()
        tokenizer = SigLIP2Tokenizer.from_preset(tmp_path)
        assert type(tokenizer) is SigLIP2Tokenizer
        assert tokenizer.sequence_length == 24
        _rows_equal(tokenizer(texts), fixture.hf_ids(hf, texts, 24), texts)
        (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="HF checkpoint without"):
        SigLIP2Tokenizer.from_preset(tmp_path)
