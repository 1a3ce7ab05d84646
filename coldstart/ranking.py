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
SCORE_TILE_USERS = 256  # rows per matrix product inside a block (see bench/score_speed.py)
POPULARITY_OVERALL_PRIOR = 0.01  # weight of overall popularity in a scene's list (ranks items unseen in the scene)


class ItemMatrix:
    """Item vectors laid out for the kernel: transposed, padded to a multiple of TOPK_GROUP columns
    whose bias is -inf (so padding never ranks). ``augmented`` is the transposed vectors with the bias
    as one more row: a user row with a trailing 1 gets ``u . v + b`` from one plain product, one pass
    over the score tile instead of addmm's two (broadcast the bias, then accumulate)."""

    def __init__(self, vectors, bias):
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

    @property
    def width(self) -> int:
        return self.transposed.shape[1]


def select_top_k(scores, k: int):
    """Exact top-k per row of a score tile whose width is a multiple of TOPK_GROUP: (values descending,
    column indices). Rows with fewer than k finite scores end in -inf values."""
    import torch

    n, width = scores.shape
    groups = width // TOPK_GROUP
    if width % TOPK_GROUP or groups <= 2 * k:
        return torch.topk(scores, k, dim=1)  # too few groups for the prune to save anything
    best_groups = torch.topk(scores.view(n, groups, TOPK_GROUP).amax(dim=2), k, dim=1, sorted=False).indices
    # Whole groups are contiguous runs of TOPK_GROUP scores: copy them as rows of a (n * groups, group) view.
    rows = (best_groups + torch.arange(n).unsqueeze(1) * groups).view(-1)
    candidates = scores.view(n * groups, TOPK_GROUP).index_select(0, rows).view(n, k * TOPK_GROUP)
    values, position = torch.topk(candidates, k, dim=1)
    columns = best_groups.gather(1, torch.div(position, TOPK_GROUP, rounding_mode="floor")) * TOPK_GROUP \
        + position % TOPK_GROUP
    return values, columns


def top_k_scores(user_vecs, items: ItemMatrix, k: int, consumed: Sequence[np.ndarray],
                 tile: int = SCORE_TILE_USERS) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items per row of ``user_vecs @ items.T + bias``, excluding each row's ``consumed`` item positions.

    Returns (scores, item positions), each (n, min(k, items)); a row with fewer unconsumed items than k
    ends in -inf scores (callers drop those). Memory: one (tile, items) score matrix."""
    import torch

    user_vecs = torch.as_tensor(user_vecs, dtype=torch.float32)
    n = user_vecs.shape[0]
    if len(consumed) != n:
        raise ValueError(f"consumed has {len(consumed)} rows for {n} users")
    k = min(k, items.n_items)
    values = np.empty((n, k), dtype=np.float32)
    positions = np.empty((n, k), dtype=np.int64)
    if n == 0 or k == 0:
        return values, positions
    buffer = torch.empty(min(tile, n), items.width)
    augmented_rows = torch.ones(min(tile, n), user_vecs.shape[1] + 1)
    neg_inf = torch.tensor(float("-inf"))
    for start in range(0, n, tile):
        rows = augmented_rows[:min(tile, n - start)]
        rows[:, :-1] = user_vecs[start:start + tile]
        scores = torch.mm(rows, items.augmented, out=buffer[:rows.shape[0]])
        scores[:, items.n_items:] = neg_inf  # padding columns (fewer than TOPK_GROUP)
        tile_consumed = consumed[start:start + tile]
        lengths = [len(c) for c in tile_consumed]
        if sum(lengths):
            row_idx = torch.from_numpy(np.repeat(np.arange(len(lengths)), lengths))
            col_idx = torch.from_numpy(np.concatenate(tile_consumed).astype(np.int64))
            scores.index_put_((row_idx, col_idx), neg_inf)
        top_values, top_columns = select_top_k(scores, k)
        values[start:start + rows.shape[0]] = top_values.numpy()
        positions[start:start + rows.shape[0]] = top_columns.numpy()
    return values, positions


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
