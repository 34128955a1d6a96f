"""Group advantages, group accuracy and the policy shift (Eq. 8)."""

import math

import pytest
import torch

from redrl.objectives import ADVANTAGE_SCALES, group_accuracy, group_advantages, policy_shift


def test_hand_computed_std_and_none():
    # Group 1: rewards (1, 0, 0, 1): mean 0.5; sample std = sqrt(4·0.25 / 3) = sqrt(1/3) = 0.5773503.
    #   Â = ±0.5 / 0.5773503 = ±0.8660254.   Dr.GRPO ("none"): Â = ±0.5.
    # Group 2: rewards (1, 1, 1, 1): zero variance, no signal -> Â = 0.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    a = math.sqrt(3) / 2
    expected = torch.tensor([a, -a, -a, a, 0, 0, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(group_advantages(rewards, 4, eps=0.0), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        group_advantages(rewards, 4, scale="none"),
        torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0], dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )


def test_eps_is_added_to_the_std():
    # (1, 0): mean 0.5, sample std = sqrt(0.5) = 0.7071068; Â = 0.5 / (0.7071068 + 0.1).
    adv = group_advantages(torch.tensor([1.0, 0.0], dtype=torch.float64), 2, eps=0.1)
    assert adv[0].item() == pytest.approx(0.5 / (math.sqrt(0.5) + 0.1), abs=1e-12)


def test_ungradable_rewards_are_left_out_and_get_zero():
    # (1, None, 0): statistics over (1, 0): mean 0.5, std 0.7071068 -> (0.7071068, 0, -0.7071068).
    # (None, 1, None): one gradable row: std taken as 0, Â = 0. (None, None, None): all 0.
    adv = group_advantages([1.0, None, 0.0, None, 1.0, None, None, None, None], 3, eps=0.0)
    h = 1 / math.sqrt(2)
    torch.testing.assert_close(adv, torch.tensor([h, 0, -h, 0, 0, 0, 0, 0, 0]), rtol=0, atol=1e-6)
    nan_adv = group_advantages(torch.tensor([1.0, math.nan, 0.0]), 3, eps=0.0)
    torch.testing.assert_close(nan_adv, adv[:3], rtol=0, atol=0)


def test_matches_torch_std_per_group_with_loops():
    g = torch.Generator().manual_seed(3)
    rewards = torch.randint(0, 2, (40,), generator=g).to(torch.float64)
    rewards[::7] = math.nan
    adv = group_advantages(rewards, 8)
    for start in range(0, 40, 8):
        group = rewards[start : start + 8]
        valid = group[~torch.isnan(group)]
        std = valid.std() if valid.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
        for i in range(8):
            r = group[i]
            want = 0.0 if torch.isnan(r) else ((r - valid.mean()) / (std + 1e-6)).item()
            assert adv[start + i].item() == pytest.approx(want, abs=1e-9)


def test_dtype_and_errors():
    assert group_advantages(torch.tensor([1.0, 0.0], dtype=torch.float64), 2).dtype == torch.float64
    assert group_advantages(torch.tensor([1.0, 0.0]), 2).dtype == torch.float32
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(4), 3)
    with pytest.raises(ValueError, match="inf"):
        group_advantages(torch.tensor([math.inf, 0.0]), 2)
    with pytest.raises(ValueError, match="'std', 'none'"):
        group_advantages(torch.zeros(2), 2, scale="mad")
    assert ADVANTAGE_SCALES == ("std", "none")


def test_group_accuracy_on_policy_rows_by_default():
    # Group = 3 rollouts + 1 teacher row (last). Rollouts (1, 0, 1): r̄ = 2/3; with the teacher's 1: 3/4.
    # Second group: rollouts (None, 0, None) -> r̄ = 0 from the one gradable rollout.
    rewards = [1.0, 0.0, 1.0, 1.0, None, 0.0, None, 1.0]
    is_offline = torch.tensor([False, False, False, True] * 2)
    acc = group_accuracy(rewards, is_offline, 4)
    torch.testing.assert_close(acc, torch.tensor([2 / 3] * 4 + [0.0] * 4))
    acc_incl = group_accuracy(rewards, is_offline, 4, include_offline=True)
    torch.testing.assert_close(acc_incl, torch.tensor([0.75] * 4 + [0.5] * 4))


def test_group_accuracy_with_no_gradable_rollout_is_zero():
    acc = group_accuracy([None, None, 1.0], torch.tensor([False, False, True]), 3)
    torch.testing.assert_close(acc, torch.zeros(3))


def test_policy_shift_hand_computed_and_limits():
    # π = (0.2, 0.5): r̄ = 0.5 -> 0.2 + 0.8·0.5 = 0.6 and 0.5 + 0.5·0.5 = 0.75;
    # r̄ = 0 -> π itself; r̄ = 1 -> 1.
    logp = torch.log(torch.tensor([[0.2, 0.5]] * 3, dtype=torch.float64)).requires_grad_()
    pi_off = policy_shift(logp, torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64))
    expected = torch.tensor([[0.6, 0.75], [0.2, 0.5], [1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(pi_off, expected, rtol=0, atol=1e-12)
    assert not pi_off.requires_grad
    assert pi_off.dtype == torch.float64
