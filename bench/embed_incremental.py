"""Incremental embedding cost: a night where 1% of the entities changed vs a full re-embed.

    .venv/bin/python bench/embed_incremental.py [--items 20000] [--out bench/results/embed_incremental.md]

Both runs go through the real embed stage (Spark anti-join on content_hash + mapInPandas encoding +
one Delta merge), in the same process and Spark session, side by side; medians over repeats.
Target: the 1%-changed night costs under 5% of a full re-embed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from coldstart.catalog import TABLES  # noqa: E402
from coldstart.config import Settings  # noqa: E402
from coldstart.embed import embed  # noqa: E402
from coldstart.lake import Lake  # noqa: E402
from coldstart.spark import get_session  # noqa: E402

WORDS = ("space war love crime comedy family music history robot ocean city detective horror western magic "
         "school sport dragon island train").split()


def texts(n: int, version: int, rng) -> dict[str, str]:
    return {f"i{i}": f"{' '.join(rng.choice(WORDS, 8))} (version {version}) | tags: {', '.join(rng.choice(WORDS, 3))}"
            for i in range(n)}


def put(lake: Lake, rows: dict[str, str], day: dt.date) -> None:
    table = [{"item_id": i, "title": t, "description": None, "tags": [], "attributes": [], "active": True,
              "content_text": t, "content_hash": hashlib.sha256(t.encode()).hexdigest(), "first_seen": day,
              "first_interaction": None, "updated_at": None, "last_run_date": day} for i, t in rows.items()]
    lake.merge("items", pa.Table.from_pylist(table, schema=TABLES["items"].schema))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    full_times, incr_times = [], []
    spark = None
    for rep in range(args.repeats):
        root = Path(tempfile.mkdtemp(prefix="embed-bench-"))
        settings = Settings.load(env={}, lake=str(root / "lake"), spark_shuffle_partitions=2)
        spark = spark or get_session(settings)
        lake = Lake.from_settings(settings)
        base = texts(args.items, 0, rng)
        put(lake, base, dt.date(2024, 1, 1))
        t = time.perf_counter()
        embed(spark, settings, dt.date(2024, 1, 1))
        full_times.append(time.perf_counter() - t)
        changed = {k: v + " new" for k, v in list(base.items())[: max(1, args.items // 100)]}
        put(lake, changed, dt.date(2024, 1, 2))
        t = time.perf_counter()
        counts = embed(spark, settings, dt.date(2024, 1, 2))
        incr_times.append(time.perf_counter() - t)
        assert counts["items"] == len(changed), counts
        print(f"repeat {rep}: full {full_times[-1]:.1f}s, 1% changed {incr_times[-1]:.1f}s", flush=True)
    full, incr = statistics.median(full_times), statistics.median(incr_times)
    report = (f"# Incremental embedding\n\n`{' '.join(sys.argv)}` on {dt.date.today()} (2 cores, CPU fp32).\n\n"
              f"| run | entities encoded | median wall time (s) |\n|---|---|---|\n"
              f"| full embed | {args.items} | {full:.1f} |\n| night with 1% changed | {max(1, args.items // 100)} | {incr:.1f} |\n\n"
              f"Ratio: **{incr / full:.1%}** of a full re-embed (target < 5%). Repeats: full {[round(x, 1) for x in full_times]}, "
              f"incremental {[round(x, 1) for x in incr_times]}.\n")
    print(report)
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
