"""Every performance figure of BENCHMARKS.md in one run, each a ratio measured side by side:

    python benchmarks/run.py --json out.json

writes ``{"rollout_speedup_vs_hf", "rollout_fraction_of_flop_limit", "train_step_speedup_vs_trl",
"async_step_speedup", "tail_batching_step_speedup", "objective_memory_ratio", "kl_memory_ratio",
"critic_memory_ratio", "demo_seconds"}`` (plus the details behind them). ``redrl demo`` runs first
from an empty cache (a cold start, the embedded default built included); the other benchmarks reuse
what it built. Needs ``pip install trl`` for the train-step comparison (a benchmark-only dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run(script: str, env: dict, *args: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, str(HERE / script), *args, "--json", out.name], env=env, check=True)
        return json.loads(Path(out.name).read_text())


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the figures")
    parser.add_argument("--skip-demo", action="store_true", help="leave out the (ten-minute) cold demo")
    args = parser.parse_args()
    started = time.perf_counter()
    details: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "REDRL_CACHE": str(Path(scratch) / "cache"), "PYTHONWARNINGS": "ignore"}
        figures: dict = {}
        if not args.skip_demo:
            details["demo"] = _run("demo_time.py", env, "--keep-cache")
            figures["demo_seconds"] = details["demo"]["seconds"]
        details["rollout"] = _run("rollout.py", env)
        details["train_step"] = _run("train_step.py", env)
        details["rollout_mechanisms"] = _run(
            "rollout_mechanisms.py", env, "--figure", str(HERE.parent / "docs" / "figures" / "rollout-plan.png")
        )
        details["objective_memory"] = _run("objective_memory.py", env)
        details["kl_memory"] = _run("kl_memory.py", env)
        details["critic_memory"] = _run("critic_memory.py", env)
    figures["rollout_speedup_vs_hf"] = details["rollout"]["rollout_speedup_vs_hf"]
    figures["rollout_fraction_of_flop_limit"] = details["rollout"]["rollout_fraction_of_flop_limit"]
    if "train_step_speedup_vs_trl" in details["train_step"]:
        figures["train_step_speedup_vs_trl"] = details["train_step"]["train_step_speedup_vs_trl"]
    for key in ("async_step_speedup", "tail_batching_step_speedup"):
        figures[key] = details["rollout_mechanisms"][key]
    figures["objective_memory_ratio"] = details["objective_memory"]["objective_memory_ratio"]
    figures["kl_memory_ratio"] = details["kl_memory"]["kl_memory_ratio"]
    figures["critic_memory_ratio"] = details["critic_memory"]["critic_memory_ratio"]
    result = {
        **figures,
        "details": details,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "date": date.today().isoformat(),
        "seconds": time.perf_counter() - started,
    }
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(figures, indent=1))
    print(f"wrote {args.json} ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
