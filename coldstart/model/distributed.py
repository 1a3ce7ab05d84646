"""Data-parallel training with ``pyspark.ml.torch.distributor.TorchDistributor`` (``train_processes`` > 1).

The driver prepares the starting point once (:func:`coldstart.model.training.prepare`: the ids of the
whole data, a seeded fresh model or the grown prior) and writes it with one shard of the events per
rank to a folder in the models store: rank r gets the training rows r, r + N, ... and rank 0 also the
validation rows. TorchDistributor starts N processes (on the driver's host with a ``local[...]``
master, as barrier tasks on the executors otherwise); each joins a torch.distributed group (gloo on
the CPU, NCCL on CUDA), reads its shard and trains with the batch split N ways: after every batch the
gradients are averaged over the ranks (dense ones all-reduced, the sparse id-table rows all-gathered),
so every rank takes the same optimiser step and the replicas stay identical. Rank 0 evaluates and
writes the checkpoint; the driver loads it and removes the folder.

Determinism: the same data, settings, seed and N give the same checkpoint (each rank's random stream
is seeded from the seed and its rank; the collectives reduce in rank order). N = 1 never comes here.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from coldstart.config import Settings
from coldstart.model.checkpoint import Checkpoint
from coldstart.model.training import Rank, TrainingData, _train_threads, _validation_split, fit, prepare

log = logging.getLogger("coldstart.model")

_PER_EVENT = ("user_ids", "item_ids", "scenes", "values", "validation_mask", "event_days")


def shard(data: TrainingData, rows: np.ndarray, validation: np.ndarray, first_interaction: dict | None) -> TrainingData:
    """The events ``rows`` of ``data`` (``validation``: which of them are held out), with the user-side
    inputs cut to the shard's users and the items' first interaction taken over the whole data."""
    per_event: dict[str, Any] = {name: (None if getattr(data, name) is None else getattr(data, name)[rows])
                                 for name in _PER_EVENT}
    per_event["validation_mask"] = validation
    users = set(data.user_ids[rows].tolist())
    user_content = data.user_content
    if isinstance(user_content, dict):
        user_content = {u: v for u, v in user_content.items() if u in users}
    history: dict[str, Any] = {}
    if data.history_user_ids is not None:
        h_users = np.asarray(data.history_user_ids, dtype=object)
        keep = np.fromiter((u in users for u in h_users), dtype=bool, count=len(h_users))
        history = {"history_user_ids": h_users[keep], "history_item_ids": np.asarray(data.history_item_ids, dtype=object)[keep]}
    return replace(data, **per_event, user_content=user_content, **history,
                   item_first_interaction=first_interaction if data.event_days is not None else data.item_first_interaction)


def _first_interactions(data: TrainingData) -> dict | None:
    """item -> first interaction day over the catalogue and all of the data's events (what one process sees)."""
    if data.event_days is None:
        return None
    import pandas as pd

    first = dict(data.item_first_interaction or {})
    for item, day in pd.Series(data.event_days).groupby(data.item_ids).min().items():
        first[item] = min(int(day), int(first.get(item, day)))
    return first


def train_distributed(spark, data: TrainingData, settings: Settings, prior: Checkpoint | None = None,
                      epochs: int | None = None) -> Checkpoint:
    """Like :func:`coldstart.model.train`, on ``settings.train_processes`` data-parallel ranks started by
    TorchDistributor on ``spark``'s cluster; returns rank 0's checkpoint (see the module doc)."""
    from pyspark.ml.torch.distributor import TorchDistributor

    from coldstart.devices import resolve_device

    world = int(settings.train_processes)
    if world < 2:
        raise ValueError(f"train_distributed needs train_processes >= 2, got {world}")
    started = time.perf_counter()
    start = prepare(data, settings, prior, epochs)
    held_out = _validation_split(data, int(settings.seed))
    train_rows, val_rows = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    if len(train_rows) < world:
        raise ValueError(f"{len(train_rows)} training events cannot be split over {world} ranks")
    batch = -(-int(settings.train_batch_size) // world)
    largest = -(-len(train_rows) // world)
    steps = -(-largest // batch)  # the largest shard's batches: every rank takes that many
    first = _first_interactions(data)
    device = resolve_device(settings.device)
    store = Path(settings.models).resolve()
    store.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".train-ranks-", dir=store))
    try:
        with (folder / "start.pkl").open("wb") as fh:
            pickle.dump(start, fh)
        for r in range(world):
            mine = train_rows[r::world]
            rows = np.concatenate([mine, val_rows]) if r == 0 else mine
            validation = np.zeros(len(rows), dtype=bool)
            validation[len(mine):] = True
            with (folder / f"shard-{r}.pkl").open("wb") as fh:
                pickle.dump(shard(data, rows, validation, first), fh)
        plan = Rank(world=world, steps=steps, batch=batch, n_train=len(train_rows))
        local = str(settings.spark_master).startswith("local")
        log.info("training on %d ranks (%s, %s): %d events, %d batches of %d per rank and epoch", world,
                 "driver host" if local else "executors", device, len(train_rows), steps, batch)
        distributor = TorchDistributor(num_processes=world, local_mode=local, use_gpu=device == "cuda")
        result = distributor.run(_rank_main, str(folder), settings, plan, max(1, _train_threads() // world),
                                 started)
        if not result:
            raise RuntimeError(f"training on {world} ranks returned no checkpoint from rank 0")
        ckpt = Checkpoint.load(result)
        ckpt.checksum = None  # a copy for the caller to save where it belongs
        return ckpt
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _rank_main(folder: str, settings: Settings, plan: Rank, threads: int, started: float) -> str | None:
    """One rank (runs in a process TorchDistributor started; RANK and WORLD_SIZE are in the environment)."""
    import torch
    import torch.distributed as dist

    from coldstart.devices import resolve_device

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = resolve_device(settings.device)
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.set_num_threads(threads)
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    try:
        with (Path(folder) / "start.pkl").open("rb") as fh:
            start = pickle.load(fh)
        with (Path(folder) / f"shard-{rank}.pkl").open("rb") as fh:
            data = pickle.load(fh)
        ckpt = fit(start, data, settings, started=started, rank=replace(plan, rank=rank, world=world))
        if ckpt is None:
            return None
        path = Path(folder) / "result"
        ckpt.save(path)
        return str(path)
    finally:
        dist.destroy_process_group()
