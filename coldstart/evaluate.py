"""Evaluate stage: the lists of D-1 against the events of D (next-day quality).

Protocol (per run date D), as the field reports it:
* target users have at least one event on D and one before; their truth is the items they
  interacted with on D and never before;
* candidates are the active items whose first catalog row is dated D-1 or earlier (the lists of
  D-1 could know them), minus what the user consumed before D;
* slices: ``all``; ``cold_users`` (1-5 prior events); ``warm_users`` (more); ``cold_items`` (only the
  positives whose item had no interaction before D); and ``cold_only`` (the list restricted to items
  with no prior interaction, against those positives);
* metrics per user and K (10, 20): ``recall`` = hits / min(K, |truth|) (the capped form, 1 for a
  perfect list), ``recall_plain`` = hits / |truth|, ``ndcg`` (binary gains); for ``cold_items`` also
  the counts ``hits`` and ``positives``, because that slice is **micro-averaged**: its recall is all
  cold positives found over all cold positives (:func:`pooled`), not a mean of per-user shares;
* pooled figures over many nights (:func:`pooled`) and paired bootstrap intervals of a difference
  between methods (:func:`paired_difference`) resample user-days.

Methods: the model's lists as written by score(D-1), and, when ``baselines`` is on, baselines fitted
on the events up to D-1 and ranked under the same exclusions, ties broken by a seeded random key
(see :mod:`coldstart.baselines`).

Writes ``evaluation`` (means per method, slice, metric, K) and ``evaluation_users`` (the per-user
values, for paired bootstrap intervals), both replacing partition run_date=D. The HTML report is not
written here: it is its own step (``coldstart report``, the DAG's report task, the end of ``coldstart run``).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from coldstart.catalog import (COLD_USER_MAX_EVENTS, EVALUATION, EVALUATION_USERS, KS, MICRO_SLICES,  # noqa: F401
                               POOLED_SLICES, SLICES, TARGET_SLICES)
from coldstart.config import Settings
from coldstart.features import interactions
from coldstart.lake import Lake
from coldstart.results import EvaluateResult

log = logging.getLogger("coldstart.evaluate")



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
    rows: list[tuple] = []
    for user in t.users:
        truth = t.truth[user]
        ranked = lists.get(user, [])
        n_prior = int(t.prior_counts.get(user, 0))
        user_slices = ["all", "cold_users" if n_prior <= COLD_USER_MAX_EVENTS else "warm_users"]
        cold_truth = {i for i in truth if i not in t.prior_items}
        cold_ranked = [i for i in ranked if i not in t.prior_items] if cold_truth else []
        for k in KS:
            top = ranked[:k]
            hits = np.array([1.0 if i in truth else 0.0 for i in top])
            ideal = _dcg(np.ones(min(len(truth), k)))
            values = {"recall": hits.sum() / min(k, len(truth)), "recall_plain": hits.sum() / len(truth),
                      "ndcg": _dcg(hits) / ideal if ideal else 0.0}
            for s in user_slices:
                rows.extend((user, s, metric, k, value) for metric, value in values.items())
            if cold_truth:
                cold_hits = float(sum(1 for i in top if i in cold_truth))
                rows += [(user, "cold_items", "recall", k, cold_hits / len(cold_truth)),
                         (user, "cold_items", "hits", k, cold_hits),
                         (user, "cold_items", "positives", k, float(len(cold_truth)))]
                ch = np.array([1.0 if i in cold_truth else 0.0 for i in cold_ranked[:k]])
                ideal_c = _dcg(np.ones(min(len(cold_truth), k)))
                rows += [(user, "cold_only", "recall", k, ch.sum() / min(k, len(cold_truth))),
                         (user, "cold_only", "recall_plain", k, ch.sum() / len(cold_truth)),
                         (user, "cold_only", "ndcg", k, _dcg(ch) / ideal_c if ideal_c else 0.0)]
    return pd.DataFrame(rows, columns=["user_id", "slice", "metric", "k", "value"])


def pooled(per_user: pd.DataFrame) -> pd.DataFrame:
    """(method, slice, metric, k) -> value and n (user-days) over every row of ``per_user`` (any nights).

    The value is the mean over user-days, except for ``recall`` on the MICRO_SLICES, which is the
    sum of ``hits`` over the sum of ``positives`` (micro-averaged). ``method`` defaults to one method."""
    frame = per_user if "method" in per_user.columns else per_user.assign(method="model")
    keys = ["method", "slice", "metric", "k"]
    out = frame.groupby(keys, observed=True)["value"].agg(value="mean", n="size").reset_index()
    micro = frame[frame["slice"].isin(MICRO_SLICES) & frame["metric"].isin(("hits", "positives"))]
    if not micro.empty:
        sums = micro.pivot_table(index=["method", "slice", "k"], columns="metric", values="value", aggfunc="sum")
        ratio = (sums["hits"] / sums["positives"]).rename("micro").reset_index().assign(metric="recall")
        out = out.merge(ratio, on=keys, how="left")
        out["value"] = out["micro"].fillna(out["value"])
        out = out.drop(columns="micro")
    return out


def paired_difference(per_user: pd.DataFrame, a: str, b: str, slice_: str, k: int, metric: str = "recall",
                      resamples: int = 2000, seed: int = 0) -> dict:
    """Pooled ``metric`` of method a minus method b on one slice and K, over the user-days both have,
    with a paired percentile bootstrap 95 % interval (``scipy.stats.bootstrap``, user-days resampled).

    For the MICRO_SLICES the statistic is the difference of micro-averages (a ratio of sums)."""
    from scipy.stats import bootstrap

    index = [c for c in ("run_date", "user_id") if c in per_user.columns]
    part = per_user[(per_user["slice"] == slice_) & (per_user["k"] == k) & per_user["method"].isin((a, b))]
    micro = slice_ in MICRO_SLICES and metric == "recall"
    wanted = ("hits", "positives") if micro else (metric,)
    part = part[part["metric"].isin(wanted)]
    wide = part.pivot_table(index=index, columns=["method", "metric"], values="value", aggfunc="first").dropna()
    nothing = {"n": 0, "a": float("nan"), "b": float("nan"), "mean": float("nan"), "low": float("nan"),
               "high": float("nan")}
    if wide.empty or (a, wanted[0]) not in wide or (b, wanted[0]) not in wide:
        return nothing
    # one statistic for both: (sum of a - sum of b) / sum of the denominators, which are 1 for a mean
    if micro:
        data = (wide[(a, "hits")].to_numpy(), wide[(b, "hits")].to_numpy(), wide[(a, "positives")].to_numpy())
    else:
        data = (wide[(a, metric)].to_numpy(), wide[(b, metric)].to_numpy(), np.ones(len(wide)))

    def statistic(va, vb, denominator, axis=-1):
        return (va.sum(axis=axis) - vb.sum(axis=axis)) / denominator.sum(axis=axis)

    value_a, value_b = data[0].sum() / data[2].sum(), data[1].sum() / data[2].sum()
    n = len(wide)
    mean = float(statistic(*data))
    if n < 2 or np.all(data[0] - data[1] == data[0][0] - data[1][0]) and not micro:
        return {**nothing, "n": n, "a": float(value_a), "b": float(value_b), "mean": mean, "low": mean, "high": mean}
    res = bootstrap(data, statistic, paired=True, vectorized=True, n_resamples=resamples, method="percentile",
                    confidence_level=0.95, random_state=np.random.default_rng(seed))
    return {"n": n, "a": float(value_a), "b": float(value_b), "mean": mean,
            "low": float(res.confidence_interval.low), "high": float(res.confidence_interval.high)}


def summarise(per_user: pd.DataFrame, run_date: dt.date, method: str, model_version: str | None) -> list[dict]:
    if per_user.empty:
        return []
    g = pooled(per_user.assign(method=method))
    g = g[~g["metric"].isin(("hits", "positives"))]  # counts: they stay per user, in evaluation_users
    return [{"run_date": run_date, "method": method, "slice": r["slice"], "metric": r["metric"], "k": int(r["k"]),
             "value": float(r["value"]), "n_users": int(r["n"]), "model_version": model_version}
            for _, r in g.iterrows()]


def model_lists(lake: Lake, list_date: dt.date, list_name: str = "main") -> tuple[dict[str, list[str]], str | None]:
    """The model's ``list_name`` list ('main' or 'new') per user from recommendations(list_date); with several
    scenes, the best rank wins."""
    recs = lake.read_pandas("recommendations", columns=["user_id", "item_id", "rank", "model_version", "list"],
                            filters=[("run_date", "=", list_date)])
    recs = recs[recs["list"].fillna("main") == list_name]  # null: rows from before the column, all 'main'

    if recs.empty:
        return {}, None
    recs = recs.sort_values(["user_id", "rank", "item_id"]).drop_duplicates(["user_id", "item_id"])
    versions = recs.loc[recs["model_version"] != "popular", "model_version"].unique()
    return recs.groupby("user_id")["item_id"].agg(list).to_dict(), (versions[0] if len(versions) else None)


def quality_table(lake: Lake, k: int = 20, skip_first: bool = False, resamples: int = 2000,
                  seed: int = 0) -> pd.DataFrame:
    """Every method's Recall@k pooled over all evaluated nights (``evaluation_users``), per slice, with the
    nights and user-days behind it and the model's paired 95 % interval against the method (all nights
    but the first with ``skip_first``). Empty when nothing was evaluated."""
    if not lake.exists("evaluation_users"):
        return pd.DataFrame()
    users = lake.read_pandas("evaluation_users", filters=[("k", "=", k)])
    if skip_first and not users.empty:
        users = users[users["run_date"] != users["run_date"].min()]
    if users.empty:
        return pd.DataFrame()
    table = pooled(users)
    rows = []
    for slice_ in POOLED_SLICES:
        part = table[(table["slice"] == slice_) & (table["metric"] == "recall")].sort_values("value", ascending=False)
        nights = users[users["slice"] == slice_].groupby("method")["run_date"].nunique()
        for r in part.itertuples():
            diff = paired_difference(users, "model", r.method, slice_, k, resamples=resamples, seed=seed) \
                if r.method != "model" else None
            rows.append({"slice": slice_, "method": r.method, f"recall@{k}": round(float(r.value), 4),
                         "nights": int(nights.get(r.method, 0)), "user_days": int(r.n),
                         "model - method [95% interval]": "" if diff is None or not diff["n"] else
                         f"{diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]"})
    return pd.DataFrame(rows)


def tune_baselines(spark, lake: Lake, settings: Settings, run_date: dt.date, k: int = 20,
                   methods: tuple[str, ...] | None = None) -> dict[str, dict]:
    """Each baseline's parameters picked on the tuning day ``run_date`` (lists of run_date-1 against its
    events) from ``baselines.GRIDS``: {method: {"params", "recall", "cold_items", "grid": [(params, recall,
    cold_items), ...]}}.

    The objective is Recall@k on all targets for every method (the figure the field reports). The
    ``hybrid``'s EASE λ and content history are those picked for ``ease`` and ``content_knn``; only its
    cold weight is searched (never 0: it stays a hybrid). ALS is searched one coordinate at a time
    (alpha, then reg, then rank) because each fit is a Spark job; the others on the full grid."""
    import itertools

    from coldstart.baselines import DEFAULT_PARAMS, GRIDS, fit_data, method_lists
    from coldstart.features import content_vectors

    t = targets(lake, run_date)
    list_date = run_date - dt.timedelta(days=1)
    data = fit_data(lake, settings, list_date)
    item_content = content_vectors(lake, settings, "item")
    out: dict[str, dict] = {}

    def measure(method: str, params: dict) -> tuple[float, float]:
        lists = method_lists(spark, lake, settings, data, method, t.users, t.consumed, k, params, item_content)
        g = pooled(per_user_metrics(lists, t)).set_index(["slice", "metric", "k"])["value"]
        return float(g.get(("all", "recall", k), 0.0)), float(g.get(("cold_items", "recall", k), 0.0))

    for method in methods or tuple(GRIDS):
        grid = GRIDS[method]
        tried: dict[tuple, tuple[float, float]] = {}

        def run(params: dict, method: str = method, tried: dict = tried) -> float:  # bound now: B023
            key = tuple(sorted(params.items()))
            if key not in tried:
                tried[key] = measure(method, params)
            return tried[key][0]

        if method == "hybrid":
            base = {"l2": out.get("ease", {}).get("params", DEFAULT_PARAMS["ease"])["l2"],
                    "history": out.get("content_knn", {}).get("params", DEFAULT_PARAMS["content_knn"])["history"]}
            best = max(({**base, "cold_weight": w} for w in grid["cold_weight"]), key=run)
        elif method == "als":
            best = dict(DEFAULT_PARAMS["als"])
            for name, values in grid.items():
                best = max(({**best, name: v} for v in values), key=run)
        else:
            names = list(grid)
            best = max((dict(zip(names, combo)) for combo in itertools.product(*grid.values())), key=run)
        r, c = tried[tuple(sorted(best.items()))]
        out[method] = {"params": best, "recall": r, "cold_items": c,
                       "grid": [(dict(key), rr, cc) for key, (rr, cc) in tried.items()]}
        log.info("tuned %s on %s: %s (recall@%d %.4f, cold items %.4f; %d settings tried)", method, run_date, best, k,
                 r, c, len(tried))
    return out


def evaluate(spark, settings: Settings, run_date: dt.date, baselines: bool | None = None) -> EvaluateResult:
    """Measure the lists of run_date - 1 against the events of run_date (the protocol in the module doc), for
    the model and, with ``baselines`` (default: the setting), every baseline; replace partition run_date of
    evaluation and evaluation_users (empty when there were no lists). Writes no report."""
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
    if not results or t is None:
        return EvaluateResult(methods=[], users=0, recall_at_20={})
    headline = {m: next((r["value"] for r in rows if r["method"] == m and r["slice"] == "all" and r["metric"] == "recall"
                         and r["k"] == 20), None) for m in results}
    log.info("evaluate %s: %d target users; recall@20 %s", run_date, len(t.users),
             ", ".join(f"{m}={v:.4f}" for m, v in headline.items() if v is not None))
    return EvaluateResult(methods=list(results), users=len(t.users), recall_at_20=headline)


def _user_rows(results: dict[str, pd.DataFrame], run_date: dt.date) -> pa.Table:
    frames = [per_user.assign(method=method) for method, per_user in results.items() if not per_user.empty]
    if not frames:
        return EVALUATION_USERS.schema.empty_table()
    frame = pd.concat(frames, ignore_index=True).assign(run_date=run_date)
    return pa.Table.from_pandas(frame[EVALUATION_USERS.columns], preserve_index=False)
