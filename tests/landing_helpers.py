"""Write small landing folders for tests."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from coldstart.landing import day_dir, mark_complete


def land(root, source: str, day: dt.date, lines, name: str = "part-0.jsonl", complete: bool = True) -> Path:
    """Write rows (dicts become JSON lines, str/bytes are written as they are) into a day folder."""
    folder = day_dir(root, source, day)
    folder.mkdir(parents=True, exist_ok=True)
    data = bytearray()
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        data += line if isinstance(line, bytes) else line.encode("utf-8")
        data += b"\n"
    (folder / name).write_bytes(bytes(data))
    if complete:
        mark_complete(folder)
    return folder


def event(i, day: dt.date, **overrides) -> dict:
    row = {"event_id": f"e{i}", "user_id": f"u{i % 5}", "item_id": f"i{i % 7}", "event_type": "click",
           "ts": f"{day.isoformat()}T12:00:{i % 60:02d}Z", "scene": "home"}
    row.update(overrides)
    return row
