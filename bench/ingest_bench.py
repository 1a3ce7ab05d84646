"""Ingest benchmark: synthetic 1M-event days through the real ingest (Spark local[2], Delta), with
rows/s and peak memory of the driver, the JVM and the Python workers.

    .venv/bin/python bench/ingest_bench.py --events 1000000 --days 3 [--out bench/results/ingest.md]

Days are ingested in order, so day 3 dedups against stored day 2 (the lateness window) while day 1
has no history: equal times mean a day's cost does not grow with what is stored. Also measures the
validator alone (one Python process per file, CPU seconds) to show where the Python time goes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coldstart.config import Settings  # noqa: E402
from coldstart.ingest import Rules, ingest, parse_file  # noqa: E402
from coldstart.landing import day_files  # noqa: E402
from coldstart.synth import SynthConfig, synth  # noqa: E402


class MemorySampler(threading.Thread):
    """Peak RSS over the process tree, split into driver (this process), JVM and Python workers."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval, self.stop_flag = interval, threading.Event()
        self.peak = {"driver": 0, "jvm": 0, "python_workers": 0, "total": 0}

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop_flag.is_set():
            driver, jvm, workers = me.memory_info().rss, 0, 0
            for child in me.children(recursive=True):
                try:
                    rss, name = child.memory_info().rss, child.name()
                except psutil.Error:
                    continue
                if "java" in name:
                    jvm += rss
                elif "python" in name:
                    workers += rss
            for key, value in (("driver", driver), ("jvm", jvm), ("python_workers", workers),
                               ("total", driver + jvm + workers)):
                self.peak[key] = max(self.peak[key], value)
            time.sleep(self.interval)

    def reset(self) -> None:
        self.peak = {k: 0 for k in self.peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None, help="write the results table (markdown) here")
    args = parser.parse_args()

    root = Path(args.workdir or tempfile.mkdtemp(prefix="ingest-bench-"))
    settings = Settings.load(env={}, landing=str(root / "landing"), lake=str(root / "lake"))
    cfg = SynthConfig(users=args.users, items=args.items, events_per_day=args.events, days=args.days,
                      new_items_per_day=1000, new_users_per_day=5000, broken_share=0.01, seed=42)
    t0 = time.perf_counter()
    synth(settings.landing, cfg)
    synth_s = time.perf_counter() - t0
    print(f"synth: {args.days} day(s) of {args.events} events in {synth_s:.1f}s", flush=True)

    # the validator alone, one process, per file of day 1 (CPU seconds)
    rules = Rules.from_settings(settings, cfg.start)
    validator = []
    for path in day_files(settings.landing, "interactions", cfg.start, required=True):
        c0 = time.process_time()
        rows = sum(batch.num_rows for batch in parse_file("interactions", str(path), rules))
        validator.append((os.path.splitext(path)[1], rows, time.process_time() - c0))

    from coldstart.spark import get_session

    sampler = MemorySampler()
    sampler.start()
    t0 = time.perf_counter()
    spark = get_session(settings, app_name="ingest-bench")
    spark.range(1).count()
    session_s = time.perf_counter() - t0
    results = []
    for d in range(args.days):
        day = cfg.day(d)
        sampler.reset()
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        audit = ingest(spark, settings, day)
        seconds = time.perf_counter() - t0
        a = audit.sources["interactions"]
        results.append({"day": day, "seconds": seconds, "rows": a.rows_read, "accepted": a.rows_accepted,
                        "quarantined": a.rows_quarantined, "duplicate": a.rows_duplicate,
                        "items": audit.sources["items"].rows_read, "users": audit.sources["users"].rows_read,
                        "load": load_before, **{f"peak_{k}": v / 2**20 for k, v in sampler.peak.items()}})
        r = results[-1]
        print(f"{day}: {seconds:.1f}s  {r['rows'] / seconds:,.0f} rows/s  accepted={r['accepted']} "
              f"quarantined={r['quarantined']} duplicate={r['duplicate']}  peak MiB driver={r['peak_driver']:.0f} "
              f"jvm={r['peak_jvm']:.0f} workers={r['peak_python_workers']:.0f}  load={load_before:.1f}", flush=True)
    sampler.stop_flag.set()
    spark.stop()

    median = statistics.median(r["seconds"] for r in results)
    lines = [
        f"Run {dt.datetime.now():%Y-%m-%d %H:%M}, `{' '.join(sys.argv)}`; {os.cpu_count()} cores, "
        f"Spark local[2], {args.events:,} interaction rows/day (1% broken), {args.users:,} users, {args.items:,} items.",
        "",
        f"Synth: {synth_s:.1f} s for {args.days} day(s). Spark session start: {session_s:.1f} s (not in the day times).",
        "",
        "| day | seconds | rows/s | read | accepted | quarantined | duplicate | item rows | profile rows "
        "| peak driver MiB | peak JVM MiB | peak Python workers MiB | load avg at start |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['day']} | {r['seconds']:.1f} | {r['rows'] / r['seconds']:,.0f} | {r['rows']:,} | "
                     f"{r['accepted']:,} | {r['quarantined']:,} | {r['duplicate']:,} | {r['items']:,} | {r['users']:,} | "
                     f"{r['peak_driver']:.0f} | {r['peak_jvm']:.0f} | {r['peak_python_workers']:.0f} | {r['load']:.1f} |")
    lines += ["", f"Median day: {median:.1f} s; last day / first day: {results[-1]['seconds'] / results[0]['seconds']:.2f}.",
              "", "Validator alone, one Python process per file of day 1 (CPU seconds):", "",
              "| file | rows | CPU s | µs/row |", "|---|---|---|---|"]
    for suffix, rows, cpu in validator:
        lines.append(f"| {suffix} | {rows:,} | {cpu:.2f} | {cpu / max(rows, 1) * 1e6:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
