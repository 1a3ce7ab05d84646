"""The score kernel at several vector widths: the bare fp32 products, the kernel with the split bf16
prefilter and the fp32 kernel, interleaved per repetition, medians (bench/results/score_speed.md).

The served vectors are ``dim + id_dim + ii_rank + content_rank`` wide (448 at the defaults,
docs/model.md), so the prefilter must pay there too, not only at bench/score_speed.py's dim 64.

    .venv/bin/python bench/score_widths.py 64 128 256 448
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

from coldstart.ranking import ItemMatrix, top_k_scores


def one_width(dim: int, users: int, items: int, k: int, reps: int) -> str:
    """One table row: the bare products' median seconds and each kernel's median over them."""
    gen = torch.Generator().manual_seed(0)
    U = torch.randn(users, dim, generator=gen)
    V = torch.randn(items, dim, generator=gen)
    b = torch.randn(items, generator=gen) * 0.1
    rng = np.random.default_rng(0)
    consumed = list(np.sort(rng.integers(0, items, size=(users, 20)), axis=1).astype(np.int64))
    prefiltered, fp32 = ItemMatrix(V, b, prefilter=True), ItemMatrix(V, b, prefilter=False)

    def bare() -> None:
        buffer = torch.empty(256, fp32.width)
        for start in range(0, users, 256):
            torch.mm(U[start:start + 256], fp32.transposed, out=buffer[:len(U[start:start + 256])])

    variants = {"bare": bare, "prefilter": lambda: top_k_scores(U, prefiltered, k, consumed),
                "fp32": lambda: top_k_scores(U, fp32, k, consumed)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    base = statistics.median(times["bare"])
    return f"| {dim} | {base:.2f} | " + " | ".join(f"{statistics.median(times[n]) / base:.2f}x"
                                                  for n in ("prefilter", "fp32")) + " |"


def main(dims: list[int], users: int = 5000, items: int = 50_000, k: int = 50, reps: int = 3) -> None:
    for dim in dims:
        print(one_width(dim, users, items, k, reps), flush=True)


if __name__ == "__main__":
    print("| dim | bare s | prefilter kernel | fp32 kernel |\n|---:|---:|---:|---:|")
    main([int(d) for d in sys.argv[1:]] or [64, 128, 256, 448])
