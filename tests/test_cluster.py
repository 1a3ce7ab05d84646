"""A night on a real standalone Spark cluster (a master and two workers, separate JVMs and executors), trained
with ``train_processes=2`` (TorchDistributor's two ranks are barrier tasks, one on each 1-core executor):
its tasks run on both executors and its tables equal those of the same night on local[2] with two ranks too
(same seed and N: the same checkpoint, so the model_registry checksum and every score are equal exactly)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from coldstart.catalog import TABLES, table
from coldstart.lake import Lake

pytestmark = pytest.mark.distributed

# Wall-clock and location columns: the two runs differ in them by construction (same landing zone, two lakes).
VOLATILE = {"ingested_at", "created_at", "checkpoint_uri"}
# Tables that record the run itself (wall clock, master, application, process): checked on their own.
RUN_RECORDS = {"stage_runs", "night_manifest"}
# Every other table must be equal row for row and bit for bit: the encoder's batches do not depend on the
# partitioning (coldstart.embed), so the vectors, the trained checkpoint, the scores and the metrics are the same.


def _events(folder) -> list[dict]:
    logs = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(logs) >= 1, "no Spark event log"
    out = []
    for log in logs:
        out += [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return out


def test_tasks_ran_on_both_executors(cluster_night):
    on_cluster, _, _, events_dir = cluster_night
    events = _events(events_dir)
    added = {e["Executor ID"] for e in events if e["Event"] == "SparkListenerExecutorAdded"}
    tasks = [e for e in events if e["Event"] == "SparkListenerTaskEnd"]
    hosts = {e["Executor ID"]: e["Executor Info"]["Host"] for e in events if e["Event"] == "SparkListenerExecutorAdded"}
    by_executor = pd.Series([t["Task Info"]["Executor ID"] for t in tasks]).value_counts()
    assert len(added) == 2 and set(by_executor.index) == added, by_executor
    assert all(h == "127.0.0.1" for h in hosts.values())
    starts = [e for e in events if e["Event"] == "SparkListenerApplicationStart"]
    assert starts and all(e.get("App ID", "").startswith("app-") for e in starts)  # standalone ids, not local-*


def _frame(lake: Lake, name: str) -> pd.DataFrame:
    spec = table(name)
    frame = lake.read_pandas(name)
    frame = frame[[c for c in spec.columns if c not in VOLATILE]]
    simple = [c for c in frame.columns if frame[c].map(lambda v: isinstance(v, (list, dict, np.ndarray))).sum() == 0]
    for c in set(frame.columns) - set(simple):
        frame[c] = frame[c].map(lambda v: json.dumps(v.tolist() if isinstance(v, np.ndarray) else v, default=str))
    return frame.sort_values([c for c in spec.key if c in frame.columns]).reset_index(drop=True)


def test_the_clusters_tables_equal_local_modes(cluster_night):
    on_cluster, on_local, day, _ = cluster_night
    cluster, local = Lake.from_settings(on_cluster), Lake.from_settings(on_local)
    compared = []
    for name in TABLES:
        if name in RUN_RECORDS:
            continue
        if not local.exists(name):
            assert not cluster.exists(name), name
            continue
        a, b = _frame(cluster, name), _frame(local, name)
        assert len(a) == len(b), name
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=name)
        compared.append(name)
    assert {"interactions", "items", "users", "ingest_audit", "entity_embeddings", "model_registry",
            "recommendations"} <= set(compared)


def test_stage_runs_name_the_cluster_and_its_application(cluster_night):
    on_cluster, on_local, day, _ = cluster_night
    runs = Lake.from_settings(on_cluster).read_pandas("stage_runs")
    spark_stages = runs[runs["stage"].isin(["ingest", "embed"])]
    assert set(spark_stages["stage"]) == {"ingest", "embed"} and (spark_stages["status"] == "ok").all()
    assert spark_stages["spark_master"].str.startswith("spark://127.0.0.1:").all()
    assert spark_stages["spark_app_id"].str.startswith("app-").all()
    local = Lake.from_settings(on_local).read_pandas("stage_runs")
    assert set(local[local["stage"] == "ingest"]["spark_master"]) == {"local[2]"}


def test_both_nights_trained_on_two_ranks_and_the_cluster_ran_them_as_a_barrier_stage(cluster_night):
    from coldstart.model import Checkpoint

    on_cluster, on_local, day, events_dir = cluster_night
    for settings in (on_cluster, on_local):
        reg = Lake.from_settings(settings).read_pandas("model_registry")
        ckpt = Checkpoint.load(reg[reg["run_date"] == day]["checkpoint_uri"].iloc[0])
        assert ckpt.config["train_processes"] == 2, settings.lake
    # TorchDistributor's ranks: one barrier stage of two tasks, one on each executor
    events = _events(events_dir)
    barrier = {e["Stage Info"]["Stage ID"] for e in events if e["Event"] == "SparkListenerStageSubmitted"
               and e["Stage Info"].get("RDD Info") and any(r.get("Barrier") for r in e["Stage Info"]["RDD Info"])}
    tasks = [e for e in events if e["Event"] == "SparkListenerTaskEnd" and e["Stage ID"] in barrier
             and e["Task End Reason"]["Reason"] == "Success"]
    added = {e["Executor ID"] for e in events if e["Event"] == "SparkListenerExecutorAdded"}
    assert barrier and len(tasks) == 2 and {t["Task Info"]["Executor ID"] for t in tasks} == added, (barrier, tasks)
