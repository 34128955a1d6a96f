"""Token rows and the typed batch the loss is computed on.

A row is a prompt followed by one response (a rollout, or the teacher's trace), right-padded to
the batch's longest row. Per-token tensors of the loss live on the *target* grid: position ``t``
of ``logp [N, S-1]`` is the log-probability of ``input_ids[:, t + 1]``; :meth:`Batch.loss_mask`
gives the matching response mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import torch

from redrl.objectives import ADVANTAGE_ESTIMATORS, AdvantageInputs, group_accuracy

if TYPE_CHECKING:
    from redrl.methods import Method

__all__ = ["Batch", "assemble_batch", "collate"]

#: Field metadata of :class:`Batch`: which grid a per-token field lives on (``"sequence"``: ``[N, S]``
#: like ``input_ids``; ``"target"``: ``[N, S-1]``, position ``t`` scoring ``input_ids[:, t + 1]``),
#: and whether the scorer's forward takes it (``scorer_input``: passed by name).
SEQUENCE, TARGET = {"grid": "sequence"}, {"grid": "target"}


def _per_token(grid: dict, *, scorer_input: bool = False):
    return field(default=None, metadata={**grid, "scorer_input": scorer_input})


def collate(
    prompts: list[list[int]], responses: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask, response_mask)``, each ``[N, S]``."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(prompts), width, dtype=torch.long)
    response_mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        n = len(prompt) + len(response)
        input_ids[i, :n] = torch.tensor(prompt + response, dtype=torch.long)
        attention_mask[i, :n] = 1
        response_mask[i, len(prompt) : n] = True
    return input_ids, attention_mask, response_mask


@dataclass
class Batch:
    """One training step's rows; ``N = groups × rows per group``, groups contiguous.

    Shapes: ``input_ids``, ``attention_mask``, ``response_mask`` ``[N, S]``; ``rewards`` (NaN =
    ungradable), ``advantages``, ``group_accuracy`` ``[N]`` float; ``is_offline`` ``[N]`` bool;
    on the target grid ``[N, S-1]``: ``sampler_logp`` the log-probabilities the sampler reported for
    the rollout tokens (NaN elsewhere; ``None`` when it reported none), ``token_advantages`` where
    the method's estimator gives one advantage per token (``advantages`` then holds each row's
    mean over its response); ``row_weights`` ``[N]`` where rows carry a weight of their own (a
    companion row's, see :func:`assemble_batch`; 1 elsewhere); from a method's critics
    (:mod:`redrl.critics`), ``advantage_mask`` and ``entropy_mask`` (bool, true where the term is
    kept) and ``returns`` (the critics' regression targets). A new per-token field declares its
    grid (:data:`TARGET`), and slicing, moving and the scorer's inputs follow.
    """

    input_ids: torch.Tensor = field(metadata=SEQUENCE)
    attention_mask: torch.Tensor = field(metadata=SEQUENCE)
    response_mask: torch.Tensor = field(metadata=SEQUENCE)
    rewards: torch.Tensor
    advantages: torch.Tensor
    is_offline: torch.Tensor
    group_accuracy: torch.Tensor
    sampler_logp: torch.Tensor | None = _per_token(TARGET)
    token_advantages: torch.Tensor | None = _per_token(TARGET)
    row_weights: torch.Tensor | None = None
    advantage_mask: torch.Tensor | None = _per_token(TARGET)
    entropy_mask: torch.Tensor | None = _per_token(TARGET)
    returns: torch.Tensor | None = _per_token(TARGET)
    teacher_ids: torch.Tensor | None = _per_token(TARGET, scorer_input=True)  # [N, S-1, k]: cached top-k entries
    teacher_logp: torch.Tensor | None = _per_token(TARGET, scorer_input=True)  # [N, S-1, k+1]: log-probs, tail mass

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def loss_mask(self) -> torch.Tensor:
        """``[N, S-1]`` response mask on the target grid."""
        return self.response_mask[:, 1:]

    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def rows(self, index) -> Batch:
        """The rows ``index`` (a slice or an index tensor), trimmed to their longest row."""
        parts = {f.name: getattr(self, f.name) for f in fields(self)}
        parts = {name: None if value is None else value[index] for name, value in parts.items()}
        width = max(int(parts["attention_mask"].sum(-1).max()) if parts["attention_mask"].numel() else 0, 2)
        for f in fields(self):
            if parts[f.name] is not None and "grid" in f.metadata:
                parts[f.name] = parts[f.name][:, : width if f.metadata["grid"] == "sequence" else width - 1]
        return Batch(**parts)

    def scorer_inputs(self) -> dict[str, torch.Tensor]:
        """The per-row inputs the scorer's forward takes besides the tokens (e.g. a cached teacher's)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.metadata.get("scorer_input") and getattr(self, f.name) is not None
        }

    def to(self, device) -> Batch:
        return Batch(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                for f in fields(self)
            }
        )


def assemble_batch(
    prompts: list[list[int]],
    rollouts: list[list[int]],
    rollout_rewards: list[float | None],
    teacher: list[list[int]],
    teacher_rewards: list[float | None],
    *,
    group_size: int,
    method: Method,
    pad_id: int,
    advantage_scale: str = "std",
    advantage_eps: float = 1e-6,
    accuracy_includes_offline: bool = False,
    rollout_logprobs: list[list[float] | None] | None = None,
    companions: list[list[tuple[list[int], list[int], float]]] | None = None,
    advantage: str | None = None,
) -> Batch:
    """Groups of ``G`` rollouts (if the method samples) + the teacher row (if it uses one), per prompt.

    ``companions`` (one list per prompt, each as long) adds rows to each group after its rollouts
    in the teacher row's place, as offline rows under their own prompt: ``(prompt, response,
    weight)``, the weight in ``Batch.row_weights`` (RAVR's transfer rows: a posterior path scored
    under the question alone, weighted by its utility); they are ungraded, so they take no part in
    the advantages. ``advantage`` names the estimator (default ``Method.advantage``).

    ``rollouts`` is prompt-major (rows ``i*G .. i*G+G-1`` answer prompt ``i``). Advantages come from
    the method's estimator (``Method.advantage``; group-relative over every row of the group for
    ``"group"``); the group accuracy ``r̄`` over its rollouts.
    ``rollout_logprobs`` (one per rollout token, from the sampler) become ``Batch.sampler_logp``.
    """
    g = group_size if method.rollouts else 0
    rows_prompt, rows_response, rewards, offline = [], [], [], []
    weights = []
    for i, prompt in enumerate(prompts):
        members = [(prompt, rollouts[i * g + j], rollout_rewards[i * g + j], False, 1.0) for j in range(g)]
        if companions is not None:
            members += [(row_prompt, response, None, True, weight) for row_prompt, response, weight in companions[i]]
        elif method.offline:
            members.append((prompt, teacher[i], teacher_rewards[i], True, 1.0))
        for row_prompt, response, reward, is_offline, weight in members:
            rows_prompt.append(row_prompt)
            rows_response.append(response)
            rewards.append(math.nan if reward is None else float(reward))
            offline.append(is_offline)
            weights.append(weight)
    if companions is not None:
        if len({len(rows) for rows in companions}) > 1:
            raise ValueError("every group needs as many companion rows")
        rows_per_group = g + (len(companions[0]) if companions else 0)
    else:
        rows_per_group = g + int(method.offline)
    input_ids, attention_mask, response_mask = collate(rows_prompt, rows_response, pad_id)
    sampler_logp = None
    if rollout_logprobs is not None and g:
        # target grid: position t scores input_ids[t + 1], so a response starting at column p is at p - 1
        sampler_logp = torch.full((len(rows_prompt), input_ids.shape[1] - 1), math.nan)
        row = 0
        for i, prompt in enumerate(prompts):
            for j in range(g):
                values = rollout_logprobs[i * g + j]
                if values is None:  # the sampler reported none for this rollout: recomputed
                    continue
                if len(values) != len(rollouts[i * g + j]):
                    raise ValueError(
                        f"rollout {i * g + j}: {len(values)} log-probs for {len(rollouts[i * g + j])} tokens"
                    )
                sampler_logp[row + j, len(prompt) - 1 : len(prompt) - 1 + len(values)] = torch.tensor(values)
            row += rows_per_group
    rewards_t = torch.tensor(rewards, dtype=torch.float32)
    is_offline = torch.tensor(offline, dtype=torch.bool)
    estimated = ADVANTAGE_ESTIMATORS[advantage or method.advantage].fn(
        AdvantageInputs(rewards_t, response_mask[:, 1:], rows_per_group, scale=advantage_scale, eps=advantage_eps)
    )
    token_advantages = None
    if estimated.dim() == 2:  # one per token: each row's scalar is its mean over the response
        token_advantages, mask = estimated, response_mask[:, 1:]
        estimated = (estimated * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        rewards=rewards_t,
        advantages=estimated,
        is_offline=is_offline,
        group_accuracy=group_accuracy(rewards_t, is_offline, rows_per_group, include_offline=accuracy_includes_offline),
        sampler_logp=sampler_logp,
        token_advantages=token_advantages,
        row_weights=torch.tensor(weights, dtype=torch.float32) if companions is not None else None,
    )
