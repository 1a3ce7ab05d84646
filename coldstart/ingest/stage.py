"""The ingest stage: one Spark task per landing file, de-duplication, and one Delta commit per table."""

from __future__ import annotations

import datetime as dt
import logging
import time
from contextlib import contextmanager
from typing import Iterator

import pyarrow as pa

from coldstart import storage
from coldstart.config import Settings
from coldstart.ingest.contract import COMMON_DDL, PARSED_DDL, AuditError, Rules
from coldstart.ingest.validate import parse_file
from coldstart.landing import SOURCES, day_files
from coldstart.results import IngestResult, SourceAudit

log = logging.getLogger("coldstart.ingest")


def _parse_files(source: str, rules: Rules, paths: list[str]):
    """mapInArrow function over spark.range(len(paths)): each input id names one file (a path or a URI the
    executor opens through coldstart.storage, with the driver's AWS settings shipped in the closure)."""
    env = storage.worker_env()

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        storage.adopt(env)
        for ids in batches:
            for file_id in ids.column(0).to_pylist():
                yield from parse_file(source, paths[file_id], rules)
    return run


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------
@contextmanager
def _phase(run_date: dt.date, name: str):
    """Log how long a phase of the stage took (the benchmark and slow nights read these)."""
    start = time.perf_counter()
    yield
    log.info("ingest %s: %s took %.1fs", run_date, name, time.perf_counter() - start)


def _parsed_frame(spark, source: str, paths: list[str], rules: Rules):
    """One Spark task per file (spark.range gives each partition exactly one id)."""
    ddl = f"{COMMON_DDL}, {PARSED_DDL[source]}"
    if not paths:
        return spark.createDataFrame([], ddl)
    ids = spark.range(0, len(paths), numPartitions=len(paths))
    return ids.mapInArrow(_parse_files(source, rules, paths), ddl)


def _latest_per_key(valid, key: str):
    """Rank a day's catalog/profile rows per key: the latest updated_at (then file, then line) is 1."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    latest = Window.partitionBy(key).orderBy(F.col("updated_at").desc_nulls_last(), F.col("source_file").desc(),
                                            F.col("line").desc())
    return valid.withColumn("_n", F.row_number().over(latest))


def ingest(spark, settings: Settings, run_date: dt.date) -> IngestResult:
    """Ingest landing(run_date) and return the audit of every source (rows_read = accepted + quarantined +
    duplicate, else AuditError).

    Commits, in order: interactions(run_date), items merge, users merge, quarantine(run_date),
    ingest_audit(run_date). Each is idempotent for the date, so a rerun after a crash anywhere
    converges to the rows of a clean run."""
    from pyspark.sql import functions as F

    from coldstart.lake import Lake

    lake = Lake.from_settings(settings)
    rules = Rules.from_settings(settings, run_date)
    paths = {s: list(day_files(settings.landing, s, run_date, required=(s == "interactions")) or []) for s in SOURCES}
    with _persisted() as keep:
        parsed = {}
        for source in SOURCES:
            log.info("ingest %s %s: %d file(s)", run_date, source, len(paths[source]))
            parsed[source] = keep(_parsed_frame(spark, source, paths[source], rules))
        valid = {s: parsed[s].filter(F.col("reason").isNull()) for s in SOURCES}
        marked = keep(_mark_repeats(spark, lake, settings, run_date, valid["interactions"]))
        accepted = _accepted_events(marked, run_date)
        with _phase(run_date, "parse, validate, dedup and write interactions"):
            rows_accepted = {"interactions": lake.write_spark(accepted, "interactions", "replace_partition",
                                                              {"run_date": run_date})}
        # items and users: the latest row of the day per id is merged, the others are superseded
        items, users = _latest_per_key(valid["items"], "item_id"), _latest_per_key(valid["users"], "user_id")
        with _phase(run_date, "count rows"):
            counts = _count_rows(parsed, marked, items, users)
        rows_accepted["items"] = counts.get(("items", "latest"), 0)
        rows_accepted["users"] = counts.get(("users", "latest"), 0)
        with _phase(run_date, "merge items"):
            _merge_items(spark, lake, items.filter("_n = 1"), accepted, run_date)
        with _phase(run_date, "merge users"):
            _merge_users(spark, lake, users.filter("_n = 1"), accepted, run_date)
        with _phase(run_date, "write quarantine"):
            lake.write_spark(_quarantine_rows(parsed, run_date).coalesce(1), "quarantine", "replace_partition",
                             {"run_date": run_date})
    return _write_audit(lake, run_date, paths, counts, rows_accepted)


@contextmanager
def _persisted():
    """``keep(df)``: persist df on disk for the stage's several passes over it; all unpersisted at the end."""
    from pyspark.storagelevel import StorageLevel

    cached = []

    def keep(df):
        df = df.persist(StorageLevel.DISK_ONLY)
        cached.append(df)
        return df
    try:
        yield keep
    finally:
        for df in cached:
            df.unpersist()


def _mark_repeats(spark, lake, settings: Settings, run_date: dt.date, events):
    """This run's valid events with ``_dup``: one window over them and the stored event_ids of the partitions
    inside the lateness window (only those: a day's cost does not grow with history). Stored ids sort
    first, then this run's rows by file and line: every row but the first of an id is a repeat."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    window = [run_date - dt.timedelta(days=d) for d in range(1, settings.lateness_days + 1)]
    stored = lake.read_spark(spark, "interactions", partitions={"run_date": window}).select(
        "event_id", F.lit(0).alias("_origin"))
    first = Window.partitionBy("event_id").orderBy("_origin", "source_file", "line")
    return (events.withColumn("_origin", F.lit(1)).unionByName(stored, allowMissingColumns=True)
            .withColumn("_dup", F.row_number().over(first) > 1).filter(F.col("_origin") == 1))


def _accepted_events(marked, run_date: dt.date):
    """The first occurrence of every event id, as interactions rows of run_date."""
    from pyspark.sql import functions as F

    return marked.filter(~F.col("_dup")).select(
        "event_id", "user_id", "item_id", "event_type", "value", "scene", "event_ts",
        F.to_date("event_ts").alias("event_date"), F.lit(run_date).cast("date").alias("run_date"), "source_file",
        F.current_timestamp().alias("ingested_at"))


def _quarantine_rows(parsed: dict, run_date: dt.date):
    """Every source's rejected rows, as quarantine rows of run_date."""
    from pyspark.sql import functions as F

    day, now = F.lit(run_date).cast("date"), F.current_timestamp()
    parts = [parsed[source].filter(F.col("reason").isNotNull()).select(
        day.alias("run_date"), F.lit(source).alias("source"), "source_file", "line", "raw", "reason", "detail",
        now.alias("ingested_at")) for source in SOURCES]
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out


def _write_audit(lake, run_date: dt.date, paths: dict[str, list[str]], counts: dict[tuple[str, str], int],
                 rows_accepted: dict[str, int]) -> IngestResult:
    """Check each source's accounting and write ingest_audit(run_date). rows_quarantined is read back from
    the committed partition: a lost write shows up in the audit."""
    stored_quarantine = (lake.read_arrow("quarantine", columns=["source"], filters=[("run_date", "=", run_date)])
                         .group_by("source").aggregate([([], "count_all")]).to_pylist())
    quarantined = {r["source"]: r["count_all"] for r in stored_quarantine}
    audits = {source: SourceAudit(run_date=run_date, source=source, files=len(paths[source]),
                                  rows_read=counts.get((source, "read"), 0), rows_accepted=rows_accepted[source],
                                  rows_quarantined=quarantined.get(source, 0),
                                  rows_duplicate=counts.get((source, "duplicate"), 0),
                                  ingested_at=dt.datetime.now(dt.timezone.utc))
              for source in SOURCES}
    for a in audits.values():
        if a.rows_read != a.rows_accepted + a.rows_quarantined + a.rows_duplicate:
            raise AuditError(f"ingest {run_date} {a.source}: rows_read={a.rows_read} but accepted "
                             f"{a.rows_accepted} + quarantined {a.rows_quarantined} + duplicate {a.rows_duplicate}")
    lake.replace_partition("ingest_audit", pa.Table.from_pylist([a.as_dict() for a in audits.values()]),
                           run_date=run_date)
    for a in audits.values():
        log.info("ingest %s %-12s read=%d accepted=%d quarantined=%d duplicate=%d", run_date, a.source, a.rows_read,
                 a.rows_accepted, a.rows_quarantined, a.rows_duplicate)
    return IngestResult(audits)


def _count_rows(parsed: dict, marked, items, users) -> dict[tuple[str, str], int]:
    """All the day's row counts in one Spark job: (source, read|duplicate|latest) -> rows."""
    from pyspark.sql import functions as F

    def tagged(df, source: str, kind: str):
        return df.select(F.lit(source).alias("source"), F.lit(kind).alias("kind"))

    parts = [tagged(parsed[s], s, "read") for s in SOURCES]
    parts.append(tagged(marked.filter("_dup"), "interactions", "duplicate"))
    for source, ranked in (("items", items), ("users", users)):
        parts.append(ranked.select(F.lit(source).alias("source"),
                                   F.when(F.col("_n") == 1, "latest").otherwise("duplicate").alias("kind")))
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part)
    return {(r["source"], r["kind"]): r["count"] for r in union.groupBy("source", "kind").count().collect()}


def _merge_items(spark, lake, catalog_rows, accepted, run_date: dt.date) -> None:
    """Merge the day's catalog rows, give interaction-only items a row without text, and record each
    item's first interaction. Only rows that change are merged. A catalog row never overwrites one
    merged by a later run date (rerunning an old date does not bring old content back)."""
    from pyspark.sql import functions as F

    from coldstart.text import content_hash

    day = F.lit(run_date).cast("date")
    existing = lake.read_spark(spark, "items")
    catalog = catalog_rows.select(
        "item_id", F.col("title").alias("_title"), F.col("description").alias("_description"),
        F.from_json("tags_json", "array<string>").alias("_tags"),
        F.from_json("attributes_json", "map<string,string>").alias("_attributes"),
        F.col("active").alias("_active"), F.col("content_text").alias("_text"), F.col("content_hash").alias("_hash"),
        F.col("updated_at").alias("_updated"), F.lit(True).alias("_in_catalog"))
    referenced = accepted.select("item_id").distinct().withColumn("_used", F.lit(True))
    touched = catalog.select("item_id").unionByName(referenced.select("item_id")).distinct()
    rows = touched.join(catalog, "item_id", "left").join(referenced, "item_id", "left").join(existing, "item_id", "left")
    apply = F.col("_in_catalog").isNotNull() & (F.coalesce("last_run_date", day) <= day)
    used = F.col("_used").isNotNull()
    first_interaction = F.when(used, F.coalesce(F.least("first_interaction", day), day)).otherwise(F.col("first_interaction"))
    changed = apply | F.col("first_seen").isNull() | (F.col("first_seen") > day) | \
        (used & (F.col("first_interaction").isNull() | (F.col("first_interaction") > day)))
    out = rows.filter(changed).select(
        "item_id",
        F.when(apply, F.col("_title")).otherwise(F.col("title")).alias("title"),
        F.when(apply, F.col("_description")).otherwise(F.col("description")).alias("description"),
        F.when(apply, F.col("_tags")).otherwise(F.col("tags")).alias("tags"),
        F.when(apply, F.col("_attributes")).otherwise(F.col("attributes")).alias("attributes"),
        F.when(apply, F.col("_active")).otherwise(F.coalesce("active", F.lit(True))).alias("active"),
        F.when(apply, F.col("_text")).otherwise(F.coalesce("content_text", F.lit(""))).alias("content_text"),
        F.when(apply, F.col("_hash")).otherwise(F.coalesce("content_hash", F.lit(content_hash("")))).alias("content_hash"),
        F.coalesce(F.least("first_seen", day), day).alias("first_seen"),
        first_interaction.alias("first_interaction"),
        F.when(apply, F.col("_updated")).otherwise(F.col("updated_at")).alias("updated_at"),
        F.when(apply, day).otherwise(F.coalesce("last_run_date", day)).alias("last_run_date"))
    lake.merge_spark(out, "items")


def _merge_users(spark, lake, profile_rows, accepted, run_date: dt.date) -> None:
    """Profiles replace the stored profile; users seen today get last_seen, new users first_seen.
    Only rows that change are merged (a user seen again on a rerun is left alone)."""
    from pyspark.sql import functions as F

    from coldstart.text import content_hash

    existing = lake.read_spark(spark, "users")
    day = F.lit(run_date).cast("date")
    profiles = profile_rows.select("user_id", F.from_json("profile_json", "map<string,string>").alias("_profile"),
                                   F.col("content_text").alias("_text"), F.col("content_hash").alias("_hash"))
    active = accepted.select("user_id").distinct().unionByName(profiles.select("user_id")).distinct()
    rows = active.join(profiles, "user_id", "left").join(existing, "user_id", "left")
    has_profile = F.col("_hash").isNotNull()
    changed = has_profile | F.col("first_seen").isNull() | (F.col("first_seen") > day) | (F.col("last_seen") < day)
    out = rows.filter(changed).select(
        "user_id",
        F.when(has_profile, F.col("_profile")).otherwise(F.col("profile")).alias("profile"),
        F.coalesce("_text", "content_text", F.lit("")).alias("content_text"),
        F.coalesce("_hash", "content_hash", F.lit(content_hash(""))).alias("content_hash"),
        F.coalesce(F.least("first_seen", day), day).alias("first_seen"),
        F.coalesce(F.greatest("last_seen", day), day).alias("last_seen"))
    lake.merge_spark(out, "users")

