"""How a rollout's grade becomes its reward (``Method.reward``): the grade itself, or the grade
joined with what the prompt asked for (BARD's budget fidelity, :func:`redrl.objectives.budget_reward`).

A shape takes the graded rewards of a step's rollouts (``None``: ungradable), the rollouts' token
ids, the training record of each rollout, the run's settings and the end-of-sequence id, and
returns the rewards the advantages are computed from (``None`` stays ``None``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from redrl.data.budget import response_length
from redrl.objectives import budget_reward

__all__ = ["REWARD_SHAPES"]


def _correct(rewards, rollouts, records, cfg, eos_id):
    return rewards


def _budget(combine: str):
    def shape(rewards, rollouts, records, cfg, eos_id):
        if not rewards:
            return rewards
        joined = budget_reward(
            rewards,
            torch.tensor([response_length(r, eos_id) for r in rollouts]),
            torch.tensor([record["budget"] for record in records]),
            combine=combine,
            form=cfg.bard.fidelity,
            tau=cfg.bard.tau,
            weight=cfg.bard.weight,
        )
        return [None if math.isnan(value) else value for value in joined.tolist()]

    return shape


#: Every reward shape by name (``Method.reward``).
REWARD_SHAPES: dict[str, Callable] = {
    "correct": _correct,
    "budget": _budget("product"),
    "budget_additive": _budget("sum"),
}
