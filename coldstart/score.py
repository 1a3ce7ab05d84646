"""Score stage: top-K items for every active user, in the user's most frequent recent scene(s).

* candidates: every active item (new ones too), minus what the user already consumed (all history);
* users with history and/or a profile are scored by the model of run date D (a user with a profile
  and no history from the profile alone); a user with neither gets the scene's popular-and-fresh list;
* user_segment: ``new`` (no history, no profile), ``cold`` (a profile, 1-5 recent events, or only
  history older than the active window), ``warm`` (more than 5 recent events);
* a cold user's scores add ``cold_user_popularity_boost`` x the item's recent popularity (the model's
  pop feature on the serving day) to the model's logit: a vector learned from a handful of events is
  a noisy guess, and leaning on what is popular now was worth more than it on the quality bench
  (bench/results/quality.md). The boost is one more column of the item matrix (pop) met by one more
  coordinate of the user vector (the boost, or 0), so it costs no second pass;
* scoring runs on the executors: the active users are one Spark DataFrame of their inputs (Spark
  aggregations over the Delta tables), partitioned by user (``score_partitions``); each task's Python
  worker scores its users in blocks of ``score_block_users`` (user, scene) lists with the top-k kernel
  (:func:`coldstart.ranking.top_k_scores`) against the broadcast item matrix, and the executors write
  the rows for one Delta commit (``Lake.write_spark``): the driver holds the item side only
  (O(items x dim)), whatever the number of users;
* a second list per (user, scene), ``list = 'new'`` ("new for you"): the ``new_list_size`` best items by
  the same scores among the items nobody has used up to D (fresh on the serving day), what a new-arrivals
  shelf beside the main list shows; users scored by the model get their own ranking of them, users
  with neither history nor profile get them by the model's item prior (the bias);
* every row has a reason: "similar to <title> you liked" (the recently consumed item whose content
  is closest to the recommended one), "matches your profile", "based on your earlier activity",
  "popular in <scene>", "new in the catalogue" or (closing a short fallback list) "in the catalogue".
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from coldstart import idmap, storage
from coldstart.catalog import COLD_USER_MAX_EVENTS, RECOMMENDATIONS
from coldstart.config import Settings
from coldstart.devices import resolve_device
from coldstart.features import (POPULARITY_DAYS, content_vectors, daily_item_counts, daily_item_counts_spark,
                                day_numbers, pool_user_content, popularity_spark, profiles_spark, recent_popularity,
                                user_history_spark, window_events_spark, window_start)
from coldstart.lake import Lake, spark_schema_for
from coldstart.ranking import ItemMatrix, popular_in_scene, prefilter_setting, top_k_scores
from coldstart.registry import registry_row
from coldstart.results import ScoreResult

if TYPE_CHECKING:
    from pyspark import Broadcast

    from coldstart.model import Checkpoint

log = logging.getLogger("coldstart.score")

FRESH_EVERY = 5  # popular-and-fresh fallback: every fifth slot goes to a new item
NOTHING = np.empty(0, dtype=np.int64)


class ModelMissingError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# the stage: the driver prepares the item side (O(items x dim)), the executors score the users
# --------------------------------------------------------------------------------------------
USER_INPUTS = ("user_id", "has_profile", "n_recent", "has_history", "scenes", "latest", "recent", "window_items",
               "consumed", "profile")


def score(spark, settings: Settings, run_date: dt.date, top_k: int | None = None) -> ScoreResult:
    """Write run_date's recommendations (one partition, one commit) for every active user.

    The driver loads the registered checkpoint, computes the item matrix of the active items and the
    per-item state (popularity, freshness, titles): O(items x dim), broadcast once to the executors.
    The users' inputs are Spark aggregations over the Delta tables (:func:`user_inputs`), one row per
    active user, partitioned by user (setting ``score_partitions``); each partition's Python worker
    loads the checkpoint once (cached per process), builds its users' vectors, ranks with the top-k
    kernel and writes the reasons, and the rows go to the table from the executors (Lake.write_spark).
    No per-user data reaches the driver."""
    from pyspark.sql import functions as F
    from pyspark.storagelevel import StorageLevel

    from coldstart.model import Checkpoint, item_vectors
    from coldstart.spark import get_session

    k = int(top_k or settings.top_k)
    if k <= 0:
        raise ValueError(f"score {run_date}: top_k must be positive, got {k}")
    lake = Lake.from_settings(settings)
    reg = registry_row(lake, run_date)
    if reg is None:
        raise ModelMissingError(f"score {run_date}: no model in model_registry for {run_date} (run train first)")
    spark = spark or get_session(settings, app_name="coldstart-score")
    ckpt = Checkpoint.load(reg["checkpoint_uri"], expected_checksum=reg["checksum"])  # the model as registered
    version = reg["model_version"]

    items = lake.read_pandas("items", columns=["item_id", "title", "active", "first_interaction", "first_seen"])
    items = items[items["active"] & (items["first_seen"] <= run_date)].sort_values("item_id").reset_index(drop=True)
    item_ids = items["item_id"].to_numpy()
    titles = items["title"].where(items["title"].fillna("") != "", items["item_id"]).to_numpy()
    item_content = content_vectors(lake, settings, "item")
    fresh, pop = serving_state(lake, items, run_date, spark=spark)
    vectors, bias = item_vectors(ckpt, item_ids, item_content, fresh=fresh, pop=pop)
    del ckpt  # the workers load their own; the driver keeps only the item side
    events = window_events_spark(spark, lake, settings, run_date)
    vectors = np.hstack([vectors, pop.astype(np.float32)[:, None]])  # last column: pop, for the boost
    columns = scored_columns(vectors)
    state = ItemState(
        item_ids=item_ids, is_new=(items["first_interaction"].isna() | (items["first_interaction"] >= run_date)).to_numpy(),
        liked=np.array([f"similar to {t} you liked" for t in titles], dtype=object),  # reason per item, made once
        vectors=np.ascontiguousarray(vectors[:, columns]), columns=columns,
        bias=bias, fresh_positions=np.flatnonzero(fresh), **content_rows(item_ids, item_content),
        popular=popularity_spark(events, run_date))
    del item_content
    job = ScoreJob(settings=settings, run_date=run_date, k=k, version=version, checkpoint_uri=reg["checkpoint_uri"],
                   checksum=reg["checksum"], env=storage.worker_env(), items=spark.sparkContext.broadcast(state))

    active = spark.createDataFrame(pd.DataFrame({"item_id": item_ids.astype(str)}), "item_id string")
    inputs = user_inputs(spark, lake, settings, run_date, active)
    parts = settings.score_partitions or settings.spark_shuffle_partitions
    # on disk, not in memory: the count and the scoring read it, and in local mode the executors' memory is the driver's.
    # Sorted within partitions: each block of users is the same whatever order the upstream tasks produced rows
    # in, so the network sees the same batches (same float sums) on a cluster as in local mode.
    inputs = inputs.withColumn("segment", segment_column(inputs)) \
        .repartition(parts, "user_id").sortWithinPartitions("user_id").persist(StorageLevel.DISK_ONLY)
    counted = inputs.groupBy("segment").agg(
        F.count("*").alias("users"), F.sum(F.greatest(F.size("scenes"), F.lit(1))).alias("lists")).collect()
    by_segment = {r["segment"]: int(r["users"]) for r in counted}
    n_users, n_lists = sum(by_segment.values()), sum(int(r["lists"]) for r in counted)
    log.info("score %s: %d active users (%s), %d (user, scene) lists over %d active items (%d new), model %s, "
             "%d partitions", run_date, n_users, by_segment, n_lists, len(item_ids), int(state.is_new.sum()), version, parts)
    try:
        rows = inputs.mapInArrow(job.partition, spark_schema_for(RECOMMENDATIONS))
        written = lake.write_spark(rows, "recommendations", "replace_partition", {"run_date": run_date})
    finally:
        inputs.unpersist()
        job.items.unpersist()
    log.info("score %s: wrote %d recommendations", run_date, written)
    return ScoreResult(users=n_users, lists=n_lists, rows=written, model_version=version)


def scored_columns(vectors: np.ndarray) -> np.ndarray:
    """The columns of the item matrix that can change a score: those not zero for every item. A term the night's
    blend switched off (weight 0: its item columns are zeros) then costs nothing in the products, and every
    score is the same sum without its zero terms. At least one column is kept, so the matrices never have
    width 0."""
    used = np.flatnonzero(np.any(vectors != 0, axis=0))
    return used if len(used) else np.arange(min(1, vectors.shape[1]))


def content_rows(item_ids: np.ndarray, item_content: dict) -> dict:
    """The encoder vectors as ItemState keeps them, once: one row per active item, in ``item_ids`` order
    (zeros for one without a vector), then a row per other item with a vector; ``content_ids`` names the
    rows and ``content_known`` says which hold a vector. The first rows are then the active items' matrix
    (a view, no copy) and every known row the vector of its id."""
    if not item_content:
        return {"content_ids": np.empty(0, dtype=object), "content": np.zeros((0, 1), np.float32),
                "content_known": np.zeros(0, dtype=bool)}
    active = set(item_ids.tolist())
    others = [i for i in item_content if i not in active]
    dim = len(next(iter(item_content.values())))
    content = np.zeros((len(item_ids) + len(others), dim), np.float32)
    known = np.zeros(len(content), dtype=bool)
    for row, key in enumerate(item_ids.tolist() + others):
        vec = item_content.get(key)
        if vec is not None:
            content[row], known[row] = vec, True
    return {"content_ids": np.concatenate([item_ids.astype(object), np.array(others, dtype=object)]),
            "content": content, "content_known": known}


def user_inputs(spark, lake: Lake, settings: Settings, run_date: dt.date, active):
    """One row per active user (USER_INPUTS): whether the user has profile text, recent events, any
    interaction up to run_date; the top scenes, the pooled history (latest distinct items), the newest
    events' active items (for the reasons), the window's distinct items (for the content vector), the
    consumed active items and the profile's encoder vector. Three sides joined by user: the active users,
    one aggregation of their interactions (features.user_history_spark) and the profile vectors;
    ``active``: a DataFrame of the active item ids."""
    from pyspark.sql import functions as F

    users = lake.read_spark(spark, "users").filter(
        (F.col("last_seen") >= F.lit(window_start(settings, run_date))) & (F.col("first_seen") <= F.lit(run_date))) \
        .select("user_id", (F.coalesce(F.col("content_text"), F.lit("")) != "").alias("has_profile"))
    history = user_history_spark(spark, lake, settings, run_date, active).withColumn("has_history", F.lit(True))
    joined = users.join(history, "user_id", "left").join(profiles_spark(spark, lake, settings), "user_id", "left")
    return joined.select(
        "user_id", "has_profile", F.coalesce("n_recent", F.lit(0)).alias("n_recent"),
        F.coalesce("has_history", F.lit(False)).alias("has_history"), *USER_INPUTS[4:])


def segment_column(inputs):
    """The user_segment of a user_inputs row: warm (more than 5 recent events), cold (a profile, recent
    events or only older history), new (none of them)."""
    from pyspark.sql import functions as F

    known = F.col("has_profile") | (F.col("n_recent") > 0) | F.col("has_history")
    return F.when(F.col("n_recent") > COLD_USER_MAX_EVENTS, "warm").when(known, "cold").otherwise("new")


@dataclass
class ItemState:
    """What every partition needs of the items (broadcast once): the active items (sorted) with their
    new flag, reason text, model vectors (plus the pop column; only the ``columns`` of them that are not
    zero for every item, :func:`scored_columns`) and biases, the fresh ones' positions,
    the encoder vectors of every item (pooled into user content; laid out by :func:`content_rows`) and
    the scene popularity."""
    item_ids: np.ndarray
    is_new: np.ndarray
    liked: np.ndarray
    vectors: np.ndarray
    columns: np.ndarray  # of the user vectors (plus the boost column) that meet ``vectors``
    bias: np.ndarray
    fresh_positions: np.ndarray
    content_ids: np.ndarray
    content: np.ndarray
    content_known: np.ndarray
    popular: pd.DataFrame


@dataclass
class ScoreJob:
    """The mapInArrow function of the score stage: user_inputs batches in, recommendation rows out."""
    settings: Settings
    run_date: dt.date
    k: int
    version: str
    checkpoint_uri: str
    checksum: str
    env: dict
    items: Broadcast  # of ItemState
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # one per run: the workers' cache key

    def partition(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from coldstart import storage as st

        st.adopt(self.env)
        worker = _worker(self)
        for batch in batches:
            if batch.num_rows:
                yield from score_users(worker, self, batch.to_pandas())


_WORKERS: dict = {}  # per Python worker process: the last job's model and item matrices


@dataclass
class Worker:
    ckpt: Checkpoint
    state: ItemState
    item_index: dict
    item_content: dict
    content: object  # torch (items, content dim) of the active items, for the reasons
    matrix: ItemMatrix
    fresh_matrix: ItemMatrix | None


def _worker(job: ScoreJob) -> Worker:
    """The checkpoint and item matrices of ``job``, built once per Python worker process (reused by its
    later tasks: spark.python.worker.reuse)."""
    import torch

    from coldstart.model import Checkpoint
    from coldstart.spark import worker_threads

    key = job.token
    if key not in _WORKERS:
        _WORKERS.clear()
        torch.set_num_threads(worker_threads(job.settings))
        state = job.items.value
        item_content = {state.content_ids[r]: state.content[r] for r in np.flatnonzero(state.content_known)}  # views
        n_active, dim = len(state.item_ids), state.content.shape[1]
        content = torch.from_numpy(state.content[:n_active] if len(state.content) else np.zeros((n_active, dim), np.float32))
        fresh = state.fresh_positions
        prefilter = prefilter_setting(job.settings.score_prefilter)
        fresh_matrix = ItemMatrix(state.vectors[fresh], state.bias[fresh], prefilter=prefilter) \
            if job.settings.new_list_size and len(fresh) else None
        _WORKERS[key] = Worker(
            ckpt=Checkpoint.load(job.checkpoint_uri, expected_checksum=job.checksum), state=state,
            item_index={i: n for n, i in enumerate(state.item_ids)}, item_content=item_content, content=content,
            matrix=ItemMatrix(state.vectors, state.bias, device=resolve_device(job.settings.device), prefilter=prefilter),
            fresh_matrix=fresh_matrix)
    return _WORKERS[key]


def _positions(lists, item_index: dict) -> list[np.ndarray]:
    """Each list of item ids (None: empty) as positions in ``item_index``, unknown ids dropped, order kept."""
    out = []
    for values in lists:
        codes = idmap.positions(values, item_index) if values is not None and len(values) else NOTHING
        out.append(codes[codes >= 0])
    return out


def score_users(worker: Worker, job: ScoreJob, users: pd.DataFrame) -> Iterator[pa.RecordBatch]:
    """Recommendation batches of a frame of user_inputs rows (with their segment_column): the model's lists for the users with
    history or a profile, the popular-and-fresh list for the others, each with its 'new for you' list."""
    from coldstart.model import user_vectors, vector_width

    settings, state = job.settings, worker.state
    scenes = [list(s) if s is not None and len(s) else ["default"] for s in users["scenes"]]
    pairs = users.loc[users.index.repeat([len(s) for s in scenes]), ["user_id", "segment", "has_profile"]]
    pairs = pairs.assign(scene=[s for row in scenes for s in row]).reset_index(drop=True)
    modelled = users[users["segment"] != "new"]
    window = modelled["window_items"]
    profiles = {u: np.asarray(p, np.float32) for u, p in zip(modelled["user_id"], modelled["profile"]) if p is not None}
    u_content = pool_user_content(np.repeat(modelled["user_id"].to_numpy(), [0 if w is None else len(w) for w in window]),
                                  np.concatenate([w for w in window if w is not None] or [np.empty(0, object)]),
                                  worker.item_content, profiles)
    latest = {u: h for u, h in zip(modelled["user_id"], modelled["latest"]) if h is not None and len(h)}
    recent = dict(zip(users["user_id"], _positions(users["recent"], worker.item_index)))
    consumed = dict(zip(users["user_id"], (np.sort(p) for p in _positions(users["consumed"], worker.item_index))))
    model_rows = pairs[pairs["segment"] != "new"].reset_index(drop=True)
    new_rows = pairs[pairs["segment"] == "new"].reset_index(drop=True)
    boost = float(settings.cold_user_popularity_boost)
    modelled_columns = state.columns < vector_width(worker.ckpt)  # False only at the boost, the column after the model's
    new_size = int(settings.new_list_size)
    common = (recent, worker.content, state.liked, state.item_ids, state.is_new, job.version, job.run_date)

    step = settings.score_block_users
    for start in range(0, len(model_rows), step):
        block = model_rows.iloc[start:start + step]
        block_users = block["user_id"].to_numpy()
        hist_users = [u for u in dict.fromkeys(block_users) if u in latest]
        history = pd.DataFrame({"user_id": np.repeat(np.array(hist_users, dtype=object), [len(latest[u]) for u in hist_users]),
                                "item_id": np.concatenate([latest[u] for u in hist_users]) if hist_users else NOTHING.astype(object)})
        # only the columns the item matrix kept: a term the blend switched off is not computed at all
        user_vecs = np.empty((len(block), len(state.columns)), dtype=np.float32)
        user_vecs[:, modelled_columns] = user_vectors(worker.ckpt, block_users, block["scene"].to_numpy(), u_content,
                                                      history, columns=state.columns[modelled_columns])
        cold = block["segment"].to_numpy() == "cold"
        user_vecs[:, ~modelled_columns] = np.where(cold, boost, 0.0).astype(np.float32)[:, None]
        values, positions = top_k_scores(user_vecs, worker.matrix, job.k, [consumed[u] for u in block_users])
        yield _model_batch(block, values, positions, *common)
        if worker.fresh_matrix is not None:  # nobody used a fresh item, so there is nothing to exclude
            fresh = state.fresh_positions
            values, positions = top_k_scores(user_vecs, worker.fresh_matrix, new_size, [NOTHING] * len(block))
            yield _model_batch(block, values, fresh[np.minimum(positions, len(fresh) - 1)], *common, list_name="new")
    if len(new_rows):
        yield _popular_batch(new_rows, state.popular, worker.item_index, state.item_ids, state.is_new, job.k, job.run_date)
        if worker.fresh_matrix is not None:
            yield _prior_new_batch(new_rows, state.bias, state.fresh_positions, state.item_ids, new_size, job.version,
                                   job.run_date)


def serving_state(lake: Lake, items: pd.DataFrame, run_date: dt.date, spark=None) -> tuple[np.ndarray, np.ndarray]:
    """(fresh, pop) of ``items`` (columns item_id, first_interaction) on the day the lists of run_date
    serve (D+1): fresh = no interaction up to D; pop = features.recent_popularity of the counts up to D
    (counted by Spark with a session, else read by the caller's process: the same integers)."""
    fresh = (items["first_interaction"].isna() | (items["first_interaction"] > run_date)).to_numpy()
    serve_day = int(day_numbers([run_date + dt.timedelta(days=1)])[0])
    first = run_date - dt.timedelta(days=POPULARITY_DAYS - 1)
    counts = daily_item_counts_spark(spark, lake, first, run_date) if spark is not None \
        else daily_item_counts(lake, first, run_date)
    return fresh, recent_popularity(counts, items["item_id"].to_numpy(), [serve_day])[0]


REASON_ROWS = 256  # rows per batched similarity product of the reasons (memory: rows x (k + history) x dim)


def _reasons(block, positions: np.ndarray, recent: dict, content, liked: np.ndarray) -> np.ndarray:
    """(n, k) reason per recommended item: the user's recent item whose content is closest to it, in batches
    of REASON_ROWS users (one padded batched product each); a user without recent items gets a fixed text."""
    import torch

    n, k = positions.shape
    reasons = np.empty((n, k), dtype=object)
    users, has_profile = block["user_id"].to_numpy(), block["has_profile"].to_numpy()
    hists = [recent.get(user, NOTHING) for user in users]
    for row, hist in enumerate(hists):
        if not len(hist):
            reasons[row, :] = "matches your profile" if has_profile[row] else "based on your earlier activity"
    with_history = np.flatnonzero([len(h) > 0 for h in hists])
    for start in range(0, len(with_history), REASON_ROWS):
        rows = with_history[start:start + REASON_ROWS]
        width = max(len(hists[r]) for r in rows)
        padded = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=bool)
        for i, r in enumerate(rows):
            padded[i, :len(hists[r])], mask[i, :len(hists[r])] = hists[r], True
        sims = torch.bmm(content[torch.from_numpy(positions[rows])],
                         content[torch.from_numpy(padded)].transpose(1, 2))  # (rows, k, width)
        sims.masked_fill_(~torch.from_numpy(mask).unsqueeze(1), float("-inf"))
        best = np.take_along_axis(padded, sims.argmax(dim=2).numpy(), axis=1)  # (rows, k) item positions
        reasons[rows] = liked[best]
    return reasons


def _model_batch(block, scores, positions, recent, content, liked, item_ids, is_new, version, run_date,
                 list_name: str = "main") -> pa.RecordBatch:
    n, k = positions.shape
    positions = np.where(np.isfinite(scores), positions, 0)  # -inf slots may point into the padding; dropped below
    reasons = _reasons(block, positions, recent, content, liked)
    valid = np.isfinite(scores).reshape(-1)
    flat_positions = positions.reshape(-1)[valid]
    return pa.RecordBatch.from_pydict({
        "run_date": np.full(n * k, run_date)[valid],
        "user_id": np.repeat(block["user_id"].to_numpy(), k)[valid],
        "scene": np.repeat(block["scene"].to_numpy(), k)[valid],
        "list": np.full(valid.sum(), list_name, dtype=object),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n)[valid],
        "item_id": item_ids[flat_positions],
        "score": scores.reshape(-1).astype(np.float64)[valid],
        "model_version": np.full(valid.sum(), version, dtype=object),
        "user_segment": np.repeat(block["segment"].to_numpy(), k)[valid],
        "item_is_new": is_new[flat_positions],
        "reason": reasons.reshape(-1)[valid],
    }, schema=RECOMMENDATIONS.schema)


def popular_and_fresh(ranked: pd.Series, fresh: list[str], k: int, others: Sequence[str] = ()) -> list[str]:
    """Mostly the popular items (``ranked``, best first), with a new item in every FRESH_EVERY-th slot;
    ``others`` (the rest of the catalogue) only close a list that would otherwise be short of k."""
    popular = iter(ranked.index)
    new = (i for i in fresh if i not in ranked.index)
    rest = iter(others)
    out: list[str] = []
    while len(out) < k:
        take = next(new, None) if len(out) % FRESH_EVERY == FRESH_EVERY - 1 else None
        take = take or next(popular, None) or next(new, None) or next(rest, None)
        if take is None:
            break
        out.append(take)
    return out


def _popular_batch(rows, popular, item_index, item_ids, is_new, k, run_date) -> pa.RecordBatch:
    """Lists of the users with neither history nor profile (so nothing consumed to exclude)."""
    out = []
    fresh = [item_ids[i] for i in np.flatnonzero(is_new)]
    for scene, group in rows.groupby("scene"):
        ranked = popular_in_scene(popular, scene)
        ranked = ranked[ranked.index.isin(item_index)]
        others = [i for i, new in zip(item_ids, is_new) if not new and i not in ranked.index]
        listed = popular_and_fresh(ranked, fresh, k, others)
        reasons = [f"popular in {scene}" if i in ranked.index else "new in the catalogue" if is_new[item_index[i]]
                   else "in the catalogue" for i in listed]
        for user in group["user_id"]:
            for rank, (item, reason) in enumerate(zip(listed, reasons), start=1):
                out.append({"run_date": run_date, "user_id": user, "scene": scene, "list": "main", "rank": rank,
                            "item_id": item,
                            "score": float(ranked.get(item, 0.0)), "model_version": "popular", "user_segment": "new",
                            "item_is_new": bool(is_new[item_index[item]]), "reason": reason})
    return pa.RecordBatch.from_pylist(out, schema=RECOMMENDATIONS.schema)


def _prior_new_batch(rows, bias: np.ndarray, fresh_positions: np.ndarray, item_ids, size: int, version: str,
                     run_date) -> pa.RecordBatch:
    """'new' lists of the users with neither history nor profile: the fresh items by the model's item prior."""
    order = fresh_positions[np.argsort(-bias[fresh_positions], kind="stable")[:size]]
    n, m = len(rows), len(order)
    return pa.RecordBatch.from_pydict({
        "run_date": np.full(n * m, run_date), "user_id": np.repeat(rows["user_id"].to_numpy(), m),
        "scene": np.repeat(rows["scene"].to_numpy(), m), "list": np.full(n * m, "new", dtype=object),
        "rank": np.tile(np.arange(1, m + 1, dtype=np.int32), n), "item_id": np.tile(item_ids[order], n),
        "score": np.tile(bias[order].astype(np.float64), n), "model_version": np.full(n * m, version, dtype=object),
        "user_segment": np.full(n * m, "new", dtype=object), "item_is_new": np.ones(n * m, dtype=bool),
        "reason": np.full(n * m, "new in the catalogue", dtype=object),
    }, schema=RECOMMENDATIONS.schema)
