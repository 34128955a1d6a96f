"""Sampling engines behind one interface: prompts in, response token ids out.

``HFGenerator`` wraps ``model.generate`` (batched, left-padded prompts, KV cache, temperature,
stop at end of sequence). Faster engines (vLLM, a lean KV-cache sampler) come behind the same
``generate(prompts, n, ...)`` signature.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass

import torch

from redrl.modeling import autocast

__all__ = ["HFGenerator", "strip_response"]


def strip_response(ids: list[int], eos_id: int, pad_id: int) -> list[int]:
    """A generated row up to and including its first end-of-sequence token, padding removed."""
    out = []
    for token in ids:
        if token == pad_id and token != eos_id:
            break
        out.append(token)
        if token == eos_id:
            break
    return out


@dataclass
class HFGenerator:
    """Rollouts with ``transformers``' ``generate``.

    Args:
        model: a causal LM.
        eos_id, pad_id: token ids; generation of a row stops at ``eos_id``.
        batch_size: rows generated at once.
        mixed_precision: ``no``, ``bf16`` or ``fp16``: autocast of the sampling forward passes.
        parameters: a zero-argument callable returning a context in which every weight is present
            (gathering FSDP / ZeRO-3 shards, :meth:`redrl.parallel.Parallel.full_parameters`).
    """

    model: torch.nn.Module
    eos_id: int
    pad_id: int
    batch_size: int = 256
    mixed_precision: str = "no"
    parameters: Callable[[], ContextManager] | None = None

    @torch.no_grad()
    def generate(
        self, prompts: list[list[int]], n: int = 1, *, temperature: float = 1.0, max_new_tokens: int = 256
    ) -> list[list[int]]:
        """``n`` responses for each prompt, prompt-major: rows ``i*n .. i*n+n-1`` answer prompt ``i``.

        ``temperature = 0`` is greedy decoding. Each response ends with ``eos_id`` unless it ran
        out of ``max_new_tokens``.
        """
        rows = [p for p in prompts for _ in range(n)]
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        responses: list[list[int]] = []
        gathered = self.parameters() if self.parameters else contextlib.nullcontext()
        try:
            with gathered:
                for start in range(0, len(rows), self.batch_size):
                    chunk = rows[start : start + self.batch_size]
                    width = max(len(p) for p in chunk)
                    input_ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                    attention_mask = torch.zeros(len(chunk), width, dtype=torch.long)
                    for i, prompt in enumerate(chunk):  # left padding: every prompt ends at the last column
                        input_ids[i, width - len(prompt) :] = torch.tensor(prompt)
                        attention_mask[i, width - len(prompt) :] = 1
                    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(do_sample=False)
                    with autocast(device, self.mixed_precision):
                        output = self.model.generate(
                            input_ids=input_ids.to(device),
                            attention_mask=attention_mask.to(device),
                            max_new_tokens=max_new_tokens,
                            eos_token_id=self.eos_id,
                            pad_token_id=self.pad_id,
                            use_cache=True,
                            **sampling,
                        )
                    for row in output[:, width:].tolist():
                        responses.append(strip_response(row, self.eos_id, self.pad_id))
        finally:
            self.model.train(was_training)
        return responses
