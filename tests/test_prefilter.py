"""The split bf16 prefilter of the top-k kernel: the exact fp32 top k on every kind of score range, ties
in column order, the fp32 path for rows it cannot bound, and the error bound it rests on."""

import numpy as np
import pytest
import torch

import coldstart.ranking
from coldstart.ranking import TOPK_GROUP, ItemMatrix, _split_bf16, prefilter_setting, top_k_scores


@pytest.fixture
def fp32_rows(monkeypatch):
    """Counts the rows the prefilter hands to the fp32 path (its select_top_k)."""
    counted = {"rows": 0}
    select = coldstart.ranking.select_top_k

    def counting(scores, k):
        counted["rows"] += scores.shape[0]
        return select(scores, k)

    monkeypatch.setattr(coldstart.ranking, "select_top_k", counting)
    return counted


def _world(kind: str, users: int = 300, items: int = 6000, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((users, dim)).astype(np.float32)
    V = rng.standard_normal((items, dim)).astype(np.float32)
    b = (0.1 * rng.standard_normal(items)).astype(np.float32)
    if kind == "shifted":  # every score large and close together: a common direction
        V = 0.05 * V + 3.0
        U = U + 4.0
    elif kind == "negative":  # logits far below zero, as a sigmoid model's are
        b -= 60.0
    elif kind == "norms":  # item norms over three orders of magnitude
        V *= np.exp(rng.uniform(-3, 3, size=(items, 1))).astype(np.float32)
    return U, V, b


def _reference(U, V, b, consumed, k):
    """The top-k values in float64 and every row's k-th value."""
    full = U.astype(np.float64) @ V.T.astype(np.float64) + b
    for row, cols in enumerate(consumed):
        full[row, cols] = -np.inf
    return -np.sort(-full, axis=1)[:, :k], full


@pytest.mark.parametrize("kind", ["plain", "shifted", "negative", "norms"])
def test_prefilter_returns_the_exact_top_k(kind, fp32_rows):
    U, V, b = _world(kind)
    rng = np.random.default_rng(1)
    consumed = [np.sort(rng.choice(len(V), size=rng.integers(0, 40), replace=False)) for _ in range(len(U))]
    k = 50
    items = ItemMatrix(V, b, prefilter=True)
    assert items.prefilter is not None
    values, positions = top_k_scores(U, items, k, consumed)
    assert fp32_rows["rows"] == 0  # every row bounded by the prefilter (the offset keeps its band positive)
    fp32_values, _ = top_k_scores(U, ItemMatrix(V, b, prefilter=False), k, consumed)
    ref, full = _reference(U, V, b, consumed, k)
    scale = np.abs(ref).max() + 1
    assert np.allclose(values, ref, rtol=1e-5, atol=1e-5 * scale)
    assert np.allclose(values, fp32_values, rtol=1e-5, atol=1e-5 * scale)
    for row in range(len(U)):
        got = positions[row]
        assert len(set(got)) == k and not set(got) & set(consumed[row]) and (got < len(V)).all()
        # the chosen items are the top k: each one's real score reaches the real k-th score
        assert (full[row, got] >= ref[row, -1] - 1e-5 * scale).all()


def test_prefilter_keeps_equal_scores_in_column_order():
    """Small integer vectors: the fp32 scores are exact integers, with many ties at the top."""
    rng = np.random.default_rng(2)
    U = rng.integers(-3, 4, size=(200, 8)).astype(np.float32)
    V = rng.integers(-3, 4, size=(64 * 90, 8)).astype(np.float32)
    b = rng.integers(-2, 3, size=len(V)).astype(np.float32)
    consumed = [np.sort(rng.choice(len(V), size=10, replace=False)) for _ in range(len(U))]
    values, positions = top_k_scores(U, ItemMatrix(V, b, prefilter=True), 30, consumed)
    full = torch.from_numpy(U.astype(np.float64) @ V.T + b)
    for row, cols in enumerate(consumed):
        full[row, torch.from_numpy(cols)] = float("-inf")
    ref_values, ref_columns = torch.sort(full, dim=1, descending=True, stable=True)
    assert np.array_equal(values, ref_values[:, :30].numpy())
    assert np.array_equal(positions, ref_columns[:, :30].numpy())


def test_rows_with_fewer_than_k_items_left_take_the_fp32_path(fp32_rows):
    U, V, b = _world("plain", users=20, items=64 * 60)
    consumed = [np.arange(len(V)) if row % 3 == 0 else np.arange(row) for row in range(len(U))]
    consumed[1] = np.arange(len(V) - 7)  # 7 items left for a top 50
    values, positions = top_k_scores(U, ItemMatrix(V, b, prefilter=True), 50, consumed)
    assert fp32_rows["rows"] == 8  # rows 0, 3, .., 18 (nothing left) and row 1 (7 left)
    fp32_values, fp32_positions = top_k_scores(U, ItemMatrix(V, b, prefilter=False), 50, consumed)
    finite = np.isfinite(values)
    assert np.array_equal(finite, np.isfinite(fp32_values))
    assert not finite[0].any() and finite[1].sum() == 7 and finite[2].all()
    assert np.allclose(values[finite], fp32_values[finite], rtol=1e-5, atol=1e-5)
    assert np.array_equal(positions[finite], fp32_positions[finite])


def test_the_split_product_stays_inside_half_its_bound():
    """The prefilter's error bound is twice what its arithmetic model allows; on this machine's bf16
    product the measured error stays inside the model's own bound, so the doubling is pure margin."""
    U, V, b = _world("norms", users=256, items=64 * 100, dim=64)
    items = ItemMatrix(V, b, prefilter=True)
    pre = items.prefilter
    x = torch.ones(len(U), 65)
    x[:, :64] = torch.from_numpy(U)
    offset = torch.full((len(U),), -3.0)
    x_hi, x_lo = _split_bf16(x)
    c_hi, c_lo = _split_bf16(offset)
    rows = torch.cat([x_hi, x_hi, x_lo, c_hi[:, None], c_lo[:, None]], dim=1)
    out = torch.mm(rows, pre.split).double().numpy()[:, :items.n_items]
    real = x.double().numpy() @ items.augmented.double().numpy()[:, :items.n_items] \
        + (c_hi.double() + c_lo.double()).numpy()[:, None]
    scale = torch.linalg.vector_norm(x.double(), dim=1).numpy()[:, None] * pre.norm_max
    bound = pre.alpha * scale + pre.gamma_c * 3.0 + pre.beta * np.abs(out) + pre.tiny
    assert (np.abs(out - real) <= bound / 2).all()
    assert (np.abs(out - real) > 0).any()  # the bound is not vacuous: the product does round


def test_the_prefilter_is_off_on_request_and_for_few_groups():
    V = np.eye(4, dtype=np.float32)
    assert ItemMatrix(V, np.zeros(4, np.float32), prefilter=prefilter_setting("off")).prefilter is None
    assert ItemMatrix(V, np.zeros(4, np.float32), prefilter=prefilter_setting("on")).prefilter is not None
    assert prefilter_setting("auto") is None
    with pytest.raises(ValueError, match="auto, on or off"):
        prefilter_setting("maybe")
    small = ItemMatrix(V, np.arange(4, dtype=np.float32), prefilter=True)
    values, positions = top_k_scores(np.ones((1, 4), np.float32), small, 2, [np.empty(0, np.int64)])
    assert small.width == TOPK_GROUP and positions.tolist() == [[3, 2]]  # one group: the fp32 path


def test_ranking_keys_agree_when_they_no_longer_fit_64_bits():
    """The packed-key sort (rows, scores and columns in one uint64) and the stable argsort it falls back
    to for catalogues past 2^24 columns give the same order, ties and -inf included."""
    from coldstart.ranking import _rank_rows

    rng = np.random.default_rng(3)
    rows = np.sort(rng.integers(0, 200, size=5000))
    values = (rng.integers(-8, 8, size=5000) / 2).astype(np.float32) + np.float32(0.0)
    values[::97] = -np.inf
    columns = np.zeros(5000, dtype=np.int64)
    for row in np.unique(rows):  # ascending and distinct within a row, as the kernel produces them
        at = np.flatnonzero(rows == row)
        columns[at] = np.sort(rng.choice(60_000, size=len(at), replace=False))
    packed = _rank_rows(rows, values, columns, 200, 60_000)
    fallback = _rank_rows(rows, values, columns, 200, 1 << 30)
    order = np.lexsort((columns, -values, rows))
    for got in (packed, fallback):
        assert np.array_equal(got[0], values[order]) and np.array_equal(got[1], columns[order])
