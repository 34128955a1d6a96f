"""RAVR (arXiv 2510.25206): the utility of a path, the utility-baseline reward and whether its
baseline survives group centring, the utility weights and the weighted prior NLL, by hand."""

import math

import pytest
import torch

from redrl.objectives import answer_utility, group_advantages, ravr_rewards, utility_weights, weighted_prior_nll


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_utility_is_the_answers_length_normalised_probability():
    one = answer_utility(_t([[math.log(0.5), 0.0]]), torch.tensor([[True, False]]))
    assert one.item() == pytest.approx(0.5, abs=1e-12)  # one answer token: its probability
    two = answer_utility(_t([[math.log(0.5), math.log(0.8)]]), torch.tensor([[True, True]]))
    assert two.item() == pytest.approx(math.sqrt(0.4), abs=1e-12)  # exp(mean log p) = sqrt(0.5 * 0.8)
    masked = answer_utility(_t([[math.log(0.5), float("nan")]]), torch.tensor([[True, False]]))
    assert masked.item() == pytest.approx(0.5)  # a padded position never reaches the utility
    with pytest.raises(ValueError, match="at least one answer token"):
        answer_utility(_t([[0.0]]), torch.tensor([[False]]))


def test_the_reward_is_the_utility_over_the_question_only_baseline():
    posterior, prior = _t([0.9, 0.5, 0.1, 0.5]), _t([0.2, 0.4])  # b(x) = 0.3
    rewards = ravr_rewards(posterior, prior, group_size=4, prior_size=2)
    assert rewards.tolist() == pytest.approx([0.6, 0.2, -0.2, 0.2], abs=1e-12)
    # unnormalised ("baseline" advantages): the baseline moves every advantage by -0.3
    assert group_advantages(rewards, 4, scale="none").tolist() == pytest.approx([0.4, 0.0, -0.4, 0.0], abs=1e-12)


def test_under_group_centring_the_per_prompt_baseline_cancels():
    """The question the issue asks: does the prior baseline change GRPO's update? No: group
    normalisation subtracts the group mean (and divides by the std), and a per-prompt constant
    shifts the mean by itself and leaves the std alone. r = [0.6, 0.2, -0.2, 0.2]: mean 0.2,
    sample variance 0.32 / 3, std 0.326599 -> A = [1.224741, 0, -1.224741, 0]; the same from s."""
    posterior, prior = _t([0.9, 0.5, 0.1, 0.5]), _t([0.2, 0.4])
    with_baseline = group_advantages(ravr_rewards(posterior, prior, 4, 2), 4, scale="std", eps=1e-6)
    without = group_advantages(posterior, 4, scale="std", eps=1e-6)
    assert with_baseline.tolist() == pytest.approx([1.224741, 0.0, -1.224741, 0.0], abs=1e-6)
    assert torch.allclose(with_baseline, without, atol=1e-12)


def test_the_prior_learns_the_posterior_paths_weighted_by_their_utility():
    weights = utility_weights(_t([0.9, 0.5, 0.1, 0.5]), 4)
    assert weights.tolist() == pytest.approx([0.45, 0.25, 0.05, 0.25], abs=1e-12)
    # per-row mean token log-probs [-1, -2, -3, -2] (rows of 1, 2, 3 and 2 tokens)
    logp = _t([[-1.0, 0, 0], [-2.0, -2.0, 0], [-3.0, -3.0, -3.0], [-1.0, -3.0, 0]]).requires_grad_()
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    loss = weighted_prior_nll(logp, mask, weights)
    assert loss.item() == pytest.approx(1.6, abs=1e-12)  # -(0.45*-1 + 0.25*-2 + 0.05*-3 + 0.25*-2)
    loss.backward()
    # d loss / d logp[i, t] = -w_i / |z_i| on the path's tokens, 0 on padding
    expected = _t([[-0.45, 0, 0], [-0.125, -0.125, 0], [-0.05 / 3] * 3, [-0.125, -0.125, 0]])
    assert torch.allclose(logp.grad, expected, atol=1e-12)


def test_groups_must_line_up():
    with pytest.raises(ValueError, match="2 posterior groups but 1 prior groups"):
        ravr_rewards(_t([0.1] * 8), _t([0.2, 0.4]), 4, 2)
