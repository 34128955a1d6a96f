"""Critics: value models trained beside the policy (classic PPO's one; AsyPPO's mini-critics).

An auxiliary model (:mod:`redrl.auxiliary`) named ``"critics"``. Each step, before the loss, every
critic scores every rollout token (no gradient); their mean value ``V̄`` gives the policy's token
advantages by GAE, their disagreement ``σ`` the two masks of AsyPPO (arXiv 2510.01656), all pure
math in :mod:`redrl.objectives` (:func:`~redrl.objectives.gae`,
:func:`~redrl.objectives.critic_ensemble`, :func:`~redrl.objectives.value_disagreement_masks`).
After the policy's update each critic takes its own AdamW steps on its shard of the rows
(:func:`~redrl.objectives.value_loss`), as many as the policy's PPO epochs.

A critic is a causal LM's body cut to its first ``critic.layers`` decoder layers with a linear value
head on the last hidden state: on the embedded default the tiny base's first 2 of 4 layers, for a
real model a smaller model (``critic.path``) or a few layers of the policy's own base. Its value at
target position ``t`` is read from the hidden state at input position ``t``: the state before the
token that ``logp[:, t]`` scores, so values, advantages and masks share the loss's grid.

What the paper's text fixes and what is inferred is listed in ``docs/critics.md``.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, replace

import torch

from redrl.batch import Batch
from redrl.objectives import critic_ensemble, explained_variance, gae, masked_mean, value_disagreement_masks, value_loss
from redrl.stats import spearman

__all__ = [
    "CriticSettings",
    "Critics",
    "ValueModel",
    "check_critics",
    "critic_settings",
    "load_value_model",
    "shard_of_rows",
]


class ValueModel(torch.nn.Module):
    """A transformer body and a linear value head: ``forward(input_ids, attention_mask) -> [N, S-1]``
    values on the target grid (position ``t`` from the hidden state at input position ``t``)."""

    def __init__(self, body: torch.nn.Module, hidden_size: int, *, generator: torch.Generator | None = None):
        super().__init__()
        self.body = body
        self.head = torch.nn.Linear(hidden_size, 1)
        with torch.no_grad():  # small random weights (the HF initializer range), zero bias: values start near 0
            self.head.weight.normal_(0.0, 0.02, generator=generator)
            self.head.bias.zero_()
        self.head.to(device=next(body.parameters()).device, dtype=next(body.parameters()).dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden[:, :-1]).squeeze(-1).float()


def load_value_model(
    path: str,
    *,
    layers: int | None,
    dtype: str = "float32",
    device: torch.device | str = "cpu",
    trust_remote_code: bool = False,
    generator: torch.Generator | None = None,
) -> ValueModel:
    """The body of the causal LM at ``path`` (local or Hub), its first ``layers`` decoder layers only
    (the later layers' weights are not loaded), with a fresh value head."""
    import transformers
    from transformers import AutoConfig, AutoModel

    from redrl.modeling import _DTYPES

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    depth = config.num_hidden_layers
    if layers is not None and layers > depth:
        raise ValueError(f"critic.layers={layers}: {path} has only {depth} decoder layers")
    if layers is not None:
        config.num_hidden_layers = layers
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = config.layer_types[:layers]
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the cut layers' weights are "not used", by design
    try:
        body = AutoModel.from_pretrained(
            path, config=config, dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code
        ).to(device)
    finally:
        transformers.logging.set_verbosity(verbosity)
    return ValueModel(body, config.hidden_size, generator=generator)


@dataclass(frozen=True)
class CriticSettings:
    """The critics of one run, the method's presets filled in (:func:`critic_settings`)."""

    count: int
    advantage_mask: float
    entropy_mask: float
    shards: str
    gamma: float
    lam_actor: float
    lam_critic: float
    entropy_coef: float
    warmup_steps: int


def critic_settings(cfg, method) -> CriticSettings:
    """``cfg.critic`` with the method's presets where a field is null (:class:`redrl.methods.Method`)."""
    c = cfg.critic
    k, h = method.value_masks
    return CriticSettings(
        count=c.count if c.count is not None else method.critics,
        advantage_mask=c.advantage_mask if c.advantage_mask is not None else k,
        entropy_mask=c.entropy_mask if c.entropy_mask is not None else h,
        shards=c.shards,
        gamma=c.gamma,
        lam_actor=c.lam_actor,
        lam_critic=c.lam_critic,
        entropy_coef=c.entropy_coef,
        warmup_steps=c.warmup_steps,
    )


def check_critics(cfg, method, processes: int = 1) -> None:
    """Refuse, in one line, critic settings this run cannot use."""
    from redrl.config import CriticConfig

    if "critics" in method.auxiliaries and processes > 1:
        raise ValueError(f"critics train in single-process runs for now ({processes} processes here)")
    if "critics" not in method.auxiliaries:
        if cfg.critic != CriticConfig():
            raise ValueError(
                f"critic.* settings apply to the methods with a value objective (ppo, asyppo, ...), not {method.name}"
            )
        return
    s = critic_settings(cfg, method)
    if s.shards == "responses" and cfg.rollout.group_size % s.count:
        raise ValueError(
            f"rollout.group_size={cfg.rollout.group_size} cannot be split evenly among {s.count} critics "
            "(critic.shards=responses gives each critic an equal share of every group)"
        )
    if s.count == 1 and (s.advantage_mask or s.entropy_mask):
        raise ValueError("critic.advantage_mask and critic.entropy_mask need at least 2 critics to disagree")


def shard_of_rows(rows: int, group_size: int, count: int, shards: str) -> torch.Tensor:
    """``[rows, count]`` bool: which critics train on each row (groups of ``group_size`` contiguous
    rows). ``"responses"``: row ``j`` of every group to critic ``j mod M`` (an equal, disjoint share
    of each prompt's responses); ``"prompts"``: group ``g`` to critic ``g mod M``; ``"shared"``: all."""
    index = torch.arange(rows)
    if shards == "shared":
        return torch.ones(rows, count, dtype=torch.bool)
    owner = (index % group_size) % count if shards == "responses" else (index // group_size) % count
    return owner.unsqueeze(-1) == torch.arange(count)


class Critics:
    """The critics as an auxiliary model: :meth:`attach` gives the batch its token advantages, masks
    and returns; :meth:`update` trains each critic on its shard; their weights, optimizers and the
    warm-up count are saved with every checkpoint."""

    name = "critics"

    def __init__(self, context):
        from redrl.methods import METHODS
        from redrl.paths import resolve_paths

        cfg, par = context.cfg, context.par
        method = METHODS[cfg.train.method]
        self.settings = critic_settings(cfg, method)
        self.group_size = cfg.rollout.group_size
        self.micro_batch_size = cfg.train.micro_batch_size
        self.epochs = cfg.train.ppo_epochs
        self.max_grad_norm = cfg.optim.max_grad_norm
        self.mixed_precision = cfg.train.mixed_precision
        path = cfg.critic.path or resolve_paths(cfg, need_test=False, progress=False)[0]
        device = next(context.model.parameters()).device
        generator = torch.Generator().manual_seed(cfg.train.seed)
        self.models = [
            load_value_model(
                path,
                layers=cfg.critic.layers,
                dtype=cfg.model.dtype,
                device=device,
                trust_remote_code=cfg.model.trust_remote_code,
                generator=generator,
            )
            for _ in range(self.settings.count)
        ]
        vocab, theirs = context.model.get_input_embeddings().num_embeddings, self.models[0].body.get_input_embeddings()
        if theirs.num_embeddings != vocab:
            raise ValueError(
                f"critic.path {path} has {theirs.num_embeddings} token embeddings, the policy {vocab}: "
                "a critic reads the policy's tokens, so it needs the same tokenizer"
            )
        lr = cfg.critic.lr if cfg.critic.lr is not None else 4 * cfg.optim.lr
        self.optimizers = [
            torch.optim.AdamW(m.parameters(), lr=lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
            for m in self.models
        ]
        self.steps_seen = 0
        self._pending: dict = {}
        self._warned = False
        if par.is_main and context.progress:
            size = sum(p.numel() for p in self.models[0].parameters())
            print(
                f"redrl: {self.settings.count} critic(s) of {size / 1e6:.2f}M parameters each "
                f"({cfg.critic.layers or 'all'} layers of {path}), lr {lr:g}",
                file=sys.stderr,
            )

    @property
    def holds_policy(self) -> bool:
        """True during ``critic.warmup_steps``: the step trains the critics only."""
        return self.steps_seen < self.settings.warmup_steps

    def scorer(self, module):
        return module

    def _values(self, batch: Batch) -> torch.Tensor:
        """``[M, N, S-1]`` every critic's values of every row, without gradient."""
        from redrl.modeling import autocast

        out = []
        with torch.no_grad():
            for model in self.models:
                device = next(model.parameters()).device
                rows = []
                for start in range(0, len(batch), self.micro_batch_size):
                    part = slice(start, start + self.micro_batch_size)
                    with autocast(device, self.mixed_precision):
                        rows.append(model(batch.input_ids[part].to(device), batch.attention_mask[part].to(device)))
                out.append(torch.cat(rows).cpu())
        return torch.stack(out)

    def attach(self, batch: Batch, chosen: list[int]) -> Batch:
        s = self.settings
        mask = batch.loss_mask() & ~batch.is_offline.unsqueeze(-1)
        mean, std = critic_ensemble(self._values(batch))
        advantages = gae(mean, batch.rewards, mask, gamma=s.gamma, lam=s.lam_actor)
        returns = gae(mean, batch.rewards, mask, gamma=s.gamma, lam=s.lam_critic) + mean
        returns = torch.where(
            mask & ~torch.isnan(batch.rewards).unsqueeze(-1), returns, torch.full_like(returns, math.nan)
        )
        keep_a, keep_h = value_disagreement_masks(
            std, mask, advantage_share=s.advantage_mask, entropy_share=s.entropy_mask
        )
        if s.count > 1 and (s.advantage_mask or s.entropy_mask) and mask.any() and not std[mask].max() > 0:
            if not self._warned:
                warnings.warn(
                    "the critics agree on every token (σ = 0): the masks fall on tokens in row order", stacklevel=2
                )
                self._warned = True
        lengths = mask.sum(-1, keepdim=True).clamp(min=1)
        graded = mask & ~torch.isnan(batch.rewards).unsqueeze(-1)
        self._pending = {
            "value_explained_variance": float(explained_variance(mean, returns, graded)),
            "critic_std_mean": float(masked_mean(std, mask)) if s.count > 1 else math.nan,
            # does the critics' disagreement follow the size of each token's gradient, |Â_t| / |o|?
            "std_gradient_spearman": _rank_correlation(std[graded], (advantages.abs() / lengths)[graded])
            if s.count > 1
            else math.nan,
            "critics_only": int(self.holds_policy),
        }
        row_mean = (advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return replace(
            batch,
            advantages=torch.where(batch.is_offline, batch.advantages, row_mean),
            token_advantages=advantages,
            advantage_mask=keep_a,
            entropy_mask=keep_h,
            returns=returns,
        )

    def update(self, batch: Batch, stats: dict) -> dict:
        from redrl.modeling import autocast

        s = self.settings
        owners = shard_of_rows(len(batch), self.group_size, s.count, s.shards)
        trained = batch.loss_mask() & ~batch.is_offline.unsqueeze(-1) & ~torch.isnan(batch.returns)
        losses = []
        for m, (model, optimizer) in enumerate(zip(self.models, self.optimizers)):
            rows = torch.nonzero(owners[:, m] & trained.any(-1)).squeeze(-1)
            if not len(rows):
                continue
            shard = batch.rows(rows)
            device = next(model.parameters()).device
            tokens = int((shard.loss_mask() & ~torch.isnan(shard.returns)).sum())
            for epoch in range(self.epochs):
                total = 0.0
                for start in range(0, len(shard), self.micro_batch_size):
                    part = shard.rows(slice(start, start + self.micro_batch_size))
                    target = part.returns.to(device)
                    keep = part.loss_mask().to(device) & ~torch.isnan(target)
                    if not keep.any():
                        continue
                    with autocast(device, self.mixed_precision):
                        values = model(part.input_ids.to(device), part.attention_mask.to(device))
                    loss = value_loss(values, torch.nan_to_num(target), keep) * (int(keep.sum()) / tokens)
                    loss.backward()
                    total += float(loss.detach())
                if self.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), self.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if epoch == 0:
                    losses.append(total)  # the regression error before this step's update
        self.steps_seen += 1
        return {**self._pending, "critic_loss": sum(losses) / len(losses) if losses else math.nan}

    def state_dict(self) -> dict:
        return {
            "models": [m.state_dict() for m in self.models],
            "optimizers": [o.state_dict() for o in self.optimizers],
            "steps_seen": self.steps_seen,
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        for model, body in zip(self.models, state["models"]):
            model.load_state_dict(body)
        for optimizer, body in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(body)
        self.steps_seen = int(state["steps_seen"])


def _rank_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    value = spearman(x.tolist(), y.tolist())
    return math.nan if value is None else value
