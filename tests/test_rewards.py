"""One grader for training and evaluation; what "ungradable" means, defined once."""

import pytest

from redrl.rewards import GRADERS, extract_boxed, grade, integer_grader


@pytest.mark.parametrize(
    ("response", "answer", "reward"),
    [
        ("13 + 5 = 18.\nSo the answer is \\boxed{18}.", "18", 1.0),
        ("\\boxed{ -12 }", "-12", 1.0),
        ("\\boxed{17}", "18", 0.0),
        ("first \\boxed{18}, then \\boxed{17}", "18", 0.0),  # the last box counts
        ("the answer is 18", "18", 0.0),  # no box: wrong, not ungradable
        ("\\boxed{18", "18", 0.0),  # cut off before the box closed
        ("\\boxed{eighteen}", "18", 0.0),
        ("\\boxed{18}", "x + 1", None),  # the reference is not an integer: ungradable
    ],
)
def test_integer_grader(response, answer, reward):
    assert integer_grader(response, answer) == reward
    assert grade(response, answer, "integer") == reward


def test_extract_boxed_handles_nesting():
    assert extract_boxed("so \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert extract_boxed("nothing here") is None


def test_unknown_grader_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown grader 'latex'"):
        grade("\\boxed{1}", "1", "latex")
    assert "integer" in GRADERS


# ------------------------------------------------------------------------------------------------
# math_reward: math-verify behind a process with a hard timeout
# ------------------------------------------------------------------------------------------------

from redrl.rewards import math_reward  # noqa: E402


@pytest.mark.parametrize(
    "completion, answer, reward",
    [
        ("so the answer is \\boxed{0.5}", "\\frac{1}{2}", 1.0),  # decimal vs fraction
        ("\\boxed{\\dfrac{14}{3}}", "\\frac{14}{3}", 1.0),  # \dfrac
        ("The answer is \\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),  # surds
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3, \\frac{\\pi}{2})", 1.0),  # tuple with \left(
        ("\\boxed{(3, \\pi)}", "(3, \\frac{\\pi}{2})", 0.0),
        ("first \\boxed{3}, then corrected: \\boxed{4}", "4", 1.0),  # the last boxed answer counts
        ("first \\boxed{3}, then corrected: \\boxed{4}", "3", 0.0),
        ("<think>maybe \\boxed{7}</think> The answer is \\boxed{8}.", "8", 1.0),  # after the reasoning
        ("<think>maybe \\boxed{8}</think> The answer is \\boxed{7}.", "8", 0.0),
        ("Therefore, the final answer is $5$.", "5", 1.0),  # no box: math-verify's anchors
        ("I do not know.", "5", 0.0),
        ("\\boxed{5}", "", None),  # no reference answer: ungradable
    ],
)
def test_math_reward_grades_equivalent_forms(completion, answer, reward):
    assert math_reward(completion, answer) == reward


@pytest.mark.parametrize(
    "completion",
    [
        "\\boxed{9^{9^{9^{9^{9^{9}}}}}}",  # an exponent tower sympy would try to evaluate
        "\\boxed{\\frac{1}{2}" + "{" * 5000,  # unbalanced braces
        "x" * 1_000_000 + " \\boxed{1",  # a megabyte of text, answer cut off
    ],
)
def test_math_reward_returns_within_its_timeout_on_adversarial_text(completion):
    import time

    from redrl.rewards import FAILURES

    math_reward("\\boxed{1}", "1")  # the verifier process is started (not charged to the timeout)
    timeouts = FAILURES["timeout"]
    started = time.perf_counter()
    result = math_reward(completion, "1", timeout=2.0)
    assert time.perf_counter() - started < 2.0 + 0.5
    # wrong, or (when parsing overran) ungraded and counted; never right, never a hang
    assert result == 0.0 or (result is None and FAILURES["timeout"] == timeouts + 1)
    assert math_reward("\\boxed{1}", "1", timeout=2.0) == 1.0  # and the next call still works


def test_math_reward_never_runs_model_text_as_code(tmp_path):
    marker = tmp_path / "pwned"
    for payload in (
        f"__import__('os').system('touch {marker}')",
        f"open('{marker}', 'w').write('x')",
        f"exec(\"open('{marker}', 'w')\")",
    ):
        assert math_reward(f"\\boxed{{{payload}}}", "1") == 0.0
        assert math_reward(f"The final answer is {payload}", "1") == 0.0
    assert not marker.exists()


def test_math_reward_from_worker_threads():
    from concurrent.futures import ThreadPoolExecutor

    jobs = [
        ("\\boxed{0.25}", "\\frac14", 1.0),
        ("\\boxed{3}", "4", 0.0),
        ("\\boxed{9^{9^{9^{9^{9}}}}}", "1", (0.0, None)),
    ]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda job: math_reward(job[0], job[1], timeout=3.0), jobs))
    assert results[:2] == [1.0, 0.0] and results[2] in jobs[2][2]
    assert grade("\\boxed{\\frac{1}{2}}", "0.5", "math") == 1.0  # the same function behind the grader name


def test_a_grader_that_raises_leaves_the_row_ungraded_and_is_counted(monkeypatch):
    from redrl.rewards import FAILURES, GRADERS

    def broken(response, answer):
        raise ZeroDivisionError("a bug in a reward function")

    monkeypatch.setitem(GRADERS, "broken", broken)
    errors = FAILURES["error"]
    assert grade("\\boxed{1}", "1", "broken") is None
    assert FAILURES["error"] == errors + 1
