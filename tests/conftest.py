"""Shared fixtures: one Spark session per test session, tiny data, real components.

Airflow reads its configuration at import time, so its environment is set here, before any test
module imports it. Expensive runs (the pipeline on a tiny replay, a night through Airflow) are made
once per session and shared by the tests that read their outputs.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="coldstart-tests-"))

os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "SPARK_LOCAL_IP": "127.0.0.1",
    "PYSPARK_PYTHON": sys.executable,
    "PYSPARK_DRIVER_PYTHON": sys.executable,
    "AIRFLOW_HOME": str(_SESSION_DIR / "airflow"),
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__PARALLELISM": "2",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    "COLDSTART_TASK_RETRIES": "0",
})
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
for key in [k for k in os.environ if k.startswith("COLDSTART_") and k != "COLDSTART_TASK_RETRIES"]:
    del os.environ[key]

START = dt.date(2024, 1, 1)
# py4j logs from __del__ at interpreter exit, after pytest closed the streams.
logging.getLogger("py4j").setLevel(logging.WARNING)


def make_settings(root: Path, **overrides):
    from coldstart.config import Settings

    values = dict(landing=str(root / "landing"), lake=str(root / "lake"), models=str(root / "models"),
                  reports=str(root / "reports"), spark_shuffle_partitions=2, train_epochs_full=2, train_epochs_warm=1,
                  model_dim=16, top_k=20, baselines=True)
    values.update(overrides)
    return Settings.load(env={}, **values)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def spark():
    from coldstart.config import Settings
    from coldstart.spark import get_session

    session = get_session(Settings.load(env={}, spark_shuffle_partitions=2), app_name="coldstart-tests")
    yield session
    session.stop()


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path)


@pytest.fixture(scope="session")
def tiny_run(spark, session_dir):
    """The whole pipeline in-process on a tiny replay slice: bootstrap day + 2 nights."""
    from coldstart.pipeline import run_days
    from coldstart.replay import replay

    root = session_dir / "tiny_run"
    settings = make_settings(root)
    plan = replay(settings.landing, START, days=4, users_limit=25)
    days = plan.all_days[:3]
    results = run_days(settings, days, spark=spark)
    return settings, plan, days, results


@pytest.fixture(scope="session")
def airflow_db(session_dir):
    """A migrated SQLite metadata database for dag.test()."""
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True,
                   capture_output=True, env=os.environ.copy())
    return session_dir / "airflow"


# Settings of the nights run through Airflow (spark-submit jobs read them from the environment).
NIGHT_ENV = {"COLDSTART_MODEL_DIM": "16", "COLDSTART_TRAIN_EPOCHS_FULL": "2", "COLDSTART_TRAIN_EPOCHS_WARM": "1",
             "COLDSTART_TOP_K": "20", "COLDSTART_SPARK_SHUFFLE_PARTITIONS": "2"}


@pytest.fixture(scope="session")
def airflow_night(airflow_db, session_dir):
    """Bootstrap day and the next night through Airflow (dag.test), each stage a spark-submit job.

    Each night names its day in conf.run_date: dag.test runs the tasks in this process, where one
    run's conf stays in the DAG's params for the next call."""
    from airflow.dag_processing.dagbag import DagBag

    from coldstart.replay import replay

    root = session_dir / "dag_run"
    settings = make_settings(root)
    plan = replay(settings.landing, START, days=2, users_limit=15)
    env = {"COLDSTART_LANDING": settings.landing, "COLDSTART_LAKE": settings.lake, "COLDSTART_MODELS": settings.models,
           "COLDSTART_REPORTS": settings.reports, **NIGHT_ENV}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        dag = DagBag(dag_folder=str(ROOT / "dags")).dags["coldstart_nightly"]
        first, second = plan.all_days[:2]
        midnight = dt.time(tzinfo=dt.timezone.utc)
        runs = [dag.test(logical_date=dt.datetime.combine(day + dt.timedelta(days=1), midnight),
                         run_conf={"run_date": day.isoformat()}) for day in (first, second)]
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return settings, plan, runs
