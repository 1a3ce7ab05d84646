"""Data-parallel training with ``pyspark.ml.torch.distributor.TorchDistributor`` (``train_processes`` > 1).

The events are sharded by user (a stable hash of the user id mod N): rank r trains on its users' events,
holds its users' content and history, and evaluates on its own held-out rows. TorchDistributor starts N
processes (on the driver's host with a ``local[...]`` master, as barrier tasks on the executors
otherwise); each joins a torch.distributed group (gloo on the CPU, NCCL on CUDA), builds its data and
trains with the batch split N ways: after every batch the gradients are averaged over the ranks (dense
ones all-reduced, the sparse id-table rows all-gathered), so every rank takes the same optimiser step and
the replicas stay identical. Rank 0 writes the checkpoint.

Two ways in:

* :func:`train_sharded` (the train stage): Spark writes each rank's events, recent history and profiles to
  a scratch folder in the models store (:func:`write_rank_shards`, on the executors); the driver sends
  only O(items) inputs (:class:`SharedInputs`: item content and state, the item and scene ids, the rating
  mean, where the prior is). Each rank reads its shards, pools its users' content, reads the sorted
  distinct user ids (every rank builds the same id tables: a seeded fresh model, or the prior loaded from
  the store and grown) and trains; rank 0 publishes the checkpoint itself and returns its location,
  checksum and metrics, so the driver never holds the events, the users' inputs or the user id table.
* :func:`train_distributed` (a TrainingData already in memory, e.g. tests and tools): the driver
  prepares the starting point and pickles each rank's shard; rank 0's checkpoint is loaded back.

Determinism: the same data, settings, seed and N give the same checkpoint (each rank sorts the rows it
reads, so Spark's partitioning does not matter; each rank's random stream is seeded from the seed and its
rank; the collectives reduce in rank order). N = 1 never comes here.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from coldstart import storage
from coldstart.config import Settings
from coldstart.model.checkpoint import Checkpoint
from coldstart.model.training import Rank, Start, TrainingData, _train_threads, _validation_split, fit, prepare, \
    prepare_ids

log = logging.getLogger("coldstart.model")

_PER_EVENT = ("user_ids", "item_ids", "scenes", "values", "validation_mask", "event_days")
RANK_COLUMN = "_rank"


def rank_of_users(user_ids, world: int) -> np.ndarray:
    """The rank (0..world-1) of each user id of an in-memory shard: a stable hash of the id."""
    hashed = pd.util.hash_array(np.asarray(user_ids, dtype=object), categorize=True)
    return (hashed % np.uint64(world)).astype(np.int64)


def rank_column(world: int, column: str = "user_id"):
    """The Spark column of the rank of each row's ``column`` (a stable hash: the same on every cluster)."""
    from pyspark.sql import functions as F

    return F.pmod(F.xxhash64(F.col(column)), F.lit(world)).cast("int")


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
    h_users = np.asarray(data.user_ids if data.history_user_ids is None else data.history_user_ids, dtype=object)
    h_items = np.asarray(data.item_ids if data.history_item_ids is None else data.history_item_ids, dtype=object)
    keep = np.fromiter((u in users for u in h_users), dtype=bool, count=len(h_users))
    history = {"history_user_ids": h_users[keep], "history_item_ids": h_items[keep]}
    return replace(data, **per_event, user_content=user_content, **history,
                   item_first_interaction=first_interaction if data.event_days is not None else data.item_first_interaction)


def _first_interactions(data: TrainingData) -> dict | None:
    """item -> first interaction day over the catalogue and all of the data's events (what one process sees)."""
    if data.event_days is None:
        return None
    first = dict(data.item_first_interaction or {})
    for item, day in pd.Series(data.event_days).groupby(data.item_ids).min().items():
        first[item] = min(int(day), int(first.get(item, day)))
    return first


def _plan(world: int, train_counts: list[int], settings: Settings) -> Rank:
    """Every rank takes as many batches per epoch as the largest shard needs (the all-reduces pair up)."""
    if min(train_counts) < 1:
        raise ValueError(f"training events per rank {train_counts}: every one of the {world} ranks needs some "
                         f"(fewer train_processes, or more users)")
    batch = -(-int(settings.train_batch_size) // world)
    return Rank(world=world, steps=-(-max(train_counts) // batch), batch=batch, n_train=int(sum(train_counts)))


def _scratch(settings: Settings) -> str:
    """A fresh scratch folder beside the checkpoints (a local folder or an object-store prefix)."""
    return storage.join(storage.normalize(settings.models), f".train-ranks-{uuid.uuid4().hex[:16]}")


def _write_pickle(uri: str, obj: Any) -> None:
    storage.write_bytes(uri, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _read_pickle(uri: str) -> Any:
    return pickle.loads(storage.read_bytes(uri))


def _distribute(spark, settings: Settings, world: int, main: Callable, *args) -> Any:
    from pyspark.ml.torch.distributor import TorchDistributor

    from coldstart.devices import resolve_device

    device = resolve_device(settings.device)
    local = str(settings.spark_master).startswith("local")
    distributor = TorchDistributor(num_processes=world, local_mode=local, use_gpu=device == "cuda")
    log.info("training on %d ranks (%s, %s)", world, "driver host" if local else "executors", device)
    return distributor.run(main, *args, max(1, _train_threads(settings) // world), storage.worker_env())


def train_distributed(spark, data: TrainingData, settings: Settings, prior: Checkpoint | None = None,
                      epochs: int | None = None) -> Checkpoint:
    """Like :func:`coldstart.model.train`, on ``settings.train_processes`` data-parallel ranks started by
    TorchDistributor on ``spark``'s cluster, ``data`` (in this process) sharded by user; returns rank 0's
    checkpoint (see the module doc)."""
    world = int(settings.train_processes)
    if world < 2:
        raise ValueError(f"train_distributed needs train_processes >= 2, got {world}")
    started = time.perf_counter()
    start = prepare(data, settings, prior, epochs)
    held_out = _validation_split(data, int(settings.seed))
    ranks = rank_of_users(data.user_ids, world)
    plan = _plan(world, [int((~held_out & (ranks == r)).sum()) for r in range(world)], settings)
    first = _first_interactions(data)
    folder = _scratch(settings)
    try:
        _write_pickle(storage.join(folder, "start.pkl"), start)
        for r in range(world):
            rows = np.flatnonzero(ranks == r)
            _write_pickle(storage.join(folder, f"shard-{r}.pkl"), shard(data, rows, held_out[rows], first))
        out = _distribute(spark, settings, world, _memory_rank_main, folder, settings, plan, started)
        if not out:
            raise RuntimeError(f"training on {world} ranks returned no checkpoint from rank 0")
        ckpt = Checkpoint.load(out)
        ckpt.checksum = None  # a copy for the caller to save where it belongs
        return ckpt
    finally:
        storage.delete(folder)


def _init_rank(settings: Settings, threads: int, env: dict):
    """This process's rank and world size, torch.distributed joined (gloo on the CPU, NCCL on CUDA)."""
    import torch
    import torch.distributed as dist

    from coldstart.devices import resolve_device

    storage.adopt(env)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if resolve_device(settings.device) == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.set_num_threads(threads)
    dist.init_process_group("nccl" if resolve_device(settings.device) == "cuda" else "gloo")
    return rank, world


def _memory_rank_main(folder: str, settings: Settings, plan: Rank, started: float, threads: int,
                      env: dict) -> str | None:
    """One rank of :func:`train_distributed` (RANK and WORLD_SIZE are in the environment)."""
    import torch.distributed as dist

    rank, world = _init_rank(settings, threads, env)
    try:
        start = _read_pickle(storage.join(folder, "start.pkl"))
        data = _read_pickle(storage.join(folder, f"shard-{rank}.pkl"))
        ckpt = fit(start, data, settings, started=started, rank=replace(plan, rank=rank, world=world))
        if ckpt is None:
            return None
        path = storage.join(folder, "result")
        ckpt.save(path)
        return path
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------
# The train stage's way: shards written by Spark, each rank builds its own users' data.
# ---------------------------------------------------------------------------------------------------------
def write_rank_shards(df, uri: str, world: int) -> dict[int, int]:
    """Write ``df`` (with a ``_rank`` column, see :func:`rank_column`) as Parquet files under
    ``uri/rank=<r>/`` from the executors (one file per task and rank; the storage layer: local or S3);
    return the rows written per rank. Only those counts reach the driver."""
    env = storage.worker_env()
    columns = [c for c in df.columns if c != RANK_COLUMN]

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        from coldstart import storage as st

        st.adopt(env)
        ctx = TaskContext.get()
        task = f"{ctx.partitionId():05d}-{ctx.attemptNumber()}" if ctx else "0"
        writers: dict[int, tuple] = {}
        counts: dict[int, int] = {}
        try:
            for raw in batches:
                table = pa.Table.from_batches([raw])
                ranks = table.column(RANK_COLUMN).to_numpy(zero_copy_only=False)
                for r in np.unique(ranks).tolist():
                    part = table.filter(pa.array(ranks == r)).select(columns)
                    if r not in writers:
                        sink = st.open_output(st.join(uri, f"rank={r}", f"part-{task}-{uuid.uuid4().hex[:8]}.parquet"))
                        writers[r] = (sink, pq.ParquetWriter(sink, part.schema))
                    writers[r][1].write_table(part)
                    counts[r] = counts.get(r, 0) + part.num_rows
        finally:
            for sink, writer in writers.values():
                writer.close()
                sink.close()
        yield pa.RecordBatch.from_pylist([{"rank": r, "rows": n} for r, n in counts.items()],
                                         schema=pa.schema([("rank", pa.int64()), ("rows", pa.int64())]))

    out = {r: 0 for r in range(world)}
    for row in df.mapInArrow(write, "rank long, rows long").collect():
        out[int(row["rank"])] += int(row["rows"])
    return out


def read_rank_shard(uri: str, rank: int | None = None) -> pa.Table | None:
    """The rows :func:`write_rank_shards` wrote for ``rank`` (every rank's with None), or None when none."""
    folder = uri if rank is None else storage.join(uri, f"rank={rank}")
    files = [f for f in storage.walk_files(folder) if f.endswith(".parquet")]
    tables = [pq.read_table(io.BytesIO(storage.read_bytes(f))) for f in files]
    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables) if tables else None


@dataclass
class SharedInputs:
    """What the driver sends every rank of :func:`train_sharded`: O(items x dim) and a few numbers.

    ``items`` / ``scenes``: the data's distinct item ids and scenes; ``item_*`` and ``fresh_from``: as in
    TrainingData, ``item_first_interaction`` already over all the data's events; ``rating_mean``: the
    mean of the rated events' values over all ranks; ``prior_uri`` / ``prior_checksum``: the checkpoint
    to warm-start from (each rank loads it verified), or None."""

    item_content: dict
    items: list
    scenes: list
    item_first_seen: dict | None
    item_first_interaction: dict | None
    fresh_from: int | None
    item_day_counts: pd.DataFrame | None
    rating_mean: float
    n_events: int
    prior_uri: str | None = None
    prior_checksum: str | None = None
    epochs: int | None = None


def train_sharded(spark, settings: Settings, folder: str, shared: SharedInputs, train_counts: list[int],
                  build: Callable[[str, int, SharedInputs], TrainingData],
                  publish: Callable[[Checkpoint], tuple[str, str]]) -> tuple[str, str, dict]:
    """Train on ``settings.train_processes`` ranks from the shards in ``folder`` (``users/``: the sorted distinct
    user ids; ``build(folder, rank, shared)``: rank r's TrainingData, read from its shards); rank 0 calls
    ``publish(checkpoint)`` (-> location, checksum). Returns (location, checksum, metrics)."""
    world = int(settings.train_processes)
    if world < 2:
        raise ValueError(f"train_sharded needs train_processes >= 2, got {world}")
    plan = _plan(world, train_counts, settings)
    _write_pickle(storage.join(folder, "shared.pkl"), shared)
    log.info("training on %d ranks: %d events, %d batches of %d per rank and epoch", world, plan.n_train,
             plan.steps, plan.batch)
    out = _distribute(spark, settings, world, _sharded_rank_main, folder, settings, plan, build, publish,
                      time.perf_counter())
    if not out:
        raise RuntimeError(f"training on {world} ranks returned no checkpoint from rank 0")
    return out


def global_users(folder: str) -> np.ndarray:
    """The sorted distinct user ids of the whole data (``folder/users``, written by Spark)."""
    table = read_rank_shard(storage.join(folder, "users"))
    users = np.empty(0, dtype=object) if table is None else table.column("user_id").to_numpy(zero_copy_only=False)
    return np.unique(users.astype(object))


def _sharded_rank_main(folder: str, settings: Settings, plan: Rank, build: Callable, publish: Callable,
                       started: float, threads: int, env: dict) -> tuple[str, str, dict] | None:
    """One rank of :func:`train_sharded` (RANK and WORLD_SIZE are in the environment)."""
    import torch.distributed as dist

    rank, world = _init_rank(settings, threads, env)
    try:
        shared: SharedInputs = _read_pickle(storage.join(folder, "shared.pkl"))
        data = build(folder, rank, shared)
        prior = (Checkpoint.load(shared.prior_uri, expected_checksum=shared.prior_checksum)
                 if shared.prior_uri else None)
        start: Start = prepare_ids(global_users(folder), np.asarray(shared.items, dtype=object),
                                   np.asarray(shared.scenes, dtype=object), shared.rating_mean, shared.n_events,
                                   shared.item_content, data.user_content, settings, prior, shared.epochs)
        del prior
        ckpt = fit(start, data, settings, started=started, rank=replace(plan, rank=rank, world=world))
        if ckpt is None:
            return None
        path, checksum = publish(ckpt)
        return path, checksum, ckpt.metrics
    finally:
        dist.destroy_process_group()
