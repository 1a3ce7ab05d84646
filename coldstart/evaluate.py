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

Where it runs (the stage, :func:`evaluate`): targets, truth, the prior-item (cold) flags and every
method's lists meet in one Spark aggregation per user over the Delta tables (:func:`user_rows_spark`);
the executors turn each partition's users into their per-user rows with the same
:func:`per_user_metrics` the driver-side helpers use (:func:`per_user_metrics_spark`); the rows go to
``evaluation_users`` in one Delta commit from the executors and the means are exact (decimal) sums per
(method, slice, metric, k), the only thing collected. The driver's memory does not grow with the users
for the model's side. Scale limits of the baselines: they run in the driver, fitted on the active
window's events read into it (O(window events): item-kNN's and EASE's matrices are O(items²) with EASE
capped at ``EASE_MAX_ITEMS``), and ranked for their target users, whose consumed sets are collected
(O(targets x history) memory, O(targets x items) work). Setting ``baseline_max_users`` bounds the
users side (a seeded sample, the same for every baseline); where the window's events do not fit in the
driver, set ``baselines`` off. :func:`targets` and :func:`model_lists` are the same protocol in pandas
for the driver (tuning on a bench day, tests).

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
from coldstart.features import interactions, interactions_until_spark
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
    """The protocol's targets of run_date in pandas, in the driver (the whole history is read): for tuning
    and tests; the stage uses :func:`user_rows_spark`."""
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


# --------------------------------------------------------------------------------------------
# The stage: the same protocol over the Delta tables in Spark. One aggregation per user brings each
# user's prior count, consumed set, truth and every method's list together (cold flags from a
# broadcast of the items used before D); the executors turn each partition's users into their
# per-user rows with per_user_metrics (one implementation of the metrics for the driver and the
# executors); the means are exact sums per slice. Only those sums reach the driver.
# --------------------------------------------------------------------------------------------
_SUM_TYPE = "decimal(38,18)"  # per-user values summed exactly: the means do not depend on the partitioning
_LIST_ROWS = "method string, user_id string, rank int, item_id string"


def user_rows_spark(spark, lake: Lake, run_date: dt.date, list_rows=None):
    """The target users of run_date (the protocol of :func:`targets`) as one Spark aggregation over the
    interactions and ``list_rows``: one row per target user with ``n_prior`` (events before run_date),
    ``consumed`` (sorted distinct items used before run_date), ``truth`` (the items used on run_date and never
    before, sorted), ``cold_truth`` (those of them that are cold, sorted) and ``entries`` (the user's rows of
    ``list_rows`` (method, user_id, rank, item_id) as structs (method, rank, item_id, cold), those past rank
    max(KS) only where cold: nothing else reads them); cold = nobody used the item before run_date.
    Without ``list_rows`` the entries are empty. Rows of users who are not targets are dropped."""
    from pyspark.sql import functions as F

    before, today = F.col("run_date") < F.lit(run_date), F.col("run_date") == F.lit(run_date)
    events = interactions_until_spark(spark, lake, run_date)
    prior = events.filter(before).select("item_id").distinct().withColumn("_prior", F.lit(True))
    rows = events.select("user_id", "item_id", F.when(today, F.lit("today")).otherwise(F.lit("before")).alias("kind"),
                         F.lit(None).cast("string").alias("method"), F.lit(None).cast("int").alias("rank"))
    if list_rows is not None:
        rows = rows.unionByName(list_rows.select("user_id", "item_id", F.lit("list").alias("kind"), "method",
                                                 F.col("rank").cast("int").alias("rank")))
    marked = rows.join(F.broadcast(prior), "item_id", "left").withColumn("cold", F.col("_prior").isNull())
    kind = F.col("kind")
    # A list's entries past rank max(KS) reach no metric but the cold_only slice's (cold entries): the first
    # max(KS) distinct items by (rank, item) all rank within max(KS), since one list holds distinct items.
    marked = marked.filter((kind != "list") | (F.col("rank") <= F.lit(max(KS))) | F.col("cold"))
    # No higher-order function (lambda): Spark interprets those element by element (a filter of today's items
    # against the consumed set cost 65 s of a 72 s aggregation at full scale); sort_array and array_except
    # are code-generated. array_sort without a comparator is a lambda too.
    per_user = marked.groupBy("user_id").agg(
        F.count_if(kind == "before").alias("n_prior"),
        F.sort_array(F.collect_set(F.when(kind == "before", F.col("item_id")))).alias("consumed"),
        F.collect_set(F.when(kind == "today", F.col("item_id"))).alias("today_items"),
        F.collect_set(F.when((kind == "today") & F.col("cold"), F.col("item_id"))).alias("today_cold"),
        F.collect_list(F.when(kind == "list", F.struct("method", "rank", "item_id", "cold"))).alias("entries"))
    return per_user.select(
        "user_id", "n_prior", "consumed", F.sort_array(F.array_except("today_items", "consumed")).alias("truth"),
        F.sort_array(F.array_except("today_cold", "consumed")).alias("cold_truth"), "entries") \
        .filter((F.col("n_prior") > 0) & (F.size("truth") > 0))


def model_list_rows_spark(spark, lake: Lake, list_date: dt.date, list_name: str = "main"):
    """(method='model', user_id, rank, item_id, model_version): the rows of the model's ``list_name`` list in
    recommendations(list_date) (null list: rows from before the column, all 'main')."""
    from pyspark.sql import functions as F

    recs = lake.read_spark(spark, "recommendations", partitions={"run_date": [list_date]})
    return recs.filter(F.coalesce(F.col("list"), F.lit("main")) == F.lit(list_name)) \
        .select(F.lit("model").alias("method"), "user_id", "rank", "item_id", "model_version")


PER_USER_SCHEMA = "method string, slice string, metric string, k int, user_id string, value double"


def metrics_partition(batches, methods: list[str]):
    """mapInArrow function: user_rows_spark batches (plus a boolean ``sampled``) in, per-user metric rows
    (PER_USER_SCHEMA) out, by :func:`per_user_metrics`. A user's list of a method is their entries of it by
    rank, then item, each item at its best rank; the methods other than 'model' are measured for the sampled
    users only."""
    for batch in batches:
        users = batch.to_pylist()
        truth = {r["user_id"]: set(r["truth"]) for r in users}
        counts = pd.Series({r["user_id"]: r["n_prior"] for r in users}, dtype="int64")
        prior_items = {i for r in users for i in set(r["truth"]).difference(r["cold_truth"])}
        lists: dict[str, dict[str, list[str]]] = {m: {} for m in methods}
        for r in users:
            for e in sorted(r["entries"] or (), key=lambda e: (e["method"], e["rank"], e["item_id"])):
                if not e["cold"]:
                    prior_items.add(e["item_id"])
                ranked = lists[e["method"]].setdefault(r["user_id"], [])
                if e["item_id"] not in ranked:
                    ranked.append(e["item_id"])
        sampled = {r["user_id"] for r in users if r["sampled"]}
        frames = []
        for method in methods:
            chosen = truth if method == "model" else {u: v for u, v in truth.items() if u in sampled}
            if chosen:
                frame = per_user_metrics(lists[method], Targets(chosen, counts, prior_items, {}))
                frames.append(frame.assign(method=method))
        if frames:
            out = pd.concat(frames, ignore_index=True)[["method", "slice", "metric", "k", "user_id", "value"]]
            yield pa.RecordBatch.from_pandas(out.astype({"k": "int32"}), preserve_index=False)


def per_user_metrics_spark(user_rows, methods: list[str], sampled=None):
    """(method, slice, metric, k, user_id, value): :func:`per_user_metrics` of every method's lists for the
    target users of ``user_rows`` (from :func:`user_rows_spark`), computed on the executors. ``sampled``
    (user_id), if given, the only target users measured for the methods other than 'model'."""
    import functools

    from pyspark.sql import functions as F

    if sampled is None:
        user_rows = user_rows.withColumn("sampled", F.lit(True))
    else:
        user_rows = user_rows.join(F.broadcast(sampled.withColumn("sampled", F.lit(True))), "user_id", "left") \
            .withColumn("sampled", F.coalesce("sampled", F.lit(False)))
    return user_rows.mapInArrow(functools.partial(metrics_partition, methods=list(methods)), PER_USER_SCHEMA)


def _summaries(per_user, run_date: dt.date, version: str | None) -> list[dict]:
    """The rows of ``evaluation`` from the per-user rows (:func:`summarise`'s figures): one Spark aggregation,
    exact decimal sums, collected per (method, slice, metric, k)."""
    from decimal import Decimal

    from pyspark.sql import functions as F

    sums = per_user.groupBy("method", "slice", "metric", "k").agg(
        F.sum(F.col("value").cast(_SUM_TYPE)).alias("total"), F.count("*").alias("n")).collect()
    by_key = {(r["method"], r["slice"], r["metric"], int(r["k"])): (Decimal(r["total"]), int(r["n"])) for r in sums}
    rows = []
    for (method, slice_, metric, k), (total, count) in sorted(by_key.items()):
        if metric in ("hits", "positives"):
            continue  # counts: they stay per user, in evaluation_users
        value = float(total / count)
        if slice_ in MICRO_SLICES and metric == "recall":
            value = float(by_key[(method, slice_, "hits", k)][0]) / float(by_key[(method, slice_, "positives", k)][0])
        rows.append({"run_date": run_date, "method": method, "slice": slice_, "metric": metric, "k": k,
                     "value": value, "n_users": count, "model_version": version})
    return rows


def _baseline_rows(spark, lake: Lake, settings: Settings, run_date: dt.date):
    """The baselines' lists (computed in the driver, see coldstart.baselines) for the target users of run_date,
    or for a seeded sample of ``baseline_max_users`` of them: (rows (method, user_id, rank, item_id), sampled
    users (user_id) or None for all). The chosen targets' consumed sets reach the driver: O(targets x history)."""
    from pyspark.sql import functions as F

    from coldstart.baselines import baseline_lists

    chosen = user_rows_spark(spark, lake, run_date).select("user_id", "consumed")
    if settings.baseline_max_users:
        chosen = chosen.orderBy(F.xxhash64(F.lit(settings.seed), "user_id"), "user_id").limit(settings.baseline_max_users)
    picked = sorted(chosen.collect(), key=lambda r: r["user_id"])
    users = [r["user_id"] for r in picked]
    consumed = {r["user_id"]: set(r["consumed"]) for r in picked}
    lists = baseline_lists(spark, lake, settings, run_date - dt.timedelta(days=1), users, consumed, k=max(KS))
    rows = [(method, user, rank, item) for method, per_user in lists.items()
            for user, items in per_user.items() for rank, item in enumerate(items, start=1)]
    sampled = spark.createDataFrame([(u,) for u in users], "user_id string") if settings.baseline_max_users else None
    return spark.createDataFrame(rows, _LIST_ROWS), sampled


def evaluate(spark, settings: Settings, run_date: dt.date, baselines: bool | None = None) -> EvaluateResult:
    """Measure the lists of run_date - 1 against the events of run_date (the protocol in the module doc), for
    the model and, with ``baselines`` (default: the setting), every baseline; replace partition run_date of
    evaluation and evaluation_users (empty when there were no lists). Writes no report.

    Targets, truth and lists are one Spark aggregation per user (:func:`user_rows_spark`), the per-user values
    are computed on the executors (:func:`per_user_metrics_spark`) and go to evaluation_users in one Delta
    commit (Lake.write_spark); only the sums per (method, slice, metric, k) reach the driver. The baselines
    are ranked in the driver (:func:`_baseline_rows`, setting ``baseline_max_users``)."""
    from pyspark.sql import functions as F
    from pyspark.storagelevel import StorageLevel

    from coldstart.spark import get_session

    lake = Lake.from_settings(settings)
    spark = spark or get_session(settings, app_name="coldstart-evaluate")
    list_date = run_date - dt.timedelta(days=1)
    model_rows = model_list_rows_spark(spark, lake, list_date)
    head = model_rows.agg(F.count("*").alias("n"), F.min(F.when(F.col("model_version") != F.lit("popular"), F.struct(
        "user_id", "rank", "item_id", "model_version"))).alias("first")).first()
    if not head["n"]:
        log.warning("evaluate %s: no recommendations for %s; nothing to evaluate", run_date, list_date)
        lake.replace_partition("evaluation", EVALUATION.schema.empty_table(), run_date=run_date)
        lake.replace_partition("evaluation_users", EVALUATION_USERS.schema.empty_table(), run_date=run_date)
        return EvaluateResult(methods=[], users=0, recall_at_20={})
    version = head["first"]["model_version"] if head["first"] is not None else None
    methods, list_rows, sampled = ["model"], model_rows.drop("model_version"), None
    if settings.baselines if baselines is None else baselines:
        from coldstart.baselines import DEFAULT_PARAMS

        b_rows, sampled = _baseline_rows(spark, lake, settings, run_date)
        methods, list_rows = methods + list(DEFAULT_PARAMS), list_rows.unionByName(b_rows)
    # on disk: the sums and the write read it (in local mode the executors' memory is the driver's)
    per_user = per_user_metrics_spark(user_rows_spark(spark, lake, run_date, list_rows), methods, sampled) \
        .withColumn("run_date", F.lit(run_date)).persist(StorageLevel.DISK_ONLY)
    try:
        rows = _summaries(per_user, run_date, version)
        lake.replace_partition("evaluation", pa.Table.from_pylist(rows, schema=EVALUATION.schema), run_date=run_date)
        lake.write_spark(per_user, "evaluation_users", "replace_partition", {"run_date": run_date})
    finally:
        per_user.unpersist()
    headline = {m: next((r["value"] for r in rows if r["method"] == m and r["slice"] == "all" and r["metric"] == "recall"
                         and r["k"] == 20), None) for m in methods}
    users = next((r["n_users"] for r in rows if r["method"] == "model" and r["slice"] == "all" and r["metric"] == "recall"
                  and r["k"] == 20), 0)
    log.info("evaluate %s: %d target users; recall@20 %s", run_date, users,
             ", ".join(f"{m}={v:.4f}" for m, v in headline.items() if v is not None))
    return EvaluateResult(methods=methods, users=users, recall_at_20=headline)
