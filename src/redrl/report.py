"""The comparison's outputs: the Table 2 analogue, plots, the paper's claims judged, token colouring.

Everything here reads ``results.json`` (see :mod:`redrl.compare`) or per-step ``metrics.jsonl``
files; nothing trains or samples, so a report can be rebuilt from saved results. ``diff_probs``
(``redrl diff-probs``) runs one forward pass of two models over a trace.

**How a claim is judged.** A claim is a conjunction of comparisons "``a`` is larger than ``b``"
of per-seed quantities. For one comparison, ``d = mean(a) − mean(b)`` and
``se = sqrt(var(a)/n_a + var(b)/n_b)`` (sample variances over seeds). For an accuracy with a
single seed, the spread is taken from the test set instead: ``var = p(1−p)/n_problems``. The
comparison *holds* when ``d > 2·se`` (and ``d > 0``), *does not hold* when ``d ≤ −2·se``, and is
*inconclusive* in between or when no spread can be estimated. A claim holds when all its
comparisons hold, does not hold when any of them does not, and is inconclusive otherwise.
"""

from __future__ import annotations

import html
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from redrl.methods import METHODS

__all__ = [
    "Comparison",
    "Verdict",
    "diff_probs",
    "format_results_table",
    "format_verdicts",
    "judge_claims",
    "plot_curves",
    "token_change_html",
    "write_outputs",
]

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"

#: Display names in the paper's Table 2 order.
NAMES = {
    "sft": "SFT",
    "grpo": "GRPO",
    "sft_grpo": "SFT→GRPO",
    "mixpolicy": "MixPolicy (π_off=1)",
    "onpolicy_offline": "on-policy offline (π_off=π)",
    "luffy": "LUFFY",
    "srft": "SRFT",
    "relift": "ReLIFT",
    "bread": "BREAD",
    "red_entropy": "RED-(I)",
    "red_shift": "RED-(II)",
    "red": "RED",
}


def finite_values(values) -> list[float]:
    """The finite numbers among ``values`` (``None``, NaN, booleans and strings left out)."""
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


@dataclass
class Comparison:
    """``a > b`` (or ``a < b`` with ``lower``) for two lists of per-seed values; ``what`` says it in words."""

    what: str
    a: list[float]
    b: list[float]
    binomial_n: int | None = None  # accuracies: test-set size, for the spread of a single seed
    lower: bool = False

    def stats(self) -> tuple[float | None, float | None]:
        a, b = finite_values(self.a), finite_values(self.b)
        if not a or not b:
            return None, None
        d = statistics.fmean(a) - statistics.fmean(b)
        d = -d if self.lower else d  # the claimed direction is positive
        variances = []
        for values in (a, b):
            if len(values) > 1:
                variances.append(statistics.variance(values) / len(values))
            elif self.binomial_n:
                p = min(max(values[0], 0.0), 1.0)
                variances.append(p * (1 - p) / self.binomial_n)
            else:
                return d, None
        return d, math.sqrt(sum(variances))

    def verdict(self) -> str:
        d, se = self.stats()
        if d is None or se is None:
            return INCONCLUSIVE
        if d > 2 * se and d > 0:
            return HOLDS
        if d <= -2 * se:
            return FAILS
        return INCONCLUSIVE

    def describe(self) -> str:
        a, b = finite_values(self.a), finite_values(self.b)
        d, se = self.stats()
        if d is None:
            return f"{self.what}: no data"
        spread = "no spread (one seed)" if se is None else f"2·se {2 * se:.3g}"
        return (
            f"{self.what}: {statistics.fmean(a):.3g} vs {statistics.fmean(b):.3g} "
            f"(margin in the claimed direction {d:+.3g}, {spread}; n = {len(a)}, {len(b)}) → {self.verdict()}"
        )


@dataclass
class Verdict:
    claim: str
    text: str
    verdict: str
    comparisons: list[Comparison] = field(default_factory=list)
    note: str = ""


def combine_seeds(comparisons: list[Comparison]) -> str:
    verdicts = [c.verdict() for c in comparisons]
    if not verdicts:
        return INCONCLUSIVE
    if FAILS in verdicts:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE


def _seeds(results: dict, method: str, key: str) -> list[float]:
    entry = results["methods"].get(method)
    return [] if entry is None else [s.get(key) for s in entry["seeds"]]


def _dyn(results: dict, method: str, key: str) -> list[float]:
    entry = results["methods"].get(method)
    return [] if entry is None else [(s.get("dynamics") or {}).get(key) for s in entry["seeds"]]


def judge_claims(results: dict) -> list[Verdict]:
    """The paper's claims C1–C8 judged on ``results`` (the ``results.json`` of ``redrl compare``).

    Methods or phases missing from the results make the comparisons that need them inconclusive.
    """
    n = (results.get("settings") or {}).get("test_problems")
    have = results["methods"]

    def acc(a: str, b: str) -> Comparison:
        return Comparison(
            f"accuracy {NAMES.get(a, a)} > {NAMES.get(b, b)}",
            _seeds(results, a, "accuracy"),
            _seeds(results, b, "accuracy"),
            binomial_n=n,
        )

    def length(a: str, b: str) -> Comparison:
        return Comparison(
            f"LEN {NAMES.get(a, a)} > {NAMES.get(b, b)}", _seeds(results, a, "length"), _seeds(results, b, "length")
        )

    def dyn(key: str, a: str, b: str, words: str, lower: bool = False) -> Comparison:
        return Comparison(words, _dyn(results, a, key), _dyn(results, b, key), lower=lower)

    verdicts = []

    def add(claim: str, text: str, comparisons: list[Comparison], note: str = "") -> None:
        verdicts.append(Verdict(claim, text, combine_seeds(comparisons), comparisons, note))

    add(
        "C1",
        "SFT is more accurate than GRPO, with much longer responses.",
        [acc("sft", "grpo"), length("sft", "grpo")],
        "LEN of SFT / GRPO: " + _ratio(have, "sft", "grpo", "length_mean"),
    )
    add("C2", "SFT→GRPO beats both SFT and GRPO.", [acc("sft_grpo", "sft"), acc("sft_grpo", "grpo")])
    add(
        "C3",
        "Unified methods (LUFFY, SRFT, RED) beat staged ones (ReLIFT, BREAD).",
        [acc(u, s) for u in ("luffy", "srft", "red") for s in ("relift", "bread")],
    )
    others = [m for m in have if m != "red"] or ["sft"]
    add(
        "C4",
        "RED is the most accurate, with shorter responses than SFT.",
        [acc("red", m) for m in others]
        + [Comparison("LEN RED < SFT", _seeds(results, "red", "length"), _seeds(results, "sft", "length"), lower=True)],
    )
    add(
        "C5",
        "π_off = 1 (MixPolicy) collapses entropy; π_off = π collapses accuracy mid-training.",
        [
            dyn("h_rl_late", "mixpolicy", "red", "late H_rl MixPolicy < RED", lower=True),
            dyn("accuracy_drawdown", "onpolicy_offline", "red", "rollout-accuracy drawdown on-policy offline > RED"),
        ],
        "drawdown: the largest fall of the 5-step moving average of the rollouts' accuracy below its running peak",
    )
    add(
        "C6",
        "With the policy shift, H_rl and H_sft stay higher and close; the regulator steadies their ratio.",
        [
            dyn("h_rl_late", "red", "red_entropy", "late H_rl RED > RED-(I) (no shift)"),
            dyn("h_sft_late", "red", "red_entropy", "late H_sft RED > RED-(I) (no shift)"),
            dyn("log_gap_late", "red", "red_entropy", "late |log(H_sft/H_rl)| RED < RED-(I)", lower=True),
            dyn("ratio_cv", "red", "red_shift", "CV of H_sft/H_rl RED < RED-(II) (w = 1)", lower=True),
        ],
    )
    phases = results.get("entropy_phases") or {}

    def phase(name: str, key: str) -> list[float]:
        return [row.get(key) for row in (phases.get(name) or {}).get("seeds", [])]

    def relative_drop(name: str, key: str) -> list[float]:
        return [
            (b - p) / b
            for b, p in zip(phase("base", key), phase(name, key))
            if finite_values([b, p]) == [b, p] and b > 0
        ]

    add(
        "C7",
        "RL lowers RL entropy but not SFT entropy; SFT lowers both.",
        [
            Comparison("H_rl base > after RL", phase("base", "h_rl"), phase("rl", "h_rl")),
            Comparison(
                "relative drop under RL: H_rl's > H_sft's", relative_drop("rl", "h_rl"), relative_drop("rl", "h_sft")
            ),
            Comparison("H_rl base > after SFT", phase("base", "h_rl"), phase("sft", "h_rl")),
            Comparison("H_sft base > after SFT", phase("base", "h_sft"), phase("sft", "h_sft")),
        ],
        "from the entropy-across-phases table; 'not SFT entropy' is judged as: RL lowers H_rl by a larger fraction than H_sft",
    )
    add("C8", "Each ablation falls below full RED.", [acc("red", "red_entropy"), acc("red", "red_shift")])
    return verdicts


def _ratio(methods: dict, a: str, b: str, key: str) -> str:
    try:
        return f"{methods[a][key] / methods[b][key]:.2f}"
    except (KeyError, TypeError, ZeroDivisionError):
        return "n/a"


def _levels(results: dict) -> list[str]:
    levels = []
    for entry in list(results["methods"].values()) + [results.get("base") or {"by_level": {}}]:
        levels += [level for level in entry.get("by_level", {}) if level not in levels]
    return sorted(levels, key=lambda x: (0, int(x)) if x.lstrip("-").isdigit() else (1, x))


def _cell(mean, std, scale: float, digits: int) -> str:
    if mean is None:
        return "-"
    text = f"{scale * mean:.{digits}f}"
    return text + (f" ± {scale * std:.{digits}f}" if std is not None else "")


def format_results_table(results: dict) -> str:
    """Markdown: accuracy (%) per level and overall, mean ± std over seeds, and LEN; in each
    accuracy column the best method is **bold** and the second best _underlined_ (base excluded)."""
    levels = _levels(results)
    columns = [(f"L{level}", lambda e, level=level: e.get("by_level", {}).get(level, {})) for level in levels]
    columns.append(("overall", lambda e: e))
    rows = list(results["methods"].items())
    ranks = []
    for _, get in columns:
        means = sorted(
            {get(e).get("accuracy_mean") for _, e in rows if get(e).get("accuracy_mean") is not None}, reverse=True
        )
        ranks.append(means[:2])

    def sampled(entry: dict) -> list[float]:  # prompts sampled per step (dynamic sampling, tail batching)
        return finite_values((seed.get("dynamics") or {}).get("prompts_sampled_per_step") for seed in entry["seeds"])

    spent = any(sampled(e) for _, e in rows)
    header = ["method"] + [name for name, _ in columns] + ["LEN"] + (["prompts sampled / step"] if spent else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table_rows = ([("base", results["base"])] if results.get("base") else []) + rows
    for name, entry in table_rows:
        cells = [NAMES.get(name, name)]
        for (_, get), top in zip(columns, ranks):
            values = get(entry)
            text = _cell(values.get("accuracy_mean"), values.get("accuracy_std"), 100, 1)
            if name != "base" and values.get("accuracy_mean") is not None and top:
                if values["accuracy_mean"] == top[0]:
                    text = f"**{text}**"
                elif len(top) > 1 and values["accuracy_mean"] == top[1]:
                    text = f"_{text}_"
            cells.append(text)
        cells.append(_cell(entry.get("length_mean"), entry.get("length_std"), 1, 0))
        if spent:
            values = sampled(entry) if name != "base" else []
            cells.append(f"{statistics.fmean(values):.1f}" if values else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_phases_table(phases: dict) -> str:
    """The paper's Table 1: mean token entropy of rollouts (H_rl) and teacher traces (H_sft) per phase."""
    labels = {"base": "base", "rl": "RL (GRPO)", "sft": "SFT", "rl_after_sft": "SFT → RL", "sft_after_rl": "RL → SFT"}
    lines = ["| phase | H_rl | H_sft |", "|---|---|---|"]
    for phase, label in labels.items():
        seeds = (phases.get(phase) or {}).get("seeds") or []
        if seeds:
            cells = []
            for key in ("h_rl", "h_sft"):
                values = finite_values(row.get(key) for row in seeds)
                cells.append(
                    _cell(
                        statistics.fmean(values) if values else None,
                        statistics.stdev(values) if len(values) > 1 else None,
                        1,
                        3,
                    )
                )
            lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


#: The per-step curves plotted: metrics.jsonl key → (file name, axis label).
CURVES = {
    "h_rl": ("h_rl", "H_rl (mean token entropy of rollouts)"),
    "h_sft": ("h_sft", "H_sft (mean token entropy of teacher traces)"),
    "w": ("w", "w (entropy regulator weight)"),
    "online_accuracy": ("accuracy", "rollout accuracy (training prompts)"),
    "online_length": ("length", "rollout length (tokens)"),
    "eval_accuracy": ("validation", "validation accuracy (avg@k every compare.eval_every steps)"),
}
#: Curves drawn only when some run logged them.
OPTIONAL_CURVES = {"eval_accuracy"}


def plot_curves(
    results: dict,
    out: Path,
    *,
    curves: dict | None = None,
    optional: set | frozenset = frozenset(OPTIONAL_CURVES),
    dpi: int = 110,
    size: tuple[float, float] = (7.5, 4.2),
) -> list[Path]:
    """One PNG per curve (``curves``: metric → (file stem, axis label); default :data:`CURVES`): the
    mean over seeds of each method per step, min–max over seeds shaded; methods without the quantity
    (e.g. SFT has no rollouts) are left out of that plot, and an ``optional`` curve nobody logged is not drawn."""
    curves = CURVES if curves is None else curves
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name, entry in results["methods"].items():
        runs[name] = []
        for seed in entry["seeds"]:
            path = Path(seed.get("run_dir", "")) / "metrics.jsonl"
            if path.exists():
                runs[name].append([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    written = []
    colors = plt.get_cmap("tab20")
    for key, (stem, label) in curves.items():
        fig, ax = plt.subplots(figsize=size)
        drawn = 0
        for index, (name, seed_runs) in enumerate(runs.items()):
            if key == "w" and not getattr(METHODS.get(name), "regulator", True):
                continue  # w = 1 by definition: only the regulated methods are worth a line
            steps = sorted({r["step"] for run in seed_runs for r in run})
            xs, mean, low, high = [], [], [], []
            for step in steps:
                values = finite_values(r.get(key) for run in seed_runs for r in run if r["step"] == step)
                if values:
                    xs.append(step)
                    mean.append(statistics.fmean(values))
                    low.append(min(values))
                    high.append(max(values))
            if not xs:
                continue
            color = "black" if name == "red" else colors(index % 20)
            style = "-" if name.startswith("red") else "--"
            ax.plot(xs, mean, style, color=color, label=NAMES.get(name, name), linewidth=2.0 if name == "red" else 1.2)
            ax.fill_between(xs, low, high, color=color, alpha=0.12, linewidth=0)
            drawn += 1
        if not drawn and key in optional:
            plt.close(fig)
            continue
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7, ncol=2, loc="best")
        fig.tight_layout()
        path = out / f"{stem}.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        written.append(path)
    return written


def _learning_rates(settings: dict) -> str:
    lr = settings.get("lr")
    if not isinstance(lr, dict):
        return f"lr {lr}"
    source = f" (chosen on validation: `{settings['lr_sweep']}`)" if settings.get("lr_sweep") else ""
    return (
        "learning rates " + ", ".join(f"{name} {value:.3g}" for name, value in lr.items() if value is not None) + source
    )


def format_suite_report(
    title: str, intro: str, tables: str, verdicts: list[Verdict], plots: list[Path], claims_doc: str
) -> str:
    """A cell suite's ``report.md``: its title, one paragraph on the settings, its tables, the claims
    (written in ``claims_doc`` before the runs) with their verdicts, and its plots."""
    lines = [
        f"# {title}",
        "",
        intro,
        "",
        tables,
        "",
        f"## Claims (written in {claims_doc} before the runs)",
        "",
        "| claim | verdict |",
        "|---|---|",
        *format_verdicts(verdicts),
        "",
        *[f"![{p.stem}](plots/{p.name})" for p in plots],
        "",
    ]
    return "\n".join(lines)


def format_verdicts(verdicts: list[Verdict]) -> list[str]:
    """Report lines: a table row per claim and its verdict, then each claim with its comparisons."""
    lines = [f"| {v.claim} {v.text} | **{v.verdict}** |" for v in verdicts] + [""]
    for v in verdicts:
        lines.append(f"**{v.claim}** {v.text} — **{v.verdict}**")
        lines += [f"- {c.describe()}" for c in v.comparisons]
        if v.note:
            lines.append(f"- note: {v.note}")
        lines.append("")
    return lines


def format_report(results: dict, verdicts: list[Verdict], plots: list[Path]) -> str:
    settings = results.get("settings", {})
    lines = [
        "# redrl compare: report",
        "",
        f"{len(results['methods'])} methods × {settings.get('seeds')} seeds, {settings.get('steps')} optimizer steps each "
        f"(G = {settings.get('group_size')}, {settings.get('prompts_per_step')} prompts per step; {_learning_rates(settings)}); "
        f"config `{settings.get('config')}`{''.join(f' `{o}`' for o in settings.get('overrides') or [])}. "
        f"Test: {settings.get('test_problems')} problems, avg@{settings.get('eval_k')} at temperature "
        f"{settings.get('eval_temperature')}. Wall time of the last invocation: {results.get('seconds', 0):.0f} s.",
        "",
        "## Accuracy (%) and LEN, mean ± std over seeds",
        "",
        format_results_table(results),
        "",
        "Best per accuracy column in **bold**, second _underlined_. Accuracy is avg@k over the test problems; "
        "LEN is the mean number of response tokens.",
        "",
        *_scale_note(results),
        "## The paper's claims at this scale",
        "",
        "Judgement rule: a comparison holds when the difference of the seed means exceeds twice its standard error "
        "(seed spread; for a single seed's accuracy, the binomial spread of the test set), does not hold when it is "
        "at least that far the other way, and is inconclusive in between. A claim holds when all its comparisons hold.",
        "",
        "| claim | verdict |",
        "|---|---|",
    ]
    lines += format_verdicts(verdicts)
    if results.get("entropy_phases"):
        lines += [
            "## Entropy across phases (the paper's Table 1)",
            "",
            "Mean token entropy of rollouts of the same training prompts (H_rl) and of their teacher traces (H_sft), "
            "mean ± std over seeds; each phase trains as many steps as a comparison run.",
            "",
            format_phases_table(results["entropy_phases"]),
            "",
        ]
    if plots:
        lines += ["## Dynamics", "", "Mean over seeds per step; the shaded band is the min–max over seeds.", ""]
        lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
        lines.append("")
    return "\n".join(lines)


def _scale_note(results: dict) -> list[str]:
    """A warning, computed from the numbers, when no method got above the base it started from."""
    base = (results.get("base") or {}).get("accuracy_mean")
    means = {
        name: e.get("accuracy_mean") for name, e in results["methods"].items() if e.get("accuracy_mean") is not None
    }
    if base is None or not means or max(means.values()) >= base:
        return []
    best = max(means, key=means.get)
    return [
        f"**Every method ends below the base** ({100 * base:.1f}%; best: {NAMES.get(best, best)} at "
        f"{100 * means[best]:.1f}%). At this budget the runs measure how much each method disturbs the base, "
        "not how far it extends it; read the verdicts below with that in mind.",
        "",
    ]


def write_outputs(results: dict, out: Path) -> dict[str, Path]:
    """``table.md``, ``plots/*.png`` and ``report.md`` from ``results`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "table.md"
    table.write_text(format_results_table(results) + "\n")
    plots = plot_curves(results, out / "plots")
    report = out / "report.md"
    report.write_text(format_report(results, judge_claims(results), plots))
    return {"table": table, "report": report, "plots": out / "plots"}


def token_change_html(tokens: list[str], p_a: list[float], p_b: list[float], *, title: str = "") -> str:
    """An HTML page with each token coloured by its probability change from model A to model B:
    red where B gives it more probability, blue where less, the shade proportional to ``|Δp|``
    (the paper's Figure 5). Hovering a token shows ``p_A → p_B``."""
    if not len(tokens) == len(p_a) == len(p_b):
        raise ValueError(f"{len(tokens)} tokens but {len(p_a)} and {len(p_b)} probabilities")
    spans = []
    for token, a, b in zip(tokens, p_a, p_b):
        delta = b - a
        alpha = min(1.0, abs(delta))
        color = f"rgba(220,40,40,{alpha:.3f})" if delta > 0 else f"rgba(40,90,220,{alpha:.3f})"
        text = html.escape(token).replace("\n", "↵<br>")
        spans.append(f'<span style="background:{color}" title="p {a:.3f} → {b:.3f} (Δ {delta:+.3f})">{text}</span>')
    mean = statistics.fmean([b - a for a, b in zip(p_a, p_b)]) if tokens else 0.0
    return (
        "<!doctype html><meta charset='utf-8'>"
        f"<title>{html.escape(title or 'token probability change')}</title>"
        "<body style='font-family:monospace;max-width:60em;line-height:1.7'>"
        f"<h3>{html.escape(title)}</h3>"
        f"<p>red: probability went up from A to B; blue: went down; shade ∝ |Δp|. {len(tokens)} tokens, mean Δp {mean:+.4f}.</p>"
        f"<div style='white-space:pre-wrap'>{''.join(spans)}</div></body>"
    )


def diff_probs(
    model_a: str, model_b: str, text: str, *, problem: str | None = None, system_prompt: str | None = None
) -> str:
    """The HTML of :func:`token_change_html` for ``text`` read as a response by two models.

    With ``problem``, the text is scored as the answer to that chat-formatted problem (as in
    training); without it, as a response to an empty prompt. Both models must share a tokenizer.
    """
    import torch

    from redrl.batch import collate
    from redrl.modeling import encode_prompt, encode_response, load_model_and_tokenizer, response_logprobs

    probabilities, responses = [], []
    for path in (model_a, model_b):
        model, tokenizer = load_model_and_tokenizer(path)
        model.eval()
        prompt = encode_prompt(tokenizer, problem, system_prompt) if problem is not None else [tokenizer.eos_token_id]
        response = encode_response(tokenizer, text)[:-1]  # the text as written, no end-of-sequence token
        if not response:
            raise ValueError("the text to score is empty")
        if responses and response != responses[0]:
            raise ValueError(f"{model_a} and {model_b} tokenize the text differently; diff-probs needs one tokenizer")
        responses.append(response)
        ids, attention, mask = collate([prompt], [response], tokenizer.pad_token_id)
        with torch.no_grad():
            logp, _ = response_logprobs(model, ids, attention, mask[:, 1:])
        probabilities.append(logp.cpu()[mask[:, 1:]].exp().tolist())
    pieces = [tokenizer.decode([t]) for t in responses[0]]
    return token_change_html(pieces, probabilities[0], probabilities[1], title=f"A = {model_a}   B = {model_b}")
