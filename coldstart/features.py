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


def interactions(lake: Lake, first: dt.date, last: dt.date, columns: list[str]) -> pd.DataFrame:
    """Interactions with run_date in [first, last] (partition pruning)."""
    return lake.read_pandas("interactions", columns=columns,
                            filters=[("run_date", ">=", first), ("run_date", "<=", last)])


def window_start(settings: Settings, run_date: dt.date) -> dt.date:
    return run_date - dt.timedelta(days=settings.active_days - 1)


@dataclass
class History:
    """Recent interactions (active window up to run_date) and what follows from them."""
    events: pd.DataFrame  # user_id, item_id, scene, event_ts, run_date

    def user_counts(self) -> pd.Series:
        return self.events.groupby("user_id").size()

    def top_scenes(self, per_user: int = 1) -> pd.DataFrame:
        """The user's most frequent recent scenes (ties: the latest wins)."""
        ev = self.events
        if ev.empty:
            return pd.DataFrame(columns=["user_id", "scene"])
        counts = ev.groupby(["user_id", "scene"]).agg(n=("item_id", "size"), last=("event_ts", "max")).reset_index()
        counts = counts.sort_values(["user_id", "n", "last", "scene"], ascending=[True, False, False, True])
        return counts.groupby("user_id").head(per_user)[["user_id", "scene"]].reset_index(drop=True)


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


def latest_items(events: pd.DataFrame, per_user: int = HISTORY_ITEMS) -> pd.DataFrame:
    """(user_id, item_id): each user's ``per_user`` most recently used distinct items (the model's pooled history)."""
    latest = events.sort_values(["user_id", "event_ts", "item_id"], ascending=[True, False, True], kind="stable")
    latest = latest.drop_duplicates(["user_id", "item_id"])
    return latest.groupby("user_id", sort=False).head(per_user)[["user_id", "item_id"]].reset_index(drop=True)


def user_content(history: pd.DataFrame, items: dict[str, np.ndarray], profiles: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from coldstart.model import pool_user_content

    return pool_user_content(history["user_id"].to_numpy(), history["item_id"].to_numpy(), items, profiles)
