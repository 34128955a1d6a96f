"""Rollouts without waiting, side by side: wall time per optimizer step and per 1,000 trained tokens
of RED on the embedded default, synchronous against dynamic sampling, tail batching and
asynchronous rollouts (staleness 1 and 2); then the planning replay (:mod:`redrl.rollout_plan`) of
N workers with the lengths and decoding costs measured here, and with a long-tailed length
distribution of the paper's scale (8,192-token budget).

Every run is ``redrl train --method red`` with the embedded default's settings, one after the
other (``--repeats`` rounds, alternating), nothing else running; seconds per step are the median
over steps 3..N of every repeat (the first steps start the worker and warm caches). The asynchronous runs split the cores between trainer and
worker; ``synchronous_1thread`` is the synchronous run on the trainer's share alone, so its ratio to
``async_k1`` is the speed-up of giving rollouts a device of their own (as a vLLM server has). The embedded default's rollouts are long-tailed already (the
base's lengths: median 21, 99th percentile 65, longest 119 tokens of a 160 budget).

    python benchmarks/rollout_mechanisms.py [--steps 24] [--json FILE] [--figure PNG]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import random_tiny_model, write_figures

MECHANISMS = {
    "synchronous": [],
    "synchronous_1thread": [],  # the trainer's share of the cores alone: the asynchronous runs' trainer
    "dynamic_sampling": ["rollout.dynamic_sampling=true"],
    "tail_batching": ["rollout.tail_max_new_tokens=80"],
    "async_k1": ["rollout.async_staleness=1"],
    "async_k2": ["rollout.async_staleness=2"],
}


def run(name: str, settings: list[str], steps: int, out: Path) -> list[dict]:
    """The metrics rows of one ``redrl train`` run."""
    import os

    args = [sys.executable, "-m", "redrl", "train", "--method", "red", "--steps", str(steps), "--out", str(out)]
    for setting in settings:
        args += ["--set", setting]
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if name.endswith("1thread") else {})}
    subprocess.run([*args, "--no-progress", "--overwrite"], check=True, capture_output=True, env=env)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def summary(repeats: list[list[dict]], final: Path) -> dict:
    """Steps 3..N of every repeat together: median seconds per step, seconds per 1,000 trained tokens."""
    timed = [row for rows in repeats for row in rows[2:]]
    seconds = [r["step_time"] for r in timed]
    return {
        "seconds_per_step": statistics.median(seconds),
        "seconds_per_1000_trained_tokens": 1000 * sum(seconds) / sum(r["trained_tokens"] for r in timed),
        "rollout_seconds": statistics.median(r["rollout_seconds"] for r in timed),
        "train_seconds": statistics.median(r["train_seconds"] for r in timed),
        "prompts_sampled_per_step": statistics.mean(r.get("prompts_sampled", 16) for r in timed),
        "rollout_tokens_per_step": statistics.mean(
            r.get("rollout_tokens_sampled", r["online_length"] * 64) for r in timed
        ),
        "seconds_per_step_by_repeat": [statistics.median(r["step_time"] for r in rows[2:]) for rows in repeats],
        "final": str(final),
    }


def decoding_cost(rows_list=(1, 4, 16, 64), new_tokens: int = 96) -> tuple[float, float, dict]:
    """Seconds of one decoding step of the fast engine against its rows, on the embedded default's
    shape with random weights (every row runs the whole budget): a least-squares line."""
    from redrl.fast_engine import FastGenerator

    engine = FastGenerator(random_tiny_model(), 5, 5)
    engine.generate([[7] * 24], 1, max_new_tokens=4)
    measured = {}
    for rows in rows_list:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            engine.generate([[7 + i % 50] * 24 for i in range(rows)], 1, temperature=1.0, max_new_tokens=new_tokens)
            best = min(best, (time.perf_counter() - started) / new_tokens)
        measured[rows] = best
    xs, ys = list(measured), list(measured.values())
    mx, my = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope, measured


def measured_lengths(final: str, prompts: int = 128, group_size: int = 4, budget: int = 160) -> list[list[int]]:
    """Group lengths of the trained policy's rollouts on training prompts (temperature 1)."""
    import torch

    from redrl.config import load_config
    from redrl.data.training import prepare_data
    from redrl.modeling import prepare_model
    from redrl.paths import resolve_paths
    from redrl.rollout import make_generator

    cfg = load_config("tiny")
    _, train_path, _ = resolve_paths(cfg, need_test=False, progress=False)
    model, tokenizer = prepare_model(cfg, final, torch.device("cpu"))
    data = prepare_data(cfg, tokenizer, train_path)
    engine = make_generator("fast", model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    torch.manual_seed(0)
    out = engine.generate(data.prompts[:prompts], group_size, temperature=1.0, max_new_tokens=budget)
    return [[len(row) for row in out[i * group_size : (i + 1) * group_size]] for i in range(prompts)]


def plan_table(groups, cost, train_seconds, workers, *, P, G, budget, tail, steps=40) -> list[dict]:
    from redrl.rollout_plan import Plan, replay
    from redrl.scheduling import RolloutScheduler

    rows = []
    for n in workers:
        plan = Plan(n, P, G, budget, groups, cost, train_seconds)
        sync = replay(plan, RolloutScheduler(P, budget), steps=steps)
        tailed = replay(plan, RolloutScheduler(P, budget, tail_max_new_tokens=tail), steps=steps)
        asynchronous = replay(plan, RolloutScheduler(P, budget), steps=steps, staleness=1)
        rows.append(
            {
                "workers": n,
                "sync_seconds_per_step": sync.seconds_per_step,
                "sync_rollout_seconds": sync.rollout_seconds,
                "sync_idle_fraction": sync.idle_fraction,
                "tail_idle_fraction": tailed.idle_fraction,
                "tail_speedup": sync.seconds_per_step / tailed.seconds_per_step,
                "async_speedup": sync.seconds_per_step / asynchronous.seconds_per_step,
                "tail_decoded_tokens_ratio": tailed.decoded_tokens / sync.decoded_tokens,
            }
        )
    return rows


def figure(tables: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(5 * len(tables), 3.8), sharey=True)
    for ax, (title, rows) in zip(axes, tables.items()):
        n = [r["workers"] for r in rows]
        ax.plot(n, [r["tail_speedup"] for r in rows], "o-", label="tail batching")
        ax.plot(n, [r["async_speedup"] for r in rows], "s-", label="async, staleness 1")
        ax.plot(n, [r["sync_idle_fraction"] for r in rows], "k:", label="idle share, synchronous")
        ax.plot(n, [r["tail_idle_fraction"] for r in rows], "k--", label="idle share, tail batching")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rollout workers N")
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("speed-up per step over synchronous / idle share")
    axes[0].legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each mechanism, alternating")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--figure", help="write the planning figure (PNG) here")
    args = parser.parse_args()
    from redrl.rollout_plan import linear_cost, lognormal_groups, measured_groups

    rows: dict[str, list] = {name: [] for name in MECHANISMS}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.repeats):
            for name, settings in MECHANISMS.items():
                rows[name].append(run(name, settings, args.steps, Path(scratch) / name))
        runs = {name: summary(repeats, Path(scratch) / name / "final") for name, repeats in rows.items()}
        for name in runs:
            print(
                f"  {name:17s} {runs[name]['seconds_per_step']:.3f} s/step  "
                f"{runs[name]['seconds_per_1000_trained_tokens']:.3f} s per 1,000 trained tokens",
                flush=True,
            )
        groups = measured_lengths(runs["synchronous"]["final"])
    fixed, per_row, points = decoding_cost()
    cost = linear_cost(fixed, per_row)
    sync = runs["synchronous"]
    workers = [1, 2, 4, 8, 16, 32, 64]
    ours = plan_table(  # at most one worker per group: a 16-prompt step has nothing for more
        measured_groups(groups), cost, sync["train_seconds"], workers[:5], P=16, G=4, budget=160, tail=80
    )
    # The paper's scale: 64 prompts x 7 rollouts, 8,192 tokens, log-normal lengths (median 1,500);
    # the optimizer step assumed to take half the synchronous rollout time at 8 workers.
    paper_groups = lognormal_groups(1500, 0.6, 7)
    probe = plan_table(paper_groups, cost, 0.0, [8], P=64, G=7, budget=8192, tail=4096, steps=10)[0]
    paper = plan_table(
        paper_groups, cost, 0.5 * probe["sync_rollout_seconds"], workers, P=64, G=7, budget=8192, tail=4096
    )
    # The same, with a decoding step whose cost does not grow with its rows (assumed, not measured:
    # memory-bound decoding on a GPU reads the weights once per step whatever the batch).
    flat = linear_cost(fixed + 64 * per_row, 0.0)
    probe_flat = plan_table(paper_groups, flat, 0.0, [8], P=64, G=7, budget=8192, tail=4096, steps=10)[0]
    paper_flat = plan_table(
        paper_groups, flat, 0.5 * probe_flat["sync_rollout_seconds"], workers, P=64, G=7, budget=8192, tail=4096
    )
    base = sync["seconds_per_step"]
    figures = {
        "async_step_speedup": base / runs["async_k1"]["seconds_per_step"],
        "async_k2_step_speedup": base / runs["async_k2"]["seconds_per_step"],
        # with a rollout device of its own: the trainer keeps the one thread it has in both runs
        "async_step_speedup_own_device": runs["synchronous_1thread"]["seconds_per_step"]
        / runs["async_k1"]["seconds_per_step"],
        "tail_batching_step_speedup": base / runs["tail_batching"]["seconds_per_step"],
        "dynamic_sampling_step_speedup": base / runs["dynamic_sampling"]["seconds_per_step"],
        "runs": {name: {k: v for k, v in r.items() if k != "final"} for name, r in runs.items()},
        "decoding_cost": {"fixed_seconds": fixed, "per_row_seconds": per_row, "measured": points},
        "measured_lengths": sorted(length for group in groups for length in group),
        "plan_ours": ours,
        "plan_paper_scale": paper,
        "plan_paper_scale_flat_cost": paper_flat,
        "steps": args.steps,
    }
    for name in (
        "async_step_speedup",
        "async_k2_step_speedup",
        "async_step_speedup_own_device",
        "tail_batching_step_speedup",
    ):
        print(f"  {name} = {figures[name]:.2f}")
    if args.figure:
        figure(
            {
                "embedded default: measured lengths and costs (16 x 4, 160 tokens)": ours,
                "paper scale: log-normal lengths (64 x 7, 8,192 tokens)": paper,
                "paper scale, a step's cost flat in its rows (assumed)": paper_flat,
            },
            args.figure,
        )
    return write_figures(figures, args.json)


if __name__ == "__main__":
    main()
