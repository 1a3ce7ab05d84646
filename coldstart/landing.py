"""The landing-zone contract: ``<root>/<source>/date=YYYY-MM-DD/`` with a ``_SUCCESS`` marker when complete.

The root is any location :mod:`coldstart.storage` resolves (a local folder or an ``s3://`` prefix); files
are named by URI strings (an absolute path for a local root).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from coldstart import storage

SOURCES = ("interactions", "items", "users")
MARKER = "_SUCCESS"
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


class LandingError(RuntimeError):
    """A required landing folder or marker is missing (the message names the path)."""


def day_uri(root: str | Path, source: str, day: dt.date) -> str:
    """The folder (or prefix) of one source and day."""
    return storage.join(storage.normalize(str(root)), source, f"date={day.isoformat()}")


def day_dir(root: str | Path, source: str, day: dt.date) -> Path:
    """:func:`day_uri` as a local :class:`~pathlib.Path`, for tools that write a local landing zone."""
    return Path(storage.local_path(day_uri(root, source, day)))


def mark_complete(folder: str | Path) -> None:
    """Write the ``_SUCCESS`` marker: the producer's last step, after every data file."""
    storage.touch(storage.join(str(folder), MARKER))


def is_complete(root: str | Path, source: str, day: dt.date) -> bool:
    return storage.is_file(storage.join(day_uri(root, source, day), MARKER))


def data_files(folder: str | Path) -> list[str]:
    """Data files of a day folder as URIs, in a stable order (hidden and marker files skipped)."""
    return [e.uri for e in storage.list_dir(str(folder))
            if e.is_file and not e.name.startswith(("_", ".")) and e.name.lower().endswith(DATA_SUFFIXES)]


def day_files(root: str | Path, source: str, day: dt.date, required: bool) -> list[str] | None:
    """Files of one source and day. Missing and required -> LandingError; missing and optional -> None.
    A folder without its marker is still being written: an error even for optional sources."""
    folder = day_uri(root, source, day)
    entries = storage.list_dir(folder)
    if not entries:  # on S3 a folder exists only through its objects
        if required:
            raise LandingError(f"landing folder missing: {folder} (the {source} of {day} have not arrived)")
        return None
    if not any(e.name == MARKER and e.is_file for e in entries):
        raise LandingError(f"landing folder {folder} has no {MARKER} marker: it is still being written")
    return data_files(folder)
