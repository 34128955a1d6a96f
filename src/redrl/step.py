"""One optimization step: entropies → the regulator's ``w`` → the method's loss over micro-batches →
one AdamW step (or PPO's epochs of them); and the step's data metrics, summed over processes.

With several processes each one holds its share of the step's groups: the entropies, the loss
normaliser and every reported number are summed over processes, and each process's loss is scaled
by the number of processes (DDP averages gradients), so the update is the one a single process
would take on all the groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from redrl.batch import Batch
from redrl.modeling import ScorerOutputs, autocast, trainable_parameters
from redrl.objectives import LOSSES, LossInputs, LossSettings, Objective, aggregation_units
from redrl.parallel import Parallel
from redrl.regulator import EntropyRegulator

if TYPE_CHECKING:
    from redrl.config import Config
    from redrl.methods import Method

__all__ = [
    "LOSS_METRICS",
    "StepSettings",
    "build_scheduler",
    "loss_settings",
    "measure_entropies",
    "micro_batches",
    "optimization_step",
    "step_record",
]


@dataclass
class _Pass:
    """One forward over a micro-batch: its rows and the scorer's named per-token outputs."""

    rows: Batch
    out: ScorerOutputs

    @property
    def logp(self) -> torch.Tensor:
        return self.out.logp

    @property
    def entropy(self) -> torch.Tensor:
        return self.out.entropy


def _forward(scorer, rows: Batch) -> _Pass:
    return _Pass(rows, scorer(rows.input_ids, rows.attention_mask, rows.loss_mask(), **rows.scorer_inputs()))


def _entropy_sums(passes: list[_Pass]) -> list[float]:
    """``[Σ H over rollout tokens, their count, Σ H over teacher tokens, their count]`` of this process."""
    out = []
    for offline in (False, True):
        select = [p.rows.loss_mask() & (p.rows.is_offline.unsqueeze(-1) == offline) for p in passes]
        out += [
            sum(float((p.entropy.detach() * m).sum()) for p, m in zip(passes, select)),
            sum(int(m.sum()) for m in select),
        ]
    return out


def micro_batches(batch: Batch, size: int) -> list[Batch]:
    """``batch`` in micro-batches of at most ``size`` rows. Rows of similar length share a micro-batch,
    so little of it is padding; the loss is a weighted sum over micro-batches, so the order does not
    change the update."""
    if len(batch) > size:
        batch = batch.rows(torch.argsort(batch.attention_mask.sum(-1), stable=True))
    return [batch.rows(slice(start, start + size)) for start in range(0, len(batch), size)]


@torch.no_grad()
def measure_entropies(scorer, batch: Batch, micro_batch_size: int, mixed_precision: str = "no") -> tuple[float, float]:
    """``(H_rl, H_sft)`` of ``batch`` as every training step measures them: the mean token entropy of
    its rollout rows and of its teacher rows (NaN where there are none)."""
    device = next(scorer.parameters()).device
    batch = batch.to(device)
    passes = []
    for rows in micro_batches(batch, micro_batch_size):
        with autocast(device, mixed_precision):
            passes.append(_forward(scorer, rows))
    rl_sum, rl_count, sft_sum, sft_count = _entropy_sums(passes)
    return (rl_sum / rl_count if rl_count else math.nan), (sft_sum / sft_count if sft_count else math.nan)


@dataclass(frozen=True)
class StepSettings:
    """What one optimization step needs besides the batch and the loss: micro-batch rows, autocast
    precision, whether rollout tokens take the sampler's log-probs as ``old_logp``, gradient clip,
    ``updates``: passes over the batch (PPO's epochs; 0 measures the batch and moves nothing, as
    while critics warm up), and ``mini_batches``: optimizer updates per pass, each on a contiguous
    share of the rows. Every ratio is taken against the policy that sampled the batch."""

    micro_batch_size: int = 64
    mixed_precision: str = "no"
    sampler_logp: bool = False
    max_grad_norm: float = 1.0
    decoupled: bool = False
    updates: int = 1
    mini_batches: int = 1

    @classmethod
    def from_config(cls, cfg: Config) -> StepSettings:
        return cls(
            micro_batch_size=cfg.train.micro_batch_size,
            mixed_precision=cfg.train.mixed_precision,
            sampler_logp=behaviour_logp(cfg) and not cfg.loss.decoupled,
            max_grad_norm=cfg.optim.max_grad_norm,
            decoupled=cfg.loss.decoupled,
            updates=cfg.train.ppo_epochs,
            mini_batches=cfg.train.ppo_mini_batches,
        )


def behaviour_logp(cfg: Config) -> bool:
    """Whether the rollouts come with the sampler's log-probs that the ratio uses (the behaviour
    policy): ``rollout.old_logp: sampler``, and always with asynchronous rollouts."""
    return cfg.rollout.old_logp == "sampler" or cfg.rollout.async_staleness > 0


def loss_settings(cfg: Config, method: Method, sft_entropy_coef: float = 0.0) -> LossSettings:
    """The settings of ``method``'s objective from the config: an objective that declares its own
    aggregation (SFT's and distillation's token mean) keeps it whatever ``loss.aggregation`` says;
    the length normaliser defaults to ``rollout.max_new_tokens``."""
    loss, objective = cfg.loss, LOSSES[method.objective]
    if objective.aggregation is not None:
        return LossSettings(
            aggregation=objective.aggregation,
            sft_entropy_coef=sft_entropy_coef,
            distill_alpha=method.distill_alpha if cfg.distill.alpha is None else cfg.distill.alpha,
            eps_low=loss.eps_low,
            eps_high=loss.eps_high,
            prior_coef=cfg.ravr.prior_coef,
        )
    return LossSettings(
        is_cap=loss.is_cap if behaviour_logp(cfg) else None,
        aggregation=loss.aggregation,
        norm_constant=loss.norm_constant or cfg.rollout.max_new_tokens,
        eps_low=loss.eps_low,
        eps_high=loss.eps_high,
        offline_ratio=loss.offline_ratio or method.offline_ratio,
        gamma=loss.luffy_gamma,
        clip_offline=loss.clip_offline,
        kl_coef=loss.kl_coef,
        srft_sft_coef=cfg.baselines.srft_sft_coef,
        srft_rl_coef=cfg.baselines.srft_rl_coef,
        sft_entropy_coef=sft_entropy_coef,
        entropy_coef=cfg.critic.entropy_coef,
    )


def _loss(
    objective: Objective,
    settings: LossSettings,
    current: _Pass,
    old_logp: torch.Tensor,
    w: float,
    h_rl: float,
    ref_logp: torch.Tensor | None = None,
    decoupled: bool = False,
):
    rows, out = current.rows, current.out
    inputs = LossInputs(
        logp=out.logp,
        old_logp=old_logp,
        entropy=out.entropy,
        response_mask=rows.loss_mask(),
        advantages=rows.advantages,
        rewards=rows.rewards,
        is_offline=rows.is_offline,
        group_accuracy=rows.group_accuracy,
        w=w,
        h_rl=h_rl,
        ref_logp=ref_logp,
        kl_fwd=out.kl_fwd,
        kl_rev=out.kl_rev,
        behaviour_logp=rows.sampler_logp if decoupled else None,
        token_advantages=rows.token_advantages,
        row_weights=rows.row_weights,
        advantage_mask=rows.advantage_mask,
        entropy_mask=rows.entropy_mask,
    )
    return objective.fn(inputs, settings)


#: Every registered objective's metrics, logged every step (NaN where a method has no such quantity).
LOSS_METRICS = tuple(dict.fromkeys(name for objective in LOSSES.values() for name in objective.metrics))


def optimization_step(
    scorer,
    optimizer,
    scheduler,
    regulator: EntropyRegulator,
    batch: Batch,
    method: Method,
    step: StepSettings,
    loss: LossSettings,
    *,
    scaler: torch.amp.GradScaler | None = None,
    par: Parallel | None = None,
    reference: torch.nn.Module | None = None,
) -> dict:
    """Entropies → regulator weight ``w`` → loss (accumulated over micro-batches) → an AdamW step;
    ``step.updates`` passes of ``step.mini_batches`` steps each (PPO's epochs), every ratio against
    the log-probabilities measured before the first, and the schedule stepped once per batch.

    ``scorer`` is a :class:`redrl.modeling.TokenScorer` (wrapped by ``par`` when several processes
    train). ``method`` names the objective (:data:`redrl.objectives.LOSSES`) and whether the
    regulator weighs the teacher rows; ``loss`` is that objective's settings (:func:`loss_settings`).
    Forward passes and the loss run under ``step.mixed_precision`` autocast on the model's device;
    ``scaler`` (fp16) scales the loss and skips steps with non-finite gradients. ``reference`` (a
    frozen :class:`redrl.modeling.TokenScorer`) scores the rows for the KL-to-reference term when
    ``loss.kl_coef`` is set and the objective has one.

    With several processes, ``batch`` is this process's groups: the entropies, the loss normaliser
    and every reported number are summed over processes, and each process's loss is scaled by the
    number of processes (DDP averages gradients), so the update is the one a single process would
    take on all the groups."""
    par = par or Parallel(None)
    device = next(scorer.parameters()).device
    batch = batch.to(device)
    precision = step.mixed_precision

    def forward(rows: Batch) -> _Pass:
        with autocast(device, precision):
            return _forward(scorer, rows)

    # PPO's mini-batches: contiguous shares of the rows (the prompts come in a seeded random order),
    # each split into micro-batches; one optimizer update per mini-batch and pass.
    minis = [batch] if step.mini_batches == 1 else [batch.rows(i) for i in _shares(len(batch), step.mini_batches)]
    parts = [micro_batches(rows, step.micro_batch_size) for rows in minis]
    micro = [rows for part in parts for rows in part]
    spans, start = [], 0
    for part in parts:
        spans.append(slice(start, start + len(part)))
        start += len(part)
    objective, settings = LOSSES[method.objective], loss
    aggregation = settings.aggregation

    if len(micro) == 1:
        # One pass: entropies, old log-probs and the loss all come from the same forward.
        passes = [forward(micro[0])]
        old_logps = [passes[0].logp.detach()]
    else:
        # Entropies and old log-probs first (no grad, same parameters), then the loss passes.
        with torch.no_grad():
            passes = [forward(rows) for rows in micro]
        old_logps = [p.logp for p in passes]
    if step.sampler_logp and batch.sampler_logp is not None:
        # The sampler's own log-probs for rollout tokens (the importance ratio then also corrects
        # any mismatch between the sampling engine and the trainer); recomputed ones elsewhere.
        old_logps = [
            torch.where(torch.isnan(rows.sampler_logp), old, rows.sampler_logp.to(old.dtype))
            for rows, old in zip(micro, old_logps)
        ]
    units = [int(aggregation_units(rows.loss_mask(), aggregation)) for rows in micro]
    rl_sum, rl_count, sft_sum, sft_count, *mini_units = par.sum(
        [*_entropy_sums(passes), *(sum(units[span]) for span in spans)]
    )
    h_rl = rl_sum / rl_count if rl_count else math.nan
    h_sft = sft_sum / sft_count if sft_count else math.nan
    regulator_before = regulator.state_dict()  # restored if this step turns out not to be finite
    w = regulator.update(h_rl, h_sft) if method.regulator else 1.0

    # No update (critics warming up): the step is measured, nothing moves.
    outcome: dict = {"loss": math.nan, "metrics": dict.fromkeys(LOSS_METRICS, math.nan), "grad_norm": math.nan}
    outcome |= {"finite": True, "scaler_skipped": 0}
    applied = 0  # updates that moved the weights
    for update in range(step.updates * len(spans)):
        span = spans[update % len(spans)]
        reuse = passes[0] if len(micro) == 1 and update == 0 else None  # the first pass has its graph
        outcome = _update(
            scorer,
            optimizer,
            micro[span],
            units[span],
            mini_units[update % len(spans)],
            objective,
            settings,
            old_logps[span],
            w,
            h_rl,
            step,
            scaler,
            par,
            reference,
            reuse,
            forward,
        )
        if not outcome["finite"] or outcome["scaler_skipped"]:
            break
        applied += 1
    loss_value, summed, grad_norm = outcome["loss"], outcome["metrics"], outcome["grad_norm"]
    lr = scheduler.get_last_lr()[0]
    if applied:
        scheduler.step()  # once per rollout batch, however many updates it took
    else:
        regulator.load_state_dict(regulator_before)
    return {
        "loss": loss_value,
        **summed,
        "h_rl": h_rl,
        "h_sft": h_sft,
        "delta_h_rl": regulator.delta_h_rl if applied and method.regulator else math.nan,
        "delta_h_sft": regulator.delta_h_sft if applied and method.regulator else math.nan,
        "w": w if applied else math.nan,
        "grad_norm": grad_norm,
        "lr": lr,
        "skipped": 0 if applied else int(not outcome["finite"]),
        "scaler_skipped": 0 if applied else outcome["scaler_skipped"],
        **({"updates": applied} if step.updates * step.mini_batches != 1 else {}),
    }


def _shares(n: int, parts: int) -> list[slice]:
    """``parts`` contiguous slices of ``range(n)`` whose sizes differ by at most one."""
    if parts > n:
        raise ValueError(f"train.ppo_mini_batches={parts} is more than the step's {n} rows")
    bounds = [round(k * n / parts) for k in range(parts + 1)]
    return [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:])]


def _update(
    scorer,
    optimizer,
    micro,
    units,
    total_units,
    objective,
    settings,
    old_logps,
    w,
    h_rl,
    step,
    scaler,
    par,
    reference,
    reuse,
    forward,
) -> dict:
    """One optimizer update on every micro-batch (the loss accumulated over them), ratios against
    ``old_logps``; a non-finite loss or gradient (or fp16's own overflow) applies nothing."""
    device = next(scorer.parameters()).device
    loss_value = 0.0
    # Loss metrics are averaged over micro-batches (and processes) with the loss's own weights; a
    # metric that is undefined in a micro-batch (e.g. π_off without teacher rows) is left out.
    sums = {name: 0.0 for name in LOSS_METRICS}
    weights = {name: 0.0 for name in LOSS_METRICS}
    for index, rows in enumerate(micro):
        last = index == len(micro) - 1
        with par.accumulate(scorer, last):
            current = reuse if reuse is not None else forward(rows)
            ref_logp = None
            if reference is not None and settings.kl_coef and objective.kl_to_reference:
                with torch.no_grad(), autocast(device, step.mixed_precision):
                    ref_logp = reference(rows.input_ids, rows.attention_mask, rows.loss_mask()).logp
            with autocast(device, step.mixed_precision):
                loss, metrics = _loss(objective, settings, current, old_logps[index], w, h_rl, ref_logp, step.decoupled)
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
    grad_norm = par.clip_grad_norm(scorer, trainable_parameters(scorer), step.max_grad_norm)
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
    optimizer.zero_grad(set_to_none=True)
    return {
        "loss": loss_value,
        "metrics": summed,
        "grad_norm": grad_norm,
        "finite": finite,
        "scaler_skipped": scaler_skipped,
    }


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


def step_record(
    par: Parallel,
    batch: Batch,
    rollouts: list[list[int]],
    graded: list[float],
    eos_id: int,
    rollout_seconds: float,
    train_seconds: float,
    extra: dict,
) -> dict:
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
    counters = {key: extra[key] for key in ("reward_failures", "graded_answers") if key in extra}
    flat = (
        [v for pair in local.values() for v in pair]
        + list(counters.values())
        + [sum(map(len, rollouts)), float(batch.attention_mask.sum())]
    )
    reduced = par.sum(flat)
    record = {
        key: reduced[2 * i] / reduced[2 * i + 1] if reduced[2 * i + 1] else math.nan for i, key in enumerate(local)
    }
    rest = reduced[2 * len(local) :]
    record.update({key: int(value) for key, value in zip(counters, rest)})
    rollout_tokens, train_tokens = rest[len(counters) :]
    record["rollout_tokens_per_s"] = rollout_tokens / par.max(rollout_seconds) if rollout_tokens else math.nan
    record["train_tokens_per_s"] = train_tokens / par.max(train_seconds)
    return record
