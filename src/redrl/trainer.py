"""The training loop, read top to bottom: rollout → grade → group → loss → step → log → checkpoint.

``train(cfg)`` runs one method (:mod:`redrl.methods`) for ``cfg.train.steps`` optimizer steps.
Each step takes ``prompts_per_step`` prompts in a seeded order, samples ``G`` rollouts of each with
the current policy, grades them with the same grader evaluation uses, puts each prompt's rollouts
and its teacher trace into one group, and takes one AdamW step on the method's loss (one optimizer
step per rollout batch, as the paper's launch script: train batch = rollout batch). Metrics go to
``OUT/metrics.jsonl``, one object per step; the final model to ``OUT/final`` in Hugging Face format
with the trainer state beside it.

The parts live where their concern does: paths (:mod:`redrl.paths`), the training set and prompt
order (:mod:`redrl.data.training`), models (:mod:`redrl.modeling`), rollout engines
(:mod:`redrl.rollout`), groups (:mod:`redrl.batch`), the optimization step (:mod:`redrl.step`),
checkpoints (:mod:`redrl.checkpoint`). What a method does beyond its loss (ReLIFT's buffer, BREAD's
teacher prefixes) is a strategy object (:mod:`redrl.strategies`); a staged method (SFT→GRPO) runs
its stages through :mod:`redrl.staged`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from redrl import checkpoint
from redrl import rewards as rewards_module
from redrl.batch import assemble_batch
from redrl.config import TRACKERS, Config
from redrl.curriculum import LengthCurriculum
from redrl.data.training import PromptSampler, TrainingData, prepare_data, total_steps
from redrl.errors import NonFiniteTraining, TrainingStopped
from redrl.learning_rate import with_learning_rate
from redrl.methods import METHODS, Method, with_prefix
from redrl.modeling import DistillScorer, TokenScorer, load_frozen_model, prepare_model, trainable_parameters
from redrl.objectives import LOSSES, LossSettings
from redrl.parallel import Parallel
from redrl.paths import resolve_paths
from redrl.regulator import EntropyRegulator
from redrl.rewards import grade_checked
from redrl.rollout import build_generator
from redrl.scheduling import GroupOutcome, RolloutScheduler, is_informative
from redrl.staged import train_staged
from redrl.step import (
    StepSettings,
    behaviour_logp,
    build_scheduler,
    loss_settings,
    optimization_step,
    step_record,
)
from redrl.strategies import StepPlan, StepRollouts, Strategy, build_strategy, check_strategy
from redrl.teacher import TeacherCache, load_teacher, teacher_cache, use_teacher_samples

__all__ = ["NonFiniteTraining", "Run", "TrainingStopped", "setup", "train"]


def train(cfg: Config, *, progress: bool = True) -> Path:
    """Train ``cfg.train.method``; return the directory of the final checkpoint.

    Under ``accelerate launch`` / ``torchrun`` every process runs this function on its share of
    each step's prompts (:mod:`redrl.parallel`); the main process writes logs and checkpoints.
    With ``train.resume`` the run continues from the newest complete checkpoint in ``train.out``
    and repeats exactly what the uninterrupted run would have done. SIGINT / SIGTERM stop it at
    the next step boundary with a checkpoint (:class:`TrainingStopped`)."""
    cfg = with_learning_rate(cfg)
    method = METHODS[cfg.train.method]
    if method.stages:
        if Parallel.create(cfg.model.device).is_main:
            _claim(Path(cfg.train.out), resume=cfg.train.resume, overwrite=cfg.train.overwrite)
        return train_staged(cfg, method, _train_stage, progress=progress)
    return _train_stage(cfg, progress=progress)


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
    reference: TokenScorer | None = None
    step_settings: StepSettings = field(default_factory=StepSettings)
    curriculum: LengthCurriculum | None = None
    teacher_cache: TeacherCache | None = None
    scheduler_rounds: RolloutScheduler | None = None
    pipeline: object | None = None  # redrl.async_rollout.AsyncRollouts with rollout.async_staleness
    start: int = 0
    skipped_in_a_row: int = 0
    skipped_total: int = 0
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
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            **({"curriculum": self.curriculum.state_dict()} if self.curriculum is not None else {}),
            **(self.scheduler_rounds.state_dict() if self.scheduler_rounds is not None else {}),
            **(self.pipeline.state_dict() if self.pipeline is not None else {}),
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
            model_card=model_card,
        )


def setup(cfg: Config, method: Method, *, progress: bool = True) -> Run:
    """Check the run can start, then build the model, data, optimizer, schedule, rollout engine and
    strategy; with ``train.resume``, load the newest complete checkpoint's state into them."""
    out = Path(cfg.train.out)
    tracker = None if cfg.train.report_to == "none" else cfg.train.report_to
    if tracker and importlib.util.find_spec(TRACKERS[tracker]) is None:
        raise ImportError(f"train.report_to={tracker} needs {TRACKERS[tracker]}: pip install 'redrl[{tracker}]'")
    par = Parallel.create(cfg.model.device, log_with=tracker, project_dir=str(out))
    if par.is_main:
        _claim(out, resume=cfg.train.resume, overwrite=cfg.train.overwrite)
    check_strategy(method, cfg.baselines, par)
    for key in ("curriculum", "cache_teacher", "teacher_samples"):
        if getattr(cfg.distill, key) and method.objective != "distill":
            raise ValueError(f"distill.{key} applies to the distillation methods, not {method.name}")
    if cfg.loss.kl_coef and not LOSSES[method.objective].kl_to_reference:
        raise ValueError(
            f"loss.kl_coef: the {method.objective} objective of {method.name} has no KL-to-reference term; set it to 0"
        )
    par.share(list(range(cfg.train.prompts_per_step)))  # refuses a step that cannot be split evenly
    _check_rollout_mechanisms(cfg, method, par)
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    resume_from = None
    if cfg.train.resume:
        resume_from = checkpoint.find_latest(
            out, warn=lambda line: print(line, file=sys.stderr) if par.is_main else None
        )
        if par.is_main:
            print(
                f"redrl: resuming from {resume_from}"
                if resume_from
                else f"redrl: no complete checkpoint in {out}; starting from step 0",
                file=sys.stderr,
            )
    if par.is_main:
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if tracker:  # tensorboard writes OUT/tensorboard; wandb and trackio log to their project "redrl"
        flat = {
            f"{section}/{key}": value if isinstance(value, (int, float, str, bool)) else str(value)
            for section, body in cfg.to_dict().items()
            for key, value in body.items()
        }
        par.accelerator.init_trackers(
            "tensorboard" if tracker == "tensorboard" else "redrl", config=flat, init_kwargs={tracker: {}}
        )

    # Model, data and teacher traces.
    model_path, train_path, _ = resolve_paths(cfg, need_test=False, progress=progress and par.is_main)
    full_weights = resume_from is not None and not cfg.model.use_peft
    model, tokenizer = prepare_model(cfg, str(resume_from) if full_weights else model_path, par.device)
    if resume_from is not None and cfg.model.use_peft:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(resume_from / "adapter_model.safetensors")))
    data = prepare_data(cfg, tokenizer, train_path)
    steps = total_steps(cfg, len(data.records))

    # Optimizer, schedule, rollout engine, regulator and strategy.
    sampler = PromptSampler(len(data.records), cfg.train.seed)
    optimizer = torch.optim.AdamW(
        trainable_parameters(model), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
    )
    cached = None
    if method.objective == "distill":  # the teacher's distributions enter inside the scorer's forward
        teacher = load_teacher(cfg, tokenizer, model.get_output_embeddings().weight.shape[0], par.device)
        if teacher.note and par.is_main:
            print(f"redrl: {teacher.note}", file=sys.stderr)
        settings = cfg.distill
        if (settings.cache_teacher or settings.teacher_samples) and method.rollouts:
            key = "cache_teacher caches the teacher on" if settings.cache_teacher else "teacher_samples replaces"
            raise ValueError(f"distill.{key} the traces: it needs distill.prefix=teacher")
        if settings.teacher_samples:
            use_teacher_samples(cfg, teacher, data, tokenizer, write=par.is_main, progress=progress and par.is_main)
        if settings.cache_teacher:
            cached = teacher_cache(
                cfg, teacher, data, tokenizer.pad_token_id, write=par.is_main, progress=progress and par.is_main
            )
            teacher.model = None  # not needed again: every step reads the cache
        module = DistillScorer(
            model, teacher.model, vocab=teacher.vocab, temperature=settings.temperature, chunk_size=settings.chunk_size
        )
    else:
        module = TokenScorer(model, cfg.train.chunk_size, full_logits=par.zero_stage == 3)
    scorer, optimizer = par.prepare(
        module,
        optimizer,
        micro_batch_size=cfg.train.micro_batch_size,
    )
    generator = build_generator(
        cfg, model, tokenizer, model_path, par, max(map(len, data.prompts)), scorer, samples=method.rollouts
    )
    warmup = round(cfg.optim.warmup_ratio * steps) if cfg.optim.warmup_ratio is not None else cfg.optim.warmup_steps
    scheduler = build_scheduler(optimizer, cfg.optim.schedule, warmup, steps, min_ratio=cfg.optim.min_lr_ratio)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.mixed_precision == "fp16" else None
    regulator = EntropyRegulator(
        max_weight=cfg.loss.regulator_max_weight or cfg.rollout.group_size, ema=cfg.loss.regulator_ema
    )
    strategy = build_strategy(
        method, cfg.baselines, cfg.rollout, generator=generator, tokenizer=tokenizer, grader=cfg.data.grader
    )
    reference = None
    if cfg.loss.kl_coef:  # π_ref: the model this run starts from, frozen
        kwargs = cfg.model.load_kwargs() | ({"device": str(par.device)} if par.device is not None else {})
        reference = TokenScorer(load_frozen_model(model_path, **kwargs)[0], cfg.train.chunk_size)
    run = Run(
        cfg,
        method,
        par,
        out,
        model,
        tokenizer,
        scorer,
        optimizer,
        scheduler,
        scaler,
        regulator,
        sampler,
        generator,
        strategy,
        data,
        steps,
        reference,
        StepSettings.from_config(cfg),
        teacher_cache=cached,
    )
    r = cfg.rollout
    if method.rollouts and (r.dynamic_sampling or r.tail_max_new_tokens is not None):
        run.scheduler_rounds = RolloutScheduler(
            cfg.train.prompts_per_step,
            r.max_new_tokens,
            dynamic=r.dynamic_sampling and method.objective != "distill",
            max_rounds=r.max_rounds,
            tail_max_new_tokens=r.tail_max_new_tokens,
        )
    if cfg.distill.curriculum:
        d = cfg.distill
        run.curriculum = LengthCurriculum(
            min(d.window_start, cfg.rollout.max_new_tokens),
            cfg.rollout.max_new_tokens,
            growth=d.window_growth,
            every=d.window_every,
            threshold=d.entropy_threshold,
        )
    if resume_from is not None:
        body = checkpoint.load_training_state(
            resume_from, optimizer=optimizer, scheduler=scheduler, regulator=regulator, sampler=sampler
        )
        loop = body["state"]
        if loop.get("processes", 1) != par.world:
            raise ValueError(
                f"{resume_from} was written by {loop.get('processes')} processes; resume it with as many (now {par.world})"
            )
        run.start = int(body["step"])
        strategy.load_state_dict(loop)
        if run.curriculum is not None and loop.get("curriculum"):
            run.curriculum.load_state_dict(loop["curriculum"])
        if run.scheduler_rounds is not None:
            run.scheduler_rounds.load_state_dict(loop)
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr  # also where no optimizer state was saved (sharded runs)
        run.skipped_in_a_row, run.skipped_total = (
            int(loop.get("skipped_in_a_row", 0)),
            int(loop.get("skipped_total", 0)),
        )
        if scaler is not None and loop.get("scaler"):
            scaler.load_state_dict(loop["scaler"])
        checkpoint.load_rng(resume_from, par.rank)  # last: nothing above draws random numbers after this
        generator.sync_weights(model)
    if cfg.rollout.async_staleness and method.rollouts:
        run.pipeline = _start_pipeline(
            run, loop if resume_from is not None else None, model_path=model_path, progress=progress
        )
    return run


def _check_rollout_mechanisms(cfg: Config, method: Method, par: Parallel) -> None:
    """Refuse, in one line, a rollout mechanism this run cannot use."""
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
    if r.async_staleness and method.on_all_fail != "none":
        raise ValueError(
            f"rollout.async_staleness: {method.name} samples again or changes steps after grading "
            "(ReLIFT, BREAD), which needs the current policy in the trainer; run it synchronously"
        )
    if cfg.loss.decoupled and not (r.old_logp == "sampler" or r.async_staleness):
        raise ValueError(
            "loss.decoupled needs the sampler's log-probs: rollout.old_logp=sampler or rollout.async_staleness"
        )


def _start_pipeline(run: Run, loop: dict | None, *, model_path: str, progress: bool):
    """The rollout worker (redrl's fast engine, or vLLM with ``rollout.engine=vllm``), with the
    steps in flight: restored from a checkpoint's loop state, or the first ``k + 1`` steps submitted."""
    from redrl.async_rollout import AsyncRollouts
    from redrl.rollout import vllm_settings

    cfg = run.cfg
    vllm = vllm_settings(cfg, model_path, max(map(len, run.data.prompts))) if cfg.rollout.engine == "vllm" else None
    threads = torch.get_num_threads()
    worker_threads = max(1, threads // 2)
    if run.par.device.type == "cpu" and threads > 1:  # the two processes share the cores
        torch.set_num_threads(threads - worker_threads)
        if progress:
            print(
                f"redrl: asynchronous rollouts: {threads - worker_threads} CPU thread(s) train, "
                f"{worker_threads} sample in the worker",
                file=sys.stderr,
            )
    pipeline = AsyncRollouts(
        run.model,
        run.tokenizer.eos_token_id,
        run.tokenizer.pad_token_id,
        staleness=cfg.rollout.async_staleness,
        group_size=cfg.rollout.group_size,
        temperature=cfg.rollout.temperature,
        seed=cfg.train.seed,
        version=run.start,
        batch_size=cfg.rollout.batch_size,
        threads=worker_threads,
        vllm=vllm,
        devices=cfg.rollout.worker_devices,
        threads_before=threads,
    )
    if loop is not None:
        pipeline.load_state_dict(loop)
    else:
        for step in range(run.start + 1, min(run.start + cfg.rollout.async_staleness + 1, run.steps) + 1):
            _submit(run, pipeline, step)
    return pipeline


def _submit(run: Run, pipeline, step: int) -> None:
    """Draw step ``step``'s prompts and send them to the rollout worker."""
    plan = run.strategy.plan(run.sampler, run.cfg.train.prompts_per_step)
    window = run.curriculum.window if run.curriculum is not None else run.cfg.rollout.max_new_tokens
    pipeline.submit(step, plan.prompts, [run.data.prompts[i] for i in plan.prompts], window)


def _sample_groups(run: Run, prompts: list[int], budget: int, *, with_logprobs: bool):
    """``G`` rollouts of each record in ``prompts``, graded: ``(rollouts, logprobs, rewards)``
    (prompt-major; ``logprobs`` ``None`` unless asked for). A grader error or timeout is ungraded
    (``None``), or wrong with ``data.failed_grading: wrong``."""
    cfg, G = run.cfg, run.cfg.rollout.group_size
    step_prompts = [run.data.prompts[i] for i in prompts]
    logprobs = None
    if with_logprobs:
        rollouts, logprobs = run.generator.generate_with_logprobs(
            step_prompts, G, temperature=cfg.rollout.temperature, max_new_tokens=budget
        )
    else:
        rollouts = run.generator.generate(step_prompts, G, temperature=cfg.rollout.temperature, max_new_tokens=budget)
    return rollouts, logprobs, _grade(run, prompts, rollouts)


def _grade(run: Run, prompts: list[int], rollouts: list[list[int]]) -> list[float | None]:
    cfg, G = run.cfg, run.cfg.rollout.group_size
    texts = run.tokenizer.batch_decode(rollouts, skip_special_tokens=True) if rollouts else []  # ([] decodes to [''])
    answers = [run.data.records[i]["answer"] for i in prompts]
    checked = [grade_checked(text, answers[j // G], cfg.data.grader) for j, text in enumerate(texts)]
    wrong_if_failed = cfg.data.failed_grading == "wrong"
    return [0.0 if failed and wrong_if_failed else reward for reward, failed in checked]


def _scheduled_groups(run: Run, plan, budget: int, with_logprobs: bool):
    """The step's groups through :class:`redrl.scheduling.RolloutScheduler` (dynamic sampling, tail
    batching): ``(chosen, rollouts, logprobs, rewards, record)``."""
    G, method, eos = run.cfg.rollout.group_size, plan.method, run.tokenizer.eos_token_id

    def sample(prompts: list[int], round_budget: int) -> list[GroupOutcome]:
        rollouts, logprobs, rewards = _sample_groups(run, prompts, round_budget, with_logprobs=with_logprobs)
        outcomes = []
        for g, index in enumerate(prompts):
            rows = rollouts[g * G : (g + 1) * G]
            group_rewards = rewards[g * G : (g + 1) * G]
            failed_all = all(r is not None and r <= 0 for r in group_rewards)
            informative = (
                method.objective == "distill"
                or (method.on_all_fail != "none" and failed_all)  # ReLIFT's buffer, BREAD's prefixes act on them
                or is_informative(group_rewards, run.data.teacher_reward(index), with_teacher=method.offline)
            )
            truncated = any(len(row) >= round_budget and row[-1:] != [eos] for row in rows)
            payload = (rows, None if logprobs is None else logprobs[g * G : (g + 1) * G], group_rewards)
            outcomes.append(GroupOutcome(index, truncated, informative, sum(map(len, rows)), payload))
        return outcomes

    collected = run.scheduler_rounds.collect(run.sampler.next, sample, budget=budget, first=plan.prompts)
    chosen = [group.prompt for group in collected.groups]
    rollouts = [row for group in collected.groups for row in group.payload[0]]
    logprobs = [lp for group in collected.groups for lp in group.payload[1]] if with_logprobs else None
    rewards = [r for group in collected.groups for r in group.payload[2]]
    return chosen, rollouts, logprobs, rewards, collected.record()


def resolve_method(cfg: Config) -> Method:
    """``train.method``'s settings, with a distillation method's rows following ``distill.prefix``
    (teacher: the traces, student: rollouts)."""
    method = METHODS[cfg.train.method]
    if method.objective != "distill":
        return method
    return with_prefix(method, cfg.distill.prefix or method.distill_prefix)


def _train_stage(cfg: Config, *, progress: bool = True) -> Path:
    """One single-stage run: :func:`setup`, then the loop."""
    from tqdm.auto import tqdm

    method = resolve_method(cfg)
    run = setup(cfg, method, progress=progress)
    par, out, steps, data, tokenizer = run.par, run.out, run.steps, run.data, run.tokenizer
    G = cfg.rollout.group_size

    # SIGINT / SIGTERM (cluster preemption): finish the step, save, stop. A second Ctrl-C stops at once.
    requested: list[int] = []

    def on_signal(signum, frame):
        if requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested.append(signum)

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    evaluate_now = _periodic_evaluation(cfg, run) if cfg.train.eval_every else None
    metrics_path, rank_path = out / "metrics.jsonl", out / f"metrics-rank{par.rank}.jsonl"
    metrics_file = rank_file = None
    if par.is_main:  # a resumed run keeps the steps up to its checkpoint and redoes the rest
        kept = _load_metrics(metrics_path, run.start)
        metrics_path.write_text("".join(line + "\n" for line in kept))
        metrics_file = open(metrics_path, "a")
    if cfg.train.log_every_rank:
        kept = _load_metrics(rank_path, run.start)
        rank_path.write_text("".join(line + "\n" for line in kept))
        rank_file = open(rank_path, "a")
    bar = tqdm(
        range(run.start + 1, steps + 1),
        desc=f"train {method.name}",
        disable=not (progress and par.is_main),
        dynamic_ncols=True,
        initial=run.start,
        total=steps,
    )
    try:
        for step in bar:
            started = time.perf_counter()
            failures_before = sum(rewards_module.FAILURES.values())
            # the response window: rollout budget and teacher tokens trained (the length curriculum's, if on)
            window = run.curriculum.window if run.curriculum is not None else cfg.rollout.max_new_tokens
            with_logprobs = behaviour_logp(cfg)
            scheduling: dict = {}

            # 1-2. Rollouts: G samples of each prompt (with the sampler's log-probs when the importance
            # ratio uses them), graded with the evaluation's grader; the strategy then acts on groups
            # whose rollouts all failed.
            if run.pipeline is not None:  # sampled by the worker, at most k steps ago
                flight = run.pipeline.take(step)
                plan = StepPlan(flight.prompts, method)
                chosen, rollouts, logprobs = flight.prompts, flight.rollouts, flight.logprobs
                rewards = _grade(run, chosen, rollouts)
                scheduling = {"staleness": step - 1 - flight.version, "worker_seconds": flight.seconds}
            else:
                plan = run.strategy.plan(run.sampler, cfg.train.prompts_per_step)
                rollouts, logprobs, rewards = [], None, []
                if plan.method.rollouts and run.scheduler_rounds is not None and not plan.special:
                    chosen, rollouts, logprobs, rewards, scheduling = _scheduled_groups(
                        run, plan, window, with_logprobs
                    )
                else:
                    chosen = par.share(plan.prompts)  # this process's groups
                    if plan.method.rollouts:
                        rollouts, logprobs, rewards = _sample_groups(run, chosen, window, with_logprobs=with_logprobs)
            answers = [data.records[i]["answer"] for i in chosen]
            graded = [r for r in rewards if r is not None]  # the policy's own accuracy, logged below
            groups = StepRollouts(
                chosen,
                [data.prompts[i] for i in chosen],
                answers,
                [data.teacher[i][:window] for i in chosen],
                rollouts,
                rewards,
                logprobs,
                G,
            )
            extra = {**run.strategy.after_grading(groups, plan, par), **scheduling}
            rollout_seconds = time.perf_counter() - started

            # 3. Groups: G rollouts + the teacher row, advantages and group accuracy.
            batch = assemble_batch(
                groups.prompts,
                groups.rollouts,
                groups.rewards,
                groups.teacher,
                [data.teacher_reward(i) for i in chosen],
                group_size=G,
                method=plan.method,
                pad_id=tokenizer.pad_token_id,
                advantage_scale=cfg.loss.advantage_scale,
                advantage_eps=cfg.loss.advantage_eps,
                accuracy_includes_offline=cfg.loss.accuracy_includes_offline,
                rollout_logprobs=groups.logprobs,
            )
            if run.teacher_cache is not None:  # the teacher's log-probs on these traces, from the cache
                batch = run.teacher_cache.attach(batch, chosen)
            extra["reward_failures"] = sum(rewards_module.FAILURES.values()) - failures_before

            # 4. Loss and one optimizer step (skipped, and counted, when the loss or gradient is not finite).
            train_started = time.perf_counter()
            stats = optimization_step(
                run.scorer,
                run.optimizer,
                run.scheduler,
                run.regulator,
                batch,
                plan.method,
                run.step_settings,
                run.loss_settings(plan),
                scaler=run.scaler,
                par=par,
                reference=run.reference,
            )
            if run.curriculum is not None and not stats["skipped"]:  # the student's entropy on what it trained on
                run.curriculum.update(stats["h_rl"] if plan.method.rollouts else stats["h_sft"])
            if not stats["skipped"]:
                run.generator.sync_weights(run.model)  # the next rollouts come from the updated policy
            if run.pipeline is not None:  # the worker takes these weights, then samples step + k + 1
                run.pipeline.push_weights(run.model, step)
                if step + cfg.rollout.async_staleness + 1 <= steps:
                    _submit(run, run.pipeline, step + cfg.rollout.async_staleness + 1)
            train_seconds = time.perf_counter() - train_started
            run.skipped_in_a_row = run.skipped_in_a_row + 1 if stats["skipped"] else 0
            run.skipped_total += stats["skipped"]

            # 5. Log (numbers summed over processes; the main process writes them).
            record = {
                "step": step,
                **step_record(
                    par, batch, groups.rollouts, graded, tokenizer.eos_token_id, rollout_seconds, train_seconds, extra
                ),
                **stats,
                **scheduling,
                "trained_tokens": int(par.sum([float(batch.response_mask.sum())])[0]),
                "skipped_total": run.skipped_total,
            }
            record["rollout_seconds"], record["train_seconds"] = rollout_seconds, train_seconds
            record["step_time"] = time.perf_counter() - started
            record["time"] = time.time()  # wall clock (Unix seconds), to line runs up with other logs
            if evaluate_now and step % cfg.train.eval_every == 0:
                record.update(evaluate_now(step))
            record.update(run.strategy.record(plan, extra))
            if run.curriculum is not None:
                record["window"] = window
            if rank_file:
                rank_file.write(
                    json.dumps(
                        {
                            "step": step,
                            "rank": par.rank,
                            "w": stats["w"],
                            "h_rl": stats["h_rl"],
                            "h_sft": stats["h_sft"],
                            "prompts": chosen,
                        }
                    )
                    + "\n"
                )
                rank_file.flush()
            if metrics_file:
                metrics_file.write(json.dumps({k: _json_value(v) for k, v in record.items()}) + "\n")
                metrics_file.flush()
            if cfg.train.report_to != "none":  # the same numbers to the tracker (main process only)
                numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                par.accelerator.log({k: v for k, v in numbers.items() if math.isfinite(v) and k != "step"}, step=step)
            bar.set_postfix(
                {
                    key: f"{record[key]:.3g}"
                    for key in ("online_accuracy", "w", "h_rl", "h_sft", "online_length")
                    if isinstance(record.get(key), float) and math.isfinite(record[key])
                }
            )
            if stats["skipped"] and par.is_main:
                warnings.warn(
                    f"step {step}: non-finite loss or gradient, update skipped ({run.skipped_in_a_row} in a row)",
                    stacklevel=2,
                )

            # 6. Checkpoint; stop when asked to, or when the numbers keep failing.
            path = out / f"checkpoint-{step}"
            if cfg.train.save_every and step % cfg.train.save_every == 0 and step < steps:
                run.save(path, step)
            if run.skipped_in_a_row >= cfg.train.max_consecutive_skips:
                run.save(path, step)  # the weights are still those of the last good update
                raise NonFiniteTraining(
                    f"{run.skipped_in_a_row} steps in a row (up to step {step}) had a non-finite loss or "
                    f"gradient; training stopped with the last good weights in {path}"
                )
            if par.max(float(bool(requested))) > 0:
                if not path.exists():
                    run.save(path, step)
                raise TrainingStopped(requested[0] if requested else signal.SIGTERM, step, path)
    finally:
        if run.pipeline is not None and sys.exc_info()[0] is not None:
            run.pipeline.close()
        for file in (metrics_file, rank_file):
            if file:
                file.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if cfg.train.report_to != "none":
            par.accelerator.end_training()

    if cfg.train.save_every and not (out / f"checkpoint-{steps}").exists():
        run.save(out / f"checkpoint-{steps}", steps)  # the last step's state, for a later --resume
    final = out / "final"
    run.save(final, steps, model_card=model_card(cfg, method, steps, _load_metrics(metrics_path, steps)[-1:]))
    if run.pipeline is not None:
        run.pipeline.close()
    return final


def _periodic_evaluation(cfg: Config, run: Run):
    """``train.eval_every``: a function of the step that evaluates the current policy on
    ``train.eval_on`` and returns ``{"eval_accuracy", "eval_pass@k", "eval_length"}``; with
    ``train.keep_best`` it also saves the most accurate model so far as ``OUT/best``. Every process
    takes part (sharded weights are gathered); the random state of training is restored afterwards."""
    from redrl.data.offline import load_problems
    from redrl.evaluate import eval_settings, evaluate
    from redrl.paths import resolve_split

    source = cfg.train.eval_on
    path = resolve_split(cfg, source, progress=False) if source in ("val", "test") else source
    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"train.eval_on not found: {source}")
    problems, k, best = load_problems(path), cfg.eval.k, {"accuracy": -1.0}
    settings = eval_settings(cfg)
    if run.par.sharded:  # the fast engine needs every weight on this process
        settings["engine"] = "hf"

    def evaluate_now(step: int) -> dict:
        cuda = [run.par.device] if run.par.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), run.par.full_parameters(run.scorer):
            torch.manual_seed(cfg.train.seed * 1_000_003 + step)
            result = evaluate(
                run.model,
                run.tokenizer,
                problems,
                k=k,
                temperature=cfg.eval.temperature,
                max_new_tokens=cfg.eval.max_new_tokens,
                grader=cfg.data.grader,
                **settings,
            )
        numbers = {
            "eval_accuracy": result["accuracy"],
            f"eval_pass@{k}": result[f"pass@{k}"],
            "eval_length": result["length"],
        }
        accuracy = run.par.max(result["accuracy"])  # every process takes the same decision (saving is collective)
        if cfg.train.keep_best and accuracy > best["accuracy"]:
            best["accuracy"] = accuracy
            run.save(run.out / "best", step, model_card=model_card(cfg, run.method, step, [json.dumps(numbers)]))
        return numbers

    return evaluate_now


def model_card(cfg: Config, method: Method, steps: int, last: list[str]) -> str:
    """The ``README.md`` of a final model: what it is, how it was trained, the last step's numbers."""
    from redrl import __version__

    record = json.loads(last[0]) if last else {}
    shown = [
        ("online accuracy", "online_accuracy"),
        ("evaluated accuracy", "eval_accuracy"),
        ("H_rl", "h_rl"),
        ("H_sft", "h_sft"),
        ("w", "w"),
        ("response length", "online_length"),
    ]
    numbers = ", ".join(f"{name} {record[key]:.3g}" for name, key in shown if isinstance(record.get(key), (int, float)))
    base = cfg.model.path
    front = ["---", "library_name: transformers", f"tags: [redrl, {method.name}]"]
    if base.count("/") == 1 and not base.startswith((".", "/", "~")):
        front.append(f"base_model: {base}")
    front.append("---")
    return "\n".join(
        [
            *front,
            "",
            f"# {method.name} on {Path(cfg.data.train).name or cfg.data.train}",
            "",
            f"Trained with [redrl](https://arxiv.org/abs/2508.16677) {__version__}: method `{method.name}` ({method.source}).",
            "",
            f"- starting model: `{base}`",
            f"- training data: `{cfg.data.train}`",
            f"- {steps} optimizer steps of {cfg.train.prompts_per_step} prompts"
            + (f" × {cfg.rollout.group_size} rollouts" if method.rollouts else "")
            + (" + 1 teacher trace" if method.offline else "")
            + f", learning rate {cfg.optim.lr:g}, seed {cfg.train.seed}",
            f"- last step: {numbers}" if numbers else "- last step: no numbers logged",
            "",
            "Load it with `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` (the chat",
            "template is the tokenizer's). The run's whole config:",
            "",
            "```yaml",
            yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip(),
            "```",
            "",
        ]
    )


def _json_value(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


#: What a run leaves in its directory: the first four mark a run that took a step.
_RUN_MARKS = ("final", "checkpoint-*", ".tmp-checkpoint-*", "stage-*")
_RUN_FILES = (*_RUN_MARKS, "metrics.jsonl", "metrics-rank*.jsonl", "config.yaml")


def _claim(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Make ``out`` this run's: refuse a directory that already holds a run (a checkpoint, a final
    model or logged steps) unless resuming it, or (``overwrite``) remove that run's files first, so
    no old checkpoint is taken for this run's. A run that stopped before its first step holds none."""
    metrics = out / "metrics.jsonl"
    held = sorted({path for pattern in _RUN_MARKS for path in out.glob(pattern)})
    held += [metrics] if metrics.is_file() and metrics.stat().st_size else []
    if held and not resume and not overwrite:
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in held[:4]) + (", ..." if len(held) > 4 else "")
        raise ValueError(
            f"train.out {out} already holds a run ({names}); pass --resume to continue it or --overwrite to replace it"
        )
    if overwrite and not resume:
        for path in sorted({path for pattern in _RUN_FILES for path in out.glob(pattern)}):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    _writable(out)


def _writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"train.out {out} is not writable ({error.strerror or error})") from None


def _load_metrics(path: Path, until: int) -> list[str]:
    """The lines of a metrics file up to and including step ``until`` (a resumed run redoes the rest)."""
    if not path.is_file():
        return []
    return [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= until]
