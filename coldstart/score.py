"""Score stage: top-K items for every active user, in the user's most frequent recent scene(s).

* candidates: every active item (new ones too), minus what the user already consumed;
* users with history and/or a profile are scored by the model of run date D (a user with a profile
  and no history from the profile alone); a user with neither gets the scene's popular-and-fresh list;
* scoring runs in blocks of ``score_block_users`` users: one matrix product and one top-k per
  block, so memory is bounded by the block, and each block is streamed into the Delta commit;
* every row has a reason: "similar to <title> you liked" (the consumed item whose content is
  closest to the recommended one), "matches your profile", or "popular in <scene>".
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from coldstart.catalog import RECOMMENDATIONS
from coldstart.config import Settings
from coldstart.features import content_vectors, interactions, load_history, user_content, window_start
from coldstart.lake import Lake

log = logging.getLogger("coldstart.score")

POPULARITY_HALF_LIFE_DAYS = 3.0
REASON_HISTORY = 20  # most recent consumed items considered for "similar to ..."


class ModelMissingError(RuntimeError):
    pass


def popularity(events: pd.DataFrame, run_date: dt.date, half_life: float = POPULARITY_HALF_LIFE_DAYS) -> pd.DataFrame:
    """(scene, item_id, score): events weighted by exp-decay of their age in days at the end of run_date."""
    if events.empty:
        return pd.DataFrame(columns=["scene", "item_id", "score"])
    end = pd.Timestamp(run_date + dt.timedelta(days=1), tz="UTC")
    age = (end - pd.to_datetime(events["event_ts"], utc=True)).dt.total_seconds() / 86400.0
    weights = np.power(0.5, age.to_numpy() / half_life)
    frame = pd.DataFrame({"scene": events["scene"].to_numpy(), "item_id": events["item_id"].to_numpy(), "w": weights})
    overall = frame.groupby("item_id")["w"].sum()
    per_scene = frame.groupby(["scene", "item_id"])["w"].sum()
    # A scene's list: its own popularity, with overall popularity as a small prior for unseen items.
    out = per_scene.reset_index().rename(columns={"w": "score"})
    out["score"] += 0.01 * out["item_id"].map(overall)
    return out


def segments(users: pd.DataFrame, counts: pd.Series) -> pd.Series:
    """new (no history, no profile), cold (profile only, or 1-5 recent events), warm (more)."""
    n = users["user_id"].map(counts).fillna(0).astype(int)
    has_profile = users["content_text"].fillna("") != ""
    return pd.Series(np.where(n > 5, "warm", np.where((n > 0) | has_profile, "cold", "new")), index=users.index)


def _consumed(lake: Lake, run_date: dt.date, users: np.ndarray, item_index: dict) -> list[np.ndarray]:
    pairs = interactions(lake, dt.date.min, run_date, ["user_id", "item_id"]).drop_duplicates()
    user_pos = {u: i for i, u in enumerate(users)}
    pairs = pairs[pairs["user_id"].isin(user_pos) & pairs["item_id"].isin(item_index)]
    out = [np.empty(0, dtype=np.int64) for _ in users]
    if not pairs.empty:
        codes_u = pairs["user_id"].map(user_pos).to_numpy()
        codes_i = pairs["item_id"].map(item_index).to_numpy()
        order = np.argsort(codes_u, kind="stable")
        codes_u, codes_i = codes_u[order], codes_i[order]
        bounds = np.flatnonzero(np.r_[True, codes_u[1:] != codes_u[:-1], True])
        for a, b in zip(bounds[:-1], bounds[1:]):
            out[codes_u[a]] = codes_i[a:b]
    return out


def score(spark, settings: Settings, run_date: dt.date, top_k: int | None = None) -> dict:
    import torch

    from coldstart.model import Checkpoint, item_vectors, user_vectors
    from coldstart.train import registry_row

    k = int(top_k or settings.top_k)
    lake = Lake.from_settings(settings)
    reg = registry_row(lake, run_date)
    if reg is None:
        raise ModelMissingError(f"score {run_date}: no model in model_registry for {run_date} (run train first)")
    ckpt = Checkpoint.load(reg["checkpoint_uri"])
    version = reg["model_version"]

    items = lake.read_pandas("items", columns=["item_id", "title", "active", "first_interaction", "first_seen"])
    items = items[items["active"] & (items["first_seen"] <= run_date)].sort_values("item_id").reset_index(drop=True)
    item_ids = items["item_id"].to_numpy()
    item_index = {i: n for n, i in enumerate(item_ids)}
    is_new = (items["first_interaction"].isna() | (items["first_interaction"] >= run_date)).to_numpy()
    titles = items["title"].fillna(items["item_id"]).to_numpy()

    users = lake.read_pandas("users", columns=["user_id", "content_text", "first_seen", "last_seen"])
    users = users[(users["last_seen"] >= window_start(settings, run_date)) & (users["first_seen"] <= run_date)]
    users = users.sort_values("user_id").reset_index(drop=True)
    history = load_history(lake, settings, run_date)
    users["segment"] = segments(users, history.user_counts())
    scenes = history.top_scenes(settings.scenes_per_user)
    pairs = users[["user_id", "segment"]].merge(scenes, on="user_id", how="left")
    pairs["scene"] = pairs["scene"].fillna("default")
    log.info("score %s: %d active users (%s), %d (user, scene) lists over %d active items (%d new), model %s",
             run_date, len(users), users["segment"].value_counts().to_dict(), len(pairs), len(items), int(is_new.sum()),
             version)

    item_content = content_vectors(lake, settings, "item")
    profiles = content_vectors(lake, settings, "user")
    u_content = user_content(history.events[["user_id", "item_id"]].drop_duplicates(), item_content, profiles)
    V, bias = item_vectors(ckpt, item_ids, item_content)
    V_t, bias_t = torch.from_numpy(V), torch.from_numpy(bias)
    dim = next(iter(item_content.values())).shape[0] if item_content else 1
    C = np.stack([item_content.get(i, np.zeros(dim, np.float32)) for i in item_ids]) if len(item_ids) else np.zeros((0, dim), np.float32)
    C_t = torch.from_numpy(C)
    consumed = _consumed(lake, run_date, pairs["user_id"].to_numpy(), item_index)
    recent = (history.events.sort_values("event_ts", ascending=False).groupby("user_id")["item_id"]
              .apply(lambda s: [item_index[i] for i in s if i in item_index][:REASON_HISTORY]).to_dict())
    popular = popularity(history.events, run_date)
    k_eff = min(k, len(item_ids))

    def blocks() -> Iterator[pa.RecordBatch]:
        step = settings.score_block_users
        model_rows = pairs[pairs["segment"] != "new"]
        for start in range(0, len(model_rows), step):
            block = model_rows.iloc[start:start + step]
            U = torch.from_numpy(user_vectors(ckpt, block["user_id"].to_numpy(), block["scene"].to_numpy(), u_content))
            S = U @ V_t.T + bias_t
            for row, idx in enumerate(block.index):
                if len(consumed[idx]):
                    S[row, torch.from_numpy(consumed[idx])] = float("-inf")
            top = torch.topk(S, k_eff, dim=1)
            yield _model_batch(block, top.values.numpy(), top.indices.numpy(), recent, C_t, titles, item_ids,
                               is_new, version, run_date)
        new_rows = pairs[pairs["segment"] == "new"]
        if len(new_rows):
            yield _popular_batch(new_rows, popular, item_index, item_ids, is_new, k_eff, run_date)

    written = lake.replace_partition_stream("recommendations", blocks(), run_date=run_date)
    log.info("score %s: wrote %d recommendations", run_date, written)
    return {"users": len(users), "lists": len(pairs), "rows": written, "model_version": version}


def _model_batch(block, scores, indices, recent, C_t, titles, item_ids, is_new, version, run_date) -> pa.RecordBatch:
    import torch

    n, k = indices.shape
    reasons = np.empty((n, k), dtype=object)
    for row, user in enumerate(block["user_id"].to_numpy()):
        hist = recent.get(user, [])
        if not hist:
            reasons[row, :] = "matches your profile"
            continue
        sims = C_t[torch.from_numpy(indices[row])] @ C_t[torch.tensor(hist)].T  # (k, h)
        best = sims.argmax(dim=1).numpy()
        reasons[row, :] = [f"similar to {titles[hist[b]]} you liked" for b in best]
    valid = np.isfinite(scores)
    flat = valid.reshape(-1)
    ranks = np.tile(np.arange(1, k + 1, dtype=np.int32), n)
    return pa.RecordBatch.from_pydict({
        "run_date": np.full(n * k, run_date)[flat],
        "user_id": np.repeat(block["user_id"].to_numpy(), k)[flat],
        "scene": np.repeat(block["scene"].to_numpy(), k)[flat],
        "rank": ranks[flat],
        "item_id": item_ids[indices.reshape(-1)][flat],
        "score": scores.reshape(-1).astype(np.float64)[flat],
        "model_version": np.full(n * k, version, dtype=object)[flat],
        "user_segment": np.repeat(block["segment"].to_numpy(), k)[flat],
        "item_is_new": is_new[indices.reshape(-1)][flat],
        "reason": reasons.reshape(-1)[flat],
    }, schema=RECOMMENDATIONS.schema)


def _popular_batch(rows, popular, item_index, item_ids, is_new, k, run_date) -> pa.RecordBatch:
    out = []
    fresh = [item_ids[i] for i in np.flatnonzero(is_new)]
    for scene, group in rows.groupby("scene"):
        top = popular[popular["scene"] == scene].sort_values(["score", "item_id"], ascending=[False, True])
        top = top[top["item_id"].isin(item_index)]
        # popular-and-fresh: mostly popular items, with new items filling every fifth slot
        listed = list(top["item_id"].head(k))
        scores = dict(zip(top["item_id"], top["score"]))
        merged, fresh_iter = [], iter(i for i in fresh if i not in scores)
        for pos in range(k):
            take = next(fresh_iter, None) if pos % 5 == 4 else None
            if take is None and listed:
                take = listed.pop(0)
            if take is None:
                take = next(fresh_iter, None)
            if take is None:
                break
            merged.append(take)
        for user in group["user_id"]:
            for rank, item in enumerate(merged, start=1):
                out.append({"run_date": run_date, "user_id": user, "scene": scene, "rank": rank, "item_id": item,
                            "score": float(scores.get(item, 0.0)), "model_version": "popular", "user_segment": "new",
                            "item_is_new": bool(is_new[item_index[item]]),
                            "reason": f"popular in {scene}" if item in scores else "new in the catalogue"})
    return pa.RecordBatch.from_pylist(out, schema=RECOMMENDATIONS.schema)
