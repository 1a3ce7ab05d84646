"""Analyst access: DuckDB over the Delta tables, each table a view by its catalog name."""

from __future__ import annotations

import os
from pathlib import Path

from coldstart.catalog import TABLES
from coldstart.config import Settings
from coldstart.lake import Lake


def duckdb_connection(settings: Settings):
    """A DuckDB connection with one view per existing table (offline: the delta extension from its wheel)."""
    import duckdb
    import duckdb_ext

    ext_dir = os.path.join(list(duckdb_ext.__path__)[0], "extensions")
    con = duckdb.connect(config={"extension_directory": ext_dir, "autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False})
    con.load_extension("delta")
    lake = Lake.from_settings(settings)
    for name in TABLES:
        if lake.exists(name):
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM delta_scan('{lake.uri(name)}')")
    return con


def run_sql(settings: Settings, sql: str, output: str | None = None):
    """Run a query; write CSV/Parquet when output ends with .csv/.parquet, else return a DataFrame."""
    con = duckdb_connection(settings)
    rel = con.sql(sql)
    if output:
        suffix = Path(output).suffix.lower()
        if suffix == ".csv":
            rel.write_csv(output)
        elif suffix == ".parquet":
            rel.write_parquet(output)
        else:
            raise ValueError(f"--output must end with .csv or .parquet, got {output}")
        return None
    return rel.df()
