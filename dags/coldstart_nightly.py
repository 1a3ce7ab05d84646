"""coldstart nightly: ingest -> embed -> train (warm from D-1) -> score -> evaluate, one Spark job each.

A scheduled run at midnight of D+1 processes day D. Manual triggers (UI/REST, where logical_date is
None) process the day before run_after, or params.run_date. The run date is resolved once, by the
first task, and passed to every job explicitly. Only light imports at module level.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import DAG, Param, task
from airflow.sdk.exceptions import AirflowSkipException

from coldstart.config import Settings

STAGES = ("ingest", "embed", "train", "score", "evaluate")
JOBS = Path(__file__).resolve().parent.parent / "jobs"
SETTINGS = Settings.load()


class StageOperator(SparkSubmitOperator):
    """spark-submit jobs/<stage>.py --run-date D, skippable by params.skip_stages."""

    def __init__(self, *, stage: str, **kwargs):
        super().__init__(task_id=stage, application=str(JOBS / f"{stage}.py"), name=f"coldstart-{stage}",
                         conn_id="spark_default", **kwargs)
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


def _landing_ready(ti) -> bool:
    from coldstart.orchestration import landing_ready
    return landing_ready(ti.xcom_pull(task_ids="resolve_run_date"))


def _notify(context):
    from coldstart.orchestration import notify_failure
    notify_failure(context)


with DAG(
    dag_id="coldstart_nightly",
    description="Cold-start recommendations: ingest, embed new entities, warm-start train, score, evaluate",
    schedule=SETTINGS.schedule,
    start_date=dt.datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,  # each night warm-starts from the one before
    default_args={
        "retries": SETTINGS.task_retries,
        "retry_delay": dt.timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(minutes=30),
        "on_failure_callback": _notify,
    },
    params={
        "run_date": Param(None, type=["null", "string"], format="date",
                          description="Day to process (YYYY-MM-DD); default: the day before the run"),
        "full_retrain": Param(False, type="boolean", description="Train from scratch instead of from D-1"),
        "top_k": Param(None, type=["null", "integer"], minimum=1, maximum=1000, description="List length"),
        "skip_stages": Param([], type="array", items={"type": "string", "enum": list(STAGES)},
                             description="Stages to skip"),
    },
    tags=["coldstart"],
    doc_md=__doc__,
) as dag:

    @task
    def resolve_run_date(**context) -> str:
        from coldstart.orchestration import resolve_run_date as resolve

        dag_run = context["dag_run"]
        return resolve(context["params"], dag_run.logical_date, dag_run.run_after).isoformat()

    run_date = resolve_run_date()

    wait_for_landing = PythonSensor(
        task_id="wait_for_landing",
        python_callable=_landing_ready,
        poke_interval=60,
        timeout=SETTINGS.landing_timeout_minutes * 60,
        mode="reschedule",
    )
    previous = wait_for_landing
    run_date >> wait_for_landing
    for stage in STAGES:
        op = StageOperator(stage=stage, trigger_rule="none_failed")
        previous >> op
        previous = op
