"""Content vectors given as a mapping ``id -> vector``, and the few operations on them that the
model and the features share.

Canonical form: ``dict[str, np.ndarray]`` of float32. A :class:`pandas.Series` of vectors indexed by
id, or a :class:`pandas.DataFrame` with an ``embedding`` column and the id in an ``item_id`` /
``user_id`` / ``entity_id`` / ``id`` column (or its index) are accepted too. A missing vector is read
as zeros.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

DEFAULT_CONTENT_DIM = 384  # MiniLM's width: the size assumed when no vector says otherwise

ContentLike = Any  # Mapping[str, np.ndarray] | pd.Series | pd.DataFrame | None


def content_mapping(content: ContentLike) -> Mapping[str, Any]:
    """``content`` in its canonical form (see the module doc)."""
    if content is None:
        return {}
    if isinstance(content, pd.DataFrame):
        if "embedding" not in content.columns:
            raise ValueError("a content DataFrame needs an 'embedding' column")
        for col in ("item_id", "user_id", "entity_id", "id"):
            if col in content.columns:
                keys = content[col]
                break
        else:
            keys = content.index
        return dict(zip((str(k) for k in keys), content["embedding"].to_numpy()))
    if isinstance(content, pd.Series):
        return dict(zip((str(k) for k in content.index), content.to_numpy()))
    return content


def content_dim_of(content: Mapping[str, Any], default: int | None = None) -> int:
    """Width of the first vector in ``content``; ``default`` (else DEFAULT_CONTENT_DIM) when it holds none."""
    for vec in content.values():
        if vec is not None:
            return int(np.asarray(vec).reshape(-1).shape[0])
    if default is None:
        return DEFAULT_CONTENT_DIM
    return default


def content_matrix(ids: Iterable[str], content: Mapping[str, Any], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(len(ids), dim) float32 matrix of the ids' vectors (zeros where missing) and a present mask."""
    ids = list(ids)
    out = np.zeros((len(ids), dim), dtype=np.float32)
    present = np.zeros(len(ids), dtype=bool)
    get = content.get
    for row, key in enumerate(ids):
        vec = get(key)
        if vec is None:
            continue
        vec = np.asarray(vec, dtype=np.float32).reshape(-1)
        if vec.shape[0] != dim:
            raise ValueError(f"content vector of {key!r} has {vec.shape[0]} dims, expected {dim}")
        if not np.all(np.isfinite(vec)):
            continue
        out[row] = vec
        present[row] = True
    return out, present



def normalise_rows(mat: np.ndarray) -> np.ndarray:
    """L2-normalise the rows of a float matrix in place (all-zero rows stay zero); returns it."""
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    np.divide(mat, norms, out=mat, where=norms > 0)
    return mat
