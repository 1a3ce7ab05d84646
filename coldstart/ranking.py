"""The top-k kernel shared by scoring and the baselines: item vectors laid out for one matrix product
per tile of users, consumed items masked, and an exact top-k selection.

The top-k kernel computes the scores of a tile of ``SCORE_TILE_USERS`` rows against every item with
one matrix product, masks consumed items, and selects exactly with a group-max prune: split each
row into groups of ``TOPK_GROUP`` columns, keep the k groups with the largest maxima, rank only
their k x TOPK_GROUP scores. Every item of the true top k lies in one of those groups (an item
scoring above the k-th largest group maximum has a group maximum above it too), so the result is
exact (ties may pick a different item of equal score); at dim 64 this selection costs a fraction of
a full ``torch.topk`` over all items (bench/score_speed.py).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

TOPK_GROUP = 64  # columns per group of the group-max prune (wide groups: a cheap vectorised max; bench/score_speed.py)
SCORE_TILE_USERS = 256  # rows per matrix product inside a block on the CPU (see bench/score_speed.py)
DEVICE_TILE_BYTES = 1 << 30  # on a GPU: a score tile of up to 1 GiB (wide tiles keep it busy)
POPULARITY_OVERALL_PRIOR = 0.01  # weight of overall popularity in a scene's list (ranks items unseen in the scene)


class ItemMatrix:
    """Item vectors laid out for the kernel: transposed, padded to a multiple of TOPK_GROUP columns
    whose bias is -inf (so padding never ranks). ``augmented`` is the transposed vectors with the bias
    as one more row: a user row with a trailing 1 gets ``u . v + b`` from one plain product, one pass
    over the score tile instead of addmm's two (broadcast the bias, then accumulate). ``device``: where
    the products run (default the CPU; see coldstart.devices)."""

    def __init__(self, vectors, bias, device=None):
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
        if device is not None and torch.device(device).type != "cpu":
            self.augmented = self.augmented.to(device)
            self.transposed, self.bias = self.augmented[:dim], self.bias.to(device)

    @property
    def device(self):
        return self.augmented.device

    @property
    def width(self) -> int:
        return self.transposed.shape[1]


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
    # One int64 key per survivor: the row, then the score descending (its float bits mapped to an order-
    # preserving unsigned int, inverted); a stable sort keeps equal scores in ascending column order.
    bits = values.view(np.int32).astype(np.int64)
    ascending = np.where(bits >= 0, bits + (1 << 31), -bits - 1)
    order = np.argsort((rows << 32) | ((1 << 32) - 1 - ascending), kind="stable")
    counts = np.bincount(rows, minlength=n)  # at least k per row: the k best maxima survive
    pick = order[((np.cumsum(counts) - counts)[:, None] + np.arange(k)).reshape(-1)]
    return torch.from_numpy(values[pick].reshape(n, k)), torch.from_numpy((flat[pick] % width).reshape(n, k))


def top_k_scores(user_vecs, items: ItemMatrix, k: int, consumed: Sequence[np.ndarray],
                 tile: int | None = None, select=None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items per row of ``user_vecs @ items.T + bias``, excluding each row's ``consumed`` item positions.

    Returns (scores, item positions), each (n, min(k, items)); a row with fewer unconsumed items than k
    ends in -inf scores (callers drop those). Memory: one (tile, items) score matrix. ``select`` replaces
    :func:`select_top_k` on each masked score tile (bench/score_speed.py times the previous selection).
    The products run on ``items.device``; on a GPU (TF32 products, tiles of up to DEVICE_TILE_BYTES)
    scores can differ from the CPU's in the last bits, and so can the order of near-equal items."""
    if items.device.type != "cpu":
        return _top_k_on_device(user_vecs, items, k, consumed, tile, select)
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
    if len(consumed) != n:
        raise ValueError(f"consumed has {len(consumed)} rows for {n} users")
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
