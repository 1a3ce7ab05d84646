"""Training a checkpoint on a night's events: from scratch or warm from a prior (see docs/model.md)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from coldstart import idmap
from coldstart.config import Settings
from coldstart.features import recent_popularity
from coldstart.model.blend import CONTENT_RANK, II_RANK, fit_blend
from coldstart.model.checkpoint import FORMAT_VERSION, Checkpoint, CheckpointError, grow, index_list, json_safe
from coldstart.model.network import HistoryBags, InterestModel, build_model, scene_dim_for
from coldstart.vectors import ContentLike, content_dim_of, content_mapping, content_matrix

log = logging.getLogger("coldstart.model")

NEGATIVES_PER_POSITIVE = 4          # weight of the negatives' mean loss relative to the positives'
NEGATIVES_PER_BATCH = 512           # shared uniform negatives scored against every user of a batch
VALIDATION_FRACTION = 0.25          # held out of training: the metrics and the blend's weights (coldstart/model/blend.py) are picked on these rows
VALIDATION_MAX = 5000               # a cap: a large night's validation pass stays small next to its training
VALIDATION_MIN_EVENTS = 50          # fewer events than this: no split, validation metrics are None
VALIDATION_NEGATIVES = 200          # sampled items each held-out positive is ranked against (AUC)


@dataclass
class TrainingData:
    """One row per positive event.

    ``values``: float, NaN where the event has no rating (those rows only feed the interact head).
    ``item_content`` / ``user_content``: ``id -> vector`` (see module doc); ``item_content`` should
    cover every item of the prior's index too (they are the negatives); missing vectors are zeros.
    ``validation_mask`` (optional, bool, len n): the rows to hold out for the metrics (e.g. the
    newest day's events in a warm run); default: a deterministic random quarter (at most 5000).
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
    device = item_content_all.device
    neg = torch.randint(n_items, (min(VALIDATION_NEGATIVES, n_items),), generator=gen).to(device)
    u = model.user_vec(u_idx, u_content, s_idx, history=history)
    for cold in (False, True):
        keep_pos = torch.zeros(len(i_idx), dtype=torch.bool, device=device) if cold else None
        keep_neg = torch.zeros(len(neg), dtype=torch.bool, device=device) if cold else None
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


def _config_from_settings(settings: Settings, content_dim: int) -> dict:
    dim = int(settings.model_dim)
    return {"format": FORMAT_VERSION, "content_dim": int(content_dim), "dim": dim, "id_dim": dim,
            "scene_dim": scene_dim_for(dim), "hidden": 2 * dim, "ii_rank": II_RANK, "content_rank": CONTENT_RANK,
            "encoder_name": settings.encoder_name}


def train(data: TrainingData, settings: Settings, prior: Checkpoint | None = None, epochs: int | None = None) -> Checkpoint:
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
        started = time.perf_counter()
        ckpt = fit(prepare(data, settings, prior, epochs), data, settings, started=started)
        assert ckpt is not None  # one process is rank 0
        return ckpt
    finally:
        torch.set_num_threads(previous)


def _train_threads(settings: Settings) -> int:
    """Intra-op threads for training: the ``train_threads`` setting, 0 = every core. The batches are small:
    on a 2-core box two threads take a step in 0.65x the time of one when nothing else runs, but two
    OpenMP threads competing with other work (a Spark job, a second test worker) are far slower than one."""
    return int(settings.train_threads) or max(1, os.cpu_count() or 1)


@dataclass
class Start:
    """What every data-parallel rank starts from: the initial checkpoint (a grown prior or a seeded fresh
    model, with the index of every id of the whole data), its config, mode and number of epochs."""

    ckpt: Checkpoint
    config: dict
    mode: str
    epochs: int


@dataclass(frozen=True)
class Rank:
    """This process's place among ``world`` data-parallel ranks; ``steps`` is the number of batches per
    epoch every rank takes (all-reduces must pair up), ``batch`` the rows per rank and batch."""

    rank: int = 0
    world: int = 1
    steps: int | None = None
    batch: int | None = None
    n_train: int | None = None  # training rows over all ranks (the metrics report it)


def prepare(data: TrainingData, settings: Settings, prior: Checkpoint | None, epochs: int | None) -> Start:
    """The starting point of training on ``data`` (see :func:`train`); the ids index the whole data."""
    rated = np.isfinite(data.values)
    return prepare_ids(data.user_ids, data.item_ids, data.scenes,
                       float(data.values[rated].mean()) if rated.any() else 0.0, len(data),
                       data.item_content, data.user_content, settings, prior, epochs)


def prepare_ids(user_ids, item_ids, scenes, rating_mean: float, n_events: int, item_content: ContentLike,
                user_content: ContentLike, settings: Settings, prior: Checkpoint | None, epochs: int | None) -> Start:
    """The starting point of training on events with these ids (repeats allowed; every data-parallel rank
    passes the ids of the whole data and gets the same start): the prior grown with the unseen ids
    (sorted, appended), or a fresh model seeded by ``settings.seed`` over the sorted ids, its rating
    bias at ``rating_mean``. ``user_content`` only sizes the content when there is no item content."""
    seed = int(settings.seed)
    item_map = content_mapping(item_content)

    if prior is not None:
        content_dim = int(prior.config["content_dim"])
        data_dim = content_dim_of(item_map, default=content_dim)
        if data_dim != content_dim:
            raise CheckpointError(f"prior checkpoint has content dim {content_dim}, the data has {data_dim}")
        enc = settings.encoder_name
        if prior.config.get("encoder_name") and enc and prior.config["encoder_name"] != enc:
            raise CheckpointError(f"prior checkpoint was trained on encoder {prior.config['encoder_name']!r}, "
                                  f"not {enc!r}")
        if int(prior.config["dim"]) != int(settings.model_dim):
            log.warning("model_dim=%s differs from the prior's %s: keeping the prior's", settings.model_dim,
                        prior.config["dim"])
        ckpt = grow(prior, user_ids, item_ids, scenes)
        mode = "warm"
        n_epochs = int(settings.train_epochs_warm if epochs is None else epochs)
        config = dict(ckpt.config)
        config["parent_checksum"] = prior.checksum
    else:
        content_dim = content_dim_of(item_map) if item_map else content_dim_of(content_mapping(user_content))
        config = _config_from_settings(settings, content_dim)
        user_index = {k: i for i, k in enumerate(sorted(set(user_ids)))}
        item_index = {k: i for i, k in enumerate(sorted(set(item_ids)))}
        scene_index = {k: i for i, k in enumerate(sorted(set(scenes)))}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(config, len(user_index), len(item_index), len(scene_index))
        with torch.no_grad():
            model.rating_mean.fill_(float(rating_mean))
        ckpt = Checkpoint(model=model, user_index=user_index, item_index=item_index, scene_index=scene_index,
                          config=config, metrics={})
        mode = "cold"
        n_epochs = int(settings.train_epochs_full if epochs is None else epochs)
        config["parent_checksum"] = None
    config.update(n_users=len(ckpt.user_index), n_items=len(ckpt.item_index), n_scenes=len(ckpt.scene_index),
                  mode=mode, epochs=n_epochs, seed=seed, batch_size=int(settings.train_batch_size),
                  learning_rate=float(settings.train_learning_rate),
                  id_learning_rate=float(settings.train_id_learning_rate), id_dropout=float(settings.train_id_dropout),
                  loss_weight_interact=float(settings.loss_weight_interact),
                  loss_weight_rating=float(settings.loss_weight_rating), n_events=int(n_events))
    return Start(ckpt=ckpt, config=config, mode=mode, epochs=n_epochs)


def fit(start: Start, data: TrainingData, settings: Settings, started: float | None = None,
        rank: Rank = Rank()) -> Checkpoint | None:
    """Train ``start``'s model on ``data`` (its validation rows held out) on the ``device`` setting's device;
    the result's model is on the CPU. With ``rank.world`` > 1 this process is one data-parallel rank
    (torch.distributed already initialised; ``data`` is its shard): the ranks start from the same model,
    sum their gradients after every batch (:func:`all_reduce_gradients`) and so take identical steps;
    rank 0 evaluates and returns the checkpoint, the others return None."""
    from coldstart.devices import fast_matmul, resolve_device

    started = time.perf_counter() if started is None else started
    device = resolve_device(settings.device)
    with fast_matmul(device):
        return _fit(start, data, settings, started, rank, device)


def _fit(start: Start, data: TrainingData, settings: Settings, started: float, rank: Rank,
         device: str) -> Checkpoint | None:
    """The training loop: the data as tensors, ``start.epochs`` epochs of steps, then (rank 0) the validation
    metrics and the checkpoint."""
    ckpt, config = start.ckpt, start.config
    model = ckpt.model.to(device)
    t = _tensors(data, ckpt, int(config["content_dim"]), device)
    val_mask = _validation_split(data, int(settings.seed))
    tr = torch.from_numpy(np.flatnonzero(~val_mask))
    va = torch.from_numpy(np.flatnonzero(val_mask))
    if rank.world > 1 and not len(tr):
        raise ValueError(f"rank {rank.rank} of {rank.world} has no training rows")
    step = _Step.of(model, settings, rank, t.n_items, device)
    # One stream per rank (the host's generator: the same draws on any device); rank 0 of one is today's.
    gen = torch.Generator().manual_seed(int(settings.seed) + 1_000_003 * rank.rank)
    history = [_epoch(model, t, step, tr, gen, rank, epoch, start) for epoch in range(start.epochs)]
    if rank.rank != 0:
        return None
    n_train = int(len(tr) if rank.n_train is None else rank.n_train)
    return _finish(model, t, va, start, rank, history, started, n_train, eval_seed=int(settings.seed) + 1)


@dataclass
class _Tensors:
    """The training events as tensors over the checkpoint's index: per event its user (position and row of
    ``user_content``), item, scene and rating; the content of every item of the index (on the device)."""

    item_content: torch.Tensor  # (n_items, content_dim) on the device
    user_content: torch.Tensor  # (distinct users of the data, content_dim)
    users: torch.Tensor         # (n,) position in the user index
    user_rows: torch.Tensor     # (n,) row of user_content
    items: torch.Tensor         # (n,) position in the item index
    scenes: torch.Tensor        # (n,)
    values: torch.Tensor        # (n,) rating, NaN without one
    state: _ItemState | None
    bags: HistoryBags
    in_bag: torch.Tensor        # (n,) bool: the event's item is in its user's history bag
    device: str

    @property
    def n_items(self) -> int:
        return self.item_content.shape[0]

    def on(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True)


def _tensors(data: TrainingData, ckpt: Checkpoint, content_dim: int, device: str) -> _Tensors:
    item_keys = index_list(ckpt.item_index)
    uniq_users, user_codes = np.unique(data.user_ids, return_inverse=True)
    user_rows = torch.from_numpy(user_codes.astype(np.int64))
    items = torch.from_numpy(idmap.positions(data.item_ids, ckpt.item_index))
    bags = _history_bags(data, uniq_users, ckpt.item_index)
    return _Tensors(
        item_content=torch.from_numpy(content_matrix(item_keys, content_mapping(data.item_content),
                                                     content_dim)[0]).to(device),
        user_content=torch.from_numpy(content_matrix(uniq_users, content_mapping(data.user_content), content_dim)[0]),
        users=torch.from_numpy(idmap.positions(uniq_users, ckpt.user_index))[user_rows], user_rows=user_rows,
        items=items, scenes=torch.from_numpy(idmap.positions(data.scenes, ckpt.scene_index)),
        values=torch.from_numpy(data.values.astype(np.float32)), state=_state_tensors(data, item_keys), bags=bags,
        # the event's own item is left out of its user's history mean (it is what is being predicted)
        in_bag=torch.from_numpy(bags.contains(user_codes.astype(np.int64), items.numpy())), device=device)


@dataclass
class _Step:
    """What every training step uses: the two optimizers, the batch size, the sampled negatives per
    batch, the id dropout and the loss weights."""

    dense: torch.optim.Optimizer
    sparse: torch.optim.Optimizer
    batch: int
    n_neg: int
    p_drop: float
    w_interact: float
    w_rating: float

    @classmethod
    def of(cls, model: InterestModel, settings: Settings, rank: Rank, n_items: int, device: str) -> _Step:
        sparse_tables = ("user_id.", "item_id.", "item_id_bias.", "item_hist.", "item_target.")
        dense = [p for n, p in model.named_parameters() if not n.startswith(sparse_tables)]
        sparse = [model.user_id.weight, model.item_id.weight, model.item_id_bias.weight, model.item_hist.weight,
                  model.item_target.weight]
        # the id tables take larger steps: a row only moves in the batches that hold its id
        return cls(dense=torch.optim.Adam(dense, lr=float(settings.train_learning_rate)),
                   sparse=torch.optim.SparseAdam(sparse, lr=float(settings.train_id_learning_rate)),
                   batch=int(rank.batch or settings.train_batch_size), n_neg=min(NEGATIVES_PER_BATCH, n_items),
                   p_drop=float(settings.train_id_dropout), w_interact=float(settings.loss_weight_interact),
                   w_rating=float(settings.loss_weight_rating))


def _epoch(model: InterestModel, t: _Tensors, step: _Step, tr: torch.Tensor, gen: torch.Generator, rank: Rank,
           epoch: int, start: Start) -> dict[str, float]:
    """One pass over the training rows ``tr`` in a seeded order; the mean losses of its batches."""
    t0 = time.perf_counter()
    model.train()
    order = tr[torch.randperm(len(tr), generator=gen)]
    sums = {"loss": 0.0, "interact": 0.0, "rating": 0.0}
    n_batches = 0
    steps = -(-len(order) // step.batch) if rank.steps is None else rank.steps
    for s in range(steps):
        rows = order[s * step.batch:(s + 1) * step.batch]
        # A rank whose shard ran out still joins the step's all-reduce, with a zero-weighted row.
        weight = 1.0 if len(rows) else 0.0
        loss, loss_i, loss_r = _batch_loss(model, t, step, rows if len(rows) else order[:1], gen)
        step.dense.zero_grad(set_to_none=True)
        step.sparse.zero_grad(set_to_none=True)
        (loss * weight if weight != 1.0 else loss).backward()
        if rank.world > 1:
            all_reduce_gradients(model, rank.world)
        step.dense.step()
        step.sparse.step()
        if weight:
            sums["loss"] += float(loss.detach())
            sums["interact"] += float(loss_i.detach())
            sums["rating"] += float(loss_r.detach())
            n_batches += 1
    stats = {k: v / max(n_batches, 1) for k, v in sums.items()}
    log.info("%s epoch %d/%d: loss %.4f (interact %.4f, rating %.4f) on %d events, %.1fs", start.mode, epoch + 1,
             start.epochs, stats["loss"], stats["interact"], stats["rating"], len(tr), time.perf_counter() - t0)
    return stats


def _batch_loss(model: InterestModel, t: _Tensors, step: _Step, rows: torch.Tensor,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weighted loss, interact loss, rating loss) of one batch: its positives against ``step.n_neg``
    uniformly sampled items shared by the batch, with id rows dropped out."""
    on = t.on
    b = len(rows)
    ui, si, ii, vals = on(t.users[rows]), on(t.scenes[rows]), t.items[rows], on(t.values[rows])
    uc = on(t.user_content[t.user_rows[rows]])
    neg = torch.randint(t.n_items, (step.n_neg,), generator=gen)
    keep_u = on(torch.rand(b, generator=gen) >= step.p_drop)
    keep_i = on(torch.rand(b + step.n_neg, generator=gen) >= step.p_drop)
    keep_h = on(torch.rand(b, generator=gen) >= step.p_drop)
    items = on(torch.cat([ii, neg]))
    ii_host, neg_host, ii = ii, neg, on(ii)
    hist = _leave_one_out(model, t.bags, t.user_rows[rows], ii, on(t.in_bag[rows])) * keep_h.unsqueeze(1)
    u = model.user_vec(ui, uc, si, keep_u, hist)
    v, bias = model.item_vec(items, t.item_content[items], keep_i)
    v_pos, b_pos, v_neg, b_neg = v[:b], bias[:b], v[b:], bias[b:]
    target = model._lookup(model.item_target, items, keep_i)
    pos_logit = model.interact_logit(u, v_pos, b_pos) + (hist * target[:b]).sum(-1)
    neg_logit = u @ v_neg.T + b_neg + hist @ target[b:].T
    if t.state is None:
        neg_loss = F.softplus(neg_logit).mean()
    else:
        pos_state, neg_state, neg_live = t.state.batch(rows, ii_host, neg_host)
        pos_state, neg_state, neg_live = tuple(map(on, pos_state)), tuple(map(on, neg_state)), on(neg_live)
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
        loss_r = torch.zeros((), device=t.device)
    return step.w_interact * loss_i + step.w_rating * loss_r, loss_i, loss_r


def _finish(model: InterestModel, t: _Tensors, va: torch.Tensor, start: Start, rank: Rank,
            history: list[dict[str, float]], started: float, n_train: int, eval_seed: int) -> Checkpoint:
    """Rank 0's end of training: the validation metrics on the held-out rows ``va`` and the checkpoint (on the CPU)."""
    on = t.on
    with torch.no_grad():
        val_hist = _leave_one_out(model, t.bags, t.user_rows[va], on(t.items[va]), on(t.in_bag[va]))
    val = _evaluate(model, on(t.users[va]), on(t.user_content[t.user_rows[va]]), on(t.scenes[va]), on(t.items[va]),
                    on(t.values[va]), t.item_content, torch.Generator().manual_seed(eval_seed), val_hist)
    # zero epochs (grow only) refits nothing
    blend = _fit_blend(model, t, va, val_hist, eval_seed - 1) if start.epochs else {}
    model.eval()
    model = model.cpu()
    config = start.config
    if rank.world > 1:
        config["train_processes"] = rank.world
    metrics = {"mode": start.mode, "epochs": start.epochs, "n_train": n_train, **val, **blend,
               "train_loss": [round(h["loss"], 6) for h in history],
               "train_loss_interact": [round(h["interact"], 6) for h in history],
               "train_loss_rating": [round(h["rating"], 6) for h in history]}
    log.info("%s training done in %.1fs: val interact AUC %s (cold item %s), rating RMSE %s (baseline %s)", start.mode,
             time.perf_counter() - started, _fmt(val["val_interact_auc"]), _fmt(val["val_interact_auc_cold_item"]),
             _fmt(val["val_rating_rmse"]), _fmt(val["val_rating_rmse_baseline"]))
    ckpt = start.ckpt
    return Checkpoint(model=model, user_index=ckpt.user_index, item_index=ckpt.item_index,
                      scene_index=ckpt.scene_index, config=config, metrics=json_safe(metrics))


FRESH_ROWS_MAX = 2000  # training events on items new that day that the blend also scores (cold-item stand-ins)


@torch.no_grad()
def _fit_blend(model: InterestModel, t: _Tensors, va: torch.Tensor, val_hist: torch.Tensor, seed: int) -> dict:
    """The closed-form terms and their weights (coldstart/model/blend.py), picked on the held-out rows ``va``
    and on up to FRESH_ROWS_MAX training events whose item was new that day."""
    model.eval()
    on, state = t.on, t.state
    training = torch.ones(len(t.items), dtype=torch.bool)
    training[va] = False
    tr = torch.nonzero(training).squeeze(1)
    fresh_tr = tr[:0]
    if state is not None and len(tr):
        items = t.items[tr]
        new = state.eligible[tr] & (items >= 0) & (state.first_interaction[items.clamp(min=0)] >= state.day[tr])
        fresh_tr = tr[new]
        fresh_tr = fresh_tr[torch.randperm(len(fresh_tr), generator=torch.Generator().manual_seed(seed + 2))[:FRESH_ROWS_MAX]]
    rows = torch.cat([va, fresh_tr])
    hist = torch.cat([val_hist, _leave_one_out(model, t.bags, t.user_rows[fresh_tr], on(t.items[fresh_tr]),
                                               on(t.in_bag[fresh_tr]))])
    user_content = on(t.user_content[t.user_rows[rows]])
    user_out = model.user_vec(on(t.users[rows]), user_content, on(t.scenes[rows]), history=hist)
    flag = torch.cat([torch.zeros(len(va), dtype=torch.bool), torch.ones(len(fresh_tr), dtype=torch.bool)])

    def row_state(pick: torch.Tensor):
        if state is None:
            return None
        _, (fresh, pop), live = state.batch(rows[pick], t.items[rows][pick], torch.arange(t.n_items))
        return fresh, pop, live
    return fit_blend(model, t.bags, t.user_rows[rows], on(t.items[rows]), t.in_bag[rows], user_out, hist,
                     user_content, t.item_content, row_state, seed, fresh_row=flag)


def all_reduce_gradients(model: torch.nn.Module, world: int) -> None:
    """Replace every parameter's gradient by the mean over the ``world`` ranks (torch.distributed initialised).

    Dense gradients: one all-reduce each. The id tables' sparse gradients (rows of the ids in the batch)
    cannot go through NCCL's all-reduce and would be huge made dense, so each rank's coalesced (rows,
    values) are all-gathered, padded to the largest, and summed into one coalesced sparse gradient. A
    parameter this rank's batch did not reach gets a zero gradient so that the collectives pair up. The
    same order of operations on every rank: the ranks' parameters stay identical."""
    import torch.distributed as dist

    for param in model.parameters():
        grad = param.grad
        if isinstance(param, torch.nn.Parameter) and grad is None and not _is_sparse_table(model, param):
            grad = param.grad = torch.zeros_like(param)
        if grad is not None and not grad.is_sparse:
            dist.all_reduce(grad)
            grad.div_(world)
            continue
        device, width = param.device, param.shape[1:]
        if grad is None:
            rows, values = torch.zeros(0, dtype=torch.int64, device=device), param.new_zeros((0, *width))
        else:
            grad = grad.coalesce()
            rows, values = grad.indices()[0], grad.values()
        count = torch.tensor([len(rows)], dtype=torch.int64, device=device)
        counts = [torch.zeros_like(count) for _ in range(world)]
        dist.all_gather(counts, count)
        most = int(max(int(c) for c in counts))
        padded_rows = torch.zeros(most, dtype=torch.int64, device=device)
        padded_values = param.new_zeros((most, *width))
        padded_rows[:len(rows)], padded_values[:len(rows)] = rows, values
        all_rows = [torch.empty_like(padded_rows) for _ in range(world)]
        all_values = [torch.empty_like(padded_values) for _ in range(world)]
        dist.all_gather(all_rows, padded_rows)
        dist.all_gather(all_values, padded_values)
        rows = torch.cat([r[:int(c)] for r, c in zip(all_rows, counts)])
        values = torch.cat([v[:int(c)] for v, c in zip(all_values, counts)]) / world
        # No rank touched the table: no gradient, as in one process (SparseAdam then skips it).
        param.grad = (torch.sparse_coo_tensor(rows.unsqueeze(0), values, param.shape, check_invariants=True).coalesce()
                      if len(rows) else None)


def _is_sparse_table(model: torch.nn.Module, param: torch.nn.Parameter) -> bool:
    return any(isinstance(m, torch.nn.Embedding) and m.sparse and m.weight is param for m in model.modules())


def _history_bags(data: TrainingData, uniq_users: np.ndarray, item_index: Mapping[str, int]) -> HistoryBags:
    if data.history_user_ids is None:
        h_users, h_items = data.user_ids, data.item_ids
    else:
        h_users, h_items = idmap.id_column(data.history_user_ids), idmap.id_column(data.history_item_ids)
    # -1: a user with no event in the data
    rows = idmap.positions(h_users, {user: n for n, user in enumerate(uniq_users)})
    return HistoryBags.build(rows, idmap.positions(h_items, item_index), len(uniq_users))


def _leave_one_out(model: InterestModel, bags: HistoryBags, rows: torch.Tensor, items: torch.Tensor,
                   in_bag: torch.Tensor) -> torch.Tensor:
    """Mean item_hist row over each row's bag without ``items`` (where it is in the bag)."""
    sums, counts = model.history_sums(bags, rows)
    drop = in_bag.float()
    own = F.embedding(items.clamp(min=0), model.item_hist.weight, sparse=True) * drop.unsqueeze(1)
    return (sums - own) / (counts - drop).clamp(min=1.0).unsqueeze(1)


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
