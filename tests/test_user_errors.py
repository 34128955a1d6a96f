"""What a new user meets when something is wrong: a second run into a held directory, a grader that
fails, reference answers it cannot read, a bad value behind a flag, errors named in the order they
matter, Ctrl-C, logs off a terminal, the model card: each a one-line error or a warning, never silent."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from redrl import trainer
from redrl.cli import _how_to_continue, _portable, build_parser, main
from redrl.config import load_config
from redrl.errors import TrainingStopped
from redrl.methods import METHODS
from redrl.rewards import GRADERS, integer_grader, math_reward, unreadable_answers
from redrl.run_dir import LOCK, hold
from redrl.run_log import model_card
from redrl.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _train_args(tiny_assets, out, *extra):
    return [
        "train",
        "--method",
        "grpo",
        "--out",
        str(out),
        "--set",
        "optim.lr=2e-4",
        "--set",
        f"model.path={tiny_assets.base}",
        "--set",
        f"data.train={tiny_assets.train}",
        "--set",
        "train.prompts_per_step=2",
        "--set",
        "rollout.group_size=2",
        "--set",
        "rollout.max_new_tokens=16",
        *extra,
    ]


def _cfg(tiny_assets, out, *, data=None, **train_values):
    return load_config(
        "tiny",
        model={"path": str(tiny_assets.base)},
        data={"train": str(tiny_assets.train), **(data or {})},
        rollout={"group_size": 2, "max_new_tokens": 16},
        optim={"lr": 2e-4},
        train={"method": "grpo", "steps": 2, "prompts_per_step": 2, "out": str(out), **train_values},
    )


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith("redrl: warning:")]
    assert len(lines) == 1, err
    return lines[0]


# ---- two runs into one directory ------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_into_a_held_directory_is_refused_and_a_stale_lock_is_taken_over(tiny_assets, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "redrl", *_train_args(tiny_assets, out, "--steps", "5000", "--no-progress")],
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text()):
            assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.1)
        assert json.loads((out / LOCK).read_text())["pid"] == first.pid
        second = subprocess.run(
            [sys.executable, "-m", "redrl", *_train_args(tiny_assets, out, "--steps", "2", "--overwrite")],
            env=_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert first.poll() is None  # the second run did not disturb the first
        assert second.returncode == 2, second.stderr[-2000:]
        (line,) = second.stderr.strip().splitlines()
        assert line.startswith(f"redrl train: error: train.out {out} is in use by another run (pid {first.pid} on ")
        assert line.endswith("wait for it to end or choose another --out")
        first.send_signal(signal.SIGINT)  # acknowledged at once, then stops after its step
        code = first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    message = first.stderr.read()
    assert code == 128 + signal.SIGINT, message[-2000:]
    assert re.search(r"SIGINT received: stopping after step \d+ and saving a checkpoint", message)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # one run's steps, each once
    assert not (out / LOCK).exists()  # released on the way out

    gone = subprocess.Popen(["true"])
    gone.wait()
    (out / LOCK).write_text(json.dumps({"pid": gone.pid, "host": os.uname().nodename, "started": 0}))
    third = subprocess.run(
        [sys.executable, "-m", "redrl", *_train_args(tiny_assets, out, "--steps", "1", "--overwrite")],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"was held by pid {gone.pid}, which is no longer running; taking it over" in third.stderr
    assert not (out / LOCK).exists()


def test_a_process_holds_its_directory_again_and_releases_it_once(tmp_path):
    with hold(tmp_path / "run"):
        owner = json.loads((tmp_path / "run" / LOCK).read_text())
        assert owner["pid"] == os.getpid() and owner["command"]
        with hold(tmp_path / "run"):  # a staged run's stage, in the same process
            assert (tmp_path / "run" / LOCK).exists()
        assert (tmp_path / "run" / LOCK).exists()
    assert not (tmp_path / "run" / LOCK).exists()


# ---- grading ----------------------------------------------------------------------------------------


def test_integers_of_any_length_are_graded_exactly():
    gold = "9" * 10_000  # past Python's int-string conversion limit (4,300 digits)
    assert integer_grader(f"\\boxed{{{gold}}}", gold) == 1.0
    assert integer_grader(f"\\boxed{{-00{gold}}}", f"-{gold}") == 1.0
    assert integer_grader(f"\\boxed{{{gold}8}}", gold) == 0.0
    assert integer_grader("\\boxed{-0}", "0") == 1.0 and integer_grader("\\boxed{1,234}", "1234") == 1.0


def test_a_ten_thousand_digit_answer_trains_without_grading_failures(tiny_assets, tmp_path):
    records = [json.loads(line) for line in tiny_assets.train.read_text().splitlines()]
    gold = "7" * 10_000
    for record in records:
        record["answer"] = gold
        record["distill"] = record["distill"].rsplit("\\boxed{", 1)[0] + f"\\boxed{{{gold}}}"
    data = tmp_path / "long-answers.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = _cfg(tiny_assets, tmp_path / "run", data={"train": str(data)}, method="red")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the long traces are cut to the budget
        train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["reward_failures"] == 0 and r["graded_answers"] > 0 for r in rows)
    assert all(r["reward"] is not None for r in rows)  # the teacher rows are graded right, the rollouts wrong


def test_a_grader_that_keeps_failing_warns_each_step_and_stops_the_run(tiny_assets, tmp_path, monkeypatch, capsys):
    def broken(response, answer):
        raise RecursionError("the grader is broken")

    monkeypatch.setitem(GRADERS, "broken", broken)
    out = tmp_path / "run"
    args = [
        *_train_args(tiny_assets, out, "--steps", "5", "--no-progress"),
        "--set",
        "data.grader=broken",
        "--set",
        "train.max_consecutive_skips=2",
    ]
    with pytest.warns(
        UserWarning,
        match=r"step 1: grading raised or overran on 6 of 6 answers; the run stops after 2 such steps in a row \(this is 1\)",
    ):
        assert main(args) == 2
    line = _one_error_line(capsys)
    assert line.startswith("redrl train: error: grading raised or overran on more than 50% of the answers in 2 ")
    assert "(up to step 2)" in line and "data.grader=broken" in line
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2 and (out / "checkpoint-2").is_dir()


def test_a_step_with_some_failed_gradings_is_not_stopped(tiny_assets, tmp_path, monkeypatch):
    calls = {"n": 0}

    def every_third_fails(response, answer):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise ValueError("unlucky")
        return 0.0

    monkeypatch.setitem(GRADERS, "flaky", every_third_fails)
    cfg = _cfg(tiny_assets, tmp_path / "run", data={"grader": "flaky"}, steps=3, max_consecutive_skips=1)
    train(cfg, progress=False)  # a third of the answers fail: under train.max_grading_failures
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and sum(r["reward_failures"] for r in rows) > 0


def test_reference_answers_the_grader_cannot_read_are_reported_when_the_data_loads(tiny_assets, tmp_path):
    records = [json.loads(line) for line in tiny_assets.train.read_text().splitlines()]
    records[2]["answer"] = "\\frac{1}{0}"
    data = tmp_path / "bad-gold.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = _cfg(tiny_assets, tmp_path / "run", data={"train": str(data)}, steps=1)
    with pytest.warns(UserWarning, match=r"1 of 40 problems have a reference answer the integer grader cannot grade "):
        trainer.setup(cfg, METHODS["grpo"], progress=False)
    for record in records:
        record["answer"] = "x + 1"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match=r"40 of 40 problems .* is data.grader right\?"):
        trainer.setup(cfg, METHODS["grpo"], progress=False)


def test_the_math_grader_reads_no_number_in_one_over_zero_and_grades_nothing_against_it():
    bad = unreadable_answers(["12", "\\frac{1}{0}", "\\frac{1}{2}", "", "3" * 5000], "math")
    assert bad == {"\\frac{1}{0}": "it is not a number (zoo)", "": "it is empty"}
    assert math_reward("\\boxed{\\frac{1}{0}}", "\\frac{1}{0}") is None  # was 1.0: every 1/0 matched
    assert math_reward("\\boxed{0.5}", "\\frac{1}{2}") == 1.0


# ---- settings and the order of errors ---------------------------------------------------------------


def test_a_set_value_is_checked_even_when_a_flag_replaces_it(capsys):
    assert main(["train", "--steps", "1", "--set", "train.steps=abc"]) == 2
    assert _one_error_line(capsys) == "redrl train: error: train.steps must be int; got 'abc'"


@pytest.mark.parametrize("case", ["missing", "broken", "empty", "wrong columns", "no model", "not a model"])
def test_a_bad_model_or_data_file_is_named_before_the_learning_rate_lookup(
    case, embedded_assets, tmp_path, capsys, monkeypatch
):
    """The embedded config takes its learning rate from a sweep chosen for its own task: with other
    data or another model that lookup fails too, but the file that is wrong is what the user needs."""
    monkeypatch.setenv("REDRL_CACHE", str(embedded_assets.root.parent))  # `tiny` is built there already
    data, model = tmp_path / "train.jsonl", "tiny"
    expected = {
        "missing": f"data.train not found: {data}",
        "broken": f"{data}:1: not valid JSON",
        "empty": f"{data} holds no records",
        "wrong columns": "row 1: problem must be a non-empty string (missing)",
        "no model": f"model.path not found: {tmp_path / 'nowhere'}",
        "not a model": f"model.path {tmp_path} is not a model directory (it has no config.json)",
    }[case]
    text = {"broken": "{not json\n", "empty": "", "wrong columns": '{"question": "1+1", "solution": "2"}\n'}
    if case in text:
        data.write_text(text[case])
    if case in ("no model", "not a model"):
        data.write_text('{"problem": "1+1", "answer": "2", "distill": "\\\\boxed{2}"}\n')
        model = str(tmp_path / "nowhere") if case == "no model" else str(tmp_path)
    args = ["train", "--out", str(tmp_path / "out"), "--set", f"data.train={data}", "--set", f"model.path={model}"]
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert expected in line and "optim.lr_sweep" not in line, line


# ---- stopping, continuing, logging --------------------------------------------------------------


def test_ctrl_c_is_acknowledged_during_the_step_not_after_it(tiny_assets, tmp_path, monkeypatch, capsys):
    seen = []
    real = trainer.optimization_step

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of a step
        seen.append(capsys.readouterr().err)  # what the terminal shows before the step goes on
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "optimization_step", interrupted)
    with pytest.raises(TrainingStopped) as stopped:
        train(_cfg(tiny_assets, tmp_path / "run", steps=5), progress=False)
    assert stopped.value.step == 1 and (tmp_path / "run" / "checkpoint-1").is_dir()
    assert seen[0].strip() == (
        "redrl: SIGINT received: stopping after step 1 and saving a checkpoint; press Ctrl-C again to stop at once"
    )


@pytest.mark.parametrize(
    ("command", "advice"),
    [
        (["train", "--steps", "3"], " Continue with:\n  redrl train --steps 3 --resume"),
        (["train", "--resume"], " Continue with:\n  redrl train --resume"),
        (["demo"], " Continue with:\n  redrl demo --resume"),
        (
            ["demo", "--distill"],
            " Run the same command again to continue (finished runs are reused):\n  redrl demo --distill",
        ),
        (
            ["compare", "--seeds", "1"],
            " Run the same command again to continue (finished runs are reused):\n  redrl compare --seeds 1",
        ),
        (["sweep"], ""),  # a sweep reruns its runs: nothing to continue
    ],
)
def test_a_stopped_command_says_only_what_continues_it(command, advice):
    assert _how_to_continue(build_parser().parse_args(command), command) == advice


def test_an_interrupted_demo_resumes_and_reuses_the_base_evaluation(tiny_assets, tmp_path, monkeypatch):
    from redrl import demo, evaluate

    overrides = [
        f"model.path={tiny_assets.base}",
        f"data.train={tiny_assets.train}",
        f"data.test={tiny_assets.test}",
        "optim.lr=2e-4",
        "train.steps=3",
        "train.prompts_per_step=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=16",
        "eval.k=1",
        "eval.max_new_tokens=16",
    ]
    evaluated, steps_taken = [], []
    real_evaluate, real_step = evaluate.evaluate_model, trainer.optimization_step

    def counted(path, *args, **kwargs):
        evaluated.append(str(path))
        return real_evaluate(path, *args, **kwargs)

    def interrupted_at_two(*args, **kwargs):
        steps_taken.append(1)
        if len(steps_taken) == 2:  # Ctrl-C during the first demo's second step
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_model", counted)
    monkeypatch.setattr(trainer, "optimization_step", interrupted_at_two)
    with pytest.raises(TrainingStopped):
        demo.run_demo(tmp_path / "demo", overrides=overrides, progress=False)
    assert (tmp_path / "demo" / "red" / "checkpoint-2").is_dir() and len(evaluated) == 1
    summary = demo.run_demo(tmp_path / "demo", overrides=overrides, progress=False, resume=True)
    assert len(evaluated) == 2 and evaluated[1].endswith("final")  # the base was not evaluated again
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "demo" / "red" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3] and set(summary["methods"]) == {"base", "red"}


@pytest.mark.parametrize("flag", [[], ["--no-progress"]])
def test_off_a_terminal_a_run_writes_plain_lines_and_no_carriage_returns(tiny_assets, tmp_path, flag):
    log = tmp_path / "log.txt"
    with open(log, "w") as file:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "redrl",
                *_train_args(tiny_assets, tmp_path / "run", "--steps", "4", *flag),
                "--set",
                "train.log_every=2",
            ],
            env=_env(),
            cwd=ROOT,
            stdout=file,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
    text = log.read_text()
    assert result.returncode == 0, text[-2000:]
    assert "\r" not in text
    lines = [line for line in text.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in lines] == ["step 2/4", "step 4/4"]
    assert re.fullmatch(r"step 2/4: accuracy \d\.\d{3}(, w [^,]+)?, length \d+, loss [^,]+, \d+\.\d s", lines[0]), (
        lines[0]
    )


# ---- what a run writes about itself -------------------------------------------------------------


def test_the_model_card_counts_steps_and_names_the_embedded_base():
    from redrl.tiny import TinySpec

    cfg = load_config("tiny", optim={"lr": 1e-4})
    card = model_card(cfg, METHODS["red"], 1, [])
    assert f"- 1 optimizer step of {cfg.train.prompts_per_step} prompts" in card
    assert f"starting model: the embedded default's base model (`tiny`, cache entry `{TinySpec().key()}`" in card
    assert "training data: the embedded default's arithmetic task with teacher traces (`tiny`" in card
    assert "evaluated during training" not in card  # none ran


def test_recorded_commands_name_no_path_of_the_machine_they_ran_on(tmp_path, monkeypatch):
    shipped = json.loads((ROOT / "src" / "redrl" / "configs" / "tiny-lr.json").read_text())
    assert not re.search(r"(^|[\s=])[/~]", shipped["command"]), shipped["command"]
    monkeypatch.chdir(tmp_path)
    assert _portable(str(tmp_path / "runs" / "sweep")) == "runs/sweep"
    assert _portable("/scratch/someone/sweep") == "sweep"
    assert _portable("data.val=/home/someone/val.jsonl") == "data.val=val.jsonl"
    assert _portable("optim.lr=1e-4") == "optim.lr=1e-4" and _portable("--no-progress") == "--no-progress"
