"""What the Airflow DAG needs at run time, kept out of the DAG file so that parsing it stays light.

Nothing here imports Spark, torch or pandas at module level.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import urllib.request

log = logging.getLogger("coldstart.orchestration")



class PreviousNightFailed(RuntimeError):
    """The run before this one (by logical date) failed: this night must not run before it is re-run."""


def resolve_run_date(params: dict, data_interval_start, run_after) -> dt.date:
    """The night's run date: params.run_date when given, else the (UTC) day its data interval starts
    (scheduled runs, backfills, manual runs given a logical date), else the day before run_after
    (manual triggers with logical_date None have no data interval)."""
    text = (params or {}).get("run_date")
    if text:
        try:
            return dt.date.fromisoformat(str(text))
        except ValueError:
            raise ValueError(f"param run_date={text!r} is not a date (YYYY-MM-DD)") from None
    if data_interval_start is not None:
        return data_interval_start.astimezone(dt.timezone.utc).date()
    if run_after is None:
        raise ValueError("cannot derive the run date: no run_date param, data interval or run_after")
    return run_after.astimezone(dt.timezone.utc).date() - dt.timedelta(days=1)


def previous_night_done(previous_run) -> bool:
    """Whether the run before this one (by logical date; None when there is none) lets this night start:
    True once it succeeded, False while it is queued or running, PreviousNightFailed when it failed."""
    if previous_run is None:
        return True
    state = getattr(previous_run.state, "value", previous_run.state)
    if state == "success":
        return True
    if state == "failed":
        run_date = resolve_run_date(previous_run.conf or {}, previous_run.data_interval_start, previous_run.run_after)
        raise PreviousNightFailed(
            f"previous night {previous_run.run_id} (run date {run_date}) failed: re-run it first (clear it), "
            "then this one; nights chain (train warm-starts from the day before)")
    log.info("waiting for the previous night %s (%s) to finish", previous_run.run_id, state)
    return False


def stage_arguments(stage: str, run_date: str, params) -> list[str]:
    """The job's command line after ``jobs/<stage>.py``: the run date, and the params that concern the stage."""
    args = ["--run-date", str(run_date)]
    if stage == "train" and params.get("full_retrain"):
        args.append("--full-retrain")
    if stage == "score" and params.get("top_k"):
        args += ["--top-k", str(int(params["top_k"]))]
    return args


def spark_environment() -> dict[str, str]:
    """Environment for spark-submit: this interpreter for the Python workers, the venv's bin on PATH (where
    spark-submit itself is found), and every COLDSTART_* setting passed through."""
    bin_dir = os.path.dirname(sys.executable)
    env = {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    env.update({k: v for k, v in os.environ.items() if k.startswith("COLDSTART_")})
    return env


def landing_ready(run_date: str) -> bool:
    """The sensor's poke: True once ``interactions/date=D/_SUCCESS`` exists in the landing zone (local or
    ``s3://``). A store that cannot be reached raises (StorageError/OSError): the task fails and Airflow's
    retries take over, instead of poking a broken endpoint until the timeout."""
    from coldstart.config import Settings
    from coldstart.landing import is_complete

    ready = is_complete(Settings.load().landing, "interactions", dt.date.fromisoformat(run_date))
    if not ready:
        log.info("waiting for the interactions of %s to land", run_date)
    return ready


def notify_failure(context) -> None:
    """on_failure_callback: log the failure and, when COLDSTART_WEBHOOK_URL is set, post it as JSON."""
    from coldstart.config import Settings

    ti = context.get("task_instance") or context.get("ti")
    run_id = getattr(context.get("dag_run"), "run_id", None)
    payload = {"dag_id": getattr(ti, "dag_id", None), "run_id": run_id, "task_id": getattr(ti, "task_id", None),
               "run_date": _resolved_run_date(ti), "try_number": getattr(ti, "try_number", None),
               "error": str(context.get("exception"))}
    log.error("coldstart task failed: %s", payload)
    url = Settings.load().webhook_url
    if url:
        request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except OSError as exc:
            log.error("failure webhook %s not reached: %s", url, exc)


def _resolved_run_date(ti) -> str | None:
    try:
        return ti.xcom_pull(task_ids="resolve_run_date")
    except Exception:  # noqa: BLE001 - a failure report must go out even when the run date is unknown
        return None
