"""Ingest through real Spark and Delta: accounting, duplicates, reruns, missing landing data."""

import datetime as dt

import pytest

from coldstart.ingest import ingest
from coldstart.landing import LandingError
from coldstart.lake import Lake
from tests.landing_helpers import event, land

D1, D2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)


def audit_of(settings, day):
    rows = Lake.from_settings(settings).read_pandas("ingest_audit")
    return {r.source: r for r in rows[rows.run_date == day].itertuples()}


def test_bad_rows_are_quarantined_and_every_row_is_accounted_for(spark, settings):
    lines = [event(i, D1) for i in range(10)] + [
        "{not json",
        event(20, D1, event_type="teleport"),
        event(21, D1, ts="yesterday"),
        event(22, D1, user_id=""),
        {k: v for k, v in event(23, D1).items() if k != "item_id"},
        event(3, D1),  # repeat of e3
    ]
    land(settings.landing, "interactions", D1, lines)
    result = ingest(spark, settings, D1)
    a = result.sources["interactions"]
    assert (a.rows_read, a.rows_accepted, a.rows_quarantined, a.rows_duplicate) == (16, 10, 5, 1)
    q = Lake.from_settings(settings).read_pandas("quarantine")
    assert sorted(q.reason) == sorted(["malformed_record", "unknown_event_type", "bad_timestamp", "empty_id",
                                       "missing_field"])
    assert q.loc[q.reason == "malformed_record", "raw"].item() == "{not json"
    assert q.loc[q.reason == "malformed_record", "line"].item() == 11
    assert audit_of(settings, D1)["interactions"].rows_read == 16


def test_rerun_gives_the_same_rows(spark, settings):
    land(settings.landing, "interactions", D1, [event(i, D1) for i in range(12)] + ["oops"])
    land(settings.landing, "items", D1, [{"item_id": "i1", "title": "Blue boat", "tags": ["sea"]}])
    ingest(spark, settings, D1)
    lake = Lake.from_settings(settings)
    snapshot = {t: lake.read_pandas(t).drop(columns=["ingested_at"], errors="ignore").sort_values(lake_key(t))
                .reset_index(drop=True) for t in ("interactions", "quarantine", "items", "users")}
    ingest(spark, settings, D1)
    for t, before in snapshot.items():
        after = lake.read_pandas(t).drop(columns=["ingested_at"], errors="ignore").sort_values(lake_key(t)).reset_index(drop=True)
        assert before.equals(after), t


def lake_key(table):
    from coldstart.catalog import TABLES
    return list(TABLES[table].key)


def test_duplicate_of_a_stored_event_within_lateness_is_dropped(spark, settings):
    land(settings.landing, "interactions", D1, [event(i, D1) for i in range(5)])
    ingest(spark, settings, D1)
    # the same file delivered again the next day: events are inside the 1-day lateness window
    land(settings.landing, "interactions", D2, [event(i, D1) for i in range(5)] + [event(9, D2)])
    a = ingest(spark, settings, D2).sources["interactions"]
    assert (a.rows_accepted, a.rows_duplicate) == (1, 5)


def test_items_and_users_merge_with_content_hash(spark, settings):
    land(settings.landing, "interactions", D1, [event(0, D1, item_id="i-new", user_id="u-a")])
    land(settings.landing, "items", D1, [{"item_id": "i1", "title": "Blue boat", "tags": ["sea"]}])
    land(settings.landing, "users", D1, [{"user_id": "u-b", "profile": {"age": 31, "city": "Oslo"}}])
    ingest(spark, settings, D1)
    lake = Lake.from_settings(settings)
    items = lake.read_pandas("items").set_index("item_id")
    assert items.loc["i1", "content_text"] == "Blue boat | tags: sea"
    assert items.loc["i-new", "content_text"] == "" and items.loc["i-new", "first_interaction"] == D1
    users = lake.read_pandas("users").set_index("user_id")
    assert dict(users.loc["u-b", "profile"]) == {"age": "31", "city": "Oslo"}
    assert set(users.index) == {"u-a", "u-b"}
    hash_before = items.loc["i1", "content_hash"]
    land(settings.landing, "interactions", D2, [])
    land(settings.landing, "items", D2, [{"item_id": "i1", "title": "Blue boat", "tags": ["sea", "sail"]}])
    ingest(spark, settings, D2)
    items = lake.read_pandas("items").set_index("item_id")
    assert items.loc["i1", "content_hash"] != hash_before and items.loc["i1", "first_seen"] == D1


def test_missing_day_folder_names_the_path(spark, settings):
    with pytest.raises(LandingError, match="interactions/date=2024-03-01"):
        ingest(spark, settings, D1)


def test_folder_without_marker_is_not_read(spark, settings):
    land(settings.landing, "interactions", D1, [event(0, D1)], complete=False)
    with pytest.raises(LandingError, match="_SUCCESS"):
        ingest(spark, settings, D1)


def test_empty_day_is_valid(spark, settings):
    folder = land(settings.landing, "interactions", D1, [])
    (folder / "empty.csv").write_text("")
    a = ingest(spark, settings, D1).sources["interactions"]
    assert (a.rows_read, a.rows_accepted) == (0, 0)
    assert audit_of(settings, D1)["interactions"].files == 2
