"""The interest model: two towers over fused content, id and scene features, trained multi-task.

``P(interact | user X, item Y, scene Z) = sigma(<u(X, Z), v(Y)> + <h(X), q(Y)> + b(Y))``: the user tower
``u`` and the item tower ``v``, the FISM term ``<h(X), q(Y)>`` (the pooled history embedding against the
item's target row), the item bias ``b(Y)`` with its day-dependent state (fresh, recent popularity), and two
closed-form terms refitted every night with weights picked on held-out rows: item-to-item (EASE at low rank,
a fresh item's factors from its content) and content similarity (:mod:`coldstart.model.blend`).
Scoring is therefore one matrix product of :func:`user_vectors` and :func:`item_vectors`. Id rows are
dropped out in training (DropoutNet), so an entity without one is represented by its content; a warm
start grows yesterday's id tables (:func:`grow`) and fine-tunes. The design, the losses and the
checkpoint format are described in docs/model.md.
"""

from __future__ import annotations

from coldstart.features import POPULARITY_HALF_LIFE_DAYS, pool_user_content, recent_popularity
from coldstart.model.checkpoint import (FORMAT_VERSION, Checkpoint, CheckpointError, CheckpointExistsError,
                                        checkpoint_files, grow)
from coldstart.model.inference import INFERENCE_BLOCK, item_vectors, user_vectors, vector_width
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
    "vector_width",
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
