"""The replay of the bundled sample: day counts, the catalog landing rule, tags, markers."""

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from coldstart.landing import MARKER, day_dir
from coldstart.replay import BOOTSTRAP_SHARE, MAX_LEAD_DAYS, replay, sample_data_dir

START = dt.date(2024, 1, 1)


@pytest.fixture(scope="module")
def landed(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    plan = replay(root, START, days=14, seed=7)
    events = {d: pd.read_csv(day_dir(root, "interactions", d) / "part-0.csv", dtype={"user_id": str, "item_id": str})
              for d in plan.all_days}
    items = {d: [json.loads(ln) for ln in (day_dir(root, "items", d) / "part-0.jsonl").read_text().splitlines()]
             for d in plan.all_days}
    return root, plan, events, items


def test_bootstrap_then_equal_days(landed):
    root, plan, events, _ = landed
    total = sum(len(e) for e in events.values())
    ratings = pd.read_csv(sample_data_dir() / "ratings.csv")
    assert total == len(ratings)
    assert len(events[plan.bootstrap_day]) == round(total * BOOTSTRAP_SHARE)
    sizes = [len(events[plan.day(i)]) for i in range(1, 15)]
    assert max(sizes) - min(sizes) <= 1


def test_events_are_rate_events_inside_their_day_in_order(landed):
    _, plan, events, _ = landed
    for day, frame in events.items():
        ts = pd.to_datetime(frame["ts"], utc=True)
        assert (ts.dt.date == day).all() and ts.is_monotonic_increasing
        assert set(frame["event_type"]) == {"rate"} and frame["value"].between(0.5, 5).all()
    ids = pd.concat(events.values())["event_id"]
    assert ids.is_unique


def test_every_day_folder_is_complete(landed):
    root, plan, _, _ = landed
    for day in plan.all_days:
        for source in ("interactions", "items"):
            assert (day_dir(root, source, day) / MARKER).exists()


def test_catalog_row_lands_before_first_interaction(landed):
    _, plan, events, items = landed
    first_event = {}
    for day in plan.all_days:
        for item in events[day]["item_id"]:
            first_event.setdefault(item, day)
    first_row = {}
    for day in plan.all_days:
        for row in items[day]:
            first_row.setdefault(row["item_id"], day)
    assert set(first_event) <= set(first_row)
    leads = np.array([(first_event[i] - first_row[i]).days for i in first_event if first_event[i] > plan.day(1)])
    assert (leads >= 0).all() and leads.max() <= MAX_LEAD_DAYS
    # geometric lead, mean about 3 days (those cut at the bootstrap day excluded by the filter above)
    assert 1.5 < leads.mean() < 4.5
    never = set(first_row) - set(first_event)
    assert never, "items never interacted with land too"


def test_tags_join_their_item_on_the_tag_day(landed):
    _, plan, _, items = landed
    tags = pd.read_csv(sample_data_dir() / "tags.csv", dtype={"movieId": str})
    tagged = tags.groupby("movieId")["tag"].apply(set).to_dict()
    last_row = {}
    for day in plan.all_days:
        for row in items[day]:
            last_row[row["item_id"]] = row
    some = [m for m in tagged if m in last_row][:50]
    for movie in some:
        assert {t.strip() for t in tagged[movie]} <= set(last_row[movie]["tags"])


def test_replay_is_deterministic(tmp_path):
    a = replay(tmp_path / "a", START, days=3, seed=1, users_limit=10)
    replay(tmp_path / "b", START, days=3, seed=1, users_limit=10)
    for day in a.all_days:
        for source, name in (("interactions", "part-0.csv"), ("items", "part-0.jsonl")):
            assert (day_dir(tmp_path / "a", source, day) / name).read_bytes() == \
                   (day_dir(tmp_path / "b", source, day) / name).read_bytes()
