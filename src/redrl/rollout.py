"""Sampling engines behind one interface (:class:`Generator`): prompts in, response token ids out.

``HFGenerator`` wraps ``model.generate`` (batched, left-padded prompts, KV cache, temperature,
stop at end of sequence); ``FastGenerator`` (:mod:`redrl.fast_engine`) does the same for
Llama/Qwen2-style models without ``generate``'s per-token overhead; ``VLLMGenerator`` runs vLLM in
the training process. :func:`make_generator` is the one way to get one, with one fallback rule.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from redrl.fast_engine import FastGenerator
from redrl.modeling import autocast

if TYPE_CHECKING:
    from redrl.config import Config
    from redrl.parallel import Parallel

__all__ = ["Generator", "HFGenerator", "VLLMGenerator", "build_generator", "make_generator", "strip_response"]


class Generator(Protocol):
    """What the loop, evaluation and the entropy measurements ask of a sampling engine.

    ``generate`` returns ``n`` responses per prompt, prompt-major (rows ``i*n .. i*n+n-1`` answer
    prompt ``i``), each ending with the end-of-sequence token unless it ran out of budget;
    ``temperature = 0`` is greedy. ``generate_with_logprobs`` adds each sampled token's
    log-probability, or ``None`` for a row whose engine does not report them (the trainer then
    recomputes them). ``sync_weights`` copies the trained weights into an engine that holds its own
    copy (a no-op for engines that sample from the trained model itself)."""

    def generate(
        self, prompts: list[list[int]], n: int = 1, *, temperature: float = 1.0, max_new_tokens: int = 256
    ) -> list[list[int]]: ...

    def generate_with_logprobs(
        self, prompts: list[list[int]], n: int = 1, *, temperature: float = 1.0, max_new_tokens: int = 256
    ) -> tuple[list[list[int]], list[list[float] | None]]: ...

    def sync_weights(self, model: torch.nn.Module) -> None: ...


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
                    sampling = (
                        dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
                        if temperature > 0
                        else dict(do_sample=False)
                    )
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

    def generate_with_logprobs(
        self, prompts: list[list[int]], n: int = 1, *, temperature: float = 1.0, max_new_tokens: int = 256
    ) -> tuple[list[list[int]], list[None]]:
        """:meth:`generate`; ``generate`` reports no log-probabilities (``None`` per row: recomputed)."""
        responses = self.generate(prompts, n, temperature=temperature, max_new_tokens=max_new_tokens)
        return responses, [None] * len(responses)

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Nothing to copy: it samples from the trained model itself."""


def make_generator(
    engine: str,
    model,
    eos_id: int,
    pad_id: int,
    *,
    batch_size: int = 256,
    mixed_precision: str = "no",
    parameters: Callable[[], ContextManager] | None = None,
    sharded: bool = False,
) -> Generator:
    """The in-process engine named ``engine`` (``fast`` or ``hf``) for ``model``.

    The one fallback rule: ``fast`` serves where it can, an architecture it implements with every
    weight on this process; anywhere else ``transformers``' ``generate`` serves (gathering sharded
    weights through ``parameters``) and a warning says why. vLLM holds its own copy of the weights
    and is started by :func:`build_generator`; it never falls back."""
    if engine not in ("fast", "hf"):
        raise ValueError(f"make_generator serves rollout.engine fast or hf; got {engine!r}")
    if engine == "fast":
        reason = "every weight is not on this process (FSDP / DeepSpeed)" if sharded else None
        if reason is None:
            try:
                return FastGenerator(model, eos_id, pad_id, batch_size, mixed_precision)
            except ValueError as error:  # "rollout.engine=fast: <reason>; use rollout.engine=hf for this model"
                reason = str(error).removeprefix("rollout.engine=fast: ").split("; use ")[0]
        warnings.warn(f"rollout.engine=fast: {reason}; sampling with transformers' generate instead", stacklevel=2)
    return HFGenerator(model, eos_id, pad_id, batch_size, mixed_precision, parameters=parameters)


def build_generator(
    cfg: Config, model, tokenizer, model_path: str, par: Parallel, longest_prompt: int, scorer=None
) -> Generator:
    """The training run's engine (``rollout.engine``): vLLM started with the weights being trained
    (adapters merged), else :func:`make_generator`."""
    if cfg.rollout.engine == "vllm":
        if par.distributed:
            raise ValueError(
                "rollout.engine=vllm runs in single-process training for now; use rollout.engine=hf with several processes"
            )
        precision = {"bf16": "bfloat16", "fp16": "float16"}.get(cfg.train.mixed_precision, cfg.model.dtype)
        generator = VLLMGenerator.create(
            model_path,
            eos_id=tokenizer.eos_token_id,
            pad_id=tokenizer.pad_token_id,
            dtype=precision,
            gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization,
            max_model_len=longest_prompt + cfg.rollout.max_new_tokens,
            seed=cfg.train.seed,
            trust_remote_code=cfg.model.trust_remote_code,
            config_overrides=cfg.model.config_overrides,
        )
        generator.sync_weights(model)
        return generator
    parameters = (lambda: par.full_parameters(scorer)) if scorer is not None else None
    return make_generator(
        cfg.rollout.engine,
        model,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        batch_size=cfg.rollout.batch_size,
        mixed_precision=cfg.train.mixed_precision,
        parameters=parameters,
        sharded=par.sharded,
    )


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _root_model(path: str) -> str:
    """The full-weight model a (chain of) LoRA adapter directories starts from."""
    import json
    from pathlib import Path

    adapter = Path(path) / "adapter_config.json"
    while adapter.is_file():
        path = json.loads(adapter.read_text())["base_model_name_or_path"]
        adapter = Path(path) / "adapter_config.json"
    return path


def _full_weights(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of the model as vLLM loads it: a peft model's adapters merged into the
    weights they adapt (for the copy only: the trained model is unmerged again afterwards)."""
    if not hasattr(model, "merge_adapter"):
        return list(model.state_dict().items())
    model.merge_adapter()
    try:
        state = model.get_base_model().state_dict()
        return [
            (name.replace(".base_layer.", "."), tensor.detach().clone())
            for name, tensor in state.items()
            if "lora_" not in name
        ]
    finally:
        model.unmerge_adapter()


@dataclass
class VLLMGenerator:
    """Rollouts with vLLM in the training process, on the training GPU (colocated).

    Built by :meth:`create`, which refuses in one line where vLLM cannot run (not installed, no
    CUDA). The trainer calls :meth:`sync_weights` after every optimizer step, so rollouts always come
    from the current policy. :meth:`generate_with_logprobs` also returns vLLM's log-probability of
    every sampled token (computed by vLLM from its own logits, before temperature scaling in
    recent vLLM versions: identical at the paper's rollout temperature of 1.0).

    Not run by us (no GPU on our machines); written against vLLM's ``LLM``, ``SamplingParams`` and
    token prompts, and tested with a stand-in for those.
    """

    llm: object
    eos_id: int
    pad_id: int

    @classmethod
    def create(
        cls,
        model_path: str,
        *,
        eos_id: int,
        pad_id: int,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        seed: int = 0,
        trust_remote_code: bool = False,
        config_overrides: dict | None = None,
    ) -> VLLMGenerator:
        if not _cuda_available():
            raise ValueError("rollout.engine=vllm needs a CUDA GPU and this machine has none; use rollout.engine=hf")
        try:
            import vllm
        except ImportError:
            raise ImportError("rollout.engine=vllm needs vLLM: pip install 'redrl[vllm]'") from None
        import os

        # The engine runs in this process, so weights can be handed over without copies between processes.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        kwargs = {"hf_overrides": dict(config_overrides)} if config_overrides else {}
        llm = vllm.LLM(
            model=_root_model(model_path),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
            trust_remote_code=trust_remote_code,
            enable_prefix_caching=True,
            **kwargs,
        )
        return cls(llm, eos_id, pad_id)

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Copy the trained model's weights (LoRA merged) into vLLM's copy; drop cached prefixes."""
        weights = _full_weights(model)

        def load(vllm_model):
            vllm_model.load_weights(weights)

        if hasattr(self.llm, "apply_model"):
            self.llm.apply_model(load)
        else:  # older vLLM: the in-process worker's model
            load(self.llm.llm_engine.model_executor.driver_worker.model_runner.model)
        self.llm.reset_prefix_cache()

    def generate_with_logprobs(
        self, prompts: list[list[int]], n: int = 1, *, temperature: float = 1.0, max_new_tokens: int = 256
    ) -> tuple[list[list[int]], list[list[float]]]:
        """As :meth:`HFGenerator.generate`, with the sampler's log-probability of each token."""
        from vllm import SamplingParams

        params = SamplingParams(
            n=n, temperature=temperature, top_p=1.0, max_tokens=max_new_tokens, stop_token_ids=[self.eos_id], logprobs=0
        )
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        responses, logprobs = [], []
        for request in outputs:
            for completion in request.outputs:
                ids = list(completion.token_ids)
                values = [step[token].logprob for step, token in zip(completion.logprobs or [], ids)]
                values += [math.nan] * (len(ids) - len(values))
                if completion.finish_reason == "stop" and (not ids or ids[-1] != self.eos_id):
                    ids.append(self.eos_id)  # stopped at the end-of-sequence token without returning it
                    values.append(math.nan)  # (the trainer recomputes what the sampler did not report)
                responses.append(ids)
                logprobs.append(values)
        return responses, logprobs

    def generate(
        self, prompts: list[list[int]], n: int = 1, *, temperature: float = 1.0, max_new_tokens: int = 256
    ) -> list[list[int]]:
        return self.generate_with_logprobs(prompts, n, temperature=temperature, max_new_tokens=max_new_tokens)[0]
