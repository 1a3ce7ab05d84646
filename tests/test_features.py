"""Window reads as categoricals (features.coded_frame) and the id lookups on their codes (idmap)."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from coldstart import idmap
from coldstart.features import coded_frame, concat_coded, latest_items


def events(users, items, scenes=None, ts=None):
    n = len(users)
    return pa.table({"user_id": users, "item_id": items, "scene": scenes or ["default"] * n,
                     "event_ts": pa.array(ts if ts is not None else list(range(n)), pa.int64())})


def test_coded_frame_sorts_categories_and_keeps_the_values():
    frame = coded_frame(events(["u2", "u1", "u2"], ["b", "c", "a"]))
    assert list(frame["user_id"].cat.categories) == ["u1", "u2"]
    assert list(frame["item_id"].cat.categories) == ["a", "b", "c"]
    assert frame["user_id"].astype(str).tolist() == ["u2", "u1", "u2"]
    assert frame["item_id"].astype(str).tolist() == ["b", "c", "a"]
    assert frame["event_ts"].tolist() == [0, 1, 2]  # other columns untouched


def test_concat_coded_stays_categorical_and_equals_plain_concat():
    a = coded_frame(events(["u1", "u3"], ["x", "y"]))
    b = coded_frame(events(["u2"], ["z"]))
    both = concat_coded([a, b])
    assert all(isinstance(both[c].dtype, pd.CategoricalDtype) for c in ("user_id", "item_id", "scene"))
    assert list(both["user_id"].cat.categories) == ["u1", "u2", "u3"]
    assert both["user_id"].astype(str).tolist() == ["u1", "u3", "u2"]
    assert both["item_id"].astype(str).tolist() == ["x", "y", "z"]


def test_latest_items_are_the_same_on_codes_and_on_strings():
    rng = np.random.default_rng(0)
    n = 400
    table = events([f"u{u}" for u in rng.integers(0, 9, n)], [f"i{i:02d}" for i in rng.integers(0, 30, n)],
                   ts=rng.permutation(n).tolist())
    coded = latest_items(coded_frame(table), per_user=5)
    plain = latest_items(table.to_pandas(), per_user=5)
    as_text = coded.astype({"user_id": str, "item_id": str})
    key = ["user_id", "item_id"]
    assert as_text.sort_values(key).reset_index(drop=True).equals(plain.sort_values(key).reset_index(drop=True))


@pytest.mark.parametrize("coded", [True, False])
def test_positions_and_factorized_agree_on_codes_and_strings(coded):
    frame = pd.DataFrame({"item_id": ["b", "zz", "a", "b"]})
    values = coded_frame(pa.table({"item_id": frame["item_id"]}))["item_id"] if coded else frame["item_id"]
    column = idmap.id_column(values)
    assert idmap.positions(column, {"a": 0, "b": 1}).tolist() == [1, -1, 0, 1]
    keys, codes = idmap.factorized(column)
    assert keys.tolist() == ["a", "b", "zz"] and codes.tolist() == [1, 2, 0, 1]


def test_positions_of_an_empty_categorical():
    empty = coded_frame(pa.table({"item_id": pa.array([], pa.string())}))["item_id"]
    assert idmap.positions(empty, {"a": 0}).tolist() == []


def _history_reference(frame: pd.DataFrame, listed: set, first, scenes_per_user: int) -> dict:
    """user_history_spark's rows, the slow way: one user at a time, in pandas."""
    from coldstart.features import HISTORY_ITEMS, REASON_ITEMS

    out = {}
    for user, rows in frame.groupby("user_id"):
        window = rows[rows["run_date"] >= first].assign(k=lambda f: -f["us"]).sort_values(["k", "item_id"])
        some = len(window) > 0
        by_scene = window.groupby("scene").agg(n=("k", "size"), k=("k", "min")).reset_index()
        by_scene = by_scene.assign(m=-by_scene["n"]).sort_values(["m", "k", "scene"])
        distinct = list(dict.fromkeys(window["item_id"]))
        recent = [i for i in window["item_id"] if i in listed][:REASON_ITEMS]
        out[user] = {"n_recent": len(window),
                     "scenes": by_scene["scene"].tolist()[:scenes_per_user] if some else None,
                     "latest": distinct[:HISTORY_ITEMS] if some else None,
                     "recent": recent or None,
                     "window_items": sorted(distinct) if some else None,
                     "consumed": sorted({i for i in rows["item_id"] if i in listed})}
    return out


def test_user_history_in_spark_equals_the_per_user_reference(spark, tmp_path):
    """Ties in time (broken by item), scenes tied on count (broken by the newest event, then the name),
    repeats, items that are not listed, events before the window (only in ``consumed``)."""
    import datetime as dt

    from coldstart.catalog import TABLES
    from coldstart.features import user_history_spark, window_start
    from coldstart.lake import Lake
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, scenes_per_user=2)
    lake = Lake.from_settings(settings)
    run_date = dt.date(2024, 3, 31)
    first = window_start(settings, run_date)
    rng = np.random.default_rng(3)
    days = [first - dt.timedelta(days=5), first, first + dt.timedelta(days=3), run_date]
    rows = []
    for n in range(400):
        day = days[rng.integers(len(days))]
        # a few distinct seconds per day: many ties in time
        ts = dt.datetime.combine(day, dt.time(12, 0, int(rng.integers(4))), dt.timezone.utc)
        rows.append({"event_id": f"e{n}", "user_id": f"u{rng.integers(12)}", "item_id": f"i{rng.integers(30)}",
                     "event_type": "click", "value": None, "scene": ["home", "search", "cart"][rng.integers(3)],
                     "event_ts": ts, "event_date": day, "run_date": day, "source_file": "hand-made", "ingested_at": None})
    rows.append(dict(rows[0], event_id="late", event_ts=rows[0]["event_ts"], run_date=run_date + dt.timedelta(days=1),
                     event_date=run_date + dt.timedelta(days=1)))  # after run_date: not read
    frame = pd.DataFrame(rows)
    for day, part in frame.groupby("run_date"):
        lake.replace_partition("interactions", pa.Table.from_pandas(part, schema=TABLES["interactions"].schema,
                                                                   preserve_index=False), run_date=day)
    listed = {f"i{n}" for n in range(0, 30, 2)}
    items = spark.createDataFrame(pd.DataFrame({"item_id": sorted(listed)}))
    got = {r["user_id"]: r.asDict() for r in user_history_spark(spark, lake, settings, run_date, items).collect()}
    seen = frame[frame["run_date"] <= run_date].assign(us=lambda f: f["event_ts"].map(lambda t: int(t.timestamp() * 1e6)))
    want = _history_reference(seen, listed, first, scenes_per_user=2)
    assert set(got) == set(want)
    for user, expected in want.items():
        assert {k: v for k, v in got[user].items() if k != "user_id"} == expected, user
