"""A night you can trust: stage_runs and night_manifest, as-of reads (a re-run of an old night is identical),
honest lineage (--cascade, superseded models), concurrent runs of one stage and date, and retention.

The heavy tests run real nights (Spark, Delta, torch) on a tiny replay and start real `coldstart run`
processes at once; they are marked slow."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from conftest import ROOT, START, make_settings

REC_COLUMNS = ["user_id", "scene", "rank", "item_id", "score"]


def _recs(lake, day) -> pd.DataFrame:
    frame = lake.read_pandas("recommendations", filters=[("run_date", "=", day)])
    keys = [c for c in ("user_id", "scene", "list", "rank") if c in frame.columns]
    return frame[list(dict.fromkeys(keys + REC_COLUMNS))].sort_values(keys).reset_index(drop=True)


def _evaluation(lake, day) -> pd.DataFrame:
    frame = lake.read_pandas("evaluation", filters=[("run_date", "=", day)])
    return frame.sort_values(["method", "slice", "metric", "k"]).reset_index(drop=True)


def _ready(lake, day) -> dict:
    from coldstart.registry import registry_row
    return registry_row(lake, day)


def _later_runs(lake, night) -> pd.DataFrame:
    runs = lake.read_pandas("stage_runs")
    return runs[runs["run_date"] > night].sort_values(["run_date", "stage"]).reset_index(drop=True)


# --- the bookkeeping of every stage ------------------------------------------------------------------

def test_every_stage_of_every_night_has_a_stage_run_and_a_manifest_row(tiny_run):
    from coldstart.lake import Lake
    from coldstart.pipeline import STAGES, settings_hash

    settings, _plan, days, _results = tiny_run
    lake = Lake.from_settings(settings)
    runs = lake.read_pandas("stage_runs")
    assert len(runs) == len(days) * len(STAGES)
    assert set(runs["status"]) == {"ok"}
    assert (runs["seconds"] > 0).all() and (runs["finished_at"] >= runs["started_at"]).all()
    assert (runs["driver_python_peak_rss_bytes"] > 50 * 2 ** 20).all()  # a Python driver with torch and pyarrow
    spark_runs = runs[runs["stage"].isin(["ingest", "embed"])]
    assert spark_runs["spark_app_id"].notna().all() and (spark_runs["spark_master"] == "local[2]").all()
    assert (spark_runs["driver_jvm_peak_rss_bytes"] > 50 * 2 ** 20).all()
    assert (spark_runs["executor_jvm_peak_rss_bytes"] > 50 * 2 ** 20).all()  # Spark's executor metrics, local mode
    score = runs[runs["stage"] == "score"]
    assert (score["executor_python_peak_rss_bytes"] > 50 * 2 ** 20).all()  # its mapInArrow workers hold torch
    ingest = runs[runs["stage"] == "ingest"]
    assert (ingest["rows_out"] > 0).all() and (ingest["rows_in"] >= 0).all()

    manifest = {(r["run_date"], r["stage"]): r for r in lake.read_arrow("night_manifest").to_pylist()}
    assert set(manifest) == {(d, s) for d in days for s in STAGES}
    for (_day, stage), row in manifest.items():
        assert row["settings_hash"] == settings_hash(settings)
        read, committed = dict(row["tables_read"]), dict(row["tables_committed"])
        for name, version in {**read, **committed}.items():  # analysts can time-travel to what the night saw
            DeltaTable(lake.uri(name), version=version)
        if stage == "ingest":
            assert {"interactions", "quarantine", "ingest_audit", "items", "users"} <= set(committed)
            assert set(dict(row["as_of"])) == {"items", "users"}
        if stage == "train":
            assert {"interactions", "items", "entity_embeddings"} <= set(read)
            assert "model_registry" in committed
    first, second = days[0], days[1]
    # night 2 trained from night 1's model: the manifest names it with its registered checksum
    train2 = manifest[(second, "train")]
    parent = _ready(lake, first)
    assert (train2["checkpoint_version"], train2["checkpoint_checksum"]) == (parent["model_version"], parent["checksum"])
    assert manifest[(first, "train")]["checkpoint_version"] is None  # the first night trains cold
    score2 = manifest[(second, "score")]
    assert score2["checkpoint_version"] == _ready(lake, second)["model_version"]
    # the items night 2's train read are the items night 2's ingest left
    assert dict(train2["tables_read"])["items"] == dict(manifest[(second, "ingest")]["as_of"])["items"]


def test_the_night_reads_interactions_up_to_its_date_and_entities_as_of_it(tmp_path):
    """The lake's night context, without Spark: interactions of later run dates and entities first seen
    later are invisible; a pinned version is read as pinned; the stage's own writes are read as written."""
    from coldstart.lake import Lake
    from coldstart.catalog import ITEMS
    from coldstart.night import open_night

    lake = Lake(str(tmp_path / "lake"))
    day1, day2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)
    ts = dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc)
    for day in (day1, day2):
        lake.replace_partition("interactions", pa.Table.from_pylist([{
            "event_id": f"e{day.day}", "user_id": "u", "item_id": "i", "event_type": "view", "value": None,
            "scene": "default", "event_ts": ts, "event_date": day, "run_date": day, "source_file": "f",
            "ingested_at": ts}]), run_date=day)
    item = {"item_id": "i1", "title": "old", "description": "", "tags": [], "attributes": [], "active": True,
            "content_text": "old", "content_hash": "h1", "first_seen": day1, "first_interaction": None,
            "updated_at": None, "last_run_date": day1}
    lake.merge("items", pa.Table.from_pylist([item], schema=ITEMS.schema))
    pinned = lake.version("items")
    lake.merge("items", pa.Table.from_pylist([{**item, "title": "new", "last_run_date": day2},
                                              {**item, "item_id": "i2", "first_seen": day2, "last_run_date": day2}],
                                             schema=ITEMS.schema))

    night = lake.begin_night(day1, "train")
    with open_night(night):
        assert lake.read_arrow("interactions").column("event_id").to_pylist() == ["e1"]
        assert sorted(lake.partition_rows("interactions", "run_date")) == [day1]
        assert lake.read_arrow("items").column("item_id").to_pylist() == ["i1"]  # never run: by first_seen
    night = lake.begin_night(day1, "train")
    night.pins["items"] = pinned
    with open_night(night):
        assert lake.read_arrow("items").column("title").to_pylist() == ["old"]  # pinned: as the night saw it
    assert sorted(lake.read_arrow("items").column("title").to_pylist()) == ["new", "old"]  # outside: the latest
    night = lake.begin_night(day2, "ingest")
    with open_night(night):
        assert len(lake.read_arrow("interactions")) == 2
        lake.merge("items", pa.Table.from_pylist([{**item, "item_id": "i3", "first_seen": day2, "last_run_date": day2}],
                                                 schema=ITEMS.schema))
        assert len(lake.read_arrow("items")) == 3  # its own write is read as written
    assert night.read["interactions"] == lake.version("interactions") and night.committed["items"] == lake.version("items")


def test_a_write_from_an_older_version_of_the_same_partition_fails_and_writes_nothing(tmp_path, spark):
    """Both write paths: delta-rs checks the commit against the version the stage started from."""
    from coldstart.lake import Lake
    from coldstart.night import ConcurrentWriteError, open_night

    lake = Lake(str(tmp_path / "lake"))
    day = dt.date(2024, 1, 1)
    row = {"run_date": day, "source": "interactions", "source_file": "f", "line": 1, "raw": "x", "reason": "r",
           "detail": None, "ingested_at": None}
    lake.ensure("quarantine")
    loser = lake.begin_night(day, "ingest")  # started before the winner's commit
    lake.replace_partition("quarantine", pa.Table.from_pylist([row]), run_date=day)
    before = lake.version("quarantine")
    with open_night(loser):
        with pytest.raises(ConcurrentWriteError, match="quarantine partition run_date = '2024-01-01'.*another run"):
            lake.replace_partition("quarantine", pa.Table.from_pylist([{**row, "line": 2}]), run_date=day)
        frame = spark.createDataFrame(pd.DataFrame([{**row, "line": 3}]))
        with pytest.raises(ConcurrentWriteError, match="quarantine partition"):
            lake.write_spark(frame, "quarantine", "replace_partition", {"run_date": day})
        # another partition is not a conflict
        other = dt.date(2024, 1, 2)
        assert lake.replace_partition("quarantine", pa.Table.from_pylist([{**row, "run_date": other}]), run_date=other) == 1
    assert lake.version("quarantine") == before + 1
    assert lake.read_arrow("quarantine", filters=[("run_date", "=", day)]).column("line").to_pylist() == [1]
    # the loser's Spark files were removed (delta-rs leaves its own uncommitted file to vacuum)
    assert not [p for p in Path(lake.uri("quarantine")).rglob("*.parquet") if "batch-" in str(p)]


# --- re-runs, lineage, cascade, retention ------------------------------------------------------------

@pytest.fixture(scope="module")
def four_nights(spark, tmp_path_factory):
    """Bootstrap day and three nights on a tiny replay (20 users), run once for this module."""
    from coldstart.pipeline import run_days
    from coldstart.replay import replay

    root = tmp_path_factory.mktemp("four_nights")
    settings = make_settings(root)
    plan = replay(settings.landing, START, days=3, users_limit=20)
    days = plan.all_days[:4]
    run_days(settings, days, spark=spark)
    return settings, days


@pytest.mark.slow
def test_a_rerun_of_an_old_night_reproduces_it_and_leaves_later_nights_as_built(four_nights, spark):
    from coldstart.lake import Lake
    from coldstart.model import Checkpoint
    from coldstart.pipeline import run_days

    settings, days = four_nights
    lake = Lake.from_settings(settings)
    night = days[1]
    recs, evaluation, model = _recs(lake, night), _evaluation(lake, night), _ready(lake, night)
    later = {d: (_recs(lake, d), _ready(lake, d)) for d in days[2:]}
    later_runs = _later_runs(lake, night)

    run_days(settings, [night], spark=spark)

    pd.testing.assert_frame_equal(_recs(lake, night), recs)
    pd.testing.assert_frame_equal(_evaluation(lake, night), evaluation)
    again = _ready(lake, night)
    assert (again["model_version"], again["checksum"]) == (model["model_version"], model["checksum"])
    Checkpoint.load(again["checkpoint_uri"], expected_checksum=again["checksum"])
    for d, (r, m) in later.items():  # no cascade: later nights keep what they were built from
        pd.testing.assert_frame_equal(_recs(lake, d), r)
        assert _ready(lake, d)["model_version"] == m["model_version"]
    pd.testing.assert_frame_equal(_later_runs(lake, night), later_runs)
    # the re-run's inputs were night 2's: its train read the items version night 2's ingest first left
    manifest = {(r["run_date"], r["stage"]): r for r in lake.read_arrow("night_manifest").to_pylist()}
    assert dict(manifest[(night, "train")]["tables_read"])["items"] < dict(manifest[(days[2], "ingest")]["as_of"])["items"]


@pytest.mark.slow
def test_a_backfill_of_the_first_nights_after_the_last_gives_the_original_tables(four_nights, spark):
    """What `airflow backfill create --from-date D1 --to-date D3 --reprocess-behavior completed` runs after
    night 4: nights 1-3 oldest first, each stage through pipeline.run_stage (the call every DAG task's
    spark-submit job makes; here in-process, since a scheduler running 15 spark-submit jobs is too slow for
    the suite). Every table those nights wrote comes back identical, and night 4 is untouched."""
    from coldstart.lake import Lake
    from coldstart.pipeline import run_days

    settings, days = four_nights
    lake = Lake.from_settings(settings)
    tables = ["interactions", "quarantine", "ingest_audit", "recommendations", "evaluation", "entity_embeddings"]
    before = _tables(lake, tables)
    models = {d: _ready(lake, d)["checksum"] for d in days}
    run_days(settings, days[:3], spark=spark)
    after = _tables(lake, tables)
    for name in tables:
        pd.testing.assert_frame_equal(after[name], before[name], obj=name)
    assert {d: _ready(lake, d)["checksum"] for d in days} == models


@pytest.mark.slow
def test_a_changed_rerun_supersedes_the_model_and_cascade_rebuilds_the_later_nights(four_nights, spark):
    from coldstart.lake import Lake
    from coldstart.model import Checkpoint
    from coldstart.pipeline import later_nights, run_days

    settings, days = four_nights
    lake = Lake.from_settings(settings)
    night, next_night = days[2], days[3]
    old = _ready(lake, night)
    assert _ready(lake, next_night)["parent_version"] == old["model_version"]

    run_days(settings, [night], stages=["train"], full_retrain=True, spark=spark)  # another model for night 3

    new = _ready(lake, night)
    assert new["model_version"] != old["model_version"] and new["mode"] == "full"
    rows = {r["model_version"]: r for r in lake.read_arrow("model_registry").to_pylist()}
    assert rows[old["model_version"]]["status"] == "superseded"
    # night 4 still names the model it was built from, and that model still exists, verified
    assert _ready(lake, next_night)["parent_version"] == old["model_version"]
    Checkpoint.load(rows[old["model_version"]]["checkpoint_uri"], expected_checksum=old["checksum"])
    Checkpoint.load(new["checkpoint_uri"], expected_checksum=new["checksum"])

    # --cascade re-runs the later nights too: night 4's evaluation now judges night 3's new lists
    assert later_nights(settings, [night]) == [next_night]
    before = lake.read_pandas("stage_runs").set_index(["run_date", "stage"])["finished_at"]
    assert set(_evaluation(lake, next_night)["model_version"]) == {old["model_version"]}
    run_days(settings, [night], stages=["score", "evaluate"], spark=spark, cascade=True)
    assert set(_evaluation(lake, next_night)["model_version"]) == {new["model_version"]}
    after = lake.read_pandas("stage_runs").set_index(["run_date", "stage"])["finished_at"]
    assert after[(next_night, "evaluate")] > before[(next_night, "evaluate")]
    assert after[(next_night, "train")] == before[(next_night, "train")]  # only the stages asked for


@pytest.mark.slow
def test_vacuum_keeps_what_reruns_need_and_an_older_rerun_is_refused_by_name(four_nights, spark):
    from coldstart.lake import Lake
    from coldstart.night import RetentionError, vacuum_lake
    from coldstart.pipeline import run_days, run_stage

    settings, days = four_nights
    lake = Lake.from_settings(settings)
    vacuum_lake(settings, retention_days=7)
    run_days(settings, [days[1]], stages=["score"], spark=spark)  # kept: night 2 still re-runs

    lines = vacuum_lake(settings, retention_days=0)
    assert any(line.startswith("items: removed") for line in lines)
    with pytest.raises(RetentionError, match=r"needs (entity_embeddings|items|users) version \d+.*COLDSTART_RETENTION_DAYS=0"):
        run_stage("score", settings.replace(retention_days=0), days[1], spark=spark)
    assert lake.read_arrow("stage_runs", filters=[("run_date", "=", days[1])]).num_rows == 5  # nothing recorded


# --- concurrency: separate processes --------------------------------------------------------------------

def _cli(settings, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLDSTART_LANDING": settings.landing, "COLDSTART_LAKE": settings.lake,
           "COLDSTART_MODELS": settings.models, "COLDSTART_REPORTS": settings.reports, "COLDSTART_MODEL_DIM": "16",
           "COLDSTART_TRAIN_EPOCHS_FULL": "2", "COLDSTART_TOP_K": "20", "COLDSTART_SPARK_SHUFFLE_PARTITIONS": "2",
           "COLDSTART_BASELINES": "false"}
    return subprocess.Popen([sys.executable, "-m", "coldstart.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=str(ROOT))


def _twice_at_once(settings, day, stage) -> list[tuple[int, str]]:
    procs = [_cli(settings, "run", "--date", day.isoformat(), "--stages", stage) for _ in range(2)]
    return [(p.wait(timeout=900), p.stdout.read()) for p in procs]


def _tables(lake, names) -> dict[str, pd.DataFrame]:
    audit = {"ingested_at", "created_at"}
    out = {}
    for name in names:
        frame = lake.read_pandas(name)
        frame = frame[[c for c in frame.columns if c not in audit]]
        frame = frame.map(lambda v: tuple(v) if hasattr(v, "__len__") and not isinstance(v, str) else v)
        out[name] = frame.sort_values(list(frame.columns[:4])).reset_index(drop=True)
    return out


@pytest.mark.slow
def test_two_runs_of_the_same_stage_and_date_at_once_leave_the_tables_of_one(tmp_path, spark):
    """Two ingests, two trains and two scores of one date, each pair started at once as separate
    `coldstart run` processes: no duplicate event, and the tables equal those a single run leaves (a
    sequential re-run after each pair must change nothing). A loser names the race. The steps that race
    nothing (the embed between, the sequential re-runs of ingest and score) run in-process on the
    session's Spark, the same stage calls; train's re-run stays a process of its own, so that its model
    checksum is compared under the same torch threads as the pair's."""
    from coldstart.lake import Lake
    from coldstart.pipeline import run_days
    from coldstart.replay import replay

    settings = make_settings(tmp_path, baselines=False)
    day = replay(settings.landing, START, days=1, users_limit=15).all_days[0]
    lake = Lake.from_settings(settings)
    checks = {"ingest": ["interactions", "quarantine", "ingest_audit", "items", "users"],
              "train": ["model_registry"], "score": ["recommendations"]}
    for stage, tables in checks.items():
        if stage == "train":
            run_days(settings, [day], stages=["embed"], spark=spark)
        results = _twice_at_once(settings, day, stage)
        codes = sorted(code for code, _ in results)
        assert codes[0] == 0, results  # one of them succeeded
        for code, output in results:
            if code != 0:
                # The CLI prints the ConcurrentWriteError as one line (its class name only with -v).
                assert "another run committed version" in output and "this run wrote nothing" in output, output
        if stage == "ingest":
            ids = lake.read_arrow("interactions", columns=["event_id"]).column("event_id")
            assert len(ids) == len(pa.compute.unique(ids)) > 0  # before: every event twice
            audit = lake.read_arrow("ingest_audit", filters=[("source", "=", "interactions")]).to_pylist()[0]
            assert audit["rows_accepted"] == len(ids)
        if stage == "train":
            from coldstart.model import Checkpoint
            rows = lake.read_arrow("model_registry").to_pylist()
            assert len(rows) == 1
            Checkpoint.load(rows[0]["checkpoint_uri"], expected_checksum=rows[0]["checksum"])
        after_pair = _tables(lake, tables)
        if stage == "train":
            single = _cli(settings, "run", "--date", day.isoformat(), "--stages", stage)
            assert single.wait(timeout=900) == 0, single.stdout.read()
        else:
            run_days(settings, [day], stages=[stage], spark=spark)
        for name, frame in _tables(lake, tables).items():
            pd.testing.assert_frame_equal(frame, after_pair[name], obj=f"{stage}: {name}")
    runs = lake.read_pandas("stage_runs")
    assert sorted(runs["stage"]) == ["embed", "ingest", "score", "train"] and set(runs["status"]) == {"ok"}
