"""Feature reads shared by train, score and evaluate: content vectors and recent history.

Everything here reads only what a night needs: embeddings of the configured encoder and the
interactions inside the active window (``active_days``), so a night's cost does not grow with the
length of the history.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from coldstart.config import Settings
from coldstart.lake import Lake


def content_vectors(lake: Lake, settings: Settings, entity_type: str) -> dict[str, np.ndarray]:
    """entity_id -> encoder vector for the configured encoder."""
    if not lake.exists("entity_embeddings"):
        return {}
    table = lake.read_arrow("entity_embeddings", columns=["entity_id", "embedding", "dim"],
                            filters=[("entity_type", "=", entity_type), ("encoder", "=", settings.encoder_name)])
    if table.num_rows == 0:
        return {}
    dim = int(table.column("dim")[0].as_py())
    flat = pc.list_flatten(table.column("embedding")).to_numpy(zero_copy_only=False).astype(np.float32)
    matrix = flat.reshape(table.num_rows, dim)
    return dict(zip(table.column("entity_id").to_pylist(), matrix))


# Columns read as pandas categoricals: a window of events (30 days of them at steady state) is then
# grouped, sorted and de-duplicated on integer codes, not on millions of Python strings.
CODED_COLUMNS = ("user_id", "item_id", "scene")


def coded_frame(table: pa.Table) -> pd.DataFrame:
    """``table`` as pandas, its CODED_COLUMNS as categoricals with sorted categories (so sorting by
    them sorts by the ids' text). The codes come from Arrow's hash-based dictionary encoding."""
    for name in CODED_COLUMNS:
        if name in table.column_names:
            at = table.column_names.index(name)
            table = table.set_column(at, name, pc.dictionary_encode(table.column(name)))
    frame = table.to_pandas()
    for name in CODED_COLUMNS:
        if name in frame.columns:
            categories = frame[name].cat.categories
            frame[name] = frame[name].cat.reorder_categories(categories.sort_values())
    return frame


def concat_coded(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Stack frames of ``coded_frame`` columns, keeping them categorical (``pd.concat`` turns categoricals
    with different categories into Python strings)."""
    frames = list(frames)
    for name in CODED_COLUMNS:
        if frames and all(name in f.columns and isinstance(f[name].dtype, pd.CategoricalDtype) for f in frames):
            categories = frames[0][name].cat.categories
            for f in frames[1:]:
                categories = categories.union(f[name].cat.categories)
            frames = [f.assign(**{name: f[name].cat.set_categories(categories)}) for f in frames]
    return pd.concat(frames, ignore_index=True)


def interactions(lake: Lake, first: dt.date, last: dt.date, columns: list[str]) -> pd.DataFrame:
    """Interactions with run_date in [first, last] (partition pruning); ids and scene as categoricals
    (``coded_frame``): group them with ``observed=True``."""
    return coded_frame(lake.read_arrow("interactions", columns=columns,
                                       filters=[("run_date", ">=", first), ("run_date", "<=", last)]))


def window_start(settings: Settings, run_date: dt.date) -> dt.date:
    return run_date - dt.timedelta(days=settings.active_days - 1)


@dataclass
class History:
    """Recent interactions (active window up to run_date) and what follows from them."""
    events: pd.DataFrame  # user_id, item_id, scene, event_ts, run_date

    def user_counts(self) -> pd.Series:
        return self.events.groupby("user_id", observed=True).size()

    def top_scenes(self, per_user: int = 1) -> pd.DataFrame:
        """The user's most frequent recent scenes (ties: the latest wins)."""
        ev = self.events
        if ev.empty:
            return pd.DataFrame(columns=["user_id", "scene"])
        counts = ev.groupby(["user_id", "scene"], observed=True).agg(n=("item_id", "size"), last=("event_ts", "max"))
        counts = counts.reset_index().sort_values(["user_id", "n", "last", "scene"], ascending=[True, False, False, True])
        top = counts.groupby("user_id", observed=True).head(per_user)
        return pd.DataFrame({"user_id": top["user_id"].astype(object).to_numpy(),
                             "scene": top["scene"].astype(object).to_numpy()})


def load_history(lake: Lake, settings: Settings, run_date: dt.date) -> History:
    events = interactions(lake, window_start(settings, run_date), run_date,
                          ["user_id", "item_id", "scene", "event_ts", "value", "run_date"])
    return History(events)


# Days of counts behind an item's recent popularity (model.recent_popularity): at a 3-day half-life,
# a count this old weighs under 0.1 %.
POPULARITY_DAYS = 30


def day_numbers(dates) -> np.ndarray:
    """Dates as int64 days since 1970-01-01 (the day unit of the model's item state)."""
    return np.asarray(pd.to_datetime(pd.Series(dates)), dtype="datetime64[D]").astype(np.int64)


def daily_item_counts(lake: Lake, first: dt.date, last: dt.date) -> pd.DataFrame:
    """(item_id, day, count): interactions per item and run date in [first, last], day = day_numbers."""
    table = lake.read_arrow("interactions", columns=["item_id", "run_date"],
                            filters=[("run_date", ">=", first), ("run_date", "<=", last)])
    counts = table.group_by(["item_id", "run_date"]).aggregate([([], "count_all")]).to_pandas()
    return pd.DataFrame({"item_id": counts["item_id"], "day": day_numbers(counts["run_date"]),
                         "count": counts["count_all"].astype(np.int64)})


HISTORY_ITEMS = 100  # latest distinct items per user pooled by the model's user tower (bounds its cost)


def sort_codes(values: pd.Series) -> np.ndarray:
    """Integer codes whose order is the values' order (categorical codes when the categories are sorted)."""
    if isinstance(values.dtype, pd.CategoricalDtype) and values.cat.categories.is_monotonic_increasing:
        return values.cat.codes.to_numpy()
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return pd.DatetimeIndex(values).asi8  # instants since the epoch, whatever the zone
    return pd.factorize(values, sort=True)[0]


def newest_first(events: pd.DataFrame) -> np.ndarray:
    """Row order: by user, newest event first, then by item; a numpy lexsort on integer codes (pandas'
    multi-key sort would hash every timestamp of the window first)."""
    return np.lexsort((sort_codes(events["item_id"]), -sort_codes(events["event_ts"]), sort_codes(events["user_id"])))


def latest_items(events: pd.DataFrame, per_user: int = HISTORY_ITEMS) -> pd.DataFrame:
    """(user_id, item_id): each user's ``per_user`` most recently used distinct items (the model's pooled history)."""
    latest = events.take(newest_first(events)).drop_duplicates(["user_id", "item_id"])
    return latest.groupby("user_id", sort=False, observed=True).head(per_user)[["user_id", "item_id"]].reset_index(drop=True)


def user_content(history: pd.DataFrame, items: dict[str, np.ndarray], profiles: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from coldstart.model import pool_user_content

    return pool_user_content(history["user_id"], history["item_id"], items, profiles)
