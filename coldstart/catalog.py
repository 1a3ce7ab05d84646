"""The table catalog: every Delta table's schema, key, partition column and a one-line doc per column.

This is the one place where table contracts live (DESIGN.md, "Output contract"). Everything that
writes or reads a table takes its schema from here; ``coldstart tables`` prints these docs.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

# A user with at most this many events is a cold user: user_segment 'cold' (recent events, at scoring) and
# the evaluation slice 'cold_users' (events before the night): the field's usual "a handful of events".
COLD_USER_MAX_EVENTS = 5

# The evaluation tables' cutoffs and `slice` values (evaluate writes them, the report and benches read them).
KS = (10, 20)
SLICES = ("all", "cold_users", "warm_users", "cold_items", "cold_only")  # what per_user_metrics writes
# The slices of the main list that `coldstart quality` pools (cold_only ranks another, restricted list).
POOLED_SLICES = SLICES[:4]
# The slices a cold-start claim is judged on (the report's and the quality bench's targets).
TARGET_SLICES = ("all", "cold_users", "cold_items")
MICRO_SLICES = ("cold_items",)  # pooled as sum of hits / sum of positives

UTC_TS = pa.timestamp("us", tz="UTC")
STR_MAP = pa.map_(pa.string(), pa.string())
VERSION_MAP = pa.map_(pa.string(), pa.int64())


def col(name: str, dtype: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, dtype, nullable=nullable, metadata={"doc": doc})


@dataclass(frozen=True)
class Table:
    name: str
    doc: str
    schema: pa.Schema
    key: tuple[str, ...]
    partition_by: tuple[str, ...] = ()

    @property
    def columns(self) -> list[str]:
        return self.schema.names

    def column_doc(self, name: str) -> str:
        meta = self.schema.field(name).metadata or {}
        return meta.get(b"doc", b"").decode()

    def describe(self) -> str:
        lines = [f"{self.name}: {self.doc}",
                 f"  key: {', '.join(self.key)}" + (f"; partition: {', '.join(self.partition_by)}" if self.partition_by else "")]
        for f in self.schema:
            lines.append(f"  {f.name:<18} {str(f.type):<28} {self.column_doc(f.name)}")
        return "\n".join(lines)


INTERACTIONS = Table(
    "interactions",
    "Accepted events, one row per event_id, partitioned by the landing day they arrived in.",
    pa.schema([
        col("event_id", pa.string(), "Unique event id from the source.", nullable=False),
        col("user_id", pa.string(), "Who acted.", nullable=False),
        col("item_id", pa.string(), "What was acted on.", nullable=False),
        col("event_type", pa.string(), "One of the configured event types (view, click, like, rate, purchase).", nullable=False),
        col("value", pa.float64(), "Rating or weight; null when the event carries none."),
        col("scene", pa.string(), "Context of the event (surface, device, campaign); 'default' when absent.", nullable=False),
        col("event_ts", UTC_TS, "When the event happened (UTC).", nullable=False),
        col("event_date", pa.date32(), "UTC date of event_ts.", nullable=False),
        col("run_date", pa.date32(), "Landing day (partition) the event arrived in.", nullable=False),
        col("source_file", pa.string(), "Landing file the row came from.", nullable=False),
        col("ingested_at", UTC_TS, "Audit: when the ingest run wrote the row (wall clock)."),
    ]),
    key=("event_id",),
    partition_by=("run_date",),
)

QUARANTINE = Table(
    "quarantine",
    "Rejected landing rows with the reason; nothing read is lost.",
    pa.schema([
        col("run_date", pa.date32(), "Landing day (partition).", nullable=False),
        col("source", pa.string(), "interactions, items or users.", nullable=False),
        col("source_file", pa.string(), "Landing file of the row."),
        col("line", pa.int64(), "1-based line (JSONL/CSV data line) or row number (Parquet) in the file."),
        col("raw", pa.string(), "The row as read (text), for replay after a fix."),
        col("reason", pa.string(), "Machine-readable reason, e.g. missing_field, bad_timestamp, unknown_event_type.", nullable=False),
        col("detail", pa.string(), "Human-readable detail (which field, which value)."),
        col("ingested_at", UTC_TS, "Audit: when the ingest run wrote the row."),
    ]),
    key=("run_date", "source", "source_file", "line"),
    partition_by=("run_date",),
)

INGEST_AUDIT = Table(
    "ingest_audit",
    "Row accounting per run date and source: rows_read = rows_accepted + rows_quarantined + rows_duplicate.",
    pa.schema([
        col("run_date", pa.date32(), "Landing day.", nullable=False),
        col("source", pa.string(), "interactions, items or users.", nullable=False),
        col("files", pa.int64(), "Data files read.", nullable=False),
        col("rows_read", pa.int64(), "Rows read from the files.", nullable=False),
        col("rows_accepted", pa.int64(), "Rows written to their table.", nullable=False),
        col("rows_quarantined", pa.int64(), "Rows written to quarantine.", nullable=False),
        col("rows_duplicate", pa.int64(), "Rows dropped as repeats of an accepted id.", nullable=False),
        col("ingested_at", UTC_TS, "Audit: when the ingest run wrote the row."),
    ]),
    key=("run_date", "source"),
    partition_by=("run_date",),
)

ITEMS = Table(
    "items",
    "Current state of every item (catalog rows merged by item_id; interaction-only items get a row without text).",
    pa.schema([
        col("item_id", pa.string(), "Item id.", nullable=False),
        col("title", pa.string(), "Title; may be empty."),
        col("description", pa.string(), "Description; may be empty."),
        col("tags", pa.list_(pa.string()), "Tags (list of strings)."),
        col("attributes", STR_MAP, "Free-form attributes (string map)."),
        col("active", pa.bool_(), "False retires the item from recommendations.", nullable=False),
        col("content_text", pa.string(), "Stable text built from title, tags, description, attributes; what the encoder reads.", nullable=False),
        col("content_hash", pa.string(), "sha256 of content_text; changes exactly when content_text changes.", nullable=False),
        col("first_seen", pa.date32(), "Run date the item first appeared (catalog row or interaction).", nullable=False),
        col("first_interaction", pa.date32(), "Run date of the item's first accepted interaction (null: none yet)."),
        col("updated_at", UTC_TS, "Source's updated_at of the latest catalog row (null for interaction-only items)."),
        col("last_run_date", pa.date32(), "Run date of the last change to this row.", nullable=False),
    ]),
    key=("item_id",),
)

USERS = Table(
    "users",
    "Every known user: profile rows merged by user_id, plus users first seen in interactions.",
    pa.schema([
        col("user_id", pa.string(), "User id.", nullable=False),
        col("profile", STR_MAP, "Profile fields (strings; JSON numbers kept as their text)."),
        col("content_text", pa.string(), "Stable text of the profile fields; empty when the user has no profile.", nullable=False),
        col("content_hash", pa.string(), "sha256 of content_text.", nullable=False),
        col("first_seen", pa.date32(), "Run date the user first appeared.", nullable=False),
        col("last_seen", pa.date32(), "Latest run date with an accepted event or profile row.", nullable=False),
    ]),
    key=("user_id",),
)

ENTITY_EMBEDDINGS = Table(
    "entity_embeddings",
    "Encoder vectors of items and users, one row per entity and encoder; re-encoded only when content_hash changes.",
    pa.schema([
        col("entity_type", pa.string(), "item or user.", nullable=False),
        col("entity_id", pa.string(), "item_id or user_id.", nullable=False),
        col("encoder", pa.string(), "Encoder name (setting encoder_name).", nullable=False),
        col("content_hash", pa.string(), "content_hash of the text that was encoded.", nullable=False),
        col("embedding", pa.list_(pa.float32()), "L2-normalised vector.", nullable=False),
        col("dim", pa.int32(), "Length of embedding.", nullable=False),
        col("run_date", pa.date32(), "Run date that encoded this version.", nullable=False),
    ]),
    key=("entity_type", "entity_id", "encoder"),
)

MODEL_REGISTRY = Table(
    "model_registry",
    "Every trained model with its lineage: one ready model per run date, and the models re-runs superseded.",
    pa.schema([
        col("model_version", pa.string(), "<run_date>-<short checksum>.", nullable=False),
        col("run_date", pa.date32(), "Night that trained it.", nullable=False),
        col("parent_version", pa.string(), "Version it was warm-started from (null for full/cold)."),
        col("mode", pa.string(), "warm, full or cold.", nullable=False),
        col("checkpoint_uri", pa.string(), "Folder of the checkpoint.", nullable=False),
        col("checksum", pa.string(), "sha256 of the checkpoint manifest.", nullable=False),
        col("metrics", pa.string(), "JSON: training and validation metrics per head.", nullable=False),
        col("status", pa.string(), "ready (the run date's model in use; one per run date), superseded (a re-run of the "
            "night registered another model; its checkpoint stays for the nights built on it) or removed (`coldstart "
            "vacuum` deleted that superseded checkpoint).", nullable=False),
        col("created_at", UTC_TS, "Audit: wall clock of the training run."),
    ]),
    key=("model_version",),
)

RECOMMENDATIONS = Table(
    "recommendations",
    "Top-K lists per active user and scene; run_date D holds the lists to show on day D+1.",
    pa.schema([
        col("run_date", pa.date32(), "Night that scored (partition).", nullable=False),
        col("user_id", pa.string(), "User.", nullable=False),
        col("scene", pa.string(), "Scene the list is for.", nullable=False),
        col("list", pa.string(), "Which list: 'main' (every active item) or 'new' (\"new for you\": only items nobody has used yet, ranked by the model; setting new_list_size). Null in rows written before the column existed: those are 'main'."),
        col("rank", pa.int32(), "1 = best, within the list.", nullable=False),
        col("item_id", pa.string(), "Recommended item.", nullable=False),
        col("score", pa.float64(), "Model score (logit; for cold users plus cold_user_popularity_boost x the item's recent popularity) or popularity score for the fallback list.", nullable=False),
        col("model_version", pa.string(), "model_registry version that scored (or 'popular' for the fallback).", nullable=False),
        col("user_segment", pa.string(), "new (no history, no profile), cold (profile or 1-5 events), warm (more).", nullable=False),
        col("item_is_new", pa.bool_(), "Item had no interaction before this run date.", nullable=False),
        col("reason", pa.string(), "Why: 'similar to <title> you liked', 'popular in <scene>', ..."),
    ]),
    key=("run_date", "user_id", "scene", "list", "rank"),
    partition_by=("run_date",),
)

EVALUATION = Table(
    "evaluation",
    "Next-day quality: lists of D-1 against events of D, per method, slice, metric and K.",
    pa.schema([
        col("run_date", pa.date32(), "Night that evaluated (events of this date against lists of the day before).", nullable=False),
        col("method", pa.string(), "model or a baseline name.", nullable=False),
        col("slice", pa.string(), "all, cold_users, warm_users, cold_items, cold_only.", nullable=False),
        col("metric", pa.string(), "recall (hits / min(k, |truth|)), recall_plain (hits / |truth|), ndcg.", nullable=False),
        col("k", pa.int32(), "Cut-off.", nullable=False),
        col("value", pa.float64(), "Mean over target users of the slice; cold_items recall is micro-averaged (all cold positives found / all cold positives)."),
        col("n_users", pa.int64(), "Target users in the slice.", nullable=False),
        col("model_version", pa.string(), "Model version whose lists were evaluated."),
    ]),
    key=("run_date", "method", "slice", "metric", "k"),
    partition_by=("run_date",),
)

EVALUATION_USERS = Table(
    "evaluation_users",
    "Per-user values behind evaluation's means (for paired bootstrap intervals between methods).",
    pa.schema([
        col("run_date", pa.date32(), "Night that evaluated (partition).", nullable=False),
        col("method", pa.string(), "model or a baseline name.", nullable=False),
        col("slice", pa.string(), "all, cold_users, warm_users, cold_items, cold_only.", nullable=False),
        col("metric", pa.string(), "recall (hits / min(k, |truth|)), recall_plain (hits / |truth|), ndcg; for cold_items also hits and positives (counts).", nullable=False),
        col("k", pa.int32(), "Cut-off.", nullable=False),
        col("user_id", pa.string(), "Target user.", nullable=False),
        col("value", pa.float64(), "The user's metric value.", nullable=False),
    ]),
    key=("run_date", "method", "slice", "metric", "k", "user_id"),
    partition_by=("run_date",),
)

STAGE_RUNS = Table(
    "stage_runs",
    "One row per run date and stage: the latest run of that stage for that night, how long it took, what it moved and "
    "how much memory its driver needed. Operators look here first when a night is slow or failed.",
    pa.schema([
        col("run_date", pa.date32(), "Night the stage ran for.", nullable=False),
        col("stage", pa.string(), "ingest, embed, train, score or evaluate.", nullable=False),
        col("started_at", UTC_TS, "Wall clock when the stage started.", nullable=False),
        col("finished_at", UTC_TS, "Wall clock when it finished (or failed).", nullable=False),
        col("seconds", pa.float64(), "finished_at - started_at, in seconds.", nullable=False),
        col("status", pa.string(), "ok or failed.", nullable=False),
        col("error", pa.string(), "The failure's type and message (null when ok)."),
        col("spark_master", pa.string(), "Spark master URL of the session the stage used (null: no Spark session)."),
        col("spark_app_id", pa.string(), "Spark application id (null: no Spark session)."),
        col("rows_in", pa.int64(), "Rows read from the lake's tables (Delta log counts of the files read for Spark reads).", nullable=False),
        col("rows_out", pa.int64(), "Rows committed to the lake's tables (merges: rows inserted + updated).", nullable=False),
        col("driver_python_peak_rss_bytes", pa.int64(),
            "Peak resident memory of the driver's Python process (VmHWM of its own address space, not ru_maxrss, which "
            "Linux carries over from the parent that started it; a process peak, so in a "
            "process that ran earlier stages it is at least theirs)."),
        col("driver_jvm_peak_rss_bytes", pa.int64(),
            "Peak resident memory of the driver's JVM (VmHWM of its process; null: no Spark session, or not on Linux)."),
        col("executor_jvm_peak_rss_bytes", pa.int64(),
            "Largest peak resident memory of one executor's JVM, from Spark's executor metrics (ProcessTreeJVMRSSMemory; "
            "in local mode the one executor is the driver's JVM; an application peak, like the driver's; null: no Spark "
            "session, or no metrics yet)."),
        col("executor_python_peak_rss_bytes", pa.int64(),
            "Largest peak resident memory of the Python workers of one executor, summed over its workers "
            "(ProcessTreePythonRSSMemory: the mapInArrow/UDF processes that embed and score run in; null: as above)."),
        col("pid", pa.int64(), "Process id of the driver (tells two concurrent runs apart in the logs)."),
    ]),
    key=("run_date", "stage"),
)

NIGHT_MANIFEST = Table(
    "night_manifest",
    "What each stage of each night saw and wrote, by Delta version: time-travel any table to "
    "tables_read[name] to see what that night read. A re-run of the night reads the as_of versions of "
    "the stages before it, so it sees what the night saw.",
    pa.schema([
        col("run_date", pa.date32(), "Night.", nullable=False),
        col("stage", pa.string(), "ingest, embed, train, score or evaluate.", nullable=False),
        col("tables_read", VERSION_MAP, "Delta version of every table the stage read (table name -> version).", nullable=False),
        col("tables_committed", VERSION_MAP, "Delta version of the last commit the stage made to each table it wrote.", nullable=False),
        col("as_of", VERSION_MAP,
            "The version of each current-state table (items, users, entity_embeddings) that stands for the state "
            "after this stage of this night; later stages of the night read it. A re-run of an old night (later "
            "nights already ran) keeps the versions of its first run here.", nullable=False),
        col("checkpoint_version", pa.string(), "model_registry version the stage started from (train: D-1's; score: D's); null: none."),
        col("checkpoint_checksum", pa.string(), "Its checksum, as registered and verified."),
        col("settings_hash", pa.string(), "sha256 of the stage's settings (every setting, as JSON).", nullable=False),
        col("recorded_at", UTC_TS, "Wall clock when the row was written."),
    ]),
    key=("run_date", "stage"),
)

TABLES: dict[str, Table] = {t.name: t for t in (
    INTERACTIONS, QUARANTINE, INGEST_AUDIT, ITEMS, USERS, ENTITY_EMBEDDINGS, MODEL_REGISTRY, RECOMMENDATIONS, EVALUATION,
    EVALUATION_USERS, STAGE_RUNS, NIGHT_MANIFEST,
)}


def table(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}") from None
