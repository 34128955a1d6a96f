"""Peak memory of the distillation KL (forward and reverse, full vocabulary) + backward for Qwen3's
vocabulary (151,936): the naive path, which forms the student's and the teacher's ``[T, V]`` logits,
against redrl's chunked path from hidden states (``--chunk-size`` positions at a time), each in
a fresh process (peak resident memory above the inputs: Linux's peak is reset once they exist),
with gradients compared.

Shapes follow the distillation paper's setting: a Qwen3-0.6B-wide student (1,024) and a
Qwen3-4B-wide teacher (2,560). The naive path at 4,096 tokens needs more memory than a 23 GB
development machine has (about 4 GB per 1,024 tokens), so the default is 2,048 tokens; the naive path
grows linearly in tokens, the chunked one stays at a few ``[chunk, V]`` tensors.

    python benchmarks/kl_memory.py [--tokens 2048] [--chunk-size 128] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from common import reset_peak, status_mb, write_figures

VOCAB = 151_936
STUDENT, TEACHER = 1024, 2560


def _child(variant: str, tokens: int, chunk_size: int, out: str) -> None:
    import torch
    from safetensors.torch import save_file

    from redrl.objectives import kl_mixture_loss, token_kl, token_kl_from_hidden

    torch.manual_seed(0)
    h_s = torch.randn(1, tokens, STUDENT).mul_(0.5).requires_grad_()
    w_s = torch.randn(VOCAB, STUDENT).mul_(0.02)
    h_t = torch.randn(1, tokens, TEACHER).mul_(0.5)
    w_t = torch.randn(VOCAB, TEACHER).mul_(0.02)
    mask = torch.ones(1, tokens, dtype=torch.bool)
    baseline = reset_peak()  # the inputs are not counted
    if variant == "naive":
        kl_fwd, kl_rev, _ = token_kl(h_s @ w_s.T, h_t @ w_t.T)
    else:
        kl_fwd, kl_rev, _ = token_kl_from_hidden(h_s, w_s, h_t, w_t, chunk_size=chunk_size)
    kl_mixture_loss(kl_fwd, kl_rev, mask, alpha=0.8).backward()
    peak = status_mb("VmHWM") - baseline
    save_file({"grad": h_s.grad.contiguous()}, out)
    print(json.dumps({"peak_mb": peak}))


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--chunk-size", type=int, default=128, help="positions per chunk of the chunked path")
    parser.add_argument("--json")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.tokens, args.chunk_size, args.child[1])
        return {}
    import torch
    from safetensors.torch import load_file

    peaks, grads = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for variant in ("naive", "chunked"):
            path = os.path.join(scratch, f"{variant}.safetensors")
            command = [sys.executable, __file__, "--tokens", str(args.tokens), "--chunk-size", str(args.chunk_size)]
            command += ["--child", variant, path]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            peaks[variant] = json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]
            grads[variant] = load_file(path)["grad"]
    difference = float((grads["naive"] - grads["chunked"]).abs().max())
    figures = {
        "kl_memory_ratio": peaks["chunked"] / peaks["naive"],
        "peak_mb": peaks,
        "max_grad_difference": difference,
        "tokens": args.tokens,
        "chunk_size": args.chunk_size,
        "vocabulary": VOCAB,
        "student_hidden": STUDENT,
        "teacher_hidden": TEACHER,
    }
    print(
        f"forward + reverse KL + backward, {args.tokens} tokens x vocabulary {VOCAB}: peak above the inputs "
        f"naive {peaks['naive']:.0f} MB, chunked {peaks['chunked']:.0f} MB -> ratio {figures['kl_memory_ratio']:.3f}; "
        f"max |grad difference| {difference:.1e}"
    )
    assert torch.allclose(grads["naive"], grads["chunked"], atol=1e-5), "the two paths disagree"
    return write_figures(figures, args.json)


if __name__ == "__main__":
    main()
