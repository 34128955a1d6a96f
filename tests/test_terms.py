"""Aggregation, the SFT term, the k3 estimator and SRFT's objective."""

import math

import pytest
import torch

from redrl.objectives import (
    AGGREGATIONS,
    aggregate_loss,
    entropy_aware_weight,
    kl_k3,
    masked_mean,
    sft_loss,
    srft_loss,
)

F64 = torch.float64


def test_aggregate_hand_computed():
    # Row 1: (1, 2, 3) all valid; row 2: (4, pad, pad); row 3: fully padded (does not count).
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, math.nan, 9.0], [math.inf, 5.0, 5.0]], dtype=F64)
    m = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    c = torch.tensor([1.0, 0.5, 7.0], dtype=F64)
    # seq-mean-token-mean: (mean(1,2,3) + 4) / 2 = 3;  with c: (2 + 0.5·4) / 2 = 2
    assert aggregate_loss(x, m).item() == pytest.approx(3.0)
    assert aggregate_loss(x, m, row_weights=c).item() == pytest.approx(2.0)
    # token-mean: (1+2+3+4) / 4 = 2.5;  with c: (6 + 0.5·4) / 4 = 2
    assert aggregate_loss(x, m, "token-mean").item() == pytest.approx(2.5)
    assert aggregate_loss(x, m, "token-mean", row_weights=c).item() == pytest.approx(2.0)
    # Dr.GRPO constant 10: (6 + 4) / (2 rows · 10) = 0.5
    assert aggregate_loss(x, m, "seq-mean-token-sum-norm", norm_constant=10).item() == pytest.approx(0.5)


def test_aggregate_empty_batch_is_zero_with_zero_gradient():
    x = torch.randn(2, 3, dtype=F64, requires_grad=True)
    for aggregation in AGGREGATIONS:
        loss = aggregate_loss(x, torch.zeros(2, 3), aggregation, norm_constant=3.0)
        assert loss.item() == 0.0
        assert (torch.autograd.grad(loss, x)[0] == 0).all()


def test_masked_mean_ignores_masked_nan_and_is_nan_when_empty():
    assert masked_mean(torch.tensor([1.0, math.nan, 3.0]), torch.tensor([1, 0, 1])).item() == 2.0
    assert math.isnan(masked_mean(torch.tensor([1.0]), torch.tensor([0])).item())


def test_sft_loss_hand_computed():
    # Token probabilities (0.5, 0.25 | 0.5, pad): NLL = (ln 2 + ln 4 + ln 2) / 3 = 4·ln 2 / 3.
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.1]], dtype=F64))
    mask = torch.tensor([[1, 1], [1, 0]])
    assert sft_loss(logp, mask).item() == pytest.approx(4 * math.log(2) / 3, abs=1e-12)
    # ReLIFT's entropy bonus: NLL - 0.001·H, H = (1, 2 | 3, pad) -> minus 0.001·6/3 = 0.002.
    entropy = torch.tensor([[1.0, 2.0], [3.0, 100.0]], dtype=F64)
    with_bonus = sft_loss(logp, mask, entropy=entropy, entropy_coef=0.001)
    assert with_bonus.item() == pytest.approx(4 * math.log(2) / 3 - 0.002, abs=1e-12)


def test_k3_hand_computed_and_non_negative():
    # δ = ref - logp = ln 2: k3 = 2 - ln 2 - 1 = 0.3068528;  δ = 0: 0.
    logp = torch.tensor([0.0, -1.0], dtype=F64)
    ref = torch.tensor([math.log(2.0), -1.0], dtype=F64)
    torch.testing.assert_close(kl_k3(logp, ref), torch.tensor([1 - math.log(2), 0.0], dtype=F64))
    assert (kl_k3(torch.randn(100, dtype=F64), torch.randn(100, dtype=F64)) >= 0).all()


def test_entropy_aware_weight():
    # H = ln 2: exp(-H) = 0.5 -> 0.5·0.5 = 0.25 (w_sft) and 0.1·0.5 = 0.05 (w_rl); no gradient.
    h = torch.tensor(math.log(2.0), dtype=F64, requires_grad=True)
    assert entropy_aware_weight(h, 0.5).item() == pytest.approx(0.25)
    assert entropy_aware_weight(h, 0.1).item() == pytest.approx(0.05)
    assert not entropy_aware_weight(h, 0.5).requires_grad


def naive_srft(logp, old_logp, adv, rewards, mask, is_offline, H, eps=0.2):
    """SRFT's four terms, each a seq-mean-token-mean over all N rows, one token at a time."""
    N, T = logp.shape
    w_sft, w_rl = 0.5 * math.exp(-H), 0.1 * math.exp(-H)
    total = torch.zeros((), dtype=logp.dtype)
    for n in range(N):
        tokens = [t for t in range(T) if mask[n, t]]
        row = torch.zeros((), dtype=logp.dtype)
        for t in tokens:
            if is_offline[n]:
                r = torch.exp(logp[n, t] - old_logp[n, t])
                surrogate = torch.minimum(r * adv[n], r.clamp(1 - eps, 1 + eps) * adv[n])
                row = row + w_sft * -logp[n, t] - surrogate
            elif not math.isnan(rewards[n]):
                row = row + (w_rl * -logp[n, t] if rewards[n] > 0 else logp[n, t])
        total = total + row / len(tokens)
    return total / N


def test_srft_matches_naive_reference():
    g = torch.Generator().manual_seed(4)
    N, T = 8, 5
    logp = torch.log(torch.rand(N, T, generator=g, dtype=F64) * 0.9 + 0.05).requires_grad_()
    old_logp = logp.detach() + 0.3 * torch.randn(N, T, generator=g, dtype=F64)
    mask = torch.arange(T) < torch.randint(1, T + 1, (N, 1), generator=g)
    is_offline = torch.tensor([False, False, False, True] * 2)
    rewards = torch.tensor([1.0, 0.0, math.nan, 1.0, 0.0, 0.0, 1.0, 1.0], dtype=F64)
    adv = torch.randn(N, generator=g, dtype=F64)
    H = 0.7
    loss, metrics = srft_loss(logp, old_logp, adv, rewards, mask, is_offline, torch.tensor(H, dtype=F64))
    ref = naive_srft(logp, old_logp, adv, rewards.tolist(), mask, is_offline, H)
    assert abs(loss.item() - ref.item()) < 1e-12
    torch.testing.assert_close(
        torch.autograd.grad(loss, logp)[0], torch.autograd.grad(ref, logp)[0], rtol=0, atol=1e-12
    )
    parts = metrics["sft_demo"] + metrics["rl_demo"] + metrics["positive"] + metrics["negative"]
    assert abs(parts.item() - loss.item()) < 1e-12
    assert metrics["w_sft"].item() == pytest.approx(0.5 * math.exp(-H))
