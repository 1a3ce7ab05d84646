"""What ingest reads and emits: the landing fields per source, the quarantine reasons, the parsed
schemas and the validation rules shipped to every worker."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from coldstart.config import Settings

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
# The validator raised on the row (an input no check foresaw); the detail holds the exception.
VALIDATION_ERROR = "validation_error"
REASONS = (MALFORMED, MISSING_FIELD, WRONG_TYPE, UNKNOWN_EVENT_TYPE, BAD_TIMESTAMP, LATE_TIMESTAMP, FUTURE_TIMESTAMP,
           EMPTY_ID, OVERSIZE_TEXT, INVALID_UTF8, VALIDATION_ERROR)

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


