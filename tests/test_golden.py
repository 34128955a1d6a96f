"""Golden steps: a few steps of every method (the compared twelve, the distillation grid, and the
rollout mechanisms) on the tests' tiny spec, compared with the values recorded in ``golden/steps.json``.

The numbers guard behaviour across refactors of the loop: a change that moves any logged loss,
gradient norm, weight ``w``, entropy, KL or reward on CPU fails here. A change that alters the
numbers on purpose re-records them, with the reason in the commit message::

    REDRL_RECORD_GOLDEN=1 python -m pytest tests/test_golden.py                       # this machine
    ATEN_CPU_CAPABILITY=avx2 REDRL_RECORD_GOLDEN=1 python -m pytest tests/test_golden.py  # its AVX2 kernels

Recording adds (or replaces) the record of this machine and keeps the others. On a machine with a
record (torch, CPU kernels, processor, threads) the steps must match bit for bit. Elsewhere they
are compared with the record of the nearest machine (same CPU kernels first) within the rounding
of other kernels. Measured between the AVX2 and AVX-512 kernels on one processor (the sampled
tokens identical): entropies, KLs and ratios moved by at most 2e-7 relative, gradient norms by
3e-6; the regulator's relative entropy changes, which divide small differences, by up to 3.5e-2,
and with them its weight ``w`` by 7e-3 and the loss it weighs by 2e-4. So floats must agree within
1e-3 relative (the regulator's three within 2e-2), which a change of behaviour does not; the test
says which comparison it made.
"""

import json
import math
import os
import zlib
from pathlib import Path

import pytest
import torch

from redrl.config import load_config
from redrl.methods import COMPARED
from redrl.rewards import GRADERS
from redrl.trainer import train

GOLDEN = Path(__file__).parent / "golden" / "steps.json"
RECORD = os.environ.get("REDRL_RECORD_GOLDEN") == "1"
KEYS = (
    "loss",
    "kl_fwd",
    "kl_rev",
    "grad_norm",
    "w",
    "h_rl",
    "h_sft",
    "delta_h_rl",
    "delta_h_sft",
    "reward",
    "online_accuracy",
    "online_length",
    "pi_off_mean",
    "clip_fraction",
    "lr",
    "relift_buffer",
    "relift_sft_step",
    "bread_failed_groups",
    "bread_rescued",
)

#: name → (method, config overrides): every compared method once, plus the micro-batched step and
#: ReLIFT's SFT step; the distillation grid (and its staging into GRPO); the rollout mechanisms.
CASES = {name: (name, {}) for name in sorted(COMPARED)} | {
    "red-micro-batches": ("red", {"train": {"micro_batch_size": 3}}),
    "relift-sft-step": ("relift", {"baselines": {"relift_buffer": 1}}),
    "kd": ("kd", {}),
    "opd": ("opd", {}),
    "kl_mix": ("kl_mix", {}),
    "kd-cached-teacher": ("kd", {"distill": {"cache_teacher": True}}),
    "opd_grpo": ("opd_grpo", {"train": {"steps": 4}}),
    "grpo-dynamic-sampling": ("grpo", {"rollout": {"dynamic_sampling": True, "max_rounds": 2}}),
    "red-tail-batching": ("red", {"rollout": {"tail_max_new_tokens": 24}}),
    "grpo-asynchronous": ("grpo", {"rollout": {"async_staleness": 1}}),
}
#: Steps per case (a staged case splits them between its stages).
STEPS = {name: extra.get("train", {}).get("steps", 3) for name, (_, extra) in CASES.items()}


def _golden_grader(response: str, answer: str) -> float:
    """A quarter of the responses are right, fixed by their text: the barely trained test base gets
    every answer wrong, which would leave GRPO-like methods with zero advantages and nothing to check."""
    return float(zlib.crc32(response.encode()) % 4 == 0)


def _config(tiny_assets, teacher, out: Path, method: str, extra: dict):
    sections = {
        "model": {"path": str(tiny_assets.base)},
        "teacher": {"path": str(teacher)},
        "optim": {"lr": 2e-4},
        "data": {"train": str(tiny_assets.train), "test": str(tiny_assets.test), "grader": "golden"},
        "rollout": {"group_size": 3, "max_new_tokens": 48},
        "train": {"method": method, "steps": 3, "prompts_per_step": 2, "seed": 7, "out": str(out)},
    }
    for section, values in extra.items():
        sections[section] = sections.get(section, {}) | values
    return load_config("tiny", **sections)


def _steps(metrics: Path) -> list[dict]:
    return [{key: json.loads(line).get(key) for key in KEYS} for line in metrics.read_text().splitlines()]


def _records() -> list[dict]:
    return json.loads(GOLDEN.read_text())["records"] if GOLDEN.is_file() else []


@pytest.fixture(scope="module")
def golden():
    """``(cases, exact)``: the nearest record's steps, and whether they were recorded on this machine."""
    here = _machine()
    if RECORD:
        recorded: dict = {}
        yield recorded, True
        others = [record for record in _records() if record["machine"] != here]
        GOLDEN.parent.mkdir(exist_ok=True)
        body = {"records": [*others, {"machine": here, "cases": recorded}]}
        GOLDEN.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
        return
    records = _records()
    nearest = max(
        records, key=lambda r: [r["machine"][key] == here[key] for key in ("torch", "cpu", "threads", "cpu_model")]
    )
    yield nearest["cases"], nearest["machine"] == here


def _cpu_model() -> str:
    """The processor's model name: two CPUs with the same instruction set still round differently
    (an AMD EPYC and the Intel machine of an earlier recording, both AVX-512, differed at 1e-7)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine() -> dict:
    """What bit-for-bit results depend on: torch, the processor and the CPU kernels torch picked on
    it, its thread count."""
    return {
        "torch": torch.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": _cpu_model(),
        "threads": torch.get_num_threads(),
    }


#: The regulator's numbers: ratios of small entropy differences, which amplify rounding.
REGULATOR = ("w", "delta_h_rl", "delta_h_sft")


def _close(key: str, got, want) -> bool:
    """Equal, or for floats within the rounding of other CPU kernels (see the module's docstring)."""
    if isinstance(got, float) and isinstance(want, float):
        return abs(got - want) <= (2e-2 * abs(want) + 1e-4 if key in REGULATOR else 1e-3 * abs(want) + 1e-6)
    return got == want


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_method_repeats_its_recorded_steps(tiny_assets, perturbed_teacher, tmp_path, golden, case, monkeypatch):
    monkeypatch.setitem(GRADERS, "golden", _golden_grader)
    cases, exact = golden
    method, extra = CASES[case]
    final = train(_config(tiny_assets, perturbed_teacher, tmp_path / case, method, extra), progress=False)
    steps = _steps(final.parent / "metrics.jsonl")
    assert len(steps) == STEPS[case]
    assert all(isinstance(s["loss"], float) and math.isfinite(s["loss"]) for s in steps)
    assert any(s["grad_norm"] > 0 for s in steps)  # something was learned, so the numbers can differ
    if RECORD:
        cases[case] = steps
        return
    same = (lambda key, a, b: a == b) if exact else _close
    how = "bit for bit" if exact else "within rounding (recorded on another machine)"
    for number, (got, want) in enumerate(zip(steps, cases[case], strict=True), start=1):
        for key in KEYS:
            assert same(key, got[key], want[key]), (
                f"{case} step {number} {key}: {got[key]!r} != recorded {want[key]!r} ({how})"
            )
