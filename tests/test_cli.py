"""Bad input on the command line: one line naming the value, exit status 2, no traceback."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--steps", "-3"], "train.steps must be >= 1; got -3"),
        (["train", "--config", "missing.yaml"], "config not found: missing.yaml"),
        (["train", "--set", "optim.lr=fast"], "optim.lr must be float | None; got 'fast'"),
        (["eval", "--model", "./no/such/model"], "model.path not found: ./no/such/model"),
    ],
)
def test_bad_input_is_one_line(args, message):
    result = subprocess.run([sys.executable, "-m", "redrl", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unknown_method_is_refused():
    result = subprocess.run(
        [sys.executable, "-m", "redrl", "train", "--method", "dpo"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "invalid choice: 'dpo'" in result.stderr
