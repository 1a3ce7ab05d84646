"""The split bf16 prefilter against the fp32 kernel over catalogue sizes, vector widths and torch threads
(how PREFILTER_MIN_ITEMS was chosen; bench/results/score_speed.md). 3 interleaved repetitions, medians.

    .venv/bin/python bench/score_grid.py
"""

import statistics
import time

import numpy as np
import torch

from coldstart.ranking import ItemMatrix, top_k_scores


def main(k: int = 50) -> None:
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for n_items in (10_000, 50_000):
            for dim in (64, 448):
                print(f"threads {threads} items {n_items} dim {dim}: {one_shape(n_items, dim, k)}", flush=True)


def one_shape(n_items: int, dim: int, k: int) -> str:
    """The prefilter's and the fp32 kernel's median seconds on one shape, and their ratio."""
    users = 4096 if n_items == 10_000 else 2048
    gen = torch.Generator().manual_seed(0)
    U = torch.randn(users, dim, generator=gen)
    V = torch.randn(n_items, dim, generator=gen)
    b = torch.randn(n_items, generator=gen) * 0.1
    consumed = list(np.sort(np.random.default_rng(0).integers(0, n_items, size=(users, 20)), axis=1).astype(np.int64))
    matrices = {"pf": ItemMatrix(V, b, prefilter=True), "fp": ItemMatrix(V, b, prefilter=False)}
    res: dict[str, list[float]] = {"pf": [], "fp": []}
    for _ in range(3):
        for name, matrix in matrices.items():
            started = time.perf_counter()
            top_k_scores(U, matrix, k, consumed)
            res[name].append(time.perf_counter() - started)
    p, f = statistics.median(res["pf"]), statistics.median(res["fp"])
    return f"prefilter {p:.3f} fp32 {f:.3f} ratio {p / f:.2f}"


if __name__ == "__main__":
    main()
