"""Two nights with every path on s3:// (a moto S3 server over HTTP), and what other readers see there."""

from __future__ import annotations

import pyarrow as pa
import pytest

from coldstart import storage
from coldstart.lake import Lake

pytestmark = pytest.mark.distributed


def test_nothing_of_the_nights_is_on_local_disk(s3_night):
    settings, plan, days, results = s3_night
    for location in (settings.landing, settings.lake, settings.models, settings.reports):
        assert storage.is_remote(location) and storage.walk_files(location)
    assert storage.is_file(storage.join(settings.reports, "report.html"))
    assert [(d, s) for (d, s) in results] == [(d, s) for d in days for s in ("ingest", "embed", "train", "score", "evaluate")]


def test_audit_balances_on_both_nights(s3_night):
    settings, plan, days, results = s3_night
    lake = Lake.from_settings(settings)
    audit = lake.read_pandas("ingest_audit")
    assert sorted(set(audit["run_date"])) == days
    for row in audit.itertuples():
        assert row.rows_read == row.rows_accepted + row.rows_quarantined + row.rows_duplicate, row
    stored = lake.partition_rows("interactions", "run_date")
    for day in days:
        accepted = audit[(audit["run_date"] == day) & (audit["source"] == "interactions")]["rows_accepted"].item()
        assert accepted == stored[day] > 0  # the night's own rows, not the table's (night 2 would double)
    assert sum(stored.values()) == lake.table("interactions").count()


def test_checkpoints_are_published_on_s3_and_score_verified_them(s3_night):
    from coldstart.model import Checkpoint, checkpoint_files

    settings, plan, days, results = s3_night
    lake = Lake.from_settings(settings)
    registry = lake.read_pandas("model_registry").sort_values("run_date")
    assert list(registry["run_date"]) == days and list(registry["mode"])[1] == "warm"
    for row in registry.itertuples():
        assert row.checkpoint_uri.startswith("s3://")
        files = checkpoint_files(row.checkpoint_uri)
        assert all(storage.is_file(u) for u in files.values())
        assert Checkpoint.load(row.checkpoint_uri, expected_checksum=row.checksum).checksum == row.checksum
    recs = lake.read_arrow("recommendations")
    assert set(recs.column("run_date").to_pylist()) == set(days)


def test_duckdb_polars_and_deltalake_read_the_same_rows_from_s3(s3_night):
    import polars as pl
    from deltalake import DeltaTable

    from coldstart.query import duckdb_connection

    settings, plan, days, results = s3_night
    lake = Lake.from_settings(settings)
    con = duckdb_connection(settings)
    for name in ("interactions", "recommendations", "ingest_audit", "items"):
        uri = lake.uri(name)
        expected = DeltaTable(uri, storage_options=lake.storage_options).to_pyarrow_table()
        via_duckdb = con.sql(f"SELECT * FROM {name}").fetch_arrow_table()
        # polars hands the options to its own object store, which knows only the AWS_* keys
        via_polars = pl.read_delta(uri, storage_options={k: v for k, v in lake.storage_options.items()
                                                         if k.startswith("AWS_")})
        assert via_duckdb.num_rows == via_polars.height == expected.num_rows > 0, name
        columns = _flat_columns(name)
        assert _rows(via_duckdb, columns) == _rows(expected, columns) == _rows(via_polars.to_arrow(), columns), name


def _flat_columns(name: str) -> list[str]:
    """The columns of primitive type (the readers differ in how they hand back maps and lists)."""
    from coldstart.catalog import table

    return [f.name for f in table(name).schema if not pa.types.is_nested(f.type)]


def _rows(data: pa.Table, key: list[str]) -> list:
    return sorted(tuple(str(v) for v in row.values()) for row in data.select(key).to_pylist())
