"""### coldstart nightly

`ingest → embed → train (warm from D-1) → score → evaluate`, each stage one `spark-submit` job
(`jobs/<stage>.py --run-date D`) against the `spark_default` connection (`local[2]` when none is
configured).

**Which day a run processes (its run date D).** The first task resolves it once and every job gets
it explicitly (`--run-date D`):

* `params.run_date` (YYYY-MM-DD) when given: any run can be pointed at any day;
* else the start of the run's data interval. The schedule (setting `schedule`, default `@daily`, UTC)
  is a data-interval timetable: the run at midnight of D+1 covers [D, D+1) and processes **D**;
* a **backfill** processes exactly the days of its range:
  `airflow backfill create --dag-id coldstart_nightly --from-date 2024-01-01 --to-date 2024-01-03
  --reprocess-behavior failed --max-active-runs 1` runs the nights of Jan 1, 2 and 3, oldest first.
  `--reprocess-behavior` is required (the stages depend on their past), `--run-backwards` is refused;
* a **manual** run (UI "Trigger", or `POST /api/v2/dags/coldstart_nightly/dagRuns` with
  `logical_date: null`) processes `conf.run_date`, else the day before it was triggered.

**Nights chain.** Train warm-starts from the checkpoint of D-1 and ingest deduplicates against
earlier days, so nights run one at a time, oldest first: `max_active_runs=1`, every stage has
`depends_on_past`, and `wait_for_previous_night` holds a night until the run with the previous
logical date has finished. When that run failed, this one fails at once, naming it (and so does every
later one): clear (re-run) the failed night and then the ones after it; a re-run replaces its day's
rows.

**Re-runs.** Each job runs as of its night (interactions up to D, items/users/embeddings at the
versions night D's ingest and embed left, recorded in `night_manifest`), so clearing an old night
reproduces it, and the nights after it keep what they were built from. To rebuild them on top of
the re-run (cascade), clear the range up to the last night (`airflow tasks clear coldstart_nightly
-s D -e LAST`) or backfill it with `--reprocess-behavior completed`. Two runs of one stage and date
at once (a retry next to a manual trigger) cannot both commit: the second fails with
`ConcurrentWriteError` and writes nothing. This also serialises backfills, whose own `--max-active-runs` (default 10) Airflow applies
instead of the DAG's. Manual runs without a logical date are not chained: they run the day asked for.

**Params** (manual triggers; validated, a bad value refuses the trigger): `run_date`,
`full_retrain` (train from scratch instead of from D-1), `top_k` (list length), `skip_stages`.

**Failures.** Every task retries (setting `task_retries`) with exponential backoff; a final failure
is logged and, when the setting `webhook_url` is set, posted there as JSON (dag, run, task, run date,
error). `wait_for_landing` waits for the `_SUCCESS` marker of `interactions/date=D/` for at most
`landing_timeout_minutes`. Each job writes its tables in single Delta commits, so a killed job
leaves no partial rows and its re-run succeeds.

Only light imports at module level: the DAG file parses in well under a second.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import DAG, CronDataIntervalTimetable, Param, chain, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from coldstart.config import Settings, SettingsError

STAGES = ("ingest", "embed", "train", "score", "evaluate")
JOBS = Path(__file__).resolve().parent.parent / "jobs"
SETTINGS = Settings.load()


def _timetable(schedule: str) -> CronDataIntervalTimetable:
    timetable = CronDataIntervalTimetable(schedule, timezone="UTC")
    try:
        timetable.validate()
    except Exception as exc:  # noqa: BLE001 - name the setting, whatever the cron parser raised
        raise SettingsError(f"COLDSTART_SCHEDULE={schedule!r}: not a cron expression or preset ({exc})") from None
    return timetable


class StageOperator(SparkSubmitOperator):
    """spark-submit jobs/<stage>.py --run-date D, skippable by params.skip_stages."""

    def __init__(self, *, stage: str, **kwargs):
        # The driver's JVM is started by spark-submit, before the job's session builder runs, so
        # spark.driver.memory only takes effect when it is passed here.
        super().__init__(task_id=stage, application=str(JOBS / f"{stage}.py"), name=f"coldstart-{stage}",
                         conn_id="spark_default", driver_memory=SETTINGS.spark_driver_memory, **kwargs)
        self.stage = stage

    def execute(self, context):
        from coldstart.orchestration import ensure_spark_connection, spark_environment, stage_arguments

        params = context["params"]
        if self.stage in (params.get("skip_stages") or []):
            raise AirflowSkipException(f"{self.stage} skipped by params.skip_stages")
        run_date = context["ti"].xcom_pull(task_ids="resolve_run_date")
        self.application_args = stage_arguments(self.stage, run_date, params)
        self.env_vars = spark_environment()
        ensure_spark_connection(self._conn_id)
        self._hook = None  # built from the attributes above at execute time
        return super().execute(context)


def _previous_night_done(ti) -> bool:
    from coldstart.orchestration import PreviousNightFailed, previous_night_done

    try:
        return previous_night_done(ti.get_previous_dagrun())
    except PreviousNightFailed as exc:
        raise AirflowFailException(str(exc)) from None  # no retries: only re-running that night helps


def _landing_ready(ti) -> bool:
    from coldstart.orchestration import landing_ready
    return landing_ready(ti.xcom_pull(task_ids="resolve_run_date"))


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
    tags=["coldstart"],
    doc_md=__doc__,
) as dag:

    @task
    def resolve_run_date(**context) -> str:
        from coldstart.orchestration import resolve_run_date as resolve

        dag_run = context["dag_run"]
        return resolve(context["params"], dag_run.data_interval_start, dag_run.run_after).isoformat()

    run_date = resolve_run_date()

    wait_for_previous_night = PythonSensor(
        task_id="wait_for_previous_night",
        python_callable=_previous_night_done,
        poke_interval=60,
        timeout=dt.timedelta(days=1).total_seconds(),
        mode="reschedule",
    )
    wait_for_landing = PythonSensor(
        task_id="wait_for_landing",
        python_callable=_landing_ready,
        poke_interval=60,
        timeout=SETTINGS.landing_timeout_minutes * 60,
        mode="reschedule",
    )
    run_date >> wait_for_previous_night >> wait_for_landing
    chain(wait_for_landing, *[StageOperator(stage=stage, trigger_rule="none_failed", depends_on_past=True)
                              for stage in STAGES])
