"""Checkpoints (published atomically, loaded verified) and growing a checkpoint's id tables for transfer.

A checkpoint lives at a location :mod:`coldstart.storage` resolves (a local folder or an ``s3://``
prefix): its files ``model.pt`` (state dict), ``ids.json``, ``config.json`` and ``metrics.json`` sit
under a content-named sub-prefix ``v-<hash>/``, and ``MANIFEST.json`` at the top names that prefix and
each file's sha256. The manifest is written last, as one small object (S3 has no rename; a single PUT
is atomic, and locally it is a temp file renamed into place): it is the publication. A reader that
finds no manifest finds no checkpoint; a crash before it leaves the previous manifest (or none) in
force, so D-1's chain is never broken. The checkpoint's checksum is the sha256 of ``MANIFEST.json``,
which model_registry records and score verifies. A manifest without ``prefix`` (an older, flat
checkpoint folder) still loads.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from coldstart import idmap, storage
from coldstart.model.network import InterestModel, build_model

log = logging.getLogger("coldstart.model")

FORMAT_VERSION = 3  # 2: item state (fresh_bias, pop_weight), item_hist; 3: the closed-form terms (model/blend.py)
_FILES = ("model.pt", "ids.json", "config.json", "metrics.json")
_MANIFEST = "MANIFEST.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt (checksum mismatch), unreadable or incompatible."""


class CheckpointExistsError(CheckpointError):
    """``save(exclusive=True)``: another checkpoint is published there; ``checksum`` is the one not written."""

    def __init__(self, message: str, checksum: str):
        super().__init__(message)
        self.checksum = checksum


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=1, allow_nan=False) + "\n").encode()


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> python, recursively (metrics must be valid JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def index_list(index: Mapping[str, int]) -> list[str]:
    keys: list[str | None] = [None] * len(index)
    for key, pos in index.items():
        keys[pos] = key
    if any(k is None for k in keys):
        raise CheckpointError("id index is not a dense 0..n-1 mapping")
    return keys  # type: ignore[return-value]


@dataclass
class Checkpoint:
    model: InterestModel
    user_index: dict[str, int]
    item_index: dict[str, int]
    scene_index: dict[str, int]
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    checksum: str | None = None   # sha256 of MANIFEST.json; set by save() and load()

    # -- writing -----------------------------------------------------------------------------
    def _write_files(self, folder: Path) -> dict[str, str]:
        """Write the checkpoint's files into a local folder; return the sha256 of each."""
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.model.state_dict().items()}
        torch.save(state, folder / "model.pt")
        ids = {"users": index_list(self.user_index), "items": index_list(self.item_index),
               "scenes": index_list(self.scene_index)}
        (folder / "ids.json").write_bytes(_json_bytes(ids))
        (folder / "config.json").write_bytes(_json_bytes(json_safe(self.config)))
        (folder / "metrics.json").write_bytes(_json_bytes(json_safe(self.metrics)))
        return {name: _sha256_file(folder / name) for name in _FILES}

    def save(self, path: str | os.PathLike, exclusive: bool = False) -> str:
        """Publish the checkpoint at ``path`` (a local folder or an object-store prefix); return its checksum
        (sha256 of the manifest).

        The files go under a new sub-prefix named by their content, then ``MANIFEST.json`` naming it is
        written in one atomic put: a reader sees the previous complete checkpoint or the new one, never a
        part. Prefixes the new manifest does not name (a replaced run of the same date) are deleted after
        publication. The same content gives the same prefix, manifest and checksum.

        ``exclusive``: never replace another published checkpoint. The same one already there is reused
        (nothing written); a different one raises :class:`CheckpointExistsError`. Locally the manifest is
        created with a hard link, which fails if a concurrent writer got there first; on S3 the check and
        the put are two requests (one run per date and stage is the scheduler's rule)."""
        root = storage.normalize(str(path))
        manifest_uri = storage.join(root, _MANIFEST)
        with tempfile.TemporaryDirectory(prefix="coldstart-ckpt-") as tmp:
            files = self._write_files(Path(tmp))
            prefix = "v-" + hashlib.sha256(_json_bytes(files)).hexdigest()[:16]
            data = _json_bytes({"format": FORMAT_VERSION, "prefix": prefix, "files": files})
            checksum = hashlib.sha256(data).hexdigest()
            if exclusive and storage.exists(manifest_uri):
                if hashlib.sha256(storage.read_bytes(manifest_uri)).hexdigest() == checksum:
                    self.checksum = checksum
                    return checksum
                raise CheckpointExistsError(f"{root}: another checkpoint is published there", checksum)
            try:
                for name in _FILES:
                    storage.copy_file(str(Path(tmp) / name), storage.join(root, prefix, name))
            except BaseException:
                storage.delete(storage.join(root, prefix))
                raise
        try:
            storage.write_bytes(manifest_uri, data, exclusive=exclusive)  # the publication
        except FileExistsError:
            raise CheckpointExistsError(f"{root}: a concurrent run published another checkpoint there", checksum) from None
        for entry in storage.list_dir(root):
            if entry.name != _MANIFEST and entry.name != prefix and (entry.name.startswith("v-") or entry.name in _FILES):
                storage.delete(entry.uri)
        self.checksum = checksum
        log.info("checkpoint published at %s (checksum %s)", root, checksum[:12])
        return checksum

    # -- reading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, expected_checksum: str | None = None) -> "Checkpoint":
        """Load and verify the checkpoint published at ``path``; any problem raises :class:`CheckpointError`.

        ``expected_checksum`` (e.g. from model_registry) must then equal the manifest's sha256.
        """
        root = storage.normalize(str(path))
        try:
            manifest_bytes = storage.read_bytes(storage.join(root, _MANIFEST))
        except (OSError, FileNotFoundError):
            if not storage.exists(root):
                raise CheckpointError(f"no checkpoint at {root}") from None
            raise CheckpointError(f"{root}: no {_MANIFEST} (never published, or a write crashed before it)") from None
        checksum = hashlib.sha256(manifest_bytes).hexdigest()
        if expected_checksum is not None and checksum != expected_checksum:
            raise CheckpointError(f"{root}: checksum {checksum} differs from the expected {expected_checksum}")
        try:
            manifest = json.loads(manifest_bytes)
            files = manifest["files"]
            fmt = manifest["format"]
            prefix = manifest.get("prefix", "")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{root}: unreadable manifest: {exc}") from None
        if fmt != FORMAT_VERSION:
            raise CheckpointError(f"{root}: checkpoint format {fmt!r}, expected {FORMAT_VERSION}")
        if not isinstance(files, dict) or set(files) != set(_FILES):
            raise CheckpointError(f"{root}: manifest lists {sorted(files) if isinstance(files, dict) else files}, "
                                  f"expected {sorted(_FILES)}")
        base = storage.join(root, prefix) if prefix else root
        blobs = {}
        for name in _FILES:
            try:
                blobs[name] = storage.read_bytes(storage.join(base, name))
            except (OSError, FileNotFoundError):
                raise CheckpointError(f"{root}: missing {name}") from None
            if hashlib.sha256(blobs[name]).hexdigest() != files[name]:
                raise CheckpointError(f"{root}: checksum mismatch in {name}")
        try:
            ids = json.loads(blobs["ids.json"])
            config = json.loads(blobs["config.json"])
            metrics = json.loads(blobs["metrics.json"])
            state = torch.load(io.BytesIO(blobs.pop("model.pt")), map_location="cpu", weights_only=True)
            user_index = {k: i for i, k in enumerate(ids["users"])}
            item_index = {k: i for i, k in enumerate(ids["items"])}
            scene_index = {k: i for i, k in enumerate(ids["scenes"])}
            # built on the meta device and given the loaded tensors (assign): the tables exist once in memory,
            # not as the file's bytes, the loaded state and the model's own copy at the same time
            with torch.device("meta"):
                model = build_model(config, len(user_index), len(item_index), len(scene_index))
            model.load_state_dict(state, strict=True, assign=True)
            del state
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - any parse/shape problem means an unusable checkpoint
            raise CheckpointError(f"{root}: cannot load: {type(exc).__name__}: {exc}") from None
        model.eval()
        return cls(model=model, user_index=user_index, item_index=item_index, scene_index=scene_index,
                   config=config, metrics=metrics, checksum=checksum)


@dataclass
class CheckpointRef:
    """A published checkpoint verified but not loaded: where it is, its checksum and its config (what a
    process that hands the model to others needs; the id tables stay in the store)."""

    uri: str
    checksum: str
    config: dict

    @classmethod
    def verify(cls, path: str | os.PathLike, expected_checksum: str | None = None) -> "CheckpointRef":
        """Check the checkpoint at ``path`` as :meth:`Checkpoint.load` does (manifest checksum, format, every
        file's sha256, streamed) and read its config; any problem raises :class:`CheckpointError`."""
        root = storage.normalize(str(path))
        try:
            manifest_bytes = storage.read_bytes(storage.join(root, _MANIFEST))
        except (OSError, FileNotFoundError):
            raise CheckpointError(f"{root}: no {_MANIFEST} (never published, or a write crashed before it)") from None
        checksum = hashlib.sha256(manifest_bytes).hexdigest()
        if expected_checksum is not None and checksum != expected_checksum:
            raise CheckpointError(f"{root}: checksum {checksum} differs from the expected {expected_checksum}")
        try:
            manifest = json.loads(manifest_bytes)
            files, fmt, prefix = manifest["files"], manifest["format"], manifest.get("prefix", "")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{root}: unreadable manifest: {exc}") from None
        if fmt != FORMAT_VERSION:
            raise CheckpointError(f"{root}: checkpoint format {fmt!r}, expected {FORMAT_VERSION}")
        if not isinstance(files, dict) or set(files) != set(_FILES):
            raise CheckpointError(f"{root}: manifest lists {sorted(files) if isinstance(files, dict) else files}")
        base = storage.join(root, prefix) if prefix else root
        for name in _FILES:
            digest = hashlib.sha256()
            try:
                with storage.open_input(storage.join(base, name)) as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(chunk)
            except (OSError, FileNotFoundError):
                raise CheckpointError(f"{root}: missing {name}") from None
            if digest.hexdigest() != files[name]:
                raise CheckpointError(f"{root}: checksum mismatch in {name}")
        try:
            config = json.loads(storage.read_bytes(storage.join(base, "config.json")))
        except ValueError as exc:
            raise CheckpointError(f"{root}: cannot load: {exc}") from None
        return cls(uri=root, checksum=checksum, config=config)


def checkpoint_files(path: str | os.PathLike) -> dict[str, str]:
    """The URIs of the files the published manifest at ``path`` names (for tools and tests)."""
    root = storage.normalize(str(path))
    manifest = json.loads(storage.read_bytes(storage.join(root, _MANIFEST)))
    base = storage.join(root, manifest["prefix"]) if manifest.get("prefix") else root
    return {name: storage.join(base, name) for name in manifest["files"]} | {_MANIFEST: storage.join(root, _MANIFEST)}


def _extend_index(index: Mapping[str, int], ids: Iterable[Any]) -> tuple[dict[str, int], list[str]]:
    new = sorted({str(i) for i in ids} - set(index))
    out = dict(index)
    for key in new:
        out[key] = len(out)
    return out, new


def grow(ckpt: Checkpoint, user_ids, item_ids, scenes) -> Checkpoint:
    """A new checkpoint whose id tables also hold the unseen ids (sorted, appended).

    Old rows are copied bit for bit; new user and item rows (and item id biases) are zero, so a new
    entity is represented by its content exactly as an unknown one would be; a new scene row is the
    mean of the known scene rows (zero if there are none). ``ckpt`` is not modified.
    """
    user_index, new_users = _extend_index(ckpt.user_index, idmap.str_array(user_ids))
    item_index, new_items = _extend_index(ckpt.item_index, idmap.str_array(item_ids))
    scene_index, new_scenes = _extend_index(ckpt.scene_index, idmap.str_array(scenes))
    old = ckpt.model
    model = build_model(ckpt.config, len(user_index), len(item_index), len(scene_index))
    state = {k: v.detach().clone() for k, v in old.state_dict().items()}
    with torch.no_grad():
        def extended(table: torch.Tensor, n_new: int, fill: torch.Tensor | None = None) -> torch.Tensor:
            extra = torch.zeros(n_new, table.shape[1], dtype=table.dtype)
            if fill is not None and n_new:
                extra[:] = fill
            return torch.cat([table, extra], dim=0)

        state["user_id.weight"] = extended(state["user_id.weight"], len(new_users))
        state["item_id.weight"] = extended(state["item_id.weight"], len(new_items))
        state["item_id_bias.weight"] = extended(state["item_id_bias.weight"], len(new_items))
        state["item_hist.weight"] = extended(state["item_hist.weight"], len(new_items))
        state["item_target.weight"] = extended(state["item_target.weight"], len(new_items))
        state["ii_left"] = extended(state["ii_left"], len(new_items))  # refitted by the next train
        state["ii_right"] = extended(state["ii_right"], len(new_items))
        scenes_w = state["scene.weight"]
        mean = scenes_w.mean(0) if scenes_w.shape[0] else None
        state["scene.weight"] = extended(scenes_w, len(new_scenes), mean)
    model.load_state_dict(state, strict=True)
    config = dict(ckpt.config, n_users=len(user_index), n_items=len(item_index), n_scenes=len(scene_index))
    if new_users or new_items or new_scenes:
        log.info("grew id tables: +%d users, +%d items, +%d scenes", len(new_users), len(new_items), len(new_scenes))
    return Checkpoint(model=model, user_index=user_index, item_index=item_index, scene_index=scene_index,
                      config=config, metrics={}, checksum=None)
