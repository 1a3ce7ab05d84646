"""The train stage: what a warm night trains on (today's events + a recency-weighted replay sample)."""

import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow as pa

from coldstart.catalog import INTERACTIONS
from coldstart.lake import Lake


def test_replay_fractions_hit_the_budget_and_favour_recent_days():
    from coldstart.train import _replay_fractions

    ages = np.array([1.0, 2.0, 3.0, 10.0])
    counts = np.array([1400, 1400, 1400, 80000])
    fractions = _replay_fractions(ages, counts, 20000, half_life=2.0)
    assert abs((fractions * counts).sum() - 20000) < 1
    assert np.all(np.diff(fractions) <= 0) and fractions[0] > fractions[-1]
    assert fractions.max() <= 1.0
    # a budget larger than the history replays all of it
    assert np.array_equal(_replay_fractions(ages, counts, 10**6, half_life=2.0), np.ones(4))


def test_replay_sample_is_seeded_sized_and_recent_first(tiny_run):
    from coldstart.train import _replay_sample

    settings, plan, days, _ = tiny_run
    lake = Lake.from_settings(settings)
    columns = ["user_id", "item_id", "scene", "value", "event_type", "run_date"]
    history = lake.read_pandas("interactions", columns=columns, filters=[("run_date", "<", days[2])])
    budget = len(history) // 4
    small = settings.replace(train_replay_sample=budget)
    sample = _replay_sample(lake, small, days[2], columns)
    again = _replay_sample(lake, small, days[2], columns)
    assert sample.equals(again)
    assert 0.5 * budget < len(sample) < 1.5 * budget
    kept = sample.groupby("run_date").size() / history.groupby("run_date").size()
    assert kept.get(days[1], 0.0) > kept.get(days[0], 0.0)
    assert len(_replay_sample(lake, settings.replace(train_replay_sample=0), days[2], columns)) == 0


def test_replay_sample_reads_only_the_replay_days(tmp_path):
    from coldstart.config import Settings
    from coldstart.train import REPLAY_DAYS, _replay_sample

    lake = Lake(str(tmp_path / "lake"))
    today = dt.date(2024, 3, 20)
    for age in range(1, REPLAY_DAYS + 4):
        day = today - dt.timedelta(days=age)
        ts = dt.datetime.combine(day, dt.time(12), tzinfo=dt.timezone.utc)
        lake.replace_partition("interactions", pa.Table.from_pylist([
            {"event_id": f"{day}-{n}", "user_id": f"u{n}", "item_id": f"i{n}", "event_type": "view", "value": None,
             "scene": "default", "event_ts": ts, "event_date": day, "run_date": day, "source_file": "f",
             "ingested_at": ts} for n in range(20)], schema=INTERACTIONS.schema), run_date=day)
    settings = Settings.load(env={}, lake=str(tmp_path / "lake"), train_replay_sample=10**6)
    sample = _replay_sample(lake, settings, today, ["event_id", "user_id", "run_date"])
    # a budget above the week's events replays the whole week, and nothing older is read
    assert sorted(set(sample["run_date"])) == [today - dt.timedelta(days=a) for a in range(REPLAY_DAYS, 0, -1)]
    assert len(sample) == 20 * REPLAY_DAYS and sample["event_id"].is_unique
    assert isinstance(sample["user_id"].dtype, pd.CategoricalDtype)


def test_warm_holdout_is_a_seeded_few_percent_of_todays_events_only():
    from coldstart.model import VALIDATION_FRACTION, VALIDATION_MIN_EVENTS
    from coldstart.train import _holdout_of_today

    day = dt.date(2024, 3, 20)
    mask = _holdout_of_today(300, 200, 7, day)
    assert mask is not None and len(mask) == 500
    assert not mask[:300].any()  # the replay rows come first and are all trained on
    assert mask.sum() == round(VALIDATION_FRACTION * 200) == 50
    assert np.array_equal(mask, _holdout_of_today(300, 200, 7, day))  # seeded
    assert not np.array_equal(mask, _holdout_of_today(300, 200, 7, day + dt.timedelta(days=1)))  # by night
    assert _holdout_of_today(300, VALIDATION_MIN_EVENTS - 1, 7, day) is None  # too few to split


def test_warm_night_trains_on_todays_events(tiny_run):
    from coldstart.model import VALIDATION_FRACTION

    settings, plan, days, _ = tiny_run
    lake = Lake.from_settings(settings)
    registry = lake.read_pandas("model_registry").sort_values("run_date")
    warm = registry[registry["mode"] == "warm"].iloc[-1]
    metrics = json.loads(warm["metrics"])
    today = len(lake.read_pandas("interactions", columns=["event_id"], filters=[("run_date", "=", warm["run_date"])]))
    assert warm["run_date"] - dt.timedelta(days=1) == registry.iloc[-2]["run_date"]
    # a replay sample of earlier nights beside today's events, and only a few percent of today's events held
    # out (the default split would take a quarter of all the events, the replayed ones too)
    assert metrics["events"] > today >= 50
    assert metrics["n_val"] == round(VALIDATION_FRACTION * today)
    assert metrics["n_train"] == metrics["events"] - metrics["n_val"]
