"""Data-parallel training through pyspark's TorchDistributor (train_processes = 2, gloo on the CPU, local mode)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from coldstart.config import Settings
from coldstart.model import TrainingData, item_vectors, pool_user_content, train, user_vectors
from coldstart.model.distributed import train_distributed
from coldstart.ranking import ItemMatrix, top_k_scores

TOPICS, ITEMS_PER_TOPIC, USERS = 4, 30, 80


def _settings(root, **overrides) -> Settings:
    base = dict(model_dim=16, train_epochs_full=8, train_batch_size=128, train_learning_rate=0.01, seed=7,
                models=str(root), device="cpu")
    return Settings.load(env={}, **{**base, **overrides})


@pytest.fixture(scope="module")
def world():
    """Users who like one topic (85 % of their events); day 1 to train on, day 2 to recall."""
    rng = np.random.default_rng(11)
    centers = rng.standard_normal((TOPICS, 384))
    items = [f"t{t}-i{k:02d}" for t in range(TOPICS) for k in range(ITEMS_PER_TOPIC)]
    topic_of = {i: int(i[1]) for i in items}
    content = {i: (centers[topic_of[i]] + 0.9 * rng.standard_normal(384)).astype(np.float32) for i in items}
    content = {i: v / np.linalg.norm(v) for i, v in content.items()}
    users = [f"u{n:03d}" for n in range(USERS)]
    taste = {u: n % TOPICS for n, u in enumerate(users)}

    def day(per_user):
        rows = []
        for u in users:
            for _ in range(per_user):
                t = taste[u] if rng.random() < 0.85 else int(rng.integers(TOPICS))
                rows.append((u, f"t{t}-i{int(rng.integers(ITEMS_PER_TOPIC)):02d}"))
        return rows

    train_rows, next_rows = day(12), day(4)
    u, i = (np.array(x, dtype=object) for x in zip(*train_rows))
    rated = rng.random(len(u)) < 0.5
    values = np.where(rated, np.where([topic_of[x] == taste[y] for x, y in zip(i, u)], 4.5, 1.5), np.nan)
    data = TrainingData(u, i, np.where(rng.random(len(u)) < 0.5, "home", "search").astype(object),
                        values.astype(np.float32), content, pool_user_content(u, i, content))
    consumed = {}
    for user, item in train_rows:
        consumed.setdefault(user, set()).add(item)
    truth = {}
    for user, item in next_rows:
        if item not in consumed[user]:
            truth.setdefault(user, set()).add(item)
    return data, items, content, consumed, truth


def _recall_at_20(ckpt, world) -> np.ndarray:
    data, items, content, consumed, truth = world
    users = sorted(truth)
    history = {"user_id": data.user_ids, "item_id": data.item_ids}
    import pandas as pd

    u = user_vectors(ckpt, users, "home", pool_user_content(data.user_ids, data.item_ids, content),
                     history=pd.DataFrame(history))
    v, b = item_vectors(ckpt, items, content)
    position = {item: n for n, item in enumerate(items)}
    masked = [np.array(sorted(position[i] for i in consumed[user]), dtype=np.int64) for user in users]
    _, top = top_k_scores(u, ItemMatrix(v, b), 20, masked)
    return np.array([len({items[p] for p in row} & truth[user]) / len(truth[user]) for row, user in zip(top, users)])


def test_two_ranks_match_one_process_and_repeat_exactly(spark, world, tmp_path):
    data = world[0]
    one = train(data, _settings(tmp_path))
    two = train_distributed(spark, data, _settings(tmp_path, train_processes=2))
    again = train_distributed(spark, data, _settings(tmp_path, train_processes=2))
    assert two.save(tmp_path / "a") == again.save(tmp_path / "b")  # same seed and N: the same checkpoint
    assert two.config["train_processes"] == 2 and two.metrics["n_train"] == one.metrics["n_train"]
    # sharded by user: rank 0 evaluates on its own users' held-out rows, about half of them
    assert 0.25 * one.metrics["n_val"] < two.metrics["n_val"] < 0.75 * one.metrics["n_val"]
    assert two.metrics["epochs"] == 8
    r1, r2 = _recall_at_20(one, world), _recall_at_20(two, world)
    chance = 20 / (TOPICS * ITEMS_PER_TOPIC)
    assert r1.mean() > 2 * chance and r2.mean() > 2 * chance, (r1.mean(), r2.mean())
    diff = r2 - r1  # paired by user: within noise = within 3 standard errors of the mean difference
    assert abs(diff.mean()) <= 3 * diff.std(ddof=1) / np.sqrt(len(diff)) + 0.01, (r1.mean(), r2.mean())
    print(f"next-day Recall@20: N=1 {r1.mean():.4f}, N=2 {r2.mean():.4f} over {len(r1)} users")


def test_one_process_needs_no_distributor(tmp_path, world):
    with pytest.raises(ValueError, match="train_processes >= 2"):
        train_distributed(None, world[0], _settings(tmp_path))


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"the driver {what} with train_processes=2")
    return refuse


def test_the_train_stage_on_two_ranks_leaves_the_users_data_to_the_ranks(spark, tmp_path, monkeypatch):
    """A cold night then a warm one (grown id tables) with train_processes=2, while this process - the driver;
    the ranks are processes of their own - refuses to assemble the events or the users' content and to load a
    checkpoint: the ranks read their shards, build their users' inputs, load the prior and publish."""
    from conftest import START, make_settings

    from coldstart import train as train_stage
    from coldstart.lake import Lake
    from coldstart.model import Checkpoint
    from coldstart.pipeline import run_days
    from coldstart.replay import replay

    settings = make_settings(tmp_path, baselines=False, train_processes=2, spark_master="local[2]")
    days = replay(settings.landing, START, days=2, users_limit=15).all_days[:2]
    with monkeypatch.context() as m:
        m.setattr(train_stage, "_training_events", _refuse("read the training events"))
        m.setattr(train_stage, "_training_data", _refuse("built the TrainingData"))
        m.setattr(train_stage, "user_content", _refuse("pooled the users' content"))
        m.setattr(Checkpoint, "load", classmethod(_refuse("loaded a checkpoint")))
        for day in days:
            run_days(settings, [day], stages=("ingest", "embed", "train"), spark=spark)
    lake = Lake.from_settings(settings)
    reg = lake.read_pandas("model_registry").sort_values("run_date").reset_index(drop=True)
    assert list(reg["mode"]) == ["cold", "warm"] and (reg["status"] == "ready").all()
    cold, warm = (Checkpoint.load(uri, expected_checksum=c) for uri, c in zip(reg["checkpoint_uri"], reg["checksum"]))
    assert cold.config["train_processes"] == warm.config["train_processes"] == 2
    assert warm.config["parent_checksum"] == cold.checksum
    events = lake.read_pandas("interactions", columns=["user_id", "run_date"])
    first = sorted(set(events[events["run_date"] == days[0]]["user_id"]))
    assert list(cold.user_index) == first  # every rank built the same sorted id table
    grown = sorted(set(events["user_id"]) - set(first))
    assert grown and list(warm.user_index) == first + grown  # the prior's rows, then the new users, sorted
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".train-ranks-")]  # scratch removed
    metrics = json.loads(reg["metrics"].iloc[1])
    assert metrics["n_train"] + metrics["n_val"] <= metrics["events"] and metrics["n_train"] > metrics["n_val"] > 0
