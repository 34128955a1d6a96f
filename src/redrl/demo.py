"""``redrl demo``: the embedded default end to end — build the base and the teacher data (cached),
evaluate the base, train RED, evaluate it, print the before/after table and write ``summary.json``."""

from __future__ import annotations

import json
import time
from pathlib import Path

__all__ = ["run_demo"]


def run_demo(
    out: str | Path = "runs/demo",
    *,
    seed: int = 0,
    overrides: list[str] = (),
    progress: bool = True,
    resume: bool = False,
) -> dict:
    """The demo; ``resume``: continue RED's training from its newest checkpoint in ``OUT/red`` and
    reuse the base's evaluation when it was made with the same settings."""
    from redrl.config import load_config
    from redrl.data.offline import load_problems
    from redrl.evaluate import evaluate_model, format_table
    from redrl.paths import resolve_paths
    from redrl.trainer import train

    started = time.perf_counter()
    out = Path(out)
    cfg = load_config(
        "tiny",
        list(overrides),
        train={"out": str(out / "red"), "seed": seed, "method": "red", "overwrite": not resume, "resume": resume},
    )
    if progress:
        print("redrl demo: building (or reusing) the tiny base and the teacher data ...", flush=True)
    base_path, _, test_path = resolve_paths(cfg, progress=progress)
    problems = load_problems(test_path)
    saved = out / "base-eval.json"
    settings = {"model": base_path, "test": test_path, "seed": seed, "eval": cfg.to_dict()["eval"]}
    settings = json.loads(json.dumps(settings))  # as read back from the file
    base = json.loads(saved.read_text()) if resume and saved.is_file() else {}
    if base.get("settings") != settings:
        if progress:
            print(
                f"evaluating the base on {len(problems)} test problems (avg@{cfg.eval.k}, temperature {cfg.eval.temperature}) ...",
                flush=True,
            )
        base = {"settings": settings, "result": evaluate_model(base_path, problems, cfg, seed=seed, progress=progress)}
        out.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(base, indent=2))
    results = {"base": base["result"]}
    final = train(cfg, progress=progress)
    results["red"] = evaluate_model(str(final), problems, cfg, seed=seed, progress=progress)

    table = format_table(results)
    summary = {
        "methods": {
            name: {
                "accuracy": r["accuracy"],
                "length": r["length"],
                f"pass@{cfg.eval.k}": r[f"pass@{cfg.eval.k}"],
                "by_level": r["by_level"],
            }
            for name, r in results.items()
        },
        "seconds": time.perf_counter() - started,
        "eval": {"k": cfg.eval.k, "temperature": cfg.eval.temperature, "problems": len(problems)},
        "checkpoint": str(final),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "table.md").write_text(table + "\n")
    print(f"\nTest accuracy (%, avg@{cfg.eval.k}) by level and overall; LEN = mean response tokens\n")
    print(table)
    print(f"\n{summary['seconds']:.0f} s. Wrote {out / 'summary.json'}, {out / 'table.md'}; RED checkpoint: {final}")
    return summary
