"""The embedded task: correct answers and traces, levels, disjoint splits, the real loader."""

import random
import re

import pytest

from redrl.data.arithmetic import (
    direct_answer,
    generate_problems,
    make_problem,
    step_solution,
    teacher_trace,
    write_jsonl,
)
from redrl.data.offline import load_offline, load_problems
from redrl.rewards import grade


def evaluate_left_to_right(expression: str) -> int:
    tokens = expression.split()
    value = int(tokens[0])
    for op, number in zip(tokens[1::2], tokens[2::2]):
        value = value + int(number) if op == "+" else value - int(number)
    return value


@pytest.mark.parametrize("level", [1, 3, 6])
def test_problems_have_their_level_and_correct_answer(level):
    rng = random.Random(level)
    for _ in range(50):
        problem = make_problem(rng, level)
        expression = re.fullmatch(r"Compute (.*)\.", problem["problem"]).group(1)
        assert len(expression.split()) == 2 * level + 1
        assert evaluate_left_to_right(expression) == int(problem["answer"])
        assert all(0 <= step[3] <= 19 for step in problem["steps"])


def test_teacher_traces_are_correct_stepwise_and_redundant():
    rng = random.Random(0)
    problems = [make_problem(rng, 4) for _ in range(40)]
    traces = [teacher_trace(p["steps"], rng) for p in problems]
    for problem, trace in zip(problems, traces):
        assert grade(trace, problem["answer"]) == 1.0
        lines = [line for line in trace.splitlines() if not line.startswith(("Wait", "So the answer"))]
        operations = [line for line in lines if "=" in line]
        assert len(operations) == 4  # one operation per line
        for line in operations:
            left, right = line.split(" = ")
            assert len(left.split()) == 3 and evaluate_left_to_right(left) == int(right)
        # Every rewritten line is the last result followed by the operations still to do, so the
        # value of the whole expression never changes from line to line.
        expression = problem["problem"].removeprefix("Compute ").removesuffix(".")
        for line in lines:
            if "=" not in line:
                assert evaluate_left_to_right(line) == int(problem["answer"])
                assert expression.endswith(" ".join(line.split()[1:]))
        for a, op, b, result in re.findall(r"^Wait, let me check: (\d+) ([+-]) (\d+) = (\d+)\.$", trace, flags=re.M):
            assert f"{a} {op} {b} = {result}" in operations
    assert sum("Wait, let me check:" in t for t in traces) > 10  # R1-like re-checks make traces longer


def test_step_solutions_share_the_teachers_lines():
    rng = random.Random(1)
    problem = make_problem(rng, 1)
    a, op, b, result = problem["steps"][0]
    assert step_solution(problem["steps"], rng, recheck_prob=0.0).splitlines() == [
        f"{a} {op} {b} = {result}",
        str(result),
        f"So the answer is \\boxed{{{result}}}.",
    ]
    problem = make_problem(rng, 3)
    plain = step_solution(problem["steps"], random.Random(2), recheck_prob=0.0)
    trace = teacher_trace(problem["steps"], random.Random(2), recheck_prob=1.0)
    # the teacher writes the same lines and re-checks every operation
    assert [line for line in trace.splitlines() if not line.startswith("Wait")] == plain.splitlines()
    assert trace.count("Wait, let me check:") == 3


def test_splits_are_disjoint_and_deterministic():
    test = generate_problems(1, 20, [1, 2, 3])
    train = generate_problems(2, 30, [1, 2, 3], exclude={p["problem"] for p in test})
    assert not {p["problem"] for p in test} & {p["problem"] for p in train}
    assert [p["problem"] for p in generate_problems(1, 20, [1, 2, 3])] == [p["problem"] for p in test]
    assert len({p["problem"] for p in train}) == len(train)


def test_written_data_goes_through_the_real_loaders(tmp_path):
    rng = random.Random(0)
    problems = [make_problem(rng, 2) for _ in range(5)]
    write_jsonl(
        (
            {
                "problem": p["problem"],
                "answer": p["answer"],
                "distill": teacher_trace(p["steps"], rng),
                "level": p["level"],
            }
            for p in problems
        ),
        tmp_path / "train.jsonl",
    )
    records = load_offline(tmp_path / "train.jsonl")
    assert [r["problem"] for r in records] == [p["problem"] for p in problems]
    assert all(grade(r["distill"], r["answer"]) == 1.0 for r in records)
    assert load_problems(tmp_path / "train.jsonl")[0]["level"] == 2
    problem = problems[0]
    direct = direct_answer(problem["steps"])
    assert grade(direct, problem["answer"]) == 1.0
    expression = problem["problem"].removeprefix("Compute ").removesuffix(".")
    assert direct.splitlines() == [
        f"{expression} = {problem['answer']}",
        f"So the answer is \\boxed{{{problem['answer']}}}.",
    ]  # no steps


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_offline(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"problem": "1 + 1", "answer": "2"}\n')
    with pytest.raises(ValueError, match="bad.jsonl: row 1: distill must be a non-empty string"):
        load_offline(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="broken.jsonl:1: not valid JSON"):
        load_problems(tmp_path / "broken.jsonl")
