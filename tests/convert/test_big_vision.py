"""big_vision `.npz` checkpoints: a numpy oracle, round trips, bad input.

The `.npz` files are built here from big_vision's parameter names and
shapes (`two_towers` with a `vit`/`naflex_vit` image tower and a
`text_transformer` text tower) with random values, and a numpy forward
pass written from the model definition is the reference.
"""

import zipfile

import numpy as np
import pytest

from keras_siglip2.convert.big_vision import assign_big_vision_params
from keras_siglip2.convert.big_vision import backbone_from_big_vision_params
from keras_siglip2.convert.big_vision import big_vision_weight_entries
from keras_siglip2.convert.big_vision import load_big_vision_npz
from keras_siglip2.convert.big_vision import read_big_vision_npz
from keras_siglip2.convert.big_vision import save_big_vision_npz

TOLERANCE = 1e-5
EPS = 1e-6

VISION = dict(width=12, depth=2, heads=3, mlp=20, patch=4, grid=3)
TEXT = dict(vocab=29, width=8, depth=2, heads=2, mlp=12, length=6, proj=12)


# --- Building checkpoints ---------------------------------------------------


def _block_shapes(width, heads, mlp):
    head_dim = width // heads
    shapes = {}
    for ln in ("LayerNorm_0", "LayerNorm_1"):
        shapes[f"{ln}/scale"] = (width,)
        shapes[f"{ln}/bias"] = (width,)
    shapes.update(_attention_shapes(width, heads, head_dim))
    shapes.update(_mlp_shapes(width, mlp))
    return shapes


def _attention_shapes(width, heads, head_dim, prefix=""):
    attention = f"{prefix}MultiHeadDotProductAttention_0"
    shapes = {}
    for name in ("query", "key", "value"):
        shapes[f"{attention}/{name}/kernel"] = (width, heads, head_dim)
        shapes[f"{attention}/{name}/bias"] = (heads, head_dim)
    shapes[f"{attention}/out/kernel"] = (heads, head_dim, width)
    shapes[f"{attention}/out/bias"] = (width,)
    return shapes


def _mlp_shapes(width, mlp, prefix=""):
    return {
        f"{prefix}MlpBlock_0/Dense_0/kernel": (width, mlp),
        f"{prefix}MlpBlock_0/Dense_0/bias": (mlp,),
        f"{prefix}MlpBlock_0/Dense_1/kernel": (mlp, width),
        f"{prefix}MlpBlock_0/Dense_1/bias": (width,),
    }


def _shapes(naflex):
    v, t = VISION, TEXT
    d, p, g = v["width"], v["patch"], v["grid"]
    shapes = {
        "img/embedding/kernel": (p * p * 3, d) if naflex else (p, p, 3, d),
        "img/embedding/bias": (d,),
        "img/pos_embedding": (g, g, d) if naflex else (1, g * g, d),
        "img/Transformer/encoder_norm/scale": (d,),
        "img/Transformer/encoder_norm/bias": (d,),
        "img/MAPHead_0/probe": (1, 1, d),
        "img/MAPHead_0/LayerNorm_0/scale": (d,),
        "img/MAPHead_0/LayerNorm_0/bias": (d,),
        "txt/Embed_0/embedding": (t["vocab"], t["width"]),
        "txt/pos_embedding": (1, t["length"], t["width"]),
        "txt/Encoder_0/encoder_norm/scale": (t["width"],),
        "txt/Encoder_0/encoder_norm/bias": (t["width"],),
        "txt/head/kernel": (t["width"], t["proj"]),
        "txt/head/bias": (t["proj"],),
        "t": (1,),
        "b": (1,),
    }
    head = "img/MAPHead_0/"
    shapes.update(_attention_shapes(d, v["heads"], d // v["heads"], head))
    shapes.update(_mlp_shapes(d, v["mlp"], head))
    for i in range(v["depth"]):
        for name, shape in _block_shapes(d, v["heads"], v["mlp"]).items():
            shapes[f"img/Transformer/encoderblock_{i}/{name}"] = shape
    for i in range(t["depth"]):
        block = _block_shapes(t["width"], t["heads"], t["mlp"])
        for name, shape in block.items():
            shapes[f"txt/Encoder_0/encoderblock_{i}/{name}"] = shape
    return shapes


def _random_params(naflex, seed=0):
    rng = np.random.default_rng(seed)
    params = {}
    for key, shape in _shapes(naflex).items():
        scale = 1.0 if key in ("t", "b") or key.endswith("scale") else 0.4
        center = 1.0 if key.endswith("/scale") else 0.0
        params[key] = rng.normal(center, scale, shape).astype("float32")
    return params


def _scan(params):
    """Stacks `encoderblock_i/...` arrays into `encoderblock/...`."""
    out = {}
    for key, array in params.items():
        if "/encoderblock_" not in key:
            out[key] = array
            continue
        tower, rest = key.split("/encoderblock_")
        index, name = rest.split("/", 1)
        out.setdefault(f"{tower}/encoderblock/{name}", {})[int(index)] = array
    return {
        key: np.stack([v[i] for i in sorted(v)]) if isinstance(v, dict) else v
        for key, v in out.items()
    }


def _write(path, params, prefix=""):
    np.savez(path, **{prefix + key: value for key, value in params.items()})
    return path


# --- The numpy oracle -------------------------------------------------------


def _layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * p["scale"] + p["bias"]


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _dense(x, p):
    return x @ p["kernel"] + p["bias"]


def _attention(query, kv, p, key_mask=None):
    q = np.einsum("bld,dhk->blhk", query, p["query"]["kernel"])
    k = np.einsum("bld,dhk->blhk", kv, p["key"]["kernel"])
    v = np.einsum("bld,dhk->blhk", kv, p["value"]["kernel"])
    q, k, v = (
        q + p["query"]["bias"],
        k + p["key"]["bias"],
        v + p["value"]["bias"],
    )
    logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    if key_mask is not None:
        logits = np.where(key_mask[:, None, None, :], logits, -1e30)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhqs,bshk->bqhk", weights, v)
    return (
        np.einsum("bqhk,hkd->bqd", out, p["out"]["kernel"]) + p["out"]["bias"]
    )


def _mlp(x, p):
    return _dense(_gelu(_dense(x, p["Dense_0"])), p["Dense_1"])


def _encoder(x, p, depth, key_mask=None):
    for i in range(depth):
        block = p[f"encoderblock_{i}"]
        y = _layer_norm(x, block["LayerNorm_0"])
        x = x + _attention(
            y, y, block["MultiHeadDotProductAttention_0"], key_mask
        )
        x = x + _mlp(_layer_norm(x, block["LayerNorm_1"]), block["MlpBlock_0"])
    return _layer_norm(x, p["encoder_norm"])


def _tree(params):
    tree = {}
    for key, value in params.items():
        node = tree
        *path, leaf = key.split("/")
        for name in path:
            node = node.setdefault(name, {})
        node[leaf] = value.astype("float64")
    return tree


def _map_head(x, p, key_mask=None):
    probe = np.tile(p["probe"], (x.shape[0], 1, 1))
    x = _attention(probe, x, p["MultiHeadDotProductAttention_0"], key_mask)
    x = x + _mlp(_layer_norm(x, p["LayerNorm_0"]), p["MlpBlock_0"])
    return x[:, 0]


def _reference_image(params, images):
    """Fixed resolution: images `(B, S, S, 3)`."""
    img = _tree(params)["img"]
    p, g = VISION["patch"], VISION["grid"]
    x = images[:, : g * p, : g * p].astype("float64")
    x = x.reshape(-1, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(-1, g * g, p * p * 3)
    kernel = img["embedding"]["kernel"].reshape(p * p * 3, -1)
    x = x @ kernel + img["embedding"]["bias"] + img["pos_embedding"]
    x = _encoder(x, img["Transformer"], VISION["depth"])
    return _map_head(x, img["MAPHead_0"])


def _reference_naflex_image(params, patches, mask):
    """NaFlex on full `grid x grid` images, so the table is not resized."""
    img = _tree(params)["img"]
    g = VISION["grid"]
    table = img["pos_embedding"].reshape(g * g, -1)
    posemb = np.zeros(patches.shape[:2] + (table.shape[-1],))
    posemb[:, : g * g] = table
    x = patches.astype("float64") @ img["embedding"]["kernel"]
    x = x + img["embedding"]["bias"] + posemb
    key_mask = mask.astype(bool)
    x = _encoder(x, img["Transformer"], VISION["depth"], key_mask)
    return _map_head(x, img["MAPHead_0"], key_mask)


def _reference_text(params, token_ids):
    txt = _tree(params)["txt"]
    x = txt["Embed_0"]["embedding"][token_ids] + txt["pos_embedding"]
    x = _encoder(x, txt["Encoder_0"], TEXT["depth"])
    return _dense(x[:, -1], txt["head"])


def _reference_logits(params, image_embeddings, text_embeddings):
    def normalize(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    similarity = normalize(image_embeddings) @ normalize(text_embeddings).T
    return similarity * np.exp(params["t"][0]) + params["b"][0]


def _token_ids(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, TEXT["vocab"], (3, TEXT["length"])).astype("int32")


# --- Parity ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixed_checkpoint(tmp_path_factory):
    params = _random_params(naflex=False)
    path = _write(tmp_path_factory.mktemp("bv") / "fixed.npz", params)
    return params, path, load_big_vision_npz(path)


def test_convert_big_vision_fixed_matches_numpy(fixed_checkpoint):
    params, _, backbone = fixed_checkpoint
    assert not backbone.naflex
    assert backbone.vision_encoder.image_size == 12
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (2, 12, 12, 3)).astype("float32")
    token_ids = _token_ids()
    image = _reference_image(params, images)
    text = _reference_text(params, token_ids)
    logits = _reference_logits(params, image, text)
    assert np.std(logits) > 1e-2
    ours_image = backbone.get_vision_embeddings(images)
    ours_text = backbone.get_text_embeddings(token_ids)
    ours = backbone({"images": images, "token_ids": token_ids})
    np.testing.assert_allclose(np.asarray(ours_image), image, atol=TOLERANCE)
    np.testing.assert_allclose(np.asarray(ours_text), text, atol=TOLERANCE)
    np.testing.assert_allclose(np.asarray(ours), logits, atol=TOLERANCE)


def test_convert_big_vision_naflex_matches_numpy(tmp_path):
    params = _random_params(naflex=True, seed=3)
    path = _write(tmp_path / "naflex.npz", params, prefix="params/")
    backbone = load_big_vision_npz(path)
    assert backbone.naflex
    g, p = VISION["grid"], VISION["patch"]
    length = g * g + 4
    rng = np.random.default_rng(2)
    patches = rng.uniform(-1, 1, (2, length, p * p * 3)).astype("float32")
    mask = (np.arange(length)[None] < g * g).repeat(2, 0).astype("int32")
    patches[:, g * g :] = 5.0  # padding must not matter
    inputs = {
        "patches": patches,
        "patch_mask": mask,
        "spatial_shapes": np.full((2, 2), g, "int32"),
    }
    image = _reference_naflex_image(params, patches, mask)
    ours = backbone.get_vision_embeddings(inputs)
    np.testing.assert_allclose(np.asarray(ours), image, atol=TOLERANCE)
    token_ids = _token_ids(1)
    logits = _reference_logits(
        params, image, _reference_text(params, token_ids)
    )
    ours_logits = backbone({**inputs, "token_ids": token_ids})
    np.testing.assert_allclose(np.asarray(ours_logits), logits, atol=TOLERANCE)


def test_convert_big_vision_scanned_and_prefixed(fixed_checkpoint, tmp_path):
    params, _, backbone = fixed_checkpoint
    scanned = _scan(params)
    assert "img/Transformer/encoderblock/LayerNorm_0/scale" in scanned
    path = _write(tmp_path / "scanned.npz", scanned, prefix="params/")
    loaded = load_big_vision_npz(path)
    for a, b in zip(backbone.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_convert_big_vision_legacy_text_posemb(fixed_checkpoint, tmp_path):
    params, _, backbone = fixed_checkpoint
    legacy = dict(params)
    half = params["txt/pos_embedding"] / 2
    legacy["txt/pos_embedding"] = half
    legacy["txt/Encoder_0/pos_embedding"] = params["txt/pos_embedding"] - half
    loaded = load_big_vision_npz(_write(tmp_path / "legacy.npz", legacy))
    np.testing.assert_allclose(
        np.asarray(loaded.text_encoder.position_embedding),
        params["txt/pos_embedding"][0],
        atol=1e-7,
    )


@pytest.mark.parametrize("naflex", [False, True], ids=["fixed", "naflex"])
def test_convert_big_vision_round_trip_is_exact(naflex, tmp_path):
    params = _random_params(naflex=naflex, seed=5)
    backbone = load_big_vision_npz(_write(tmp_path / "a.npz", params))
    save_big_vision_npz(backbone, tmp_path / "b.npz")
    written = read_big_vision_npz(tmp_path / "b.npz")
    assert sorted(written) == sorted(params)
    for key, array in params.items():
        np.testing.assert_array_equal(written[key], array, err_msg=key)
    again = load_big_vision_npz(tmp_path / "b.npz")
    for a, b in zip(backbone.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_convert_big_vision_save_with_prefix(fixed_checkpoint, tmp_path):
    _, _, backbone = fixed_checkpoint
    save_big_vision_npz(backbone, tmp_path / "p.npz", prefix="params/")
    written = read_big_vision_npz(tmp_path / "p.npz")
    assert all(key.startswith("params/") for key in written)
    assert "params/img/MAPHead_0/probe" in written


def test_convert_big_vision_image_size_override(fixed_checkpoint):
    params, path, _ = fixed_checkpoint
    backbone = load_big_vision_npz(path, image_size=14)
    assert backbone.vision_encoder.image_size == 14
    with pytest.raises(ValueError, match="image_size` 16"):
        load_big_vision_npz(path, image_size=16)


def test_convert_big_vision_entries_cover_every_weight(fixed_checkpoint):
    _, _, backbone = fixed_checkpoint
    entries = big_vision_weight_entries(backbone)
    assert len({id(e.variable) for e in entries}) == len(backbone.weights)
    assert {e.key for e in entries} == set(_shapes(naflex=False))


# --- Bad input ---------------------------------------------------------------


def _edited(tmp_path, edit, naflex=False):
    params = _random_params(naflex=naflex)
    edit(params)
    return _write(tmp_path / "edited.npz", params)


def test_convert_big_vision_missing_array_is_named(tmp_path):
    key = "txt/Encoder_0/encoderblock_1/MlpBlock_0/Dense_1/bias"
    path = _edited(tmp_path, lambda p: p.pop(key))
    with pytest.raises(ValueError, match=f"edited.npz.*missing.*{key}"):
        load_big_vision_npz(path)


def test_convert_big_vision_unexpected_array_is_named(tmp_path):
    def edit(params):
        params["img/head/kernel"] = np.zeros((12, 5), "float32")

    with pytest.raises(ValueError, match="unexpected arrays.*img/head/kernel"):
        load_big_vision_npz(_edited(tmp_path, edit))


def test_convert_big_vision_misshaped_array_is_named(tmp_path):
    def edit(params):
        params["txt/head/bias"] = np.zeros((5,), "float32")

    with pytest.raises(ValueError, match=r"txt/head/bias: shape \(5,\)"):
        load_big_vision_npz(_edited(tmp_path, edit))


def test_convert_big_vision_wrong_dtype_is_named(tmp_path):
    def edit(params):
        params["b"] = params["b"].astype("int32")

    with pytest.raises(ValueError, match="b: dtype int32 is not a float"):
        load_big_vision_npz(_edited(tmp_path, edit))


def test_convert_big_vision_truncated_file(tmp_path):
    path = _write(tmp_path / "full.npz", _random_params(naflex=False))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="full.npz: not a readable .npz"):
        load_big_vision_npz(path)


def test_convert_big_vision_corrupt_member(tmp_path):
    path = tmp_path / "corrupt.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("t.npy", b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match=r"corrupt.npz.*array 't'"):
        read_big_vision_npz(path)


def test_convert_big_vision_refuses_pickle(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, t=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"objects.npz.*array 't'"):
        read_big_vision_npz(path)


def test_convert_big_vision_missing_file(tmp_path):
    with pytest.raises(ValueError, match="nowhere.npz: no such"):
        load_big_vision_npz(tmp_path / "nowhere.npz")


def test_convert_big_vision_failed_assign_changes_nothing(fixed_checkpoint):
    params, _, _ = fixed_checkpoint
    backbone = backbone_from_big_vision_params(params)
    before = backbone.get_weights()
    bad = dict(params, t=np.zeros((3,), "float32"))
    with pytest.raises(ValueError, match="t: shape"):
        assign_big_vision_params(backbone, bad)
    for a, b in zip(before, backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
