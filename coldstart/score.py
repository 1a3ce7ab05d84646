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
* scoring runs in blocks of ``score_block_users`` (user, scene) lists: the block's user vectors, a
  top-k kernel (:func:`coldstart.ranking.top_k_scores`) and the block's Arrow batch, streamed into one Delta commit,
  so memory is bounded by the block, not by the number of users;
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
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from coldstart import idmap
from coldstart.catalog import RECOMMENDATIONS
from coldstart.config import Settings
from coldstart.devices import resolve_device
from coldstart.features import (POPULARITY_DAYS, content_vectors, daily_item_counts, day_numbers, interactions,
                                latest_items, load_history, newest_first, popularity, recent_popularity, user_content,
                                window_start)
from coldstart.lake import Lake
from coldstart.ranking import ItemMatrix, popular_in_scene, top_k_scores
from coldstart.registry import registry_row

log = logging.getLogger("coldstart.score")

FRESH_EVERY = 5  # popular-and-fresh fallback: every fifth slot goes to a new item
REASON_HISTORY = 20  # most recent consumed items considered for "similar to ..."
NOTHING = np.empty(0, dtype=np.int64)


class ModelMissingError(RuntimeError):
    pass


def segments(users: pd.DataFrame, recent_counts: pd.Series, with_history: set) -> pd.Series:
    """new (no history, no profile), cold (a profile, 1-5 recent events, or only older history), warm (more)."""
    n = users["user_id"].map(recent_counts).fillna(0).astype(int)
    known = (users["content_text"].fillna("") != "") | (n > 0) | users["user_id"].isin(with_history)
    return pd.Series(np.where(n > 5, "warm", np.where(known, "cold", "new")), index=users.index)


# --------------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------------
def consumed_pairs(lake: Lake, run_date: dt.date) -> pd.DataFrame:
    """Distinct (user_id, item_id) of every accepted interaction up to run_date (categoricals)."""
    return interactions(lake, dt.date.min, run_date, ["user_id", "item_id"]).drop_duplicates()


def consumed_positions(pairs: pd.DataFrame, item_index: dict) -> dict[str, np.ndarray]:
    """user_id -> sorted positions (in ``item_index``) of the active items the user consumed."""
    codes = idmap.positions(idmap.id_column(pairs["item_id"]), item_index)
    pairs, codes = pairs[codes >= 0], codes[codes >= 0]
    return {user: np.sort(codes[rows]) for user, rows in pairs.groupby("user_id", observed=True).indices.items()}


def score(spark, settings: Settings, run_date: dt.date, top_k: int | None = None) -> dict:
    import torch

    from coldstart.model import Checkpoint, item_vectors, user_vectors

    k = int(top_k or settings.top_k)
    if k <= 0:
        raise ValueError(f"score {run_date}: top_k must be positive, got {k}")
    lake = Lake.from_settings(settings)
    reg = registry_row(lake, run_date)
    if reg is None:
        raise ModelMissingError(f"score {run_date}: no model in model_registry for {run_date} (run train first)")
    ckpt = Checkpoint.load(reg["checkpoint_uri"], expected_checksum=reg["checksum"])  # the model as registered
    version = reg["model_version"]

    items = lake.read_pandas("items", columns=["item_id", "title", "active", "first_interaction", "first_seen"])
    items = items[items["active"] & (items["first_seen"] <= run_date)].sort_values("item_id").reset_index(drop=True)
    item_ids = items["item_id"].to_numpy()
    item_index = {i: n for n, i in enumerate(item_ids)}
    is_new = (items["first_interaction"].isna() | (items["first_interaction"] >= run_date)).to_numpy()
    titles = items["title"].where(items["title"].fillna("") != "", items["item_id"]).to_numpy()

    users = lake.read_pandas("users", columns=["user_id", "content_text", "first_seen", "last_seen"])
    users = users[(users["last_seen"] >= window_start(settings, run_date)) & (users["first_seen"] <= run_date)]
    users = users.sort_values("user_id").reset_index(drop=True)
    history = load_history(lake, settings, run_date)
    consumed = consumed_pairs(lake, run_date)
    users["segment"] = segments(users, history.user_counts(), set(consumed["user_id"].unique()))
    users["has_profile"] = users["content_text"].fillna("") != ""
    scenes = history.top_scenes(settings.scenes_per_user)
    pairs = users[["user_id", "segment", "has_profile"]].merge(scenes, on="user_id", how="left")
    pairs["scene"] = pairs["scene"].fillna("default")
    log.info("score %s: %d active users (%s), %d (user, scene) lists over %d active items (%d new), model %s",
             run_date, len(users), users["segment"].value_counts().to_dict(), len(pairs), len(items), int(is_new.sum()),
             version)

    item_content = content_vectors(lake, settings, "item")
    profiles = content_vectors(lake, settings, "user")
    window_pairs = history.events[["user_id", "item_id"]].drop_duplicates()
    u_content = user_content(window_pairs, item_content, profiles)
    latest = latest_items(history.events)
    latest_rows = latest.groupby("user_id", observed=True).indices  # user -> row positions, so a block takes only its users
    fresh, pop = serving_state(lake, items, run_date)
    vectors, bias = item_vectors(ckpt, item_ids, item_content, fresh=fresh, pop=pop)
    # last column: pop, for the boost; the products run on the device setting's device
    matrix = ItemMatrix(np.hstack([vectors, pop.astype(np.float32)[:, None]]), bias, device=resolve_device(settings.device))
    boost = float(settings.cold_user_popularity_boost)
    dim = next(iter(item_content.values())).shape[0] if item_content else 1
    content = torch.from_numpy(np.stack([item_content.get(i, np.zeros(dim, np.float32)) for i in item_ids])
                               if len(item_ids) else np.zeros((0, dim), np.float32))
    recent = recent_positions(history.events, item_index)
    liked = np.array([f"similar to {t} you liked" for t in titles], dtype=object)  # reason per item, made once
    popular = popularity(history.events, run_date)
    consumed_by_user = consumed_positions(consumed, item_index)
    model_rows = pairs[pairs["segment"] != "new"].reset_index(drop=True)
    new_rows = pairs[pairs["segment"] == "new"].reset_index(drop=True)

    new_size = int(settings.new_list_size)
    fresh_positions = np.flatnonzero(fresh)
    fresh_matrix = ItemMatrix(np.hstack([vectors, pop.astype(np.float32)[:, None]])[fresh_positions],
                              bias[fresh_positions]) if new_size and len(fresh_positions) else None

    def blocks() -> Iterator[pa.RecordBatch]:
        step = settings.score_block_users
        for start in range(0, len(model_rows), step):
            block = model_rows.iloc[start:start + step]
            block_users = block["user_id"].to_numpy()
            user_vecs = user_vectors(ckpt, block_users, block["scene"].to_numpy(), u_content,
                                     latest.take(_rows_of(latest_rows, block_users)))
            user_boost = np.where(block["segment"].to_numpy() == "cold", boost, 0.0).astype(np.float32)
            user_vecs = np.hstack([user_vecs, user_boost[:, None]])
            block_consumed = [consumed_by_user.get(u, NOTHING) for u in block["user_id"]]
            values, positions = top_k_scores(user_vecs, matrix, k, block_consumed)
            yield _model_batch(block, values, positions, recent, content, liked, item_ids, is_new, version, run_date)
            if fresh_matrix is not None:  # nobody used a fresh item, so there is nothing to exclude
                values, positions = top_k_scores(user_vecs, fresh_matrix, new_size, [NOTHING] * len(block))
                yield _model_batch(block, values, fresh_positions[np.minimum(positions, len(fresh_positions) - 1)], recent, content, liked, item_ids, is_new,
                                   version, run_date, list_name="new")
        if len(new_rows):
            yield _popular_batch(new_rows, popular, item_index, item_ids, is_new, k, run_date)
            if fresh_matrix is not None:
                yield _prior_new_batch(new_rows, bias, fresh_positions, item_ids, new_size, version, run_date)

    written = lake.replace_partition_stream("recommendations", blocks(), run_date=run_date)
    log.info("score %s: wrote %d recommendations", run_date, written)
    return {"users": len(users), "lists": len(pairs), "rows": written, "model_version": version}


def serving_state(lake: Lake, items: pd.DataFrame, run_date: dt.date) -> tuple[np.ndarray, np.ndarray]:
    """(fresh, pop) of ``items`` (columns item_id, first_interaction) on the day the lists of run_date
    serve (D+1): fresh = no interaction up to D; pop = features.recent_popularity of the counts up to D."""
    fresh = (items["first_interaction"].isna() | (items["first_interaction"] > run_date)).to_numpy()
    serve_day = int(day_numbers([run_date + dt.timedelta(days=1)])[0])
    counts = daily_item_counts(lake, run_date - dt.timedelta(days=POPULARITY_DAYS - 1), run_date)
    return fresh, recent_popularity(counts, items["item_id"].to_numpy(), [serve_day])[0]


def _rows_of(positions: dict, users) -> np.ndarray:
    parts = [positions[u] for u in dict.fromkeys(users) if u in positions]
    return np.concatenate(parts) if parts else NOTHING


def recent_positions(events: pd.DataFrame, item_index: dict, per_user: int = REASON_HISTORY) -> dict[str, np.ndarray]:
    """user_id -> positions (in ``item_index``) of the user's latest ``per_user`` events' active items, newest first."""
    codes = idmap.positions(idmap.id_column(events["item_id"]), item_index)
    order = newest_first(events)
    order = order[codes[order] >= 0]
    latest = events[["user_id"]].take(order).assign(_position=codes[order]) \
        .groupby("user_id", sort=False, observed=True).head(per_user)
    positions = latest["_position"].to_numpy(np.int64)
    return {user: positions[rows] for user, rows in latest.groupby("user_id", sort=False, observed=True).indices.items()}


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
