"""The ``coldstart`` command: run the pipeline in-process, replay the sample, query the tables."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import traceback

from coldstart.config import Settings, bounded_argument


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _at_least(lo: int):
    """argparse type: an integer >= lo."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"{value}: must be at least {lo}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each subcommand's ``func(args, settings) -> exit code`` runs it."""
    parser = argparse.ArgumentParser(prog="coldstart", description=__doc__)
    parser.add_argument("--config", default=None, help="TOML settings file (default: $COLDSTART_CONFIG)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the traceback of an error too")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_replay, _add_synth, _add_sql, _add_quality, _add_report, _add_listings, _add_vacuum):
        add(sub)
    return parser


def _add_run(sub) -> None:
    from coldstart.pipeline import STAGES

    run = sub.add_parser("run", help="run the stages in order for a date or a range, in-process")
    when = run.add_mutually_exclusive_group(required=True)
    when.add_argument("--date", type=_date, help="one run date")
    when.add_argument("--from", dest="first", type=_date, help="first run date of a range (with --to)")
    run.add_argument("--to", dest="last", type=_date, help="last run date of a range")
    run.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    run.add_argument("--skip", default="", help="comma-separated stages to skip")
    run.add_argument("--full-retrain", action="store_true", help="train from scratch instead of from D-1")
    run.add_argument("--top-k", type=bounded_argument("top_k"), default=None, help="list length (default: setting top_k)")
    run.add_argument("--cascade", action="store_true",
                     help="also re-run every later night the night manifest knows, oldest first (without it, later "
                          "nights keep what they were built from)")
    run.set_defaults(func=_run)


def _add_replay(sub) -> None:
    rep = sub.add_parser("replay", help="write the bundled MovieLens sample into the landing zone")
    rep.add_argument("--start", type=_date, default=dt.date(2024, 1, 1), help="bootstrap day (default 2024-01-01)")
    rep.add_argument("--days", type=_at_least(1), default=14, help="replay days after the bootstrap day (default 14)")
    rep.add_argument("--landing", default=None, help="landing root (default: setting landing)")
    rep.add_argument("--users-limit", type=_at_least(1), default=None, help="keep only the first N users (tiny slices)")
    rep.set_defaults(func=_replay)


# The synth options a preset may set; None on the command line: the preset's value.
_SYNTH_SHAPE = ("users", "items", "events_per_day", "new_items_per_day", "new_users_per_day", "broken_share", "topics",
                "relation_share", "text_share")


def _add_synth(sub) -> None:
    from coldstart.synth import PRESETS, SynthConfig

    media, shop = SynthConfig(**PRESETS["media"]), SynthConfig(**PRESETS["shop"])
    syn = sub.add_parser("synth", help="write synthetic landing days (power-law users/items, topics, item-to-item "
                                       "links, broken rows)")
    syn.add_argument("--preset", default="media", help="world shape: media (topics, full text; the default) or shop "
                                                       "(e-commerce: 1-5 events per user, long tail, links, sparse text)")
    syn.add_argument("--users", type=int, default=None, help=f"users on the first day (media: {media.users})")
    syn.add_argument("--items", type=int, default=None, help=f"catalog items on the first day (media: {media.items})")
    syn.add_argument("--events-per-day", type=int, default=None, help="interaction rows per day, broken ones included "
                                                                      f"(media: {media.events_per_day})")
    syn.add_argument("--days", type=int, default=media.days, help=f"days to write (default {media.days})")
    syn.add_argument("--new-items-per-day", type=int, default=None, help=f"(media: {media.new_items_per_day})")
    syn.add_argument("--new-users-per-day", type=int, default=None, help=f"(media: {media.new_users_per_day})")
    syn.add_argument("--broken-share", type=float, default=None, help="share of broken rows, spread over every kind "
                                                                      f"(default {media.broken_share:g})")
    syn.add_argument("--start", type=_date, default=media.start, help=f"first day (default {media.start})")
    syn.add_argument("--seed", type=int, default=None, help="random seed (default: setting seed)")
    syn.add_argument("--topics", type=int, default=None, help=f"(media: {media.topics})")
    syn.add_argument("--relation-share", type=float, default=None,
                     help=f"share of events that follow an item-to-item link (media: {media.relation_share:g}, "
                          f"shop: {shop.relation_share:g})")
    syn.add_argument("--text-share", type=float, default=None,
                     help=f"share of items with full text (media: {media.text_share:g})")
    syn.add_argument("--files-per-day", type=int, default=media.files_per_day,
                     help="interaction files per day (JSONL, CSV, Parquet in turn)")
    syn.add_argument("--landing", default=None, help="landing root (default: setting landing)")
    syn.set_defaults(func=_synth)


def _add_sql(sub) -> None:
    sql = sub.add_parser("sql", help="query the output tables with DuckDB (tables by name)")
    sql.add_argument("query")
    sql.add_argument("--output", default=None, help="write .csv or .parquet instead of printing")
    sql.set_defaults(func=_sql)


def _add_quality(sub) -> None:
    qual = sub.add_parser("quality", help="quality pooled over every evaluated night: Recall@K per method and slice, "
                                          "the user-days behind it, and the model's paired 95%% interval against each "
                                          "method")
    qual.add_argument("--k", type=int, default=20)
    qual.add_argument("--skip-first", action="store_true", help="leave the first evaluated night out (a tuning day)")
    qual.set_defaults(func=_quality)


def _add_report(sub) -> None:
    report = sub.add_parser("report", help="write the self-contained HTML report (quality, baselines, coverage)")
    report.add_argument("--output", default=None, help="HTML file (default: <setting reports>/report.html)")
    report.set_defaults(func=_report)


def _add_listings(sub) -> None:
    sub.add_parser("settings", help="list every setting with its environment variable, default and doc").set_defaults(
        func=_settings)
    sub.add_parser("tables", help="list every table with its columns and docs").set_defaults(func=_tables)


def _add_vacuum(sub) -> None:
    vac = sub.add_parser("vacuum", help="delete unreferenced files (old versions and orphans of crashed writes), "
                                        "keeping what re-runs of the last COLDSTART_RETENTION_DAYS days need")
    vac.add_argument("--retention-days", type=_at_least(0), default=None,
                     help="keep the versions and checkpoints that the night manifest of the last N days needs "
                          "(default: setting retention_days)")
    vac.add_argument("--retention-hours", type=_at_least(0), default=None,
                     help="also keep every file removed in the last N hours (default: retention days x 24)")
    vac.set_defaults(func=_vacuum)


def pd_options():
    import pandas as pd
    return pd.option_context("display.width", 200, "display.max_rows", 200, "display.max_columns", 20)


def main(argv: list[str] | None = None) -> int:
    """Run one command; an error that names what to fix (user_errors) prints one line (the traceback
    too with -v) and returns 2 for settings, 1 for the rest."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from coldstart.config import Settings, SettingsError
    from coldstart.pipeline import user_errors

    try:
        return args.func(args, Settings.load(args.config))
    except user_errors() as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"coldstart {args.command}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, SettingsError) else 1


def _settings(args: argparse.Namespace, settings: Settings) -> int:
    from coldstart.config import describe

    print(describe())
    return 0


def _tables(args: argparse.Namespace, settings: Settings) -> int:
    from coldstart.catalog import TABLES

    print("\n\n".join(t.describe() for t in TABLES.values()))
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from coldstart.replay import replay

    plan = replay(args.landing or settings.landing, args.start, args.days, seed=settings.seed,
                  users_limit=args.users_limit)
    print(f"landed {plan.days + 1} days: bootstrap {plan.bootstrap_day}, replay {plan.day(1)} .. {plan.day(plan.days)}")
    return 0


def _synth(args: argparse.Namespace, settings: Settings) -> int:
    from coldstart.synth import preset_config, synth

    given = {name: getattr(args, name) for name in _SYNTH_SHAPE if getattr(args, name) is not None}
    try:
        cfg = preset_config(args.preset, **given, days=args.days, start=args.start,
                            seed=settings.seed if args.seed is None else args.seed,
                            files_per_day=args.files_per_day, lateness_days=settings.lateness_days,
                            max_text_chars=settings.max_text_chars)
    except ValueError as exc:
        print(f"coldstart synth: {exc}", file=sys.stderr)
        return 2
    days = synth(args.landing or settings.landing, cfg)
    print(f"landed {len(days)} synthetic days: {days[0].date} .. {days[-1].date}, "
          f"{cfg.events_per_day} interaction rows a day")
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from coldstart.pipeline import STAGES, date_range, run_days

    if args.first and not args.last:
        print("coldstart run: --from needs --to", file=sys.stderr)
        return 2
    if args.first and args.last < args.first:
        print(f"coldstart run: --to {args.last} is before --from {args.first}", file=sys.stderr)
        return 2
    dates = [args.date] if args.date else date_range(args.first, args.last)
    stages = [s for s in args.stages.split(",") if s]
    skip = [s for s in args.skip.split(",") if s]
    unknown = [s for s in stages + skip if s not in STAGES]
    if unknown:
        print(f"coldstart run: unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    run_days(settings, dates, stages, skip, args.full_retrain, args.top_k, cascade=args.cascade)
    return 0


def _sql(args: argparse.Namespace, settings: Settings) -> int:
    import pandas as pd

    from coldstart.query import run_sql

    frame = run_sql(settings, args.query, args.output)
    if frame is None:
        print(f"wrote {args.output}")
        return 0
    with pd.option_context("display.max_rows", 200, "display.max_columns", 50, "display.width", 200):
        print(frame.to_string(index=False))
    return 0


def _quality(args: argparse.Namespace, settings: Settings) -> int:
    from coldstart.evaluate import quality_table
    from coldstart.lake import Lake

    table = quality_table(Lake.from_settings(settings), k=args.k, skip_first=args.skip_first)
    if table.empty:
        print("coldstart quality: no evaluated night yet (run evaluate first)", file=sys.stderr)
        return 1
    with pd_options():
        print(table.to_string(index=False))
    return 0


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from coldstart.report import write_report

    print(f"wrote {write_report(settings, args.output)}")
    return 0


def _vacuum(args: argparse.Namespace, settings: Settings) -> int:
    from coldstart.catalog import TABLES
    from coldstart.lake import Lake
    from coldstart.night import vacuum_lake

    keep_days = settings.retention_days if args.retention_days is None else args.retention_days
    # a log that lost files would let vacuum delete data files still in use: check every table first
    Lake.from_settings(settings).check_tables(TABLES)
    for line in vacuum_lake(settings, keep_days, args.retention_hours):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
