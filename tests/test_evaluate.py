"""Evaluation arithmetic: the unbiased pass@k estimator, avg@k, per-level summaries, the table."""

import math
from itertools import combinations

import pytest

from redrl.evaluate import format_table, pass_at_k, summarize


def brute_force_pass_at_k(n, c, k):
    """Fraction of all k-subsets of n samples (c correct) that contain a correct one."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 1, 2), (8, 3, 4), (4, 4, 4), (7, 5, 5)])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_1_is_the_fraction_correct():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_summarize_hand_computed():
    # Two level-1 problems (2/2 and 0/2 correct) and one level-2 problem (1/2), k = 2.
    # avg@2 = (1 + 0 + 0.5) / 3 = 0.5; pass@2 = (1 + 0 + 1) / 3; LEN = (3+5 + 4+4 + 10+2) / 6 = 28/6.
    problems = [{"level": 1}, {"level": 1}, {"level": 2}, {"level": 2}]
    rewards = [[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [None, None]]  # the last is ungradable
    lengths = [[3, 5], [4, 4], [10, 2], [7, 7]]
    result = summarize(problems, rewards, lengths, k=2)
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["pass@2"] == pytest.approx(2 / 3)
    assert result["length"] == pytest.approx(28 / 6)
    assert (result["n"], result["ungradable"]) == (3, 1)
    assert result["by_level"]["1"]["accuracy"] == pytest.approx(0.5)
    assert result["by_level"]["2"]["accuracy"] == pytest.approx(0.5)
    assert result["by_level"]["2"]["n"] == 1


def test_table_shows_every_level_and_overall():
    result = summarize([{"level": 1}, {"level": 2}], [[1.0], [0.0]], [[4], [6]], k=1)
    table = format_table({"base": result, "red": result})
    lines = table.splitlines()
    assert lines[0] == "| model | L1 | L2 | overall | LEN |"
    assert lines[2] == "| base | 100.0 | 0.0 | 50.0 | 5 |"
    assert len(lines) == 4


def test_an_answer_whose_grading_fails_counts_as_wrong_not_ungradable(tiny_assets, monkeypatch):
    # A grader that overruns or raises for one answer must not take the problem out of the accuracy.
    from redrl.evaluate import evaluate
    from redrl.modeling import load_model_and_tokenizer
    from redrl.rewards import FAILURES, GRADERS

    calls = {"n": 0}

    def flaky(response, answer):
        calls["n"] += 1
        if calls["n"] % 2:
            FAILURES["timeout"] += 1  # as math_reward does when it overruns
            return None
        return 1.0

    monkeypatch.setitem(GRADERS, "flaky", flaky)
    model, tokenizer = load_model_and_tokenizer(str(tiny_assets.base), device="cpu")
    problems = [{"problem": "Compute 1 + 1.", "answer": "2"}, {"problem": "Compute 2 + 2.", "answer": "4"}]
    samples = []
    result = evaluate(model, tokenizer, problems, k=2, max_new_tokens=4, grader="flaky", samples=samples)
    assert result["n"] == 2 and result["ungradable"] == 0 and result["grading_failures"] == 2
    assert result["accuracy"] == 0.5  # each problem: one failed (wrong) and one right answer
    assert [s["grading_failed"] for s in samples] == [True, False, True, False]
