"""The training methods: one small settings object each, all run by the same loop.

Fairness rule: every method sees the same prompts in the same order, the same teacher data, the
same number of optimizer steps and rollouts per prompt, and the shared hyperparameters of the
config; only the fields below differ. Each method names its source.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["METHODS", "Method"]


@dataclass(frozen=True)
class Method:
    """What distinguishes one method from another.

    Attributes:
        name: the key in ``METHODS``.
        rollouts: samples ``G`` rollouts per prompt and trains on them with the clipped surrogate.
        offline: puts the prompt's teacher trace into its group as one more row.
        objective: ``"red"`` (:func:`redrl.objectives.red_loss`, Eq. 10) or ``"sft"``
            (:func:`redrl.objectives.sft_loss`, NLL of the teacher traces).
        offline_ratio: the teacher row's ratio (:data:`redrl.objectives.OFFLINE_RATIOS`).
        regulator: weight the teacher rows by the entropy regulator's ``w`` (else ``w = 1``).
        source: where the method comes from.
    """

    name: str
    rollouts: bool
    offline: bool
    objective: str = "red"
    offline_ratio: str = "shift"
    regulator: bool = False
    source: str = ""


METHODS: dict[str, Method] = {
    "red": Method("red", rollouts=True, offline=True, offline_ratio="shift", regulator=True,
                  source="RED, arXiv 2508.16677: policy shift (Eq. 8) + entropy regulator (Eqs. 9, 11) in Eq. 10"),
    "grpo": Method("grpo", rollouts=True, offline=False,
                   source="GRPO, arXiv 2402.03300: group-normalised advantages, clipped surrogate, no teacher"),
    "sft": Method("sft", rollouts=False, offline=True, objective="sft",
                  source="supervised fine-tuning: token-mean NLL of the teacher traces"),
    "mixpolicy": Method("mixpolicy", rollouts=True, offline=True, offline_ratio="one",
                        source="mixed-policy GRPO with π_off = 1 (the teacher row's ratio is π), as the RED paper's MixPolicy baseline"),
    "onpolicy_offline": Method("onpolicy_offline", rollouts=True, offline=True, offline_ratio="on_policy",
                               source="teacher row treated as on-policy, π_off = stopgrad(π): advantage-weighted log π"),
    "luffy": Method("luffy", rollouts=True, offline=True, offline_ratio="luffy",
                    source="LUFFY, arXiv 2504.14945: shaping f(π) = π/(π+γ), γ = loss.luffy_gamma, unclipped, mixed group advantage"),
    "red_entropy": Method("red_entropy", rollouts=True, offline=True, offline_ratio="one", regulator=True,
                          source="RED ablation I, arXiv 2508.16677 Table 2: entropy regulator on, no policy shift (π_off = 1)"),
    "red_shift": Method("red_shift", rollouts=True, offline=True, offline_ratio="shift", regulator=False,
                        source="RED ablation II, arXiv 2508.16677 Table 2: policy shift on, w = 1"),
}
