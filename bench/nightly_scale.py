"""Nightly scale benchmark: the whole night (ingest, embed, train, score, evaluate) on synthetic
1M-event days, stage by stage, with peak memory, side by side with Spark ALS on the same data.

    .venv/bin/python bench/nightly_scale.py                       # 100k users, 50k items, 1M events/day, 3 days
    .venv/bin/python bench/nightly_scale.py --scale 0.1           # quick smoke run
    .venv/bin/python bench/nightly_scale.py --scale 0.05 --history-days 30 --skip-als   # history independence
    .venv/bin/python bench/nightly_scale.py --workdir W --keep ... ; ... --workdir W --rerun-last   # last night again

What it does:

1. ``coldstart synth`` writes the landing days (``--scale`` multiplies users, items, events and the
   daily new users/items);
2. nights 1..N run every stage with ``baselines=False``; the last night is the steady state that is
   reported (the first one embeds the whole catalog). Each stage is one ``spark-submit
   jobs/<stage>.py --run-date D`` job with ``--driver-memory``, as the DAG runs it; a background
   thread samples the memory (PSS) of the job's process tree every 0.5 s (the JVM, the driver's Python,
   Spark's Python workers). A night's peak is its largest stage's. The stage's time is its own "done
   in" log line (the JVM start is in the wall time, reported beside it). ``--in-process`` runs the
   stages in this process with one Spark session instead (``coldstart run``'s way), whose memory
   then carries from stage to stage;
3. every ``coldstart.*`` log line of the last night is kept with its time since the stage started,
   which gives the stages' phases;
4. the slowest stage of the last night is run again in this process under cProfile (stages are
   idempotent for their date), and its top functions are printed;
5. Spark ALS (implicit, rank 64, 10 iterations) is fitted on all the nights' interactions and
   ``recommendForAllUsers(50)`` is written to Parquet, in a child process with its own JVM, so that
   its peak memory is its own (the pipeline's Spark settings, but spark.memory.fraction at Spark's
   default 0.6, ``--als-memory-fraction``: 0.3 is the pipeline's tuning).

``--history-days H`` also builds a second lake in the same session: H+1 synthetic days, of which
days 1..H-1 are ingested one landing day each as set-up (in this process, one Spark session), then
day H-1's other stages run with a cold train over all of them; day H is a full ordinary night and
day H+1 is the timed night, compared
stage by stage with night 3 of the 3-day lake. The daily new users and items are divided by (H+1)/3,
so that both timed nights have the same number of active users and items.
"""

from __future__ import annotations

import argparse
import ast
import cProfile
import datetime as dt
import io
import json
import logging
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coldstart.config import Settings  # noqa: E402
from coldstart.synth import SynthConfig, synth  # noqa: E402

STAGES = ("ingest", "embed", "train", "score", "evaluate")
GIB = 2**30


class MemorySampler(threading.Thread):
    """Peak memory of a process tree (root and all descendants), split into the root's own Python,
    the JVM(s) and other Python processes (Spark's workers), as PSS: a page shared by several
    processes (Spark's Python workers are forked from one daemon) is counted once, split between
    them. The plain sum of RSS, which counts such pages once per process, is kept as ``rss_total``."""

    def __init__(self, root_pid: int | None = None, interval: float = 0.5, driver_marker: str | None = None):
        super().__init__(daemon=True)
        self.root = psutil.Process(root_pid or os.getpid())
        # With spark-submit the root is the JVM and the driver is its Python child running the job file.
        self.driver_marker = driver_marker
        self.interval, self.stop_flag = interval, threading.Event()
        self.lock = threading.Lock()
        self.peak = self._zero()

    @staticmethod
    def _zero() -> dict:
        return {"driver": 0, "jvm": 0, "python_workers": 0, "total": 0, "rss_total": 0}

    def _kind(self, process: psutil.Process) -> str:
        if "java" in process.name():
            return "jvm"
        if self.driver_marker is None:
            return "driver" if process.pid == self.root.pid else "python_workers"
        return "driver" if any(self.driver_marker in part for part in process.cmdline()) else "python_workers"

    def sample(self) -> dict:
        now = {"driver": 0, "jvm": 0, "python_workers": 0}
        rss = 0
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return self._zero()
        for process in processes:
            try:
                info = process.memory_full_info()
                now[self._kind(process)] += info.pss
                rss += info.rss
            except psutil.Error:
                continue
        now["total"] = sum(now.values())
        now["rss_total"] = rss
        return now

    def run(self) -> None:
        while not self.stop_flag.is_set():
            now = self.sample()
            with self.lock:
                for key, value in now.items():
                    self.peak[key] = max(self.peak[key], value)
            self.stop_flag.wait(self.interval)

    def take(self) -> dict:
        """Peak since the last take (in GiB), then reset."""
        with self.lock:
            peak, self.peak = self.peak, self._zero()
        return {k: v / GIB for k, v in peak.items()}


class StageLog(logging.Handler):
    """Keeps coldstart.* log lines with their time, for the phases of a stage."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[tuple[float, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.created, record.name, record.getMessage()))

    def since(self, start: float) -> list[tuple[float, str, str]]:
        return [(t - start, name, msg) for t, name, msg in self.records if t >= start]


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def scaled_config(args, history_days: int = 0) -> SynthConfig:
    s = args.scale
    days = args.days
    new_users, new_items = round(5000 * s), round(1000 * s)
    if history_days:
        days = history_days + 1
        # as many new users and items over the whole history as the 3-day run gets over its 3 days,
        # so the timed night has the same number of active users and items
        new_users = round(new_users * args.days / days)
        new_items = round(new_items * args.days / days)
    return SynthConfig(users=round(100_000 * s), items=round(50_000 * s), events_per_day=round(1_000_000 * s),
                       days=days, new_items_per_day=new_items, new_users_per_day=new_users, seed=args.seed,
                       profile_share=args.profile_share)


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ (coldstart[\w.]*): (.*)$")


def write_config(path: Path, settings: Settings) -> Path:
    """The settings as the TOML file a job reads (--config)."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.as_dict().items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def run_job(stage: str, day: dt.date, config: Path, args) -> dict:
    """One stage as the DAG runs it: `spark-submit jobs/<stage>.py --run-date D` in its own process
    tree, whose peak memory (PSS) is sampled. seconds = the stage's own time (its "done in" log line, without
    the JVM start); wall_s = the whole job."""
    from coldstart.orchestration import spark_environment

    job = ROOT / "jobs" / f"{stage}.py"
    cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]", "--driver-memory",
           args.driver_memory, "--conf", "spark.ui.enabled=false", str(job), "--run-date", day.isoformat(),
           "--config", str(config)]
    env = {**os.environ, **spark_environment(), "SPARK_LOCAL_IP": "127.0.0.1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    sampler = MemorySampler(proc.pid, driver_marker=str(job))
    sampler.start()
    lines = [line.rstrip("\n") for line in proc.stdout]
    proc.wait()
    wall = time.perf_counter() - t0
    sampler.stop_flag.set()
    if proc.returncode:
        raise RuntimeError(f"{stage} {day} failed ({proc.returncode}):\n" + "\n".join(lines[-40:]))
    log, start, seconds, result = [], None, wall, {}
    for line in lines:
        match = LOG_LINE.match(line)
        if not match:
            continue
        when = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        start = when if start is None and match.group(3).startswith("===") else start
        if start is not None:
            log.append((when - start, match.group(2), match.group(3)))
        done = re.search(r"done in ([\d.]+) s ===", match.group(3))
        seconds = float(done.group(1)) if done else seconds
        if match.group(2) == "coldstart.jobs":  # the job's last line: "<stage> <date>: <result dict>"
            try:
                result = ast.literal_eval(match.group(3).split(": ", 1)[1])
            except (ValueError, SyntaxError, IndexError):
                result = {}
    return {"seconds": seconds, "wall_s": wall, "peak_gib": sampler.take(), "log": log,
            "result": json.loads(json.dumps(result, default=str))}


def run_night(spark, settings, day, sampler: MemorySampler, stage_log: StageLog, keep_log: bool,
              skip: tuple = (), args=None, config: Path | None = None) -> dict:
    """Every stage of one night: as spark-submit jobs (``config`` given), else in this process."""
    from coldstart.pipeline import run_stage

    night = {"date": day.isoformat(), "load_start": load(), "stages": {}}
    sampler.take()
    for stage in (s for s in STAGES if s not in skip):
        if config is not None:
            entry = run_job(stage, day, config, args)
            entry["load_end"] = load()
            if not keep_log:
                entry.pop("log")
        else:
            started_wall, t0 = time.time(), time.perf_counter()
            result = run_stage(stage, settings, day, spark=spark)
            seconds = time.perf_counter() - t0
            entry = {"seconds": seconds, "wall_s": seconds, "peak_gib": sampler.take(), "load_end": load(),
                     "result": json.loads(json.dumps(result.as_dict(), default=str))}
            if keep_log:
                entry["log"] = stage_log.since(started_wall)
        night["stages"][stage] = entry
        print(f"  {day} {stage:<8} {entry['seconds']:7.1f} s (wall {entry['wall_s']:.1f})  peak total "
              f"{entry['peak_gib']['total']:.2f} GiB (jvm {entry['peak_gib']['jvm']:.2f}, driver "
              f"{entry['peak_gib']['driver']:.2f}, workers {entry['peak_gib']['python_workers']:.2f})  "
              f"load {entry['load_end']}", flush=True)
    night["seconds"] = sum(s["seconds"] for s in night["stages"].values())
    night["wall_s"] = sum(s["wall_s"] for s in night["stages"].values())
    night["peak_total_gib"] = max(s["peak_gib"]["total"] for s in night["stages"].values())
    return night


def profile_stage(spark, settings, day, stage: str, top: int = 30) -> tuple[float, str]:
    """Rerun one stage (idempotent for its date) under cProfile; (seconds, top functions by own+callee time)."""
    from coldstart.pipeline import run_stage

    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    run_stage(stage, settings, day, spark=spark)
    profiler.disable()
    seconds = time.perf_counter() - t0
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    out.write("\n--- by own time ---\n")
    stats.sort_stats("tottime").print_stats(top)
    return seconds, out.getvalue()


# --- Spark ALS, in a child process -------------------------------------------------------------
def als_child(args) -> None:
    """Fit implicit ALS on every interaction in the lake and write recommendForAllUsers(50)."""
    from pyspark.ml.feature import StringIndexer
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    from coldstart.lake import Lake
    from coldstart.spark import get_session

    # ALS as Spark ships it: the pipeline's own spark_memory_fraction (0.3) is its tuning, not ALS's
    settings = Settings.load(env={}, lake=args.lake, spark_driver_memory=args.driver_memory,
                             spark_memory_fraction=args.als_memory_fraction)
    spark = get_session(settings, app_name="nightly-scale-als")
    t0 = time.perf_counter()
    events = Lake(settings.lake).read_spark(spark, "interactions").select("user_id", "item_id")
    counts = events.groupBy("user_id", "item_id").agg(F.count("*").cast("float").alias("strength"))
    users = StringIndexer(inputCol="user_id", outputCol="u").fit(counts)
    items = StringIndexer(inputCol="item_id", outputCol="i").fit(counts)
    data = items.transform(users.transform(counts)).select(
        F.col("u").cast("int").alias("u"), F.col("i").cast("int").alias("i"), "strength").cache()
    n_pairs = data.count()
    prepare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    als = ALS(rank=64, maxIter=10, regParam=0.01, implicitPrefs=True, alpha=1.0, userCol="u", itemCol="i",
              ratingCol="strength", coldStartStrategy="drop", seed=42)
    model = als.fit(data)
    model.userFactors.count()  # the fit is lazy in parts: make sure the factors exist
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = Path(args.als_out)
    shutil.rmtree(out, ignore_errors=True)
    model.recommendForAllUsers(50).write.parquet(str(out))
    recommend_s = time.perf_counter() - t0
    n_users = spark.read.parquet(str(out)).count()
    print("ALS_RESULT " + json.dumps({"prepare_s": prepare_s, "fit_s": fit_s, "recommend_s": recommend_s,
                                      "pairs": n_pairs, "users": n_users,
                                      "distinct_items": len(items.labelsArray[0])}), flush=True)
    spark.stop()


def run_als(args, lake: str) -> dict:
    out = Path(args.workdir) / "als_recs.parquet"
    cmd = [sys.executable, __file__, "--als-child", "--lake", lake, "--als-out", str(out),
           "--driver-memory", args.driver_memory, "--als-memory-fraction", str(args.als_memory_fraction)]
    load_start = load()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = MemorySampler(proc.pid)
    sampler.start()
    lines = []
    for line in proc.stdout:
        lines.append(line)
    proc.wait()
    sampler.stop_flag.set()
    peak = sampler.take()
    wall = time.perf_counter() - t0
    result = next((json.loads(ln.split(" ", 1)[1]) for ln in lines if ln.startswith("ALS_RESULT ")), None)
    if proc.returncode or result is None:
        raise RuntimeError(f"ALS child failed ({proc.returncode}):\n{''.join(lines[-40:])}")
    shutil.rmtree(out, ignore_errors=True)
    return {**result, "wall_s": wall, "peak_gib": peak, "load_start": load_start, "load_end": load()}


# --- report --------------------------------------------------------------------------------------
def _night_rows(nights: list[dict], label: str) -> list[str]:
    rows = []
    for n in nights:
        cells = [f"{n['stages'][s]['seconds']:.1f}" if s in n["stages"] else "-" for s in STAGES]
        rows.append(f"| {label} | {n['date']} | " + " | ".join(cells)
                    + f" | **{n['seconds']:.1f}** | {n['wall_s']:.1f} | {n['peak_total_gib']:.2f} | {n['load_start']} |")
    return rows


def _describe(cfg: SynthConfig) -> str:
    return (f"{cfg.users:,} users, {cfg.items:,} items, {cfg.events_per_day:,} events/day, {cfg.new_users_per_day:,} "
            f"new users and {cfg.new_items_per_day:,} new items a day, {cfg.days} days")


def _active(night: dict) -> str:
    score = night["stages"]["score"]["result"]
    return f"{score.get('users', '?'):,} active users, {score.get('lists', '?'):,} lists, {score.get('rows', '?'):,} rows"


def markdown(args, arm: dict, als: dict | None, profile: tuple | None, setup: dict, history: dict | None) -> str:
    cfg, nights = arm["config"], arm["nights"]
    last = nights[-1]
    lines = [f"### Run {dt.datetime.now():%Y-%m-%d %H:%M}: `{' '.join(sys.argv)}`", "",
             f"{os.cpu_count()} cores, Spark {setup['spark_master']}, driver memory {args.driver_memory}, "
             f"stages run {setup['mode']}, baselines off; synth {_describe(cfg)} "
             + ("(--rerun-last: only the last night, again, on the kept lake). " if args.rerun_last
                else f"(synth {arm['synth_s']:.0f} s). ") +
             f"Load average (1/5/15 min) at start {setup['load_start']}. Stage seconds are the stages' own; "
             "wall s adds each job's JVM and session start.",
             "", "| lake | night | " + " | ".join(STAGES) + " | total s | wall s | peak GiB | load at start |",
             "|---" * (len(STAGES) + 6) + "|"]
    lines += _night_rows(nights, "3 days")
    if history:
        lines += _night_rows(history["nights"], f"{args.history_days} days")
    lines += ["", f"Last night ({last['date']}): {_active(last)}.", "",
              f"Peak memory (PSS) per stage of the last night ({last['date']}), GiB (sampled every 0.5 s; "
              "rss = the plain sum of the processes' RSS, which counts pages shared by forked workers once each):", "",
              "| stage | driver Python | JVM | Python workers | total | rss |", "|---|---|---|---|---|---|"]
    for s in STAGES:
        p = last["stages"][s]["peak_gib"]
        lines.append(f"| {s} | {p['driver']:.2f} | {p['jvm']:.2f} | {p['python_workers']:.2f} | {p['total']:.2f} | "
                     f"{p['rss_total']:.2f} |")
    if history:
        h_last = history["nights"][-1]
        lines += ["", f"History independence: {args.history_days} days of history ({_describe(history['config'])}); "
                  f"days 1..{args.history_days - 1} ingested one landing day each in {history['bootstrap_ingest_s']:.0f} s "
                  f"(set-up), then day {args.history_days - 1}'s other stages with a cold train over all of them, then day "
                  f"{args.history_days} as an ordinary night, then the timed night {h_last['date']}: {_active(h_last)}.", "",
                  "| stage | after 3 days (s) | after " + str(args.history_days) + " days (s) | ratio |",
                  "|---|---|---|---|"]
        for s in STAGES:
            a, b = last["stages"][s]["seconds"], h_last["stages"][s]["seconds"]
            lines.append(f"| {s} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
        lines.append(f"| **night** | {last['seconds']:.1f} | {h_last['seconds']:.1f} | "
                     f"**{h_last['seconds'] / last['seconds']:.2f}** |")
    if als:
        ours = last["seconds"]
        als_total = als["fit_s"] + als["recommend_s"]
        lines += ["", "Spark ALS (implicit, rank 64, 10 iterations, regParam 0.01) on all the 3-day lake's interactions "
                  f"(event counts per (user, item) as strength), in a child process with its own JVM, the same "
                  f"driver memory and spark.memory.fraction {args.als_memory_fraction}:", "",
                  "| | seconds | peak tree GiB (PSS) | peak JVM GiB | peak tree GiB (RSS sum) |", "|---|---|---|---|---|",
                  f"| our last night (all 5 stages) | {ours:.1f} | {last['peak_total_gib']:.2f} | "
                  f"{max(last['stages'][s]['peak_gib']['jvm'] for s in STAGES):.2f} | "
                  f"{max(last['stages'][s]['peak_gib']['rss_total'] for s in STAGES):.2f} |",
                  f"| ALS prepare (read, StringIndexer, count; not in the ratio) | {als['prepare_s']:.1f} | | | |",
                  f"| ALS fit | {als['fit_s']:.1f} | | | |",
                  f"| ALS recommendForAllUsers(50) to Parquet | {als['recommend_s']:.1f} | | | |",
                  f"| ALS fit + recommend | {als_total:.1f} | {als['peak_gib']['total']:.2f} | {als['peak_gib']['jvm']:.2f} | "
                  f"{als['peak_gib']['rss_total']:.2f} |",
                  "", f"Ratio our night / ALS fit+recommend: **{ours / als_total:.2f}x** (wall, with our jobs' "
                  f"JVM starts: {last['wall_s'] / als_total:.2f}x). ALS on {als['pairs']:,} "
                  f"(user, item) pairs, {als['users']:,} users listed, {als['distinct_items']:,} items; "
                  f"load {als['load_start']} -> {als['load_end']}."]
    lines += ["", "Phases of the last night (its log lines, seconds since the stage started):", "", "```"]
    for s in STAGES:
        for t, _name, msg in last["stages"][s].get("log", []):
            lines.append(f"{s:<8} {t:7.1f}  {msg[:150]}")
    lines += ["```"]
    if profile:
        stage, seconds, text = profile
        lines += ["", f"cProfile of the driver: `{stage}` of {last['date']} rerun ({seconds:.1f} s under the profiler):",
                  "", "```", *[ln for ln in text.splitlines() if ln.strip()][:90], "```"]
    return "\n".join(lines) + "\n"


def arm_settings(root: Path, args) -> Settings:
    return Settings.load(env={}, landing=str(root / "landing"), lake=str(root / "lake"), models=str(root / "models"),
                         reports=str(root / "reports"), baselines=False, spark_driver_memory=args.driver_memory)


def run_arm(spark, root: Path, args, cfg: SynthConfig, sampler, stage_log, history_days: int = 0) -> dict:
    """Synth and run one lake: nights 1..N, or (history_days) the ingest of all days but the last two
    and one cold night over them, then the last two days as full nights. Returns the nights and the setup timings."""
    from coldstart.pipeline import run_stage

    settings = arm_settings(root, args)
    config = None if args.in_process else write_config(root.parent / f"{root.name}.toml", settings)
    arm = {"root": str(root), "config": cfg, "load_start": load()}
    dates = [cfg.day(d) for d in range(cfg.days)]
    full_nights = dates
    if args.rerun_last:
        # the kept lake of an earlier run with the same --scale and --days: its last night again (idempotent)
        if not (root / "lake").is_dir():
            raise SystemExit(f"--rerun-last: no lake at {root / 'lake'} (run once with --keep and this --workdir)")
        arm["synth_s"] = 0.0
        print(f"[{root.name}] --rerun-last: night {dates[-1]} of the kept lake", flush=True)
        arm["nights"] = [run_night(spark, settings, dates[-1], sampler, stage_log, keep_log=True, args=args,
                                   config=config)]
        arm["settings"] = settings
        return arm
    t0 = time.perf_counter()
    synth(settings.landing, cfg)
    arm["synth_s"] = time.perf_counter() - t0
    print(f"[{root.name}] synth {cfg.days} days in {arm['synth_s']:.1f} s", flush=True)
    if history_days:
        # Set-up, not timed: days 0..H-2 are ingested one landing day each (in this process, one Spark
        # session), so that every day is its own run_date partition as in production; then day H-2's
        # other stages run with a cold train over all of them (--bootstrap-epochs). Day H-1 is an
        # ordinary night, day H the timed one.
        from coldstart.spark import get_session

        setup_day = dates[-3]
        t0 = time.perf_counter()
        setup_spark = spark or get_session(settings, app_name="nightly-scale-history")
        for day in dates[:-2]:
            run_stage("ingest", settings, day, spark=setup_spark)
        if spark is None:
            setup_spark.stop()
        arm["bootstrap_ingest_s"] = time.perf_counter() - t0
        print(f"[{root.name}] ingested {len(dates) - 2} history days in {arm['bootstrap_ingest_s']:.1f} s", flush=True)
        setup_settings = settings.replace(train_epochs_full=args.bootstrap_epochs or settings.train_epochs_full)
        setup_config = None if config is None else write_config(root.parent / f"{root.name}-setup.toml", setup_settings)
        nights = [run_night(spark, setup_settings, setup_day, sampler, stage_log, keep_log=False, skip=("ingest",),
                            args=args, config=setup_config)]
        full_nights = dates[-2:]
    else:
        nights = []
    for day in full_nights:
        print(f"[{root.name}] night {day} (load {load()})", flush=True)
        nights.append(run_night(spark, settings, day, sampler, stage_log, keep_log=day == full_nights[-1],
                                args=args, config=config))
    arm["nights"] = nights
    arm["settings"] = settings
    return arm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies users, items, events and daily new entities")
    parser.add_argument("--days", type=int, default=3, help="nights to run (the last one is reported)")
    parser.add_argument("--history-days", type=int, default=0,
                        help="also run a lake with this many days of history and compare its night")
    parser.add_argument("--bootstrap-epochs", type=int, default=0,
                        help="epochs of the history lake's cold train over all its set-up days (0 = the setting "
                             "train_epochs_full); that night is set-up, not timed")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--profile-share", type=float, default=0.0,
                        help="share of users with a profile (0 by default: with profiles, train and score fail on "
                             "a string_view filter in features.content_vectors; see bench/results/nightly_scale.md)")
    parser.add_argument("--driver-memory", default="2g", help="spark.driver.memory for the pipeline and for ALS")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a new one under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--skip-als", action="store_true")
    parser.add_argument("--rerun-last", action="store_true",
                        help="with --workdir of an earlier --keep run (same --scale and --days): run only its last "
                             "night's stages again on that lake (they are idempotent), then ALS as usual")
    parser.add_argument("--als-memory-fraction", type=float, default=0.6,
                        help="spark.memory.fraction of the ALS job (default: Spark's own default, 0.6)")
    parser.add_argument("--no-profile", action="store_true", help="do not rerun the slowest stage under cProfile")
    parser.add_argument("--in-process", action="store_true",
                        help="run the stages in this process with one Spark session (as `coldstart run` does) "
                             "instead of one spark-submit job per stage (as the DAG does)")
    parser.add_argument("--out", default=None, help="append the markdown results here")
    parser.add_argument("--json", default=None, help="write the raw results here")
    parser.add_argument("--als-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lake", help=argparse.SUPPRESS)
    parser.add_argument("--als-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.als_child:
        als_child(args)
        return
    if args.days < 2 or args.scale <= 0 or (args.history_days and args.history_days <= args.days):
        parser.error("--days must be >= 2 (night 1 embeds the whole catalog), --scale > 0, --history-days > --days")

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stage_log = StageLog()
    logging.getLogger("coldstart").addHandler(stage_log)
    logging.getLogger("coldstart").setLevel(logging.INFO)

    args.workdir = args.workdir or tempfile.mkdtemp(prefix="nightly-scale-")
    root = Path(args.workdir)
    setup = {"load_start": load(), "spark_master": arm_settings(root, args).spark_master}
    print(f"workdir {root}; load {setup['load_start']}", flush=True)

    from coldstart.spark import get_session

    sampler = MemorySampler()
    sampler.start()

    def session():
        t0 = time.perf_counter()
        spark = get_session(arm_settings(root, args), app_name="nightly-scale")
        spark.range(1).count()
        setup.setdefault("session_s", time.perf_counter() - t0)
        return spark

    setup["mode"] = "in one process" if args.in_process else "one spark-submit job per stage"
    spark = session() if args.in_process else None

    cfg = scaled_config(args)
    arm = run_arm(spark, root / "days", args, cfg, sampler, stage_log)
    history = None
    if args.history_days:
        history = run_arm(spark, root / "history", args, scaled_config(args, args.history_days), sampler, stage_log,
                          history_days=args.history_days)

    profile = None
    if not args.no_profile:
        last, day = arm["nights"][-1], cfg.day(cfg.days - 1)
        slowest = max(STAGES, key=lambda s: last["stages"][s]["seconds"])
        print(f"profiling {slowest} of {day}", flush=True)
        spark = spark or session()
        seconds, text = profile_stage(spark, arm["settings"], day, slowest)
        profile = (slowest, seconds, text)
    sampler.stop_flag.set()
    if spark is not None:
        spark.stop()

    als = None
    if not args.skip_als:
        print(f"ALS (load {load()})", flush=True)
        als = run_als(args, arm["settings"].lake)
        print(f"  ALS fit {als['fit_s']:.1f} s, recommend {als['recommend_s']:.1f} s, peak tree "
              f"{als['peak_gib']['total']:.2f} GiB (jvm {als['peak_gib']['jvm']:.2f})", flush=True)

    text = markdown(args, arm, als, profile, setup, history)
    print(text, flush=True)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write("\n" + text)
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": setup, "arm": arm, "history": history, "als": als,
                                               "profile": profile}, indent=1, default=str))
    if not args.keep and not args.rerun_last:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
