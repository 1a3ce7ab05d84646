"""What each stage returns: one small typed result per stage, the same for the CLI, the jobs and the tests.

``as_dict()`` gives the plain dict that the jobs log as their last line (``bench/nightly_scale.py`` parses
it) and that a caller needing a mapping (JSON, XCom) can use.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any, Union


class _AsDict:
    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (nested results too)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]  # every subclass is a dataclass


@dataclass(frozen=True)
class SourceAudit(_AsDict):
    """One landing source's accounting for a run date (its ingest_audit row): rows_read = rows_accepted +
    rows_quarantined + rows_duplicate."""

    run_date: dt.date
    source: str
    files: int
    rows_read: int
    rows_accepted: int
    rows_quarantined: int
    rows_duplicate: int
    ingested_at: dt.datetime


@dataclass(frozen=True)
class IngestResult(_AsDict):
    """The audit of every landing source (interactions, items, users), by source."""

    sources: dict[str, SourceAudit]

    def as_dict(self) -> dict[str, Any]:
        return {name: audit.as_dict() for name, audit in self.sources.items()}


@dataclass(frozen=True)
class EmbedResult(_AsDict):
    """How many items and users were (re-)encoded."""

    items: int
    users: int


@dataclass(frozen=True)
class TrainResult(_AsDict):
    """The model trained for a run date: its model_registry row (``as_dict()`` is that row)."""

    model_version: str
    run_date: dt.date
    parent_version: str | None
    mode: str  # warm | full | cold
    checkpoint_uri: str
    checksum: str
    metrics: str  # JSON: the validation metrics and per-epoch losses, and the number of events
    status: str
    created_at: dt.datetime


@dataclass(frozen=True)
class ScoreResult(_AsDict):
    """Active users scored, (user, scene) lists and recommendation rows written, and the model used."""

    users: int
    lists: int
    rows: int
    model_version: str


@dataclass(frozen=True)
class EvaluateResult(_AsDict):
    """The methods evaluated, the target users, and each method's Recall@20 on all targets (empty when
    there was nothing to evaluate)."""

    methods: list[str]
    users: int
    recall_at_20: dict[str, float | None]

    def as_dict(self) -> dict[str, Any]:
        return {"methods": list(self.methods), "users": self.users, "recall@20": dict(self.recall_at_20)}


StageResult = Union[IngestResult, EmbedResult, TrainResult, ScoreResult, EvaluateResult]
