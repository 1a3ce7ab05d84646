"""The nightly DAG: its shape, run-date resolution, parameter validation, two nights through Airflow
(dag.test), failures (webhook, a broken chain) and a spark-submit job killed in the middle of a write."""

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from coldstart.lake import Lake
from coldstart.pipeline import STAGES
from tests.conftest import ROOT, START, environment, make_settings

DAGS = ROOT / "dags"
UTC = dt.timezone.utc


def _dagbag(**env):
    """Parse dags/ with COLDSTART_* settings in the environment (the DAG reads them at parse time)."""
    from airflow.dag_processing.dagbag import DagBag

    with environment(**env):
        return DagBag(dag_folder=str(DAGS))


def test_dagbag_imports_without_errors():
    from airflow.sdk import CronDataIntervalTimetable

    bag = _dagbag()
    assert bag.import_errors == {}
    dag = bag.dags["coldstart_nightly"]
    assert [t.task_id for t in dag.topological_sort()] == [
        "resolve_run_date", "wait_for_previous_night", "wait_for_landing", *STAGES, "report"]
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert isinstance(dag.timetable, CronDataIntervalTimetable) and dag.timetable.expression == "0 0 * * *"
    assert set(dag.params.keys()) == {"run_date", "full_retrain", "top_k", "skip_stages"}
    for stage in STAGES:
        op = dag.get_task(stage)
        assert type(op).__name__ == "StageOperator" and op._conn_id == "spark_default"
        assert op.application == str(ROOT / "jobs" / f"{stage}.py")
        assert op.depends_on_past and op.retry_exponential_backoff and op.on_failure_callback
    assert dag.get_task("wait_for_landing").timeout == 360 * 60  # setting landing_timeout_minutes


def test_schedule_and_landing_timeout_come_from_settings():
    bag = _dagbag(COLDSTART_SCHEDULE="30 2 * * *", COLDSTART_LANDING_TIMEOUT_MINUTES="5", COLDSTART_TASK_RETRIES="3")
    dag = bag.dags["coldstart_nightly"]
    assert dag.timetable.expression == "30 2 * * *"
    assert dag.get_task("wait_for_landing").timeout == 300 and dag.get_task("train").retries == 3
    broken = _dagbag(COLDSTART_SCHEDULE="every night")
    [error] = broken.import_errors.values()
    assert "COLDSTART_SCHEDULE='every night'" in error


def test_dag_file_imports_nothing_heavy():
    code = ("import sys, runpy; runpy.run_path(sys.argv[1]); "
            "heavy = [m for m in ('pyspark', 'torch', 'pandas', 'transformers', 'deltalake') if m in sys.modules]; "
            "print('HEAVY=' + ','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code, str(DAGS / "coldstart_nightly.py")], capture_output=True,
                         text=True, env=os.environ.copy(), check=True)
    marker = [line for line in out.stdout.splitlines() if line.startswith("HEAVY=")]
    assert marker == ["HEAVY="], marker


def test_run_date_resolution():
    from coldstart.orchestration import resolve_run_date

    start = dt.datetime(2024, 5, 1, 0, 0, tzinfo=UTC)  # data interval [May 1, May 2): scheduled at May 2 00:00
    triggered = dt.datetime(2024, 5, 2, 9, 30, tzinfo=UTC)
    assert resolve_run_date({"run_date": "2024-04-01"}, start, triggered) == dt.date(2024, 4, 1)
    assert resolve_run_date({}, start, triggered) == dt.date(2024, 5, 1)  # scheduled or backfill
    assert resolve_run_date({"run_date": None}, None, triggered) == dt.date(2024, 5, 1)  # manual, logical_date null
    paris = dt.timezone(dt.timedelta(hours=2))
    assert resolve_run_date({}, dt.datetime(2024, 5, 1, 1, 0, tzinfo=paris), None) == dt.date(2024, 4, 30)  # UTC day
    with pytest.raises(ValueError, match="run_date"):
        resolve_run_date({"run_date": "May 1st"}, None, triggered)


def test_timetable_maps_backfill_dates_to_run_dates():
    """A backfill from A to B creates one run per day whose data interval starts on that day."""
    import pendulum
    from airflow.serialization.serialized_objects import DagSerialization

    # the serialised DAG is what the scheduler and `airflow backfill create` use
    dag = DagSerialization.from_dict(DagSerialization.to_dict(_dagbag().dags["coldstart_nightly"]))
    infos = list(dag.iter_dagrun_infos_between(pendulum.datetime(2024, 1, 1), pendulum.datetime(2024, 1, 3)))
    assert [i.data_interval.start.date().isoformat() for i in infos] == ["2024-01-01", "2024-01-02", "2024-01-03"]
    manual = dag.timetable.infer_manual_data_interval(run_after=pendulum.datetime(2024, 5, 2, 23, 59))
    assert manual.start.date() == dt.date(2024, 5, 1)  # a manual logical date processes the day before it


def test_previous_night_gate():
    from coldstart.orchestration import PreviousNightFailed, previous_night_done

    def run(state):
        return SimpleNamespace(run_id="scheduled__2024-01-01", state=state, conf={},
                               data_interval_start=dt.datetime(2024, 1, 1, tzinfo=UTC), run_after=None)

    assert previous_night_done(None) is True  # the first night
    assert previous_night_done(run("success")) is True
    assert previous_night_done(run("running")) is False and previous_night_done(run("queued")) is False
    with pytest.raises(PreviousNightFailed, match=r"scheduled__2024-01-01 \(run date 2024-01-01\) failed"):
        previous_night_done(run("failed"))


def test_a_bad_run_date_param_refuses_the_run(airflow_db):
    from airflow.sdk.exceptions import ParamValidationError

    dag = _dagbag().dags["coldstart_nightly"]
    for bad in ("2024-02-30", "20240101", "yesterday"):
        with pytest.raises(ParamValidationError, match="run_date"):
            dag.test(logical_date=dt.datetime(2099, 6, 2, tzinfo=UTC), run_conf={"run_date": bad})
    with pytest.raises(ParamValidationError, match="skip_stages"):
        dag.test(logical_date=dt.datetime(2099, 6, 2, tzinfo=UTC), run_conf={"skip_stages": ["inegst"]})


# --- failures ----------------------------------------------------------------------------------
@pytest.fixture
def webhook():
    """A tiny HTTP server on 127.0.0.1 that records the JSON bodies posted to it."""
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/coldstart-alerts", received
    server.shutdown()
    server.server_close()


def test_a_failed_night_is_posted_to_the_webhook_and_stops_the_next(airflow_db, webhook, tmp_path, caplog, monkeypatch):
    """Night 1's landing never arrives (sensor timeout 0): it fails and is reported. Night 2 then fails
    at once, naming night 1, before any Spark job runs. Far-future dates keep other tests' runs apart;
    a logical date L given to a manual run processes the day before L."""
    url, received = webhook
    env = {"COLDSTART_LANDING": str(tmp_path / "landing"), "COLDSTART_LAKE": str(tmp_path / "lake"),
           "COLDSTART_MODELS": str(tmp_path / "models"), "COLDSTART_LANDING_TIMEOUT_MINUTES": "0",
           "COLDSTART_WEBHOOK_URL": url}
    for key, value in env.items():  # the callback reads webhook_url at failure time, too
        monkeypatch.setenv(key, value)
    dag = _dagbag().dags["coldstart_nightly"]
    first = dag.test(logical_date=dt.datetime(2099, 1, 1, tzinfo=UTC))
    second = dag.test(logical_date=dt.datetime(2099, 1, 2, tzinfo=UTC))

    assert first.state == "failed" and second.state == "failed"
    assert [(r["run_id"], r["task_id"], r["run_date"]) for r in received] == [
        (first.run_id, "wait_for_landing", "2098-12-31"), (second.run_id, "wait_for_previous_night", "2099-01-01")]
    assert "timed out" in received[0]["error"]
    assert f"previous night {first.run_id} (run date 2098-12-31) failed" in received[1]["error"]
    assert all(r["dag_id"] == "coldstart_nightly" for r in received)
    states = {ti.task_id: ti.state for ti in second.get_task_instances()}
    assert all(states[stage] in (None, "upstream_failed") for stage in STAGES), states  # no Spark job started
    assert "coldstart task failed" in caplog.text  # logged as well as posted


@pytest.mark.slow
def test_a_killed_spark_job_leaves_no_partial_write_and_its_rerun_succeeds(spark, tmp_path):
    """SIGKILL a spark-submit ingest job once its executors have started writing Parquet into the
    interactions table: the table keeps its version and rows (the files are never committed), and
    a re-run of the day commits exactly its rows."""
    from coldstart.orchestration import spark_environment
    from coldstart.pipeline import run_stage
    from coldstart.replay import replay

    settings = make_settings(tmp_path)
    plan = replay(settings.landing, START, days=1, users_limit=10)
    first, second = plan.all_days[:2]
    run_stage("ingest", settings, first, spark=spark)
    lake = Lake.from_settings(settings)
    version, rows = lake.version("interactions"), lake.read_pandas("interactions")
    partition = Path(settings.lake) / "interactions" / f"run_date={second.isoformat()}"

    env = {**os.environ, **spark_environment(), "COLDSTART_LANDING": settings.landing, "COLDSTART_LAKE": settings.lake,
           "COLDSTART_MODELS": settings.models}
    job = subprocess.Popen([str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]",
                            str(ROOT / "jobs" / "ingest.py"), "--run-date", second.isoformat()],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not any(partition.glob("batch-*")) and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert job.poll() is None, "the ingest job ended before it started writing:\n" + job.stdout.read().decode()[-3000:]
        os.killpg(job.pid, signal.SIGKILL)  # spark-submit, its JVM and the Python workers
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL
    assert any(partition.glob("batch-*"))  # the write had started: its files are on disk...
    assert lake.version("interactions") == version  # ...but were never committed
    after = lake.read_pandas("interactions")
    assert len(after) == len(rows) and set(after.event_id) == set(rows.event_id)
    assert lake.read_pandas("ingest_audit", filters=[("run_date", "=", second)]).empty

    audit = run_stage("ingest", settings, second, spark=spark)
    day = lake.read_pandas("interactions", filters=[("run_date", "=", second)])
    assert len(day) == audit.sources["interactions"].rows_accepted > 0 and day.event_id.is_unique
    assert lake.version("interactions") == version + 1  # one commit for the re-run
