"""The network: two towers with id tables, the item-state term and the rating head (see docs/model.md)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coldstart.vectors import DEFAULT_CONTENT_DIM


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.GELU(), nn.Linear(hidden, out))


def scene_dim_for(dim: int) -> int:
    """Width of the scene embedding in a model of width ``dim``: a quarter, at least 4 (a handful of scenes)."""
    return max(4, dim // 4)


class InterestModel(nn.Module):
    """Two towers with id tables; see the module doc. Index ``-1`` means "no id row" everywhere."""

    rating_mean: torch.Tensor  # a buffer (register_buffer), typed for mypy

    def __init__(self, n_users: int, n_items: int, n_scenes: int, content_dim: int = DEFAULT_CONTENT_DIM,
                 dim: int = 64, id_dim: int | None = None, scene_dim: int | None = None,
                 hidden: int | None = None) -> None:
        super().__init__()
        id_dim = id_dim or dim
        scene_dim = scene_dim or scene_dim_for(dim)
        hidden = hidden or 2 * dim
        self.arch = dict(content_dim=content_dim, dim=dim, id_dim=id_dim, scene_dim=scene_dim, hidden=hidden)
        # id tables: sparse gradients, so rows of entities absent from a batch are never touched
        self.user_id = nn.Embedding(n_users, id_dim, sparse=True)
        self.item_id = nn.Embedding(n_items, id_dim, sparse=True)
        self.item_id_bias = nn.Embedding(n_items, 1, sparse=True)
        self.item_hist = nn.Embedding(n_items, id_dim, sparse=True)
        self.item_target = nn.Embedding(n_items, id_dim, sparse=True)
        self.scene = nn.Embedding(max(n_scenes, 0), scene_dim)
        for emb in (self.user_id, self.item_id, self.item_id_bias, self.item_hist, self.scene):
            nn.init.zeros_(emb.weight)  # a zero id row == "represented by content"
        # history . target starts with one side non-zero, or neither would ever get a gradient;
        # rows grown later start at zero (no collaborative signal yet)
        nn.init.normal_(self.item_target.weight, std=0.01)
        self.user_tower = _mlp(content_dim + id_dim + scene_dim + id_dim, hidden, dim)
        self.item_tower = _mlp(content_dim + id_dim, hidden, dim)
        self.item_content_bias = nn.Linear(content_dim, 1)
        self.fresh_bias = nn.Parameter(torch.zeros(()))
        self.pop_weight = nn.Parameter(torch.zeros(()))
        # rating head over the shared towers
        self.rating_w = nn.Parameter(torch.zeros(dim))
        self.rating_a = nn.Parameter(torch.zeros(()))
        self.rating_c = nn.Parameter(torch.zeros(()))
        self.register_buffer("rating_mean", torch.zeros(()))

    # -- parts -----------------------------------------------------------------------------
    @staticmethod
    def _lookup(table: nn.Embedding, idx: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        known = idx >= 0
        if keep is not None:
            known = known & keep
        if table.num_embeddings == 0:
            return torch.zeros(idx.shape[0], table.embedding_dim, device=table.weight.device)
        # dropped/unknown rows look up nothing, so no gradient (not even a zero one) reaches the table
        sel = known.nonzero().squeeze(1)
        out = torch.zeros(idx.shape[0], table.embedding_dim, dtype=table.weight.dtype, device=table.weight.device)
        return out.index_copy(0, sel, table(idx[sel]))

    def scene_vectors(self, scene_idx: torch.Tensor) -> torch.Tensor:
        if self.scene.num_embeddings == 0:
            return torch.zeros(scene_idx.shape[0], self.scene.embedding_dim, device=self.scene.weight.device)
        rows = self.scene(scene_idx.clamp(min=0))
        mean = self.scene.weight.mean(0, keepdim=True)
        return torch.where((scene_idx >= 0).unsqueeze(1), rows, mean)

    def history_sums(self, bags: "HistoryBags", rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of item_hist rows, item count) over the bags of ``rows`` (host indices: the bags live in
        host memory), once per distinct row, on the table's device."""
        device = self.item_hist.weight.device
        uniq, inverse = torch.unique(rows.cpu(), return_inverse=True)
        flat, offsets, counts = bags.select(uniq)
        inverse, counts = inverse.to(device), counts.to(device)
        if self.item_hist.num_embeddings == 0 or len(flat) == 0:
            return torch.zeros(len(rows), self.item_hist.embedding_dim, device=device), counts[inverse].float()
        sums = F.embedding_bag(flat.to(device), self.item_hist.weight, offsets.to(device), mode="sum", sparse=True)
        return sums[inverse], counts[inverse].float()

    def user_vec(self, user_idx: torch.Tensor, content: torch.Tensor, scene_idx: torch.Tensor,
                 keep: torch.Tensor | None = None, history: torch.Tensor | None = None) -> torch.Tensor:
        """``history``: the pooled history embedding per row (zeros when None)."""
        if history is None:
            history = torch.zeros(len(user_idx), self.item_hist.embedding_dim, device=self.item_hist.weight.device)
        x = torch.cat([content, self._lookup(self.user_id, user_idx, keep), self.scene_vectors(scene_idx), history],
                      dim=1)
        return self.user_tower(x)

    def item_vec(self, item_idx: torch.Tensor, content: torch.Tensor,
                 keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(tower output, bias without the item-state term: see :meth:`state_term`)."""
        x = torch.cat([content, self._lookup(self.item_id, item_idx, keep)], dim=1)
        bias = self.item_content_bias(content).squeeze(1) + self._lookup(self.item_id_bias, item_idx, keep).squeeze(1)
        return self.item_tower(x), bias

    def state_term(self, fresh: torch.Tensor, pop: torch.Tensor) -> torch.Tensor:
        """The item-state part of the bias (module doc): same shape as ``fresh`` and ``pop``."""
        return self.fresh_bias * fresh.to(self.fresh_bias.dtype) + self.pop_weight * pop.to(self.pop_weight.dtype)

    # -- heads -----------------------------------------------------------------------------
    @staticmethod
    def interact_logit(u: torch.Tensor, v: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (u * v).sum(-1) + b

    def rating(self, u: torch.Tensor, v: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.rating_mean + self.rating_c + (u * v) @ self.rating_w + self.rating_a * b

    def forward(self, user_idx, user_content, scene_idx, item_idx, item_content, history=None):
        """Per-pair (interact logit, predicted rating) with no id dropout; ``history``: the pooled history
        embedding per row (zeros when None), which also meets the item's target row (the FISM term)."""
        u = self.user_vec(user_idx, user_content, scene_idx, history=history)
        v, b = self.item_vec(item_idx, item_content)
        logit = self.interact_logit(u, v, b)
        if history is not None:
            logit = logit + (history * self._lookup(self.item_target, item_idx, None)).sum(-1)
        return logit, self.rating(u, v, b)


def build_model(config: dict, n_users: int, n_items: int, n_scenes: int) -> InterestModel:
    return InterestModel(n_users, n_items, n_scenes, content_dim=config["content_dim"], dim=config["dim"],
                         id_dim=config["id_dim"], scene_dim=config["scene_dim"], hidden=config["hidden"])


class HistoryBags:
    """Item positions per history row (CSR): ``items[ptr[r]:ptr[r + 1]]`` are row r's distinct items, sorted."""

    def __init__(self, keys: np.ndarray, bound: int, n_rows: int):
        self._keys, self._bound = keys, bound  # sorted row * bound + item: one per (row, item)
        rows = keys // bound if len(keys) else np.zeros(0, np.int64)
        counts = np.bincount(rows, minlength=n_rows) if len(keys) else np.zeros(n_rows, np.int64)
        self.ptr = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        self.items = torch.from_numpy((keys % bound if len(keys) else keys).astype(np.int64))

    @classmethod
    def build(cls, rows: np.ndarray, items: np.ndarray, n_rows: int) -> "HistoryBags":
        """From (row, item position) pairs; pairs with a negative row or item are skipped, duplicates merged."""
        ok = (rows >= 0) & (items >= 0)
        bound = int(items[ok].max()) + 1 if ok.any() else 1
        return cls(np.unique(rows[ok].astype(np.int64) * bound + items[ok]), bound, n_rows)

    def select(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(flat item positions, bag offsets, bag sizes) of ``rows``, for ``F.embedding_bag``."""
        starts, counts = self.ptr[rows], self.ptr[rows + 1] - self.ptr[rows]
        offsets = torch.cumsum(counts, 0) - counts
        total = int(counts.sum())
        flat = torch.repeat_interleave(starts - offsets, counts) + torch.arange(total)
        return self.items[flat], offsets, counts

    def contains(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each item is in its row's bag."""
        if not len(self._keys):
            return np.zeros(len(rows), dtype=bool)
        ok = (items >= 0) & (items < self._bound)
        query = rows.astype(np.int64) * self._bound + np.where(ok, items, 0)
        pos = np.minimum(np.searchsorted(self._keys, query), len(self._keys) - 1)
        return ok & (self._keys[pos] == query)
