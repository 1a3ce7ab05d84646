"""Delta I/O through delta-rs (``deltalake``): every write is one atomic Delta commit.

Small writes go straight through ``write_deltalake`` / ``merge``. Large Spark outputs are never
collected into the driver: executors write Parquet files into the table's folder, the driver gets
back only one small row per file (path, size, row count, min/max/null-count stats) and commits them
in one transaction through add actions. A crash before that commit leaves the table as it was;
``vacuum`` removes the orphans.

The lake root is any location :mod:`coldstart.storage` resolves. On local disk (or a mount every
worker shares) Spark's own Parquet reader and writer do the file I/O; on an object store (``s3://``)
the executors' Python workers read and write the Parquet files through ``pyarrow.fs`` (Spark ships
no S3 connector), and delta-rs commits with S3 conditional writes (``PUT If-None-Match: *`` on the
next log entry): two writers racing for one version get one success and one retry against the new
version (rebased if it does not conflict, a ``CommitFailedError`` naming the conflict if it does),
so a commit is never lost or overwritten. No lock table or ``AWS_S3_ALLOW_UNSAFE_RENAME`` is used.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import operator
import re
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute in the executors' helpers)
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction

from coldstart import storage
from coldstart.catalog import Table, table as catalog_table
from coldstart.config import Settings
from coldstart.night import ConcurrentWriteError, Night, active as active_night, claim_id

log = logging.getLogger("coldstart.lake")


class SchemaMismatchError(ValueError):
    """Data does not fit a table's catalog schema; the message names the column."""


class CorruptTableError(RuntimeError):
    """A table's Delta log cannot be read whole; the message names the table and the version."""


# File counts a commit's commitInfo promises (delta-rs and Spark metrics, and the counts Lake.write_spark
# records on the transactions it builds itself), so that a commit cut at a line boundary, which still parses,
# is found. (added key, removed key) per naming scheme.
_FILE_COUNT_METRICS = (("num_added_files", "num_removed_files"), ("num_target_files_added", "num_target_files_removed"),
                       ("numFilesAdded", "numFilesRemoved"), ("numAddedFiles", "numRemovedFiles"))
_ADDED_KEY, _REMOVED_KEY = "coldstart.numAddedFiles", "coldstart.numRemovedFiles"
# Operations whose commit carries a metaData action (and, for a new table, the protocol too).
_METADATA_OPERATIONS = ("CREATE TABLE", "CREATE OR REPLACE TABLE", "UPDATE FIELD METADATA", "SET TBLPROPERTIES",
                        "ADD COLUMN", "CHANGE COLUMN")
_COMMIT_FILE = re.compile(r"^(\d{20})\.json$")
_CHECKPOINT_FILE = re.compile(r"^(\d{20})\.checkpoint(\.\d+\.\d+)?\.parquet$")


def _is_local(uri: str) -> bool:
    return not storage.is_remote(uri)


def _local_path(uri: str) -> str:
    return storage.local_path(uri)


def _partition_text(value) -> str:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()[:10] if isinstance(value, dt.date) and not isinstance(value, dt.datetime) else value.isoformat()
    return str(value)


class Lake:
    def __init__(self, root: str, storage_options: Mapping[str, str] | None = None):
        """A lake rooted at a local path or an ``s3://``/``s3a://`` URI; delta-rs's storage options default
        to those :func:`coldstart.storage.storage_options` derives from the AWS environment."""
        self.root = storage.normalize(root)
        options = storage_options if storage_options is not None else storage.storage_options(self.root)
        self.storage_options = dict(options) if options else None
        self._docs_synced: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> "Lake":
        return cls(settings.lake)

    # --- basics -----------------------------------------------------------------------------
    def uri(self, name: str) -> str:
        return f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        return DeltaTable.is_deltatable(self.uri(name), storage_options=self.storage_options)

    def table(self, name: str) -> DeltaTable:
        try:
            return DeltaTable(self.uri(name), storage_options=self.storage_options)
        except TableNotFoundError:
            return self.ensure(name)

    def ensure(self, name: str) -> DeltaTable:
        """Create the table from its catalog schema if it does not exist."""
        spec = catalog_table(name)
        if not self.exists(name):
            try:
                DeltaTable.create(self.uri(name), spec.schema, mode="ignore", partition_by=list(spec.partition_by) or None,
                                  name=spec.name, description=spec.doc, storage_options=self.storage_options)
            except Exception:
                if not self.exists(name):  # not a concurrent run creating it at the same moment
                    raise
        return DeltaTable(self.uri(name), storage_options=self.storage_options)

    def writable(self, name: str) -> DeltaTable:
        """:meth:`ensure`, and bring the table's column docs up to the catalog's: Delta refuses a write whose
        schema metadata differs from the table's, so a table made by an older release (whose docs read
        differently) would otherwise reject every write after an upgrade. One metadata commit per changed
        column, checked once per table and Lake. A nullable column that the catalog has and the table lacks
        (added by a later release) is added, in one commit; its older rows read null."""
        dt_ = self.ensure(name)
        if name in self._docs_synced:
            return dt_
        current = {f.name: dict(f.metadata) for f in dt_.schema().fields}
        changed = False
        missing = [f for f in catalog_table(name).schema if f.name not in current]
        if missing:
            from deltalake.schema import Field as DeltaField

            required = [f.name for f in missing if not f.nullable]
            if required:
                raise SchemaMismatchError(f"table {name}: lacks required column(s) {', '.join(required)}")
            dt_.alter.add_columns([DeltaField.from_arrow(f) for f in missing])
            dt_ = DeltaTable(self.uri(name), storage_options=self.storage_options)
            current = {f.name: dict(f.metadata) for f in dt_.schema().fields}
            changed = True
        for field in catalog_table(name).schema:
            wanted = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
            # only the catalog's own keys: another writer's extra keys do not conflict with ours
            if field.name in current and any(current[field.name].get(k) != v for k, v in wanted.items()):
                dt_.alter.set_column_metadata(field.name, {**current[field.name], **wanted})
                changed = True
        self._docs_synced.add(name)
        return DeltaTable(self.uri(name), storage_options=self.storage_options) if changed else dt_

    def version(self, name: str) -> int:
        return self.table(name).version()

    def latest_version(self, name: str) -> int | None:
        """The table's newest version, or None when it does not exist (creates nothing)."""
        try:
            return DeltaTable(self.uri(name), storage_options=self.storage_options).version()
        except TableNotFoundError:
            return None

    def missing_files(self, name: str, version: int) -> int:
        """How many data files of ``version`` of a table are gone (vacuumed); the whole count when the
        version itself can no longer be loaded."""
        from pyarrow import fs as pafs

        try:
            snapshot = DeltaTable(self.uri(name), version=version, storage_options=self.storage_options)
        except Exception:  # noqa: BLE001 - a log that cannot load that version has lost it
            return 1
        uris = snapshot.file_uris()
        if not uris:
            return 0
        filesystem, _ = pafs.FileSystem.from_uri(uris[0])
        paths = [filesystem.normalize_path(pafs.FileSystem.from_uri(u)[1]) for u in uris]
        return sum(1 for info in filesystem.get_file_info(paths) if info.type == pafs.FileType.NotFound)

    def begin_night(self, run_date: dt.date, stage: str, retention_days: int = 0) -> Night:
        """The night context of one stage of one night (coldstart.night.start; ``retention_days``: the
        setting, which decides whether a re-run's versions may have been vacuumed)."""
        from coldstart.night import start

        return start(self, run_date, stage, retention_days)

    def merge_bookkeeping(self, name: str, data: pa.Table, attempts: int = 8) -> None:
        """Merge a stage_runs/night_manifest row by key, retried on conflict: unrelated stages that finish
        at the same moment must not fail each other over their bookkeeping."""
        import random
        import time

        for attempt in range(attempts):
            try:
                self.merge(name, data)
                return
            except ConcurrentWriteError:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.05 + random.random() * 0.2 * (attempt + 1))

    def registered_model(self, run_date: dt.date) -> dict | None:
        """The model_registry row in use for a run date (status ready), or None."""
        rows = [r for r in self.read_arrow("model_registry", filters=[("run_date", "=", run_date)]).to_pylist()
                if r["status"] == "ready"]
        return max(rows, key=lambda r: r["created_at"] or dt.datetime.min.replace(tzinfo=dt.timezone.utc)) if rows else None

    # --- the night context (coldstart.night): as-of reads, conflict-checked writes ---------------
    def _night(self) -> Night | None:
        return active_night(self.root)

    def _snapshot(self, name: str) -> DeltaTable:
        """The table as this stage reads it: the night's version of it, else the latest."""
        night = self._night()
        version = night.read_version(name) if night else None
        if night is None or version is None:
            return self.ensure(name)
        key = (name, version)
        if key not in night.snapshots:  # one log replay per table version and stage
            night.snapshots[key] = DeltaTable(self.uri(name), version=version, storage_options=self.storage_options)
        return night.snapshots[key]

    def _night_filters(self, name: str, filters):
        night = self._night()
        extra = night.row_filters(name) if night else []
        if not extra:
            return filters
        if filters is None:
            return extra
        if isinstance(filters, pads.Expression):
            return filters & _filter_expression(extra)
        return [*filters, *extra]

    def _base_table(self, name: str) -> DeltaTable:
        """The table a commit is made from: in a night, its version at the start of the stage (or the
        stage's own last commit), so that delta-rs checks the commit against every commit since."""
        latest = self.writable(name)
        night = self._night()
        if night is None:
            return latest
        base = night.write_base(name)
        if base is None:  # created during this stage (by us or a concurrent run): check against its creation
            base = 0
            night.base[name] = 0
        if base == latest.version():
            return latest
        return DeltaTable(self.uri(name), version=base, storage_options=self.storage_options)

    def _claim(self, name: str, partition: Mapping | None) -> list[Transaction]:
        # every write carries it, in a night or not, so that a night's write sees any other write of the partition
        return [Transaction(claim_id(name, {c: _partition_text(v) for c, v in (partition or {}).items()}),
                            int(dt.datetime.now(dt.timezone.utc).timestamp()))]

    def _commit_properties(self, name: str, partition: Mapping | None, txns: Iterable[Transaction] = (),
                           meta: Mapping[str, str] | None = None) -> CommitProperties | None:
        night = self._night()
        txns = [*txns, *self._claim(name, partition)]
        meta = dict(meta or {})
        if night is not None:
            meta.update({"coldstart.run_date": night.run_date.isoformat(), "coldstart.stage": night.stage,
                         "coldstart.run": night.token})
        return CommitProperties(app_transactions=txns, custom_metadata=meta or None)

    def _conflict(self, name: str, exc: Exception, partition: Mapping | None = None) -> ConcurrentWriteError:
        night = self._night()
        where = f"{name}" + (f" partition {_partition_predicate(partition)}" if partition else "")
        base = night.write_base(name) if night else None
        latest = DeltaTable(self.uri(name), storage_options=self.storage_options).version()
        who = f" for night {night.run_date} {night.stage}" if night else ""
        return ConcurrentWriteError(
            f"{where}: another run committed version {latest} after this run{who} read version {base}; "
            f"this run wrote nothing to it and stops (Delta: {str(exc).splitlines()[0]}). "
            "Two runs of the same stage and date at once: let the other one finish, then re-run if needed.")

    def _committed(self, name: str, version: int | None, rows: int) -> None:
        night = self._night()
        if night is not None and version is not None:
            night.note_commit(name, version, rows)

    def _find_own_commit(self, name: str) -> int | None:
        """The version of this night's latest commit to ``name`` (create_write_transaction returns none)."""
        night = self._night()
        if night is None:
            return None
        latest = DeltaTable(self.uri(name), storage_options=self.storage_options)
        for entry in latest.history(limit=20):
            if entry.get("coldstart.run") == night.token:
                return int(entry["version"])
        return latest.version()

    # --- log checks ---------------------------------------------------------------------------
    def check_tables(self, names: Iterable[str]) -> dict[str, int]:
        """:meth:`check_log` for each table: {name: version} of those that exist. Jobs call it before any
        work, so that a damaged table stops the job before it reads or writes anything."""
        versions = {}
        for name in names:
            version = self.check_log(name)
            if version is not None:
                versions[name] = version
        return versions

    def check_log(self, name: str) -> int | None:
        """The table's latest version after checking that its log can be read whole: every commit since
        the last checkpoint is present, parses line by line, and holds the files its commitInfo counts
        (a commit cut at a line boundary parses, but would silently drop files). None when the table does
        not exist. Raises CorruptTableError naming the table, the version and the file."""
        where = storage.join(self.uri(name), "_delta_log")
        try:
            listing = storage.list_dir(where)
        except OSError as exc:
            raise CorruptTableError(f"table {name}: its Delta log {where} cannot be listed ({exc})") from None
        names = [entry.name for entry in listing if entry.is_file]
        commits = sorted(int(m.group(1)) for m in map(_COMMIT_FILE.match, names) if m)
        checkpoints = sorted(int(m.group(1)) for m in map(_CHECKPOINT_FILE.match, names) if m)
        if not commits and not checkpoints:
            return None
        latest = max(commits + checkpoints)
        # Commits before the newest checkpoint are not read by delta-rs (and may have been cleaned up).
        first = checkpoints[-1] + 1 if checkpoints else 0
        present = set(commits)
        for version in range(first, latest + 1):
            if version not in present:
                raise CorruptTableError(f"table {name}: version {version} is missing from its Delta log ({where}): "
                                        f"versions {first}..{latest} must all be there")
            try:
                data = storage.read_bytes(storage.join(where, f"{version:020d}.json"))
            except OSError as exc:
                raise CorruptTableError(f"table {name}: version {version} of its Delta log cannot be read "
                                        f"({where}/{version:020d}.json: {exc})") from None
            problem = _commit_problem(data, version)
            if problem:
                hint = (f"; restore the file, or delete it to roll the table back to version {version - 1} and "
                        f"re-run the job that wrote it") if version == latest and version > first else ""
                raise CorruptTableError(f"table {name}: version {version} of its Delta log is damaged: {problem} "
                                        f"({where}/{version:020d}.json){hint}")
        return latest

    # --- schema -------------------------------------------------------------------------------
    def conform(self, name: str, data: pa.Table | pa.RecordBatch) -> pa.Table:
        """Cast data to the catalog schema; any mismatch raises SchemaMismatchError naming the column."""
        return conform_arrow(name, data)

    # --- small (driver-side) writes -----------------------------------------------------------
    def replace_partition(self, name: str, data: pa.Table, **partition) -> int:
        """Atomically replace one partition (e.g. run_date=D) with data: a rerun replaces, never duplicates."""
        return self.replace_partition_stream(name, data.to_batches(), **partition)

    def replace_partition_stream(self, name: str, batches: Iterable[pa.RecordBatch], **partition) -> int:
        """Replace one partition with streamed record batches (memory bounded by one batch), in one commit."""
        spec = catalog_table(name)
        self._check_partition_spec(spec, partition)
        self.writable(name)
        count = 0
        rejected: SchemaMismatchError | None = None

        def checked() -> Iterable[pa.RecordBatch]:
            nonlocal count, rejected
            for batch in batches:
                try:
                    conformed = self.conform(name, batch)
                    for column, value in partition.items():
                        if any(v != value for v in conformed.column(column).unique().to_pylist()):
                            raise SchemaMismatchError(
                                f"table {name}: rows with {column} other than {value} in a write of that partition")
                except SchemaMismatchError as exc:
                    rejected = exc
                    raise
                count += conformed.num_rows
                yield from conformed.to_batches()

        reader = pa.RecordBatchReader.from_batches(spec.schema, checked())
        predicate = _partition_predicate(partition)
        target = self._base_table(name)
        try:
            write_deltalake(target, reader, mode="overwrite", predicate=predicate,
                            partition_by=list(spec.partition_by), storage_options=self.storage_options,
                            commit_properties=self._commit_properties(name, partition))
        except CommitFailedError as exc:
            raise self._conflict(name, exc, partition) from None
        except Exception:
            if rejected is not None:  # delta-rs wraps errors raised while reading the stream; give the caller ours
                raise rejected from None
            raise
        self._committed(name, target.version(), count)
        log.info("%s: replaced partition %s with %d rows", name, predicate, count)
        return count

    def merge(self, name: str, data: pa.Table, preserve: Iterable[str] = (), combine: Mapping[str, str] | None = None,
              newer_wins: str | None = None) -> dict:
        """Upsert by the catalog key. Columns in ``preserve`` keep their stored value on update;
        ``combine`` maps a column to a SQL expression over ``t`` (target) and ``s`` (source);
        ``newer_wins`` (a SQL condition, e.g. ``t.run_date <= s.run_date``) limits updates to rows it holds
        for, so that re-running an old night cannot bring old values back over a later night's."""
        spec = catalog_table(name)
        data = self.conform(name, data)
        if data.num_rows == 0:
            return {"num_target_rows_inserted": 0, "num_target_rows_updated": 0}
        keys = data.select(list(spec.key)).group_by(list(spec.key)).aggregate([([], "count_all")])
        if keys.num_rows != data.num_rows:
            raise SchemaMismatchError(f"table {name}: merge source has duplicate keys on {', '.join(spec.key)}")
        dt_ = self._base_table(name)
        predicate = " AND ".join(f"t.{k} = s.{k}" for k in spec.key)
        preserve = set(preserve)
        combine = dict(combine or {})
        updates = {c: combine.get(c, f"s.{c}") for c in spec.columns if c not in spec.key and c not in preserve}
        try:
            # a merge reads the whole table: delta-rs refuses it when any commit landed since the version read
            metrics = (dt_.merge(data, predicate, source_alias="s", target_alias="t",
                                 commit_properties=self._commit_properties(name, None))
                       .when_matched_update(updates=updates, predicate=newer_wins)
                       .when_not_matched_insert_all()
                       .execute())
        except CommitFailedError as exc:
            raise self._conflict(name, exc) from None
        self._committed(name, dt_.version(), int(metrics.get("num_target_rows_inserted", 0) or 0)
                        + int(metrics.get("num_target_rows_updated", 0) or 0))
        log.info("%s: merged %d rows (%s inserted, %s updated)", name, data.num_rows,
                 metrics.get("num_target_rows_inserted"), metrics.get("num_target_rows_updated"))
        return metrics

    # --- reads --------------------------------------------------------------------------------
    def read_arrow(self, name: str, columns: list[str] | None = None, filters=None) -> pa.Table:
        """Rows of a table; in a night (coldstart.night), as of that night."""
        if not self.exists(name):
            return catalog_table(name).schema.empty_table().select(columns) if columns else catalog_table(name).schema.empty_table()
        snapshot = self._snapshot(name)
        expr = _filter_expression(self._night_filters(name, filters))
        out = snapshot.to_pyarrow_dataset().to_table(columns=columns, filter=expr)
        night = self._night()
        if night is not None:
            night.note_read(name, snapshot.version(), out.num_rows)
        return out

    def partition_rows(self, name: str, column: str) -> dict:
        """Rows per value of a partition column, from the record counts the Delta log keeps per file (no
        data file is read); if a file has no count, the column is read instead."""
        if not self.exists(name):
            return {}
        snapshot = self._snapshot(name)
        actions = pa.table(snapshot.get_add_actions(flatten=True))
        values, counts = actions.column(f"partition.{column}"), actions.column("num_records")
        if counts.null_count:
            values = self.read_arrow(name, columns=[column]).column(column)
            counts = pa.array(np.ones(len(values), dtype=np.int64))
        totals = pa.table({"value": values, "rows": counts}).group_by("value").aggregate([("rows", "sum")])
        out = dict(zip(totals.column("value").to_pylist(), totals.column("rows_sum").to_pylist()))
        night = self._night()
        if night is not None:
            night.note_read(name, snapshot.version(), 0)
            for col_name, op, value in night.row_filters(name):
                if col_name == column:  # the night's filter on this very column (run_date <= D)
                    keep = _filter_expression([("v", op, value)])
                    kept = pa.table({"v": list(out)}).filter(keep).column("v").to_pylist() if out else []
                    out = {k: out[k] for k in kept}
        return out

    def read_pandas(self, name: str, columns: list[str] | None = None, filters=None):
        return self.read_arrow(name, columns, filters).to_pandas()

    def dataset(self, name: str) -> pads.Dataset:
        """The table's files as a pyarrow dataset (in a night: the night's version; its row filters are the
        caller's, see :meth:`read_arrow`)."""
        self.ensure(name)
        return self._snapshot(name).to_pyarrow_dataset()

    def read_spark(self, spark, name: str, partitions: Mapping[str, Iterable] | None = None):
        """Read the active files of the table's current version (in a night: as of that night, see
        :meth:`read_arrow`) into Spark (no Delta jars needed). Partition values are the log's: on local disk
        Spark reads them off the ``c=<value>/`` folders where those match the log (:func:`_hive_laid_out`),
        else they are joined in by file path; on an object store the executors read the files themselves."""
        from pyspark.sql import functions as F

        spec = catalog_table(name)
        spark_schema = spark_schema_for(spec)
        self.ensure(name)
        dt_ = self._snapshot(name)
        actions = pa.table(dt_.get_add_actions(flatten=True)).to_pylist()
        if partitions:
            wanted = {c: {_partition_text(v) for v in vs} for c, vs in partitions.items()}
            actions = [a for a in actions if all(str(a.get(f"partition.{c}")) in vs for c, vs in wanted.items())]
        night = self._night()
        row_filters = night.row_filters(name) if night else []
        for column, op, value in [f for f in row_filters if f[0] in spec.partition_by]:
            # partition filters prune files by the values in the log (dates compare as ISO text)
            keep = {"<=": lambda a, b: a <= b, "<": lambda a, b: a < b, "=": lambda a, b: a == b}[op]
            actions = [a for a in actions if a.get(f"partition.{column}") is not None
                       and keep(_partition_text(a.get(f"partition.{column}")), _partition_text(value))]
        row_filters = [f for f in row_filters if f[0] not in spec.partition_by]
        if night is not None:
            night.note_read(name, dt_.version(), sum(int(a.get("num_records") or 0) for a in actions))
        if not actions:
            return spark.createDataFrame([], spark_schema)
        base = self.uri(name)
        if not _is_local(self.root):
            return _filtered(_read_spark_remote(spark, spec, spark_schema, base, actions), row_filters)
        files = [f"{base}/{_unquote(a['path'])}" for a in actions]
        if spec.partition_by and _hive_laid_out(actions, spec.partition_by):
            # Spark reads the partition values off the folder names (they match the log's, checked): over
            # 10x faster than joining them in by each row's file path (bench/results/nightly_scale.md)
            df = spark.read.schema(spark_schema).option("basePath", base).parquet(*files)
            return _filtered(df, row_filters).select(*spec.columns)
        data_fields = [f for f in spark_schema.fields if f.name not in spec.partition_by]
        from pyspark.sql.types import StructType

        df = _filtered(spark.read.schema(StructType(data_fields)).parquet(*files), row_filters)
        if not spec.partition_by:
            return df
        # Partition values live in the Delta log, not in the files: attach them through the file path.
        rows = [(_tail(_unquote(a["path"])), *[a.get(f"partition.{c}") for c in spec.partition_by]) for a in actions]
        mapping = spark.createDataFrame(rows, ["_file_key", *[f"_p_{c}" for c in spec.partition_by]])
        df = df.withColumn("_file_key", F.regexp_extract(F.col("_metadata.file_path"), r"([^/]+/[^/]+)$", 1))
        df = df.join(F.broadcast(mapping), "_file_key")
        for c in spec.partition_by:
            df = df.withColumn(c, F.col(f"_p_{c}").cast(spark_schema[c].dataType))
        return df.select(*spec.columns)

    # --- large (executor-side) writes ---------------------------------------------------------
    def write_spark(self, df, name: str, mode: str = "append", partition: Mapping | None = None) -> int:
        """Executors write Parquet into the table folder; the driver commits one Delta transaction.

        mode: ``append`` or ``replace_partition`` (with ``partition={'run_date': D}``) or ``overwrite``.
        Returns the number of rows committed by this write, summed from the Parquet footers of the files it
        wrote (never a Spark count, never the table's size). Only one small row per file reaches the
        driver, on local disk and on an object store alike."""
        spec = catalog_table(name)
        df = conform_spark(df, spec)
        if mode not in ("append", "replace_partition", "overwrite"):
            raise ValueError(f"unknown write mode {mode!r}")
        if mode == "replace_partition":
            self._check_partition_spec(spec, partition or {})
        fixed = {c: _partition_text(v) for c, v in (partition or {}).items()} if mode == "replace_partition" else None
        dt_ = self._base_table(name)
        if _is_local(self.root):
            actions, rows = self._spark_files_local(df, spec, self.uri(name), fixed)
        else:
            actions, rows = _spark_files_remote(df, spec, self.uri(name), fixed)
        if mode == "append" and not actions:
            return 0
        self._commit_files(dt_, name, spec, mode, actions, fixed)
        self._committed(name, self._find_own_commit(name), rows)
        log.info("%s: committed %d rows in %d files (%s)", name, rows, len(actions), mode)
        return rows

    def _commit_files(self, dt_: DeltaTable, name: str, spec: Table, mode: str, actions: list,
                      fixed: Mapping[str, str] | None) -> None:
        """One Delta transaction adding ``actions`` (and, replacing, removing the partition's or table's files).
        A conflict deletes the files (never committed, never read) and raises ConcurrentWriteError."""
        # An add-action commit records no read predicate, so delta-rs would not see a concurrent write of
        # the same partition: the claim id (coldstart.night) makes two such commits conflict.
        # The file counts go into commitInfo, which delta-rs leaves without metrics for these transactions:
        # check_log compares them with the commit's actions (a commit cut at a line boundary still parses).
        removed = 0
        if mode in ("replace_partition", "overwrite"):
            wanted = fixed or {}
            removed = sum(all(str(a.get(f"partition.{c}")) == v for c, v in wanted.items())
                          for a in pa.table(dt_.get_add_actions(flatten=True)).to_pylist())
        commit = self._commit_properties(name, fixed, [], {_ADDED_KEY: str(len(actions)), _REMOVED_KEY: str(removed)})
        partition_by = list(spec.partition_by) or None
        try:
            if mode == "replace_partition":
                filters = [(c, "=", v) for c, v in (fixed or {}).items()]
                dt_.create_write_transaction(actions, "overwrite", spec.schema, partition_by, filters,
                                             commit_properties=commit)
            else:
                dt_.create_write_transaction(actions, "overwrite" if mode == "overwrite" else "append", spec.schema,
                                             partition_by, commit_properties=commit)
        except CommitFailedError as exc:
            for action in actions:
                storage.delete(f"{self.uri(name)}/{_unquote(action.path)}")
            raise self._conflict(name, exc, fixed) from None

    @staticmethod
    def _spark_files_local(df, spec: Table, table_uri: str, fixed: Mapping[str, str] | None) -> tuple[list, int]:
        """Spark's own Parquet writer into a new batch folder of the table; add actions from the footers."""
        batch = f"batch-{uuid.uuid4().hex}"
        table_dir = Path(_local_path(table_uri))
        if fixed is not None:
            part_dir = "/".join(f"{c}={v}" for c, v in fixed.items())
            out_dir = table_dir / part_dir / batch
            df.drop(*spec.partition_by).write.mode("error").parquet(str(out_dir))
        elif spec.partition_by:
            out_dir = table_dir / batch
            df.write.mode("error").partitionBy(*spec.partition_by).parquet(str(out_dir))
        else:
            out_dir = table_dir / batch
            df.write.mode("error").parquet(str(out_dir))
        actions: list[AddAction | RemoveAction] = []
        rows = 0
        for path in sorted(out_dir.rglob("*.parquet")):
            rel = path.relative_to(table_dir).as_posix()
            values = dict(fixed) if fixed is not None else _partition_values_from_path(rel, spec.partition_by)
            meta = pq.read_metadata(path)
            if meta.num_rows == 0:
                path.unlink()
                continue
            rows += meta.num_rows
            actions.append(AddAction(rel, path.stat().st_size, values, int(path.stat().st_mtime * 1000), True,
                                     _stats_json(meta)))
        for marker in out_dir.rglob("_SUCCESS"):
            marker.unlink()
        for crc in out_dir.rglob(".*.crc"):
            crc.unlink()
        return actions, rows

    def merge_spark(self, df, name: str, preserve: Iterable[str] = (), combine: Mapping[str, str] | None = None,
                    newer_wins: str | None = None) -> dict:
        """Merge a Spark DataFrame by key: executors stage Parquet under the lake's own ``_staging/`` (same
        store as the tables), the driver streams the staged files into one merge and deletes them."""
        spec = catalog_table(name)
        df = conform_spark(df, spec)
        staging = storage.join(self.root, "_staging", f"{name}-{uuid.uuid4().hex}")
        try:
            if _is_local(self.root):
                df.write.mode("error").parquet(staging)
                files = [f for f in storage.walk_files(staging) if f.endswith(".parquet")]
            else:
                flat = dataclasses.replace(spec, partition_by=())
                actions, _ = _spark_files_remote(df, flat, staging, None)
                files = [storage.join(staging, a.path) for a in actions]
            if not files:
                return {"num_target_rows_inserted": 0, "num_target_rows_updated": 0}
            fs, _ = storage.filesystem(staging)
            data = pads.dataset([storage.filesystem(f)[1] for f in files], format="parquet", schema=spec.schema,
                                filesystem=fs).to_table()
            return self.merge(name, data, preserve=preserve, combine=combine, newer_wins=newer_wins)
        finally:
            storage.delete(staging)

    # --- maintenance ---------------------------------------------------------------------------
    def vacuum(self, name: str, retention_hours: int = 0) -> list[str]:
        """Delete files no longer referenced (old versions past retention, and orphans of crashed writes)."""
        removed = self.table(name).vacuum(retention_hours=retention_hours, dry_run=False,
                                          enforce_retention_duration=False, full=True)
        if _is_local(self.root):
            for path in sorted(Path(self.uri(name)).rglob("*"), reverse=True):
                if path.is_dir() and not any(path.iterdir()) and "_delta_log" not in path.parts:
                    path.rmdir()
        return removed

    def commit_time(self, name: str, version: int) -> dt.datetime | None:
        """Wall clock of a table version's commit (from the Delta log), or None when the log lost it."""
        history = DeltaTable(self.uri(name), storage_options=self.storage_options).history()
        for entry in history:
            if int(entry["version"]) == version and entry.get("timestamp") is not None:
                return dt.datetime.fromtimestamp(entry["timestamp"] / 1000, dt.timezone.utc)
        return None

    def vacuum_checkpoints(self, retention_days: int, now: dt.datetime) -> list[str]:
        """Delete the checkpoints of superseded models (a re-run registered another one for their date) that
        no night manifest row of the last ``retention_days`` days started from; their registry rows stay,
        with status ``removed``, so a later model's parent_version still names a row that says what happened."""
        if not self.exists("model_registry"):
            return []
        since = now - dt.timedelta(days=retention_days)
        used = set()
        if self.exists("night_manifest"):
            used = {r["checkpoint_version"] for r in self.read_arrow("night_manifest").to_pylist()
                    if r["checkpoint_version"] and r["recorded_at"] is not None and r["recorded_at"] >= since}
        gone, lines = [], []
        for row in self.read_arrow("model_registry").to_pylist():
            if row["status"] != "superseded" or row["model_version"] in used:
                continue
            storage.delete(row["checkpoint_uri"])
            gone.append({**row, "status": "removed"})
            lines.append(f"checkpoint {row['model_version']}: removed {row['checkpoint_uri']}")
        if gone:
            self.merge("model_registry", pa.Table.from_pylist(gone, schema=catalog_table("model_registry").schema))
        return lines

    def _check_partition_spec(self, spec: Table, partition: Mapping) -> None:
        if tuple(partition) != spec.partition_by:
            raise SchemaMismatchError(f"table {spec.name} is partitioned by {spec.partition_by}, got {tuple(partition)}")


def conform_arrow(name: str, data: pa.Table | pa.RecordBatch) -> pa.Table:
    """Cast data to table ``name``'s catalog schema; any mismatch raises SchemaMismatchError naming the column."""
    return _conform_to(catalog_table(name), data)


def _conform_to(spec: Table, data: pa.Table | pa.RecordBatch) -> pa.Table:
    name = spec.name
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    have = set(data.column_names)
    missing = [c for c in spec.columns if c not in have]
    extra = [c for c in data.column_names if c not in spec.columns]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unknown column(s) {', '.join(extra)}")
        raise SchemaMismatchError(f"table {name}: {'; '.join(parts)}")
    arrays = []
    for field in spec.schema:
        column = data.column(field.name)
        if not column.type.equals(field.type):
            try:
                column = column.cast(field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise SchemaMismatchError(
                    f"table {name}: column {field.name} has type {column.type}, expected {field.type} ({exc})") from None
        if not field.nullable and column.null_count:
            raise SchemaMismatchError(f"table {name}: column {field.name} has {column.null_count} null(s) but is required")
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=spec.schema)


# --- object-store Spark I/O (executors' Python workers through coldstart.storage) -----------------
_FILE_ROW = "path string, size long, partition string, num_rows long, stats string"


def _spark_files_remote(df, spec: Table, table_uri: str, fixed: Mapping[str, str] | None) -> tuple[list, int]:
    """Each task writes its rows as Parquet files under ``table_uri`` (one file per partition value it
    holds) and returns one row per file; the driver collects only those rows and builds add actions."""
    batch = f"batch-{uuid.uuid4().hex}"
    part_cols = tuple(spec.partition_by)
    file_schema = pa.schema([f for f in spec.schema if f.name not in part_cols])
    env = storage.worker_env()

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        from coldstart import storage as st

        st.adopt(env)
        ctx = TaskContext.get()
        task = f"{ctx.partitionId():05d}-{ctx.attemptNumber()}" if ctx else "0"
        open_files: dict[str, tuple] = {}
        try:
            for raw in batches:
                data = _conform_to(spec, raw)
                if not data.num_rows:
                    continue
                for values, part in _split_partitions(data, part_cols, fixed):
                    key = json.dumps(values, sort_keys=True)
                    if key not in open_files:
                        prefix = "/".join(f"{c}={values[c]}" for c in part_cols)
                        rel = "/".join(p for p in (prefix, batch, f"part-{task}-{uuid.uuid4().hex[:12]}.parquet") if p)
                        sink = st.open_output(st.join(table_uri, rel))
                        open_files[key] = (rel, sink, pq.ParquetWriter(sink, file_schema), values)
                    open_files[key][2].write_table(part.select(file_schema.names).cast(file_schema))
            out = []
            for rel, sink, writer, values in open_files.values():
                writer.close()
                size = sink.tell()
                sink.close()
                meta = writer.writer.metadata  # the footer just written (pyarrow keeps it after close)
                out.append({"path": rel, "size": size, "partition": json.dumps(values), "num_rows": meta.num_rows,
                            "stats": _stats_json(meta)})
            open_files.clear()
            if out:
                yield pa.RecordBatch.from_pylist(out, schema=pa.schema([
                    ("path", pa.string()), ("size", pa.int64()), ("partition", pa.string()),
                    ("num_rows", pa.int64()), ("stats", pa.string())]))
        finally:
            for _, sink, writer, _ in open_files.values():  # a failed task: its files are never committed
                try:
                    writer.close()
                    sink.close()
                except Exception:
                    pass

    now = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)
    actions, rows = [], 0
    for r in df.mapInArrow(write, _FILE_ROW).collect():
        if not r["num_rows"]:
            continue
        rows += r["num_rows"]
        actions.append(AddAction(r["path"], r["size"], json.loads(r["partition"]), now, True, r["stats"]))
    return sorted(actions, key=lambda a: a.path), rows


def _split_partitions(data: pa.Table, part_cols: tuple[str, ...], fixed: Mapping[str, str] | None):
    """(partition values as Delta text, rows) pairs of a batch; a fixed partition is the whole batch."""
    if fixed is not None:
        yield dict(fixed), data
        return
    if not part_cols:
        yield {}, data
        return
    keys = data.select(list(part_cols)).group_by(list(part_cols)).aggregate([])
    for row in keys.to_pylist():
        mask = None
        for c in part_cols:
            term = pa.compute.is_null(data.column(c)) if row[c] is None else pa.compute.equal(data.column(c), row[c])
            mask = term if mask is None else pa.compute.and_(mask, term)
        yield {c: None if row[c] is None else _partition_text(row[c]) for c in part_cols}, data.filter(mask)


def _read_spark_remote(spark, spec: Table, spark_schema, base: str, actions: list[dict]):
    """A DataFrame over the table's active files, read by the executors through coldstart.storage; partition
    values come from the Delta log, one task per file."""
    part_cols = tuple(spec.partition_by)
    files = [(f"{base}/{_unquote(a['path'])}", json.dumps({c: None if a.get(f"partition.{c}") is None else _partition_text(a.get(f"partition.{c}"))
                                                         for c in part_cols}))
             for a in actions]

    env = storage.worker_env()

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from coldstart import storage as st

        st.adopt(env)
        file_columns = [f.name for f in spec.schema if f.name not in part_cols]
        for b in batches:
            for uri, values in zip(b.column("uri").to_pylist(), b.column("values").to_pylist()):
                values = json.loads(values)
                with st.open_input(uri) as fh:
                    for piece in pq.ParquetFile(fh).iter_batches(batch_size=10_000, columns=file_columns):
                        table = pa.Table.from_batches([piece])
                        for c in part_cols:
                            table = table.append_column(c, pa.array([values[c]] * table.num_rows, pa.string()))
                        yield from _conform_to(spec, _typed_partitions(table, spec)).to_batches()

    listing = spark.createDataFrame(files, "uri string, values string").repartition(max(1, len(files)))
    return listing.mapInArrow(read, spark_schema)


def _typed_partitions(table: pa.Table, spec: Table) -> pa.Table:
    """Partition columns come from the log as text: cast them to their catalog types (dates parse from ISO)."""
    for c in spec.partition_by:
        target = spec.schema.field(c).type
        i = table.schema.get_field_index(c)
        table = table.set_column(i, c, table.column(c).cast(target))
    return table


# --- helpers ------------------------------------------------------------------------------------
def _filtered(df, row_filters: list[tuple]):
    """A Spark DataFrame with the night's row filters ((column, op, value) triples) applied."""
    from pyspark.sql import functions as F

    for column, op, value in row_filters:
        df = df.filter({"<=": F.col(column) <= F.lit(value), "<": F.col(column) < F.lit(value),
                        "=": F.col(column) == F.lit(value)}[op])
    return df


def _commit_problem(data: bytes, version: int) -> str | None:
    """Why one commit file is not a whole Delta commit, or None when it is."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 ({exc})"
    actions = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            action = json.loads(line)
        except ValueError as exc:
            return f"line {number} is not JSON, the file is cut off or overwritten ({exc})"
        if not isinstance(action, dict) or len(action) != 1:
            return f"line {number} is not one Delta action"
        actions.append(action)
    if not actions:
        return "the commit is empty"
    kinds = [next(iter(a)) for a in actions]
    info = next((a["commitInfo"] for a in actions if "commitInfo" in a), None) or {}
    operation = str(info.get("operation", ""))
    if version == 0 or operation.startswith("CREATE"):
        missing = [k for k in ("protocol", "metaData") if k not in kinds]
        if missing:
            return f"a table's first commit needs {' and '.join(missing)}, which it lacks"
    elif operation in _METADATA_OPERATIONS and "metaData" not in kinds:
        return f"{operation} commit without its metaData action"
    metrics = dict(info.get("operationMetrics") or {})
    metrics.update({k: info[k] for k in (_ADDED_KEY, _REMOVED_KEY) if k in info})
    for added_key, removed_key in (*_FILE_COUNT_METRICS, (_ADDED_KEY, _REMOVED_KEY)):
        for key, kind in ((added_key, "add"), (removed_key, "remove")):
            if key not in metrics:
                continue
            try:
                promised = int(metrics[key])
            except (TypeError, ValueError):
                continue
            if kinds.count(kind) != promised:
                return (f"its commitInfo ({operation or 'unknown operation'}) counts {promised} {kind} action(s) "
                        f"but the file holds {kinds.count(kind)}: lines were lost")
    return None


def _partition_predicate(partition: Mapping) -> str:
    return " AND ".join(f"{c} = '{_partition_text(v)}'" for c, v in partition.items())


def _unquote(path: str) -> str:
    from urllib.parse import unquote
    return unquote(path)


def _tail(path: str) -> str:
    parts = path.rstrip("/").split("/")
    return "/".join(parts[-2:])


def _hive_laid_out(actions: list[dict], partition_by) -> bool:
    """Whether every file of ``actions`` sits under ``c=<value>/`` folders (in partition_by's order, then
    only folders without '=') whose text is exactly the log's partition value (null:
    ``__HIVE_DEFAULT_PARTITION__``), with nothing Spark would unescape ('%'): then Spark's partition
    discovery gives the log's values."""
    for a in actions:
        folders = _unquote(a["path"]).split("/")[:-1]
        want = []
        for c in partition_by:
            value = a.get(f"partition.{c}")
            want.append(f"{c}=" + ("__HIVE_DEFAULT_PARTITION__" if value is None else _partition_text(value)))
        below = folders[len(want):]  # e.g. a write's batch-<id> folder: Spark's discovery skips it
        if folders[:len(want)] != want or any("%" in f for f in folders) or any("=" in f for f in below):
            return False
    return True


def _partition_values_from_path(rel: str, partition_by: tuple[str, ...]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for part in rel.split("/"):
        if "=" in part:
            key, value = part.split("=", 1)
            if key in partition_by:
                values[key] = None if value == "__HIVE_DEFAULT_PARTITION__" else _unquote(value)
    return values


# The DNF comparison operators of read filters. pyarrow.parquet.filters_to_expression builds the same
# terms, but cannot compare the string_view columns that delta-rs merges write with a string scalar.
_COMPARE = {"=": operator.eq, "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
            ">": operator.gt, ">=": operator.ge}


def _filter_expression(filters):
    """An Arrow expression for ``filters``: None, an expression, or a conjunction of (column, op, value).

    Not ``pyarrow.parquet.filters_to_expression``: on a string_view column (what delta-rs merges write) its
    terms fail with "Function 'equal' has no kernel matching input types (string_view, string)" (pyarrow
    26.0.1); here string columns are cast to string first."""
    if filters is None:
        return None
    if isinstance(filters, pads.Expression):
        return filters
    expr = None
    for column, op, value in filters:
        field = pads.field(column)
        probe = next(iter(value), None) if op == "in" else value
        if isinstance(probe, str):
            # delta-rs merges write strings as string_view, which pyarrow cannot compare with a string scalar
            field = field.cast(pa.string())
        term = field.isin(list(value)) if op == "in" else _COMPARE[op](field, value)
        expr = term if expr is None else expr & term
    return expr


def _stat_value(value):
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _stats_json(meta: pq.FileMetaData) -> str:
    """Delta file stats (numRecords, min/max/nullCount of top-level primitive columns) from a Parquet footer."""
    mins, maxs, nulls = {}, {}, {}
    schema = meta.schema.to_arrow_schema()
    for ci in range(meta.num_columns):
        path = meta.schema.column(ci).path
        if "." in path or schema.field(path).type.num_fields:
            continue  # nested (list/map) columns carry no Delta stats here
        lo = hi = None
        nc = 0
        ok = True
        for rg in range(meta.num_row_groups):
            st = meta.row_group(rg).column(ci).statistics
            if st is None:
                ok = False
                break
            nc += st.null_count or 0
            if st.has_min_max:
                lo = st.min if lo is None else min(lo, st.min)
                hi = st.max if hi is None else max(hi, st.max)
        if not ok:
            continue
        nulls[path] = nc
        if lo is not None:
            mins[path], maxs[path] = _stat_value(lo), _stat_value(hi)
    return json.dumps({"numRecords": meta.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls})


def spark_type(t: pa.DataType):
    """The Spark SQL type of an Arrow type (pyspark's own mapping; a zoned or naive timestamp is a TimestampType)."""
    from pyspark.sql.pandas.types import from_arrow_type

    return from_arrow_type(t, prefer_timestamp_ntz=False)


def spark_schema_for(spec: Table):
    """The Spark schema of a catalog table."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(spec.schema, prefer_timestamp_ntz=False)


def conform_spark(df, spec: Table):
    """Select the catalog columns in order and cast; a missing/extra column raises SchemaMismatchError."""
    from pyspark.sql import functions as F

    have = df.columns
    missing = [c for c in spec.columns if c not in have]
    extra = [c for c in have if c not in spec.columns]
    if missing or extra:
        parts = ([f"missing column(s) {', '.join(missing)}"] if missing else []) + \
                ([f"unknown column(s) {', '.join(extra)}"] if extra else [])
        raise SchemaMismatchError(f"table {spec.name}: {'; '.join(parts)}")
    target = spark_schema_for(spec)
    out = []
    for field in target.fields:
        current = df.schema[field.name].dataType
        if current != field.dataType:
            if type(current).__name__ in ("MapType", "ArrayType", "StructType") and type(current) is not type(field.dataType):
                raise SchemaMismatchError(f"table {spec.name}: column {field.name} has type {current.simpleString()}, "
                                          f"expected {field.dataType.simpleString()}")
            out.append(F.col(field.name).cast(field.dataType).alias(field.name))
        else:
            out.append(F.col(field.name))
    return df.select(*out)
