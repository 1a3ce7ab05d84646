"""Baselines evaluated on the same protocol as the model (fitted on events up to the list date).

* ``popularity``: events weighted by exponential recency decay (half-life 3 days), one global list.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from coldstart.config import Settings
from coldstart.features import interactions
from coldstart.lake import Lake
from coldstart.score import popularity


def _top_unconsumed(ranked: list[str], consumed: set, k: int) -> list[str]:
    out = []
    for item in ranked:
        if item not in consumed:
            out.append(item)
            if len(out) == k:
                break
    return out


def popularity_lists(events: pd.DataFrame, list_date: dt.date, users: list[str], consumed: dict[str, set], k: int,
                     active_items: set) -> dict[str, list[str]]:
    pop = popularity(events.assign(scene="all"), list_date)
    pop = pop[pop["item_id"].isin(active_items)]
    ranked = pop.sort_values(["score", "item_id"], ascending=[False, True])["item_id"].tolist()
    window = k + max((len(c) for c in consumed.values()), default=0)
    head = ranked[:window]
    return {u: _top_unconsumed(head, consumed.get(u, set()), k) for u in users}


def baseline_lists(spark, lake: Lake, settings: Settings, list_date: dt.date, users: list[str],
                   consumed: dict[str, set], k: int) -> dict[str, list[str]]:
    events = interactions(lake, list_date - dt.timedelta(days=settings.active_days - 1), list_date,
                          ["user_id", "item_id", "scene", "event_ts"])
    items = lake.read_pandas("items", columns=["item_id", "active", "first_seen"])
    active = set(items.loc[items["active"] & (items["first_seen"] <= list_date), "item_id"])
    return {"popularity": popularity_lists(events, list_date, users, consumed, k, active)}
