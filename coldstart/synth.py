"""Synthetic landing days at any scale (``coldstart synth``), for load tests and quality checks.

The world, fixed by the seed:

* ``topics`` topics, each with its own made-up vocabulary, plus a shared generic vocabulary;
* items belong to one topic; their title, tags and description are drawn mostly from their topic's
  words, so content predicts taste; item popularity is power-law (Pareto weights);
* users have topic preferences (a sparse Dirichlet: one to three favourite topics), power-law
  activity and a favourite scene; some users have a profile whose ``interests`` are words of their
  favourite topic;
* an event picks a user by activity, a topic from the user's preferences (``taste_share`` of the
  time, else any topic), then an item of that topic by popularity; ``rate`` events rate items of a
  preferred topic higher.

Item-to-item structure (off unless ``relation_share`` > 0): every item has ``related_per_item``
links: bundles (items of its own topic) and complements (items of a partner topic, which content
alone does not reveal); ``sequel_share`` of the new items are sequels of an earlier item of the same
topic, titled after it (``<series> 2``), linked both ways. ``relation_share`` of the events then
follow a link instead: the user takes one of their ``FOLLOW_RECENT`` most recent earlier items and
consumes one of its usable links, so consuming A raises the chance of B (the co-consumption that
EASE and item-kNN learn). ``text_share`` < 1 leaves the rest of the items with a title only or with
no text at all (half each), as real catalogues do.

Presets (``PRESETS``, ``coldstart synth --preset``): ``media`` (the defaults: topics only, full text)
and ``shop`` (e-commerce shaped: many users with 1-5 events, a long tail of items, links, sparse
text).

Calendar: day 0 lands the initial catalog, the initial users and their first events (bootstrap);
every day lands ``new_users_per_day`` users (active from that day) and ``new_items_per_day`` catalog
rows, which become interactable from the next day, so a catalog row always lands before the item's
first interaction; some known items get a changed catalog row. A share of events is late (timestamp
on the previous day, inside the lateness window).

Broken rows: ``broken_share`` of each day's interaction rows (and of its catalog and profile rows)
are broken, spread evenly over the kinds in BROKEN_KINDS, each with exactly one defect, so that the
expected quarantine reason of every one is known (``summary.json`` at the landing root records them).
Broken rows are mixed into the JSONL files (the one format that can carry every kind).

Each day's interactions are written as ``files_per_day`` files cycling JSONL, CSV and Parquet, so
that Spark reads them in parallel. The cost is vectorised numpy: a 1M-event day takes seconds.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from coldstart.landing import day_dir, mark_complete

log = logging.getLogger("coldstart.synth")

SCENES = ("home", "search", "item_page", "email", "push", "mobile_app")
EVENT_TYPES = ("view", "click", "like", "rate", "purchase")
EVENT_TYPE_SHARES = (0.6, 0.25, 0.08, 0.05, 0.02)
COUNTRIES = ("no", "se", "de", "fr", "es", "it", "pl", "nl", "us", "br", "in", "jp")
FORMATS = ("jsonl", "csv", "parquet")

# kind of broken row -> the quarantine reason it must get ("duplicate" rows are dropped and counted instead)
BROKEN_KINDS = {
    "interactions": {
        "malformed_record": "malformed_record", "missing_field": "missing_field", "wrong_type": "wrong_type",
        "unknown_event_type": "unknown_event_type", "bad_timestamp": "bad_timestamp",
        "late_timestamp": "late_timestamp", "future_timestamp": "future_timestamp", "empty_id": "empty_id",
        "oversize_text": "oversize_text", "invalid_utf8": "invalid_utf8", "duplicate": "duplicate",
    },
    "items": {"malformed_record": "malformed_record", "missing_field": "missing_field", "wrong_type": "wrong_type",
              "empty_id": "empty_id", "oversize_text": "oversize_text", "invalid_utf8": "invalid_utf8"},
    "users": {"malformed_record": "malformed_record", "missing_field": "missing_field", "wrong_type": "wrong_type",
              "empty_id": "empty_id"},
}


@dataclass(frozen=True)
class SynthConfig:
    users: int = 2000
    items: int = 1000
    events_per_day: int = 20000
    days: int = 3
    new_items_per_day: int = 50
    new_users_per_day: int = 100
    broken_share: float = 0.01
    start: dt.date = dt.date(2024, 1, 1)
    seed: int = 42
    topics: int = 20
    files_per_day: int = 4
    profile_share: float = 0.3
    late_share: float = 0.02
    taste_share: float = 0.85
    lateness_days: int = 1        # ingest's setting: late and future broken rows are placed beyond it
    max_text_chars: int = 20000   # ingest's setting: oversize broken rows exceed it
    activity_shape: float = 1.2   # Pareto shape of user activity (larger: fewer heavy users)
    popularity_shape: float = 1.1  # Pareto shape of item popularity (smaller: a longer, heavier tail)
    relation_share: float = 0.0   # share of events that follow an item-to-item link (0: topics only)
    related_per_item: int = 3
    sequel_share: float = 0.3     # share of new items that are sequels of an earlier item (with links on)
    text_share: float = 1.0       # share of items with full text; the rest: a title only, or nothing

    def __post_init__(self):
        for name in ("users", "items", "events_per_day", "days", "topics", "files_per_day"):
            if getattr(self, name) < 1:
                raise ValueError(f"synth: {name} must be at least 1, got {getattr(self, name)}")
        for name in ("new_items_per_day", "new_users_per_day"):
            if getattr(self, name) < 0:
                raise ValueError(f"synth: {name} must not be negative, got {getattr(self, name)}")
        for name in ("activity_shape", "popularity_shape", "related_per_item"):
            if getattr(self, name) <= 0:
                raise ValueError(f"synth: {name} must be positive, got {getattr(self, name)}")
        for name in ("broken_share", "profile_share", "late_share", "taste_share", "relation_share", "sequel_share",
                     "text_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"synth: {name} must be in [0, 1], got {getattr(self, name)}")

    def day(self, index: int) -> dt.date:
        return self.start + dt.timedelta(days=index)


# e-commerce shaped: most users have 1-5 events, a long tail of items, item-to-item links, sparse text
PRESETS: dict[str, dict] = {
    "media": {},
    "shop": {"users": 6000, "items": 4000, "events_per_day": 9000, "new_users_per_day": 1500, "new_items_per_day": 150,
             "topics": 30, "activity_shape": 2.5, "popularity_shape": 0.8, "taste_share": 0.7,
             "relation_share": 0.45, "related_per_item": 3, "sequel_share": 0.3, "text_share": 0.4,
             "profile_share": 0.1},
}
FOLLOW_RECENT = 10  # a link is followed from one of the user's this many most recent items


def preset_config(name: str, **overrides) -> SynthConfig:
    """SynthConfig of preset ``name`` (see PRESETS), with ``overrides`` on top."""
    if name not in PRESETS:
        raise ValueError(f"synth: unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return SynthConfig(**{**PRESETS[name], **overrides})


@dataclass
class DaySummary:
    date: str
    interactions: dict = field(default_factory=dict)   # rows, valid, broken: {kind: n}
    items: dict = field(default_factory=dict)
    users: dict = field(default_factory=dict)


def _broken_counts(rows: int, share: float, kinds) -> dict[str, int]:
    """Broken rows per kind: share of rows spread evenly, at least one of each kind when share > 0."""
    if share <= 0 or rows == 0:
        return {k: 0 for k in kinds}
    each = max(1, int(round(rows * share / len(kinds))))
    return {k: each for k in kinds}


def _words(rng: np.random.Generator, count: int, syllables: int) -> list[str]:
    consonants, vowels = list("bcdfghjklmnprstvz"), list("aeiou")
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        word = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables))
        if word not in seen:
            seen.add(word)
            out.append(word)
    return out


class World:
    """Every entity of the whole run, generated up front (vectorised) from the seed."""

    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 0])
        k = cfg.topics
        self.topic_names = _words(rng, k, 3)
        self.topic_words = np.array(_words(rng, k * 40, 3), dtype=object).reshape(k, 40)
        self.generic_words = np.array(_words(rng, 300, 2), dtype=object)
        n_users = cfg.users + cfg.days * cfg.new_users_per_day
        n_items = cfg.items + cfg.days * cfg.new_items_per_day
        self.user_ids = np.array([f"u{j:08d}" for j in range(n_users)], dtype=object)
        self.user_arrival = np.concatenate([np.zeros(cfg.users, np.int64),
                                            np.repeat(np.arange(cfg.days), cfg.new_users_per_day)])
        self.user_pref = rng.dirichlet(np.full(k, 0.15), size=n_users).astype(np.float32)
        self.user_pref_cum = np.cumsum(self.user_pref, axis=1)
        self.user_activity = (rng.pareto(cfg.activity_shape, n_users) + 1.0).astype(np.float64)
        self.user_scene = rng.integers(0, len(SCENES), n_users)
        self.user_has_profile = rng.random(n_users) < cfg.profile_share
        self.item_ids = np.array([f"i{j:08d}" for j in range(n_items)], dtype=object)
        # initial items land on day 0 and are interactable at once; new ones land on day d, usable from d+1
        self.item_landing = np.concatenate([np.zeros(cfg.items, np.int64),
                                            np.repeat(np.arange(cfg.days), cfg.new_items_per_day)])
        self.item_usable_from = np.where(np.arange(n_items) < cfg.items, 0, self.item_landing + 1)
        topic_popularity = 1.0 / np.arange(1, k + 1) ** 0.5
        self.item_topic = rng.choice(k, size=n_items, p=topic_popularity / topic_popularity.sum())
        self.item_popularity = (rng.pareto(cfg.popularity_shape, n_items) + 1.0).astype(np.float64)
        self.item_year = rng.integers(1950, 2024, n_items)
        # links and text kinds draw from their own stream, so the topics-only world stays as it was
        self.related = np.full((n_items, cfg.related_per_item), -1, dtype=np.int64)
        self.series_title: np.ndarray | None = None
        self.text_kind = np.zeros(n_items, np.int8)  # 0 full text, 1 title only, 2 no text
        extra = np.random.default_rng([cfg.seed, 3])
        if cfg.relation_share > 0:
            self._links(extra)
        if cfg.text_share < 1:
            sparse = extra.random(n_items) >= cfg.text_share
            self.text_kind[sparse] = np.where(extra.random(int(sparse.sum())) < 0.5, 1, 2)
        self.past_users = np.empty(0, np.int64)  # every earlier event's user and item, in time order (links)
        self.past_items = np.empty(0, np.int64)

    def _links(self, rng: np.random.Generator) -> None:
        """Bundles (own topic), complements (partner topic) and sequels (new items after an earlier one)."""
        cfg, k, n = self.cfg, self.cfg.topics, len(self.item_ids)
        partner = (np.arange(k) + 1 + rng.integers(0, max(k - 1, 1), k)) % k  # never the topic itself when k > 1
        weight = np.sqrt(self.item_popularity)  # links favour popular items less than events do: a real tail
        by_topic = [np.flatnonzero(self.item_topic == t) for t in range(k)]

        def draw(topic: np.ndarray) -> np.ndarray:
            out = np.empty(len(topic), np.int64)
            for t in np.unique(topic):
                rows, pool = np.flatnonzero(topic == t), by_topic[t]
                if not pool.size:  # a small world may leave a topic without items
                    pool = np.arange(n)
                out[rows] = pool[np.searchsorted(np.cumsum(weight[pool]), rng.random(rows.size) * weight[pool].sum(),
                                                 side="right").clip(0, len(pool) - 1)]
            return out

        for slot in range(cfg.related_per_item):
            own = slot % 2 == 0  # bundles in even slots, complements in odd ones
            self.related[:, slot] = draw(self.item_topic if own else partner[self.item_topic])
        self.related[self.related == np.arange(n)[:, None]] = -1
        words = self.topic_words[self.item_topic, rng.integers(0, 40, n)]
        generic = self.generic_words[rng.integers(0, len(self.generic_words), n)]
        titles = np.array([f"{a} {b}".title() for a, b in zip(words, generic)], dtype=object)
        parts = np.ones(n, np.int64)
        for j in np.flatnonzero((np.arange(n) >= cfg.items) & (rng.random(n) < cfg.sequel_share)):
            earlier = by_topic[self.item_topic[j]]
            earlier = earlier[self.item_landing[earlier] < self.item_landing[j]]
            if not earlier.size:
                continue
            parent = earlier[rng.integers(0, earlier.size)]
            titles[j], parts[j] = titles[parent], parts[parent] + 1
            self.related[parent, 0], self.related[j, 0] = j, parent
        self.series_title = np.array([t if p == 1 else f"{t} {p}" for t, p in zip(titles, parts)], dtype=object)

    # --- catalog and profile rows ------------------------------------------------------------
    def item_rows(self, items: np.ndarray, rng: np.random.Generator, updated_at: str, changed: bool = False) -> list[dict]:
        topics = self.item_topic[items]
        n = len(items)
        topic_pick = rng.integers(0, 40, size=(n, 14))
        generic_pick = rng.integers(0, len(self.generic_words), size=(n, 14))
        from_topic = rng.random((n, 14)) < 0.75
        rows = []
        for r in range(n):
            t = topics[r]
            words = np.where(from_topic[r], self.topic_words[t, topic_pick[r]], self.generic_words[generic_pick[r]])
            tags = [self.topic_names[t], self.topic_words[t, topic_pick[r, 0]]]
            if changed:
                tags.append(self.topic_words[t, topic_pick[r, 13]])
            title = " ".join(self.topic_words[t, topic_pick[r, :2]]).title() + " " + self.generic_words[generic_pick[r, 0]]
            row = {
                "item_id": self.item_ids[items[r]],
                "title": title if self.series_title is None else self.series_title[items[r]],
                "description": " ".join(words[2:]) + ".",
                "tags": tags,
                "attributes": {"year": int(self.item_year[items[r]]), "format": ("book", "film", "album")[items[r] % 3]},
                "active": True,
                "updated_at": updated_at,
            }
            kind = self.text_kind[items[r]]
            if kind:  # sparse text: a title only, or no text at all
                row.update(description="", tags=[], attributes={})
                if kind == 2:
                    row["title"] = ""
            rows.append(row)
        return rows

    def profile_rows(self, users: np.ndarray, rng: np.random.Generator, updated_at: str) -> list[dict]:
        favourite = np.argmax(self.user_pref[users], axis=1)
        picks = rng.integers(0, 40, size=(len(users), 3))
        ages = rng.integers(16, 80, len(users))
        countries = rng.integers(0, len(COUNTRIES), len(users))
        return [{"user_id": self.user_ids[u],
                 "profile": {"age": int(ages[r]), "country": COUNTRIES[countries[r]],
                             "interests": " ".join(self.topic_words[favourite[r], picks[r]])},
                 "updated_at": updated_at}
                for r, u in enumerate(users)]

    # --- events ------------------------------------------------------------------------------
    def events(self, d: int, n: int, rng: np.random.Generator) -> pd.DataFrame:
        cfg = self.cfg
        users = np.flatnonzero(self.user_arrival <= d)
        weights = np.cumsum(self.user_activity[users])
        u = users[np.searchsorted(weights, rng.random(n) * weights[-1], side="right").clip(0, len(users) - 1)]
        # topic: from the user's preferences most of the time, else any topic
        tasteful = rng.random(n) < cfg.taste_share
        topic = (self.user_pref_cum[u] < rng.random(n)[:, None] * self.user_pref_cum[u, -1:]).sum(axis=1)
        topic = np.where(tasteful, topic, rng.integers(0, cfg.topics, n)).clip(0, cfg.topics - 1)
        usable = np.flatnonzero(self.item_usable_from <= d)
        item = np.empty(n, dtype=np.int64)
        for t in range(cfg.topics):
            rows = np.flatnonzero(topic == t)
            if not rows.size:
                continue
            pool = usable[self.item_topic[usable] == t]
            if not pool.size:
                pool = usable
            cum = np.cumsum(self.item_popularity[pool])
            item[rows] = pool[np.searchsorted(cum, rng.random(rows.size) * cum[-1], side="right").clip(0, len(pool) - 1)]
        if cfg.relation_share > 0:
            item = self._follow_links(d, u, item)
        event_type = np.array(EVENT_TYPES, dtype=object)[rng.choice(len(EVENT_TYPES), size=n, p=EVENT_TYPE_SHARES)]
        liked = self.user_pref[u, self.item_topic[item]] > 0.2
        rating = np.where(liked, rng.integers(4, 6, n), rng.integers(1, 4, n)).astype(np.float64)
        value = np.where(event_type == "rate", rating, np.nan)
        scene_idx = np.where(rng.random(n) < 0.6, self.user_scene[u], rng.integers(0, len(SCENES), n))
        day_start = np.datetime64(cfg.day(d), "s")
        seconds = rng.integers(0, 86400, n)
        late = (rng.random(n) < cfg.late_share) & (d > 0) & (cfg.lateness_days > 0)
        ts = day_start + (seconds - np.where(late, 86400, 0)).astype("timedelta64[s]")
        order = np.argsort(ts, kind="stable")
        prefix = f"ev{cfg.day(d):%Y%m%d}-"
        if cfg.relation_share > 0:
            self.past_users = np.concatenate([self.past_users, u[order]])
            self.past_items = np.concatenate([self.past_items, item[order]])
        frame = pd.DataFrame({
            "event_id": [f"{prefix}{i:09d}" for i in range(n)],
            "user_id": self.user_ids[u[order]], "item_id": self.item_ids[item[order]],
            "event_type": event_type[order], "value": value[order],
            "ts": np.char.add(np.datetime_as_string(ts[order], unit="s").astype(object), "Z"),
            "scene": np.array(SCENES, dtype=object)[scene_idx[order]],
        })
        return frame


    def _follow_links(self, d: int, u: np.ndarray, item: np.ndarray) -> np.ndarray:
        """``item`` with relation_share of the events replaced by a usable link of one of the user's recent
        items. The day runs in two halves, so the second half also follows links from the first."""
        rng = np.random.default_rng([self.cfg.seed, 4, d])
        item = item.copy()
        half = len(u) // 2
        for part in (slice(0, half), slice(half, len(u))):
            pu, pi = self.past_users, self.past_items
            if part.start:
                pu, pi = np.concatenate([pu, u[:half]]), np.concatenate([pi, item[:half]])
            follow = np.flatnonzero(rng.random(part.stop - part.start) < self.cfg.relation_share) + part.start
            if not follow.size or not pu.size:
                continue
            order = np.argsort(pu, kind="stable")  # per user, oldest first
            sorted_users = pu[order]
            ends = np.searchsorted(sorted_users, u[follow], side="right")
            counts = ends - np.searchsorted(sorted_users, u[follow], side="left")
            has = counts > 0
            follow, ends, counts = follow[has], ends[has], counts[has]
            back = np.floor(rng.random(follow.size) * np.minimum(counts, FOLLOW_RECENT)).astype(np.int64)
            source = pi[order[ends - 1 - back]]
            links = self.related[source]
            usable = (links >= 0) & (self.item_usable_from[np.maximum(links, 0)] <= d)
            pick = np.argmax(rng.random(links.shape) * usable, axis=1)
            ok = usable[np.arange(follow.size), pick]
            item[follow[ok]] = links[np.arange(follow.size), pick][ok]
        return item


# --- broken rows ------------------------------------------------------------------------------
def _broken_event(kind: str, row: dict, i: int, cfg: SynthConfig, d: int) -> bytes:
    """One interaction line with exactly one defect of the given kind."""
    row = dict(row, event_id=f"bad{cfg.day(d):%Y%m%d}-{kind}-{i}")
    if row.get("value") is not None and not np.isfinite(row["value"]):
        row["value"] = None
    day = cfg.day(d)
    if kind == "duplicate":
        raise ValueError("duplicates are copies of valid rows")
    if kind == "malformed_record":
        text = json.dumps(row)
        return text[: len(text) // 2].encode()
    if kind == "missing_field":
        del row["user_id"]
    elif kind == "wrong_type":
        row["item_id"] = [row["item_id"]]
    elif kind == "unknown_event_type":
        row["event_type"] = "teleport"
    elif kind == "bad_timestamp":
        row["ts"] = "not a time"
    elif kind == "late_timestamp":
        row["ts"] = f"{day - dt.timedelta(days=cfg.lateness_days + 2):%Y-%m-%d}T10:00:00Z"
    elif kind == "future_timestamp":
        row["ts"] = f"{day + dt.timedelta(days=2):%Y-%m-%d}T10:00:00Z"
    elif kind == "empty_id":
        row["event_id"] = ""
    elif kind == "oversize_text":
        row["scene"] = "x" * 1000
    elif kind == "invalid_utf8":
        return json.dumps(row).replace('"user_id": "', '"user_id": "\udcff', 1).encode("utf-8", "surrogateescape")
    return json.dumps(row).encode()


def _broken_entity(kind: str, row: dict, id_field: str, cfg: SynthConfig, i: int) -> bytes:
    row = dict(row)
    row[id_field] = f"bad-{kind}-{i}"
    if kind == "malformed_record":
        text = json.dumps(row)
        return text[: len(text) // 2].encode()
    if kind == "missing_field":
        del row[id_field]
    elif kind == "wrong_type":
        if id_field == "item_id":
            row["tags"] = 5
        else:
            row["profile"] = ["not", "a", "map"]
    elif kind == "empty_id":
        row[id_field] = "  "
    elif kind == "oversize_text":
        row["description"] = "long " * (cfg.max_text_chars // 5 + 10)
    elif kind == "invalid_utf8":
        return json.dumps(row).replace('"title": "', '"title": "\udcfe', 1).encode("utf-8", "surrogateescape")
    return json.dumps(row).encode()


# Parquet landing files carry typed lists and maps (and text timestamps, as the other formats do)
ITEM_SCHEMA = pa.schema([("item_id", pa.string()), ("title", pa.string()), ("description", pa.string()),
                         ("tags", pa.list_(pa.string())), ("attributes", pa.map_(pa.string(), pa.string())),
                         ("active", pa.bool_()), ("updated_at", pa.string())])
USER_SCHEMA = pa.schema([("user_id", pa.string()), ("profile", pa.map_(pa.string(), pa.string())),
                         ("updated_at", pa.string())])


def _stringify_maps(row: dict) -> dict:
    return {k: ({mk: str(mv) for mk, mv in v.items()} if isinstance(v, dict) else v) for k, v in row.items()}


# --- writing ------------------------------------------------------------------------------------
def _jsonl_lines(frame: pd.DataFrame) -> list[bytes]:
    if frame.empty:
        return []
    return [line.encode() for line in frame.to_json(orient="records", lines=True, force_ascii=False).splitlines()]


def _write_jsonl(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def _write_events(folder: Path, frame: pd.DataFrame, broken: list[bytes], duplicates: pd.DataFrame,
                  files: int, rng: np.random.Generator) -> None:
    """Valid rows split over the files (JSONL, CSV, Parquet in turn); broken rows and duplicates are
    shuffled into the JSONL files."""
    parts = np.array_split(np.arange(len(frame)), files)
    jsonl_parts = [p for p in range(files) if FORMATS[p % 3] == "jsonl"]
    extra = broken + _jsonl_lines(duplicates)
    extra_for = np.array_split(np.arange(len(extra)), len(jsonl_parts))
    for p, rows in enumerate(parts):
        part = frame.iloc[rows]
        fmt = FORMATS[p % 3]
        path = folder / f"part-{p:03d}.{fmt}"
        if fmt == "jsonl":
            # a tenth of JSONL timestamps as epoch seconds: both forms are in the contract
            part = part.astype({"ts": object})
            epoch = rng.random(len(part)) < 0.1
            part.loc[epoch, "ts"] = (pd.to_datetime(part.loc[epoch, "ts"]).astype("int64") // 10**9).astype(object)
            lines = _jsonl_lines(part) + [extra[i] for i in extra_for[jsonl_parts.index(p)]]
            _write_jsonl(path, [lines[i] for i in rng.permutation(len(lines))])
        elif fmt == "csv":
            part.to_csv(path, index=False)
        else:
            pq.write_table(pa.Table.from_pandas(part, preserve_index=False), path)


def _write_entities(folder: Path, rows: list[dict], broken: list[bytes], fmt: str, rng: np.random.Generator) -> None:
    """Catalog or profile rows in one file of the given format; broken rows go to a JSONL file beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    if rows:
        if fmt == "jsonl":
            _write_jsonl(folder / "part-000.jsonl", [json.dumps(r, ensure_ascii=False).encode() for r in rows])
        elif fmt == "csv":
            frame = pd.DataFrame(rows)
            for column in frame.columns:
                if column in ("tags",):
                    frame[column] = frame[column].map("|".join)
                elif column in ("attributes", "profile"):
                    frame[column] = frame[column].map(json.dumps)
            frame.to_csv(folder / "part-000.csv", index=False)
        else:
            table = pa.Table.from_pylist([_stringify_maps(r) for r in rows],
                                         schema=ITEM_SCHEMA if "item_id" in rows[0] else USER_SCHEMA)
            pq.write_table(table, folder / "part-000.parquet")
    if broken:
        _write_jsonl(folder / "part-001-mixed.jsonl", [broken[i] for i in rng.permutation(len(broken))])
    mark_complete(folder)


def synth(landing: str | Path, cfg: SynthConfig) -> list[DaySummary]:
    """Write cfg.days landing days under ``landing``; returns (and writes to summary.json) what was written."""
    landing = Path(landing)
    world = World(cfg)
    summaries = []
    for d in range(cfg.days):
        day = cfg.day(d)
        rng = np.random.default_rng([cfg.seed, 1, d])
        summary = DaySummary(day.isoformat())
        updated_at = f"{day:%Y-%m-%d}T06:00:00Z"

        # catalog: initial items on day 0, the day's new items, and changed rows of some known items
        new_items = np.flatnonzero(world.item_landing == d)
        known = np.flatnonzero(world.item_landing < d)
        changed = rng.choice(known, size=min(len(known), cfg.new_items_per_day // 10), replace=False) if len(known) else known
        item_rows = world.item_rows(new_items, rng, updated_at) + world.item_rows(changed, rng, updated_at, changed=True)
        item_kinds = _broken_counts(len(item_rows), cfg.broken_share, BROKEN_KINDS["items"])
        template = item_rows[0] if item_rows else world.item_rows(np.array([0]), rng, updated_at)[0]
        item_broken = [_broken_entity(k, template, "item_id", cfg, i) for k, c in item_kinds.items() for i in range(c)]
        _write_entities(day_dir(landing, "items", day), item_rows, item_broken, FORMATS[d % 3], rng)
        summary.items = {"rows": len(item_rows) + len(item_broken), "valid": len(item_rows), "new": len(new_items),
                         "changed": len(changed), "broken": item_kinds}

        # profiles of the day's arriving users who have one
        arriving = np.flatnonzero((world.user_arrival == d) & world.user_has_profile)
        profile_rows = world.profile_rows(arriving, rng, updated_at)
        user_kinds = _broken_counts(len(profile_rows), cfg.broken_share, BROKEN_KINDS["users"])
        template = profile_rows[0] if profile_rows else world.profile_rows(np.array([0]), rng, updated_at)[0]
        user_broken = [_broken_entity(k, template, "user_id", cfg, i) for k, c in user_kinds.items() for i in range(c)]
        _write_entities(day_dir(landing, "users", day), profile_rows, user_broken, FORMATS[(d + 1) % 3], rng)
        summary.users = {"rows": len(profile_rows) + len(user_broken), "valid": len(profile_rows), "broken": user_kinds}

        # events: broken rows (duplicates included) are part of events_per_day
        kinds = _broken_counts(cfg.events_per_day, cfg.broken_share, BROKEN_KINDS["interactions"])
        n_broken = sum(kinds.values())
        if n_broken >= cfg.events_per_day:
            raise ValueError(f"synth: broken_share {cfg.broken_share} leaves no valid events of {cfg.events_per_day}")
        frame = world.events(d, cfg.events_per_day - n_broken, rng)
        templates = frame.sample(n=n_broken, random_state=int(rng.integers(2**31)), replace=True).to_dict("records")
        broken, duplicates, t = [], [], 0
        for kind, count in kinds.items():
            for i in range(count):
                if kind == "duplicate":
                    duplicates.append(templates[t])
                else:
                    broken.append(_broken_event(kind, templates[t], i, cfg, d))
                t += 1
        folder = day_dir(landing, "interactions", day)
        folder.mkdir(parents=True, exist_ok=True)
        _write_events(folder, frame, broken, pd.DataFrame(duplicates, columns=frame.columns), cfg.files_per_day, rng)
        mark_complete(folder)
        summary.interactions = {"rows": cfg.events_per_day, "valid": len(frame), "broken": kinds}
        summaries.append(summary)
        log.info("synth %s: %d events (%d broken), %d catalog rows, %d profiles", day, cfg.events_per_day, n_broken,
                 len(item_rows), len(profile_rows))
    (landing / "summary.json").write_text(json.dumps({"config": {k: str(v) if isinstance(v, dt.date) else v
                                                                   for k, v in asdict(cfg).items()},
                                                        "days": [asdict(s) for s in summaries]}, indent=1))
    return summaries
