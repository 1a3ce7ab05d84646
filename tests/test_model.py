"""Unit tests of coldstart.model: real torch, tiny synthetic data with topic structure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from coldstart.config import Settings
from coldstart.model import (
    Checkpoint,
    CheckpointError,
    checkpoint_files,
    TrainingData,
    grow,
    item_vectors,
    pool_user_content,
    train,
    user_vectors,
)

N_TOPICS = 3
CONTENT_DIM = 384
USERS_PER_TOPIC = 10
ITEMS_PER_TOPIC = 20


def _settings(**overrides) -> Settings:
    base = dict(model_dim=16, train_epochs_full=8, train_epochs_warm=2, train_batch_size=128,
                train_learning_rate=0.01, seed=7)
    base.update(overrides)
    return Settings.load(env={}, **base)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class World:
    """3 topics; every item belongs to one, every user likes one (90 % of their events)."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.centers = _unit(rng.normal(size=(N_TOPICS, CONTENT_DIM)))
        self.items: dict[str, int] = {}
        self.item_content: dict[str, np.ndarray] = {}
        for t in range(N_TOPICS):
            for k in range(ITEMS_PER_TOPIC):
                self.add_item(f"t{t}-i{k:02d}", t)
        self.users = {f"t{t}-u{k:02d}": t for t in range(N_TOPICS) for k in range(USERS_PER_TOPIC)}

    def content(self, topic: int) -> np.ndarray:
        return _unit(self.centers[topic] + 0.8 * self.rng.normal(size=CONTENT_DIM) / np.sqrt(CONTENT_DIM))

    def add_item(self, item_id: str, topic: int) -> None:
        self.items[item_id] = topic
        self.item_content[item_id] = self.content(topic)

    def events(self, users: list[str], per_user: int, scenes=("home", "search")):
        rng = self.rng
        by_topic = {t: [i for i, tt in self.items.items() if tt == t] for t in range(N_TOPICS)}
        all_items = list(self.items)
        rows = []
        for user in users:
            topic = self.users[user]
            for _ in range(per_user):
                liked = rng.random() < 0.9
                item = (by_topic[topic][rng.integers(len(by_topic[topic]))] if liked
                        else all_items[rng.integers(len(all_items))])
                rated = rng.random() < 0.6
                value = (4.5 if self.items[item] == topic else 1.5) + rng.normal(0, 0.3) if rated else np.nan
                rows.append((user, item, scenes[rng.integers(len(scenes))], value))
        u, i, s, v = zip(*rows)
        return np.array(u, dtype=object), np.array(i, dtype=object), np.array(s, dtype=object), np.array(v, np.float32)

    def data(self, users: list[str] | None = None, per_user: int = 20, **kw) -> TrainingData:
        u, i, s, v = self.events(users or list(self.users), per_user, **kw)
        user_content = pool_user_content(u, i, self.item_content)
        return TrainingData(u, i, s, v, self.item_content, user_content)


@pytest.fixture(scope="module")
def world() -> World:
    return World(0)


@pytest.fixture(scope="module")
def data(world) -> TrainingData:
    return world.data()


@pytest.fixture(scope="module")
def ckpt(data) -> Checkpoint:
    return train(data, _settings())


def _state(ck: Checkpoint) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in ck.model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
def test_pool_user_content_mean_profile_and_blend():
    a, b = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]
    items = {"x": a, "y": b}
    out = pool_user_content(["u1", "u1", "u2", "u3"], ["x", "y", "x", "missing"], items,
                            profile_content={"u2": b * 3, "u4": b})
    np.testing.assert_allclose(out["u1"], _unit(a + b), atol=1e-6)
    assert "u3" not in out                       # no content at all -> absent (callers use zeros)
    np.testing.assert_allclose(out["u4"], b)     # profile only -> the profile vector
    # one event, profile weight 2: (1/3) a + (2/3) b, normalised
    np.testing.assert_allclose(out["u2"], _unit(a / 3 + 2 * b / 3), atol=1e-6)
    for vec in out.values():
        assert vec.dtype == np.float32 and abs(np.linalg.norm(vec) - 1) < 1e-5
    weighted = pool_user_content(["u1", "u1"], ["x", "y"], items, weights=[3.0, 1.0])
    np.testing.assert_allclose(weighted["u1"], _unit(3 * a + b), atol=1e-6)


def test_training_reports_both_heads_and_learns(ckpt, data):
    m = ckpt.metrics
    assert m["mode"] == "cold" and m["epochs"] == 8 and ckpt.config["mode"] == "cold"
    assert m["n_val"] > 0 and m["n_train"] + m["n_val"] == len(data)
    assert m["val_interact_auc"] > 0.7
    assert m["val_interact_auc_cold_item"] > 0.65
    assert m["val_rating_rmse"] is not None and m["val_rating_rmse"] < m["val_rating_rmse_baseline"]
    assert len(m["train_loss"]) == 8 and m["train_loss"][-1] < m["train_loss"][0]
    json.dumps(m, allow_nan=False)
    assert list(ckpt.user_index) == sorted(ckpt.user_index)      # sorted, dense id maps
    assert list(ckpt.item_index.values()) == list(range(len(ckpt.item_index)))


def test_scoring_is_the_trained_logit(ckpt, data, world):
    users = ["t0-u00", "t1-u03", "nobody"]
    scenes = ["home", "search", "home"]
    items = ["t0-i01", "t2-i05"]
    history = pd.DataFrame({"user_id": ["t0-u00", "t0-u00", "nobody"], "item_id": ["t0-i02", "t0-i03", "t1-i04"]})
    model = ckpt.model
    picked = model.blend.clone()
    model.blend.copy_(torch.tensor([0.7, 0.3, 1.1, 0.5]))  # every closed-form term on, whatever the holdout picked
    try:
        U = user_vectors(ckpt, users, scenes, data.user_content, history)
        V, b = item_vectors(ckpt, items, world.item_content)
        _check_logits(ckpt, data, world, users, scenes, items, U, V, b)
    finally:
        model.blend.copy_(picked)


def _check_logits(ckpt, data, world, users, scenes, items, U, V, b):
    model = ckpt.model
    width = sum(model.arch[k] for k in ("dim", "id_dim", "ii_rank", "content_rank"))  # [u; h; ii; content]
    assert model.arch["ii_rank"] > 0 and model.arch["content_rank"] > 0 and model.ii_left.any()
    assert U.dtype == np.float32 and U.shape == (3, width) and V.shape == (2, width) and b.shape == (2,)
    scores = U @ V.T + b
    uc = torch.from_numpy(np.stack([data.user_content.get(u, np.zeros(CONTENT_DIM, np.float32)) for u in users]))
    ui = torch.tensor([ckpt.user_index.get(u, -1) for u in users])
    si = torch.tensor([ckpt.scene_index[s] for s in scenes])
    hist_rows = model.item_hist.weight.detach()
    pooled = torch.stack([hist_rows[[ckpt.item_index["t0-i02"], ckpt.item_index["t0-i03"]]].mean(0),
                          torch.zeros(16), hist_rows[ckpt.item_index["t1-i04"]]])
    left = model.ii_left
    ii_sum = torch.stack([left[[ckpt.item_index["t0-i02"], ckpt.item_index["t0-i03"]]].sum(0),
                          torch.zeros(left.shape[1]), left[ckpt.item_index["t1-i04"]]])
    for j, item in enumerate(items):
        ii = torch.full((3,), ckpt.item_index[item])
        ic = torch.from_numpy(np.stack([world.item_content[item]] * 3))
        with torch.no_grad():
            logit, _ = model(ui, uc, si, ii, ic, pooled, ii_sum)
        np.testing.assert_allclose(scores[:, j], logit.numpy(), rtol=1e-4, atol=1e-4)


def test_user_vectors_of_some_columns_are_the_full_ones_sliced(ckpt, data, monkeypatch):
    """``columns``: the same floats as the full vectors' columns, in the order asked, and a part none of whose
    columns is asked for is not computed."""
    users, scenes = ["t0-u00", "t1-u03", "nobody"], ["home", "search", "home"]
    history = pd.DataFrame({"user_id": ["t0-u00", "t0-u00", "nobody"], "item_id": ["t0-i02", "t0-i03", "t1-i04"]})
    model = ckpt.model
    dim, id_dim, ii_rank, content_rank = (int(model.arch[k]) for k in ("dim", "id_dim", "ii_rank", "content_rank"))
    ii_start, width = dim + id_dim, dim + id_dim + ii_rank + content_rank
    full = user_vectors(ckpt, users, scenes, data.user_content, history)
    assert full.shape == (3, width) and full[:, ii_start:ii_start + ii_rank].any() and full[:, ii_start + ii_rank:].any()

    def not_computed(*args, **kwargs):
        raise AssertionError("a part none of whose columns is wanted was computed")

    for columns, skipped in [(np.arange(width), []),
                             (np.r_[:ii_start, ii_start + ii_rank:width], ["ii_sums"]),
                             ([width - 1, 0, ii_start + 1, dim, ii_start + ii_rank, 3], []),
                             ([dim + 2, dim], ["user_vec", "ii_sums", "content_projection"])]:
        with monkeypatch.context() as patch:
            for name in skipped:
                patch.setattr(type(model), name, not_computed)
            some = user_vectors(ckpt, users, scenes, data.user_content, history, columns=columns)
        assert some.dtype == np.float32 and some.shape == (3, len(columns))
        assert some.tobytes() == full[:, columns].tobytes(), columns
    with pytest.raises(ValueError, match="columns"):
        user_vectors(ckpt, users, scenes, data.user_content, history, columns=[width])


def test_new_text_only_item_scores_higher_for_users_of_its_topic(ckpt, data, world):
    for topic in range(N_TOPICS):
        item_id = f"new-item-topic{topic}"
        content = {item_id: world.content(topic)}       # text only: never in the training data
        assert item_id not in ckpt.item_index
        V, b = item_vectors(ckpt, [item_id], content)
        users = list(world.users)
        U = user_vectors(ckpt, users, "home", data.user_content)
        scores = (U @ V.T + b)[:, 0]
        fans = np.array([world.users[u] == topic for u in users])
        assert scores[fans].min() > scores[~fans].max(), topic


def test_unknown_user_with_profile_only_and_unknown_scene(ckpt, data, world):
    profile = {"fresh-user": world.centers[1].astype(np.float32)}
    content = pool_user_content([], [], world.item_content, profile_content=profile)
    U = user_vectors(ckpt, ["fresh-user"], ["never-seen-scene"], content)
    assert np.all(np.isfinite(U))
    items = list(world.items)
    V, b = item_vectors(ckpt, items, world.item_content)
    scores = (U @ V.T + b)[0]
    topics = np.array([world.items[i] for i in items])
    assert scores[topics == 1].mean() > scores[topics != 1].mean()
    # no content, no id: still a finite vector (scene + biases only)
    assert np.all(np.isfinite(user_vectors(ckpt, ["ghost"], ["home"], {})))
    # an unknown scene is the mean of the known scenes: same as a scene grown into the table
    grown = grow(ckpt, [], [], ["never-seen-scene"])
    U2 = user_vectors(grown, ["t0-u01"], ["never-seen-scene"], data.user_content)
    U1 = user_vectors(ckpt, ["t0-u01"], ["never-seen-scene"], data.user_content)
    np.testing.assert_allclose(U1, U2, rtol=1e-5, atol=1e-6)


def test_grow_keeps_old_rows_bit_for_bit(ckpt, world):
    before = _state(ckpt)
    grown = grow(ckpt, ["zz-new-user", "t0-u00", "aa-new-user"], ["new-item"], ["home", "zz-scene", "aa-scene"])
    after = grown.model.state_dict()
    # prior untouched
    for k, v in ckpt.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    nu, ni, ns = len(ckpt.user_index), len(ckpt.item_index), len(ckpt.scene_index)
    assert torch.equal(after["user_id.weight"][:nu], before["user_id.weight"])
    assert torch.equal(after["item_id.weight"][:ni], before["item_id.weight"])
    assert torch.equal(after["item_id_bias.weight"][:ni], before["item_id_bias.weight"])
    assert torch.equal(after["item_hist.weight"][:ni], before["item_hist.weight"])
    assert torch.equal(after["item_target.weight"][:ni], before["item_target.weight"])
    assert torch.equal(after["scene.weight"][:ns], before["scene.weight"])
    assert after["user_id.weight"].shape[0] == nu + 2 and not after["user_id.weight"][nu:].any()
    assert not after["item_id.weight"][ni:].any() and not after["item_id_bias.weight"][ni:].any()
    assert not after["item_hist.weight"][ni:].any() and not after["item_target.weight"][ni:].any()
    for k in ("ii_left", "ii_right"):  # the closed-form item-to-item factors: old rows kept, new rows zero
        assert torch.equal(after[k][:ni], before[k]) and not after[k][ni:].any()
    mean_scene = before["scene.weight"].mean(0)
    for row in after["scene.weight"][ns:]:
        assert torch.equal(row, mean_scene)
    # new ids are appended in sorted order, old positions unchanged
    assert grown.user_index["aa-new-user"] == nu and grown.user_index["zz-new-user"] == nu + 1
    assert grown.scene_index["aa-scene"] == ns and grown.scene_index["zz-scene"] == ns + 1
    assert all(grown.user_index[k] == v for k, v in ckpt.user_index.items())
    for k, v in before.items():
        if k not in ("user_id.weight", "item_id.weight", "item_id_bias.weight", "item_hist.weight", "item_target.weight",
                     "scene.weight", "ii_left", "ii_right"):
            assert torch.equal(after[k], v), k
    # a grown item (zero id row) scores exactly like an unknown one (content only)
    content = {"new-item": world.content(2)}
    v_old, b_old = item_vectors(ckpt, ["new-item"], content)
    v_new, b_new = item_vectors(grown, ["new-item"], content)
    np.testing.assert_array_equal(v_old, v_new)
    np.testing.assert_array_equal(b_old, b_new)


def test_checkpoint_round_trip_and_overwrite(ckpt, tmp_path):
    path = tmp_path / "models" / "2024-01-02"
    checksum = ckpt.save(path)
    assert len(checksum) == 64 and ckpt.checksum == checksum
    files = checkpoint_files(path)
    assert sorted(files) == ["MANIFEST.json", "config.json", "ids.json", "metrics.json", "model.pt"]
    # the files sit under one content-named prefix; the manifest at the top publishes them
    assert sorted(p.name for p in path.iterdir()) == ["MANIFEST.json", Path(files["model.pt"]).parent.name]
    loaded = Checkpoint.load(path, expected_checksum=checksum)
    assert loaded.checksum == checksum
    assert loaded.user_index == ckpt.user_index and loaded.item_index == ckpt.item_index
    assert loaded.scene_index == ckpt.scene_index
    assert loaded.metrics == ckpt.metrics and loaded.config == ckpt.config
    for k, v in ckpt.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    # same content -> same checksum; overwriting the same date is a safe swap, no leftovers
    assert loaded.save(path) == checksum
    grown = grow(ckpt, ["another"], [], [])
    other = grown.save(path)
    assert other != checksum and Checkpoint.load(path).user_index == grown.user_index
    assert sorted(p.name for p in path.parent.iterdir()) == ["2024-01-02"]
    assert len(list(path.iterdir())) == 2  # the replaced prefix is gone
    with pytest.raises(CheckpointError):
        Checkpoint.load(path, expected_checksum=checksum)


@pytest.mark.parametrize("damage", ["flip_model", "flip_ids", "delete_metrics", "delete_manifest", "edit_manifest"])
def test_corrupt_checkpoint_is_never_loaded(ckpt, tmp_path, damage):
    path = tmp_path / "ck"
    ckpt.save(path)
    files = {name: Path(uri) for name, uri in checkpoint_files(path).items()}
    if damage.startswith("flip_"):
        target = files["model.pt" if damage == "flip_model" else "ids.json"]
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        target.write_bytes(bytes(raw))
    elif damage == "delete_metrics":
        files["metrics.json"].unlink()
    elif damage == "delete_manifest":
        (path / "MANIFEST.json").unlink()
    else:
        manifest = json.loads((path / "MANIFEST.json").read_text())
        manifest["files"]["config.json"] = "0" * 64
        (path / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError):
        Checkpoint.load(path)


def test_missing_checkpoint_raises(tmp_path):
    with pytest.raises(CheckpointError):
        Checkpoint.load(tmp_path / "nothing-here")


def test_same_seed_same_checkpoint(world, tmp_path):
    d = world.data(per_user=8)
    s = _settings(train_epochs_full=2)
    a, b = train(d, s), train(d, s)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert a.save(tmp_path / "a") == b.save(tmp_path / "b")
    c = train(d, _settings(train_epochs_full=2, seed=8))
    assert not torch.equal(c.model.state_dict()["user_tower.0.weight"], sa["user_tower.0.weight"])


def test_warm_start_grows_and_fine_tunes_from_prior(ckpt, world, tmp_path):
    ckpt.save(tmp_path / "prior")
    prior = Checkpoint.load(tmp_path / "prior")
    before = _state(prior)
    world2 = World(0)  # same topics and items as `world`
    world2.add_item("t1-brand-new", 1)
    world2.users["t2-newcomer"] = 2
    day_users = ["t0-u00", "t1-u01", "t2-newcomer"]
    u, i, s, v = world2.events(day_users, 15, scenes=("home", "campaign"))
    day = TrainingData(u, i, s, v, world2.item_content, pool_user_content(u, i, world2.item_content))
    settings = _settings()
    warm = train(day, settings, prior=prior)
    assert warm.metrics["mode"] == "warm" and warm.metrics["epochs"] == settings.train_epochs_warm
    assert warm.config["parent_checksum"] == prior.checksum and warm.config["mode"] == "warm"
    assert "t2-newcomer" in warm.user_index and "campaign" in warm.scene_index
    # prior is not modified
    for k, val in prior.model.state_dict().items():
        assert torch.equal(val, before[k]), k
    after = warm.model.state_dict()
    # users absent from the day's data keep their prior rows exactly; those present moved
    uw = after["user_id.weight"]
    for user, row in prior.user_index.items():
        same = torch.equal(uw[warm.user_index[user]], before["user_id.weight"][row])
        assert same == (user not in day_users), user
    # it started from the prior: towers moved a little, not like a fresh model
    w0, w1 = before["user_tower.0.weight"], after["user_tower.0.weight"]
    assert not torch.equal(w0, w1)
    cold = train(day, settings)
    assert (w1 - w0).norm() < 0.5 * (cold.model.state_dict()["user_tower.0.weight"] - w0).norm()
    # and still recommends by topic for the old users
    items = list(world.items)
    V, b = item_vectors(warm, items, world2.item_content)
    U = user_vectors(warm, ["t0-u05", "t1-u05"], "home", pool_user_content(*world.events(["t0-u05", "t1-u05"], 10)[:2],
                                                                            world.item_content))
    topics = np.array([world.items[x] for x in items])
    scores = U @ V.T + b
    assert scores[0, topics == 0].mean() > scores[0, topics == 1].mean()
    assert scores[1, topics == 1].mean() > scores[1, topics == 0].mean()


def test_the_id_tables_learn_at_their_own_rate(ckpt, world):
    """train_id_learning_rate drives the id tables (sparse Adam), train_learning_rate the towers."""
    u, i, s, v = world.events(["t0-u00", "t1-u01"], 15)
    day = TrainingData(u, i, s, v, world.item_content, pool_user_content(u, i, world.item_content))
    before = _state(ckpt)
    moved = {}
    for id_rate in (1e-9, 1e-2):
        after = train(day, _settings(train_id_learning_rate=id_rate), prior=ckpt).model.state_dict()
        moved[id_rate] = {k: float((after[k] - before[k]).abs().max()) for k in ("user_id.weight", "item_hist.weight",
                                                                                  "user_tower.0.weight")}
    assert moved[1e-9]["user_id.weight"] < 1e-6 and moved[1e-9]["item_hist.weight"] < 1e-6
    assert moved[1e-2]["user_id.weight"] > 1e-3 and moved[1e-2]["item_hist.weight"] > 1e-3
    assert moved[1e-9]["user_tower.0.weight"] > 1e-3  # the towers kept their own rate


def test_warm_start_rejects_an_incompatible_prior(ckpt):
    u = np.array(["a"] * 3, dtype=object)
    i = np.array(["x", "y", "x"], dtype=object)
    small = {"x": np.ones(8, np.float32), "y": np.ones(8, np.float32)}
    with pytest.raises(CheckpointError):
        train(TrainingData(u, i, np.array(["home"] * 3, dtype=object), None, small, {}), _settings(), prior=ckpt)


def test_dataframe_content_and_zero_epochs(world, ckpt):
    frame = pd.DataFrame({"item_id": list(world.item_content), "embedding": list(world.item_content.values())})
    u = np.array(["t0-u00", "new-user"], dtype=object)
    i = np.array(["t0-i00", "t1-i00"], dtype=object)
    d = TrainingData(u, i, np.array(["home", "home"], dtype=object), np.array([4.0, np.nan]), frame,
                     pd.Series({"t0-u00": world.centers[0]}))
    warm = train(d, _settings(), prior=ckpt, epochs=0)   # grow only
    assert warm.metrics["epochs"] == 0 and warm.metrics["n_val"] == 0 and warm.metrics["val_interact_auc"] is None
    assert "new-user" in warm.user_index
    V1, b1 = item_vectors(ckpt, ["t1-i00"], frame)
    V2, b2 = item_vectors(warm, ["t1-i00"], world.item_content)
    np.testing.assert_array_equal(V1, V2)
    np.testing.assert_array_equal(b1, b2)


# ---------------------------------------------------------------------------------------------
# pooled history (item_hist) and freshness
def test_the_item_to_item_term_is_picked_on_the_held_out_rows():
    """Towers that barely trained (one epoch at a tiny rate) cannot know the pairs; the closed-form EASE term
    can, the held-out rows show it, so its weight is picked above 0 and strangers get b_k after a_k. (40 pairs:
    the held-out Recall@20 must have more than 20 candidates to tell anything.)"""
    pairs = 40
    data, content = _pairs_world(pairs)
    ckpt = train(data, _settings(train_epochs_full=1, train_learning_rate=1e-6, train_id_learning_rate=1e-6))
    chosen = ckpt.metrics["blend"]
    assert chosen["ii"] > 0 and float(ckpt.model.blend[0]) == pytest.approx(chosen["ii"])
    assert chosen["recall"] > chosen["recall_tower"]
    assert _pair_hits(ckpt, content, pairs) >= pairs - 2
    ckpt.model.blend.zero_()  # the same model without the term: the towers alone do not find the pairs
    assert _pair_hits(ckpt, content, pairs) <= pairs // 4


def test_history_bags_select_and_leave_one_out_membership():
    from coldstart.model import HistoryBags as _Bags

    bags = _Bags.build(np.array([0, 0, 2, 2, 2, 0, -1]), np.array([5, 3, 1, 5, 5, 3, 2]), 3)
    flat, offsets, counts = bags.select(torch.tensor([2, 0, 1]))
    assert flat.tolist() == [1, 5, 3, 5] and offsets.tolist() == [0, 2, 4] and counts.tolist() == [2, 2, 0]
    assert bags.contains(np.array([0, 0, 1, 2, 2]), np.array([3, 1, 1, 1, -1])).tolist() == [True, False, False, True, False]


def _pairs_world(pairs: int = 12):
    """Items in pairs (a_k, b_k) with uninformative content; whoever took a_k also took b_k."""
    rng = np.random.default_rng(3)
    content = {f"{side}{k}": _unit(rng.normal(size=CONTENT_DIM)) for k in range(pairs) for side in "ab"}
    users, items = [], []
    for n in range(20 * pairs):
        k = n % pairs
        users += [f"u{n}", f"u{n}"]
        items += [f"a{k}", f"b{k}"]
    u, i = np.array(users, dtype=object), np.array(items, dtype=object)
    return TrainingData(u, i, np.array(["home"] * len(u), dtype=object), None, content, {}), content


def _pair_hits(ckpt, content, pairs: int = 12) -> int:
    """How many strangers with a_k in their history get b_k first among the b items."""
    V, bias = item_vectors(ckpt, [f"b{k}" for k in range(pairs)], content)
    hits = 0
    for k in range(pairs):
        U = user_vectors(ckpt, ["stranger"], "home", {}, pd.DataFrame({"user_id": ["stranger"], "item_id": [f"a{k}"]}))
        hits += int(np.argmax(U[0] @ V.T + bias) == k)
    return hits


def test_pooled_history_recommends_what_follows_a_users_items():
    """A user the model has never seen, with a_k in their history, must get b_k first: only the pooled
    history knows (the closed-form item-to-item term held off, so the trained tables must learn it)."""
    pairs = 12
    data, content = _pairs_world(pairs)
    ckpt = train(data, _settings(train_epochs_full=30, train_id_dropout=0.0, train_learning_rate=0.03))
    ckpt.model.blend.zero_()
    hits = _pair_hits(ckpt, content, pairs)
    assert hits >= pairs - 2, hits
    # without the history the stranger has nothing to go on: one vector for every k
    assert np.allclose(user_vectors(ckpt, ["stranger"], "home", {}), user_vectors(ckpt, ["stranger"], "home", {}, None))


def test_fresh_items_get_the_learned_freshness_bias(world):
    """Day 2's events go mostly to items that debut that day: the model learns a positive fresh bias and
    item_vectors adds it exactly to the items flagged fresh."""
    rng = np.random.default_rng(5)
    old = [i for i in world.items if i.endswith(("0", "1", "2", "3", "4"))]
    new = [i for i in world.items if i not in old]
    users = list(world.users)
    rows = [(u, old[rng.integers(len(old))], 1) for u in users for _ in range(10)]          # day 1: old items only
    for user in users:                                                                        # day 2: mostly debuts
        for _ in range(10):
            pool = new if rng.random() < 0.7 else old
            rows.append((user, pool[rng.integers(len(pool))], 2))
    u, i, d = (np.array(x, dtype=object) for x in zip(*rows))
    first = pd.Series(d.astype(int)).groupby(i).min().to_dict()
    data = TrainingData(u, i, np.array(["home"] * len(u), dtype=object), None, world.item_content,
                        pool_user_content(u, i, world.item_content), event_days=d.astype(np.int64),
                        item_first_seen={k: 0 for k in world.items}, item_first_interaction=first, fresh_from=1,
                        item_day_counts=pd.DataFrame({"item_id": [], "day": [], "count": []}))
    ckpt = train(data, _settings(train_learning_rate=0.03, train_epochs_full=12))
    learned = float(ckpt.model.fresh_bias.detach())
    assert learned > 0.3
    _, plain = item_vectors(ckpt, new[:3], world.item_content)
    _, flagged = item_vectors(ckpt, new[:3], world.item_content, fresh=[True, False, True], pop=[0.0, 0.0, 0.0])
    np.testing.assert_allclose(flagged - plain, [learned, 0.0, learned], rtol=1e-5, atol=1e-6)
    # without event days nothing is learned about freshness
    assert float(train(world.data(), _settings(train_epochs_full=1)).model.fresh_bias.detach()) == 0.0


def test_freshness_inputs_need_all_parts(world):
    u, i, s, v = world.events(["t0-u00"], 3)
    with pytest.raises(ValueError, match="item_day_counts"):
        TrainingData(u, i, s, v, world.item_content, {}, event_days=np.zeros(3, np.int64))


def test_recent_popularity_halves_every_half_life():
    from coldstart.model import POPULARITY_HALF_LIFE_DAYS, recent_popularity

    counts = pd.DataFrame({"item_id": ["a", "a", "b", "zz"], "day": [10, 7, 10, 10], "count": [4, 8, 1, 9]})
    pop = recent_popularity(counts, ["a", "b", "c"], [11, 10])
    h = POPULARITY_HALF_LIFE_DAYS
    np.testing.assert_allclose(pop[0], np.log1p([4 + 8 * 0.5 ** (3 / h), 1, 0]), rtol=1e-6)
    np.testing.assert_allclose(pop[1], np.log1p([8 * 0.5 ** (2 / h), 0, 0]), rtol=1e-6)  # a day's own counts never count


def test_yesterdays_popularity_is_learned_where_ids_cannot_tell(world):
    """Item popularity drifts (a random walk of log-weights from day to day) and items of a topic share one
    content vector: over the whole data the id biases average the drift out and content cannot tell the
    items apart, but yesterday's counts say which items are hot today."""
    rng = np.random.default_rng(9)
    items = list(world.items)
    content = {k: world.centers[t] for k, t in world.items.items()}
    log_weight = rng.normal(size=len(items))
    rows = []
    for day in range(1, 9):
        log_weight = log_weight + rng.normal(scale=0.5, size=len(items))
        p = np.exp(log_weight) / np.exp(log_weight).sum()
        for user in world.users:
            for item in rng.choice(len(items), size=8, p=p):
                rows.append((user, items[item], day))
    u, i, d = (np.array(x, dtype=object) for x in zip(*rows))
    d = d.astype(np.int64)
    counts = pd.DataFrame({"item_id": i, "day": d}).value_counts().rename("count").reset_index()
    first = pd.Series(d).groupby(i).min().to_dict()
    data = TrainingData(u, i, np.array(["home"] * len(u), dtype=object), None, content,
                        pool_user_content(u, i, content), event_days=d,
                        item_first_seen={k: 0 for k in items}, item_first_interaction=first, fresh_from=1,
                        item_day_counts=counts)
    ckpt = train(data, _settings(train_learning_rate=0.03, train_epochs_full=10))
    assert float(ckpt.model.pop_weight.detach()) > 0.2


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_crash_before_the_manifest_leaves_the_published_checkpoint(ckpt, tmp_path, where, request, monkeypatch):
    """Publishing is the manifest's one atomic put: a save that dies before it changes nothing a reader sees
    (on S3 there is no rename to lean on)."""
    from coldstart import storage

    if where == "s3":
        request.getfixturevalue("s3_endpoint")
        root = f"s3://coldstart/ckpt-{tmp_path.name}/2024-01-02"
    else:
        root = str(tmp_path / "2024-01-02")
    checksum = ckpt.save(root)
    assert storage.read_bytes(checkpoint_files(root)["MANIFEST.json"])
    grown = grow(ckpt, ["late-user"], [], [])
    real = storage.write_bytes

    def crash(uri, data, **kwargs):
        if uri.endswith("MANIFEST.json"):
            raise OSError("killed before publishing")
        real(uri, data, **kwargs)

    monkeypatch.setattr(storage, "write_bytes", crash)
    with pytest.raises(OSError, match="killed"):
        grown.save(root)
    monkeypatch.undo()
    loaded = Checkpoint.load(root, expected_checksum=checksum)
    assert loaded.user_index == ckpt.user_index
    assert Checkpoint.load(root).checksum == checksum
    # nothing published at a date never saved
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Checkpoint.load(root.replace("2024-01-02", "2024-01-03"))
