"""The stages in order, and one entry point per stage shared by the CLI, the jobs and the DAG."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from typing import Iterable

from coldstart.config import Settings
from coldstart.night import STAGE_ORDER
from coldstart.results import StageResult

log = logging.getLogger("coldstart.pipeline")

STAGES = STAGE_ORDER  # the order of a night, defined once (coldstart.night)
# Stages that run Spark jobs. The others read and write Delta through delta-rs; evaluate starts a
# session itself only when the ALS baseline needs one.
SPARK_STAGES = ("ingest", "embed", "score")
# The tables each stage reads or writes (with the night's bookkeeping): its job checks their Delta logs
# before any work.
_BOOKKEEPING = ("night_manifest", "stage_runs")
STAGE_TABLES = {
    "ingest": ("interactions", "items", "users", "quarantine", "ingest_audit", *_BOOKKEEPING),
    "embed": ("items", "users", "entity_embeddings", *_BOOKKEEPING),
    "train": ("interactions", "items", "users", "entity_embeddings", "model_registry", *_BOOKKEEPING),
    "score": ("interactions", "items", "users", "entity_embeddings", "model_registry", "recommendations",
              *_BOOKKEEPING),
    "evaluate": ("interactions", "items", "users", "entity_embeddings", "recommendations", "evaluation",
                 "evaluation_users", *_BOOKKEEPING),
}


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that say what to fix (a setting, a landing folder, a damaged table, a query): the CLI and the
    jobs print their message in one line; anything else is a bug and keeps its traceback."""
    import duckdb

    from coldstart.config import SettingsError
    from coldstart.encoder import EncoderError
    from coldstart.lake import CorruptTableError, SchemaMismatchError
    from coldstart.landing import LandingError
    from coldstart.night import ConcurrentWriteError, RetentionError
    from coldstart.storage import StorageError

    return (SettingsError, LandingError, StorageError, CorruptTableError, SchemaMismatchError, EncoderError,
            ConcurrentWriteError, RetentionError, duckdb.Error)


def needs_spark(stage: str, settings: Settings | None = None) -> bool:
    """Whether ``stage`` runs Spark jobs (train does with ``train_processes`` > 1: its ranks' shards and the
    TorchDistributor; with 1 it trains in this process and needs no JVM)."""
    return stage in SPARK_STAGES or (stage == "train" and settings is not None and settings.train_processes > 1)


LOCATIONS = ("landing", "lake", "models", "reports")


def check_storage(settings: Settings) -> None:
    """Fail fast when a location's store cannot be used (unreachable endpoint, rejected credentials, missing
    bucket): one :class:`coldstart.storage.StorageError` naming the setting and its URI, raised before any
    stage reads or writes, so a failed night leaves every table as it was and Airflow's retry starts clean."""
    from coldstart import storage

    checked = set()
    for name in LOCATIONS:
        uri = getattr(settings, name)
        if storage.is_remote(uri) and (storage.bucket_of(uri), name) not in checked:
            storage.check(uri, f"COLDSTART_{name.upper()}")
            checked.add((storage.bucket_of(uri), name))


def check_start(settings: Settings, stages: Iterable[str], dates: Iterable[dt.date] = (),
                top_k: int | None = None) -> None:
    """Everything a run of ``stages`` over ``dates`` can know is wrong before its first stage, so that it
    fails before any commit rather than halfway through the night: the settings (checked when loaded),
    ``top_k``, the encoder's folder and weights (embed), where reports go (evaluate), each date's landing
    folder (ingest), every object-store location (:func:`check_storage`) and the Delta logs of every
    table the stages touch. Raises SettingsError, StorageError, EncoderError, LandingError or
    CorruptTableError, each naming what to fix."""
    from coldstart.config import check_range
    from coldstart.lake import Lake

    stages = list(stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    if top_k is not None:
        check_range("top_k", top_k, "--top-k")
    check_storage(settings)
    if "embed" in stages:
        from coldstart.encoder import check_encoder
        check_encoder(settings)
    if "evaluate" in stages:
        settings.reports_root()
    if "ingest" in stages:
        from coldstart.landing import day_files
        for day in dates:
            day_files(settings.landing, "interactions", day, required=True)
    Lake.from_settings(settings).check_tables(dict.fromkeys(t for s in stages for t in STAGE_TABLES[s]))


def run_stage(stage: str, settings: Settings, run_date: dt.date, spark=None, full_retrain: bool = False,
              top_k: int | None = None) -> StageResult:
    """Run one stage for one run date (idempotent for that date), as of that night.

    The stage runs inside a night context (:mod:`coldstart.night`): it reads the lake as night D saw it
    and its commits fail with ConcurrentWriteError when another run wrote the same partition meanwhile.
    Afterwards its stage_runs row (timing, rows, driver memory; status failed with the error when it
    raised) and its night_manifest row (versions read and committed, checkpoint, settings hash) are
    written. A run that lost a race records nothing: the winner's rows stand. Every object-store
    location (:func:`check_storage`) and the Delta log of every table the stage touches are checked first
    (CorruptTableError names the table and version)."""
    from coldstart.lake import Lake
    from coldstart.night import ConcurrentWriteError, open_night

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    check_storage(settings)
    lake = Lake.from_settings(settings)
    lake.check_tables(STAGE_TABLES[stage])  # a damaged log fails the stage before it reads or writes
    night = lake.begin_night(run_date, stage, settings.retention_days)  # refuses a re-run whose versions were vacuumed
    if spark is None and needs_spark(stage, settings):
        from coldstart.spark import get_session
        spark = get_session(settings, app_name=f"coldstart-{stage}")
    started_at = dt.datetime.now(dt.timezone.utc)
    started = time.perf_counter()
    log.info("=== %s %s ===", stage, run_date)
    try:
        with open_night(night):
            result = _dispatch(stage, settings, run_date, spark, full_retrain, top_k)
    except ConcurrentWriteError:
        log.error("%s %s: lost a race with another run of the same stage and date; not recorded", stage, run_date)
        raise
    except BaseException as exc:
        _record(lake, settings, night, started_at, "failed", f"{type(exc).__name__}: {exc}", spark)
        raise
    _record(lake, settings, night, started_at, "ok", None, spark)
    log.info("=== %s %s done in %.1f s ===", stage, run_date, time.perf_counter() - started)
    return result


def _dispatch(stage: str, settings: Settings, run_date: dt.date, spark, full_retrain: bool,
              top_k: int | None) -> StageResult:
    if stage == "ingest":
        from coldstart.ingest import ingest
        return ingest(spark, settings, run_date)
    if stage == "embed":
        from coldstart.embed import embed
        return embed(spark, settings, run_date)
    if stage == "train":
        from coldstart.train import train
        return train(spark, settings, run_date, full_retrain=full_retrain)
    if stage == "score":
        from coldstart.score import score
        return score(spark, settings, run_date, top_k=top_k)
    from coldstart.evaluate import evaluate
    return evaluate(spark, settings, run_date)


def settings_hash(settings: Settings) -> str:
    """sha256 of every setting (as sorted JSON): two nights with the same hash ran with the same settings."""
    return hashlib.sha256(json.dumps(settings.as_dict(), sort_keys=True, default=str).encode()).hexdigest()


def _vm_hwm(pid: str) -> int | None:
    """VmHWM (peak resident set of the process's own address space) in bytes from /proc, or None."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _jvm_peak_rss(spark) -> int | None:
    """VmHWM of the driver's JVM, or None without a session or /proc."""
    if spark is None:
        return None
    try:
        pid = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
    except Exception:  # noqa: BLE001 - a gauge, never a reason to fail a night
        return None
    return _vm_hwm(str(pid))


def python_peak_rss() -> int:
    """Peak resident memory of this process in bytes: VmHWM of its own address space on Linux.

    Not ``getrusage().ru_maxrss``: Linux carries that across exec, so a stage process started by a large
    parent (a benchmark, Airflow's task supervisor) would report the parent's size as its own peak. Falls
    back to ru_maxrss where /proc is missing."""
    peak = _vm_hwm("self")
    if peak is not None:
        return peak
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux, bytes on macOS: a gauge


def _executor_peaks(spark) -> tuple[int | None, int | None]:
    """The largest per-executor peaks (JVM process tree RSS, Python workers' RSS) in Spark's executor metrics.

    Spark keeps them in its status store (also with the UI off) from heartbeats and task ends, with process
    tree metrics enabled by :func:`coldstart.spark.get_session`. On a cluster the driver's own entry is left
    out; in local mode it is the only executor."""
    if spark is None:
        return None, None
    try:
        summaries = spark.sparkContext._jsc.sc().statusStore().executorList(False).iterator()
        peaks = []
        while summaries.hasNext():
            summary = summaries.next()
            metrics = summary.peakMemoryMetrics()
            if metrics.isDefined():
                peaks.append((summary.id(), metrics.get().getMetricValue("ProcessTreeJVMRSSMemory"),
                              metrics.get().getMetricValue("ProcessTreePythonRSSMemory")))
    except Exception:  # noqa: BLE001 - a gauge, never a reason to fail a night
        return None, None
    executors = [p for p in peaks if p[0] != "driver"] or peaks
    if not executors:
        return None, None
    jvm, python = max(int(p[1]) for p in executors), max(int(p[2]) for p in executors)
    return (jvm or None), (python or None)


def _record(lake, settings: Settings, night, started_at: dt.datetime, status: str, error: str | None, spark) -> None:
    """Write the stage's stage_runs and night_manifest rows (merged by run date and stage)."""
    import os

    import pyarrow as pa

    from coldstart.catalog import NIGHT_MANIFEST, STAGE_RUNS

    if spark is None:
        from pyspark.sql import SparkSession
        spark = SparkSession.getActiveSession()  # evaluate's ALS baseline may have started one
    finished_at = dt.datetime.now(dt.timezone.utc)
    run = {"run_date": night.run_date, "stage": night.stage, "started_at": started_at, "finished_at": finished_at,
           "seconds": (finished_at - started_at).total_seconds(), "status": status, "error": error,
           "spark_master": spark.sparkContext.master if spark is not None else None,
           "spark_app_id": spark.sparkContext.applicationId if spark is not None else None,
           "rows_in": night.rows_in, "rows_out": night.rows_out,
           "driver_python_peak_rss_bytes": python_peak_rss(), "driver_jvm_peak_rss_bytes": _jvm_peak_rss(spark),
           "pid": os.getpid()}
    run["executor_jvm_peak_rss_bytes"], run["executor_python_peak_rss_bytes"] = _executor_peaks(spark)
    lake.merge_bookkeeping("stage_runs", pa.Table.from_pylist([run], schema=STAGE_RUNS.schema))
    if status != "ok":
        return  # the manifest describes what a night saw when it succeeded; a failed stage keeps the last one
    version, checksum = _checkpoint_used(lake, night)
    manifest = {"run_date": night.run_date, "stage": night.stage,
                "tables_read": sorted(night.read.items()), "tables_committed": sorted(night.committed.items()),
                "as_of": sorted(night.as_of().items()), "checkpoint_version": version, "checkpoint_checksum": checksum,
                "settings_hash": settings_hash(settings), "recorded_at": finished_at}
    lake.merge_bookkeeping("night_manifest", pa.Table.from_pylist([manifest], schema=NIGHT_MANIFEST.schema))


def _checkpoint_used(lake, night) -> tuple[str | None, str | None]:
    """The registered model a stage started from: train warm-starts from D-1's, score uses D's."""
    if night.stage not in ("train", "score"):
        return None, None
    if night.stage == "train":
        mine = lake.registered_model(night.run_date)
        parent = mine.get("parent_version") if mine else None
        if not parent:
            return None, None
        rows = lake.read_arrow("model_registry", filters=[("model_version", "=", parent)]).to_pylist()
        return parent, (rows[0]["checksum"] if rows else None)
    mine = lake.registered_model(night.run_date)
    return (mine["model_version"], mine["checksum"]) if mine else (None, None)


def later_nights(settings: Settings, dates: Iterable[dt.date]) -> list[dt.date]:
    """The nights after the last of ``dates`` that the night manifest knows (what --cascade re-runs)."""
    from coldstart.lake import Lake

    dates = list(dates)
    lake = Lake.from_settings(settings)
    if not dates or not lake.exists("night_manifest"):
        return []
    known = set(lake.read_arrow("night_manifest", columns=["run_date"]).column("run_date").to_pylist())
    return sorted(d for d in known if d > max(dates))


def date_range(first: dt.date, last: dt.date) -> list[dt.date]:
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def run_days(settings: Settings, dates: Iterable[dt.date], stages: Iterable[str] = STAGES, skip: Iterable[str] = (),
             full_retrain: bool = False, top_k: int | None = None, spark=None,
             cascade: bool = False) -> dict[tuple[dt.date, str], StageResult]:
    """Run the stages in order for each date, in-process with one Spark session.

    A re-run of an old night leaves the nights after it as they were built (they keep their inputs and
    lineage); ``cascade=True`` re-runs every later night the manifest knows too, oldest first, so they
    are rebuilt on top of the re-run. :func:`check_start` checks every stage and night first. When evaluate
    ran, the HTML report is rewritten at the end (the DAG's report task does the same after a night).
    Returns each (date, stage)'s result."""
    from coldstart.spark import get_session

    dates = list(dates)
    if cascade:
        dates += later_nights(settings, dates)
    stages = [s for s in stages if s not in set(skip)]
    check_start(settings, stages, dates, top_k)
    if spark is None and any(needs_spark(s, settings) for s in stages):  # train (or evaluate) alone needs no JVM
        spark = get_session(settings)
    results: dict[tuple[dt.date, str], StageResult] = {}
    for day in dates:
        for stage in stages:
            results[(day, stage)] = run_stage(stage, settings, day, spark=spark, full_retrain=full_retrain, top_k=top_k)
    if "evaluate" in stages:  # as the DAG's report task does after its night
        from coldstart.report import write_report
        log.info("report: %s", write_report(settings))
    return results
