"""A run's directory: claimed before the run writes anything, so no old checkpoint is taken for
this run's, and read back when a run resumes (the metrics it keeps)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

__all__ = ["claim", "load_metrics"]

#: What a run leaves in its directory: the first four mark a run that took a step.
_RUN_MARKS = ("final", "checkpoint-*", ".tmp-checkpoint-*", "stage-*")
_RUN_FILES = (*_RUN_MARKS, "metrics.jsonl", "metrics-rank*.jsonl", "config.yaml")


def claim(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Make ``out`` this run's: refuse a directory that already holds a run (a checkpoint, a final
    model or logged steps) unless resuming it, or (``overwrite``) remove that run's files first, so
    no old checkpoint is taken for this run's. A run that stopped before its first step holds none."""
    metrics = out / "metrics.jsonl"
    held = sorted({path for pattern in _RUN_MARKS for path in out.glob(pattern)})
    held += [metrics] if metrics.is_file() and metrics.stat().st_size else []
    if held and not resume and not overwrite:
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in held[:4]) + (", ..." if len(held) > 4 else "")
        raise ValueError(
            f"train.out {out} already holds a run ({names}); pass --resume to continue it or --overwrite to replace it"
        )
    if overwrite and not resume:
        for path in sorted({path for pattern in _RUN_FILES for path in out.glob(pattern)}):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    _writable(out)


def _writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"train.out {out} is not writable ({error.strerror or error})") from None


def load_metrics(path: Path, until: int) -> list[str]:
    """The lines of a metrics file up to and including step ``until`` (a resumed run redoes the rest)."""
    if not path.is_file():
        return []
    return [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= until]
