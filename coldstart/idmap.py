"""Id columns as integer positions: the one place that turns user, item and scene ids into codes.

A night handles millions of events; hashing or comparing a Python string per event is what made
its cost grow with the length of the history. Categoricals (``features.coded_frame``) carry Arrow's
dictionary codes, so the helpers here look ids up once per distinct value, not once per event.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd


def str_array(values: Any) -> np.ndarray:
    """A flat object array of the values' text."""
    arr = np.asarray(values, dtype=object).reshape(-1)
    return np.array([str(v) for v in arr], dtype=object)


def id_column(values: Any):
    """Ids for ``positions``: a categorical as it is, anything else as text."""
    return values if _is_categorical(values) else str_array(values)


def _is_categorical(values: Any) -> bool:
    return isinstance(getattr(values, "dtype", None), pd.CategoricalDtype)


def factorized(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values as text, int64 position of each value among them). A categorical is
    factorized from its codes, without hashing a string per value."""
    if _is_categorical(values):
        cat = pd.Categorical(values)
        if (cat.codes < 0).any():
            raise ValueError("ids must not be missing")
        keys = np.array([str(c) for c in cat.categories], dtype=object)
        order = np.argsort(keys.astype(str), kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        return keys[order], rank[cat.codes]
    uniq, codes = np.unique(str_array(values), return_inverse=True)
    return uniq, codes.reshape(-1).astype(np.int64)


def positions(values, index: Mapping[str, int]) -> np.ndarray:
    """int64 position of each value in ``index``, -1 where it has none. A categorical is looked up once
    per category, not once per value."""
    if _is_categorical(values):
        cat = pd.Categorical(values)
        per_category = np.fromiter((index.get(str(c), -1) for c in cat.categories), np.int64, len(cat.categories))
        return np.append(per_category, -1)[cat.codes]  # code -1 (missing) picks the appended -1
    get = index.get
    return np.fromiter((get(v, -1) for v in values), dtype=np.int64, count=len(values))
