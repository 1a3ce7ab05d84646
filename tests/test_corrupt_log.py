"""A damaged Delta log is found first and named: the log check, the jobs that run it before any work,
`coldstart sql` for the other tables, and vacuum (which must not delete files a damaged log still needs)."""

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest

from coldstart.catalog import TABLES
from coldstart.cli import main
from coldstart.lake import CorruptTableError, Lake
from coldstart.pipeline import run_stage
from tests.conftest import make_settings
from tests.landing_helpers import event, land
from tests.lake_builders import write_events, write_items

D1, D2, D3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)


def commit_file(lake: Lake, name: str, version: int) -> Path:
    return Path(lake.uri(name)) / "_delta_log" / f"{version:020d}.json"


def cut_mid_line(path: Path) -> None:
    """A crash (or a full disk) while the newest commit was written: the file ends inside a line."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def cut_at_line(path: Path, keep: int = 1) -> None:
    """The same, ending exactly at a line boundary: what is left still parses."""
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:keep]) + b"\n")


@pytest.fixture
def lake(tmp_path) -> Lake:
    """A lake with three nights of interactions (versions 1-3 of its log)."""
    lake = Lake(str(tmp_path / "lake"))
    three_days(lake)
    return lake


def three_days(lake: Lake) -> None:
    write_events(lake, [("u1", "i1", "home", D1), ("u2", "i1", "home", D1)])
    write_events(lake, [("u1", "i2", "home", D2)])
    write_events(lake, [("u1", "i3", "home", D3)])


def test_intact_tables_pass_and_missing_ones_are_skipped(lake):
    write_items(lake, [{"item_id": "i1", "first_seen": D1}])
    write_items(lake, [{"item_id": "i1", "first_seen": D1, "title": "t"}, {"item_id": "i2", "first_seen": D1}])
    assert lake.check_tables(["interactions", "items", "users"]) == {"interactions": 3, "items": 2}


def test_truncated_newest_commit_names_table_and_version(lake):
    cut_mid_line(commit_file(lake, "interactions", 3))
    with pytest.raises(CorruptTableError, match=r"table interactions: version 3 of its Delta log is damaged: "
                                                r"line 2 is not JSON.*roll the table back to version 2"):
        lake.check_log("interactions")


def test_commit_cut_at_a_line_boundary_is_found(lake):
    """Cut after its commitInfo line, the commit still loads in delta-rs, without its partition."""
    from deltalake import DeltaTable

    cut_at_line(commit_file(lake, "interactions", 3))
    assert DeltaTable(lake.uri("interactions")).to_pyarrow_table().num_rows == 3  # D3's row silently gone
    with pytest.raises(CorruptTableError, match=r"table interactions: version 3 .* counts 1 add action\(s\) "
                                                r"but the file holds 0: lines were lost"):
        lake.check_log("interactions")


def test_a_missing_or_empty_commit_in_the_middle_is_found(lake):
    commit_file(lake, "interactions", 2).write_bytes(b"")
    with pytest.raises(CorruptTableError, match="version 2 .* the commit is empty"):
        lake.check_log("interactions")
    commit_file(lake, "interactions", 2).unlink()
    with pytest.raises(CorruptTableError, match="version 2 is missing"):
        lake.check_log("interactions")


def test_spark_commits_record_their_file_counts(spark, lake):
    """Lake.write_spark builds its own transactions (no delta-rs metrics): the counts it records let the
    check find a cut there too, and an intact one passes."""
    df = spark.createDataFrame(lake.read_arrow("interactions").to_pandas())
    lake.write_spark(df.filter(f"run_date = '{D1}'"), "interactions", "replace_partition", {"run_date": D1})
    lake.write_spark(df.filter(f"run_date = '{D2}'").limit(0), "interactions", "replace_partition", {"run_date": D2})
    assert lake.check_log("interactions") == 5
    assert lake.read_arrow("interactions").num_rows == 3  # D2 replaced by nothing
    cut_at_line(commit_file(lake, "interactions", 4))  # keeps commitInfo, loses the remove of D1's old file
    with pytest.raises(CorruptTableError, match="table interactions: version 4 .* lines were lost"):
        lake.check_log("interactions")


def test_a_job_checks_its_tables_before_any_work(spark, tmp_path):
    """ingest reads users; with users' newest commit cut, it fails naming users before interactions get a commit."""
    settings = make_settings(tmp_path)
    lake = Lake.from_settings(settings)
    land(settings.landing, "interactions", D1, [event(i, D1) for i in range(5)])
    users = TABLES["users"].schema
    for n in range(2):
        lake.merge("users", pa.Table.from_pylist([{"user_id": f"u{n}", "profile": [], "content_text": "",
                                                   "content_hash": "h", "first_seen": D1, "last_seen": D1}],
                                                 schema=users))
    cut_at_line(commit_file(lake, "users", 2))
    with pytest.raises(CorruptTableError, match="table users: version 2"):
        run_stage("ingest", settings, D1, spark=spark)
    assert not lake.exists("interactions")  # nothing was committed


def test_sql_keeps_working_for_the_other_tables(tmp_path, monkeypatch, capsys):
    settings = make_settings(tmp_path)
    lake = Lake.from_settings(settings)
    three_days(lake)
    write_items(lake, [{"item_id": "i1", "first_seen": D1}, {"item_id": "i2", "first_seen": D1}])
    cut_mid_line(commit_file(lake, "interactions", 3))
    monkeypatch.setenv("COLDSTART_LAKE", settings.lake)
    assert main(["-q", "sql", "select count(*) as n from items"]) == 0
    assert capsys.readouterr().out.split() == ["n", "2"]
    assert main(["-q", "sql", "select user_id from interactions"]) == 1
    err = capsys.readouterr().err
    assert "table interactions: version 3 of its Delta log is damaged" in err and "Traceback" not in err


def test_vacuum_refuses_a_damaged_log(tmp_path, monkeypatch, capsys):
    """A log that lost an add would let vacuum delete a data file the table still needs."""
    settings = make_settings(tmp_path)
    lake = Lake.from_settings(settings)
    three_days(lake)
    cut_at_line(commit_file(lake, "interactions", 3))
    files = sorted(Path(lake.uri("interactions")).rglob("*.parquet"))
    monkeypatch.setenv("COLDSTART_LAKE", settings.lake)
    assert main(["-q", "vacuum", "--retention-hours", "0"]) == 1
    assert "table interactions: version 3" in capsys.readouterr().err
    assert sorted(Path(lake.uri("interactions")).rglob("*.parquet")) == files


def test_the_check_reads_the_log_on_s3(s3_endpoint):
    import uuid

    from coldstart import storage
    from conftest import S3_BUCKET

    lake = Lake(f"s3://{S3_BUCKET}/corrupt-{uuid.uuid4().hex[:8]}")
    three_days(lake)
    assert lake.check_log("interactions") == 3 and lake.check_log("users") is None
    newest = storage.join(lake.uri("interactions"), "_delta_log", f"{3:020d}.json")
    data = storage.read_bytes(newest)
    storage.write_bytes(newest, data[: len(data) // 2])
    with pytest.raises(CorruptTableError, match=r"table interactions: version 3 of its Delta log is damaged"):
        lake.check_log("interactions")
