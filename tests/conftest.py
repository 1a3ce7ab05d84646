"""Shared fixtures: one Spark session per test session, tiny data, real components.

Airflow reads its configuration at import time, so its environment is set here, before any test
module imports it. Expensive runs (the pipeline on a tiny replay, a night through Airflow) are made
once per session and shared by the tests that read their outputs.
"""

from __future__ import annotations

import contextlib
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
    # The DAG's jobs run against the spark_default connection; the tests' is local Spark.
    "AIRFLOW_CONN_SPARK_DEFAULT": '{"conn_type": "spark", "host": "local[2]"}',
})
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
for key in [k for k in os.environ if k.startswith("COLDSTART_") and k != "COLDSTART_TASK_RETRIES"]:
    del os.environ[key]
# Two test workers share the cores: one torch thread per training (every child process reads it too).
os.environ["COLDSTART_TRAIN_THREADS"] = "1"

# `make test` runs two pytest-xdist workers (-n 2): the Airflow stack's module on one and every other test on
# the other. The stack mostly waits (scheduler loops, task start-up), so the rest runs beside it, and each
# session fixture (tiny_run, the S3 night, the cluster) is still built once, on one worker.
# The split is a scheduler rather than `xdist_group` marks: with pytest 9.2, `--dist loadgroup` silently
# stops grouping (pytest-xdist issue #1386: the group rides on the node id, which pytest no longer lets
# a plugin rewrite), and the session fixtures were then built on both workers at once.
OWN_WORKER = "tests/test_airflow_stack.py"


def work_unit(nodeid: str) -> str:
    """The worker group of a test: "airflow" for the stack's module, "main" for every other test."""
    return "airflow" if nodeid.split("::", 1)[0] == OWN_WORKER else "main"


def pytest_xdist_make_scheduler(config, log):
    """With -n and the default `--dist load`: two work units (see `work_unit`), one per worker."""
    if config.getvalue("dist") != "load":
        return None  # an explicit --dist choice is xdist's
    from xdist.scheduler import LoadScopeScheduling

    class TwoUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return TwoUnits(config, log)


START = dt.date(2024, 1, 1)
# py4j logs from __del__ at interpreter exit, after pytest closed the streams.
logging.getLogger("py4j").setLevel(logging.WARNING)


def make_settings(root: Path, **overrides):
    from coldstart.config import Settings

    values = dict(landing=str(root / "landing"), lake=str(root / "lake"), models=str(root / "models"),
                  reports=str(root / "reports"), spark_shuffle_partitions=2, train_epochs_full=2, train_epochs_warm=1,
                  model_dim=16, top_k=20, baselines=True, train_threads=1)
    values.update(overrides)
    return Settings.load(env={}, **values)


@contextlib.contextmanager
def environment(**env: str):
    """``env`` set in os.environ for the block and restored after it (pytest's MonkeyPatch, which session
    fixtures cannot take as a fixture)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


# Not the setting's default, so that test_config sees the setting (not a constant) reach the session.
SPARK_MEMORY_FRACTION = 0.35


@pytest.fixture(scope="session")
def spark():
    from coldstart.config import Settings
    from coldstart.spark import get_session

    session = get_session(Settings.load(env={}, spark_shuffle_partitions=2, spark_memory_fraction=SPARK_MEMORY_FRACTION),
                          app_name="coldstart-tests")
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


# --- a real S3 endpoint and a real standalone Spark cluster -------------------------------------------
S3_BUCKET = "coldstart"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_MOTO = """
import signal, sys, threading
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
stop.wait()
server.stop()
"""


@pytest.fixture(scope="session")
def s3_endpoint(session_dir):
    """A moto S3 server (``ThreadedMotoServer``, a real HTTP S3 API) on 127.0.0.1 at a free port, with bucket
    ``coldstart``, stopped at the end of the session.

    It runs in a child process: delta-rs holds the GIL through some blocking calls, which would stall a
    server thread in this process. The standard AWS variables point at it for the rest of the session
    (restored at the end); tests that use local paths never read them."""
    port = free_port()
    log_file = open(session_dir / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", _MOTO, str(port)], stdout=log_file, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "coldstart-test", "AWS_SECRET_ACCESS_KEY": "coldstart-test",
           "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    try:
        _wait_for(lambda: _http_ok(f"{endpoint}/moto-api/data.json"), 60, "the moto S3 server")
        with environment(**env):
            import pyarrow.fs as pafs

            pafs.S3FileSystem(access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
                              region="us-east-1", endpoint_override=f"127.0.0.1:{port}", scheme="http",
                              allow_bucket_creation=True).create_dir(S3_BUCKET)
            yield endpoint
    finally:
        _stop(proc)
        log_file.close()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 20 s; reaped either way."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def moto_enforce_auth(endpoint: str, on: bool) -> None:
    """Make the moto server check credentials (every request signed by an unknown key gets 403) or stop."""
    import urllib.request

    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0" if on else b"inf", method="POST",
                                     headers={"Content-Type": "text/plain"})  # a form body would be parsed away
    urllib.request.urlopen(request, timeout=10).close()


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def spark_cluster(session_dir):
    """A standalone Spark master and two workers (1 core, 1 GiB each) on 127.0.0.1, started with the venv's
    ``spark-class`` and stopped at the end of the session. Yields the master URL."""
    import pyspark

    spark_home = os.path.dirname(pyspark.__file__)
    spark_class = str(Path(sys.executable).parent / "spark-class")
    env = {**os.environ, "SPARK_HOME": spark_home, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(session_dir / "spark-logs"),
           "SPARK_WORKER_DIR": str(session_dir / "spark-work")}
    master_port, master_ui = free_port(), free_port()
    url = f"spark://127.0.0.1:{master_port}"
    logs = session_dir / "spark-cluster"
    logs.mkdir(exist_ok=True)
    procs = []

    def start(name: str, *args: str) -> subprocess.Popen:
        out = open(logs / f"{name}.log", "wb")
        proc = subprocess.Popen([spark_class, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
        procs.append((proc, out))
        return proc

    try:
        start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(master_port),
              "--webui-port", str(master_ui))
        _wait_for(lambda: _http_json(f"http://127.0.0.1:{master_ui}/json/") is not None, 180, "the Spark master")
        for i in (1, 2):
            start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1",
                  "--memory", "1g", "--webui-port", str(free_port()), "--work-dir", str(session_dir / f"spark-work{i}"), url)
        _wait_for(lambda: len([w for w in (_http_json(f"http://127.0.0.1:{master_ui}/json/") or {}).get("workers", [])
                               if w.get("state") == "ALIVE"]) == 2, 300, "two Spark workers")
        yield url
    finally:
        for proc, out in reversed(procs):
            _stop(proc)
            out.close()


def _http_json(url: str):
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def _wait_for(ready, timeout: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="session")
def s3_night(spark, s3_endpoint):
    """Two full nights (bootstrap day and the next, ingest -> evaluate) with landing, lake, models and reports
    all on s3:// of the moto endpoint; the replay itself is written to the bucket."""
    from coldstart.pipeline import run_days
    from coldstart.replay import replay

    root = f"s3://{S3_BUCKET}/night"
    settings = make_settings(Path("/nonexistent"), landing=f"{root}/landing", lake=f"{root}/lake",
                             models=f"{root}/models", reports=f"{root}/reports", baselines=False)
    plan = replay(settings.landing, START, days=2, users_limit=15)
    days = plan.all_days[:2]
    results = run_days(settings, days, spark=spark)
    return settings, plan, days, results


@pytest.fixture(scope="session")
def cluster_night(spark_cluster, spark, session_dir):
    """The bootstrap night of a small replay run twice on one landing zone: as ``coldstart run`` against the
    standalone cluster (a fresh driver process, Spark's event log on), and in-process on local[2], both
    training with ``train_processes=2``.
    Yields (cluster settings, local settings, day, event log folder)."""
    from coldstart.pipeline import run_days
    from coldstart.replay import replay

    root = session_dir / "cluster_night"
    # One torch thread per Python worker on both sides: a float sum's last bit may depend on how many threads
    # share it, and the cluster's tasks would otherwise get spark.task.cpus (1) against local mode's share.
    # Training on two data-parallel ranks on both sides (TorchDistributor: barrier tasks on the cluster's two
    # 1-core executors, two processes on the driver's host in local mode): the same seed and N give the same
    # checkpoint, so every table can still be compared exactly.
    base = dict(landing=str(root / "landing"), baselines=False, encoder_threads=1, train_processes=2)
    on_cluster = make_settings(root / "cluster", **base)
    on_local = make_settings(root / "local", **base)
    plan = replay(on_cluster.landing, START, days=1, users_limit=15)
    day = plan.all_days[0]
    events = root / "events"
    events.mkdir(parents=True)
    env = {**os.environ, **NIGHT_ENV, "COLDSTART_LANDING": on_cluster.landing, "COLDSTART_LAKE": on_cluster.lake,
           "COLDSTART_MODELS": on_cluster.models, "COLDSTART_REPORTS": on_cluster.reports, "COLDSTART_BASELINES": "false",
           "COLDSTART_ENCODER_THREADS": "1", "COLDSTART_TRAIN_PROCESSES": "2",
           "COLDSTART_SPARK_MASTER": spark_cluster, "COLDSTART_SPARK_DRIVER_MEMORY": "1g",
           # Spark 4 rolls and zstd-compresses event logs by default: one plain JSON file is what the test reads.
           "PYSPARK_SUBMIT_ARGS": f"--conf spark.eventLog.enabled=true --conf spark.eventLog.dir=file://{events} "
                                  "--conf spark.eventLog.compress=false --conf spark.eventLog.rolling.enabled=false "
                                  "--conf spark.executor.memory=768m --conf spark.executor.cores=1 pyspark-shell"}
    done = subprocess.run([sys.executable, "-m", "coldstart.cli", "run", "--date", day.isoformat()], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    run_days(on_local, [day], spark=spark)
    return on_cluster, on_local, day, events
