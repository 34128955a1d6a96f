"""The training loop, read top to bottom: rollout → grade → group → loss → step → log → checkpoint.

``train(cfg)`` runs one method (:mod:`redrl.methods`) for ``cfg.train.steps`` optimizer steps.
Each step takes ``prompts_per_step`` prompts in a seeded order, samples ``G`` rollouts of each with
the current policy, grades them with the same grader evaluation uses, puts each prompt's rollouts
and its teacher trace into one group, and takes one AdamW step on the method's loss (one optimizer
step per rollout batch, as the paper's launch script: train batch = rollout batch). Metrics go to
``OUT/metrics.jsonl``, one object per step; the final model to ``OUT/final`` in Hugging Face format
with the trainer state beside it.

The loop never asks which method it runs. Set-up and every refusal live in :mod:`redrl.run_setup`;
the rollouts of a step in :mod:`redrl.rollout_phase`; groups in :mod:`redrl.batch`; the
optimization step in :mod:`redrl.step`; what a method does beyond its loss in its strategy
(:mod:`redrl.strategies`), its auxiliary models (:mod:`redrl.auxiliary`) and its prompt
conditioning (:mod:`redrl.conditioning`); the run's files in :mod:`redrl.run_log` and
:mod:`redrl.run_dir`; a staged method (SFT→GRPO) runs its stages through :mod:`redrl.staged`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from redrl import rewards as rewards_module
from redrl.batch import assemble_batch
from redrl.config import Config
from redrl.errors import GradingFailed, NonFiniteTraining, TrainingStopped
from redrl.methods import METHODS
from redrl.rollout_phase import collect, submit
from redrl.run_dir import claim, hold
from redrl.run_log import RunLog, model_card, step_line
from redrl.run_setup import Run, resolve_learning_rate, resolve_method, setup
from redrl.staged import train_staged
from redrl.step import optimization_step, step_record

__all__ = ["GradingFailed", "NonFiniteTraining", "Run", "StopRequest", "TrainingStopped", "setup", "train"]


def train(cfg: Config, *, progress: bool = True) -> Path:
    """Train ``cfg.train.method``; return the directory of the final checkpoint.

    Under ``accelerate launch`` / ``torchrun`` every process runs this function on its share of
    each step's prompts (:mod:`redrl.parallel`); the main process writes logs and checkpoints.
    With ``train.resume`` the run continues from the newest complete checkpoint in ``train.out``
    and repeats exactly what the uninterrupted run would have done. SIGINT / SIGTERM stop it at
    the next step boundary with a checkpoint (:class:`TrainingStopped`)."""
    cfg = resolve_learning_rate(cfg)  # optim.lr, or the method's value in optim.lr_sweep
    method = METHODS[cfg.train.method]
    main = int(os.environ.get("RANK", "0")) == 0  # the process that writes the run's files
    with hold(Path(cfg.train.out)) if main else contextlib.nullcontext():  # one live run per directory
        if method.stages:
            if main:
                claim(Path(cfg.train.out), resume=cfg.train.resume, overwrite=cfg.train.overwrite)
            return train_staged(cfg, method, _train_stage, progress=progress)
        return _train_stage(cfg, progress=progress)


def _train_stage(cfg: Config, *, progress: bool = True) -> Path:
    """One single-stage run: :func:`redrl.run_setup.setup`, the loop, the final model."""
    from tqdm.auto import tqdm

    run = setup(cfg, resolve_method(cfg), progress=progress)
    log = None
    stop = StopRequest(say=run.par.is_main)
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        log = RunLog(cfg, run.par, run.out, run.start)
        on_terminal = progress and run.par.is_main and sys.stderr.isatty()
        bar = tqdm(
            range(run.start + 1, run.steps + 1),
            desc=f"train {run.method.name}",
            disable=not on_terminal,  # elsewhere (a file, CI) a plain line every train.log_every steps
            dynamic_ncols=True,
            initial=run.start,
            total=run.steps,
        )
        every = cfg.train.log_every if run.par.is_main and not on_terminal else 0
        for step in bar:
            stop.step = step
            record = _step(run, step, log)
            bar.set_postfix(
                {
                    key: f"{record[key]:.3g}"
                    for key in ("online_accuracy", "w", "h_rl", "h_sft", "online_length")
                    if isinstance(record.get(key), float) and math.isfinite(record[key])
                }
            )
            if every and (step % every == 0 or step == run.steps):
                print(step_line(record, run.steps), file=sys.stderr, flush=True)
            _checkpoint(run, step, record, stop.requested)
        if cfg.train.save_every and not (run.out / f"checkpoint-{run.steps}").exists():
            run.save(run.out / f"checkpoint-{run.steps}", run.steps)  # the last step's state, for a later --resume
    finally:
        if log is not None:
            log.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if run.pipeline is not None and sys.exc_info()[0] is not None:
            run.pipeline.close()
    try:
        final = run.out / "final"
        run.save(
            final,
            run.steps,
            model_card=model_card(cfg, run.method, run.steps, log.last(run.steps), log.last_evaluation(run.steps)),
        )
    finally:
        if run.pipeline is not None:  # closed however the final save ends
            run.pipeline.close()
    return final


class StopRequest:
    """The handler of SIGINT / SIGTERM (Ctrl-C, cluster preemption): the run finishes its step, saves
    and stops; the request is acknowledged at once. A second Ctrl-C stops at once."""

    def __init__(self, *, say: bool = True):
        self.requested: list[int] = []
        self.step, self.say = 0, say

    def __call__(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested.append(signum)
        if self.say:
            from tqdm.auto import tqdm

            tqdm.write(
                f"redrl: {signal.Signals(signum).name} received: stopping after step {self.step} and saving a "
                "checkpoint" + ("; press Ctrl-C again to stop at once" if signum == signal.SIGINT else ""),
                file=sys.stderr,
            )


def _step(run: Run, step: int, log: RunLog) -> dict:
    """One step: rollouts, groups, the loss and its update, the weights to the engines, the record."""
    cfg, par, data = run.cfg, run.par, run.data
    started = time.perf_counter()
    failures_before, graded_before = sum(rewards_module.FAILURES.values()), rewards_module.GRADED["answers"]
    # the response window: rollout budget and teacher tokens trained (the length curriculum's, if on)
    window = run.curriculum.window if run.curriculum is not None else cfg.rollout.max_new_tokens

    # 1-2. Rollouts, graded with the evaluation's grader; the strategy then acts on the groups.
    plan, groups, scheduling = collect(run, step, window)
    grades = groups.rewards if groups.correct is None else groups.correct
    graded = [r for r in grades if r is not None]  # the policy's own accuracy, logged below
    extra = {**run.strategy.after_grading(groups, plan, par), **scheduling}
    rollout_seconds = time.perf_counter() - started

    # 3. Groups: G rollouts + the teacher row, advantages and group accuracy; what auxiliaries add.
    batch = assemble_batch(
        groups.prompts,
        groups.rollouts,
        groups.rewards,
        groups.teacher,
        [data.teacher_reward(i) for i in groups.chosen],
        group_size=cfg.rollout.group_size,
        method=plan.method,
        pad_id=run.tokenizer.pad_token_id,
        advantage_scale=cfg.loss.advantage_scale,
        advantage_eps=cfg.loss.advantage_eps,
        accuracy_includes_offline=cfg.loss.accuracy_includes_offline,
        rollout_logprobs=groups.logprobs,
        companions=groups.companions,
        advantage=cfg.loss.advantage,
    )
    for aux in run.auxiliaries:
        batch = aux.attach(batch, groups.chosen)
    extra["reward_failures"] = sum(rewards_module.FAILURES.values()) - failures_before
    extra["graded_answers"] = rewards_module.GRADED["answers"] - graded_before

    # 4. Loss and the optimizer update (skipped, and counted, when the loss or gradient is not finite;
    # none while an auxiliary holds the policy, as critics warming up).
    train_started = time.perf_counter()
    held = any(getattr(aux, "holds_policy", False) for aux in run.auxiliaries)
    stats = optimization_step(
        run.scorer,
        run.optimizer,
        run.scheduler,
        run.regulator,
        batch,
        plan.method,
        dataclasses.replace(run.step_settings, updates=0) if held else run.step_settings,
        run.loss_settings(plan),
        scaler=run.scaler,
        par=par,
        reference=run.reference,
    )
    aux_metrics = {}
    for aux in run.auxiliaries:  # models beside the policy take their own steps
        aux_metrics.update(aux.update(batch, stats))
    if run.curriculum is not None and not stats["skipped"]:  # the student's entropy on what it trained on
        run.curriculum.update(stats["h_rl"] if plan.method.rollouts else stats["h_sft"])
    if not stats["skipped"]:
        run.generator.sync_weights(run.model)  # the next rollouts come from the updated policy
    if run.pipeline is not None:  # the worker takes these weights, then samples step + k + 1
        run.pipeline.push_weights(run.model, step)
        if step + cfg.rollout.async_staleness + 1 <= run.steps:
            submit(run, run.pipeline, step + cfg.rollout.async_staleness + 1)
    train_seconds = time.perf_counter() - train_started
    run.skipped_in_a_row = run.skipped_in_a_row + 1 if stats["skipped"] else 0
    run.skipped_total += stats["skipped"]

    # 5. Log (numbers summed over processes; the main process writes them).
    eos = run.tokenizer.eos_token_id
    record = {
        "step": step,
        **step_record(par, batch, groups.rollouts, graded, eos, rollout_seconds, train_seconds, extra),
        **stats,
        **scheduling,
        "trained_tokens": int(par.sum([float(batch.response_mask.sum())])[0]),
        "skipped_total": run.skipped_total,
    }
    record["rollout_seconds"], record["train_seconds"] = rollout_seconds, train_seconds
    record["step_time"] = time.perf_counter() - started
    record["time"] = time.time()  # wall clock (Unix seconds), to line runs up with other logs
    if run.evaluation is not None and run.evaluation.due(step):
        record.update(run.evaluation(step))
    record.update(run.strategy.record(plan, extra))
    record.update(aux_metrics)
    if run.curriculum is not None:
        record["window"] = window
    rank = {"step": step, "rank": par.rank, "w": stats["w"], "h_rl": stats["h_rl"], "h_sft": stats["h_sft"]}
    log.write(record, {**rank, "prompts": groups.chosen})
    if stats["skipped"] and par.is_main:
        warnings.warn(
            f"step {step}: non-finite loss or gradient, update skipped ({run.skipped_in_a_row} in a row)",
            stacklevel=2,
        )
    failed, answers = record.get("reward_failures", 0), record.get("graded_answers", 0)
    failing = answers > 0 and failed / answers > cfg.train.max_grading_failures
    run.failing_in_a_row = run.failing_in_a_row + 1 if failing else 0
    if failing and par.is_main:
        warnings.warn(
            f"step {step}: grading raised or overran on {failed} of {answers} answers; the run stops after "
            f"{cfg.train.max_consecutive_skips} such steps in a row (this is {run.failing_in_a_row})",
            stacklevel=2,
        )
    return record


def _checkpoint(run: Run, step: int, record: dict, requested: list[int]) -> None:
    """Save every ``train.save_every`` steps; stop when asked to, or when the numbers keep failing."""
    cfg, path = run.cfg, run.out / f"checkpoint-{step}"
    if cfg.train.save_every and step % cfg.train.save_every == 0 and step < run.steps:
        run.save(path, step)
    if run.skipped_in_a_row >= cfg.train.max_consecutive_skips:
        run.save(path, step)  # the weights are still those of the last good update
        raise NonFiniteTraining(
            f"{run.skipped_in_a_row} steps in a row (up to step {step}) had a non-finite loss or "
            f"gradient; training stopped with the last good weights in {path}"
        )
    if run.failing_in_a_row >= cfg.train.max_consecutive_skips:
        run.save(path, step)
        raise GradingFailed(
            f"grading raised or overran on more than {cfg.train.max_grading_failures:.0%} of the answers in "
            f"{run.failing_in_a_row} steps in a row (up to step {step}): the grader or the reference answers are "
            f"broken (data.grader={cfg.data.grader}); training stopped, its weights saved in {path}"
        )
    if run.par.max(float(bool(requested))) > 0:
        if not path.exists():
            run.save(path, step)
        raise TrainingStopped(requested[0] if requested else signal.SIGTERM, step, path)
