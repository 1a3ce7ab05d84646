"""Thin spark-submit entry points: args -> settings -> session -> one library call.

``jobs/<stage>.py`` calls :func:`main` with its stage name; the DAG submits those files. Only the
stages that run Spark jobs start a session (``pipeline.needs_spark``): train and score work on
Delta through delta-rs, so their job holds no Spark driver heap and no Python workers. Before that,
``pipeline.check_start`` checks the settings, arguments and tables of this stage and the night's
stages after it (so the ingest job already fails on a bad encoder path, before it commits anything).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import traceback


from coldstart.config import bounded_argument  # the same argument checks as the CLI


def parse_args(stage: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"jobs/{stage}.py", description=f"coldstart {stage} stage for one run date")
    parser.add_argument("--run-date", required=True, type=dt.date.fromisoformat, help="YYYY-MM-DD")
    parser.add_argument("--full-retrain", action="store_true", help="train: from scratch instead of warm start")
    parser.add_argument("--top-k", type=bounded_argument("top_k"), default=None, help="score: list length (default: setting top_k)")
    parser.add_argument("--config", default=None, help="TOML settings file (default: $COLDSTART_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the traceback of an error too")
    return parser.parse_args(argv)


def main(stage: str, argv: list[str] | None = None) -> int:
    """Run ``stage`` for ``--run-date``; 0 on success. An error that names what to fix prints one line
    (the traceback too with -v) and returns 2 for settings, 1 for the rest."""
    from coldstart.pipeline import user_errors
    from coldstart.config import SettingsError

    args = parse_args(stage, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return _run(stage, args)
    except user_errors() as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"jobs/{stage}.py {args.run_date}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, SettingsError) else 1


def _run(stage: str, args: argparse.Namespace) -> int:
    from coldstart.config import Settings
    from coldstart.pipeline import STAGES, check_start, needs_spark, run_stage
    from coldstart.spark import get_session

    settings = Settings.load(args.config)
    check_start(settings, STAGES[STAGES.index(stage):], [args.run_date], args.top_k)
    spark = get_session(settings, app_name=f"coldstart-{stage}-{args.run_date}") if needs_spark(stage, settings) else None
    try:
        result = run_stage(stage, settings, args.run_date, spark=spark, full_retrain=args.full_retrain, top_k=args.top_k)
        logging.getLogger("coldstart.jobs").info("%s %s: %s", stage, args.run_date, result.as_dict())
    finally:
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()  # evaluate's ALS baseline may have started one
        if active is not None:
            active.stop()
    return 0
