"""Rollout speed: redrl's fast engine against ``transformers``' ``generate`` on the same model,
prompts, batch and lengths, and against the FLOP limit from a matrix product timed in this run.

The model has the embedded default's shape (``TinySpec``: 4 layers, width 128, vocabulary 208)
with random weights, so that rows run to the full budget as RED's long rollouts do; the batch is
one rollout step of the embedded default (8 prompts x 7 rollouts, 160 new tokens, temperature 1).
Both engines alternate, ``--repeats`` times each; the ratio is of the medians.

    python benchmarks/rollout.py [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import random_tiny_model, write_figures


def matmul_gflops(size: int = 1024, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of a ``size`` x ``size`` float32 matrix product on this machine."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def flops_per_token(config) -> float:
    """Multiply-adds x 2 of one decoded token through the weights (attention over the cache excluded)."""
    d, layers, inner, vocab = config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * inner  # q, o; k, v; gate, up, down
    return 2 * (layers * per_layer + d * vocab)


def profile_table(engine, prompts, group_size: int, max_new_tokens: int) -> str:
    """The fast engine's time by operator (torch.profiler, self time) over one rollout batch, with the
    share of matrix products (weights: ``mm``/``addmm``; attention over the cache: ``bmm``)."""
    from torch.profiler import profile

    with profile() as prof:
        engine.generate(prompts, group_size, temperature=1.0, max_new_tokens=max_new_tokens)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    share = {
        kind: sum(e.self_cpu_time_total for e in events if e.key in names) / total
        for kind, names in (("weights", {"aten::mm", "aten::addmm"}), ("attention", {"aten::bmm"}))
    }
    calls = sum(e.count for e in events if e.key.startswith("aten::"))
    head = (
        f"profile: {total / 1e3:.0f} ms of operator time, {calls} aten calls; weight products "
        f"{share['weights']:.0%}, attention products {share['attention']:.0%}, everything else "
        f"{1 - share['weights'] - share['attention']:.0%}"
    )
    return head + "\n" + events.table(sort_by="self_cpu_time_total", row_limit=12)


def main() -> dict:
    from redrl.fast_engine import FastGenerator
    from redrl.rollout import HFGenerator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=7)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument(
        "--hidden", type=int, help="model width (default: the embedded default's); the MLP is 4x as wide"
    )
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--profile", action="store_true", help="also print where the fast engine's time goes")
    args = parser.parse_args()

    model = random_tiny_model(args.hidden)
    config = model.config
    prompts = [
        [7 + (i * 13 + j * 7) % 190 for j in range(20 + i % 8)] for i in range(args.prompts)
    ]  # 20-27 tokens, as the task's
    engines = {"generate": HFGenerator(model, 5, 5, batch_size=256), "fast": FastGenerator(model, 5, 5, batch_size=256)}
    rates: dict[str, list[float]] = {name: [] for name in engines}
    for engine in engines.values():  # warm-up
        engine.generate(prompts[:2], 2, temperature=1.0, max_new_tokens=8)
    for repeat in range(args.repeats):
        for name, engine in engines.items():
            torch.manual_seed(repeat)
            started = time.perf_counter()
            out = engine.generate(prompts, args.group_size, temperature=1.0, max_new_tokens=args.max_new_tokens)
            rates[name].append(sum(map(len, out)) / (time.perf_counter() - started))
    if args.profile:
        print(profile_table(engines["fast"], prompts, args.group_size, args.max_new_tokens))
    gflops = matmul_gflops()
    limit = gflops * 1e9 / flops_per_token(config)
    median = {name: statistics.median(values) for name, values in rates.items()}
    figures = {
        "rollout_speedup_vs_hf": median["fast"] / median["generate"],
        "rollout_fraction_of_flop_limit": median["fast"] / limit,
        "rollout_tokens_per_s": {
            name: {"min": min(v), "median": statistics.median(v), "max": max(v)} for name, v in rates.items()
        },
        "flop_limit_tokens_per_s": limit,
        "matmul_gflops": gflops,
        "rows": args.prompts * args.group_size,
        "max_new_tokens": args.max_new_tokens,
    }
    print(
        f"rollouts, {figures['rows']} rows x {args.max_new_tokens} new tokens, {config.num_hidden_layers} layers x "
        f"{config.hidden_size}, {torch.get_num_threads()} threads:"
    )
    for name, values in rates.items():
        print(
            f"  {name:9s} tokens/s min {min(values):7.0f}  median {statistics.median(values):7.0f}  max {max(values):7.0f}"
        )
    print(
        f"  fast / generate = {figures['rollout_speedup_vs_hf']:.2f}x;  matmul {gflops:.0f} GFLOP/s -> FLOP limit "
        f"{limit:.0f} tokens/s; fast reaches {figures['rollout_fraction_of_flop_limit']:.2f} of it"
    )
    return write_figures(figures, args.json)


if __name__ == "__main__":
    main()
