"""``redrl compare``: every method × seed under one config, the paper's Table 2 in miniature.

Each run trains one method for the same number of optimizer steps on the same prompts, teacher
data and shared hyperparameters (the fairness rule, :mod:`redrl.methods`), at the learning rate
chosen for that method on the validation split (``optim.lr_sweep``, :mod:`redrl.sweep`) unless the
config sets one, then is evaluated on the test split. Finished runs are recognised by their ``eval.json`` (written last, with the run's
config) and reused, so an interrupted comparison resumes where it stopped; a run whose config
changed is run again. The entropy-across-phases table (the paper's Table 1) measures ``H_rl`` and
``H_sft`` of the base, the GRPO and SFT checkpoints, and of GRPO continued from SFT and SFT
continued from GRPO. :mod:`redrl.report` turns ``results.json`` into the table, plots and verdicts.

Layout of ``OUT``::

    runs/METHOD/seedS/      metrics.jsonl, final/, eval.json     (one per method and seed)
    runs/base/seedS/        eval.json                            (the base, same evaluation)
    phases/NAME/seedS/      the two continuation runs (RL after SFT, SFT after RL)
    phases/entropy/         PHASE-seedS.json: H_rl and H_sft of each phase's checkpoint
    results.json, table.md, plots/*.png, report.md
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from pathlib import Path

import torch

from redrl.config import Config, load_config, read_yaml
from redrl.learning_rate import with_learning_rate
from redrl.methods import COMPARED, METHODS
from redrl.report import finite_values

__all__ = ["aggregate", "dynamics_summary", "measure_entropies", "parse_methods", "run_compare"]


def parse_methods(text: str | None) -> list[str]:
    """``"all"`` (or nothing): the paper's twelve rows; else a comma-separated list of method names."""
    if text in (None, "", "all"):
        return list(COMPARED)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r} in --methods; choose from all, {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def jsonable(value):
    """Round-trip through JSON (tuples become lists) so saved and current configs compare equal."""
    return json.loads(json.dumps(value))


def write_json(path: Path, data) -> None:
    """Write via a temporary file and a rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False))
    tmp.replace(path)


def _mean(values) -> float | None:
    values = finite_values(values)
    return sum(values) / len(values) if values else None


def dynamics_summary(records: list[dict]) -> dict:
    """Numbers the claims about training dynamics are judged on, from one run's ``metrics.jsonl``.

    * ``h_rl_early`` / ``h_sft_early``: mean over the first tenth of the steps (at least one);
      ``h_rl_late`` / ``h_sft_late``: mean over the last quarter;
    * ``log_gap_late``: mean over the last quarter of ``|log(H_sft / H_rl)|`` (0 = equal entropies);
    * ``ratio_cv``: coefficient of variation (std / mean) of ``H_sft / H_rl`` over all steps;
    * ``accuracy_drawdown``: the largest fall of the rollouts' accuracy (5-step moving average)
      below its running peak — a collapse mid-training shows as a large drawdown;
    * ``w_mean``: mean regulator weight; ``accuracy_late`` / ``length_late``: rollouts' accuracy
      and length over the last quarter.
    Quantities a method does not have (no rollouts, no teacher rows) are ``None``.
    """
    n = len(records)
    early, late = max(1, n // 10), max(1, n // 4)

    def column(key):
        return [r.get(key) for r in records]

    def window(key, rows):
        return _mean(r.get(key) for r in rows)

    def ratio(r) -> float | None:  # H_sft / H_rl where both are positive and finite
        pair = finite_values([r.get("h_rl"), r.get("h_sft")])
        return pair[1] / pair[0] if len(pair) == 2 and min(pair) > 0 else None

    ratios = [x for x in map(ratio, records) if x is not None]
    gaps = [abs(math.log(x)) for x in map(ratio, records[-late:]) if x is not None]
    accuracy = column("online_accuracy")
    drawdown = None
    if finite_values(accuracy):
        peak, drawdown = -math.inf, 0.0
        for i in range(n):
            value = _mean(accuracy[max(0, i - 4) : i + 1])  # 5-step moving average
            if value is not None:
                peak = max(peak, value)
                drawdown = max(drawdown, peak - value)
    ratio_cv = None
    if len(ratios) >= 2 and statistics.fmean(ratios) > 0:
        ratio_cv = statistics.pstdev(ratios) / statistics.fmean(ratios)
    return {
        "h_rl_early": window("h_rl", records[:early]),
        "h_rl_late": window("h_rl", records[-late:]),
        "h_sft_early": window("h_sft", records[:early]),
        "h_sft_late": window("h_sft", records[-late:]),
        "log_gap_late": _mean(gaps),
        "ratio_cv": ratio_cv,
        "accuracy_drawdown": drawdown,
        "w_mean": _mean(column("w")),
        "accuracy_late": window("online_accuracy", records[-late:]),
        "length_late": window("online_length", records[-late:]),
        # dynamic sampling and tail batching: prompts sampled per step (rollouts = G times that)
        "prompts_sampled_per_step": _mean(column("prompts_sampled")),
    }


def _read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def mean_std(values) -> tuple[float | None, float | None]:
    """``(mean, sample std)`` over seeds; the std is ``None`` with fewer than two values."""
    values = finite_values(values)
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def aggregate(per_seed: list[dict]) -> dict:
    """Seed results of one method → ``accuracy_mean/std``, ``length_mean/std``, ``by_level``, ``seeds``."""
    accuracy_mean, accuracy_std = mean_std(r["accuracy"] for r in per_seed)
    length_mean, length_std = mean_std(r["length"] for r in per_seed)
    levels = []
    for r in per_seed:
        levels += [level for level in r.get("by_level", {}) if level not in levels]
    by_level = {}
    for level in levels:
        acc_m, acc_s = mean_std(r["by_level"].get(level, {}).get("accuracy") for r in per_seed)
        len_m, len_s = mean_std(r["by_level"].get(level, {}).get("length") for r in per_seed)
        by_level[level] = {"accuracy_mean": acc_m, "accuracy_std": acc_s, "length_mean": len_m, "length_std": len_s}
    return {
        "accuracy_mean": accuracy_mean,
        "accuracy_std": accuracy_std,
        "length_mean": length_mean,
        "length_std": length_std,
        "by_level": by_level,
        "seeds": per_seed,
    }


def _eval_record(result: dict, seed: int, k: int, run: Path, cfg_dict: dict, **extra) -> dict:
    levels = {
        level: {"accuracy": r["accuracy"], "length": r["length"], "n": r["n"]}
        for level, r in result["by_level"].items()
    }
    return {
        "seed": seed,
        "accuracy": result["accuracy"],
        "length": result["length"],
        f"pass@{k}": result[f"pass@{k}"],
        "n": result["n"],
        "by_level": levels,
        "run_dir": str(run),
        **extra,
        "config": cfg_dict,
    }


def cached_record(path: Path, cfg_dict: dict) -> dict | None:
    """The saved result at ``path`` if it was produced by the same config, else ``None``."""
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return saved if saved.get("config") == cfg_dict else None


def _trained(run: Path, cfg_dict: dict) -> bool:
    """The run's final checkpoint is complete and was trained with this config."""
    from redrl.checkpoint import verify

    config = run / "config.yaml"
    if not (run / "final").is_dir() or verify(run / "final") is not None or not config.exists():
        return False
    return jsonable(read_yaml(config)) == cfg_dict


def _run_values(name: str, seed: int, steps: int, eval_k: int, out: Path, eval_every: int = 0) -> dict:
    """The config values of one comparison run: method ``name`` (or ``"base"``, evaluated untrained)
    with ``seed``; ``eval_every`` adds validation curves (``train.eval_every`` on ``val``)."""
    run = out / "runs" / name / f"seed{seed}"
    train = {"seed": seed, "out": str(run)} | ({} if name == "base" else {"method": name, "steps": steps})
    if eval_every and name != "base":
        train |= {"eval_every": eval_every, "eval_on": "val"}
    return {"train": train, "eval": {"k": eval_k}}


def compare_config(config: str, overrides: list[str], **values) -> Config:
    """The shared config with the comparison's own settings applied (``compare.group_size``); a run
    whose config changed is trained again in its own directory (``train.overwrite``); a run logs no
    per-step lines (``train.log_every``: the comparison's own line per run says how it went)."""
    values = {**values, "train": {**values.get("train", {}), "overwrite": True, "log_every": 0}}
    cfg = load_config(config, list(overrides), **values)
    if cfg.compare.group_size is not None and cfg.compare.group_size != cfg.rollout.group_size:
        cfg = load_config(config, list(overrides), **values, rollout={"group_size": cfg.compare.group_size})
    return with_learning_rate(cfg, required=False)  # a run without one is refused when it trains


def execute_run(
    config: str, overrides: list[str], name: str, values: dict, split: str = "test", progress: bool = False
) -> tuple[dict, str]:
    """Train (unless ``name`` is ``"base"`` or the run was trained before) and evaluate one run on
    ``split`` (``test`` or ``val``); write its ``eval.json``. Returns the record and a line for the
    log. Runs in a worker process when several jobs run at once (``redrl compare``, ``redrl sweep``)."""
    from redrl.data.offline import load_problems
    from redrl.evaluate import evaluate_model
    from redrl.paths import resolve_paths, resolve_split
    from redrl.tiny_teacher import prepare_teacher
    from redrl.trainer import train

    cfg = compare_config(config, overrides, **values)
    run, cfg_dict = Path(cfg.train.out), jsonable(cfg.to_dict())
    untrained = "method" not in values.get("train", {})  # the base (or a teacher): evaluated as it is
    base_path, _, _ = resolve_paths(cfg, need_train=not untrained, need_test=False)
    eval_path = resolve_split(cfg, split)
    started = time.perf_counter()
    if untrained:
        final, note = base_path, ""
    elif _trained(run, cfg_dict):
        final, note = run / "final", " (trained before)"
    else:
        prepare_teacher(cfg, progress=progress)
        final, note = train(cfg, progress=progress), ""
    trained = time.perf_counter()
    result = evaluate_model(str(final), load_problems(eval_path), cfg, seed=cfg.train.seed, progress=progress)
    extra = (
        {}
        if untrained
        else {"dynamics": dynamics_summary(_read_metrics(run)), "train_seconds": trained - started, "lr": cfg.optim.lr}
    )
    record = _eval_record(
        result,
        cfg.train.seed,
        cfg.eval.k,
        run,
        cfg_dict,
        **extra,
        split=split,
        eval_seconds=time.perf_counter() - trained,
    )
    write_json(run / "eval.json", record)
    timing = "" if untrained else f"lr {cfg.optim.lr:.3g}, {trained - started:.0f} s training{note}, "
    return record, (
        f"  {name} seed {cfg.train.seed}: {split} accuracy {100 * result['accuracy']:.1f}%  LEN {result['length']:.0f}  "
        f"({timing}{time.perf_counter() - trained:.0f} s evaluation)"
    )


def cell_values(
    name: str, method: str, extra: dict, seed: int, steps: int, eval_k: int, out: Path, lrs: dict, eval_every: int = 0
) -> dict:
    """The config values of one suite cell ``name``: ``method`` with ``extra`` config values, at its
    method's learning rate (``lrs``) (``extra["train"]`` may set train fields other than those a cell
    fixes: seed, out, method, steps); a staged method trains its first stage at that stage's rate
    and its second at the second's. Its run lives in ``OUT/runs/NAME/seedS``."""
    run = out / "runs" / name / f"seed{seed}"
    train = {**extra.get("train", {}), "seed": seed, "out": str(run), "method": method, "steps": steps}
    if eval_every:
        train |= {"eval_every": eval_every, "eval_on": "val"}
    stages = METHODS[method].stages
    if stages:
        optim, extra = {"lr": lrs[stages[1]]}, {**extra, "baselines": {"staged_sft_lr": lrs[stages[0]]}}
    else:
        optim = {"lr": lrs[method]}
    return {**extra, "train": train, "eval": {"k": eval_k}, "optim": optim}


def untrained_values(name: str, seed: int, eval_k: int, out: Path, model: str | None = None) -> dict:
    """The config values of a model evaluated as it is (the base, or ``model``: a teacher)."""
    values = {"train": {"seed": seed, "out": str(out / "runs" / name / f"seed{seed}")}, "eval": {"k": eval_k}}
    return values | ({"model": {"path": model}} if model else {})


def method_learning_rates(config: str, overrides: list[str], methods, fallback: float | None = None) -> dict:
    """Each method's learning rate as a run of it alone would take it (``optim.lr``, else its value in
    the sweep file ``optim.lr_sweep``), else ``fallback``; a staged method's stages are looked up in
    its place. Without a rate and without a fallback: one line naming the sweep to run."""
    lrs = {}
    for method in sorted({stage for m in methods for stage in (METHODS[m].stages or (m,))}):
        lr = compare_config(config, overrides, train={"method": method}).optim.lr
        if lr is None and fallback is None:
            raise ValueError(
                f"no learning rate for {method}: run redrl sweep --methods {method} --save FILE "
                "and name FILE in optim.lr_sweep, or --set optim.lr=..."
            )
        lrs[method] = lr if lr is not None else fallback
    return lrs


def run_cached(
    plan: dict, config: str, overrides: list[str], records: dict, *, jobs=None, progress=True, log=print
) -> None:
    """Train and evaluate on the test split every ``(name, seed) → values`` of ``plan`` whose saved
    ``eval.json`` was not produced by the same config (those are reused); fill ``records``."""
    tasks = []
    for (name, seed), values in plan.items():
        cfg = compare_config(config, overrides, **values)
        saved = cached_record(Path(cfg.train.out) / "eval.json", jsonable(cfg.to_dict()))
        if saved is None:
            tasks.append(((name, seed), (config, overrides, name, values, "test")))
        else:
            records[name, seed] = saved
    for key, (record, _) in execute_all(tasks, execute_run, jobs=jobs, progress=progress, log=log):
        records[key] = record


def execute_all(tasks: list[tuple], function, *, jobs: int | None = None, progress: bool = True, log=print):
    """Run ``function(*args)`` for each ``(key, args)`` of ``tasks``, ``jobs`` at once (each in its own
    single-threaded process; 1: here, one after the other); log each returned line and yield
    ``(key, result)`` as runs finish."""
    jobs = max(1, min(jobs or default_jobs(), len(tasks) or 1))
    if not tasks:
        return
    log(
        f"running {len(tasks)} runs, {jobs} at a time"
        + (f" ({max(1, torch.get_num_threads() // jobs)} threads each)" if jobs > 1 else "")
    )
    if jobs == 1:
        for key, args in tasks:
            result = function(*args, progress)
            log(result[1])
            yield key, result
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, torch.get_num_threads() // jobs)
    with ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(threads,)
    ) as pool:
        futures = {pool.submit(function, *args, False): key for key, args in tasks}
        for future in as_completed(futures):
            result = future.result()
            log(result[1])
            yield futures[future], result


def _init_worker(threads: int) -> None:
    """A worker process of ``redrl compare --jobs N``: its share of the cores, no library chatter."""
    import warnings

    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*teacher traces exceed")


def default_jobs() -> int:
    """Runs at once by default: one per core, at most 4. Small models use one core poorly, so
    separate single-threaded runs finish sooner than one run on every core (measured: two
    one-thread runs on two cores took 1.2x the time of one two-thread run, BENCHMARKS.md)."""
    import os

    return max(1, min(4, os.cpu_count() or 1))


def measure_entropies(
    model_path: str, cfg: Config, prompts: list[list[int]], teacher: list[list[int]], *, seed: int
) -> dict:
    """``H_rl`` and ``H_sft`` of a checkpoint: mean token entropy of ``G`` rollouts of each prompt
    (sampled at the rollout temperature) and of the prompts' teacher traces, measured as every
    training step measures them (:func:`redrl.step.measure_entropies`)."""
    from redrl.batch import assemble_batch
    from redrl.modeling import TokenScorer, load_frozen_model
    from redrl.rollout import in_process_engine, make_generator
    from redrl.step import measure_entropies as step_entropies

    model, tokenizer = load_frozen_model(model_path, **cfg.model.load_kwargs())
    torch.manual_seed(seed)
    G = cfg.rollout.group_size
    generator = make_generator(
        in_process_engine(cfg.rollout.engine),
        model,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        batch_size=cfg.rollout.batch_size,
        mixed_precision=cfg.train.mixed_precision,
    )
    rollouts = generator.generate(
        prompts, G, temperature=cfg.rollout.temperature, max_new_tokens=cfg.rollout.max_new_tokens
    )
    batch = assemble_batch(
        prompts,
        rollouts,
        [None] * len(rollouts),
        teacher,
        [None] * len(teacher),
        group_size=G,
        method=METHODS["red"],
        pad_id=tokenizer.pad_token_id,
    )
    h_rl, h_sft = step_entropies(
        TokenScorer(model, cfg.train.chunk_size), batch, cfg.train.micro_batch_size, cfg.train.mixed_precision
    )
    return {"h_rl": h_rl, "h_sft": h_sft}


#: The phases of the entropy table: name → (method trained, method whose final checkpoint it starts from).
PHASES = {"rl": ("grpo", None), "sft": ("sft", None), "rl_after_sft": ("grpo", "sft"), "sft_after_rl": ("sft", "grpo")}


def _entropy_phases(config, overrides, seeds: int, steps: int, eval_k: int, out: Path, *, progress: bool, log) -> dict:
    """Table 1 of the paper: ``H_rl`` / ``H_sft`` of the base and of each phase's final checkpoint, per seed."""
    from transformers import AutoTokenizer

    from redrl.data.training import prepare_data
    from redrl.paths import resolve_paths
    from redrl.trainer import train

    base_cfg = compare_config(config, overrides)
    base_path, train_path, _ = resolve_paths(base_cfg)
    tokenizer = AutoTokenizer.from_pretrained(base_path, trust_remote_code=base_cfg.model.trust_remote_code)
    data = prepare_data(base_cfg, tokenizer, train_path)  # prompts and traces exactly as training has them
    chosen = random.Random(1234).sample(
        range(len(data.prompts)), min(base_cfg.compare.entropy_prompts, len(data.prompts))
    )
    prompts, teacher = [data.prompts[i] for i in chosen], [data.teacher[i] for i in chosen]

    table: dict[str, list[dict]] = {"base": []}
    for seed in range(seeds):
        models = {"base": base_path}
        for phase, (method, start) in PHASES.items():
            if start is None:
                models[phase] = str(out / "runs" / method / f"seed{seed}" / "final")
                continue
            run = out / "phases" / phase / f"seed{seed}"
            # The continuation keeps the task's learning rate for its method (a swept value belongs to the task, not the checkpoint).
            lr = compare_config(config, overrides, train={"method": method}).optim.lr
            cfg = compare_config(
                config,
                overrides,
                train={"method": method, "steps": steps, "seed": seed, "out": str(run)},
                model={"path": str(out / "runs" / start / f"seed{seed}" / "final")},
                eval={"k": eval_k},
                optim={"lr": lr},
            )
            if not _trained(run, jsonable(cfg.to_dict())):
                log(f"  phase {phase} seed {seed}: {method} from the {start} checkpoint")
                train(cfg, progress=progress)
            models[phase] = str(run / "final")
        for phase, path in models.items():
            cache = out / "phases" / "entropy" / f"{phase}-seed{seed}.json"
            weights = next(
                Path(path).glob("*.safetensors"), Path(path) / "model.safetensors"
            )  # retrained: measure again
            key = {
                "model": path,
                "seed": seed,
                "prompts": len(prompts),
                "weights": weights.stat().st_mtime_ns if weights.exists() else None,
            }
            saved = json.loads(cache.read_text()) if cache.exists() else None
            if not saved or saved.get("key") != key:
                saved = {"key": key, **measure_entropies(path, base_cfg, prompts, teacher, seed=seed)}
                write_json(cache, saved)
            table.setdefault(phase, []).append({"seed": seed, "h_rl": saved["h_rl"], "h_sft": saved["h_sft"]})
    summary = {}
    for phase, rows in table.items():
        summary[phase] = {"seeds": rows}
        for key in ("h_rl", "h_sft"):
            summary[phase][f"{key}_mean"], summary[phase][f"{key}_std"] = mean_std(r[key] for r in rows)
    return summary


def run_compare(
    config: str = "tiny",
    overrides: list[str] = (),
    *,
    methods: list[str] | None = None,
    seeds: int | None = None,
    steps: int | None = None,
    out: str | Path = "runs/compare",
    jobs: int | None = None,
    progress: bool = True,
) -> dict:
    """Train and evaluate every method × seed (resuming), then write results, table, plots and report.

    ``jobs`` runs go at once, each in its own process with its share of the CPU threads
    (default :func:`default_jobs`); ``jobs = 1`` runs everything in this process.
    """
    from redrl.data.offline import load_problems
    from redrl.paths import resolve_paths
    from redrl.report import write_outputs

    started = time.perf_counter()
    out = Path(out)
    shared = compare_config(config, list(overrides))
    methods = methods or list(COMPARED)
    seeds = seeds or shared.compare.seeds
    steps = steps or shared.compare.steps
    eval_k = shared.compare.eval_k

    def log(message: str) -> None:  # the run-by-run lines are the command's output: printed with or without bars
        print(message, flush=True)

    _, _, test_path = resolve_paths(shared)
    problems = load_problems(test_path)
    log(
        f"redrl compare: {len(methods)} methods x {seeds} seeds, {steps} steps each; "
        f"test: {len(problems)} problems, avg@{eval_k} at temperature {shared.eval.temperature}"
    )

    names = ["base"] + methods
    records: dict[tuple[str, int], dict] = {}
    tasks = []
    for seed in range(seeds):
        for name in names:
            values = _run_values(name, seed, steps, eval_k, out, shared.compare.eval_every)
            cfg = compare_config(config, list(overrides), **values)
            cached = cached_record(Path(cfg.train.out) / "eval.json", jsonable(cfg.to_dict()))
            if cached is None:
                tasks.append(((name, seed), (config, list(overrides), name, values, "test")))
            else:
                records[name, seed] = cached
    if records:
        log(f"{len(records)} of {len(names) * seeds} runs finished before: reused")
    for key, (record, _) in execute_all(tasks, execute_run, jobs=jobs, progress=progress, log=log):
        records[key] = record
    per_method = {name: [records[name, seed] for seed in range(seeds)] for name in methods}
    base_seeds = [records["base", seed] for seed in range(seeds)]

    phases = None
    if "sft" in methods and "grpo" in methods:
        log("entropy across phases (base, RL, SFT, RL after SFT, SFT after RL)")
        phases = _entropy_phases(config, list(overrides), seeds, steps, eval_k, out, progress=progress, log=log)

    results = {
        "methods": {name: aggregate(per_method[name]) for name in methods},
        "base": aggregate(base_seeds),
        "entropy_phases": phases,
        "settings": {
            "config": config,
            "overrides": list(overrides),
            "steps": steps,
            "seeds": seeds,
            "eval_k": eval_k,
            "eval_temperature": shared.eval.temperature,
            "test_problems": len(problems),
            "group_size": shared.rollout.group_size,
            "prompts_per_step": shared.train.prompts_per_step,
            "lr": {name: per_method[name][0].get("lr") for name in methods},
            "lr_sweep": shared.optim.lr_sweep,
        },
        "seconds": time.perf_counter() - started,
    }
    write_json(out / "results.json", results)
    write_outputs(results, out)
    log(
        f"{results['seconds']:.0f} s. Wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'plots'}/, {out / 'report.md'}"
    )
    return results
