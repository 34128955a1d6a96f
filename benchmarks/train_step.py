"""One GRPO training step (rollouts, grading, loss, update) of redrl against TRL's ``GRPOTrainer``
on the same tiny model, prompts, batch (8 prompts x 7 completions), completion budget (160 tokens),
temperature (1.0), learning rate and no KL. TRL is a benchmark-only dependency (``pip install trl``).

Seconds per step are the median over steps 2..N (step 1 warms up); the ratio is TRL's over redrl's.
redrl is timed with its fast engine (the embedded default's) and with ``generate``, TRL with its own
(``generate``; vLLM is not available on CPU).

    python benchmarks/train_step.py [--steps 6] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import write_figures


def redrl_step_seconds(engine: str, steps: int, out: Path) -> list[float]:
    from redrl.config import load_config
    from redrl.trainer import train

    cfg = load_config(
        "tiny",
        [f"rollout.engine={engine}"],
        rollout={"group_size": 7, "max_new_tokens": 160},
        train={"method": "grpo", "steps": steps, "prompts_per_step": 8, "out": str(out)},
    )
    train(cfg, progress=False)
    return [json.loads(line)["step_time"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def trl_step_seconds(steps: int, out: Path) -> list[float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from redrl.data.offline import load_offline
    from redrl.rewards import integer_grader
    from redrl.tiny import ensure_tiny

    assets = ensure_tiny()
    records = load_offline(str(assets.train))
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": r["problem"]}], "answer": r["answer"]} for r in records]
    )

    def reward(completions, answer, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(integer_grader(text, gold) or 0.0) for text, gold in zip(texts, answer)]

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.started)

    config = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=56,
        num_generations=7,
        max_completion_length=160,
        temperature=1.0,
        top_p=1.0,
        learning_rate=2e-4,
        beta=0.0,
        max_steps=steps,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        gradient_accumulation_steps=1,
        num_iterations=1,
        seed=0,
        disable_tqdm=True,
    )
    model = AutoModelForCausalLM.from_pretrained(assets.base)
    tokenizer = AutoTokenizer.from_pretrained(assets.base)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    trainer.train()
    return times


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--json")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    runs = {}
    with tempfile.TemporaryDirectory() as scratch:
        runs["redrl_fast"] = redrl_step_seconds("fast", args.steps, Path(scratch) / "fast")
        runs["redrl_generate"] = redrl_step_seconds("hf", args.steps, Path(scratch) / "hf")
        try:
            runs["trl"] = trl_step_seconds(args.steps, Path(scratch) / "trl")
        except ImportError as error:
            print(f"TRL not installed ({error}); pip install trl")
    median = {name: statistics.median(values[1:]) for name, values in runs.items()}
    figures = {
        "seconds_per_step": {
            name: {"min": min(v[1:]), "median": median[name], "max": max(v[1:])} for name, v in runs.items()
        },
        "steps": args.steps,
    }
    if "trl" in median:
        figures["train_step_speedup_vs_trl"] = median["trl"] / median["redrl_fast"]
        figures["train_step_speedup_vs_trl_same_engine"] = median["trl"] / median["redrl_generate"]
    print("one GRPO step, 8 prompts x 7 completions, <= 160 tokens (median of steps 2..N, seconds):")
    for name, value in median.items():
        print(f"  {name:15s} {value:.2f}")
    if "train_step_speedup_vs_trl" in figures:
        print(
            f"  TRL / redrl = {figures['train_step_speedup_vs_trl']:.2f}x (fast engine), "
            f"{figures['train_step_speedup_vs_trl_same_engine']:.2f}x (both with generate)"
        )
    return write_figures(figures, args.json)


if __name__ == "__main__":
    main()
