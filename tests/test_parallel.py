"""Several processes (gloo on CPU): the same update as one process, the same w on every rank,
groups never split, and the accelerate command of the README."""

import json
import os
import socket
import subprocess
import sys

import pytest

from redrl.data.training import PromptSampler
from redrl.parallel import Parallel

pytestmark = pytest.mark.slow  # each case starts processes: seconds, not milliseconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(tiny_assets, out, *, processes: int, method: str, extra=(), launcher="accelerate"):
    args = [
        "train",
        "--config",
        "configs/tiny.yaml",
        "--method",
        method,
        "--steps",
        "2",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "optim.lr=2e-4",
        "--set",
        f"model.path={tiny_assets.base}",
        "--set",
        f"data.train={tiny_assets.train}",
        "--set",
        "train.prompts_per_step=4",
        "--set",
        "rollout.group_size=3",
        "--set",
        "rollout.max_new_tokens=48",
        *extra,
    ]
    if processes == 1:
        command = [sys.executable, "-m", "redrl", *args]
    elif launcher == "accelerate":  # the shipped DDP config file; without GPUs redrl runs it over gloo on the CPU
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            "configs/accelerate/ddp.yaml",
            "--num_processes",
            str(processes),
            "--main_process_port",
            str(_free_port()),
            "-m",
            "redrl",
            *args,
        ]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_port",
            str(_free_port()),
            "-m",
            "redrl",
            *args,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REDRL_DEBUG": "1"}
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("saved ") == 1  # one process reports
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()], result


def test_two_processes_take_the_same_sft_update_as_one(tiny_assets, tmp_path):
    one, _ = _train(tiny_assets, tmp_path / "one", processes=1, method="sft")
    two, _ = _train(tiny_assets, tmp_path / "two", processes=2, method="sft")
    # the same again with one row per micro-batch: gradients accumulate locally, then one all-reduce
    micro, _ = _train(
        tiny_assets, tmp_path / "micro", processes=2, method="sft", extra=["--set", "train.micro_batch_size=1"]
    )
    assert len(one) == len(two) == len(micro) == 2
    for a, b, c in zip(one, two, micro):  # step 2 also checks that all took the same first update
        for key in ("loss", "grad_norm", "h_sft", "offline_length"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
            assert c[key] == pytest.approx(a[key], rel=1e-4), key


def test_distillation_on_two_processes_takes_the_same_update_as_one(tiny_assets, perturbed_teacher, tmp_path):
    # both KL directions on the traces (deterministic), the teacher's forward inside every process
    extra = ["--set", f"teacher.path={perturbed_teacher}", "--set", "distill.prefix=teacher"]
    one, _ = _train(tiny_assets, tmp_path / "one", processes=1, method="kl_mix", extra=extra)
    two, _ = _train(tiny_assets, tmp_path / "two", processes=2, method="kl_mix", extra=extra)
    micro, _ = _train(
        tiny_assets,
        tmp_path / "micro",
        processes=2,
        method="kl_mix",
        extra=[*extra, "--set", "train.micro_batch_size=1"],
        launcher="torchrun",
    )
    for a, b, c in zip(one, two, micro, strict=True):
        assert a["kl_fwd"] > 0 and a["kl_rev"] > 0
        for key in ("loss", "grad_norm", "kl_fwd", "kl_rev", "distill_entropy"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
            assert c[key] == pytest.approx(a[key], rel=1e-4), key


def test_on_policy_distillation_on_two_processes(tiny_assets, perturbed_teacher, tmp_path):
    metrics, _ = _train(
        tiny_assets, tmp_path / "opd", processes=2, method="opd", extra=["--set", f"teacher.path={perturbed_teacher}"]
    )
    assert all(r["kl_rev"] > 0 and r["loss"] == pytest.approx(r["kl_rev"], rel=1e-5) for r in metrics)
    assert all(0 <= r["online_accuracy"] <= 1 for r in metrics)  # rollouts from both processes, summed


def test_red_on_two_processes_shares_the_groups_and_agrees_on_w(tiny_assets, tmp_path):
    out = tmp_path / "red"
    metrics, _ = _train(
        tiny_assets, out, processes=2, method="red", extra=["--set", "train.log_every_rank=true"], launcher="torchrun"
    )
    ranks = {
        r: [json.loads(line) for line in (out / f"metrics-rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)
    }
    sampler = PromptSampler(len((tiny_assets.train).read_text().splitlines()), 0)
    for step, record in enumerate(metrics):
        views = [ranks[r][step] for r in (0, 1)]
        for key in ("w", "h_rl", "h_sft"):
            assert views[0][key] == views[1][key] == record[key], key
        # the step's prompts, split in two halves: every group whole on one process
        assert views[0]["prompts"] + views[1]["prompts"] == sampler.next(4)
    assert all(0 <= r["online_accuracy"] <= 1 and r["grad_norm"] > 0 for r in metrics)


def test_the_readme_accelerate_command_runs(tiny_assets, tmp_path):
    # `accelerate launch --cpu --num_processes 2` runs ONE process unless MPI is set up (accelerate's
    # multi-CPU launcher is mpirun); README says so and gives the two-process command (tested above).
    out = tmp_path / "cpu"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "redrl",
        "train",
        "--config",
        "configs/tiny.yaml",
        "--method",
        "sft",
        "--steps",
        "2",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "optim.lr=2e-4",
        "--set",
        f"model.path={tiny_assets.base}",
        "--set",
        f"data.train={tiny_assets.train}",
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "REDRL_DEBUG": "1"},
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(m["loss"] > 0 and m["grad_norm"] > 0 for m in metrics)


def test_shipped_accelerate_configs_are_valid():
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    folder = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    kinds = {}
    for path in sorted(folder.glob("*.yaml")):
        config = load_config_from_file(str(path))
        kinds[path.stem] = (config.distributed_type.value, (config.deepspeed_config or {}).get("zero_stage"))
        assert config.mixed_precision in ("no", "bf16")
    assert kinds == {
        "ddp": ("MULTI_GPU", None),
        "fsdp": ("FSDP", None),
        "deepspeed_zero2": ("DEEPSPEED", 2),
        "deepspeed_zero3": ("DEEPSPEED", 3),
    }


def test_a_step_that_cannot_be_split_evenly_is_refused():
    par = Parallel(None, rank=1, world=2)
    assert par.share([10, 11, 12, 13]) == [12, 13]
    with pytest.raises(ValueError, match="multiple of 2"):
        par.share([1, 2, 3])
    assert Parallel(None).sum([1, 2.5]) == [1.0, 2.5] and Parallel(None).gather([3]) == [3]


def test_a_single_process_leaves_a_process_group_it_did_not_make(tmp_path):
    """An in-process vLLM engine makes a one-process group and closes it at its own shutdown; a
    train in that process must not close it first (vLLM's shutdown then fails on its subgroups)."""
    import torch.distributed as dist

    from redrl.parallel import close_process_group

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        close_process_group()
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
