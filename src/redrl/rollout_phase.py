"""One step's rollouts: the prompts the strategy plans, ``G`` samples of each (from the colocated
engine, through the rollout scheduler, or from the asynchronous worker), graded with the grader
evaluation uses, as the :class:`redrl.strategies.StepRollouts` the loop trains on.

The method's prompt conditioning (:mod:`redrl.conditioning`) decides what each record's rollouts
are sampled after and what the loss scores them under.
"""

from __future__ import annotations

import sys

import torch

from redrl.reward_shapes import REWARD_SHAPES
from redrl.rewards import grade_checked
from redrl.scheduling import GroupOutcome
from redrl.step import behaviour_logp
from redrl.strategies import StepPlan, StepRollouts

__all__ = ["collect", "start_pipeline", "submit"]


def collect(run, step: int, window: int) -> tuple[StepPlan, StepRollouts, dict]:
    """``(plan, groups, scheduling record)`` of step ``step``; ``window`` is the response budget."""
    cfg, data = run.cfg, run.data
    with_logprobs = behaviour_logp(cfg) and not run.conditioning.needs_recomputed_logp
    scheduling: dict = {}
    if run.pipeline is not None:  # sampled by the worker, at most k steps ago
        flight = run.pipeline.take(step)
        plan = StepPlan(flight.prompts, run.method)
        chosen, rollouts, logprobs = flight.prompts, flight.rollouts, flight.logprobs
        rewards = grade(run, chosen, rollouts)
        scheduling = {"staleness": step - 1 - flight.version, "worker_seconds": flight.seconds}
    else:
        plan = run.strategy.plan(run.sampler, cfg.train.prompts_per_step)
        rollouts, logprobs, rewards = [], None, []
        if plan.method.rollouts and run.scheduler_rounds is not None and not plan.special:
            chosen, rollouts, logprobs, rewards, scheduling = _scheduled_groups(run, plan, window, with_logprobs)
        else:
            chosen = run.par.share(plan.prompts)  # this process's groups
            if plan.method.rollouts:
                rollouts, logprobs, rewards = _sample_groups(run, chosen, window, with_logprobs=with_logprobs)
    correct = None
    if plan.method.reward != "correct":  # the reward joins the grade with what the prompt asked for
        G, shape = cfg.rollout.group_size, REWARD_SHAPES[plan.method.reward]
        records = [data.records[chosen[j // G]] for j in range(len(rollouts))]
        correct, rewards = rewards, shape(rewards, rollouts, records, cfg, run.tokenizer.eos_token_id)
    groups = StepRollouts(
        chosen,
        [run.conditioning.train_prompt(data.records[i], data.prompts[i]) for i in chosen],
        [data.records[i]["answer"] for i in chosen],
        [data.teacher[i][:window] for i in chosen],
        rollouts,
        rewards,
        logprobs,
        cfg.rollout.group_size,
        correct,
    )
    return plan, groups, scheduling


def _sample_prompts(run, records: list[int]) -> list[list[int]]:
    data = run.data
    return [run.conditioning.sample_prompt(data.records[i], data.prompts[i]) for i in records]


def _sample_groups(run, prompts: list[int], budget: int, *, with_logprobs: bool):
    """``G`` rollouts of each record in ``prompts``, graded: ``(rollouts, logprobs, rewards)``
    (prompt-major; ``logprobs`` ``None`` unless asked for)."""
    cfg, G = run.cfg, run.cfg.rollout.group_size
    step_prompts = _sample_prompts(run, prompts)
    logprobs = None
    if with_logprobs:
        rollouts, logprobs = run.generator.generate_with_logprobs(
            step_prompts, G, temperature=cfg.rollout.temperature, max_new_tokens=budget
        )
    else:
        rollouts = run.generator.generate(step_prompts, G, temperature=cfg.rollout.temperature, max_new_tokens=budget)
    return rollouts, logprobs, grade(run, prompts, rollouts)


def grade(run, prompts: list[int], rollouts: list[list[int]]) -> list[float | None]:
    """Each rollout's grade; a grader error or timeout is ungraded (``None``), or wrong with
    ``data.failed_grading: wrong``."""
    cfg, G = run.cfg, run.cfg.rollout.group_size
    texts = run.tokenizer.batch_decode(rollouts, skip_special_tokens=True) if rollouts else []  # ([] decodes to [''])
    answers = [run.data.records[i]["answer"] for i in prompts]
    checked = [grade_checked(text, answers[j // G], cfg.data.grader) for j, text in enumerate(texts)]
    wrong_if_failed = cfg.data.failed_grading == "wrong"
    return [0.0 if failed and wrong_if_failed else reward for reward, failed in checked]


def _scheduled_groups(run, plan: StepPlan, budget: int, with_logprobs: bool):
    """The step's groups through :class:`redrl.scheduling.RolloutScheduler` (dynamic sampling, tail
    batching): ``(chosen, rollouts, logprobs, rewards, record)``. Which groups carry a signal is the
    strategy's to say (:meth:`redrl.strategies.Strategy.informative`)."""
    G, eos = run.cfg.rollout.group_size, run.tokenizer.eos_token_id

    def sample(prompts: list[int], round_budget: int) -> list[GroupOutcome]:
        rollouts, logprobs, rewards = _sample_groups(run, prompts, round_budget, with_logprobs=with_logprobs)
        outcomes = []
        for g, index in enumerate(prompts):
            rows = rollouts[g * G : (g + 1) * G]
            group_rewards = rewards[g * G : (g + 1) * G]
            informative = run.strategy.informative(group_rewards, run.data.teacher_reward(index))
            truncated = any(len(row) >= round_budget and row[-1:] != [eos] for row in rows)
            payload = (rows, None if logprobs is None else logprobs[g * G : (g + 1) * G], group_rewards)
            outcomes.append(GroupOutcome(index, truncated, informative, sum(map(len, rows)), payload))
        return outcomes

    collected = run.scheduler_rounds.collect(run.sampler.next, sample, budget=budget, first=plan.prompts)
    chosen = [group.prompt for group in collected.groups]
    rollouts = [row for group in collected.groups for row in group.payload[0]]
    logprobs = [lp for group in collected.groups for lp in group.payload[1]] if with_logprobs else None
    rewards = [r for group in collected.groups for r in group.payload[2]]
    return chosen, rollouts, logprobs, rewards, collected.record()


def start_pipeline(run, loop: dict | None, *, model_path: str, progress: bool):
    """The rollout worker (redrl's fast engine, or vLLM with ``rollout.engine=vllm``), with the
    steps in flight: restored from a checkpoint's loop state, or the first ``k + 1`` steps submitted."""
    from redrl.async_rollout import AsyncRollouts
    from redrl.rollout import vllm_settings

    cfg = run.cfg
    vllm = None
    if cfg.rollout.engine == "vllm":  # sized for the longest prompt the worker will sample after
        longest = max(len(prompt) for prompt in _sample_prompts(run, range(len(run.data.prompts))))
        vllm = vllm_settings(cfg, model_path, longest)
    threads = torch.get_num_threads()
    worker_threads = max(1, threads // 2)
    if run.par.device.type == "cpu" and threads > 1:  # the two processes share the cores
        torch.set_num_threads(threads - worker_threads)
        if progress:
            print(
                f"redrl: asynchronous rollouts: {threads - worker_threads} CPU thread(s) train, "
                f"{worker_threads} sample in the worker",
                file=sys.stderr,
            )
    pipeline = AsyncRollouts(
        run.model,
        run.tokenizer.eos_token_id,
        run.tokenizer.pad_token_id,
        staleness=cfg.rollout.async_staleness,
        group_size=cfg.rollout.group_size,
        temperature=cfg.rollout.temperature,
        seed=cfg.train.seed,
        version=run.start,
        batch_size=cfg.rollout.batch_size,
        threads=worker_threads,
        vllm=vllm,
        devices=cfg.rollout.worker_devices,
        threads_before=threads,
    )
    if loop is not None:
        pipeline.load_state_dict(loop)
    else:
        for step in range(run.start + 1, min(run.start + cfg.rollout.async_staleness + 1, run.steps) + 1):
            submit(run, pipeline, step)
    return pipeline


def submit(run, pipeline, step: int) -> None:
    """Draw step ``step``'s prompts and send them to the rollout worker."""
    plan = run.strategy.plan(run.sampler, run.cfg.train.prompts_per_step)
    window = run.curriculum.window if run.curriculum is not None else run.cfg.rollout.max_new_tokens
    pipeline.submit(step, plan.prompts, _sample_prompts(run, plan.prompts), window)
