"""Distillation terms (arXiv 2605.16826): exact full-vocabulary KL both ways, their mixture, and the
chunked path from hidden states, against hand-computed values and the naive full-logits path."""

import math

import pytest
import torch

from redrl.objectives import kl_mixture_loss, teacher_top_k, token_kl, token_kl_from_hidden, top_k_kl_from_hidden

F64 = torch.float64


def test_token_kl_by_hand_on_two_entries():
    student = torch.tensor([0.0, 0.0], dtype=F64, requires_grad=True)  # p_S = (1/2, 1/2)
    teacher = torch.tensor([math.log(3.0), 0.0], dtype=F64)  # p_T = (3/4, 1/4)
    kl_fwd, kl_rev, entropy = token_kl(student, teacher)
    assert kl_fwd.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-12)
    assert kl_rev.item() == pytest.approx(0.5 * math.log(2 / 3) + 0.5 * math.log(2.0), abs=1e-12)
    assert entropy.item() == pytest.approx(math.log(2.0), abs=1e-12)
    # forward KL's gradient in the student's logits is p_S - p_T: cross-entropy against the teacher
    (grad,) = torch.autograd.grad(kl_fwd, student)
    assert grad.tolist() == pytest.approx([-0.25, 0.25], abs=1e-12)
    # reverse KL's: p_S ⊙ (a - E_pS[a]) with a = log p_S - log p_T, the dense REINFORCE signal's expectation
    (grad,) = torch.autograd.grad(token_kl(student, teacher)[1], student)
    a = [math.log(2 / 3), math.log(2.0)]
    mean = 0.5 * (a[0] + a[1])
    assert grad.tolist() == pytest.approx([0.5 * (a[0] - mean), 0.5 * (a[1] - mean)], abs=1e-12)


def test_temperature_softens_both_distributions():
    student, teacher = torch.tensor([2.0, 0.0, -1.0], dtype=F64), torch.tensor([0.0, 1.0, 3.0], dtype=F64)
    p_s, p_t = torch.softmax(student / 2, -1), torch.softmax(teacher / 2, -1)
    kl_fwd, kl_rev, entropy = token_kl(student, teacher, temperature=2.0)
    assert kl_fwd.item() == pytest.approx((p_t * (p_t.log() - p_s.log())).sum().item(), abs=1e-12)
    assert kl_rev.item() == pytest.approx((p_s * (p_s.log() - p_t.log())).sum().item(), abs=1e-12)
    assert entropy.item() == pytest.approx(-(p_s * p_s.log()).sum().item(), abs=1e-12)


def test_equal_distributions_have_zero_kl_and_masked_entries_stay_finite():
    logits = torch.tensor([[1.0, -2.0, 0.5]], dtype=F64)
    kl_fwd, kl_rev, _ = token_kl(logits, logits.clone())
    assert kl_fwd.item() == pytest.approx(0.0, abs=1e-15) and kl_rev.item() == pytest.approx(0.0, abs=1e-15)
    # an entry masked (-inf) for both models contributes nothing, and no NaN reaches the gradient
    student = torch.tensor([0.0, 1.0, -math.inf], dtype=F64, requires_grad=True)
    teacher = torch.tensor([1.0, 0.0, -math.inf], dtype=F64)
    total = sum(token_kl(student, teacher)[:2])
    (grad,) = torch.autograd.grad(total, student)
    reference = sum(token_kl(student[:2].detach().requires_grad_(), teacher[:2])[:2])
    assert total.item() == pytest.approx(reference.item(), abs=1e-12)
    assert torch.isfinite(grad).all() and grad[2] == 0


def test_chunked_from_hidden_equals_the_naive_full_logits_path():
    torch.manual_seed(0)
    N, T, D_S, D_T, V = 2, 5, 4, 6, 11
    h_s = torch.randn(N, T, D_S, dtype=F64, requires_grad=True)
    w_s = torch.randn(V, D_S, dtype=F64, requires_grad=True)
    h_t = torch.randn(N, T, D_T, dtype=F64, requires_grad=True)  # must get no gradient
    w_t, b_t = torch.randn(V, D_T, dtype=F64), torch.randn(V, dtype=F64)
    naive = token_kl(h_s @ w_s.T, h_t @ w_t.T + b_t, temperature=1.5)
    chunked = token_kl_from_hidden(h_s, w_s, h_t, w_t, teacher_bias=b_t, temperature=1.5, chunk_size=3)
    for a, b in zip(naive, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    weights = torch.randn(3, N, T, dtype=F64)
    naive_grads = torch.autograd.grad(sum((w * x).sum() for w, x in zip(weights, naive)), (h_s, w_s))
    chunked_grads = torch.autograd.grad(sum((w * x).sum() for w, x in zip(weights, chunked)), (h_s, w_s))
    for a, b in zip(naive_grads, chunked_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert h_t.grad is None


def test_kl_mixture_loss_by_hand():
    kl_fwd = torch.tensor([[1.0, 2.0], [3.0, 99.0]])
    kl_rev = torch.tensor([[4.0, 5.0], [6.0, 99.0]])
    mask = torch.tensor([[True, True], [True, False]])  # the 99s are padding
    assert kl_mixture_loss(kl_fwd, kl_rev, mask, alpha=0.8).item() == pytest.approx((0.8 * 6 + 0.2 * 15) / 3)
    assert kl_mixture_loss(kl_fwd, kl_rev, mask, alpha=1.0).item() == pytest.approx(2.0)  # forward only
    assert kl_mixture_loss(kl_fwd, kl_rev, mask, alpha=0.0).item() == pytest.approx(5.0)  # reverse only
    with pytest.raises(ValueError, match="alpha must be in"):
        kl_mixture_loss(kl_fwd, kl_rev, mask, alpha=1.5)


def _expected_over_student_samples(student, teacher, estimator):
    """Σ_y p_S(y) · (loss, estimate, gradient) when the student samples token y: the exact expectation."""
    from redrl.objectives import sampled_kl_loss

    p_s = torch.softmax(student.detach(), -1)
    loss_grad, estimate = torch.zeros_like(student), 0.0
    for y in range(student.shape[-1]):
        logp = torch.log_softmax(student, -1)[y].view(1, 1)
        teacher_logp = torch.log_softmax(teacher, -1)[y].view(1, 1)
        loss, value = sampled_kl_loss(logp, teacher_logp, torch.ones(1, 1, dtype=torch.bool), estimator=estimator)
        (grad,) = torch.autograd.grad(loss, student)
        loss_grad += p_s[y] * grad
        estimate += p_s[y].item() * value.item()
    return loss_grad, estimate


def test_sampled_estimators_in_expectation():
    student = torch.tensor([0.3, -1.0, 1.2], dtype=F64, requires_grad=True)
    teacher = torch.tensor([1.0, 0.5, -0.7], dtype=F64)
    kl_fwd, kl_rev, _ = token_kl(student, teacher)
    (grad_fwd,) = torch.autograd.grad(kl_fwd, student)
    (grad_rev,) = torch.autograd.grad(token_kl(student, teacher)[1], student)
    # k1: unbiased for the reverse KL and for its gradient (REINFORCE with reward log p_T - log p_S)
    grad, estimate = _expected_over_student_samples(student, teacher, "k1")
    torch.testing.assert_close(grad, grad_rev, rtol=0, atol=1e-12)
    assert estimate == pytest.approx(kl_rev.item(), abs=1e-12)
    # k3: unbiased for the reverse KL's value, but its gradient is the forward KL's
    grad, estimate = _expected_over_student_samples(student, teacher, "k3")
    torch.testing.assert_close(grad, grad_fwd, rtol=0, atol=1e-12)
    assert estimate == pytest.approx(kl_rev.item(), abs=1e-12)


def test_sampled_kl_loss_by_hand_and_padding():
    from redrl.objectives import sampled_kl_loss

    logp = torch.tensor([[-1.0, -2.0, 7.0]], dtype=F64, requires_grad=True)
    teacher_logp = torch.tensor([[-0.5, -3.0, float("nan")]], dtype=F64)
    mask = torch.tensor([[True, True, False]])
    loss, estimate = sampled_kl_loss(logp, teacher_logp, mask, estimator="k1")
    # gaps (log p_S - log p_T) = (-0.5, 1.0): estimate 0.25; loss = mean(gap * log p_S) = (0.5 - 2.0) / 2
    assert estimate.item() == pytest.approx(0.25) and loss.item() == pytest.approx(-0.75)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad[0].tolist() == pytest.approx([-0.25, 0.5, 0.0])  # gap / 2 per token; padding untouched
    loss, estimate = sampled_kl_loss(logp, teacher_logp, mask, estimator="k3")
    k3 = [math.exp(0.5) - 0.5 - 1, math.exp(-1.0) + 1.0 - 1]
    assert estimate.item() == pytest.approx(sum(k3) / 2) and torch.isfinite(loss)


def test_teacher_top_k_keeps_the_largest_entries_and_the_tail_mass():
    logits = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64).log()  # p = (0.1, 0.4, 0.2, 0.3)
    ids, logp = teacher_top_k(logits, 2)
    assert ids.tolist() == [1, 3]
    assert logp.exp().tolist() == pytest.approx([0.4, 0.3, 0.3])  # the tail: 0.1 + 0.2
    ids, logp = teacher_top_k(logits, 9)  # k beyond the vocabulary: every entry, an empty tail
    assert ids.tolist() == [1, 3, 2, 0] and logp[-1] == float("-inf")


def test_top_k_kl_by_hand_and_as_a_lower_bound_of_the_exact_kl():
    # teacher p = (0.1, 0.4, 0.2, 0.3), top 2 -> buckets (0.4, 0.3, tail 0.3);
    # student q = (0.25, 0.25, 0.25, 0.25) -> buckets (0.25, 0.25, 0.5)
    teacher = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64).log()
    hidden, weight = torch.eye(4, dtype=torch.float64)[:1].view(1, 1, 4), torch.zeros(4, 4, dtype=torch.float64)
    ids, logp = teacher_top_k(teacher, 2)
    fwd, rev, entropy = top_k_kl_from_hidden(hidden, weight, ids.view(1, 1, 2), logp.view(1, 1, 3))
    p, q = [0.4, 0.3, 0.3], [0.25, 0.25, 0.5]
    assert fwd.item() == pytest.approx(sum(a * math.log(a / b) for a, b in zip(p, q)))
    assert rev.item() == pytest.approx(sum(b * math.log(b / a) for a, b in zip(p, q)))
    assert entropy.item() == pytest.approx(math.log(4))
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    weight, teacher = torch.randn(30, 8, dtype=torch.float64), 2 * torch.randn(2, 5, 30, dtype=torch.float64)
    exact = token_kl(hidden @ weight.T, teacher, temperature=1.5)
    for k in (1, 5, 29):
        ids, logp = teacher_top_k(teacher, k, temperature=1.5)
        fwd, rev, _ = top_k_kl_from_hidden(hidden, weight, ids, logp, temperature=1.5, chunk_size=3)
        assert (fwd <= exact[0] + 1e-12).all() and (rev <= exact[1] + 1e-12).all()  # data processing
    ids, logp = teacher_top_k(teacher, 30, temperature=1.5)  # the whole vocabulary: exact, gradients too
    fwd, rev, _ = top_k_kl_from_hidden(hidden, weight, ids, logp, temperature=1.5, chunk_size=3)
    assert torch.allclose(fwd, exact[0]) and torch.allclose(rev, exact[1])
    (grad,) = torch.autograd.grad((fwd + rev).sum(), hidden)
    (want,) = torch.autograd.grad((exact[0] + exact[1]).sum(), hidden)
    assert torch.allclose(grad, want)
