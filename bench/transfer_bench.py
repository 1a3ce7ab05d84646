"""Transfer benchmark: daily warm start from D-1 against a full retrain every day, side by side.

    .venv/bin/python bench/transfer_bench.py                # the whole thing (~10 min on 2 busy cores)
    .venv/bin/python bench/transfer_bench.py --baselines    # + every baseline of coldstart.baselines per slice
    .venv/bin/python bench/transfer_bench.py --reuse-lake   # skip replay+ingest+embed if a prepared lake exists

What one run does, in one process with one Spark session:

1. replays the bundled MovieLens sample (bootstrap day + ``--days`` test days) into a landing zone
   and runs ingest + embed for every day into a *base* lake (once);
2. copies the base lake into two lakes, ``warm`` and ``full``, each with its own ``models`` folder, so
   that model_registry, recommendations and evaluation of the two chains never mix;
3. for every day D, for both chains (their order alternating day by day, so that a neighbour
   loading the shared machine hits both alike): train(D) (timed: the train stage's wall time), then
   score(D); then evaluate(D+1) with baselines off, and per-user Recall/NDCG@K of both chains and
   of the popularity baseline (``--baselines``: every baseline) on the same targets;
   * warm chain: the normal nightly chain (bootstrap day trains cold, then warm from D-1 each day);
   * full chain: ``full_retrain=True`` every day (from scratch on all history);
4. reports per chain the train time (median per day and sum over the test days), next-day Recall@20
   (mean over user-days, by slice), and the paired bootstrap 95 % interval of warm - full (and of
   warm - popularity) over user-days, then writes ``bench/results/transfer.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from coldstart.config import Settings  # noqa: E402
from coldstart.catalog import SLICES  # noqa: E402
from coldstart.report import paired_bootstrap  # noqa: E402

log = logging.getLogger("bench.transfer")

START = dt.date(2024, 1, 1)
K = 20
CHAINS = ("warm", "full")
PREPARED_MARKER = "_PREPARED.json"


def base_settings(work: Path, **overrides) -> Settings:
    values = dict(landing=str(work / "landing"), lake=str(work / "base" / "lake"), models=str(work / "base" / "models"),
                  reports=str(work / "reports"), spark_shuffle_partitions=2, baselines=False)
    values.update(overrides)
    return Settings.load(env={}, **values)


def prepare(spark, work: Path, days: int, reuse: bool) -> tuple[Settings, list[dt.date], float]:
    """Replay + ingest + embed every day into the base lake; returns (settings, days, seconds)."""
    from coldstart.pipeline import run_days
    from coldstart.replay import replay

    settings = base_settings(work)
    marker = work / "base" / PREPARED_MARKER
    wanted = {"start": START.isoformat(), "days": days}
    if reuse and marker.exists() and json.loads(marker.read_text()) == wanted:
        log.info("reusing the prepared lake in %s", work / "base")
        plan_days = [START + dt.timedelta(days=i) for i in range(days + 1)]
        return settings, plan_days, 0.0
    shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()
    plan = replay(settings.landing, START, days=days)
    run_days(settings, plan.all_days, stages=["ingest", "embed"], spark=spark)
    marker.write_text(json.dumps(wanted))
    return settings, plan.all_days, time.perf_counter() - started


def chain_settings(base: Settings, work: Path, chain: str) -> Settings:
    root = work / chain
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(base.lake, root / "lake")
    return base.replace(lake=str(root / "lake"), models=str(root / "models"))


def baseline_per_user(spark, settings: Settings, list_date: dt.date, t, all_baselines: bool) -> dict[str, pd.DataFrame]:
    """Per-user metrics of the baselines fitted up to list_date, on the evaluation's targets."""
    from coldstart import baselines as B
    from coldstart.evaluate import per_user_metrics
    from coldstart.features import interactions
    from coldstart.lake import Lake

    lake = Lake.from_settings(settings)
    if all_baselines:
        lists = B.baseline_lists(spark, lake, settings, list_date, t.users, t.consumed, k=K)
    else:
        events = interactions(lake, list_date - dt.timedelta(days=settings.active_days - 1), list_date,
                              ["user_id", "item_id", "scene", "event_ts"])
        items = lake.read_pandas("items", columns=["item_id", "active", "first_seen"])
        active = set(items.loc[items["active"] & (items["first_seen"] <= list_date), "item_id"])
        lists = {"popularity": B.popularity_lists(events, list_date, t.users, t.consumed, K, active)}
    return {name: per_user_metrics(b_lists, t) for name, b_lists in lists.items()}


def recall_rows(per_user: pd.DataFrame, day: dt.date, method: str) -> pd.DataFrame:
    rows = per_user[(per_user["metric"] == "recall") & (per_user["k"] == K)]
    return rows.assign(run_date=day, method=method)[["run_date", "method", "user_id", "slice", "value"]]


def run(args) -> dict:
    from coldstart.evaluate import evaluate, model_lists, per_user_metrics, targets
    from coldstart.lake import Lake
    from coldstart.score import score
    from coldstart.spark import get_session
    from coldstart.train import train

    work = Path(args.work).resolve()
    spark = get_session(base_settings(work), app_name="transfer-bench")
    base, days, prep_s = prepare(spark, work, args.days, args.reuse_lake)
    settings = {chain: chain_settings(base, work, chain) for chain in CHAINS}

    train_s: dict[str, list[float]] = {c: [] for c in CHAINS}
    modes: dict[str, list[str]] = {c: [] for c in CHAINS}
    frames: list[pd.DataFrame] = []
    started = time.perf_counter()
    for n, day in enumerate(days):
        order = CHAINS if n % 2 == 0 else CHAINS[::-1]
        for chain in order:
            t0 = time.perf_counter()
            row = train(spark, settings[chain], day, full_retrain=(chain == "full"))
            train_s[chain].append(time.perf_counter() - t0)
            modes[chain].append(row.mode)
            if day != days[-1]:
                score(spark, settings[chain], day)
        if day == days[-1]:
            break
        eval_day = day + dt.timedelta(days=1)
        t = None
        for chain in CHAINS:
            evaluate(spark, settings[chain], eval_day, baselines=False)
            lake = Lake.from_settings(settings[chain])
            t = targets(lake, eval_day)
            lists, _ = model_lists(lake, day)
            frames.append(recall_rows(per_user_metrics(lists, t), eval_day, chain))
        for name, per_user in baseline_per_user(spark, settings["warm"], day, t, args.baselines).items():
            frames.append(recall_rows(per_user, eval_day, name))
        log.info("day %s: train warm %.1fs (%s), full %.1fs (%s)", day, train_s["warm"][-1], modes["warm"][-1],
                 train_s["full"][-1], modes["full"][-1])
    chains_s = time.perf_counter() - started
    recalls = pd.concat(frames, ignore_index=True)
    return {"days": days, "train_s": train_s, "modes": modes, "recalls": recalls, "prep_s": prep_s,
            "chains_s": chains_s, "settings": settings["warm"]}


def report(res: dict, args, command: str) -> str:
    days, train_s, modes, recalls = res["days"], res["train_s"], res["modes"], res["recalls"]
    s: Settings = res["settings"]
    test = slice(1, None)  # the bootstrap day trains cold in both chains: the test days are the rest
    med = {c: statistics.median(train_s[c][test]) for c in CHAINS}
    tot = {c: sum(train_s[c][test]) for c in CHAINS}
    methods = list(dict.fromkeys(recalls["method"]))
    means = recalls.groupby(["method", "slice"])["value"].agg(["mean", "size"])
    def boot_slice(a: str, b: str, slice_: str) -> dict:
        return paired_bootstrap(recalls[recalls["slice"] == slice_], a, b, args.resamples, args.seed)

    boot = boot_slice("warm", "full", "all")
    vs_pop = {sl: boot_slice("warm", "popularity", sl) for sl in ("all", "cold_items")}
    ratio = tot["warm"] / tot["full"] if tot["full"] else float("nan")
    contains_zero_or_warm = boot["high"] >= 0
    target_met = contains_zero_or_warm and ratio <= 1 / 3

    lines = [
        "# Transfer benchmark: warm start from D-1 vs full retrain every day",
        "",
        f"Command: `{command}`  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; host {platform.node()}, "
        f"{os.cpu_count()} cores (shared with other engineers' Spark/torch jobs: timings are noisy; warm and full "
        f"run interleaved day by day in one process, alternating order, so the noise hits both); torch threads "
        f"for training: half the cores.  ",
        f"Data: bundled MovieLens replay, bootstrap day {days[0]} + {len(days) - 1} test days "
        f"({days[1]} .. {days[-1]}); every list of day D scored against the events of D+1 "
        f"({len(days) - 1} evaluation nights).  ",
        f"Model settings: model_dim={s.model_dim}, epochs warm={s.train_epochs_warm} / full={s.train_epochs_full}, "
        f"replay sample={s.train_replay_sample}, batch={s.train_batch_size}, lr={s.train_learning_rate}, "
        f"id dropout={s.train_id_dropout}, seed={s.seed}.  ",
        f"Wall time: prepare (replay+ingest+embed) {res['prep_s']:.0f}s, both chains {res['chains_s']:.0f}s.",
        "",
        "## Training time (train stage wall time, test days)",
        "",
        f"Bootstrap day {days[0]} (not counted below: both chains train from scratch there): "
        f"warm chain {train_s['warm'][0]:.1f}s ({modes['warm'][0]}), full chain {train_s['full'][0]:.1f}s ({modes['full'][0]}).",
        "",
        "| chain | median per day (s) | sum (s) | modes |",
        "|---|---:|---:|---|",
    ]
    for c in CHAINS:
        mode_counts = pd.Series(modes[c][test]).value_counts().to_dict()
        lines.append(f"| {c} | {med[c]:.1f} | {tot[c]:.1f} | {', '.join(f'{k}×{v}' for k, v in mode_counts.items())} |")
    lines += [
        "",
        f"warm / full training time: **{ratio:.2f}** (sum), {med['warm'] / med['full']:.2f} (median).",
        "",
        f"## Next-day Recall@{K} (mean over user-days)",
        "",
        "| method | " + " | ".join(SLICES) + " |",
        "|---|" + "---:|" * len(SLICES),
    ]
    for m in methods:
        cells = []
        for sl in SLICES:
            if (m, sl) in means.index:
                cells.append(f"{means.loc[(m, sl), 'mean']:.4f} (n={int(means.loc[(m, sl), 'size'])})")
            else:
                cells.append("-")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Paired bootstrap ({args.resamples} resamples of user-days, seed {args.seed}), 95 % interval",
        "",
        "| difference | slice | user-days | mean | 95 % interval |",
        "|---|---|---:|---:|---|",
        f"| warm − full | all | {boot['n']} | {boot['mean']:+.4f} | [{boot['low']:+.4f}, {boot['high']:+.4f}] |",
    ]
    for sl, b in vs_pop.items():
        lines.append(f"| warm − popularity | {sl} | {b['n']} | {b['mean']:+.4f} | [{b['low']:+.4f}, {b['high']:+.4f}] |")
    daily = recalls[recalls["slice"] == "all"].groupby(["run_date", "method"])["value"].mean().unstack()
    lines += [
        "",
        f"Target (interval contains zero or favours warm, at ≤ 1/3 of full's training time): "
        f"**{'met' if target_met else 'NOT met'}** (interval {'ok' if contains_zero_or_warm else 'favours full'}, "
        f"time ratio {ratio:.2f}).",
        "",
        f"## Per night (Recall@{K}, all slice; train seconds of the list's day)",
        "",
        "| evaluated day | " + " | ".join(daily.columns) + " | train warm (s) | train full (s) |",
        "|---|" + "---:|" * (len(daily.columns) + 2),
    ]
    for n, (day, row) in enumerate(daily.iterrows()):
        lines.append(f"| {day} | " + " | ".join(f"{v:.4f}" for v in row) +
                     f" | {train_s['warm'][n]:.1f} | {train_s['full'][n]:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=str(ROOT / "var" / "bench" / "transfer"), help="scratch folder (replaced)")
    parser.add_argument("--days", type=int, default=14, help="test days after the bootstrap day")
    parser.add_argument("--baselines", action="store_true", help="every baseline of coldstart.baselines, not only popularity")
    parser.add_argument("--reuse-lake", action="store_true", help="reuse a prepared base lake in --work if there is one")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "transfer.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("coldstart.model", "coldstart.lake", "py4j", "coldstart.ingest", "coldstart.embed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    command = " ".join([".venv/bin/python", "bench/transfer_bench.py", *(argv if argv is not None else sys.argv[1:])])
    res = run(args)
    text = report(res, args, command)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
