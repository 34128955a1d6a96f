"""The math of redrl: pure functions over tensors.

Everything that turns log-probabilities, rewards and entropies into a loss lives here, and nothing
else does: no model calls, no ``self``, no config objects, no distributed state. Each function says
its formula, the paper and equation it comes from, and the shapes it takes.

Paper references:

* RED   -- Guan et al., "Recall-Extend Dynamics: Enhancing Small Language Models through Controlled
  Exploration and Refined Offline Integration", arXiv 2508.16677. Equations cited as (Eq. n).
* GRPO  -- Shao et al., "DeepSeekMath", arXiv 2402.03300 (group-normalised advantages, Eq. 3).
* PPO   -- Schulman et al., arXiv 1707.06347 (clipped surrogate, Eq. 7).
* Dr.GRPO -- Liu et al., "Understanding R1-Zero-Like Training", arXiv 2503.20783 (no std scaling,
  constant length normaliser).
* LUFFY -- Yan et al., "Learning to Reason under Off-Policy Guidance", arXiv 2504.14945
  (policy shaping ``f(π) = π / (π + γ)``).
* SRFT  -- Fu et al., "SRFT: A Single-Stage Method with Supervised and Reinforcement Fine-Tuning
  for Reasoning", arXiv 2506.19767 (entropy-aware weights).
* k3    -- Schulman, "Approximating KL Divergence" (2020): ``exp(q - p) - (q - p) - 1``.
* GAE   -- Schulman et al., "High-Dimensional Continuous Control Using Generalized Advantage
  Estimation", arXiv 1506.02438 (Eqs. 11-16).
* AsyPPO -- Liu et al., "Asymmetric Proximal Policy Optimization: mini-critics boost LLM
  reasoning", arXiv 2510.01656 (Eqs. 4.1-4.3: the critics' ensemble, its disagreement masks).

Conventions (``N`` rows, ``T`` response positions, ``V`` vocabulary, ``D`` hidden size):

* ``logp[n, t]`` is ``log π_θ(o_{n,t} | q, o_{n,<t})`` for the response token at position ``t``;
  positions where ``response_mask`` is false are padding and never reach the loss or its gradient,
  whatever values they hold (NaN and ±inf included).
* A *group* is the ``G`` on-policy rollouts of one prompt plus its one offline teacher row; its
  rows are contiguous (rows ``g*group_size .. (g+1)*group_size - 1``).
* Losses are to be *minimised*: every per-token term below is an objective to maximise, and the
  loss is minus its aggregate.
* Functions keep the floating dtype of their inputs (float32 stays float32, float64 stays float64);
  half-precision logits are upcast to float32 before any softmax.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "ADVANTAGE_SCALES",
    "AGGREGATIONS",
    "BUDGET_COMBINES",
    "BUDGET_FIDELITIES",
    "LOSSES",
    "OFFLINE_RATIOS",
    "AdvantageEstimator",
    "AdvantageInputs",
    "LossInputs",
    "LossSettings",
    "Objective",
    "aggregate_loss",
    "aggregation_units",
    "answer_utility",
    "budget_fidelity",
    "budget_reward",
    "clipped_surrogate",
    "critic_ensemble",
    "entropy_aware_weight",
    "entropy_weight",
    "explained_variance",
    "gae",
    "group_accuracy",
    "group_advantages",
    "kl_k3",
    "kl_mixture_loss",
    "masked_mean",
    "offline_importance_ratio",
    "policy_shift",
    "ppo_loss",
    "ravr_loss",
    "ravr_rewards",
    "raw_advantages",
    "red_loss",
    "relative_entropy_change",
    "sampled_kl_loss",
    "sft_loss",
    "srft_loss",
    "token_kl",
    "token_kl_from_hidden",
    "token_logprobs_and_entropy",
    "token_logprobs_and_entropy_from_hidden",
    "teacher_top_k",
    "top_k_kl_from_hidden",
    "utility_weights",
    "value_disagreement_masks",
    "value_loss",
    "weighted_prior_nll",
]

#: How per-token values become one scalar (see :func:`aggregate_loss`).
AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
#: How the offline (teacher) row's ratio is formed (see :func:`offline_importance_ratio`).
OFFLINE_RATIOS = ("shift", "one", "on_policy", "luffy")
#: How group-relative advantages are scaled (see :func:`group_advantages`).
ADVANTAGE_SCALES = ("std", "none")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float64 stays float64; float32, bfloat16 and float16 are all computed in float32.
    return torch.promote_types(dtype, torch.float32)


# ------------------------------------------------------------------------------------------------
# Log-probabilities and entropy
# ------------------------------------------------------------------------------------------------


def _logp_and_entropy_rows(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits [M, V]``, ``tokens [M]`` -> ``(logp [M], entropy [M])`` in the compute dtype."""
    log_probs = F.log_softmax(logits.to(_compute_dtype(logits.dtype)), dim=-1)
    logp = log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    # H = -Σ_v p_v log p_v. A logit of -inf (a masked vocabulary entry) has p = 0 and log p = -inf;
    # clamping log p to the dtype's lowest finite value makes that entry 0 instead of NaN.
    finite_log_probs = log_probs.clamp(min=torch.finfo(log_probs.dtype).min)
    entropy = -(log_probs.exp() * finite_log_probs).sum(-1)
    return logp, entropy


def _hidden_rows(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tokens: torch.Tensor):
    return _logp_and_entropy_rows(F.linear(hidden, weight, bias), tokens)


def _chunked(fn, tensors: tuple[torch.Tensor, ...], extra: tuple, chunk_size: int):
    """Apply ``fn`` to row-chunks of the flattened ``tensors``; concatenate the two outputs.

    With gradients on, each chunk runs under activation checkpointing, so the backward pass keeps
    only the chunk's inputs and recomputes its softmax: the full ``[M, V]`` float32 softmax exists
    for one chunk at a time, forward and backward.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size}")
    total = tensors[0].shape[0]
    logps, entropies = [], []
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (*tensors, *extra) if isinstance(t, torch.Tensor)
    )
    for start in range(0, total, chunk_size):
        pieces = tuple(t[start : start + chunk_size] for t in tensors)
        if needs_grad:
            logp, entropy = checkpoint(fn, *pieces[:-1], *extra, pieces[-1], use_reentrant=False)
        else:
            logp, entropy = fn(*pieces[:-1], *extra, pieces[-1])
        logps.append(logp)
        entropies.append(entropy)
    return torch.cat(logps), torch.cat(entropies)


def token_logprobs_and_entropy(
    logits: torch.Tensor, tokens: torch.Tensor, *, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each chosen token and the full-vocabulary entropy at each position.

    ``logp[n,t] = log softmax(z[n,t])[tokens[n,t]]`` and
    ``entropy[n,t] = H_{n,t} = -Σ_v p_v log p_v`` with ``p = softmax(z[n,t])``, over all ``V``
    entries of the vocabulary (the token entropy of RED's entropy regulator, Eqs. 9 and 11).

    Args:
        logits: ``[N, T, V]``, already aligned with ``tokens`` (the logits that predict
            ``tokens[n, t]``, i.e. the model's output at position ``t - 1``).
        tokens: ``[N, T]`` integer token ids.
        chunk_size: if given, work on at most ``chunk_size`` of the ``N*T`` positions at a time
            (under activation checkpointing when gradients are needed), so the ``[N, T, V]`` float32
            softmax is never held at once. Results are identical to ``chunk_size=None``.

    Returns:
        ``(logp [N, T], entropy [N, T])`` in float64 for float64 logits, else float32.
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} disagree on [N, T]")
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_tokens = tokens.reshape(-1)
    if chunk_size is None:
        logp, entropy = _logp_and_entropy_rows(flat_logits, flat_tokens)
    else:
        logp, entropy = _chunked(_logp_and_entropy_rows, (flat_logits, flat_tokens), (), chunk_size)
    return logp.view(tokens.shape), entropy.view(tokens.shape)


def token_logprobs_and_entropy_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_logprobs_and_entropy` starting from the last hidden states.

    ``z[n,t] = hidden[n,t] @ weight.T (+ bias)`` is formed ``chunk_size`` positions at a time, so
    a caller never holds ``[N, T, V]`` logits (Qwen2.5's vocabulary has 151,936 entries: a 16×8192
    batch would need 80 GB of float32 logits). The matmul runs in the weight's dtype, as the
    model's own ``lm_head`` would; the softmax in float32 (float64 for float64 inputs).

    Only for models whose logits are a plain linear map of the final hidden states (Qwen2, Llama,
    Mistral); models with logit soft-capping or scaling need :func:`token_logprobs_and_entropy`.

    Args:
        hidden: ``[N, T, D]`` final hidden states aligned with ``tokens``.
        weight: ``[V, D]`` output-embedding matrix (``model.get_output_embeddings().weight``).
        tokens: ``[N, T]`` integer token ids.
        bias: optional ``[V]`` output bias.
        chunk_size: positions per chunk.

    Returns:
        ``(logp [N, T], entropy [N, T])``.
    """
    if hidden.shape[:-1] != tokens.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and tokens {tuple(tokens.shape)} disagree on [N, T]")
    if weight.shape[-1] != hidden.shape[-1]:
        raise ValueError(f"weight {tuple(weight.shape)} does not match hidden size {hidden.shape[-1]}")
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_tokens = tokens.reshape(-1)
    logp, entropy = _chunked(_hidden_rows, (flat_hidden, flat_tokens), (weight, bias), chunk_size)
    return logp.view(tokens.shape), entropy.view(tokens.shape)


# ------------------------------------------------------------------------------------------------
# Advantages, group accuracy, policy shift
# ------------------------------------------------------------------------------------------------


def _rewards_tensor(rewards) -> torch.Tensor:
    """Rewards as a float tensor with NaN for ungradable (``None``) entries."""
    if isinstance(rewards, torch.Tensor):
        if not rewards.is_floating_point():
            rewards = rewards.to(torch.get_default_dtype())
        return rewards
    return torch.tensor([math.nan if r is None else float(r) for r in rewards], dtype=torch.get_default_dtype())


def _grouped(values: torch.Tensor, group_size: int) -> torch.Tensor:
    if values.dim() != 1:
        raise ValueError(f"expected a 1-D tensor of per-row values; got shape {tuple(values.shape)}")
    if group_size < 1 or values.numel() % group_size:
        raise ValueError(f"{values.numel()} rows cannot be split into groups of {group_size}")
    return values.view(-1, group_size)


def group_advantages(rewards, group_size: int, *, scale: str = "std", eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages (GRPO, arXiv 2402.03300 Eq. 3; the advantage of RED's Eq. 10).

    ``Â_i = (R_i - mean_g(R)) / (std_g(R) + eps)`` for ``scale="std"``, and the Dr.GRPO form
    ``Â_i = R_i - mean_g(R)`` for ``scale="none"``, where the statistics run over the rows of
    ``i``'s group whose reward is gradable. ``std`` is the sample (unbiased, ``n - 1``) standard
    deviation, as ``torch.std``; a group with fewer than two gradable rows has ``std = 0``.
    Ungradable rows (``None`` or NaN) get advantage 0; a group whose rewards are all equal gets
    advantage 0 everywhere (no signal).

    Args:
        rewards: ``[N]`` tensor (NaN = ungradable) or a sequence of floats/``None``.
        group_size: rows per group; groups are contiguous, ``N % group_size == 0``.
        scale: one of ``"std"``, ``"none"``.
        eps: added to the std in the denominator.

    Returns:
        ``[N]`` advantages, in the rewards' dtype.
    """
    _check_choice("scale", scale, ADVANTAGE_SCALES)
    rewards = _rewards_tensor(rewards)
    if torch.isinf(rewards).any():
        raise ValueError("rewards must be finite or NaN (ungradable); got ±inf")
    grouped = _grouped(rewards, group_size)
    valid = ~torch.isnan(grouped)
    values = torch.where(valid, grouped, torch.zeros_like(grouped))
    count = valid.sum(-1, keepdim=True)
    mean = values.sum(-1, keepdim=True) / count.clamp(min=1)
    centered = torch.where(valid, grouped - mean, torch.zeros_like(grouped))
    advantages = centered
    if scale == "std":
        var = centered.pow(2).sum(-1, keepdim=True) / (count - 1).clamp(min=1)
        denominator = var.sqrt() + eps
        # With eps = 0 a zero-variance group would be 0/0; it carries no signal, so its Â is 0.
        advantages = torch.where(denominator > 0, centered / denominator, torch.zeros_like(centered))
    return advantages.reshape(-1)


def group_accuracy(
    rewards, is_offline: torch.Tensor, group_size: int, *, include_offline: bool = False
) -> torch.Tensor:
    """Per-group accuracy ``r̄`` broadcast to each row: the input of RED's policy shift (Eq. 8).

    ``r̄_g = mean of R_i over the gradable on-policy rows i of group g`` (the default, the paper's
    "sample accuracy" of the ``G`` rollouts); with ``include_offline=True`` the offline row's reward
    is averaged in too, as the authors' code does. A group with no gradable row has ``r̄ = 0``
    (no evidence that the model can solve it: imitate the teacher).

    Args:
        rewards: ``[N]`` tensor (NaN = ungradable) or a sequence of floats/``None``.
        is_offline: ``[N]`` bool, true for teacher rows.
        group_size: rows per group.
        include_offline: also average the offline row's reward.

    Returns:
        ``[N]`` group accuracy of each row's group, in the rewards' dtype.
    """
    rewards = _rewards_tensor(rewards)
    grouped = _grouped(rewards, group_size)
    used = ~torch.isnan(grouped)
    if not include_offline:
        used = used & ~_grouped(is_offline.to(torch.bool).to(rewards.device), group_size)
    values = torch.where(used, grouped, torch.zeros_like(grouped))
    accuracy = values.sum(-1) / used.sum(-1).clamp(min=1)
    return accuracy.repeat_interleave(group_size)


def policy_shift(logp: torch.Tensor, group_accuracy: torch.Tensor) -> torch.Tensor:
    """RED's accuracy-aware policy shift (Eq. 8): the offline row's behaviour probability.

    ``π_off,t = stopgrad(π_t + (1 - π_t) · r̄)`` with ``π_t = exp(logp_t)`` under the current
    policy and ``r̄`` the group accuracy. ``r̄ = 0`` gives ``π_off = π`` (the ratio ``π/π_off`` then
    has value 1 and the gradient of ``log π``: imitate the teacher); ``r̄ = 1`` gives ``π_off = 1``
    (the ratio is ``π`` itself: rely on the model's own policy). ``r̄`` is expected in ``[0, 1]``.

    Args:
        logp: ``[N, T]`` log-probabilities of the offline tokens.
        group_accuracy: ``[N]`` accuracy ``r̄`` of each row's group.

    Returns:
        ``[N, T]`` ``π_off``, carrying no gradient.
    """
    pi = logp.detach().exp()
    accuracy = group_accuracy.detach().to(pi.dtype).unsqueeze(-1)
    return pi + (1.0 - pi) * accuracy


def offline_importance_ratio(
    logp: torch.Tensor, group_accuracy: torch.Tensor, mode: str = "shift", *, gamma: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ratio ``r_off,t`` that multiplies the advantage of an offline (teacher) token.

    ============  ===========================================  ===============================
    mode          ``r_off,t``                                  source
    ============  ===========================================  ===============================
    ``shift``     ``π_t / stopgrad(π_t + (1 - π_t)·r̄)``        RED policy shift (Eq. 8)
    ``one``       ``π_t``  (``π_off = 1``)                      MixPolicy; RED-(I)
    ``on_policy`` ``π_t / stopgrad(π_t)``  (``π_off = π``)      offline rows treated on-policy
    ``luffy``     ``π_t / (π_t + γ)``                           LUFFY policy shaping
    ============  ===========================================  ===============================

    Args:
        logp: ``[N, T]`` log-probabilities of the offline tokens under the current policy.
        group_accuracy: ``[N]`` group accuracy ``r̄`` (only ``"shift"`` reads it).
        mode: one of ``OFFLINE_RATIOS``.
        gamma: LUFFY's shaping constant.

    Returns:
        ``(ratio [N, T], pi_off [N, T])``: the ratio (differentiable) and the behaviour probability
        it divides by, detached, for logging (``π + γ`` for ``"luffy"``, whose shaping equals
        ``π / (π + γ)``).
    """
    _check_choice("offline_ratio", mode, OFFLINE_RATIOS)
    pi = logp.exp()
    if mode == "shift":
        pi_off = policy_shift(logp, group_accuracy)
    elif mode == "one":
        pi_off = torch.ones_like(pi).detach()
    elif mode == "on_policy":
        pi_off = pi.detach()
    else:  # luffy: the denominator keeps its gradient, f(π) = π / (π + γ)
        return pi / (pi + gamma), (pi + gamma).detach()
    return pi / pi_off, pi_off


# ------------------------------------------------------------------------------------------------
# Rewards that join correctness and what the prompt asked for (BARD, arXiv 2511.01470)
# ------------------------------------------------------------------------------------------------

#: How budget fidelity treats a response shorter than its budget: ``two_sided`` rewards tracking
#: the budget, ``one_sided`` reads it as an upper bound. How correctness and fidelity combine:
#: ``product`` (the paper's choice) or ``sum`` (the additive variant the paper argues against).
BUDGET_FIDELITIES = ("two_sided", "one_sided")
BUDGET_COMBINES = ("product", "sum")


def budget_fidelity(
    lengths: torch.Tensor, budgets: torch.Tensor, *, form: str = "two_sided", tau: float = 0.5
) -> torch.Tensor:
    """How closely each response's length ``L`` keeps to its thinking budget ``b``, in ``[0, 1]``.

    BARD (arXiv 2511.01470) rewards "budget fidelity" without a formula in the text we could read;
    this one is inferred (a setting, documented as such)::

        two_sided:  f(L, b) = max(0, 1 − |L − b| / (τ b))
        one_sided:  f(L, b) = 1 if L ≤ b, else max(0, 1 − (L − b) / (τ b))

    Args:
        lengths, budgets: ``[N]`` response lengths (tokens, the end-of-sequence token not counted)
            and the budgets their prompts asked for (> 0).
        tau: the relative deviation at which fidelity reaches 0 (0.5: half the budget).
    Returns ``[N]`` float, the dtype of ``lengths`` if floating (else float32).
    """
    _check_choice("form", form, BUDGET_FIDELITIES)
    if tau <= 0:
        raise ValueError(f"tau must be > 0; got {tau}")
    dtype = lengths.dtype if lengths.is_floating_point() else torch.float32
    lengths, budgets = lengths.to(dtype), budgets.to(dtype)
    if bool((budgets <= 0).any()):
        raise ValueError("budgets must be > 0")
    over = (lengths - budgets) / (tau * budgets)
    if form == "two_sided":
        return (1 - over.abs()).clamp(min=0)
    return torch.where(lengths <= budgets, torch.ones_like(over), (1 - over).clamp(min=0))


def budget_reward(
    correct,
    lengths: torch.Tensor,
    budgets: torch.Tensor,
    *,
    combine: str = "product",
    form: str = "two_sided",
    tau: float = 0.5,
    weight: float = 1.0,
) -> torch.Tensor:
    """BARD's phase-2 reward: correctness joined with :func:`budget_fidelity`::

        product:  R = R_acc · f(L, b)          (the paper: right *and* within budget)
        sum:      R = R_acc + λ · f(L, b)      (the additive variant: a short wrong answer earns λ·f)

    ``correct`` is ``[N]`` (``1.0`` / ``0.0``; ``None`` or NaN = ungradable, which stays NaN, so the
    row stays out of the advantages). ``weight`` is ``λ``.
    """
    _check_choice("combine", combine, BUDGET_COMBINES)
    fidelity = budget_fidelity(lengths, budgets, form=form, tau=tau)
    accuracy = _rewards_tensor(correct).to(fidelity.dtype)
    return accuracy * fidelity if combine == "product" else accuracy + weight * fidelity


# ------------------------------------------------------------------------------------------------
# RAVR: reference-answer-guided variational reasoning (arXiv 2510.25206)
# ------------------------------------------------------------------------------------------------


def answer_utility(answer_logp: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """The utility of a reasoning path ``z``: how probable the policy finds the reference answer
    after it, ``s(z) = π_θ(y* | x, z)`` (RAVR, arXiv 2510.25206, the utility of Sec. 3), here
    length-normalised (inferred: the geometric mean over the answer's tokens, so answers of
    different lengths compare)::

        s(z) = exp( (1/|y*|) Σ_j log π_θ(y*_j | x, z, y*_{<j}) )

    Args:
        answer_logp: ``[N, A]`` log-probabilities of the reference answer's tokens after each path.
        answer_mask: ``[N, A]`` bool, the answer's tokens (each row has at least one).
    Returns ``[N]`` in ``(0, 1]``."""
    mask = answer_mask.to(answer_logp.dtype)
    if bool((mask.sum(-1) == 0).any()):
        raise ValueError("every row needs at least one answer token")
    values = torch.where(answer_mask, answer_logp, torch.zeros_like(answer_logp))
    return torch.exp(values.sum(-1) / mask.sum(-1))


def ravr_rewards(posterior_utility: torch.Tensor, prior_utility: torch.Tensor, group_size: int, prior_size: int):
    """The reward of each answer-conditioned (posterior) path: its utility over the prompt's
    question-only (prior) baseline (RAVR's utility-baseline reward; the baseline's form is inferred)::

        r(z) = s(z) − b(x),   b(x) = (1/G') Σ_k s(z'_k),   z'_k ∼ π_θ(· | x)

    ``posterior_utility`` is ``[P·G]`` (prompt-major, ``G = group_size``), ``prior_utility``
    ``[P·G']`` (``G' = prior_size``). Under group-normalised advantages the baseline is a per-prompt
    constant and cancels (:func:`group_advantages` of ``r`` equals that of ``s``); it changes the
    update only where advantages are not centred (``ravr.advantage = baseline``)."""
    posterior = _grouped(posterior_utility, group_size)
    baseline = _grouped(prior_utility, prior_size).mean(-1, keepdim=True)
    if posterior.shape[0] != baseline.shape[0]:
        raise ValueError(f"{posterior.shape[0]} posterior groups but {baseline.shape[0]} prior groups")
    return (posterior - baseline).reshape(-1)


def utility_weights(utility: torch.Tensor, group_size: int) -> torch.Tensor:
    """Each posterior path's share of its group's utility, ``w_i = s(z_i) / Σ_j s(z_j)`` (RAVR's
    utility reweighting of the posterior-to-prior term; inferred form). ``[N]`` → ``[N]``, no gradient."""
    grouped = _grouped(utility.detach(), group_size)
    return (grouped / grouped.sum(-1, keepdim=True)).reshape(-1)


def weighted_prior_nll(logp: torch.Tensor, response_mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The question-only policy learns the posterior's paths, weighted by their utility (RAVR's
    amortisation of ``q(z | x, y*)`` into ``π(z | x)``, the KL term of its ELBO read as weighted
    maximum likelihood; inferred)::

        L_prior = − Σ_i w_i · (1/|z_i|) Σ_t log π_θ(z_{i,t} | x, z_{i,<t})

    ``logp``/``response_mask`` ``[N, T]`` (the paths scored under the question alone), ``weights``
    ``[N]`` (:func:`utility_weights`, summing to 1 per group: the loss is a sum over groups)."""
    mask = response_mask.to(torch.bool)
    if bool((mask.sum(-1) == 0).any()):
        raise ValueError("every path needs at least one token")
    per_row = torch.where(mask, logp, torch.zeros_like(logp)).sum(-1) / mask.sum(-1).to(logp.dtype)
    return -(weights.to(per_row.dtype) * per_row).sum()


def ravr_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    is_transfer: torch.Tensor,
    row_weights: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    prior_coef: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RAVR's objective (arXiv 2510.25206): the answer-conditioned posterior ``q(z | x, y*)`` is
    trained with the clipped surrogate on its own samples, and the question-only prior ``π(z | x)``
    learns those samples by utility-weighted likelihood (the ELBO's ``KL(q ‖ π)`` term read as
    amortisation; the combination is inferred). Every row contributes one term, the loss is their
    mean over the step's rows::

        posterior row i (sampled after x, y*):   ℓ_i = −(1/|o_i|) Σ_t min(ρ_{i,t} Â_i, clip(ρ_{i,t}, 1−ε_low, 1+ε_high) Â_i)
        transfer row i (the same path after x):  ℓ_i = c_prior · u_i · (−(1/|z_i|) Σ_t log π_θ(z_{i,t} | x, z_{i,<t}))
        L = (1/N) Σ_i ℓ_i

    with ``u_i = G · w_i`` (:func:`utility_weights` scaled to mean 1 over a group of ``G``). With
    one transfer row per posterior row (``P`` groups of ``G``, ``N = 2PG``) this is
    ``L = ½ (L_GRPO + c_prior · (1/P) Σ_groups L_prior)``, ``L_prior`` of :func:`weighted_prior_nll`.

    Args:
        logp, old_logp: ``[N, T]`` (``old_logp`` is the sampling policy's on posterior rows).
        advantages: ``[N]`` or ``[N, T]`` (used on posterior rows only).
        response_mask: ``[N, T]``.
        is_transfer: ``[N]`` bool, the transfer rows.
        row_weights: ``[N]`` the ``u_i`` of the transfer rows (ignored elsewhere; no gradient).
        prior_coef: ``c_prior``.
    Returns ``(loss, metrics)``: ``ravr_posterior`` (the mean of ``ℓ`` over posterior rows),
    ``ravr_prior_nll`` (the ``u``-weighted mean NLL of the transfer rows), ``clip_fraction``."""
    mask = response_mask.to(torch.bool)
    transfer = is_transfer.to(torch.bool)
    has_tokens = mask.any(-1)
    dtype = _compute_dtype(logp.dtype)
    logp, old_logp = logp.to(dtype), old_logp.to(dtype)
    lengths = mask.sum(-1).clamp(min=1).to(dtype)
    ratio = torch.exp(torch.where(mask, logp - old_logp, torch.zeros_like(logp)))
    term, clipped = clipped_surrogate(ratio, advantages.to(dtype), eps_low, eps_high)
    posterior_rows = -torch.where(mask, term, torch.zeros_like(term)).sum(-1) / lengths
    nll_rows = -torch.where(mask, logp, torch.zeros_like(logp)).sum(-1) / lengths
    weights = row_weights.detach().to(dtype)
    rows = torch.where(transfer, prior_coef * weights * nll_rows, posterior_rows)
    counted = has_tokens.to(dtype)
    loss = (rows * counted).sum() / counted.sum().clamp(min=1)
    post, moved = has_tokens & ~transfer, has_tokens & transfer
    nan = torch.tensor(math.nan, dtype=dtype)
    metrics = {
        "ravr_posterior": posterior_rows[post].detach().mean() if post.any() else nan,
        "ravr_prior_nll": (weights * nll_rows)[moved].detach().mean() if moved.any() else nan,
        "clip_fraction": masked_mean(clipped.to(dtype), _row_mask(~transfer, mask)) if post.any() else nan,
    }
    return loss, metrics


def raw_advantages(rewards) -> torch.Tensor:
    """The reward itself as the advantage, ``Â_i = R_i`` (REINFORCE without a learned baseline;
    RAVR's ``baseline`` variant, whose reward ``s(z) − b(x)`` already subtracts one). Ungradable
    rows (NaN) get 0."""
    rewards = _rewards_tensor(rewards)
    return torch.where(torch.isnan(rewards), torch.zeros_like(rewards), rewards)


# ------------------------------------------------------------------------------------------------
# Per-token terms
# ------------------------------------------------------------------------------------------------


def clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float = 0.2, eps_high: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (arXiv 1707.06347 Eq. 7), the on-policy term of RED's Eq. 10.

    ``term_t = min(r_t·Â, clip(r_t, 1 - eps_low, 1 + eps_high)·Â)``.

    Args:
        ratio: ``[N, T]`` importance ratio ``r_t``.
        advantages: ``[N]`` per-row advantage ``Â`` (broadcast over ``T``) or ``[N, T]``.
        eps_low, eps_high: the clip range (asymmetric as in DAPO when they differ).

    Returns:
        ``(term [N, T], clipped [N, T] bool)``: the objective to maximise, and where the clipped
        branch is the smaller one (where clipping changes the gradient).
    """
    if advantages.dim() == ratio.dim() - 1:
        advantages = advantages.unsqueeze(-1)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * advantages
    return torch.minimum(unclipped, clipped), clipped < unclipped


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of ``KL(π_θ || π_ref)`` for tokens sampled from ``π_θ``.

    ``k3_t = exp(ref_logp_t - logp_t) - (ref_logp_t - logp_t) - 1 >= 0`` (Schulman, 2020; the KL
    penalty of GRPO, arXiv 2402.03300 Eq. 4). Shapes ``[N, T]`` -> ``[N, T]``.
    """
    delta = ref_logp - logp
    return delta.exp() - delta - 1.0


def entropy_aware_weight(entropy: torch.Tensor, coef: float) -> torch.Tensor:
    """SRFT's entropy-aware weight (arXiv 2506.19767): ``coef · stopgrad(exp(-H))``.

    SRFT uses ``coef = 0.5`` for the demonstration NLL (``w_sft``) and ``coef = 0.1`` for the
    positive self-rollouts (``w_rl``). ``entropy`` is the policy entropy ``H`` (any shape, usually
    a scalar mean token entropy); the result has its shape and carries no gradient.
    """
    return coef * torch.exp(-entropy.detach())


# ------------------------------------------------------------------------------------------------
# Aggregation
# ------------------------------------------------------------------------------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is true (NaN if nothing is); masked-out NaNs are ignored."""
    mask = mask.to(torch.bool)
    selected = torch.where(mask, values, torch.zeros_like(values))
    return selected.sum() / mask.sum()


def aggregate_loss(
    values: torch.Tensor,
    mask: torch.Tensor,
    aggregation: str = "seq-mean-token-mean",
    *,
    row_weights: torch.Tensor | None = None,
    norm_constant: float | None = None,
) -> torch.Tensor:
    """Reduce per-token values ``x[n,t]`` to a scalar; the one place aggregation is defined.

    With row weights ``c_n`` (1 if not given), ``m`` the mask, ``|o_n| = Σ_t m[n,t]`` and ``N'``
    the number of rows with at least one unmasked token:

    * ``"seq-mean-token-mean"``: ``(1/N') Σ_n c_n · (1/|o_n|) Σ_t m·x`` -- RED's Eq. 10, the
      authors' and LUFFY's aggregation (each row counts once, whatever its length).
    * ``"token-mean"``: ``Σ_n c_n Σ_t m·x / Σ_n |o_n|`` -- every token counts once (DAPO).
    * ``"seq-mean-token-sum-norm"``: ``(1/N') Σ_n c_n · Σ_t m·x / norm_constant`` -- Dr.GRPO's
      constant normaliser (arXiv 2503.20783); ``norm_constant`` (the generation budget) is required,
      so the loss does not depend on how much padding a batch carries.

    Masked positions are replaced by zero before the sum, so NaN or inf there never reach the
    result or its gradient. A batch with no unmasked token gives 0 (with zero gradient).

    Args:
        values: ``[N, T]`` per-token values.
        mask: ``[N, T]`` bool or 0/1 response mask.
        aggregation: one of ``AGGREGATIONS``.
        row_weights: optional ``[N]`` weights ``c_n`` (RED: ``w`` on offline rows, 1 elsewhere).
        norm_constant: the constant of ``"seq-mean-token-sum-norm"``.

    Returns:
        0-d tensor.
    """
    _check_choice("aggregation", aggregation, AGGREGATIONS)
    mask = mask.to(torch.bool)
    values = torch.where(mask, values, torch.zeros_like(values))
    lengths = mask.sum(-1).to(values.dtype)
    row_sums = values.sum(-1)
    if row_weights is not None:
        row_sums = row_sums * row_weights.to(values.dtype)
    if aggregation == "token-mean":
        return row_sums.sum() / lengths.sum().clamp(min=1)
    rows = (lengths > 0).sum().clamp(min=1)
    if aggregation == "seq-mean-token-mean":
        return (row_sums / lengths.clamp(min=1)).sum() / rows
    if norm_constant is None or not norm_constant > 0:
        raise ValueError("aggregation 'seq-mean-token-sum-norm' needs a positive norm_constant (the generation budget)")
    return row_sums.sum() / (rows * norm_constant)


def aggregation_units(mask: torch.Tensor, aggregation: str) -> torch.Tensor:
    """What :func:`aggregate_loss` divides by, counted on ``mask [N, T]``: tokens for
    ``"token-mean"``, rows with at least one token otherwise.

    A batch split into micro-batches gives the full-batch loss as
    ``Σ_k loss_k · units_k / Σ_k units_k`` (for ``"token-mean"``, and for the seq-mean modes); the
    trainer scales each micro-batch's loss by ``units_k / Σ units`` before ``backward``.
    """
    _check_choice("aggregation", aggregation, AGGREGATIONS)
    mask = mask.to(torch.bool)
    if aggregation == "token-mean":
        return mask.sum()
    return (mask.sum(-1) > 0).sum()


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------


def _row_mask(row_flags: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    return response_mask.to(torch.bool) & row_flags.to(torch.bool).unsqueeze(-1)


def red_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    is_offline: torch.Tensor,
    group_accuracy: torch.Tensor,
    w,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    offline_ratio: str = "shift",
    gamma: float = 0.1,
    aggregation: str = "seq-mean-token-mean",
    clip_offline: bool = False,
    norm_constant: float | None = None,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    is_cap: float | None = None,
    behaviour_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RED's unified objective (Eq. 10), as the sum of an on-policy and an offline term.

    ``L = -(1/N) Σ_n c_n · (1/|o_n|) Σ_t term_{n,t}`` (default ``"seq-mean-token-mean"``) with

    * on-policy rows (``c_n = 1``): ``term = min(r·Â, clip(r, 1-eps_low, 1+eps_high)·Â)``,
      ``r = exp(logp - old_logp)`` (the GRPO/PPO clipped surrogate);
    * offline rows (``c_n = w``, the entropy regulator's weight, Eqs. 9 and 11):
      ``term = r_off·Â`` with ``r_off`` chosen by ``offline_ratio`` (see :func:`offline_importance_ratio`):
      ``"shift"`` is RED's policy shift ``π / stopgrad(π + (1-π)·r̄)`` (Eq. 8); ``"one"``
      is MixPolicy (``π_off = 1``); ``"on_policy"`` is ``π / stopgrad(π)``; ``"luffy"`` is
      ``π/(π+γ)``. Unclipped by default, as in the authors' code and LUFFY; ``clip_offline=True``
      applies the same clipped surrogate to ``r_off``.

    Aggregations (see :func:`aggregate_loss`): ``"seq-mean-token-mean"`` (Eq. 10), ``"token-mean"``,
    ``"seq-mean-token-sum-norm"`` (Dr.GRPO; needs ``norm_constant``). With ``kl_coef > 0`` and
    ``ref_logp`` given, ``kl_coef · k3`` (:func:`kl_k3`) is added on the on-policy tokens, the only
    ones sampled from the policy (off by default, as in the paper's runs).

    Rollouts from an older policy (asynchronous rollouts, or the sampler's own log-probs as
    ``old_logp``): with ``behaviour_logp`` ``None`` and ``is_cap = C`` set, ``old_logp`` is the
    behaviour policy ``μ`` and the on-policy ratio is truncated, ``r = min(π/μ, C)`` (truncated
    importance sampling; on a negative advantage this is dual-clip PPO's bound ``C·Â``, Ye et al.
    2020, arXiv 1912.09729; on a positive one the clip at ``1 + eps_high`` binds first when
    ``C ≥ 1 + eps_high``, which the settings require: below that the cap would also bind on positive
    advantages, which neither TRL's ``delta`` nor verl's dual clip does). With ``behaviour_logp = log μ``
    given, ``old_logp`` is the proximal policy ``π_prox`` (the trainer's weights before the update)
    and each on-policy token is weighed by the stop-gradient ``ρ = min(π_prox/μ, C)`` (the decoupled
    objective of Hilton et al. 2021, arXiv 2110.00641, as AReaL uses it; verl's truncated IS):
    ``term = ρ · min(r·Â, clip(r)·Â)``, ``r = π/π_prox``. Behaviour log-probs that are NaN (not
    reported) count as ``ρ = 1``.

    Limit cases: with no offline row the loss is the GRPO loss; with ``r̄ = 0`` the offline term has
    the gradient of the advantage-weighted NLL ``-Â·log π``; with ``r̄ = 1`` it is ``-π·Â``.

    Args:
        logp: ``[N, T]`` current log-probabilities of the response tokens (differentiable).
        old_logp: ``[N, T]`` log-probabilities under the rollout policy (read on on-policy rows).
        advantages: ``[N]`` group advantages (:func:`group_advantages`), or ``[N, T]`` per-token ones.
        response_mask: ``[N, T]`` bool or 0/1, true on response tokens.
        is_offline: ``[N]`` bool, true for teacher rows.
        group_accuracy: ``[N]`` ``r̄`` of each row's group (:func:`group_accuracy`).
        w: offline weight (float or 0-d tensor), from :class:`redrl.regulator.EntropyRegulator`.
        eps_low, eps_high: clip range.
        offline_ratio: one of ``OFFLINE_RATIOS``.
        gamma: LUFFY's shaping constant.
        aggregation: one of ``AGGREGATIONS``.
        clip_offline: clip the offline ratio too.
        norm_constant: for ``"seq-mean-token-sum-norm"``.
        ref_logp: ``[N, T]`` reference-model log-probabilities, for the KL term.
        kl_coef: KL coefficient (0 disables it).
        is_cap: the truncation ``C`` of the behaviour correction (``None``: no truncation).
        behaviour_logp: ``[N, T]`` the sampler's log-probabilities, for the decoupled objective.

    Returns:
        ``(loss, metrics)``: the scalar loss and detached 0-d tensors: ``loss_on`` and ``loss_off``
        (the two named terms, ``loss = loss_on + loss_off (+ kl)``), ``clip_fraction`` (share of
        on-policy tokens where clipping is active), ``ratio_mean`` (on-policy ``r``),
        ``offline_ratio_mean`` (``r_off``), ``pi_off_mean`` and ``offline_pi_mean`` (``π_off`` and
        ``π`` on offline tokens), ``kl_ref`` (mean k3 on on-policy tokens, when computed). Means over an
        empty set are NaN.
    """
    _check_choice("aggregation", aggregation, AGGREGATIONS)
    mask = response_mask.to(torch.bool)
    offline_rows = is_offline.to(torch.bool)
    on_mask = _row_mask(~offline_rows, mask)
    off_mask = _row_mask(offline_rows, mask)

    # Padding and the unused old_logp of offline rows are replaced by neutral values *before* any
    # exp(), so garbage there (NaN, ±inf) cannot leak into the loss or the gradient.
    logp = torch.where(mask, logp, torch.zeros_like(logp))
    old_logp = torch.where(on_mask, old_logp.to(logp.dtype), logp.detach())
    advantages = advantages.to(logp.dtype)
    if advantages.dim() == 1:  # one advantage per row, the same for each of its tokens
        advantages = advantages.unsqueeze(-1)

    ratio = torch.exp(logp - old_logp)
    cap = math.inf if is_cap is None else float(is_cap)
    capped = torch.zeros_like(on_mask)
    if behaviour_logp is None and is_cap is not None:  # truncated IS: old_logp is the behaviour policy
        capped = ratio.detach() > cap
        ratio = ratio.clamp(max=cap)
    on_term, clipped = clipped_surrogate(ratio, advantages, eps_low, eps_high)
    if behaviour_logp is not None:  # decoupled: old_logp is the proximal policy, ρ corrects the behaviour
        behaviour = torch.where(on_mask & ~torch.isnan(behaviour_logp), behaviour_logp.to(logp.dtype), old_logp)
        rho = torch.exp(old_logp - behaviour).detach()
        capped = rho > cap
        on_term = rho.clamp(max=cap) * on_term

    off_ratio, pi_off = offline_importance_ratio(logp, group_accuracy.to(logp.dtype), offline_ratio, gamma=gamma)
    if clip_offline:
        off_term, _ = clipped_surrogate(off_ratio, advantages, eps_low, eps_high)
    else:
        off_term = off_ratio * advantages

    w = torch.as_tensor(w, dtype=logp.dtype, device=logp.device)
    row_weights = torch.where(offline_rows, w, torch.ones_like(w))

    def term_loss(term: torch.Tensor, term_mask: torch.Tensor) -> torch.Tensor:
        # Every term is aggregated over the whole batch (all N rows), so the terms add up to Eq. 10.
        return -aggregate_loss(
            torch.where(term_mask, term, torch.zeros_like(term)),
            mask,
            aggregation,
            row_weights=row_weights,
            norm_constant=norm_constant,
        )

    loss_on = term_loss(on_term, on_mask)
    loss_off = term_loss(off_term, off_mask)
    loss = loss_on + loss_off

    with torch.no_grad():
        metrics = {
            "loss_on": loss_on.detach(),
            "loss_off": loss_off.detach(),
            "clip_fraction": masked_mean(clipped.to(logp.dtype), on_mask),
            "is_capped_fraction": masked_mean(capped.to(logp.dtype), on_mask)
            if is_cap is not None
            else torch.tensor(math.nan),
            "ratio_mean": masked_mean(ratio, on_mask),
            "offline_ratio_mean": masked_mean(off_ratio, off_mask),
            "pi_off_mean": masked_mean(pi_off, off_mask),
            "offline_pi_mean": masked_mean(logp.exp(), off_mask),
        }
    if ref_logp is not None and kl_coef:
        ref_logp = torch.where(on_mask, ref_logp.to(logp.dtype), logp.detach())
        kl = kl_k3(logp, ref_logp)
        # Rows other than on-policy rows contribute zero (their k3 is 0 by construction above).
        loss = loss + kl_coef * aggregate_loss(kl, mask, aggregation, norm_constant=norm_constant)
        metrics["kl_ref"] = masked_mean(kl.detach(), on_mask)
    return loss, metrics


def sft_loss(
    logp: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    aggregation: str = "token-mean",
    norm_constant: float | None = None,
) -> torch.Tensor:
    """Supervised fine-tuning loss: the token-mean negative log-likelihood of the teacher trace.

    ``L = (1/Σ|o|) Σ_n Σ_t -log π(o_{n,t})`` (default ``"token-mean"``); with ``entropy`` and
    ``entropy_coef = β`` given, ``-β·H_t`` is added per token (ReLIFT's SFT step uses
    ``NLL - 0.001·H``, arXiv 2506.07527). Shapes: ``logp``, ``response_mask``, ``entropy``
    ``[N, T]``; returns a 0-d tensor.
    """
    values = -logp
    if entropy is not None and entropy_coef:
        values = values - entropy_coef * entropy
    return aggregate_loss(values, response_mask, aggregation, norm_constant=norm_constant)


def srft_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    rewards: torch.Tensor,
    response_mask: torch.Tensor,
    is_offline: torch.Tensor,
    entropy: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    sft_coef: float = 0.5,
    rl_coef: float = 0.1,
    aggregation: str = "seq-mean-token-mean",
    norm_constant: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SRFT's single-stage objective (arXiv 2506.19767), as its paper writes it.

    ``L = w_sft·NLL(demo) + L_rl(demo) + w_rl·(-log π(y⁺)) + log π(y⁻)`` with
    ``w_sft = sft_coef·stopgrad(exp(-H))`` and ``w_rl = rl_coef·stopgrad(exp(-H))``
    (:func:`entropy_aware_weight`), where

    * ``NLL(demo)``: ``-log π`` on offline (demonstration) tokens;
    * ``L_rl(demo)``: ``-min(r·Â, clip(r)·Â)`` on demonstration tokens, ``r = exp(logp - old_logp)``,
      ``Â`` the group advantage of the demonstration row;
    * ``y⁺`` / ``y⁻``: on-policy rows with reward > 0 / reward <= 0 (ungradable rows are skipped).

    Every per-token term is aggregated with the same ``aggregation`` over the whole batch.

    Args:
        logp, old_logp: ``[N, T]`` current and rollout-time log-probabilities.
        advantages: ``[N]`` group advantages.
        rewards: ``[N]`` rewards (NaN = ungradable).
        response_mask: ``[N, T]``.
        is_offline: ``[N]`` bool.
        entropy: the policy entropy ``H`` (0-d tensor, e.g. the mean token entropy of the rollouts).
        eps_low, eps_high, aggregation, norm_constant: as in :func:`red_loss`.
        sft_coef, rl_coef: SRFT's 0.5 and 0.1.

    Returns:
        ``(loss, metrics)`` with the four named terms ``sft_demo``, ``rl_demo``, ``positive`` and
        ``negative`` (``loss`` is their sum) and the two weights ``w_sft``, ``w_rl``.
    """
    mask = response_mask.to(torch.bool)
    offline_rows = is_offline.to(torch.bool)
    rewards = _rewards_tensor(rewards).to(logp.device)
    gradable = ~torch.isnan(rewards)
    demo_mask = _row_mask(offline_rows, mask)
    pos_mask = _row_mask(~offline_rows & gradable & (rewards > 0), mask)
    neg_mask = _row_mask(~offline_rows & gradable & (rewards <= 0), mask)

    logp = torch.where(mask, logp, torch.zeros_like(logp))
    old_logp = torch.where(demo_mask, old_logp.to(logp.dtype), logp.detach())
    w_sft = entropy_aware_weight(entropy, sft_coef).to(logp.dtype)
    w_rl = entropy_aware_weight(entropy, rl_coef).to(logp.dtype)
    demo_surrogate, _ = clipped_surrogate(torch.exp(logp - old_logp), advantages.to(logp.dtype), eps_low, eps_high)

    def term(values: torch.Tensor, term_mask: torch.Tensor) -> torch.Tensor:
        values = torch.where(term_mask, values, torch.zeros_like(values))
        return aggregate_loss(values, mask, aggregation, norm_constant=norm_constant)

    terms = {
        "sft_demo": w_sft * term(-logp, demo_mask),
        "rl_demo": term(-demo_surrogate, demo_mask),
        "positive": w_rl * term(-logp, pos_mask),
        "negative": term(logp, neg_mask),
    }
    loss = sum(terms.values())
    metrics = {name: value.detach() for name, value in terms.items()}
    metrics.update(w_sft=w_sft.detach(), w_rl=w_rl.detach())
    return loss, metrics


# ------------------------------------------------------------------------------------------------
# Distillation from a teacher's distributions (arXiv 2605.16826)
# ------------------------------------------------------------------------------------------------


def _kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float):
    """``[M, V]`` student and teacher logits -> ``(kl_fwd [M], kl_rev [M], entropy [M])``; see :func:`token_kl`.

    Written for memory: the teacher's side is computed in place (it is never differentiated) and
    every sum over the vocabulary is a row-wise dot product, so a chunk holds few ``[M, V]`` tensors."""
    dtype = _compute_dtype(student_logits.dtype)
    student, teacher = student_logits.to(dtype), teacher_logits.detach().to(dtype)
    if temperature != 1.0:
        student, teacher = student / temperature, teacher / temperature
    lowest = torch.finfo(dtype).min
    log_s = F.log_softmax(student, dim=-1)
    with torch.no_grad():
        log_t = F.log_softmax(teacher, dim=-1)
        p_t = log_t.exp()
        # A -inf logit (a masked entry) has p = 0: clamping its log to the lowest finite value makes
        # its term 0 · finite = 0 in the sums (and in their gradients) instead of 0 · inf = NaN.
        log_t.clamp_(min=lowest)
        teacher_self = torch.einsum("mv,mv->m", p_t, log_t)  # Σ p_T log p_T
    finite_s = log_s.clamp(min=lowest)
    p_s = log_s.exp()
    student_self = torch.einsum("mv,mv->m", p_s, finite_s)  # Σ p_S log p_S
    kl_fwd = teacher_self - torch.einsum("mv,mv->m", p_t, finite_s)
    kl_rev = student_self - torch.einsum("mv,mv->m", p_s, log_t)
    return kl_fwd, kl_rev, -student_self


def token_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact full-vocabulary token-level KL between student and teacher, both directions.

    With ``p_S = softmax(z_S / τ)`` and ``p_T = softmax(z_T / τ)`` at one position (``τ`` the
    distillation temperature; the teacher is never differentiated):

    * forward ``KL(p_T ‖ p_S) = Σ_v p_T(v) (log p_T(v) − log p_S(v))``: its gradient in the student's
      logits is ``(p_S − p_T) / τ``, cross-entropy against the teacher's distribution (SFT, DAgger);
    * reverse ``KL(p_S ‖ p_T) = Σ_v p_S(v) (log p_S(v) − log p_T(v))``: the exact expectation, over
      the student's next token, of the REINFORCE signal with dense reward ``log p_T − log p_S``
      (offline-RL-style distillation, OPD);

    both summed over all ``V`` entries (arXiv 2605.16826, "Gradient-level interpretation": the KL
    direction alone decides between a supervised and a reinforcement-learning update). Also the
    student's entropy ``H(p_S) = −Σ_v p_S log p_S`` at the same temperature.

    Args:
        student_logits, teacher_logits: ``[..., V]`` over the same vocabulary (align different
            vocabulary sizes before calling).
        temperature: ``τ > 0``.

    Returns:
        ``(kl_fwd, kl_rev, entropy)``, each ``[...]``, float32 (float64 for float64 inputs).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits differ"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    shape = student_logits.shape[:-1]
    vocab = student_logits.shape[-1]
    out = _kl_rows(student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab), temperature)
    return tuple(value.view(shape) for value in out)


def _kl_hidden_rows(
    student_hidden, teacher_hidden, student_weight, student_bias, teacher_weight, teacher_bias, temperature
):
    return _kl_rows(
        F.linear(student_hidden, student_weight, student_bias),
        F.linear(teacher_hidden, teacher_weight, teacher_bias),
        temperature,
    )


def token_kl_from_hidden(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    *,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`token_kl` starting from both models' last hidden states, ``chunk_size`` positions at a
    time, so neither the student's nor the teacher's ``[N, T, V]`` logits are ever held: each
    chunk forms both ``[chunk, V]`` projections, reduces them to three numbers per position and (with
    gradients on) is recomputed in the backward pass (activation checkpointing). The teacher's
    hidden states and weights get no gradient.

    Args:
        student_hidden: ``[N, T, D_S]``, aligned with the positions being distilled.
        student_weight: ``[V, D_S]`` (``model.get_output_embeddings().weight``).
        teacher_hidden: ``[N, T, D_T]``, the teacher's states at the same positions.
        teacher_weight: ``[V, D_T]``.
        student_bias, teacher_bias: optional ``[V]`` output biases.
        temperature: distillation temperature ``τ``.
        chunk_size: positions per chunk.

    Returns:
        ``(kl_fwd, kl_rev, entropy)``, each ``[N, T]``.
    """
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(
            f"student {tuple(student_hidden.shape)} and teacher {tuple(teacher_hidden.shape)} hidden states disagree on [N, T]"
        )
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(f"vocabularies differ: student {student_weight.shape[0]}, teacher {teacher_weight.shape[0]}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size}")
    shape = student_hidden.shape[:-1]
    flat_s = student_hidden.reshape(-1, student_hidden.shape[-1])
    flat_t = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
    extra = (student_weight, student_bias, teacher_weight.detach(), teacher_bias, temperature)
    needs_grad = torch.is_grad_enabled() and (flat_s.requires_grad or student_weight.requires_grad)
    parts = []
    for start in range(0, flat_s.shape[0], chunk_size):
        pieces = (flat_s[start : start + chunk_size], flat_t[start : start + chunk_size])
        if needs_grad:
            parts.append(checkpoint(_kl_hidden_rows, *pieces, *extra, use_reentrant=False))
        else:
            parts.append(_kl_hidden_rows(*pieces, *extra))
    return tuple(torch.cat([part[i] for part in parts]).view(shape) for i in range(3))


def teacher_top_k(
    teacher_logits: torch.Tensor, k: int, *, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """What a teacher-log-prob cache stores per position: the teacher's ``k`` most likely entries
    and the log-mass of the rest.

    With ``log p_T = log_softmax(z_T / τ)``: ``ids`` are the ``k`` entries of largest ``p_T`` and
    ``logp = [log p_T(ids_1), …, log p_T(ids_k), log(1 − Σ_i p_T(ids_i))]``, the last column the
    *tail bucket* (``−inf`` when ``k`` covers the vocabulary), computed as a log-sum-exp over the
    entries outside the top ``k``.

    Args:
        teacher_logits: ``[..., V]``.
        k: entries kept, ``1 ≤ k``; ``k ≥ V`` keeps them all (the exact distribution).

    Returns:
        ``(ids [..., k'] long, logp [..., k' + 1])`` with ``k' = min(k, V)``, float32 (float64 for
        float64 logits).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    logits = teacher_logits.detach()
    logp = F.log_softmax(logits.to(_compute_dtype(logits.dtype)) / temperature, dim=-1)
    top, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    tail = logp.scatter(-1, ids, float("-inf")).logsumexp(-1, keepdim=True)
    return ids, torch.cat([top, tail], dim=-1)


def _bucket_kl_rows(student_logits, teacher_ids, teacher_logp, temperature):
    dtype = _compute_dtype(student_logits.dtype)
    student = student_logits.to(dtype)
    if temperature != 1.0:
        student = student / temperature
    log_s = F.log_softmax(student, dim=-1)
    top = log_s.gather(-1, teacher_ids)
    tail = log_s.scatter(-1, teacher_ids, float("-inf")).logsumexp(-1, keepdim=True)
    log_q = torch.cat([top, tail], dim=-1)  # the student's k + 1 bucket log-masses
    log_p = teacher_logp.detach().to(dtype)
    p, q = log_p.exp(), log_q.exp()
    # An empty bucket (log-mass -inf) contributes 0 to either sum, not 0 * inf = NaN.
    kl_fwd = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)
    kl_rev = torch.where(q > 0, q * (log_q - log_p.clamp(min=torch.finfo(dtype).min)), torch.zeros_like(q)).sum(-1)
    entropy = -(log_s.exp() * log_s.clamp(min=torch.finfo(dtype).min)).sum(-1)
    return kl_fwd, kl_rev, entropy


def top_k_kl_from_hidden(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logp: torch.Tensor,
    *,
    student_bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token KLs against a cached teacher (:func:`teacher_top_k`): the KL between the two
    distributions *coarse-grained* to the teacher's top-``k`` entries plus one tail bucket.

    With buckets ``b ∈ {ids_1, …, ids_k, tail}``, ``P_T(b)`` from the cache and ``P_S(b)`` the
    student's mass on the same buckets (``P_S(tail) = 1 − Σ_i p_S(ids_i)``, from the student's full
    ``log_softmax(z_S / τ)``):

    * forward ``Σ_b P_T(b) (log P_T(b) − log P_S(b))``, reverse ``Σ_b P_S(b) (log P_S(b) − log P_T(b))``.

    Exact when ``k`` covers the vocabulary (the tail is empty). Otherwise an approximation from
    below: merging entries into buckets never increases a KL (the data-processing inequality), and
    the gap is the KL *within* the tail, weighted by its mass; ``benchmarks/teacher_cache.py``
    measures it against :func:`token_kl`. The student side is exact (``entropy`` is over the full
    vocabulary) and is computed ``chunk_size`` positions at a time with activation checkpointing,
    as :func:`token_kl_from_hidden`; the teacher needs no forward at all.

    Args:
        student_hidden: ``[N, T, D]``; ``student_weight`` ``[V, D]``; ``student_bias`` optional ``[V]``.
        teacher_ids: ``[N, T, k]`` entry ids; ``teacher_logp``: ``[N, T, k + 1]`` their log-probs
            and the tail's log-mass, at temperature ``τ``.

    Returns:
        ``(kl_fwd, kl_rev, entropy)``, each ``[N, T]``.
    """
    if teacher_ids.shape[:-1] != student_hidden.shape[:-1] or teacher_logp.shape[-1] != teacher_ids.shape[-1] + 1:
        raise ValueError(
            f"cached teacher ids {tuple(teacher_ids.shape)} and log-probs {tuple(teacher_logp.shape)} do not fit "
            f"hidden states {tuple(student_hidden.shape)} ([N, T, k] and [N, T, k + 1])"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size}")
    shape = student_hidden.shape[:-1]
    flat = student_hidden.reshape(-1, student_hidden.shape[-1])
    ids = teacher_ids.reshape(-1, teacher_ids.shape[-1]).long()
    logp = teacher_logp.reshape(-1, teacher_logp.shape[-1])

    def rows(hidden, chunk_ids, chunk_logp, weight, bias):
        return _bucket_kl_rows(F.linear(hidden, weight, bias), chunk_ids, chunk_logp, temperature)

    needs_grad = torch.is_grad_enabled() and (flat.requires_grad or student_weight.requires_grad)
    parts = []
    for start in range(0, flat.shape[0], chunk_size):
        pieces = (flat[start : start + chunk_size], ids[start : start + chunk_size], logp[start : start + chunk_size])
        if needs_grad:
            parts.append(checkpoint(rows, *pieces, student_weight, student_bias, use_reentrant=False))
        else:
            parts.append(rows(*pieces, student_weight, student_bias))
    if not parts:
        empty = flat.new_zeros(shape, dtype=_compute_dtype(flat.dtype))
        return empty, empty, empty
    return tuple(torch.cat([part[i] for part in parts]).view(shape) for i in range(3))


def kl_mixture_loss(
    kl_fwd: torch.Tensor, kl_rev: torch.Tensor, response_mask: torch.Tensor, *, alpha: float = 1.0
) -> torch.Tensor:
    """The distillation loss: the token mean of a token-level mixture of the two directions,

    ``L = (1/Σ|o|) Σ_n Σ_t [α · KL_fwd(n,t) + (1 − α) · KL_rev(n,t)]`` over response tokens,

    ``α = 1`` forward KL only (SFT with teacher prefixes, DAgger with student prefixes), ``α = 0``
    reverse KL only (offline-RL-style distillation, OPD); arXiv 2605.16826 finds ``α ≥ 0.8`` keeps
    the student's entropy ("KL mixing"). Shapes: ``[N, T]``; returns a 0-d tensor.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    mask = response_mask.to(torch.bool)
    mixed = alpha * torch.where(mask, kl_fwd, torch.zeros_like(kl_fwd)) + (1 - alpha) * torch.where(
        mask, kl_rev, torch.zeros_like(kl_rev)
    )
    return mixed.sum() / mask.sum().clamp(min=1)


def sampled_kl_loss(
    logp: torch.Tensor, teacher_logp: torch.Tensor, response_mask: torch.Tensor, *, estimator: str = "k1"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reverse KL from the sampled tokens only, the approximation verl's OPD and GRPO's KL penalty
    use when the full distributions are not at hand (``logp`` and ``teacher_logp`` are the student's
    and the teacher's log-probabilities of the tokens the *student* sampled, ``[N, T]``):

    * ``"k1"``: the dense-reward REINFORCE loss ``sg(log p_S − log p_T) · log p_S`` per token; its
      gradient's expectation under the student's sampling is exactly that of ``KL(p_S ‖ p_T)``
      (arXiv 2605.16826: reverse KL is REINFORCE with reward ``log p_T − log p_S``), from one sample
      per position instead of the whole vocabulary, so with far more variance;
    * ``"k3"``: ``r − 1 − log r`` with ``r = p_T / p_S`` (:func:`kl_k3`), differentiated directly, as
      GRPO's KL term; per-token value ≥ 0 and unbiased for the reverse KL, but its gradient's
      expectation, ``−Σ_v p_T ∇ log p_S``, is that of the *forward* KL.

    Both are token means over ``response_mask``. Returns ``(loss, estimate)``: the 0-d loss and the
    0-d sampled estimate of the reverse KL (the mean of ``log p_S − log p_T`` for k1, of k3 for k3).
    Only for student-sampled tokens; the exact terms are :func:`token_kl`.
    """
    _check_choice("estimator", estimator, ("k1", "k3"))
    mask = response_mask.to(torch.bool)
    logp = torch.where(mask, logp, torch.zeros_like(logp))
    teacher_logp = torch.where(mask, teacher_logp.detach().to(logp.dtype), logp.detach())
    if estimator == "k1":
        gap = (logp - teacher_logp).detach()
        return masked_mean(gap * logp, mask), masked_mean(gap, mask)
    k3 = kl_k3(logp, teacher_logp)
    return masked_mean(k3, mask), masked_mean(k3.detach(), mask)


# ------------------------------------------------------------------------------------------------
# Critics: values per token, GAE, the ensemble's disagreement (PPO, AsyPPO)
# ------------------------------------------------------------------------------------------------
#
# A critic's value ``V[n, t]`` lives on the target grid like ``logp``: it is the value of the state
# *before* the response token at position ``t`` is emitted (the prefix ``input_ids[n, : t + 1]``),
# read from the hidden state at input position ``t``, the same position whose logits score token
# ``t + 1``. The reward is the row's final grade, received on its last response token.


def gae(
    values: torch.Tensor, rewards: torch.Tensor, response_mask: torch.Tensor, *, gamma: float = 1.0, lam: float = 1.0
) -> torch.Tensor:
    """Generalized advantage estimation over each row's response (arXiv 1506.02438 Eqs. 11-16).

    ``δ_t = r_t + γ·V_{t+1} - V_t`` and ``Â_t = Σ_{l>=0} (γλ)^l δ_{t+l}``, over the response tokens
    of a row (the positions where ``response_mask`` is true, one contiguous span): the reward
    ``r_t`` is 0 except on the last response token, where it is the row's reward ``R_n``, and the
    value after the last token is 0 (the episode ends). With ``γ = λ = 1``, ``Â_t = R_n - V_t``.
    The critic's regression target (its return) is ``Â_t + V_t`` computed with the critic's own λ.

    Args:
        values: ``[N, T]`` values ``V_t`` on the target grid (no gradient is taken through them).
        rewards: ``[N]`` final rewards; a NaN (ungradable) row gets advantage 0 everywhere.
        response_mask: ``[N, T]`` bool response positions.
        gamma, lam: the discount ``γ`` and GAE's ``λ``, each in ``[0, 1]``.

    Returns:
        ``[N, T]`` advantages, 0 outside the response.
    """
    mask = response_mask.to(torch.bool)
    values = torch.where(mask, values.detach(), torch.zeros_like(values))
    known = ~torch.isnan(rewards)
    reward = torch.where(known, rewards, torch.zeros_like(rewards)).to(values.dtype)
    # the last response position of each row: where the mask is true and the next one is not
    after = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=-1)
    last = mask & ~after
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in range(values.shape[-1] - 1, -1, -1):
        inside = mask[:, t]
        delta = torch.where(last[:, t], reward, torch.zeros_like(reward)) + gamma * next_value - values[:, t]
        running = torch.where(inside, delta + gamma * lam * running, torch.zeros_like(running))
        advantages[:, t] = running
        next_value = torch.where(inside, values[:, t], torch.zeros_like(next_value))
    return torch.where(known.unsqueeze(-1), advantages, torch.zeros_like(advantages))


def critic_ensemble(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The critics' mean value and their disagreement (AsyPPO Eq. 4.2 and its uncertainty).

    ``V̄_t = (1/M) Σ_m V_m(s_t)`` and ``σ_t = sqrt((1/M) Σ_m (V_m(s_t) - V̄_t)²)`` (the population
    standard deviation, as the public implementation computes it; 0 with one critic).

    Args:
        values: ``[M, N, T]``, one row of values per critic.

    Returns:
        ``(mean [N, T], std [N, T])``.
    """
    return values.mean(0), values.std(0, correction=0)


def value_disagreement_masks(
    std: torch.Tensor, response_mask: torch.Tensor, *, advantage_share: float, entropy_share: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """AsyPPO's two masks from the critics' disagreement ``σ_t`` (arXiv 2510.01656, Eq. 4.3).

    Over all response tokens of the batch (``n`` of them): the advantage mask ``I^A_t`` is 0 on the
    ``max(1, int(n·k))`` tokens with the *lowest* ``σ`` (the critics agree: the gradient adds little)
    and 1 elsewhere; the entropy mask ``I^H_t`` is 0 on the ``max(1, int(n·h))`` tokens with the
    *highest* ``σ`` (spurious exploration) and 1 elsewhere; a share of 0 masks nothing. Ties are
    broken by the lower flat index (row-major), so the result is deterministic; the public
    implementation's ``topk`` breaks ties arbitrarily, and its entropy threshold may mask more than
    ``h`` on ties.

    Args:
        std: ``[N, T]`` disagreement ``σ_t`` (:func:`critic_ensemble`).
        response_mask: ``[N, T]`` bool response positions; the others are 1 in both masks.
        advantage_share, entropy_share: ``k`` and ``h`` in ``[0, 1]`` (the paper: 0.2 each).

    Returns:
        ``(advantage_mask, entropy_mask)``, each ``[N, T]`` bool, true where the term is kept.
    """
    for name, share in (("advantage_share", advantage_share), ("entropy_share", entropy_share)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be in [0, 1]; got {share}")
    mask = response_mask.to(torch.bool)
    selected = std.detach()[mask]
    n = selected.numel()

    def drop(order: torch.Tensor, share: float) -> torch.Tensor:
        keep = torch.ones(n, dtype=torch.bool, device=std.device)
        if share > 0 and n:
            keep[order[: max(1, int(n * share))]] = False
        full = torch.ones_like(mask)
        full[mask] = keep
        return full

    lowest_first = torch.argsort(selected, stable=True)
    highest_first = torch.argsort(-selected, stable=True)
    return drop(lowest_first, advantage_share), drop(highest_first, entropy_share)


def value_loss(values: torch.Tensor, returns: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """A critic's regression loss (AsyPPO Eq. 4.1, per critic on its own shard of the rows).

    ``L(φ) = mean over response tokens of (V_φ(s_t) - R_t)²``, ``R_t`` the return (:func:`gae`'s
    advantage plus the value it was computed from, with the critic's λ; with ``λ = γ = 1`` the
    final reward). Shapes ``[N, T]``; a 0-d tensor (NaN when the mask is empty).
    """
    return masked_mean((values - returns.detach()) ** 2, response_mask)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """How much of the returns' variance the values explain: ``1 - Var(R - V) / Var(R)`` over the
    response tokens (1: perfect; 0: no better than a constant; negative: worse). NaN when the
    returns do not vary (a variance below 1e-10: returns rebuilt as ``Â + V`` carry rounding
    noise). Shapes ``[N, T]``; returns a 0-d tensor."""
    mask = response_mask.to(torch.bool)
    r, v = returns.detach()[mask].double(), values.detach()[mask].double()
    spread = r.var(correction=0) if r.numel() else torch.tensor(math.nan, dtype=torch.float64)
    if not spread > 1e-10:
        return torch.tensor(math.nan)
    return (1.0 - (r - v).var(correction=0) / spread).float()


def ppo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    entropy: torch.Tensor,
    *,
    advantage_mask: torch.Tensor | None = None,
    entropy_mask: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    aggregation: str = "seq-mean-token-mean",
    norm_constant: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's policy loss with per-token advantages and an entropy bonus, masked as AsyPPO's Eq. 4.3.

    ``J = agg_n,t [ I^A_t · min(r_t Â_t, clip(r_t, 1 - ε_low, 1 + ε_high) Â_t) + β · I^H_t · H_t ]``,
    ``L = -J``, with ``r_t = exp(logp_t - old_logp_t)``, ``Â_t`` from a critic (:func:`gae`),
    ``H_t`` the policy's entropy at the token (differentiable) and ``agg`` as in
    :func:`aggregate_loss` (the paper: ``1/|o|`` per response, the default). Without masks (all 1)
    it is classic PPO's clipped objective with an entropy bonus (arXiv 1707.06347 Eq. 9, without
    the value term, which the critics train separately).

    Args:
        logp, old_logp, entropy, response_mask: ``[N, T]``.
        advantages: ``[N, T]`` (or ``[N]``, broadcast).
        advantage_mask, entropy_mask: ``[N, T]`` bool ``I^A``, ``I^H``
            (:func:`value_disagreement_masks`); ``None`` keeps every token.
        entropy_coef: ``β``.

    Returns:
        ``(loss, metrics)``; metrics ``ppo_pg`` (the mean masked surrogate), ``ppo_entropy`` (the
        mean entropy of the response tokens), ``clip_fraction``, ``ratio_mean``,
        ``adv_masked_fraction`` and ``entropy_filtered_fraction`` (shares of response tokens whose
        term the masks remove).
    """
    mask = response_mask.to(torch.bool)
    ratio = torch.exp(logp - old_logp)
    surrogate, clipped = clipped_surrogate(ratio, advantages, eps_low, eps_high)
    keep_a = torch.ones_like(mask) if advantage_mask is None else advantage_mask.to(torch.bool)
    keep_h = torch.ones_like(mask) if entropy_mask is None else entropy_mask.to(torch.bool)
    zero = torch.zeros_like(surrogate)
    policy = torch.where(keep_a, surrogate, zero)
    bonus = torch.where(keep_h, entropy, zero) * entropy_coef
    loss = -aggregate_loss(policy + bonus, mask, aggregation, norm_constant=norm_constant)
    metrics = {
        "ppo_pg": masked_mean(policy.detach(), mask),
        "ppo_entropy": masked_mean(entropy.detach(), mask),
        "clip_fraction": masked_mean(clipped.to(ratio.dtype), mask),
        "ratio_mean": masked_mean(ratio.detach(), mask),
        "adv_masked_fraction": masked_mean((~keep_a).to(ratio.dtype), mask),
        "entropy_filtered_fraction": masked_mean((~keep_h).to(ratio.dtype), mask),
    }
    return loss, metrics


# ------------------------------------------------------------------------------------------------
# The loss registry: every objective by name, called the same way
# ------------------------------------------------------------------------------------------------


@dataclass
class LossInputs:
    """Per-token inputs of one micro-batch's loss (``N`` rows, ``T`` positions on the target grid).

    ``logp`` (differentiable), ``old_logp``, ``entropy``, ``response_mask`` ``[N, T]``;
    ``advantages``, ``rewards`` (NaN = ungradable), ``is_offline``, ``group_accuracy`` ``[N]``;
    ``w`` the entropy regulator's weight of this step and ``h_rl`` the step's mean rollout entropy
    (both over the whole step, not the micro-batch); ``ref_logp`` ``[N, T]`` a reference model's
    log-probabilities where a KL term needs them; for distillation, ``kl_fwd`` and ``kl_rev``
    ``[N, T]`` the exact per-token KLs to the teacher (:func:`token_kl_from_hidden`, differentiable
    in the student);
    ``behaviour_logp`` ``[N, T]`` the sampler's log-probabilities when ``old_logp`` is the proximal
    policy (the decoupled objective of :func:`red_loss`); ``token_advantages`` ``[N, T]`` where the
    method's advantage estimator gives one per token (:data:`ADVANTAGE_ESTIMATORS`), else ``None``
    and each row's ``advantages`` holds for all its tokens (:meth:`per_token_advantages`);
    ``row_weights`` ``[N]`` a per-row weight where the batch carries one (RAVR's utility weights of
    its transfer rows), else ``None``; ``advantage_mask`` and ``entropy_mask`` ``[N, T]`` bool
    where a method's critics mask the two terms (:func:`value_disagreement_masks`), else ``None``."""

    logp: torch.Tensor
    old_logp: torch.Tensor
    entropy: torch.Tensor
    response_mask: torch.Tensor
    advantages: torch.Tensor
    rewards: torch.Tensor
    is_offline: torch.Tensor
    group_accuracy: torch.Tensor
    w: float = 1.0
    h_rl: float = math.nan
    ref_logp: torch.Tensor | None = None
    kl_fwd: torch.Tensor | None = None
    kl_rev: torch.Tensor | None = None
    behaviour_logp: torch.Tensor | None = None
    token_advantages: torch.Tensor | None = None
    row_weights: torch.Tensor | None = None
    advantage_mask: torch.Tensor | None = None
    entropy_mask: torch.Tensor | None = None

    def per_token_advantages(self) -> torch.Tensor:
        """``[N, T]`` token advantages, or ``[N]`` row advantages (broadcast over ``T`` by the terms)."""
        return self.advantages if self.token_advantages is None else self.token_advantages


@dataclass(frozen=True)
class LossSettings:
    """The numbers an objective takes besides its inputs, built once from the config.

    ``aggregation`` and ``norm_constant`` as in :func:`aggregate_loss`; ``eps_low``, ``eps_high``,
    ``offline_ratio``, ``gamma``, ``clip_offline``, ``kl_coef`` as in :func:`red_loss`;
    ``srft_sft_coef``, ``srft_rl_coef`` as in :func:`srft_loss`; ``sft_entropy_coef`` the
    ``β`` of :func:`sft_loss`; ``distill_alpha`` the ``α`` of :func:`kl_mixture_loss`; ``prior_coef`` the ``c_prior`` of
    :func:`ravr_loss`; ``entropy_coef`` the ``β`` of :func:`ppo_loss`; ``is_cap`` the truncation of :func:`red_loss`'s
    behaviour correction (``None`` where ``old_logp`` is the trainer's own)."""

    aggregation: str = "seq-mean-token-mean"
    norm_constant: float | None = None
    eps_low: float = 0.2
    eps_high: float = 0.2
    offline_ratio: str = "shift"
    gamma: float = 0.1
    clip_offline: bool = False
    kl_coef: float = 0.0
    srft_sft_coef: float = 0.5
    srft_rl_coef: float = 0.1
    sft_entropy_coef: float = 0.0
    distill_alpha: float = 1.0
    is_cap: float | None = None
    prior_coef: float = 1.0
    entropy_coef: float = 0.0


@dataclass(frozen=True)
class Objective:
    """A registered loss: ``fn(inputs, settings) -> (loss, metrics)``, the names of the metrics it
    reports (detached 0-d tensors; a method's log has every registered name, NaN where undefined),
    and what it declares about itself, which the loop asks instead of the objective's name:

    * ``kl_to_reference``: it takes ``LossInputs.ref_logp`` and ``LossSettings.kl_coef``;
    * ``scores_with_teacher``: it needs a teacher model's distributions (``kl_fwd`` / ``kl_rev``),
      measured inside the scorer's forward (:class:`redrl.modeling.DistillScorer`);
    * ``uses_rewards``: its gradient depends on the graded rewards, so a group without reward
      variance carries no signal (dynamic sampling may drop it); false for NLL and distillation;
    * ``aggregation``: the one aggregation it always uses (``None``: ``loss.aggregation``)."""

    fn: Callable[[LossInputs, LossSettings], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    metrics: tuple[str, ...]
    kl_to_reference: bool = False
    scores_with_teacher: bool = False
    uses_rewards: bool = True
    aggregation: str | None = None


def _red_objective(x: LossInputs, s: LossSettings):
    """:func:`red_loss` (Eq. 10)."""
    return red_loss(
        x.logp,
        x.old_logp,
        x.per_token_advantages(),
        x.response_mask,
        x.is_offline,
        x.group_accuracy,
        x.w,
        eps_low=s.eps_low,
        eps_high=s.eps_high,
        offline_ratio=s.offline_ratio,
        gamma=s.gamma,
        aggregation=s.aggregation,
        clip_offline=s.clip_offline,
        norm_constant=s.norm_constant,
        ref_logp=x.ref_logp,
        kl_coef=s.kl_coef,
        is_cap=s.is_cap,
        behaviour_logp=x.behaviour_logp,
    )


def _sft_objective(x: LossInputs, s: LossSettings):
    """:func:`sft_loss`, with ReLIFT's entropy bonus when ``sft_entropy_coef`` is set."""
    return sft_loss(
        x.logp,
        x.response_mask,
        entropy=x.entropy,
        entropy_coef=s.sft_entropy_coef,
        aggregation=s.aggregation,
        norm_constant=s.norm_constant,
    ), {}


def _srft_objective(x: LossInputs, s: LossSettings):
    """:func:`srft_loss`, its entropy ``H`` the step's mean rollout entropy."""
    return srft_loss(
        x.logp,
        x.old_logp,
        x.per_token_advantages(),
        x.rewards,
        x.response_mask,
        x.is_offline,
        torch.tensor(x.h_rl),
        eps_low=s.eps_low,
        eps_high=s.eps_high,
        sft_coef=s.srft_sft_coef,
        rl_coef=s.srft_rl_coef,
        aggregation=s.aggregation,
        norm_constant=s.norm_constant,
    )


def _distill_objective(x: LossInputs, s: LossSettings):
    """Distillation from a teacher's distributions: :func:`kl_mixture_loss` over the exact per-token
    KLs (the sampled estimators of :func:`sampled_kl_loss` stay math: the scorer measures the exact
    KLs, so the trainer has no use for an approximation of them)."""
    mask = x.response_mask.to(torch.bool)
    loss = kl_mixture_loss(x.kl_fwd, x.kl_rev, x.response_mask, alpha=s.distill_alpha)
    metrics = {"kl_fwd": masked_mean(x.kl_fwd.detach(), mask), "kl_rev": masked_mean(x.kl_rev.detach(), mask)}
    metrics["distill_entropy"] = masked_mean(x.entropy.detach(), mask)
    return loss, metrics


def _ravr_objective(x: LossInputs, s: LossSettings):
    """:func:`ravr_loss`: the offline rows of a RAVR batch are its transfer rows."""
    if x.row_weights is None:
        raise ValueError("the ravr objective needs the batch's row weights (its transfer rows' utility weights)")
    return ravr_loss(
        x.logp,
        x.old_logp,
        x.per_token_advantages(),
        x.response_mask,
        x.is_offline,
        x.row_weights,
        eps_low=s.eps_low,
        eps_high=s.eps_high,
        prior_coef=s.prior_coef,
    )


def _ppo_objective(x: LossInputs, s: LossSettings):
    """:func:`ppo_loss` on the critics' token advantages (each row's scalar broadcast where the batch
    has none), with their masks where the batch has them."""
    return ppo_loss(
        x.logp,
        x.old_logp,
        x.per_token_advantages(),
        x.response_mask,
        x.entropy,
        advantage_mask=x.advantage_mask,
        entropy_mask=x.entropy_mask,
        entropy_coef=s.entropy_coef,
        eps_low=s.eps_low,
        eps_high=s.eps_high,
        aggregation=s.aggregation,
        norm_constant=s.norm_constant,
    )


#: Every objective by name (``Method.objective``). Adding one: a function here with its
#: hand-computed test, and an entry in this dict.
LOSSES: dict[str, Objective] = {
    "red": Objective(
        _red_objective,
        (
            "loss_on",
            "loss_off",
            "clip_fraction",
            "ratio_mean",
            "offline_ratio_mean",
            "pi_off_mean",
            "offline_pi_mean",
            "kl_ref",
            "is_capped_fraction",
        ),
        kl_to_reference=True,
    ),
    "sft": Objective(_sft_objective, (), uses_rewards=False, aggregation="token-mean"),
    "srft": Objective(_srft_objective, ("sft_demo", "rl_demo", "positive", "negative", "w_sft", "w_rl")),
    "distill": Objective(
        _distill_objective,
        ("kl_fwd", "kl_rev", "distill_entropy"),
        scores_with_teacher=True,
        uses_rewards=False,
        aggregation="token-mean",  # a token mean of the per-token KLs
    ),
    "ravr": Objective(
        _ravr_objective,
        ("ravr_posterior", "ravr_prior_nll", "clip_fraction"),
        aggregation="seq-mean-token-mean",  # the mean over rows of each row's term
    ),
    "ppo": Objective(
        _ppo_objective,
        ("ppo_pg", "ppo_entropy", "clip_fraction", "ratio_mean", "adv_masked_fraction", "entropy_filtered_fraction"),
    ),
}


@dataclass(frozen=True)
class AdvantageInputs:
    """What an advantage estimator sees of one step's rows (``N`` rows, groups of ``group_size``
    contiguous rows, ``T`` positions on the target grid): ``rewards`` ``[N]`` (NaN = ungradable),
    ``response_mask`` ``[N, T]``, and the group normalisation's ``scale`` and ``eps``."""

    rewards: torch.Tensor
    response_mask: torch.Tensor
    group_size: int
    scale: str = "std"
    eps: float = 1e-6


@dataclass(frozen=True)
class AdvantageEstimator:
    """A registered advantage estimator: ``fn(inputs) -> [N]`` (one advantage per row) or ``[N, T]``
    (one per token, zero outside the response), kept apart from the per-token terms and the
    aggregation (as verl keeps its estimators beside its policy losses)."""

    fn: Callable[[AdvantageInputs], torch.Tensor]


def _group_relative(x: AdvantageInputs) -> torch.Tensor:
    """:func:`group_advantages` (GRPO's Eq. 3 / RED's Â): the row's reward against its group's."""
    return group_advantages(x.rewards, x.group_size, scale=x.scale, eps=x.eps)


#: Every advantage estimator by name (``Method.advantage``). Adding one (GAE, token credit): a
#: function here with its hand-computed test, and an entry in this dict.
ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "group": AdvantageEstimator(_group_relative),
    "raw": AdvantageEstimator(lambda x: raw_advantages(x.rewards)),
}


# ------------------------------------------------------------------------------------------------
# Entropy regulator (the stateless part; the state lives in redrl.regulator)
# ------------------------------------------------------------------------------------------------


def relative_entropy_change(h_now: float, h_prev: float) -> float:
    """RED's entropy change of one data source between two steps (Eq. 9).

    ``ΔH = |1 - H_t / H_{t-1}|``. ``H_{t-1} = 0`` gives 0 if ``H_t = 0`` and ``inf`` otherwise;
    a non-finite input gives NaN (the caller falls back to ``w = 1``).
    """
    h_now, h_prev = float(h_now), float(h_prev)
    if not (math.isfinite(h_now) and math.isfinite(h_prev)):
        return math.nan
    if h_prev == 0.0:
        return 0.0 if h_now == 0.0 else math.inf
    return abs(1.0 - h_now / h_prev)


def entropy_weight(delta_h_sft: float, delta_h_rl: float, max_weight: float) -> float:
    """RED's offline weight from the entropy changes (Eqs. 9 and 11).

    ``w = clip(ΔH_sft / ΔH_rl, 1, max_weight)``, with ``max_weight = G`` (rollouts per prompt) in
    the paper. Edge cases: ``0/0 -> 1``; ``x/0 -> max_weight`` for ``x > 0``; any non-finite input
    (NaN, inf) -> 1 with a warning, so one bad step cannot blow up the offline term.

    Args:
        delta_h_sft: ``ΔH_sft >= 0`` (:func:`relative_entropy_change` on the offline rows).
        delta_h_rl: ``ΔH_rl >= 0`` (the same on the on-policy rows).
        max_weight: upper clip, ``>= 1``.

    Returns:
        ``w`` as a Python float in ``[1, max_weight]``.
    """
    if not max_weight >= 1.0:
        raise ValueError(f"max_weight must be >= 1; got {max_weight}")
    delta_h_sft, delta_h_rl = float(delta_h_sft), float(delta_h_rl)
    if not (math.isfinite(delta_h_sft) and math.isfinite(delta_h_rl)):
        warnings.warn(
            f"entropy regulator: non-finite entropy change (ΔH_sft={delta_h_sft}, ΔH_rl={delta_h_rl}); using w = 1",
            RuntimeWarning,
            stacklevel=2,
        )
        return 1.0
    if delta_h_sft < 0 or delta_h_rl < 0:
        raise ValueError(f"entropy changes are absolute values; got ΔH_sft={delta_h_sft}, ΔH_rl={delta_h_rl}")
    if delta_h_rl == 0.0:
        return 1.0 if delta_h_sft == 0.0 else float(max_weight)
    return min(max(delta_h_sft / delta_h_rl, 1.0), float(max_weight))
