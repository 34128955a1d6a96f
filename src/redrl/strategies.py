"""What a method does beyond its loss: which prompts a step trains on, and what happens to a group
whose ``G`` rollouts all failed. One small object per behaviour, used by composition; the loop calls
the same four methods on every one and never asks which method it runs.

* :class:`Plain`: every step draws the next prompts; an all-fail group simply carries no signal (GRPO, RED, ...).
  With an objective that does not learn from rewards (SFT, distillation) every group is informative,
  so dynamic sampling keeps them all.
* :class:`ReliftBuffer`: ReLIFT (arXiv 2506.07527): all-fail prompts wait in a buffer; when it holds
  ``size`` prompts, that step is one SFT step (NLL − coef·H) on their teacher traces.
* :class:`TeacherPrefix`: BREAD (arXiv 2506.17211): an all-fail group is sampled again after the
  shortest teacher prefix that lets one continuation succeed (:func:`teacher_prefix_rollouts`).
* :class:`AnswerPosterior`: RAVR (arXiv 2510.25206): the groups were sampled with the reference
  answer in the prompt; each path is rewarded by its utility over a question-only baseline, and
  joins its group once more under the question alone, weighted by its utility.

Each keeps its state in :meth:`state_dict`, saved with every checkpoint, so a resumed run repeats
the uninterrupted one exactly. What the loop must know of a strategy it asks: which groups carry a
signal (:meth:`informative`, for dynamic sampling) and whether it acts on the current policy after
grading (``needs_current_policy``: no asynchronous rollouts). :func:`build_strategy` picks one by
``Method.strategy``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from redrl.methods import METHODS, Method
from redrl.objectives import LOSSES
from redrl.rewards import grade_checked
from redrl.scheduling import is_informative

if TYPE_CHECKING:
    from redrl.data.training import PromptSampler
    from redrl.parallel import Parallel

__all__ = [
    "STRATEGIES",
    "AnswerPosterior",
    "Plain",
    "ReliftBuffer",
    "StepPlan",
    "StepRollouts",
    "Strategy",
    "TeacherPrefix",
    "build_strategy",
    "check_strategy",
    "strategy_class",
    "teacher_prefix_rollouts",
    "path_utilities",
]


@dataclass
class StepPlan:
    """What one step trains on: record indices (all processes' together), the method whose loss the
    step takes, and the entropy bonus of an SFT step; ``special`` marks a step the strategy took over."""

    prompts: list[int]
    method: Method
    sft_entropy_coef: float = 0.0
    special: bool = False


@dataclass
class StepRollouts:
    """This process's groups of one step after grading, as a strategy may rewrite them. ``rollouts``,
    ``rewards`` and ``logprobs`` are prompt-major, ``group_size`` per prompt. ``correct``: the
    grades, where the method's rewards are shaped from them (``Method.reward``, or a strategy that
    rewards otherwise; else ``None``: the rewards are the grades). ``companions``: rows a strategy
    adds to each group (:func:`redrl.batch.assemble_batch`)."""

    chosen: list[int]
    prompts: list[list[int]]
    answers: list[str]
    teacher: list[list[int]]
    rollouts: list[list[int]]
    rewards: list[float | None]
    logprobs: list[list[float] | None] | None
    group_size: int
    correct: list[float | None] | None = None
    companions: list[list[tuple[list[int], list[int], float]]] | None = None


class Strategy(Protocol):
    needs_current_policy: bool  # acts after grading with the trainer's current policy (no async rollouts)

    def plan(self, sampler: PromptSampler, count: int) -> StepPlan:
        """The next step's prompts and method."""

    def after_grading(self, step: StepRollouts, plan: StepPlan, par: Parallel) -> dict:
        """Act on the graded groups (may rewrite ``step``); return counters for the step's metrics."""

    def record(self, plan: StepPlan, extra: dict) -> dict:
        """The strategy's own fields of the step's metrics row."""

    def informative(self, rewards: list[float | None], teacher_reward: float | None) -> bool:
        """Whether a group with these rollout rewards carries a training signal (dynamic sampling
        keeps only those); ``teacher_reward`` is its teacher trace's."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Plain:
    """Every step draws the next prompts and trains the run's method on them."""

    needs_current_policy = False

    def __init__(self, method: Method):
        self.method = method

    def informative(self, rewards: list[float | None], teacher_reward: float | None) -> bool:
        if not LOSSES[self.method.objective].uses_rewards:
            return True
        return is_informative(rewards, teacher_reward, with_teacher=self.method.offline)

    def plan(self, sampler: PromptSampler, count: int) -> StepPlan:
        return StepPlan(sampler.next(count), self.method)

    def after_grading(self, step: StepRollouts, plan: StepPlan, par: Parallel) -> dict:
        return {}

    def record(self, plan: StepPlan, extra: dict) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _all_failed(rewards: list[float | None], group: int, G: int) -> bool:
    """Every rollout of the group was graded and wrong."""
    members = rewards[group * G : (group + 1) * G]
    return all(r is not None and r <= 0 for r in members)


class _ActsOnAllFail(Plain):
    """A strategy that turns all-fail groups into signal: they are informative, and acting on them
    needs the current policy in the trainer."""

    needs_current_policy = True

    def informative(self, rewards: list[float | None], teacher_reward: float | None) -> bool:
        return all(r is not None and r <= 0 for r in rewards) or super().informative(rewards, teacher_reward)


class ReliftBuffer(_ActsOnAllFail):
    """ReLIFT: prompts whose rollouts all failed (on any process) wait in a buffer; a full buffer
    turns the next step into one SFT step on ``size`` of their teacher traces, with ``-entropy_coef·H``
    added to the NLL. The SFT step takes one of the run's optimizer steps."""

    def __init__(self, method: Method, size: int, entropy_coef: float):
        super().__init__(method)
        self.size, self.entropy_coef, self.buffer = size, entropy_coef, []

    def plan(self, sampler: PromptSampler, count: int) -> StepPlan:
        if len(self.buffer) >= self.size:
            taken, self.buffer = self.buffer[: self.size], self.buffer[self.size :]
            return StepPlan(taken, METHODS["sft"], sft_entropy_coef=self.entropy_coef, special=True)
        return super().plan(sampler, count)

    def after_grading(self, step: StepRollouts, plan: StepPlan, par: Parallel) -> dict:
        if plan.special:
            return {}
        G = step.group_size
        failed = par.gather([i for g, i in enumerate(step.chosen) if _all_failed(step.rewards, g, G)])
        self.buffer += [i for i in failed if i not in self.buffer]
        return {"relift_buffer": len(self.buffer)}

    def record(self, plan: StepPlan, extra: dict) -> dict:
        kept = {"relift_buffer": extra["relift_buffer"]} if "relift_buffer" in extra else {}
        return {**kept, "relift_sft_step": int(plan.special)}

    def state_dict(self) -> dict:
        return {"relift_buffer": list(self.buffer)}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = list(state.get("relift_buffer", []))


class TeacherPrefix(_ActsOnAllFail):
    """BREAD: after grading, every all-fail group is sampled again after teacher prefixes
    (:func:`teacher_prefix_rollouts`); re-sampled groups have no sampler log-probs (recomputed).
    Its counters are summed over processes here, so every rank logs the same."""

    def __init__(
        self,
        method: Method,
        generator,
        tokenizer,
        *,
        fractions: tuple[float, ...],
        temperature: float,
        max_new_tokens: int,
        grader: str,
        failed_grading: str = "ungraded",
    ):
        super().__init__(method)
        self.generator, self.tokenizer = generator, tokenizer
        self.fractions, self.temperature, self.max_new_tokens, self.grader = (
            fractions,
            temperature,
            max_new_tokens,
            grader,
        )
        self.failed_grading = failed_grading

    def after_grading(self, step: StepRollouts, plan: StepPlan, par: Parallel) -> dict:
        before = step.prompts
        step.prompts, step.rollouts, step.rewards, stats = teacher_prefix_rollouts(
            self.generator,
            self.tokenizer,
            step.prompts,
            step.rollouts,
            step.rewards,
            step.teacher,
            step.answers,
            group_size=step.group_size,
            fractions=self.fractions,
            temperature=self.temperature,
            max_new_tokens=self.max_new_tokens,
            grader=self.grader,
            failed_grading=self.failed_grading,
        )
        if step.logprobs is not None:
            G = step.group_size
            step.logprobs = [
                None if step.prompts[k // G] is not before[k // G] else lp for k, lp in enumerate(step.logprobs)
            ]
        prefix_sum = stats["bread_prefix"] * stats["bread_rescued"] if stats["bread_rescued"] else 0.0
        failed, rescued, prefix_sum = par.sum([stats["bread_failed_groups"], stats["bread_rescued"], prefix_sum])
        return {
            "bread_failed_groups": int(failed),
            "bread_rescued": int(rescued),
            "bread_prefix": prefix_sum / rescued if rescued else math.nan,
        }

    def record(self, plan: StepPlan, extra: dict) -> dict:
        return {key: extra[key] for key in ("bread_failed_groups", "bread_rescued", "bread_prefix") if key in extra}


def teacher_prefix_rollouts(
    generator,
    tokenizer,
    prompts: list[list[int]],
    rollouts: list[list[int]],
    rewards: list[float | None],
    teacher: list[list[int]],
    answers: list[str],
    *,
    group_size: int,
    fractions: tuple[float, ...],
    temperature: float,
    max_new_tokens: int,
    grader: str,
    failed_grading: str = "ungraded",
) -> tuple[list[list[int]], list[list[int]], list[float | None], dict]:
    """BREAD's branched rollouts (arXiv 2506.17211) for the groups whose ``G`` rollouts all failed.

    For each such group, the fractions are tried shortest first: the first ``⌊f·|trace|⌋`` tokens
    of the teacher trace are appended to the prompt and ``G`` continuations are sampled (the
    continuation's budget is what the prefix leaves of ``max_new_tokens``) and graded as
    prefix + continuation (a grader error or timeout is ungraded, or wrong with ``failed_grading:
    wrong``, as every rollout). The first fraction with a correct continuation replaces the group's
    prompt, rollouts and rewards; a group that no fraction rescues keeps its own failed rollouts.
    The prefix becomes part of the prompt, so the loss sees the student's tokens only.
    Returns new ``(prompts, rollouts, rewards)`` and ``{"bread_failed_groups", "bread_rescued", "bread_prefix"}``.
    """
    G = group_size
    prompts, rollouts, rewards = list(prompts), list(rollouts), list(rewards)
    pending = [i for i in range(len(prompts)) if _all_failed(rewards, i, G)]
    failed, rescued_fractions = len(pending), []
    for fraction in fractions:
        if not pending:
            break
        body = {i: teacher[i][:-1] if teacher[i][-1:] == [tokenizer.eos_token_id] else teacher[i] for i in pending}
        prefixes = {i: body[i][: max(1, int(fraction * len(body[i])))] for i in pending}
        budget = max_new_tokens - min(len(prefix) for prefix in prefixes.values())
        if budget < 1:
            break
        samples = generator.generate(
            [prompts[i] + prefixes[i] for i in pending], G, temperature=temperature, max_new_tokens=budget
        )
        still = []
        for slot, i in enumerate(pending):
            continuations = [row[: max_new_tokens - len(prefixes[i])] for row in samples[slot * G : (slot + 1) * G]]
            texts = tokenizer.batch_decode([prefixes[i] + c for c in continuations], skip_special_tokens=True)
            checked = [grade_checked(text, answers[i], grader) for text in texts]
            scores = [0.0 if failed and failed_grading == "wrong" else score for score, failed in checked]
            if any(score is not None and score > 0 for score in scores):
                prompts[i] = prompts[i] + prefixes[i]
                rollouts[i * G : (i + 1) * G] = continuations
                rewards[i * G : (i + 1) * G] = scores
                rescued_fractions.append(fraction)
            else:
                still.append(i)
        pending = still
    stats = {
        "bread_failed_groups": failed,
        "bread_rescued": len(rescued_fractions),
        "bread_prefix": sum(rescued_fractions) / len(rescued_fractions) if rescued_fractions else math.nan,
    }
    return prompts, rollouts, rewards, stats


class AnswerPosterior(Plain):
    """RAVR: the step's groups were sampled after the answer-conditioned prompt (the posterior ``q``,
    :class:`redrl.conditioning.AnswerConditioning`). After grading, ``G'`` question-only samples per
    prompt are drawn from the current policy (the prior), and every path's utility
    ``s(z) = π_θ(y* | x, z)`` is measured under the question-only prompt with one no-grad forward
    (:func:`path_utilities`). A posterior path's reward becomes ``s(z) − b(x)``, ``b`` the prior
    samples' mean utility (:func:`redrl.objectives.ravr_rewards`), its grade kept as ``correct``; and
    each path joins its group once more as a transfer row under the question alone, weighted by
    ``G · s(z_i) / Σ_j s(z_j)`` (:func:`redrl.objectives.utility_weights`). Counters, summed over
    processes: the mean utilities, the prior samples' accuracy, and the leak rate (posterior paths
    graded right with no operation line ``a op b = c``: the answer copied, not reasoned)."""

    needs_current_policy = True

    def __init__(
        self,
        method: Method,
        generator,
        tokenizer,
        scorer,
        prompts: list[list[int]],
        *,
        prior_size: int,
        answer_prefix: str,
        temperature: float,
        max_new_tokens: int,
        grader: str,
        micro_batch_size: int = 64,
        mixed_precision: str = "no",
    ):
        super().__init__(method)
        self.generator, self.tokenizer, self.scorer, self.prompts = generator, tokenizer, scorer, prompts
        self.prior_size, self.answer_prefix = prior_size, answer_prefix
        self.temperature, self.max_new_tokens, self.grader = temperature, max_new_tokens, grader
        self.micro_batch_size, self.mixed_precision = micro_batch_size, mixed_precision

    def after_grading(self, step: StepRollouts, plan: StepPlan, par: Parallel) -> dict:
        from redrl.data.arithmetic import operation_lines
        from redrl.objectives import ravr_rewards, utility_weights

        G, prior_size = step.group_size, self.prior_size
        prior_prompts = [self.prompts[i] for i in step.chosen]
        prior = self.generator.generate(
            prior_prompts, prior_size, temperature=self.temperature, max_new_tokens=self.max_new_tokens
        )
        answers = [self.tokenizer(a, add_special_tokens=False).input_ids for a in step.answers]
        kwargs = {
            "tokenizer": self.tokenizer,
            "answer_prefix": self.answer_prefix,
            "micro_batch_size": self.micro_batch_size,
            "mixed_precision": self.mixed_precision,
        }
        s_post = path_utilities(self.scorer, prior_prompts, step.rollouts, answers, G, **kwargs)
        s_prior = path_utilities(self.scorer, prior_prompts, prior, answers, prior_size, **kwargs)
        rewards = ravr_rewards(s_post, s_prior, G, prior_size)
        weights = G * utility_weights(s_post, G)
        step.correct, step.rewards = step.rewards, rewards.tolist()
        step.companions = [
            [(prior_prompts[g], step.rollouts[g * G + j], float(weights[g * G + j])) for j in range(G)]
            for g in range(len(step.chosen))
        ]
        texts = self.tokenizer.batch_decode(step.rollouts, skip_special_tokens=True) if step.rollouts else []
        leaks = sum(1 for text, c in zip(texts, step.correct) if c and operation_lines(text)[0] == 0)
        prior_texts = self.tokenizer.batch_decode(prior, skip_special_tokens=True) if prior else []
        prior_right = sum(
            (grade_checked(text, step.answers[k // prior_size], self.grader)[0] or 0.0)
            for k, text in enumerate(prior_texts)
        )
        totals = par.sum([float(s_post.sum()), len(s_post), float(s_prior.sum()), len(s_prior), leaks, prior_right])
        post_sum, post_n, prior_sum, prior_n, leaks, prior_right = totals
        return {
            "ravr_utility_posterior": post_sum / post_n if post_n else math.nan,
            "ravr_utility_prior": prior_sum / prior_n if prior_n else math.nan,
            "ravr_prior_accuracy": prior_right / prior_n if prior_n else math.nan,
            "ravr_leak_rate": leaks / post_n if post_n else math.nan,
        }

    def record(self, plan: StepPlan, extra: dict) -> dict:
        return {key: value for key, value in extra.items() if key.startswith("ravr_")}


def path_utilities(
    scorer,
    prompts: list[list[int]],
    paths: list[list[int]],
    answers: list[list[int]],
    group_size: int,
    *,
    tokenizer,
    answer_prefix: str,
    micro_batch_size: int = 64,
    mixed_precision: str = "no",
) -> torch.Tensor:
    """RAVR's utility of each path, ``s(z) = π_θ(y* | x, z)`` (length-normalised,
    :func:`redrl.objectives.answer_utility`), measured with one no-grad forward of ``prompt + z + y*``.

    ``paths`` is prompt-major (``group_size`` per prompt in ``prompts``, whose answer tokens are
    ``answers``). A path is cut after its last ``\\boxed{`` (what it wrote of an answer after that is
    replaced by the reference's); one without gets ``answer_prefix`` appended (the paper's answer
    prefix). Returns ``[len(paths)]``."""
    from redrl.batch import collate
    from redrl.modeling import autocast
    from redrl.objectives import answer_utility

    prefix = tokenizer(answer_prefix, add_special_tokens=False).input_ids
    rows_prompt, rows_response, spans = [], [], []
    for k, path in enumerate(paths):
        g = k // group_size
        z = _before_answer(path, tokenizer, prefix)
        rows_prompt.append(prompts[g])
        rows_response.append(z + answers[g])
        spans.append((len(prompts[g]) + len(z), len(answers[g])))
    if not paths:
        return torch.zeros(0)
    device = next(scorer.parameters()).device
    utilities = []
    for start in range(0, len(paths), micro_batch_size):
        chunk = slice(start, start + micro_batch_size)
        input_ids, attention_mask, _ = collate(rows_prompt[chunk], rows_response[chunk], tokenizer.pad_token_id)
        answer_mask = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1, dtype=torch.bool)
        for row, (begin, length) in enumerate(spans[chunk]):
            answer_mask[row, begin - 1 : begin - 1 + length] = True  # target grid: t scores token t + 1
        with torch.no_grad(), autocast(device, mixed_precision):
            out = scorer(input_ids.to(device), attention_mask.to(device), answer_mask.to(device))
        utilities.append(answer_utility(out.logp.float().cpu(), answer_mask))
    return torch.cat(utilities)


def _before_answer(path: list[int], tokenizer, prefix: list[int]) -> list[int]:
    """The path's tokens up to and including its last ``\\boxed{``; else the path (end-of-sequence
    token dropped) followed by ``prefix``."""
    eos = tokenizer.eos_token_id
    body = path[:-1] if path and path[-1] == eos else list(path)
    text = tokenizer.decode(body, skip_special_tokens=True)
    found = text.rfind("\\boxed{")
    if found < 0:
        return body + prefix
    end = found + len("\\boxed{")
    low, high = 1, len(body)  # the fewest tokens whose text covers the "\boxed{"
    while low < high:
        mid = (low + high) // 2
        if len(tokenizer.decode(body[:mid], skip_special_tokens=True)) >= end:
            high = mid
        else:
            low = mid + 1
    kept = body[:low]
    written = tokenizer.decode(kept, skip_special_tokens=True)
    if written == text[:end]:
        return kept
    # the last token runs past the brace (a merged "{1"): end on the brace instead
    before = tokenizer.decode(body[: low - 1], skip_special_tokens=True)
    return body[: low - 1] + tokenizer(text[len(before) : end], add_special_tokens=False).input_ids


def strategy_class(method: Method) -> type:
    """The strategy class of ``method.strategy`` (its declared needs can be asked before it is built)."""
    return STRATEGIES.get(method.strategy, Plain)


def check_strategy(method: Method, baselines, par: Parallel) -> None:
    """Refuse, before any model is loaded, a strategy this launch cannot run."""
    if method.strategy == "sft_buffer" and baselines.relift_buffer % par.world:
        raise ValueError(
            f"baselines.relift_buffer ({baselines.relift_buffer}) must be a multiple of the {par.world} processes"
        )
    if method.strategy == "teacher_prefix" and par.sharded:
        raise ValueError(
            "bread re-samples only where groups failed, but gathering sharded weights for generation needs "
            "every process; run it with DDP (configs/accelerate/ddp.yaml)"
        )
    if method.strategy == "answer_posterior" and par.sharded:
        raise ValueError(
            f"{method.name} samples and scores its prior rows beside the step, which sharded weights do not allow; "
            "run it with DDP (configs/accelerate/ddp.yaml)"
        )


def build_strategy(
    method: Method,
    baselines,
    rollout,
    *,
    generator,
    tokenizer,
    grader: str,
    failed_grading: str = "ungraded",
    scorer=None,
    prompts: list[list[int]] | None = None,
    ravr=None,
    train=None,
) -> Strategy:
    """The strategy of ``method.strategy``, from the ``baselines``, ``rollout``, ``ravr`` and ``train``
    config sections; ``scorer`` and ``prompts`` (every record's own prompt) for a strategy that
    scores paths under the question alone."""
    if method.strategy == "sft_buffer":
        return ReliftBuffer(method, baselines.relift_buffer, baselines.relift_entropy_coef)
    if method.strategy == "answer_posterior":
        return AnswerPosterior(
            method,
            generator,
            tokenizer,
            scorer,
            prompts,
            prior_size=ravr.prior_size,
            answer_prefix=ravr.answer_prefix,
            temperature=rollout.temperature,
            max_new_tokens=rollout.max_new_tokens,
            grader=grader,
            micro_batch_size=train.micro_batch_size,
            mixed_precision=train.mixed_precision,
        )
    if method.strategy == "teacher_prefix":
        return TeacherPrefix(
            method,
            generator,
            tokenizer,
            fractions=baselines.bread_fractions,
            temperature=rollout.temperature,
            max_new_tokens=rollout.max_new_tokens,
            grader=grader,
            failed_grading=failed_grading,
        )
    return Plain(method)


#: The strategy of each ``Method.strategy`` other than ``"plain"``.
STRATEGIES: dict[str, type] = {
    "sft_buffer": ReliftBuffer,
    "teacher_prefix": TeacherPrefix,
    "answer_posterior": AnswerPosterior,
}
