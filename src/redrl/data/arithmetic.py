"""The embedded task: integer arithmetic chains with a difficulty level, and an R1-like teacher.

A level-``k`` problem has ``k`` additions or subtractions of one-digit numbers, e.g. level 3:
``Compute 13 + 5 - 9 + 4.`` (answer 13), with every intermediate value in ``[0, 19]``. Each step
of a solution is one small lookup, the same skill as a level-1 problem; answering directly means
composing ``k`` of them in a single forward pass, which a small network of fixed depth does for
small ``k`` only. So a model that *writes the steps* can solve any level, one that answers
directly cannot. This is the paper's setting in miniature: a student that answers deep problems
directly has a narrow exploration space that RL alone can only sharpen ("Recall"); the teacher's
step-by-step traces on every level widen it ("Extend"). :mod:`redrl.tiny` says what the base saw.

Teacher traces (:func:`teacher_trace`) are correct, one operation per line, each followed by what
is left of the expression, with R1-like redundancy: after a step the teacher sometimes re-checks
it ("Wait, let me check: 13 + 5 = 18."), so traces are longer than needed. Answers are written
``\\boxed{N}``, the benchmarks' format, so one grader serves both.

Everything is a pure function of a seed; train, validation and test problems are disjoint.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "direct_answer",
    "fact_line",
    "generate_problems",
    "make_problem",
    "operation_lines",
    "step_solution",
    "teacher_trace",
    "write_jsonl",
]

_OPERAND = (1, 9)  # every number after the first, one digit
MAX_VALUE = 19  # the first number and every intermediate value lie in [0, max_value]


def make_problem(rng: random.Random, level: int, max_value: int = MAX_VALUE) -> dict:
    """One problem with ``level`` operations: ``{"problem", "answer", "level", "steps"}``.

    ``steps`` is the list of ``(a, op, b, result)`` the teacher writes out.
    """
    if level < 1:
        raise ValueError(f"level must be >= 1; got {level}")
    value = rng.randint(0, max_value)
    expression = [str(value)]
    steps = []
    for _ in range(level):
        operand = rng.randint(*_OPERAND)
        op = rng.choice("+-")
        result = value + operand if op == "+" else value - operand
        if not 0 <= result <= max_value:  # flip the operation to stay in range
            op = "-" if op == "+" else "+"
            result = value + operand if op == "+" else value - operand
        steps.append((value, op, operand, result))
        expression += [op, str(operand)]
        value = result
    return {"problem": f"Compute {' '.join(expression)}.", "answer": str(value), "level": level, "steps": steps}


def _expression(steps: list[tuple[int, str, int, int]]) -> list[str]:
    return [str(steps[0][0])] + [part for _, op, b, _ in steps for part in (op, str(b))]


def fact_line(step: tuple[int, str, int, int]) -> str:
    """One operation and its value, ``13 + 5 = 18``: a teacher step, and a line of a fact sheet."""
    a, op, b, result = step
    return f"{a} {op} {b} = {result}"


def step_solution(steps: list[tuple[int, str, int, int]], rng: random.Random, recheck_prob: float = 0.0) -> str:
    """A step-by-step solution: each operation on its line, then what is left of the expression.

    ``13 + 5 - 9 + 4`` becomes ``13 + 5 = 18`` / ``18 - 9 + 4`` / ``18 - 9 = 9`` / ``9 + 4`` /
    ``9 + 4 = 13`` / ``13`` / ``So the answer is \\boxed{13}.``. Every operation line is a level-1
    fact, and the line after it says what is left, down to the single value before the answer: the
    decision "another operation, or the answer?" is read off the line above, never by counting
    operations back in the prompt. After an operation the solution re-checks it with probability
    ``recheck_prob`` ("Wait, let me check: 13 + 5 = 18."), R1-like redundancy.
    """
    rest = _expression(steps)
    lines = []
    for step in steps:
        lines.append(fact_line(step))
        if rng.random() < recheck_prob:
            lines.append(f"Wait, let me check: {fact_line(step)}.")
        rest = [str(step[3])] + rest[3:]
        lines.append(" ".join(rest))
    lines.append(f"So the answer is \\boxed{{{steps[-1][3]}}}.")
    return "\n".join(lines)


def teacher_trace(steps: list[tuple[int, str, int, int]], rng: random.Random, recheck_prob: float = 0.3) -> str:
    """The teacher's solution of any level: :func:`step_solution` with its re-checks."""
    return step_solution(steps, rng, recheck_prob)


def direct_answer(steps: list[tuple[int, str, int, int]]) -> str:
    """What the base student is pretrained to write: the expression, its value, the answer.

    ``13 + 5 - 9 + 4 = 13`` / ``So the answer is \\boxed{13}.``: no intermediate step. For a
    level-1 problem this is the teacher's operation line.
    """
    answer = steps[-1][3]
    return f"{' '.join(_expression(steps))} = {answer}\nSo the answer is \\boxed{{{answer}}}."


def generate_problems(
    seed: int,
    per_level: int,
    levels: Iterable[int],
    exclude: set[str] = frozenset(),
    *,
    distinct: bool = True,
    max_value: int = MAX_VALUE,
) -> list[dict]:
    """``per_level`` problems of each level, none of whose text is in ``exclude``.

    With ``distinct`` (evaluation and RL prompts) no problem repeats; without it (pretraining
    samples) problems are drawn independently, so level 1, which has only 1,440 distinct problems,
    can still be sampled as often as the deeper levels.
    """
    rng = random.Random(seed)
    problems, seen = [], set(exclude)
    for level in levels:
        count, attempts = 0, 0
        while count < per_level:
            attempts += 1
            if attempts > 100 * per_level:
                raise ValueError(f"cannot draw {per_level} distinct level-{level} problems")
            problem = make_problem(rng, level, max_value)
            if problem["problem"] in seen:
                continue
            if distinct:
                seen.add(problem["problem"])
            problems.append(problem)
            count += 1
    rng.shuffle(problems)
    return problems


def write_jsonl(rows: Iterable[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


_OPERATION_LINE = re.compile(r"^\s*(-?\d+) ?([-+*/]) ?(-?\d+) ?= ?(-?\d+)\s*\.?\s*$")


def operation_lines(text: str) -> tuple[int, int]:
    """``(operation lines, true ones)`` of a response: lines that are one ``a op b = c`` (the
    teacher's steps, ``13 + 5 = 18``; ``op`` one of ``+ - * /``) and how many of them hold. A right
    answer with none is one the response did not reason its way to (RAVR's leak)."""
    found = true = 0
    for line in text.splitlines():
        match = _OPERATION_LINE.match(line)
        if match:
            a, op, b, c = int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4))
            found += 1
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else math.nan}[op]
            true += value == c
    return found, true
