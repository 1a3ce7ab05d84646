"""Train stage: warm start from the checkpoint of D-1 (that date, never "latest"), or full/cold.

* warm: load D-1's model as registered (model_registry's checkpoint_uri, verified against its checksum), grow its id tables, fine-tune on day D (all of it but a
  seeded quarter held out for the validation metrics and the blend of coldstart/model/blend.py) plus a seeded, recency-weighted replay sample of
  the week before it (``train_replay_sample`` events; the last days almost whole, older days thinly);
* full (requested): from scratch on all history up to D;
* cold: no usable checkpoint of D-1 (missing, or failing its checksum) - from scratch, logged, and
  recorded as ``mode = cold`` in model_registry.

Checkpoint D is written atomically (temporary folder + rename) and registered with its parent as
D's ready model (coldstart.registry): a re-run that trains the same model keeps its row; one that
trains another supersedes the old row but keeps its checkpoint, so the nights built on it keep a
parent that exists.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from coldstart import storage
from coldstart.catalog import INTERACTIONS
from coldstart.config import Settings
from coldstart.features import (POPULARITY_DAYS, coded_frame, concat_coded, content_vectors, daily_item_counts,
                                day_numbers, interactions, latest_items, user_content, window_start)
from coldstart.lake import Lake
from coldstart.registry import publish_checkpoint, register, registry_row
from coldstart.results import TrainResult

log = logging.getLogger("coldstart.train")

# Half-life (days) of the replay sample's recency weighting: the last few days are replayed almost
# whole, older days more and more thinly.
REPLAY_HALF_LIFE_DAYS = 2.0
# Run dates before D that the replay sample draws from. At the half-life above an event a week old
# weighs an eighth of yesterday's; older history is not read, so a night's cost does not grow with it.
REPLAY_DAYS = 7


class NoTrainingDataError(RuntimeError):
    pass


def checkpoint_dir(settings: Settings, run_date: dt.date) -> str:
    """Where the checkpoint of ``run_date`` is published: ``<models>/<YYYY-MM-DD>`` (a local folder or an
    object-store prefix)."""
    return storage.join(storage.normalize(settings.models), run_date.isoformat())


def load_prior(lake: Lake, run_date: dt.date, verify_only: bool = False):
    """The model of run_date - 1 as registered (its ready model_registry row's checkpoint, verified against
    the row's checksum) as (checkpoint, row, None), or (None, None, why) when there is no usable one.
    ``verify_only``: every file is checked against the manifest but only the config is loaded (a
    :class:`coldstart.model.checkpoint.CheckpointRef`: the data-parallel ranks load the model themselves)."""
    from coldstart.model import Checkpoint, CheckpointError
    from coldstart.model.checkpoint import CheckpointRef

    prior_date = run_date - dt.timedelta(days=1)
    row = registry_row(lake, prior_date)
    if row is None:
        return None, None, f"no model registered for {prior_date}"
    path = row["checkpoint_uri"]
    if not storage.exists(storage.join(path, "MANIFEST.json")):
        return None, None, f"no checkpoint for {prior_date} at {path} (registered as {row['model_version']})"
    try:
        if verify_only:
            return CheckpointRef.verify(path, expected_checksum=row["checksum"]), row, None
        return Checkpoint.load(path, expected_checksum=row["checksum"]), row, None
    except CheckpointError as exc:
        return None, None, f"checkpoint {row['model_version']} at {path} is unusable: {exc}"


def _replay_fractions(day_ages: np.ndarray, day_counts: np.ndarray, wanted: int, half_life: float) -> np.ndarray:
    """Per-day keep probability ``min(1, c * 0.5 ** (age / half_life))`` with ``c`` such that the expected
    sample size is ``wanted`` (or everything, when history is smaller)."""
    weights = np.power(0.5, day_ages / half_life)
    if day_counts.sum() <= wanted:
        return np.ones(len(day_counts))
    low, high = 0.0, 1.0 / weights.min()
    for _ in range(60):  # bisection on the scale; the expected size is monotone in it
        mid = (low + high) / 2
        if (np.minimum(1.0, mid * weights) * day_counts).sum() < wanted:
            low = mid
        else:
            high = mid
    return np.minimum(1.0, high * weights)


def _replay_sample(lake: Lake, settings: Settings, run_date: dt.date, columns: list[str]) -> pd.DataFrame:
    """A seeded, recency-weighted Bernoulli sample of the REPLAY_DAYS run dates before run_date, about
    train_replay_sample events (``coded_frame`` columns).

    An event of age ``a`` days is kept with probability proportional to ``0.5 ** (a / REPLAY_HALF_LIFE_DAYS)``
    (capped at 1): the last days are replayed (almost) whole, because tomorrow's users are mostly
    today's and yesterday's, and older days thinly. Only the REPLAY_DAYS partitions are read, with
    their sizes from the Delta log, so the cost does not grow with the length of the history. Whether
    an event is kept depends on a seeded hash of its event_id alone, not on the file layout."""
    wanted = settings.train_replay_sample
    sizes = {day: rows for day, rows in lake.partition_rows("interactions", "run_date").items()
             if run_date - dt.timedelta(days=REPLAY_DAYS) <= day < run_date and rows}
    if wanted <= 0 or not sizes:
        return coded_frame(INTERACTIONS.schema.empty_table().select(columns))
    days = sorted(sizes)
    ages = np.array([(run_date - day).days for day in days], dtype=np.float64)
    fractions = _replay_fractions(ages, np.array([sizes[d] for d in days]), wanted, REPLAY_HALF_LIFE_DAYS)
    table = lake.read_arrow("interactions", columns=list(dict.fromkeys([*columns, "event_id", "run_date"])),
                            filters=[("run_date", ">=", days[0]), ("run_date", "<", run_date)])
    row_days = table.column("run_date").to_numpy(zero_copy_only=False).astype("datetime64[D]")
    row_fractions = fractions[np.searchsorted(np.array(days, dtype="datetime64[D]"), row_days)]
    key = hashlib.blake2b(f"{settings.seed}/{run_date.isoformat()}".encode(), digest_size=8).hexdigest()
    draw = pd.util.hash_array(table.column("event_id").to_numpy(zero_copy_only=False),
                              hash_key=key, categorize=False) / float(2 ** 64)
    return coded_frame(table.filter(pa.array(draw < row_fractions)).select(columns))


def _holdout_of_today(n_replay: int, n_today: int, seed: int, run_date: dt.date) -> np.ndarray | None:
    """Validation rows of a warm run: a seeded few percent of today's events (the replay rows come
    first). Only those few are held out - today's events are what a warm run is for, so nearly all
    of them are trained on. None (the model's default split) when today is too small to split."""
    from coldstart.model import VALIDATION_FRACTION, VALIDATION_MIN_EVENTS

    if n_today < VALIDATION_MIN_EVENTS:
        return None
    mask = np.zeros(n_replay + n_today, dtype=bool)
    n_val = max(1, int(round(n_today * VALIDATION_FRACTION)))
    rng = np.random.default_rng([seed, run_date.toordinal(), 1])
    mask[n_replay + rng.permutation(n_today)[:n_val]] = True
    return mask


def item_state_inputs(lake: Lake, event_dates: pd.Series, catalogue: pd.DataFrame) -> dict:
    """The item-state arguments of TrainingData: event days, the items' catalogue and first-interaction
    days (days since 1970-01-01) and their daily counts over the days that weigh on the events' popularity;
    the first day with interactions is the start of history, where every item "debuts", so it teaches
    nothing about an item's state."""
    interacted = catalogue.dropna(subset=["first_interaction"])
    first_interaction = dict(zip(interacted["item_id"], day_numbers(interacted["first_interaction"])))
    first_event = pd.to_datetime(event_dates).min().date()
    counts = daily_item_counts(lake, first_event - dt.timedelta(days=POPULARITY_DAYS), pd.to_datetime(event_dates).max().date())
    return {"event_days": day_numbers(event_dates), "item_day_counts": counts,
            "item_first_seen": dict(zip(catalogue["item_id"], day_numbers(catalogue["first_seen"]))),
            "item_first_interaction": first_interaction,
            "fresh_from": min(first_interaction.values()) if first_interaction else None}


def _incompatible(prior, settings: Settings, items: dict) -> str | None:
    """Why the prior cannot be warm-started from (another encoder or content size), or None."""
    trained_on = prior.config.get("encoder_name")
    if trained_on and trained_on != settings.encoder_name:
        return f"prior checkpoint was trained on encoder {trained_on!r}, not {settings.encoder_name!r}"
    if items:
        dim = len(next(iter(items.values())))
        if int(prior.config.get("content_dim", dim)) != dim:
            return f"prior checkpoint has content dim {prior.config.get('content_dim')}, the embeddings have {dim}"
    return None


def train(spark, settings: Settings, run_date: dt.date, full_retrain: bool = False) -> TrainResult:
    """Train the model of ``run_date`` (warm from D-1's registered checkpoint, else cold; full when asked),
    publish its checkpoint and register it as D's ready model. Raises NoTrainingDataError without events."""
    lake = Lake.from_settings(settings)
    items = content_vectors(lake, settings, "item")
    sharded = settings.train_processes > 1
    prior, parent, mode = _starting_point(lake, settings, run_date, items, full_retrain, verify_only=sharded)
    if sharded:
        return _train_sharded(spark, lake, settings, run_date, items, prior, parent, mode)
    events, validation = _training_events(lake, settings, run_date, warm=prior is not None)
    data = _training_data(lake, settings, run_date, events, validation, items)
    log.info("train %s: mode=%s on %d events (%d users, %d items)%s", run_date, mode, len(events),
             events["user_id"].nunique(), events["item_id"].nunique(), f"; parent {prior.checksum[:8]}" if prior else "")
    from coldstart.model import train as train_model

    ckpt = train_model(data, settings, prior=prior)
    path, checksum = publish_checkpoint(ckpt, checkpoint_dir(settings, run_date))
    return _register(lake, run_date, path, checksum, ckpt.metrics, mode, parent, len(events))


def _starting_point(lake: Lake, settings: Settings, run_date: dt.date, items: dict,
                    full_retrain: bool, verify_only: bool = False) -> tuple[Any, dict | None, str]:
    """(prior checkpoint or None, its registry row or None, mode): warm from D-1's model when it is usable
    and compatible, else full (asked for) or cold (logged, with why). ``verify_only``: see load_prior."""
    prior, parent, why = ((None, None, "full retrain requested") if full_retrain
                          else load_prior(lake, run_date, verify_only=verify_only))
    if prior is not None:
        why = _incompatible(prior, settings, items)
        prior = None if why else prior
    if prior is not None:
        return prior, parent, "warm"
    if not full_retrain:
        log.warning("train %s: training cold: %s", run_date, why)
    return None, None, "full" if full_retrain else "cold"


_EVENT_COLUMNS = ["user_id", "item_id", "scene", "value", "event_type", "run_date"]


def _training_events(lake: Lake, settings: Settings, run_date: dt.date,
                     warm: bool) -> tuple[pd.DataFrame, np.ndarray | None]:
    """(events, validation mask): warm, the replay sample then day D with a few of D's events held out;
    otherwise all history up to D in a stable order (the model's default split)."""
    if warm:
        today = interactions(lake, run_date, run_date, _EVENT_COLUMNS)
        replay = _replay_sample(lake, settings, run_date, _EVENT_COLUMNS)
        events = concat_coded([replay, today])
        validation = _holdout_of_today(len(replay), len(today), settings.seed, run_date)
    else:
        events = interactions(lake, dt.date.min, run_date, _EVENT_COLUMNS)
        validation = None
    if events.empty:
        raise NoTrainingDataError(f"train {run_date}: no interactions to train on (run ingest for {run_date} first)")
    if validation is None:
        events = events.sort_values(["user_id", "item_id", "scene"], kind="stable").reset_index(drop=True)
    return events, validation


def _training_data(lake: Lake, settings: Settings, run_date: dt.date, events: pd.DataFrame,
                   validation: np.ndarray | None, items: dict):
    """The model's TrainingData: the events, item content, users' content pooled as scoring pools it (the
    recent window, plus the replayed users' sampled history), their recent items and the item state."""
    from coldstart import model as M

    profiles = content_vectors(lake, settings, "user")
    recent = interactions(lake, window_start(settings, run_date), run_date, ["user_id", "item_id", "event_ts"])
    pairs = concat_coded([recent[["user_id", "item_id"]], events[["user_id", "item_id"]]]).drop_duplicates()
    latest = latest_items(recent)
    catalogue = lake.read_pandas("items", columns=["item_id", "first_seen", "first_interaction"])
    return M.TrainingData(
        user_ids=events["user_id"].to_numpy(), item_ids=events["item_id"].to_numpy(),
        scenes=events["scene"].to_numpy(),
        values=np.where(events["event_type"] == "rate", events["value"].astype("float64"), np.nan),
        item_content=items, user_content=user_content(pairs, items, profiles), validation_mask=validation,
        history_user_ids=latest["user_id"], history_item_ids=latest["item_id"],
        **item_state_inputs(lake, events["run_date"], catalogue))


def _register(lake: Lake, run_date: dt.date, path: str, checksum: str, metrics: dict, mode: str,
              parent: dict | None, n_events: int) -> TrainResult:
    """Register the checkpoint published at ``path`` (with its parent) as D's ready model."""
    version = f"{run_date.isoformat()}-{checksum[:8]}"
    result = TrainResult(model_version=version, run_date=run_date,
                         parent_version=parent["model_version"] if parent else None, mode=mode,
                         checkpoint_uri=str(path), checksum=checksum,
                         metrics=json.dumps({**metrics, "events": n_events}, sort_keys=True, default=str),
                         status="ready", created_at=dt.datetime.now(dt.timezone.utc))
    register(lake, result.as_dict())
    log.info("train %s: model %s (%s) written to %s", run_date, version, mode, path)
    return result


# ---------------------------------------------------------------------------------------------------------
# train_processes > 1: the events and the users' inputs go from the lake to each rank through Spark; the
# driver holds O(items x dim) (coldstart/model/distributed.py).
# ---------------------------------------------------------------------------------------------------------
def _holdout_share(n: int, scope_today: bool) -> float:
    """The held-out share of the sharded path: the same expected count as the single process's split (a
    warm night: VALIDATION_FRACTION of today's n events; otherwise of all n, at most VALIDATION_MAX)."""
    from coldstart.model import VALIDATION_FRACTION, VALIDATION_MAX, VALIDATION_MIN_EVENTS

    if n < VALIDATION_MIN_EVENTS:
        return 0.0
    wanted = max(1, int(round(n * VALIDATION_FRACTION)))
    return (wanted if scope_today else min(VALIDATION_MAX, wanted)) / n


def _sharded_events(spark, lake: Lake, settings: Settings, run_date: dt.date, warm: bool):
    """The training events as a Spark DataFrame (user_id, item_id, scene, value: the rating or NaN, day, val:
    held out, _rank): warm, day D and the replay sample (the same events as the single process's
    ``_replay_sample``: the same seeded hash of event_id) with a seeded share of D's events held out;
    otherwise all history up to D, a seeded share held out. Whether an event is held out depends on a
    seeded hash of its event_id alone (not on the file layout or on the other events)."""
    from pyspark.sql import functions as F

    from coldstart.model import VALIDATION_MIN_EVENTS
    from coldstart.model.distributed import RANK_COLUMN, rank_column

    sizes = {day: rows for day, rows in lake.partition_rows("interactions", "run_date").items() if rows}
    n_today = int(sizes.get(run_date, 0))
    fractions: dict[int, float] = {}
    if warm:
        replay = {d: n for d, n in sizes.items() if run_date - dt.timedelta(days=REPLAY_DAYS) <= d < run_date}
        days = sorted(replay)
        if settings.train_replay_sample > 0 and days:
            ages = np.array([(run_date - d).days for d in days], dtype=np.float64)
            keep = _replay_fractions(ages, np.array([replay[d] for d in days]), settings.train_replay_sample,
                                     REPLAY_HALF_LIFE_DAYS)
            fractions = {int(day_numbers([d])[0]): float(f) for d, f in zip(days, keep)}
        read = [*days, run_date]
        scope_today = n_today >= VALIDATION_MIN_EVENTS
        share = _holdout_share(n_today if scope_today else n_today + settings.train_replay_sample, scope_today)
    else:
        read = [d for d in sizes if d <= run_date]
        scope_today = False
        share = _holdout_share(sum(n for d, n in sizes.items() if d <= run_date), False)
    frame = lake.read_spark(spark, "interactions", partitions={"run_date": read}) \
        .filter(F.col("run_date") <= F.lit(run_date)) \
        .select("user_id", "item_id", "scene", "event_id",
                F.when(F.col("event_type") == "rate", F.col("value").cast("double")).alias("value"),
                F.datediff(F.col("run_date"), F.lit(dt.date(1970, 1, 1))).cast("long").alias("day"))
    today = int(day_numbers([run_date])[0])
    replay_key = hashlib.blake2b(f"{settings.seed}/{run_date.isoformat()}".encode(), digest_size=8).hexdigest()
    holdout_key = hashlib.blake2b(f"{settings.seed}/{run_date.isoformat()}/holdout".encode(), digest_size=8).hexdigest()

    def pick(batches):
        for batch in batches:
            ids = batch["event_id"].to_numpy(dtype=object)
            day = batch["day"].to_numpy(np.int64)
            keep = (day == today) if warm else np.ones(len(day), dtype=bool)
            if fractions:
                draw = pd.util.hash_array(ids, hash_key=replay_key, categorize=False) / float(2 ** 64)
                keep |= draw < pd.Series(day).map(fractions).fillna(0.0).to_numpy()
            held = pd.util.hash_array(ids, hash_key=holdout_key, categorize=False) / float(2 ** 64) < share
            if scope_today:
                held &= day == today
            out = batch.loc[keep, ["user_id", "item_id", "scene", "value", "day"]].copy()
            out["value"] = out["value"].astype(np.float64)
            out["val"] = held[keep]
            yield out

    schema = "user_id string, item_id string, scene string, value double, day long, val boolean"
    return frame.mapInPandas(pick, schema).withColumn(RANK_COLUMN, rank_column(settings.train_processes))


def _train_sharded(spark, lake: Lake, settings: Settings, run_date: dt.date, items: dict, prior, parent: dict | None,
                   mode: str) -> TrainResult:
    """train() with train_processes > 1: Spark writes each rank's events, recent window and profiles to a scratch
    folder beside the checkpoints; the driver collects the per-item inputs only; rank 0 publishes."""
    import functools

    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from coldstart.features import daily_item_counts_spark, profiles_spark, window_days
    from coldstart.model.distributed import (RANK_COLUMN, SharedInputs, _scratch, rank_column, train_sharded,
                                             write_rank_shards)

    world = int(settings.train_processes)
    events = _sharded_events(spark, lake, settings, run_date, warm=prior is not None).persist(StorageLevel.MEMORY_AND_DISK)
    folder = _scratch(settings)
    try:
        stats = events.agg(
            F.count(F.lit(1)).alias("n"), F.countDistinct("user_id").alias("users"),
            F.sum(F.when(~F.isnan("value"), F.col("value").cast("decimal(38,12)"))).alias("rated_sum"),
            F.count(F.when(~F.isnan("value"), True)).alias("rated"),
            F.min("day").alias("first"), F.max("day").alias("last")).collect()[0]
        if not stats["n"]:
            raise NoTrainingDataError(f"train {run_date}: no interactions to train on (run ingest for {run_date} first)")
        write_rank_shards(events, storage.join(folder, "events"), world)
        write_rank_shards(events.select("user_id").distinct().withColumn(RANK_COLUMN, F.lit(0)),
                          storage.join(folder, "users"), world)
        train_counts = {int(r[RANK_COLUMN]): int(r["n"]) for r in
                        events.filter(~F.col("val")).groupBy(RANK_COLUMN).count().withColumnRenamed("count", "n").collect()}
        item_first = {r["item_id"]: int(r["day"]) for r in events.groupBy("item_id").agg(F.min("day").alias("day")).collect()}
        scenes = sorted(r["scene"] for r in events.select("scene").distinct().collect())
        window = lake.read_spark(spark, "interactions", partitions={"run_date": window_days(settings, run_date)}) \
            .filter(F.col("run_date") <= F.lit(run_date)).select("user_id", "item_id", "event_ts")
        write_rank_shards(window.withColumn(RANK_COLUMN, rank_column(world)), storage.join(folder, "recent"), world)
        write_rank_shards(profiles_spark(spark, lake, settings).withColumn(RANK_COLUMN, rank_column(world)),
                          storage.join(folder, "profiles"), world)

        first, last = (dt.date(1970, 1, 1) + dt.timedelta(days=int(stats[k])) for k in ("first", "last"))
        counts = daily_item_counts_spark(spark, lake, first - dt.timedelta(days=POPULARITY_DAYS), last) \
            .sort_values(["item_id", "day"], kind="stable").reset_index(drop=True)
        catalogue = lake.read_pandas("items", columns=["item_id", "first_seen", "first_interaction"])
        interacted = catalogue.dropna(subset=["first_interaction"])
        first_interaction = dict(zip(interacted["item_id"], (int(d) for d in day_numbers(interacted["first_interaction"]))))
        fresh_from = min(first_interaction.values()) if first_interaction else None
        for item, day in item_first.items():
            first_interaction[item] = min(day, first_interaction.get(item, day))
        rated = int(stats["rated"])
        shared = SharedInputs(
            item_content=items, items=sorted(item_first), scenes=scenes,
            item_first_seen=dict(zip(catalogue["item_id"], (int(d) for d in day_numbers(catalogue["first_seen"])))),
            item_first_interaction=first_interaction, fresh_from=fresh_from, item_day_counts=counts,
            rating_mean=float(stats["rated_sum"] / rated) if rated else 0.0, n_events=int(stats["n"]),
            prior_uri=prior.uri if prior is not None else None, prior_checksum=prior.checksum if prior is not None else None)
        log.info("train %s: mode=%s on %d events (%d users, %d items) on %d ranks%s", run_date, mode, stats["n"],
                 stats["users"], len(item_first), world, f"; parent {prior.checksum[:8]}" if prior else "")
        publish = functools.partial(publish_checkpoint, home=checkpoint_dir(settings, run_date))
        path, checksum, metrics = train_sharded(spark, settings, folder, shared,
                                                [train_counts.get(r, 0) for r in range(world)], rank_training_data,
                                                publish)
    finally:
        events.unpersist()
        storage.delete(folder)
    return _register(lake, run_date, path, checksum, metrics, mode, parent, int(stats["n"]))


def rank_training_data(folder: str, rank: int, shared) -> Any:
    """Rank ``rank``'s TrainingData from the shards :func:`_train_sharded` wrote: its users' events (sorted, so
    that the rows do not depend on Spark's partitioning), their content pooled from the recent window and
    the events as the single process pools it, their latest items and the shared item state."""
    from coldstart import model as M
    from coldstart.model.distributed import read_rank_shard

    table = read_rank_shard(storage.join(folder, "events"), rank)
    if table is None:
        raise ValueError(f"rank {rank}: no training events in its shard")
    events = coded_frame(table).sort_values(["user_id", "item_id", "scene", "day", "val", "value"],
                                            kind="stable", na_position="last").reset_index(drop=True)
    recent_table = read_rank_shard(storage.join(folder, "recent"), rank)
    recent = (pd.DataFrame({"user_id": pd.Series(dtype=object), "item_id": pd.Series(dtype=object),
                            "event_ts": pd.Series(dtype="datetime64[ns, UTC]")}) if recent_table is None
              else coded_frame(recent_table).sort_values(["user_id", "item_id", "event_ts"], kind="stable")
              .reset_index(drop=True))
    profile_table = read_rank_shard(storage.join(folder, "profiles"), rank)
    profiles = {} if profile_table is None else dict(zip(
        profile_table.column("user_id").to_pylist(),
        (np.asarray(v, dtype=np.float32) for v in profile_table.column("profile").to_pylist())))
    pairs = concat_coded([recent[["user_id", "item_id"]], events[["user_id", "item_id"]]]).drop_duplicates()
    latest = latest_items(recent)
    return M.TrainingData(
        user_ids=events["user_id"].to_numpy(), item_ids=events["item_id"].to_numpy(), scenes=events["scene"].to_numpy(),
        values=events["value"].to_numpy(np.float64), item_content=shared.item_content,
        user_content=user_content(pairs, shared.item_content, profiles), validation_mask=events["val"].to_numpy(bool),
        history_user_ids=latest["user_id"], history_item_ids=latest["item_id"], event_days=events["day"].to_numpy(np.int64),
        item_day_counts=shared.item_day_counts, item_first_seen=shared.item_first_seen,
        item_first_interaction=shared.item_first_interaction, fresh_from=shared.fresh_from)
