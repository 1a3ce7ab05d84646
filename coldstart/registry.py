"""The model registry: the model_registry table, one row per model naming its checkpoint and its parent.

A night's model in use is its ``ready`` row. A re-run of a night that trains the same model (same
checksum) keeps its row and folder; one that trains another model publishes it beside the old one and
marks the old row ``superseded``, keeping its checkpoint: a later night's ``parent_version`` always names
a row whose checkpoint exists (until `coldstart vacuum` removes it, which then says ``removed``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import uuid
from pathlib import Path

import pyarrow as pa

from coldstart.catalog import MODEL_REGISTRY
from coldstart.lake import Lake


def registry_row(lake: Lake, run_date: dt.date) -> dict | None:
    """The model in use for ``run_date`` (its ready model_registry row) as a dict, or None when that night
    has no model."""
    return lake.registered_model(run_date)


def _folder_checksum(path: Path) -> str | None:
    manifest = path / "MANIFEST.json"
    return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None


def publish_checkpoint(ckpt, home: Path) -> tuple[Path, str]:
    """Save ``ckpt`` and return (folder, checksum) without ever replacing a published folder: written to a
    temporary sibling first, then renamed to ``home`` (``models/<run_date>``) when that is free, else
    reused when the folder there (or at ``home-<checksum>``) holds the same checkpoint, else renamed to
    ``home-<checksum[:12]>``. A folder the registry names, or that a concurrent run is registering,
    keeps its files."""
    home.parent.mkdir(parents=True, exist_ok=True)
    staging = home.parent / f".{home.name}.new-{uuid.uuid4().hex[:12]}"
    checksum = ckpt.save(staging)
    try:
        for target in (home, home.parent / f"{home.name}-{checksum[:12]}"):
            if _folder_checksum(target) == checksum:
                return target, checksum
            if not target.exists():
                try:
                    os.rename(staging, target)
                    return target, checksum
                except OSError:  # a concurrent run published there first
                    if _folder_checksum(target) == checksum:
                        return target, checksum
        raise RuntimeError(f"cannot publish checkpoint {checksum[:12]}: {home} and its versioned folder are taken")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def register(lake: Lake, row: dict) -> dict:
    """Make ``row`` the ready model of its run date in one commit; a different model that was ready for
    that date becomes ``superseded`` (its row and checkpoint stay, for the nights built on it)."""
    previous = registry_row(lake, row["run_date"])
    rows = [row]
    if previous is not None and previous["model_version"] != row["model_version"]:
        rows.append({**previous, "status": "superseded"})
    lake.merge("model_registry", pa.Table.from_pylist(rows, schema=MODEL_REGISTRY.schema))
    return row
