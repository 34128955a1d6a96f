"""Regenerate the README's figures from a `redrl compare` run.

    python docs/figures.py runs/compare/results.json

Draws rollout accuracy, H_rl, H_sft, w and rollout length over the optimizer steps (mean over
seeds, min-max shaded) for a few methods, small enough for the README (under 300 KB in all), into
docs/figures/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from redrl.report import plot_curves

SHOWN = ("sft", "grpo", "mixpolicy", "luffy", "red_entropy", "red_shift", "red")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results.json of a redrl compare run (its runs/ must be beside it)")
    parser.add_argument("--methods", default=",".join(SHOWN), help="comma-separated methods to draw")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    args = parser.parse_args()
    results = json.loads(Path(args.results).read_text())
    wanted = [m for m in args.methods.split(",") if m in results["methods"]]
    results["methods"] = {m: results["methods"][m] for m in wanted}
    written = plot_curves(results, Path(args.out), dpi=60, size=(6.0, 3.4))
    total = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written)} figures, {total / 1024:.0f} KB in all: " + ", ".join(p.name for p in written))
    if total > 300 * 1024:
        raise SystemExit("the figures exceed 300 KB: lower the dpi")


if __name__ == "__main__":
    main()
