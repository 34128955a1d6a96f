"""Reliability: exact resume after SIGKILL (also during a checkpoint write) and SIGTERM, corrupted
and partial checkpoints, rotation, a full disk, non-finite steps, bad input, no pickle on load."""

import errno
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from redrl import checkpoint
from redrl.config import load_config
from redrl.trainer import NonFiniteTraining, train

ROOT = Path(__file__).resolve().parents[1]


def _args(tiny_assets, out, *extra):
    return [
        "train",
        "--config",
        "configs/tiny.yaml",
        "--method",
        "red",
        "--steps",
        "12",
        "--save-every",
        "4",
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


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _run(args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "redrl", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        cwd=ROOT,
        **kwargs,
    )


def _metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _same_losses(run, reference):
    assert [m["step"] for m in run] == list(range(1, 13))  # every step exactly once
    for a, b in zip(run, reference):
        assert abs(a["loss"] - b["loss"]) < 1e-6, a["step"]


@pytest.fixture(scope="module")
def reference(tiny_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    result = _run(_args(tiny_assets, out))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def _kill_after(process, out: Path, lines: int, sig=signal.SIGKILL):
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= lines:
            process.send_signal(sig)
            break
        time.sleep(0.05)
    return process.wait(timeout=120)


pytestmark = pytest.mark.slow


def test_killed_with_sigkill_and_resumed_equals_the_uninterrupted_run(tiny_assets, reference, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "redrl", *_args(tiny_assets, out)],
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert _kill_after(process, out, 6) == -signal.SIGKILL
    assert not (out / "final").exists()
    result = _run(_args(tiny_assets, out, "--resume"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming from" in result.stderr and "checkpoint-4" in result.stderr
    _same_losses(_metrics(out), _metrics(reference))


def test_killed_while_writing_a_checkpoint(tiny_assets, reference, tmp_path):
    # The process dies between writing checkpoint-8's files and renaming the directory into place.
    out = tmp_path / "run"
    script = (
        "import os, signal, sys; from redrl import checkpoint; real = checkpoint.write_manifest\n"
        "def dying(folder):\n    real(folder)\n    if folder.name.endswith('checkpoint-8'): os.kill(os.getpid(), signal.SIGKILL)\n"
        "checkpoint.write_manifest = dying\nfrom redrl.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *_args(tiny_assets, out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        cwd=ROOT,
    )
    assert result.returncode == -signal.SIGKILL
    assert (out / ".tmp-checkpoint-8").is_dir() and not (out / "checkpoint-8").exists()
    result = _run(_args(tiny_assets, out, "--resume"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming from" in result.stderr and "checkpoint-4" in result.stderr
    assert not (out / ".tmp-checkpoint-8").exists()  # the next save of that step replaced it
    _same_losses(_metrics(out), _metrics(reference))


def test_sigterm_saves_at_the_step_boundary_and_says_how_to_resume(tiny_assets, reference, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "redrl", *_args(tiny_assets, out)],
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    code = _kill_after(process, out, 2, signal.SIGTERM)
    message = process.stderr.read()
    assert code == 128 + signal.SIGTERM, message[-2000:]
    stopped = len(_metrics(out))
    assert f"stopped by SIGTERM after step {stopped}" in message and "--resume" in message
    assert checkpoint.verify(out / f"checkpoint-{stopped}") is None
    result = _run(_args(tiny_assets, out, "--resume"))
    assert result.returncode == 0, result.stderr[-2000:]
    _same_losses(_metrics(out), _metrics(reference))


def test_a_corrupted_newest_checkpoint_is_reported_and_skipped(tiny_assets, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "checkpoint-12")  # the end-of-run checkpoint: checkpoint-8 is the newest now
    target = out / "checkpoint-8" / "optimizer.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    result = _run(_args(tiny_assets, out, "--resume"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipping checkpoint-8: optimizer.safetensors does not match its hash" in result.stderr
    assert "resuming from" in result.stderr and "checkpoint-4" in result.stderr
    _same_losses(_metrics(out), _metrics(reference))


# ------------------------------------------------------------------------------------------------
# In one process


def _cfg(tiny_assets, out, **train_values):
    return load_config(
        "tiny",
        model={"path": str(tiny_assets.base)},
        data={"train": str(tiny_assets.train)},
        rollout={"group_size": 3, "max_new_tokens": 32},
        optim={"lr": 2e-4},
        train={"method": "red", "steps": 4, "prompts_per_step": 2, "out": str(out), **train_values},
    )


def test_rotation_keeps_the_newest_and_never_the_only_good_one(tiny_assets, tmp_path):
    out = tmp_path / "run"
    train(_cfg(tiny_assets, out, steps=6, save_every=1, keep_last=2), progress=False)
    # the last step's state is a checkpoint too (final/ is the lean model)
    assert sorted(p.name for _, p in checkpoint.list_checkpoints(out)) == ["checkpoint-5", "checkpoint-6"]
    # a broken newest checkpoint does not count: the only complete one survives any rotation
    (out / "checkpoint-9").mkdir()
    checkpoint.rotate(out, 1)
    assert sorted(p.name for _, p in checkpoint.list_checkpoints(out)) == ["checkpoint-6", "checkpoint-9"]
    assert checkpoint.find_latest(out, warn=lambda line: None) == out / "checkpoint-6"


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tiny_assets, tmp_path, monkeypatch, capsys):
    from redrl.cli import main

    real = checkpoint.save_training_state

    def full(folder, **kwargs):
        if kwargs["step"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(folder, **kwargs)

    monkeypatch.setattr(checkpoint, "save_training_state", full)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--steps",
            "6",
            "--save-every",
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
            "train.prompts_per_step=2",
            "--set",
            "rollout.max_new_tokens=32",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err == (
        f"redrl train: error: could not write {out / 'checkpoint-4'}: No space left on device; "
        "the previous checkpoint (checkpoint-2) is intact"
    )
    assert checkpoint.verify(out / "checkpoint-2") is None
    assert not (out / "checkpoint-4").exists() and not (out / ".tmp-checkpoint-4").exists()


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(tiny_assets, tmp_path, monkeypatch):
    import redrl.step as step_module

    real, calls = step_module._loss, {"n": 0}

    def poisoned(*args, **kwargs):  # the loss of the second optimizer step is NaN
        calls["n"] += 1
        loss, metrics = real(*args, **kwargs)
        return (loss * float("nan"), metrics) if calls["n"] == 2 else (loss, metrics)

    monkeypatch.setattr(step_module, "_loss", poisoned)
    out = tmp_path / "once"
    with pytest.warns(UserWarning, match="step 2: non-finite loss or gradient, update skipped"):
        train(_cfg(tiny_assets, out), progress=False)
    metrics = _metrics(out)
    assert [m["skipped"] for m in metrics] == [0, 1, 0, 0] and metrics[-1]["skipped_total"] == 1
    assert metrics[1]["w"] is None and metrics[2]["w"] is not None  # the regulator ignored the skipped step

    monkeypatch.setattr(step_module, "_loss", lambda *args, **kwargs: (real(*args, **kwargs)[0] * float("nan"), {}))
    out = tmp_path / "always"
    with (
        pytest.warns(UserWarning),
        pytest.raises(NonFiniteTraining, match="2 steps in a row .* last good weights in .*checkpoint-2"),
    ):
        train(_cfg(tiny_assets, out, max_consecutive_skips=2), progress=False)
    assert checkpoint.verify(out / "checkpoint-2") is None
    from safetensors.torch import load_file

    saved, base = (
        load_file(str(out / "checkpoint-2" / "model.safetensors")),
        load_file(str(tiny_assets.base / "model.safetensors")),
    )
    assert all(torch.equal(saved[name], base[name]) for name in base)  # no update was ever applied


def test_resume_loads_nothing_with_pickle(tiny_assets, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(_cfg(tiny_assets, out, save_every=2), progress=False)
    assert not [p for p in out.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl")]

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    train(_cfg(tiny_assets, out, save_every=2, steps=6, resume=True), progress=False)
    assert [m["step"] for m in _metrics(out)] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("case", ["unwritable", "no rows", "no model", "cuda"])
def test_bad_input_is_one_line_with_exit_code_2(tiny_assets, tmp_path, capsys, case):
    from redrl.cli import main

    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out, model, data, extra = tmp_path / "out", str(tiny_assets.base), str(tiny_assets.train), []
    expected = {
        "unwritable": "is not writable",
        "no rows": "holds no records",
        "no model": "model.path not found",
        "cuda": "no CUDA device",
    }[case]
    if case == "unwritable":
        out = blocker / "out"
    elif case == "no rows":
        data = str(empty)
    elif case == "no model":
        model = str(tmp_path / "missing" / "model")
    else:
        extra = ["--set", "model.device=cuda"]
    args = [
        "train",
        "--steps",
        "1",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "optim.lr=2e-4",
        "--set",
        f"model.path={model}",
        "--set",
        f"data.train={data}",
        *extra,
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("redrl train: error: ") and expected in err[-1] and "Traceback" not in "\n".join(err)
    with pytest.raises(Exception, match=expected):
        main(["--debug", *args])  # --debug lets the exception (and its traceback) through


@pytest.mark.parametrize("rule, accuracy", [("ungraded", 1.0), ("wrong", 0.5)])
def test_failed_grading_is_ungraded_or_wrong_as_configured(tiny_assets, tmp_path, monkeypatch, rule, accuracy):
    from redrl.rewards import FAILURES, GRADERS

    calls = {"n": 0}

    def flaky(response, answer):  # every other answer overruns (as math_reward reports a timeout)
        calls["n"] += 1
        if calls["n"] % 2:
            FAILURES["timeout"] += 1
            return None
        return 1.0

    monkeypatch.setitem(GRADERS, "flaky", flaky)
    out = tmp_path / rule
    cfg = load_config(
        "tiny",
        model={"path": str(tiny_assets.base)},
        data={"train": str(tiny_assets.train), "grader": "flaky", "failed_grading": rule},
        rollout={"group_size": 2, "max_new_tokens": 16},
        optim={"lr": 2e-4},
        train={"method": "grpo", "steps": 1, "prompts_per_step": 2, "out": str(out)},
    )
    train(cfg, progress=False)
    record = _metrics(out)[0]
    # 4 rollouts graded (2 fail), then the 2 teacher traces (1 fails): all counted
    assert record["reward_failures"] == 3 and record["online_accuracy"] == accuracy


def test_a_non_finite_step_under_a_loss_scaler_does_not_break_the_next(tiny_assets, monkeypatch):
    # fp16's scaler (here its CPU flavour): a skipped step must close the scaler's bookkeeping.
    import redrl.step as step_module
    from redrl.batch import assemble_batch
    from redrl.methods import METHODS
    from redrl.modeling import TokenScorer, load_model_and_tokenizer
    from redrl.regulator import EntropyRegulator

    model, tokenizer = load_model_and_tokenizer(str(tiny_assets.base), device="cpu")
    cfg = load_config("tiny", ["rollout.group_size=2"])
    batch = assemble_batch(
        [[3, 4, 5]],
        [[10, 11], [12]],
        [1.0, 0.0],
        [[20, 21]],
        [1.0],
        group_size=2,
        method=METHODS["red"],
        pad_id=tokenizer.pad_token_id,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = step_module.build_scheduler(optimizer, "constant", 0, 3)
    scaler, regulator, real = torch.amp.GradScaler("cpu"), EntropyRegulator(max_weight=2), step_module._loss
    step = lambda: step_module.optimization_step(
        TokenScorer(model),
        optimizer,
        scheduler,
        regulator,
        batch,
        METHODS["red"],
        step_module.StepSettings.from_config(cfg),
        step_module.loss_settings(cfg, METHODS["red"]),
        scaler=scaler,
    )
    monkeypatch.setattr(step_module, "_loss", lambda *a, **k: (real(*a, **k)[0] * float("nan"), {}))
    assert step()["skipped"] == 1
    monkeypatch.setattr(step_module, "_loss", real)
    stats = step()
    assert stats["skipped"] == 0 and math.isfinite(stats["loss"])


@pytest.mark.parametrize("stop_at", [1, 3])  # inside the SFT stage, inside the GRPO stage
def test_a_staged_run_stopped_and_resumed_equals_the_uninterrupted_run(tiny_assets, tmp_path, monkeypatch, stop_at):
    import redrl.trainer as trainer
    from redrl.trainer import TrainingStopped

    def cfg(out, **extra):
        return load_config(
            "tiny",
            model={"path": str(tiny_assets.base)},
            optim={"lr": 2e-4},
            data={"train": str(tiny_assets.train), "grader": "integer"},
            rollout={"group_size": 3, "max_new_tokens": 48},
            train={"method": "sft_grpo", "steps": 4, "prompts_per_step": 2, "out": str(out), **extra},
        )

    train(cfg(tmp_path / "reference"), progress=False)
    reference = _metrics(tmp_path / "reference")
    real, calls = trainer.step_record, {"n": 0}

    def preempted(*args, **kwargs):  # SIGTERM arrives during step `stop_at` (counted over both stages)
        calls["n"] += 1
        if calls["n"] == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "step_record", preempted)
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped):
        train(cfg(out, save_every=1), progress=False)
    monkeypatch.setattr(trainer, "step_record", real)
    manifest = out / "stage-1-sft" / "final" / "manifest.json"
    before = manifest.stat().st_mtime_ns if manifest.exists() else None
    train(cfg(out, save_every=1, resume=True), progress=False)
    if stop_at == 3:  # the finished SFT stage was kept, not trained again
        assert before is not None and manifest.stat().st_mtime_ns == before
    resumed = _metrics(out)
    assert [(m["step"], m["stage"]) for m in resumed] == [(1, "sft"), (2, "sft"), (3, "grpo"), (4, "grpo")]
    for a, b in zip(resumed, reference, strict=True):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], a["step"]


@pytest.mark.parametrize("method, distill", [("opd", {"curriculum": True}), ("kd", {"cache_teacher": True})])
def test_distillation_stopped_and_resumed_equals_the_uninterrupted_run(
    tiny_assets, perturbed_teacher, tmp_path, monkeypatch, method, distill
):
    import redrl.trainer as trainer
    from redrl.trainer import TrainingStopped

    monkeypatch.setenv("REDRL_CACHE", str(tmp_path / "cache"))
    settings = {"window_start": 4, "window_every": 1, "entropy_threshold": 0.0, **distill}  # the window grows each step

    def cfg(out, **extra):
        return load_config(
            "tiny",
            model={"path": str(tiny_assets.base)},
            teacher={"path": str(perturbed_teacher)},
            optim={"lr": 2e-4},
            data={"train": str(tiny_assets.train), "grader": "integer"},
            rollout={"group_size": 2, "max_new_tokens": 32},
            distill=settings,
            train={"method": method, "steps": 4, "prompts_per_step": 2, "out": str(out), **extra},
        )

    train(cfg(tmp_path / "reference"), progress=False)
    reference = _metrics(tmp_path / "reference")
    real, calls = trainer.step_record, {"n": 0}

    def preempted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "step_record", preempted)
    with pytest.raises(TrainingStopped):
        train(cfg(tmp_path / "run", save_every=1), progress=False)
    monkeypatch.setattr(trainer, "step_record", real)
    train(cfg(tmp_path / "run", save_every=1, resume=True), progress=False)
    resumed = _metrics(tmp_path / "run")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    if distill.get("curriculum"):
        assert [m["window"] for m in resumed] == [4, 8, 16, 32]
    for a, b in zip(resumed, reference, strict=True):
        assert (a["loss"], a["grad_norm"], a["kl_fwd"], a["kl_rev"]) == (
            b["loss"],
            b["grad_norm"],
            b["kl_fwd"],
            b["kl_rev"],
        ), a["step"]
