"""``redrl compare --suite distill``: the distillation grid of arXiv 2605.16826 on one config, its
findings judged over seeds (and ``redrl demo --distill``, one seed of the grid).

Cells (each trained ``steps`` optimizer steps from the same base, at one shared learning rate,
then evaluated on the test split; the teacher and the base are evaluated as they are):

=================== ======================================================================
``kd``              teacher prefix, forward KL          ``offline_rkl``  teacher prefix, reverse KL
``dagger``          student prefix, forward KL          ``opd``          student prefix, reverse KL
``kl_mix``          student prefix, α = 0.8             ``opd_curriculum`` OPD with the length curriculum
``dagger_grpo``     DAgger, then GRPO                   ``opd_grpo``     OPD, then GRPO
``kd_compute``      KD given the seconds DAgger spent   ``offline_rkl_compute`` the same against OPD
=================== ======================================================================

The ``*_compute`` cells run after the others: their steps are ``steps × r`` rounded (at least one), ``r`` the ratio of
the student-prefix cell's to the teacher-prefix cell's training seconds measured in this suite, so
both sides of "equal compute" spent about the same time. Every finished cell's entropy is measured
the same way (:func:`redrl.compare.measure_entropies`: the mean token entropy of its own rollouts
on fixed training prompts). Layout of ``OUT`` as :mod:`redrl.compare`, plus ``entropy/``.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

from redrl.compare import (
    aggregate,
    cell_values,
    compare_config,
    mean_std,
    measure_entropies,
    method_learning_rates,
    run_cached,
    untrained_values,
    write_json,
)
from redrl.methods import METHODS
from redrl.report import Comparison, Verdict, combine_seeds, finite_values, format_verdicts, plot_curves

__all__ = ["CELLS", "DEMO_CELLS", "judge_distill", "run_distill_suite"]

#: cell → (method, extra config values)
CELLS = {
    "kd": ("kd", {}),
    "offline_rkl": ("offline_rkl", {}),
    "dagger": ("dagger", {}),
    "opd": ("opd", {}),
    "kl_mix": ("kl_mix", {}),
    "opd_curriculum": ("opd", {"distill": {"curriculum": True}}),
    "dagger_grpo": ("dagger_grpo", {}),
    "opd_grpo": ("opd_grpo", {}),
}
#: equal-compute cell → (teacher-prefix method, the student-prefix cell whose seconds it is given)
EQUAL_COMPUTE = {"kd_compute": ("kd", "dagger"), "offline_rkl_compute": ("offline_rkl", "opd")}
#: ``redrl demo --distill``: the 2×2 grid and the mixture
DEMO_CELLS = ("kd", "dagger", "offline_rkl", "opd", "kl_mix")

CURVES = {
    "distill_entropy": ("entropy", "student entropy on the trained tokens"),
    "online_length": ("length", "rollout length (tokens, student prefixes)"),
    "eval_accuracy": ("validation_accuracy", "validation avg@k"),
    "eval_pass@k": ("validation_pass", "validation pass@k"),
    "kl_rev": ("kl_rev", "reverse KL (token mean)"),
    "kl_fwd": ("kl_fwd", "forward KL (token mean)"),
    "window": ("window", "length curriculum's window (tokens)"),
}


def run_distill_suite(
    config: str = "tiny",
    overrides: list[str] = (),
    *,
    cells: list[str] | None = None,
    seeds: int | None = None,
    steps: int | None = None,
    out: str | Path = "runs/compare-distill",
    jobs: int | None = None,
    progress: bool = True,
) -> dict:
    """Train and evaluate every cell × seed (finished runs reused), measure entropies, judge the
    paper's findings; write ``results.json``, ``table.md``, ``plots/`` and ``report.md``."""
    started = time.perf_counter()
    out, overrides = Path(out), list(overrides)
    shared = compare_config(config, overrides)
    if not shared.teacher.path:
        raise ValueError("the distillation suite needs a teacher model: set teacher.path")
    cells = list(cells or [*CELLS, *EQUAL_COMPUTE])
    unknown = [c for c in cells if c not in CELLS and c not in EQUAL_COMPUTE]
    if unknown:
        raise ValueError(f"unknown cell {unknown[0]!r}; choose from {', '.join([*CELLS, *EQUAL_COMPUTE])}")
    if shared.teacher.path == "tiny-teacher":  # built here, once, before the runs that need it start
        from redrl.tiny_teacher import ensure_teacher

        ensure_teacher(progress=progress)
    seeds = seeds or shared.compare.seeds
    steps = steps or shared.compare.steps
    eval_k, eval_every = shared.compare.eval_k, shared.compare.distill_eval_every
    methods = {CELLS[c][0] for c in cells if c in CELLS} | {EQUAL_COMPUTE[c][0] for c in cells if c in EQUAL_COMPUTE}
    # compare.distill_lr stands in where the sweep file has no rate for a distillation method
    lrs = method_learning_rates(config, overrides, methods, shared.compare.distill_lr)

    def log(message: str) -> None:
        print(message, flush=True)

    log(
        f"redrl compare --suite distill: {len(cells)} cells x {seeds} seeds, {steps} steps each; learning rates "
        + ", ".join(f"{m} {v:g}" for m, v in lrs.items())
        + "; "
        f"teacher {shared.teacher.path}; test avg@{eval_k} at temperature {shared.eval.temperature}"
    )
    records: dict[tuple[str, int], dict] = {}

    def run_all(plan: dict[tuple[str, int], dict]) -> None:
        run_cached(plan, config, overrides, records, jobs=jobs, progress=progress, log=log)

    first = {}
    for seed in range(seeds):
        first["base", seed] = untrained_values("base", seed, eval_k, out)
        first["teacher", seed] = untrained_values("teacher", seed, eval_k, out, shared.teacher.path)
        for cell in cells:
            if cell in CELLS:
                first[cell, seed] = cell_values(cell, *CELLS[cell], seed, steps, eval_k, out, lrs, eval_every)
    run_all(first)

    compute = {}
    for cell, (method, against) in EQUAL_COMPUTE.items():
        if cell not in cells or method not in cells or against not in cells:
            continue
        ratio = statistics.fmean(_step_seconds(records[against, s]) for s in range(seeds)) / statistics.fmean(
            _step_seconds(records[method, s]) for s in range(seeds)
        )
        given = max(1, round(steps * ratio))  # a cell of no steps measures nothing: at least one
        compute[cell] = {"method": method, "against": against, "seconds_ratio": ratio, "steps": given}
        log(f"equal compute: {cell} = {method} for {given} steps ({against} took {ratio:.2f}x its seconds)")
    run_all(
        {
            (cell, seed): cell_values(cell, spec["method"], {}, seed, spec["steps"], eval_k, out, lrs, eval_every)
            for cell, spec in compute.items()
            for seed in range(seeds)
        }
    )

    entropies = _entropies(config, overrides, records, seeds, out, log)
    names = [c for c in [*CELLS, *EQUAL_COMPUTE] if (c, 0) in records]
    results = {
        "suite": "distill",
        "methods": {name: aggregate([records[name, s] for s in range(seeds)]) for name in names},
        "base": aggregate([records["base", s] for s in range(seeds)]),
        "teacher": aggregate([records["teacher", s] for s in range(seeds)]),
        "entropy": entropies,
        "equal_compute": compute,
        "settings": {
            "config": config,
            "overrides": overrides,
            "steps": steps,
            "seeds": seeds,
            "eval_k": eval_k,
            "eval_temperature": shared.eval.temperature,
            "lr": lrs,
            "teacher": shared.teacher.path,
            "prompts_per_step": shared.train.prompts_per_step,
            "group_size": shared.rollout.group_size,
            "cells": {c: {"method": CELLS[c][0], **CELLS[c][1]} for c in names if c in CELLS},
        },
    }
    for name in ("base", "teacher", *names):
        entry = results["methods"].get(name) or results[name]
        entry[f"pass@{eval_k}_mean"], entry[f"pass@{eval_k}_std"] = mean_std(
            r.get(f"pass@{eval_k}") for r in entry["seeds"]
        )
        entry["entropy_mean"], entry["entropy_std"] = mean_std(entropies.get(name, []))
        entry["train_seconds_mean"], _ = mean_std(_step_seconds(r) for r in entry["seeds"] if "train_seconds" in r)
    verdicts = judge_distill(results)
    results["seconds"] = time.perf_counter() - started
    write_json(out / "results.json", results)
    table = format_distill_table(results)
    (out / "table.md").write_text(table + "\n")
    plots = _plots(results, out / "plots", eval_k)
    (out / "report.md").write_text(format_distill_report(results, verdicts, plots))
    log("\n" + table + "\n")
    for v in verdicts:
        log(f"{v.claim} {v.text}: {v.verdict}")
    log(
        f"\n{results['seconds']:.0f} s. Wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'plots'}/, {out / 'report.md'}"
    )
    return results


def _step_seconds(record: dict) -> float:
    """Seconds a run spent in its optimizer steps (rollouts, teacher, update), evaluations left out."""
    path = Path(record["run_dir"]) / "metrics.jsonl"
    return sum(json.loads(line)["step_time"] for line in path.read_text().splitlines() if line.strip())


def _curves(k: int, prefix: str = "") -> dict:
    return {key.replace("@k", f"@{k}"): (prefix + stem, label) for key, (stem, label) in CURVES.items()}


def _plots(results: dict, out: Path, k: int) -> list[Path]:
    """The curves of the grid's cells (``plots/NAME.png``) and, apart, of the equal-compute cells
    beside the runs they are measured against (``plots/compute_NAME.png``)."""
    grid = {name: entry for name, entry in results["methods"].items() if name in CELLS}
    compute = {}
    for name, spec in results.get("equal_compute", {}).items():
        for member in (spec["method"], spec["against"], name):
            if member in results["methods"]:
                compute[member] = results["methods"][member]
    curves = _curves(k)
    written = plot_curves({"methods": grid}, out, curves=curves, optional=set(curves))
    if compute:
        curves = {key: value for key, value in _curves(k, "compute_").items() if key != "window"}
        written += plot_curves({"methods": compute}, out, curves=curves, optional=set(curves))
    return written


def _entropies(config, overrides, records, seeds: int, out: Path, log) -> dict[str, list[float]]:
    """The mean token entropy of each evaluated model's own rollouts on 64 fixed training prompts."""
    from transformers import AutoTokenizer

    from redrl.data.training import prepare_data
    from redrl.paths import resolve_model, resolve_paths

    cfg = compare_config(config, overrides)
    base_path, train_path, _ = resolve_paths(cfg, need_test=False)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    data = prepare_data(cfg, tokenizer, train_path)
    chosen = random.Random(1234).sample(range(len(data.prompts)), min(cfg.compare.entropy_prompts, len(data.prompts)))
    prompts, traces = [data.prompts[i] for i in chosen], [data.teacher[i] for i in chosen]
    log(f"measuring each model's entropy on its own rollouts of {len(prompts)} training prompts")
    table: dict[str, list[float]] = {}
    for (name, seed), record in sorted(records.items(), key=lambda item: (item[0][1], item[0][0])):
        untrained = "train_seconds" not in record  # the base or the teacher: its own model path
        path = resolve_model(record["config"]["model"]["path"]) if untrained else str(Path(record["run_dir"]) / "final")
        cache = out / "entropy" / f"{name}-seed{seed}.json"
        weights = Path(path) / "model.safetensors"
        key = {"model": path, "seed": seed, "weights": weights.stat().st_mtime_ns if weights.exists() else None}
        saved = json.loads(cache.read_text()) if cache.exists() else None
        if not saved or saved.get("key") != key:
            saved = {"key": key, **measure_entropies(path, cfg, prompts, traces, seed=seed)}
            write_json(cache, saved)
        table.setdefault(name, []).append(saved["h_rl"])
    return table


def _column(results: dict, name: str, key: str) -> list[float]:
    entry = results["methods"].get(name) or (results.get(name) if name in ("base", "teacher") else None)
    if entry is None:
        return []
    if key == "entropy":
        return list(results["entropy"].get(name, []))
    return [r.get(key) for r in entry["seeds"]]


def judge_distill(results: dict) -> list[Verdict]:
    """The paper's findings, each judged as the RED claims are (:mod:`redrl.report`): a comparison
    holds when the difference of seed means exceeds twice its standard error."""
    k = results["settings"]["eval_k"]
    n = (results["methods"].get("kd") or results["base"])["seeds"][0].get("n")
    verdicts: list[Verdict] = []

    def cmp(what: str, key: str, a: str, b: str, lower: bool = False) -> Comparison | None:
        if a not in results["methods"] or b not in results["methods"]:
            return None
        binomial = n if key in ("accuracy", f"pass@{k}") else None
        return Comparison(what, _column(results, a, key), _column(results, b, key), binomial, lower)

    def add(claim: str, text: str, comparisons, note: str = "") -> None:
        comparisons = [c for c in comparisons if c is not None]
        if comparisons:
            verdicts.append(Verdict(claim, text, combine_seeds(comparisons), comparisons, note))

    pairs = (("offline_rkl", "kd", "teacher prefixes"), ("opd", "dagger", "student prefixes"))
    add(
        "D1a",
        f"reverse KL gives a higher avg@{k} than forward KL",
        [cmp(f"avg@{k}, {p}: {a} > {b}", "accuracy", a, b) for a, b, p in pairs],
    )
    add(
        "D1b",
        "reverse KL leaves a lower entropy than forward KL",
        [cmp(f"entropy, {p}: {a} < {b}", "entropy", a, b, lower=True) for a, b, p in pairs],
    )
    add(
        "D1c",
        "reverse KL writes longer answers than forward KL",
        [cmp(f"test length, {p}: {a} > {b}", "length", a, b) for a, b, p in pairs],
    )
    add(
        "D1d",
        f"reverse KL gives a lower pass@{k} than forward KL",
        [cmp(f"pass@{k}, {p}: {a} < {b}", f"pass@{k}", a, b, lower=True) for a, b, p in pairs],
    )
    add(
        "D2",
        f"at equal steps, student prefixes beat teacher prefixes (avg@{k})",
        [cmp(f"avg@{k}: {a} > {b}", "accuracy", a, b) for a, b in (("dagger", "kd"), ("opd", "offline_rkl"))],
    )
    compute = results.get("equal_compute", {})
    add(
        "D3",
        f"at equal compute (seconds in optimizer steps), teacher prefixes beat student prefixes (avg@{k})",
        [cmp(f"avg@{k}: {c} > {spec['against']}", "accuracy", c, spec["against"]) for c, spec in compute.items()],
        note="; ".join(
            f"{c}: {spec['method']} for {spec['steps']} steps, {spec['against']} took {spec['seconds_ratio']:.2f}x "
            f"the seconds of {spec['method']} at equal steps"
            for c, spec in compute.items()
        ),
    )
    add(
        "D4",
        "under reverse KL, training on the whole window collapses entropy more than the curriculum's short windows",
        [cmp("entropy: opd (whole window) < opd_curriculum", "entropy", "opd", "opd_curriculum", lower=True)],
    )
    add(
        "D5",
        f"forward-KL checkpoints are better starting points for GRPO (avg@{k} after GRPO)",
        [cmp(f"avg@{k}: dagger_grpo > opd_grpo", "accuracy", "dagger_grpo", "opd_grpo")],
    )
    add(
        "D6",
        "KL mixing with α = 0.8 keeps entropy (above reverse KL's)",
        [cmp("entropy: kl_mix > opd", "entropy", "kl_mix", "opd")],
        note=_entropy_note(results, ("dagger", "kl_mix", "opd")),
    )
    add(
        "D7",
        f"the length curriculum raises avg@{k} and pass@{k} and shortens answers (OPD)",
        [
            cmp(f"avg@{k}: opd_curriculum > opd", "accuracy", "opd_curriculum", "opd"),
            cmp(f"pass@{k}: opd_curriculum > opd", f"pass@{k}", "opd_curriculum", "opd"),
            cmp("test length: opd_curriculum < opd", "length", "opd_curriculum", "opd", lower=True),
        ],
    )
    return verdicts


def _entropy_note(results: dict, names) -> str:
    parts = []
    for name in names:
        values = finite_values(results["entropy"].get(name, []))
        if values:
            parts.append(f"{name} {statistics.fmean(values):.3f}")
    return "entropy: " + ", ".join(parts) if parts else ""


def _fmt(mean, std, scale: float = 100.0, digits: int = 1) -> str:
    if mean is None:
        return "–"
    text = f"{scale * mean:.{digits}f}"
    return text + (f" ± {scale * std:.{digits}f}" if std is not None else "")


def format_distill_table(results: dict) -> str:
    k = results["settings"]["eval_k"]
    cells = results["settings"]["cells"]
    rows = [
        f"| model | prefix | α | avg@{k} | pass@{k} | LEN | entropy | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("base", "teacher", *results["methods"]):
        entry = results["methods"].get(name) or results[name]
        method = METHODS.get(
            cells.get(name, {}).get("method") or results.get("equal_compute", {}).get(name, {}).get("method", "")
        )
        prefix = alpha = ""
        if method is not None and method.objective == "distill":
            prefix, alpha = method.distill_prefix, f"{method.distill_alpha:g}"
        elif method is not None and method.stages:
            first = METHODS[method.stages[0]]
            prefix, alpha = f"{first.distill_prefix} → GRPO", f"{first.distill_alpha:g}"
        if cells.get(name, {}).get("distill", {}).get("curriculum"):
            prefix += " + curriculum"
        seconds = entry.get("train_seconds_mean")
        rows.append(
            f"| {name} | {prefix} | {alpha} | {_fmt(entry['accuracy_mean'], entry['accuracy_std'])} | "
            f"{_fmt(entry.get(f'pass@{k}_mean'), entry.get(f'pass@{k}_std'))} | "
            f"{_fmt(entry['length_mean'], entry['length_std'], 1.0, 0)} | "
            f"{_fmt(entry.get('entropy_mean'), entry.get('entropy_std'), 1.0, 3)} | "
            f"{'' if seconds is None else f'{seconds:.0f}'} |"
        )
    return "\n".join(rows)


def format_distill_report(results: dict, verdicts: list[Verdict], plots: list[Path]) -> str:
    s = results["settings"]
    lines = [
        "# Distillation grid: the paper's findings judged",
        "",
        f"{s['seeds']} seeds, {s['steps']} optimizer steps per cell, teacher `{s['teacher']}`; learning rates: "
        + ", ".join(f"{m} {v:g}" for m, v in s["lr"].items())
        + " (a method's value chosen on validation where the sweep file has one — GRPO's in the staged cells' "
        "GRPO stage — else compare.distill_lr, one value for every distillation method); "
        f"test avg@{s['eval_k']} at temperature {s['eval_temperature']}. "
        "Entropy: the mean token entropy of each model's own rollouts on 64 fixed training prompts. "
        "Train s: seconds spent in optimizer steps per run (rollouts, teacher, update; evaluations left out), mean over seeds.",
        "",
        format_distill_table(results),
        "",
        "Judgement rule: a comparison holds when the difference of the seed means exceeds twice its standard error "
        "in the claimed direction, does not hold when it lies at least that far the other way, and is inconclusive "
        "in between. A claim holds when all its comparisons hold.",
        "",
        "| finding | verdict |",
        "|---|---|",
    ]
    lines += format_verdicts(verdicts)
    if plots:
        lines.append("Curves over steps (mean over seeds, min–max shaded):")
        lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    return "\n".join(lines) + "\n"
