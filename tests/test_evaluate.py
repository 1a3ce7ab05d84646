"""Evaluation protocol (targets, metrics, slices), the baselines, and what evaluate writes."""

import datetime as dt
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from coldstart.catalog import TABLES
from coldstart.evaluate import Targets, evaluate, paired_difference, per_user_metrics, pooled, targets
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


def test_recall_is_capped_at_k_and_cold_items_are_micro_averaged():
    truth = {f"t{i}" for i in range(30)}
    t = Targets(truth={"u1": truth, "u2": {"c1"}, "u3": {"c2", "c3", "c4"}},
                prior_counts=pd.Series({"u1": 9, "u2": 9, "u3": 9}), prior_items=truth, consumed={})
    lists = {"u1": sorted(truth)[:10] + ["zz"] * 0, "u2": ["c1"], "u3": ["c2"]}
    got = per_user_metrics(lists, t)
    # 10 of 30 found in the top 10: a perfect list scores 1, the plain form 1/3
    assert _metric(got, "u1", "all", "recall", 10) == 1.0
    assert math.isclose(_metric(got, "u1", "all", "recall_plain", 10), 1 / 3)
    # cold items: u2 finds 1 of 1, u3 1 of 3; the mean of shares is 2/3, the micro-average 2/4
    table = pooled(got).set_index(["method", "slice", "metric", "k"])["value"]
    assert math.isclose(table[("model", "cold_items", "recall", 20)], 0.5)
    assert math.isclose(table[("model", "all", "recall", 20)], got.query("slice == 'all' and metric == 'recall' "
                                                                         "and k == 20").value.mean())


def test_paired_difference_of_means_and_of_micro_averages():
    rng = np.random.default_rng(1)
    rows = []
    for day in range(3):
        for u in range(40):
            a, b = rng.random(), rng.random()
            pos = int(rng.integers(1, 4))
            ha, hb = int(rng.integers(0, pos + 1)), int(rng.integers(0, pos + 1))
            for method, v, h in (("model", a + 0.2, ha), ("base", b, hb)):
                rows += [(day, f"u{u}", method, "all", "recall", 20, v),
                         (day, f"u{u}", method, "cold_items", "hits", 20, float(h)),
                         (day, f"u{u}", method, "cold_items", "positives", 20, float(pos)),
                         (day, f"u{u}", method, "cold_items", "recall", 20, h / pos)]
    frame = pd.DataFrame(rows, columns=["run_date", "user_id", "method", "slice", "metric", "k", "value"])
    r = paired_difference(frame, "model", "base", "all", 20, resamples=500, seed=3)
    wide = frame.query("slice == 'all'").pivot_table(index=["run_date", "user_id"], columns="method", values="value")
    assert r["n"] == 120 and math.isclose(r["mean"], (wide["model"] - wide["base"]).mean())
    assert r["low"] < r["mean"] < r["high"] and r["low"] > 0  # a shift of 0.2 on 120 user-days is clear
    c = paired_difference(frame, "model", "base", "cold_items", 20, resamples=500, seed=3)
    sums = frame.query("slice == 'cold_items'").pivot_table(index="method", columns="metric", values="value", aggfunc="sum")
    micro = sums["hits"] / (sums["positives"])
    assert math.isclose(c["a"], micro["model"]) and math.isclose(c["mean"], micro["model"] - micro["base"])
    assert c["low"] <= c["mean"] <= c["high"]
    assert paired_difference(frame, "model", "nobody", "all", 20)["n"] == 0


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


def test_evaluate_writes_means_and_per_user_values_and_no_report(small_lake, settings, spark):
    recs = [{"run_date": L, "user_id": "u1", "scene": "home", "rank": r, "item_id": i, "score": 1.0 / r,
             "model_version": "v1", "user_segment": "cold", "item_is_new": i == "y", "reason": "r"}
            for r, i in enumerate(["q", "y"], start=1)]
    small_lake.replace_partition("recommendations", pa.Table.from_pylist(recs, schema=TABLES["recommendations"].schema),
                                 run_date=L)
    for _ in range(2):  # a rerun replaces its partition
        result = evaluate(spark, settings, D, baselines=False)
    assert result.methods == ["model"] and result.users == 1
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

    assert not (Path(settings.reports) / "report.html").exists()  # the report is its own step, not evaluate's


def _recs(rows: list[tuple]) -> pa.Table:
    """(user, scene, rank, item, list) rows of recommendations(L)."""
    return pa.Table.from_pylist(
        [{"run_date": L, "user_id": u, "scene": sc, "rank": r, "item_id": i, "score": 1.0 / r, "model_version": "v1",
          "user_segment": "cold", "item_is_new": False, "reason": "r", "list": name} for u, sc, r, i, name in rows],
        schema=TABLES["recommendations"].schema)


def test_the_stage_measures_in_spark_what_the_protocol_says(settings, spark):
    """The stage's Spark path on a hand-made night: truth leaves out what the user consumed before D, an item
    counts as cold only if nobody used it before D, a list is the user's main rows (both scenes, each item at
    its best rank; the 'new' list apart), recall is capped at K, cold items are micro-averaged; and every table
    equals the driver's reference (targets + per_user_metrics + pooled)."""
    lake = Lake.from_settings(settings)
    t_items = [f"t{n:02d}" for n in range(25)]
    write_events(lake, [("u1", "x", "home", OLD), ("u1", "p", "home", L), ("u2", "z", "home", L), ("u6", "q", "home", L)]
                 + [("u5", f"w{n % 6}", "home", L) for n in range(12)] + [("u8", t, "home", L) for t in t_items]
                 + [("u7", "x", "home", L)]
                 + [("u1", "x", "home", D), ("u1", "y", "home", D), ("u1", "z", "home", D), ("u2", "z", "home", D),
                    ("u3", "y", "home", D), ("u5", "c2", "home", D), ("u5", "c3", "home", D), ("u5", "c4", "home", D),
                    ("u6", "c1", "home", D)] + [("u7", t, "home", D) for t in t_items])
    lake.replace_partition("recommendations", _recs(
        [("u1", "home", 1, "p", "main"), ("u1", "home", 2, "z", "main"), ("u1", "home", 3, "q", "main"),
         ("u1", "search", 1, "z", "main"), ("u1", "search", 2, "y", "main"), ("u1", "home", 1, "y", "new"), ("u5", "home", 1, "c3", "new"),
         ("u5", "home", 1, "c2", "main"), ("u5", "home", 2, "w0", "main"), ("u6", "home", 1, "c1", "main")]
        + [("u7", "home", r, t, "main") for r, t in enumerate(t_items[:20], start=1)]), run_date=L)
    result = evaluate(spark, settings, D, baselines=False)
    assert result.users == 4 and result.methods == ["model"]
    ev = lake.read_pandas("evaluation").set_index(["method", "slice", "metric", "k"])
    users = lake.read_pandas("evaluation_users")
    assert set(users.user_id) == {"u1", "u5", "u6", "u7"}  # u2 only repeated z, u3 had nothing before D
    # u1: truth {y, z} (x was consumed), list [p, z, y, q] (z at its best rank, the new list's y apart)
    assert _metric(users, "u1", "all", "recall", 10) == 1.0
    assert math.isclose(_metric(users, "u1", "all", "ndcg", 10),
                        (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3)), rel_tol=1e-15)
    assert _metric(users, "u1", "cold_items", "positives", 10) == 1.0  # y; z was used (by u2) before D
    assert _metric(users, "u1", "cold_only", "ndcg", 10) == 1.0        # the cold-only list is [y]
    # u7: 25 positives, 10 found in the top 10: capped 1, plain 0.4; 20 of 20 in the top 20
    assert _metric(users, "u7", "all", "recall", 10) == 1.0 and _metric(users, "u7", "all", "recall_plain", 10) == 0.4
    assert _metric(users, "u7", "all", "recall", 20) == 1.0 and users[users.user_id == "u7"].slice.isin(
        ["cold_items", "cold_only"]).sum() == 0
    assert math.isclose(ev.loc[("model", "all", "recall", 10), "value"], (1 + 1 / 3 + 1 + 1) / 4, rel_tol=1e-15)
    assert ev.loc[("model", "warm_users", "recall", 10), "n_users"] == 1  # u5: 12 events before D
    # cold items micro-averaged: u1 1 of 1, u5 1 of 3, u6 1 of 1 -> 3 / 5 (the mean of shares would be 7/9)
    assert ev.loc[("model", "cold_items", "recall", 10), "value"] == 0.6
    assert ev.loc[("model", "cold_items", "recall", 10), "n_users"] == 3
    assert ev["model_version"].eq("v1").all()
    # the driver's reference on the same night: the same rows, the same values
    from coldstart.evaluate import model_lists

    reference = per_user_metrics(model_lists(lake, L)[0], targets(lake, D))
    key = ["slice", "metric", "k", "user_id"]
    got = users.drop(columns=["run_date", "method"]).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[key + ["value"]], reference.sort_values(key).reset_index(drop=True)[key + ["value"]],
                                  check_dtype=False, check_exact=True)
    means = pooled(reference).set_index(["method", "slice", "metric", "k"])
    means = means[~means.index.get_level_values("metric").isin(["hits", "positives"])]
    assert sorted(means.index) == sorted(ev.index)
    for index, row in means.iterrows():
        assert math.isclose(ev.loc[index, "value"], row.value, rel_tol=1e-12) and ev.loc[index, "n_users"] == row.n


def test_long_lists_in_two_scenes_measure_as_the_whole_list(settings, spark):
    """Lists longer than max(KS) in two scenes whose ranks interleave, cold items past rank 20: the stage keeps only
    what a metric reads (rank <= 20, or cold) and still equals the driver's reference on the whole lists."""
    rng = np.random.default_rng(7)
    lake = Lake.from_settings(settings)
    users, items = [f"u{n:02d}" for n in range(30)], [f"i{n:03d}" for n in range(90)]
    fresh = items[60:]  # nobody uses them before D: cold
    events = [(u, items[int(i)], "home", OLD) for u in users for i in rng.choice(60, 3, replace=False)]
    events += [(u, items[int(i)], "home", D) for u in users for i in rng.choice(90, 6, replace=False)]
    write_events(lake, events)
    rows = []
    for u in users:
        for scene, length in (("home", 50), ("search", int(rng.integers(5, 40)))):
            picked = rng.permutation(90)[:length]
            rows += [(u, scene, r, items[int(i)], "main") for r, i in enumerate(picked, start=1)]
    lake.replace_partition("recommendations", _recs(rows), run_date=L)
    assert any(r[3] in fresh and r[2] > 20 for r in rows)
    evaluate(spark, settings, D, baselines=False)
    got = lake.read_pandas("evaluation_users").drop(columns=["run_date", "method"])
    from coldstart.evaluate import model_lists

    reference = per_user_metrics(model_lists(lake, L)[0], targets(lake, D))
    assert reference["slice"].eq("cold_only").any()
    key = ["slice", "metric", "k", "user_id"]
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True)[key + ["value"]],
                                  reference.sort_values(key).reset_index(drop=True)[key + ["value"]],
                                  check_dtype=False, check_exact=True)


def test_baselines_are_measured_on_a_seeded_sample_of_at_most_baseline_max_users(settings, spark, monkeypatch):
    """With baseline_max_users = N the baselines rank N target users, the same ones for every baseline and on
    every run, while the model is measured on every target user."""
    from coldstart import baselines

    lake = Lake.from_settings(settings)
    write_events(lake, [(f"u{n}", "old", "home", L) for n in range(12)] + [(f"u{n}", f"i{n}", "home", D) for n in range(12)])
    lake.replace_partition("recommendations", _recs([(f"u{n}", "home", 1, f"i{n}", "main") for n in range(12)]),
                           run_date=L)
    asked: list[list[str]] = []

    def lists(spark, lake, settings, list_date, users, consumed, k, params=None):
        asked.append(list(users))
        assert all(consumed[u] == {"old"} for u in users)
        return {m: {u: [f"i{int(u[1:]) + 1}", u.replace("u", "i")] for u in users} for m in baselines.DEFAULT_PARAMS}

    monkeypatch.setattr(baselines, "baseline_lists", lists)
    sampled = settings.replace(baseline_max_users=5)
    evaluate(spark, sampled, D)
    evaluate(spark, sampled, D)
    assert len(asked) == 2 and asked[0] == asked[1] and len(asked[0]) == 5
    users = lake.read_pandas("evaluation_users")
    k20 = users[(users.slice == "all") & (users.metric == "recall") & (users.k == 20)]
    per_method = k20.groupby("method").user_id.apply(set)
    assert per_method["model"] == {f"u{n}" for n in range(12)}
    assert all(per_method[m] == set(asked[0]) for m in baselines.DEFAULT_PARAMS)
    ndcg = users[(users.slice == "all") & (users.metric == "ndcg") & (users.method != "model")]
    assert len(ndcg) == 2 * 5 * len(baselines.DEFAULT_PARAMS)
    assert np.allclose(ndcg.value, 1 / math.log2(3))  # each baseline's second item is the user's one positive
    ev = lake.read_pandas("evaluation")
    assert set(ev[(ev.slice == "all") & (ev.metric == "recall") & (ev.k == 20)].set_index("method").n_users) == {12, 5}


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
    from coldstart.baselines import DEFAULT_PARAMS, baseline_lists

    settings, lake, t = structured
    lists = baseline_lists(spark, lake, settings, L, t.users, t.consumed, K)
    assert set(lists) == set(DEFAULT_PARAMS)
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


def test_ties_go_by_a_seeded_random_key_not_by_id(structured):
    from coldstart.baselines import FitData, popularity_lists
    from coldstart.features import interactions

    settings, lake, t = structured
    events = interactions(lake, OLD, L, ["user_id", "item_id", "scene", "event_ts"])
    # a user with no window events under EASE: every score is 0, so the order is the tie-break alone
    data = FitData(events.iloc[:0], ITEMS["a"] + ITEMS["b"], L, seed=1)
    first = popularity_lists(data, ["nobody"], {}, K)["nobody"]
    assert first != sorted(first) and first == popularity_lists(data, ["nobody"], {}, K)["nobody"]
    other = FitData(events.iloc[:0], ITEMS["a"] + ITEMS["b"], L, seed=2)
    assert popularity_lists(other, ["nobody"], {}, K)["nobody"] != first


def test_hybrid_ranks_cold_candidates_by_content(structured):
    from coldstart.baselines import FitData, hybrid_lists
    from coldstart.features import content_vectors, interactions

    settings, lake, t = structured
    events = interactions(lake, OLD, L, ["user_id", "item_id", "scene", "event_ts"])
    cold = set(ITEMS["a"][-10:] + ITEMS["b"][-10:]) | {"a_new"}  # the tail: no window event once these are dropped
    data = FitData(events[~events["item_id"].isin(cold)], ITEMS["a"] + ITEMS["b"] + ["a_new"], L)
    cold = set(data.item_ids[~data.has_history])  # the tail may hold more items nobody used
    content = content_vectors(lake, settings, "item")
    lists = hybrid_lists(data, t.users, t.consumed, K, content, cold_weight=2.0)
    # cold items lead (weight 2), and only content can order them: each user's are from the user's own topic
    for u in t.users:
        topic = "ab"[int(u[1:]) % 2]
        assert lists[u][0] in cold and lists[u][0].startswith(topic), (u, lists[u])
    none = hybrid_lists(data, t.users, t.consumed, K, content, cold_weight=0.0)
    assert all(not set(none[u][:5]) & cold for u in t.users)  # weight 0: EASE's items first


def test_tuning_picks_the_best_setting_of_the_grid(structured, spark, monkeypatch):
    from coldstart import baselines
    from coldstart.evaluate import tune_baselines

    settings, lake, t = structured
    monkeypatch.setitem(baselines.GRIDS, "ease", {"l2": (1.0, 1e6)})
    monkeypatch.setitem(baselines.GRIDS, "hybrid", {"cold_weight": (0.1, 1.0)})
    tuned = tune_baselines(spark, lake, settings, D, k=K, methods=("popularity", "ease", "content_knn", "hybrid"))
    for method, result in tuned.items():
        assert max(r for _, r, _ in result["grid"]) == result["recall"], method
        assert result["params"] in [p for p, _, _ in result["grid"]]
    assert len(tuned["popularity"]["grid"]) == len(baselines.GRIDS["popularity"]["half_life"])
    assert tuned["hybrid"]["params"]["l2"] == tuned["ease"]["params"]["l2"]
    assert tuned["hybrid"]["params"]["history"] == tuned["content_knn"]["params"]["history"]


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
    assert set(ev.method) == set(users.method) == {"model", "popularity", "item_knn", "ease", "content_knn", "als",
                                                    "hybrid"}
    assert ev.value.between(0, 1).all()
    n = users[(users.slice == "all") & (users.metric == "recall") & (users.k == 20)].groupby("method").size()
    assert (n == len(t.users)).all()
    from coldstart.evaluate import quality_table

    q = quality_table(lake, k=20, resamples=200)
    everyone = q[q.slice == "all"].set_index("method")
    assert set(everyone.index) == set(ev.method) and (everyone.user_days == len(t.users)).all()
    assert (everyone.nights == 1).all() and everyone.loc["model", "model - method [95% interval]"] == ""
    assert everyone.loc["popularity", "model - method [95% interval]"].count("[") == 1
    assert quality_table(lake, k=20, skip_first=True).empty  # one night: nothing left without it
