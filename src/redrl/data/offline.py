"""Loading problems and offline teacher traces.

The flat format (the RED authors'): one record per problem, ``{"problem": str, "answer": str,
"distill": str}``, as JSONL or parquet. Evaluation sets use ``{"problem", "answer"}``. Extra
fields (``level``, ``source``, ...) are kept.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["load_offline", "load_problems", "read_records"]


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


def load_offline(path: str | Path) -> list[dict]:
    """Problems with teacher traces: ``[{"problem", "answer", "distill", ...}]``."""
    return _checked(read_records(path), ("problem", "answer", "distill"), path)
