"""Time `redrl demo` from an empty cache (building the base and the teacher data included).

Target (issue 2/7): at most 10 minutes on 2 CPU cores, and RED's test accuracy clearly above the
base's. Prints the wall time, its ratio to the 10-minute budget, and both accuracies per level.

    python benchmarks/demo_time.py [--keep-cache]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_SECONDS = 600


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep-cache", action="store_true", help="use $REDRL_CACHE (cold only if it is empty) instead of an empty one"
    )
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        env = dict(os.environ)
        cache = Path(env.get("REDRL_CACHE", Path.home() / ".cache" / "redrl")) if args.keep_cache else None
        cold = cache is None or not cache.exists() or not any(cache.iterdir())
        if not args.keep_cache:
            env["REDRL_CACHE"] = str(Path(scratch) / "cache")
        out = Path(scratch) / "demo"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "redrl", "demo", "--out", str(out), "--no-progress"], env=env, check=True)
        seconds = time.perf_counter() - started
        summary = json.loads((out / "summary.json").read_text())
    print(
        f"\nredrl demo: {seconds:.0f} s wall, {seconds / BUDGET_SECONDS:.2f} of the {BUDGET_SECONDS} s budget "
        f"({'cold' if cold else 'warm'} cache, {os.cpu_count()} CPUs)"
    )
    for name, result in summary["methods"].items():
        levels = " ".join(f"L{level} {100 * r['accuracy']:.0f}" for level, r in result["by_level"].items())
        print(f"  {name:5s} accuracy {100 * result['accuracy']:.1f}%  LEN {result['length']:.0f}  ({levels})")
    gain = summary["methods"]["red"]["accuracy"] - summary["methods"]["base"]["accuracy"]
    print(f"  RED - base: {100 * gain:+.1f} points")
    if args.json:
        figures = {
            "seconds": seconds,
            "budget_seconds": BUDGET_SECONDS,
            "cold": cold,
            "accuracy": {name: result["accuracy"] for name, result in summary["methods"].items()},
        }
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
