"""Score stage on a hand-made lake (who gets which list, exclusions, scenes, reasons) and its top-k kernel."""

import contextlib
import datetime as dt

import numpy as np
import pytest
import torch

from coldstart.lake import Lake
from coldstart.ranking import ItemMatrix, select_top_k, top_k_scores
from coldstart.score import popular_and_fresh, score, serving_state
from tests.lake_builders import topic_vector, write_embeddings, write_events, write_items, write_users

D = dt.date(2024, 1, 10)
OLD = dt.date(2023, 10, 1)  # outside the 30-day active window of D
DIM = 8
ITEMS_A = [f"a{i}" for i in range(6)]
ITEMS_B = [f"b{i}" for i in range(6)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A lake with every kind of user and item the score stage distinguishes, and a model trained on it."""
    from coldstart.train import train
    from tests.conftest import make_settings

    settings = make_settings(tmp_path_factory.mktemp("score"), top_k=50, train_epochs_full=2)
    lake = Lake.from_settings(settings)
    rng = np.random.default_rng(0)
    day1, day2 = D - dt.timedelta(days=2), D - dt.timedelta(days=1)
    items = [{"item_id": i, "title": f"Title {i}", "first_seen": OLD, "first_interaction": OLD} for i in ITEMS_A + ITEMS_B]
    items += [{"item_id": "a_new", "title": "Fresh A", "first_seen": D},            # catalog row today, no interaction
              {"item_id": "a_retired", "title": "Gone", "first_seen": OLD, "active": False, "first_interaction": OLD},
              {"item_id": "a_future", "title": "Tomorrow", "first_seen": D + dt.timedelta(days=1)}]
    write_items(lake, items)
    vectors = {i: topic_vector(0 if i.startswith("a") else 1, DIM, rng) for i in [r["item_id"] for r in items]}
    write_embeddings(lake, settings.encoder_name, "item", vectors, D)
    write_embeddings(lake, settings.encoder_name, "user", {"u_profile": topic_vector(0, DIM, rng)}, D)

    events = []
    events += [("u_warm", i, "home", day1) for i in ITEMS_A[:4]] + [("u_warm", i, "home", day2) for i in ITEMS_A[:4]]
    events += [("u_warm", "a4", "search", day2), ("u_warm", "a_retired", "search", day2)]
    events += [("u_cold", "b0", "search", day2), ("u_cold", "b1", "search", day2)]
    events += [("u_hist_old", "b2", "home", OLD)]
    for n in range(6):  # a crowd so that the model learns the two topics
        topic = ITEMS_A if n % 2 == 0 else ITEMS_B
        events += [(f"u_crowd{n}", i, "home", day1) for i in topic[:5]]
    write_events(lake, events)
    users = [{"user_id": u, "first_seen": OLD, "last_seen": day2} for u in
             ["u_warm", "u_cold"] + [f"u_crowd{n}" for n in range(6)]]
    users += [{"user_id": "u_profile", "first_seen": D, "last_seen": D, "profile_text": "likes topic a"},
              {"user_id": "u_today", "first_seen": D, "last_seen": D},
              {"user_id": "u_new", "first_seen": D, "last_seen": D},
              {"user_id": "u_hist_old", "first_seen": OLD, "last_seen": D},     # empty profile row today
              {"user_id": "u_gone", "first_seen": OLD, "last_seen": OLD}]       # not seen for months: inactive
    write_users(lake, users)
    write_events(lake, [("u_today", "a5", "home", D)])  # today's partition: a first-time user
    registry = train(None, settings, D)
    score(None, settings, D)
    recs = lake.read_pandas("recommendations", filters=[("run_date", "=", D)])
    return settings, lake, registry, recs[recs.list == "main"]  # the 'new' lists have their own test


@contextlib.contextmanager
def scored_with(settings, changed):
    """The recommendations of D scored with the ``changed`` settings, for the block; the module's lists (scored
    with ``settings``) are written back after it, also when the block fails, so the other tests keep them."""
    score(None, changed, D)
    try:
        yield Lake.from_settings(settings).read_pandas("recommendations", filters=[("run_date", "=", D)])
    finally:
        score(None, settings, D)


def test_every_active_user_gets_a_list_and_the_right_segment(world):
    settings, lake, registry, recs = world
    segments = recs.groupby("user_id")["user_segment"].agg(set).to_dict()
    assert "u_gone" not in segments
    assert segments["u_warm"] == {"warm"} and segments["u_cold"] == {"cold"} and segments["u_new"] == {"new"}
    assert segments["u_profile"] == {"cold"} and segments["u_hist_old"] == {"cold"}
    assert all(segments[f"u_crowd{n}"] == {"cold"} for n in range(6)) and segments["u_today"] == {"cold"}


def test_only_users_without_history_or_profile_get_the_popular_and_fresh_list(world):
    settings, lake, registry, recs = world
    versions = recs.groupby("user_id")["model_version"].agg(set).to_dict()
    assert versions.pop("u_new") == {"popular"}
    assert all(v == {registry.model_version} for v in versions.values())
    new = recs[recs.user_id == "u_new"].sort_values("rank")
    assert set(new.reason) == {"popular in default", "new in the catalogue", "in the catalogue"}
    assert new[new.reason == "in the catalogue"].item_id.tolist() == ["b5"]  # nobody used it: closes the list
    assert new.iloc[4].item_id == "a_new" and new.iloc[4].reason == "new in the catalogue"  # every fifth slot is fresh


def test_profile_only_user_is_scored_from_the_profile(world):
    from coldstart.features import content_vectors
    from coldstart.model import Checkpoint, item_vectors, user_vectors

    settings, lake, registry, recs = world
    mine = recs[recs.user_id == "u_profile"].sort_values("rank")
    assert set(mine.reason) == {"matches your profile"}
    ckpt = Checkpoint.load(registry.checkpoint_uri)
    profile = content_vectors(lake, settings, "user")
    items = list(mine.item_id)
    catalogue = lake.read_pandas("items", columns=["item_id", "first_interaction"]).set_index("item_id").loc[items]
    fresh, pop = serving_state(lake, catalogue.reset_index(), D)
    V, bias = item_vectors(ckpt, items, content_vectors(lake, settings, "item"), fresh, pop)
    bias = bias + settings.cold_user_popularity_boost * pop  # a profile-only user is cold
    expected = user_vectors(ckpt, ["u_profile"], ["default"], profile)[0] @ V.T + bias
    assert np.allclose(mine.score, expected, rtol=1e-4, atol=1e-5)
    without = user_vectors(ckpt, ["u_profile"], ["default"], {})[0] @ V.T + bias
    assert not np.allclose(expected, without)  # the profile changed the scores
    old = recs[recs.user_id == "u_hist_old"]
    assert set(old.reason) == {"based on your earlier activity"} and "b2" not in set(old.item_id)


def test_scored_columns_leave_out_the_columns_zero_for_every_item():
    from coldstart.score import scored_columns

    assert scored_columns(np.array([[0.0, 1.0, 0.0, -0.0], [0.0, -2.0, 0.0, 0.0]], np.float32)).tolist() == [1]
    assert scored_columns(np.zeros((3, 4), np.float32)).tolist() == [0]  # never a matrix of width 0


def test_zero_item_columns_left_out_change_no_list(world, monkeypatch):
    """The stage scores on the item columns that are not zero for every item (a blend term switched off is
    all zeros): the same lists and scores as on every column."""
    import coldstart.score as score_module

    settings, lake, registry, recs = world
    real, widths = score_module.scored_columns, []

    def every_column(vectors):  # the first run on every column; the module's lists are written back pruned
        widths.append((vectors.shape[1], len(real(vectors))))
        return np.arange(vectors.shape[1]) if len(widths) == 1 else real(vectors)

    monkeypatch.setattr(score_module, "scored_columns", every_column)
    with scored_with(settings, settings) as every:
        every = every[every.list == "main"]
    assert widths[0][1] < widths[0][0]  # this world's model has terms at zero: the default run left columns out
    key = ["user_id", "scene", "rank"]
    a, b = recs.sort_values(key).reset_index(drop=True), every.sort_values(key).reset_index(drop=True)
    assert (a.item_id == b.item_id).all()
    assert np.allclose(a.score, b.score, rtol=1e-5, atol=1e-5)


def test_cold_users_scores_add_the_popularity_boost_and_warm_users_do_not(world):
    settings, lake, registry, recs = world
    with scored_with(settings, settings.replace(cold_user_popularity_boost=0.0)) as plain:
        plain = plain[plain.list == "main"]
    catalogue = lake.read_pandas("items", columns=["item_id", "first_interaction"])
    pop = dict(zip(catalogue.item_id, serving_state(lake, catalogue, D)[1]))
    both = recs.merge(plain, on=["user_id", "scene", "item_id"], suffixes=("", "_plain"))
    assert len(both) == len(recs)  # top_k 50 > catalogue: the same items, maybe in another order
    modelled = both[both.model_version != "popular"]
    added = modelled.score - modelled.score_plain
    expected = np.where(modelled.user_segment == "cold", settings.cold_user_popularity_boost, 0.0) \
        * modelled.item_id.map(pop).to_numpy()
    assert settings.cold_user_popularity_boost > 0 and {"cold", "warm"} <= set(modelled.user_segment)
    assert np.allclose(added, expected, atol=1e-5)
    assert (added[modelled.user_segment == "cold"] > 0).any()  # popular items exist: the boost moved scores
    popular = both[both.model_version == "popular"]
    assert np.allclose(popular.score, popular.score_plain)


def test_lists_hold_active_unconsumed_items_only_new_ones_included(world):
    settings, lake, registry, recs = world
    consumed = lake.read_pandas("interactions", columns=["user_id", "item_id"]).drop_duplicates()
    assert recs.merge(consumed, on=["user_id", "item_id"]).empty
    assert not {"a_retired", "a_future"} & set(recs.item_id)
    active = set(ITEMS_A + ITEMS_B + ["a_new"])
    for (user, _scene), group in recs.groupby(["user_id", "scene"]):
        mine = set(consumed.loc[consumed.user_id == user, "item_id"])
        assert set(group.item_id) == active - mine, user  # top_k 50 > catalogue: everything unconsumed
        assert list(group.sort_values("rank")["rank"]) == list(range(1, len(group) + 1))
        if group.model_version.iloc[0] != "popular":
            assert group.sort_values("rank").score.is_monotonic_decreasing
    flags = recs.drop_duplicates("item_id").set_index("item_id")["item_is_new"]
    assert flags["a_new"] and not flags[["a0", "b0"]].any()


def test_reasons_name_the_consumed_item_closest_to_the_recommended_one(world):
    from coldstart.features import content_vectors

    settings, lake, registry, recs = world
    content = content_vectors(lake, settings, "item")
    consumed = ITEMS_A[:5]  # u_warm's active consumed items (a_retired is inactive: no candidate for a reason)
    warm = recs[recs.user_id == "u_warm"]
    assert len(warm) == len(ITEMS_A + ITEMS_B + ["a_new"]) - len(consumed)  # every unconsumed active item
    for row in warm.itertuples():
        nearest = max(consumed, key=lambda i: float(content[row.item_id] @ content[i]))
        assert row.reason == f"similar to Title {nearest} you liked", (row.item_id, row.reason, nearest)


def test_scene_is_the_most_frequent_recent_one_and_more_by_setting(world, tmp_path):
    settings, lake, registry, recs = world
    scenes = recs.groupby("user_id")["scene"].agg(set).to_dict()
    assert scenes["u_warm"] == {"home"} and scenes["u_cold"] == {"search"} and scenes["u_profile"] == {"default"}
    with scored_with(settings, settings.replace(scenes_per_user=2, top_k=3)) as again:
        again = again[again.list == "main"]
        assert set(again.loc[again.user_id == "u_warm", "scene"]) == {"home", "search"}
        assert again.groupby(["user_id", "scene"]).size().max() == 3


def test_rerun_and_block_size_change_nothing(world):
    settings, lake, registry, recs = world
    with scored_with(settings, settings.replace(score_block_users=2)) as again:
        again = again[again.list == "main"]
    key = ["user_id", "scene", "rank"]
    cols = ["user_id", "scene", "rank", "item_id", "user_segment", "reason"]
    assert len(again) == len(recs)
    assert again.sort_values(key)[cols].reset_index(drop=True).equals(recs.sort_values(key)[cols].reset_index(drop=True))
    assert np.allclose(again.sort_values(key).score, recs.sort_values(key).score, rtol=1e-5, atol=1e-6)


def test_new_for_you_lists_rank_only_never_used_items_by_the_same_scores(world):
    settings, lake, registry, main = world
    recs = lake.read_pandas("recommendations", filters=[("run_date", "=", D)])
    new = recs[recs.list == "new"]
    # a_new is the one active item nobody has used: every (user, scene) list gets a shelf of it alone
    assert set(recs.list) == {"main", "new"} and set(new.item_id) == {"a_new"} and new.item_is_new.all()
    assert set(map(tuple, new[["user_id", "scene"]].to_numpy())) == set(map(tuple, main[["user_id", "scene"]].to_numpy()))
    assert (new["rank"] == 1).all()
    modelled = new[new.user_segment != "new"].merge(main[["user_id", "scene", "item_id", "score"]],
                                                    on=["user_id", "scene", "item_id"], suffixes=("", "_main"))
    assert len(modelled) == (new.user_segment != "new").sum()  # a_new is in every main list too (top_k > catalogue)
    assert np.allclose(modelled.score, modelled.score_main, rtol=1e-5, atol=1e-6)  # the same model scores
    prior = new[new.user_segment == "new"]
    assert set(prior.user_id) == {"u_new"} and set(prior.model_version) == {registry.model_version}
    assert set(prior.reason) == {"new in the catalogue"}
    with scored_with(settings, settings.replace(new_list_size=0)) as without:
        assert set(without.list) == {"main"}


@pytest.mark.parametrize("prefilter", [False, True], ids=["fp32", "prefilter"])
@pytest.mark.parametrize("items,k,tile", [(5000, 50, 64), (300, 20, 7), (37, 10, 3), (5, 10, 2)])
def test_kernel_equals_torch_topk_with_exclusions(items, k, tile, prefilter):
    rng = np.random.default_rng(items)
    users = 40
    V = rng.standard_normal((items, 16)).astype(np.float32)
    bias = rng.standard_normal(items).astype(np.float32)
    U = rng.standard_normal((users, 16)).astype(np.float32)
    consumed = [np.sort(rng.choice(items, size=rng.integers(0, items), replace=False)) for _ in range(users)]
    values, positions = top_k_scores(U, ItemMatrix(V, bias, prefilter=prefilter), k, consumed, tile=tile)
    full = torch.from_numpy(U @ V.T + bias)
    for row, cols in enumerate(consumed):
        full[row, torch.from_numpy(cols)] = float("-inf")
    ref = torch.topk(full, min(k, items), dim=1)
    assert np.allclose(values, ref.values.numpy(), rtol=1e-5, atol=1e-5)
    finite = np.isfinite(values)
    assert (finite.sum(1) == np.minimum(k, items - np.array([len(c) for c in consumed]))).all()
    for row in range(users):
        got = positions[row][finite[row]]
        assert len(set(got)) == len(got) and not set(got) & set(consumed[row]) and (got < items).all()
        assert np.allclose(full[row, torch.from_numpy(got)].numpy(), values[row][finite[row]], rtol=1e-5, atol=1e-5)


def test_group_prune_is_exact_with_ties():
    scores = torch.zeros(3, 64 * 200)
    scores[0, ::7] = 1.0           # many ties at the top
    scores[1, :] = float("-inf")   # nothing left
    scores[2, 5000] = 2.0
    values, columns = select_top_k(scores, 50)
    assert (values[0] == 1.0).all() and (columns[0] % 7 == 0).all()
    assert torch.isinf(values[1]).all()
    assert values[2, 0] == 2.0 and columns[2, 0] == 5000 and (values[2, 1:] == 0).all()


@pytest.mark.parametrize("width,k", [(64 * 200, 50), (64 * 40, 50), (64 * 60, 50), (100, 7)])
def test_selection_equals_a_stable_sort_ties_in_column_order(width, k):
    """Ids too, not only scores: among equal scores the lowest column comes first, on the threshold path
    (more than k groups) and on the full sort (k groups or fewer, or a width off the group size)."""
    rng = np.random.default_rng(width)
    scores = torch.from_numpy(rng.integers(-20, 20, size=(70, width)).astype(np.float32) / 4)  # many ties
    scores[3] = float("-inf")
    scores[4, :] = -0.0
    scores[4, 1::3] = 0.0  # -0.0 and 0.0 are one score
    scores[5, : width // 2] = float("-inf")
    values, columns = select_top_k(scores, k)
    ref_values, ref_columns = torch.sort(scores, dim=1, descending=True, stable=True)
    assert torch.equal(values, ref_values[:, :k])
    assert torch.equal(columns[np.isfinite(values.numpy())], ref_columns[:, :k][np.isfinite(values.numpy())])
    assert torch.equal(columns[4], torch.arange(k))


def test_kernel_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="do not match"):
        ItemMatrix(np.zeros((3, 4), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="consumed has 1 rows for 2 users"):
        top_k_scores(np.zeros((2, 4), np.float32), ItemMatrix(np.zeros((3, 4)), np.zeros(3)), 2, [np.empty(0)])


def test_popular_and_fresh_puts_a_new_item_in_every_fifth_slot():
    import pandas as pd

    ranked = pd.Series([5.0, 4, 3, 2, 1, 0.5], index=list("pqrstu"))
    assert popular_and_fresh(ranked, ["n1", "n2", "p"], 8) == ["p", "q", "r", "s", "n1", "t", "u", "n2"]
    assert popular_and_fresh(ranked.iloc[:0], ["n1"], 3, ["x", "y", "z"]) == ["n1", "x", "y"]
