"""Replay the bundled MovieLens sample into the landing layout on a synthetic calendar.

* ratings become ``rate`` events with the rating as ``value``;
* the first 80% of events (by time) land as one bootstrap day, the rest is cut into N consecutive
  days of equal event count; timestamps are rewritten into their day, in order;
* an item's catalog row lands a seeded geometric number of days (mean ~3, at most 30) before its
  first interaction, so how long an item has waited says nothing about tomorrow; never-rated items
  land on random days; anything that would land before the first replay day lands on the bootstrap day;
* each tag from tags.csv joins its item's tags in a catalog row landed on the tag's day.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from coldstart import storage
from coldstart.landing import day_uri, mark_complete

log = logging.getLogger("coldstart.replay")

BOOTSTRAP_SHARE = 0.8
MEAN_LEAD_DAYS = 3.0
MAX_LEAD_DAYS = 30


def sample_data_dir() -> Path:
    return Path(str(resources.files("coldstart") / "sample_data" / "ml-latest-small"))


@dataclass
class ReplayPlan:
    start: dt.date
    days: int

    @property
    def bootstrap_day(self) -> dt.date:
        return self.start

    def day(self, index: int) -> dt.date:
        """index 0 = bootstrap day, 1..days = replay days."""
        return self.start + dt.timedelta(days=index)

    @property
    def all_days(self) -> list[dt.date]:
        return [self.day(i) for i in range(self.days + 1)]


def _rewrite_into_day(day: dt.date, count: int) -> pd.Series:
    """Timestamps spread evenly through the UTC day, in the given order."""
    start = pd.Timestamp(day, tz="UTC")
    offsets = (np.arange(count) + 0.5) * (86400.0 / max(count, 1))
    return start + pd.to_timedelta(offsets, unit="s")


def replay(landing: str | Path, start: dt.date, days: int = 14, seed: int = 42, source: Path | None = None,
           users_limit: int | None = None) -> ReplayPlan:
    """Write the sample into ``landing`` (a local folder or an ``s3://`` prefix); returns the calendar. ``users_limit`` keeps a tiny slice (tests)."""
    if days < 1:
        raise ValueError("days must be at least 1")
    source = Path(source) if source else sample_data_dir()
    landing = storage.normalize(str(landing))
    plan = ReplayPlan(start, days)
    rng = np.random.default_rng(seed)

    ratings = pd.read_csv(source / "ratings.csv", dtype={"userId": str, "movieId": str})
    movies = pd.read_csv(source / "movies.csv", dtype={"movieId": str})
    tags = pd.read_csv(source / "tags.csv", dtype={"userId": str, "movieId": str, "tag": str})
    if users_limit:
        keep = sorted(ratings["userId"].unique(), key=int)[:users_limit]
        ratings = ratings[ratings["userId"].isin(keep)]
        tags = tags[tags["userId"].isin(keep)]

    ratings = ratings.sort_values(["timestamp", "userId", "movieId"], kind="stable").reset_index(drop=True)
    n = len(ratings)
    n_boot = int(round(n * BOOTSTRAP_SHARE))
    day_index = np.zeros(n, dtype=np.int64)
    rest = n - n_boot
    # Equal event counts per replay day (the first days take the remainder).
    day_index[n_boot:] = 1 + (np.arange(rest) * days) // max(rest, 1)
    ratings["day"] = day_index

    # --- interactions --------------------------------------------------------------------
    for index in range(days + 1):
        day = plan.day(index)
        chunk = ratings[ratings["day"] == index]
        out = pd.DataFrame({
            "event_id": "ml-" + chunk["userId"] + "-" + chunk["movieId"],
            "user_id": chunk["userId"].values,
            "item_id": chunk["movieId"].values,
            "event_type": "rate",
            "value": chunk["rating"].values,
            "ts": _rewrite_into_day(day, len(chunk)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "scene": "default",
        })
        folder = day_uri(landing, "interactions", day)
        storage.write_text(storage.join(folder, "part-0.csv"), out.to_csv(index=False))
        mark_complete(folder)

    # --- catalog ---------------------------------------------------------------------------
    first_day = ratings.groupby("movieId")["day"].min()
    lead = np.minimum(rng.geometric(1.0 / (MEAN_LEAD_DAYS + 1.0), size=len(movies)) - 1, MAX_LEAD_DAYS)
    random_day = rng.integers(0, days + 1, size=len(movies))
    movies = movies.assign(
        land_day=[max(0, int(first_day[m]) - int(lag)) if m in first_day.index else int(r)
                  for m, lag, r in zip(movies["movieId"], lead, random_day)])
    if users_limit:
        movies = movies[movies["movieId"].isin(first_day.index)]
    # A tag's day: where its timestamp falls among the rating timestamps.
    cut_ts = ratings["timestamp"].to_numpy()
    pos = np.searchsorted(cut_ts, tags["timestamp"].to_numpy(), side="right") - 1
    tags = tags.assign(day=np.where(pos < 0, 0, day_index[np.clip(pos, 0, n - 1)]))

    movie_rows = movies.set_index("movieId")
    per_day: dict[int, list[dict]] = {}
    for movie_id, row in movie_rows.iterrows():
        land = int(row["land_day"])
        movie_tags = tags[tags["movieId"] == movie_id] if len(tags) else tags
        change_days = sorted({land, *[max(land, int(d)) for d in movie_tags["day"]]})
        for change_day in change_days:
            genre_tags = [g for g in str(row["genres"]).split("|") if g and g != "(no genres listed)"]
            user_tags = list(dict.fromkeys(t.strip() for t in movie_tags[movie_tags["day"] <= change_day]["tag"]
                                           if t.strip()))
            per_day.setdefault(change_day, []).append(_catalog_row(movie_id, row["title"], genre_tags + user_tags,
                                                                   plan.day(change_day)))
    for index in range(days + 1):
        folder = day_uri(landing, "items", plan.day(index))
        storage.write_text(storage.join(folder, "part-0.jsonl"),
                           "".join(json.dumps(record) + "\n" for record in per_day.get(index, [])))
        mark_complete(folder)
    log.info("replay: %d events (%d bootstrap) over %s .. %s, %d items", n, n_boot, plan.day(0), plan.day(days), len(movies))
    return plan


_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _catalog_row(movie_id: str, title: str, tags: list[str], day: dt.date) -> dict:
    year = _YEAR.search(title)
    attributes = {"year": year.group(1)} if year else {}
    return {"item_id": movie_id, "title": title, "tags": tags, "attributes": attributes, "active": True,
            "updated_at": f"{day.isoformat()}T00:00:00Z"}
