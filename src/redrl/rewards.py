"""Graders: the training reward and the evaluation call the same function, so they cannot drift.

A grader maps ``(response, answer)`` to a reward: ``1.0`` correct, ``0.0`` wrong (including a
response with no final answer at all), or ``None`` when the *reference* answer cannot be graded
by this grader (the row is then dropped from reward statistics; see
:func:`redrl.objectives.group_advantages`). "Ungradable" means exactly that, and nothing else.

The final answer is the content of the last ``\\boxed{...}`` in the response, the convention of
the math benchmarks and of the embedded arithmetic task alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["GRADERS", "extract_boxed", "grade", "integer_grader"]

_INTEGER = re.compile(r"[+-]?\d+")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (braces may nest), or ``None``."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 1, start + len("\\boxed{")
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i]
    return None  # unclosed: the response was cut off


def _parse_integer(text: str) -> int | None:
    text = text.strip().replace(" ", "").replace(",", "")
    return int(text) if _INTEGER.fullmatch(text) else None


def integer_grader(response: str, answer: str) -> float | None:
    """Exact integer match of the last ``\\boxed{}`` against ``answer``.

    ``None`` if ``answer`` is not an integer (ungradable); ``0.0`` if the response has no boxed
    integer; otherwise ``1.0`` or ``0.0``. ``\\boxed{ -12 }`` and ``\\boxed{-12}`` are the same answer.
    """
    gold = _parse_integer(str(answer))
    if gold is None:
        return None
    boxed = extract_boxed(response)
    predicted = _parse_integer(boxed) if boxed is not None else None
    return 1.0 if predicted == gold else 0.0


#: One grader per answer format.
GRADERS: dict[str, Callable[[str, str], float | None]] = {"integer": integer_grader}


def grade(response: str, answer: str, grader: str = "integer") -> float | None:
    """Grade one response with the named grader (see ``GRADERS``)."""
    try:
        fn = GRADERS[grader]
    except KeyError:
        raise ValueError(f"unknown grader {grader!r}; choose from {', '.join(GRADERS)}") from None
    return fn(response, answer)
