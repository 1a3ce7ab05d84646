"""Quality benchmark: the model against tuned baselines on three worlds, next-day Recall@20, paired intervals.

    .venv/bin/python bench/quality_bench.py                    # all three worlds (< 15 min on 2 idle cores)
    .venv/bin/python bench/quality_bench.py --world shop       # one world: replay, media or shop

Each world runs night by night through the real stages (ingest, embed, train: cold on the first
night, then warm from D-1; score; evaluate for the model alone), in one process with one Spark
session. Then, for every evaluated day D, the bench builds the targets, reads the model's lists of
D-1 and ranks every baseline on the same candidates (``coldstart.evaluate`` has the protocol):

* targets: users with an event on D and one before; truth: what they consumed on D and never before;
  candidates: active items whose first catalog row is dated D-1 or earlier, minus what the user
  consumed; ties broken by a seeded random key; Recall@K = hits / min(K, |truth|) (hits / |truth|
  beside it); cold items micro-averaged;
* **the first evaluated day is the tuning day**: every baseline's parameters are picked on it
  (``coldstart.evaluate.tune_baselines`` over ``coldstart.baselines.GRIDS``), and it is left out of
  the reported pool, for the model too (whose settings are the same for every world);
* pooled over the other evaluated days, with paired bootstrap 95 % intervals over user-days
  (``coldstart.evaluate.paired_difference``);
* cold-only ranking: candidates restricted to the cold items (no interaction before D), users with
  at least one cold positive, NDCG@20: the model's "new for you" list (``list = 'new'``) against
  content-kNN and a random order under the same restriction.

Worlds: ``replay`` (the bundled MovieLens sample), ``media`` (``coldstart synth``: topics only, full
text), ``shop`` (``coldstart synth --preset shop``: item-to-item links, users with 1-5 events, a
long tail, sparse text). Writes ``bench/results/quality.md`` (``--out``).
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

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from coldstart.config import Settings  # noqa: E402
from coldstart.catalog import POOLED_SLICES, TARGET_SLICES  # noqa: E402

log = logging.getLogger("bench.quality")

START = dt.date(2024, 1, 1)
K = 20
WORLDS = ("replay", "media", "shop")
SLICES = POOLED_SLICES
TARGETS = TARGET_SLICES


def world_settings(work: Path) -> Settings:
    return Settings.load(env={}, landing=str(work / "landing"), lake=str(work / "lake"), models=str(work / "models"),
                         reports=str(work / "reports"), spark_shuffle_partitions=2, baselines=False)


def land_world(world: str, settings: Settings, args) -> list[dt.date]:
    if world == "replay":
        from coldstart.replay import replay

        return replay(settings.landing, START, days=args.replay_days).all_days
    from coldstart.synth import preset_config, synth

    if world == "media":
        cfg = preset_config("media", users=args.media_users, items=args.media_items, events_per_day=args.media_events,
                            days=args.synth_days + 1, new_users_per_day=args.media_new_users,
                            new_items_per_day=args.media_new_items, start=START)
    else:
        sizes = {name: getattr(args, f"shop_{name}") for name in
                 ("users", "items", "events_per_day", "new_users_per_day", "new_items_per_day")}
        cfg = preset_config("shop", days=args.synth_days + 1, start=START,
                            **{k: v for k, v in sizes.items() if v is not None})
    return [dt.date.fromisoformat(day.date) for day in synth(settings.landing, cfg)]


def days_landed(landing: Path) -> list[dt.date]:
    """The days of an earlier run's landing zone (``--evaluate-only``)."""
    found = sorted(p.name.split("=", 1)[1] for p in (landing / "interactions").glob("date=*"))
    if not found:
        raise SystemExit(f"--evaluate-only: no landed days under {landing}")
    return [dt.date.fromisoformat(d) for d in found]


def cold_only_lists(lists: dict[str, list[str]], prior_items: set) -> dict[str, list[str]]:
    return {u: [i for i in items if i not in prior_items] for u, items in lists.items()}


def run_world(world: str, spark, args) -> dict:
    from coldstart.baselines import GRIDS, fit_data, method_lists
    from coldstart.evaluate import model_lists, per_user_metrics, targets, tune_baselines
    from coldstart.features import content_vectors
    from coldstart.lake import Lake
    from coldstart.pipeline import STAGES, run_stage

    work = Path(args.work).resolve() / world
    if not args.evaluate_only:
        shutil.rmtree(work, ignore_errors=True)
    settings = world_settings(work)
    days = land_world(world, settings, args) if not args.evaluate_only else days_landed(work / "landing")
    seconds: dict[str, float] = {stage: 0.0 for stage in STAGES}
    started = time.perf_counter()
    for day in days if not args.evaluate_only else ():
        for stage in STAGES:
            t0 = time.perf_counter()
            run_stage(stage, settings, day, spark=spark)
            seconds[stage] += time.perf_counter() - t0
        log.info("%s: night %s done (%.0f s so far)", world, day, time.perf_counter() - started)
    lake = Lake.from_settings(settings)
    evaluated = days[1:]
    if args.evaluate_only:  # an unfinished earlier run: the days whose lists (D-1) and events (D) are both there
        scored = set(lake.read_pandas("recommendations", columns=["run_date"])["run_date"].unique())
        ingested = set(lake.read_pandas("interactions", columns=["run_date"])["run_date"].unique())
        evaluated = [d for d in evaluated if d - dt.timedelta(days=1) in scored and d in ingested]
        days = [days[0]] + evaluated
        if len(evaluated) < 2:
            raise SystemExit(f"--evaluate-only: {world} has {len(evaluated)} evaluable days; at least 2 are needed")
    t0 = time.perf_counter()
    methods = tuple(m for m in GRIDS if m not in args.skip)
    tuned = tune_baselines(spark, lake, settings, evaluated[0], k=K, methods=methods)
    seconds["tuning"] = time.perf_counter() - t0
    params = {m: r["params"] for m, r in tuned.items()}
    item_content = content_vectors(lake, settings, "item")
    frames, cold_frames = [], []
    t0 = time.perf_counter()
    for day in evaluated:
        list_date = day - dt.timedelta(days=1)
        t = targets(lake, day)
        data = fit_data(lake, settings, list_date)
        main, _ = model_lists(lake, list_date)
        new, _ = model_lists(lake, list_date, "new")
        methods = {"model": main}
        for method in params:
            methods[method] = method_lists(spark, lake, settings, data, method, t.users, t.consumed, K, params[method],
                                           item_content)
        for method, lists in methods.items():
            frames.append(per_user_metrics(lists, t).assign(method=method, run_date=day))
        # cold-only ranking: every method ranks the cold candidates only (what had an interaction is excluded)
        excluded = {u: t.consumed.get(u, set()) | t.prior_items for u in t.users}
        rng = np.random.default_rng([args.seed, day.toordinal()])
        cold_candidates = sorted(set(data.item_ids) - t.prior_items)
        cold = {"model_new": new or cold_only_lists(main, t.prior_items),
                "content_knn": method_lists(spark, lake, settings, data, "content_knn", t.users, excluded, K,
                                            params.get("content_knn"), item_content),
                "random": {u: list(rng.permutation(cold_candidates)[:K]) for u in t.users}}
        for method, lists in cold.items():
            part = per_user_metrics(cold_only_lists(lists, t.prior_items), t)
            cold_frames.append(part[part["slice"] == "cold_only"].assign(method=method, run_date=day))
    seconds["baselines"] = time.perf_counter() - t0
    from coldstart.evaluate import quality_table

    # what the pipeline's own evaluation tables say for the model (coldstart quality --skip-first)
    official = quality_table(lake, k=K, skip_first=True, resamples=10)
    official = official[official["method"] == "model"].set_index("slice")[f"recall@{K}"] if len(official) else None
    return {"official": official, "days": days, "evaluated": evaluated, "per_user": pd.concat(frames, ignore_index=True),
            "cold_only": pd.concat(cold_frames, ignore_index=True), "tuned": tuned, "seconds": seconds,
            "wall": time.perf_counter() - started, "settings": settings, "had_new_list": bool(new)}


def _fmt_params(params: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def world_report(world: str, res: dict, args) -> tuple[list[str], dict]:
    from coldstart.evaluate import paired_difference, pooled

    tuning_day = res["evaluated"][0]
    per_user = res["per_user"]
    reported = per_user[per_user["run_date"] != tuning_day]
    table = pooled(reported).set_index(["method", "slice", "metric", "k"])
    methods = ["model"] + sorted(m for m in reported["method"].unique() if m != "model")
    s: Settings = res["settings"]
    reported_days = [d for d in res["evaluated"] if d != tuning_day]
    lines = [
        f"## World: {world}",
        "",
        f"Days: {res['days'][0]} (first night: cold training) .. {res['days'][-1]}. Tuning day: {tuning_day} "
        f"(left out below). Reported: {len(reported_days)} evaluated days ({reported_days[0]} .. {reported_days[-1]}), "
        "the lists of each night against the next day's events.  ",
        f"Model: warm chain (epochs warm={s.train_epochs_warm}, cold={s.train_epochs_full}, replay sample="
        f"{s.train_replay_sample}, dim={s.model_dim}, learning rate {s.train_learning_rate} (id tables "
        f"{s.train_id_learning_rate}), cold-user popularity boost {s.cold_user_popularity_boost}, seed={s.seed}).  ",
        "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in res["seconds"].items()) + f"; wall {res['wall']:.0f} s.",
        "",
        "### Baseline parameters, tuned on the tuning day (objective: Recall@20, all targets)",
        "",
        "| method | chosen | Recall@20 all on the tuning day | cold items | settings tried |",
        "|---|---|---:|---:|---:|",
    ]
    for m, r in res["tuned"].items():
        lines.append(f"| {m} | {_fmt_params(r['params'])} | {r['recall']:.4f} | {r['cold_items']:.4f} | {len(r['grid'])} |")
    lines += ["", f"### Pooled Recall@{K} = hits / min({K}, |truth|) (user-days; cold_items: micro-averaged share of "
                  f"cold positives found); hits / |truth| in brackets", "",
              "| method | " + " | ".join(SLICES) + " |", "|---|" + "---:|" * len(SLICES)]

    def cell(m, sl):
        if (m, sl, "recall", K) not in table.index:
            return "-"
        v, n = table.loc[(m, sl, "recall", K), "value"], int(table.loc[(m, sl, "recall", K), "n"])
        plain = table["value"].get((m, sl, "recall_plain", K))
        return f"{v:.4f}" + (f" ({plain:.4f})" if plain is not None and np.isfinite(plain) else "") + f" n={n}"

    for m in methods:
        lines.append(f"| {'**model**' if m == 'model' else m} | " + " | ".join(cell(m, sl) for sl in SLICES) + " |")
    official = res.get("official")
    if official is not None:
        lines += ["", "The pipeline's own evaluation tables (`coldstart quality --skip-first`, the evaluate stage's "
                      "evaluation_users) for the model on this world: " + ", ".join(
                          f"{sl} {official[sl]:.4f}" + (" (equal)" if ("model", sl, "recall", K) in table.index and
                                                        abs(official[sl] - table.loc[("model", sl, "recall", K), "value"])
                                                        < 5e-5 else " (DIFFERS from the bench)")
                          for sl in SLICES if sl in official.index) + "."]
    lines += ["", f"### Paired bootstrap, model − baseline ({args.resamples} resamples of user-days, seed {args.seed}), "
                  "95 % interval", "", "| slice | baseline | user-days | model | baseline | model − baseline | 95 % interval |",
              "|---|---|---:|---:|---:|---:|---|"]
    verdict = {}
    for sl in TARGETS:
        base = {b: table.loc[(b, sl, "recall", K), "value"] for b in methods[1:] if (b, sl, "recall", K) in table.index}
        if ("model", sl, "recall", K) not in table.index or not base:
            continue
        # the target on cold items is the hybrid; on the other slices every baseline
        rivals = ["hybrid"] if sl == "cold_items" and "hybrid" in base else list(base)
        best = max(rivals, key=base.get)
        for b in sorted(base, key=base.get, reverse=True):
            r = paired_difference(reported, "model", b, sl, K, resamples=args.resamples, seed=args.seed)
            name = f"**{b}** (best)" if b == best else b
            lines.append(f"| {sl} | {name} | {r['n']} | {r['a']:.4f} | {r['b']:.4f} | {r['mean']:+.4f} | "
                         f"[{r['low']:+.4f}, {r['high']:+.4f}] |")
        model = table.loc[("model", sl, "recall", K), "value"]
        verdict[sl] = {"model": model, "best": best, "baseline": base[best], "ratio": model / base[best] if base[best] else np.inf}
    lines += ["", "Verdict: " + "; ".join(
        f"{sl}: model {v['model']:.4f} vs {v['best']} {v['baseline']:.4f} ({v['ratio'] - 1:+.1%}, "
        f"{'beats' if v['model'] > v['baseline'] else 'does NOT beat'})" for sl, v in verdict.items()) + ".", ""]

    cold = res["cold_only"]
    cold = cold[cold["run_date"] != tuning_day]
    ctab = pooled(cold).set_index(["method", "slice", "metric", "k"])
    source = "the 'new' list" if res["had_new_list"] else "the main list restricted to cold items (no 'new' list)"
    lines += [f"### Cold-only ranking (NDCG@{K}; model: {source})", "",
              "| method | NDCG@20 | Recall@20 | user-days |", "|---|---:|---:|---:|"]
    for m in ("model_new", "content_knn", "random"):
        if (m, "cold_only", "ndcg", K) in ctab.index:
            lines.append(f"| {m} | {ctab.loc[(m, 'cold_only', 'ndcg', K), 'value']:.4f} | "
                         f"{ctab.loc[(m, 'cold_only', 'recall', K), 'value']:.4f} | {int(ctab.loc[(m, 'cold_only', 'ndcg', K), 'n'])} |")
    for b in ("content_knn", "random"):
        r = paired_difference(cold, "model_new", b, "cold_only", K, metric="ndcg", resamples=args.resamples, seed=args.seed)
        if r["n"]:
            lines.append(f"\nmodel_new − {b}: {r['mean']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}] (n={r['n']})")
            verdict[f"new_vs_{b}"] = {"model": r["a"], "best": b, "baseline": r["b"],
                                      "ratio": r["a"] / r["b"] if r["b"] else np.inf}
    daily = per_user[(per_user["slice"] == "all") & (per_user["metric"] == "recall") & (per_user["k"] == K)]
    daily = daily.groupby(["run_date", "method"])["value"].mean().unstack()[methods]
    lines += ["", f"### Per evaluated day (Recall@{K}, all; the first row is the tuning day)", "",
              "| day | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for day, row in daily.iterrows():
        lines.append(f"| {day}{' (tuning)' if day == tuning_day else ''} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    return lines + [""], verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", choices=("all",) + WORLDS, default="all")
    parser.add_argument("--work", default=str(ROOT / "var" / "bench" / "quality"), help="scratch folder (replaced)")
    parser.add_argument("--replay-days", type=int, default=10)
    parser.add_argument("--synth-days", type=int, default=6, help="days after the bootstrap day (media and shop)")
    parser.add_argument("--media-users", type=int, default=3000)
    parser.add_argument("--media-items", type=int, default=2000)
    parser.add_argument("--media-events", type=int, default=20000, help="events per day")
    parser.add_argument("--media-new-users", type=int, default=600, help="new users per day")
    parser.add_argument("--media-new-items", type=int, default=100, help="new items per day")
    for name in ("users", "items", "events-per-day", "new-users-per-day", "new-items-per-day"):
        parser.add_argument(f"--shop-{name}", type=int, default=None, help="shop world size (default: the preset's)")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="reuse the lakes an earlier run left under --work (its nights all done): tune and "
                             "evaluate only")
    parser.add_argument("--skip", default="", help="comma-separated baselines to leave out (say so when quoting)")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality.md"))
    args = parser.parse_args(argv)
    args.skip = tuple(m for m in args.skip.split(",") if m)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("coldstart.model", "coldstart.lake", "py4j", "coldstart.ingest", "coldstart.embed", "coldstart.encoder",
                  "coldstart.report", "coldstart.baselines"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from coldstart.spark import get_session

    command = " ".join(["nice -n 10 .venv/bin/python", "bench/quality_bench.py",
                        *(argv if argv is not None else sys.argv[1:])])
    worlds = WORLDS if args.world == "all" else (args.world,)
    spark = get_session(world_settings(Path(args.work).resolve() / worlds[0]), app_name="quality-bench")
    load = os.getloadavg()
    started = time.perf_counter()
    sections, verdicts = [], {}
    for world in worlds:
        lines, verdicts[world] = world_report(world, run_world(world, spark, args), args)
        sections += lines
    load_end = os.getloadavg()
    summary = ["| world | slice | model | best baseline | baseline | model / baseline − 1 |", "|---|---|---:|---|---:|---:|"]
    for world, v in verdicts.items():
        for sl, r in v.items():
            summary.append(f"| {world} | {sl} | {r['model']:.4f} | {r['best']} | {r['baseline']:.4f} | {r['ratio'] - 1:+.1%} |")
    text = "\n".join([
        "# Quality benchmark: the model against tuned baselines on three worlds (next-day Recall@20)",
        "",
        f"Command: `{command}`  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; host {platform.node()}, {os.cpu_count()} cores; "
        f"load average {load[0]:.1f} at the start, {load_end[0]:.1f} at the end; total {time.perf_counter() - started:.0f} s.  ",
        "Protocol: see the docstrings of `bench/quality_bench.py` and `coldstart/evaluate.py`. Cold items: the rival "
        "is the hybrid; cold-only: the model's 'new for you' list against content-kNN and a random order.",
        "",
        *summary,
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
