"""The six evaluation benchmarks of the paper's Table 2, and their evaluation protocol.

Files are ``{"problem", "answer"}`` JSONL (each problem already ends with the instruction to put
the final answer in ``\\boxed{}``). They are read from a data directory: the ``data_dir``
argument, else ``$REDRL_BENCHMARK_DIR``. Any other JSONL or parquet file with ``problem`` and
``answer`` works too, by path.

Protocol (the paper's, section "Evaluation"): avg@32 at temperature 0.6 for AIME24, AIME25 and
AMC23; pass@1 for MATH-500, Minerva and OlympiadBench (one sample, at the same temperature);
LEN = mean response tokens; Overall = the mean of the six accuracies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from redrl.data.offline import load_problems

__all__ = ["BENCHMARKS", "Protocol", "benchmark_dir", "load_benchmark", "resolve_benchmarks"]


@dataclass(frozen=True)
class Protocol:
    """How a benchmark is evaluated: ``k`` samples per problem at ``temperature``, and its row count."""

    k: int
    temperature: float
    rows: int
    title: str


#: The paper's six benchmarks, in Table 2's order.
BENCHMARKS: dict[str, Protocol] = {
    "aime24": Protocol(32, 0.6, 30, "AIME24"),
    "aime25": Protocol(32, 0.6, 30, "AIME25"),
    "amc2023": Protocol(32, 0.6, 40, "AMC23"),
    "math500": Protocol(1, 0.6, 500, "MATH-500"),
    "minervamath": Protocol(1, 0.6, 272, "Minerva"),
    "olympiadbench": Protocol(1, 0.6, 674, "Olympiad"),
}


def benchmark_dir(data_dir: str | Path | None = None) -> Path:
    """The directory holding ``NAME.jsonl`` for each benchmark."""
    chosen = data_dir or os.environ.get("REDRL_BENCHMARK_DIR")
    if not chosen:
        raise FileNotFoundError(
            "no benchmark directory: pass --benchmark-dir (data_dir=) or set REDRL_BENCHMARK_DIR "
            "to a folder with aime24.jsonl, aime25.jsonl, amc2023.jsonl, math500.jsonl, "
            "minervamath.jsonl, olympiadbench.jsonl"
        )
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"benchmark directory not found: {path}")
    return path


def load_benchmark(name_or_path: str | Path, data_dir: str | Path | None = None) -> list[dict]:
    """The problems of a named benchmark (see :data:`BENCHMARKS`) or of a JSONL/parquet file."""
    name = str(name_or_path)
    if name in BENCHMARKS:
        path = benchmark_dir(data_dir) / f"{name}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"benchmark {name}: {path} not found")
        return load_problems(path)
    path = Path(name).expanduser()
    if path.suffix in (".jsonl", ".json", ".parquet") or path.exists():
        return load_problems(path)
    raise ValueError(f"unknown benchmark {name!r}: use one of {', '.join(BENCHMARKS)}, 'all', or a JSONL/parquet path")


def resolve_benchmarks(text: str) -> list[str]:
    """``"all"`` → the six names; else the comma-separated names or paths, in order."""
    if text.strip() == "all":
        return list(BENCHMARKS)
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("--benchmarks is empty: give 'all' or names such as aime24,math500")
    for name in names:  # checked here, before any model is loaded or built
        path = Path(name).expanduser()
        if name not in BENCHMARKS and not (path.suffix in (".jsonl", ".json", ".parquet") or path.exists()):
            raise ValueError(
                f"unknown benchmark {name!r}: use one of {', '.join(BENCHMARKS)}, 'all', or a JSONL/parquet path"
            )
    return names
