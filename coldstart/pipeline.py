"""The stages in order, and one entry point per stage shared by the CLI, the jobs and the DAG."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Iterable

from coldstart.config import Settings

log = logging.getLogger("coldstart.pipeline")

STAGES = ("ingest", "embed", "train", "score", "evaluate")
# Stages that run Spark jobs. The others read and write Delta through delta-rs; evaluate starts a
# session itself only when the ALS baseline needs one.
SPARK_STAGES = ("ingest", "embed")


def needs_spark(stage: str) -> bool:
    return stage in SPARK_STAGES


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


def run_stage(stage: str, settings: Settings, run_date: dt.date, spark=None, full_retrain: bool = False,
              top_k: int | None = None) -> dict:
    """Run one stage for one run date (idempotent for that date). Every object-store location is checked
    first (:func:`check_storage`)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    check_storage(settings)
    if spark is None and needs_spark(stage):
        from coldstart.spark import get_session
        spark = get_session(settings, app_name=f"coldstart-{stage}")
    started = time.perf_counter()
    log.info("=== %s %s ===", stage, run_date)
    if stage == "ingest":
        from coldstart.ingest import ingest
        result = ingest(spark, settings, run_date)
    elif stage == "embed":
        from coldstart.embed import embed
        result = embed(spark, settings, run_date)
    elif stage == "train":
        from coldstart.train import train
        result = train(spark, settings, run_date, full_retrain=full_retrain)
    elif stage == "score":
        from coldstart.score import score
        result = score(spark, settings, run_date, top_k=top_k)
    else:
        from coldstart.evaluate import evaluate
        result = evaluate(spark, settings, run_date)
    log.info("=== %s %s done in %.1f s ===", stage, run_date, time.perf_counter() - started)
    return result


def date_range(first: dt.date, last: dt.date) -> list[dt.date]:
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def run_days(settings: Settings, dates: Iterable[dt.date], stages: Iterable[str] = STAGES, skip: Iterable[str] = (),
             full_retrain: bool = False, top_k: int | None = None, spark=None) -> dict:
    """Run the stages in order for each date, in-process with one Spark session."""
    from coldstart.spark import get_session

    spark = spark or get_session(settings)
    stages = [s for s in stages if s not in set(skip)]
    results = {}
    for day in dates:
        for stage in stages:
            results[(day, stage)] = run_stage(stage, settings, day, spark=spark, full_retrain=full_retrain, top_k=top_k)
    return results
