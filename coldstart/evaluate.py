"""Evaluate stage: the lists of D-1 against the events of D (next-day quality).

Protocol (per run date D):
* target users had at least one event before D; their truth is the items they interacted with on D
  and never before;
* slices: ``all``; ``cold_users`` (1-5 prior events); ``warm_users`` (more); ``cold_items`` (only the
  positives whose item had no interaction before D: the share of them found in the top K); and
  ``cold_only`` (the list restricted to items with no prior interaction, against those positives);
* Recall@K (hits / |truth|) and NDCG@K (binary gains) for K = 10 and 20, averaged over target users.

Methods: the model's lists as written by score(D-1), and, when ``baselines`` is on, baselines fitted
on the events up to D-1 and ranked under the same exclusions (see :mod:`coldstart.baselines`).

Writes ``evaluation`` (means per method, slice, metric, K) and ``evaluation_users`` (the per-user
values, for paired bootstrap intervals), both replacing partition run_date=D, then the HTML report.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from coldstart.catalog import EVALUATION, EVALUATION_USERS
from coldstart.config import Settings
from coldstart.features import interactions
from coldstart.lake import Lake

log = logging.getLogger("coldstart.evaluate")

KS = (10, 20)
COLD_USER_MAX_EVENTS = 5


@dataclass
class Targets:
    """Who is evaluated on D and against what."""
    truth: dict[str, set]          # user -> items first interacted with on D
    prior_counts: pd.Series        # user active on D -> events before D
    prior_items: set               # items with any interaction before D
    consumed: dict[str, set]       # user active on D -> items interacted with before D

    @property
    def users(self) -> list[str]:
        return sorted(self.truth)


def targets(lake: Lake, run_date: dt.date) -> Targets:
    before = interactions(lake, dt.date.min, run_date - dt.timedelta(days=1), ["user_id", "item_id"])
    today = interactions(lake, run_date, run_date, ["user_id", "item_id"]).drop_duplicates()
    prior_items = set(before["item_id"].unique())
    # only the users active on D can be targets: the per-user state is built for them alone
    before = before[before["user_id"].isin(today["user_id"].unique())]
    counts = before.groupby("user_id", observed=True).size()
    pairs = before.drop_duplicates()
    consumed = pairs.groupby("user_id", observed=True)["item_id"].agg(set).to_dict()
    truth: dict[str, set] = {}
    for user, items in today.groupby("user_id", observed=True)["item_id"]:
        if user not in counts.index:
            continue
        fresh = set(items) - consumed.get(user, set())
        if fresh:
            truth[user] = fresh
    return Targets(truth, counts, prior_items, consumed)


def _dcg(hits: np.ndarray) -> float:
    return float(np.sum(hits / np.log2(np.arange(2, len(hits) + 2))))


def per_user_metrics(lists: dict[str, list[str]], t: Targets) -> pd.DataFrame:
    """One row per (user, slice, metric, k) with the user's value: the input of means and bootstraps."""
    rows = []
    for user in t.users:
        truth = t.truth[user]
        ranked = lists.get(user, [])
        n_prior = int(t.prior_counts.get(user, 0))
        user_slices = ["all", "cold_users" if n_prior <= COLD_USER_MAX_EVENTS else "warm_users"]
        cold_truth = {i for i in truth if i not in t.prior_items}
        for k in KS:
            top = ranked[:k]
            hits = np.array([1.0 if i in truth else 0.0 for i in top])
            recall = hits.sum() / len(truth)
            ideal = _dcg(np.ones(min(len(truth), k)))
            ndcg = _dcg(hits) / ideal if ideal else 0.0
            for s in user_slices:
                rows.append((user, s, "recall", k, recall))
                rows.append((user, s, "ndcg", k, ndcg))
            if cold_truth:
                cold_hits = sum(1 for i in top if i in cold_truth)
                rows.append((user, "cold_items", "recall", k, cold_hits / len(cold_truth)))
                cold_ranked = [i for i in ranked if i not in t.prior_items][:k]
                ch = np.array([1.0 if i in cold_truth else 0.0 for i in cold_ranked])
                ideal_c = _dcg(np.ones(min(len(cold_truth), k)))
                rows.append((user, "cold_only", "recall", k, ch.sum() / len(cold_truth)))
                rows.append((user, "cold_only", "ndcg", k, _dcg(ch) / ideal_c if ideal_c else 0.0))
    return pd.DataFrame(rows, columns=["user_id", "slice", "metric", "k", "value"])


def summarise(per_user: pd.DataFrame, run_date: dt.date, method: str, model_version: str | None) -> list[dict]:
    if per_user.empty:
        return []
    g = per_user.groupby(["slice", "metric", "k"])["value"].agg(["mean", "size"]).reset_index()
    return [{"run_date": run_date, "method": method, "slice": r["slice"], "metric": r["metric"], "k": int(r["k"]),
             "value": float(r["mean"]), "n_users": int(r["size"]), "model_version": model_version}
            for _, r in g.iterrows()]


def model_lists(lake: Lake, list_date: dt.date) -> tuple[dict[str, list[str]], str | None]:
    """The model's list per user from recommendations(list_date); with several scenes, the best rank wins."""
    recs = lake.read_pandas("recommendations", columns=["user_id", "item_id", "rank", "model_version"],
                            filters=[("run_date", "=", list_date)])
    if recs.empty:
        return {}, None
    recs = recs.sort_values(["user_id", "rank", "item_id"]).drop_duplicates(["user_id", "item_id"])
    versions = recs.loc[recs["model_version"] != "popular", "model_version"].unique()
    return recs.groupby("user_id")["item_id"].agg(list).to_dict(), (versions[0] if len(versions) else None)


def evaluate(spark, settings: Settings, run_date: dt.date, baselines: bool | None = None) -> dict:
    lake = Lake.from_settings(settings)
    list_date = run_date - dt.timedelta(days=1)
    lists, version = model_lists(lake, list_date)
    results: dict[str, pd.DataFrame] = {}
    t = None
    if lists:
        t = targets(lake, run_date)
        results["model"] = per_user_metrics(lists, t)
        if settings.baselines if baselines is None else baselines:
            from coldstart.baselines import baseline_lists

            for name, b_lists in baseline_lists(spark, lake, settings, list_date, t.users, t.consumed,
                                                k=max(KS)).items():
                results[name] = per_user_metrics(b_lists, t)
    else:
        log.warning("evaluate %s: no recommendations for %s; nothing to evaluate", run_date, list_date)
    rows = []
    for method, per_user in results.items():
        rows.extend(summarise(per_user, run_date, method, version))
    lake.replace_partition("evaluation", pa.Table.from_pylist(rows, schema=EVALUATION.schema), run_date=run_date)
    lake.replace_partition("evaluation_users", _user_rows(results, run_date), run_date=run_date)
    from coldstart.report import write_report

    write_report(settings)
    if not results or t is None:
        return {"methods": [], "users": 0}
    headline = {m: next((r["value"] for r in rows if r["method"] == m and r["slice"] == "all" and r["metric"] == "recall"
                         and r["k"] == 20), None) for m in results}
    log.info("evaluate %s: %d target users; recall@20 %s", run_date, len(t.users),
             ", ".join(f"{m}={v:.4f}" for m, v in headline.items() if v is not None))
    return {"methods": list(results), "users": len(t.users), "recall@20": headline}


def _user_rows(results: dict[str, pd.DataFrame], run_date: dt.date) -> pa.Table:
    frames = [per_user.assign(method=method) for method, per_user in results.items() if not per_user.empty]
    if not frames:
        return EVALUATION_USERS.schema.empty_table()
    frame = pd.concat(frames, ignore_index=True).assign(run_date=run_date)
    return pa.Table.from_pandas(frame[EVALUATION_USERS.columns], preserve_index=False)
