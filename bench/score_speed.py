"""Speed of the score stage's top-k kernel against the bare matrix products, side by side in one run.

Target (issue #6): top-50 for 100k (user, scene) rows x 50k items at dim 64 within 1.5x the time of
the bare matrix products on the same machine, same run.

The variants run over the same random user/item vectors and the same row tiles, interleaved per
repetition so that load from other processes hits all of them alike; medians are reported:

* ``bare``   - ``torch.mm`` of each tile of users against all items into a reused buffer (fp32), nothing else;
* ``kernel`` - :func:`coldstart.ranking.top_k_scores` as the score stage runs it: on a CPU with AMX the
  split bf16 prefilter and the exact fp32 rescoring of its survivors, elsewhere the fp32 kernel;
* ``fp32 kernel`` - the same with the prefilter off: one fp32 product with the bias, consumed-item
  masking, the group-max pruned exact top-k;
* ``previous`` - the fp32 kernel with the selection before the threshold;
* ``naive``  - addmm with the bias, the same masking, then ``torch.topk`` over all items.

``--sweep`` first times bare and kernel at a few tile sizes on a smaller user count (how
SCORE_TILE_USERS was chosen). Results go to bench/results/score_speed.md.

    .venv/bin/python bench/score_speed.py                 # the target size
    .venv/bin/python bench/score_speed.py --users 20000   # quicker
    .venv/bin/python bench/score_speed.py --help          # tiles, threads, sizes
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from coldstart.ranking import SCORE_TILE_USERS, TOPK_GROUP, ItemMatrix, top_k_scores

RESULTS = Path(__file__).resolve().parent / "results" / "score_speed.md"


def make_data(users: int, items: int, dim: int, consumed_per_user: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    user_vecs = torch.randn(users, dim, generator=gen)
    item_vecs = torch.randn(items, dim, generator=gen)
    bias = torch.randn(items, generator=gen) * 0.1
    rng = np.random.default_rng(seed)
    consumed = list(np.sort(rng.integers(0, items, size=(users, consumed_per_user)), axis=1).astype(np.int64))
    return user_vecs, item_vecs, bias, consumed


def bare(user_vecs, items: ItemMatrix, tile: int) -> None:
    buffer = torch.empty(min(tile, len(user_vecs)), items.width)
    for start in range(0, len(user_vecs), tile):
        rows = user_vecs[start:start + tile]
        torch.mm(rows, items.transposed, out=buffer[:rows.shape[0]])


def kernel(user_vecs, items: ItemMatrix, tile: int, k: int, consumed) -> None:
    top_k_scores(user_vecs, items, k, consumed, tile=tile)


def previous_select(scores, k: int):
    """The kernel's selection before the threshold: top-k of the group maxima (unsorted), then torch.topk
    over those k groups' k x TOPK_GROUP scores."""
    n, width = scores.shape
    groups = width // TOPK_GROUP
    if width % TOPK_GROUP or groups <= 2 * k:
        return torch.topk(scores, k, dim=1)
    best_groups = torch.topk(scores.view(n, groups, TOPK_GROUP).amax(dim=2), k, dim=1, sorted=False).indices
    rows = (best_groups + torch.arange(n).unsqueeze(1) * groups).view(-1)
    candidates = scores.view(n * groups, TOPK_GROUP).index_select(0, rows).view(n, k * TOPK_GROUP)
    values, position = torch.topk(candidates, k, dim=1)
    columns = best_groups.gather(1, torch.div(position, TOPK_GROUP, rounding_mode="floor")) * TOPK_GROUP \
        + position % TOPK_GROUP
    return values, columns


def previous(user_vecs, items: ItemMatrix, tile: int, k: int, consumed):
    """top_k_scores with the previous selection (same product and masking)."""
    return top_k_scores(user_vecs, items, k, consumed, tile=tile, select=previous_select)


def naive(user_vecs, items: ItemMatrix, tile: int, k: int, consumed) -> None:
    buffer = torch.empty(min(tile, len(user_vecs)), items.width)
    neg_inf = torch.tensor(float("-inf"))
    for start in range(0, len(user_vecs), tile):
        rows = user_vecs[start:start + tile]
        scores = torch.addmm(items.bias, rows, items.transposed, out=buffer[:rows.shape[0]])
        part = consumed[start:start + tile]
        row_idx = torch.from_numpy(np.repeat(np.arange(len(part)), [len(c) for c in part]))
        scores.index_put_((row_idx, torch.from_numpy(np.concatenate(part))), neg_inf)
        torch.topk(scores, k, dim=1)


def timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def side_by_side(variants: dict, reps: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(reps):
        for name, (fn, args) in variants.items():
            times[name].append(timed(fn, *args))
        print(f"  rep {rep + 1}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()), flush=True)
    return times


def check_exact(user_vecs, items: ItemMatrix, fp32_items: ItemMatrix, k: int, consumed, tile: int,
                rows: int = 2048) -> dict:
    """On a sample of rows: the kernel's scores equal torch.topk's over all items (to float rounding: addmm
    adds the bias in another order); the fp32 kernel's scores are identical to the previous selection's,
    and so are its ids once equal scores are put in ascending id order (the previous order among them was
    torch.topk's); the share of the kernel's ids equal to the fp32 kernel's (the prefilter rescores in
    another order of the same products: a score may differ in its last bit, and two items so close swap)."""
    sample, part = user_vecs[:rows], consumed[:rows]
    values, positions = top_k_scores(sample, items, k, part, tile=tile)
    fp32_values, fp32_positions = top_k_scores(sample, fp32_items, k, part, tile=tile)
    old_values, old_positions = previous(sample, fp32_items, tile, k, part)
    full = torch.addmm(items.bias, sample, items.transposed)
    for row, cols in enumerate(part):
        full[row, torch.from_numpy(cols)] = float("-inf")
    canonical = np.array([p[np.lexsort((p, -v))] for v, p in zip(old_values, old_positions.astype(np.int64))])
    tied = sum(len(np.unique(v)) < len(v) for v in values)
    return {"topk": bool(np.allclose(values, torch.topk(full, k, dim=1).values.numpy(), rtol=1e-5, atol=1e-5)),
            "previous": bool(np.array_equal(fp32_values, old_values) and np.array_equal(fp32_positions, canonical)),
            "same_ids": float((positions == fp32_positions).mean()),
            "max_diff": float(np.abs(values - fp32_values).max()), "rows": len(values), "tied": int(tied)}


def cpu_model() -> str:
    """The CPU's model name and vector extensions, from /proc/cpuinfo (platform.processor() says only x86_64)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{fields.get('model name', platform.machine())} ({fields.get('vendor_id', '?')}, family " \
           f"{fields.get('cpu family', '?')} model {fields.get('model', '?')}, {vector})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000, help="(user, scene) rows (default 100000)")
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--consumed", type=int, default=20, help="consumed items masked per user (default 20)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tile", type=int, default=SCORE_TILE_USERS, help="rows per matrix product")
    parser.add_argument("--sweep", action="store_true", help="first time bare and kernel at several tile sizes")
    parser.add_argument("--sweep-users", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    lines = [f"# Score kernel speed ({dt.date.today().isoformat()})", "",
             f"Command: `.venv/bin/python bench/score_speed.py {' '.join(os.sys.argv[1:])}`".rstrip(), "",
             f"Machine: {cpu_model()}, {os.cpu_count()} cores, torch "
             f"{torch.__version__} with {torch.get_num_threads()} threads; load average at start "
             f"{os.getloadavg()[0]:.1f} (on a shared machine absolute times are noisy); the variants are "
             f"interleaved per repetition and compared by medians.", ""]

    if args.sweep:
        print(f"sweep: {args.sweep_users} users x {args.items} items, dim {args.dim}", flush=True)
        user_vecs, item_vecs, bias, consumed = make_data(args.sweep_users, args.items, args.dim, args.consumed, 1)
        items = ItemMatrix(item_vecs, bias)
        lines += [f"## Tile sweep ({args.sweep_users} users x {args.items} items, dim {args.dim}, top-{args.k}, "
                  f"{args.reps} reps, medians)", "", "| tile | bare s | kernel s | kernel / bare |", "|---|---|---|---|"]
        for tile in (64, 128, 256, 512, 1024, 4096):
            print(f" tile {tile}", flush=True)
            t = side_by_side({"bare": (bare, (user_vecs, items, tile)),
                              "kernel": (kernel, (user_vecs, items, tile, args.k, consumed))}, args.reps)
            b, kk = statistics.median(t["bare"]), statistics.median(t["kernel"])
            lines.append(f"| {tile} | {b:.2f} | {kk:.2f} | {kk / b:.2f}x |")
        lines.append("")

    print(f"main: {args.users} users x {args.items} items, dim {args.dim}, top-{args.k}, tile {args.tile}", flush=True)
    user_vecs, item_vecs, bias, consumed = make_data(args.users, args.items, args.dim, args.consumed, 0)
    items, fp32_items = ItemMatrix(item_vecs, bias), ItemMatrix(item_vecs, bias, prefilter=False)
    exact = check_exact(user_vecs, items, fp32_items, args.k, consumed, args.tile)
    times = side_by_side({"bare": (bare, (user_vecs, fp32_items, args.tile)),
                          "kernel": (kernel, (user_vecs, items, args.tile, args.k, consumed)),
                          "fp32 kernel": (kernel, (user_vecs, fp32_items, args.tile, args.k, consumed)),
                          "previous": (previous, (user_vecs, fp32_items, args.tile, args.k, consumed)),
                          "naive": (naive, (user_vecs, fp32_items, args.tile, args.k, consumed))}, args.reps)
    med = {name: statistics.median(t) for name, t in times.items()}
    ratio = med["kernel"] / med["bare"]
    lines += [f"## Target size: {args.users} (user, scene) rows x {args.items} items, dim {args.dim}, top-{args.k}",
              "", f"Tile {args.tile} rows, group {TOPK_GROUP} columns, {args.consumed} consumed items masked per row, "
              f"{args.reps} interleaved repetitions. The split bf16 prefilter is "
              f"{'ON (this CPU has AMX bf16)' if items.prefilter is not None else 'off (no AMX bf16 here)'}. "
              f"On {exact['rows']} sampled rows the kernel's scores equal torch.topk's: "
              f"{'yes' if exact['topk'] else 'NO'}; they differ from the fp32 kernel's by at most "
              f"{exact['max_diff']:.2g}, and {100 * exact['same_ids']:.3f} % of its ids are the fp32 kernel's; the fp32 "
              f"kernel's scores and ids are identical to the previous selection's (equal scores in ascending id "
              f"order; {exact['tied']} rows hold a tie): {'yes' if exact['previous'] else 'NO'}.", "",
              "| variant | median s | runs s | / bare |", "|---|---|---|---|"]
    for name in ("bare", "kernel", "fp32 kernel", "previous", "naive"):
        lines.append(f"| {name} | {med[name]:.2f} | {', '.join(f'{x:.2f}' for x in times[name])} | "
                     f"{med[name] / med['bare']:.2f}x |")
    verdict = "meets" if ratio <= 1.5 else "does NOT meet"
    lines += ["", f"Kernel / bare = **{ratio:.2f}x** ({verdict} the 1.5x target); fp32 kernel / bare = "
              f"{med['fp32 kernel'] / med['bare']:.2f}x; naive / bare = "
              f"{med['naive'] / med['bare']:.2f}x; previous / bare = {med['previous'] / med['bare']:.2f}x; selection "
              f"cost (fp32 kernel - bare) / (previous - bare) = "
              f"{(med['fp32 kernel'] - med['bare']) / max(med['previous'] - med['bare'], 1e-9):.2f}.", ""]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
