"""The closed-form item-to-item and content terms of the logit, and their blend picked on the held-out rows.

After the towers are trained, :func:`fit_blend` adds two terms that the sampled-negative training learns
too weakly (bench/results/quality.md), both plain dot products, so scoring stays one matrix product:

* **item-to-item** (EASE, Steck 2019): ``B = I - P / diag(P)``, ``P = (X^T X + l2 I)^-1`` over the users'
  recent items ``X`` (the pooled-history bags, the held-out pairs left out), for the ``II_MAX_ITEMS``
  most used items; kept at rank ``II_RANK`` (``B ~ L R^T``, a seeded randomised SVD): the user part is
  the sum of ``L``'s rows over the user's recent items, the item part is the item's row of ``R``;
* **content**: the user's content vector (pooled history and profile) against the item's unit content
  vector, both projected on the items' top ``CONTENT_RANK`` content directions; its weight is
  ``content_warm`` for an item with interactions and ``content_fresh`` for one without (what a hybrid
  does: a cold item is found by its content, an item with history by its co-consumption).

The weights (``ii``, ``content_warm``, ``content_fresh``) and ``l2`` are picked by coordinate search
on the held-out rows of the training data (a warm run: a slice of the latest day): Recall@20 of the
held-out item against every item live on its day, the user's other recent items excluded. So
how much a world leans on co-consumption or on content is learned from the world, not set per world.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from coldstart.model.network import HistoryBags

log = logging.getLogger("coldstart.model")

II_RANK = 256            # columns of the item-to-item factors (the scored vectors grow by this)
II_MAX_ITEMS = 4096      # most used items the EASE inverse is taken over (its cost is cubic in this)
II_L2_GRID = (50.0, 250.0, 1000.0)
CONTENT_RANK = 64        # content directions kept for the content term
BLEND_MAX_CELLS = 20_000_000  # held-out rows x items scored at once (memory: a few float32 matrices this size)
BLEND_MIN_ROWS = 20      # fewer held-out rows than this: the terms stay off (weights 0)
BLEND_K = 20
# The objective's extra weight on the fresh-item recall (one setting for every world): on the small media
# world 0 found 0.12 of the cold positives, 0.05 0.18 and 0.1 0.27, at all-users Recall@20 0.332, 0.332, 0.315.
FRESH_EXTRA = 0.05
# Weights tried, in units of the tower logit's spread over the term's spread (0 = off).
CONTENT_RIDGE = 1.0      # ridge of the content -> item-to-item factors map (unit content rows)
WEIGHT_GRID = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


def ease_factors(bags: HistoryBags, n_items: int, l2: float, rank: int = II_RANK, max_items: int = II_MAX_ITEMS,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(left, right), each (n_items, rank) float32: ``left @ right.T`` is the rank-``rank`` EASE matrix of
    the bags (rows: users, items: positions < n_items); items outside the ``max_items`` most used get
    zero rows. Deterministic for a seed."""
    left = np.zeros((n_items, rank), np.float32)
    right = np.zeros((n_items, rank), np.float32)
    rows = torch.repeat_interleave(torch.arange(len(bags.ptr) - 1), bags.ptr[1:] - bags.ptr[:-1]).numpy()
    items = bags.items.numpy()
    if not len(items):
        return left, right
    counts = np.bincount(items, minlength=n_items)
    seen = np.flatnonzero(counts > 0)
    kept = seen[np.argsort(-counts[seen], kind="stable")[:max_items]]
    col = np.full(n_items, -1, np.int64)
    col[kept] = np.arange(len(kept))
    ok = col[items] >= 0
    import scipy.sparse as sp

    X = sp.csr_matrix((np.ones(int(ok.sum()), np.float32), (rows[ok], col[items[ok]])),
                      shape=(len(bags.ptr) - 1, len(kept)))
    gram = torch.from_numpy((X.T @ X).toarray().astype(np.float32))
    gram.diagonal().add_(float(l2))
    P = torch.cholesky_inverse(torch.linalg.cholesky(gram))
    del gram
    P.div_(-P.diagonal().clone().unsqueeze(0))  # B_ij = -P_ij / P_jj
    P.diagonal().zero_()
    q = min(rank, len(kept))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        U, S, V = torch.svd_lowrank(P, q=q, niter=4)
    left[kept, :q] = (U * S).numpy()
    right[kept, :q] = V.numpy()
    return left, right


def content_basis(item_content: torch.Tensor, rank: int = CONTENT_RANK) -> torch.Tensor:
    """(content_dim, r) orthonormal: the top right singular directions of the unit item content rows."""
    unit = _unit(item_content)
    dim = unit.shape[1]
    if unit.shape[0] == 0 or not bool(unit.any()):
        return torch.zeros(dim, min(rank, dim))
    _, _, Vh = torch.linalg.svd(unit, full_matrices=False)
    basis = torch.zeros(dim, min(rank, dim))
    basis[:, :min(rank, Vh.shape[0])] = Vh[:rank].T
    return basis


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


class Holdout:
    """The held-out rows over every item of the index, kept as the score matrices the objective adds up:
    ``base`` (the tower logit, -inf off the candidates) and the terms, each zero where its weight does not
    apply: ``content_warm`` / ``content_fresh`` (the content term on items with / without interactions)
    and, once :meth:`set_ii` gave them, ``ii`` / ``ii_fresh`` (the item-to-item term, and its stand-in from
    the item's content for a fresh item). ``target``: each row's item position; ``fresh_row``: a fresh-item
    row (a training event on an item new that day).

    The objective of a weighting is one pass per evaluation (``rest + weight x term`` into one buffer, then
    the rank test): a coordinate search changes one weight at a time, so the other terms are summed once per
    coordinate (:meth:`rest`). The constructor consumes ``tower`` and ``content`` (masked in place)."""

    def __init__(self, tower: torch.Tensor, content: torch.Tensor, fresh: torch.Tensor, candidate: torch.Tensor,
                 target: torch.Tensor, fresh_row: torch.Tensor) -> None:
        self.fresh, self.candidate, self.target, self.fresh_row = fresh, candidate, target, fresh_row
        # the weights are tried in units of each term's spread over the candidates (before any masking)
        self.scale_tower, self.scale_content = self.spread(tower), self.spread(content)
        self.base = tower.masked_fill_(~candidate, float("-inf"))
        self.terms: dict[str, torch.Tensor] = {"content_warm": content.masked_fill(fresh, 0.0),
                                               "content_fresh": content.masked_fill_(~fresh, 0.0)}
        self._buffer = torch.empty_like(self.base)
        # The objective: the held-out Recall@20 with the held-out rows of fresh items stood in for by every
        # fresh-item row (their share kept: many rows, one noisy slice less), plus FRESH_EXTRA x the
        # fresh-item recall (the cold items are a target of their own).
        held = ~fresh_row
        target_fresh = fresh.gather(1, target.unsqueeze(1)).squeeze(1)
        warm, cold = held & ~target_fresh, fresh_row | (held & target_fresh)
        share = float((held & target_fresh).sum()) / max(int(held.sum()), 1)
        weight = torch.zeros(len(target), device=target.device)
        if bool(warm.any()):
            weight[warm] = (1.0 - share) / int(warm.sum())
        if bool(cold.any()):
            weight[cold] = (share + FRESH_EXTRA) / int(cold.sum())
        self.row_weight = weight

    def spread(self, x: torch.Tensor) -> float:
        """The standard deviation of ``x`` over the candidate cells (1 when it is 0 or undefined)."""
        values = x[self.candidate]
        return (float(values.std()) if values.numel() > 1 else 0.0) or 1.0

    def warm_only(self, term: torch.Tensor) -> torch.Tensor:
        """``term`` (consumed) zeroed on the fresh cells: co-consumption is unknown for a fresh item."""
        return term.masked_fill_(self.fresh, 0.0)

    def set_ii(self, ii: torch.Tensor, ii_fresh: torch.Tensor) -> None:
        """The item-to-item terms, already zeroed where they do not apply (ii on fresh cells, ii_fresh elsewhere)."""
        self.terms["ii"], self.terms["ii_fresh"] = ii, ii_fresh

    def rest(self, weights: dict[str, float], leave_out: str | None = None) -> torch.Tensor:
        """base + every term but ``leave_out`` times its weight (a new matrix)."""
        out = self.base.clone()
        for name, w in weights.items():
            if name != leave_out and w:
                out.add_(self.terms[name], alpha=w)
        return out

    def recall(self, rest: torch.Tensor, term: torch.Tensor | None = None, weight: float = 0.0) -> float:
        """The objective of the scores ``rest + weight x term``: the rows' weighted Recall@20 hits."""
        score = rest if term is None or not weight else torch.add(rest, term, alpha=weight, out=self._buffer)
        own = score.gather(1, self.target.unsqueeze(1))
        hit = ((score > own).sum(1) < BLEND_K).float()
        return float((hit * self.row_weight).sum())


def pick_ii(hold: Holdout, candidates, recall: float) -> tuple[dict | None, float]:
    """The first coordinate of the search: per l2 (``candidates`` yields (l2, ii term, context)), the
    item-to-item weight with content off, against ``recall`` (the towers alone). Returns the best ({"l2",
    "ii", "scale", "term" (zeroed on fresh cells), "context"}, or None when no weight beats ``recall``) and
    its objective; only the best term is kept in memory."""
    scale_t = hold.scale_tower
    best = None
    for l2, term, context in candidates:
        scale = hold.spread(term)
        term = hold.warm_only(term)
        for w in WEIGHT_GRID[1:]:
            r = hold.recall(hold.base, term, w * scale_t / scale)
            if r > recall:
                best, recall = {"l2": l2, "ii": w * scale_t / scale, "scale": scale, "term": term, "context": context}, r
        del term
    return best, recall


def pick_weights(hold: Holdout, weights: dict[str, float], recall: float, scales: dict[str, float]) -> tuple[dict, float]:
    """Coordinate search over the weights (two sweeps, each weight on WEIGHT_GRID x tower spread / its spread,
    the others fixed): a setting must beat the best so far strictly, so ties keep the earlier, simpler one.
    A term without a scale (not set) stays at 0."""
    scale_t = hold.scale_tower
    for _ in range(2):
        for name in ("content_fresh", "content_warm", "ii", "ii_fresh"):
            if name not in scales:
                continue
            rest = hold.rest(weights, leave_out=name)
            for value in (w * scale_t / scales[name] for w in WEIGHT_GRID):
                r = hold.recall(rest, hold.terms[name], value)
                if r > recall:
                    weights, recall = dict(weights, **{name: value}), r
            del rest
    return weights, recall


def content_to_factors(unit_content: torch.Tensor, right: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
    """(content_dim, rank): the ridge map from unit item content to the item-to-item factors ``right``,
    fitted on the ``usable`` items (with factors and content): a cold item's factors from its text."""
    C, R = unit_content[usable], right[usable]
    if not len(C):
        return torch.zeros(unit_content.shape[1], right.shape[1])
    gram = C.T @ C
    gram.diagonal().add_(CONTENT_RIDGE)
    return torch.linalg.solve(gram, C.T @ R)


@torch.no_grad()
def fit_blend(model, bags: HistoryBags, rows: torch.Tensor, items: torch.Tensor, in_bag: torch.Tensor,
              user_out: torch.Tensor, hist: torch.Tensor, user_content: torch.Tensor, item_content_all: torch.Tensor,
              state_fn, seed: int, fresh_row: torch.Tensor | None = None) -> dict:
    """Fit the closed-form terms into ``model``'s buffers and pick their weights on the held-out rows.

    ``rows`` (bag row per held-out event), ``items`` (its item position), ``in_bag`` (whether that item is in
    its bag), ``user_out`` / ``hist`` (the user tower output and leave-one-out pooled history per row),
    ``user_content`` (per row), ``item_content_all`` (per item of the index); ``state_fn(idx)`` gives the
    (fresh, pop, live) matrices (rows ``idx`` x every item) of the item state, or None without one.
    ``fresh_row`` (optional, bool per row): rows that are not held out but training events on an item new
    on its day (a cold item's stand-in; the item's id rows are dropped in their cells). Returns the choice and the held-out recalls (for the checkpoint's metrics)."""
    device = model.ii_left.device
    n_items = item_content_all.shape[0]
    fresh_row = torch.zeros(len(rows), dtype=torch.bool) if fresh_row is None else fresh_row.cpu()
    if int((~fresh_row).sum()) < BLEND_MIN_ROWS or n_items == 0:  # nothing to pick on: the prior's terms stay
        return {"blend_rows": int((~fresh_row).sum()), "blend": None}
    model.blend.zero_()
    model.content_basis.copy_(content_basis(item_content_all.cpu(), model.content_basis.shape[1]).to(device))
    # the item-to-item matrix never sees the held-out pairs (they are what the weights are picked on)
    fit_bags = bags.without(rows[~fresh_row].cpu().numpy(), items[~fresh_row].cpu().numpy())
    rank = model.ii_left.shape[1]
    # a seeded subset of the rows (at most a third fresh-item rows), so that rows x items stays bounded
    keep = max(BLEND_MIN_ROWS, BLEND_MAX_CELLS // max(n_items, 1))
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    held, extra = order[~fresh_row[order]], order[fresh_row[order]]
    n_held = min(len(held), keep - min(len(extra), keep // 3))
    pick = torch.cat([held[:n_held], extra[:keep - n_held]]).sort().values
    rows, items, in_bag, fresh_row = rows[pick], items[pick], in_bag[pick], fresh_row[pick]
    user_out, hist, user_content = user_out[pick.to(user_out.device)], hist[pick.to(hist.device)], user_content[pick.to(user_content.device)]
    all_items = torch.arange(n_items, device=device)
    v, b = model.item_vec(all_items, item_content_all)
    # rows x items matrices are the blend's memory: built in place, each freed once used
    tower = (user_out @ v.T).add_(b).addmm_(hist, model._lookup(model.item_target, all_items, None).T)
    state = state_fn(pick)
    if state is not None:
        fresh, pop, live = (x.to(device) for x in state)
        fresh, live = fresh > 0, live > 0
        # an item new on the row's day is served without id rows (it has none yet): so it is scored here
        v_cold, b_cold = model.item_vec(all_items, item_content_all, torch.zeros(n_items, dtype=torch.bool, device=device))
        tower = torch.where(fresh, (user_out @ v_cold.T).add_(b_cold), tower).add_(model.state_term(fresh, pop))
        del pop
    else:
        fresh = torch.zeros_like(tower, dtype=torch.bool)
        live = torch.ones_like(tower, dtype=torch.bool)
    # candidates: live items but the user's other recent items
    flat, offsets, counts = bags.select(rows.cpu())
    bag_row = torch.repeat_interleave(torch.arange(len(rows)), counts)
    seen = torch.zeros_like(live)
    seen[bag_row.to(device), flat.to(device)] = True
    targets = items.to(device)
    seen[torch.arange(len(rows), device=device), targets] = False
    candidate = live & ~seen
    candidate[torch.arange(len(rows), device=device), targets] = True
    del seen, live
    # content: the user's content without the held-out item's (the pool is a mean over its bag)
    unit_items = _unit(item_content_all)
    n_bag = counts.to(device).float().clamp(min=1.0).unsqueeze(1)
    own = unit_items[targets] * in_bag.to(device).float().unsqueeze(1)
    user_loo = _unit(_unit(user_content) * n_bag - own)
    content = model.content_projection(user_loo) @ model.content_projection(item_content_all).T
    hold = Holdout(tower, content, fresh, candidate, targets, fresh_row.to(device))
    del tower, content  # consumed by the holdout
    # the content -> factors map learns from items that are not fresh in any row (no stand-in's own factors)
    usable = unit_items.norm(dim=1) > 0
    target_fresh = fresh[torch.arange(len(rows), device=device), targets]
    usable[targets[fresh_row.to(device) | target_fresh]] = False

    def ii_terms():  # per l2: the rows' item-to-item term (one rows x items matrix at a time)
        for l2 in II_L2_GRID:
            left, _right = ease_factors(fit_bags, n_items, l2, rank, seed=seed)
            L, R = torch.from_numpy(left).to(device), torch.from_numpy(_right).to(device)
            sums = torch.nn.functional.embedding_bag(flat.to(device), L, offsets.to(device), mode="sum")
            user_ii = sums - L[targets] * in_bag.to(device).float().unsqueeze(1)
            yield l2, user_ii @ R.T, (user_ii, R)

    recall_tower = hold.recall(hold.base)
    chosen, recall = pick_ii(hold, ii_terms(), recall_tower)
    best_l2 = chosen["l2"] if chosen is not None else None
    weights = {"ii": 0.0, "content_warm": 0.0, "content_fresh": 0.0, "ii_fresh": 0.0}
    scales = {"content_fresh": hold.scale_content, "content_warm": hold.scale_content}
    if chosen is not None:
        # a fresh cell's item-to-item term through the item's content (its factors mapped from its text)
        user_ii, R = chosen["context"]
        W = content_to_factors(unit_items, R, usable & (R.norm(dim=1) > 0))
        ii_fresh = user_ii @ (unit_items @ W).T
        scales.update(ii=chosen["scale"], ii_fresh=hold.spread(ii_fresh))
        hold.set_ii(chosen["term"], ii_fresh.masked_fill_(~hold.fresh, 0.0))
        weights["ii"] = chosen["ii"]
        del chosen, ii_fresh
    weights, recall = pick_weights(hold, weights, recall, scales)
    best = {"l2": best_l2, **weights, "recall": recall, "recall_tower": recall_tower}
    del hold
    l2 = best["l2"] if best["l2"] is not None else II_L2_GRID[len(II_L2_GRID) // 2]
    # served: refitted with the held-out pairs too (the weights were picked without them; more data, same l2)
    left, right = ease_factors(bags, n_items, l2, rank, seed=seed)
    W = content_to_factors(unit_items, torch.from_numpy(right).to(device), usable & (torch.from_numpy(right).to(device).norm(dim=1) > 0))
    model.ii_left.copy_(torch.from_numpy(left)), model.ii_right.copy_(torch.from_numpy(right))
    model.ii_content.copy_(W)
    model.blend.copy_(torch.tensor([best["ii"], best["content_warm"], best["content_fresh"], best["ii_fresh"]],
                                   dtype=model.blend.dtype))
    log.info("blend on %d rows (%d fresh-item): l2 %s, weights ii %.3g (fresh items %.3g), content %.3g (fresh "
             "items %.3g): objective %.4f (towers alone %.4f)", len(rows), int(fresh_row.sum()), best["l2"], best["ii"],
             best["ii_fresh"], best["content_warm"], best["content_fresh"], best["recall"], best["recall_tower"])
    return {"blend_rows": int((~fresh_row).sum()), "blend_fresh_rows": int(fresh_row.sum()), "blend": {k: (float(v) if v is not None else None) for k, v in best.items()}}
