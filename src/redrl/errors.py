"""The exceptions the command line turns into one line and an exit code (torch-free, so that
``redrl report`` and ``redrl env`` never import torch)."""

from __future__ import annotations

import signal
from pathlib import Path

__all__ = ["CheckpointError", "GradingFailed", "NonFiniteTraining", "RunDirectoryInUse", "TrainingStopped"]


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says which and why in one line."""


class TrainingStopped(Exception):
    """Training stopped at a step boundary on SIGINT / SIGTERM, after saving a checkpoint."""

    def __init__(self, signum: int, step: int, path: Path):
        self.signum, self.step, self.path = signum, step, path
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; saved {path}")


class NonFiniteTraining(ValueError):
    """Too many steps in a row had a non-finite loss or gradient."""


class GradingFailed(ValueError):
    """Grading raised or overran on too many answers, too many steps in a row."""


class RunDirectoryInUse(ValueError):
    """Another live run holds the output directory."""
