"""Encoder throughput against the machine's own limit.

    HF_HUB_OFFLINE=1 python bench/encoder_bench.py                 # CPU, fp32
    HF_HUB_OFFLINE=1 python bench/encoder_bench.py --device cuda   # GPU, bf16 autocast (as the encoder runs there)
    ... --quick                                                    # smoke run (seconds, not minutes)

What one run measures, all in the same process so the numbers are comparable:

(a) the ceiling: a large ``torch.mm`` (fp32 on CPU; bf16 and fp32 on GPU), median of several
    repetitions, measured at the start, between the variants, and at the end (so that a
    neighbour competing for the cores shows up as a spread, not as a silent error);
(b) the model's FLOPs per sentence at each length, counted analytically from ``config.json``:
    per layer, Q/K/V/O projections ``8·L·h²``, feed-forward ``4·L·h·i``, attention scores and
    weighted sum ``4·L²·h`` (embeddings, layer norms, softmax and GELU are not counted: they are
    memory-bound and small);
(c) sentences/s with exactly L tokens per sentence (model time only; no padding), for a sweep of
    batch sizes and for each variant (attention implementation, oneDNN linears, torch.compile with
    its compile time counted), as a fraction of the limit = ceiling / FLOPs per sentence; the
    tokenisation rate of ``TextEncoder.tokenize`` (cleaning + fast tokenizer) beside it;
(d) ``TextEncoder.encode`` end to end on a corpus of mixed lengths, with and without the
    length-sorted batching, counting only useful (unpadded) FLOPs.

Results go to ``--out`` (default ``bench/results/encoder.json``) and a markdown summary to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from coldstart.encoder import TextEncoder, _quiet_transformers, bundled_model_path, use_onednn_linears  # noqa: E402


# --- helpers --------------------------------------------------------------------------------

def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _jiffies() -> tuple[int, int, int] | None:
    """(all CPU time, idle time, this process's CPU time) in clock ticks, from /proc (Linux)."""
    try:
        with open("/proc/stat") as fh:
            vals = [int(x) for x in fh.readline().split()[1:9]]
        with open("/proc/self/stat") as fh:
            raw = fh.read()
        fields = raw[raw.rindex(")") + 2:].split()
        return sum(vals), vals[3] + vals[4], int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None


class Timer:
    """Median of repeated timings, counting only repetitions during which the CPUs were ours.

    Other processes (the lead's Spark jobs share this 2-core machine) can take the cores at any
    moment; a repetition during which they used more than ``max_others`` of the CPU time is
    discarded and retried after a pause, until ``reps`` clean ones are in or ``patience_s`` has
    passed (then the median of whatever was measured is used, and the row says how many were clean).
    """

    patience_default = 60.0

    def __init__(self, device: str, max_others: float = 0.10, patience_s: float | None = None):
        self.device, self.max_others = device, max_others
        self.patience_s = self.patience_default if patience_s is None else patience_s
        self.clean = self.total = 0

    def __call__(self, fn, reps: int, inner: int = 1) -> float:
        clean, dirty = [], []
        start = time.perf_counter()
        while len(clean) < reps:
            j0 = _jiffies()
            sync(self.device)
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            sync(self.device)
            sec = (time.perf_counter() - t0) / inner
            j1 = _jiffies()
            others = 0.0
            if j0 and j1 and j1[0] > j0[0]:
                others = ((j1[0] - j0[0]) - (j1[1] - j0[1]) - (j1[2] - j0[2])) / (j1[0] - j0[0])
            (clean if others <= self.max_others else dirty).append(sec)
            if len(clean) < reps and time.perf_counter() - start > self.patience_s:
                break
            if others > self.max_others:
                time.sleep(1.0)
        self.clean, self.total = len(clean), len(clean) + len(dirty)
        return statistics.median(clean or dirty)


def median_time(fn, reps: int, device: str, inner: int = 1) -> float:
    """Median seconds per call (clean repetitions only, see Timer)."""
    return Timer(device)(fn, reps, inner)


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def mm_ceiling(device: str, dtype: torch.dtype, n: int, reps: int, backend: str = "torch.mm") -> float:
    """GFLOP/s of an n×n×n matmul, median of reps.

    backend "torch.mm" is PyTorch's default (MKL sgemm on x86 CPUs, cuBLAS on GPUs); "onednn" is
    the same product through oneDNN with a pre-packed weight (CPU only), which uses AVX-512 on
    AMD processors where MKL takes its AVX2 path. The machine's ceiling is the faster of the two.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    if backend == "onednn":
        packed = torch.ops.mkldnn._reorder_linear_weight(b, None)

        def fn():
            return torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
    else:
        def fn():
            return torch.mm(a, b)
    fn()
    inner = 1 if device == "cpu" else 20
    sec = median_time(fn, reps, device, inner)
    return 2 * n**3 / sec / 1e9


def model_flops(config, length: int) -> float:
    """FLOPs of one forward pass for one sentence of `length` tokens (matmuls only)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = 8 * length * h * h + 4 * length * h * i + 4 * length * length * h
    return layers * per_layer


# --- variants -------------------------------------------------------------------------------

def build(variant: str, device: str):
    """(forward(ids, mask) -> hidden, build seconds) for one variant of the model.

    sdpa: stock transformers model, PyTorch SDPA attention, MKL linears (the CPU default of
    PyTorch); eager-attn: the same with transformers' eager attention; onednn: sdpa with the
    linears on oneDNN (what TextEncoder does on CPU); compile / onednn+compile: torch.compile
    (dynamic=True) of the stock / oneDNN model, compile time counted.
    """
    from transformers import AutoModel

    attn = "eager" if variant == "eager-attn" else "sdpa"
    t0 = time.perf_counter()
    with _quiet_transformers():
        model = AutoModel.from_pretrained(str(bundled_model_path()), attn_implementation=attn).eval().to(device)
    if variant in ("onednn", "onednn+compile"):
        use_onednn_linears(model)
    fwd = model
    if variant.endswith("compile"):
        fwd = torch.compile(model, dynamic=True)
    built = time.perf_counter() - t0

    def forward(ids, mask):
        with torch.inference_mode():
            if device == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return fwd(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
            return fwd(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state

    return forward, built


def synthetic_batch(bs: int, length: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (bs, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return ids.to(device), torch.ones_like(ids).to(device)


def sweep(variant, device, lengths, batch_sizes, reps, seconds, config, limit_of):
    forward, built = build(variant, device)
    rows, compile_s = [], 0.0
    for length in lengths:
        for bs in batch_sizes:
            ids, mask = synthetic_batch(bs, length, device)
            sync(device)
            t0 = time.perf_counter()
            forward(ids, mask)  # first call: compiles, if this variant compiles
            sync(device)
            first = time.perf_counter() - t0
            forward(ids, mask)
            one = median_time(lambda ids=ids, mask=mask: forward(ids, mask), 1, device)
            inner = max(1, int(seconds / max(one, 1e-6)))
            timer = Timer(device)
            sec = timer(lambda ids=ids, mask=mask: forward(ids, mask), reps, inner)
            compile_s += max(0.0, first - sec)
            sps = bs / sec
            gflops = sps * model_flops(config, length) / 1e9
            rows.append({"variant": variant, "length": length, "batch_size": bs, "sent_per_s": round(sps, 1),
                         "gflop_per_s": round(gflops, 1), "fraction_of_limit": round(sps / limit_of(length), 3),
                         "first_call_s": round(first, 3), "clean_reps": f"{timer.clean}/{timer.total}"})
            print(f"  {variant:<15} L={length:<4} bs={bs:<5} {sps:9.1f} sent/s  {gflops:7.1f} GFLOP/s  "
                  f"{sps / limit_of(length):6.1%} of limit  (first call {first:.2f}s, clean reps {timer.clean}/{timer.total})",
                  flush=True)
    return rows, {"variant": variant, "build_s": round(built, 2), "compile_s": round(compile_s, 1)}


# --- tokenisation and end to end ---------------------------------------------------------------

def word_pool(tokenizer) -> list[str]:
    vocab = tokenizer.get_vocab()
    words = sorted(w for w, i in vocab.items() if 2000 <= i < 12000 and w.isalpha() and w.isascii() and len(w) >= 3)
    return words


def texts_of_length(tokenizer, n: int, length: int, rng) -> list[str]:
    pool = word_pool(tokenizer)
    return [" ".join(rng.choice(pool, size=max(0, length - 2))) for _ in range(n)]


def tokenisation_rate(enc: TextEncoder, length: int, n: int, reps: int, rng) -> float:
    texts = texts_of_length(enc.tokenizer, n, length, rng)
    got = np.mean([len(x) for x in enc.tokenize(texts[:50])])
    assert abs(got - length) <= 2, f"synthetic texts have {got} tokens, wanted {length}"
    sec = median_time(lambda: enc.tokenize(texts), reps, "cpu")
    return n / sec


def end_to_end(enc: TextEncoder, config, n: int, reps: int, rng) -> list[dict]:
    pool = word_pool(enc.tokenizer)
    lengths = rng.integers(8, enc.max_length + 1, size=n)
    texts = [" ".join(rng.choice(pool, size=int(k) - 2)) for k in lengths]
    ids = enc.tokenize(texts)
    useful = sum(model_flops(config, len(x)) for x in ids)
    out = []
    original_plan = enc.plan
    for mode in ("sorted", "input order"):
        if mode == "input order":
            enc.plan = lambda ids_: [np.arange(i, min(i + enc.batch_size, len(ids_)))
                                     for i in range(0, len(ids_), enc.batch_size)]
        padded = sum(max(len(ids[i]) for i in rows) * len(rows) for rows in enc.plan(ids))
        enc.encode(texts[: enc.batch_size])
        sec = median_time(lambda: enc.encode(texts), reps, enc.device)
        tok = median_time(lambda: enc.tokenize(texts), reps, "cpu")
        out.append({"batching": mode, "texts": n, "mean_tokens": round(float(np.mean([len(x) for x in ids])), 1),
                    "padding_overhead": round(padded / sum(len(x) for x in ids) - 1, 3),
                    "sent_per_s": round(n / sec, 1), "useful_gflop_per_s": round(useful / sec / 1e9, 1),
                    "tokenize_share": round(tok / sec, 3)})
        print(f"  encode() {mode:<12} {n / sec:8.1f} sent/s, useful {useful / sec / 1e9:6.1f} GFLOP/s, "
              f"padding +{out[-1]['padding_overhead']:.1%}, tokenize {tok / sec:.1%} of the time", flush=True)
    enc.plan = original_plan
    return out


# --- main -------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--lengths", default="10,64,128")
    ap.add_argument("--batch-sizes", default=None, help="default 16,32,64,128,256 (cpu); 64,256,1024,4096 (cuda)")
    ap.add_argument("--variants", default=None,
                    help="comma list of sdpa, eager-attn, onednn, compile, onednn+compile "
                         "(default cpu: sdpa,eager-attn,onednn,compile; cuda: sdpa,compile)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.4, help="target seconds per timed repetition")
    ap.add_argument("--mm-size", type=int, default=None, help="matmul size for the ceiling (cpu 2048, cuda 8192)")
    ap.add_argument("--e2e-texts", type=int, default=1024)
    ap.add_argument("--patience", type=float, default=60.0,
                    help="seconds to wait, per measurement, for repetitions the other processes on the machine "
                         "did not disturb (>10%% of the CPU time); after that the disturbed ones count too")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "encoder.json"))
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA device on this machine", file=sys.stderr)
        return 2
    cpu = args.device == "cpu"
    lengths = [int(x) for x in args.lengths.split(",")]
    batch_sizes = [int(x) for x in (args.batch_sizes or ("16,32,64,128,256" if cpu else "64,256,1024,4096")).split(",")]
    variants = (args.variants or ("sdpa,eager-attn,onednn,compile" if cpu else "sdpa,compile")).split(",")
    mm_n = args.mm_size or (2048 if cpu else 8192)
    if args.quick:
        batch_sizes, variants, args.reps, args.seconds, args.e2e_texts = batch_sizes[:2], variants[:1], 2, 0.05, 64
        args.patience = min(args.patience, 2.0)
    Timer.patience_default = args.patience
    ceiling_dtype = torch.float32 if cpu else torch.bfloat16
    rng = np.random.default_rng(0)

    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(str(bundled_model_path()))
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/encoder_bench.py", *(argv if argv is not None else sys.argv[1:])]),
        "device": args.device,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "gpu": torch.cuda.get_device_name() if not cpu else None},
        "loadavg_start": loadavg(),
    }
    print(f"# encoder benchmark {result['date']} on {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, loadavg {result['loadavg_start']}", flush=True)

    ceilings = []

    backends = ["torch.mm", "onednn"] if cpu and torch.backends.mkldnn.is_available() else ["torch.mm"]

    def measure_ceiling(when: str) -> None:
        got = {b: mm_ceiling(args.device, ceiling_dtype, mm_n, max(3, args.reps), b) for b in backends}
        best = max(got.values())
        ceilings.append({"when": when, "gflop_per_s": round(best, 1),
                         "by_backend": {b: round(g, 1) for b, g in got.items()}, "loadavg": loadavg()})
        print(f"ceiling ({when}): {mm_n}^3 {str(ceiling_dtype).replace('torch.', '')} matmul = "
              + ", ".join(f"{b} {g:.1f}" for b, g in got.items()) + " GFLOP/s", flush=True)

    measure_ceiling("start")
    if not cpu:
        fp32 = mm_ceiling(args.device, torch.float32, mm_n, args.reps)
        result["gpu_fp32_mm_gflop_per_s"] = round(fp32, 1)

    flops = {L: model_flops(config, L) for L in lengths}
    result["gflop_per_sentence"] = {str(L): round(flops[L] / 1e9, 3) for L in lengths}
    print("GFLOP per sentence: " + ", ".join(f"L={L}: {flops[L] / 1e9:.3f}" for L in lengths))

    def limit_of(length: int) -> float:
        return ceilings[0]["gflop_per_s"] * 1e9 / flops[length]

    rows, builds = [], []
    for variant in variants:
        try:
            r, b = sweep(variant, args.device, lengths, batch_sizes, args.reps, args.seconds, config, limit_of)
        except Exception as exc:  # noqa: BLE001 - a variant that cannot run is a result too
            print(f"  {variant}: failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            builds.append({"variant": variant, "build_s": float("nan"), "compile_s": float("nan"),
                           "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            continue
        rows += r
        builds.append(b)
        measure_ceiling(f"after {variant}")

    enc = TextEncoder(device=args.device)
    tok = {str(L): round(tokenisation_rate(enc, L, 1024 if not args.quick else 64, args.reps, rng), 1) for L in lengths}
    print("tokenize (clean_text + fast tokenizer) sentences/s: " + ", ".join(f"L={k}: {v:.0f}" for k, v in tok.items()))
    e2e = end_to_end(enc, config, args.e2e_texts, max(2, args.reps // 2), rng)
    measure_ceiling("end")

    result.update({"ceilings": ceilings, "limit_sent_per_s": {str(L): round(limit_of(L), 1) for L in lengths},
                   "variants": builds, "throughput": rows, "tokenize_sent_per_s": tok, "end_to_end": e2e,
                   "encoder_defaults": {"batch_size": enc.batch_size, "max_length": enc.max_length,
                                        "onednn_linears": getattr(enc, "onednn_linears", 0)},
                   "loadavg_end": loadavg()})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(markdown(result))
    print(f"\nwrote {out}")
    return 0


def markdown(r: dict) -> str:
    """The tables of encoder.md, from one result."""
    lines = []
    c = [x["gflop_per_s"] for x in r["ceilings"]]
    lines.append(f"Ceiling (best matmul backend): start {c[0]:.0f} GFLOP/s; all measurements {min(c):.0f}–{max(c):.0f} "
                 f"(median {statistics.median(c):.0f}); loadavg {r['loadavg_start']} → {r['loadavg_end']}.")
    lines.append("")
    lines.append("| ceiling measured | " + " | ".join(r["ceilings"][0]["by_backend"]) + " | loadavg |")
    lines.append("|---|" + "---:|" * len(r["ceilings"][0]["by_backend"]) + "---|")
    for x in r["ceilings"]:
        lines.append(f"| {x['when']} | " + " | ".join(f"{g:.0f}" for g in x["by_backend"].values())
                     + f" | {x['loadavg'][0] if x['loadavg'] else ''} |")
    lines.append("")
    lines.append("| length (tokens) | GFLOP/sentence | limit (sent/s) | tokenize (sent/s) |")
    lines.append("|---:|---:|---:|---:|")
    for L, g in r["gflop_per_sentence"].items():
        lines.append(f"| {L} | {g:.3f} | {r['limit_sent_per_s'][L]:.0f} | {r['tokenize_sent_per_s'][L]:.0f} |")
    lines.append("")
    lengths = list(r["gflop_per_sentence"])
    lines.append("| variant | batch | " + " | ".join(f"L={L} sent/s (% of limit)" for L in lengths) + " |")
    lines.append("|---|---:|" + "---:|" * len(lengths))
    by = {}
    for row in r["throughput"]:
        by.setdefault((row["variant"], row["batch_size"]), {})[str(row["length"])] = row
    for (variant, bs), cells in by.items():
        lines.append(f"| {variant} | {bs} | " + " | ".join(
            f"{cells[L]['sent_per_s']:.0f} ({cells[L]['fraction_of_limit']:.0%})" if L in cells else "" for L in lengths) + " |")
    lines.append("")
    lines.append("| variant | model build (s) | compile time counted (s) |")
    lines.append("|---|---:|---:|")
    for b in r["variants"]:
        lines.append(f"| {b['variant']} | {b['build_s']:.1f} | {b['compile_s']:.1f} |")
    lines.append("")
    lines.append("| encode() batching | texts | mean tokens | padding overhead | sent/s | useful GFLOP/s | tokenize share |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for e in r["end_to_end"]:
        lines.append(f"| {e['batching']} | {e['texts']} | {e['mean_tokens']} | {e['padding_overhead']:.1%} | "
                     f"{e['sent_per_s']:.0f} | {e['useful_gflop_per_s']:.0f} | {e['tokenize_share']:.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
