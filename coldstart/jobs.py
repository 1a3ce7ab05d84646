"""Thin spark-submit entry points: args -> settings -> session -> one library call.

``jobs/<stage>.py`` calls :func:`main` with its stage name; the DAG submits those files. Only the
stages that run Spark jobs start a session (``pipeline.needs_spark``): train and score work on
Delta through delta-rs, so their job holds no Spark driver heap and no Python workers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys


def parse_args(stage: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"jobs/{stage}.py", description=f"coldstart {stage} stage for one run date")
    parser.add_argument("--run-date", required=True, type=dt.date.fromisoformat, help="YYYY-MM-DD")
    parser.add_argument("--full-retrain", action="store_true", help="train: from scratch instead of warm start")
    parser.add_argument("--top-k", type=int, default=None, help="score: list length (default: setting top_k)")
    parser.add_argument("--config", default=None, help="TOML settings file (default: $COLDSTART_CONFIG)")
    return parser.parse_args(argv)


def main(stage: str, argv: list[str] | None = None) -> int:
    from coldstart.config import Settings
    from coldstart.pipeline import needs_spark, run_stage
    from coldstart.spark import get_session

    args = parse_args(stage, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    settings = Settings.load(args.config)
    spark = get_session(settings, app_name=f"coldstart-{stage}-{args.run_date}") if needs_spark(stage) else None
    try:
        result = run_stage(stage, settings, args.run_date, spark=spark, full_retrain=args.full_retrain, top_k=args.top_k)
        logging.getLogger("coldstart.jobs").info("%s %s: %s", stage, args.run_date, result)
    finally:
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()  # evaluate's ALS baseline may have started one
        if active is not None:
            active.stop()
    return 0
