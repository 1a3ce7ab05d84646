"""Baselines evaluated on the same protocol as the model, each with its parameters (``params``).

Every baseline is fitted on the events of the active window up to the list date D-1 (``active_days``
run dates ending at D-1, the history the model's lists of D-1 could see), ranks only the items that
are active with a first catalog row dated D-1 or earlier (new ones too), and excludes what each
target user consumed before D, exactly like the model's lists. Ties (e.g. items a collaborative
method knows nothing about) are broken by a random key seeded by the setting ``seed`` and the list
date, never by id, so every list has K items whenever K unconsumed candidates exist.

* ``popularity``: events weighted by exponential recency decay (``half_life`` days; ``inf``: plain
  counts), one global list;
* ``item_knn``: cosine similarity of items over the binary user-item matrix with ``shrinkage``
  (co-counts / (sqrt(n_i n_j) + shrinkage)), each item keeping its ``neighbours`` nearest; a user's
  score for an item is the sum of its similarities to the user's window items;
* ``ease``: EASE (Steck 2019), closed form ``B = I - P / diag(P)`` with ``P = (XᵀX + λI)⁻¹``
  (``l2`` = λ), on the ``EASE_MAX_ITEMS`` most popular items only, because the Gram matrix is dense
  (items²): 10k items are 400 MB in float32 where 50k would be 10 GB; other items score 0;
* ``content_knn``: the mean encoder vector of the user's ``history`` most recent window items
  against every item's encoder vector (cosine): the one baseline that can rank unseen items;
* ``als``: Spark MLlib ALS with implicit feedback (event counts as confidence; ``rank``, ``reg``,
  ``alpha``, ``ALS_ITERATIONS`` iterations), fitted in the session Spark passed in, factors scored
  with the score stage's top-k kernel;
* ``hybrid``: EASE (``l2``) ranks the items with window history, content-kNN (``history``) ranks the
  cold candidates (no window event), and the two rankings are fused by weighted reciprocal rank:
  ``1 / (HYBRID_RANK_OFFSET + rank)`` for an item with history, ``cold_weight`` times that for a
  cold one.

``DEFAULT_PARAMS`` are what the evaluate stage uses; ``GRIDS`` are what
:func:`coldstart.evaluate.tune_baselines` searches on a tuning day (bench/quality_bench.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from coldstart import idmap
from coldstart.config import Settings
from coldstart.features import content_vectors, interactions, popularity
from coldstart.lake import Lake
from coldstart.ranking import TOPK_GROUP, ItemMatrix, popular_in_scene, select_top_k, top_k_scores

log = logging.getLogger("coldstart.baselines")

EASE_MAX_ITEMS = 10_000  # dense Gram matrix: 10k items are 400 MB in float32 (module doc)
ALS_ITERATIONS = 10  # Spark ALS's own default (maxIter); alpha, reg and rank are the tuned ones
HYBRID_RANK_OFFSET = 10  # reciprocal-rank fusion: 1 / (offset + rank); larger flattens the head
TIE_BREAK = 1e-6  # the random key's weight in every baseline's score (scores are scaled to at most 1 first)
USER_BLOCK = 512  # target users per dense score block (memory: block x active items floats)

DEFAULT_PARAMS: dict[str, dict] = {
    "popularity": {"half_life": 3.0},
    "item_knn": {"neighbours": 100, "shrinkage": 0.0},
    "ease": {"l2": 250.0},
    "content_knn": {"history": 20},
    "als": {"rank": 16, "reg": 0.1, "alpha": 10.0},
    "hybrid": {"l2": 250.0, "history": 20, "cold_weight": 0.5},
}

# searched on the tuning day; ALS by coordinates (alpha, then reg, then rank): each fit is a Spark job
GRIDS: dict[str, dict[str, tuple]] = {
    "popularity": {"half_life": (float("inf"), 0.5, 1.0, 2.0, 4.0, 8.0)},
    "item_knn": {"neighbours": (20, 50, 100, 200, 1000), "shrinkage": (0.0, 10.0, 50.0)},
    "ease": {"l2": (50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0)},
    "content_knn": {"history": (1, 3, 10, 30, 100)},
    "als": {"alpha": (1.0, 10.0, 40.0), "reg": (0.01, 0.1, 1.0), "rank": (16, 32, 64)},
    "hybrid": {"cold_weight": (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)},
}


def _top_unconsumed(ranked: list[str], consumed: set, k: int) -> list[str]:
    out = []
    for item in ranked:
        if item not in consumed:
            out.append(item)
            if len(out) == k:
                break
    return out


def popularity_lists(data: "FitData", users: list[str], consumed: dict[str, set], k: int,
                     half_life: float = DEFAULT_PARAMS["popularity"]["half_life"]) -> dict[str, list[str]]:
    weights = data.popularity(half_life)
    return _rank_dense(data, users, consumed, k, lambda block: np.broadcast_to(weights, (len(block), len(weights))))


class FitData:
    """What every baseline is fitted on: window events as a binary user x item matrix over the active items."""

    def __init__(self, events: pd.DataFrame, active_items: list[str], list_date: dt.date, seed: int = 0):
        self.events = events
        self.list_date = list_date
        self.item_ids = np.array(sorted(active_items), dtype=object)
        self.item_index = {item: n for n, item in enumerate(self.item_ids)}
        known = events[events["item_id"].isin(self.item_index)]
        self.user_ids = np.array(sorted(known["user_id"].unique()), dtype=object)
        self.user_index = {user: n for n, user in enumerate(self.user_ids)}
        counts = known.groupby(["user_id", "item_id"], observed=True).size().reset_index(name="n")
        rows = idmap.positions(idmap.id_column(counts["user_id"]), self.user_index)
        cols = idmap.positions(idmap.id_column(counts["item_id"]), self.item_index)
        shape = (len(self.user_ids), len(self.item_ids))
        self.counts = sp.csr_matrix((counts["n"].to_numpy(np.float32), (rows, cols)), shape=shape)
        self.binary = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)
        key = np.random.default_rng([seed, list_date.toordinal()]).random(len(self.item_ids))
        self.tie_break = (TIE_BREAK * key).astype(np.float32)  # a seeded random key: ties never go by id

    def popularity(self, half_life: float) -> np.ndarray:
        """Per active item: window events weighted by 0.5 ** (age in days / half_life) (inf: counts)."""
        if self.events.empty:
            return np.zeros(len(self.item_ids), np.float32)
        pop = popular_in_scene(popularity(self.events.assign(scene="all"), self.list_date, half_life), "all")
        return pop.reindex(self.item_ids).fillna(0.0).to_numpy(np.float32)

    @property
    def has_history(self) -> np.ndarray:
        """Per active item: whether it has a window event."""
        return np.asarray(self.binary.sum(axis=0)).ravel() > 0

    def user_rows(self, users: list[str]) -> sp.csr_matrix:
        """Binary rows of the target users (empty for users without window events)."""
        index = np.array([self.user_index.get(u, -1) for u in users], dtype=np.int64)
        if len(self.user_ids) == 0 or len(users) == 0:
            return sp.csr_matrix((len(users), len(self.item_ids)), dtype=np.float32)
        present = sp.diags((index >= 0).astype(np.float32))
        return (present @ self.binary[np.maximum(index, 0)]).tocsr()

    def consumed_positions(self, users: list[str], consumed: dict[str, set]) -> list[np.ndarray]:
        return [np.array(sorted(self.item_index[i] for i in consumed.get(u, ()) if i in self.item_index), dtype=np.int64)
                for u in users]

    def to_lists(self, positions: np.ndarray, values: np.ndarray, users: list[str]) -> dict[str, list[str]]:
        return {u: list(self.item_ids[positions[r][np.isfinite(values[r])]]) for r, u in enumerate(users)}


def _rank_dense(data: FitData, users: list[str], consumed: dict[str, set], k: int,
                block_scores: Callable[[list[str]], np.ndarray]) -> dict[str, list[str]]:
    """Lists from dense score blocks (users x active items), with the same exclusion and tie-break."""
    import torch

    m = len(data.item_ids)
    k = min(k, m)
    width = -(-m // TOPK_GROUP) * TOPK_GROUP
    out: dict[str, list[str]] = {}
    for start in range(0, len(users), USER_BLOCK):
        block = users[start:start + USER_BLOCK]
        raw = np.asarray(block_scores(block), dtype=np.float32)
        scale = np.abs(raw).max(axis=1, keepdims=True)
        scores = torch.full((len(block), width), float("-inf"))
        scores[:, :m] = torch.from_numpy(np.divide(raw, scale, out=np.zeros_like(raw), where=scale > 0) + data.tie_break)
        for row, cols in enumerate(data.consumed_positions(block, consumed)):
            scores[row, torch.from_numpy(cols)] = float("-inf")
        values, positions = select_top_k(scores, k)
        out.update(data.to_lists(positions.numpy(), values.numpy(), block))
    return out


def _rank_factors(data: FitData, users: list[str], consumed: dict[str, set], k: int, user_vecs: np.ndarray,
                  item_vecs: np.ndarray) -> dict[str, list[str]]:
    """Lists from factor vectors, ranked by the score stage's kernel; popularity breaks ties."""
    scale = float(np.abs(user_vecs).sum(axis=1).max() * np.abs(item_vecs).max()) if user_vecs.size else 0.0
    if scale > 0:
        user_vecs = user_vecs / scale  # scores now at most 1, so the tie-break stays a tie-break
    values, positions = top_k_scores(user_vecs.astype(np.float32), ItemMatrix(item_vecs.astype(np.float32),
                                     data.tie_break), k, data.consumed_positions(users, consumed))
    return data.to_lists(positions, values, users)


def item_knn_lists(data: FitData, users: list[str], consumed: dict[str, set], k: int,
                   neighbours: int = DEFAULT_PARAMS["item_knn"]["neighbours"],
                   shrinkage: float = DEFAULT_PARAMS["item_knn"]["shrinkage"]) -> dict[str, list[str]]:
    X = data.binary.tocsc()
    norms = np.sqrt(np.asarray(X.sum(axis=0)).ravel()).astype(np.float32)
    m = X.shape[1]
    rows, cols, vals = [], [], []
    for start in range(0, m, 512):  # similarity columns in blocks: memory m x 512, not m x m
        block = (X.T @ X[:, start:start + 512]).toarray()
        block /= np.outer(norms, norms[start:start + 512]) + shrinkage + 1e-12
        block[np.arange(start, start + block.shape[1]), np.arange(block.shape[1])] = 0.0
        keep = min(neighbours, m)
        top = np.argpartition(-block, keep - 1, axis=0)[:keep] if keep < m else np.tile(np.arange(m)[:, None], block.shape[1])
        col_idx = np.broadcast_to(np.arange(block.shape[1]), top.shape)
        sims = block[top, col_idx]
        nz = sims > 0
        rows.append(top[nz])
        cols.append(col_idx[nz] + start)
        vals.append(sims[nz])
    similarity = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(m, m))
    return _rank_dense(data, users, consumed, k, lambda block: (data.user_rows(block) @ similarity).toarray())


def _ease_scorer(data: FitData, max_items: int, l2: float) -> Callable[[list[str]], np.ndarray]:
    """block of users -> EASE scores over every active item (0 for items outside the fitted set)."""
    import torch

    counts = np.asarray(data.binary.sum(axis=0)).ravel()
    seen = np.flatnonzero(counts > 0)
    kept = seen[np.argsort(-counts[seen], kind="stable")[:max_items]]
    X = data.binary[:, kept]
    # float32 and in place: at EASE_MAX_ITEMS the Gram matrix, its inverse and B are 400 MB each, one at a time
    gram = torch.from_numpy((X.T @ X).toarray().astype(np.float32))
    gram.diagonal().add_(l2)
    B = torch.cholesky_inverse(torch.linalg.cholesky(gram))  # P = G^-1 (G is symmetric positive definite)
    del gram
    B.div_(-B.diagonal().clone().unsqueeze(0))  # B_ij = -P_ij / P_jj
    B.diagonal().zero_()
    weights = B.numpy()

    def block_scores(block: list[str]) -> np.ndarray:
        out = np.zeros((len(block), len(data.item_ids)), dtype=np.float32)
        out[:, kept] = data.user_rows(block)[:, kept] @ weights
        return out

    return block_scores


def ease_lists(data: FitData, users: list[str], consumed: dict[str, set], k: int,
               max_items: int = EASE_MAX_ITEMS, l2: float = DEFAULT_PARAMS["ease"]["l2"]) -> dict[str, list[str]]:
    return _rank_dense(data, users, consumed, k, _ease_scorer(data, max_items, l2))


def _content_users(data: FitData, users: list[str], item_content: dict[str, np.ndarray],
                   history: int) -> tuple[np.ndarray, np.ndarray]:
    """(user vectors: the normalised mean content of each user's ``history`` latest window items, item matrix)."""
    if not item_content:
        raise ValueError("content_knn: no item embeddings for the configured encoder (run embed first)")
    dim = len(next(iter(item_content.values())))
    zero = np.zeros(dim, np.float32)
    C = np.stack([item_content.get(i, zero) for i in data.item_ids]).astype(np.float32)
    recent = (data.events.sort_values("event_ts", ascending=False).drop_duplicates(["user_id", "item_id"])
              .groupby("user_id", observed=True)["item_id"].agg(lambda s: list(s.iloc[:history])).to_dict())
    U = np.zeros((len(users), dim), np.float32)
    for row, user in enumerate(users):
        vecs = [item_content[i] for i in recent.get(user, []) if i in item_content]
        if vecs:
            mean = np.mean(vecs, axis=0)
            U[row] = mean / (np.linalg.norm(mean) or 1.0)
    return U, C


def content_knn_lists(data: FitData, users: list[str], consumed: dict[str, set], k: int,
                      item_content: dict[str, np.ndarray],
                      history: int = DEFAULT_PARAMS["content_knn"]["history"]) -> dict[str, list[str]]:
    U, C = _content_users(data, users, item_content, history)
    return _rank_factors(data, users, consumed, k, U, C)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Per row, the 0-based rank of every column by descending score."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :].repeat(len(scores), 0), axis=1)
    return ranks


def hybrid_lists(data: FitData, users: list[str], consumed: dict[str, set], k: int,
                 item_content: dict[str, np.ndarray], l2: float = DEFAULT_PARAMS["hybrid"]["l2"],
                 history: int = DEFAULT_PARAMS["hybrid"]["history"],
                 cold_weight: float = DEFAULT_PARAMS["hybrid"]["cold_weight"],
                 max_items: int = EASE_MAX_ITEMS) -> dict[str, list[str]]:
    ease = _ease_scorer(data, max_items, l2)
    U, C = _content_users(data, users, item_content, history)
    row_of = {u: n for n, u in enumerate(users)}
    warm = data.has_history

    def block_scores(block: list[str]) -> np.ndarray:
        e = ease(block) + data.tie_break
        c = U[[row_of[u] for u in block]] @ C.T + data.tie_break
        for row, cols in enumerate(data.consumed_positions(block, consumed)):
            e[row, cols] = c[row, cols] = -np.inf  # ranks among the candidates only
        e[:, ~warm], c[:, warm] = -np.inf, -np.inf
        fused = np.where(warm, 1.0 / (HYBRID_RANK_OFFSET + _ranks(e)), cold_weight / (HYBRID_RANK_OFFSET + _ranks(c)))
        return fused.astype(np.float32)

    return _rank_dense(data, users, consumed, k, block_scores)


def als_lists(spark, data: FitData, users: list[str], consumed: dict[str, set], k: int, seed: int,
              rank: int = DEFAULT_PARAMS["als"]["rank"], reg: float = DEFAULT_PARAMS["als"]["reg"],
              alpha: float = DEFAULT_PARAMS["als"]["alpha"], iterations: int = ALS_ITERATIONS,
              blocks: int = 2) -> dict[str, list[str]]:
    from pyspark.ml.recommendation import ALS

    coo = data.counts.tocoo()
    if coo.nnz == 0:
        return _rank_factors(data, users, consumed, k, np.zeros((len(users), rank)), np.zeros((len(data.item_ids), rank)))
    ratings = spark.createDataFrame(pd.DataFrame({"user": coo.row.astype(np.int32), "item": coo.col.astype(np.int32),
                                                  "confidence": coo.data.astype(np.float32)}))
    als = ALS(rank=rank, maxIter=iterations, regParam=reg, alpha=alpha, implicitPrefs=True, userCol="user",
              itemCol="item", ratingCol="confidence", coldStartStrategy="drop", seed=seed,
              numUserBlocks=blocks, numItemBlocks=blocks)  # ALS's default 10 blocks: many tiny tasks locally
    fitted = als.fit(ratings)

    def factors(frame, n: int) -> np.ndarray:
        table = frame.toPandas()  # one row per user/item of the window: small next to the events
        out = np.zeros((n, rank), np.float32)
        if len(table):
            out[table["id"].to_numpy()] = np.stack(table["features"].to_numpy())
        return out

    user_f, item_f = factors(fitted.userFactors, len(data.user_ids)), factors(fitted.itemFactors, len(data.item_ids))
    index = np.array([data.user_index.get(u, -1) for u in users])
    U = np.where((index >= 0)[:, None], user_f[np.maximum(index, 0)], 0.0) if len(users) else np.zeros((0, rank))
    return _rank_factors(data, users, consumed, k, U, item_f)


def fit_data(lake: Lake, settings: Settings, list_date: dt.date) -> FitData:
    """The window events up to ``list_date`` over the candidates of the lists of ``list_date``: active items
    whose first catalog row is dated ``list_date`` or earlier."""
    events = interactions(lake, list_date - dt.timedelta(days=settings.active_days - 1), list_date,
                          ["user_id", "item_id", "scene", "event_ts"])
    items = lake.read_pandas("items", columns=["item_id", "active", "first_seen"])
    active = set(items.loc[items["active"] & (items["first_seen"] <= list_date), "item_id"])
    return FitData(events, sorted(active), list_date, settings.seed)


def method_lists(spark, lake: Lake, settings: Settings, data: FitData, method: str, users: list[str],
                 consumed: dict[str, set], k: int, params: dict | None = None,
                 item_content: dict[str, np.ndarray] | None = None) -> dict[str, list[str]]:
    """One baseline's lists with ``params`` (DEFAULT_PARAMS[method] for the missing ones)."""
    p = {**DEFAULT_PARAMS[method], **(params or {})}
    content = item_content if item_content is not None or method not in ("content_knn", "hybrid") \
        else content_vectors(lake, settings, "item")
    if method == "popularity":
        return popularity_lists(data, users, consumed, k, **p)
    if method == "item_knn":
        return item_knn_lists(data, users, consumed, k, **p)
    if method == "ease":
        return ease_lists(data, users, consumed, k, **p)
    if method == "content_knn":
        return content_knn_lists(data, users, consumed, k, content or {}, **p)
    if method == "hybrid":
        return hybrid_lists(data, users, consumed, k, content or {}, **p)
    if method == "als":
        if spark is None:
            from coldstart.spark import get_session
            spark = get_session(settings)
        return als_lists(spark, data, users, consumed, k, settings.seed, blocks=settings.spark_shuffle_partitions, **p)
    raise ValueError(f"unknown baseline {method!r}; known: {', '.join(DEFAULT_PARAMS)}")


def baseline_lists(spark, lake: Lake, settings: Settings, list_date: dt.date, users: list[str],
                   consumed: dict[str, set], k: int,
                   params: dict[str, dict] | None = None) -> dict[str, dict[str, list[str]]]:
    """Every baseline's list per target user: {method: {user: [item, ...]}} (see module doc), each with
    ``params[method]`` over DEFAULT_PARAMS."""
    data = fit_data(lake, settings, list_date)
    users = list(users)
    item_content = content_vectors(lake, settings, "item")
    out, seconds = {}, {}
    for method in DEFAULT_PARAMS:
        started = time.perf_counter()
        out[method] = method_lists(spark, lake, settings, data, method, users, consumed, k,
                                   (params or {}).get(method), item_content)
        seconds[method] = round(time.perf_counter() - started, 2)
    log.info("baselines for lists of %s: %d target users, %d window events, %d active items; seconds %s", list_date,
             len(users), len(data.events), len(data.item_ids), seconds)
    return out
