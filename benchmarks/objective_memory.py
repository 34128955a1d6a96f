"""Peak memory of log-probs + entropy + backward for Qwen2.5's vocabulary (151,936) over 4,096
tokens: the naive ``[T, V]`` logits path against redrl's chunked path (the trainer's default
``train.chunk_size``), each in a fresh process
(peak resident memory above the inputs), with gradients compared to 1e-5.

    python benchmarks/objective_memory.py [--tokens 4096] [--hidden 1536] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

from common import write_figures

VOCAB = 151_936


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _child(variant: str, tokens: int, hidden: int, out: str) -> None:
    import torch
    from safetensors.torch import save_file

    from redrl.objectives import token_logprobs_and_entropy, token_logprobs_and_entropy_from_hidden

    torch.manual_seed(0)
    h = (torch.randn(1, tokens, hidden) * 0.5).requires_grad_()
    weight = torch.randn(VOCAB, hidden) * 0.02
    targets = torch.randint(0, VOCAB, (1, tokens))
    baseline = _peak_mb()
    if variant == "naive":
        logp, entropy = token_logprobs_and_entropy(h @ weight.T, targets, chunk_size=tokens)
    else:
        from redrl.config import TrainConfig

        logp, entropy = token_logprobs_and_entropy_from_hidden(h, weight, targets, chunk_size=TrainConfig().chunk_size)
    (logp.sum() + 0.1 * entropy.sum()).backward()
    peak = _peak_mb() - baseline
    save_file({"grad": h.grad.contiguous()}, out)
    print(json.dumps({"peak_mb": peak}))


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=1536, help="Qwen2.5-1.5B's width")
    parser.add_argument("--json")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.tokens, args.hidden, args.child[1])
        return {}
    import torch
    from safetensors.torch import load_file

    peaks, grads = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for variant in ("naive", "chunked"):
            path = os.path.join(scratch, f"{variant}.safetensors")
            result = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--tokens",
                    str(args.tokens),
                    "--hidden",
                    str(args.hidden),
                    "--child",
                    variant,
                    path,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            peaks[variant] = json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]
            grads[variant] = load_file(path)["grad"]
    difference = float((grads["naive"] - grads["chunked"]).abs().max())
    figures = {
        "objective_memory_ratio": peaks["chunked"] / peaks["naive"],
        "peak_mb": peaks,
        "max_grad_difference": difference,
        "tokens": args.tokens,
        "vocabulary": VOCAB,
        "hidden": args.hidden,
    }
    print(
        f"log-probs + entropy + backward, {args.tokens} tokens x vocabulary {VOCAB}: peak above the inputs "
        f"naive {peaks['naive']:.0f} MB, chunked {peaks['chunked']:.0f} MB -> ratio {figures['objective_memory_ratio']:.3f}; "
        f"max |grad difference| {difference:.1e}"
    )
    assert torch.allclose(grads["naive"], grads["chunked"], atol=1e-5), "the two paths disagree"
    return write_figures(figures, args.json)


if __name__ == "__main__":
    main()
