"""Checkpoint folders (write atomically, load verified) and growing a checkpoint's id tables for transfer.

A checkpoint is a folder of ``model.pt`` (state dict), ``ids.json``, ``config.json``, ``metrics.json``
and ``MANIFEST.json`` (sha256 of each file); the checkpoint's checksum is the sha256 of
``MANIFEST.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from coldstart import idmap
from coldstart.model.network import InterestModel, build_model

log = logging.getLogger("coldstart.model")

FORMAT_VERSION = 2  # 2: item state (fresh_bias, pop_weight), item_hist
_FILES = ("model.pt", "ids.json", "config.json", "metrics.json")
_MANIFEST = "MANIFEST.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt (checksum mismatch), unreadable or incompatible."""


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


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)



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
    def _write_files(self, folder: Path) -> str:
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.model.state_dict().items()}
        torch.save(state, folder / "model.pt")
        ids = {"users": index_list(self.user_index), "items": index_list(self.item_index),
               "scenes": index_list(self.scene_index)}
        (folder / "ids.json").write_bytes(_json_bytes(ids))
        (folder / "config.json").write_bytes(_json_bytes(json_safe(self.config)))
        (folder / "metrics.json").write_bytes(_json_bytes(json_safe(self.metrics)))
        manifest = {"format": FORMAT_VERSION, "files": {name: _sha256_file(folder / name) for name in _FILES}}
        data = _json_bytes(manifest)
        (folder / _MANIFEST).write_bytes(data)
        for name in (*_FILES, _MANIFEST):
            with (folder / name).open("rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(folder)
        return hashlib.sha256(data).hexdigest()

    def save(self, path: str | os.PathLike) -> str:
        """Write atomically to ``path`` (a folder); return the checksum (sha256 of the manifest).

        Files go to a temporary sibling folder first, which is then renamed to ``path``. An existing
        ``path`` (re-run of the same date) is first renamed aside and deleted after the swap, so a
        reader sees either the old or the new complete checkpoint (or, for an instant, none); never
        a partial one.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:12]
        tmp = path.parent / f".{path.name}.tmp-{token}"
        old = path.parent / f".{path.name}.old-{token}"
        tmp.mkdir()
        try:
            checksum = self._write_files(tmp)
            if path.exists():
                os.rename(path, old)
                try:
                    os.rename(tmp, path)
                except BaseException:
                    os.rename(old, path)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, path)
            _fsync_dir(path.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.checksum = checksum
        log.info("checkpoint written to %s (checksum %s)", path, checksum[:12])
        return checksum

    # -- reading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, expected_checksum: str | None = None) -> "Checkpoint":
        """Load and verify a checkpoint folder; any problem raises :class:`CheckpointError`.

        ``expected_checksum`` (e.g. from model_registry) must then equal the manifest's sha256.
        """
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"no checkpoint at {path}")
        try:
            manifest_bytes = (path / _MANIFEST).read_bytes()
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read {_MANIFEST}: {exc}") from None
        checksum = hashlib.sha256(manifest_bytes).hexdigest()
        if expected_checksum is not None and checksum != expected_checksum:
            raise CheckpointError(f"{path}: checksum {checksum} differs from the expected {expected_checksum}")
        try:
            manifest = json.loads(manifest_bytes)
            files = manifest["files"]
            fmt = manifest["format"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: unreadable manifest: {exc}") from None
        if fmt != FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format {fmt!r}, expected {FORMAT_VERSION}")
        if not isinstance(files, dict) or set(files) != set(_FILES):
            raise CheckpointError(f"{path}: manifest lists {sorted(files) if isinstance(files, dict) else files}, "
                                  f"expected {sorted(_FILES)}")
        for name in _FILES:
            target = path / name
            if not target.is_file():
                raise CheckpointError(f"{path}: missing {name}")
            digest = _sha256_file(target)
            if digest != files[name]:
                raise CheckpointError(f"{path}: checksum mismatch in {name}")
        try:
            ids = json.loads((path / "ids.json").read_bytes())
            config = json.loads((path / "config.json").read_bytes())
            metrics = json.loads((path / "metrics.json").read_bytes())
            state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
            user_index = {k: i for i, k in enumerate(ids["users"])}
            item_index = {k: i for i, k in enumerate(ids["items"])}
            scene_index = {k: i for i, k in enumerate(ids["scenes"])}
            model = build_model(config, len(user_index), len(item_index), len(scene_index))
            model.load_state_dict(state, strict=True)
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - any parse/shape problem means an unusable checkpoint
            raise CheckpointError(f"{path}: cannot load: {type(exc).__name__}: {exc}") from None
        model.eval()
        return cls(model=model, user_index=user_index, item_index=item_index, scene_index=scene_index,
                   config=config, metrics=metrics, checksum=checksum)


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
        scenes_w = state["scene.weight"]
        mean = scenes_w.mean(0) if scenes_w.shape[0] else None
        state["scene.weight"] = extended(scenes_w, len(new_scenes), mean)
    model.load_state_dict(state, strict=True)
    config = dict(ckpt.config, n_users=len(user_index), n_items=len(item_index), n_scenes=len(scene_index))
    if new_users or new_items or new_scenes:
        log.info("grew id tables: +%d users, +%d items, +%d scenes", len(new_users), len(new_items), len(new_scenes))
    return Checkpoint(model=model, user_index=user_index, item_index=item_index, scene_index=scene_index,
                      config=config, metrics={}, checksum=None)
