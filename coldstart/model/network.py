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

    rating_mean: torch.Tensor  # buffers (register_buffer), typed for mypy
    ii_left: torch.Tensor
    ii_right: torch.Tensor
    ii_content: torch.Tensor
    content_basis: torch.Tensor
    blend: torch.Tensor

    def __init__(self, n_users: int, n_items: int, n_scenes: int, content_dim: int = DEFAULT_CONTENT_DIM,
                 dim: int = 64, id_dim: int | None = None, scene_dim: int | None = None,
                 hidden: int | None = None, ii_rank: int = 0, content_rank: int = 0) -> None:
        super().__init__()
        id_dim = id_dim or dim
        scene_dim = scene_dim or scene_dim_for(dim)
        hidden = hidden or 2 * dim
        content_rank = min(content_rank, content_dim)
        self.arch = dict(content_dim=content_dim, dim=dim, id_dim=id_dim, scene_dim=scene_dim, hidden=hidden,
                         ii_rank=ii_rank, content_rank=content_rank)
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
        # the closed-form terms (coldstart/model/blend.py): not trained by gradient, refitted every night
        self.register_buffer("ii_left", torch.zeros(n_items, ii_rank))
        self.register_buffer("ii_right", torch.zeros(n_items, ii_rank))
        self.register_buffer("ii_content", torch.zeros(content_dim, ii_rank))  # content -> ii_right (a cold item's)
        self.register_buffer("content_basis", torch.zeros(content_dim, content_rank))
        # weights: item-to-item (item with interactions), content (such an item), content (fresh item),
        # item-to-item (fresh item, through ii_content)
        self.register_buffer("blend", torch.zeros(4))

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

    def ii_sums(self, bags: "HistoryBags", rows: torch.Tensor) -> torch.Tensor:
        """Sum of ``ii_left`` rows over the bags of ``rows`` (the user part of the item-to-item term)."""
        flat, offsets, _ = bags.select(rows.cpu())
        if self.ii_left.shape[1] == 0 or len(flat) == 0:
            return torch.zeros(len(rows), self.ii_left.shape[1], device=self.ii_left.device)
        return F.embedding_bag(flat.to(self.ii_left.device), self.ii_left, offsets.to(self.ii_left.device), mode="sum")

    def ii_item(self, item_idx: torch.Tensor, content: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        """The item part of the item-to-item term, its weight included: ``ii_right`` for an item with
        interactions, the content's image under ``ii_content`` for a fresh one (it has no co-consumption yet)."""
        right = torch.where((item_idx >= 0).unsqueeze(1), self.ii_right[item_idx.clamp(min=0)], torch.zeros(()))
        from_content = (content / content.norm(dim=1, keepdim=True).clamp(min=1e-12)) @ self.ii_content
        return torch.where(fresh.unsqueeze(1), self.blend[3] * from_content, self.blend[0] * right)

    def content_projection(self, content: torch.Tensor) -> torch.Tensor:
        """Unit content rows on the kept content directions (both sides of the content term)."""
        return (content / content.norm(dim=1, keepdim=True).clamp(min=1e-12)) @ self.content_basis

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

    def forward(self, user_idx, user_content, scene_idx, item_idx, item_content, history=None, ii_history=None,
                fresh=None):
        """Per-pair (interact logit, predicted rating) with no id dropout; ``history``: the pooled history
        embedding per row (zeros when None), which also meets the item's target row (the FISM term);
        ``ii_history``: the sum of ``ii_left`` rows over the user's recent items (the item-to-item term;
        none when None); ``fresh`` (bool per row): the item had no interaction yet (the content term's
        weight for it). The closed-form terms are those of coldstart/model/blend.py; this is the logit
        that scoring computes as a product of user_vectors and item_vectors (without the item state)."""
        u = self.user_vec(user_idx, user_content, scene_idx, history=history)
        v, b = self.item_vec(item_idx, item_content)
        logit = self.interact_logit(u, v, b)
        if history is not None:
            logit = logit + (history * self._lookup(self.item_target, item_idx, None)).sum(-1)
        fresh = torch.zeros(len(item_idx), dtype=torch.bool) if fresh is None else fresh
        if ii_history is not None:
            logit = logit + (ii_history * self.ii_item(item_idx, item_content, fresh)).sum(-1)
        weight = torch.where(fresh, self.blend[2], self.blend[1])
        logit = logit + weight * (self.content_projection(user_content) * self.content_projection(item_content)).sum(-1)
        return logit, self.rating(u, v, b)


def build_model(config: dict, n_users: int, n_items: int, n_scenes: int) -> InterestModel:
    return InterestModel(n_users, n_items, n_scenes, content_dim=config["content_dim"], dim=config["dim"],
                         id_dim=config["id_dim"], scene_dim=config["scene_dim"], hidden=config["hidden"],
                         ii_rank=int(config.get("ii_rank", 0)), content_rank=int(config.get("content_rank", 0)))


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

    def without(self, rows: np.ndarray, items: np.ndarray) -> "HistoryBags":
        """These bags less the (row, item) pairs given (pairs not in a bag are ignored)."""
        ok = (items >= 0) & (items < self._bound)
        drop = rows[ok].astype(np.int64) * self._bound + items[ok]
        return HistoryBags(self._keys[~np.isin(self._keys, drop)], self._bound, len(self.ptr) - 1)

    def contains(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each item is in its row's bag."""
        if not len(self._keys):
            return np.zeros(len(rows), dtype=bool)
        ok = (items >= 0) & (items < self._bound)
        query = rows.astype(np.int64) * self._bound + np.where(ok, items, 0)
        pos = np.minimum(np.searchsorted(self._keys, query), len(self._keys) - 1)
        return ok & (self._keys[pos] == query)
