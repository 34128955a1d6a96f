"""``redrl compare --suite conditioned``: BARD and RAVR, the methods that change what the policy is
conditioned on, beside SFT, GRPO and RED, with their claims judged over seeds.

Cells (each trained ``steps`` optimizer steps from the same base at its method's swept learning
rate, then evaluated on the test split on the question alone; the base is evaluated as it is):

================= ===========================================================================
``sft``           SFT on the teacher traces           ``red``        RED
``grpo``          GRPO, ``G`` rollouts per prompt     ``grpo_equal`` GRPO with ``G + G'`` rollouts
``bard``          budget SFT, then GRPO on R·f(L, b)  ``bard_rl``    phase 2 alone (no budget SFT)
``bard_additive`` budget SFT, then GRPO on R + w·f    ``ravr``       ``G`` posterior + ``G'`` prior paths
================= ===========================================================================

``grpo_equal`` is RAVR's equal-rollouts baseline: RAVR samples ``rollout.group_size`` paths from the
answer-conditioned prompt and ``ravr.prior_size`` from the question alone. Every BARD cell is also
evaluated at each budget of ``BUDGETS`` (the budget stated in the system message, ``eval.budget``):
its length, accuracy and share within the budget there. Layout of ``OUT`` as :mod:`redrl.compare`;
a BARD cell's run directory holds ``eval_budgetB.json`` beside its ``eval.json``.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from redrl.compare import (
    _eval_record,
    aggregate,
    cached_record,
    cell_values,
    compare_config,
    execute_all,
    jsonable,
    mean_std,
    method_learning_rates,
    run_cached,
    untrained_values,
    write_json,
)
from redrl.report import FAILS, HOLDS, INCONCLUSIVE, Comparison, Verdict, combine_seeds, format_suite_report
from redrl.stats import spearman

__all__ = ["BUDGETS", "CELLS", "judge_conditioned", "run_conditioned_suite"]

#: cell → (method, extra config values); ``grpo_equal``'s group size is set from the config
CELLS = {
    "sft": ("sft", {}),
    "grpo": ("grpo", {}),
    "grpo_equal": ("grpo", {}),
    "red": ("red", {}),
    "bard": ("bard", {}),
    "bard_rl": ("bard_rl", {}),
    "bard_additive": ("bard_additive", {}),
    "ravr": ("ravr", {}),
}
BARD_CELLS = ("bard", "bard_rl", "bard_additive")
#: the budgets every BARD cell is asked for at evaluation (response tokens)
BUDGETS = (16, 32, 64, 128)
#: the levels on which RAVR is judged: where the base rarely samples a right path
HARD_LEVELS = ("4", "5", "6")


def _hard_accuracy(record: dict) -> float | None:
    """Accuracy on ``HARD_LEVELS``, weighted by each level's problems."""
    levels = [record["by_level"][lv] for lv in HARD_LEVELS if lv in record.get("by_level", {})]
    n = sum(lv["n"] for lv in levels)
    return sum(lv["accuracy"] * lv["n"] for lv in levels) / n if n else None


def _leak_share(record: dict) -> float | None:
    """RAVR's leakage over its run: the mean share of posterior paths right with no operation line
    (``ravr_leak_rate``) over the mean share right (``online_accuracy``), i.e. the fraction of the
    posterior's right answers that copy the answer."""
    path = Path(record["run_dir"]) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    leak = [r["ravr_leak_rate"] for r in rows if r.get("ravr_leak_rate") is not None]
    right = [r["online_accuracy"] for r in rows if r.get("online_accuracy") is not None]
    if not leak or not right or statistics.fmean(right) == 0:
        return None
    return statistics.fmean(leak) / statistics.fmean(right)


def _with_budget(values: dict, budget: int) -> dict:
    """A cell's config values, evaluated with ``budget`` in the prompt (``eval.budget``)."""
    return {**values, "eval": {**values["eval"], "budget": budget}}


def execute_budget_eval(
    config: str, overrides: list[str], name: str, values: dict, budget: int, progress: bool = False
) -> tuple[dict, str]:
    """Evaluate cell ``name``'s trained model on the test split with ``budget`` in the prompt; write
    ``eval_budgetB.json`` in its run directory. Runs in a worker process like :func:`redrl.compare.execute_run`."""
    from redrl.data.offline import load_problems
    from redrl.evaluate import evaluate_model
    from redrl.paths import resolve_split

    cfg = compare_config(config, overrides, **_with_budget(values, budget))
    run = Path(cfg.train.out)
    started = time.perf_counter()
    result = evaluate_model(
        str(run / "final"), load_problems(resolve_split(cfg, "test")), cfg, seed=cfg.train.seed, progress=progress
    )
    record = _eval_record(
        result,
        cfg.train.seed,
        cfg.eval.k,
        run,
        jsonable(cfg.to_dict()),
        budget=budget,
        within_budget=result["within_budget"],
        budget_deviation=result["budget_deviation"],
    )
    write_json(run / f"eval_budget{budget}.json", record)
    return record, (
        f"  {name} seed {cfg.train.seed} at budget {budget}: test accuracy {100 * result['accuracy']:.1f}%  "
        f"LEN {result['length']:.0f}  within budget {100 * result['within_budget']:.0f}%  "
        f"({time.perf_counter() - started:.0f} s)"
    )


def run_conditioned_suite(
    config: str = "tiny",
    overrides: list[str] = (),
    *,
    cells: list[str] | None = None,
    seeds: int | None = None,
    steps: int | None = None,
    budgets: tuple[int, ...] = BUDGETS,
    out: str | Path = "runs/compare-conditioned",
    jobs: int | None = None,
    progress: bool = True,
) -> dict:
    """Train and evaluate every cell × seed (finished runs reused), evaluate the BARD cells at each
    budget, judge the claims; write ``results.json``, ``table.md``, ``plots/`` and ``report.md``."""
    started = time.perf_counter()
    out, overrides = Path(out), list(overrides)
    shared = compare_config(config, overrides)
    cells = list(cells or CELLS)
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        raise ValueError(f"unknown cell {unknown[0]!r}; choose from {', '.join(CELLS)}")
    if any(b > shared.eval.max_new_tokens for b in budgets):
        raise ValueError(
            f"a budget of {max(budgets)} tokens cannot be met with eval.max_new_tokens={shared.eval.max_new_tokens}"
        )
    seeds = seeds or shared.compare.seeds
    steps = steps or shared.compare.steps
    eval_k = shared.compare.eval_k
    equal_group = shared.rollout.group_size + shared.ravr.prior_size
    extras = {c: CELLS[c][1] for c in cells} | (
        {"grpo_equal": {"rollout": {"group_size": equal_group}}} if "grpo_equal" in cells else {}
    )
    lrs = method_learning_rates(config, overrides, {CELLS[c][0] for c in cells})

    def log(message: str) -> None:
        print(message, flush=True)

    log(
        f"redrl compare --suite conditioned: {len(cells)} cells x {seeds} seeds, {steps} steps each; learning rates "
        + ", ".join(f"{m} {v:g}" for m, v in lrs.items())
        + f"; test avg@{eval_k} at temperature {shared.eval.temperature}; BARD cells also at budgets "
        + ", ".join(map(str, budgets))
    )
    plan = {}
    for seed in range(seeds):
        plan["base", seed] = untrained_values("base", seed, eval_k, out)
        for cell in cells:
            plan[cell, seed] = cell_values(cell, CELLS[cell][0], extras[cell], seed, steps, eval_k, out, lrs)
    records: dict[tuple[str, int], dict] = {}
    run_cached(plan, config, overrides, records, jobs=jobs, progress=progress, log=log)

    budget_records: dict[tuple[str, int, int], dict] = {}
    tasks = []
    for cell in (c for c in cells if c in BARD_CELLS):
        for seed in range(seeds):
            for budget in budgets:
                values = plan[cell, seed]
                cfg = compare_config(config, overrides, **_with_budget(values, budget))
                saved = cached_record(Path(cfg.train.out) / f"eval_budget{budget}.json", jsonable(cfg.to_dict()))
                if saved is None:
                    tasks.append(((cell, seed, budget), (config, overrides, cell, values, budget)))
                else:
                    budget_records[cell, seed, budget] = saved
    for key, (record, _) in execute_all(tasks, execute_budget_eval, jobs=jobs, progress=progress, log=log):
        budget_records[key] = record

    for (cell, _), record in records.items():
        record["hard_accuracy"] = _hard_accuracy(record)
        if cell == "ravr":
            record["leak_share"] = _leak_share(record)
    results = {
        "suite": "conditioned",
        "methods": {c: aggregate([records[c, s] for s in range(seeds)]) for c in cells},
        "base": aggregate([records["base", s] for s in range(seeds)]),
        "budgets": {},
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
            "prior_size": shared.ravr.prior_size,
            "equal_group_size": equal_group,
            "budgets": list(budgets),
            "hard_levels": list(HARD_LEVELS),
            "cells": {c: {"method": CELLS[c][0], **extras[c]} for c in cells},
        },
    }
    for name, entry in (*results["methods"].items(), ("base", results["base"])):
        entry["hard_accuracy_mean"], entry["hard_accuracy_std"] = mean_std(r["hard_accuracy"] for r in entry["seeds"])
        entry[f"pass@{eval_k}_mean"], entry[f"pass@{eval_k}_std"] = mean_std(
            r.get(f"pass@{eval_k}") for r in entry["seeds"]
        )
        if name == "ravr":
            entry["leak_share_mean"], entry["leak_share_std"] = mean_std(r["leak_share"] for r in entry["seeds"])
    for cell in (c for c in cells if c in BARD_CELLS):
        results["budgets"][cell] = {}
        for budget in budgets:
            per_seed = [budget_records[cell, s, budget] for s in range(seeds)]
            entry = aggregate(per_seed)
            entry["within_budget_mean"], entry["within_budget_std"] = mean_std(r["within_budget"] for r in per_seed)
            results["budgets"][cell][str(budget)] = entry
    verdicts = judge_conditioned(results)
    results["verdicts"] = [{"claim": v.claim, "text": v.text, "verdict": v.verdict, "note": v.note} for v in verdicts]
    results["seconds"] = time.perf_counter() - started
    write_json(out / "results.json", results)
    tables = format_conditioned_tables(results)
    (out / "table.md").write_text(tables + "\n")
    plots = plot_budgets(results, out / "plots")
    (out / "report.md").write_text(format_conditioned_report(results, verdicts, plots))
    log("\n" + tables + "\n")
    for v in verdicts:
        log(f"{v.claim} {v.text}: {v.verdict}" + (f" ({v.note})" if v.note else ""))
    log(
        f"\n{results['seconds']:.0f} s. Wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'plots'}/, {out / 'report.md'}"
    )
    return results


def _budget_column(results: dict, cell: str, budget, key: str) -> list[float]:
    entry = results["budgets"].get(cell, {}).get(str(budget))
    return [] if entry is None else [r.get(key) for r in entry["seeds"]]


def _tracking(results: dict, cell: str) -> tuple[float | None, list[float], list[float]]:
    """Spearman ρ of the seed-mean length over the budgets, the lengths and the within-budget shares."""
    budgets = results["settings"]["budgets"]
    entries = [results["budgets"][cell][str(b)] for b in budgets]
    lengths = [e["length_mean"] for e in entries]
    return spearman([float(b) for b in budgets], lengths), lengths, [e["within_budget_mean"] for e in entries]


def judge_conditioned(results: dict) -> list[Verdict]:
    """The claims written in ``docs/conditioned.md`` before the runs, judged as the RED claims are
    (:mod:`redrl.report`: a comparison holds when the difference of seed means exceeds 2·se)."""
    k = results["settings"]["eval_k"]
    budgets = results["settings"]["budgets"]
    largest = budgets[-1] if budgets else None
    methods, verdicts = results["methods"], []

    def n_of(cell: str) -> int | None:
        return methods[cell]["seeds"][0].get("n") if cell in methods else None

    def column(cell: str, key: str) -> list[float]:
        return [r.get(key) for r in methods[cell]["seeds"]] if cell in methods else []

    def hard(cell: str) -> list[float]:
        return column(cell, "hard_accuracy")

    def hard_n(cell: str) -> int | None:
        levels = methods[cell]["seeds"][0]["by_level"] if cell in methods else {}
        return sum(levels[lv]["n"] for lv in HARD_LEVELS if lv in levels) or None

    bard = "bard" in results["budgets"]
    if bard:
        rho, lengths, within = _tracking(results, "bard")
        if lengths[-1] - lengths[0] < 10:
            verdict = FAILS
        elif rho is not None and rho >= 0.8 and all(w >= 0.5 for w in within):
            verdict = HOLDS
        else:
            verdict = INCONCLUSIVE
        verdicts.append(
            Verdict(
                "B1",
                "after bard, length follows the budget (ρ ≥ 0.8, within budget ≥ 50 % at each)",
                verdict,
                note=f"ρ {_num(rho)}; LEN "
                + ", ".join(f"{b}: {v:.0f}" for b, v in zip(budgets, lengths))
                + "; within "
                + ", ".join(f"{b}: {100 * w:.0f}%" for b, w in zip(budgets, within)),
            )
        )
        if "sft" in methods:
            c = Comparison(
                f"avg@{k}: bard at budget {largest} vs sft (no budget)",
                _budget_column(results, "bard", largest, "accuracy"),
                column("sft", "accuracy"),
                n_of("sft"),
            )
            d, se = c.stats()
            verdict = INCONCLUSIVE if d is None or se is None else (FAILS if d < -2 * se else HOLDS)
            verdicts.append(
                Verdict("B1b", f"bard's avg@{k} at the largest budget is within 2·se of SFT's", verdict, [c])
            )
    if bard and "bard_rl" in results["budgets"]:
        c = Comparison(
            f"avg@{k} at budget {largest}: bard > bard_rl",
            _budget_column(results, "bard", largest, "accuracy"),
            _budget_column(results, "bard_rl", largest, "accuracy"),
            n_of("bard"),
        )
        rho_rl, _, _ = _tracking(results, "bard_rl")
        tracks = rho_rl is not None and rho_rl >= 0.8
        verdict = combine_seeds([c])
        if verdict == HOLDS and tracks:
            verdict = INCONCLUSIVE  # more accurate, but RL alone follows the budget too
        elif verdict != HOLDS and tracks:
            verdict = FAILS  # bard_rl matches bard on both
        verdicts.append(
            Verdict(
                "B2",
                "both phases are needed: bard beats bard_rl at the largest budget, and bard_rl's length "
                "does not follow the budget (ρ < 0.8)",
                verdict,
                [c],
                note=f"bard_rl ρ {_num(rho_rl)}",
            )
        )
    if bard and "bard_additive" in results["budgets"]:
        comparisons = [
            Comparison(
                f"avg@{k} at budget {b}: bard > bard_additive",
                _budget_column(results, "bard", b, "accuracy"),
                _budget_column(results, "bard_additive", b, "accuracy"),
                n_of("bard"),
            )
            for b in budgets
        ]
        not_ahead = sum(c.verdict() != HOLDS for c in comparisons)  # falsified at two or more budgets
        verdict = HOLDS if not_ahead == 0 else (FAILS if not_ahead >= 2 else INCONCLUSIVE)
        verdicts.append(
            Verdict("B3", "multiplicative over additive: bard is more accurate at every budget", verdict, comparisons)
        )
    hard_levels = "–".join((HARD_LEVELS[0], HARD_LEVELS[-1]))
    for claim, other in (("R1", "grpo_equal"), ("R2", "red")):
        if "ravr" in methods and other in methods:
            c = Comparison(f"avg@{k}, levels {hard_levels}: ravr > {other}", hard("ravr"), hard(other), hard_n("ravr"))
            verdicts.append(
                Verdict(claim, f"RAVR is more accurate than {other} on levels {hard_levels}", combine_seeds([c]), [c])
            )
    if "ravr" in methods:
        shares = [v for v in column("ravr", "leak_share") if v is not None]
        mean = statistics.fmean(shares) if shares else None
        verdict = INCONCLUSIVE if mean is None else (HOLDS if mean > 0.5 else FAILS)
        verdicts.append(
            Verdict(
                "R3",
                "most of the posterior's right answers copy the answer (leak / online accuracy > 0.5)",
                verdict,
                note="per seed " + ", ".join(f"{v:.2f}" for v in shares),
            )
        )
    return verdicts


def _num(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt(mean, std, scale: float = 100.0, digits: int = 1) -> str:
    if mean is None:
        return ""
    return f"{scale * mean:.{digits}f}" + ("" if std is None else f" ± {scale * std:.{digits}f}")


def format_conditioned_tables(results: dict) -> str:
    """The cells' table (accuracy, levels 4–6, LEN, pass@k) and BARD's length-vs-budget table."""
    s = results["settings"]
    k = s["eval_k"]
    rows = [
        f"| model | method | G | lr | avg@{k} | levels {s['hard_levels'][0]}–{s['hard_levels'][-1]} | pass@{k} | LEN |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("base", *results["methods"]):
        entry = results["methods"].get(name) or results["base"]
        cell = s["cells"].get(name, {})
        method = cell.get("method", "")
        group = cell.get("rollout", {}).get("group_size", s["group_size"]) if method else ""
        if method == "ravr":
            group = f"{s['group_size']} + {s['prior_size']}"
        lr = entry["seeds"][0].get("lr") if method else None
        rows.append(
            f"| {name} | {method} | {group} | {'' if lr is None else f'{lr:g}'} | "
            f"{_fmt(entry['accuracy_mean'], entry['accuracy_std'])} | "
            f"{_fmt(entry['hard_accuracy_mean'], entry['hard_accuracy_std'])} | "
            f"{_fmt(entry.get(f'pass@{k}_mean'), entry.get(f'pass@{k}_std'))} | "
            f"{_fmt(entry['length_mean'], entry['length_std'], 1.0, 0)} |"
        )
    if not results["budgets"]:
        return "\n".join(rows)
    budgets = s["budgets"]
    rows += [
        "",
        "Asked for a budget (LEN / within budget / avg@" + str(k) + ", seed means):",
        "",
        "| model | " + " | ".join(f"b = {b}" for b in budgets) + " | ρ(LEN, b) |",
        "|---|" + "---|" * len(budgets) + "---|",
    ]
    for cell, per_budget in results["budgets"].items():
        rho, _, _ = _tracking(results, cell)
        cols = [
            f"{e['length_mean']:.0f} / {100 * e['within_budget_mean']:.0f}% / {100 * e['accuracy_mean']:.1f}"
            for e in (per_budget[str(b)] for b in budgets)
        ]
        rows.append(f"| {cell} | " + " | ".join(cols) + f" | {_num(rho)} |")
    return "\n".join(rows)


def plot_budgets(results: dict, out: Path) -> list[Path]:
    """``plots/length_vs_budget.png``: each BARD cell's test length (mean ± std over seeds) against
    the budget asked for, beside the line L = b, and its share within the budget."""
    if not results["budgets"]:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = results["settings"]["budgets"]
    out.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for cell, per_budget in results["budgets"].items():
        entries = [per_budget[str(b)] for b in budgets]
        left.errorbar(
            budgets,
            [e["length_mean"] for e in entries],
            yerr=[e["length_std"] or 0 for e in entries],
            marker="o",
            capsize=3,
            label=cell,
        )
        right.errorbar(
            budgets,
            [100 * e["within_budget_mean"] for e in entries],
            yerr=[100 * (e["within_budget_std"] or 0) for e in entries],
            marker="o",
            capsize=3,
            label=cell,
        )
    left.plot(budgets, budgets, "k--", linewidth=1, label="L = b")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("budget asked for (tokens)")
        ax.legend()
    left.set_ylabel("test response length (tokens)")
    right.set_ylabel("answers within the budget (%)")
    right.set_ylim(0, 100)
    fig.suptitle(f"Length against the budget ({results['settings']['seeds']} seeds, test split)")
    fig.tight_layout()
    path = out / "length_vs_budget.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def format_conditioned_report(results: dict, verdicts: list[Verdict], plots: list[Path]) -> str:
    s = results["settings"]
    intro = (
        f"{s['seeds']} seeds, {s['steps']} optimizer steps per cell; learning rates (each method's, chosen on "
        f"validation, `{s['lr_sweep']}`): " + ", ".join(f"{m} {v:g}" for m, v in s["lr"].items()) + ". "
        f"`grpo_equal` samples G = {s['equal_group_size']} per prompt, RAVR's {s['group_size']} posterior + "
        f"{s['prior_size']} prior paths. Test split, avg@{s['eval_k']} at temperature {s['eval_temperature']}, "
        "on the question alone unless a budget is named."
    )
    return format_suite_report(
        "Methods that condition on the budget or the answer: the claims judged",
        intro,
        format_conditioned_tables(results),
        verdicts,
        plots,
        "docs/conditioned.md",
    )
