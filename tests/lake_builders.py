"""Small hand-made tables written straight into a tmp lake through the catalog schemas (no ingest),
for the score and evaluate tests: each test states exactly which users, items and events exist."""

from __future__ import annotations

import datetime as dt
import hashlib

import numpy as np
import pyarrow as pa

from coldstart.catalog import TABLES
from coldstart.lake import Lake


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_items(lake: Lake, rows: list[dict]) -> None:
    """rows: item_id, first_seen, and optionally title, active (True), first_interaction (None)."""
    full = []
    for r in rows:
        text = r.get("title", "")
        full.append({"item_id": r["item_id"], "title": r.get("title"), "description": None, "tags": [],
                     "attributes": [], "active": r.get("active", True), "content_text": text,
                     "content_hash": _hash(text), "first_seen": r["first_seen"],
                     "first_interaction": r.get("first_interaction"), "updated_at": None,
                     "last_run_date": r["first_seen"]})
    lake.merge("items", pa.Table.from_pylist(full, schema=TABLES["items"].schema))


def write_users(lake: Lake, rows: list[dict]) -> None:
    """rows: user_id, first_seen, last_seen, and optionally profile_text ('' = no profile)."""
    full = [{"user_id": r["user_id"], "profile": [("interests", r["profile_text"])] if r.get("profile_text") else [],
             "content_text": r.get("profile_text", ""), "content_hash": _hash(r.get("profile_text", "")),
             "first_seen": r["first_seen"], "last_seen": r["last_seen"]} for r in rows]
    lake.merge("users", pa.Table.from_pylist(full, schema=TABLES["users"].schema))


def write_events(lake: Lake, events: list[tuple]) -> None:
    """events: (user_id, item_id, scene, run_date); one partition write per run date, event at noon of that day."""
    by_date: dict[dt.date, list[dict]] = {}
    for n, (user, item, scene, day) in enumerate(events):
        ts = dt.datetime.combine(day, dt.time(12), dt.timezone.utc) + dt.timedelta(seconds=n)
        by_date.setdefault(day, []).append({
            "event_id": f"e{n}-{user}-{item}-{day}", "user_id": user, "item_id": item, "event_type": "click",
            "value": None, "scene": scene, "event_ts": ts, "event_date": day, "run_date": day,
            "source_file": "hand-made", "ingested_at": None})
    for day, rows in by_date.items():
        lake.replace_partition("interactions", pa.Table.from_pylist(rows, schema=TABLES["interactions"].schema),
                               run_date=day)


def write_embeddings(lake: Lake, encoder: str, entity_type: str, vectors: dict[str, np.ndarray],
                     run_date: dt.date) -> None:
    rows = []
    for entity_id, vec in vectors.items():
        vec = np.asarray(vec, np.float32)
        vec = vec / np.linalg.norm(vec)
        rows.append({"entity_type": entity_type, "entity_id": entity_id, "encoder": encoder,
                     "content_hash": _hash(entity_id), "embedding": vec.tolist(), "dim": len(vec), "run_date": run_date})
    lake.merge("entity_embeddings", pa.Table.from_pylist(rows, schema=TABLES["entity_embeddings"].schema))


def topic_vector(topic: int, dim: int, rng: np.random.Generator, noise: float = 0.3) -> np.ndarray:
    """A content vector near the topic's axis: items of one topic are close to each other."""
    vec = rng.normal(0, noise, dim)
    vec[topic] += 1.0
    return vec
