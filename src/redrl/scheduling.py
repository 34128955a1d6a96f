"""Which prompts a step's rollouts are drawn for, in which sampling rounds, with which budget.

:class:`RolloutScheduler` is pure bookkeeping over two callables, ``draw(n)`` (the next ``n``
prompt indices of the seeded order) and ``sample(prompts, budget)`` (one
:class:`GroupOutcome` per prompt). The training loop passes a ``sample`` that generates and grades
``G`` rollouts per prompt; the planning simulation (:mod:`redrl.rollout_plan`) passes one that draws
response lengths and charges decoding time. Both therefore run the same decisions.

* **Synchronous** (the default): one round of ``prompts_per_step`` prompts at the full budget.
* **Dynamic sampling** (DAPO, arXiv 2503.14476; verl ``filter_groups``): a group whose rows in the
  advantage statistics all have the same reward carries no signal; it is set aside and further
  prompts are drawn, round after round (at most ``max_rounds`` in all), until the step holds
  ``prompts_per_step`` informative groups. If the cap is reached first, set-aside groups fill the
  step (they add no gradient to the group-relative term, as without filtering).
* **Tail batching** (RollPacker, arXiv 2509.21009): ordinary ("short") rounds cap the response
  length at ``tail_max_new_tokens``; a group with a rollout that reached the cap without stopping
  is set aside (its truncated rows are dropped) and its prompt waits in the tail queue, replaced
  within the step by further prompts. When the queue holds ``prompts_per_step`` prompts, the next
  step is a long round: those prompts at the full budget. No prompt is lost: it is trained later.
  A step that reaches the round cap short of groups takes waiting prompts at the full budget.

Both launch more prompts than they need, by the share of groups they lost lately (deferred or
filtered), so that one round usually suffices, as RollPacker and DAPO do; groups beyond the step's
are not trained: their prompts open the next step and are sampled again (``groups_surplus``).

The state (the tail queue) is in :meth:`RolloutScheduler.state_dict`, saved with every checkpoint;
with the prompt order's own state, a resumed run makes exactly the uninterrupted run's rounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Collected", "GroupOutcome", "RolloutScheduler", "is_informative"]


@dataclass
class GroupOutcome:
    """One prompt's group after a round: whether a rollout hit the round's budget without stopping
    (``truncated``), whether its rewards carry signal (``informative``), the rollout tokens it cost,
    and what the caller keeps of it (``payload``)."""

    prompt: int
    truncated: bool
    informative: bool
    tokens: int = 0
    payload: Any = None


@dataclass
class Collected:
    """One step's groups (``groups``, in the order they were kept) and what it cost to get them."""

    groups: list[GroupOutcome]
    rounds: int = 0
    long_round: bool = False
    prompts_sampled: int = 0
    rollout_tokens: int = 0
    filtered: int = 0  # uninformative groups left out
    deferred: int = 0  # groups set aside for a long round
    surplus: int = 0  # groups sampled beyond the step's, their prompts sampled again next step
    budgets: list[int] = field(default_factory=list)

    def record(self) -> dict:
        """The step's scheduling numbers for the metrics row."""
        return {
            "sampling_rounds": self.rounds,
            "prompts_sampled": self.prompts_sampled,
            "rollout_tokens_sampled": self.rollout_tokens,
            "groups_filtered": self.filtered,
            "groups_deferred": self.deferred,
            "groups_surplus": self.surplus,
            "long_round": int(self.long_round),
        }


def is_informative(
    rewards: Sequence[float | None], teacher_reward: float | None = None, *, with_teacher: bool = False
) -> bool:
    """Whether a group's rows in the advantage statistics do not all share one reward.

    ``rewards`` are the ``G`` rollouts' (``None`` = ungraded, left out of the statistics, as
    :func:`redrl.objectives.group_advantages` does); with ``with_teacher`` the teacher row's reward
    joins them (RED-style methods: an all-fail group whose teacher row is correct is informative,
    it is where the teacher is imitated). A group with fewer than two graded rows is uninformative."""
    values = [float(r) for r in rewards if r is not None and not math.isnan(r)]
    if with_teacher and teacher_reward is not None and not math.isnan(teacher_reward):
        values.append(float(teacher_reward))
    return len(values) >= 2 and max(values) > min(values)


class RolloutScheduler:
    """Sampling rounds of one step (see the module's docstring).

    Args:
        prompts_per_step: groups a step trains on.
        max_new_tokens: the full response budget.
        dynamic: dynamic sampling on.
        max_rounds: sampling rounds per step at most (the first included), for dynamic sampling and
            tail batching's replacements.
        tail_max_new_tokens: tail batching's short-round budget (``None``: off).
    """

    def __init__(
        self,
        prompts_per_step: int,
        max_new_tokens: int,
        *,
        dynamic: bool = False,
        max_rounds: int = 4,
        tail_max_new_tokens: int | None = None,
    ):
        if tail_max_new_tokens is not None and not 0 < tail_max_new_tokens < max_new_tokens:
            raise ValueError(
                f"rollout.tail_max_new_tokens must be between 1 and max_new_tokens ({max_new_tokens}); got {tail_max_new_tokens}"
            )
        self.prompts_per_step, self.max_new_tokens = prompts_per_step, max_new_tokens
        self.dynamic, self.max_rounds, self.tail_budget = dynamic, max(1, max_rounds), tail_max_new_tokens
        self.tail: list[int] = []
        self.carry: list[int] = []  # prompts drawn ahead and not used: the next step's first
        self.loss_rate = 0.0  # share of a round's groups lately deferred or filtered

    @property
    def synchronous(self) -> bool:
        """One round of the step's prompts at the full budget: nothing to decide."""
        return not self.dynamic and self.tail_budget is None

    def collect(
        self,
        draw: Callable[[int], list[int]],
        sample: Callable[[list[int], int], list[GroupOutcome]],
        *,
        budget: int | None = None,
        first: list[int] | None = None,
    ) -> Collected:
        """The step's groups. ``budget`` overrides the full budget for this step (a length
        curriculum's window); ``first`` are the first round's prompts if already drawn."""
        P, full = self.prompts_per_step, budget or self.max_new_tokens
        short = min(self.tail_budget, full) if self.tail_budget is not None else full
        long_round = self.tail_budget is not None and len(self.tail) >= P
        if long_round:
            prompts, self.tail = self.tail[:P], self.tail[P:]
        else:
            prompts = self.carry + (first if first is not None else draw(P))
            prompts += draw(max(0, self._extra(P) - len(self.carry)))
            self.carry = []
        out = Collected([], long_round=long_round)
        set_aside: list[GroupOutcome] = []
        while True:
            round_budget = full if long_round or short >= full else short
            outcomes = sample(prompts, round_budget)
            out.rounds += 1
            out.prompts_sampled += len(prompts)
            out.budgets.append(round_budget)
            lost = 0
            for outcome in outcomes:
                out.rollout_tokens += outcome.tokens
                if outcome.truncated and round_budget < full:
                    self.tail.append(outcome.prompt)
                    out.deferred += 1
                    lost += 1
                elif self.dynamic and not outcome.informative:
                    set_aside.append(outcome)
                    out.filtered += 1
                    lost += 1
                else:
                    out.groups.append(outcome)
            if not long_round and prompts:
                self.loss_rate = 0.8 * self.loss_rate + 0.2 * lost / len(prompts)
            missing = P - len(out.groups)
            if missing <= 0 or out.rounds >= self.max_rounds:
                break
            prompts, long_round = draw(missing + self._extra(missing)), False
        if len(out.groups) < P and self.tail and short < full:
            # the cap was reached short of groups: waiting prompts at the full budget
            prompts, self.tail = self.tail[: P - len(out.groups)], self.tail[P - len(out.groups) :]
            outcomes = sample(prompts, full)
            out.rounds += 1
            out.prompts_sampled += len(prompts)
            out.budgets.append(full)
            out.rollout_tokens += sum(outcome.tokens for outcome in outcomes)
            out.groups += outcomes
        if len(out.groups) < P:  # the cap was reached: uninformative groups fill the step
            filler = set_aside[: P - len(out.groups)]
            out.groups += filler
            out.filtered -= len(filler)
        self.carry = [group.prompt for group in out.groups[P:]]  # drawn ahead, sampled again next step
        out.surplus, out.groups = len(self.carry), out.groups[:P]
        return out

    def _extra(self, needed: int) -> int:
        """Prompts added to a round that needs ``needed`` groups, so that after the share it lost
        lately (deferred or filtered; an average over recent rounds) it still holds them, with a
        margin of two binomial spreads: one round instead of a chain of small ones, as RollPacker
        and DAPO launch more than they keep."""
        if self.synchronous or self.loss_rate <= 0:
            return 0
        rate = min(self.loss_rate, 0.5)
        expected = needed * rate / (1 - rate)
        return min(needed, math.ceil(expected + 2 * math.sqrt(expected)))  # two binomial spreads of margin

    def state_dict(self) -> dict:
        return {"tail": list(self.tail), "carry": list(self.carry), "loss_rate": self.loss_rate}

    def load_state_dict(self, state: dict) -> None:
        self.tail = [int(i) for i in state.get("tail", [])]
        self.carry = [int(i) for i in state.get("carry", [])]
        self.loss_rate = float(state.get("loss_rate", 0.0))
