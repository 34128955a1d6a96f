"""Loading problems and offline teacher traces.

Three schemas for teacher data, all read into the flat records the trainer uses:

* flat (the RED authors'): ``{"problem": str, "answer": str, "distill": str}``;
* LUFFY / OpenR1-Math-46k-8192: ``prompt`` = chat messages (a system message first, then the
  user's problem), ``target`` = ``[{"role": "assistant", "content": "<think>\\n..."}]``,
  ``reward_model = {"ground_truth": str, ...}``; the problem is the last user message, the answer
  the ground truth, the trace the target's content, and the system message is kept as ``system``;
* DeepScaleR (``agentica-org/DeepScaleR-Preview-Dataset``): ``{"problem", "answer", "solution"}``,
  the solution read as the trace (distillation's teacher prefix; student prefixes need none).

Sources: a ``.jsonl``/``.json``/``.parquet`` file, a directory of them, or a Hugging Face Hub
dataset name (through ``datasets``, split ``train``). Evaluation sets use ``{"problem", "answer"}``.
Extra fields (``level``, ``source``, ...) are kept.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

__all__ = ["load_offline", "load_problems", "read_records", "read_source"]

SUFFIXES = (".jsonl", ".json", ".parquet")


def read_records(path: str | Path) -> list[dict]:
    """All records of a ``.jsonl`` / ``.json`` / ``.parquet`` file, as dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix == ".parquet":
        import datasets

        return list(datasets.Dataset.from_parquet(str(path)))
    if path.suffix not in (".jsonl", ".json"):
        raise ValueError(f"unsupported data file {path}: expected .jsonl, .json or .parquet")
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    return records


def _checked(records: list[dict], keys: tuple[str, ...], path: str | Path) -> list[dict]:
    if not records:
        raise ValueError(f"{path} holds no records")
    for number, record in enumerate(records, 1):
        missing = [key for key in keys if not isinstance(record.get(key), (str, int))]
        if missing:
            raise ValueError(f"{path}: record {number} lacks {', '.join(missing)} (need {', '.join(keys)})")
        for key in keys:
            record[key] = str(record[key])
    return records


def load_problems(path: str | Path) -> list[dict]:
    """Problems with reference answers: ``[{"problem", "answer", ...}]``."""
    return _checked(read_records(path), ("problem", "answer"), path)


def read_source(source: str | Path) -> list[tuple[str, int, dict]]:
    """``(file, row number, record)`` for every record of a file, a directory of data files
    (sorted by name), or a Hub dataset name (its ``train`` split)."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES)
        if not files:
            raise ValueError(f"{path}: no {', '.join(SUFFIXES)} files in this directory")
        return [(str(f), n, r) for f in files for n, r in enumerate(read_records(f), 1)]
    if path.exists() or path.suffix in SUFFIXES or str(source).startswith((".", "/", "~")):
        return [(str(path), n, r) for n, r in enumerate(read_records(path), 1)]
    import datasets  # a Hub dataset name, e.g. "Elliott/Openr1-Math-46k-8192"

    return [(str(source), n, dict(r)) for n, r in enumerate(datasets.load_dataset(str(source), split="train"), 1)]


def _luffy_to_flat(record: dict) -> dict:
    """One LUFFY-schema record as a flat one (fields it lacks are left out, for validation to name)."""
    flat = {k: v for k, v in record.items() if k not in ("prompt", "target", "reward_model")}
    messages = record.get("prompt")
    if isinstance(messages, list):
        users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        systems = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "system"]
        if users:
            flat["problem"] = users[-1]
        if systems:
            flat["system"] = systems[0]
    target = record.get("target")
    if isinstance(target, list) and target and isinstance(target[0], dict):
        flat["distill"] = target[0].get("content")
    reward_model = record.get("reward_model")
    if isinstance(reward_model, dict):
        flat["answer"] = reward_model.get("ground_truth")
    return flat


def _deepscaler_to_flat(record: dict) -> dict:
    """A DeepScaleR-schema record (``problem``, ``answer``, ``solution``) as a flat one."""
    flat = {k: v for k, v in record.items() if k != "solution"}
    flat["distill"] = record.get("solution")
    return flat


def load_offline(path_or_name: str | Path, format: str = "auto") -> list[dict]:  # noqa: A002 - the issue's contract
    """Problems with teacher traces, ``[{"problem", "answer", "distill", ...}]``, from either schema.

    ``format`` is ``"flat"``, ``"luffy"``, ``"deepscaler"`` or ``"auto"`` (LUFFY when the first
    record has ``prompt`` and ``target``; DeepScaleR when it has ``solution`` and no ``distill``:
    its ``solution`` is read as the trace, and records without one are left out with a warning). Every bad row is reported, naming its file, row and field: a missing or
    non-string problem, a missing answer, an empty or non-string trace.
    """
    if format not in ("auto", "flat", "luffy", "deepscaler"):
        raise ValueError(f"format must be auto, flat, luffy or deepscaler; got {format!r}")
    rows = read_source(path_or_name)
    if not rows:
        raise ValueError(f"{path_or_name} holds no records")
    if format == "auto":
        first = rows[0][2]
        format = "luffy" if "prompt" in first and "target" in first else "flat"
        if format == "flat" and "solution" in first and "distill" not in first:
            format = "deepscaler"
    if format == "deepscaler":  # problem / answer / solution: the solution is the teacher trace
        rows = [(file, number, _deepscaler_to_flat(record)) for file, number, record in rows]
        kept = [row for row in rows if isinstance(row[2].get("distill"), str) and row[2]["distill"].strip()]
        if len(kept) < len(rows):
            warnings.warn(
                f"{path_or_name}: {len(rows) - len(kept)} of {len(rows)} records have no solution and are left out",
                stacklevel=2,
            )
        rows = kept
        if not rows:
            raise ValueError(f"{path_or_name} holds no record with a solution")
        format = "flat"
    records, problems = [], []
    for file, number, record in rows:
        flat = _luffy_to_flat(record) if format == "luffy" else dict(record)
        answer = flat.get("answer")
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            flat["answer"] = answer = str(answer)
        for field, value in (("problem", flat.get("problem")), ("answer", answer), ("distill", flat.get("distill"))):
            if not isinstance(value, str) or not value.strip():
                got = "missing" if value is None else f"{type(value).__name__} {str(value)[:40]!r}"
                problems.append(f"{file}: row {number}: {field} must be a non-empty string ({got})")
        records.append(flat)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"{len(problems)} bad field(s) in {path_or_name}{more}: " + "; ".join(problems[:5]))
    return records
