"""User and item vectors of a checkpoint: their product plus the item bias is the model's logit."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd
import torch

from coldstart import idmap
from coldstart.model.checkpoint import Checkpoint
from coldstart.model.network import HistoryBags
from coldstart.vectors import content_mapping, content_matrix

# users per forward pass: bounds the towers' activations (block x hidden floats) at any number of users
INFERENCE_BLOCK = 8192


def user_vectors(ckpt: Checkpoint, user_ids, scenes, user_content, history: pd.DataFrame | None = None,
                 columns=None) -> np.ndarray:
    """(n, :func:`vector_width`) float32 scored user vectors for (user, scene) rows: [user-tower output;
    pooled history; item-to-item sums; content projection] (:func:`_widths`).

    ``history`` (optional, columns user_id and item_id): the users' recent items, pooled by the user
    tower (items the model has no row for are skipped); without it the pooled part is zero.
    ``scenes``: one per user, or a single string for all. An unknown user has a zero id part (content
    only; no content = zeros); an unknown scene uses the mean of the known scene rows.
    ``score = user_vectors(...) @ item_vectors(...)[0].T + item_vectors(...)[1]`` is the model's logit.
    ``columns`` (optional, indices into those columns, in any order): the result is then
    ``(n, len(columns))``, the same floats as the full result's ``[:, columns]``, and a part none of whose
    columns is wanted is not computed (the item-to-item sums, the content projection; the tower and the
    pooled history when neither is wanted).
    """
    users = idmap.str_array(user_ids)
    if isinstance(scenes, str):
        scene_arr = np.array([scenes] * len(users), dtype=object)
    else:
        scene_arr = idmap.str_array(scenes)
    if len(scene_arr) != len(users):
        raise ValueError("scenes must be one string or one per user")
    model = ckpt.model
    parts = _wanted(ckpt, columns)
    tower, fism, ii, content_part = parts
    model.eval()
    out = np.zeros((len(users), sum(len(at) for at, _ in parts)), dtype=np.float32)
    uniq_users, user_rows = np.unique(users, return_inverse=True)
    bags = None
    if history is not None and len(history):
        bag_rows = idmap.positions(idmap.id_column(history["user_id"]), {u: n for n, u in enumerate(uniq_users)})
        bags = HistoryBags.build(bag_rows, idmap.positions(idmap.id_column(history["item_id"]), ckpt.item_index), len(uniq_users))
    with torch.no_grad():
        for rows, part, content in _blocks(ckpt, users, user_content):
            block = out[rows]  # a view: slices of a numpy array
            pooled, bag_rows_block = None, torch.from_numpy(user_rows[rows].astype(np.int64))
            if bags is not None and (len(tower[0]) or len(fism[0])):  # the tower takes the pooled history in
                sums, counts = model.history_sums(bags, bag_rows_block)
                pooled = sums / counts.clamp(min=1.0).unsqueeze(1)
            if len(tower[0]):
                ui = torch.from_numpy(idmap.positions(part, ckpt.user_index))
                si = torch.from_numpy(idmap.positions(scene_arr[rows], ckpt.scene_index))
                _put(block, tower, model.user_vec(ui, content, si, history=pooled))
            if pooled is not None:  # without a history, the pooled and item-to-item parts stay zero
                _put(block, fism, pooled)
            if bags is not None and len(ii[0]):
                _put(block, ii, model.ii_sums(bags, bag_rows_block))
            if len(content_part[0]):
                _put(block, content_part, model.content_projection(content))
    return out


def item_vectors(ckpt: Checkpoint, item_ids, item_content, fresh=None, pop=None) -> tuple[np.ndarray, np.ndarray]:
    """((m, dim) float32 item-tower outputs, (m,) float32 biases).

    An unknown item has a zero id part and zero id bias: its vector and bias come from its content
    alone (what the model learned for id-dropped items, i.e. the content-conditioned mean bias).
    ``fresh`` (bool per item) and ``pop`` (:func:`recent_popularity` per item), both optional, are
    the items' state on the day the scores are for; the bias then includes the item-state term.
    """
    items = idmap.str_array(item_ids)
    model = ckpt.model
    dim, id_dim, ii_rank, _ = _widths(ckpt)
    vecs = _tower_output(ckpt, len(items))
    bias = np.zeros(len(items), dtype=np.float32)
    fresh_arr = np.zeros(len(items), bool) if fresh is None else np.asarray(fresh, dtype=bool).reshape(-1)
    if len(fresh_arr) != len(items):
        raise ValueError("fresh and pop must have one value per item")
    with torch.no_grad():
        for rows, part, content in _blocks(ckpt, items, item_content):
            ii = torch.from_numpy(idmap.positions(part, ckpt.item_index))
            v, b = model.item_vec(ii, content)
            block = vecs[rows]
            block[:, :dim] = v.numpy()
            block[:, dim:dim + id_dim] = model._lookup(model.item_target, ii, None).numpy()
            fresh_part = torch.from_numpy(fresh_arr[rows])
            block[:, dim + id_dim:dim + id_dim + ii_rank] = model.ii_item(ii, content, fresh_part).numpy()
            # the content term's weight: one for items with interactions, another for fresh ones
            weight = torch.where(fresh_part, model.blend[2], model.blend[1])
            block[:, dim + id_dim + ii_rank:] = (model.content_projection(content) * weight.unsqueeze(1)).numpy()
            bias[rows] = b.numpy()
        if fresh is not None or pop is not None:
            pop = torch.as_tensor(np.zeros(len(items), np.float32) if pop is None else np.asarray(pop, np.float32).reshape(-1))
            if len(pop) != len(items):
                raise ValueError("fresh and pop must have one value per item")
            bias += model.state_term(torch.from_numpy(fresh_arr), pop).numpy()
    return vecs, bias


def vector_width(ckpt: Checkpoint) -> int:
    """The width of :func:`user_vectors`' and :func:`item_vectors`' rows (the sum of :func:`_widths`)."""
    return sum(_widths(ckpt))


def _widths(ckpt: Checkpoint) -> tuple[int, int, int, int]:
    """(tower, FISM, item-to-item, content) widths of the scored vectors, in that order."""
    arch = ckpt.model.arch
    return int(arch["dim"]), int(arch["id_dim"]), int(arch["ii_rank"]), int(arch["content_rank"])


def _wanted(ckpt: Checkpoint, columns) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per part of the scored vectors (:func:`_widths`): (where in the result, which of the part's own
    columns) for the wanted ``columns`` (None: every column, in order)."""
    width = vector_width(ckpt)
    wanted = np.arange(width) if columns is None else np.asarray(columns, dtype=np.int64).reshape(-1)
    if len(wanted) and (wanted.min() < 0 or wanted.max() >= width):
        raise ValueError(f"columns must lie in [0, {width}): got {wanted.min()} to {wanted.max()}")
    ends = np.cumsum((0, *_widths(ckpt)))
    parts = []
    for start, stop in zip(ends[:-1], ends[1:]):
        at = np.flatnonzero((wanted >= start) & (wanted < stop))
        parts.append((at, wanted[at] - start))
    return parts


def _put(block: np.ndarray, part: tuple[np.ndarray, np.ndarray], values: torch.Tensor) -> None:
    """One part's wanted columns of ``values`` into their places in ``block`` (a view of the result)."""
    at, within = part
    block[:, at] = values.numpy()[:, within]


def _tower_output(ckpt: Checkpoint, n: int) -> np.ndarray:
    """(n, width) float32 zeros for a side's scored vectors: tower output, FISM part (pooled history or
    target row), item-to-item part, content part (:func:`_widths`); the model is put in eval mode."""
    ckpt.model.eval()
    return np.zeros((n, vector_width(ckpt)), dtype=np.float32)


def _blocks(ckpt: Checkpoint, ids: np.ndarray, content) -> Iterator[tuple[slice, np.ndarray, torch.Tensor]]:
    """Per INFERENCE_BLOCK of ``ids``: its rows, its ids and their content matrix (zeros where missing)."""
    mapping, dim = content_mapping(content), int(ckpt.config["content_dim"])
    for start in range(0, len(ids), INFERENCE_BLOCK):
        part = ids[start:start + INFERENCE_BLOCK]
        yield slice(start, start + len(part)), part, torch.from_numpy(content_matrix(part, mapping, dim)[0])
