"""Quality benchmark: the model against every baseline, next-day Recall@20, with paired bootstrap intervals.

    .venv/bin/python bench/quality_bench.py                   # both worlds (~25 min on 2 cores)
    .venv/bin/python bench/quality_bench.py --world replay    # the bundled MovieLens replay only
    .venv/bin/python bench/quality_bench.py --world synth     # the synthetic world only

Each world runs night by night through the real stages, in one process with one Spark session:
ingest, embed, train (cold on the first night, then warm from D-1: the normal nightly chain), score
and evaluate with the baselines on (popularity, item-kNN, EASE, content-kNN, ALS, fitted by the
evaluate stage on the same protocol). The per-user values come from the ``evaluation_users`` table.

* **replay**: the bundled MovieLens sample, bootstrap day + ``--replay-days`` days; every night's
  lists are evaluated against the next day's events. Target slices: ``all`` and ``cold_items``.
* **synth**: ``coldstart synth`` with many new users a day (``--synth-new-users``). Target slices:
  ``all`` and ``cold_users``.

The target: the model's mean beats every baseline on each target slice. For each target slice the
report gives the paired bootstrap 95 % interval (user-days resampled) of model − best baseline and
model − each baseline. Writes ``bench/results/quality.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from coldstart.config import Settings  # noqa: E402
from coldstart.report import paired_bootstrap  # noqa: E402

log = logging.getLogger("bench.quality")

START = dt.date(2024, 1, 1)
K = 20
SLICES = ("all", "cold_users", "warm_users", "cold_items", "cold_only")
TARGETS = {"replay": ("all", "cold_items"), "synth": ("all", "cold_users")}


def world_settings(work: Path) -> Settings:
    return Settings.load(env={}, landing=str(work / "landing"), lake=str(work / "lake"), models=str(work / "models"),
                         reports=str(work / "reports"), spark_shuffle_partitions=2, baselines=True)


def land_world(world: str, settings: Settings, args) -> list[dt.date]:
    if world == "replay":
        from coldstart.replay import replay

        return replay(settings.landing, START, days=args.replay_days).all_days
    from coldstart.synth import SynthConfig, synth

    cfg = SynthConfig(users=args.synth_users, items=args.synth_items, events_per_day=args.synth_events,
                      days=args.synth_days + 1, new_users_per_day=args.synth_new_users,
                      new_items_per_day=args.synth_new_items, start=START)
    return [dt.date.fromisoformat(day.date) for day in synth(settings.landing, cfg)]


def run_world(world: str, spark, args) -> dict:
    from coldstart.pipeline import STAGES, run_stage

    work = Path(args.work).resolve() / world
    shutil.rmtree(work, ignore_errors=True)
    settings = world_settings(work)
    days = land_world(world, settings, args)
    seconds: dict[str, float] = {stage: 0.0 for stage in STAGES}
    started = time.perf_counter()
    for day in days:
        for stage in STAGES:
            t0 = time.perf_counter()
            run_stage(stage, settings, day, spark=spark)
            seconds[stage] += time.perf_counter() - t0
        log.info("%s: night %s done (%.0f s so far)", world, day, time.perf_counter() - started)
    from coldstart.lake import Lake

    users = Lake.from_settings(settings).read_pandas("evaluation_users")
    recalls = users[(users["metric"] == "recall") & (users["k"] == K)]
    return {"days": days, "recalls": recalls, "seconds": seconds, "wall": time.perf_counter() - started,
            "settings": settings}


def world_report(world: str, res: dict, args) -> tuple[list[str], bool]:
    recalls, days = res["recalls"], res["days"]
    means = recalls.groupby(["method", "slice"])["value"].agg(["mean", "size"])
    methods = ["model"] + sorted(m for m in recalls["method"].unique() if m != "model")
    baselines = methods[1:]
    nights = sorted(recalls["run_date"].unique())
    s: Settings = res["settings"]
    lines = [
        f"## World: {world}",
        "",
        f"Days: {days[0]} (first night: cold training) .. {days[-1]}; {len(nights)} evaluated nights "
        f"({nights[0]} .. {nights[-1]}), the lists of each night against the next day's events.  ",
        f"Model: warm chain (epochs warm={s.train_epochs_warm}, cold={s.train_epochs_full}, replay sample="
        f"{s.train_replay_sample}, dim={s.model_dim}, id dropout={s.train_id_dropout}, learning rate "
        f"{s.train_learning_rate} (id tables {s.train_id_learning_rate}), cold-user popularity boost "
        f"{s.cold_user_popularity_boost}, seed={s.seed}).  ",
        f"Stage seconds over all nights: " + ", ".join(f"{k} {v:.0f}" for k, v in res["seconds"].items()) +
        f"; wall {res['wall']:.0f} s.",
        "",
        f"### Next-day Recall@{K} (mean over user-days; n = user-days)",
        "",
        "| method | " + " | ".join(SLICES) + " |",
        "|---|" + "---:|" * len(SLICES),
    ]
    for m in methods:
        cells = [f"{means.loc[(m, sl), 'mean']:.4f} (n={int(means.loc[(m, sl), 'size'])})" if (m, sl) in means.index
                 else "-" for sl in SLICES]
        lines.append(f"| {'**model**' if m == 'model' else m} | " + " | ".join(cells) + " |")
    lines += ["", f"### Paired bootstrap of the model against the baselines ({args.resamples} resamples of user-days, "
                  f"seed {args.seed}), 95 % interval", "",
              "| slice | baseline | user-days | model | baseline | model − baseline | 95 % interval |",
              "|---|---|---:|---:|---:|---:|---|"]
    met = True
    verdicts = []
    for sl in TARGETS[world]:
        part = recalls[recalls["slice"] == sl]
        base_means = {b: means.loc[(b, sl), "mean"] for b in baselines if (b, sl) in means.index}
        if ("model", sl) not in means.index or not base_means:
            met = False
            verdicts.append(f"{sl}: no data")
            continue
        best = max(base_means, key=base_means.get)
        for b in sorted(base_means, key=base_means.get, reverse=True):
            r = paired_bootstrap(part, "model", b, args.resamples, args.seed)
            name = f"**{b}** (best)" if b == best else b
            lines.append(f"| {sl} | {name} | {r['n']} | {means.loc[('model', sl), 'mean']:.4f} | "
                         f"{base_means[b]:.4f} | {r['mean']:+.4f} | [{r['low']:+.4f}, {r['high']:+.4f}] |")
        beats = means.loc[("model", sl), "mean"] > base_means[best]
        met &= bool(beats)
        verdicts.append(f"{sl}: model {means.loc[('model', sl), 'mean']:.4f} vs best baseline {best} "
                        f"{base_means[best]:.4f} ({'beats' if beats else 'does NOT beat'})")
    lines += ["", f"Target (the model's mean beats every baseline on {' and '.join(TARGETS[world])}): "
                  f"**{'met' if met else 'NOT met'}**: " + "; ".join(verdicts) + ".", ""]
    daily = recalls[recalls["slice"] == "all"].groupby(["run_date", "method"])["value"].mean().unstack()[methods]
    lines += [f"### Per night (Recall@{K}, all slice)", "", "| evaluated day | " + " | ".join(methods) + " |",
              "|---|" + "---:|" * len(methods)]
    for day, row in daily.iterrows():
        lines.append(f"| {day} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    return lines + [""], met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", choices=("both", "replay", "synth"), default="both")
    parser.add_argument("--work", default=str(ROOT / "var" / "bench" / "quality"), help="scratch folder (replaced)")
    parser.add_argument("--replay-days", type=int, default=14)
    parser.add_argument("--synth-days", type=int, default=6, help="days after the bootstrap day")
    parser.add_argument("--synth-users", type=int, default=3000)
    parser.add_argument("--synth-items", type=int, default=2000)
    parser.add_argument("--synth-events", type=int, default=20000, help="events per day")
    parser.add_argument("--synth-new-users", type=int, default=600, help="new users per day")
    parser.add_argument("--synth-new-items", type=int, default=100, help="new items per day")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("coldstart.model", "coldstart.lake", "py4j", "coldstart.ingest", "coldstart.embed", "coldstart.encoder",
                  "coldstart.report"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from coldstart.spark import get_session

    command = " ".join([".venv/bin/python", "bench/quality_bench.py", *(argv if argv is not None else sys.argv[1:])])
    worlds = ("replay", "synth") if args.world == "both" else (args.world,)
    spark = get_session(world_settings(Path(args.work).resolve() / worlds[0]), app_name="quality-bench")
    load = os.getloadavg()
    sections, verdicts = [], {}
    for world in worlds:
        lines, verdicts[world] = world_report(world, run_world(world, spark, args), args)
        sections += lines
    load_end = os.getloadavg()
    text = "\n".join([
        "# Quality benchmark: the model against every baseline (next-day Recall@20)",
        "",
        f"Command: `{command}`  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; host {platform.node()}, {os.cpu_count()} cores; "
        f"load average {load[0]:.1f} at the start, {load_end[0]:.1f} at the end (quality does not depend on it).  ",
        "Protocol: `coldstart.evaluate` (targets had an event before the evaluated day; truth = items they "
        "interacted with that day and never before); baselines fitted by the evaluate stage on the active window "
        "(`coldstart.baselines`).",
        "",
        "Verdicts: " + ", ".join(f"{w} **{'met' if ok else 'NOT met'}**" for w, ok in verdicts.items()) + ".",
        "",
        *sections,
    ])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
