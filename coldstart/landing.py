"""The landing-zone contract: ``<root>/<source>/date=YYYY-MM-DD/`` with a ``_SUCCESS`` marker when complete."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

SOURCES = ("interactions", "items", "users")
MARKER = "_SUCCESS"
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


class LandingError(RuntimeError):
    """A required landing folder or marker is missing (the message names the path)."""


def day_dir(root: str | Path, source: str, day: dt.date) -> Path:
    return Path(root) / source / f"date={day.isoformat()}"


def mark_complete(folder: Path) -> None:
    (Path(folder) / MARKER).touch()


def is_complete(root: str | Path, source: str, day: dt.date) -> bool:
    return (day_dir(root, source, day) / MARKER).exists()


def data_files(folder: Path) -> list[Path]:
    """Data files of a day folder, in a stable order (hidden and marker files skipped)."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and not p.name.startswith(("_", ".")) and p.name.lower().endswith(DATA_SUFFIXES))


def day_files(root: str | Path, source: str, day: dt.date, required: bool) -> list[Path] | None:
    """Files of one source and day. Missing and required -> LandingError; missing and optional -> None.
    A folder without its marker is still being written: an error even for optional sources."""
    folder = day_dir(root, source, day)
    if not folder.exists():
        if required:
            raise LandingError(f"landing folder missing: {folder} (the {source} of {day} have not arrived)")
        return None
    if not (folder / MARKER).exists():
        raise LandingError(f"landing folder {folder} has no {MARKER} marker: it is still being written")
    return data_files(folder)
