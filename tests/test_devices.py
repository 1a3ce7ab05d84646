"""The device setting: which device training and scoring pick, and the GPU check without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from coldstart.config import Settings, SettingsError
from coldstart.devices import DeviceError, fast_matmul, resolve_device
from coldstart.ranking import ItemMatrix, _top_k_on_device, top_k_scores

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("setting,available,expected", [
    ("auto", True, "cuda"), ("auto", False, "cpu"), ("AUTO ", False, "cpu"), ("", True, "cuda"),
    ("cpu", True, "cpu"), ("cpu", False, "cpu"), ("cuda", True, "cuda"),
])
def test_resolve_device(setting, available, expected):
    assert resolve_device(setting, available=available) == expected


def test_cuda_without_a_gpu_and_unknown_devices_are_errors():
    with pytest.raises(DeviceError, match="no CUDA device"):
        resolve_device("cuda", available=False)
    with pytest.raises(DeviceError, match="must be one of auto, cpu, cuda"):
        resolve_device("tpu", available=True)
    with pytest.raises(SettingsError, match="COLDSTART_DEVICE='gpu'"):
        Settings.load(env={"COLDSTART_DEVICE": "gpu"})
    assert Settings.load(env={"COLDSTART_DEVICE": "cpu"}).device == "cpu"
    assert Settings.load(env={}).device == "auto"


def test_auto_asks_torch():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_fast_matmul_turns_tf32_on_only_for_cuda_and_restores_it():
    before = torch.backends.cuda.matmul.allow_tf32
    with fast_matmul("cpu"):
        assert torch.backends.cuda.matmul.allow_tf32 == before
    with fast_matmul("cuda"):
        assert torch.backends.cuda.matmul.allow_tf32 is True
    assert torch.backends.cuda.matmul.allow_tf32 == before


def test_the_device_kernel_path_gives_the_cpu_results():
    """The GPU path's steps (torch masking, wide tiles, the device's top-k), run here on CPU tensors."""
    rng = np.random.default_rng(3)
    U, V = rng.standard_normal((300, 8)).astype(np.float32), rng.standard_normal((5000, 8)).astype(np.float32)
    bias = rng.standard_normal(5000).astype(np.float32)
    consumed = [np.sort(rng.choice(5000, size=rng.integers(0, 30), replace=False)) for _ in range(300)]
    items = ItemMatrix(V, bias)
    values, positions = top_k_scores(U, items, 20, consumed)
    for tile in (None, 7):
        dv, dp = _top_k_on_device(U, items, 20, consumed, tile, lambda s, k: torch.topk(s, k, dim=1))
        np.testing.assert_allclose(dv, values, rtol=1e-5)  # another tile width: another BLAS kernel, last bits
        assert (dp == positions).mean() > 0.99 and all(set(a) == set(b) for a, b in zip(dp[:, :10], positions[:, :10]))


def _gpu_check(*args):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU path; a GPU machine runs the full check")
def test_gpu_check_without_a_gpu_says_so_and_exits_0():
    done = _gpu_check()
    assert done.returncode == 0, done.stderr
    assert "no CUDA device visible to torch" in done.stdout


def test_gpu_check_cpu_side_runs():
    """--smoke: every figure of the CPU side at tiny sizes (the code a GPU machine runs for its CPU column)."""
    done = _gpu_check("--smoke")
    assert done.returncode == 0, done.stderr
    for figure in ("matmul rate", "encoder  16 tokens", "encoder 128 tokens", "one epoch of 1000 events",
                   "top-50 of 1000 users x 2000 items"):
        assert figure in done.stdout, done.stdout
