"""Evaluation: avg@k, pass@k (unbiased estimator), response length, accuracy per level; tables.

Protocol (the paper's): sample ``k`` answers per problem at a temperature (0.6 for the paper's
avg@32), grade each with the same grader the training reward uses, and report

* ``accuracy`` = avg@k: the mean over problems of the fraction of correct samples
  (with ``k = 1`` this is pass@1);
* ``pass@k``: the unbiased estimator of Chen et al. (2021, arXiv 2107.03374),
  ``1 - C(n - c, k) / C(n, k)`` for ``c`` correct of ``n`` samples;
* ``length``: the mean number of response tokens over all samples (the paper's LEN).

Ungradable problems (reference answer the grader cannot read) are left out and counted. An
answer whose grading raises or overruns its timeout counts as wrong (``grading_failures``).
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict

__all__ = [
    "eval_settings",
    "evaluate",
    "evaluate_benchmarks",
    "evaluate_model",
    "format_benchmark_table",
    "format_table",
    "pass_at_k",
    "summarize",
]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``c`` correct of ``n`` samples: ``1 - C(n-c, k) / C(n, k)``."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = Π_{i=n-c+1}^{n} (1 - k / i), a product of numbers in (0, 1]: no overflow.
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def summarize(problems: list[dict], rewards: list[list[float | None]], lengths: list[list[int]], k: int) -> dict:
    """Aggregate per-sample rewards into ``{"accuracy", "pass@k", "length", "n", "ungradable", "by_level"}``.

    ``rewards[i]`` and ``lengths[i]`` hold the ``k`` samples of ``problems[i]``; ``by_level`` groups
    problems by their ``level`` field (absent: no per-level rows).
    """

    def aggregate(indices: list[int]) -> dict:
        gradable = [i for i in indices if all(r is not None for r in rewards[i])]
        if not gradable:
            return {"accuracy": math.nan, f"pass@{k}": math.nan, "length": math.nan, "n": 0, "ungradable": len(indices)}
        correct = [sum(rewards[i]) for i in gradable]
        return {
            "accuracy": sum(c / k for c in correct) / len(gradable),
            f"pass@{k}": sum(pass_at_k(k, int(c), k) for c in correct) / len(gradable),
            "length": sum(sum(lengths[i]) for i in gradable) / (k * len(gradable)),
            "n": len(gradable),
            "ungradable": len(indices) - len(gradable),
        }

    result = aggregate(list(range(len(problems))))
    levels = defaultdict(list)
    for i, problem in enumerate(problems):
        if "level" in problem:
            levels[str(problem["level"])].append(i)
    result["by_level"] = {level: aggregate(levels[level]) for level in sorted(levels, key=_level_key)}
    return result


def _level_key(level: str):
    return (0, int(level)) if level.lstrip("-").isdigit() else (1, level)


def evaluate(
    model,
    tokenizer,
    problems: list[dict],
    *,
    k: int = 4,
    temperature: float = 0.6,
    max_new_tokens: int = 160,
    grader: str = "integer",
    system_prompt: str | None = None,
    prompt_format: dict | None = None,
    batch_size: int = 256,
    mixed_precision: str = "no",
    engine: str = "hf",
    progress: bool = False,
    samples: list | None = None,
    budget: int | None = None,
    budget_template: str = "{budget}",
) -> dict:
    """Sample ``k`` answers to each problem, grade them, and :func:`summarize`.

    ``engine`` is ``hf`` or ``fast`` (:func:`redrl.rollout.make_generator`). ``prompt_format``
    holds :func:`redrl.modeling.encode_prompt`'s formatting arguments
    (:meth:`redrl.config.DataConfig.prompt_kwargs`), so problems are asked as in training.
    With a list as ``samples``, every sampled completion is appended to it as
    ``{"index", "problem", "answer", "sample", "completion", "reward", "length"}``. With a thinking
    ``budget`` the system message states it (``budget_template``, as BARD's training prompts do) and
    the result adds ``within_budget`` (the share of answers of at most ``budget`` tokens, the
    end-of-sequence token not counted) and ``budget_deviation`` (their mean ``|L - b| / b``)."""
    from redrl.modeling import encode_prompt
    from redrl.rewards import grade_checked
    from redrl.rollout import make_generator

    if budget is not None:
        from redrl.conditioning import BUDGET_ADVICE, check_writable
        from redrl.data.budget import budget_text, response_length, with_budget

        check_writable(tokenizer, budget_text(budget, budget_template), "bard.budget_template", BUDGET_ADVICE)
        system_prompt = with_budget(system_prompt, budget, budget_template)
    prompts = [encode_prompt(tokenizer, p["problem"], system_prompt, **(prompt_format or {})) for p in problems]
    generator = make_generator(
        engine,
        model,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        batch_size=batch_size,
        mixed_precision=mixed_precision,
    )
    responses = []
    step = max(1, batch_size // k)
    iterator = range(0, len(prompts), step)
    if progress and sys.stderr.isatty():  # a bar on a terminal only: elsewhere it would be carriage returns
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="evaluating", leave=False, dynamic_ncols=True)
    for start in iterator:
        responses += generator.generate(
            prompts[start : start + step], k, temperature=temperature, max_new_tokens=max_new_tokens
        )
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    rewards, failed = [], set()
    for i, p in enumerate(problems):
        row = []
        for j in range(k):
            reward, grading_failed = grade_checked(texts[i * k + j], p["answer"], grader)
            if grading_failed:
                # grading this answer raised or overran its timeout: wrong here (counted), so a slow or
                # malformed answer never removes its problem from the accuracy
                reward = 0.0
                failed.add((i, j))
            row.append(reward)
        rewards.append(row)
    lengths = [[len(responses[i * k + j]) for j in range(k)] for i in range(len(problems))]
    if samples is not None:
        samples += [
            {
                "index": i,
                "problem": p["problem"],
                "answer": p["answer"],
                "sample": j,
                "completion": texts[i * k + j],
                "reward": rewards[i][j],
                "grading_failed": (i, j) in failed,
                "length": lengths[i][j],
            }
            for i, p in enumerate(problems)
            for j in range(k)
        ]
    result = {**summarize(problems, rewards, lengths, k), "grading_failures": len(failed)}
    if budget is not None:
        spoken = [response_length(r, tokenizer.eos_token_id) for r in responses]
        result["budget"] = budget
        result["within_budget"] = sum(n <= budget for n in spoken) / max(1, len(spoken))
        result["budget_deviation"] = sum(abs(n - budget) / budget for n in spoken) / max(1, len(spoken))
    return result


def evaluate_model(path: str, problems: list[dict], cfg, *, seed: int, progress: bool = True) -> dict:
    """Evaluate the model at ``path`` with ``cfg.eval`` settings; sampling seeded by ``seed``."""
    import torch

    from redrl.modeling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(path, **cfg.model.load_kwargs())
    torch.manual_seed(seed)
    return evaluate(
        model,
        tokenizer,
        problems,
        k=cfg.eval.k,
        temperature=cfg.eval.temperature,
        max_new_tokens=cfg.eval.max_new_tokens,
        grader=cfg.data.grader,
        progress=progress,
        **eval_settings(cfg),
    )


def evaluate_benchmarks(
    model_path: str,
    names: list[str],
    cfg,
    *,
    data_dir: str | None = None,
    k: int | None = None,
    temperature: float | None = None,
    limit: int | None = None,
    grader: str = "math",
    seed: int = 0,
    progress: bool = False,
) -> tuple[dict[str, dict], list[dict]]:
    """Evaluate one model on benchmarks (names of :data:`redrl.data.benchmarks.BENCHMARKS` or paths)
    with each one's protocol unless ``k`` / ``temperature`` override it; ``limit`` keeps the first
    problems of each (for smoke runs). Returns per-benchmark results (with ``k``, ``temperature``
    and ``n``) and every sample (with its ``benchmark``)."""
    import torch

    from redrl.data.benchmarks import BENCHMARKS, load_benchmark
    from redrl.modeling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_path, **cfg.model.load_kwargs())
    results, all_samples = {}, []
    for name in names:
        problems = load_benchmark(name, data_dir)[:limit]
        protocol = BENCHMARKS.get(name)
        bench_k = k or (protocol.k if protocol else cfg.eval.k)
        bench_t = (
            temperature if temperature is not None else (protocol.temperature if protocol else cfg.eval.temperature)
        )
        torch.manual_seed(seed)
        samples: list[dict] = []
        result = evaluate(
            model,
            tokenizer,
            problems,
            k=bench_k,
            temperature=bench_t,
            max_new_tokens=cfg.eval.max_new_tokens,
            grader=grader,
            progress=progress,
            samples=samples,
            **eval_settings(cfg),
        )
        results[name] = {**result, "k": bench_k, "temperature": bench_t}
        all_samples += [{"benchmark": name, **sample} for sample in samples]
    return results, all_samples


def eval_settings(cfg) -> dict:
    """:func:`evaluate`'s prompt and hardware arguments from a config: the config's prompt format, as
    training uses it (evaluation problems carry no system message of their own)."""
    from redrl.rollout import in_process_engine

    return {
        "system_prompt": cfg.data.system_prompt or None,
        "prompt_format": cfg.data.prompt_kwargs(),
        "batch_size": cfg.eval.batch_size,
        "mixed_precision": cfg.train.mixed_precision,
        "engine": in_process_engine(cfg.rollout.engine),
        "budget": cfg.eval.budget,
        "budget_template": cfg.bard.budget_template,
    }


def format_benchmark_table(model: str, results: dict[str, dict]) -> str:
    """Table 2's layout: Acc (%) and LEN per benchmark, and Overall (the mean over the benchmarks)."""
    from redrl.data.benchmarks import BENCHMARKS

    titles = [BENCHMARKS[name].title if name in BENCHMARKS else name for name in results]
    header = ["model"] + [f"{t} {part}" for t in titles for part in ("Acc", "LEN")] + ["Overall Acc", "Overall LEN"]
    cells = [model]
    for result in results.values():
        cells += [f"{100 * result['accuracy']:.2f}", f"{result['length']:.0f}"]
    accuracies = [r["accuracy"] for r in results.values() if not math.isnan(r["accuracy"])]
    lengths = [r["length"] for r in results.values() if not math.isnan(r["length"])]
    cells += [
        f"{100 * sum(accuracies) / len(accuracies):.2f}" if accuracies else "-",
        f"{sum(lengths) / len(lengths):.0f}" if lengths else "-",
    ]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), "| " + " | ".join(cells) + " |"])


def format_table(results: dict[str, dict]) -> str:
    """A markdown table: one row per model, accuracy (%) and LEN per level and overall."""
    levels = []
    for result in results.values():
        for level in result.get("by_level", {}):
            if level not in levels:
                levels.append(level)
    levels.sort(key=_level_key)
    header = ["model"] + [f"L{level}" for level in levels] + ["overall", "LEN"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def pct(value: float) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"

    for name, result in results.items():
        cells = [name] + [pct(result["by_level"].get(level, {}).get("accuracy", math.nan)) for level in levels]
        length = result.get("length", math.nan)
        cells += [pct(result["accuracy"]), "-" if math.isnan(length) else f"{length:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
