"""Evaluation protocol (targets, metrics, slices), the baselines, and what evaluate writes."""

import datetime as dt
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from coldstart.catalog import TABLES
from coldstart.evaluate import Targets, evaluate, per_user_metrics, targets
from coldstart.lake import Lake
from tests.lake_builders import topic_vector, write_embeddings, write_events, write_items, write_users

D = dt.date(2024, 2, 10)   # the evaluating night: lists of D-1 against events of D
L = D - dt.timedelta(days=1)
OLD = dt.date(2024, 1, 1)
K = 10


def _metric(frame: pd.DataFrame, user: str, slice_: str, metric: str, k: int) -> float:
    row = frame[(frame.user_id == user) & (frame.slice == slice_) & (frame.metric == metric) & (frame.k == k)]
    assert len(row) == 1, (user, slice_, metric, k)
    return float(row.value.iloc[0])


def test_metrics_on_hand_made_lists():
    t = Targets(truth={"u1": {"x", "y"}, "u2": {"z"}, "u3": {"w"}}, prior_counts=pd.Series({"u1": 3, "u2": 10, "u3": 1}),
                prior_items={"x", "p", "q", "w"}, consumed={})
    lists = {"u1": ["p", "x", "q", "y"], "u2": ["a", "b"]}  # u3 has no list: counts as a miss
    got = per_user_metrics(lists, t)
    assert _metric(got, "u1", "all", "recall", 10) == 1.0
    assert math.isclose(_metric(got, "u1", "all", "ndcg", 10), (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    assert _metric(got, "u1", "cold_users", "recall", 10) == 1.0 and _metric(got, "u2", "warm_users", "recall", 10) == 0.0
    assert got[(got.user_id == "u1") & (got.slice == "warm_users")].empty
    # cold items: only y was never interacted with before D; in the cold-only list [y] it is first
    assert _metric(got, "u1", "cold_items", "recall", 20) == 1.0
    assert _metric(got, "u1", "cold_only", "ndcg", 10) == 1.0
    assert got[(got.user_id == "u3") & (got.slice == "cold_items")].empty  # w is not a cold item
    assert _metric(got, "u3", "all", "recall", 10) == 0.0
    means = got[(got.slice == "all") & (got.metric == "recall") & (got.k == 10)].value.mean()
    assert math.isclose(means, 1 / 3)
    cut = per_user_metrics({"u1": ["p", "q"] * 5 + ["x"]}, t)  # x at rank 11: outside @10, inside @20
    assert _metric(cut, "u1", "all", "recall", 10) == 0.0 and _metric(cut, "u1", "all", "recall", 20) == 0.5


@pytest.fixture
def small_lake(settings):
    lake = Lake.from_settings(settings)
    write_events(lake, [("u1", "x", "home", OLD), ("u1", "p", "home", L), ("u2", "z", "home", L),
                        ("u1", "x", "home", D), ("u1", "y", "home", D), ("u2", "z", "home", D), ("u3", "y", "home", D)])
    return lake


def test_target_users_and_truth_follow_the_protocol(small_lake):
    t = targets(small_lake, D)
    assert t.users == ["u1"]          # u2 only repeated a consumed item; u3 had no event before D
    assert t.truth["u1"] == {"y"}     # x was consumed before D
    assert t.consumed == {"u1": {"x", "p"}, "u2": {"z"}} and t.prior_items == {"x", "p", "z"}


def test_evaluate_writes_means_and_per_user_values_and_a_report(small_lake, settings):
    recs = [{"run_date": L, "user_id": "u1", "scene": "home", "rank": r, "item_id": i, "score": 1.0 / r,
             "model_version": "v1", "user_segment": "cold", "item_is_new": i == "y", "reason": "r"}
            for r, i in enumerate(["q", "y"], start=1)]
    small_lake.replace_partition("recommendations", pa.Table.from_pylist(recs, schema=TABLES["recommendations"].schema),
                                 run_date=L)
    for _ in range(2):  # a rerun replaces its partition
        result = evaluate(None, settings, D, baselines=False)
    assert result["methods"] == ["model"] and result["users"] == 1
    ev = small_lake.read_pandas("evaluation")
    users = small_lake.read_pandas("evaluation_users")
    assert len(ev) == ev[["run_date", "method", "slice", "metric", "k"]].drop_duplicates().shape[0]
    row = ev[(ev.slice == "all") & (ev.metric == "ndcg") & (ev.k == 10)].iloc[0]
    assert math.isclose(row.value, 1 / math.log2(3)) and row.n_users == 1 and row.model_version == "v1"
    means = users.groupby(["method", "slice", "metric", "k"]).value.mean()
    for r in ev.itertuples():
        assert math.isclose(means[(r.method, r.slice, r.metric, r.k)], r.value)
    assert set(users.user_id) == {"u1"} and len(users) == len(per_user_metrics({"u1": ["q", "y"]}, targets(small_lake, D)))
    from pathlib import Path

    assert "<svg" in (Path(settings.reports) / "report.html").read_text()


# --------------------------------------------------------------------------------------------
# baselines on a tiny structured world: two topics, steep popularity inside each
# --------------------------------------------------------------------------------------------
ITEMS = {topic: [f"{topic}{i:02d}" for i in range(30)] for topic in "ab"}


@pytest.fixture(scope="module")
def structured(tmp_path_factory):
    from tests.conftest import make_settings

    settings = make_settings(tmp_path_factory.mktemp("baselines"))
    lake = Lake.from_settings(settings)
    rng = np.random.default_rng(3)
    weights = 1.0 / np.arange(1, 31) ** 1.2
    weights /= weights.sum()
    all_items = ITEMS["a"] + ITEMS["b"]
    write_items(lake, [{"item_id": i, "first_seen": OLD} for i in all_items]
                + [{"item_id": "a_new", "first_seen": L}, {"item_id": "a_retired", "first_seen": OLD, "active": False}])
    write_embeddings(lake, settings.encoder_name, "item",
                     {i: topic_vector(0 if i.startswith("a") else 1, 8, rng) for i in all_items + ["a_new", "a_retired"]}, L)
    events, truth_events = [], []
    for n in range(40):
        topic = "ab"[n % 2]
        picks = rng.choice(30, size=9, replace=False, p=weights)
        history, today = picks[:6], picks[6:]
        for j, item in enumerate(history):
            events.append((f"u{n}", ITEMS[topic][item], "home", L - dt.timedelta(days=j % 3)))
        truth_events += [(f"u{n}", ITEMS[topic][item], "home", D) for item in today]
    events.append(("u0", "a_retired", "home", L))
    write_events(lake, events + truth_events)
    write_users(lake, [{"user_id": f"u{n}", "first_seen": OLD, "last_seen": D} for n in range(40)])
    return settings, lake, targets(lake, D)


def test_each_baseline_returns_k_unconsumed_active_items_and_beats_random(structured, spark):
    from coldstart.baselines import METHODS, baseline_lists

    settings, lake, t = structured
    lists = baseline_lists(spark, lake, settings, L, t.users, t.consumed, K)
    assert set(lists) == set(METHODS)
    active = set(ITEMS["a"] + ITEMS["b"] + ["a_new"])
    rng = np.random.default_rng(0)
    random_recall = np.mean([
        per_user_metrics({u: list(rng.choice(sorted(active - t.consumed[u]), K, replace=False)) for u in t.users}, t)
        .query("slice == 'all' and metric == 'recall' and k == 10").value.mean() for _ in range(20)])
    for method, per_user in lists.items():
        assert set(per_user) == set(t.users), method
        for user, items in per_user.items():
            assert len(items) == K and len(set(items)) == K, (method, user)
            assert set(items) <= active and not set(items) & t.consumed[user], (method, user)
        recall = per_user_metrics(per_user, t).query("slice == 'all' and metric == 'recall' and k == 10").value.mean()
        assert recall > random_recall + 0.05, (method, recall, random_recall)


def test_ease_on_a_capped_item_set_still_fills_the_list(structured):
    from coldstart.baselines import FitData, ease_lists
    from coldstart.features import interactions

    settings, lake, t = structured
    events = interactions(lake, OLD, L, ["user_id", "item_id", "scene", "event_ts"])
    data = FitData(events, ITEMS["a"] + ITEMS["b"], L)
    lists = ease_lists(data, t.users, t.consumed, K, max_items=5)
    assert all(len(v) == K and not set(v) & t.consumed[u] for u, v in lists.items())


def test_evaluate_with_baselines_writes_every_method(structured, spark):
    settings, lake, t = structured
    recs = [{"run_date": L, "user_id": u, "scene": "home", "rank": r, "item_id": i, "score": 0.0, "model_version": "v",
             "user_segment": "warm", "item_is_new": False, "reason": "r"}
            for u in t.users for r, i in enumerate(ITEMS["a"][:K], start=1)]
    lake.replace_partition("recommendations", pa.Table.from_pylist(recs, schema=TABLES["recommendations"].schema),
                           run_date=L)
    evaluate(spark, settings, D)
    ev, users = lake.read_pandas("evaluation"), lake.read_pandas("evaluation_users")
    assert set(ev.method) == set(users.method) == {"model", "popularity", "item_knn", "ease", "content_knn", "als"}
    assert ev.value.between(0, 1).all()
    n = users[(users.slice == "all") & (users.metric == "recall") & (users.k == 20)].groupby("method").size()
    assert (n == len(t.users)).all()
