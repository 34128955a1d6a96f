"""What every benchmark script shares: printing is its own; the figures go to ``--json``."""

from __future__ import annotations

import json


def write_figures(figures: dict, path: str | None) -> dict:
    """Write ``figures`` to ``path`` as JSON when one is given (``benchmarks/run.py`` collects them)."""
    if path:
        with open(path, "w") as f:
            json.dump(figures, f, indent=1)
    return figures
