"""Analyst access: DuckDB over the Delta tables, each table a view by its catalog name."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from coldstart import storage
from coldstart.catalog import TABLES
from coldstart.config import Settings
from coldstart.lake import CorruptTableError, Lake

log = logging.getLogger("coldstart.query")


def duckdb_connection(settings: Settings):
    """A DuckDB connection with one view per existing table (offline: the delta extension from its wheel).

    For a lake on ``s3://`` the httpfs extension is loaded too, and a session-only S3 secret is made from
    the standard AWS environment variables (never written to disk).
    A table whose Delta log is damaged gets a view that fails with the damage's message when queried, so
    the other tables stay queryable."""
    import duckdb
    import duckdb_ext

    ext_dir = os.path.join(list(duckdb_ext.__path__)[0], "extensions")
    con = duckdb.connect(config={"extension_directory": ext_dir, "autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False})
    con.load_extension("delta")
    lake = Lake.from_settings(settings)
    if storage.is_remote(lake.root):
        con.load_extension("httpfs")
        con.execute(_s3_secret_sql())
    for name in TABLES:
        try:
            exists = lake.check_log(name) is not None
        except CorruptTableError as exc:
            log.warning("%s", exc)
            # the catalog's columns, so that a query binds and then fails on the scan with this message
            # (a bare error() column would be optimised away by count(*))
            message = str(exc).replace("'", "''")
            columns = ", ".join(f'NULL AS "{c}"' for c in TABLES[name].columns)
            con.execute(f"CREATE VIEW {name} AS SELECT {columns} FROM range(1) WHERE error('{message}') IS NULL")
            continue
        if exists:
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM delta_scan('{lake.uri(name)}')")
    return con


def _s3_secret_sql() -> str:
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
    parts = ["TYPE s3"]
    if env.get("AWS_ACCESS_KEY_ID"):
        parts += [f"KEY_ID {_quote(env['AWS_ACCESS_KEY_ID'])}", f"SECRET {_quote(env.get('AWS_SECRET_ACCESS_KEY', ''))}"]
        if env.get("AWS_SESSION_TOKEN"):
            parts.append(f"SESSION_TOKEN {_quote(env['AWS_SESSION_TOKEN'])}")
    else:
        parts.append("PROVIDER credential_chain")
    parts.append(f"REGION {_quote(env.get('AWS_REGION') or env.get('AWS_DEFAULT_REGION') or 'us-east-1')}")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        host = host or scheme
        parts += [f"ENDPOINT {_quote(host.rstrip('/'))}", "URL_STYLE 'path'",
                  f"USE_SSL {'false' if endpoint.startswith('http://') else 'true'}"]
    return f"CREATE OR REPLACE TEMPORARY SECRET coldstart_s3 ({', '.join(parts)})"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


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
