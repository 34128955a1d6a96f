"""The loss registry: every objective is called the same way and reports what it declares."""

import math

import pytest
import torch

from redrl.objectives import LOSSES, LossInputs, LossSettings, red_loss

F64 = torch.float64


def _inputs(**changes) -> LossInputs:
    # Two groups of (one rollout, one teacher row), T = 2; row 1's second token is padding.
    values = dict(
        logp=torch.tensor([[-1.0, -2.0], [-3.0, 0.0], [-0.5, -0.5], [-1.5, -2.5]], dtype=F64, requires_grad=True),
        old_logp=torch.tensor([[-1.1, -2.0], [0.0, 0.0], [-0.5, -0.4], [0.0, 0.0]], dtype=F64),
        entropy=torch.tensor([[0.5, 1.0], [2.0, 9.0], [1.0, 1.0], [0.5, 0.5]], dtype=F64),
        response_mask=torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]], dtype=torch.bool),
        advantages=torch.tensor([0.5, -0.5, -1.0, 1.0], dtype=F64),
        rewards=torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=F64),
        is_offline=torch.tensor([False, True, False, True]),
        group_accuracy=torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=F64),
        w=2.0,
        h_rl=0.75,
    )
    return LossInputs(**(values | changes))


def test_sft_objective_is_the_token_mean_nll_minus_the_entropy_bonus():
    x = _inputs()
    # Seven response tokens: NLL 1 + 2 + 3 + 0.5 + 0.5 + 1.5 + 2.5 = 11; entropies 0.5 + 1 + 2 + 1 + 1 + 0.5 + 0.5 = 6.5.
    loss, metrics = LOSSES["sft"].fn(x, LossSettings(aggregation="token-mean"))
    assert loss.item() == pytest.approx(11 / 7, abs=1e-12) and metrics == {}
    loss, _ = LOSSES["sft"].fn(x, LossSettings(aggregation="token-mean", sft_entropy_coef=0.1))
    assert loss.item() == pytest.approx((11 - 0.1 * 6.5) / 7, abs=1e-12)


def test_red_objective_passes_every_setting_through():
    x = _inputs()
    settings = LossSettings(
        eps_low=0.1, eps_high=0.3, offline_ratio="luffy", gamma=0.2, aggregation="token-mean", clip_offline=True
    )
    loss, metrics = LOSSES["red"].fn(x, settings)
    expected, reference = red_loss(
        x.logp,
        x.old_logp,
        x.advantages,
        x.response_mask,
        x.is_offline,
        x.group_accuracy,
        2.0,
        eps_low=0.1,
        eps_high=0.3,
        offline_ratio="luffy",
        gamma=0.2,
        aggregation="token-mean",
        clip_offline=True,
    )
    assert loss.item() == expected.item()
    assert {k: v.item() for k, v in metrics.items() if math.isfinite(v.item())} == {
        k: v.item() for k, v in reference.items() if math.isfinite(v.item())
    }


def test_srft_objective_takes_the_steps_rollout_entropy():
    x = _inputs()
    _, metrics = LOSSES["srft"].fn(x, LossSettings(srft_sft_coef=0.5, srft_rl_coef=0.1))
    # SRFT's weights are coef · exp(-H) with H = h_rl = 0.75 (stop-gradient; H is a float32 scalar).
    assert metrics["w_sft"].item() == pytest.approx(0.5 * math.exp(-0.75), abs=1e-7)
    assert metrics["w_rl"].item() == pytest.approx(0.1 * math.exp(-0.75), abs=1e-7)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_objective_reports_exactly_what_it_declares_and_has_a_gradient(name):
    kl = torch.tensor([[0.2, 0.4], [0.6, 99.0], [0.1, 0.3], [0.5, 0.7]], dtype=F64)  # 99: padding
    x = _inputs(
        ref_logp=torch.full((4, 2), -1.0, dtype=F64),
        kl_fwd=kl.clone().requires_grad_(),
        kl_rev=(2 * kl).requires_grad_(),
        row_weights=torch.tensor([1.0, 1.5, 1.0, 0.5], dtype=F64),  # a weight per offline row (RAVR's transfer rows)
    )
    for _ in range(1):
        loss, metrics = LOSSES[name].fn(x, LossSettings(kl_coef=0.1, distill_alpha=0.8))
        grads = torch.autograd.grad(loss, (x.logp, x.kl_fwd, x.kl_rev), allow_unused=True)
        grads = [g for g in grads if g is not None]
        assert all(torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0
        assert all(g[1, 1] == 0 for g in grads)  # padding never gets a gradient
        assert set(metrics) == set(LOSSES[name].metrics)


def test_distill_objective_mixes_the_exact_kls_by_alpha():
    kl_fwd = torch.tensor([[1.0, 2.0], [3.0, 0.0], [1.0, 1.0], [1.0, 1.0]], dtype=F64)
    x = _inputs(kl_fwd=kl_fwd, kl_rev=2 * kl_fwd)
    loss, metrics = LOSSES["distill"].fn(x, LossSettings(distill_alpha=0.8))
    # seven response tokens, forward sum 10: 0.8 * 10/7 + 0.2 * 20/7
    assert loss.item() == pytest.approx(12 / 7, abs=1e-12)
    assert metrics["kl_fwd"].item() == pytest.approx(10 / 7) and metrics["kl_rev"].item() == pytest.approx(20 / 7)
    assert metrics["distill_entropy"].item() == pytest.approx(6.5 / 7)
