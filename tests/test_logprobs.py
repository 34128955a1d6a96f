"""Log-probabilities and full-vocabulary entropy, chunked and not, from logits and from hidden states."""

import math

import pytest
import torch

from redrl.objectives import token_logprobs_and_entropy, token_logprobs_and_entropy_from_hidden


def naive_logp_entropy(logits, tokens):
    """One position at a time, straight from the definitions, in float64."""
    N, T, V = logits.shape
    logp = torch.empty(N, T, dtype=torch.float64)
    entropy = torch.empty(N, T, dtype=torch.float64)
    for n in range(N):
        for t in range(T):
            z = [float(v) for v in logits[n, t]]
            top = max(z)
            log_norm = top + math.log(sum(math.exp(v - top) for v in z))
            logp[n, t] = z[int(tokens[n, t])] - log_norm
            entropy[n, t] = -sum(math.exp(v - log_norm) * (v - log_norm) for v in z)
    return logp, entropy


def test_hand_computed_two_token_vocabulary():
    # logits (0, ln 3): p = (1/4, 3/4). Token 1: log p = ln(3/4) = -0.2876821.
    # H = -(1/4·ln(1/4) + 3/4·ln(3/4)) = 0.3465736 + 0.2157616 = 0.5623351.
    logits = torch.tensor([[[0.0, math.log(3.0)]]], dtype=torch.float64)
    logp, entropy = token_logprobs_and_entropy(logits, torch.tensor([[1]]))
    assert logp.item() == pytest.approx(math.log(0.75), abs=1e-12)
    assert entropy.item() == pytest.approx(0.5623351446188083, abs=1e-12)


def test_uniform_distribution_has_entropy_log_v():
    logits = torch.zeros(2, 3, 7, dtype=torch.float64)
    logp, entropy = token_logprobs_and_entropy(logits, torch.zeros(2, 3, dtype=torch.long))
    torch.testing.assert_close(entropy, torch.full((2, 3), math.log(7), dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(logp, torch.full((2, 3), -math.log(7), dtype=torch.float64), rtol=0, atol=1e-12)


def test_matches_naive_reference_float64():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g, dtype=torch.float64) * 3
    tokens = torch.randint(0, 11, (3, 5), generator=g)
    logp, entropy = token_logprobs_and_entropy(logits, tokens)
    ref_logp, ref_entropy = naive_logp_entropy(logits, tokens)
    torch.testing.assert_close(logp, ref_logp, rtol=0, atol=1e-12)
    torch.testing.assert_close(entropy, ref_entropy, rtol=0, atol=1e-12)


def test_masked_vocabulary_entry_gives_finite_entropy():
    # A -inf logit is a vocabulary entry with p = 0: it adds nothing to H (not NaN).
    logits = torch.tensor([[[0.0, 0.0, -math.inf]]], dtype=torch.float64)
    logp, entropy = token_logprobs_and_entropy(logits, torch.tensor([[0]]))
    assert entropy.item() == pytest.approx(math.log(2), abs=1e-12)
    assert logp.item() == pytest.approx(-math.log(2), abs=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 15, 1000])
def test_chunked_equals_unchunked_values_and_gradients(chunk_size):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 5, 13, generator=g, dtype=torch.float64) * 2).requires_grad_()
    tokens = torch.randint(0, 13, (3, 5), generator=g)
    upstream = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)

    def run(size):
        logits.grad = None
        logp, entropy = token_logprobs_and_entropy(logits, tokens, chunk_size=size)
        ((logp * upstream[0]).sum() + (entropy * upstream[1]).sum()).backward()
        return logp.detach(), entropy.detach(), logits.grad.clone()

    for full, chunked in zip(run(None), run(chunk_size)):
        assert torch.equal(chunked, full)  # bit for bit: each position is computed the same way


def test_chunking_under_no_grad_matches():
    logits = torch.randn(2, 4, 9, dtype=torch.float32)
    tokens = torch.randint(0, 9, (2, 4))
    with torch.no_grad():
        full = token_logprobs_and_entropy(logits, tokens)
        chunked = token_logprobs_and_entropy(logits, tokens, chunk_size=3)
    for a, b in zip(full, chunked):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(torch.float32, torch.float32), (torch.float64, torch.float64), (torch.bfloat16, torch.float32)],
)
def test_dtype_is_kept_and_half_precision_is_upcast(dtype, expected):
    logp, entropy = token_logprobs_and_entropy(torch.randn(2, 3, 5).to(dtype), torch.zeros(2, 3, dtype=torch.long))
    assert logp.dtype == expected and entropy.dtype == expected


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="disagree"):
        token_logprobs_and_entropy(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs_and_entropy(torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), chunk_size=0)


@pytest.mark.parametrize("with_bias", [False, True])
def test_from_hidden_equals_from_logits(with_bias):
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(17, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(17, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    tokens = torch.randint(0, 17, (2, 6), generator=g)
    params = [hidden, weight] + ([bias] if with_bias else [])

    def run(fn):
        logp, entropy = fn()
        grads = torch.autograd.grad((logp.sum() + 0.5 * entropy.sum()), params)
        return (logp.detach(), entropy.detach(), *grads)

    via_logits = run(lambda: token_logprobs_and_entropy(torch.nn.functional.linear(hidden, weight, bias), tokens))
    via_hidden = run(lambda: token_logprobs_and_entropy_from_hidden(hidden, weight, tokens, bias=bias, chunk_size=5))
    for a, b in zip(via_hidden, via_logits):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_from_hidden_never_saves_full_logits_for_backward():
    # The autograd graph must not keep an [N*T, V] tensor: with chunking under checkpointing the
    # largest tensor saved for backward is one chunk's worth (or the [V, D] weight).
    N, T, D, V, chunk = 4, 8, 8, 1000, 4
    hidden = torch.randn(N, T, D, requires_grad=True)
    weight = torch.randn(V, D, requires_grad=True)
    tokens = torch.randint(0, V, (N, T))
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logp, entropy = token_logprobs_and_entropy_from_hidden(hidden, weight, tokens, chunk_size=chunk)
    (logp.sum() + entropy.sum()).backward()
    assert saved, "the hook saw no saved tensor; the check would be vacuous"
    assert max(saved) <= max(chunk * V, V * D) < N * T * V
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()

    # Without chunking, the same hook does see the full softmax (so the check above can fail).
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        token_logprobs_and_entropy(torch.nn.functional.linear(hidden, weight), tokens)
    assert max(saved) >= N * T * V
