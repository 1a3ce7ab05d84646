"""The top-k kernel shared by scoring and the baselines: item vectors laid out for one matrix product
per tile of users, consumed items masked, and an exact top-k selection.

The top-k kernel computes the scores of a tile of ``SCORE_TILE_USERS`` rows against every item with
one matrix product, masks consumed items, and selects exactly with a group-max prune: split each
row into groups of ``TOPK_GROUP`` columns, keep the k groups with the largest maxima, rank only
their k x TOPK_GROUP scores. Every item of the true top k lies in one of those groups (an item
scoring above the k-th largest group maximum has a group maximum above it too), so the result is
exact (ties may pick a different item of equal score); at dim 64 this selection costs a fraction of
a full ``torch.topk`` over all items (bench/score_speed.py).

On a CPU with AMX (bf16 tile products, several times the fp32 rate) and a wide catalogue the kernel first runs a *split
bf16 prefilter* (:func:`_top_k_prefiltered`): one bf16 product whose inputs are each split into two
bf16 halves gives every score to about 16 bits, with a proven error bound; a per-row threshold from
that bound keeps only the items that can be in the exact top k (typically k plus a few), and those are
rescored exactly in fp32. The result is the exact fp32 top k; a score can differ from the full fp32
product's in its last bit (another order of the same 65 products), and so can the order of two items
whose scores differ only there.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

TOPK_GROUP = 64  # columns per group of the group-max prune (wide groups: a cheap vectorised max; bench/score_speed.py)
SCORE_TILE_USERS = 256  # rows per matrix product inside a block on the CPU (see bench/score_speed.py)
DEVICE_TILE_BYTES = 1 << 30  # on a GPU: a score tile of up to 1 GiB (wide tiles keep it busy)
# The prefilter pays where writing the score tile dominates: measured 0.66-0.90x the fp32 kernel's time
# at 50k items and 1.2-2.4x at 10k (widths 64 and 448, 1 and 2 threads; bench/results/score_speed.md).
PREFILTER_MIN_ITEMS = 32_768
PREFILTER_PROBE = 256  # items scored exactly per row to place the prefilter's offset (a lower bound of the k-th score)
BF16_UNIT = 2.0 ** -8  # bf16's unit roundoff (8 significant bits)
POPULARITY_OVERALL_PRIOR = 0.01  # weight of overall popularity in a scene's list (ranks items unseen in the scene)


class ItemMatrix:
    """Item vectors laid out for the kernel: transposed, padded to a multiple of TOPK_GROUP columns
    whose bias is -inf (so padding never ranks). ``augmented`` is the transposed vectors with the bias
    as one more row: a user row with a trailing 1 gets ``u . v + b`` from one plain product, one pass
    over the score tile instead of addmm's two (broadcast the bias, then accumulate). ``device``: where
    the products run (default the CPU; see coldstart.devices). ``prefilter``: lay out the split bf16
    copy for :func:`_top_k_prefiltered` (default: on a CPU where bf16 products pay, see
    :func:`bf16_products_pay`, for PREFILTER_MIN_ITEMS items or more); it is O(items x dim) like the rest: the split copy is 3 (dim + 1) + 2 bf16
    rows, 1.5x the fp32 matrix's bytes (135 MB for 50k items at width 448)."""

    def __init__(self, vectors, bias, device=None, prefilter: bool | None = None):
        import torch

        vectors = torch.as_tensor(vectors, dtype=torch.float32)
        bias = torch.as_tensor(bias, dtype=torch.float32)
        if vectors.ndim != 2 or bias.shape != (vectors.shape[0],):
            raise ValueError(f"item vectors {tuple(vectors.shape)} and bias {tuple(bias.shape)} do not match")
        self.n_items, dim = vectors.shape
        width = -(-self.n_items // TOPK_GROUP) * TOPK_GROUP
        self.augmented = torch.zeros(dim + 1, width)
        self.augmented[:dim, :self.n_items] = vectors.T
        self.augmented[dim, :self.n_items] = bias
        self.transposed = self.augmented[:dim]  # a view: the first dim rows
        self.bias = torch.full((width,), float("-inf"))
        self.bias[:self.n_items] = bias
        on_cpu = device is None or torch.device(device).type == "cpu"
        if device is not None and not on_cpu:
            self.augmented = self.augmented.to(device)
            self.transposed, self.bias = self.augmented[:dim], self.bias.to(device)
        if prefilter is None:
            prefilter = bf16_products_pay() and self.n_items >= PREFILTER_MIN_ITEMS
        self.prefilter = _Prefilter(self.augmented, self.n_items) if on_cpu and prefilter and self.n_items else None
        if self.prefilter is not None:  # one fp32 copy of the items, not two: the fp32 product reads it transposed
            self.augmented = self.prefilter.rows.T
            self.transposed = self.augmented[:dim]

    @property
    def device(self):
        return self.augmented.device

    @property
    def width(self) -> int:
        return self.transposed.shape[1]


@functools.cache
def bf16_products_pay() -> bool:
    """Whether this CPU has AMX bf16 tiles (Linux: ``amx_bf16`` in /proc/cpuinfo), where a bf16 product
    of a score tile runs at several times the fp32 rate (bench/score_speed.py); elsewhere the prefilter
    is off by default (a CPU without native bf16 products would run it slower than fp32)."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def prefilter_setting(value: str) -> bool | None:
    """The ``score_prefilter`` setting as ItemMatrix's ``prefilter``: auto -> None (where bf16 products
    pay), on -> True, off -> False."""
    choices: dict[str, bool | None] = {"auto": None, "on": True, "off": False}
    if value not in choices:
        raise ValueError(f"score_prefilter {value!r}: must be auto, on or off")
    return choices[value]


def _gamma(n: int) -> float:
    """The classic bound of fp32 summation: n terms summed in any order err by at most gamma(n) times
    the sum of their magnitudes."""
    return n * 2.0 ** -24 / (1 - n * 2.0 ** -24)


def _split_bf16(values):
    """(hi, lo) bf16 tensors with hi + lo = values to within 2^-16 relative (hi = values rounded to bf16)."""
    import torch

    hi = values.to(torch.bfloat16)
    return hi, (values - hi.float()).to(torch.bfloat16)


class _Prefilter:
    """The item side of the split bf16 prefilter, for an (dim + 1, width) augmented item matrix.

    ``split`` stacks [y_hi; y_lo; y_hi; 1; 1] (3 (dim + 1) + 2 rows, bf16): a user row laid out as
    [x_hi, x_hi, x_lo, c_hi, c_lo] gets x_hi.y_hi + x_hi.y_lo + x_lo.y_hi + c from one product, which
    is x.y + c up to the dropped x_lo.y_lo and the halves' remainders (about 3 * 2^-16 of sum|x_i y_i|),
    the fp32 accumulation and the bf16 output's rounding. ``rows``: the augmented items as fp32 rows,
    for the exact rescoring of the survivors. ``norm_max``: the largest ||[v; b]|| (bounds sum|x_i y_i|
    by ||x|| * norm_max, Cauchy-Schwarz). ``probe``: PREFILTER_PROBE items whose exact scores give a
    lower bound of each row's k-th score."""

    def __init__(self, augmented, n_items: int):
        import torch

        rows, width = augmented.shape
        hi, lo = _split_bf16(augmented)
        self.split = torch.cat([hi, lo, hi, torch.ones(2, width, dtype=torch.bfloat16)])
        self.rows = augmented.T.contiguous()
        # in fp32 (no float64 copy of the items), then raised past its rounding: an upper bound
        self.norm_max = float(torch.linalg.vector_norm(self.rows[:n_items], dim=1).max()) * (1 + 4 * _gamma(rows))
        probe = np.sort(np.random.default_rng(0).choice(n_items, size=min(PREFILTER_PROBE, n_items), replace=False))
        self.probe = augmented[:, torch.from_numpy(probe)].contiguous()
        self.probe_of = np.full(width, -1, dtype=np.int64)  # column -> its probe index, or -1
        self.probe_of[probe] = np.arange(len(probe))
        terms = self.split.shape[0]
        u = BF16_UNIT
        # Every bound is doubled: an implementation that rounds twice (or sums in another order) stays
        # inside it. alpha: of ||x|| * norm_max; gamma_c: of |c|; beta: of |output| (bf16 rounding);
        # eps: of ||x|| * norm_max for an fp32 dot product (the probe and the rescoring).
        self.alpha = 2 * (4 * u * u + _gamma(terms) * (1 + 5 * u))
        self.gamma_c = 2 * _gamma(terms) * (1 + 2 * u)
        self.beta = 2 * u / (1 - u)
        self.eps = 2 * _gamma(rows)
        self.tiny = 2.0 ** -100  # bf16 products flush subnormals to zero (AMX): an absolute slack

    def bound(self, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """A per row: the split product's output O of a row x = [u, 1] with offset c has
        |O - (x.y + c)| <= A + beta |O| for every item y, given ``scale`` >= ||x|| * norm_max (so >= sum
        |x_i y_i|) and ``offset`` >= |c|."""
        return self.alpha * scale + self.gamma_c * offset + self.tiny


def select_top_k(scores, k: int):
    """Exact top-k per row of a score tile: (values descending, column indices), equal scores in
    ascending column order. Rows with fewer than k finite scores end in -inf values.

    On the CPU, with the width a multiple of TOPK_GROUP and more than k groups, a group-max threshold:
    the k-th largest group maximum ``t`` of a row is a lower bound of the row's k-th largest score (the
    k best groups hold k scores >= t, their maxima), so its top k are among its scores >= t, and those
    lie in the groups whose maximum is >= t. Only those survivors (typically about k per row) are
    ordered, by one sort of (row, score, column) keys for the whole tile. The maxima are one torch pass
    over the tile; the rest is numpy on about k x TOPK_GROUP scores per row, single-threaded on purpose:
    small parallel torch ops cost more in thread hand-offs than they save (bench/score_speed.py).
    Elsewhere (a GPU), ``torch.topk``, whose order among equal scores is the device's."""
    import torch

    n, width = scores.shape
    groups = width // TOPK_GROUP
    if scores.device.type != "cpu":
        return torch.topk(scores, k, dim=1)
    if width % TOPK_GROUP or groups <= k:
        values, columns = torch.sort(scores, dim=1, descending=True, stable=True)
        return values[:, :k], columns[:, :k]
    maxima = scores.view(n, groups, TOPK_GROUP).amax(dim=2).numpy()
    threshold = np.partition(maxima, groups - k, axis=1)[:, groups - k]  # the k-th largest maximum per row
    chosen = np.flatnonzero(maxima >= threshold[:, None])  # flat (row, group) ids, ascending
    candidates = scores.numpy().reshape(n * groups, TOPK_GROUP)[chosen]
    keep = np.flatnonzero(candidates >= threshold[chosen // groups, None])
    values = candidates.reshape(-1)[keep] + np.float32(0.0)  # -0.0 becomes 0.0: one score, one key
    flat = chosen[keep // TOPK_GROUP] * TOPK_GROUP + keep % TOPK_GROUP  # row * width + column, ascending
    rows = flat // width
    ranked_values, ranked_columns = _rank_rows(rows, values, flat % width, n, width)
    counts = np.bincount(rows, minlength=n)  # at least k per row: the k best maxima survive
    pick = ((np.cumsum(counts) - counts)[:, None] + np.arange(k)).reshape(-1)
    return torch.from_numpy(ranked_values[pick].reshape(n, k)), torch.from_numpy(ranked_columns[pick].reshape(n, k))


def top_k_scores(user_vecs, items: ItemMatrix, k: int, consumed: Sequence[np.ndarray],
                 tile: int | None = None, select=None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items per row of ``user_vecs @ items.T + bias``, excluding each row's ``consumed`` item positions.

    Returns (scores, item positions), each (n, min(k, items)); a row with fewer unconsumed items than k
    ends in -inf scores (callers drop those). Memory: one (tile, items) score matrix. ``select`` replaces
    :func:`select_top_k` on each masked score tile (bench/score_speed.py times the previous selection).
    The products run on ``items.device``; on a GPU (TF32 products, tiles of up to DEVICE_TILE_BYTES)
    scores can differ from the CPU's in the last bits, and so can the order of near-equal items."""
    if len(consumed) != len(user_vecs):
        raise ValueError(f"consumed has {len(consumed)} rows for {len(user_vecs)} users")
    if items.device.type != "cpu":
        return _top_k_on_device(user_vecs, items, k, consumed, tile, select)
    if items.prefilter is not None and select is None and items.width // TOPK_GROUP > min(k, items.n_items) > 0:
        return _top_k_prefiltered(user_vecs, items, k, consumed, int(tile or SCORE_TILE_USERS))
    return _top_k_tiles(user_vecs, items, k, consumed, int(tile or SCORE_TILE_USERS), select, _mask_on_host)


def _top_k_on_device(user_vecs, items: ItemMatrix, k: int, consumed: Sequence[np.ndarray], tile: int | None,
                     select) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k_scores` on a GPU: the same steps with torch masking on the device, wide tiles, TF32 products."""
    tile = int(tile or max(SCORE_TILE_USERS, DEVICE_TILE_BYTES // (4 * items.width)))
    return _top_k_tiles(user_vecs, items, k, consumed, tile, select, _mask_on_device)


def _top_k_tiles(user_vecs, items: ItemMatrix, k: int, consumed: Sequence[np.ndarray], tile: int, select,
                 mask) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's loop: per tile of rows, one product on ``items.device``, ``mask`` (padding and consumed
    items to -inf), the top-k selection."""
    import torch

    from coldstart.devices import fast_matmul

    device = items.device
    user_vecs = torch.as_tensor(user_vecs, dtype=torch.float32)
    n = user_vecs.shape[0]
    k = min(k, items.n_items)
    values = np.empty((n, k), dtype=np.float32)
    positions = np.empty((n, k), dtype=np.int64)
    if n == 0 or k == 0:
        return values, positions
    buffer = torch.empty(min(tile, n), items.width, device=device)
    augmented_rows = torch.ones(min(tile, n), user_vecs.shape[1] + 1, device=device)
    with fast_matmul(device.type):
        for start in range(0, n, tile):
            rows = augmented_rows[:min(tile, n - start)]
            rows[:, :-1] = user_vecs[start:start + tile].to(device, non_blocking=True)
            scores = torch.mm(rows, items.augmented, out=buffer[:rows.shape[0]])
            mask(scores, items.n_items, consumed[start:start + tile])
            top_values, top_columns = (select or select_top_k)(scores, k)
            values[start:start + rows.shape[0]] = top_values.cpu().numpy()
            positions[start:start + rows.shape[0]] = top_columns.cpu().numpy()
    return values, positions


def _top_k_prefiltered(user_vecs, items: ItemMatrix, k: int, consumed: Sequence[np.ndarray],
                       tile: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k_scores` on the CPU with the split bf16 prefilter: the exact fp32 top k per row.

    Per tile of rows x = [u, 1]: exact fp32 scores of the probe items give p, a lower bound of each row's
    k-th score; the offset c = (a small margin) - p moves the k-th score just above zero. The split
    product then gives O ~ x.y + c with |O - (x.y + c)| <= A + beta |O| (A from the bounds of
    :class:`_Prefilter`). With T the k-th largest group maximum of O, k items have x.y + c >= L = T - A -
    beta |T|, so every item of the exact fp32 top k (within eps of its real score) has
    O >= lo = (L - 2 eps - A) / (1 + beta). When lo > 0 (as the offset makes it), only non-negative
    outputs matter, and non-negative bf16 values order like their bits read as int16: the group maxima
    are one int16 ``amax``, and the survivors (O >= lo, in groups whose maximum is >= lo) are rescored in
    fp32 and ordered like :func:`select_top_k` (equal scores in ascending column order). A row whose lo
    is not positive (fewer than k items left, or a pathological score range) takes the fp32 path."""
    import torch

    pre = items.prefilter
    assert pre is not None
    user_vecs = torch.as_tensor(user_vecs, dtype=torch.float32)
    n, dim = user_vecs.shape
    k = min(k, items.n_items)
    values = np.empty((n, k), dtype=np.float32)
    positions = np.empty((n, k), dtype=np.int64)
    width, groups, d1 = items.width, items.width // TOPK_GROUP, dim + 1
    x_buf = torch.ones(min(tile, n), d1)
    split_buf = torch.empty(min(tile, n), pre.split.shape[0], dtype=torch.bfloat16)
    out_buf = torch.empty(min(tile, n), width, dtype=torch.bfloat16)
    neg_inf = np.int16(-128)  # bf16 -inf's bits as int16
    for start in range(0, n, tile):
        m = min(tile, n - start)
        x = x_buf[:m]
        x[:, :dim] = user_vecs[start:start + m]
        tile_consumed = consumed[start:start + m]
        cells = _consumed_cells(tile_consumed)
        scale = torch.linalg.vector_norm(x.double(), dim=1).numpy() * pre.norm_max  # >= sum |x_i y_i|
        # The offset: a lower bound of the k-th score from the probe (consumed probe items excluded).
        probe = torch.mm(x, pre.probe).numpy()
        if cells is not None:
            at = pre.probe_of[cells[1]]
            hit = at >= 0
            probe[cells[0][hit], at[hit]] = -np.inf
        p = probe.shape[1]
        floor = np.partition(probe, p - k, axis=1)[:, p - k].astype(np.float64) if p >= k else np.full(m, -np.inf)
        floor = np.where(np.isfinite(floor), floor, -scale) - pre.eps * scale
        # the offset's margin: A at scale + |floor| for |c| (c, about 8 slack - floor, is not known yet);
        # the threshold below takes A again at the offset the product adds
        slack = pre.bound(scale, scale + np.abs(floor))
        target = 8 * slack - floor
        c_hi = torch.from_numpy(target.astype(np.float32)).to(torch.bfloat16)
        c_lo = torch.from_numpy((target - c_hi.double().numpy()).astype(np.float32)).to(torch.bfloat16)
        offset = c_hi.double().numpy() + c_lo.double().numpy()  # the offset the product adds, exactly
        x_hi, x_lo = _split_bf16(x)
        row_split = split_buf[:m]
        row_split[:, :d1], row_split[:, d1:2 * d1], row_split[:, 2 * d1:3 * d1] = x_hi, x_hi, x_lo
        row_split[:, 3 * d1], row_split[:, 3 * d1 + 1] = c_hi, c_lo
        bits = torch.mm(row_split, pre.split, out=out_buf[:m]).view(torch.int16)
        out = bits.numpy()
        out[:, items.n_items:] = neg_inf
        if cells is not None:
            out[cells] = neg_inf
        maxima = bits.view(m, groups, TOPK_GROUP).amax(dim=2).numpy()
        # int16 bits -> float32 (a negative group's "maximum" is one of its values: a lower bound, enough)
        top = (maxima.astype(np.int32) << 16).view(np.float32)
        t = np.partition(top, groups - k, axis=1)[:, groups - k].astype(np.float64)
        a = pre.bound(scale, np.abs(offset))
        low = (t - a - pre.beta * np.abs(t) - 2 * pre.eps * scale - a) / (1 + pre.beta)
        fine = low > 0  # False for NaN too
        # the largest bf16 at or below ``low``, as int16 bits (one bf16 step down covers float32 rounding)
        low_bits = ((np.where(fine, low, 1.0).astype(np.float32).view(np.int32) >> 16) - 1).astype(np.int16)
        low_bits[~fine] = np.iinfo(np.int16).max  # those rows take the fp32 path: no survivors
        chosen = np.flatnonzero(maxima >= low_bits[:, None])
        survivors = out.reshape(m * groups, TOPK_GROUP)[chosen]
        keep = np.flatnonzero(survivors >= low_bits[chosen // groups, None])
        flat = chosen[keep // TOPK_GROUP] * TOPK_GROUP + keep % TOPK_GROUP  # row * width + column, ascending
        rows, columns = flat // width, flat % width
        counts = np.bincount(rows, minlength=m)
        exact = _rescore(pre.rows, x, rows, columns, counts)
        fine &= counts >= k  # always true when low > 0 (the k best maxima survive); kept as a guard
        done = np.flatnonzero(fine)
        ranked_values, ranked_columns = _rank_rows(rows, exact, columns, m, width)
        pick = ((np.cumsum(counts) - counts)[done][:, None] + np.arange(k)).reshape(-1)
        values[start + done] = ranked_values[pick].reshape(-1, k)
        positions[start + done] = ranked_columns[pick].reshape(-1, k)
        rest = start + np.flatnonzero(~fine)
        if len(rest):
            values[rest], positions[rest] = _top_k_tiles(user_vecs[torch.from_numpy(rest)], items, k,
                                                         [consumed[int(r)] for r in rest], tile, None, _mask_on_host)
    return values, positions


def _rescore(item_rows, x, rows: np.ndarray, columns: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Exact fp32 scores x[rows] . item_rows[columns] (rows ascending, ``counts`` per row): one batched
    product of each row with its survivors, padded to the longest row (padding reads the last item row
    and is dropped), -0.0 as 0.0."""
    import torch

    m, longest = len(counts), int(counts.max(initial=0))
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    index = np.full((m, longest), item_rows.shape[0] - 1, dtype=np.int64)
    index[rows, slot] = columns
    gathered = item_rows.index_select(0, torch.from_numpy(index.reshape(-1))).view(m, longest, -1)
    scores = torch.bmm(gathered, x.unsqueeze(2)).view(m, longest).numpy()
    return scores[rows, slot] + np.float32(0.0)


def _rank_rows(rows: np.ndarray, values: np.ndarray, columns: np.ndarray, n_rows: int,
               width: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, columns) ordered by row ascending, then value descending, then column ascending. ``rows``
    must be ascending (as np.flatnonzero gives them); -0.0 must already be 0.0 (one score, one key).

    One key per entry: the row, the value's float bits mapped to an order-preserving unsigned int and
    inverted, the column. When the three fit in 64 bits the keys are unique, so numpy's plain (SIMD)
    sort orders them and the values and columns are read back off the sorted keys; otherwise a stable
    argsort of (row, value) keys keeps equal values in column order (the columns ascend within a row)."""
    bits = values.view(np.int32).astype(np.int64)
    descending = (1 << 32) - 1 - np.where(bits >= 0, bits + (1 << 31), -bits - 1)  # in [0, 2^32)
    column_bits = max(int(width - 1).bit_length(), 1)
    if int(max(n_rows - 1, 0)).bit_length() + 32 + column_bits <= 64:
        keys = (rows.astype(np.uint64) << np.uint64(32 + column_bits)) \
            | (descending.astype(np.uint64) << np.uint64(column_bits)) | columns.astype(np.uint64)
        keys.sort()
        ascending = (1 << 32) - 1 - ((keys >> np.uint64(column_bits)) & np.uint64((1 << 32) - 1)).astype(np.int64)
        back = np.where(ascending >= 1 << 31, ascending - (1 << 31), -ascending - 1).astype(np.int32)
        return back.view(np.float32), (keys & np.uint64((1 << column_bits) - 1)).astype(np.int64)
    order = np.argsort((rows.astype(np.int64) << 32) | descending, kind="stable")
    return values[order], columns[order]


def _consumed_cells(tile_consumed: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows, columns) of a tile's consumed items, or None when the tile's users consumed none."""
    lengths = [len(c) for c in tile_consumed]
    if not sum(lengths):
        return None
    return np.repeat(np.arange(len(lengths)), lengths), np.concatenate(tile_consumed).astype(np.int64)


def _mask_on_host(scores, n_items: int, tile_consumed: Sequence[np.ndarray]) -> None:
    """-inf on the padding columns (fewer than TOPK_GROUP) and the consumed items, in numpy: a few thousand
    writes, not worth torch's thread hand-off."""
    masked = scores.numpy()
    masked[:, n_items:] = -np.inf
    cells = _consumed_cells(tile_consumed)
    if cells is not None:
        masked[cells] = -np.inf


def _mask_on_device(scores, n_items: int, tile_consumed: Sequence[np.ndarray]) -> None:
    """:func:`_mask_on_host` with torch on the scores' device (no copy of the tile to the host)."""
    import torch

    neg_inf = torch.tensor(float("-inf"), device=scores.device)
    scores[:, n_items:] = neg_inf
    cells = _consumed_cells(tile_consumed)
    if cells is not None:
        scores.index_put_(tuple(torch.from_numpy(c).to(scores.device) for c in cells), neg_inf)


def popular_in_scene(pop: pd.DataFrame, scene: str) -> pd.Series:
    """item_id -> score, best first: the scene's own popularity plus overall popularity as a small prior,
    so that items unseen in the scene (or every item, for a scene nobody used yet) are still ranked."""
    if pop.empty:
        return pd.Series(dtype=np.float64, name="score", index=pd.Index([], name="item_id", dtype=object))
    overall = pop.groupby("item_id")["score"].sum()
    in_scene = pop.loc[pop["scene"] == scene].set_index("item_id")["score"]
    ranked = (POPULARITY_OVERALL_PRIOR * overall).add(in_scene, fill_value=0.0).rename("score")
    ranked = ranked.reset_index().sort_values(["score", "item_id"], ascending=[False, True])
    return ranked.set_index("item_id")["score"]
