"""Planning at scale: the rollout phase of ``N`` workers replayed with measured lengths and costs.

:func:`replay` runs the training loop's own :class:`redrl.scheduling.RolloutScheduler` with a
``sample`` function that, instead of generating, draws each group's response lengths and rewards
and charges each round the time ``N`` workers need to decode it: a round's groups are dealt to the
workers in turn, each worker decodes its rows as one batch (finished rows leave it), a decoding
step with ``b`` rows costs ``cost(b)`` seconds, and the round lasts as long as its slowest worker.
A worker that is done waits: that is the idle time. The optimizer step costs ``train_seconds``.

* synchronous and tail batching: step time = the step's rounds + the optimizer step;
* asynchronous with staleness ``k >= 1``: rollouts overlap the optimizer step, so in the steady
  state a step takes ``max(rollout, train)`` (plus ``sync_seconds`` to send the weights).

The inputs are what we measured (``benchmarks/rollout_mechanisms.py`` records response lengths and
the per-step decoding cost of the fast engine), or a long-tailed length distribution of the paper's
scale (:func:`lognormal_lengths`, 8,192-token budget). ``redrl.rollout_plan`` is what the benchmark
and ``docs/figures`` use; it never runs a model.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redrl.scheduling import GroupOutcome, RolloutScheduler

__all__ = ["Plan", "PlanResult", "linear_cost", "lognormal_groups", "measured_groups", "replay"]


def linear_cost(fixed: float, per_row: float) -> Callable[[int], float]:
    """A decoding step's seconds for ``b`` rows: ``fixed + per_row·b`` (fit to measured steps)."""
    return lambda rows: fixed + per_row * rows


def lognormal_groups(
    median: float, sigma: float, group_size: int, *, prompt_spread: float = 0.5
) -> Callable[[random.Random], list[int]]:
    """A group's response lengths (before any budget): a per-prompt scale (log-normal, spread
    ``prompt_spread``: hard prompts get long answers) times a log-normal per row."""

    def draw(rng: random.Random) -> list[int]:
        scale = rng.lognormvariate(0.0, prompt_spread)
        return [max(1, int(scale * rng.lognormvariate(math.log(median), sigma))) for _ in range(group_size)]

    return draw


def measured_groups(groups: Sequence[Sequence[int]]) -> Callable[[random.Random], list[int]]:
    """A group's response lengths drawn from groups measured in a run (whole groups, so a prompt's
    rows keep their common length); a row that hit the run's budget keeps that length."""
    groups = [list(group) for group in groups]
    return lambda rng: list(groups[rng.randrange(len(groups))])


@dataclass
class Plan:
    """One setting to replay.

    Args:
        workers: rollout workers ``N`` (each decodes its share of a round as one batch).
        prompts_per_step, group_size, max_new_tokens: as the run's.
        lengths: draws one group's response lengths (before the budget) from a ``random.Random``
            (:func:`lognormal_groups`, :func:`measured_groups`).
        cost: seconds of one decoding step with ``b`` rows.
        train_seconds: seconds of the optimizer step.
        pass_rate: the chance a rollout is right (per prompt, drawn uniformly in ``[0, 2·pass_rate]``
            clipped to 1), for dynamic sampling's informative groups.
        sync_seconds: sending the weights to the workers after each step (asynchronous runs).
    """

    workers: int
    prompts_per_step: int
    group_size: int
    max_new_tokens: int
    lengths: Callable[[random.Random], list[int]]
    cost: Callable[[int], float]
    train_seconds: float
    pass_rate: float = 0.5
    sync_seconds: float = 0.0


@dataclass
class PlanResult:
    """Mean seconds per step, the rollout share of it, the workers' idle fraction during rollouts,
    rollout tokens decoded per step (truncated rows included) and tokens trained per step."""

    seconds_per_step: float
    rollout_seconds: float
    idle_fraction: float
    decoded_tokens: float
    trained_tokens: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _round_seconds(lengths: Sequence[Sequence[int]], workers: int, cost) -> tuple[float, float]:
    """(wall seconds, worker-seconds busy) of one round: groups dealt to workers in turn."""
    busy = []
    for w in range(workers):
        rows = sorted(length for group in lengths[w::workers] for length in group)
        seconds, done = 0.0, 0
        for step in range(rows[-1] if rows else 0):
            while done < len(rows) and rows[done] <= step:
                done += 1
            seconds += cost(len(rows) - done)
        busy.append(seconds)
    return max(busy, default=0.0), sum(busy)


def replay(plan: Plan, scheduler: RolloutScheduler, *, steps: int, staleness: int = 0, seed: int = 0) -> PlanResult:
    """Replay ``steps`` steps of ``scheduler`` under ``plan`` (see the module's docstring)."""
    rng = random.Random(seed)
    G, drawn = plan.group_size, {"next": 0}
    prompts: dict[int, tuple[list[int], float]] = {}  # a prompt's raw lengths and pass rate stay its own

    def prompt(index: int) -> tuple[list[int], float]:
        if index not in prompts:
            raw = plan.lengths(rng)
            prompts[index] = (raw, min(1.0, rng.uniform(0, 2 * plan.pass_rate)))
        return prompts[index]

    def draw(n: int) -> list[int]:
        out = list(range(drawn["next"], drawn["next"] + n))
        drawn["next"] += n
        return out

    clock = {"wall": 0.0, "busy": 0.0, "decoded": 0}

    def sample(indices: list[int], budget: int) -> list[GroupOutcome]:
        groups, outcomes = [], []
        for index in indices:
            raw, rate = prompt(index)
            lengths = [min(length, budget) for length in raw]
            rewards = [float(rng.random() < rate) for _ in range(G)]
            groups.append(lengths)
            outcomes.append(
                GroupOutcome(
                    index,
                    truncated=any(length > budget for length in raw),
                    informative=len(set(rewards)) > 1,
                    tokens=sum(lengths),
                    payload=lengths,
                )
            )
        wall, busy = _round_seconds(groups, plan.workers, plan.cost)
        clock["wall"] += wall
        clock["busy"] += busy
        clock["decoded"] += sum(map(sum, groups))
        return outcomes

    total, rollout_total, trained = 0.0, 0.0, 0
    for _ in range(steps):
        before = clock["wall"]
        collected = scheduler.collect(draw, sample)
        rollout = clock["wall"] - before
        trained += sum(sum(group.payload) for group in collected.groups)
        rollout_total += rollout
        if staleness:
            total += max(rollout, plan.train_seconds) + plan.sync_seconds
        else:
            total += rollout + plan.train_seconds
    idle = 1.0 - clock["busy"] / (plan.workers * clock["wall"]) if clock["wall"] else 0.0
    return PlanResult(total / steps, rollout_total / steps, idle, clock["decoded"] / steps, trained / steps)
