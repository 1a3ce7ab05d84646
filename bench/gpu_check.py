"""One look at the GPU path next to the CPU path (bench/gpu_check.sh runs this; < 5 minutes on a GPU machine).

Prints, for the GPU and then for the CPU, each measured in this run:

* the matmul rate: bf16 ``torch.mm`` on the GPU (the encoder runs in bf16 there), fp32 on the CPU;
* encoder sentences/s at 16, 64 and 128 tokens (``TextEncoder.embed_ids`` of exactly that many tokens,
  the encoder as the embed stage runs it) and as a fraction of the device's matmul rate
  (the model's matmul FLOPs per sentence x sentences/s / rate);
* one training epoch's seconds (``coldstart.model.train``, one epoch, on a synthetic world);
* top-50 scoring seconds for 1M users x 100k items at dim 64 (``coldstart.ranking.top_k_scores``,
  20 consumed items masked per user).

The CPU side runs smaller sizes (``--cpu-fraction``, default 1/10 of the events and of the users)
and scales its seconds up linearly; every line says so. Without a CUDA device it says so and exits 0
(``--smoke`` instead runs the CPU side at tiny sizes: how the tests check this script).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from encoder_bench import mm_ceiling, model_flops, sync  # noqa: E402  # the encoder benchmark's measures


def timed(fn, device: str) -> float:
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


def matmul_rate(device: str, n: int) -> float:
    """FLOP/s of an n x n x n product (bench/encoder_bench.py's ceiling): bf16 on CUDA; on the CPU fp32,
    the faster of torch.mm and oneDNN (the encoder's linears run on oneDNN there)."""
    if device == "cuda":
        return mm_ceiling("cuda", torch.bfloat16, n, 5) * 1e9
    return max(mm_ceiling("cpu", torch.float32, n, 3), mm_ceiling("cpu", torch.float32, n, 3, "onednn")) * 1e9


def encoder_rates(device: str, lengths, sentences: int, batch: int, rate: float) -> list[tuple[int, float, float]]:
    """(length, sentences/s, fraction of the matmul rate) for sentences of exactly ``length`` tokens."""
    from coldstart.encoder import TextEncoder

    enc = TextEncoder(device=device, batch_size=batch, max_length=max(lengths))
    config = enc.model.config
    rng = np.random.default_rng(0)
    out = []
    for length in lengths:
        ids = [[101, *rng.integers(1000, 30000, length - 2).tolist(), 102] for _ in range(sentences)]
        enc.embed_ids(ids[:batch])  # warm-up: kernels, allocator
        seconds = timed(lambda batch_ids=ids: enc.embed_ids(batch_ids), device)
        sps = sentences / seconds
        out.append((length, sps, sps * model_flops(config, length) / rate))
    return out


def training_world(events: int, users: int, items: int, seed: int = 0):
    """A synthetic TrainingData: users with a topic, items in topics, content vectors near the topic's."""
    from coldstart.model import TrainingData

    rng = np.random.default_rng(seed)
    topics = 20
    centers = rng.standard_normal((topics, 384)).astype(np.float32)
    item_topic, user_topic = rng.integers(0, topics, items), rng.integers(0, topics, users)
    item_vecs = centers[item_topic] + rng.standard_normal((items, 384)).astype(np.float32)
    item_vecs /= np.linalg.norm(item_vecs, axis=1, keepdims=True)
    item_ids = np.array([f"i{n}" for n in range(items)], dtype=object)
    user_ids = np.array([f"u{n}" for n in range(users)], dtype=object)
    by_topic = [np.flatnonzero(item_topic == t) for t in range(topics)]
    event_users = rng.integers(0, users, events)
    picks = np.array([by_topic[t][rng.integers(len(by_topic[t]))] for t in user_topic[event_users]])
    user_vecs = centers[user_topic] / np.linalg.norm(centers[user_topic], axis=1, keepdims=True)
    return TrainingData(user_ids[event_users], item_ids[picks], np.array(["home"] * events, dtype=object),
                        np.where(rng.random(events) < 0.3, rng.uniform(1, 5, events), np.nan).astype(np.float32),
                        dict(zip(item_ids, item_vecs)), dict(zip(user_ids, user_vecs.astype(np.float32))))


def epoch_seconds(device: str, data) -> float:
    from coldstart.config import Settings
    from coldstart.model import train

    with tempfile.TemporaryDirectory() as folder:
        settings = Settings.load(env={}, device=device, models=folder, train_epochs_full=1, model_dim=64)
        started = time.perf_counter()
        ckpt = train(data, settings)
        sync(device)
        seconds = time.perf_counter() - started
    assert ckpt.metrics["epochs"] == 1
    return seconds


def scoring_seconds(device: str, users: int, items: int, dim: int = 64, k: int = 50, consumed: int = 20) -> float:
    from coldstart.ranking import ItemMatrix, top_k_scores

    gen = torch.Generator().manual_seed(0)
    user_vecs = torch.randn(users, dim, generator=gen)
    matrix = ItemMatrix(torch.randn(items, dim, generator=gen), torch.randn(items, generator=gen) * 0.1, device=device)
    masked = list(np.sort(np.random.default_rng(0).integers(0, items, (users, consumed)), axis=1))
    top_k_scores(user_vecs[:1024], matrix, k, masked[:1024])  # warm-up
    return timed(lambda: top_k_scores(user_vecs, matrix, k, masked), device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the CPU side only, tiny sizes (for the tests)")
    parser.add_argument("--cpu-fraction", type=float, default=0.1, help="CPU sizes relative to the GPU's (default 0.1)")
    parser.add_argument("--events", type=int, default=500_000, help="training events on the GPU (default 500000)")
    parser.add_argument("--users", type=int, default=1_000_000, help="scored users on the GPU (default 1000000)")
    parser.add_argument("--items", type=int, default=100_000, help="scored items (default 100000)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print(f"gpu_check: torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}, "
          f"{os.cpu_count()} CPU cores", flush=True)
    if args.smoke:
        plan = [("cpu", 1.0)]
        args.events, args.users, args.items, sentences, mm_n = 1000, 1000, 2000, 8, 512
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch: nothing to measure on a GPU (the CPU path is what "
              "bench/score_speed.py, bench/encoder_bench.py and the tests measure). Exiting 0.")
        return 0
    else:
        print(f"gpu_check: {torch.cuda.get_device_name(0)}", flush=True)
        plan = [("cuda", 1.0), ("cpu", args.cpu_fraction)]
        sentences, mm_n = 4096, 8192
    lengths = (16, 64, 128)
    data_full = training_world(args.events, max(1000, args.events // 10), max(1000, args.items // 5))
    results = {}
    for device, fraction in plan:
        scaled = f" (measured at {fraction:g} of the size, scaled up)" if fraction != 1.0 else ""
        rate = matmul_rate(device, mm_n if device == "cuda" or args.smoke else 2048)
        print(f"[{device}] matmul rate ({'bf16' if device == 'cuda' else 'fp32'}): {rate / 1e12:.2f} TFLOP/s", flush=True)
        n_sent = sentences if device == "cuda" or args.smoke else max(64, int(sentences * fraction))
        enc = encoder_rates(device, lengths, n_sent, 512 if device == "cuda" else min(32, n_sent), rate)
        for length, sps, share in enc:
            print(f"[{device}] encoder {length:>3} tokens: {sps:10.1f} sentences/s = {share:6.1%} of the matmul rate",
                  flush=True)
        n_events = max(100, int(args.events * fraction))
        data = data_full if fraction == 1.0 else _head(data_full, n_events)
        epoch = epoch_seconds(device, data) / fraction
        print(f"[{device}] training: one epoch of {args.events} events: {epoch:.1f} s{scaled}", flush=True)
        n_users = max(1000, int(args.users * fraction))
        top = scoring_seconds(device, n_users, args.items) * args.users / n_users
        print(f"[{device}] scoring: top-50 of {args.users} users x {args.items} items at dim 64: {top:.1f} s"
              f"{scaled if n_users != args.users else ''}", flush=True)
        results[device] = {"encoder": enc, "epoch": epoch, "score": top}
    if "cuda" in results:
        gpu, cpu = results["cuda"], results["cpu"]
        print("\n| figure | GPU | CPU | CPU / GPU |\n|---|---|---|---|")
        for (length, g_sps, g_share), (_, c_sps, c_share) in zip(gpu["encoder"], cpu["encoder"]):
            print(f"| encoder {length} tokens, sentences/s (share of own matmul rate) | {g_sps:.0f} ({g_share:.0%}) | "
                  f"{c_sps:.0f} ({c_share:.0%}) | {g_sps / c_sps:.1f}x slower |")
        print(f"| one training epoch, s | {gpu['epoch']:.1f} | {cpu['epoch']:.1f} | {cpu['epoch'] / gpu['epoch']:.1f}x |")
        print(f"| top-50 scoring, s | {gpu['score']:.1f} | {cpu['score']:.1f} | {cpu['score'] / gpu['score']:.1f}x |")
    print(f"gpu_check: done in {time.perf_counter() - started:.0f} s")
    return 0


def _head(data, n: int):
    """The first ``n`` events of ``data`` (content maps kept whole)."""
    from dataclasses import replace

    return replace(data, user_ids=data.user_ids[:n], item_ids=data.item_ids[:n], scenes=data.scenes[:n],
                   values=data.values[:n])


if __name__ == "__main__":
    sys.exit(main())
