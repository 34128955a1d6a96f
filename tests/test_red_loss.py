"""RED's unified loss (Eq. 10): hand-computed values, a naive loop reference, limit cases, invariances."""

import math

import pytest
import torch

from redrl.objectives import AGGREGATIONS, OFFLINE_RATIOS, aggregation_units, red_loss

F64 = torch.float64


def hand_batch():
    """One group: two rollouts and one teacher row, T = 2.

    rollout 1 (Â = 1):    ratios (1.5, 1.0)  -> min(1.5, 1.2) = 1.2 (clipped), 1.0;  row mean 1.1
    rollout 2 (Â = -0.5): ratio 0.5, then padding -> min(-0.25, 0.8·-0.5 = -0.4) = -0.4 (clipped)
    teacher (Â = 2, w = 3, r̄ = 0.5): π = (0.2, 0.6)
        π_off = 0.2 + 0.8·0.5 = 0.6 -> r_off = 1/3;   π_off = 0.6 + 0.4·0.5 = 0.8 -> r_off = 0.75
        terms 2·(1/3) = 2/3 and 2·0.75 = 1.5;  row mean 13/12;  times w: 13/4 = 3.25
    seq-mean-token-mean: L = -(1.1 - 0.4 + 3.25) / 3 = -3.95 / 3
    token-mean:          L = -(1.2 + 1.0 - 0.4 + 3·(2/3 + 1.5)) / 5 = -8.3 / 5
    """
    old = torch.log(torch.tensor([[0.4, 0.3], [0.5, 0.5], [math.nan, math.nan]], dtype=F64))
    logp = torch.log(torch.tensor([[0.6, 0.3], [0.25, 0.9], [0.2, 0.6]], dtype=F64))
    return dict(
        logp=logp.clone().requires_grad_(),
        old_logp=old,
        advantages=torch.tensor([1.0, -0.5, 2.0], dtype=F64),
        response_mask=torch.tensor([[True, True], [True, False], [True, True]]),
        is_offline=torch.tensor([False, False, True]),
        group_accuracy=torch.tensor([0.5, 0.5, 0.5], dtype=F64),
        w=3.0,
    )


def test_hand_computed_seq_mean_token_mean():
    loss, metrics = red_loss(**hand_batch())
    assert loss.item() == pytest.approx(-3.95 / 3, abs=1e-12)
    assert metrics["loss_on"].item() == pytest.approx(-0.7 / 3, abs=1e-12)
    assert metrics["loss_off"].item() == pytest.approx(-3.25 / 3, abs=1e-12)
    assert metrics["clip_fraction"].item() == pytest.approx(2 / 3, abs=1e-12)  # 2 of 3 rollout tokens
    assert metrics["ratio_mean"].item() == pytest.approx((1.5 + 1.0 + 0.5) / 3, abs=1e-12)
    assert metrics["pi_off_mean"].item() == pytest.approx((0.6 + 0.8) / 2, abs=1e-12)
    assert metrics["offline_ratio_mean"].item() == pytest.approx((1 / 3 + 0.75) / 2, abs=1e-12)
    assert metrics["offline_pi_mean"].item() == pytest.approx((0.2 + 0.6) / 2, abs=1e-12)


def test_hand_computed_token_mean():
    loss, _ = red_loss(**hand_batch(), aggregation="token-mean")
    assert loss.item() == pytest.approx(-8.3 / 5, abs=1e-12)


def test_hand_computed_dr_grpo_constant_normaliser():
    # Row sums 2.2, -0.4 and 3·(2/3 + 1.5) = 6.5, each divided by the constant 4, mean over 3 rows.
    loss, _ = red_loss(**hand_batch(), aggregation="seq-mean-token-sum-norm", norm_constant=4.0)
    assert loss.item() == pytest.approx(-(2.2 - 0.4 + 6.5) / (3 * 4), abs=1e-12)
    with pytest.raises(ValueError, match="norm_constant"):
        red_loss(**hand_batch(), aggregation="seq-mean-token-sum-norm")


def test_hand_computed_clipped_offline_ratio():
    # clip_offline: r_off (1/3, 0.75) -> clip to (0.8, 0.8); Â = 2 > 0 so min(r·Â, clip·Â) = r·Â
    # for both (the lower clip only binds for Â < 0). With Â = -1 instead: min(-1/3, -0.8) = -0.8,
    # min(-0.75, -0.8) = -0.8 -> row mean -0.8, times w = 3: -2.4.
    batch = hand_batch()
    unclipped, _ = red_loss(**batch)
    clipped, _ = red_loss(**batch, clip_offline=True)
    assert clipped.item() == pytest.approx(unclipped.item(), abs=1e-12)
    batch["advantages"] = torch.tensor([1.0, -0.5, -1.0], dtype=F64)
    loss, metrics = red_loss(**batch, clip_offline=True)
    assert metrics["loss_off"].item() == pytest.approx(2.4 / 3, abs=1e-12)


def naive_red_loss(
    logp,
    old_logp,
    advantages,
    mask,
    is_offline,
    accuracy,
    w,
    *,
    eps_low,
    eps_high,
    mode,
    gamma,
    aggregation,
    clip_offline,
    norm_constant=None,
):
    """Eq. 10 written out one token at a time, with scalar autograd."""
    N, T = logp.shape
    row_sums, lengths = [], []
    for n in range(N):
        total = torch.zeros((), dtype=logp.dtype)
        count = 0
        A = advantages[n]
        for t in range(T):
            if not mask[n, t]:
                continue
            count += 1
            if not is_offline[n]:
                r = torch.exp(logp[n, t] - old_logp[n, t])
                term = torch.minimum(r * A, torch.clamp(r, 1 - eps_low, 1 + eps_high) * A)
            else:
                pi = torch.exp(logp[n, t])
                if mode == "shift":
                    r = pi / (pi + (1 - pi) * accuracy[n]).detach()
                elif mode == "one":
                    r = pi
                elif mode == "on_policy":
                    r = pi / pi.detach()
                else:
                    r = pi / (pi + gamma)
                term = r * A
                if clip_offline:
                    term = torch.minimum(term, torch.clamp(r, 1 - eps_low, 1 + eps_high) * A)
            total = total + term
        c = w if is_offline[n] else 1.0
        row_sums.append(c * total)
        lengths.append(count)
    rows = sum(1 for length in lengths if length > 0)
    if aggregation == "token-mean":
        return -sum(row_sums) / sum(lengths)
    if aggregation == "seq-mean-token-mean":
        return -sum(s / length for s, length in zip(row_sums, lengths) if length > 0) / rows
    return -sum(row_sums) / (rows * norm_constant)


def random_batch(seed, groups=3, rollouts=4, T=6, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    N = groups * (rollouts + 1)
    logp = torch.log(torch.rand(N, T, generator=g, dtype=dtype) * 0.98 + 0.01)
    old_logp = logp + 0.3 * torch.randn(N, T, generator=g, dtype=dtype)  # ratios spread across the clip
    lengths = torch.randint(1, T + 1, (N,), generator=g)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    is_offline = torch.tensor(([False] * rollouts + [True]) * groups)
    accuracy = torch.rand(groups, generator=g, dtype=dtype).repeat_interleave(rollouts + 1)
    advantages = torch.randn(N, generator=g, dtype=dtype)
    return dict(
        logp=logp.requires_grad_(),
        old_logp=old_logp,
        advantages=advantages,
        response_mask=mask,
        is_offline=is_offline,
        group_accuracy=accuracy,
        w=2.5,
    )


@pytest.mark.parametrize("mode", OFFLINE_RATIOS)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("clip_offline", [False, True])
def test_matches_naive_loop_reference_float64(mode, aggregation, clip_offline):
    seed = 100 * OFFLINE_RATIOS.index(mode) + 10 * AGGREGATIONS.index(aggregation) + int(clip_offline)
    batch = random_batch(seed=seed)
    kwargs = dict(
        eps_low=0.2,
        eps_high=0.28,
        gamma=0.1,
        aggregation=aggregation,
        clip_offline=clip_offline,
        norm_constant=8.0 if aggregation == "seq-mean-token-sum-norm" else None,
    )
    loss, _ = red_loss(**batch, offline_ratio=mode, **kwargs)
    (grad,) = torch.autograd.grad(loss, batch["logp"])
    ref = naive_red_loss(
        batch["logp"],
        batch["old_logp"],
        batch["advantages"],
        batch["response_mask"],
        batch["is_offline"],
        batch["group_accuracy"],
        batch["w"],
        mode=mode,
        **kwargs,
    )
    (ref_grad,) = torch.autograd.grad(ref, batch["logp"])
    assert abs(loss.item() - ref.item()) < 1e-9
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-9)


def test_no_offline_rows_is_the_grpo_loss():
    batch = random_batch(seed=5)
    batch["is_offline"] = torch.zeros_like(batch["is_offline"])
    loss, metrics = red_loss(**batch)
    # GRPO: -(1/N) Σ_n mean_t min(r·Â, clip(r)·Â), written independently of red_loss.
    ratio = torch.exp(batch["logp"] - batch["old_logp"])
    A = batch["advantages"].unsqueeze(-1)
    term = torch.minimum(ratio * A, ratio.clamp(0.8, 1.2) * A)
    m = batch["response_mask"].to(F64)
    grpo = -((term * m).sum(-1) / m.sum(-1)).mean()
    assert abs(loss.item() - grpo.item()) < 1e-12
    torch.testing.assert_close(
        torch.autograd.grad(loss, batch["logp"])[0], torch.autograd.grad(grpo, batch["logp"])[0], rtol=0, atol=1e-12
    )
    assert metrics["loss_off"].item() == 0.0
    assert math.isnan(metrics["pi_off_mean"].item())


def offline_only_grad(batch, **kwargs):
    # Only the offline term: zero the on-policy advantages so that term has no value or gradient.
    b = dict(batch)
    b["advantages"] = torch.where(batch["is_offline"], batch["advantages"], torch.zeros_like(batch["advantages"]))
    loss, metrics = red_loss(**b, **kwargs)
    return loss, torch.autograd.grad(loss, batch["logp"])[0], metrics


def test_zero_accuracy_gives_the_advantage_weighted_nll_gradient():
    batch = random_batch(seed=6)
    batch["group_accuracy"] = torch.zeros_like(batch["group_accuracy"])
    loss, grad, metrics = offline_only_grad(batch)
    # r̄ = 0: π_off = π, so the term is Â·π/sg(π) with gradient Â·∇log π: that of -(w/N) Σ mean_t Â·log π.
    off = batch["is_offline"]
    m = batch["response_mask"].to(F64)
    per_row = (batch["advantages"].unsqueeze(-1) * batch["logp"] * m).sum(-1) / m.sum(-1)
    nll = -(batch["w"] * per_row[off]).sum() / len(off)
    torch.testing.assert_close(grad, torch.autograd.grad(nll, batch["logp"])[0], rtol=0, atol=1e-12)
    assert metrics["offline_ratio_mean"].item() == pytest.approx(1.0, abs=1e-12)


def test_full_accuracy_relies_on_the_models_own_policy():
    batch = random_batch(seed=7)
    batch["group_accuracy"] = torch.ones_like(batch["group_accuracy"])
    loss, grad, metrics = offline_only_grad(batch)
    # r̄ = 1: π_off = 1, the term is π·Â itself (value and gradient).
    off = batch["is_offline"]
    m = batch["response_mask"].to(F64)
    per_row = (batch["advantages"].unsqueeze(-1) * batch["logp"].exp() * m).sum(-1) / m.sum(-1)
    target = -(batch["w"] * per_row[off]).sum() / len(off)
    assert abs(loss.item() - target.item()) < 1e-12
    torch.testing.assert_close(grad, torch.autograd.grad(target, batch["logp"])[0], rtol=0, atol=1e-12)
    assert metrics["pi_off_mean"].item() == pytest.approx(1.0, abs=1e-12)


def test_shift_with_full_accuracy_equals_mixpolicy():
    batch = random_batch(seed=8)
    batch["group_accuracy"] = torch.ones_like(batch["group_accuracy"])
    shift, _ = red_loss(**batch, offline_ratio="shift")
    one, _ = red_loss(**batch, offline_ratio="one")
    assert abs(shift.item() - one.item()) < 1e-12


def test_padding_and_garbage_in_it_change_nothing():
    batch = random_batch(seed=9)
    loss, _ = red_loss(**batch)
    (grad,) = torch.autograd.grad(loss, batch["logp"])

    N, T = batch["logp"].shape
    garbage = torch.tensor([math.nan, math.inf, -math.inf], dtype=F64).repeat(N, 1)
    padded = dict(batch)
    padded["logp"] = torch.cat([batch["logp"].detach(), garbage], dim=1).requires_grad_()
    padded["old_logp"] = torch.cat([batch["old_logp"], garbage.flip(1)], dim=1)
    padded["response_mask"] = torch.cat([batch["response_mask"], torch.zeros(N, 3, dtype=torch.bool)], dim=1)
    # Masked positions inside the rows get garbage too.
    padded["logp"].data[:, :T][~batch["response_mask"]] = math.nan
    padded_loss, _ = red_loss(**padded)
    (padded_grad,) = torch.autograd.grad(padded_loss, padded["logp"])
    assert abs(padded_loss.item() - loss.item()) < 1e-12
    torch.testing.assert_close(
        padded_grad[:, :T][batch["response_mask"]], grad[batch["response_mask"]], rtol=0, atol=1e-12
    )
    assert (padded_grad[:, :T][~batch["response_mask"]] == 0).all() and (padded_grad[:, T:] == 0).all()


def test_fully_padded_rows_do_not_count():
    batch = random_batch(seed=10)
    loss, _ = red_loss(**batch)
    extra = dict(batch)
    N, T = batch["logp"].shape
    extra["logp"] = torch.cat([batch["logp"].detach(), torch.zeros(2, T, dtype=F64)]).requires_grad_()
    extra["old_logp"] = torch.cat([batch["old_logp"], torch.zeros(2, T, dtype=F64)])
    extra["response_mask"] = torch.cat([batch["response_mask"], torch.zeros(2, T, dtype=torch.bool)])
    extra["is_offline"] = torch.cat([batch["is_offline"], torch.tensor([False, True])])
    extra["group_accuracy"] = torch.cat([batch["group_accuracy"], torch.zeros(2, dtype=F64)])
    extra["advantages"] = torch.cat([batch["advantages"], torch.ones(2, dtype=F64)])
    for aggregation in AGGREGATIONS:
        kwargs = dict(aggregation=aggregation, norm_constant=6.0)
        assert abs(red_loss(**extra, **kwargs)[0].item() - red_loss(**batch, **kwargs)[0].item()) < 1e-12


def test_equal_micro_batches_average_to_the_full_batch():
    # seq-mean-token-mean over N rows = mean of the losses of two halves of N/2 rows each, so
    # gradient accumulation over equal micro-batches reproduces the full-batch gradient.
    batch = random_batch(seed=11, groups=4)
    full, _ = red_loss(**batch)
    (full_grad,) = torch.autograd.grad(full, batch["logp"])
    half = batch["logp"].shape[0] // 2
    halves = []
    for rows in (slice(0, half), slice(half, None)):
        part = {k: (v[rows] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        halves.append(red_loss(**part)[0])
    accumulated = (halves[0] + halves[1]) / 2
    assert abs(accumulated.item() - full.item()) < 1e-12
    torch.testing.assert_close(torch.autograd.grad(accumulated, batch["logp"])[0], full_grad, rtol=0, atol=1e-12)


def test_named_terms_add_up_to_the_loss():
    batch = random_batch(seed=12)
    for aggregation in AGGREGATIONS:
        loss, metrics = red_loss(**batch, aggregation=aggregation, norm_constant=6.0)
        assert abs(loss.item() - (metrics["loss_on"] + metrics["loss_off"]).item()) < 1e-12


def test_float32_is_kept_and_agrees_with_float64():
    batch64 = random_batch(seed=13)
    batch32 = {
        k: (v.detach().float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
        for k, v in batch64.items()
    }
    batch32["logp"].requires_grad_()
    loss32, metrics32 = red_loss(**batch32)
    loss64, _ = red_loss(**batch64)
    assert loss32.dtype == torch.float32 and all(v.dtype == torch.float32 for v in metrics32.values())
    assert abs(loss32.item() - loss64.item()) < 1e-5


def test_w_as_a_tensor_equals_w_as_a_float():
    batch = random_batch(seed=14)
    as_float, _ = red_loss(**batch)
    batch["w"] = torch.tensor(2.5, dtype=F64)
    as_tensor, _ = red_loss(**batch)
    assert as_float.item() == as_tensor.item()


def test_k3_kl_term_on_rollout_tokens():
    batch = hand_batch()
    base, _ = red_loss(**batch)
    # Reference = current policy: k3 = 0, nothing changes.
    same, metrics = red_loss(**batch, ref_logp=batch["logp"].detach(), kl_coef=0.5)
    assert abs(same.item() - base.item()) < 1e-12 and metrics["kl_ref"].item() == 0.0
    # Reference probability half the policy's on rollout tokens: δ = ln 0.5,
    # k3 = 0.5 - ln 0.5 - 1 = 0.1931472 per token; on 3 rollout tokens, mean 0.1931472.
    ref = batch["logp"].detach() + math.log(0.5)
    loss, metrics = red_loss(**batch, ref_logp=ref, kl_coef=0.5)
    k3 = 0.5 - math.log(0.5) - 1
    assert metrics["kl_ref"].item() == pytest.approx(k3, abs=1e-12)
    # seq-mean-token-mean over all 3 rows: rollout rows have mean k3, the teacher row 0.
    assert loss.item() - base.item() == pytest.approx(0.5 * (2 * k3) / 3, abs=1e-12)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="offline_ratio must be one of 'shift', 'one', 'on_policy', 'luffy'"):
        red_loss(**hand_batch(), offline_ratio="sigmoid")
    with pytest.raises(ValueError, match="aggregation must be one of"):
        red_loss(**hand_batch(), aggregation="sum")


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_unequal_micro_batches_weighted_by_units_give_the_full_batch(aggregation):
    # What the trainer does with gradient accumulation: loss_k · units_k / Σ units, any split.
    batch = random_batch(seed=15, groups=3)
    kwargs = dict(aggregation=aggregation, norm_constant=6.0)
    full, _ = red_loss(**batch, **kwargs)
    (full_grad,) = torch.autograd.grad(full, batch["logp"])
    splits = [slice(0, 4), slice(4, 11), slice(11, None)]
    total = aggregation_units(batch["response_mask"], aggregation)
    accumulated = 0
    for rows in splits:
        part = {k: (v[rows] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        units = aggregation_units(part["response_mask"], aggregation)
        accumulated = accumulated + red_loss(**part, **kwargs)[0] * units / total
    assert abs(accumulated.item() - full.item()) < 1e-12
    torch.testing.assert_close(torch.autograd.grad(accumulated, batch["logp"])[0], full_grad, rtol=0, atol=1e-12)


def _one_rollout(logp, old, advantage):
    return dict(
        logp=torch.log(torch.tensor([logp], dtype=F64)).requires_grad_(),
        old_logp=torch.log(torch.tensor([old], dtype=F64)),
        advantages=torch.tensor([advantage], dtype=F64),
        response_mask=torch.tensor([[True, True]]),
        is_offline=torch.tensor([False]),
        group_accuracy=torch.tensor([0.0], dtype=F64),
        w=1.0,
    )


def test_truncated_importance_sampling_bounds_a_stale_ratio():
    """old_logp is the behaviour policy μ. Token 1: π/μ = 0.5/0.1 = 5, Â = -1: unbounded the clipped
    surrogate keeps min(-5, -1.2) = -5; truncated at C = 2 it is -2 (dual-clip's bound C·Â) with no
    gradient. Token 2: ratio 1, term -1, gradient -Â/2 = 0.5 on its log-prob."""
    batch = _one_rollout([0.5, 0.3], [0.1, 0.3], -1.0)
    loss, _ = red_loss(**batch)
    assert loss.item() == pytest.approx((5 + 1) / 2, abs=1e-12)
    batch = _one_rollout([0.5, 0.3], [0.1, 0.3], -1.0)
    loss, metrics = red_loss(**batch, is_cap=2.0)
    assert loss.item() == pytest.approx((2 + 1) / 2, abs=1e-12)
    assert metrics["is_capped_fraction"].item() == pytest.approx(0.5)
    loss.backward()
    assert batch["logp"].grad[0].tolist() == pytest.approx([0.0, 0.5], abs=1e-12)


def test_decoupled_objective_clips_around_the_proximal_policy_and_weighs_by_the_behaviour():
    """old_logp is π_prox. Token 1: ρ = π_prox/μ = 0.4/0.1 = 4, capped at 2; r = 0.44/0.4 = 1.1
    (inside the clip), Â = 1: term 2·1.1 = 2.2. Token 2: the sampler reported nothing (NaN): ρ = 1,
    r = 1, term 1. Loss -(2.2 + 1)/2 = -1.6; the gradient of token 1 is -ρ·r·Â/2 = -1.1."""
    batch = _one_rollout([0.44, 0.3], [0.4, 0.3], 1.0)
    behaviour = torch.tensor([[math.log(0.1), math.nan]], dtype=F64)
    loss, metrics = red_loss(**batch, is_cap=2.0, behaviour_logp=behaviour)
    assert loss.item() == pytest.approx(-1.6, abs=1e-12)
    assert metrics["is_capped_fraction"].item() == pytest.approx(0.5)
    loss.backward()
    assert batch["logp"].grad[0].tolist() == pytest.approx([-1.1, -0.5], abs=1e-12)
    # Without a cap ρ = 4: -(4.4 + 1)/2; with π_prox = μ it is the ordinary clipped surrogate.
    batch = _one_rollout([0.44, 0.3], [0.4, 0.3], 1.0)
    assert red_loss(**batch, behaviour_logp=behaviour)[0].item() == pytest.approx(-2.7, abs=1e-12)
    batch = _one_rollout([0.44, 0.3], [0.4, 0.3], 1.0)
    same = red_loss(**batch, is_cap=2.0, behaviour_logp=batch["old_logp"].clone())[0]
    assert same.item() == pytest.approx(red_loss(**_one_rollout([0.44, 0.3], [0.4, 0.3], 1.0))[0].item(), abs=1e-12)
