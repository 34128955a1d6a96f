"""Golden steps: a few steps of every method on the tests' tiny spec, compared bit for bit with the
recorded values in ``golden/steps.json``.

The numbers guard behaviour across refactors of the loop: a change that moves any logged loss,
gradient norm, weight ``w``, entropy or reward on CPU fails here. A change that alters the numbers
on purpose re-records them, with the reason in the commit message::

    REDRL_RECORD_GOLDEN=1 python -m pytest tests/test_golden.py

Bit-for-bit holds on one machine: another torch, CPU instruction set (AVX2 / AVX-512) or thread
count rounds differently and sampled tokens diverge, so there the test skips and says so (record
the numbers on your machine before a refactor, then compare after it).
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

#: name → (method, config overrides): every method once, plus the micro-batched step and ReLIFT's SFT step.
CASES = {name: (name, {}) for name in sorted(COMPARED)} | {
    "red-micro-batches": ("red", {"train": {"micro_batch_size": 3}}),
    "relift-sft-step": ("relift", {"baselines": {"relift_buffer": 1}}),
}


def _golden_grader(response: str, answer: str) -> float:
    """A quarter of the responses are right, fixed by their text: the barely trained test base gets
    every answer wrong, which would leave GRPO-like methods with zero advantages and nothing to check."""
    return float(zlib.crc32(response.encode()) % 4 == 0)


def _config(tiny_assets, out: Path, method: str, extra: dict):
    sections = {
        "model": {"path": str(tiny_assets.base)},
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


@pytest.fixture(scope="module")
def golden():
    if RECORD:
        recorded: dict = {}
        yield recorded
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"machine": _machine(), "cases": recorded}, indent=1, sort_keys=True) + "\n")
        return
    body = json.loads(GOLDEN.read_text())
    if body["machine"] != _machine():
        pytest.skip(f"golden steps were recorded on {body['machine']}, this is {_machine()}: re-record them here")
    yield body["cases"]


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


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_method_repeats_its_recorded_steps(tiny_assets, tmp_path, golden, case, monkeypatch):
    monkeypatch.setitem(GRADERS, "golden", _golden_grader)
    method, extra = CASES[case]
    final = train(_config(tiny_assets, tmp_path / case, method, extra), progress=False)
    steps = _steps(final.parent / "metrics.jsonl")
    assert len(steps) == 3
    assert all(isinstance(s["loss"], float) and math.isfinite(s["loss"]) for s in steps)
    assert any(s["grad_norm"] > 0 for s in steps)  # something was learned, so the numbers can differ
    if RECORD:
        golden[case] = steps
        return
    for number, (got, want) in enumerate(zip(steps, golden[case], strict=True), start=1):
        for key in KEYS:
            assert got[key] == want[key], f"{case} step {number} {key}: {got[key]!r} != recorded {want[key]!r}"
