"""What a method's prompts are conditioned on: the prompt it samples from and the prompt its loss
scores the samples under, per training record.

Most methods sample and score under the record's own prompt (:class:`Unconditioned`). A method
that samples with something the question-only policy lacks (the reference answer, a thinking
budget) gives a ``sample_prompt`` that adds it; its ``train_prompt`` says what the loss conditions
on (the same prompt, or the question alone when the conditioned samples are to teach the
question-only policy). Where the two differ, the sampler's log-probabilities belong to another
prompt, so the trainer recomputes them (``needs_recomputed_logp``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["CONDITIONINGS", "Conditioning", "Unconditioned", "build_conditioning"]


class Conditioning(Protocol):
    #: the sampled tokens are scored under another prompt than they were sampled from
    needs_recomputed_logp: bool

    def sample_prompt(self, record: dict, prompt: list[int]) -> list[int]:
        """The token ids the rollouts of ``record`` are sampled after (``prompt``: its own)."""

    def train_prompt(self, record: dict, prompt: list[int]) -> list[int]:
        """The token ids the loss scores ``record``'s rows under."""


class Unconditioned:
    """Sample and score under the record's own prompt."""

    needs_recomputed_logp = False

    def sample_prompt(self, record: dict, prompt: list[int]) -> list[int]:
        return prompt

    def train_prompt(self, record: dict, prompt: list[int]) -> list[int]:
        return prompt


#: Every conditioning by name (``Method.conditioning``): a builder from the run's tokenizer and config.
CONDITIONINGS: dict[str, Callable[[object, object], Conditioning]] = {"none": lambda tokenizer, cfg: Unconditioned()}


def build_conditioning(name: str, tokenizer, cfg) -> Conditioning:
    if name not in CONDITIONINGS:
        raise ValueError(f"unknown prompt conditioning {name!r}; known: {', '.join(CONDITIONINGS)}")
    return CONDITIONINGS[name](tokenizer, cfg)
