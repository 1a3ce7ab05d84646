"""The Delta layer: atomic partition replace, idempotent reruns, merge, guarded append, crash safety."""

import datetime as dt

import pyarrow as pa
import pytest

from coldstart.catalog import RECOMMENDATIONS, TABLES
from coldstart.lake import Lake, SchemaMismatchError

D1, D2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)


def recs(day, users=3, k=2, model="m1"):
    rows = [{"run_date": day, "user_id": f"u{u}", "scene": "default", "list": "main", "rank": r, "item_id": f"i{r}", "score": 1.0 / r,
             "model_version": model, "user_segment": "warm", "item_is_new": False, "reason": None}
            for u in range(users) for r in range(1, k + 1)]
    return pa.Table.from_pylist(rows, schema=RECOMMENDATIONS.schema)


@pytest.fixture
def lake(tmp_path):
    return Lake(str(tmp_path / "lake"))


def test_every_catalog_table_documents_every_column():
    for table in TABLES.values():
        assert table.doc and table.key
        for name in table.columns:
            assert table.column_doc(name), f"{table.name}.{name} has no doc"
        for column in table.key + table.partition_by:
            assert column in table.columns


def test_replace_partition_is_atomic_and_idempotent(lake):
    lake.replace_partition("recommendations", recs(D1), run_date=D1)
    lake.replace_partition("recommendations", recs(D2), run_date=D2)
    before = lake.version("recommendations")
    lake.replace_partition("recommendations", recs(D1, users=2, model="m2"), run_date=D1)
    lake.replace_partition("recommendations", recs(D1, users=2, model="m2"), run_date=D1)
    out = lake.read_pandas("recommendations")
    assert len(out[out.run_date == D1]) == 4 and set(out[out.run_date == D1].model_version) == {"m2"}
    assert len(out[out.run_date == D2]) == 6  # the other partition is untouched
    assert lake.version("recommendations") == before + 2  # one commit per write


def test_replace_partition_rejects_rows_of_another_partition(lake):
    with pytest.raises(SchemaMismatchError, match="run_date"):
        lake.replace_partition("recommendations", recs(D2), run_date=D1)


def test_schema_mismatch_names_the_column(lake):
    bad = recs(D1).drop_columns(["score"])
    with pytest.raises(SchemaMismatchError, match="score"):
        lake.replace_partition("recommendations", bad, run_date=D1)
    typed = recs(D1).set_column(RECOMMENDATIONS.columns.index("score"), "score", pa.array(["high"] * 6))
    with pytest.raises(SchemaMismatchError, match="score"):
        lake.replace_partition("recommendations", typed, run_date=D1)
    with pytest.raises(SchemaMismatchError, match="extra"):
        lake.replace_partition("recommendations", recs(D1).append_column("extra", pa.array([1] * 6)), run_date=D1)


def test_merge_upserts_by_key_and_can_preserve_columns(lake):
    row = {"user_id": "u1", "profile": [("city", "Oslo")], "content_text": "city: Oslo", "content_hash": "h1",
           "first_seen": D1, "last_seen": D1}
    lake.merge("users", pa.Table.from_pylist([row], schema=TABLES["users"].schema))
    changed = dict(row, content_text="city: Rome", content_hash="h2", first_seen=D2, last_seen=D2)
    other = dict(row, user_id="u2")
    lake.merge("users", pa.Table.from_pylist([changed, other], schema=TABLES["users"].schema), preserve=["first_seen"])
    out = lake.read_pandas("users").set_index("user_id")
    assert len(out) == 2
    assert out.loc["u1", "content_text"] == "city: Rome" and out.loc["u1", "first_seen"] == D1
    with pytest.raises(SchemaMismatchError, match="duplicate keys"):
        lake.merge("users", pa.Table.from_pylist([row, row], schema=TABLES["users"].schema))


def test_spark_write_commits_once_and_reads_back(spark, lake):
    df = spark.createDataFrame(recs(D1).to_pandas())
    assert lake.write_spark(df, "recommendations", "replace_partition", {"run_date": D1}) == 6
    assert lake.write_spark(df, "recommendations", "replace_partition", {"run_date": D1}) == 6
    lake.write_spark(spark.createDataFrame(recs(D2).to_pandas()), "recommendations", "append")
    back = lake.read_spark(spark, "recommendations")
    counts = {r["run_date"]: r["count"] for r in back.groupBy("run_date").count().collect()}
    assert counts == {D1: 6, D2: 6}
    stats = lake.table("recommendations").get_add_actions(flatten=True)
    assert "min.score" in pa.table(stats).column_names  # file stats were committed


def test_crash_before_commit_leaves_table_unchanged_and_vacuum_removes_orphans(spark, lake, monkeypatch):
    lake.replace_partition("recommendations", recs(D1), run_date=D1)
    version = lake.version("recommendations")
    from deltalake import DeltaTable

    def crash(*args, **kwargs):
        raise RuntimeError("driver died before the commit")

    monkeypatch.setattr(DeltaTable, "create_write_transaction", crash)
    df = spark.createDataFrame(recs(D1, users=5, model="m2").to_pandas())
    with pytest.raises(RuntimeError, match="driver died"):
        lake.write_spark(df, "recommendations", "replace_partition", {"run_date": D1})
    monkeypatch.undo()
    assert lake.version("recommendations") == version
    out = lake.read_pandas("recommendations")
    assert len(out) == 6 and set(out.model_version) == {"m1"}
    removed = lake.vacuum("recommendations")
    assert removed and all("batch-" in path for path in removed)
    assert lake.read_arrow("recommendations").num_rows == 6


def test_other_readers_see_the_same_rows(spark, lake, tmp_path):
    import polars as pl

    from coldstart.config import Settings
    from coldstart.query import duckdb_connection

    lake.write_spark(spark.createDataFrame(recs(D1).to_pandas()), "recommendations", "replace_partition", {"run_date": D1})
    assert pl.read_delta(lake.uri("recommendations")).height == 6
    con = duckdb_connection(Settings.load(env={}, lake=lake.root))
    assert con.sql("SELECT count(*) FROM recommendations WHERE run_date = DATE '2024-01-01'").fetchone()[0] == 6


def test_string_filters_work_on_merged_tables(lake):
    """delta-rs merges write strings as string_view; filtering them by a string must still work."""
    from coldstart.catalog import ENTITY_EMBEDDINGS

    def rows(kind, ids):
        return [{"entity_type": kind, "entity_id": i, "encoder": "enc", "content_hash": "h", "embedding": [0.1, 0.2],
                 "dim": 2, "run_date": D1} for i in ids]

    lake.merge("entity_embeddings", pa.Table.from_pylist(rows("item", ["a", "b"]), schema=ENTITY_EMBEDDINGS.schema))
    lake.merge("entity_embeddings", pa.Table.from_pylist(rows("user", ["u"]) + rows("item", ["a"]),
                                                         schema=ENTITY_EMBEDDINGS.schema))
    items = lake.read_arrow("entity_embeddings", filters=[("entity_type", "=", "item"), ("encoder", "in", ["enc"])])
    assert sorted(items.column("entity_id").to_pylist()) == ["a", "b"]


def test_partition_rows_come_from_the_log_and_follow_a_replace(lake):
    assert lake.partition_rows("recommendations", "run_date") == {}
    lake.replace_partition("recommendations", recs(D1), run_date=D1)
    lake.replace_partition("recommendations", recs(D2, users=5), run_date=D2)
    assert lake.partition_rows("recommendations", "run_date") == {D1: 6, D2: 10}
    lake.replace_partition("recommendations", recs(D1, users=1), run_date=D1)
    assert lake.partition_rows("recommendations", "run_date") == {D1: 2, D2: 10}


@pytest.mark.parametrize("write", ["replace", "merge"])
def test_a_table_with_older_column_docs_takes_writes_and_gets_the_catalogs_docs(lake, write):
    """A lake made by an older release, whose column docs read differently: Delta refuses a write whose
    schema metadata differs, so without the sync every write after an upgrade would fail."""
    from deltalake import DeltaTable

    old = pa.schema([f.with_metadata({"doc": "an older wording"}) if f.name == "score" else f
                     for f in RECOMMENDATIONS.schema])
    DeltaTable.create(lake.uri("recommendations"), old, partition_by=["run_date"])
    if write == "replace":
        lake.replace_partition("recommendations", recs(D1), run_date=D1)
    else:
        lake.merge("recommendations", recs(D1))
    docs = {f.name: f.metadata.get("doc") for f in lake.table("recommendations").schema().fields}
    assert docs["score"] == RECOMMENDATIONS.column_doc("score")
    assert len(lake.read_pandas("recommendations")) == 6
    # once in sync, a new job's write is one data commit, no metadata commit
    again = Lake(lake.root)
    before = again.version("recommendations")
    again.replace_partition("recommendations", recs(D1), run_date=D1)
    assert again.version("recommendations") == before + 1


def test_a_table_without_a_later_nullable_column_gains_it_and_keeps_its_rows(lake):
    """recommendations.list came after the first releases: an older lake's table gets the column
    (its old rows read null) instead of rejecting every score write."""
    from deltalake import DeltaTable

    old = pa.schema([f for f in RECOMMENDATIONS.schema if f.name != "list"])
    DeltaTable.create(lake.uri("recommendations"), old, partition_by=["run_date"])
    from deltalake import write_deltalake

    write_deltalake(lake.uri("recommendations"), recs(D2).drop_columns(["list"]), mode="append", partition_by=["run_date"])
    lake.replace_partition("recommendations", recs(D1), run_date=D1)
    out = lake.read_pandas("recommendations")
    assert "list" in out.columns and len(out) == 12
    assert out.loc[out.run_date == D2, "list"].isna().all()
    docs = {f.name: f.metadata.get("doc") for f in lake.table("recommendations").schema().fields}
    assert docs["list"] == RECOMMENDATIONS.column_doc("list")


def test_spark_reads_partition_values_from_folders_only_where_they_match_the_log(spark, lake, monkeypatch):
    """Files under run_date=<value>/ (delta-rs's layout, and write_spark's replace_partition: run_date=<value>/
    batch-<id>/) are read with Spark's partition discovery; the rows equal those of the join by file path,
    which stays for any other layout (write_spark's append: batch-<id>/run_date=<value>/)."""
    import coldstart.lake as lake_module
    from coldstart.lake import _hive_laid_out

    def actions():
        return pa.table(lake.table("recommendations").get_add_actions(flatten=True)).to_pylist()

    def plan(df):
        return df._jdf.queryExecution().toString()

    lake.replace_partition("recommendations", recs(D1), run_date=D1)
    lake.write_spark(spark.createDataFrame(recs(D2, model="m2").to_pandas()), "recommendations", "replace_partition",
                     {"run_date": D2})
    assert _hive_laid_out(actions(), ("run_date",)), [a["path"] for a in actions()]
    fast = lake.read_spark(spark, "recommendations")
    assert "_file_key" not in plan(fast)
    with monkeypatch.context() as m:
        m.setattr(lake_module, "_hive_laid_out", lambda actions, partition_by: False)
        joined = lake.read_spark(spark, "recommendations")
        assert "_file_key" in plan(joined)
        key = ["run_date", "user_id", "rank"]
        a, b = (df.toPandas().sort_values(key).reset_index(drop=True) for df in (fast, joined))
    assert list(a.columns) == list(b.columns) == RECOMMENDATIONS.schema.names and a.equals(b) and len(a) == 12
    assert sorted(a["run_date"].unique()) == [D1, D2] and set(a.loc[a["run_date"] == D2, "model_version"]) == {"m2"}
    lake.write_spark(spark.createDataFrame(recs(dt.date(2024, 1, 3)).to_pandas()), "recommendations", "append")
    assert not _hive_laid_out(actions(), ("run_date",))
    appended = lake.read_spark(spark, "recommendations")
    assert "_file_key" in plan(appended) and appended.count() == 18
    # a folder that disagrees with the log, one Spark would unescape, or a second key=value folder: the join
    one = actions()[0]
    for path in ("run_date=2024-01-05/part.parquet", "run_date=2024-01-01/x=1/part.parquet", "part.parquet"):
        assert not _hive_laid_out([{**one, "partition.run_date": D1, "path": path}], ("run_date",)), path
    assert not _hive_laid_out([{**one, "partition.run_date": "a%b", "path": "run_date=a%25b/p.parquet"}], ("run_date",))
    assert _hive_laid_out([{**one, "partition.run_date": D1, "path": "run_date=2024-01-01/batch-1/p.parquet"}], ("run_date",))
    assert _hive_laid_out([{**one, "partition.run_date": None, "path": "run_date=__HIVE_DEFAULT_PARTITION__/p.parquet"}],
                          ("run_date",))
