"""``redrl sweep``: one learning-rate grid for every method, chosen on the validation split.

The fair protocol of ``redrl compare``: every method gets the same grid of learning rates and
nothing else, at the same number of optimizer steps, and the value whose *final* checkpoint is most
accurate on the validation split (never the test split) is chosen. When a method's best value lies
on an edge of its grid, its grid grows by the next value of the 1-3-10 ladder on that side, and
again while the best stays on the edge (at most ``max_extensions`` times): the same rule for every
method. The staged ``sft_grpo`` has no value of its own: its SFT stage takes SFT's and its GRPO
stage GRPO's.

The chosen values go to a JSON file keyed to the task (:func:`redrl.learning_rate.task_key`), with the command and the
validation accuracy of every run. A config that sets ``optim.lr_sweep`` to that file and leaves
``optim.lr`` unset takes its method's value from it (:func:`redrl.learning_rate.with_learning_rate`); a file written
for another task is refused. The embedded default ships ``configs/tiny-lr.json``.

Layout of ``OUT``::

    runs/METHOD/lr-VALUE/    metrics.jsonl, final/, eval.json     (one per method and value)
    sweep.json                the chosen values and every validation accuracy
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from redrl.learning_rate import task_key

__all__ = ["DEFAULT_GRID", "ladder_neighbour", "merge_sweeps", "run_sweep", "select"]

#: Log-spaced over a factor of 33 (the 1-3-10 ladder): the grid every method starts from.
DEFAULT_GRID = (3e-5, 1e-4, 3e-4, 1e-3)


def ladder_neighbour(lr: float, direction: int) -> float:
    """The next value of the 1-3-10 ladder (…, 1e-4, 3e-4, 1e-3, …) below (``-1``) or above (``+1``) ``lr``."""
    exponent = math.floor(math.log10(lr) + 1e-9)
    ladder = [m * 10.0**e for e in range(exponent - 1, exponent + 2) for m in (1, 3)]
    if direction < 0:
        return float(f"{max(v for v in ladder if v < lr * (1 - 1e-6)):.3g}")
    return float(f"{min(v for v in ladder if v > lr * (1 + 1e-6)):.3g}")


def select(accuracy: dict[float, float]) -> tuple[float, int]:
    """The most accurate learning rate (ties: the smaller) and where it lies: ``-1`` on the lower edge of
    the values tried, ``+1`` on the upper edge, ``0`` inside."""
    values = sorted(accuracy)
    best = max(values, key=lambda lr: (accuracy[lr], -lr))
    if len(values) > 1 and best == values[0]:
        return best, -1
    if len(values) > 1 and best == values[-1]:
        return best, 1
    return best, 0


def _lr_name(lr: float) -> str:
    return f"{lr:.3g}"


def run_sweep(
    config: str = "tiny",
    overrides: list[str] = (),
    *,
    methods: list[str] | None = None,
    grid: tuple[float, ...] = DEFAULT_GRID,
    steps: int | None = None,
    seed: int = 0,
    max_extensions: int = 2,
    out: str | Path = "runs/sweep",
    save: str | Path | None = None,
    jobs: int | None = None,
    command: str = "",
    progress: bool = True,
) -> dict:
    """Train every method at every grid value (``compare.steps`` steps, ``seed``), evaluate each
    final checkpoint on the validation split (avg@``compare.eval_k``), grow the grid at the edges,
    choose, and write ``OUT/sweep.json`` (and ``save``, the file a config's ``optim.lr_sweep`` names)."""
    from redrl.compare import compare_config, execute_all, execute_run
    from redrl.methods import COMPARED, METHODS

    started = time.perf_counter()
    out = Path(out)
    methods = [m for m in (methods or list(COMPARED)) if not METHODS[m].stages]
    if not methods:
        raise ValueError("redrl sweep: no method to sweep (a staged method takes the values of its stages)")
    grid = tuple(sorted(float(lr) for lr in grid))
    if len(grid) < 2 or any(lr <= 0 for lr in grid):
        raise ValueError(f"redrl sweep: the grid needs at least two positive learning rates; got {grid}")
    shared = compare_config(config, list(overrides), optim={"lr": grid[0]})  # every run sets its own value
    if not shared.data.val:
        raise ValueError("data.val is not set: the sweep chooses on a validation split, never on the test split")
    steps = steps or shared.compare.steps
    eval_k = shared.compare.eval_k

    def log(message: str) -> None:
        print(message, flush=True)

    log(
        f"redrl sweep: {len(methods)} methods x learning rates {', '.join(map(_lr_name, grid))}, {steps} steps each, seed {seed}; "
        f"chosen on the validation split (avg@{eval_k})"
    )
    tried: dict[str, dict[float, float]] = {m: {} for m in methods}
    records: dict[tuple[str, float], dict] = {}
    todo = {m: list(grid) for m in methods}
    extensions = {m: 0 for m in methods}
    while any(todo.values()):
        tasks = []
        for method, values in todo.items():
            for lr in values:
                values_set = {
                    "train": {
                        "method": method,
                        "steps": steps,
                        "seed": seed,
                        "out": str(out / "runs" / method / f"lr-{_lr_name(lr)}"),
                    },
                    "optim": {"lr": lr},
                    "eval": {"k": eval_k},
                }
                tasks.append(((method, lr), (config, list(overrides), method, values_set, "val")))
        for (method, lr), (record, _line) in execute_all(tasks, execute_run, jobs=jobs, progress=progress, log=log):
            records[method, lr] = record
            tried[method][lr] = record["accuracy"]
        todo = {m: [] for m in methods}
        for method in methods:
            best, edge = select(tried[method])
            if edge and extensions[method] < max_extensions:
                new = ladder_neighbour(min(tried[method]) if edge < 0 else max(tried[method]), edge)
                if new not in tried[method]:
                    todo[method].append(new)
                    extensions[method] += 1
                    log(
                        f"  {method}: best value {_lr_name(best)} on the grid's {'lower' if edge < 0 else 'upper'} edge; "
                        f"trying {_lr_name(new)}"
                    )
    chosen = {m: select(tried[m])[0] for m in methods}
    body = {
        "task": task_key(shared),
        "command": command or "redrl sweep",
        "date": time.strftime("%Y-%m-%d"),
        "rule": "same grid for every method, final checkpoint, avg@k on the validation split; an edge winner "
        "extends its grid by the next 1-3-10 value (at most max_extensions times)",
        "settings": {
            "steps": steps,
            "seed": seed,
            "eval_k": eval_k,
            "group_size": shared.rollout.group_size,
            "prompts_per_step": shared.train.prompts_per_step,
            "grid": list(grid),
            "max_extensions": max_extensions,
            "config": config,
            "overrides": list(overrides),
        },
        "chosen": chosen,
        "validation": {m: {_lr_name(lr): acc for lr, acc in sorted(tried[m].items())} for m in methods},
        "by_level": {
            m: {
                _lr_name(lr): {level: r["accuracy"] for level, r in records[m, lr]["by_level"].items()}
                for lr in sorted(tried[m])
            }
            for m in methods
        },
        "seconds": time.perf_counter() - started,
    }
    text = json.dumps(body, indent=2) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(text)
    if save:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        previous = json.loads(Path(save).read_text()) if Path(save).is_file() else None
        Path(save).write_text(json.dumps(merge_sweeps(previous, body), indent=2) + "\n")
    log(format_sweep(body))
    log(f"{body['seconds']:.0f} s. Wrote {out / 'sweep.json'}" + (f" and {save}" if save else ""))
    return body


def merge_sweeps(previous: dict | None, body: dict) -> dict:
    """What ``--save`` writes: this sweep's choices joined to those already in the file for the same
    task, so sweeping some methods keeps the others' values. This sweep's methods replace theirs
    and are recorded under ``merged`` with their command and settings; a file for another task, or
    one whose methods this sweep covers entirely, is replaced."""
    if previous is None or previous.get("task") != body["task"] or set(previous["chosen"]) <= set(body["chosen"]):
        return body
    methods = list(body["chosen"])
    merged = dict(previous)
    for key in ("chosen", "validation", "by_level"):
        merged[key] = {**previous.get(key, {}), **body[key]}
    earlier = [
        {**entry, "methods": [m for m in entry["methods"] if m not in methods]} for entry in previous.get("merged", [])
    ]
    merged["merged"] = [entry for entry in earlier if entry["methods"]] + [
        {"methods": methods} | {key: body[key] for key in ("command", "date", "settings", "seconds")}
    ]
    return merged


def format_sweep(body: dict) -> str:
    """Markdown: validation accuracy (%) of every method at every learning rate, the chosen one in bold."""
    values = sorted({float(lr) for accuracies in body["validation"].values() for lr in accuracies})
    lines = [
        "| method | " + " | ".join(_lr_name(v) for v in values) + " | chosen |",
        "|---|" + "---|" * (len(values) + 1),
    ]
    for method, accuracies in body["validation"].items():
        cells = []
        for v in values:
            acc = accuracies.get(_lr_name(v))
            text = "" if acc is None else f"{100 * acc:.1f}"
            cells.append(f"**{text}**" if acc is not None and float(_lr_name(v)) == body["chosen"][method] else text)
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {_lr_name(body['chosen'][method])} |")
    return "\n".join(lines)
