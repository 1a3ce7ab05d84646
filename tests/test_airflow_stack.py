"""The DAG on a real Airflow stack, as users run it: api-server, scheduler and dag-processor on
127.0.0.1 (LocalExecutor, parallelism 1, SQLite metadata), started here and torn down even on failure.

* a manual night through the authenticated REST API (simple auth manager, JWT from /auth/token):
  unpause, trigger with logical_date null and conf.run_date, poll to success, read the tables;
* a backfill (`airflow backfill create`, executed by the running scheduler) of the second night, after
  the manual first, gives the same tables as the same two nights run one by one through the stage calls
  the jobs make;
* a backfill of the first night after the second (reprocessing a completed night) gives its tables back.

Three nights in all go through the stack (each costs minutes of scheduler loops and job start-up, and this
module is the longest of the suite's two workers): the manual night is also the backfill's first night.

The scheduler's own cron runs are switched off (`use_job_schedule=False`): unpausing would otherwise
start today's scheduled night, which waits hours for a landing that never comes and, with
max_active_runs=1, holds back the runs under test.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from coldstart.lake import Lake
from tests.conftest import NIGHT_ENV, ROOT, START, make_settings

pytestmark = pytest.mark.airflow

AIRFLOW = str(Path(sys.executable).parent / "airflow")
DAG_ID = "coldstart_nightly"
NIGHT_TIMEOUT_S = 900  # one night is ~90 s on an idle 2-core machine; shared machines are much slower
AUDIT_COLUMNS = {"ingested_at", "created_at", "checkpoint_uri"}  # wall clock, or where this deployment keeps files


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AirflowStack:
    """Airflow processes in their own process groups, and a small authenticated REST client."""

    def __init__(self, root: Path, settings):
        self.root = root
        self.home = root / "airflow"
        self.home.mkdir(parents=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.user, self.password = "coldstart", secrets.token_hex(8)
        passwords = self.home / "passwords.json"
        passwords.write_text(json.dumps({self.user: self.password}))
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "1",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.user}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "COLDSTART_LANDING": settings.landing, "COLDSTART_LAKE": settings.lake, "COLDSTART_MODELS": settings.models,
            "COLDSTART_REPORTS": settings.reports, **NIGHT_ENV,
        }
        self.processes: dict[str, subprocess.Popen] = {}
        self.token: str | None = None

    # --- processes ---------------------------------------------------------------------------
    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def start(self) -> None:
        migrated = self.airflow("db", "migrate")
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        for name, args in (("api-server", ["api-server", "--host", "127.0.0.1", "--port", str(self.port)]),
                           ("dag-processor", ["dag-processor"]), ("scheduler", ["scheduler"])):
            log = open(self.home / f"{name}.log", "w")
            self.processes[name] = subprocess.Popen([AIRFLOW, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                    start_new_session=True)  # own process group: killed as one
        self._wait(lambda: self._healthy(), 180, "the api-server to answer /api/v2/monitor/health")
        self.token = self.login()

    def stop(self) -> None:
        """Terminate every process group started here (task runners and spark-submit children included)."""
        import psutil

        everything = []
        for proc in self.processes.values():
            try:
                everything += psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            for proc in self.processes.values():
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
            for child in everything:
                try:
                    child.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(p.poll() is None for p in self.processes.values()):
                time.sleep(0.5)
        for proc in self.processes.values():
            proc.wait(timeout=5)

    def logs(self) -> str:
        """The tail of every process log and task log, for a failing test's report."""
        parts = []
        for path in sorted(self.home.rglob("*.log")):
            text = path.read_text(errors="replace")
            parts.append(f"===== {path.relative_to(self.home)} =====\n{text[-4000:]}")
        return "\n".join(parts)[-40000:]

    @staticmethod
    def _wait(ready, timeout: float, what: str, every: float = 2.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = ready()
            if value:
                return value
            time.sleep(every)
        raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")

    # --- REST ----------------------------------------------------------------------------------
    def _healthy(self) -> bool:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}:\n{self.logs()}")
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def login(self) -> str:
        status, body = self.request("POST", "/auth/token", {"username": self.user, "password": self.password},
                                    auth=False)
        assert status == 201, (status, body)
        return body["access_token"]

    def request(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def wait_for_dag(self) -> dict:
        """The dag-processor has parsed the DAG file and serialised it."""
        def parsed():
            status, body = self.request("GET", f"/api/v2/dags/{DAG_ID}")
            return body if status == 200 else None
        return self._wait(parsed, 240, f"the dag-processor to parse {DAG_ID}")

    def wait_for_runs(self, run_ids_or_type: list[str] | str, count: int = 1) -> list[dict]:
        """Poll until the runs (given by id, or all runs of a run type) are finished; fail fast on a failed one."""
        def finished():
            self._healthy()
            if isinstance(run_ids_or_type, str):
                status, body = self.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?run_type={run_ids_or_type}"
                                                   "&order_by=logical_date")
                runs = body.get("dag_runs", [])
            else:
                runs = [self.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")[1] for run_id in run_ids_or_type]
            states = [r.get("state") for r in runs]
            if "failed" in states:
                raise AssertionError(f"a run failed: {runs}\n{self.task_states(runs)}\n{self.logs()}")
            return runs if len(runs) >= count and all(s == "success" for s in states) else None
        try:
            return self._wait(finished, NIGHT_TIMEOUT_S * count, f"{count} run(s) of {DAG_ID} to succeed", every=5)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def task_states(self, runs: list[dict]) -> dict:
        states = {}
        for run in runs:
            _, body = self.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances")
            states[run["dag_run_id"]] = {t["task_id"]: t["state"] for t in body.get("task_instances", [])}
        return states


@pytest.fixture(scope="module")
def stack(session_dir):
    """A running stack over a two-night replay (its own landing zone and lake)."""
    from coldstart.replay import replay

    root = session_dir / "airflow_stack"
    settings = make_settings(root)
    plan = replay(settings.landing, START, days=2, users_limit=15)
    airflow = AirflowStack(root, settings)
    try:
        airflow.start()
        yield airflow, settings, plan
    finally:
        airflow.stop()


@pytest.mark.slow
def test_a_manual_night_through_the_rest_api(stack):
    airflow, settings, plan = stack
    day = plan.all_days[0]
    assert airflow.request("GET", f"/api/v2/dags/{DAG_ID}", auth=False)[0] == 401  # the API wants the JWT
    dag = airflow.wait_for_dag()
    assert dag["is_paused"] is True
    status, body = airflow.request("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    assert status == 200 and body["is_paused"] is False, body

    # a bad param refuses the trigger, naming it
    status, body = airflow.request("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
                                   {"logical_date": None, "conf": {"run_date": "2024-02-30"}})
    assert status == 400 and "run_date" in json.dumps(body), (status, body)

    status, run = airflow.request("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
                                  {"logical_date": None, "conf": {"run_date": day.isoformat(), "skip_stages": ["evaluate"]}})
    assert status == 200, (status, run)
    assert run["logical_date"] is None and run["run_type"] == "manual"
    [finished] = airflow.wait_for_runs([run["dag_run_id"]])
    tasks = airflow.task_states([finished])[run["dag_run_id"]]
    assert tasks["evaluate"] == "skipped" and tasks["score"] == "success", tasks
    assert airflow.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances/resolve_run_date"
                                  "/xcomEntries/return_value")[1]["value"] == day.isoformat()

    lake = Lake.from_settings(settings)
    recs = lake.read_pandas("recommendations", filters=[("run_date", "=", day)])
    assert set(recs.user_id) == set(lake.read_pandas("users").user_id)
    assert lake.read_pandas("model_registry")["mode"].tolist() == ["cold"]


def _comparable(lake: Lake, table: str, landing: str) -> pd.DataFrame:
    from coldstart.catalog import table as catalog_table

    frame = lake.read_pandas(table)
    frame = frame.drop(columns=[c for c in frame.columns if c in AUDIT_COLUMNS])
    if "source_file" in frame:  # absolute landing paths differ between the two deployments
        frame["source_file"] = frame["source_file"].str.replace(str(Path(landing).resolve()), "<landing>", regex=False)
    frame = frame.map(lambda v: tuple(v) if hasattr(v, "tolist") or isinstance(v, list) else v)
    return frame.sort_values(list(catalog_table(table).key)).reset_index(drop=True)


@pytest.fixture(scope="module")
def one_by_one(stack, spark, session_dir):
    """The stack's two nights on the same landing zone, run one by one in-process (pipeline.run_days: the
    stage calls every DAG task's spark-submit job makes) into a lake of their own."""
    from coldstart.pipeline import run_days

    _, settings, plan = stack
    settings = make_settings(session_dir / "one_by_one", landing=settings.landing)
    run_days(settings, plan.all_days[:2], spark=spark)
    return settings


@pytest.mark.slow
def test_a_backfill_gives_the_same_tables_as_the_nights_one_by_one(stack, one_by_one):
    airflow, settings, plan = stack
    last = plan.all_days[1]  # night 1 is the manual night (test_a_manual_night_through_the_rest_api)

    created = airflow.airflow("backfill", "create", "--dag-id", DAG_ID, "--from-date", last.isoformat(),
                              "--to-date", last.isoformat(), "--reprocess-behavior", "failed", "--max-active-runs", "1")
    assert created.returncode == 0, created.stdout[-3000:] + created.stderr[-3000:]
    finished = airflow.wait_for_runs("backfill", count=1)
    # a backfill run processes the day its logical date names (the data-interval start)
    assert [r["logical_date"][:10] for r in finished] == [last.isoformat()]
    for run in finished:
        _, xcom = airflow.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances/"
                                         "resolve_run_date/xcomEntries/return_value")
        assert xcom["value"] == run["logical_date"][:10]

    ours, theirs = Lake.from_settings(settings), Lake.from_settings(one_by_one)
    for table in ("interactions", "quarantine", "ingest_audit", "items", "users", "entity_embeddings",
                  "model_registry", "recommendations", "evaluation"):
        pd.testing.assert_frame_equal(_comparable(ours, table, settings.landing),
                                      _comparable(theirs, table, one_by_one.landing), obj=table)
    assert ours.read_pandas("model_registry").sort_values("run_date")["mode"].tolist() == ["cold", "warm"]
    recs = ours.read_pandas("recommendations", filters=[("run_date", "=", last)])
    assert set(recs.user_id) == set(ours.read_pandas("users").user_id)  # every known user is active in 2 days


@pytest.mark.slow
def test_a_backfill_of_an_earlier_night_after_a_later_one_gives_its_original_tables(stack):
    """An operator re-runs night 1 through `airflow backfill create --reprocess-behavior completed` after
    night 2 exists (night 1 ran as the manual trigger, night 2 as a backfill): the scheduler runs that night
    again, every stage reads its inputs as of night 1 (the night manifest), so every table comes back as it
    was and night 2 keeps its model."""
    airflow, settings, plan = stack
    first = plan.all_days[0]
    lake = Lake.from_settings(settings)
    tables = ("interactions", "quarantine", "ingest_audit", "items", "users", "entity_embeddings", "model_registry",
              "recommendations", "evaluation")
    before = {t: _comparable(lake, t, settings.landing) for t in tables}
    assert set(before["model_registry"]["run_date"]) == set(plan.all_days[:2])  # the manual night, the backfill's

    def night_one() -> dict | None:
        _, body = airflow.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?run_type=backfill&order_by=logical_date")
        return next((r for r in body["dag_runs"] if r["logical_date"][:10] == first.isoformat()), None)

    assert night_one() is None  # night 1 has only its manual run so far

    def backfills_done():  # the scheduler marks a finished backfill complete a little after its last run
        status, body = airflow.request("GET", f"/api/v2/backfills?dag_id={DAG_ID}")
        assert status == 200, (status, body)
        return bool(body["backfills"]) and all(b["completed_at"] for b in body["backfills"])
    airflow._wait(backfills_done, 300, "the earlier backfill to be marked complete")  # one active backfill per DAG
    created = airflow.airflow("backfill", "create", "--dag-id", DAG_ID, "--from-date", first.isoformat(),
                              "--to-date", first.isoformat(), "--reprocess-behavior", "completed")
    assert created.returncode == 0, created.stdout[-3000:] + created.stderr[-3000:]

    def rerun_done():
        run = night_one()
        if run is not None and run["state"] == "failed":
            raise AssertionError(f"the re-run failed: {airflow.task_states([run])}\n{airflow.logs()}")
        return run if run is not None and run["state"] == "success" else None
    airflow._wait(rerun_done, NIGHT_TIMEOUT_S, f"the re-run of {first}", every=5)

    for t in tables:
        pd.testing.assert_frame_equal(_comparable(lake, t, settings.landing), before[t], obj=t)
