"""The interest model: two towers over fused content, id and scene features, trained multi-task.

P(interact | user X, item Y, scene Z) = sigma(<u(X, Z), v(Y)> + <h(X), q(Y)> + b(Y))

* **user tower** ``u``: MLP over [user content vector (pooled history + profile), user id embedding,
  scene embedding, pooled history embedding]; the pooled history embedding is the mean of a second
  item table (``item_hist``) over the user's recent items (FISM-style): item-to-item collaborative
  signal that a user trained on no event yet (new today) or a light one still gets from history;
  in training the event's own item is left out of the mean. ``h(X)`` also meets the item's row of
  a third table, ``q(Y)`` (``item_target``), in a plain dot product: the FISM item-to-item term,
  which the tower's MLP alone learned too weakly (bench/results/quality.md);
* **item tower** ``v``: MLP over [item encoder vector, item id embedding]; the item bias is
  ``b(Y) = w . content(Y) + id_bias[Y] + state(Y, day)``.

Item state on a day (:meth:`InterestModel.state_term`): ``fresh_bias * fresh(Y) + pop_weight * pop(Y)``.
``fresh(Y)`` is 1 when item Y is in the catalogue but had no interaction before that day; ``pop(Y)``
is ``log1p`` of the item's interactions on the previous days, each day's count halved every
``POPULARITY_HALF_LIFE_DAYS`` days of age (:func:`recent_popularity`). The day is the event's day in
training and the day a list is served in scoring (the day after the run date). New arrivals draw
attention of their own (a release, a launch) and what is popular this week is not what was popular
last month: neither the id tables (a new item has none, and they learn from all of history) nor the
content vector can know either. Training sees the state only when :class:`TrainingData` carries the
event days and the items' dates and daily counts; the first day of history (a bulk bootstrap, where
every item "debuts" and nothing came before) carries no state.

Scoring all users against all items is therefore a matrix product:
``user_vectors(...) @ item_vectors(...)[0].T + item_vectors(...)[1]`` is exactly the logit the model
trains with (see :func:`user_vectors`, :func:`item_vectors`): the vectors are ``[u; h]`` and ``[v; q]``
(``dim + id_dim`` wide).

Cold start (DropoutNet): during training each example's user id embedding and each item's id
embedding *and* id bias are zeroed with probability ``settings.train_id_dropout``, so the towers
learn to produce a good vector from content alone. An entity without an id row (unknown, or grown
today and not trained yet) has an id part of exactly zero, i.e. it is represented by its content;
an unknown scene uses the mean of the known scene rows.

Multi-task: two heads share the towers.

* *will-interact*: binary cross-entropy on the logit, one positive per event against negatives
  sampled uniformly from the items of the index (a shared set per batch, scored as a matrix
  product), the negatives' loss weighted as ``NEGATIVES_PER_POSITIVE`` negatives per positive;
* *rating*: regression of ``value`` (events whose value is not NaN) by a small head over the same
  towers: ``rating_mean + w . (u * v) + a * b(Y) + c``.

The loss is ``loss_weight_interact * bce + loss_weight_rating * mse``, minimised by Adam at
``train_learning_rate`` for the towers and heads and by sparse Adam at ``train_id_learning_rate`` for the
id tables: a row moves only in the batches that hold its id, and at the towers' rate a night's few
steps left users' tastes under-learnt (bench/results/quality.md). A deterministic held-out split
gives each head's validation metric (interact AUC against sampled negatives, also with the items'
ids dropped = cold-item AUC; rating RMSE with the global-mean baseline next to it).

Transfer: :func:`train` with a ``prior`` grows the prior's id tables (:func:`grow`: old rows bit for
bit, new user/item rows zero, new scene rows = mean of the known scenes) and fine-tunes it; id rows
of entities absent from the new data are not touched at all (sparse optimiser). Without a prior it
trains from scratch.

Checkpoints (:class:`Checkpoint`) are folders ``model.pt`` (state dict), ``ids.json``,
``config.json``, ``metrics.json`` and ``MANIFEST.json`` (sha256 of each file); the checkpoint's
checksum is the sha256 of ``MANIFEST.json``. They are written to a temporary sibling folder and
renamed into place; loading verifies every hash and raises :class:`CheckpointError` on any problem.

Content vectors (``item_content`` / ``user_content`` arguments) are given as a mapping
``id -> vector`` (canonical: ``dict[str, np.ndarray]`` of float32). A :class:`pandas.Series` of
vectors indexed by id, or a :class:`pandas.DataFrame` with an ``embedding`` column and the id in an
``item_id`` / ``user_id`` / ``entity_id`` / ``id`` column (or its index) are accepted too. A
missing vector is read as zeros.

Determinism: the same data, settings and seed give the same checkpoint bytes (same checksum) on
the same machine and torch build; ids are sorted, model init and sampling use seeded generators,
no wall-clock value is stored in the checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from coldstart import idmap

__all__ = [
    "CheckpointError",
    "TrainingData",
    "InterestModel",
    "Checkpoint",
    "pool_user_content",
    "recent_popularity",
    "grow",
    "train",
    "user_vectors",
    "item_vectors",
]

log = logging.getLogger("coldstart.model")

FORMAT_VERSION = 2  # 2: item state (fresh_bias, pop_weight), item_hist
POPULARITY_HALF_LIFE_DAYS = 3.0     # age (days) at which a day's interactions count half in pop(Y)
DEFAULT_CONTENT_DIM = 384
NEGATIVES_PER_POSITIVE = 4          # weight of the negatives' mean loss relative to the positives'
NEGATIVES_PER_BATCH = 512           # shared uniform negatives scored against every user of a batch
VALIDATION_FRACTION = 0.05
VALIDATION_MAX = 5000
VALIDATION_MIN_EVENTS = 50          # fewer events than this: no split, validation metrics are None
VALIDATION_NEGATIVES = 200
INFERENCE_BLOCK = 8192

_FILES = ("model.pt", "ids.json", "config.json", "metrics.json")
_MANIFEST = "MANIFEST.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt (checksum mismatch), unreadable or incompatible."""


# --------------------------------------------------------------------------------------------
# content vectors
# --------------------------------------------------------------------------------------------
ContentLike = Any  # Mapping[str, np.ndarray] | pd.Series | pd.DataFrame | None


def _content_mapping(content: ContentLike) -> Mapping[str, Any]:
    if content is None:
        return {}
    if isinstance(content, pd.DataFrame):
        if "embedding" not in content.columns:
            raise ValueError("a content DataFrame needs an 'embedding' column")
        for col in ("item_id", "user_id", "entity_id", "id"):
            if col in content.columns:
                keys = content[col]
                break
        else:
            keys = content.index
        return dict(zip((str(k) for k in keys), content["embedding"].to_numpy()))
    if isinstance(content, pd.Series):
        return dict(zip((str(k) for k in content.index), content.to_numpy()))
    return content


def _content_dim(content: Mapping[str, Any], default: int | None = None) -> int:
    for vec in content.values():
        if vec is not None:
            return int(np.asarray(vec).reshape(-1).shape[0])
    if default is None:
        return DEFAULT_CONTENT_DIM
    return default


def _content_matrix(ids: Iterable[str], content: Mapping[str, Any], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(len(ids), dim) float32 matrix of the ids' vectors (zeros where missing) and a present mask."""
    ids = list(ids)
    out = np.zeros((len(ids), dim), dtype=np.float32)
    present = np.zeros(len(ids), dtype=bool)
    get = content.get
    for row, key in enumerate(ids):
        vec = get(key)
        if vec is None:
            continue
        vec = np.asarray(vec, dtype=np.float32).reshape(-1)
        if vec.shape[0] != dim:
            raise ValueError(f"content vector of {key!r} has {vec.shape[0]} dims, expected {dim}")
        if not np.all(np.isfinite(vec)):
            continue
        out[row] = vec
        present[row] = True
    return out, present


def pool_user_content(user_ids, item_ids, item_content, profile_content=None, weights=None,
                      *, profile_weight: float = 2.0) -> dict[str, np.ndarray]:
    """Content vector per user from the items they interacted with, blended with their profile.

    ``h`` = L2-normalised weighted mean of the content vectors of the user's items (events whose
    item has no vector are skipped); ``p`` = the L2-normalised profile vector. With ``n`` = the sum
    of the user's event weights (of items with content), the result is
    ``normalise(n/(n+k) * h + k/(n+k) * p)`` with ``k = profile_weight``: the profile counts as ``k``
    events, so it dominates for a user with little history and fades as history grows. A user with
    a profile only gets ``p``; a user with neither is absent from the result (callers use zeros).
    Returns ``{user_id: float32 (dim,) unit vector}``, keys sorted.
    """
    user_keys, users = idmap.factorized(user_ids)
    uniq_items, item_codes = idmap.factorized(item_ids)
    if len(users) != len(item_codes):
        raise ValueError("user_ids and item_ids must have the same length")
    item_map = _content_mapping(item_content)
    prof_map = _content_mapping(profile_content)
    dim = _content_dim(item_map, default=None if item_map or not prof_map else _content_dim(prof_map))
    w = np.ones(len(users), dtype=np.float64) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != len(users):
        raise ValueError("weights must have the same length as user_ids")

    import scipy.sparse as sp

    # history part: one sparse (user x item) weight matrix times the item content matrix, in float32
    # and in place, so memory is one (users x dim) matrix, never an (events x dim) copy
    hist_users = np.empty(0, dtype=object)
    hist_means = np.zeros((0, dim), dtype=np.float32)
    hist_totals = np.zeros(0, dtype=np.float64)
    if len(users):
        mat, present = _content_matrix(uniq_items, item_map, dim)
        keep = present[item_codes] & np.isfinite(w) & (w > 0)
        if keep.any():
            kept_users, user_codes = np.unique(users[keep], return_inverse=True)
            hist_users = user_keys[kept_users]
            weights_matrix = sp.csr_matrix((w[keep], (user_codes, item_codes[keep])),
                                           shape=(len(hist_users), len(uniq_items)))
            hist_totals = np.asarray(weights_matrix.sum(axis=1)).ravel()
            hist_means = np.asarray(weights_matrix.astype(np.float32) @ mat)
            hist_means /= hist_totals[:, None].astype(np.float32)
            _normalise_rows(hist_means)

    # profile part: valid profiles (right size, finite, not all zero), normalised
    prof_users = np.array(sorted(prof_map), dtype=object)
    prof_mat = np.zeros((len(prof_users), dim), dtype=np.float32)
    prof_ok = np.zeros(len(prof_users), dtype=bool)
    for row, user in enumerate(prof_users):
        vec = prof_map[user]
        if vec is None:
            continue
        vec = np.asarray(vec, dtype=np.float32).reshape(-1)
        if vec.shape[0] == dim and np.all(np.isfinite(vec)) and np.any(vec):
            prof_mat[row], prof_ok[row] = vec, True
    prof_users, prof_mat = prof_users[prof_ok], _normalise_rows(prof_mat[prof_ok])

    # blend: the profile counts as profile_weight events
    if not len(prof_users):
        everyone, out = hist_users, hist_means  # history only: the means are the result, no copy
    else:
        everyone = np.union1d(hist_users.astype(str), prof_users.astype(str)).astype(object)
        out = np.zeros((len(everyone), dim), dtype=np.float32)
        n = np.zeros(len(everyone))
        has_hist = np.zeros(len(everyone), dtype=bool)
        if len(hist_users):
            at = np.searchsorted(everyone.astype(str), hist_users.astype(str))
            out[at], n[at], has_hist[at] = hist_means, hist_totals, True
        at = np.searchsorted(everyone.astype(str), prof_users.astype(str))
        share = np.where(has_hist[at], n[at] / (n[at] + profile_weight), 0.0)[:, None].astype(np.float32)
        out[at] = share * out[at] + (1.0 - share) * prof_mat
        _normalise_rows(out)
    nonzero = np.linalg.norm(out, axis=1) > 0
    if not nonzero.all():
        everyone, out = everyone[nonzero], out[nonzero]
    return dict(zip((str(u) for u in everyone), out))


def _normalise_rows(mat: np.ndarray) -> np.ndarray:
    """L2-normalise the rows of a float matrix in place (all-zero rows stay zero); returns it."""
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    np.divide(mat, norms, out=mat, where=norms > 0)
    return mat


# --------------------------------------------------------------------------------------------
# training data
# --------------------------------------------------------------------------------------------
@dataclass
class TrainingData:
    """One row per positive event.

    ``values``: float, NaN where the event has no rating (those rows only feed the interact head).
    ``item_content`` / ``user_content``: ``id -> vector`` (see module doc); ``item_content`` should
    cover every item of the prior's index too (they are the negatives); missing vectors are zeros.
    ``validation_mask`` (optional, bool, len n): the rows to hold out for the metrics (e.g. the
    newest day's events in a warm run); default: a deterministic random 5 % (at most 5000).
    ``history_user_ids`` / ``history_item_ids`` (optional, paired): each user's recent items, pooled
    by the user tower; default: the (user, item) pairs of the data itself.
    Item state (optional, all of them or none): ``event_days`` (int, days since 1970-01-01, per
    event), ``item_first_seen`` and ``item_first_interaction`` (``item_id -> day``; an item missing
    from the latter had no interaction yet) and ``item_day_counts`` (columns item_id, day, count:
    interactions per item and day, covering the days before the events). Events on or before
    ``fresh_from`` (the first day of history) carry no state; a sampled negative is only scored on
    days its catalogue row existed.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    scenes: np.ndarray
    values: np.ndarray
    item_content: ContentLike
    user_content: ContentLike
    validation_mask: np.ndarray | None = None
    event_days: np.ndarray | None = None
    item_first_seen: Mapping[str, int] | None = None
    item_first_interaction: Mapping[str, int] | None = None
    fresh_from: int | None = None
    item_day_counts: pd.DataFrame | None = None
    history_user_ids: np.ndarray | pd.Series | None = None  # a categorical Series is looked up per category
    history_item_ids: np.ndarray | pd.Series | None = None

    def __post_init__(self) -> None:
        self.user_ids = idmap.str_array(self.user_ids)
        self.item_ids = idmap.str_array(self.item_ids)
        self.scenes = idmap.str_array(self.scenes)
        n = len(self.user_ids)
        if self.values is None:
            self.values = np.full(n, np.nan, dtype=np.float32)
        self.values = np.asarray(self.values, dtype=np.float32).reshape(-1)
        if not (len(self.item_ids) == len(self.scenes) == len(self.values) == n):
            raise ValueError("user_ids, item_ids, scenes and values must have the same length")
        if self.validation_mask is not None:
            self.validation_mask = np.asarray(self.validation_mask, dtype=bool).reshape(-1)
            if len(self.validation_mask) != n:
                raise ValueError("validation_mask must have the same length as user_ids")
        if self.event_days is not None:
            self.event_days = np.asarray(self.event_days, dtype=np.int64).reshape(-1)
            if len(self.event_days) != n:
                raise ValueError("event_days must have the same length as user_ids")
            if self.item_first_seen is None or self.item_first_interaction is None or self.item_day_counts is None:
                raise ValueError("event_days needs item_first_seen, item_first_interaction and item_day_counts")

    def __len__(self) -> int:
        return len(self.user_ids)


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------
def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.GELU(), nn.Linear(hidden, out))


class InterestModel(nn.Module):
    """Two towers with id tables; see the module doc. Index ``-1`` means "no id row" everywhere."""

    def __init__(self, n_users: int, n_items: int, n_scenes: int, content_dim: int = DEFAULT_CONTENT_DIM,
                 dim: int = 64, id_dim: int | None = None, scene_dim: int | None = None,
                 hidden: int | None = None) -> None:
        super().__init__()
        id_dim = id_dim or dim
        scene_dim = scene_dim or max(4, dim // 4)
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
            return torch.zeros(idx.shape[0], table.embedding_dim)
        # dropped/unknown rows look up nothing, so no gradient (not even a zero one) reaches the table
        sel = known.nonzero().squeeze(1)
        out = torch.zeros(idx.shape[0], table.embedding_dim, dtype=table.weight.dtype)
        return out.index_copy(0, sel, table(idx[sel]))

    def scene_vectors(self, scene_idx: torch.Tensor) -> torch.Tensor:
        if self.scene.num_embeddings == 0:
            return torch.zeros(scene_idx.shape[0], self.scene.embedding_dim)
        rows = self.scene(scene_idx.clamp(min=0))
        mean = self.scene.weight.mean(0, keepdim=True)
        return torch.where((scene_idx >= 0).unsqueeze(1), rows, mean)

    def history_sums(self, bags: "_Bags", rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of item_hist rows, item count) over the bags of ``rows``, once per distinct row."""
        uniq, inverse = torch.unique(rows, return_inverse=True)
        flat, offsets, counts = bags.select(uniq)
        if self.item_hist.num_embeddings == 0 or len(flat) == 0:
            return torch.zeros(len(rows), self.item_hist.embedding_dim), counts[inverse].float()
        sums = F.embedding_bag(flat, self.item_hist.weight, offsets, mode="sum", sparse=True)
        return sums[inverse], counts[inverse].float()

    def user_vec(self, user_idx: torch.Tensor, content: torch.Tensor, scene_idx: torch.Tensor,
                 keep: torch.Tensor | None = None, history: torch.Tensor | None = None) -> torch.Tensor:
        """``history``: the pooled history embedding per row (zeros when None)."""
        if history is None:
            history = torch.zeros(len(user_idx), self.item_hist.embedding_dim)
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


def _build_model(config: dict, n_users: int, n_items: int, n_scenes: int) -> InterestModel:
    return InterestModel(n_users, n_items, n_scenes, content_dim=config["content_dim"], dim=config["dim"],
                         id_dim=config["id_dim"], scene_dim=config["scene_dim"], hidden=config["hidden"])


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=1, allow_nan=False) + "\n").encode()


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> python, recursively (metrics must be valid JSON)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _index_list(index: Mapping[str, int]) -> list[str]:
    keys = [None] * len(index)
    for key, pos in index.items():
        keys[pos] = key
    if any(k is None for k in keys):
        raise CheckpointError("id index is not a dense 0..n-1 mapping")
    return keys  # type: ignore[return-value]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class Checkpoint:
    model: InterestModel
    user_index: dict[str, int]
    item_index: dict[str, int]
    scene_index: dict[str, int]
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    checksum: str | None = None   # sha256 of MANIFEST.json; set by save() and load()

    # -- writing -----------------------------------------------------------------------------
    def _write_files(self, folder: Path) -> str:
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.model.state_dict().items()}
        torch.save(state, folder / "model.pt")
        ids = {"users": _index_list(self.user_index), "items": _index_list(self.item_index),
               "scenes": _index_list(self.scene_index)}
        (folder / "ids.json").write_bytes(_json_bytes(ids))
        (folder / "config.json").write_bytes(_json_bytes(_json_safe(self.config)))
        (folder / "metrics.json").write_bytes(_json_bytes(_json_safe(self.metrics)))
        manifest = {"format": FORMAT_VERSION, "files": {name: _sha256_file(folder / name) for name in _FILES}}
        data = _json_bytes(manifest)
        (folder / _MANIFEST).write_bytes(data)
        for name in (*_FILES, _MANIFEST):
            with (folder / name).open("rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(folder)
        return hashlib.sha256(data).hexdigest()

    def save(self, path: str | os.PathLike) -> str:
        """Write atomically to ``path`` (a folder); return the checksum (sha256 of the manifest).

        Files go to a temporary sibling folder first, which is then renamed to ``path``. An existing
        ``path`` (re-run of the same date) is first renamed aside and deleted after the swap, so a
        reader sees either the old or the new complete checkpoint (or, for an instant, none); never
        a partial one.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:12]
        tmp = path.parent / f".{path.name}.tmp-{token}"
        old = path.parent / f".{path.name}.old-{token}"
        tmp.mkdir()
        try:
            checksum = self._write_files(tmp)
            if path.exists():
                os.rename(path, old)
                try:
                    os.rename(tmp, path)
                except BaseException:
                    os.rename(old, path)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, path)
            _fsync_dir(path.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.checksum = checksum
        log.info("checkpoint written to %s (checksum %s)", path, checksum[:12])
        return checksum

    # -- reading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, expected_checksum: str | None = None) -> "Checkpoint":
        """Load and verify a checkpoint folder; any problem raises :class:`CheckpointError`.

        ``expected_checksum`` (e.g. from model_registry) must then equal the manifest's sha256.
        """
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"no checkpoint at {path}")
        try:
            manifest_bytes = (path / _MANIFEST).read_bytes()
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read {_MANIFEST}: {exc}") from None
        checksum = hashlib.sha256(manifest_bytes).hexdigest()
        if expected_checksum is not None and checksum != expected_checksum:
            raise CheckpointError(f"{path}: checksum {checksum} differs from the expected {expected_checksum}")
        try:
            manifest = json.loads(manifest_bytes)
            files = manifest["files"]
            fmt = manifest["format"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: unreadable manifest: {exc}") from None
        if fmt != FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format {fmt!r}, expected {FORMAT_VERSION}")
        if not isinstance(files, dict) or set(files) != set(_FILES):
            raise CheckpointError(f"{path}: manifest lists {sorted(files) if isinstance(files, dict) else files}, "
                                  f"expected {sorted(_FILES)}")
        for name in _FILES:
            target = path / name
            if not target.is_file():
                raise CheckpointError(f"{path}: missing {name}")
            digest = _sha256_file(target)
            if digest != files[name]:
                raise CheckpointError(f"{path}: checksum mismatch in {name}")
        try:
            ids = json.loads((path / "ids.json").read_bytes())
            config = json.loads((path / "config.json").read_bytes())
            metrics = json.loads((path / "metrics.json").read_bytes())
            state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
            user_index = {k: i for i, k in enumerate(ids["users"])}
            item_index = {k: i for i, k in enumerate(ids["items"])}
            scene_index = {k: i for i, k in enumerate(ids["scenes"])}
            model = _build_model(config, len(user_index), len(item_index), len(scene_index))
            model.load_state_dict(state, strict=True)
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - any parse/shape problem means an unusable checkpoint
            raise CheckpointError(f"{path}: cannot load: {type(exc).__name__}: {exc}") from None
        model.eval()
        return cls(model=model, user_index=user_index, item_index=item_index, scene_index=scene_index,
                   config=config, metrics=metrics, checksum=checksum)


# --------------------------------------------------------------------------------------------
# transfer: growing the id tables
# --------------------------------------------------------------------------------------------
def _extend_index(index: Mapping[str, int], ids: Iterable[Any]) -> tuple[dict[str, int], list[str]]:
    new = sorted({str(i) for i in ids} - set(index))
    out = dict(index)
    for key in new:
        out[key] = len(out)
    return out, new


def grow(ckpt: Checkpoint, user_ids, item_ids, scenes) -> Checkpoint:
    """A new checkpoint whose id tables also hold the unseen ids (sorted, appended).

    Old rows are copied bit for bit; new user and item rows (and item id biases) are zero, so a new
    entity is represented by its content exactly as an unknown one would be; a new scene row is the
    mean of the known scene rows (zero if there are none). ``ckpt`` is not modified.
    """
    user_index, new_users = _extend_index(ckpt.user_index, idmap.str_array(user_ids))
    item_index, new_items = _extend_index(ckpt.item_index, idmap.str_array(item_ids))
    scene_index, new_scenes = _extend_index(ckpt.scene_index, idmap.str_array(scenes))
    old = ckpt.model
    model = _build_model(ckpt.config, len(user_index), len(item_index), len(scene_index))
    state = {k: v.detach().clone() for k, v in old.state_dict().items()}
    with torch.no_grad():
        def extended(table: torch.Tensor, n_new: int, fill: torch.Tensor | None = None) -> torch.Tensor:
            extra = torch.zeros(n_new, table.shape[1], dtype=table.dtype)
            if fill is not None and n_new:
                extra[:] = fill
            return torch.cat([table, extra], dim=0)

        state["user_id.weight"] = extended(state["user_id.weight"], len(new_users))
        state["item_id.weight"] = extended(state["item_id.weight"], len(new_items))
        state["item_id_bias.weight"] = extended(state["item_id_bias.weight"], len(new_items))
        state["item_hist.weight"] = extended(state["item_hist.weight"], len(new_items))
        state["item_target.weight"] = extended(state["item_target.weight"], len(new_items))
        scenes_w = state["scene.weight"]
        mean = scenes_w.mean(0) if scenes_w.shape[0] else None
        state["scene.weight"] = extended(scenes_w, len(new_scenes), mean)
    model.load_state_dict(state, strict=True)
    config = dict(ckpt.config, n_users=len(user_index), n_items=len(item_index), n_scenes=len(scene_index))
    if new_users or new_items or new_scenes:
        log.info("grew id tables: +%d users, +%d items, +%d scenes", len(new_users), len(new_items), len(new_scenes))
    return Checkpoint(model=model, user_index=user_index, item_index=item_index, scene_index=scene_index,
                      config=config, metrics={}, checksum=None)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def _validation_split(data: TrainingData, seed: int) -> np.ndarray:
    n = len(data)
    if data.validation_mask is not None:
        return data.validation_mask.copy()
    mask = np.zeros(n, dtype=bool)
    if n < VALIDATION_MIN_EVENTS:
        return mask
    n_val = min(VALIDATION_MAX, max(1, int(round(n * VALIDATION_FRACTION))))
    rng = np.random.default_rng(seed)
    mask[rng.permutation(n)[:n_val]] = True
    return mask


def _auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Mean over positives of P(pos > neg) against its row of negatives (ties count half)."""
    greater = (pos.unsqueeze(1) > neg).float().mean(1)
    ties = (pos.unsqueeze(1) == neg).float().mean(1)
    return float((greater + 0.5 * ties).mean())


@torch.no_grad()
def _evaluate(model: InterestModel, u_idx, u_content, s_idx, i_idx, values, item_content_all,
              gen: torch.Generator, history: torch.Tensor | None = None) -> dict[str, Any]:
    model.eval()
    out: dict[str, Any] = {"val_interact_auc": None, "val_interact_auc_cold_item": None,
                           "val_interact_logloss": None, "val_rating_rmse": None,
                           "val_rating_rmse_baseline": None, "n_val": int(len(u_idx)),
                           "n_val_rated": int(torch.isfinite(values).sum()) if len(values) else 0}
    n_items = item_content_all.shape[0]
    if len(u_idx) == 0 or n_items == 0:
        return out
    neg = torch.randint(n_items, (min(VALIDATION_NEGATIVES, n_items),), generator=gen)
    u = model.user_vec(u_idx, u_content, s_idx, history=history)
    for cold in (False, True):
        keep_pos = torch.zeros(len(i_idx), dtype=torch.bool) if cold else None
        keep_neg = torch.zeros(len(neg), dtype=torch.bool) if cold else None
        v, b = model.item_vec(i_idx, item_content_all[i_idx.clamp(min=0)], keep_pos)
        vn, bn = model.item_vec(neg, item_content_all[neg], keep_neg)
        pos = model.interact_logit(u, v, b)
        negs = u @ vn.T + bn
        if history is not None:  # the FISM term; a cold item has no target row
            pos = pos + (history * model._lookup(model.item_target, i_idx, keep_pos)).sum(-1)
            negs = negs + history @ model._lookup(model.item_target, neg, keep_neg).T
        out["val_interact_auc_cold_item" if cold else "val_interact_auc"] = _auc(pos, negs)
        if not cold:
            out["val_interact_logloss"] = float(F.softplus(-pos).mean() + NEGATIVES_PER_POSITIVE * F.softplus(negs).mean())
            rated = torch.isfinite(values)
            if rated.any():
                pred = model.rating(u[rated], v[rated], b[rated])
                out["val_rating_rmse"] = float(torch.sqrt(((pred - values[rated]) ** 2).mean()))
                out["val_rating_rmse_baseline"] = float(torch.sqrt(((model.rating_mean - values[rated]) ** 2).mean()))
    return out


def _config_from_settings(settings, content_dim: int) -> dict:
    dim = int(settings.model_dim)
    return {"format": FORMAT_VERSION, "content_dim": int(content_dim), "dim": dim, "id_dim": dim,
            "scene_dim": max(4, dim // 4), "hidden": 2 * dim,
            "encoder_name": str(getattr(settings, "encoder_name", ""))}


def train(data: TrainingData, settings, prior: Checkpoint | None = None, epochs: int | None = None) -> Checkpoint:
    """Train a checkpoint on ``data``.

    ``prior`` given: warm start (grow its id tables with the data's ids, then fine-tune for
    ``epochs`` or ``settings.train_epochs_warm`` epochs); the prior's architecture is kept. Without
    it: from scratch for ``epochs`` or ``settings.train_epochs_full`` epochs. A prior whose content
    dimension or encoder differs raises :class:`CheckpointError` (train cold instead).
    The caller assembles the events (a warm run: the day's events plus a replay sample of history,
    ``settings.train_replay_sample``). ``metrics`` of the result hold the per-head validation
    metrics of the last epoch and the per-epoch losses; ``config`` holds mode, seed, parent checksum.
    """
    threads = _train_threads(settings)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(data, settings, prior, epochs)
    finally:
        torch.set_num_threads(previous)


def _train_threads(settings) -> int:
    """Intra-op threads for training: ``settings.train_threads`` if that setting exists (> 0), else
    half the cores (at least 1). The batches are small: on a busy 2-core box two OpenMP threads
    competing with Spark are ~10x slower than one."""
    wanted = int(getattr(settings, "train_threads", 0) or 0)
    if wanted > 0:
        return wanted
    return max(1, (os.cpu_count() or 2) // 2)


def _train(data: TrainingData, settings, prior: Checkpoint | None, epochs: int | None) -> Checkpoint:
    started = time.perf_counter()
    seed = int(settings.seed)
    item_map = _content_mapping(data.item_content)
    user_map = _content_mapping(data.user_content)

    if prior is not None:
        content_dim = int(prior.config["content_dim"])
        data_dim = _content_dim(item_map, default=content_dim)
        if data_dim != content_dim:
            raise CheckpointError(f"prior checkpoint has content dim {content_dim}, the data has {data_dim}")
        enc = str(getattr(settings, "encoder_name", ""))
        if prior.config.get("encoder_name") and enc and prior.config["encoder_name"] != enc:
            raise CheckpointError(f"prior checkpoint was trained on encoder {prior.config['encoder_name']!r}, "
                                  f"not {enc!r}")
        if int(prior.config["dim"]) != int(settings.model_dim):
            log.warning("model_dim=%s differs from the prior's %s: keeping the prior's", settings.model_dim,
                        prior.config["dim"])
        ckpt = grow(prior, data.user_ids, data.item_ids, data.scenes)
        mode = "warm"
        n_epochs = int(settings.train_epochs_warm if epochs is None else epochs)
        config = dict(ckpt.config)
        config["parent_checksum"] = prior.checksum
    else:
        content_dim = _content_dim(item_map) if item_map else _content_dim(user_map)
        config = _config_from_settings(settings, content_dim)
        user_index = {k: i for i, k in enumerate(sorted(set(data.user_ids)))}
        item_index = {k: i for i, k in enumerate(sorted(set(data.item_ids)))}
        scene_index = {k: i for i, k in enumerate(sorted(set(data.scenes)))}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _build_model(config, len(user_index), len(item_index), len(scene_index))
        rated = np.isfinite(data.values)
        with torch.no_grad():
            model.rating_mean.fill_(float(data.values[rated].mean()) if rated.any() else 0.0)
        ckpt = Checkpoint(model=model, user_index=user_index, item_index=item_index, scene_index=scene_index,
                          config=config, metrics={})
        mode = "cold"
        n_epochs = int(settings.train_epochs_full if epochs is None else epochs)
        config["parent_checksum"] = None
    model = ckpt.model
    config.update(n_users=len(ckpt.user_index), n_items=len(ckpt.item_index), n_scenes=len(ckpt.scene_index),
                  mode=mode, epochs=n_epochs, seed=seed, batch_size=int(settings.train_batch_size),
                  learning_rate=float(settings.train_learning_rate),
                  id_learning_rate=float(settings.train_id_learning_rate), id_dropout=float(settings.train_id_dropout),
                  loss_weight_interact=float(settings.loss_weight_interact),
                  loss_weight_rating=float(settings.loss_weight_rating), n_events=len(data))

    # tensors ----------------------------------------------------------------------------------
    item_keys = _index_list(ckpt.item_index)
    item_content_all = torch.from_numpy(_content_matrix(item_keys, item_map, content_dim)[0])
    uniq_users, user_codes = np.unique(data.user_ids, return_inverse=True)
    user_mat = torch.from_numpy(_content_matrix(uniq_users, user_map, content_dim)[0])
    u_all = torch.from_numpy(idmap.positions(uniq_users, ckpt.user_index))[torch.from_numpy(user_codes.astype(np.int64))]
    uc_all = torch.from_numpy(user_codes.astype(np.int64))  # row of user_mat
    i_all = torch.from_numpy(idmap.positions(data.item_ids, ckpt.item_index))
    s_all = torch.from_numpy(idmap.positions(data.scenes, ckpt.scene_index))
    v_all = torch.from_numpy(data.values.astype(np.float32))
    state = _state_tensors(data, item_keys)
    bags = _history_bags(data, uniq_users, ckpt.item_index)
    # the event's own item is left out of its user's history mean (it is what is being predicted)
    in_bag = torch.from_numpy(bags.contains(user_codes.astype(np.int64), i_all.numpy()))

    val_mask = _validation_split(data, seed)
    tr = torch.from_numpy(np.flatnonzero(~val_mask))
    va = torch.from_numpy(np.flatnonzero(val_mask))
    gen = torch.Generator().manual_seed(seed)
    eval_gen_seed = seed + 1

    sparse_tables = ("user_id.", "item_id.", "item_id_bias.", "item_hist.", "item_target.")
    dense = [p for n, p in model.named_parameters() if not n.startswith(sparse_tables)]
    sparse = [model.user_id.weight, model.item_id.weight, model.item_id_bias.weight, model.item_hist.weight,
              model.item_target.weight]
    # the id tables take larger steps: a row only moves in the batches that hold its id
    opt_dense = torch.optim.Adam(dense, lr=float(settings.train_learning_rate))
    opt_sparse = torch.optim.SparseAdam(sparse, lr=float(settings.train_id_learning_rate))
    p_drop = float(settings.train_id_dropout)
    w_i, w_r = float(settings.loss_weight_interact), float(settings.loss_weight_rating)
    batch = int(settings.train_batch_size)
    n_items = item_content_all.shape[0]
    n_neg = min(NEGATIVES_PER_BATCH, n_items)

    history: list[dict[str, float]] = []
    for epoch in range(n_epochs):
        t0 = time.perf_counter()
        model.train()
        order = tr[torch.randperm(len(tr), generator=gen)]
        sums = {"loss": 0.0, "interact": 0.0, "rating": 0.0}
        n_batches = 0
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            b = len(rows)
            ui, si, ii, vals = u_all[rows], s_all[rows], i_all[rows], v_all[rows]
            uc = user_mat[uc_all[rows]]
            neg = torch.randint(n_items, (n_neg,), generator=gen)
            keep_u = torch.rand(b, generator=gen) >= p_drop
            keep_i = torch.rand(b + n_neg, generator=gen) >= p_drop
            keep_h = torch.rand(b, generator=gen) >= p_drop
            items = torch.cat([ii, neg])
            hist = _leave_one_out(model, bags, uc_all[rows], ii, in_bag[rows]) * keep_h.unsqueeze(1)
            u = model.user_vec(ui, uc, si, keep_u, hist)
            v, bias = model.item_vec(items, item_content_all[items], keep_i)
            v_pos, b_pos, v_neg, b_neg = v[:b], bias[:b], v[b:], bias[b:]
            target = model._lookup(model.item_target, items, keep_i)
            pos_logit = model.interact_logit(u, v_pos, b_pos) + (hist * target[:b]).sum(-1)
            neg_logit = u @ v_neg.T + b_neg + hist @ target[b:].T
            if state is None:
                neg_loss = F.softplus(neg_logit).mean()
            else:
                pos_state, neg_state, neg_live = state.batch(rows, ii, neg)
                pos_logit = pos_logit + model.state_term(*pos_state)
                neg_logit = neg_logit + model.state_term(*neg_state)
                # a negative whose catalogue row did not exist yet on the event's day was no candidate then
                neg_loss = (F.softplus(neg_logit) * neg_live).sum() / neg_live.sum().clamp(min=1.0)
            loss_i = F.softplus(-pos_logit).mean() + NEGATIVES_PER_POSITIVE * neg_loss
            rated = torch.isfinite(vals)
            if rated.any():
                pred = model.rating(u[rated], v_pos[rated], b_pos[rated])
                loss_r = F.mse_loss(pred, vals[rated])
            else:
                loss_r = torch.zeros(())
            loss = w_i * loss_i + w_r * loss_r
            opt_dense.zero_grad(set_to_none=True)
            opt_sparse.zero_grad(set_to_none=True)
            loss.backward()
            opt_dense.step()
            opt_sparse.step()
            sums["loss"] += float(loss.detach())
            sums["interact"] += float(loss_i.detach())
            sums["rating"] += float(loss_r.detach())
            n_batches += 1
        epoch_stats = {k: v / max(n_batches, 1) for k, v in sums.items()}
        history.append(epoch_stats)
        log.info("%s epoch %d/%d: loss %.4f (interact %.4f, rating %.4f) on %d events, %.1fs", mode, epoch + 1,
                 n_epochs, epoch_stats["loss"], epoch_stats["interact"], epoch_stats["rating"], len(tr),
                 time.perf_counter() - t0)

    with torch.no_grad():
        val_hist = _leave_one_out(model, bags, uc_all[va], i_all[va], in_bag[va])
    val = _evaluate(model, u_all[va], user_mat[uc_all[va]], s_all[va], i_all[va], v_all[va], item_content_all,
                    torch.Generator().manual_seed(eval_gen_seed), val_hist)
    model.eval()
    metrics = {"mode": mode, "epochs": n_epochs, "n_train": int(len(tr)), **val,
               "train_loss": [round(h["loss"], 6) for h in history],
               "train_loss_interact": [round(h["interact"], 6) for h in history],
               "train_loss_rating": [round(h["rating"], 6) for h in history]}
    log.info("%s training done in %.1fs: val interact AUC %s (cold item %s), rating RMSE %s (baseline %s)", mode,
             time.perf_counter() - started, _fmt(val["val_interact_auc"]), _fmt(val["val_interact_auc_cold_item"]),
             _fmt(val["val_rating_rmse"]), _fmt(val["val_rating_rmse_baseline"]))
    return Checkpoint(model=model, user_index=ckpt.user_index, item_index=ckpt.item_index,
                      scene_index=ckpt.scene_index, config=config, metrics=_json_safe(metrics))


class _Bags:
    """Item positions per history row (CSR): ``items[ptr[r]:ptr[r + 1]]`` are row r's distinct items, sorted."""

    def __init__(self, keys: np.ndarray, bound: int, n_rows: int):
        self._keys, self._bound = keys, bound  # sorted row * bound + item: one per (row, item)
        rows = keys // bound if len(keys) else np.zeros(0, np.int64)
        counts = np.bincount(rows, minlength=n_rows) if len(keys) else np.zeros(n_rows, np.int64)
        self.ptr = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        self.items = torch.from_numpy((keys % bound if len(keys) else keys).astype(np.int64))

    @classmethod
    def build(cls, rows: np.ndarray, items: np.ndarray, n_rows: int) -> "_Bags":
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


def _history_bags(data: TrainingData, uniq_users: np.ndarray, item_index: Mapping[str, int]) -> _Bags:
    if data.history_user_ids is None:
        h_users, h_items = data.user_ids, data.item_ids
    else:
        h_users, h_items = idmap.id_column(data.history_user_ids), idmap.id_column(data.history_item_ids)
    # -1: a user with no event in the data
    rows = idmap.positions(h_users, {user: n for n, user in enumerate(uniq_users)})
    return _Bags.build(rows, idmap.positions(h_items, item_index), len(uniq_users))


def _leave_one_out(model: InterestModel, bags: _Bags, rows: torch.Tensor, items: torch.Tensor,
                   in_bag: torch.Tensor) -> torch.Tensor:
    """Mean item_hist row over each row's bag without ``items`` (where it is in the bag)."""
    sums, counts = model.history_sums(bags, rows)
    drop = in_bag.float()
    own = F.embedding(items.clamp(min=0), model.item_hist.weight, sparse=True) * drop.unsqueeze(1)
    return (sums - own) / (counts - drop).clamp(min=1.0).unsqueeze(1)


def recent_popularity(counts: pd.DataFrame, item_keys: Sequence[str], days: Sequence[int]) -> np.ndarray:
    """(len(days), len(item_keys)) float32: ``pop`` of each item on each day, i.e. ``log1p`` of its
    interactions on the days before, each day's count weighted ``0.5 ** ((day - 1 - count_day) / half-life)``.
    ``counts``: columns item_id, day, count (days since 1970-01-01)."""
    out = np.zeros((len(days), len(item_keys)), dtype=np.float32)
    if counts is None or counts.empty or not len(days):
        return out
    position = {k: n for n, k in enumerate(item_keys)}
    cols = counts["item_id"].map(position)
    keep = cols.notna().to_numpy()
    cols = cols[keep].to_numpy(np.int64)
    count_days = counts["day"].to_numpy(np.int64)[keep]
    values = counts["count"].to_numpy(np.float64)[keep]
    for row, day in enumerate(days):
        before = count_days < day
        weights = np.power(0.5, (day - 1 - count_days[before]) / POPULARITY_HALF_LIFE_DAYS)
        out[row] = np.log1p(np.bincount(cols[before], weights=values[before] * weights, minlength=len(item_keys)))
    return out


@dataclass
class _ItemState:
    """Day numbers and popularity behind the item-state term, per training event and per item of the index."""
    day: torch.Tensor                # (n_events,) event day
    eligible: torch.Tensor           # (n_events,) bool: after the first day of history
    first_seen: torch.Tensor         # (n_items,) catalogue day (NEVER when unknown: never a candidate)
    first_interaction: torch.Tensor  # (n_items,) NEVER when none yet
    pop: torch.Tensor                # (n_distinct_days, n_items) recent_popularity on each event day
    day_row: torch.Tensor            # (n_events,) row of ``pop`` for the event's day

    def batch(self, rows: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor):
        """((fresh, pop) of the positives (b,), (fresh, pop) of the negatives (b, n_neg), negative live (b, n_neg))."""
        day, eligible, pop_rows = self.day[rows], self.eligible[rows], self.day_row[rows]
        on = eligible.float()
        pos_fresh = eligible & (self.first_interaction[pos_items] >= day)
        pos_pop = self.pop[pop_rows, pos_items] * on
        live = self.first_seen[neg_items].unsqueeze(0) <= day.unsqueeze(1)
        neg_fresh = eligible.unsqueeze(1) & live & (self.first_interaction[neg_items].unsqueeze(0) >= day.unsqueeze(1))
        neg_pop = self.pop[pop_rows.unsqueeze(1), neg_items.unsqueeze(0)] * on.unsqueeze(1)
        return (pos_fresh.float(), pos_pop), (neg_fresh.float(), neg_pop), live.float()


_NEVER = np.iinfo(np.int64).max


def _state_tensors(data: TrainingData, item_keys: list[str]) -> _ItemState | None:
    if data.event_days is None:
        return None
    first_seen = data.item_first_seen or {}
    first_interaction = data.item_first_interaction or {}
    seen = np.array([first_seen.get(k, _NEVER) for k in item_keys], dtype=np.int64)
    # an item with events in the data has interacted by its earliest event day at the latest
    earliest = pd.Series(data.event_days).groupby(data.item_ids).min().to_dict()
    first = np.array([min(first_interaction.get(k, _NEVER), earliest.get(k, _NEVER)) for k in item_keys], dtype=np.int64)
    seen = np.minimum(seen, first)  # an interaction proves the item was in the catalogue
    days = torch.from_numpy(data.event_days)
    eligible = torch.ones_like(days, dtype=torch.bool) if data.fresh_from is None else days > int(data.fresh_from)
    distinct, day_row = np.unique(data.event_days, return_inverse=True)
    pop = recent_popularity(data.item_day_counts, item_keys, distinct)
    return _ItemState(day=days, eligible=eligible, first_seen=torch.from_numpy(seen),
                      first_interaction=torch.from_numpy(first), pop=torch.from_numpy(pop),
                      day_row=torch.from_numpy(day_row.astype(np.int64)))


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


# --------------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------------
def user_vectors(ckpt: Checkpoint, user_ids, scenes, user_content, history: pd.DataFrame | None = None) -> np.ndarray:
    """(n, dim) float32 user-tower outputs for (user, scene) rows.

    ``history`` (optional, columns user_id and item_id): the users' recent items, pooled by the user
    tower (items the model has no row for are skipped); without it the pooled part is zero.
    ``scenes``: one per user, or a single string for all. An unknown user has a zero id part (content
    only; no content = zeros); an unknown scene uses the mean of the known scene rows.
    ``score = user_vectors(...) @ item_vectors(...)[0].T + item_vectors(...)[1]`` is the model's logit.
    """
    users = idmap.str_array(user_ids)
    if isinstance(scenes, str):
        scene_arr = np.array([scenes] * len(users), dtype=object)
    else:
        scene_arr = idmap.str_array(scenes)
    if len(scene_arr) != len(users):
        raise ValueError("scenes must be one string or one per user")
    model = ckpt.model
    model.eval()
    content_dim = int(ckpt.config["content_dim"])
    user_map = _content_mapping(user_content)
    id_dim = int(ckpt.config["id_dim"])
    out = np.zeros((len(users), int(ckpt.config["dim"]) + id_dim), dtype=np.float32)
    uniq_users, user_rows = np.unique(users, return_inverse=True)
    bags = None
    if history is not None and len(history):
        rows = idmap.positions(idmap.id_column(history["user_id"]), {u: n for n, u in enumerate(uniq_users)})
        bags = _Bags.build(rows, idmap.positions(idmap.id_column(history["item_id"]), ckpt.item_index), len(uniq_users))
    with torch.no_grad():
        for start in range(0, len(users), INFERENCE_BLOCK):
            part = users[start:start + INFERENCE_BLOCK]
            content = torch.from_numpy(_content_matrix(part, user_map, content_dim)[0])
            ui = torch.from_numpy(idmap.positions(part, ckpt.user_index))
            si = torch.from_numpy(idmap.positions(scene_arr[start:start + INFERENCE_BLOCK], ckpt.scene_index))
            pooled = None
            if bags is not None:
                sums, counts = model.history_sums(bags, torch.from_numpy(user_rows[start:start + len(part)].astype(np.int64)))
                pooled = sums / counts.clamp(min=1.0).unsqueeze(1)
            out[start:start + len(part), :-id_dim] = model.user_vec(ui, content, si, history=pooled).numpy()
            if pooled is not None:
                out[start:start + len(part), -id_dim:] = pooled.numpy()
    return out


def item_vectors(ckpt: Checkpoint, item_ids, item_content, fresh=None, pop=None) -> tuple[np.ndarray, np.ndarray]:
    """((m, dim) float32 item-tower outputs, (m,) float32 biases).

    An unknown item has a zero id part and zero id bias: its vector and bias come from its content
    alone (what the model learned for id-dropped items, i.e. the content-conditioned mean bias).
    ``fresh`` (bool per item) and ``pop`` (:func:`recent_popularity` per item), both optional, are
    the items' state on the day the scores are for; the bias then includes the item-state term.
    """
    items = idmap.str_array(item_ids)
    model = ckpt.model
    model.eval()
    content_dim = int(ckpt.config["content_dim"])
    item_map = _content_mapping(item_content)
    id_dim = int(ckpt.config["id_dim"])
    vecs = np.zeros((len(items), int(ckpt.config["dim"]) + id_dim), dtype=np.float32)
    bias = np.zeros(len(items), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(items), INFERENCE_BLOCK):
            part = items[start:start + INFERENCE_BLOCK]
            content = torch.from_numpy(_content_matrix(part, item_map, content_dim)[0])
            ii = torch.from_numpy(idmap.positions(part, ckpt.item_index))
            v, b = model.item_vec(ii, content)
            vecs[start:start + len(part), :-id_dim] = v.numpy()
            vecs[start:start + len(part), -id_dim:] = model._lookup(model.item_target, ii, None).numpy()
            bias[start:start + len(part)] = b.numpy()
        if fresh is not None or pop is not None:
            fresh = torch.as_tensor(np.zeros(len(items), bool) if fresh is None else np.asarray(fresh, dtype=bool).reshape(-1))
            pop = torch.as_tensor(np.zeros(len(items), np.float32) if pop is None else np.asarray(pop, np.float32).reshape(-1))
            if len(fresh) != len(items) or len(pop) != len(items):
                raise ValueError("fresh and pop must have one value per item")
            bias += model.state_term(fresh, pop).numpy()
    return vecs, bias
