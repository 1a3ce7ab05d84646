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


def load_prior(lake: Lake, run_date: dt.date):
    """The model of run_date - 1 as registered (its ready model_registry row's checkpoint, verified against
    the row's checksum) as (checkpoint, row, None), or (None, None, why) when there is no usable one."""
    from coldstart.model import Checkpoint, CheckpointError

    prior_date = run_date - dt.timedelta(days=1)
    row = registry_row(lake, prior_date)
    if row is None:
        return None, None, f"no model registered for {prior_date}"
    path = row["checkpoint_uri"]
    if not storage.exists(storage.join(path, "MANIFEST.json")):
        return None, None, f"no checkpoint for {prior_date} at {path} (registered as {row['model_version']})"
    try:
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
    prior, parent, mode = _starting_point(lake, settings, run_date, items, full_retrain)
    events, validation = _training_events(lake, settings, run_date, warm=prior is not None)
    data = _training_data(lake, settings, run_date, events, validation, items)
    log.info("train %s: mode=%s on %d events (%d users, %d items)%s", run_date, mode, len(events),
             events["user_id"].nunique(), events["item_id"].nunique(), f"; parent {prior.checksum[:8]}" if prior else "")
    if settings.train_processes > 1:
        from coldstart.model.distributed import train_distributed

        ckpt = train_distributed(spark, data, settings, prior=prior)
    else:
        from coldstart.model import train as train_model

        ckpt = train_model(data, settings, prior=prior)
    return _publish(lake, settings, run_date, ckpt, mode, parent, len(events))


def _starting_point(lake: Lake, settings: Settings, run_date: dt.date, items: dict,
                    full_retrain: bool) -> tuple[Any, dict | None, str]:
    """(prior checkpoint or None, its registry row or None, mode): warm from D-1's model when it is usable
    and compatible, else full (asked for) or cold (logged, with why)."""
    prior, parent, why = (None, None, "full retrain requested") if full_retrain else load_prior(lake, run_date)
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


def _publish(lake: Lake, settings: Settings, run_date: dt.date, ckpt, mode: str, parent: dict | None,
             n_events: int) -> TrainResult:
    """Publish the checkpoint under ``<models>/<run_date>`` and register it (with its parent) as D's model."""
    path, checksum = publish_checkpoint(ckpt, checkpoint_dir(settings, run_date))
    version = f"{run_date.isoformat()}-{checksum[:8]}"
    result = TrainResult(model_version=version, run_date=run_date,
                         parent_version=parent["model_version"] if parent else None, mode=mode,
                         checkpoint_uri=str(path), checksum=checksum,
                         metrics=json.dumps({**ckpt.metrics, "events": n_events}, sort_keys=True, default=str),
                         status="ready", created_at=dt.datetime.now(dt.timezone.utc))
    register(lake, result.as_dict())
    log.info("train %s: model %s (%s) written to %s", run_date, version, mode, path)
    return result
