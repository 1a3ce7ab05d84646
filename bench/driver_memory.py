"""Driver memory against the number of users: each stage's seconds and the driver's peak memory
(from ``stage_runs``) on synthetic worlds that differ only in their users.

    .venv/bin/python bench/driver_memory.py --users 10000 50000 200000
    .venv/bin/python bench/driver_memory.py --users 10000 --before /work/main   # also score with another checkout

Each world: ``coldstart.synth`` with the given users, 1,000 items and no new users or items (the same
catalogue at every size), 5 events per user per day, 3 days, 2 % of the users with a profile (the
encoder is not what is measured; 30 %, synth's default, would spend the bench in embed). Nights 1 and
2 run every stage in one process (``coldstart run``); night 3, the one reported, runs each stage as
its own ``coldstart run --stages <stage>`` process on ``local[2]``, so that the driver's peak resident
set (``driver_python_peak_rss_bytes``: the process's VmHWM, not ru_maxrss, which Linux carries over from this
script's own process; ``driver_jvm_peak_rss_bytes``: the
JVM's VmHWM) is that stage's own; the executors' peaks (``executor_jvm_peak_rss_bytes``,
``executor_python_peak_rss_bytes``: Spark's executor metrics; in local mode the executor is the driver's JVM,
and its Python workers are the mapInArrow processes) come from the same row. ``--reuse`` reruns night 3 on the
lakes a previous run left. With ``--before <checkout>``, night 3's score stage is run once
more with that checkout's code first (same lake, same model: the stage is idempotent for its date),
so the table has both side by side. Results: a markdown table on stdout (and ``--output``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

START = dt.date(2024, 1, 1)
DAYS = 3
ITEMS = 1000
EVENTS_PER_USER_PER_DAY = 5
STAGES = ("ingest", "embed", "train", "score", "evaluate")


def settings_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"COLDSTART_LANDING": str(root / "landing"), "COLDSTART_LAKE": str(root / "lake"),
                "COLDSTART_MODELS": str(root / "models"), "COLDSTART_REPORTS": str(root / "reports"),
                "COLDSTART_SPARK_MASTER": "local[2]", "COLDSTART_BASELINES": "false"})
    return env


def run_cli(env: dict, code: Path, *args: str) -> float:
    env = {**env, "PYTHONPATH": str(code)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "coldstart.cli", "-q", *args], env=env, check=True, cwd=code)
    return time.perf_counter() - started


def stage_row(root: Path, day: dt.date, stage: str) -> dict:
    from coldstart.lake import Lake

    runs = Lake(str(root / "lake")).read_pandas("stage_runs", filters=[("run_date", "=", day), ("stage", "=", stage)])
    return runs.iloc[0].to_dict()


def world(users: int, root: Path, before: Path | None, reuse: bool = False,
          stages: tuple[str, ...] = STAGES) -> list[dict]:
    """Build the world of ``users`` and run its nights (``reuse``: keep the lake of an earlier run of this
    size and rerun night 3 only, stage by stage; every stage is idempotent for its date)."""
    from coldstart.synth import SynthConfig, synth

    cfg = SynthConfig(users=users, items=ITEMS, events_per_day=EVENTS_PER_USER_PER_DAY * users, days=DAYS,
                      new_items_per_day=0, new_users_per_day=0, profile_share=0.02, start=START)
    env = settings_env(root)
    days = [cfg.day(i) for i in range(DAYS)]
    if not reuse:
        shutil.rmtree(root, ignore_errors=True)
        synth(root / "landing", cfg)
        # nights 1-2 run the same stages (train's figure needs no score or evaluate before it)
        nights = run_cli(env, ROOT, "run", "--from", str(days[0]), "--to", str(days[-2]), "--stages", ",".join(stages))
        print(f"[{users}] nights 1-2: {nights:.0f} s", flush=True)
    elif not (root / "lake").exists():
        raise SystemExit(f"--reuse: no lake at {root / 'lake'}; run this size once without --reuse")
    rows = []
    last = days[-1]
    for stage in stages:
        if stage == "score" and before is not None:
            wall = run_cli(env, before, "run", "--date", str(last), "--stages", stage)
            rows.append({"users": users, "code": "before", "wall": wall, **stage_row(root, last, stage)})
            print(f"[{users}] score (before) {wall:.0f} s", flush=True)
        wall = run_cli(env, ROOT, "run", "--date", str(last), "--stages", stage)
        rows.append({"users": users, "code": "this", "wall": wall, **stage_row(root, last, stage)})
        print(f"[{users}] {stage} {wall:.0f} s", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    mib = 1 << 20
    def mib_text(value) -> str:
        return "-" if value is None or value != value else f"{value / mib:.0f}"

    out = ["| users | stage | code | seconds | wall s | driver Python peak MiB | driver JVM peak MiB "
           "| executor JVM peak MiB | executor Python workers peak MiB | rows out |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['users']:,} | {r['stage']} | {r['code']} | {r['seconds']:.1f} | {r['wall']:.1f} | "
                   f"{r['driver_python_peak_rss_bytes'] / mib:.0f} | {mib_text(r.get('driver_jvm_peak_rss_bytes'))} | "
                   f"{mib_text(r.get('executor_jvm_peak_rss_bytes'))} | "
                   f"{mib_text(r.get('executor_python_peak_rss_bytes'))} | {r.get('rows_out')} |")
    return "\n".join(out)


def ratios(rows: list[dict]) -> str:
    lines = []
    sizes = sorted({r["users"] for r in rows})
    for stage in STAGES:
        for code in ("this", "before"):
            mine = {r["users"]: r for r in rows if r["stage"] == stage and r["code"] == code}
            if len(mine) < 2 or sizes[0] not in mine:
                continue
            base = mine[sizes[0]]["driver_python_peak_rss_bytes"]
            parts = [f"{n:,}: {mine[n]['driver_python_peak_rss_bytes'] / base:.2f}x" for n in sizes[1:] if n in mine]
            lines.append(f"- {stage} ({code}): driver Python peak against {sizes[0]:,} users: " + ", ".join(parts))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--work", default="/tmp/coldstart-driver-memory")
    parser.add_argument("--before", default=None, help="another checkout whose score stage runs beside this one's")
    parser.add_argument("--output", default=None)
    parser.add_argument("--reuse", action="store_true", help="rerun night 3 on the lakes an earlier run left in --work")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="the stages to run (on a fresh world nights 1-2 run them too, so a prefix of the "
                             "stages; with --reuse night 3 only, any subset)")
    args = parser.parse_args()
    rows = []
    for users in args.users:
        rows += world(users, Path(args.work) / str(users), Path(args.before) if args.before else None, args.reuse,
                      tuple(args.stages))
        text = table(rows) + "\n\n" + ratios(rows) + "\n"
        print(text, flush=True)
        if args.output:
            Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
