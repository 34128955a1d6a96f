"""The six benchmarks: loading, row counts, the protocol, and `redrl eval --benchmarks` end to end."""

import json
import os
from pathlib import Path

import pytest

from redrl.cli import main
from redrl.data.benchmarks import BENCHMARKS, load_benchmark, resolve_benchmarks

SHARED = Path(os.environ.get("REDRL_BENCHMARK_DIR") or Path(__file__).resolve().parents[2] / "shared" / "benchmarks")
needs_data = pytest.mark.skipif(not (SHARED / "aime24.jsonl").is_file(), reason=f"benchmark files not at {SHARED}")


@needs_data
@pytest.mark.parametrize(
    "name, rows",
    [("aime24", 30), ("aime25", 30), ("amc2023", 40), ("math500", 500), ("minervamath", 272), ("olympiadbench", 674)],
)
def test_each_benchmark_loads_with_its_row_count(name, rows, monkeypatch):
    problems = load_benchmark(name, SHARED)
    assert len(problems) == rows == BENCHMARKS[name].rows
    assert all(p["problem"].strip() and p["answer"].strip() for p in problems)
    monkeypatch.setenv("REDRL_BENCHMARK_DIR", str(SHARED))  # the environment variable works as well
    assert load_benchmark(name) == problems


def test_benchmark_errors_name_what_is_wrong(tmp_path, monkeypatch):
    monkeypatch.delenv("REDRL_BENCHMARK_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="REDRL_BENCHMARK_DIR"):
        load_benchmark("aime24")
    with pytest.raises(FileNotFoundError, match="aime24.jsonl not found"):
        load_benchmark("aime24", tmp_path)
    with pytest.raises(ValueError, match="unknown benchmark 'aime2024'"):
        load_benchmark("aime2024", tmp_path)
    assert resolve_benchmarks("all") == list(BENCHMARKS)
    assert resolve_benchmarks("aime24, x.jsonl") == ["aime24", "x.jsonl"]


def test_any_file_with_problem_and_answer_is_a_benchmark(tmp_path):
    import datasets

    path = tmp_path / "mine.parquet"
    datasets.Dataset.from_list([{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": "4"}]).to_parquet(
        str(path)
    )
    assert [p["answer"] for p in load_benchmark(str(path))] == ["2", "4"]


@needs_data
def test_eval_on_benchmarks_follows_the_protocol_and_writes_every_sample(tiny_assets, tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--model",
                str(tiny_assets.base),
                "--benchmarks",
                "aime24,math500",
                "--benchmark-dir",
                str(SHARED),
                "--limit",
                "2",
                "--max-new-tokens",
                "8",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| AIME24 Acc | AIME24 LEN | MATH-500 Acc | MATH-500 LEN | Overall Acc | Overall LEN |" in printed
    results = json.loads((out / "results.json").read_text())
    # The paper's protocol: avg@32 at 0.6 for AIME, pass@1 for MATH-500.
    assert (results["benchmarks"]["aime24"]["k"], results["benchmarks"]["aime24"]["temperature"]) == (32, 0.6)
    assert results["benchmarks"]["math500"]["k"] == 1 and results["grader"] == "math"
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 32 + 2 * 1
    assert {s["benchmark"] for s in samples} == {"aime24", "math500"}
    assert all(
        s["reward"] in (0.0, 1.0) and 1 <= s["length"] <= 8 and isinstance(s["completion"], str) for s in samples
    )
    overall = results["overall"]["accuracy"]
    assert overall == pytest.approx(
        (results["benchmarks"]["aime24"]["accuracy"] + results["benchmarks"]["math500"]["accuracy"]) / 2
    )
