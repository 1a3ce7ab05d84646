"""coldstart.encoder with the real bundled all-MiniLM-L6-v2 weights (loaded once for the module).

Runs in well under 30 s on 2 CPU cores: one model load, a few small batches, and error paths that
fail before any model is built.
"""

from __future__ import annotations

import numpy as np
import pytest

from coldstart.config import Settings
from coldstart.encoder import (
    BUNDLED_SHA256, EncoderError, TextEncoder, bundled_model_path, get_encoder, weights_sha256,
)


@pytest.fixture(scope="module")
def settings():
    return Settings.load(env={})


@pytest.fixture(scope="module")
def enc(settings):
    return get_encoder(settings)


def test_loads_bundled_model_on_cpu(enc):
    assert enc.dim == 384
    assert enc.device == "cpu"  # CPU torch here; "auto" picks cuda where there is one
    assert enc.pooling == "mean"
    assert enc.max_length == 128
    assert not enc.compiled


def test_get_encoder_cached_per_settings(enc, settings):
    assert get_encoder(settings) is enc
    assert get_encoder(Settings.load(env={})) is enc  # equal settings, same model


def test_bundled_hash_constant():
    assert weights_sha256(bundled_model_path()) == BUNDLED_SHA256


# Reference: sentence-transformers' SentenceTransformer(bundled_model_path()).encode(..., normalize_embeddings=True)
REFERENCE = {
    "A man is eating food.": [0.033241585, 0.004406029, -0.006276987, 0.048378699],
    "中文 文本 😀": [-0.000882755, 0.100273818, 0.049076468, -0.001092612],
    "": [-0.118838459, 0.048298754, -0.002548094, -0.011011152],
}


def test_matches_sentence_transformers(enc):
    vectors = enc.encode(list(REFERENCE))
    np.testing.assert_allclose(vectors[:, :4], np.array(list(REFERENCE.values())), atol=1e-5)


def test_shape_dtype_normalised(enc):
    texts = ["a short one", "a somewhat longer sentence about jazz records and vinyl", "x"]
    v = enc.encode(texts)
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    empty = enc.encode([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32
    with pytest.raises(TypeError):
        enc.encode("not a list")


def test_paraphrases_closer_than_unrelated(enc):
    v = enc.encode([
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
        "Wireless noise-cancelling headphones with 30 hour battery",
        "Bluetooth headset that blocks outside noise, long battery life",
        "Organic fair-trade ground coffee, dark roast",
    ])
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert sim[3, 4] > max(sim[3, 5], sim[4, 5]) + 0.3


def test_deterministic(enc):
    texts = ["same input twice", "another text, longer than the first one by a bit", ""]
    a = enc.encode(texts)
    b = enc.encode(texts)
    assert np.array_equal(a, b)


def test_order_preserved_under_length_sorting(enc):
    rng = np.random.default_rng(0)
    texts = [" ".join(["word"] * int(n)) + f" item {i}" for i, n in enumerate(rng.integers(0, 40, size=24))]
    default_batch = enc.batch_size
    enc.batch_size = 5  # several batches, so the length sort really reorders across them
    try:
        assert len(enc.plan(enc.tokenize(texts))) == 5
        together = enc.encode(texts)
    finally:
        enc.batch_size = default_batch
    alone = np.vstack([enc.encode([t]) for t in texts[:3]])
    np.testing.assert_allclose(together[:3], alone, atol=1e-5)  # row i is texts[i]
    perm = rng.permutation(len(texts))
    shuffled = enc.encode([texts[i] for i in perm])
    np.testing.assert_allclose(shuffled, together[perm], atol=1e-5)


def test_batches_pad_only_to_their_own_longest(enc):
    texts = ["tiny"] * 3 + ["a much longer text " * 10] * 2
    ids = enc.tokenize(texts)
    small = TextEncoder.__new__(TextEncoder)
    small.batch_size = 2
    batches = [[len(ids[i]) for i in rows] for rows in TextEncoder.plan(small, ids)]
    assert batches[0][0] == batches[0][1] > batches[-1][0]
    assert max(batches[-1]) == 3  # "[CLS] tiny [SEP]" is not padded to the long texts


@pytest.mark.parametrize("text", [
    "",
    "   \t\n ",
    "x " * 50_000,                        # 100k characters
    "长文本" * 40_000,
    "机器学习推荐系统的冷启动问题",             # Chinese
    "نظام التوصية للمستخدمين الجدد",       # Arabic
    "😀🎉👨\u200d👩\u200d👧🔥" * 50,           # emoji
    "\x00\x01 control \u200b chars \ud800",
], ids=["empty", "blank", "100k-chars", "120k-chinese", "chinese", "arabic", "emoji", "control-chars"])
def test_awkward_inputs_embed(enc, text):
    v = enc.encode([text])
    assert v.shape == (1, 384) and np.isfinite(v).all()
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5


def test_long_text_truncated_to_max_length(enc):
    assert len(enc.tokenize(["x " * 50_000])[0]) == enc.max_length


def test_text_cleaned_before_model(enc):
    a, b, c = enc.encode([
        "contact the seller at jane.doe@example.com or +1 (555) 123-4567",
        "contact the seller at or",
        "contact the seller at other.person@example.org or 06 12 34 56 78",
    ])
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-6)


def test_missing_path_names_setting(tmp_path):
    with pytest.raises(EncoderError, match="COLDSTART_ENCODER_PATH"):
        TextEncoder(path=str(tmp_path / "no-such-model"))
    with pytest.raises(EncoderError, match="COLDSTART_ENCODER_PATH.*config.json"):
        TextEncoder(path=str(tmp_path))  # exists, but is not a model
    with pytest.raises(EncoderError, match="COLDSTART_ENCODER_PATH"):
        TextEncoder(path="no-such-org/no-such-model")  # a hub name, not in the offline cache


def test_sha_mismatch_names_setting():
    with pytest.raises(EncoderError, match="COLDSTART_ENCODER_SHA256") as err:
        TextEncoder(sha256="0" * 64)
    assert BUNDLED_SHA256 in str(err.value)  # says what the file actually hashes to
    with pytest.raises(EncoderError, match="COLDSTART_ENCODER_SHA256"):
        TextEncoder(sha256="not-a-hash")


def test_bad_numbers_and_device_name_setting():
    with pytest.raises(EncoderError, match="COLDSTART_ENCODER_MAX_LENGTH"):
        TextEncoder(max_length=0)
    with pytest.raises(EncoderError, match="COLDSTART_ENCODER_BATCH_SIZE"):
        TextEncoder(batch_size=0)
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        with pytest.raises(EncoderError, match="COLDSTART_ENCODER_DEVICE"):
            TextEncoder(device="cuda")
