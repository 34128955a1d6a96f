"""The training loop, read top to bottom: rollout → score → group → loss → step → log → checkpoint.

``train(cfg)`` runs one method (:mod:`redrl.methods`) for ``cfg.train.steps`` optimizer steps.
Each step takes ``prompts_per_step`` prompts in a seeded order, samples ``G`` rollouts of each with
the current policy, grades them with the same grader evaluation uses, puts each prompt's rollouts
and its teacher trace into one group, and takes one AdamW step on the method's loss (one optimizer
step per rollout batch, as the paper's launch script: train batch = rollout batch). Metrics go to
``OUT/metrics.jsonl``, one object per step; the final model to ``OUT/final`` in Hugging Face format
with the trainer state beside it.
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from redrl.batch import Batch, collate
from redrl.config import Config
from redrl.data.offline import load_offline
from redrl.methods import METHODS, Method
from redrl.modeling import encode_prompt, encode_response, load_model_and_tokenizer, response_logprobs
from redrl.objectives import aggregation_units, group_accuracy, group_advantages, masked_mean, red_loss, sft_loss
from redrl.regulator import EntropyRegulator
from redrl.rewards import grade
from redrl.rollout import HFGenerator

__all__ = ["PromptSampler", "assemble_batch", "resolve_paths", "train"]


def resolve_paths(cfg: Config, *, need_train: bool = True) -> tuple[str, str, str]:
    """``(model, train data, test data)``, building the embedded default for any that is ``tiny``
    (the train data is left as it is when ``need_train`` is false)."""
    model, train_data, test_data = cfg.model.path, cfg.data.train if need_train else "", cfg.data.test
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1  # else maybe a Hub id "org/name"
    if model != "tiny" and looks_local and not Path(model).expanduser().exists():
        raise FileNotFoundError(f"model.path not found: {model}")
    for name, value in (("data.train", train_data), ("data.test", test_data)):
        if value and value != "tiny" and not Path(value).expanduser().is_file():
            raise FileNotFoundError(f"{name} not found: {value}")
    if "tiny" in (model, train_data, test_data):
        from redrl.tiny import ensure_tiny

        assets = ensure_tiny()
        model = str(assets.base) if model == "tiny" else model
        train_data = str(assets.train) if train_data == "tiny" else train_data
        test_data = str(assets.test) if test_data == "tiny" else test_data
    return model, train_data, test_data


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
) -> Batch:
    """Groups of ``G`` rollouts (if the method samples) + the teacher row (if it uses one), per prompt.

    ``rollouts`` is prompt-major (rows ``i*G .. i*G+G-1`` answer prompt ``i``). Advantages are
    group-relative over every row of the group; the group accuracy ``r̄`` over its rollouts.
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
    )


@dataclass
class _Pass:
    """Per-token results of one forward over a micro-batch."""

    rows: Batch
    logp: torch.Tensor
    entropy: torch.Tensor


def _forward(model, rows: Batch, chunk_size: int) -> _Pass:
    logp, entropy = response_logprobs(model, rows.input_ids, rows.attention_mask, rows.loss_mask(), chunk_size=chunk_size)
    return _Pass(rows, logp, entropy)


def _entropies(passes: list[_Pass]) -> tuple[float, float]:
    """``(H_rl, H_sft)``: mean token entropy of the rollout rows and of the teacher rows."""
    def mean(select) -> float:
        total = sum(float((p.entropy.detach() * select(p)).sum()) for p in passes)
        count = sum(int(select(p).sum()) for p in passes)
        return total / count if count else math.nan

    return (
        mean(lambda p: p.rows.loss_mask() & ~p.rows.is_offline.unsqueeze(-1)),
        mean(lambda p: p.rows.loss_mask() & p.rows.is_offline.unsqueeze(-1)),
    )


def _loss(method: Method, cfg: Config, current: _Pass, old_logp: torch.Tensor, w: float):
    rows, mask = current.rows, current.rows.loss_mask()
    if method.objective == "sft":
        return sft_loss(current.logp, mask), {}
    loss_cfg = cfg.loss
    return red_loss(
        current.logp, old_logp, rows.advantages, mask, rows.is_offline, rows.group_accuracy, w,
        eps_low=loss_cfg.eps_low, eps_high=loss_cfg.eps_high,
        offline_ratio=loss_cfg.offline_ratio or method.offline_ratio, gamma=loss_cfg.luffy_gamma,
        aggregation=loss_cfg.aggregation, clip_offline=loss_cfg.clip_offline,
        norm_constant=loss_cfg.norm_constant or cfg.rollout.max_new_tokens,
    )


#: What red_loss reports, logged every step (NaN where a method has no such quantity).
LOSS_METRICS = ("loss_on", "loss_off", "clip_fraction", "ratio_mean", "offline_ratio_mean", "pi_off_mean", "offline_pi_mean")


def optimization_step(model, optimizer, scheduler, regulator: EntropyRegulator, batch: Batch, method: Method, cfg: Config) -> dict:
    """Entropies → regulator weight ``w`` → loss (accumulated over micro-batches) → one AdamW step."""
    size = cfg.train.micro_batch_size
    micro = [batch.rows(slice(start, start + size)) for start in range(0, len(batch), size)]
    aggregation = "token-mean" if method.objective == "sft" else cfg.loss.aggregation

    if len(micro) == 1:
        # One pass: entropies, old log-probs and the loss all come from the same forward.
        passes = [_forward(model, micro[0], cfg.train.chunk_size)]
        old_logps = [passes[0].logp.detach()]
    else:
        # Entropies and old log-probs first (no grad, same parameters), then the loss passes.
        with torch.no_grad():
            passes = [_forward(model, rows, cfg.train.chunk_size) for rows in micro]
        old_logps = [p.logp for p in passes]
    h_rl, h_sft = _entropies(passes)
    w = regulator.update(h_rl, h_sft) if method.regulator else 1.0

    total_units = sum(int(aggregation_units(rows.loss_mask(), aggregation)) for rows in micro)
    loss_value = 0.0
    # Loss metrics are averaged over micro-batches with the loss's own weights; a metric that is
    # undefined in a micro-batch (e.g. π_off without teacher rows) is left out of its average.
    sums = {name: 0.0 for name in LOSS_METRICS}
    weights = {name: 0.0 for name in LOSS_METRICS}
    for index, rows in enumerate(micro):
        current = passes[0] if len(micro) == 1 else _forward(model, rows, cfg.train.chunk_size)
        loss, metrics = _loss(method, cfg, current, old_logps[index], w)
        share = int(aggregation_units(rows.loss_mask(), aggregation)) / max(total_units, 1)
        (loss * share).backward()
        loss_value += loss.item() * share
        for name, value in metrics.items():
            if name in sums and math.isfinite(value.item()):
                sums[name] += value.item() * share
                weights[name] += share
    summed = {name: sums[name] / weights[name] if weights[name] else math.nan for name in LOSS_METRICS}
    max_norm = cfg.optim.max_grad_norm
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else float("inf"))
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss_value, **summed, "h_rl": h_rl, "h_sft": h_sft, "delta_h_rl": regulator.delta_h_rl if method.regulator else math.nan,
            "delta_h_sft": regulator.delta_h_sft if method.regulator else math.nan, "w": w,
            "grad_norm": float(grad_norm), "lr": lr}


def build_scheduler(optimizer, schedule: str, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def save_checkpoint(path: Path, model, tokenizer, optimizer, scheduler, regulator, sampler, step: int, cfg: Config) -> None:
    """The model in Hugging Face format (safetensors) and ``trainer_state.pt`` beside it."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "regulator": regulator.state_dict(),
            "sampler": sampler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            "config": cfg.to_dict(),
        },
        path / "trainer_state.pt",
    )


def _json_value(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def train(cfg: Config, *, progress: bool = True) -> Path:
    """Train ``cfg.train.method``; return the directory of the final checkpoint."""
    from tqdm.auto import tqdm

    method = METHODS[cfg.train.method]
    out = Path(cfg.train.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)

    # Model, data and teacher traces.
    model_path, train_path, _ = resolve_paths(cfg)
    model, tokenizer = load_model_and_tokenizer(model_path, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation)
    model.train()
    records = load_offline(train_path)
    teacher = [encode_response(tokenizer, r["distill"]) for r in records]
    keep = [i for i, trace in enumerate(teacher) if len(trace) <= cfg.rollout.max_new_tokens]
    if len(keep) < len(records):
        warnings.warn(f"{len(records) - len(keep)} of {len(records)} teacher traces exceed rollout.max_new_tokens="
                      f"{cfg.rollout.max_new_tokens} and are left out", stacklevel=2)
    if not keep:
        raise ValueError(f"no teacher trace fits in rollout.max_new_tokens={cfg.rollout.max_new_tokens}")
    records, teacher = [records[i] for i in keep], [teacher[i] for i in keep]
    prompts = [encode_prompt(tokenizer, r["problem"], cfg.data.system_prompt) for r in records]
    teacher_rewards = [grade(r["distill"], r["answer"], cfg.data.grader) for r in records]

    sampler = PromptSampler(len(records), cfg.train.seed)
    generator = HFGenerator(model, tokenizer.eos_token_id, tokenizer.pad_token_id, cfg.rollout.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.optim.schedule, cfg.optim.warmup_steps, cfg.train.steps)
    regulator = EntropyRegulator(max_weight=cfg.rollout.group_size, ema=cfg.loss.regulator_ema)
    G = cfg.rollout.group_size

    bar = tqdm(range(1, cfg.train.steps + 1), desc=f"train {method.name}", disable=not progress, dynamic_ncols=True)
    with open(out / "metrics.jsonl", "w") as metrics_file:
        for step in bar:
            started = time.perf_counter()
            chosen = sampler.next(cfg.train.prompts_per_step)
            step_prompts = [prompts[i] for i in chosen]

            # 1. Rollouts: G samples of each prompt from the current policy.
            rollouts = []
            if method.rollouts:
                rollouts = generator.generate(step_prompts, G, temperature=cfg.rollout.temperature,
                                              max_new_tokens=cfg.rollout.max_new_tokens)
            rollout_seconds = time.perf_counter() - started

            # 2. Score them with the evaluation's grader.
            texts = tokenizer.batch_decode(rollouts, skip_special_tokens=True)
            rewards = [grade(text, records[chosen[j // G]]["answer"], cfg.data.grader) for j, text in enumerate(texts)]

            # 3. Groups: G rollouts + the teacher row, advantages and group accuracy.
            batch = assemble_batch(
                step_prompts, rollouts, rewards, [teacher[i] for i in chosen], [teacher_rewards[i] for i in chosen],
                group_size=G, method=method, pad_id=tokenizer.pad_token_id, advantage_scale=cfg.loss.advantage_scale,
                advantage_eps=cfg.loss.advantage_eps, accuracy_includes_offline=cfg.loss.accuracy_includes_offline,
            )

            # 4. Loss and one optimizer step.
            train_started = time.perf_counter()
            stats = optimization_step(model, optimizer, scheduler, regulator, batch, method, cfg)
            train_seconds = time.perf_counter() - train_started

            # 5. Log.
            online = ~batch.is_offline
            lengths = batch.response_lengths().float()
            graded = [r for r in rewards if r is not None]
            record = {
                "step": step,
                "reward": float(masked_mean(batch.rewards, ~torch.isnan(batch.rewards))),
                "online_accuracy": sum(graded) / len(graded) if graded else math.nan,
                **stats,
                "online_length": float(lengths[online].mean()) if online.any() else math.nan,
                "offline_length": float(lengths[batch.is_offline].mean()) if batch.is_offline.any() else math.nan,
                "truncated_fraction": (sum(1 for r in rollouts if not r or r[-1] != tokenizer.eos_token_id) / len(rollouts)
                                       if rollouts else math.nan),
                "rollout_tokens_per_s": sum(map(len, rollouts)) / rollout_seconds if rollouts else math.nan,
                "train_tokens_per_s": float(batch.attention_mask.sum()) / train_seconds,
                "step_time": time.perf_counter() - started,
            }
            metrics_file.write(json.dumps({k: _json_value(v) for k, v in record.items()}) + "\n")
            metrics_file.flush()
            bar.set_postfix({key: f"{record[key]:.3g}" for key in ("online_accuracy", "w", "h_rl", "h_sft", "online_length")
                             if isinstance(record.get(key), float) and math.isfinite(record[key])})

            # 6. Checkpoint.
            if cfg.train.save_every and step % cfg.train.save_every == 0 and step < cfg.train.steps:
                save_checkpoint(out / f"checkpoint-{step}", model, tokenizer, optimizer, scheduler, regulator, sampler, step, cfg)

    final = out / "final"
    save_checkpoint(final, model, tokenizer, optimizer, scheduler, regulator, sampler, cfg.train.steps, cfg)
    return final
