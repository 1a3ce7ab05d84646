"""Baselines evaluated on the same protocol as the model.

Every baseline is fitted on the events of the active window up to the list date D-1 (``active_days``
run dates ending at D-1, the history the model's lists of D-1 could see), ranks only items that are
active on D-1 (new ones too), and excludes what each target user consumed before D, exactly like
the model's lists. Ties (e.g. items a collaborative method knows nothing about) are broken by
recency-weighted popularity, so every list has K items whenever K unconsumed active items exist.

* ``popularity``: events weighted by exponential recency decay (half-life 3 days), one global list;
* ``item_knn``: cosine similarity of items over the user-item co-occurrence (binary, scipy sparse),
  each item keeping its ``ITEM_KNN_NEIGHBOURS`` nearest; a user's score for an item is the sum of
  its similarities to the user's window items;
* ``ease``: EASE (Steck 2019), closed form ``B = I - P / diag(P)`` with ``P = (XᵀX + λI)⁻¹``, on the
  ``EASE_MAX_ITEMS`` most popular items only, because the Gram matrix is dense (items²): 10k items
  are 400 MB in float32 where 50k would be 10 GB; other items score 0 (popularity breaks the tie);
* ``content_knn``: the mean encoder vector of the user's ``CONTENT_HISTORY`` most recent window
  items against every item's encoder vector (cosine): the one baseline that can rank unseen items;
* ``als``: Spark MLlib ALS with implicit feedback (event counts as confidence), rank
  ``ALS_RANK``, ``ALS_ITERATIONS`` iterations: modest by default so a night's evaluation stays
  cheap; fitted in the session Spark passed in, factors scored with the score stage's top-k kernel.
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

ITEM_KNN_NEIGHBOURS = 100
EASE_MAX_ITEMS = 10_000
EASE_L2 = 250.0
CONTENT_HISTORY = 20
ALS_RANK = 16
ALS_ITERATIONS = 5
ALS_REG = 0.1
ALS_ALPHA = 10.0
TIE_BREAK = 1e-6  # popularity's weight in every baseline's score (scores are scaled to at most 1 first)
USER_BLOCK = 512  # target users per dense score block (memory: block x active items floats)

METHODS = ("popularity", "item_knn", "ease", "content_knn", "als")


def _top_unconsumed(ranked: list[str], consumed: set, k: int) -> list[str]:
    out = []
    for item in ranked:
        if item not in consumed:
            out.append(item)
            if len(out) == k:
                break
    return out


def popularity_lists(events: pd.DataFrame, list_date: dt.date, users: list[str], consumed: dict[str, set], k: int,
                     active_items: set) -> dict[str, list[str]]:
    pop = popular_in_scene(popularity(events.assign(scene="all"), list_date), "all")
    ranked = [i for i in pop.index if i in active_items]
    ranked += sorted(active_items - set(ranked))  # items nobody used yet close the list, so K are always there
    window = k + max((len(c) for c in consumed.values()), default=0)
    head = ranked[:window]
    return {u: _top_unconsumed(head, consumed.get(u, set()), k) for u in users}


class FitData:
    """What every baseline is fitted on: window events as a binary user x item matrix over the active items."""

    def __init__(self, events: pd.DataFrame, active_items: list[str], list_date: dt.date):
        self.events = events
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
        pop = popular_in_scene(popularity(events.assign(scene="all"), list_date), "all")
        weights = pop.reindex(self.item_ids).fillna(0.0).to_numpy(np.float64)
        self.tie_break = (TIE_BREAK * weights / weights.max() if weights.max() > 0 else weights).astype(np.float32)

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
                   neighbours: int = ITEM_KNN_NEIGHBOURS) -> dict[str, list[str]]:
    X = data.binary
    norms = np.sqrt(np.asarray(X.sum(axis=0)).ravel())
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32)
    Xn = (X @ sp.diags(inverse)).tocsc()
    m = X.shape[1]
    rows, cols, vals = [], [], []
    for start in range(0, m, 512):  # similarity columns in blocks: memory m x 512, not m x m
        block = (Xn.T @ Xn[:, start:start + 512]).toarray()
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


def ease_lists(data: FitData, users: list[str], consumed: dict[str, set], k: int,
               max_items: int = EASE_MAX_ITEMS, l2: float = EASE_L2) -> dict[str, list[str]]:
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

    return _rank_dense(data, users, consumed, k, block_scores)


def content_knn_lists(data: FitData, users: list[str], consumed: dict[str, set], k: int,
                      item_content: dict[str, np.ndarray], history: int = CONTENT_HISTORY) -> dict[str, list[str]]:
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
    return _rank_factors(data, users, consumed, k, U, C)


def als_lists(spark, data: FitData, users: list[str], consumed: dict[str, set], k: int, seed: int,
              rank: int = ALS_RANK, iterations: int = ALS_ITERATIONS, blocks: int = 2) -> dict[str, list[str]]:
    from pyspark.ml.recommendation import ALS

    coo = data.counts.tocoo()
    if coo.nnz == 0:
        return _rank_factors(data, users, consumed, k, np.zeros((len(users), rank)), np.zeros((len(data.item_ids), rank)))
    ratings = spark.createDataFrame(pd.DataFrame({"user": coo.row.astype(np.int32), "item": coo.col.astype(np.int32),
                                                  "confidence": coo.data.astype(np.float32)}))
    als = ALS(rank=rank, maxIter=iterations, regParam=ALS_REG, alpha=ALS_ALPHA, implicitPrefs=True, userCol="user",
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


def baseline_lists(spark, lake: Lake, settings: Settings, list_date: dt.date, users: list[str],
                   consumed: dict[str, set], k: int) -> dict[str, dict[str, list[str]]]:
    """Every baseline's list per target user: {method: {user: [item, ...]}} (see module doc)."""
    events = interactions(lake, list_date - dt.timedelta(days=settings.active_days - 1), list_date,
                          ["user_id", "item_id", "scene", "event_ts"])
    items = lake.read_pandas("items", columns=["item_id", "active", "first_seen"])
    active = set(items.loc[items["active"] & (items["first_seen"] <= list_date), "item_id"])
    users = list(users)
    data = FitData(events, sorted(active), list_date)
    if spark is None:
        from coldstart.spark import get_session
        spark = get_session(settings)
    fits: dict[str, Callable[[], dict[str, list[str]]]] = {
        "popularity": lambda: popularity_lists(events, list_date, users, consumed, k, active),
        "item_knn": lambda: item_knn_lists(data, users, consumed, k),
        "ease": lambda: ease_lists(data, users, consumed, k),
        "content_knn": lambda: content_knn_lists(data, users, consumed, k, content_vectors(lake, settings, "item")),
        "als": lambda: als_lists(spark, data, users, consumed, k, settings.seed,
                                 blocks=settings.spark_shuffle_partitions),
    }
    out, seconds = {}, {}
    for method, fit in fits.items():
        started = time.perf_counter()
        out[method] = fit()
        seconds[method] = round(time.perf_counter() - started, 2)
    log.info("baselines for lists of %s: %d target users, %d window events, %d active items; seconds %s", list_date,
             len(users), len(events), len(active), seconds)
    return out
