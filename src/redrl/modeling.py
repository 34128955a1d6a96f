"""Models and tokens: loading (devices, LoRA adapters), chat-formatted prompts, mixed precision,
and forward passes that return per-token log-probabilities and entropies of response tokens."""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from redrl.objectives import token_logprobs_and_entropy, token_logprobs_and_entropy_from_hidden

if TYPE_CHECKING:
    from redrl.config import Config

__all__ = [
    "DistillScorer",
    "ScorerOutputs",
    "TokenScorer",
    "apply_lora",
    "autocast",
    "encode_prompt",
    "encode_response",
    "load_frozen_model",
    "load_model_and_tokenizer",
    "merged_weights",
    "prepare_model",
    "resolve_device",
    "response_distillation",
    "response_logprobs",
    "trainable_parameters",
]


def _unwrap(model):
    """The transformers model inside a peft wrapper (LoRA layers stay injected), else ``model``."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _plain_linear_head(model) -> bool:
    """True when logits are ``lm_head(final hidden)`` and nothing else (Qwen2, Llama, Mistral).

    A head that LoRA (or anything else) has wrapped is not a plain ``nn.Linear``: its logits then
    come from the model's own forward."""
    config = model.config
    return (
        getattr(config, "final_logit_softcapping", None) is None
        and getattr(config, "logit_scale", None) is None
        and type(model.get_output_embeddings()) is torch.nn.Linear
    )


def response_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    chunk_size: int = 1024,
    full_logits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logp, entropy)``, each ``[N, S-1]``, of ``input_ids[:, 1:]``; zero outside ``loss_mask``.

    Only the response positions go through the output projection and the softmax, ``chunk_size``
    of them at a time, so neither prompt positions nor padding cost vocabulary-sized work and no
    ``[N, S, V]`` tensor is ever held (see
    :func:`redrl.objectives.token_logprobs_and_entropy_from_hidden`). ``full_logits`` (or a model
    whose logits are more than a linear map) goes through the model's own forward instead, whose
    ``[N, S, V]`` logits grow with the vocabulary.
    """
    device = model.get_input_embeddings().weight.device
    input_ids, attention_mask, loss_mask = input_ids.to(device), attention_mask.to(device), loss_mask.to(device)
    targets = input_ids[:, 1:]
    inner = _unwrap(model)
    if not full_logits and _plain_linear_head(inner):
        backbone = inner.base_model
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state[:, :-1]
        head = inner.get_output_embeddings()
        logp_sel, entropy_sel = token_logprobs_and_entropy_from_hidden(
            hidden[loss_mask].unsqueeze(0),
            head.weight,
            targets[loss_mask].unsqueeze(0),
            bias=head.bias,
            chunk_size=chunk_size,
        )
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
        logp_sel, entropy_sel = token_logprobs_and_entropy(
            logits[loss_mask].unsqueeze(0), targets[loss_mask].unsqueeze(0), chunk_size=chunk_size
        )
    dtype = logp_sel.dtype
    logp = torch.zeros(loss_mask.shape, dtype=dtype, device=logp_sel.device)
    entropy = torch.zeros(loss_mask.shape, dtype=dtype, device=logp_sel.device)
    logp[loss_mask] = logp_sel.squeeze(0)
    entropy[loss_mask] = entropy_sel.squeeze(0)
    return logp, entropy


def response_distillation(
    student,
    teacher,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    vocab: int,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    teacher_ids: torch.Tensor | None = None,
    teacher_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logp, entropy, kl_fwd, kl_rev)``, each ``[N, S-1]`` and zero outside ``loss_mask``: the
    student's :func:`response_logprobs` and, at the same response positions, the exact token KLs to
    the teacher over the first ``vocab`` output entries (:func:`redrl.objectives.token_kl_from_hidden`).
    With cached teacher log-probs (``teacher_ids`` ``[N, S-1, k]``, ``teacher_logp`` ``[N, S-1, k+1]``,
    :class:`redrl.teacher.TeacherCache`) the teacher is not run: the KLs are those of the top-k +
    tail buckets (:func:`redrl.objectives.top_k_kl_from_hidden`).

    One student forward and one teacher forward (no gradient; its hidden states move to the
    student's device) give the last hidden states; the response positions then go through both
    output projections ``chunk_size`` at a time, so no ``[N, S, V]`` logits exist for either model.
    Both models need logits that are a plain linear map of their last hidden states."""
    from redrl.objectives import token_kl_from_hidden, top_k_kl_from_hidden

    cached = teacher_ids is not None
    inner, frozen = _unwrap(student), None if cached else _unwrap(teacher)
    if not (_plain_linear_head(inner) and (cached or _plain_linear_head(frozen))):
        raise ValueError(
            "distillation needs student and teacher logits that are a linear map of the last hidden states"
        )
    device = student.get_input_embeddings().weight.device
    input_ids, attention_mask, loss_mask = input_ids.to(device), attention_mask.to(device), loss_mask.to(device)
    targets = input_ids[:, 1:]
    hidden = inner.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    hidden = hidden[:, :-1][loss_mask].unsqueeze(0)
    head = inner.get_output_embeddings()
    logp_sel, entropy_sel = token_logprobs_and_entropy_from_hidden(
        hidden, head.weight, targets[loss_mask].unsqueeze(0), bias=head.bias, chunk_size=chunk_size
    )
    if cached:
        kl_fwd_sel, kl_rev_sel, _ = top_k_kl_from_hidden(
            hidden,
            head.weight[:vocab],
            teacher_ids.to(device)[loss_mask].unsqueeze(0),
            teacher_logp.to(device)[loss_mask].unsqueeze(0),
            student_bias=None if head.bias is None else head.bias[:vocab],
            temperature=temperature,
            chunk_size=chunk_size,
        )
        return _scatter_positions(loss_mask, (logp_sel, entropy_sel, kl_fwd_sel, kl_rev_sel))
    teacher_device = teacher.get_input_embeddings().weight.device
    with torch.no_grad():
        teacher_hidden = frozen.base_model(
            input_ids=input_ids.to(teacher_device), attention_mask=attention_mask.to(teacher_device), use_cache=False
        ).last_hidden_state
        teacher_hidden = teacher_hidden[:, :-1][loss_mask.to(teacher_device)].unsqueeze(0).to(device)
    teacher_head = frozen.get_output_embeddings()
    teacher_bias = None if teacher_head.bias is None else teacher_head.bias[:vocab].to(device)
    kl_fwd_sel, kl_rev_sel, _ = token_kl_from_hidden(
        hidden,
        head.weight[:vocab],
        teacher_hidden,
        teacher_head.weight[:vocab].to(device),
        student_bias=None if head.bias is None else head.bias[:vocab],
        teacher_bias=teacher_bias,
        temperature=temperature,
        chunk_size=chunk_size,
    )
    return _scatter_positions(loss_mask, (logp_sel, entropy_sel, kl_fwd_sel, kl_rev_sel))


def _scatter_positions(mask: torch.Tensor, selected: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Each ``[1, M]`` value of the ``M`` positions of ``mask``, back on ``mask``'s grid (zero elsewhere)."""
    out = []
    for values in selected:
        full = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
        full[mask] = values.squeeze(0)
        out.append(full)
    return tuple(out)


class ScorerOutputs(NamedTuple):
    """What a scorer's forward returns, per token on the target grid (``[N, S-1]``, zero outside
    the loss mask): the policy's ``logp`` (differentiable) and ``entropy``; with a teacher
    (:class:`DistillScorer`) the exact token KLs ``kl_fwd`` and ``kl_rev``. An extra per-token
    output (hidden states, attention-based credit) is one more field here and in
    :class:`redrl.objectives.LossInputs`, read by name."""

    logp: torch.Tensor
    entropy: torch.Tensor
    kl_fwd: torch.Tensor | None = None
    kl_rev: torch.Tensor | None = None


class TokenScorer(torch.nn.Module):
    """A causal LM whose forward returns :func:`response_logprobs`' ``(logp, entropy)``.

    This is the module ``accelerate`` wraps (DDP, FSDP, DeepSpeed): every use of the weights in the
    loss happens inside one ``forward``, so gradient synchronisation and parameter gathering see it.
    ``full_logits`` computes the vocabulary projection through the model's own head (needed when the
    head's weight is partitioned outside its forward, as under DeepSpeed ZeRO-3)."""

    def __init__(self, model: torch.nn.Module, chunk_size: int = 1024, full_logits: bool = False):
        super().__init__()
        self.model, self.chunk_size, self.full_logits = model, chunk_size, full_logits
        # FSDP's transformer auto-wrap policy reads the decoder-layer classes from here
        self._no_split_modules = getattr(_unwrap(model), "_no_split_modules", None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor) -> ScorerOutputs:
        return ScorerOutputs(
            *response_logprobs(
                self.model,
                input_ids,
                attention_mask,
                loss_mask,
                chunk_size=self.chunk_size,
                full_logits=self.full_logits,
            )
        )


class DistillScorer(TokenScorer):
    """A :class:`TokenScorer` that also measures a frozen teacher: its forward returns
    :func:`response_distillation`'s ``(logp, entropy, kl_fwd, kl_rev)``. The teacher is kept out of
    the module's parameters (a plain attribute), so wrappers never see, sync or shard it; it is
    ``None`` when its log-probs are cached (:class:`redrl.teacher.TeacherCache`), and the rows then
    carry them."""

    def __init__(self, model, teacher, *, vocab: int, temperature: float = 1.0, chunk_size: int = 1024):
        super().__init__(model, chunk_size)
        self.__dict__["teacher"] = teacher  # not a submodule
        self.vocab, self.temperature = vocab, temperature

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        loss_mask: torch.Tensor,
        teacher_ids: torch.Tensor | None = None,
        teacher_logp: torch.Tensor | None = None,
    ):
        if teacher_ids is None and self.teacher is None:
            raise ValueError("this scorer's teacher is cached: its rows need the cached teacher log-probs")
        return ScorerOutputs(
            *response_distillation(
                self.model,
                self.teacher,
                input_ids,
                attention_mask,
                loss_mask,
                vocab=self.vocab,
                temperature=self.temperature,
                chunk_size=self.chunk_size,
                teacher_ids=teacher_ids,
                teacher_logp=teacher_logp,
            )
        )


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the current CUDA device when there is one, else the CPU; ``cuda[:N]`` must exist."""
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"model.device={name} but torch sees no CUDA device (torch {torch.__version__}); use cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"model.device={name} but there are {torch.cuda.device_count()} CUDA devices")
    return device


def autocast(device: torch.device, mixed_precision: str = "no"):
    """``torch.autocast`` for ``bf16`` / ``fp16`` (a no-op context for ``no``), refusing what the
    device cannot do: fp16 autocast needs CUDA (its loss scaler does), bf16 a GPU that has it."""
    if mixed_precision == "no":
        return contextlib.nullcontext()
    if mixed_precision not in ("bf16", "fp16"):
        raise ValueError(f"mixed precision must be no, bf16 or fp16; got {mixed_precision!r}")
    if mixed_precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"train.mixed_precision=fp16 needs a CUDA device; this run is on {device.type} (use bf16 or no)"
        )
    if mixed_precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"train.mixed_precision=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16; use fp16"
        )
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if mixed_precision == "bf16" else torch.float16)


def _model_config(path: str, overrides: dict, trust_remote_code: bool):
    """The model's config with ``overrides`` set; a key the config does not have is an error.
    ``rope_theta`` reaches ``rope_parameters`` where transformers keeps it there (v5)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    for key, value in overrides.items():
        if key == "rope_theta" and isinstance(getattr(config, "rope_parameters", None), dict):
            config.rope_parameters = {**config.rope_parameters, "rope_theta": float(value)}
        elif hasattr(config, key):
            setattr(config, key, value)
        else:
            raise ValueError(f"model.config_overrides: {type(config).__name__} has no field {key!r}")
    return config


def load_model_and_tokenizer(
    path: str,
    *,
    dtype: str = "float32",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    device: str = "auto",
    config_overrides: dict | None = None,
):
    """A causal LM (on ``device``, see :func:`resolve_device`) and its tokenizer from a local
    directory or the Hugging Face Hub.

    A directory holding a LoRA adapter (``adapter_config.json``, as redrl saves when
    ``model.use_peft`` is on) loads its base model, then the adapter, merged into the weights:
    the result is a plain model, for evaluation or further training. ``config_overrides`` set
    fields of the model's config before the weights load (e.g. a longer context). The tokenizer must have an
    end-of-sequence token; without a pad token the end-of-sequence token pads. Code shipped with a
    Hub model runs only with ``trust_remote_code=True``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = resolve_device(device)
    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file():
        try:
            from peft import PeftModel
        except ImportError:
            raise ImportError(
                f"{path} holds a LoRA adapter; loading it needs peft: pip install 'redrl[peft]'"
            ) from None
        base_path = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if not base_path:
            raise ValueError(f"{adapter} names no base_model_name_or_path")
        base, _ = load_model_and_tokenizer(
            base_path,
            dtype=dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            device=device,
            config_overrides=config_overrides,
        )
        model = PeftModel.from_pretrained(base, path).merge_and_unload()
        model.name_or_path = str(path)  # a later adapter on top records this directory as its base
    else:
        kwargs = {"dtype": _DTYPES[dtype], "trust_remote_code": trust_remote_code}
        if config_overrides:
            kwargs["config"] = _model_config(path, config_overrides, trust_remote_code)
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(target)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer of {path} has no end-of-sequence token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_frozen_model(path: str, **load_kwargs):
    """``(model, tokenizer)`` of a model that is only read, never trained (the KL reference, a
    distillation teacher, a checkpoint being measured): loaded as :func:`load_model_and_tokenizer`
    does, in eval mode, with no parameter requiring a gradient."""
    model, tokenizer = load_model_and_tokenizer(path, **load_kwargs)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def apply_lora(model, *, r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules: str = "all-linear"):
    """Wrap ``model`` with fresh LoRA adapters (peft); only they are trained afterwards.

    ``target_modules`` is peft's ``"all-linear"`` (every linear layer but the output head) or
    comma-separated module names."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("model.use_peft needs peft: pip install 'redrl[peft]'") from None
    targets = (
        target_modules
        if target_modules == "all-linear"
        else [name.strip() for name in target_modules.split(",") if name.strip()]
    )
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def merged_weights(model, *, adapted_only: bool = False) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of the model as a separate sampler (vLLM, a rollout worker) loads it: a
    peft model's adapters merged into the weights they adapt, under the base model's names (for the
    copy only: the trained model is unmerged again afterwards).

    ``adapted_only`` (LoRA) keeps only the blocks that hold an adapted module: every tensor under
    the parent of each adapted module (``layers.0.self_attn`` for an adapted ``q_proj``), so that a
    sampler that fuses sibling projections (vLLM's ``qkv_proj``, ``gate_up_proj``) receives each
    fused weight whole. The other weights are frozen, so a sampler that loaded them once keeps
    them. Without LoRA every weight is returned."""
    if not hasattr(model, "merge_adapter"):
        return list(model.state_dict().items())
    model.merge_adapter()
    try:
        state = model.get_base_model().state_dict()
        adapted = {name.split(".base_layer.")[0] for name in state if ".base_layer." in name}
        blocks = {(module.rpartition(".")[0] or module) + "." for module in adapted}
        return [
            (name.replace(".base_layer.", "."), tensor.detach().clone())
            for name, tensor in state.items()
            if "lora_" not in name and (not adapted_only or any(name.startswith(block) for block in blocks))
        ]
    finally:
        model.unmerge_adapter()


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    """The parameters the optimizer updates (all of them, or only the adapters under LoRA)."""
    return [p for p in model.parameters() if p.requires_grad]


@functools.lru_cache(maxsize=8)
def _template_text(chat_template: str) -> str:
    """A chat template given inline (it has Jinja tags), or read from the file it names."""
    if "{{" in chat_template or "{%" in chat_template:
        return chat_template
    path = Path(chat_template).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data.chat_template is neither a Jinja template nor an existing file: {chat_template}")
    return path.read_text()


def encode_prompt(
    tokenizer,
    problem: str,
    system_prompt: str | None = None,
    *,
    problem_template: str = "{problem}",
    chat_template: str | None = None,
    template_kwargs: dict | None = None,
    response_prefix: str | None = None,
) -> list[int]:
    """Token ids of the chat-formatted problem, ending where the assistant's answer begins.

    The user message is ``problem_template`` with the problem put in for ``{problem}``;
    no ``system_prompt`` (or ``''``) leaves the template's own default, if it has one.
    ``chat_template`` (Jinja text or a file) replaces the tokenizer's; ``template_kwargs`` go to
    ``apply_chat_template`` (e.g. ``enable_thinking``); ``response_prefix`` (e.g. ``"<think>\\n"``)
    is appended after the generation prompt, so every response continues it."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": problem_template.replace("{problem}", problem)})
    template = _template_text(chat_template) if chat_template else None
    text = tokenizer.apply_chat_template(
        messages, chat_template=template, add_generation_prompt=True, tokenize=False, **(template_kwargs or {})
    )
    return tokenizer(text + (response_prefix or ""), add_special_tokens=False).input_ids


def encode_response(tokenizer, text: str, response_prefix: str | None = None) -> list[int]:
    """Token ids of an assistant answer, closed by the end-of-sequence token; a leading
    ``response_prefix`` is dropped (the prompt already ends with it)."""
    if response_prefix and text.startswith(response_prefix):
        text = text[len(response_prefix) :]
    return tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def prepare_model(cfg: Config, model_path: str, device: torch.device | None = None):
    """Model and tokenizer for training: on ``device`` (default: ``model.device``), with gradient
    checkpointing and LoRA adapters as configured; the mixed-precision choice is checked against
    the device here, before any work is done."""
    kwargs = cfg.model.load_kwargs() | ({"device": str(device)} if device is not None else {})
    model, tokenizer = load_model_and_tokenizer(model_path, **kwargs)
    autocast(model.device, cfg.train.mixed_precision)  # raises if the device cannot do it
    if cfg.train.gradient_checkpointing:  # newer transformers call it activation checkpointing
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.model.use_peft:
        model = apply_lora(
            model,
            r=cfg.model.lora_r,
            alpha=cfg.model.lora_alpha,
            dropout=cfg.model.lora_dropout,
            target_modules=cfg.model.lora_target_modules,
        )
    model.train()
    return model, tokenizer
