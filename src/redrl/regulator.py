"""RED's entropy regulator: the one stateful piece of the math.

Each step the trainer measures the mean token entropy of the on-policy rows (``H_rl``) and of the
offline teacher rows (``H_sft``) in the forward pass that computes the loss, before the update,
and asks the regulator for the offline weight ``w`` of that step (RED, arXiv 2508.16677,
Eqs. 9 and 11):

    ΔH_rl  = |1 - H_rl,t  / H_rl,t-1|
    ΔH_sft = |1 - H_sft,t / H_sft,t-1|
    w      = clip(ΔH_sft / ΔH_rl, 1, max_weight)        (max_weight = G in the paper)

The first step has no previous entropy and returns ``w = 1``. With ``ema = β`` the entropies are
smoothed first, ``S_t = β·S_{t-1} + (1 - β)·H_t`` (``S_1 = H_1``), and ``ΔH`` is taken between
consecutive ``S``. A step whose entropies are not finite (e.g. no offline row in the batch) returns
``w = 1`` with a warning and leaves the state untouched.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from redrl.objectives import entropy_weight, relative_entropy_change

__all__ = ["EntropyRegulator"]


class EntropyRegulator:
    """Turns the per-step RL and SFT entropies into RED's offline weight ``w``.

    Args:
        max_weight: upper clip of ``w`` (``G``, the number of rollouts per prompt, in the paper).
        ema: optional smoothing factor ``β`` in ``[0, 1)`` for the entropies; ``None`` = no smoothing.

    Attributes (the last step, for logging): ``w``, ``delta_h_rl``, ``delta_h_sft``, ``steps``.
    """

    def __init__(self, max_weight: float, ema: float | None = None):
        if not max_weight >= 1:
            raise ValueError(f"max_weight must be >= 1; got {max_weight}")
        if ema is not None and not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1) or None; got {ema}")
        self.max_weight = float(max_weight)
        self.ema = ema
        self.h_rl: float | None = None  # previous (smoothed) entropies
        self.h_sft: float | None = None
        self.steps = 0
        self.w = 1.0
        self.delta_h_rl = math.nan
        self.delta_h_sft = math.nan

    def _smooth(self, previous: float | None, current: float) -> float:
        if previous is None or self.ema is None:
            return current
        return self.ema * previous + (1.0 - self.ema) * current

    def update(self, h_rl: float, h_sft: float) -> float:
        """Record this step's mean token entropies and return the offline weight ``w`` for it."""
        h_rl, h_sft = float(h_rl), float(h_sft)
        if not (math.isfinite(h_rl) and math.isfinite(h_sft)):
            warnings.warn(
                f"entropy regulator: non-finite entropy (H_rl={h_rl}, H_sft={h_sft}); using w = 1 this step",
                RuntimeWarning,
                stacklevel=2,
            )
            self.w, self.delta_h_rl, self.delta_h_sft = 1.0, math.nan, math.nan
            return self.w
        s_rl, s_sft = self._smooth(self.h_rl, h_rl), self._smooth(self.h_sft, h_sft)
        if self.h_rl is None or self.h_sft is None:
            self.w, self.delta_h_rl, self.delta_h_sft = 1.0, math.nan, math.nan
        else:
            self.delta_h_rl = relative_entropy_change(s_rl, self.h_rl)
            self.delta_h_sft = relative_entropy_change(s_sft, self.h_sft)
            self.w = entropy_weight(self.delta_h_sft, self.delta_h_rl, self.max_weight)
        self.h_rl, self.h_sft = s_rl, s_sft
        self.steps += 1
        return self.w

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to produce the same ``w`` sequence (plain Python floats)."""
        return {
            "max_weight": self.max_weight,
            "ema": self.ema,
            "h_rl": self.h_rl,
            "h_sft": self.h_sft,
            "steps": self.steps,
            "w": self.w,
            "delta_h_rl": self.delta_h_rl,
            "delta_h_sft": self.delta_h_sft,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the settings must match the ones this regulator was built with."""
        if (float(state["max_weight"]), state["ema"]) != (self.max_weight, self.ema):
            raise ValueError(
                f"regulator state was saved with max_weight={state['max_weight']}, ema={state['ema']}; "
                f"this run uses max_weight={self.max_weight}, ema={self.ema}"
            )
        self.h_rl, self.h_sft = state["h_rl"], state["h_sft"]
        self.steps = int(state["steps"])
        self.w = float(state["w"])
        self.delta_h_rl, self.delta_h_sft = float(state["delta_h_rl"]), float(state["delta_h_sft"])

    def __repr__(self) -> str:
        return f"EntropyRegulator(max_weight={self.max_weight:g}, ema={self.ema}, steps={self.steps}, w={self.w:.4g})"
