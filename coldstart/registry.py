"""The model registry: the model_registry table, one row per run date naming that night's checkpoint."""

from __future__ import annotations

import datetime as dt

from coldstart.lake import Lake


def registry_row(lake: Lake, run_date: dt.date) -> dict | None:
    """The model_registry row of ``run_date`` as a dict, or None when that night has no model."""
    rows = lake.read_arrow("model_registry", filters=[("run_date", "=", run_date)]).to_pylist()
    return rows[0] if rows else None
