"""Teacher traces at several thinking budgets (BARD, arXiv 2511.01470, phase 1).

BARD asks an expert compressor model to condense each long teacher trace to several budgets and
fine-tunes on every (question, budget) → compressed trace. We cannot call a compressor model here:

* for the embedded task, :func:`compress_trace` is a deterministic compressor that yields genuinely
  shorter traces with the same answer, because its traces have removable parts: the full trace
  (with its "Wait, let me check" re-checks), without the re-checks, the operation lines alone, and
  the direct answer;
* for real data, ``bard.traces`` names a JSONL file of compressed traces written elsewhere (by a
  compressor model), one ``{"problem", "budget", "distill"}`` per line (:func:`read_compressed`).

Each trace is tagged with the budget it fits: its length (response tokens, the end-of-sequence
token not counted) rounded *up* to the nearest of ``bard.buckets``, so "trace length ≤ budget"
holds for every phase-1 row. The embedded compressor gives at most four lengths per problem
where a compressor model gives a continuum.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from redrl.data.offline import read_records

__all__ = [
    "budget_bucket",
    "budget_records",
    "budget_text",
    "compress_trace",
    "read_compressed",
    "response_length",
    "with_budget",
]

_OPERATION = re.compile(r"-?\d+ [-+*/] -?\d+ = -?\d+")
_RECHECK = "Wait, let me check:"
_ANSWER = "So the answer is "


def compress_trace(trace: str, problem: str) -> list[str]:
    """The embedded task's trace at decreasing lengths, each distinct one once, longest first.

    ``c0`` the trace; ``c1`` without its re-check lines; ``c2`` its operation lines (``13 + 5 =
    18``) and the answer line, without the lines that say what is left; ``c3`` the direct answer
    (``13 + 5 - 9 = 9`` and the answer line). Every one ends in the same ``\\boxed{}`` answer.
    Raises ``ValueError`` for text that is not in the embedded task's format."""
    match = re.fullmatch(r"Compute (.+)\.", problem.strip())
    lines = trace.split("\n")
    if match is None or not lines[-1].startswith(_ANSWER):
        raise ValueError(
            "the embedded task's compressor reads its own format (Compute ... / So the answer is ...); "
            "for other data give compressed traces in bard.traces"
        )
    answer_line = lines[-1]
    answer = answer_line.removeprefix(_ANSWER + "\\boxed{").removesuffix("}.")
    c1 = [line for line in lines if not line.startswith(_RECHECK)]
    c2 = [line for line in c1[:-1] if _OPERATION.fullmatch(line)] + [answer_line]
    c3 = [f"{match.group(1)} = {answer}", answer_line]
    return list(dict.fromkeys("\n".join(c) for c in (lines, c1, c2, c3)))


def response_length(tokens: list[int], eos_id: int) -> int:
    """A response's length in tokens as a budget counts it: the closing end-of-sequence token not counted."""
    return len(tokens) - (1 if tokens and tokens[-1] == eos_id else 0)


def budget_bucket(length: int, buckets: Sequence[int]) -> int | None:
    """The smallest budget in ``buckets`` that ``length`` tokens fit (``None``: longer than all)."""
    fitting = [b for b in sorted(buckets) if b >= length]
    return fitting[0] if fitting else None


def budget_text(budget: int, template: str) -> str:
    """The budget as the prompt states it: ``template`` with ``{budget}`` filled in."""
    return template.replace("{budget}", str(int(budget)))


def with_budget(system: str | None, budget: int, template: str) -> str:
    """A system message that also states the budget (after the record's or config's own, if any)."""
    from redrl.conditioning import append_to_system

    return append_to_system(system, budget_text(budget, template))


def read_compressed(path: str) -> dict[str, list[tuple[int, str]]]:
    """``bard.traces``: problem → ``[(budget, trace), ...]`` from a JSONL of ``{"problem", "budget", "distill"}``."""
    by_problem: dict[str, list[tuple[int, str]]] = {}
    for number, record in enumerate(read_records(path), 1):
        budget, trace = record.get("budget"), record.get("distill")
        if not isinstance(record.get("problem"), str) or not isinstance(trace, str) or not trace.strip():
            raise ValueError(f"{path}: record {number} needs problem and distill (strings)")
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise ValueError(f"{path}: record {number} needs a budget (an integer >= 1); got {budget!r}")
        by_problem.setdefault(record["problem"], []).append((budget, trace))
    return by_problem


def budget_records(
    records: list[dict],
    length: Callable[[str], int],
    buckets: Sequence[int],
    *,
    compressed: dict[str, list[tuple[int, str]]] | None = None,
) -> list[dict]:
    """One training record per (problem, budget): ``{**record, "distill": trace, "budget": b}``.

    ``length(trace)`` counts a trace's response tokens. Without ``compressed`` the traces come from
    :func:`compress_trace` and each is tagged with its :func:`budget_bucket`; where two fall into
    one bucket the longer is kept (the most reasoning that fits), and a trace longer than every
    bucket is left out. With ``compressed`` (:func:`read_compressed`) a problem's given traces and
    budgets are used as they are; a problem without any keeps its own trace at its bucket."""
    out = []
    for record in records:
        given = (compressed or {}).get(record["problem"])
        if given is not None:
            out += [{**record, "distill": trace, "budget": budget} for budget, trace in given]
            continue
        traces = compress_trace(record["distill"], record["problem"]) if compressed is None else [record["distill"]]
        kept: dict[int, str] = {}
        for trace in traces:  # longest first: the first trace of a bucket is its longest
            bucket = budget_bucket(length(trace), buckets)
            if bucket is not None and bucket not in kept:
                kept[bucket] = trace
        out += [{**record, "distill": trace, "budget": bucket} for bucket, trace in sorted(kept.items())]
    if not out:
        raise ValueError(f"no teacher trace fits any of the budgets {tuple(buckets)} (bard.buckets)")
    return out
