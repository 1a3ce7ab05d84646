"""The score kernel over vector widths, catalogue sizes and torch threads: the bare fp32 products, the
kernel with the split bf16 prefilter and the fp32 kernel, interleaved per repetition, medians
(bench/results/score_speed.md).

The served vectors are ``dim + id_dim + ii_rank + content_rank`` wide (448 at the defaults,
docs/model.md), so the prefilter must pay there too, not only at bench/score_speed.py's dim 64; and it
pays only where writing the score tile dominates, which is how PREFILTER_MIN_ITEMS was chosen (``--grid``).

    .venv/bin/python bench/score_widths.py 64 128 256 448     # widths, 5,000 rows x 50,000 items
    .venv/bin/python bench/score_widths.py --grid             # threads 1 2 x items 10k 50k x dims 64 448
    .venv/bin/python bench/score_widths.py 64 --users 300 --items 2000 --reps 1   # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

# bench/ is the script's folder, so its first sys.path entry: the same data and bare products as score_speed.py
from score_speed import bare, make_data

from coldstart.ranking import SCORE_TILE_USERS, ItemMatrix, top_k_scores

GRID = {"dims": [64, 448], "items": [10_000, 50_000], "threads": [1, 2]}  # the grid behind PREFILTER_MIN_ITEMS


def one_shape(dim: int, users: int, items: int, k: int, reps: int) -> str:
    """One table row for the current torch threads: the bare products' median seconds, each kernel's
    median over them, and the prefilter kernel's over the fp32 kernel's."""
    user_vecs, item_vecs, bias, consumed = make_data(users, items, dim, 20, 0)
    prefiltered, fp32 = ItemMatrix(item_vecs, bias, prefilter=True), ItemMatrix(item_vecs, bias, prefilter=False)
    variants = {"bare": lambda: bare(user_vecs, fp32, SCORE_TILE_USERS),
                "prefilter": lambda: top_k_scores(user_vecs, prefiltered, k, consumed),
                "fp32": lambda: top_k_scores(user_vecs, fp32, k, consumed)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    med = {name: statistics.median(t) for name, t in times.items()}
    return f"| {torch.get_num_threads()} | {items} | {users} | {dim} | {med['bare']:.3f} | " \
           f"{med['prefilter'] / med['bare']:.2f}x | {med['fp32'] / med['bare']:.2f}x | " \
           f"{med['prefilter'] / med['fp32']:.2f}x |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dims", type=int, nargs="*", help="vector widths (default 64 128 256 448; --grid: 64 448)")
    parser.add_argument("--items", type=int, nargs="+", help="catalogue sizes (default 50000; --grid: 10000 50000)")
    parser.add_argument("--threads", type=int, nargs="+", help="torch intra-op threads (default torch's; --grid: 1 2)")
    parser.add_argument("--users", type=int, help="rows scored (default 5000; --grid: 4096 up to 10k items, else 2048)")
    parser.add_argument("--grid", action="store_true", help="the defaults of the former bench/score_grid.py")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    dims = args.dims or (GRID["dims"] if args.grid else [64, 128, 256, 448])
    catalogues = args.items or (GRID["items"] if args.grid else [50_000])
    threads = args.threads or (GRID["threads"] if args.grid else [torch.get_num_threads()])
    print("| threads | items | rows | dim | bare s | prefilter kernel / bare | fp32 kernel / bare | prefilter / fp32 |\n"
          "|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for items in catalogues:
            users = args.users or ((4096 if items <= 10_000 else 2048) if args.grid else 5000)
            for dim in dims:
                print(one_shape(dim, users, items, args.k, args.reps), flush=True)


if __name__ == "__main__":
    main()
