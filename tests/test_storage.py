"""The storage layer and the lake on a real S3 endpoint (a moto server over HTTP): Spark writes counted from
what they wrote, concurrent commits, and bad endpoints, credentials and buckets failing fast."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import uuid

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from coldstart import storage
from coldstart.lake import Lake

from conftest import ROOT, S3_BUCKET, free_port, moto_enforce_auth

D1, D2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)


def _prefix(name: str) -> str:
    return f"s3://{S3_BUCKET}/{name}-{uuid.uuid4().hex[:8]}"


def _events(spark, day: dt.date, n: int, offset: int = 0):
    rows = [(f"e{offset + i}", f"u{i % 3}", f"i{i % 5}", "view", 1.0, "default", dt.datetime(day.year, day.month, day.day, 12),
             day, day, "f.jsonl", dt.datetime(2024, 1, 3)) for i in range(n)]
    return spark.createDataFrame(rows, "event_id string, user_id string, item_id string, event_type string, value double, "
                                       "scene string, event_ts timestamp, event_date date, run_date date, source_file string, "
                                       "ingested_at timestamp")


def test_uris_normalize_and_join():
    assert storage.normalize("s3a://b/lake/") == "s3://b/lake"
    assert storage.normalize("file:///tmp/x") == "/tmp/x"
    assert storage.join("s3://b/lake", "t", "_delta_log") == "s3://b/lake/t/_delta_log"
    assert storage.is_remote("s3a://b/x") and not storage.is_remote("/tmp/x")
    with pytest.raises(storage.StorageError, match="unsupported scheme"):
        storage.normalize("gs://b/x")
    assert storage.storage_options("/tmp/x") is None


def test_files_on_s3(s3_endpoint):
    root = _prefix("files")
    storage.write_text(storage.join(root, "a", "x.txt"), "one\ntwo\n")
    storage.touch(storage.join(root, "a", "_SUCCESS"))
    assert storage.read_text(storage.join(root, "a", "x.txt")) == "one\ntwo\n"
    assert [e.name for e in storage.list_dir(storage.join(root, "a"))] == ["_SUCCESS", "x.txt"]
    assert storage.is_dir(storage.join(root, "a")) and storage.is_file(storage.join(root, "a", "_SUCCESS"))
    assert list(storage.iter_lines(storage.join(root, "a", "x.txt"))) == [b"one\n", b"two\n"]
    # s3a:// names the same object
    assert storage.read_text(storage.join(root.replace("s3://", "s3a://"), "a", "x.txt")) == "one\ntwo\n"
    storage.delete(root)
    assert storage.walk_files(root) == [] and not storage.exists(storage.join(root, "a", "x.txt"))
    options = storage.storage_options(root)
    assert options["AWS_ENDPOINT_URL"] == s3_endpoint and options["AWS_ALLOW_HTTP"] == "true"


def test_spark_writes_on_s3_count_what_they_wrote(spark, s3_endpoint):
    lake = Lake(_prefix("lake"))
    assert lake.write_spark(_events(spark, D1, 7), "interactions", "replace_partition", {"run_date": D1}) == 7
    # The second night's count is its own rows, not the table's (the audit equation depends on it).
    assert lake.write_spark(_events(spark, D2, 5, 100), "interactions", "replace_partition", {"run_date": D2}) == 5
    assert lake.write_spark(_events(spark, D2, 4, 200), "interactions", "replace_partition", {"run_date": D2}) == 4
    assert lake.partition_rows("interactions", "run_date") == {D1: 7, D2: 4}
    # partitioned append (rows of two days in one write) and the executors' reader
    assert lake.write_spark(_events(spark, D1, 2, 300).union(_events(spark, D2, 3, 400)), "interactions") == 5
    assert lake.partition_rows("interactions", "run_date") == {D1: 9, D2: 7}
    back = lake.read_spark(spark, "interactions", partitions={"run_date": [D2]})
    assert back.count() == 7 and {r.run_date for r in back.select("run_date").distinct().collect()} == {D2}
    assert sorted(r.event_id for r in back.collect()) == sorted([f"e{200 + i}" for i in range(4)] + [f"e{400 + i}" for i in range(3)])
    # every file the log names exists in the store, and no file of a committed write sits outside it
    table = DeltaTable(lake.uri("interactions"), storage_options=lake.storage_options)
    assert table.file_uris() and all(storage.is_file(u) for u in table.file_uris())


def test_merge_spark_stages_in_the_lakes_store(spark, s3_endpoint):
    lake = Lake(_prefix("lake"))
    rows = [("i1", "T1", "", [], {}, True, "T1", "h1", D1, None, dt.datetime(2024, 1, 1), D1),
            ("i2", "T2", "", ["x"], {"k": "v"}, True, "T2 x", "h2", D1, D1, None, D1)]
    spec = lake.read_arrow("items").schema
    df = spark.createDataFrame(rows, ", ".join(f"{f.name} {_ddl(f.type)}" for f in spec))
    metrics = lake.merge_spark(df, "items")
    assert metrics["num_target_rows_inserted"] == 2
    assert sorted(lake.read_arrow("items").column("item_id").to_pylist()) == ["i1", "i2"]
    assert storage.walk_files(storage.join(lake.root, "_staging")) == []  # staging removed after the merge


def _ddl(t: pa.DataType) -> str:
    from coldstart.lake import spark_type

    return spark_type(t).simpleString()


_WRITER = """
import sys, time, pyarrow as pa, datetime as dt
from coldstart.lake import Lake
lake, who, mode = Lake(sys.argv[1]), sys.argv[2], sys.argv[3]
rows = pa.table({
    "run_date": [dt.date(2024, 1, 1)] * 2, "source": ["interactions"] * 2, "source_file": [who] * 2, "line": [1, 2],
    "raw": [who] * 2, "reason": ["test"] * 2, "detail": [who] * 2, "ingested_at": [dt.datetime(2024, 1, 2)] * 2})
if len(sys.argv) > 4:
    time.sleep(max(0.0, float(sys.argv[4]) - time.time()))  # both processes start their write together
if mode == "append":  # delta-rs's own append: what is under test is the store's conditional writes
    from deltalake import write_deltalake
    write_deltalake(lake.uri("quarantine"), lake.conform("quarantine", rows), mode="append",
                    storage_options=lake.storage_options)
else:
    lake.replace_partition("quarantine", rows, run_date=dt.date(2024, 1, 1))
print("committed", who)
"""


def test_two_concurrent_writers_never_lose_a_commit(s3_endpoint, tmp_path):
    """Two processes append to one table at once, three times each: S3 conditional writes make each commit
    either land on a fresh version or retry on top of the other's, so all six rows are there."""
    lake = Lake(_prefix("concurrent"))
    lake.ensure("quarantine")
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", f"import subprocess,sys\nfor i in range(3): "
                               f"subprocess.run([sys.executable, {str(script)!r}, {lake.root!r}, '{w}-%d' % i, 'append'], check=True)"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in ("a", "b")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    table = DeltaTable(lake.uri("quarantine"), storage_options=lake.storage_options)
    assert sorted(table.to_pyarrow_table().column("source_file").to_pylist()) == sorted(
        [f"{w}-{i}" for w in "ab" for i in range(3) for _ in range(2)])
    versions = [h["version"] for h in table.history()]
    assert sorted(versions) == list(range(len(versions)))  # one commit per version, none overwritten


def test_two_concurrent_replacements_of_one_partition_end_in_one_writers_rows(s3_endpoint, tmp_path):
    """Both replace the same partition at the same moment: each either commits (the later one replacing
    the earlier) or fails with a concurrency error; the partition holds exactly one writer's rows."""
    lake = Lake(_prefix("conflict"))
    lake.ensure("quarantine")
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    at = str(time.time() + 8)  # past both interpreters' imports
    procs = [subprocess.Popen([sys.executable, str(script), lake.root, who, "replace", at], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for who in ("a", "b")]
    outs = [p.communicate(timeout=300) for p in procs]
    failed = [err for p, (_, err) in zip(procs, outs) if p.returncode != 0]
    assert len(failed) <= 1, outs
    for err in failed:
        assert "Commit" in err and ("oncurrent" in err or "onflict" in err), err[-2000:]
    table = DeltaTable(lake.uri("quarantine"), storage_options=lake.storage_options)
    writers = set(table.to_pyarrow_table().column("source_file").to_pylist())
    assert len(writers) == 1 and table.to_pyarrow_table().num_rows == 2
    versions = [h["version"] for h in table.history()]
    assert sorted(versions) == list(range(len(versions))) and len(versions) == 1 + 2 - len(failed)


def test_unreachable_endpoint_fails_fast(monkeypatch, s3_endpoint):
    from coldstart.config import Settings
    from coldstart.pipeline import check_storage

    port = free_port()  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    settings = Settings.load(env={}, lake=f"s3://{S3_BUCKET}/lake", landing="/tmp/x")
    started = time.monotonic()
    with pytest.raises(storage.StorageError) as err:
        check_storage(settings)
    assert time.monotonic() - started < 30
    message = str(err.value)
    assert f"COLDSTART_LAKE=s3://{S3_BUCKET}/lake" in message and "AWS_ENDPOINT_URL" in message
    assert "cannot reach" in message


def test_missing_bucket_fails_fast(s3_endpoint):
    from coldstart.config import Settings
    from coldstart.pipeline import check_storage

    settings = Settings.load(env={}, models="s3://no-such-bucket/models")
    with pytest.raises(storage.StorageError, match=r"COLDSTART_MODELS=s3://no-such-bucket/models: bucket 'no-such-bucket' does not exist"):
        check_storage(settings)


def test_wrong_credentials_fail_fast_and_write_nothing(spark, s3_endpoint, monkeypatch):
    """The endpoint checks credentials (moto's IAM enforcement on): the stage fails before any write."""
    from coldstart.config import Settings
    from coldstart.pipeline import run_stage

    lake_uri = _prefix("badcreds")
    settings = Settings.load(env={}, lake=lake_uri, landing="/nonexistent", models="/tmp/m", reports="/tmp/r")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    moto_enforce_auth(s3_endpoint, True)
    try:
        with pytest.raises(storage.StorageError) as err:
            run_stage("ingest", settings, D1, spark=spark)
    finally:
        moto_enforce_auth(s3_endpoint, False)
        monkeypatch.undo()
    message = str(err.value)
    assert f"COLDSTART_LAKE={lake_uri}" in message and "AWS_ACCESS_KEY_ID" in message and "rejected" in message
    assert storage.walk_files(lake_uri) == []
