"""The training loop, read top to bottom: rollout → score → group → loss → step → log → checkpoint.

``train(cfg)`` runs one method (:mod:`redrl.methods`) for ``cfg.train.steps`` optimizer steps.
Each step takes ``prompts_per_step`` prompts in a seeded order, samples ``G`` rollouts of each with
the current policy, grades them with the same grader evaluation uses, puts each prompt's rollouts
and its teacher trace into one group, and takes one AdamW step on the method's loss (one optimizer
step per rollout batch, as the paper's launch script: train batch = rollout batch). Metrics go to
``OUT/metrics.jsonl``, one object per step; the final model to ``OUT/final`` in Hugging Face format
with the trainer state beside it.

Three baselines change the step itself (:class:`redrl.methods.Method`): ReLIFT turns a step into
an SFT step when its buffer of all-fail prompts is full, BREAD re-samples all-fail groups after a
teacher prefix (:func:`teacher_prefix_rollouts`), and a staged method (SFT→GRPO) runs two
trainings one after the other (:func:`_train_staged`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from redrl import checkpoint
from redrl.batch import Batch, collate
from redrl.config import Config
from redrl.data.offline import load_offline
from redrl.methods import METHODS, Method
from redrl.modeling import (TokenScorer, apply_lora, autocast, encode_prompt, encode_response, load_model_and_tokenizer,
                            trainable_parameters)
from redrl.objectives import aggregation_units, group_accuracy, group_advantages, red_loss, sft_loss, srft_loss
from redrl.parallel import Parallel
from redrl.regulator import EntropyRegulator
from redrl import rewards as rewards_module
from redrl.rewards import grade, grade_checked
from redrl.rollout import FastGenerator, HFGenerator, VLLMGenerator

__all__ = ["PromptSampler", "assemble_batch", "resolve_model", "resolve_paths", "resolve_split", "teacher_prefix_rollouts", "train"]


def resolve_model(model: str) -> str:
    """A model path or Hub id as ``from_pretrained`` takes it; ``tiny`` builds the embedded base.
    A path that looks local and does not exist is an error here, not deep inside transformers."""
    if model == "tiny":
        from redrl.tiny import ensure_tiny

        return str(ensure_tiny().base)
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1  # else maybe a Hub id "org/name"
    if looks_local and not Path(model).expanduser().exists():
        raise FileNotFoundError(f"model.path not found: {model}")
    return model


def resolve_paths(cfg: Config, *, need_train: bool = True, need_test: bool = True,
                  progress: bool = True) -> tuple[str, str, str]:
    """``(model, train data, test data)``, building the embedded default for any that is ``tiny``
    (data that is not needed is returned as ``""``; ``progress``: the build's progress bar)."""
    if need_test and not cfg.data.test:
        raise ValueError("data.test is not set: give test problems (--data FILE) or evaluate on --benchmarks")
    model, train_data, test_data = cfg.model.path, cfg.data.train if need_train else "", cfg.data.test if need_test else ""
    if model != "tiny":
        resolve_model(model)
    for name, value in (("data.train", train_data), ("data.test", test_data)):
        maybe_hub = name == "data.train" and value.count("/") == 1 and not value.startswith((".", "/", "~"))
        if value and value != "tiny" and not maybe_hub and not Path(value).expanduser().exists():
            raise FileNotFoundError(f"{name} not found: {value}")
    if "tiny" in (model, train_data, test_data):
        from redrl.tiny import ensure_tiny

        assets = ensure_tiny(progress=progress)
        model = str(assets.base) if model == "tiny" else model
        train_data = str(assets.train) if train_data == "tiny" else train_data
        test_data = str(assets.test) if test_data == "tiny" else test_data
    return model, train_data, test_data


def resolve_split(cfg: Config, split: str = "test", *, progress: bool = True) -> str:
    """The evaluation problems of ``split``: ``data.test`` or ``data.val`` (``tiny``: the embedded default's)."""
    if split not in ("test", "val"):
        raise ValueError(f"split must be test or val; got {split!r}")
    value = cfg.data.test if split == "test" else cfg.data.val
    if not value:
        raise ValueError(f"data.{split} is not set")
    if value == "tiny":
        from redrl.tiny import ensure_tiny

        return str(getattr(ensure_tiny(progress=progress), split))
    if not Path(value).expanduser().exists():
        raise FileNotFoundError(f"data.{split} not found: {value}")
    return value


class PromptSampler:
    """Prompt indices in epochs, each a fresh seeded permutation; its state is three numbers."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.position = size, seed, 0

    def next(self, count: int) -> list[int]:
        out = []
        for _ in range(count):
            epoch, offset = divmod(self.position, self.size)
            order = list(range(self.size))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            out.append(order[offset])
            self.position += 1
        return out

    def state_dict(self) -> dict:
        return {"size": self.size, "seed": self.seed, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if (state["size"], state["seed"]) != (self.size, self.seed):
            raise ValueError(f"the checkpoint's prompt order ({state['size']} prompts, seed {state['seed']}) does not match "
                             f"this run's ({self.size} prompts, seed {self.seed}): different data or train.seed")
        self.position = int(state["position"])


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
) -> Batch:
    """Groups of ``G`` rollouts (if the method samples) + the teacher row (if it uses one), per prompt.

    ``rollouts`` is prompt-major (rows ``i*G .. i*G+G-1`` answer prompt ``i``). Advantages are
    group-relative over every row of the group; the group accuracy ``r̄`` over its rollouts.
    ``rollout_logprobs`` (one per rollout token, from the sampler) become ``Batch.sampler_logp``.
    """
    g = group_size if method.rollouts else 0
    rows_prompt, rows_response, rewards, offline, group_ids = [], [], [], [], []
    for i, prompt in enumerate(prompts):
        members = [(rollouts[i * g + j], rollout_rewards[i * g + j], False) for j in range(g)]
        if method.offline:
            members.append((teacher[i], teacher_rewards[i], True))
        for response, reward, is_teacher in members:
            rows_prompt.append(prompt)
            rows_response.append(response)
            rewards.append(math.nan if reward is None else float(reward))
            offline.append(is_teacher)
            group_ids.append(i)
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
                    raise ValueError(f"rollout {i * g + j}: {len(values)} log-probs for {len(rollouts[i * g + j])} tokens")
                sampler_logp[row + j, len(prompt) - 1 : len(prompt) - 1 + len(values)] = torch.tensor(values)
            row += rows_per_group
    rewards_t = torch.tensor(rewards, dtype=torch.float32)
    is_offline = torch.tensor(offline, dtype=torch.bool)
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        rewards=rewards_t,
        advantages=group_advantages(rewards_t, rows_per_group, scale=advantage_scale, eps=advantage_eps),
        is_offline=is_offline,
        group_id=torch.tensor(group_ids, dtype=torch.long),
        group_accuracy=group_accuracy(rewards_t, is_offline, rows_per_group, include_offline=accuracy_includes_offline),
        sampler_logp=sampler_logp,
    )


@dataclass
class _Pass:
    """Per-token results of one forward over a micro-batch."""

    rows: Batch
    logp: torch.Tensor
    entropy: torch.Tensor


def _forward(scorer, rows: Batch) -> _Pass:
    logp, entropy = scorer(rows.input_ids, rows.attention_mask, rows.loss_mask())
    return _Pass(rows, logp, entropy)


def _entropy_sums(passes: list[_Pass]) -> list[float]:
    """``[Σ H over rollout tokens, their count, Σ H over teacher tokens, their count]`` of this process."""
    out = []
    for offline in (False, True):
        select = [p.rows.loss_mask() & (p.rows.is_offline.unsqueeze(-1) == offline) for p in passes]
        out += [sum(float((p.entropy.detach() * m).sum()) for p, m in zip(passes, select)), sum(int(m.sum()) for m in select)]
    return out


def _loss(method: Method, cfg: Config, current: _Pass, old_logp: torch.Tensor, w: float, h_rl: float, sft_entropy_coef: float):
    rows, mask = current.rows, current.rows.loss_mask()
    if method.objective == "sft":
        return sft_loss(current.logp, mask, entropy=current.entropy, entropy_coef=sft_entropy_coef), {}
    loss_cfg = cfg.loss
    if method.objective == "srft":
        return srft_loss(
            current.logp, old_logp, rows.advantages, rows.rewards, mask, rows.is_offline, torch.tensor(h_rl),
            eps_low=loss_cfg.eps_low, eps_high=loss_cfg.eps_high, sft_coef=cfg.baselines.srft_sft_coef,
            rl_coef=cfg.baselines.srft_rl_coef, aggregation=loss_cfg.aggregation,
            norm_constant=loss_cfg.norm_constant or cfg.rollout.max_new_tokens,
        )
    return red_loss(
        current.logp, old_logp, rows.advantages, mask, rows.is_offline, rows.group_accuracy, w,
        eps_low=loss_cfg.eps_low, eps_high=loss_cfg.eps_high,
        offline_ratio=loss_cfg.offline_ratio or method.offline_ratio, gamma=loss_cfg.luffy_gamma,
        aggregation=loss_cfg.aggregation, clip_offline=loss_cfg.clip_offline,
        norm_constant=loss_cfg.norm_constant or cfg.rollout.max_new_tokens,
    )


#: What red_loss reports, logged every step (NaN where a method has no such quantity).
LOSS_METRICS = ("loss_on", "loss_off", "clip_fraction", "ratio_mean", "offline_ratio_mean", "pi_off_mean", "offline_pi_mean")


def optimization_step(
    scorer, optimizer, scheduler, regulator: EntropyRegulator, batch: Batch, method: Method, cfg: Config, *,
    sft_entropy_coef: float = 0.0, scaler: torch.amp.GradScaler | None = None, par: Parallel | None = None,
) -> dict:
    """Entropies → regulator weight ``w`` → loss (accumulated over micro-batches) → one AdamW step.

    ``scorer`` is a :class:`redrl.modeling.TokenScorer` (wrapped by ``par`` when several processes
    train). Forward passes and the loss run under ``cfg.train.mixed_precision`` autocast on the
    model's device; ``scaler`` (fp16) scales the loss and skips steps with non-finite gradients.
    ``sft_entropy_coef`` adds ``-coef·H`` to the SFT objective (ReLIFT's SFT step).

    With several processes, ``batch`` is this process's groups: the entropies, the loss normaliser
    and every reported number are summed over processes, and each process's loss is scaled by the
    number of processes (DDP averages gradients), so the update is the one a single process would
    take on all the groups."""
    par = par or Parallel(None)
    device = next(scorer.parameters()).device
    batch = batch.to(device)
    precision = cfg.train.mixed_precision

    def forward(rows: Batch) -> _Pass:
        with autocast(device, precision):
            return _forward(scorer, rows)

    size = cfg.train.micro_batch_size
    if len(batch) > size:
        # Rows of similar length share a micro-batch, so little of it is padding; the loss is a
        # weighted sum over micro-batches, so the order does not change the update.
        batch = batch.rows(torch.argsort(batch.attention_mask.sum(-1), stable=True))
    micro = [batch.rows(slice(start, start + size)) for start in range(0, len(batch), size)]
    aggregation = "token-mean" if method.objective == "sft" else cfg.loss.aggregation

    if len(micro) == 1:
        # One pass: entropies, old log-probs and the loss all come from the same forward.
        passes = [forward(micro[0])]
        old_logps = [passes[0].logp.detach()]
    else:
        # Entropies and old log-probs first (no grad, same parameters), then the loss passes.
        with torch.no_grad():
            passes = [forward(rows) for rows in micro]
        old_logps = [p.logp for p in passes]
    if cfg.rollout.old_logp == "sampler" and batch.sampler_logp is not None:
        # The sampler's own log-probs for rollout tokens (the importance ratio then also corrects
        # any mismatch between the sampling engine and the trainer); recomputed ones elsewhere.
        old_logps = [torch.where(torch.isnan(rows.sampler_logp), old, rows.sampler_logp.to(old.dtype))
                     for rows, old in zip(micro, old_logps)]
    units = [int(aggregation_units(rows.loss_mask(), aggregation)) for rows in micro]
    rl_sum, rl_count, sft_sum, sft_count, total_units = par.sum([*_entropy_sums(passes), sum(units)])
    h_rl = rl_sum / rl_count if rl_count else math.nan
    h_sft = sft_sum / sft_count if sft_count else math.nan
    regulator_before = regulator.state_dict()  # restored if this step turns out not to be finite
    w = regulator.update(h_rl, h_sft) if method.regulator else 1.0

    loss_value = 0.0
    # Loss metrics are averaged over micro-batches (and processes) with the loss's own weights; a
    # metric that is undefined in a micro-batch (e.g. π_off without teacher rows) is left out.
    sums = {name: 0.0 for name in LOSS_METRICS}
    weights = {name: 0.0 for name in LOSS_METRICS}
    for index, rows in enumerate(micro):
        last = index == len(micro) - 1
        with par.accumulate(scorer, last):
            current = passes[0] if len(micro) == 1 else forward(rows)
            with autocast(device, precision):
                loss, metrics = _loss(method, cfg, current, old_logps[index], w, h_rl, sft_entropy_coef)
            share = units[index] / max(total_units, 1)
            scaled = loss * share * par.world
            par.backward(scaler.scale(scaled) if scaler else scaled)
        loss_value += loss.item() * share
        for name, value in metrics.items():
            if name in sums and math.isfinite(value.item()):
                sums[name] += value.item() * share
                weights[name] += share
    reduced = par.sum([loss_value, *sums.values(), *weights.values()])
    loss_value, sums, weights = reduced[0], reduced[1 : 1 + len(sums)], reduced[1 + len(sums) :]
    summed = {name: total / weight if weight else math.nan for name, total, weight in zip(LOSS_METRICS, sums, weights)}
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = par.clip_grad_norm(scorer, trainable_parameters(scorer), cfg.optim.max_grad_norm)
    lr = scheduler.get_last_lr()[0]
    # A non-finite loss or gradient skips the update: weights, optimizer, schedule and regulator stay
    # as they were. Under fp16 the loss scaler skips overflowing steps itself (reported as
    # scaler_skipped, not counted: it happens while the scale calibrates); the schedule and the
    # regulator then stay too. (Under DeepSpeed its engine steps inside the last backward pass.)
    finite = math.isfinite(loss_value) and (scaler is not None or math.isfinite(grad_norm))
    scaler_skipped = 0
    if finite and scaler:
        scale = scaler.get_scale()
        scaler.step(optimizer)  # skipped when the unscaled gradients are not finite
        scaler.update()
        scaler_skipped = int(scaler.get_scale() < scale)  # an overflow lowers the scale: fp16's own skip, not counted
    elif finite:
        optimizer.step()
    elif scaler:
        scaler.update()  # closes this step for the scaler (it was unscaled above)
    if not finite or scaler_skipped:
        optimizer.zero_grad(set_to_none=True)
        regulator.load_state_dict(regulator_before)
        return {"loss": loss_value, **summed, "h_rl": h_rl, "h_sft": h_sft, "delta_h_rl": math.nan, "delta_h_sft": math.nan,
                "w": math.nan, "grad_norm": grad_norm, "lr": lr, "skipped": int(not finite), "scaler_skipped": scaler_skipped}
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss_value, **summed, "h_rl": h_rl, "h_sft": h_sft, "delta_h_rl": regulator.delta_h_rl if method.regulator else math.nan,
            "delta_h_sft": regulator.delta_h_sft if method.regulator else math.nan, "w": w,
            "grad_norm": grad_norm, "lr": lr, "skipped": 0, "scaler_skipped": 0}


def build_scheduler(optimizer, schedule: str, warmup_steps: int, total_steps: int, *, min_ratio: float = 0.0):
    """Linear warm-up, then constant, linear or cosine decay from lr to ``lr * min_ratio``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
        if schedule == "cosine":
            return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def save_checkpoint(path: Path, par: Parallel, scorer, tokenizer, optimizer, scheduler, regulator, sampler, step: int,
                    cfg: Config, state: dict | None = None) -> None:
    """Write a complete checkpoint to ``path`` or leave the previous ones untouched (:mod:`redrl.checkpoint`).

    Call it on every process: sharded weights (FSDP, DeepSpeed) are gathered first and every process
    writes its generator state; the main process writes the rest into a temporary directory, lists
    it in the manifest and renames it into place. Under LoRA the model is the adapter and the base
    model's config. A sharded optimizer's state is not saved (those runs resume without it).
    ``state`` holds the loop's own state (ReLIFT buffer, loss scaler, skip counter)."""
    weights = par.state_dict(scorer) if par.sharded else None  # a collective: every rank takes part
    tmp = path.parent / f".tmp-{path.name}"
    failed = None
    if par.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    par.wait()
    try:
        checkpoint.save_rng(tmp, par.rank)
    except Exception as error:  # noqa: BLE001 - OSError, or safetensors' own error on a full disk
        failed = error
    par.wait()  # every process's part is in place before the manifest lists it
    try:
        if par.is_main and failed is None:
            model = par.unwrap(scorer).model
            if weights is not None:
                model.save_pretrained(tmp, state_dict={key.removeprefix("model."): value for key, value in weights.items()})
            else:
                model.save_pretrained(tmp)
            if hasattr(model, "peft_config"):
                model.get_base_model().config.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            checkpoint.save_training_state(tmp, step=step, optimizer=optimizer, scheduler=scheduler, regulator=regulator,
                                           sampler=sampler, state={**(state or {}), "processes": par.world},
                                           config=cfg.to_dict(), save_optimizer=not par.sharded)
            checkpoint.write_manifest(tmp)
    except Exception as error:  # noqa: BLE001 - as above
        failed = error
    if par.distributed and par.max(1.0 if failed else 0.0) > 0 and failed is None:
        failed = OSError("another process could not write its part")
    if failed is not None:
        if par.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = next((p.name for _, p in checkpoint.list_checkpoints(path.parent) if p != path), None)
        kept = f"the previous checkpoint ({previous}) is intact" if previous else "there is no earlier checkpoint"
        raise checkpoint.CheckpointError(f"could not write {path}: {getattr(failed, 'strerror', None) or failed}; {kept}") from failed
    if par.is_main:
        if path.exists():  # an older save under this name (a rerun's final, a step redone after resuming)
            shutil.rmtree(path)
        os.replace(tmp, path)
        if path.name.startswith("checkpoint-"):
            checkpoint.rotate(path.parent, cfg.train.keep_last)
    par.wait()  # nobody reads the checkpoint before it is complete


def _json_value(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _all_failed(rewards: list[float | None], group: int, G: int) -> bool:
    """Every rollout of the group was graded and wrong."""
    members = rewards[group * G : (group + 1) * G]
    return all(r is not None and r <= 0 for r in members)


def teacher_prefix_rollouts(
    generator, tokenizer, prompts: list[list[int]], rollouts: list[list[int]], rewards: list[float | None],
    teacher: list[list[int]], answers: list[str], *, group_size: int, fractions: tuple[float, ...], temperature: float,
    max_new_tokens: int, grader: str,
) -> tuple[list[list[int]], list[list[int]], list[float | None], dict]:
    """BREAD's branched rollouts (arXiv 2506.17211) for the groups whose ``G`` rollouts all failed.

    For each such group, the fractions are tried shortest first: the first ``⌊f·|trace|⌋`` tokens
    of the teacher trace are appended to the prompt and ``G`` continuations are sampled (the
    continuation's budget is what the prefix leaves of ``max_new_tokens``) and graded as
    prefix + continuation. The first fraction with a correct continuation replaces the group's
    prompt, rollouts and rewards; a group that no fraction rescues keeps its own failed rollouts.
    The prefix becomes part of the prompt, so the loss sees the student's tokens only.
    Returns new ``(prompts, rollouts, rewards)`` and ``{"bread_failed_groups", "bread_rescued", "bread_prefix"}``.
    """
    G = group_size
    prompts, rollouts, rewards = list(prompts), list(rollouts), list(rewards)
    pending = [i for i in range(len(prompts)) if _all_failed(rewards, i, G)]
    failed, rescued_fractions = len(pending), []
    for fraction in fractions:
        if not pending:
            break
        body = {i: teacher[i][:-1] if teacher[i][-1:] == [tokenizer.eos_token_id] else teacher[i] for i in pending}
        prefixes = {i: body[i][: max(1, int(fraction * len(body[i])))] for i in pending}
        budget = max_new_tokens - min(len(prefix) for prefix in prefixes.values())
        if budget < 1:
            break
        samples = generator.generate([prompts[i] + prefixes[i] for i in pending], G, temperature=temperature, max_new_tokens=budget)
        still = []
        for slot, i in enumerate(pending):
            continuations = [row[: max_new_tokens - len(prefixes[i])] for row in samples[slot * G : (slot + 1) * G]]
            texts = tokenizer.batch_decode([prefixes[i] + c for c in continuations], skip_special_tokens=True)
            scores = [grade(text, answers[i], grader) for text in texts]
            if any(score is not None and score > 0 for score in scores):
                prompts[i] = prompts[i] + prefixes[i]
                rollouts[i * G : (i + 1) * G] = continuations
                rewards[i * G : (i + 1) * G] = scores
                rescued_fractions.append(fraction)
            else:
                still.append(i)
        pending = still
    stats = {"bread_failed_groups": failed, "bread_rescued": len(rescued_fractions),
             "bread_prefix": sum(rescued_fractions) / len(rescued_fractions) if rescued_fractions else math.nan}
    return prompts, rollouts, rewards, stats


def _train_staged(cfg: Config, method: Method, progress: bool) -> Path:
    """Run ``method.stages`` one after the other, each from the previous stage's final checkpoint.

    Stage ``k`` writes to ``OUT/stage-k-NAME``; ``OUT/metrics.jsonl`` holds every stage's steps,
    numbered on (with a ``stage`` field), and ``OUT/final`` is the last stage's model.
    """
    out = Path(cfg.train.out)
    steps = cfg.train.steps
    if cfg.train.epochs is not None:  # epochs over every record (before data.max_prompt_tokens leaves any out)
        steps = total_steps(cfg, len(load_offline(resolve_paths(cfg, need_test=False)[1])))
    first = max(1, min(steps - 1, round(steps * cfg.baselines.staged_sft_fraction)))
    budgets = [first, steps - first]
    if len(method.stages) != 2 or budgets[1] < 1:
        raise ValueError(f"{method.name}: a staged method needs two stages and train.steps >= 2")
    model_path, offset, merged = cfg.model.path, 0, []
    for index, (name, stage_steps) in enumerate(zip(method.stages, budgets), start=1):
        stage_out = out / f"stage-{index}-{name}"
        lr = cfg.baselines.staged_sft_lr if name == "sft" and cfg.baselines.staged_sft_lr else cfg.optim.lr
        stage_cfg = dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, path=model_path), optim=dataclasses.replace(cfg.optim, lr=lr),
            train=dataclasses.replace(cfg.train, method=name, steps=stage_steps, epochs=None, out=str(stage_out)),
        )
        final = train(stage_cfg, progress=progress)
        for line in (stage_out / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            merged.append({**record, "step": record["step"] + offset, "stage": name})
        model_path, offset = str(final), offset + stage_steps
    par = Parallel.create(cfg.model.device)
    if par.is_main:
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        (out / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in merged))
        if (out / "final").exists():
            shutil.rmtree(out / "final")
        shutil.copytree(final, out / "final")
    par.wait()
    return out / "final"


@dataclass
class TrainingData:
    """The training set, tokenised: per record its prompt and teacher trace; the trace's reward is
    graded when the record is first drawn (grading 46k traces up front would take minutes)."""

    records: list[dict]
    prompts: list[list[int]]
    teacher: list[list[int]]
    grader: str
    _rewards: dict[int, float | None] = dataclasses.field(default_factory=dict, repr=False)

    def teacher_reward(self, index: int) -> float | None:
        """The grade of record ``index``'s whole teacher trace (before any truncation)."""
        if index not in self._rewards:
            record = self.records[index]
            self._rewards[index] = grade(record["distill"], record["answer"], self.grader)
        return self._rewards[index]


def prepare_data(cfg: Config, tokenizer, path: str) -> TrainingData:
    """Load the offline data, chat-format the prompts and tokenise the teacher traces.

    Prompts longer than ``data.max_prompt_tokens`` are left out; teacher traces longer than
    ``rollout.max_new_tokens`` are cut to it, as the authors' code does (their reward stays the
    grade of the whole trace). Both are counted in a warning."""
    records = load_offline(path)
    fmt = cfg.data.prompt_kwargs()
    prompts = [encode_prompt(tokenizer, r["problem"], cfg.data.system_for(r), **fmt) for r in records]
    limit = cfg.data.max_prompt_tokens
    if limit is not None:
        keep = [i for i, prompt in enumerate(prompts) if len(prompt) <= limit]
        if not keep:
            raise ValueError(f"every prompt of {path} is longer than data.max_prompt_tokens={limit}")
        if len(keep) < len(records):
            warnings.warn(f"{len(records) - len(keep)} of {len(records)} prompts are longer than data.max_prompt_tokens={limit} "
                          "tokens and are left out", stacklevel=2)
        records, prompts = [records[i] for i in keep], [prompts[i] for i in keep]
    teacher = [encode_response(tokenizer, r["distill"], cfg.data.response_prefix) for r in records]
    budget = cfg.rollout.max_new_tokens
    truncated = sum(len(trace) > budget for trace in teacher)
    if truncated:
        warnings.warn(f"{truncated} of {len(records)} teacher traces exceed rollout.max_new_tokens={budget} and are truncated to it",
                      stacklevel=2)
    return TrainingData(
        records=records,
        prompts=prompts,
        teacher=[trace[:budget] for trace in teacher],
        grader=cfg.data.grader,
    )


def total_steps(cfg: Config, prompts: int) -> int:
    """``train.steps``, or ``ceil(train.epochs * prompts / prompts_per_step)`` when epochs are set."""
    if cfg.train.epochs is None:
        return cfg.train.steps
    return max(1, math.ceil(cfg.train.epochs * prompts / cfg.train.prompts_per_step))


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
        model = apply_lora(model, r=cfg.model.lora_r, alpha=cfg.model.lora_alpha, dropout=cfg.model.lora_dropout,
                           target_modules=cfg.model.lora_target_modules)
    model.train()
    return model, tokenizer


def build_generator(cfg: Config, model, tokenizer, model_path: str, par: Parallel, longest_prompt: int, scorer=None):
    """The configured rollout engine; vLLM starts with the weights being trained (adapters merged)."""
    if cfg.rollout.engine == "vllm":
        if par.distributed:
            raise ValueError("rollout.engine=vllm runs in single-process training for now; use rollout.engine=hf with several processes")
        precision = {"bf16": "bfloat16", "fp16": "float16"}.get(cfg.train.mixed_precision, cfg.model.dtype)
        generator = VLLMGenerator.create(
            model_path, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, dtype=precision,
            gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization, max_model_len=longest_prompt + cfg.rollout.max_new_tokens,
            seed=cfg.train.seed, trust_remote_code=cfg.model.trust_remote_code, config_overrides=cfg.model.config_overrides,
        )
        generator.sync_weights(model)
        return generator
    if cfg.rollout.engine == "fast":
        if par.sharded:
            raise ValueError("rollout.engine=fast needs every weight on every process; with FSDP or DeepSpeed use rollout.engine=hf")
        return FastGenerator(model, tokenizer.eos_token_id, tokenizer.pad_token_id, cfg.rollout.batch_size, cfg.train.mixed_precision)
    return HFGenerator(model, tokenizer.eos_token_id, tokenizer.pad_token_id, cfg.rollout.batch_size, cfg.train.mixed_precision,
                       parameters=(lambda: par.full_parameters(scorer)) if scorer is not None else None)


def _step_record(par: Parallel, batch: Batch, rollouts: list[list[int]], graded: list[float], eos_id: int,
                 rollout_seconds: float, train_seconds: float, extra: dict) -> dict:
    """The step's data metrics, summed over processes before averaging (so every rank agrees)."""
    online, lengths = ~batch.is_offline, batch.response_lengths().double()
    known = ~torch.isnan(batch.rewards)
    local = {
        "reward": (float(batch.rewards[known].double().sum()), int(known.sum())),
        "online_accuracy": (sum(graded), len(graded)),
        "online_length": (float(lengths[online].sum()), int(online.sum())),
        "offline_length": (float(lengths[batch.is_offline].sum()), int(batch.is_offline.sum())),
        "truncated_fraction": (sum(1 for r in rollouts if not r or r[-1] != eos_id), len(rollouts)),
    }
    counters = {key: extra[key] for key in ("bread_failed_groups", "bread_rescued", "reward_failures") if key in extra}
    prefix_sum = extra["bread_prefix"] * extra["bread_rescued"] if extra.get("bread_rescued") else 0.0
    flat = [v for pair in local.values() for v in pair] + list(counters.values()) + [
        prefix_sum, sum(map(len, rollouts)), float(batch.attention_mask.sum())]
    reduced = par.sum(flat)
    record = {key: reduced[2 * i] / reduced[2 * i + 1] if reduced[2 * i + 1] else math.nan for i, key in enumerate(local)}
    rest = reduced[2 * len(local):]
    record.update({key: int(value) for key, value in zip(counters, rest)})
    prefix_total, rollout_tokens, train_tokens = rest[len(counters):]
    if "bread_rescued" in counters:
        record["bread_prefix"] = prefix_total / record["bread_rescued"] if record["bread_rescued"] else math.nan
    record["rollout_tokens_per_s"] = rollout_tokens / par.max(rollout_seconds) if rollout_tokens else math.nan
    record["train_tokens_per_s"] = train_tokens / par.max(train_seconds)
    return record


class TrainingStopped(Exception):
    """Training stopped at a step boundary on SIGINT / SIGTERM, after saving a checkpoint."""

    def __init__(self, signum: int, step: int, path: Path):
        self.signum, self.step, self.path = signum, step, path
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; saved {path}")


class NonFiniteTraining(ValueError):
    """Too many steps in a row had a non-finite loss or gradient."""


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


def train(cfg: Config, *, progress: bool = True) -> Path:
    """Train ``cfg.train.method``; return the directory of the final checkpoint.

    Under ``accelerate launch`` / ``torchrun`` every process runs this function on its share of
    each step's prompts (:mod:`redrl.parallel`); the main process writes logs and checkpoints.
    With ``train.resume`` the run continues from the newest complete checkpoint in ``train.out``
    and repeats exactly what the uninterrupted run would have done. SIGINT / SIGTERM stop it at
    the next step boundary with a checkpoint (:class:`TrainingStopped`)."""
    import sys

    from tqdm.auto import tqdm

    from redrl.sweep import require_learning_rate

    require_learning_rate(cfg)
    method = METHODS[cfg.train.method]
    out = Path(cfg.train.out)
    if method.stages:
        if cfg.train.resume:
            raise ValueError(f"--resume is not supported for the staged method {method.name} yet; rerun it from the start")
        _writable(out)
        return _train_staged(cfg, method, progress)
    par = Parallel.create(cfg.model.device)
    if par.is_main:
        _writable(out)
    if method.on_all_fail == "sft_buffer" and cfg.baselines.relift_buffer % par.world:
        raise ValueError(f"baselines.relift_buffer ({cfg.baselines.relift_buffer}) must be a multiple of the {par.world} processes")
    par.share(list(range(cfg.train.prompts_per_step)))  # refuses a step that cannot be split evenly
    if method.on_all_fail == "teacher_prefix" and par.sharded:
        raise ValueError("bread re-samples only where groups failed, but gathering sharded weights for generation needs "
                         "every process; run it with DDP (configs/accelerate/ddp.yaml)")
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    resume_from = None
    if cfg.train.resume:
        resume_from = checkpoint.find_latest(out, warn=lambda line: print(line, file=sys.stderr) if par.is_main else None)
        if par.is_main:
            print(f"redrl: resuming from {resume_from}" if resume_from else f"redrl: no complete checkpoint in {out}; starting from step 0",
                  file=sys.stderr)
    if par.is_main:
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    # Model, data and teacher traces.
    model_path, train_path, _ = resolve_paths(cfg, need_test=False, progress=progress and par.is_main)
    full_weights = resume_from is not None and not cfg.model.use_peft
    model, tokenizer = prepare_model(cfg, str(resume_from) if full_weights else model_path, par.device)
    if resume_from is not None and cfg.model.use_peft:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(resume_from / "adapter_model.safetensors")))
    data = prepare_data(cfg, tokenizer, train_path)
    records, prompts, teacher = data.records, data.prompts, data.teacher
    steps = total_steps(cfg, len(records))

    sampler = PromptSampler(len(records), cfg.train.seed)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
    scorer, optimizer = par.prepare(TokenScorer(model, cfg.train.chunk_size, full_logits=par.zero_stage == 3), optimizer,
                                    micro_batch_size=cfg.train.micro_batch_size)
    generator = build_generator(cfg, model, tokenizer, model_path, par, max(map(len, prompts)), scorer)
    warmup = round(cfg.optim.warmup_ratio * steps) if cfg.optim.warmup_ratio is not None else cfg.optim.warmup_steps
    scheduler = build_scheduler(optimizer, cfg.optim.schedule, warmup, steps, min_ratio=cfg.optim.min_lr_ratio)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.mixed_precision == "fp16" else None
    regulator = EntropyRegulator(max_weight=cfg.rollout.group_size, ema=cfg.loss.regulator_ema)
    G = cfg.rollout.group_size

    start, skipped_in_a_row, skipped_total = 0, 0, 0
    relift_buffer: list[int] = []  # ReLIFT: prompts whose rollouts all failed (on any process), waiting for an SFT step
    if resume_from is not None:
        body = checkpoint.load_training_state(resume_from, optimizer=optimizer, scheduler=scheduler, regulator=regulator,
                                              sampler=sampler)
        loop = body["state"]
        if loop.get("processes", 1) != par.world:
            raise ValueError(f"{resume_from} was written by {loop.get('processes')} processes; resume it with as many (now {par.world})")
        start, relift_buffer = int(body["step"]), list(loop.get("relift_buffer", []))
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr  # also where no optimizer state was saved (sharded runs)
        skipped_in_a_row, skipped_total = int(loop.get("skipped_in_a_row", 0)), int(loop.get("skipped_total", 0))
        if scaler is not None and loop.get("scaler"):
            scaler.load_state_dict(loop["scaler"])
        checkpoint.load_rng(resume_from, par.rank)  # last: nothing above draws random numbers after this
        if hasattr(generator, "sync_weights"):
            generator.sync_weights(model)

    def loop_state() -> dict:
        return {"relift_buffer": relift_buffer, "skipped_in_a_row": skipped_in_a_row, "skipped_total": skipped_total,
                "scaler": scaler.state_dict() if scaler is not None else None}

    def save(path: Path, step: int) -> None:
        save_checkpoint(path, par, scorer, tokenizer, optimizer, scheduler, regulator, sampler, step, cfg, loop_state())

    # SIGINT / SIGTERM (cluster preemption): finish the step, save, stop. A second Ctrl-C stops at once.
    requested: list[int] = []

    def on_signal(signum, frame):
        if requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested.append(signum)

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    metrics_path, rank_path = out / "metrics.jsonl", out / f"metrics-rank{par.rank}.jsonl"
    metrics_file = rank_file = None
    if par.is_main:  # a resumed run keeps the steps up to its checkpoint and redoes the rest
        kept = _load_metrics(metrics_path, start)
        metrics_path.write_text("".join(line + "\n" for line in kept))
        metrics_file = open(metrics_path, "a")
    if cfg.train.log_every_rank:
        kept = _load_metrics(rank_path, start)
        rank_path.write_text("".join(line + "\n" for line in kept))
        rank_file = open(rank_path, "a")
    bar = tqdm(range(start + 1, steps + 1), desc=f"train {method.name}", disable=not (progress and par.is_main), dynamic_ncols=True,
               initial=start, total=steps)
    try:
        for step in bar:
            started = time.perf_counter()
            failures_before = sum(rewards_module.FAILURES.values())
            step_method, extra = method, {}
            if method.on_all_fail == "sft_buffer" and len(relift_buffer) >= cfg.baselines.relift_buffer:
                # ReLIFT: this step is one SFT step on the buffered prompts' teacher traces.
                step_method = METHODS["sft"]
                chosen, relift_buffer = relift_buffer[: cfg.baselines.relift_buffer], relift_buffer[cfg.baselines.relift_buffer :]
            else:
                chosen = sampler.next(cfg.train.prompts_per_step)
            chosen = par.share(chosen)  # this process's groups
            step_prompts = [prompts[i] for i in chosen]
            answers = [records[i]["answer"] for i in chosen]

            # 1. Rollouts: G samples of each prompt from the current policy (with the sampler's
            # log-probs when the importance ratio uses them).
            rollouts, logprobs = [], None
            if step_method.rollouts and cfg.rollout.old_logp == "sampler":
                rollouts, logprobs = generator.generate_with_logprobs(step_prompts, G, temperature=cfg.rollout.temperature,
                                                                      max_new_tokens=cfg.rollout.max_new_tokens)
            elif step_method.rollouts:
                rollouts = generator.generate(step_prompts, G, temperature=cfg.rollout.temperature,
                                              max_new_tokens=cfg.rollout.max_new_tokens)

            # 2. Score them with the evaluation's grader (a grader error or timeout: ungraded, counted).
            texts = tokenizer.batch_decode(rollouts, skip_special_tokens=True) if rollouts else []  # ([] decodes to [''])
            checked = [grade_checked(text, answers[j // G], cfg.data.grader) for j, text in enumerate(texts)]
            wrong_if_failed = cfg.data.failed_grading == "wrong"
            rewards = [0.0 if failed and wrong_if_failed else reward for reward, failed in checked]
            graded = [r for r in rewards if r is not None]  # the policy's own accuracy, logged below
            if step_method.on_all_fail == "sft_buffer":
                failed = par.gather([i for g, i in enumerate(chosen) if _all_failed(rewards, g, G)])
                relift_buffer += [i for i in failed if i not in relift_buffer]
                extra["relift_buffer"] = len(relift_buffer)
            if step_method.on_all_fail == "teacher_prefix":
                before = step_prompts
                step_prompts, rollouts, rewards, bread = teacher_prefix_rollouts(
                    generator, tokenizer, step_prompts, rollouts, rewards, [teacher[i] for i in chosen], answers,
                    group_size=G, fractions=cfg.baselines.bread_fractions, temperature=cfg.rollout.temperature,
                    max_new_tokens=cfg.rollout.max_new_tokens, grader=cfg.data.grader,
                )
                extra.update(bread)
                if logprobs is not None:  # re-sampled groups have no sampler log-probs: recomputed
                    logprobs = [None if step_prompts[k // G] is not before[k // G] else lp for k, lp in enumerate(logprobs)]
            rollout_seconds = time.perf_counter() - started

            # 3. Groups: G rollouts + the teacher row, advantages and group accuracy.
            batch = assemble_batch(
                step_prompts, rollouts, rewards, [teacher[i] for i in chosen], [data.teacher_reward(i) for i in chosen],
                group_size=G, method=step_method, pad_id=tokenizer.pad_token_id, advantage_scale=cfg.loss.advantage_scale,
                advantage_eps=cfg.loss.advantage_eps, accuracy_includes_offline=cfg.loss.accuracy_includes_offline,
                rollout_logprobs=logprobs,
            )
            extra["reward_failures"] = sum(rewards_module.FAILURES.values()) - failures_before

            # 4. Loss and one optimizer step (skipped, and counted, when the loss or gradient is not finite).
            train_started = time.perf_counter()
            entropy_coef = cfg.baselines.relift_entropy_coef if step_method is not method else 0.0
            stats = optimization_step(scorer, optimizer, scheduler, regulator, batch, step_method, cfg, sft_entropy_coef=entropy_coef,
                                      scaler=scaler, par=par)
            if hasattr(generator, "sync_weights") and not stats["skipped"]:
                generator.sync_weights(model)  # the next rollouts come from the updated policy
            train_seconds = time.perf_counter() - train_started
            skipped_in_a_row = skipped_in_a_row + 1 if stats["skipped"] else 0
            skipped_total += stats["skipped"]

            # 5. Log (numbers summed over processes; the main process writes them).
            record = {"step": step, **_step_record(par, batch, rollouts, graded, tokenizer.eos_token_id, rollout_seconds,
                                                   train_seconds, extra), **stats, "skipped_total": skipped_total}
            record["step_time"] = time.perf_counter() - started
            if "relift_buffer" in extra:
                record["relift_buffer"] = extra["relift_buffer"]
            if method.on_all_fail == "sft_buffer":
                record["relift_sft_step"] = int(step_method is not method)
            if rank_file:
                rank_file.write(json.dumps({"step": step, "rank": par.rank, "w": stats["w"], "h_rl": stats["h_rl"],
                                            "h_sft": stats["h_sft"], "prompts": chosen}) + "\n")
                rank_file.flush()
            if metrics_file:
                metrics_file.write(json.dumps({k: _json_value(v) for k, v in record.items()}) + "\n")
                metrics_file.flush()
            bar.set_postfix({key: f"{record[key]:.3g}" for key in ("online_accuracy", "w", "h_rl", "h_sft", "online_length")
                             if isinstance(record.get(key), float) and math.isfinite(record[key])})
            if stats["skipped"] and par.is_main:
                warnings.warn(f"step {step}: non-finite loss or gradient, update skipped ({skipped_in_a_row} in a row)", stacklevel=2)

            # 6. Checkpoint; stop when asked to, or when the numbers keep failing.
            path = out / f"checkpoint-{step}"
            if cfg.train.save_every and step % cfg.train.save_every == 0 and step < steps:
                save(path, step)
            if skipped_in_a_row >= cfg.train.max_consecutive_skips:
                save(path, step)  # the weights are still those of the last good update
                raise NonFiniteTraining(f"{skipped_in_a_row} steps in a row (up to step {step}) had a non-finite loss or gradient; "
                                        f"training stopped with the last good weights in {path}")
            if par.max(float(bool(requested))) > 0:
                if not path.exists():
                    save(path, step)
                raise TrainingStopped(requested[0] if requested else signal.SIGTERM, step, path)
    finally:
        for file in (metrics_file, rank_file):
            if file:
                file.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    final = out / "final"
    save(final, steps)
    return final
