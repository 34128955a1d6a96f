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
