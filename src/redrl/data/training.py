"""The training set as the loop consumes it: tokenised prompts and teacher traces, and the seeded
order in which prompts are drawn."""

from __future__ import annotations

import dataclasses
import math
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redrl.data.offline import load_offline
from redrl.modeling import encode_prompt, encode_response
from redrl.rewards import grade, unreadable_answers

if TYPE_CHECKING:
    from redrl.config import Config

__all__ = ["RECORD_VIEWS", "PromptSampler", "TrainingData", "prepare_data", "total_steps"]


class PromptSampler:
    """Prompt indices in epochs, each a fresh seeded permutation; its state is three numbers."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.position = size, seed, 0

    def next(self, count: int) -> list[int]:
        out = []
        for _ in range(count):
            epoch, offset = divmod(self.position, self.size)
            order = list(range(self.size))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            out.append(order[offset])
            self.position += 1
        return out

    def state_dict(self) -> dict:
        return {"size": self.size, "seed": self.seed, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if (state["size"], state["seed"]) != (self.size, self.seed):
            raise ValueError(
                f"the checkpoint's prompt order ({state['size']} prompts, seed {state['seed']}) does not match "
                f"this run's ({self.size} prompts, seed {self.seed}): different data or train.seed"
            )
        self.position = int(state["position"])


@dataclass
class TrainingData:
    """The training set, tokenised: per record its prompt and teacher trace; the trace's reward is
    graded when the record is first drawn (grading 46k traces up front would take minutes)."""

    records: list[dict]
    prompts: list[list[int]]
    teacher: list[list[int]]
    grader: str
    _rewards: dict[int, float | None] = dataclasses.field(default_factory=dict, repr=False)

    def teacher_reward(self, index: int) -> float | None:
        """The grade of record ``index``'s whole teacher trace (before any truncation)."""
        if index not in self._rewards:
            record = self.records[index]
            self._rewards[index] = grade(record["distill"], record["answer"], self.grader)
        return self._rewards[index]


def _budget_view(records: list[dict], tokenizer, cfg: Config) -> list[dict]:
    from redrl.data.budget import budget_records, read_compressed

    prefix = cfg.data.response_prefix

    def length(trace: str) -> int:  # response tokens, the end-of-sequence token not counted
        return len(encode_response(tokenizer, trace, prefix)) - 1

    compressed = read_compressed(cfg.bard.traces) if cfg.bard.traces else None
    return budget_records(records, length, cfg.bard.buckets, compressed=compressed)


#: What a method reads of the training records (``Method.records``): as given, or one record per
#: problem and thinking budget with the trace compressed to it (:mod:`redrl.data.budget`).
RECORD_VIEWS: dict[str, Callable[[list[dict], object, Config], list[dict]]] = {
    "as_given": lambda records, tokenizer, cfg: records,
    "budgets": _budget_view,
}


def prepare_data(cfg: Config, tokenizer, path: str, view: str = "as_given") -> TrainingData:
    """Load the offline data, chat-format the prompts and tokenise the teacher traces.

    Prompts longer than ``data.max_prompt_tokens`` are left out; teacher traces longer than
    ``rollout.max_new_tokens`` are cut to it, as the authors' code does (their reward stays the
    grade of the whole trace). Both are counted in a warning."""
    records = load_offline(path)
    if cfg.data.check_answers:
        records = _gradable(records, cfg.data.grader, path)
    records = RECORD_VIEWS[view](records, tokenizer, cfg)
    fmt = cfg.data.prompt_kwargs()
    prompts = [encode_prompt(tokenizer, r["problem"], cfg.data.system_for(r), **fmt) for r in records]
    limit = cfg.data.max_prompt_tokens
    if limit is not None:
        keep = [i for i, prompt in enumerate(prompts) if len(prompt) <= limit]
        if not keep:
            raise ValueError(f"every prompt of {path} is longer than data.max_prompt_tokens={limit}")
        if len(keep) < len(records):
            warnings.warn(
                f"{len(records) - len(keep)} of {len(records)} prompts are longer than data.max_prompt_tokens={limit} "
                "tokens and are left out",
                stacklevel=2,
            )
        records, prompts = [records[i] for i in keep], [prompts[i] for i in keep]
    teacher = [encode_response(tokenizer, r["distill"], cfg.data.response_prefix) for r in records]
    budget = cfg.rollout.max_new_tokens
    truncated = sum(len(trace) > budget for trace in teacher)
    if truncated:
        warnings.warn(
            f"{truncated} of {len(records)} teacher traces exceed rollout.max_new_tokens={budget} and are truncated to it",
            stacklevel=2,
        )
    return TrainingData(
        records=records,
        prompts=prompts,
        teacher=[trace[:budget] for trace in teacher],
        grader=cfg.data.grader,
    )


def _gradable(records: list[dict], grader: str, path: str) -> list[dict]:
    """The records whose reference answer ``grader`` can grade; the others are reported and left out
    (graded, every reward of theirs would be ``None``, or worse, a match for a meaningless answer)."""
    bad = unreadable_answers([r["answer"] for r in records], grader, progress=True)
    if not bad:
        return records
    numbers = [n for n, r in enumerate(records, 1) if r["answer"] in bad]
    first = records[numbers[0] - 1]["answer"]
    shown = first if len(first) <= 40 else first[:37] + "..."
    message = (
        f"{path}: {len(numbers)} of {len(records)} problems have a reference answer the {grader} grader cannot "
        f"grade (problem {numbers[0]}: {shown!r}, {bad[first]})"
    )
    if len(numbers) == len(records):
        raise ValueError(f"{message}; is data.grader right?")
    warnings.warn(f"{message}; they are left out (data.check_answers=false keeps them)", stacklevel=3)
    return [r for r in records if r["answer"] not in bad]


def total_steps(cfg: Config, prompts: int) -> int:
    """``train.steps``, or ``ceil(train.epochs * prompts / prompts_per_step)`` when epochs are set."""
    if cfg.train.epochs is None:
        return cfg.train.steps
    return max(1, math.ceil(cfg.train.epochs * prompts / cfg.train.prompts_per_step))
