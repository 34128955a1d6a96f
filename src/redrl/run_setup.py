"""A training run's set-up: every refusal first (one line each, before any model is loaded), then
the model, data, optimizer, schedule, auxiliary models, scorer, rollout engine, strategy and prompt
conditioning, and with ``train.resume`` the newest complete checkpoint's state loaded into them.

What a method does differently is asked of what it declares, never of its name: its objective
(:data:`redrl.objectives.LOSSES`: teacher, rewards, aggregation), its strategy
(:mod:`redrl.strategies`), its auxiliary models (:mod:`redrl.auxiliary`) and its prompt
conditioning (:mod:`redrl.conditioning`).
"""

from __future__ import annotations

import importlib.util
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from redrl import checkpoint
from redrl.auxiliary import Auxiliary, AuxiliaryContext, build_auxiliaries
from redrl.conditioning import Conditioning, build_conditioning
from redrl.config import TRACKERS, BardConfig, Config, RavrConfig
from redrl.critics import check_critics
from redrl.curriculum import LengthCurriculum
from redrl.data.offline import load_offline
from redrl.data.training import PromptSampler, TrainingData, prepare_data, total_steps
from redrl.learning_rate import with_learning_rate
from redrl.methods import METHODS, Method, with_prefix
from redrl.modeling import TokenScorer, load_frozen_model, prepare_model, trainable_parameters
from redrl.objectives import LOSSES, LossSettings
from redrl.parallel import Parallel
from redrl.paths import resolve_paths
from redrl.regulator import EntropyRegulator
from redrl.rollout import build_generator
from redrl.rollout_phase import start_pipeline
from redrl.run_dir import claim
from redrl.scheduling import RolloutScheduler
from redrl.step import StepSettings, build_scheduler, loss_settings
from redrl.strategies import StepPlan, Strategy, build_strategy, check_strategy, strategy_class

__all__ = ["Run", "check_inputs", "check_run", "resolve_learning_rate", "resolve_method", "setup"]


@dataclass
class Run:
    """Everything one training run holds, built once by :func:`setup`; the loop reads and updates it."""

    cfg: Config
    method: Method
    par: Parallel
    out: Path
    model: torch.nn.Module
    tokenizer: object
    scorer: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    regulator: EntropyRegulator
    sampler: PromptSampler
    generator: object
    strategy: Strategy
    data: TrainingData
    steps: int
    conditioning: Conditioning
    auxiliaries: list[Auxiliary] = field(default_factory=list)
    reference: TokenScorer | None = None
    step_settings: StepSettings = field(default_factory=StepSettings)
    curriculum: LengthCurriculum | None = None
    scheduler_rounds: RolloutScheduler | None = None
    pipeline: object | None = None  # redrl.async_rollout.AsyncRollouts with rollout.async_staleness
    evaluation: object | None = None  # redrl.periodic_eval.PeriodicEvaluation with train.eval_every
    start: int = 0
    skipped_in_a_row: int = 0
    skipped_total: int = 0
    failing_in_a_row: int = 0  # steps in a row on which too many gradings failed
    _losses: dict = field(default_factory=dict, repr=False)

    def loss_settings(self, plan: StepPlan) -> LossSettings:
        """The settings of the step's objective, built from the config once per method and entropy bonus."""
        key = (plan.method.name, plan.sft_entropy_coef)
        if key not in self._losses:
            self._losses[key] = loss_settings(self.cfg, plan.method, plan.sft_entropy_coef)
        return self._losses[key]

    def loop_state(self) -> dict:
        """The loop's own state, saved with every checkpoint."""
        return {
            **self.strategy.state_dict(),
            "skipped_in_a_row": self.skipped_in_a_row,
            "skipped_total": self.skipped_total,
            "grading_failed_in_a_row": self.failing_in_a_row,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            **({"curriculum": self.curriculum.state_dict()} if self.curriculum is not None else {}),
            **(self.scheduler_rounds.state_dict() if self.scheduler_rounds is not None else {}),
            **(self.pipeline.state_dict() if self.pipeline is not None else {}),
            **(self.evaluation.state_dict() if self.evaluation is not None else {}),
        }

    def save(self, path: Path, step: int, model_card: str | None = None) -> None:
        """A checkpoint to resume from, or with ``model_card`` the lean final model."""
        checkpoint.save_checkpoint(
            path,
            self.par,
            self.scorer,
            self.tokenizer,
            self.optimizer,
            self.scheduler,
            self.regulator,
            self.sampler,
            step,
            config=self.cfg.to_dict(),
            keep_last=self.cfg.train.keep_last,
            state=self.loop_state(),
            auxiliary={aux.name: aux.state_dict() for aux in self.auxiliaries},
            model_card=model_card,
        )


def resolve_method(cfg: Config) -> Method:
    """``train.method``'s settings; a method that distils a teacher model has its rows follow
    ``distill.prefix`` (teacher: the traces, student: rollouts)."""
    method = METHODS[cfg.train.method]
    if not LOSSES[method.objective].scores_with_teacher:
        return method
    return with_prefix(method, cfg.distill.prefix or method.distill_prefix)


def check_run(cfg: Config, method: Method, par: Parallel) -> None:
    """Refuse, in one line and before any model is loaded, what this run cannot do."""
    tracker = cfg.train.report_to
    if tracker != "none" and importlib.util.find_spec(TRACKERS[tracker]) is None:
        raise ImportError(f"train.report_to={tracker} needs {TRACKERS[tracker]}: pip install 'redrl[{tracker}]'")
    check_strategy(method, cfg.baselines, par)
    check_critics(cfg, method, par.world)
    objective, d = LOSSES[method.objective], cfg.distill
    for key in ("curriculum", "cache_teacher", "teacher_samples"):
        if getattr(d, key) and not objective.scores_with_teacher:
            raise ValueError(f"distill.{key} applies to the distillation methods, not {method.name}")
    if (d.cache_teacher or d.teacher_samples) and objective.scores_with_teacher and method.rollouts:
        key = "cache_teacher caches the teacher on" if d.cache_teacher else "teacher_samples replaces"
        raise ValueError(f"distill.{key} the traces: it needs distill.prefix=teacher")
    if cfg.loss.kl_coef and not objective.kl_to_reference:
        raise ValueError(
            f"loss.kl_coef: the {method.objective} objective of {method.name} has no KL-to-reference term; set it to 0"
        )
    par.share(list(range(cfg.train.prompts_per_step)))  # refuses a step that cannot be split evenly
    r = cfg.rollout
    named = [
        name
        for name, on in (
            ("rollout.dynamic_sampling", r.dynamic_sampling),
            ("rollout.tail_max_new_tokens", r.tail_max_new_tokens is not None),
            ("rollout.async_staleness", r.async_staleness > 0),
        )
        if on
    ]
    if named and par.world > 1:
        raise ValueError(f"{named[0]} runs in single-process training for now ({par.world} processes here)")
    if r.async_staleness and strategy_class(method).needs_current_policy:
        raise ValueError(
            f"rollout.async_staleness: {method.name} samples again or changes steps after grading "
            "(ReLIFT, BREAD, RAVR), which needs the current policy in the trainer; run it synchronously"
        )
    if method.records != "budgets" and cfg.bard != BardConfig():
        raise ValueError(f"bard.* settings apply to the budget-conditioned methods (bard, ...), not {method.name}")
    if method.conditioning != "answer" and cfg.ravr != RavrConfig():
        raise ValueError(f"ravr.* settings apply to the answer-conditioned methods (ravr), not {method.name}")
    if method.records == "budgets" and max(cfg.bard.buckets) > r.max_new_tokens:
        raise ValueError(
            f"bard.buckets: a budget of {max(cfg.bard.buckets)} tokens cannot be met with "
            f"rollout.max_new_tokens={r.max_new_tokens}; raise it or drop the bucket"
        )
    if r.dynamic_sampling and method.reward != "correct":
        raise ValueError(
            f"rollout.dynamic_sampling keeps groups by their grades; {method.name}'s reward is shaped from them: "
            "run it without"
        )
    if cfg.loss.decoupled and not (r.old_logp == "sampler" or r.async_staleness):
        raise ValueError(
            "loss.decoupled needs the sampler's log-probs: rollout.old_logp=sampler or rollout.async_staleness"
        )


def resolve_learning_rate(cfg: Config) -> Config:
    """``cfg`` with its learning rate (:func:`redrl.learning_rate.with_learning_rate`); when there is
    none (a sweep file chosen for another task, say), a missing or malformed model or data file is
    named first: that is the error to fix."""
    try:
        return with_learning_rate(cfg)
    except (ValueError, OSError):
        check_inputs(cfg)
        raise


def check_inputs(cfg: Config) -> None:
    """Raise, in one line, what is wrong with the run's model or training data: missing, not a model
    directory, a data file that is malformed, empty or lacks its fields (a Hub dataset is read when
    the run loads it)."""
    model, train_path, _ = resolve_paths(cfg, need_test=False, progress=False)
    local = Path(model).expanduser()
    if local.is_dir() and not (local / "config.json").is_file() and not (local / "adapter_config.json").is_file():
        raise FileNotFoundError(f"model.path {cfg.model.path} is not a model directory (it has no config.json)")
    if Path(train_path).expanduser().exists():
        load_offline(train_path)


def setup(cfg: Config, method: Method, *, progress: bool = True) -> Run:
    """Check the run can start, then build everything it trains with; with ``train.resume``, load
    the newest complete checkpoint's state into it."""
    out = Path(cfg.train.out)
    tracker = None if cfg.train.report_to == "none" else cfg.train.report_to
    par = Parallel.create(cfg.model.device, log_with=tracker, project_dir=str(out))
    check_run(cfg, method, par)
    if par.is_main:
        claim(out, resume=cfg.train.resume, overwrite=cfg.train.overwrite)
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    resume_from = None
    if cfg.train.resume:
        resume_from = checkpoint.find_latest(
            out, warn=lambda line: print(line, file=sys.stderr) if par.is_main else None
        )
        if par.is_main:
            found = (
                f"resuming from {resume_from}"
                if resume_from
                else f"no complete checkpoint in {out}; starting from step 0"
            )
            print(f"redrl: {found}", file=sys.stderr)
    if par.is_main:
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    run, model_path = _build(cfg, method, par, out, resume_from, progress)
    if resume_from is not None:
        loop = _resume(run, resume_from)
    if cfg.rollout.async_staleness and method.rollouts:
        if run.conditioning.needs_recomputed_logp:
            raise ValueError(f"rollout.async_staleness: {method.name} scores its samples under another prompt")
        run.pipeline = start_pipeline(
            run, loop if resume_from is not None else None, model_path=model_path, progress=progress
        )
    return run


def _build(cfg: Config, method: Method, par: Parallel, out: Path, resume_from: Path | None, progress: bool):
    """The run's parts, in the order that fixes their random draws; ``(run, model_path)``."""
    model_path, train_path, _ = resolve_paths(cfg, need_test=False, progress=progress and par.is_main)
    full_weights = resume_from is not None and not cfg.model.use_peft
    model, tokenizer = prepare_model(cfg, str(resume_from) if full_weights else model_path, par.device)
    if resume_from is not None and cfg.model.use_peft:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(resume_from / "adapter_model.safetensors")))
    data = prepare_data(cfg, tokenizer, train_path, method.records)
    steps = total_steps(cfg, len(data.records))
    sampler = PromptSampler(len(data.records), cfg.train.seed)
    optimizer = torch.optim.AdamW(
        trainable_parameters(model), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
    )
    auxiliaries = build_auxiliaries(method.auxiliaries, AuxiliaryContext(cfg, model, tokenizer, data, par, progress))
    module = TokenScorer(model, cfg.train.chunk_size, full_logits=par.zero_stage == 3)
    for aux in auxiliaries:  # each places itself inside the scorer's forward (the teacher's KLs)
        module = aux.scorer(module)
    scorer, optimizer = par.prepare(module, optimizer, micro_batch_size=cfg.train.micro_batch_size)
    conditioning = build_conditioning(method.conditioning, tokenizer, cfg)
    longest = max(len(conditioning.sample_prompt(r, p)) for r, p in zip(data.records, data.prompts))
    generator = build_generator(cfg, model, tokenizer, model_path, par, longest, scorer, samples=method.rollouts)
    warmup = round(cfg.optim.warmup_ratio * steps) if cfg.optim.warmup_ratio is not None else cfg.optim.warmup_steps
    scheduler = build_scheduler(optimizer, cfg.optim.schedule, warmup, steps, min_ratio=cfg.optim.min_lr_ratio)
    regulator = EntropyRegulator(
        max_weight=cfg.loss.regulator_max_weight or cfg.rollout.group_size, ema=cfg.loss.regulator_ema
    )
    strategy = build_strategy(
        method,
        cfg.baselines,
        cfg.rollout,
        generator=generator,
        tokenizer=tokenizer,
        grader=cfg.data.grader,
        failed_grading=cfg.data.failed_grading,
        scorer=scorer,
        prompts=data.prompts,
        ravr=cfg.ravr,
        train=cfg.train,
    )
    reference = None
    if cfg.loss.kl_coef:  # π_ref: the model this run starts from, frozen
        kwargs = cfg.model.load_kwargs() | ({"device": str(par.device)} if par.device is not None else {})
        reference = TokenScorer(load_frozen_model(model_path, **kwargs)[0], cfg.train.chunk_size)
    run = Run(
        cfg, method, par, out, model, tokenizer, scorer, optimizer, scheduler,
        torch.amp.GradScaler("cuda") if cfg.train.mixed_precision == "fp16" else None,
        regulator, sampler, generator, strategy, data, steps, conditioning, auxiliaries, reference, StepSettings.from_config(cfg),
    )  # fmt: skip
    r, d = cfg.rollout, cfg.distill
    if method.rollouts and (r.dynamic_sampling or r.tail_max_new_tokens is not None):
        run.scheduler_rounds = RolloutScheduler(
            cfg.train.prompts_per_step,
            r.max_new_tokens,
            dynamic=r.dynamic_sampling and LOSSES[method.objective].uses_rewards,
            max_rounds=r.max_rounds,
            tail_max_new_tokens=r.tail_max_new_tokens,
        )
    if d.curriculum:
        window = min(d.window_start, r.max_new_tokens)
        run.curriculum = LengthCurriculum(
            window, r.max_new_tokens, growth=d.window_growth, every=d.window_every, threshold=d.entropy_threshold
        )
    if cfg.train.eval_every:
        from redrl.periodic_eval import PeriodicEvaluation

        run.evaluation = PeriodicEvaluation(run)
    return run, model_path


def _resume(run: Run, resume_from: Path) -> dict:
    """Load a checkpoint's state into ``run``; return the loop state it saved."""
    body = checkpoint.load_training_state(
        resume_from, optimizer=run.optimizer, scheduler=run.scheduler, regulator=run.regulator, sampler=run.sampler
    )
    loop = body["state"]
    if loop.get("processes", 1) != run.par.world:
        raise ValueError(
            f"{resume_from} was written by {loop.get('processes')} processes; resume it with as many (now {run.par.world})"
        )
    run.start = int(body["step"])
    run.strategy.load_state_dict(loop)
    if run.curriculum is not None and loop.get("curriculum"):
        run.curriculum.load_state_dict(loop["curriculum"])
    if run.scheduler_rounds is not None:
        run.scheduler_rounds.load_state_dict(loop)
    if run.evaluation is not None:
        run.evaluation.load_state_dict(loop)
    for aux in run.auxiliaries:
        aux.load_state_dict(checkpoint.load_auxiliary(resume_from, aux.name))
    for group, lr in zip(run.optimizer.param_groups, run.scheduler.get_last_lr()):
        group["lr"] = lr  # also where no optimizer state was saved (sharded runs)
    run.skipped_in_a_row = int(loop.get("skipped_in_a_row", 0))
    run.skipped_total = int(loop.get("skipped_total", 0))
    run.failing_in_a_row = int(loop.get("grading_failed_in_a_row", 0))
    if run.scaler is not None and loop.get("scaler"):
        run.scaler.load_state_dict(loop["scaler"])
    checkpoint.load_rng(resume_from, run.par.rank)  # last: nothing above draws random numbers after this
    run.generator.sync_weights(run.model)
    return loop
