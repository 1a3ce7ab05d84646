"""### coldstart nightly: running it

The README says what the DAG does (stages, schedule, params, backfills). This is what an operator
needs on top, in the UI:

* **One run date per night.** `resolve_run_date` computes it once (params.run_date, else the start
  of the data interval, else the day before a manual trigger) and pushes it as its XCom; every job
  gets it as `--run-date` through its templated `application_args`, so a rendered task shows the
  exact `spark-submit` line it ran.
* **Re-running a failed night.** A night that follows a failed one fails at once in
  `wait_for_previous_night` (no retries: only re-running the failed night helps). Clear the failed
  night, let it succeed, then clear the later ones, oldest first. A re-run replaces its day's rows.
* **Re-runs rebuild nothing after them.** Each job runs as of its night (interactions up to D,
  items/users/embeddings at the versions night D's ingest and embed left, recorded in
  `night_manifest`), so clearing an old night reproduces it and the nights after it keep what they
  were built from. To rebuild them on top of the re-run (cascade), clear the range up to the last
  night (`airflow tasks clear coldstart_nightly -s D -e LAST`) or backfill it with
  `--reprocess-behavior completed`. Two runs of one stage and date at once (a retry next to a manual
  trigger) cannot both commit: the second fails with `ConcurrentWriteError` and writes nothing.
* **Backfills** need `--reprocess-behavior` (the stages depend on their past); `--run-backwards` is
  refused. Airflow applies a backfill's own `--max-active-runs` (default 10) instead of the DAG's 1:
  `wait_for_previous_night` still keeps its nights in order. Manual runs without a logical date are
  not chained to anything.
* **Waiting.** Both sensors reschedule (they free their worker slot between pokes, every 60 s).
  `wait_for_landing` gives up after setting `landing_timeout_minutes`, `wait_for_previous_night`
  after a day.
* **skip_stages** skips those jobs; the ones after still run (trigger rule `none_failed`), on what the
  lake already holds for that day.
* **report** rewrites the HTML report (setting `reports`) from the evaluation tables after every
  night, in the worker itself (no Spark).
* **Spark.** Jobs use the `spark_default` connection; configure it (`AIRFLOW_CONN_SPARK_DEFAULT`, as
  docker/compose.yaml, the demo and the tests do): without it the Spark provider falls back to YARN.
  A job killed mid-write leaves no partial rows (one Delta commit per table), so its retry starts clean.

Only light imports at module level: the DAG file parses in well under a second.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, CronDataIntervalTimetable, Param, chain, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from coldstart.config import Settings, SettingsError
from coldstart.orchestration import spark_environment, stage_arguments
from coldstart.pipeline import STAGES

JOBS = Path(__file__).resolve().parent.parent / "jobs"
SETTINGS = Settings.load()
RUN_DATE = "ti.xcom_pull(task_ids='resolve_run_date')"


def _timetable(schedule: str) -> CronDataIntervalTimetable:
    timetable = CronDataIntervalTimetable(schedule, timezone="UTC")
    try:
        timetable.validate()
    except Exception as exc:  # noqa: BLE001 - name the setting, whatever the cron parser raised
        raise SettingsError(f"COLDSTART_SCHEDULE={schedule!r}: not a cron expression or preset ({exc})") from None
    return timetable


class StageOperator(SparkSubmitOperator):
    """spark-submit jobs/<stage>.py --run-date D (arguments and environment rendered at run time),
    skippable by params.skip_stages."""

    def __init__(self, *, stage: str, **kwargs):
        # The driver's JVM is started by spark-submit, before the job's session builder runs, so
        # spark.driver.memory only takes effect when it is passed here.
        super().__init__(task_id=stage, application=str(JOBS / f"{stage}.py"), name=f"coldstart-{stage}",
                         conn_id="spark_default", driver_memory=SETTINGS.spark_driver_memory,
                         # templates, rendered as native objects (a list, a dict) at run time
                         application_args=f"{{{{ stage_arguments({stage!r}, {RUN_DATE}, params) }}}}",  # type: ignore[arg-type]
                         env_vars="{{ spark_environment() }}", **kwargs)  # type: ignore[arg-type]
        self.stage = stage

    def execute(self, context):
        if self.stage in (context["params"].get("skip_stages") or []):
            raise AirflowSkipException(f"{self.stage} skipped by params.skip_stages")
        return super().execute(context)


def _notify(context):
    from coldstart.orchestration import notify_failure
    notify_failure(context)


with DAG(
    dag_id="coldstart_nightly",
    description="Cold-start recommendations: ingest, embed new entities, warm-start train, score, evaluate",
    schedule=_timetable(SETTINGS.schedule),
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,  # missed nights are run on purpose, with a backfill
    max_active_runs=1,  # each night warm-starts from the one before
    default_args={
        "retries": SETTINGS.task_retries,
        "retry_delay": dt.timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(minutes=30),
        "on_failure_callback": _notify,
    },
    params={
        "run_date": Param(None, type=["null", "string"], format="date", pattern=r"^\d{4}-\d{2}-\d{2}$",
                          description="Day to process (YYYY-MM-DD); default: the run's data interval, "
                                      "or the day before a manual trigger"),
        "full_retrain": Param(False, type="boolean", description="Train from scratch instead of from D-1"),
        "top_k": Param(None, type=["null", "integer"], minimum=1, maximum=1000,
                       description="List length (default: setting top_k)"),
        "skip_stages": Param([], type="array", items={"type": "string", "enum": list(STAGES)}, uniqueItems=True,
                             description="Stages to skip"),
    },
    # The jobs' arguments and environment are rendered in the worker, when the task runs.
    user_defined_macros={"stage_arguments": stage_arguments, "spark_environment": spark_environment},
    render_template_as_native_obj=True,
    tags=["coldstart"],
    doc_md=__doc__,
) as dag:

    @task
    def resolve_run_date(**context) -> str:
        from coldstart.orchestration import resolve_run_date as resolve

        dag_run = context["dag_run"]
        return resolve(context["params"], dag_run.data_interval_start, dag_run.run_after).isoformat()

    @task.sensor(poke_interval=60, timeout=dt.timedelta(days=1).total_seconds(), mode="reschedule")
    def wait_for_previous_night(**context) -> bool:
        from coldstart.orchestration import PreviousNightFailed, previous_night_done

        try:
            return previous_night_done(context["ti"].get_previous_dagrun())
        except PreviousNightFailed as exc:
            raise AirflowFailException(str(exc)) from None  # no retries: only re-running that night helps

    @task.sensor(poke_interval=60, timeout=SETTINGS.landing_timeout_minutes * 60, mode="reschedule")
    def wait_for_landing(run_date: str) -> bool:
        from coldstart.orchestration import landing_ready

        return landing_ready(run_date)

    @task(trigger_rule="none_failed")
    def report() -> str:
        """Rewrite the HTML report from the evaluation tables."""
        from coldstart.report import write_report

        return str(write_report(Settings.load()))

    run_date = resolve_run_date()
    landing = wait_for_landing(run_date)  # type: ignore[arg-type]  # an XComArg: the run date at run time
    run_date >> wait_for_previous_night() >> landing
    chain(landing, *[StageOperator(stage=stage, trigger_rule="none_failed", depends_on_past=True) for stage in STAGES],
          report())
