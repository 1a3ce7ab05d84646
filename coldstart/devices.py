"""Which torch device training and scoring run on (the ``device`` setting), and its fast-math modes.

``auto`` means CUDA when torch sees a CUDA device, else the CPU; ``cuda`` without one is an error
rather than a silent fall-back, so a GPU machine that lost its driver does not quietly run a night
at CPU speed. The encoder keeps its own ``encoder_device`` (coldstart.encoder).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(RuntimeError):
    """The device setting cannot be honoured on this machine."""


def cuda_available() -> bool:
    """Whether torch sees a usable CUDA device."""
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(setting: str, available: bool | None = None) -> str:
    """``"cpu"`` or ``"cuda"`` for a device setting (auto | cpu | cuda); ``available`` is whether CUDA
    is usable (default: ask torch). Raises :class:`DeviceError` for ``cuda`` without CUDA or an
    unknown value."""
    choice = (setting or "auto").strip().lower()
    if choice not in DEVICES:
        raise DeviceError(f"device {setting!r}: must be one of {', '.join(DEVICES)}")
    if choice == "cpu":
        return "cpu"
    has_cuda = cuda_available() if available is None else bool(available)
    if choice == "cuda" and not has_cuda:
        raise DeviceError("device 'cuda' but torch sees no CUDA device (set COLDSTART_DEVICE to auto or cpu)")
    return "cuda" if has_cuda else "cpu"


@contextlib.contextmanager
def fast_matmul(device: str) -> Iterator[None]:
    """On CUDA, TF32 for float32 products (tensor cores, ~10 bits of mantissa: the towers and the score
    product tolerate it, and it is several times the plain fp32 rate); on the CPU nothing changes, so
    CPU results stay bit for bit what they were. The previous flags are restored on exit."""
    if device != "cuda":
        yield
        return
    import torch

    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
