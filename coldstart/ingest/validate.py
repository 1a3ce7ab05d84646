"""Validating a raw batch column-wise into typed rows or quarantine rows (the first failing check wins)."""

from __future__ import annotations

import json
import logging
import math
from itertools import repeat
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from coldstart.ingest.contract import (BAD_TIMESTAMP, EMPTY_ID, FUTURE_TIMESTAMP, INVALID_UTF8, LATE_TIMESTAMP,
                                       MISSING_FIELD, OVERSIZE_TEXT, UNKNOWN_EVENT_TYPE, VALIDATION_ERROR, WRONG_TYPE,
                                       Rules, parsed_schema)
from coldstart.ingest.readers import RawBatch, read_file

log = logging.getLogger("coldstart.ingest")

# Ids, event types and scenes are short by nature; a longer one is garbage, not data.
SHORT_TEXT_CHARS = 256


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
            self.detail[rows] = [detail(int(i)) for i in rows] if callable(detail) else detail
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


def _float(value) -> float:
    """float(value), with an integer past float64's range as +-inf instead of OverflowError (text already
    overflows to inf), so that the range checks below reject it."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


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
        seconds = np.array([_float(values[i]) for i in rows], dtype=np.float64)
        usable = np.isfinite(seconds) & (np.abs(seconds) < 1e11)
        micros = np.round(np.where(usable, seconds, 0.0) * 1e6).astype(np.int64)  # no overflow on the unusable
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
    number = np.array([_float(v) if ok and v is not None else np.nan for v, ok in zip(values, is_value)], np.float64)
    is_value &= ~np.isinf(number) & ~(np.isnan(number) & (codes == FLOAT))  # NaN (a JSON extension) is no number
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
    raw: list[str | None] = [None] * n
    for i in np.flatnonzero(bad):
        raw[i] = batch.raw(int(i))
    common = {"source_file": pa.array([source_file] * n, pa.string()), "line": pa.array(batch.lines, pa.int64()),
              "raw": pa.array(raw, pa.string()), "reason": pa.array(verdict.reason, pa.string()),
              "detail": pa.array(verdict.detail, pa.string())}
    schema = parsed_schema(source)
    return pa.RecordBatch.from_arrays([{**common, **typed}[f.name] for f in schema], schema=schema)


def parse_file(source: str, path: str, rules: Rules) -> Iterator[pa.RecordBatch]:
    """Validated batches of one landing file. A batch whose validation raises (a value no check foresaw) is
    validated again row by row: the rows that still raise become quarantine rows (validation_error, with
    the exception) naming file and line, so one hostile value costs its row, never the night."""
    for batch in read_file(path, source):
        try:
            validated = validate(source, batch, rules, path)
        except Exception as exc:  # noqa: BLE001 - any failure here is a row's problem, isolated below
            log.warning("ingest %s: validating lines %d-%d raised %s: %s; validating them one by one", path,
                        batch.lines[0], batch.lines[-1], type(exc).__name__, exc)
            validated = _validate_rows(source, batch, rules, path)
        yield validated


def _validate_rows(source: str, batch: RawBatch, rules: Rules, path: str) -> pa.RecordBatch:
    rows = []
    for i in range(len(batch)):
        one = RawBatch(batch.lines[i:i + 1], {f: vs[i:i + 1] for f, vs in batch.columns.items()},
                       batch.reasons[i:i + 1], batch.details[i:i + 1],
                       batch.raws[i:i + 1] if batch.raws is not None else None)
        try:
            rows.append(validate(source, one, rules, path))
        except Exception as exc:  # noqa: BLE001 - the row is quarantined with the exception as its detail
            rows.append(_failed_row(source, one, path, exc))
    return pa.Table.from_batches(rows, schema=parsed_schema(source)).combine_chunks().to_batches()[0]


def _failed_row(source: str, one: RawBatch, path: str, exc: Exception) -> pa.RecordBatch:
    schema = parsed_schema(source)
    try:
        raw = one.raw(0)
    except Exception:  # noqa: BLE001 - a row that cannot even be shown as JSON is shown as Python
        raw = repr({f: vs[0] for f, vs in one.columns.items()})
    values = {"source_file": pa.array([path], pa.string()), "line": pa.array(one.lines, pa.int64()),
              "raw": pa.array([raw], pa.string()), "reason": pa.array([VALIDATION_ERROR], pa.string()),
              "detail": pa.array([f"the validator failed on this row: {type(exc).__name__}: {exc}"], pa.string())}
    return pa.RecordBatch.from_arrays([values.get(f.name, pa.nulls(1, f.type)) for f in schema], schema=schema)
