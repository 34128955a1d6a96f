"""``redrl compare --suite critics``: GRPO, classic PPO, AsyPPO and AsyPPO without its masks, at one
and at four updates per rollout batch (``train.ppo_epochs``), with the claims of ``docs/critics.md``
judged over seeds.

Cells (each trained ``steps`` optimizer steps from the same base at its method's swept learning
rate, chosen at ``ppo_epochs = 1`` and used at both; then evaluated on the test split):

===================== =====================================================================
``grpo``              GRPO                          ``grpo_e4``, ``ppo_e4``, ...  the same at 4 epochs
``ppo``               one critic, no masks          ``asyppo_shared``   asyppo, both critics on all rows
``asyppo``            two mini-critics, k = h = 20 % ``asyppo_no_masks`` the same critics, no masks
===================== =====================================================================

Besides accuracy, each cell reports what its critics logged over its last ``TAIL`` steps: the
value explained variance on each step's fresh rollouts, the critics' disagreement ``σ``, and the
Spearman correlation between ``σ_t`` and the size of each token's gradient. Layout of ``OUT`` as
:mod:`redrl.compare`.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from redrl.compare import (
    aggregate,
    cell_values,
    compare_config,
    finite_values,
    mean_std,
    method_learning_rates,
    run_cached,
    untrained_values,
    write_json,
)
from redrl.conditioned_suite import HARD_LEVELS, _fmt, _hard_accuracy, _num
from redrl.report import FAILS, HOLDS, INCONCLUSIVE, Comparison, Verdict, combine_seeds, format_suite_report

__all__ = ["CELLS", "TAIL", "judge_critics", "run_critics_suite"]

_FOUR = {"train": {"ppo_epochs": 4}}
#: cell → (method, extra config values)
CELLS = {
    "grpo": ("grpo", {}),
    "ppo": ("ppo", {}),
    "asyppo": ("asyppo", {}),
    "asyppo_no_masks": ("asyppo_no_masks", {}),
    "asyppo_shared": ("asyppo", {"critic": {"shards": "shared"}}),
    "grpo_e4": ("grpo", _FOUR),
    "ppo_e4": ("ppo", _FOUR),
    "asyppo_e4": ("asyppo", _FOUR),
    "asyppo_no_masks_e4": ("asyppo_no_masks", _FOUR),
}
#: the last steps whose critic metrics are averaged
TAIL = 10
#: what each cell's run log contributes (metric in metrics.jsonl → its name in the record)
LOGGED = {
    "value_explained_variance": "explained_variance",
    "critic_std_mean": "critic_std",
    "std_gradient_spearman": "std_gradient_rho",
    "clip_fraction": "clip_fraction",
    "h_rl": "h_rl",
}


def _tail_means(run_dir: str, tail: int = TAIL) -> dict:
    """The mean over the last ``tail`` steps of each :data:`LOGGED` metric of a run (``None`` if never logged)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    rows = [r for r in rows if "step" in r and "stage" not in r][-tail:]
    out = {}
    for metric, name in LOGGED.items():
        values = finite_values(r.get(metric) for r in rows)
        out[name] = statistics.fmean(values) if values else None
    return out


def _curve(run_dir: str, metric: str) -> list[float | None]:
    path = Path(run_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return [r.get(metric) for r in rows if "step" in r]


def run_critics_suite(
    config: str = "tiny",
    overrides: list[str] = (),
    *,
    cells: list[str] | None = None,
    seeds: int | None = None,
    steps: int | None = None,
    out: str | Path = "runs/compare-critics",
    jobs: int | None = None,
    progress: bool = True,
) -> dict:
    """Train and evaluate every cell × seed (finished runs reused), judge the claims; write
    ``results.json``, ``table.md``, ``plots/`` and ``report.md``."""
    started = time.perf_counter()
    out, overrides = Path(out), list(overrides)
    shared = compare_config(config, overrides)
    cells = list(cells or CELLS)
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        raise ValueError(f"unknown cell {unknown[0]!r}; choose from {', '.join(CELLS)}")
    seeds = seeds or shared.compare.seeds
    steps = steps or shared.compare.steps
    eval_k = shared.compare.eval_k
    lrs = method_learning_rates(config, overrides, {CELLS[c][0] for c in cells})

    def log(message: str) -> None:
        print(message, flush=True)

    log(
        f"redrl compare --suite critics: {len(cells)} cells x {seeds} seeds, {steps} steps each; learning rates "
        + ", ".join(f"{m} {v:g}" for m, v in lrs.items())
        + f"; test avg@{eval_k} at temperature {shared.eval.temperature}"
    )
    plan = {}
    for seed in range(seeds):
        plan["base", seed] = untrained_values("base", seed, eval_k, out)
        for cell in cells:
            plan[cell, seed] = cell_values(cell, CELLS[cell][0], CELLS[cell][1], seed, steps, eval_k, out, lrs)
    records: dict[tuple[str, int], dict] = {}
    run_cached(plan, config, overrides, records, jobs=jobs, progress=progress, log=log)

    for (cell, _), record in records.items():
        record["hard_accuracy"] = _hard_accuracy(record)
        if cell != "base":
            record.update(_tail_means(record["run_dir"]))
    results = {
        "suite": "critics",
        "methods": {c: aggregate([records[c, s] for s in range(seeds)]) for c in cells},
        "base": aggregate([records["base", s] for s in range(seeds)]),
        "settings": {
            "config": config,
            "overrides": overrides,
            "steps": steps,
            "seeds": seeds,
            "eval_k": eval_k,
            "eval_temperature": shared.eval.temperature,
            "lr": lrs,
            "lr_sweep": shared.optim.lr_sweep,
            "prompts_per_step": shared.train.prompts_per_step,
            "group_size": shared.rollout.group_size,
            "tail": TAIL,
            "hard_levels": list(HARD_LEVELS),
            "cells": {c: {"method": CELLS[c][0], **CELLS[c][1]} for c in cells},
        },
    }
    for entry in (*results["methods"].values(), results["base"]):
        for key in ("hard_accuracy", *LOGGED.values()):
            entry[f"{key}_mean"], entry[f"{key}_std"] = mean_std(r.get(key) for r in entry["seeds"])
    verdicts = judge_critics(results)
    results["verdicts"] = [{"claim": v.claim, "text": v.text, "verdict": v.verdict, "note": v.note} for v in verdicts]
    results["seconds"] = time.perf_counter() - started
    write_json(out / "results.json", results)
    tables = format_critics_table(results)
    (out / "table.md").write_text(tables + "\n")
    plots = plot_critics(results, out / "plots")
    (out / "report.md").write_text(format_critics_report(results, verdicts, plots))
    log("\n" + tables + "\n")
    for v in verdicts:
        log(f"{v.claim} {v.text}: {v.verdict}" + (f" ({v.note})" if v.note else ""))
    log(f"\n{results['seconds']:.0f} s. Wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'report.md'}")
    return results


def judge_critics(results: dict) -> list[Verdict]:
    """The claims written in ``docs/critics.md`` before the runs: a comparison holds when the
    difference of seed means exceeds 2·se (:mod:`redrl.report`); a threshold claim holds when the
    seed mean reaches its threshold."""
    k = results["settings"]["eval_k"]
    methods, verdicts = results["methods"], []

    def column(cell: str, key: str) -> list:
        return [r.get(key) for r in methods[cell]["seeds"]] if cell in methods else []

    def n_of(cell: str) -> int | None:
        return methods[cell]["seeds"][0].get("n") if cell in methods else None

    for claim, a, b, text in (
        ("C1", "asyppo_e4", "ppo_e4", "at 4 epochs, asyppo is more accurate than ppo"),
        ("C2", "asyppo", "ppo", "at 1 epoch, asyppo is more accurate than ppo"),
        ("C3", "asyppo_e4", "asyppo_no_masks_e4", "at 4 epochs, the masks make asyppo more accurate"),
        ("C4", "asyppo_e4", "grpo_e4", "at 4 epochs, asyppo is more accurate than grpo"),
    ):
        if a in methods and b in methods:
            c = Comparison(f"avg@{k}: {a} > {b}", column(a, "accuracy"), column(b, "accuracy"), n_of(a))
            verdicts.append(Verdict(claim, text, combine_seeds([c]), [c]))

    def threshold(claim: str, text: str, values: list, bound: float, label: str) -> None:
        values = finite_values(values)
        mean = statistics.fmean(values) if values else None
        verdict = INCONCLUSIVE if mean is None else (HOLDS if mean >= bound else FAILS)
        note = f"{label} {_num(mean)} (per seed " + ", ".join(f"{v:.2f}" for v in values) + f"); threshold {bound:g}"
        verdicts.append(Verdict(claim, text, verdict, note=note))

    if "asyppo" in methods:
        threshold(
            "C5",
            f"asyppo's value explained variance (last {TAIL} steps) is at least 0.3",
            column("asyppo", "explained_variance"),
            0.3,
            "explained variance",
        )
    if "asyppo" in methods and "asyppo_shared" in methods:
        own = finite_values(column("asyppo", "critic_std"))
        common = finite_values(column("asyppo_shared", "critic_std"))
        ratio = (
            statistics.fmean(own) / statistics.fmean(common) if own and common and statistics.fmean(common) else None
        )
        verdict = INCONCLUSIVE if ratio is None else (HOLDS if ratio >= 1.5 else FAILS)
        verdicts.append(
            Verdict(
                "C6",
                "disjoint shards make the critics disagree at least 1.5x as much as shared ones",
                verdict,
                note=f"σ {_num(statistics.fmean(own) if own else None, 3)} vs "
                f"{_num(statistics.fmean(common) if common else None, 3)}: ratio {_num(ratio)}",
            )
        )
    if "asyppo" in methods:
        threshold(
            "C7",
            "the critics' disagreement follows each token's gradient size (Spearman ρ ≥ 0.3)",
            column("asyppo", "std_gradient_rho"),
            0.3,
            "ρ",
        )
    return verdicts


def format_critics_table(results: dict) -> str:
    """One row per cell: epochs, learning rate, accuracy, levels 4–6, LEN and what its critics logged."""
    s = results["settings"]
    k, hard = s["eval_k"], f"{s['hard_levels'][0]}–{s['hard_levels'][-1]}"
    rows = [
        f"| model | method | epochs | lr | avg@{k} | levels {hard} | LEN | explained var. | σ | ρ(σ, grad) | clip | H_rl |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("base", *results["methods"]):
        entry = results["methods"].get(name) or results["base"]
        cell = s["cells"].get(name, {})
        method = cell.get("method", "")
        epochs = cell.get("train", {}).get("ppo_epochs", 1) if method else ""
        if cell.get("critic", {}).get("shards"):
            method += f" (shards {cell['critic']['shards']})"
        lr = entry["seeds"][0].get("lr") if cell else None

        def logged(key: str, digits: int = 2, entry: dict = entry) -> str:
            return _fmt(entry.get(f"{key}_mean"), entry.get(f"{key}_std"), 1.0, digits)

        rows.append(
            f"| {name} | {method} | {epochs} | {'' if lr is None else f'{lr:g}'} | "
            f"{_fmt(entry['accuracy_mean'], entry['accuracy_std'])} | "
            f"{_fmt(entry['hard_accuracy_mean'], entry['hard_accuracy_std'])} | "
            f"{_fmt(entry['length_mean'], entry['length_std'], 1.0, 0)} | "
            f"{logged('explained_variance')} | {logged('critic_std', 3)} | {logged('std_gradient_rho')} | "
            f"{logged('clip_fraction', 3)} | {logged('h_rl', 3)} |"
        )
    return "\n".join(rows)


def plot_critics(results: dict, out: Path) -> list[Path]:
    """``plots/critics.png``: test accuracy of each method at 1 and 4 epochs (mean ± std over seeds),
    and the critic cells' value explained variance over training (seed means)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = results["methods"]
    out.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [m for m in ("grpo", "ppo", "asyppo", "asyppo_no_masks") if m in methods or f"{m}_e4" in methods]
    for offset, (suffix, label) in enumerate((("", "1 epoch"), ("_e4", "4 epochs"))):
        xs = [i + 0.38 * offset for i, m in enumerate(names) if m + suffix in methods]
        entries = [methods[m + suffix] for m in names if m + suffix in methods]
        left.bar(
            xs,
            [100 * e["accuracy_mean"] for e in entries],
            width=0.36,
            yerr=[100 * (e["accuracy_std"] or 0) for e in entries],
            capsize=3,
            label=label,
        )
    left.set_xticks([i + 0.19 for i in range(len(names))], names)
    left.set_ylabel(f"test avg@{results['settings']['eval_k']} (%)")
    left.legend()
    for cell, entry in methods.items():
        if not cell.startswith(("ppo", "asyppo")):
            continue
        curves = [_curve(r["run_dir"], "value_explained_variance") for r in entry["seeds"]]
        length = min(map(len, curves)) if curves else 0
        mean = []
        for t in range(length):
            values = finite_values(c[t] for c in curves)
            mean.append(statistics.fmean(values) if values else float("nan"))
        right.plot(range(1, length + 1), mean, label=cell)
    right.axhline(0.0, color="k", linewidth=0.5)
    right.set_xlabel("step")
    right.set_ylabel("value explained variance (fresh rollouts)")
    right.set_ylim(-1, 1)
    right.legend(fontsize=8)
    fig.suptitle(f"Critics on the embedded default ({results['settings']['seeds']} seeds)")
    fig.tight_layout()
    path = out / "critics.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def format_critics_report(results: dict, verdicts: list[Verdict], plots: list[Path]) -> str:
    s = results["settings"]
    intro = (
        f"{s['seeds']} seeds, {s['steps']} optimizer steps per cell; learning rates (each method's, chosen on "
        f"validation at 1 epoch, `{s['lr_sweep']}`): " + ", ".join(f"{m} {v:g}" for m, v in s["lr"].items()) + ". "
        f"Test split, avg@{s['eval_k']} at temperature {s['eval_temperature']}; the critics' columns are means "
        f"over each run's last {s['tail']} steps."
    )
    return format_suite_report(
        "Critics (PPO, AsyPPO): the claims judged",
        intro,
        format_critics_table(results),
        verdicts,
        plots,
        "docs/critics.md",
    )
