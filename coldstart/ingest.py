"""Ingest one run date's landing folders into interactions, quarantine, ingest_audit, items and users.

Each landing file is one Spark task (``mapInArrow``): a Python worker streams the file (JSONL, CSV
or Parquet, read with the field lists below, never with schema inference) in batches, validates
every row column-wise (numpy and pyarrow compute; only JSON/CSV decoding is per line) and emits
typed rows, or quarantine rows with the raw text, line and reason. Spark then drops repeated
event_ids in one window over this run's events plus the stored events of the partitions inside the
lateness window only (so a day's cost does not grow with history), and each table is written in
one Delta commit. The job checks its own accounting: rows_read = accepted + quarantined + duplicate,
else AuditError.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from coldstart.config import Settings
from coldstart.landing import SOURCES, day_files

log = logging.getLogger("coldstart.ingest")

# Rows per validated batch. 10k keeps a worker's peak at about 170 MB on a 250k-line JSONL file (300 MB at
# 50k) at the same speed (bench/results/nightly_scale.md).
BATCH_ROWS = 10_000
# Ids, event types and scenes are short by nature; a longer one is garbage, not data.
SHORT_TEXT_CHARS = 256

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

# What the per-file parser emits; maps and lists travel as JSON text. Spark DDL and the same in Arrow.
COMMON_DDL = "source_file string, line long, raw string, reason string, detail string"
PARSED_DDL = {
    "interactions": "event_id string, user_id string, item_id string, event_type string, value double, scene string, "
                    "event_ts timestamp",
    "items": "item_id string, title string, description string, tags_json string, attributes_json string, "
             "active boolean, updated_at timestamp, content_text string, content_hash string",
    "users": "user_id string, profile_json string, updated_at timestamp, content_text string, content_hash string",
}
_ARROW_TYPES = {"string": pa.string(), "long": pa.int64(), "double": pa.float64(), "boolean": pa.bool_(),
                "timestamp": pa.timestamp("us", tz="UTC")}


def parsed_schema(source: str) -> pa.Schema:
    """Arrow schema of what the parser emits for ``source`` (COMMON_DDL + PARSED_DDL)."""
    pairs = [part.strip().split() for part in f"{COMMON_DDL}, {PARSED_DDL[source]}".split(",")]
    return pa.schema([(name, _ARROW_TYPES[kind]) for name, kind in pairs])


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
    def earliest(self) -> np.datetime64:
        """Events before this instant (UTC) are too late for this run date."""
        return np.datetime64(self.run_date - dt.timedelta(days=self.lateness_days), "us")

    @property
    def end(self) -> np.datetime64:
        """Events at or after this instant (UTC) are in the future of this run date."""
        return np.datetime64(self.run_date + dt.timedelta(days=1), "us")


# ---------------------------------------------------------------------------------------------
# Reading: a file -> batches of columns (Python values, None = absent) plus read-time failures
# ---------------------------------------------------------------------------------------------
@dataclass
class RawBatch:
    lines: np.ndarray                 # 1-based line (text files) or row number (Parquet)
    columns: dict[str, list]          # field -> values as decoded (None where absent)
    reasons: list[str | None]         # failures found while reading (malformed, invalid UTF-8)
    details: list[str | None]
    raws: list[str] | None = None     # the lines as read (text files); Parquet rows are rebuilt on demand

    def __len__(self) -> int:
        return len(self.lines)

    def raw(self, i: int) -> str:
        if self.raws is not None:
            return self.raws[i]
        return json.dumps({f: v for f, v in ((f, vs[i]) for f, vs in self.columns.items()) if v is not None},
                          default=str, ensure_ascii=False)


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


def _chunks(items: Iterator, size: int = BATCH_ROWS) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _undecodable(raw: bytes) -> str:
    # backslashreplace keeps the offending bytes visible (and recoverable) in quarantine.raw
    return raw.decode("utf-8", "backslashreplace")


def _read_jsonl(path: str, fields: tuple[str, ...]) -> Iterator[RawBatch]:
    loads = json.loads
    for chunk in _chunks(_text_lines(path)):
        records, raws, reasons, details = [], [], [], []
        for _, text, raw in chunk:
            record = reason = detail = None
            if text is None:
                text, reason, detail = _undecodable(raw), INVALID_UTF8, "line is not valid UTF-8"
            else:
                try:
                    record = loads(text)
                    if type(record) is not dict:
                        record, reason, detail = None, MALFORMED, f"line is JSON but not an object ({type(record).__name__})"
                except ValueError as exc:
                    reason, detail = MALFORMED, f"unparseable JSON: {exc}"
            records.append(record if record is not None else {})
            raws.append(text)
            reasons.append(reason)
            details.append(detail)
        columns = {f: list(map(dict.get, records, repeat(f))) for f in fields}
        yield RawBatch(np.fromiter((c[0] for c in chunk), np.int64, len(chunk)), columns, reasons, details, raws)


def _split_csv_line(text: str) -> list[str]:
    if '"' not in text:  # the common case needs no quote handling
        return text.split(",")
    return next(csv.reader([text], strict=True))


def _read_csv(path: str, fields: tuple[str, ...]) -> Iterator[RawBatch]:
    """CSV with a header line; one record per physical line (a quoted newline is a malformed record)."""
    lines = _text_lines(path)
    header = None
    for _, text, raw in lines:
        if text is None:
            raise ValueError(f"{path}: header line is not valid UTF-8")
        header = [h.strip() for h in next(csv.reader([text]))]
        break
    if header is None:
        return
    width = len(header)
    positions = {f: header.index(f) for f in fields if f in header}
    for chunk in _chunks(lines):
        rows, raws, reasons, details = [], [], [], []
        for _, text, raw in chunk:
            values = reason = detail = None
            if text is None:
                text, reason, detail = _undecodable(raw), INVALID_UTF8, "line is not valid UTF-8"
            else:
                try:
                    values = _split_csv_line(text)
                    if len(values) != width:
                        values, reason, detail = None, MALFORMED, f"{len(values)} columns, header has {width}"
                except csv.Error as exc:
                    reason, detail = MALFORMED, f"unparseable CSV: {exc}"
            rows.append(values)
            raws.append(text)
            reasons.append(reason)
            details.append(detail)
        columns = {}
        for f in fields:
            if f in positions:
                p = positions[f]
                columns[f] = [(row[p] or None) if row is not None else None for row in rows]  # "" is absent
            else:
                columns[f] = [None] * len(rows)
        yield RawBatch(np.fromiter((c[0] for c in chunk), np.int64, len(chunk)), columns, reasons, details, raws)


def _column_values(column: pa.ChunkedArray | pa.Array) -> list:
    """Python values of an Arrow column; strings that are not UTF-8 become bytes (flagged by the validator)."""
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        return [v if v is None else _utf8_or_bytes(v) for v in column.cast(pa.binary()).to_pylist()]


def _utf8_or_bytes(value: bytes):
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def _read_parquet(path: str, fields: tuple[str, ...]) -> Iterator[RawBatch]:
    """Only the contract's columns are read (others ignored); a file that cannot be read at all is
    one malformed record, so that it shows up in quarantine instead of vanishing."""
    import pyarrow.parquet as pq

    number = 0
    try:
        reader = pq.ParquetFile(path)
        present = [f for f in fields if f in reader.schema_arrow.names]
        for rb in reader.iter_batches(batch_size=BATCH_ROWS, columns=present):
            n = rb.num_rows
            columns = {f: _column_values(rb.column(f)) if f in present else [None] * n for f in fields}
            yield RawBatch(np.arange(number + 1, number + 1 + n, dtype=np.int64), columns, [None] * n, [None] * n)
            number += n
    except (OSError, pa.ArrowException) as exc:
        yield RawBatch(np.array([number + 1], dtype=np.int64), {f: [None] for f in fields}, [MALFORMED],
                       [f"unreadable Parquet from row {number + 1} on: {exc}"], [f"<{path}>"])


def read_file(path: str, source: str) -> Iterator[RawBatch]:
    name = path.lower()
    fields = FIELDS[source]
    if name.endswith((".jsonl", ".json")):
        return _read_jsonl(path, fields)
    if name.endswith(".csv"):
        return _read_csv(path, fields)
    if name.endswith(".parquet"):
        return _read_parquet(path, fields)
    raise ValueError(f"unsupported landing file type: {path}")


# ---------------------------------------------------------------------------------------------
# Validation: column-wise over a batch; the first failing check of a row gives its reason
# ---------------------------------------------------------------------------------------------
class _Verdict:
    """Collects the first failing reason per row; details are only formatted for failing rows."""

    def __init__(self, reasons: list, details: list):
        self.reason = np.array(reasons, dtype=object)
        self.detail = np.array(details, dtype=object)
        self.open = np.fromiter((r is None for r in reasons), bool, len(reasons))

    def fail(self, mask: np.ndarray, reason: str, detail: str | Callable[[int], str]) -> None:
        rows = np.flatnonzero(mask & self.open)
        if rows.size:
            self.reason[rows] = reason
            self.detail[rows] = [detail(i) for i in rows] if callable(detail) else detail
            self.open[rows] = False


def _flags(values: list, test: Callable) -> np.ndarray:
    return np.fromiter((test(v) for v in values), bool, len(values))


# Python type of each value as a small code, computed with C-level map() (no Python call per value)
NONE, STR, INT, FLOAT, OTHER = 0, 1, 2, 3, 4
_TYPE_CODES = {type(None): NONE, str: STR, int: INT, float: FLOAT}


def _type_codes(values: list) -> np.ndarray:
    return np.fromiter(map(_TYPE_CODES.get, map(type, values), repeat(OTHER)), np.int8, len(values))


def _as_strings(values: list, codes: np.ndarray) -> pa.Array:
    """The str values as an Arrow string array (null elsewhere)."""
    if not (codes > STR).any():
        return pa.array(values, pa.string())
    return pa.array([v if c == STR else None for v, c in zip(values, codes)], pa.string())


def _type_name(v) -> str:
    return type(v).__name__


def _mask(array: pa.Array) -> np.ndarray:
    """Boolean Arrow array -> numpy, null as False."""
    return pc.fill_null(array, False).to_numpy(zero_copy_only=False)


def _check_bytes(columns: dict[str, list], verdict: _Verdict) -> None:
    """Parquet strings that are not UTF-8 arrive as bytes."""
    for field, values in columns.items():
        if bytes in set(map(type, values)):
            verdict.fail(_flags(values, lambda v: type(v) is bytes), INVALID_UTF8, f"{field} is not valid UTF-8")


def _check_id(values: list, field: str, verdict: _Verdict) -> pa.Array:
    """Text or integer ids, stripped; missing, other types, empty and oversize ids fail."""
    codes = _type_codes(values)
    verdict.fail(codes == NONE, MISSING_FIELD, f"{field} is missing")
    verdict.fail((codes != STR) & (codes != INT), WRONG_TYPE, lambda i: f"{field} must be text, got {_type_name(values[i])}")
    if (codes == INT).any():
        values = [str(v) if c == INT else v for v, c in zip(values, codes)]
        codes = np.where(codes == INT, STR, codes)
    text = pc.utf8_trim_whitespace(_as_strings(values, codes))
    verdict.fail(_mask(pc.equal(text, "")), EMPTY_ID, f"{field} is empty")
    length = pc.utf8_length(text)
    verdict.fail(_mask(pc.greater(length, SHORT_TEXT_CHARS)), OVERSIZE_TEXT,
                 lambda i: f"{field} has {length[i].as_py()} characters, limit {SHORT_TEXT_CHARS}")
    return text


def _check_text(values: list, field: str, verdict: _Verdict, limit: int, required: bool = False) -> pa.Array:
    """Text (numbers are read as their text); lists, objects and booleans fail as wrong_type."""
    codes = _type_codes(values)
    if required:
        verdict.fail(codes == NONE, MISSING_FIELD, f"{field} is missing")
    numbers = (codes == INT) | (codes == FLOAT)
    if numbers.any():  # numbers are read as their text; NaN and infinity are not text
        finite = np.array([c == INT or math.isfinite(v) if n else True for v, c, n in zip(values, codes, numbers)])
        codes = np.where(numbers & finite, STR, np.where(numbers, OTHER, codes))
        values = [str(v) if n else v for v, n in zip(values, numbers)]
    verdict.fail(codes == OTHER, WRONG_TYPE, lambda i: f"{field} must be text, got {_type_name(values[i])}")
    text = _as_strings(values, codes)
    length = pc.utf8_length(text)
    verdict.fail(_mask(pc.greater(length, limit)), OVERSIZE_TEXT,
                 lambda i: f"{field} has {length[i].as_py()} characters, limit {limit}")
    return text


_NUMERIC_TEXT = r"^-?\d+(\.\d+)?$"
# a time of day followed by a zone: Z, +HH:MM, +HHMM (a bare date's "-01" is not a zone)
_ZONED = r"\d{2}:\d{2}(:\d{2}(\.\d+)?)?\s*(Z|UTC|[+-]\d{2}:?\d{2})$"


def _parse_ts(values: list, verdict: _Verdict, field: str, required: bool) -> np.ndarray:
    """ISO-8601 text with a zone, or epoch seconds (number or numeric text) -> datetime64[us] (UTC, NaT if bad)."""
    n = len(values)
    out = np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
    codes = _type_codes(values)
    missing = codes == NONE
    if required:
        verdict.fail(missing, MISSING_FIELD, f"{field} is missing")
    is_number = (codes == INT) | (codes == FLOAT)
    is_text = codes == STR
    text = pc.utf8_trim_whitespace(_as_strings(values, codes))
    verdict.fail(~(missing | is_number | is_text), WRONG_TYPE,
                 lambda i: f"{field} must be ISO-8601 text or epoch seconds, got {_type_name(values[i])}")
    numeric_text = _mask(pc.match_substring_regex(text, _NUMERIC_TEXT))
    epoch = is_number | numeric_text
    if epoch.any():
        rows = np.flatnonzero(epoch)
        seconds = np.array([float(values[i]) for i in rows], dtype=np.float64)
        usable = np.isfinite(seconds) & (np.abs(seconds) < 1e11)
        micros = np.where(usable, np.round(seconds * 1e6), 0).astype(np.int64)
        out[rows[usable]] = micros[usable].astype("datetime64[us]")
    iso = is_text & ~numeric_text
    if iso.any():
        rows = np.flatnonzero(iso)
        candidates = text.take(pa.array(rows))
        zoned = _mask(pc.match_substring_regex(candidates, _ZONED, ignore_case=True))
        verdict.fail(np.isin(np.arange(n), rows[~zoned]), BAD_TIMESTAMP,
                     lambda i: f"{field}={values[i]!r} has no time zone (or is not a timestamp)")
        if zoned.any():
            good_rows = rows[zoned]
            zoned_text = candidates.filter(pa.array(zoned))
            if pc.any(pc.match_substring_regex(zoned_text, "UTC$", ignore_case=True)).as_py():
                zoned_text = pc.replace_substring_regex(zoned_text, r"(?i)\s*UTC$", "Z")
            parsed = pd.to_datetime(zoned_text.to_pandas(), format="ISO8601", utc=True, errors="coerce")
            out[good_rows] = parsed.dt.tz_localize(None).to_numpy("datetime64[us]")
    verdict.fail(~missing & np.isnat(out), BAD_TIMESTAMP, lambda i: f"{field}={values[i]!r} is unparseable")
    return out


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
        return [p.strip() for p in stripped.split("|") if p.strip()]
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


def _as_bool(value):
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    if type(value) is int and value in (0, 1):
        return bool(value)
    raise TypeError(f"expected a boolean, got {value!r}")


def _convert(values: list, field: str, fn, verdict: _Verdict) -> list:
    out = []
    bad = np.zeros(len(values), dtype=bool)
    problems = {}
    for i, v in enumerate(values):
        try:
            out.append(fn(v))
        except (TypeError, ValueError) as exc:
            out.append(None)
            bad[i] = True
            problems[i] = f"{field}: {exc}"
    verdict.fail(bad, WRONG_TYPE, problems.__getitem__)
    return out


def _interactions(columns: dict[str, list], verdict: _Verdict, rules: Rules) -> dict[str, pa.Array]:
    out = {f: _check_id(columns[f], f, verdict) for f in ("event_id", "user_id", "item_id")}
    event_type = _check_text(columns["event_type"], "event_type", verdict, SHORT_TEXT_CHARS, required=True)
    known = _mask(pc.is_in(event_type, value_set=pa.array(rules.event_types, pa.string())))
    verdict.fail(~known, UNKNOWN_EVENT_TYPE,
                 lambda i: f"event_type={event_type[i].as_py()!r} is not one of {', '.join(rules.event_types)}")
    out["event_type"] = event_type
    values = columns["value"]
    codes = _type_codes(values)
    is_value = (codes == NONE) | (codes == INT) | (codes == FLOAT)
    if (codes == STR).any():
        is_value |= _mask(pc.match_substring_regex(pc.utf8_trim_whitespace(_as_strings(values, codes)), _NUMERIC_TEXT))
    number = np.array([float(v) if ok and v is not None else np.nan for v, ok in zip(values, is_value)], np.float64)
    is_value &= ~np.isinf(number)
    verdict.fail(~is_value, WRONG_TYPE, lambda i: f"value={values[i]!r} is not a number")
    out["value"] = pa.array(np.where(is_value, number, np.nan), pa.float64(), from_pandas=True)
    scene = pc.utf8_trim_whitespace(_check_text(columns["scene"], "scene", verdict, SHORT_TEXT_CHARS))
    out["scene"] = pc.if_else(pc.fill_null(pc.equal(scene, ""), True), "default", scene)
    ts = _parse_ts(columns["ts"], verdict, "ts", required=True)
    verdict.fail(ts < rules.earliest, LATE_TIMESTAMP,
                 lambda i: f"ts {ts[i]} is more than {rules.lateness_days} day(s) before {rules.run_date}")
    verdict.fail(ts >= rules.end, FUTURE_TIMESTAMP, lambda i: f"ts {ts[i]} is after the end of {rules.run_date}")
    out["event_ts"] = pa.array(ts, pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))
    return out


def _items(columns: dict[str, list], verdict: _Verdict, rules: Rules) -> dict[str, pa.Array]:
    from coldstart.text import content_hash, item_content_text

    limit = rules.max_text_chars
    item_id = _check_id(columns["item_id"], "item_id", verdict)
    title = _check_text(columns["title"], "title", verdict, limit)
    description = _check_text(columns["description"], "description", verdict, limit)
    tags = _convert(columns["tags"], "tags", _as_list, verdict)
    verdict.fail(_flags(tags, lambda ts: ts is not None and any(type(t) not in (str, int, float) for t in ts)),
                 WRONG_TYPE, "tags must be a list of strings")
    tags = [[str(t) for t in ts] if ok else [] for ts, ok in zip(tags, verdict.open)]
    verdict.fail(_flags(tags, lambda ts: sum(len(t) for t in ts) > limit), OVERSIZE_TEXT, f"tags exceed {limit} characters")
    attributes = _convert(columns["attributes"], "attributes", _as_map, verdict)
    verdict.fail(_flags(attributes, lambda m: m is not None and sum(len(str(v)) for v in m.values()) > limit),
                 OVERSIZE_TEXT, f"attributes exceed {limit} characters")
    active = _convert(columns["active"], "active", _as_bool, verdict)
    updated_at = _parse_ts(columns["updated_at"], verdict, "updated_at", required=False)
    titles, descriptions = title.to_pylist(), description.to_pylist()
    texts = [item_content_text(t, g, d, a, max_chars=limit) if ok else ""
             for t, g, d, a, ok in zip(titles, tags, descriptions, attributes, verdict.open)]
    return {
        "item_id": item_id, "title": title, "description": description,
        "tags_json": pa.array([json.dumps(t) for t in tags], pa.string()),
        "attributes_json": pa.array([json.dumps(m or {}, sort_keys=True) for m in attributes], pa.string()),
        "active": pa.array([True if a is None else a for a in active], pa.bool_()),
        "updated_at": pa.array(updated_at, pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC")),
        "content_text": pa.array(texts, pa.string()),
        "content_hash": pa.array([content_hash(t) for t in texts], pa.string()),
    }


def _users(columns: dict[str, list], verdict: _Verdict, rules: Rules) -> dict[str, pa.Array]:
    from coldstart.text import content_hash, user_content_text

    limit = rules.max_text_chars
    user_id = _check_id(columns["user_id"], "user_id", verdict)
    profile = _convert(columns["profile"], "profile", _as_map, verdict)
    verdict.fail(_flags(profile, lambda m: m is not None and any(len(str(v)) > limit for v in m.values())),
                 OVERSIZE_TEXT, f"a profile value exceeds {limit} characters")
    updated_at = _parse_ts(columns["updated_at"], verdict, "updated_at", required=False)
    texts = [user_content_text(p, max_chars=limit) if ok else "" for p, ok in zip(profile, verdict.open)]
    return {
        "user_id": user_id,
        "profile_json": pa.array([json.dumps(p or {}, sort_keys=True) for p in profile], pa.string()),
        "updated_at": pa.array(updated_at, pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC")),
        "content_text": pa.array(texts, pa.string()),
        "content_hash": pa.array([content_hash(t) for t in texts], pa.string()),
    }


_VALIDATORS = {"interactions": _interactions, "items": _items, "users": _users}


def validate(source: str, batch: RawBatch, rules: Rules, source_file: str) -> pa.RecordBatch:
    """Typed rows for ``source`` (parsed_schema(source)); reason is null for good rows, and raw is
    kept only for the rows that go to quarantine."""
    if source not in _VALIDATORS:
        raise ValueError(f"unknown source {source!r}")
    n = len(batch)
    verdict = _Verdict(batch.reasons, batch.details)
    if batch.raws is None:  # only Parquet strings can arrive undecoded
        _check_bytes(batch.columns, verdict)
    typed = _VALIDATORS[source](batch.columns, verdict, rules)
    bad = ~verdict.open
    raw = [None] * n
    for i in np.flatnonzero(bad):
        raw[i] = batch.raw(int(i))
    common = {"source_file": pa.array([source_file] * n, pa.string()), "line": pa.array(batch.lines, pa.int64()),
              "raw": pa.array(raw, pa.string()), "reason": pa.array(verdict.reason, pa.string()),
              "detail": pa.array(verdict.detail, pa.string())}
    schema = parsed_schema(source)
    return pa.RecordBatch.from_arrays([{**common, **typed}[f.name] for f in schema], schema=schema)


def parse_file(source: str, path: str, rules: Rules) -> Iterator[pa.RecordBatch]:
    """Validated batches of one landing file."""
    for batch in read_file(path, source):
        yield validate(source, batch, rules, path)


def _parse_files(source: str, rules: Rules, paths: list[str]):
    """mapInArrow function over spark.range(len(paths)): each input id names one file."""
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for ids in batches:
            for file_id in ids.column(0).to_pylist():
                yield from parse_file(source, paths[file_id], rules)
    return run


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------
@contextmanager
def _phase(run_date: dt.date, name: str):
    """Log how long a phase of the stage took (the benchmark and slow nights read these)."""
    start = time.perf_counter()
    yield
    log.info("ingest %s: %s took %.1fs", run_date, name, time.perf_counter() - start)


def _parsed_frame(spark, source: str, paths: list[str], rules: Rules):
    """One Spark task per file (spark.range gives each partition exactly one id)."""
    ddl = f"{COMMON_DDL}, {PARSED_DDL[source]}"
    if not paths:
        return spark.createDataFrame([], ddl)
    ids = spark.range(0, len(paths), numPartitions=len(paths))
    return ids.mapInArrow(_parse_files(source, rules, paths), ddl)


def _latest_per_key(valid, key: str):
    """Rank a day's catalog/profile rows per key: the latest updated_at (then file, then line) is 1."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    latest = Window.partitionBy(key).orderBy(F.col("updated_at").desc_nulls_last(), F.col("source_file").desc(),
                                            F.col("line").desc())
    return valid.withColumn("_n", F.row_number().over(latest))


def ingest(spark, settings: Settings, run_date: dt.date) -> dict:
    """Ingest landing(run_date). Returns the audit rows by source.

    Commits, in order: interactions(run_date), items merge, users merge, quarantine(run_date),
    ingest_audit(run_date). Each is idempotent for the date, so a rerun after a crash anywhere
    converges to the rows of a clean run."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.storagelevel import StorageLevel

    from coldstart.lake import Lake

    lake = Lake.from_settings(settings)
    rules = Rules.from_settings(settings, run_date)
    files = {s: day_files(settings.landing, s, run_date, required=(s == "interactions")) for s in SOURCES}
    paths = {s: [str(p.resolve()) for p in (files[s] or [])] for s in SOURCES}
    day = F.lit(run_date).cast("date")
    now = F.current_timestamp()
    cached = []

    def keep(df):
        df = df.persist(StorageLevel.DISK_ONLY)
        cached.append(df)
        return df

    try:
        parsed = {}
        for source in SOURCES:
            log.info("ingest %s %s: %d file(s)", run_date, source, len(paths[source]))
            parsed[source] = keep(_parsed_frame(spark, source, paths[source], rules))
        valid = {s: parsed[s].filter(F.col("reason").isNull()) for s in SOURCES}

        # --- interactions: one window over this run's events and the stored event_ids of the partitions
        # inside the lateness window (only those: a day's cost does not grow with history). Stored ids
        # sort first, then this run's rows by file and line: every row but the first of an id is a repeat.
        window = [run_date - dt.timedelta(days=d) for d in range(1, settings.lateness_days + 1)]
        stored = lake.read_spark(spark, "interactions", partitions={"run_date": window}).select(
            "event_id", F.lit(0).alias("_origin"))
        events = valid["interactions"].withColumn("_origin", F.lit(1))
        first = Window.partitionBy("event_id").orderBy("_origin", "source_file", "line")
        marked = keep(events.unionByName(stored, allowMissingColumns=True)
                      .withColumn("_dup", F.row_number().over(first) > 1).filter(F.col("_origin") == 1))
        accepted = marked.filter(~F.col("_dup")).select(
            "event_id", "user_id", "item_id", "event_type", "value", "scene", "event_ts",
            F.to_date("event_ts").alias("event_date"), day.alias("run_date"), "source_file", now.alias("ingested_at"))
        with _phase(run_date, "parse, validate, dedup and write interactions"):
            rows_accepted = {"interactions": lake.write_spark(accepted, "interactions", "replace_partition",
                                                              {"run_date": run_date})}

        # --- items and users: the latest row of the day per id is merged, the others are superseded
        items, users = _latest_per_key(valid["items"], "item_id"), _latest_per_key(valid["users"], "user_id")
        with _phase(run_date, "count rows"):
            counts = _count_rows(parsed, marked, items, users)
        rows_accepted["items"] = counts.get(("items", "latest"), 0)
        rows_accepted["users"] = counts.get(("users", "latest"), 0)
        with _phase(run_date, "merge items"):
            _merge_items(spark, lake, items.filter("_n = 1"), accepted, run_date)
        with _phase(run_date, "merge users"):
            _merge_users(spark, lake, users.filter("_n = 1"), accepted, run_date)

        quarantine = None
        for source in SOURCES:
            rejected = parsed[source].filter(F.col("reason").isNotNull()).select(
                day.alias("run_date"), F.lit(source).alias("source"), "source_file", "line", "raw", "reason", "detail",
                now.alias("ingested_at"))
            quarantine = rejected if quarantine is None else quarantine.unionByName(rejected)
        with _phase(run_date, "write quarantine"):
            lake.write_spark(quarantine.coalesce(1), "quarantine", "replace_partition", {"run_date": run_date})
    finally:
        for df in cached:
            df.unpersist()

    # rows_quarantined is read back from the committed partition: a lost write shows up in the audit.
    stored_quarantine = (lake.read_arrow("quarantine", columns=["source"], filters=[("run_date", "=", run_date)])
                         .group_by("source").aggregate([([], "count_all")]).to_pylist())
    quarantined = {r["source"]: r["count_all"] for r in stored_quarantine}
    rows = []
    for source in SOURCES:
        rows.append({"run_date": run_date, "source": source, "files": len(paths[source]),
                     "rows_read": counts.get((source, "read"), 0), "rows_accepted": rows_accepted[source],
                     "rows_quarantined": quarantined.get(source, 0),
                     "rows_duplicate": counts.get((source, "duplicate"), 0),
                     "ingested_at": dt.datetime.now(dt.timezone.utc)})
    for r in rows:
        if r["rows_read"] != r["rows_accepted"] + r["rows_quarantined"] + r["rows_duplicate"]:
            raise AuditError(f"ingest {run_date} {r['source']}: rows_read={r['rows_read']} but accepted "
                             f"{r['rows_accepted']} + quarantined {r['rows_quarantined']} + duplicate {r['rows_duplicate']}")
    lake.replace_partition("ingest_audit", pa.Table.from_pylist(rows), run_date=run_date)
    for r in rows:
        log.info("ingest %s %-12s read=%d accepted=%d quarantined=%d duplicate=%d", run_date, r["source"], r["rows_read"],
                 r["rows_accepted"], r["rows_quarantined"], r["rows_duplicate"])
    return {r["source"]: r for r in rows}


def _count_rows(parsed: dict, marked, items, users) -> dict[tuple[str, str], int]:
    """All the day's row counts in one Spark job: (source, read|duplicate|latest) -> rows."""
    from pyspark.sql import functions as F

    def tagged(df, source: str, kind: str):
        return df.select(F.lit(source).alias("source"), F.lit(kind).alias("kind"))

    parts = [tagged(parsed[s], s, "read") for s in SOURCES]
    parts.append(tagged(marked.filter("_dup"), "interactions", "duplicate"))
    for source, ranked in (("items", items), ("users", users)):
        parts.append(ranked.select(F.lit(source).alias("source"),
                                   F.when(F.col("_n") == 1, "latest").otherwise("duplicate").alias("kind")))
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part)
    return {(r["source"], r["kind"]): r["count"] for r in union.groupBy("source", "kind").count().collect()}


def _merge_items(spark, lake, catalog_rows, accepted, run_date: dt.date) -> None:
    """Merge the day's catalog rows, give interaction-only items a row without text, and record each
    item's first interaction. Only rows that change are merged. A catalog row never overwrites one
    merged by a later run date (rerunning an old date does not bring old content back)."""
    from pyspark.sql import functions as F

    from coldstart.text import content_hash

    day = F.lit(run_date).cast("date")
    existing = lake.read_spark(spark, "items")
    catalog = catalog_rows.select(
        "item_id", F.col("title").alias("_title"), F.col("description").alias("_description"),
        F.from_json("tags_json", "array<string>").alias("_tags"),
        F.from_json("attributes_json", "map<string,string>").alias("_attributes"),
        F.col("active").alias("_active"), F.col("content_text").alias("_text"), F.col("content_hash").alias("_hash"),
        F.col("updated_at").alias("_updated"), F.lit(True).alias("_in_catalog"))
    referenced = accepted.select("item_id").distinct().withColumn("_used", F.lit(True))
    touched = catalog.select("item_id").unionByName(referenced.select("item_id")).distinct()
    rows = touched.join(catalog, "item_id", "left").join(referenced, "item_id", "left").join(existing, "item_id", "left")
    apply = F.col("_in_catalog").isNotNull() & (F.coalesce("last_run_date", day) <= day)
    used = F.col("_used").isNotNull()
    first_interaction = F.when(used, F.coalesce(F.least("first_interaction", day), day)).otherwise(F.col("first_interaction"))
    changed = apply | F.col("first_seen").isNull() | (F.col("first_seen") > day) | \
        (used & (F.col("first_interaction").isNull() | (F.col("first_interaction") > day)))
    out = rows.filter(changed).select(
        "item_id",
        F.when(apply, F.col("_title")).otherwise(F.col("title")).alias("title"),
        F.when(apply, F.col("_description")).otherwise(F.col("description")).alias("description"),
        F.when(apply, F.col("_tags")).otherwise(F.col("tags")).alias("tags"),
        F.when(apply, F.col("_attributes")).otherwise(F.col("attributes")).alias("attributes"),
        F.when(apply, F.col("_active")).otherwise(F.coalesce("active", F.lit(True))).alias("active"),
        F.when(apply, F.col("_text")).otherwise(F.coalesce("content_text", F.lit(""))).alias("content_text"),
        F.when(apply, F.col("_hash")).otherwise(F.coalesce("content_hash", F.lit(content_hash("")))).alias("content_hash"),
        F.coalesce(F.least("first_seen", day), day).alias("first_seen"),
        first_interaction.alias("first_interaction"),
        F.when(apply, F.col("_updated")).otherwise(F.col("updated_at")).alias("updated_at"),
        F.when(apply, day).otherwise(F.coalesce("last_run_date", day)).alias("last_run_date"))
    lake.merge_spark(out, "items")


def _merge_users(spark, lake, profile_rows, accepted, run_date: dt.date) -> None:
    """Profiles replace the stored profile; users seen today get last_seen, new users first_seen.
    Only rows that change are merged (a user seen again on a rerun is left alone)."""
    from pyspark.sql import functions as F

    from coldstart.text import content_hash

    existing = lake.read_spark(spark, "users")
    day = F.lit(run_date).cast("date")
    profiles = profile_rows.select("user_id", F.from_json("profile_json", "map<string,string>").alias("_profile"),
                                   F.col("content_text").alias("_text"), F.col("content_hash").alias("_hash"))
    active = accepted.select("user_id").distinct().unionByName(profiles.select("user_id")).distinct()
    rows = active.join(profiles, "user_id", "left").join(existing, "user_id", "left")
    has_profile = F.col("_hash").isNotNull()
    changed = has_profile | F.col("first_seen").isNull() | (F.col("first_seen") > day) | (F.col("last_seen") < day)
    out = rows.filter(changed).select(
        "user_id",
        F.when(has_profile, F.col("_profile")).otherwise(F.col("profile")).alias("profile"),
        F.coalesce("_text", "content_text", F.lit("")).alias("content_text"),
        F.coalesce("_hash", "content_hash", F.lit(content_hash(""))).alias("content_hash"),
        F.coalesce(F.least("first_seen", day), day).alias("first_seen"),
        F.coalesce(F.greatest("last_seen", day), day).alias("last_seen"))
    lake.merge_spark(out, "users")
