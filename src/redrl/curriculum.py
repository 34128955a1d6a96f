"""The entropy-gated length curriculum of arXiv 2605.16826 ("Proposed remedies"): train on a short
window of response tokens first, grow it only while the student's entropy stays above a threshold,
and freeze it for good once the entropy drops below (long windows amplify entropy collapse under
reverse KL). The window bounds both the rollouts' length (student prefixes) and the teacher tokens
trained on (teacher prefixes)."""

from __future__ import annotations

import math

__all__ = ["LengthCurriculum"]


class LengthCurriculum:
    """``window`` tokens now; :meth:`update` after each step with the student's mean token entropy
    on the trained tokens. Every ``every`` steps the window is multiplied by ``growth`` (up to
    ``limit``) if the entropy is at least ``threshold``; an entropy below it freezes the window."""

    def __init__(self, start: int, limit: int, *, growth: float = 2.0, every: int = 10, threshold: float = 0.1):
        if not 1 <= start <= limit:
            raise ValueError(f"the curriculum's start window must be in [1, {limit}]; got {start}")
        if growth <= 1 or every < 1:
            raise ValueError(f"the window must grow (growth > 1, every >= 1); got growth {growth}, every {every}")
        self.window, self.limit, self.growth, self.every, self.threshold = start, limit, growth, every, threshold
        self.frozen, self.steps = False, 0

    def update(self, entropy: float) -> None:
        self.steps += 1
        if self.frozen or not math.isfinite(entropy):
            return
        if entropy < self.threshold:
            self.frozen = True  # entropy dropped: this window is the last
        elif self.steps % self.every == 0:
            self.window = min(self.limit, math.ceil(self.window * self.growth))

    def state_dict(self) -> dict:
        return {"window": self.window, "frozen": self.frozen, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.window, self.frozen, self.steps = int(state["window"]), bool(state["frozen"]), int(state["steps"])
