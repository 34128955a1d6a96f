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

__all__ = [
    "CONDITIONINGS",
    "AnswerConditioning",
    "BudgetConditioning",
    "Conditioning",
    "Unconditioned",
    "append_to_system",
    "build_conditioning",
    "check_writable",
]


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


class BudgetConditioning:
    """BARD (arXiv 2511.01470): sample and score under the record's prompt with its thinking budget
    stated in the system message (``bard.budget_template``, after the record's own system message),
    rendered by the tokenizer's chat template. Refuses, when built, a template whose budgets the
    tokenizer cannot write (the embedded vocabulary is closed: numbers yes, most words no)."""

    needs_recomputed_logp = False

    def __init__(self, tokenizer, cfg):
        from redrl.data.budget import budget_text

        self.tokenizer, self.cfg, self._prompts = tokenizer, cfg, {}
        check_writable(
            tokenizer,
            budget_text(max(cfg.bard.buckets), cfg.bard.budget_template),
            "bard.budget_template",
            BUDGET_ADVICE,
        )

    def sample_prompt(self, record: dict, prompt: list[int]) -> list[int]:
        from redrl.data.budget import with_budget
        from redrl.modeling import encode_prompt

        if "budget" not in record:
            raise ValueError("a budget-conditioned method needs records with a budget (Method.records='budgets')")
        key = (record["problem"], record.get("system"), record["budget"])
        if key not in self._prompts:
            data = self.cfg.data
            system = with_budget(data.system_for(record), record["budget"], self.cfg.bard.budget_template)
            self._prompts[key] = encode_prompt(self.tokenizer, record["problem"], system, **data.prompt_kwargs())
        return self._prompts[key]

    train_prompt = sample_prompt


class AnswerConditioning:
    """RAVR (arXiv 2510.25206): sample, and train the sampled rows, under the record's prompt with its
    reference answer stated in the system message (``ravr.hint_template``, after the record's own
    system message): the answer-conditioned posterior. The question-only prior is the record's own
    prompt, which the method's strategy scores the same paths under. Refuses, when built, a hint
    the tokenizer cannot write for some record."""

    needs_recomputed_logp = False

    def __init__(self, tokenizer, cfg):
        self.tokenizer, self.cfg, self._prompts = tokenizer, cfg, {}

    def hint(self, record: dict) -> str:
        return self.cfg.ravr.hint_template.replace("{answer}", str(record["answer"]))

    def sample_prompt(self, record: dict, prompt: list[int]) -> list[int]:
        from redrl.modeling import encode_prompt

        key = (record["problem"], record.get("system"), record["answer"])
        if key not in self._prompts:
            stated = self.hint(record)
            check_writable(self.tokenizer, stated, "ravr.hint_template", "state it in words the tokenizer has")
            data = self.cfg.data
            system = append_to_system(data.system_for(record), stated)
            self._prompts[key] = encode_prompt(self.tokenizer, record["problem"], system, **data.prompt_kwargs())
        return self._prompts[key]

    train_prompt = sample_prompt


#: What to say when a budget cannot be written.
BUDGET_ADVICE = "state the budget in words it has (the embedded vocabulary: the number alone, '{budget}')"


def append_to_system(system: str | None, text: str) -> str:
    """A system message that also says ``text`` (after the record's or config's own, if any)."""
    return f"{system}\n{text}" if system else text


def check_writable(tokenizer, text: str, setting: str, advice: str) -> None:
    """Refuse, in one line, text a prompt would state that the tokenizer can only write with unknown tokens."""
    unknown = tokenizer.unk_token_id
    if unknown is not None and unknown in tokenizer(text, add_special_tokens=False).input_ids:
        raise ValueError(
            f"{setting} renders {text!r}, which this tokenizer cannot write (it has no tokens for part of it); {advice}"
        )


#: Every conditioning by name (``Method.conditioning``): a builder from the run's tokenizer and config.
CONDITIONINGS: dict[str, Callable[[object, object], Conditioning]] = {
    "none": lambda tokenizer, cfg: Unconditioned(),
    "budget": BudgetConditioning,
    "answer": AnswerConditioning,
}


def build_conditioning(name: str, tokenizer, cfg) -> Conditioning:
    if name not in CONDITIONINGS:
        raise ValueError(f"unknown prompt conditioning {name!r}; known: {', '.join(CONDITIONINGS)}")
    return CONDITIONINGS[name](tokenizer, cfg)
