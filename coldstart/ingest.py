"""Ingest one run date's landing folders into interactions, quarantine, ingest_audit, items and users.

Each landing file is one Spark task: a Python worker streams it (JSONL, CSV or Parquet) in batches,
validates every row with vectorised pandas, and emits typed rows or quarantine rows with a reason.
Spark then drops duplicates (in this run, and against the stored events inside the lateness window
only, so a day's cost does not grow with history) and writes each table in one Delta commit.
Row accounting is checked by the job itself: rows_read = accepted + quarantined + duplicate.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from coldstart.config import Settings
from coldstart.landing import SOURCES, day_files

log = logging.getLogger("coldstart.ingest")

BATCH_ROWS = 50_000

# Reasons a row is quarantined (quarantine.reason).
MALFORMED = "malformed_record"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
BAD_TIMESTAMP = "bad_timestamp"
LATE_TIMESTAMP = "late_timestamp"
FUTURE_TIMESTAMP = "future_timestamp"
EMPTY_ID = "empty_id"
OVERSIZE_TEXT = "oversize_text"
INVALID_UTF8 = "invalid_utf8"
REASONS = (MALFORMED, MISSING_FIELD, WRONG_TYPE, UNKNOWN_EVENT_TYPE, BAD_TIMESTAMP, LATE_TIMESTAMP, FUTURE_TIMESTAMP,
           EMPTY_ID, OVERSIZE_TEXT, INVALID_UTF8)

FIELDS = {
    "interactions": ("event_id", "user_id", "item_id", "event_type", "value", "ts", "scene"),
    "items": ("item_id", "title", "description", "tags", "attributes", "active", "updated_at"),
    "users": ("user_id", "profile", "updated_at"),
}
ID_FIELD = {"interactions": "event_id", "items": "item_id", "users": "user_id"}

# What the per-file parser emits (Spark DDL); maps and lists travel as JSON text.
PARSED_DDL = {
    "interactions": "event_id string, user_id string, item_id string, event_type string, value double, scene string, "
                    "event_ts timestamp",
    "items": "item_id string, title string, description string, tags_json string, attributes_json string, "
             "active boolean, updated_at timestamp, content_text string, content_hash string",
    "users": "user_id string, profile_json string, updated_at timestamp, content_text string, content_hash string",
}
COMMON_DDL = "source_file string, line long, raw string, reason string, detail string"


class AuditError(RuntimeError):
    """Row accounting does not add up: rows were lost or double counted."""


@dataclass(frozen=True)
class Rules:
    """What the validator needs, small enough to ship to every Python worker."""
    run_date: dt.date
    lateness_days: int
    event_types: tuple[str, ...]
    max_text_chars: int

    @classmethod
    def from_settings(cls, settings: Settings, run_date: dt.date) -> "Rules":
        return cls(run_date, settings.lateness_days, tuple(settings.event_types), settings.max_text_chars)

    @property
    def earliest(self) -> pd.Timestamp:
        return pd.Timestamp(self.run_date - dt.timedelta(days=self.lateness_days), tz="UTC")

    @property
    def end(self) -> pd.Timestamp:
        return pd.Timestamp(self.run_date + dt.timedelta(days=1), tz="UTC")


# ---------------------------------------------------------------------------------------------
# Reading: a file -> batches of (line, raw, record dict | None, reason, detail)
# ---------------------------------------------------------------------------------------------
@dataclass
class RawBatch:
    lines: list[int]
    raws: list[str]
    records: list[dict | None]
    reasons: list[str | None]
    details: list[str | None]


def _text_lines(path: str) -> Iterator[tuple[int, str | None, bytes]]:
    """(line number, decoded text or None when not UTF-8, raw bytes) of each non-blank line."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            try:
                yield number, raw.decode("utf-8"), raw
            except UnicodeDecodeError:
                yield number, None, raw


def _batches(items: Iterator, size: int = BATCH_ROWS) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _read_jsonl(path: str) -> Iterator[RawBatch]:
    for chunk in _batches(_text_lines(path)):
        batch = RawBatch([], [], [], [], [])
        for number, text, raw in chunk:
            record, reason, detail = None, None, None
            if text is None:
                text, reason, detail = raw.decode("utf-8", "replace"), INVALID_UTF8, "line is not valid UTF-8"
            else:
                try:
                    record = json.loads(text)
                    if not isinstance(record, dict):
                        record, reason, detail = None, MALFORMED, "line is JSON but not an object"
                except ValueError as exc:
                    reason, detail = MALFORMED, f"unparseable JSON: {exc}"
            batch.lines.append(number)
            batch.raws.append(text)
            batch.records.append(record)
            batch.reasons.append(reason)
            batch.details.append(detail)
        yield batch


def _read_csv(path: str) -> Iterator[RawBatch]:
    lines = _text_lines(path)
    header = None
    for number, text, raw in lines:
        if text is None:
            raise ValueError(f"{path}: header line is not valid UTF-8")
        header = [h.strip() for h in next(csv.reader([text]))]
        break
    if header is None:
        return
    for chunk in _batches(lines):
        batch = RawBatch([], [], [], [], [])
        for number, text, raw in chunk:
            record, reason, detail = None, None, None
            if text is None:
                text, reason, detail = raw.decode("utf-8", "replace"), INVALID_UTF8, "line is not valid UTF-8"
            else:
                try:
                    values = next(csv.reader([text], strict=True))
                    if len(values) != len(header):
                        reason, detail = MALFORMED, f"{len(values)} columns, header has {len(header)}"
                    else:
                        record = {k: (v if v != "" else None) for k, v in zip(header, values)}
                except csv.Error as exc:
                    reason, detail = MALFORMED, f"unparseable CSV: {exc}"
            batch.lines.append(number)
            batch.raws.append(text)
            batch.records.append(record)
            batch.reasons.append(reason)
            batch.details.append(detail)
        yield batch


def _read_parquet(path: str) -> Iterator[RawBatch]:
    import pyarrow.parquet as pq

    number = 0
    for rb in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
        records = rb.to_pylist()
        lines = list(range(number + 1, number + 1 + len(records)))
        number += len(records)
        raws = [json.dumps(r, default=str, ensure_ascii=False) for r in records]
        yield RawBatch(lines, raws, records, [None] * len(records), [None] * len(records))


def read_file(path: str) -> Iterator[RawBatch]:
    name = path.lower()
    if name.endswith((".jsonl", ".json")):
        return _read_jsonl(path)
    if name.endswith(".csv"):
        return _read_csv(path)
    if name.endswith(".parquet"):
        return _read_parquet(path)
    raise ValueError(f"unsupported landing file type: {path}")


# ---------------------------------------------------------------------------------------------
# Validation: vectorised over a batch
# ---------------------------------------------------------------------------------------------
_ZONE = re.compile(r"(Z|[+-]\d{2}:?\d{2})$", re.IGNORECASE)
_NUMBER = re.compile(r"^\s*-?\d+(\.\d+)?\s*$")


class _Verdict:
    """Collects the first failing reason per row."""

    def __init__(self, n: int, reasons: list, details: list):
        self.reason = np.array(reasons, dtype=object) if n else np.array([], dtype=object)
        self.detail = np.array(details, dtype=object) if n else np.array([], dtype=object)

    @property
    def open(self) -> np.ndarray:
        return pd.isna(self.reason)

    def fail(self, mask, reason: str, detail) -> None:
        mask = np.asarray(mask, dtype=bool) & self.open
        if mask.any():
            self.reason[mask] = reason
            if isinstance(detail, (pd.Series, np.ndarray, list)):
                self.detail[mask] = np.asarray(detail, dtype=object)[mask]
            else:
                self.detail[mask] = detail


def _is_text_or_int(v) -> bool:
    return v is None or isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))


def _parse_ts(values: pd.Series, verdict: _Verdict, field: str, required: bool) -> pd.Series:
    """ISO-8601 with a zone, or epoch seconds -> UTC timestamps; anything else fails the row."""
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
    present = values.notna().to_numpy()
    if required:
        verdict.fail(~present, MISSING_FIELD, f"{field} is missing")
    is_number = values.map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).to_numpy()
    text = values.map(lambda v: v.strip() if isinstance(v, str) else None)
    numeric_text = text.map(lambda v: bool(v) and bool(_NUMBER.match(v))).to_numpy()
    epoch = is_number | numeric_text
    if epoch.any():
        seconds = pd.to_numeric(values[epoch].map(lambda v: v if not isinstance(v, str) else v.strip()), errors="coerce")
        finite = seconds.map(lambda s: s is not None and not pd.isna(s) and abs(s) < 1e11)
        parsed = pd.to_datetime(seconds.where(finite), unit="s", utc=True, errors="coerce")
        out[epoch] = parsed.astype("datetime64[us, UTC]")
    iso = present & ~epoch & text.notna().to_numpy()
    if iso.any():
        zoned = text[iso].map(lambda v: bool(_ZONE.search(v)))
        parsed = pd.to_datetime(text[iso].where(zoned), utc=True, errors="coerce", format="ISO8601")
        out[iso] = parsed.astype("datetime64[us, UTC]")
        no_zone = np.zeros(len(values), dtype=bool)
        no_zone[np.flatnonzero(iso)[~zoned.to_numpy()]] = True
        verdict.fail(no_zone, BAD_TIMESTAMP, f"{field} has no time zone")
    wrong = present & ~epoch & text.isna().to_numpy()
    verdict.fail(wrong, BAD_TIMESTAMP, f"{field} is neither ISO-8601 text nor epoch seconds")
    verdict.fail(present & out.isna().to_numpy(), BAD_TIMESTAMP, values.map(lambda v: f"{field}={v!r} is unparseable"))
    return out


def _check_id(frame: pd.DataFrame, field: str, verdict: _Verdict) -> pd.Series:
    values = frame[field]
    verdict.fail(values.isna().to_numpy(), MISSING_FIELD, f"{field} is missing")
    verdict.fail(~values.map(_is_text_or_int).to_numpy(), WRONG_TYPE,
                 values.map(lambda v: f"{field} must be text, got {type(v).__name__}"))
    text = values.map(lambda v: str(v).strip() if _is_text_or_int(v) and v is not None else None)
    verdict.fail((text == "").to_numpy(), EMPTY_ID, f"{field} is empty")
    return text


def _check_text(frame: pd.DataFrame, field: str, verdict: _Verdict, limit: int, required: bool = False) -> pd.Series:
    values = frame[field]
    if required:
        verdict.fail(values.isna().to_numpy(), MISSING_FIELD, f"{field} is missing")
    ok_type = values.map(lambda v: v is None or (isinstance(v, float) and math.isnan(v)) or isinstance(v, (str, int, float))
                         and not isinstance(v, bool))
    verdict.fail(~ok_type.to_numpy(), WRONG_TYPE, values.map(lambda v: f"{field} must be text, got {type(v).__name__}"))
    text = values.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    too_long = text.map(lambda v: v is not None and len(v) > limit).to_numpy()
    verdict.fail(too_long, OVERSIZE_TEXT, text.map(lambda v: f"{field} has {len(v) if v else 0} characters, limit {limit}"))
    return text


def _as_list(value):
    """List field: a JSON list, or '|'-separated text (CSV), or a JSON list given as text."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            loaded = json.loads(stripped)
            if not isinstance(loaded, list):
                raise TypeError("not a list")
            return loaded
        return [p for p in stripped.split("|") if p.strip()]
    raise TypeError(f"expected a list, got {type(value).__name__}")


def _as_map(value):
    """Map field: a JSON object, or JSON text (CSV); values become text (numbers keep their JSON text)."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else {}
    if isinstance(value, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        value = dict(value)  # Parquet maps arrive as (key, value) pairs
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    out = {}
    for k, v in value.items():
        if isinstance(v, (dict, list)):
            raise TypeError(f"value of {k!r} is not a scalar")
        out[str(k)] = None if v is None else (json.dumps(v) if isinstance(v, bool) else str(v))
    return out


def _convert(frame: pd.DataFrame, field: str, fn, verdict: _Verdict) -> pd.Series:
    out = []
    bad = np.zeros(len(frame), dtype=bool)
    detail = np.empty(len(frame), dtype=object)
    for i, v in enumerate(frame[field]):
        try:
            out.append(fn(v))
        except (TypeError, ValueError) as exc:
            out.append(None)
            bad[i] = True
            detail[i] = f"{field}: {exc}"
    verdict.fail(bad, WRONG_TYPE, detail)
    return pd.Series(out, index=frame.index, dtype=object)


def validate(source: str, batch: RawBatch, rules: Rules, source_file: str) -> pd.DataFrame:
    """Typed rows for ``source`` (columns of PARSED_DDL) plus the common columns; reason is null for good rows."""
    from coldstart.text import content_hash, item_content_text, user_content_text

    n = len(batch.lines)
    fields = FIELDS[source]
    frame = pd.DataFrame([r if r is not None else {} for r in batch.records], columns=list(fields), dtype=object)
    frame = frame.astype(object).where(frame.notna(), None)
    verdict = _Verdict(n, batch.reasons, batch.details)
    out = pd.DataFrame({"source_file": source_file, "line": np.asarray(batch.lines, dtype=np.int64), "raw": batch.raws})
    limit = rules.max_text_chars

    if source == "interactions":
        for field in ("event_id", "user_id", "item_id"):
            out[field] = _check_id(frame, field, verdict)
        etype = _check_text(frame, "event_type", verdict, 64, required=True)
        known = etype.isin(rules.event_types) | etype.isna()
        verdict.fail(~known.to_numpy(), UNKNOWN_EVENT_TYPE, etype.map(lambda v: f"event_type={v!r} is not one of the configured types"))
        out["event_type"] = etype
        value = frame["value"]
        number = value.map(lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                           or (isinstance(v, str) and bool(_NUMBER.match(v))))
        verdict.fail(~number.to_numpy(), WRONG_TYPE, value.map(lambda v: f"value={v!r} is not a number"))
        out["value"] = pd.to_numeric(value.where(number, None), errors="coerce").astype("float64")
        scene = _check_text(frame, "scene", verdict, 256)
        out["scene"] = scene.map(lambda v: v.strip() if v and v.strip() else "default")
        ts = _parse_ts(frame["ts"], verdict, "ts", required=True)
        verdict.fail((ts < rules.earliest).to_numpy(), LATE_TIMESTAMP,
                     ts.map(lambda t: f"ts {t} is more than {rules.lateness_days} day(s) before {rules.run_date}"))
        verdict.fail((ts >= rules.end).to_numpy(), FUTURE_TIMESTAMP,
                     ts.map(lambda t: f"ts {t} is after the end of {rules.run_date}"))
        out["event_ts"] = ts
    elif source == "items":
        out["item_id"] = _check_id(frame, "item_id", verdict)
        title = _check_text(frame, "title", verdict, limit)
        description = _check_text(frame, "description", verdict, limit)
        tags = _convert(frame, "tags", _as_list, verdict)
        bad_tag = tags.map(lambda ts: ts is not None and any(not isinstance(t, (str, int, float)) or isinstance(t, bool)
                                                              for t in ts))
        verdict.fail(bad_tag.to_numpy(), WRONG_TYPE, "tags must be a list of strings")
        tags = tags.map(lambda ts: [str(t) for t in ts] if ts is not None and not isinstance(ts, str) else [])
        verdict.fail(tags.map(lambda ts: sum(len(t) for t in ts) > limit).to_numpy(), OVERSIZE_TEXT, "tags are too long")
        attributes = _convert(frame, "attributes", _as_map, verdict)
        verdict.fail(attributes.map(lambda m: m is not None and sum(len(str(v)) for v in m.values()) > limit).to_numpy(),
                     OVERSIZE_TEXT, "attributes are too long")
        active = frame["active"].map(_as_bool)
        verdict.fail(active.map(lambda v: v == "bad").to_numpy(), WRONG_TYPE, "active must be a boolean")
        out["title"], out["description"] = title, description
        out["tags_json"] = tags.map(json.dumps)
        out["attributes_json"] = attributes.map(lambda m: json.dumps(m or {}, sort_keys=True))
        out["active"] = active.map(lambda v: True if v in (None, "bad") else v).astype(bool)
        out["updated_at"] = _parse_ts(frame["updated_at"], verdict, "updated_at", required=False)
        texts = [item_content_text(t, g, d, a, max_chars=limit) if r is None else ""
                 for t, g, d, a, r in zip(title, tags, description, attributes, verdict.reason)]
        out["content_text"] = texts
        out["content_hash"] = [content_hash(t) for t in texts]
    elif source == "users":
        out["user_id"] = _check_id(frame, "user_id", verdict)
        profile = _convert(frame, "profile", _as_map, verdict)
        verdict.fail(profile.map(lambda m: m is not None and any(len(str(v)) > limit for v in m.values())).to_numpy(),
                     OVERSIZE_TEXT, "a profile field is too long")
        out["profile_json"] = profile.map(lambda m: json.dumps(m or {}, sort_keys=True))
        out["updated_at"] = _parse_ts(frame["updated_at"], verdict, "updated_at", required=False)
        texts = [user_content_text(p, max_chars=limit) if r is None else "" for p, r in zip(profile, verdict.reason)]
        out["content_text"] = texts
        out["content_hash"] = [content_hash(t) for t in texts]
    else:
        raise ValueError(f"unknown source {source!r}")
    out["reason"] = verdict.reason
    out["detail"] = verdict.detail
    return out


def _as_bool(v):
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0"):
        return v.strip().lower() in ("true", "1")
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    return "bad"


def parse_files(source: str, rules: Rules):
    """mapInPandas function: each input row names a file; yields validated rows in batches."""
    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            for path in frame["path"]:
                for batch in read_file(path):
                    yield validate(source, batch, rules, path)
    return run


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------
def ingest(spark, settings: Settings, run_date: dt.date) -> dict:
    """Ingest landing(run_date). Returns the audit rows as dicts."""
    from pyspark.sql import functions as F
    from pyspark.sql import Window
    from pyspark.storagelevel import StorageLevel

    from coldstart.lake import Lake

    lake = Lake.from_settings(settings)
    rules = Rules.from_settings(settings, run_date)
    files = {s: day_files(settings.landing, s, run_date, required=(s == "interactions")) for s in SOURCES}
    now = F.current_timestamp()
    day = F.lit(run_date).cast("date")
    audit: dict[str, dict] = {}
    quarantines = []
    parsed: dict[str, object] = {}
    for source in SOURCES:
        paths = [str(p.resolve()) for p in (files[source] or [])]
        log.info("ingest %s %s: %d file(s)", run_date, source, len(paths))
        if paths:
            frame = spark.createDataFrame([(p,) for p in paths], "path string").repartition(len(paths))
            df = frame.mapInPandas(parse_files(source, rules), f"{COMMON_DDL}, {PARSED_DDL[source]}")
            df = df.persist(StorageLevel.MEMORY_AND_DISK)
        else:
            df = spark.createDataFrame([], f"{COMMON_DDL}, {PARSED_DDL[source]}")
        parsed[source] = df
        audit[source] = {"files": len(paths)}
        quarantines.append(df.filter(F.col("reason").isNotNull()).select(
            day.alias("run_date"), F.lit(source).alias("source"), "source_file", "line", "raw", "reason", "detail",
            now.alias("ingested_at")))

    # --- interactions: drop repeats (this run, then stored partitions inside the lateness window)
    good = parsed["interactions"].filter(F.col("reason").isNull())
    first = Window.partitionBy("event_id").orderBy("source_file", "line")
    good = good.withColumn("_n", F.row_number().over(first))
    window = [run_date - dt.timedelta(days=d) for d in range(1, settings.lateness_days + 1)]
    stored = lake.read_spark(spark, "interactions", partitions={"run_date": window}).select("event_id").distinct()
    good = good.join(stored.withColumn("_stored", F.lit(True)), "event_id", "left")
    good = good.withColumn("_dup", (F.col("_n") > 1) | F.col("_stored").isNotNull())
    good = good.persist(StorageLevel.MEMORY_AND_DISK)
    accepted = good.filter(~F.col("_dup")).select(
        "event_id", "user_id", "item_id", "event_type", "value", "scene", "event_ts",
        F.to_date("event_ts").alias("event_date"), day.alias("run_date"), "source_file", now.alias("ingested_at"))
    audit["interactions"]["rows_accepted"] = lake.write_spark(accepted, "interactions", "replace_partition",
                                                              {"run_date": run_date})
    audit["interactions"]["rows_duplicate"] = good.filter(F.col("_dup")).count()

    # --- items: latest row per item wins; the others are superseded (counted as duplicates)
    items = parsed["items"].filter(F.col("reason").isNull())
    latest = Window.partitionBy("item_id").orderBy(F.col("updated_at").desc_nulls_last(), F.col("source_file").desc(),
                                                   F.col("line").desc())
    items = items.withColumn("_n", F.row_number().over(latest))
    catalog_rows = items.filter("_n = 1")
    audit["items"]["rows_duplicate"] = items.filter("_n > 1").count()
    audit["items"]["rows_accepted"] = _merge_items(spark, lake, catalog_rows, accepted, run_date)

    users = parsed["users"].filter(F.col("reason").isNull())
    latest_user = Window.partitionBy("user_id").orderBy(F.col("updated_at").desc_nulls_last(), F.col("source_file").desc(),
                                                        F.col("line").desc())
    users = users.withColumn("_n", F.row_number().over(latest_user))
    audit["users"]["rows_duplicate"] = users.filter("_n > 1").count()
    audit["users"]["rows_accepted"] = _merge_users(spark, lake, users.filter("_n = 1"), accepted, run_date)

    quarantine = quarantines[0].unionByName(quarantines[1]).unionByName(quarantines[2])
    lake.write_spark(quarantine, "quarantine", "replace_partition", {"run_date": run_date})
    counts = {r["source"]: r for r in lake.read_arrow("quarantine", filters=[("run_date", "=", run_date)])
              .group_by("source").aggregate([([], "count_all")]).rename_columns(["source", "n"]).to_pylist()}
    for source in SOURCES:
        totals = parsed[source].agg(F.count(F.lit(1)).alias("n")).collect()[0]
        audit[source]["rows_read"] = totals["n"]
        audit[source]["rows_quarantined"] = counts.get(source, {}).get("n", 0)
    rows = []
    for source in SOURCES:
        a = audit[source]
        rows.append({"run_date": run_date, "source": source, "files": a["files"], "rows_read": a["rows_read"],
                     "rows_accepted": a["rows_accepted"], "rows_quarantined": a["rows_quarantined"],
                     "rows_duplicate": a["rows_duplicate"],
                     "ingested_at": dt.datetime.now(dt.timezone.utc)})
    for r in rows:
        if r["rows_read"] != r["rows_accepted"] + r["rows_quarantined"] + r["rows_duplicate"]:
            raise AuditError(f"ingest {run_date} {r['source']}: rows_read={r['rows_read']} but accepted "
                             f"{r['rows_accepted']} + quarantined {r['rows_quarantined']} + duplicate {r['rows_duplicate']}")
    lake.replace_partition("ingest_audit", pa.Table.from_pylist(rows), run_date=run_date)
    for df in parsed.values():
        df.unpersist()
    good.unpersist()
    for r in rows:
        log.info("ingest %s %-12s read=%d accepted=%d quarantined=%d duplicate=%d", run_date, r["source"], r["rows_read"],
                 r["rows_accepted"], r["rows_quarantined"], r["rows_duplicate"])
    return {r["source"]: r for r in rows}


def _merge_items(spark, lake, catalog_rows, accepted, run_date: dt.date) -> int:
    """Merge the day's catalog rows, give interaction-only items a row without text, and record each
    item's first interaction. Returns the number of catalog rows merged."""
    from pyspark.sql import functions as F

    from coldstart.text import content_hash

    day = F.lit(run_date).cast("date")
    existing = lake.read_spark(spark, "items")
    catalog = catalog_rows.select(
        "item_id", F.col("title").alias("_title"), F.col("description").alias("_description"),
        F.from_json("tags_json", "array<string>").alias("_tags"),
        F.from_json("attributes_json", "map<string,string>").alias("_attributes"),
        F.col("active").alias("_active"), F.col("content_text").alias("_text"), F.col("content_hash").alias("_hash"),
        F.col("updated_at").alias("_updated"), F.lit(True).alias("_in_catalog")).persist()
    merged = catalog.count()
    referenced = accepted.select("item_id").distinct().withColumn("_used", F.lit(True))
    touched = catalog.select("item_id").unionByName(referenced.select("item_id")).distinct()
    rows = (touched.join(catalog, "item_id", "left").join(referenced, "item_id", "left").join(existing, "item_id", "left"))
    in_catalog = F.col("_in_catalog").isNotNull()
    first_interaction = F.when(F.col("_used").isNotNull(), F.coalesce(F.least("first_interaction", day), day)) \
        .otherwise(F.col("first_interaction"))
    changed = in_catalog | F.col("first_seen").isNull() | \
        (F.col("_used").isNotNull() & (F.col("first_interaction").isNull() | (F.col("first_interaction") > day)))
    out = rows.filter(changed).select(
        "item_id",
        F.when(in_catalog, F.col("_title")).otherwise(F.col("title")).alias("title"),
        F.when(in_catalog, F.col("_description")).otherwise(F.col("description")).alias("description"),
        F.when(in_catalog, F.col("_tags")).otherwise(F.col("tags")).alias("tags"),
        F.when(in_catalog, F.col("_attributes")).otherwise(F.col("attributes")).alias("attributes"),
        F.when(in_catalog, F.col("_active")).otherwise(F.coalesce("active", F.lit(True))).alias("active"),
        F.when(in_catalog, F.col("_text")).otherwise(F.coalesce("content_text", F.lit(""))).alias("content_text"),
        F.when(in_catalog, F.col("_hash")).otherwise(F.coalesce("content_hash", F.lit(content_hash("")))).alias("content_hash"),
        F.coalesce(F.least("first_seen", day), day).alias("first_seen"),
        first_interaction.alias("first_interaction"),
        F.when(in_catalog, F.col("_updated")).otherwise(F.col("updated_at")).alias("updated_at"),
        F.when(in_catalog, day).otherwise(F.coalesce("last_run_date", day)).alias("last_run_date"))
    lake.merge_spark(out, "items")
    catalog.unpersist()
    return merged


def _merge_users(spark, lake, profile_rows, accepted, run_date: dt.date) -> int:
    """Profiles replace the stored profile; every active user gets last_seen; new users get first_seen."""
    from pyspark.sql import functions as F

    from coldstart.text import content_hash

    existing = lake.read_spark(spark, "users")
    day = F.lit(run_date).cast("date")
    profiles = profile_rows.select("user_id", F.from_json("profile_json", "map<string,string>").alias("_profile"),
                                   F.col("content_text").alias("_text"), F.col("content_hash").alias("_hash"))
    profiles = profiles.persist()
    merged = profiles.count()
    active = accepted.select("user_id").distinct().unionByName(profiles.select("user_id")).distinct()
    rows = (active.join(profiles, "user_id", "left").join(existing, "user_id", "left").select(
        "user_id",
        F.when(F.col("_hash").isNotNull(), F.col("_profile")).otherwise(F.col("profile")).alias("profile"),
        F.coalesce("_text", "content_text", F.lit("")).alias("content_text"),
        F.coalesce("_hash", "content_hash", F.lit(content_hash(""))).alias("content_hash"),
        F.coalesce(F.least("first_seen", day), day).alias("first_seen"),
        F.coalesce(F.greatest("last_seen", day), day).alias("last_seen")))
    lake.merge_spark(rows, "users")
    profiles.unpersist()
    return merged
