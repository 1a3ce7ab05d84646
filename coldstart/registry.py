"""The model registry: the model_registry table, one row per model naming its checkpoint and its parent.

A night's model in use is its ``ready`` row. A re-run of a night that trains the same model (same
checksum) keeps its row and folder; one that trains another model publishes it beside the old one and
marks the old row ``superseded``, keeping its checkpoint: a later night's ``parent_version`` always names
a row whose checkpoint exists (until `coldstart vacuum` removes it, which then says ``removed``).
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from coldstart import storage
from coldstart.catalog import MODEL_REGISTRY
from coldstart.lake import Lake


def registry_row(lake: Lake, run_date: dt.date) -> dict | None:
    """The model in use for ``run_date`` (its ready model_registry row) as a dict, or None when that night
    has no model."""
    return lake.registered_model(run_date)


def publish_checkpoint(ckpt, home: str) -> tuple[str, str]:
    """Publish ``ckpt`` and return (location, checksum) without ever replacing a published checkpoint: at
    ``home`` (``<models>/<run_date>``, a local folder or an ``s3://`` prefix) when nothing is published
    there, reused when the checkpoint there (or at ``home-<checksum[:12]>``) is the same one, else at
    ``home-<checksum[:12]>``. A checkpoint the registry names, or that a concurrent run is registering,
    keeps its files (see :meth:`Checkpoint.save` with ``exclusive=True``)."""
    from coldstart.model import CheckpointExistsError

    home = storage.normalize(str(home))
    try:
        return home, ckpt.save(home, exclusive=True)
    except CheckpointExistsError as taken:
        versioned = f"{home}-{taken.checksum[:12]}"
        try:
            return versioned, ckpt.save(versioned, exclusive=True)
        except CheckpointExistsError:
            raise RuntimeError(f"cannot publish checkpoint {taken.checksum[:12]}: {home} and {versioned} are taken") from None


def register(lake: Lake, row: dict) -> dict:
    """Make ``row`` the ready model of its run date in one commit; a different model that was ready for
    that date becomes ``superseded`` (its row and checkpoint stay, for the nights built on it)."""
    previous = registry_row(lake, row["run_date"])
    rows = [row]
    if previous is not None and previous["model_version"] != row["model_version"]:
        rows.append({**previous, "status": "superseded"})
    lake.merge("model_registry", pa.Table.from_pylist(rows, schema=MODEL_REGISTRY.schema))
    return row
