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
