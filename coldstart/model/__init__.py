"""The interest model: two towers over fused content, id and scene features, trained multi-task.

P(interact | user X, item Y, scene Z) = sigma(<u(X, Z), v(Y)> + <h(X), q(Y)> + b(Y))

* **user tower** ``u``: MLP over [user content vector (pooled history + profile), user id embedding,
  scene embedding, pooled history embedding]; the pooled history embedding is the mean of a second
  item table (``item_hist``) over the user's recent items (FISM-style): item-to-item collaborative
  signal that a user trained on no event yet (new today) or a light one still gets from history;
  in training the event's own item is left out of the mean. ``h(X)`` also meets the item's row of
  a third table, ``q(Y)`` (``item_target``), in a plain dot product: the FISM item-to-item term,
  which the tower's MLP alone learned too weakly (bench/results/quality.md);
* **item tower** ``v``: MLP over [item encoder vector, item id embedding]; the item bias is
  ``b(Y) = w . content(Y) + id_bias[Y] + state(Y, day)``.

Item state on a day (:meth:`InterestModel.state_term`): ``fresh_bias * fresh(Y) + pop_weight * pop(Y)``.
``fresh(Y)`` is 1 when item Y is in the catalogue but had no interaction before that day; ``pop(Y)``
is ``log1p`` of the item's interactions on the previous days, each day's count halved every
``POPULARITY_HALF_LIFE_DAYS`` days of age (:func:`recent_popularity`). The day is the event's day in
training and the day a list is served in scoring (the day after the run date). New arrivals draw
attention of their own (a release, a launch) and what is popular this week is not what was popular
last month: neither the id tables (a new item has none, and they learn from all of history) nor the
content vector can know either. Training sees the state only when :class:`TrainingData` carries the
event days and the items' dates and daily counts; the first day of history (a bulk bootstrap, where
every item "debuts" and nothing came before) carries no state.

Scoring all users against all items is therefore a matrix product:
``user_vectors(...) @ item_vectors(...)[0].T + item_vectors(...)[1]`` is exactly the logit the model
trains with (see :func:`user_vectors`, :func:`item_vectors`): the vectors are ``[u; h]`` and ``[v; q]``
(``dim + id_dim`` wide).

Cold start (DropoutNet): during training each example's user id embedding and each item's id
embedding *and* id bias are zeroed with probability ``settings.train_id_dropout``, so the towers
learn to produce a good vector from content alone. An entity without an id row (unknown, or grown
today and not trained yet) has an id part of exactly zero, i.e. it is represented by its content;
an unknown scene uses the mean of the known scene rows.

Multi-task: two heads share the towers.

* *will-interact*: binary cross-entropy on the logit, one positive per event against negatives
  sampled uniformly from the items of the index (a shared set per batch, scored as a matrix
  product), the negatives' loss weighted as ``NEGATIVES_PER_POSITIVE`` negatives per positive;
* *rating*: regression of ``value`` (events whose value is not NaN) by a small head over the same
  towers: ``rating_mean + w . (u * v) + a * b(Y) + c``.

The loss is ``loss_weight_interact * bce + loss_weight_rating * mse``, minimised by Adam at
``train_learning_rate`` for the towers and heads and by sparse Adam at ``train_id_learning_rate`` for the
id tables: a row moves only in the batches that hold its id, and at the towers' rate a night's few
steps left users' tastes under-learnt (bench/results/quality.md). A deterministic held-out split
gives each head's validation metric (interact AUC against sampled negatives, also with the items'
ids dropped = cold-item AUC; rating RMSE with the global-mean baseline next to it).

Transfer: :func:`train` with a ``prior`` grows the prior's id tables (:func:`grow`: old rows bit for
bit, new user/item rows zero, new scene rows = mean of the known scenes) and fine-tunes it; id rows
of entities absent from the new data are not touched at all (sparse optimiser). Without a prior it
trains from scratch.

Checkpoints (:class:`Checkpoint`) live at a local folder or an ``s3://`` prefix: ``model.pt`` (state
dict), ``ids.json``, ``config.json`` and ``metrics.json`` under a content-named ``v-<hash>/``, and
``MANIFEST.json`` (the prefix and the sha256 of each file), written last in one atomic put, publishes
them; the checkpoint's checksum is the sha256 of ``MANIFEST.json``. Loading verifies every hash and
raises :class:`CheckpointError` on any problem.

Content vectors (``item_content`` / ``user_content`` arguments) are given as a mapping
``id -> vector`` (canonical: ``dict[str, np.ndarray]`` of float32). A :class:`pandas.Series` of
vectors indexed by id, or a :class:`pandas.DataFrame` with an ``embedding`` column and the id in an
``item_id`` / ``user_id`` / ``entity_id`` / ``id`` column (or its index) are accepted too. A
missing vector is read as zeros.

Determinism: the same data, settings and seed give the same checkpoint bytes (same checksum) on
the same machine and torch build; ids are sorted, model init and sampling use seeded generators,
no wall-clock value is stored in the checkpoint.
"""

from __future__ import annotations

from coldstart.features import POPULARITY_HALF_LIFE_DAYS, pool_user_content, recent_popularity
from coldstart.model.checkpoint import (FORMAT_VERSION, Checkpoint, CheckpointError, CheckpointExistsError,
                                        checkpoint_files, grow)
from coldstart.model.inference import INFERENCE_BLOCK, item_vectors, user_vectors
from coldstart.model.network import HistoryBags, InterestModel
from coldstart.model.training import (NEGATIVES_PER_BATCH, NEGATIVES_PER_POSITIVE, VALIDATION_FRACTION,
                                      VALIDATION_MAX, VALIDATION_MIN_EVENTS, VALIDATION_NEGATIVES, TrainingData,
                                      train)
from coldstart.vectors import DEFAULT_CONTENT_DIM

__all__ = [
    "CheckpointError",
    "CheckpointExistsError",
    "TrainingData",
    "InterestModel",
    "Checkpoint",
    "checkpoint_files",
    "HistoryBags",
    "pool_user_content",
    "recent_popularity",
    "grow",
    "train",
    "user_vectors",
    "item_vectors",
    "DEFAULT_CONTENT_DIM",
    "FORMAT_VERSION",
    "INFERENCE_BLOCK",
    "NEGATIVES_PER_BATCH",
    "NEGATIVES_PER_POSITIVE",
    "POPULARITY_HALF_LIFE_DAYS",
    "VALIDATION_FRACTION",
    "VALIDATION_MAX",
    "VALIDATION_MIN_EVENTS",
    "VALIDATION_NEGATIVES",
]
