"""Token rows and the typed batch the loss is computed on.

A row is a prompt followed by one response (a rollout, or the teacher's trace), right-padded to
the batch's longest row. Per-token tensors of the loss live on the *target* grid: position ``t``
of ``logp [N, S-1]`` is the log-probability of ``input_ids[:, t + 1]``; :meth:`Batch.loss_mask`
gives the matching response mask.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

__all__ = ["Batch", "collate"]


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
    ``group_id`` ``[N]`` long; ``sampler_logp`` ``[N, S-1]`` (target grid) the log-probabilities
    the sampler reported for the rollout tokens, NaN elsewhere, or ``None`` when it reported none.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    is_offline: torch.Tensor
    group_id: torch.Tensor
    group_accuracy: torch.Tensor
    sampler_logp: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def loss_mask(self) -> torch.Tensor:
        """``[N, S-1]`` response mask on the target grid."""
        return self.response_mask[:, 1:]

    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def rows(self, index) -> "Batch":
        """The rows ``index`` (a slice or an index tensor), trimmed to their longest row."""
        parts = {f.name: getattr(self, f.name) for f in fields(self)}
        parts = {name: None if value is None else value[index] for name, value in parts.items()}
        width = max(int(parts["attention_mask"].sum(-1).max()) if parts["attention_mask"].numel() else 0, 2)
        for name in ("input_ids", "attention_mask", "response_mask"):
            parts[name] = parts[name][:, :width]
        if parts["sampler_logp"] is not None:
            parts["sampler_logp"] = parts["sampler_logp"][:, : width - 1]
        return Batch(**parts)

    def to(self, device) -> "Batch":
        return Batch(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device) for f in fields(self)})
