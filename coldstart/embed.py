"""Embed stage: encode every item and user whose content changed (or was never encoded) for the encoder.

Unchanged entities are never re-encoded: the work is the anti-join of (entity, content_hash)
against ``entity_embeddings`` for the configured encoder, so a night's cost grows with the new and
changed entities, not with the catalog. Encoding runs in Spark's Python workers (``mapInPandas``),
one model per worker process, on the GPU when the executor has one.

Users without profile text get no row here: their content vector is pooled from the vectors of the
items they interacted with, at training and scoring time (``coldstart.features.pool_user_content``).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Iterator

import numpy as np
import pandas as pd

from coldstart.config import Settings
from coldstart.results import EmbedResult
from coldstart.spark import worker_threads

log = logging.getLogger("coldstart.embed")

OUTPUT_DDL = ("entity_type string, entity_id string, encoder string, content_hash string, "
              "embedding array<float>, dim int, run_date date")


# Texts per encoding task. A night's few thousand new entities are one task: one Python worker, one
# encoder in memory (about 0.8 GiB) using all the cores, instead of an encoder per core at the same
# speed; a catalogue is split over the cores (bench/results/nightly_scale.md).
TEXTS_PER_TASK = 4096


def encode_partitions(settings: Settings, run_date: dt.date, tasks: int | None = None):
    """mapInPandas function: (entity_type, entity_id, content_text, content_hash) -> embedding rows."""
    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch

        from coldstart.encoder import get_encoder

        torch.set_num_threads(worker_threads(settings, tasks))
        encoder = get_encoder(settings)  # once per Python worker
        for frame in frames:
            if frame.empty:
                continue
            vectors = encoder.encode(frame["content_text"].fillna("").tolist())
            yield pd.DataFrame({
                "entity_type": frame["entity_type"].values,
                "entity_id": frame["entity_id"].values,
                "encoder": settings.encoder_name,
                "content_hash": frame["content_hash"].values,
                "embedding": list(vectors.astype(np.float32)),
                "dim": np.full(len(frame), vectors.shape[1], dtype=np.int32),
                "run_date": run_date,
            })
    return run


def pending(spark, settings: Settings):
    """Entities whose current content has no embedding under this encoder."""
    from pyspark.sql import functions as F

    from coldstart.lake import Lake

    lake = Lake.from_settings(settings)
    items = lake.read_spark(spark, "items").select(
        F.lit("item").alias("entity_type"), F.col("item_id").alias("entity_id"), "content_text", "content_hash")
    users = lake.read_spark(spark, "users").filter(F.col("content_text") != "").select(
        F.lit("user").alias("entity_type"), F.col("user_id").alias("entity_id"), "content_text", "content_hash")
    done = (lake.read_spark(spark, "entity_embeddings").filter(F.col("encoder") == settings.encoder_name)
            .select("entity_type", "entity_id", "content_hash"))
    return items.unionByName(users).join(done, ["entity_type", "entity_id", "content_hash"], "left_anti")


def embed(spark, settings: Settings, run_date: dt.date) -> EmbedResult:
    """Encode every item and user (with profile text) whose current content has no embedding under the
    configured encoder and merge them into entity_embeddings (a newer run date's row is never replaced by
    an older one). Returns how many of each were encoded: none on a re-run of the same night."""
    from pyspark.storagelevel import StorageLevel

    from coldstart.lake import Lake

    lake = Lake.from_settings(settings)
    todo = pending(spark, settings).persist(StorageLevel.MEMORY_AND_DISK)
    counts = {r["entity_type"]: r["count"] for r in todo.groupBy("entity_type").count().collect()}
    total = sum(counts.values())
    log.info("embed %s: %d item(s) and %d user(s) to encode with %s", run_date, counts.get("item", 0),
             counts.get("user", 0), settings.encoder_name)
    if total:
        parts = max(1, min(settings.spark_shuffle_partitions, -(-total // TEXTS_PER_TASK)))
        # Hash-partitioned and sorted by key: each text meets the same batch-mates (same padding, same
        # matmul shapes) whatever the input's file or task order, so a cluster's vectors equal local mode's.
        keys = ["entity_type", "entity_id"]
        encoded = (todo.repartition(parts, *keys).sortWithinPartitions(*keys)
                   .mapInPandas(encode_partitions(settings, run_date, parts), OUTPUT_DDL))
        lake.merge_spark(encoded, "entity_embeddings", newer_wins="t.run_date <= s.run_date")
    todo.unpersist()
    return EmbedResult(items=counts.get("item", 0), users=counts.get("user", 0))
