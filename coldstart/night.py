"""The night context of the lake layer: as-of reads and conflict-checked writes for one stage of one night.

``pipeline.run_stage`` opens one :class:`Night` around every stage (CLI, jobs and DAG alike). While it
is open, every :class:`coldstart.lake.Lake` on the same root reads and writes through it, so no stage
filters by date itself:

* **reads are as of the night.** ``interactions`` only up to run date D. ``items`` and ``users`` as they
  stood after night D's ingest, ``entity_embeddings`` after night D's embed: by the Delta version the
  night manifest recorded (``as_of``) when that stage of D ran before, else by their dated column
  (``first_seen``; ``run_date``) at or before D. Every other table is read at the version it had when
  the stage started, so one stage sees one consistent lake; a table the stage wrote is read as written.
* **writes are checked against the version read.** Each commit is made from the table's version at the
  start of the stage and carries an app-transaction id per (table, partition): delta-rs then refuses it
  when another run committed to the same partition (or, for merges, the same table) since, and the
  loser raises :class:`ConcurrentWriteError` before writing a row.

The manifest row of the stage (versions read and committed, ``as_of``) is produced by :meth:`Night.manifest_row`.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import logging
import uuid
from dataclasses import dataclass, field
from typing import Iterator

from coldstart.config import Settings

log = logging.getLogger("coldstart.night")

# The stages of a night in order (coldstart.pipeline.STAGES is this tuple): a stage reads the state the
# stages before it left.
STAGE_ORDER = ("ingest", "embed", "train", "score", "evaluate")
# Current-state tables (one row per entity, merged night after night) and the stage whose run on
# night D leaves the state the rest of night D must read.
PRODUCED_BY = {"items": "ingest", "users": "ingest", "entity_embeddings": "embed"}
# For a night whose producing stage never recorded an as_of version: rows dated after D are not D's.
DATED_COLUMN = {"items": "first_seen", "users": "first_seen", "entity_embeddings": "run_date"}
# Bookkeeping tables are written after the stage, outside its night, and read as they are.
BOOKKEEPING = ("stage_runs", "night_manifest")


class ConcurrentWriteError(RuntimeError):
    """Another run committed to the same table or partition since this stage read it: nothing was written."""


class RetentionError(RuntimeError):
    """A re-run needs a table version or checkpoint that `coldstart vacuum` has removed."""


def claim_id(name: str, partition: dict | None) -> str:
    """App-transaction id of a write of one table partition (or the whole table): two commits carrying the
    same id conflict in delta-rs's conflict checker when one is made from a version before the other."""
    part = ",".join(f"{c}={v}" for c, v in sorted((partition or {}).items())) or "*"
    return f"coldstart-claim:{name}:{part}"


_ACTIVE: contextvars.ContextVar["Night | None"] = contextvars.ContextVar("coldstart_night", default=None)


def active(root: str) -> "Night | None":
    """The open night for a lake root, or None (reads then see the latest version, writes the latest base)."""
    night = _ACTIVE.get()
    return night if night is not None and night.root == root else None


@dataclass
class Night:
    """One stage of one night on one lake: start versions, as-of pins, and what was read and committed."""

    root: str
    run_date: dt.date
    stage: str
    base: dict[str, int | None] = field(default_factory=dict)  # version at stage start (None: no table yet)
    pins: dict[str, int] = field(default_factory=dict)  # as-of versions of current-state tables
    later_nights: bool = False  # a night after run_date is in the manifest
    previous_as_of: dict[str, int] = field(default_factory=dict)  # this stage's as_of from an earlier run of the night
    read: dict[str, int] = field(default_factory=dict)
    committed: dict[str, int] = field(default_factory=dict)
    rows_in: int = 0
    rows_out: int = 0
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    snapshots: dict = field(default_factory=dict, repr=False)  # (table, version) -> DeltaTable, loaded once

    # --- reads -----------------------------------------------------------------------------------
    def read_version(self, name: str) -> int | None:
        """The version this stage reads ``name`` at: its own last commit, else the as-of pin, else the start."""
        if name in BOOKKEEPING:
            return None
        if name in self.committed:
            return self.committed[name]
        if name in self.pins:
            return self.pins[name]
        return self.base.get(name)

    def row_filters(self, name: str) -> list[tuple]:
        """Row filters that make ``name`` read as of the night (pyarrow-style (column, op, value) triples)."""
        if name == "interactions":
            return [("run_date", "<=", self.run_date)]
        if name in DATED_COLUMN and name not in self.pins and name not in self.committed and self._downstream_of(name):
            return [(DATED_COLUMN[name], "<=", self.run_date)]
        return []

    def _downstream_of(self, name: str) -> bool:
        producer = PRODUCED_BY[name]
        return STAGE_ORDER.index(self.stage) > STAGE_ORDER.index(producer) if self.stage in STAGE_ORDER else True

    def note_read(self, name: str, version: int | None, rows: int) -> None:
        if version is not None and name not in BOOKKEEPING:
            self.read.setdefault(name, version)
        self.rows_in += rows

    # --- writes ----------------------------------------------------------------------------------
    def write_base(self, name: str) -> int | None:
        """The version a commit to ``name`` is checked against (its start version, or this stage's last commit)."""
        if name in self.committed:
            return self.committed[name]
        return self.base.get(name)

    def note_commit(self, name: str, version: int, rows: int) -> None:
        self.committed[name] = version
        self.rows_out += rows

    # --- the manifest ----------------------------------------------------------------------------
    def as_of(self) -> dict[str, int]:
        """Versions standing for the state after this stage of this night (current-state tables it produces).

        The night's own last commit (or, with no commit, the version it read); when later nights already
        ran, the version of the stage's earlier run of this night (a later night's rows are not this night's)."""
        out = {}
        for name, producer in PRODUCED_BY.items():
            if producer != self.stage:
                continue
            if self.later_nights:
                if name in self.previous_as_of:
                    out[name] = self.previous_as_of[name]
                continue
            version = self.committed.get(name, self.base.get(name))
            if version is not None:
                out[name] = version
        return out


@contextlib.contextmanager
def open_night(night: Night) -> Iterator[Night]:
    """Make ``night`` the context of every Lake on its root for the duration of the block."""
    token = _ACTIVE.set(night)
    try:
        yield night
    finally:
        _ACTIVE.reset(token)


def start(lake, run_date: dt.date, stage: str, retention_days: int) -> Night:
    """A night for ``stage`` of ``run_date`` on ``lake``: every table's version now, and the as-of pins of
    the stages of D before it from the night manifest. Raises RetentionError when a pinned version can
    no longer be read (its files were vacuumed)."""
    from coldstart.catalog import TABLES

    night = Night(lake.root, run_date, stage)
    for name in TABLES:
        if name not in BOOKKEEPING:
            night.base[name] = lake.latest_version(name)
    if night.base.get("night_manifest") is None and not lake.exists("night_manifest"):
        return night
    rows = lake.read_arrow("night_manifest", columns=["run_date", "stage", "as_of"]).to_pylist()
    night.later_nights = any(r["run_date"] > run_date for r in rows)
    before = STAGE_ORDER[:STAGE_ORDER.index(stage)] if stage in STAGE_ORDER else STAGE_ORDER
    for row in rows:
        if row["run_date"] != run_date:
            continue
        as_of = dict(row["as_of"] or [])
        if row["stage"] == stage:
            night.previous_as_of = as_of
        elif row["stage"] in before:
            night.pins.update({t: v for t, v in as_of.items() if PRODUCED_BY.get(t) == row["stage"]})
    for name, version in sorted(night.pins.items()):
        missing = lake.missing_files(name, version)
        if missing:
            raise RetentionError(
                f"night {run_date} {stage}: needs {name} version {version} (the table as night {run_date}'s "
                f"{PRODUCED_BY[name]} left it), but {missing} of its file(s) were removed by `coldstart vacuum`, "
                f"which keeps what the night manifest needs for COLDSTART_RETENTION_DAYS={retention_days} day(s). "
                "Raise that setting to keep older nights re-runnable; this night can no longer be reproduced.")
    return night


def needed_versions(lake, retention_days: int, now: dt.datetime | None = None) -> dict[str, int]:
    """Per table, the oldest version that a night manifest row recorded in the last ``retention_days``
    days read, committed or pinned (what a re-run of those nights reads)."""
    if not lake.exists("night_manifest"):
        return {}
    now = now or dt.datetime.now(dt.timezone.utc)
    since = now - dt.timedelta(days=retention_days)
    oldest: dict[str, int] = {}
    for row in lake.read_arrow("night_manifest").to_pylist():
        if row["recorded_at"] is None or row["recorded_at"] < since:
            continue
        for column in ("tables_read", "tables_committed", "as_of"):
            for name, version in row[column] or []:
                oldest[name] = min(version, oldest.get(name, version))
    return oldest


def vacuum_lake(settings: Settings, retention_days: int, retention_hours: int | None = None) -> list[str]:
    """Vacuum every table, keeping each file that a version needed by the night manifest of the last
    ``retention_days`` days (or removed in the last ``retention_hours``, default days x 24) still uses, and
    remove superseded checkpoints no such night needs. Returns one line per table and checkpoint."""
    import math

    from coldstart.catalog import TABLES
    from coldstart.lake import Lake

    lake = Lake.from_settings(settings)
    floor = retention_days * 24 if retention_hours is None else retention_hours
    now = dt.datetime.now(dt.timezone.utc)
    needed = needed_versions(lake, retention_days, now)
    lines = []
    for name in TABLES:
        if not lake.exists(name):
            continue
        hours = floor
        if name in needed:
            # a file version v still reads was removed by a later commit: keep every removal since v's commit
            committed = lake.commit_time(name, needed[name])
            if committed is not None:
                hours = max(hours, math.ceil((now - committed).total_seconds() / 3600) + 1)
        removed = lake.vacuum(name, hours)
        lines.append(f"{name}: removed {len(removed)} file(s) (kept {hours} h"
                     + (f", version {needed[name]} and later" if name in needed else "") + ")")
    lines += lake.vacuum_checkpoints(retention_days, now)
    return lines
