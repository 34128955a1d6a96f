"""Models beside the policy: frozen (the distillation teacher) or trained (critics).

A method names its auxiliaries (``Method.auxiliaries``); :func:`redrl.run_setup.setup` builds each
once from an :class:`AuxiliaryContext`, and the loop calls the same four methods on every one and
never asks which it is:

1. ``scorer(module)`` at set-up: place the auxiliary inside the policy's scorer, so one forward
   measures both (the teacher's KLs are computed chunk by chunk beside the student's logits); an
   auxiliary that needs nothing there returns ``module``;
2. ``attach(batch, chosen)`` each step before the loss: per-row inputs it adds to the batch (a
   cached teacher's log-probs; a critic's per-token advantages, ``Batch.token_advantages``);
3. ``update(batch, stats)`` after the policy's step: its own optimizer steps, returning metrics
   for the step's record;
4. ``state_dict()`` / ``load_state_dict()``: everything it needs to resume exactly (its weights,
   optimizer and schedule), saved with every checkpoint (``auxiliary-NAME.pt``).

An auxiliary may also say ``holds_policy`` (true while critics warm up): that step measures the
batch and trains the auxiliary, and the policy does not move.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from redrl.batch import Batch
from redrl.critics import Critics
from redrl.teacher import DistillationTeacher

__all__ = ["AUXILIARIES", "Auxiliary", "AuxiliaryContext", "build_auxiliaries"]


@dataclass
class AuxiliaryContext:
    """What an auxiliary's builder may read: the run's config, the policy model and tokenizer, the
    training data (which an auxiliary may rewrite, e.g. with the teacher's own samples), the
    processes, and whether to show progress."""

    cfg: object
    model: torch.nn.Module
    tokenizer: object
    data: object
    par: object
    progress: bool = True


class Auxiliary(Protocol):
    name: str

    def scorer(self, module: torch.nn.Module) -> torch.nn.Module: ...

    def attach(self, batch: Batch, chosen: list[int]) -> Batch: ...

    def update(self, batch: Batch, stats: dict) -> dict: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


#: Every auxiliary by name: a builder from the run's context. Adding one: a class with the five
#: members above, an entry here, and its name in the method's ``auxiliaries``.
AUXILIARIES: dict[str, Callable[[AuxiliaryContext], Auxiliary]] = {"teacher": DistillationTeacher, "critics": Critics}


def build_auxiliaries(names: tuple[str, ...], context: AuxiliaryContext) -> list[Auxiliary]:
    unknown = [name for name in names if name not in AUXILIARIES]
    if unknown:
        raise ValueError(f"unknown auxiliary model {unknown[0]!r}; known: {', '.join(AUXILIARIES)}")
    return [AUXILIARIES[name](context) for name in names]
