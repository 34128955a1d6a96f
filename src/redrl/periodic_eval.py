"""``train.eval_every``: the current policy evaluated on ``train.eval_on`` during training, and with
``train.keep_best`` the most accurate model so far kept as ``OUT/best`` (its accuracy is part of
the loop's state, so a resumed run does not overwrite a better ``best/`` with a worse one)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from redrl.run_log import model_card

__all__ = ["PeriodicEvaluation"]


class PeriodicEvaluation:
    """Every process takes part (sharded weights are gathered); the random state of training is
    restored afterwards."""

    def __init__(self, run):
        from redrl.data.offline import load_problems
        from redrl.evaluate import eval_settings
        from redrl.paths import resolve_split

        cfg = run.cfg
        source = cfg.train.eval_on
        path = resolve_split(cfg, source, progress=False) if source in ("val", "test") else source
        if not Path(path).expanduser().is_file():
            raise FileNotFoundError(f"train.eval_on not found: {source}")
        self.run, self.problems, self.best = run, load_problems(path), -1.0
        self.settings = eval_settings(cfg)
        if run.par.sharded:  # the fast engine needs every weight on this process
            self.settings["engine"] = "hf"

    def due(self, step: int) -> bool:
        return step % self.run.cfg.train.eval_every == 0

    def __call__(self, step: int) -> dict:
        """``{"eval_accuracy", "eval_pass@k", "eval_length"}`` of the policy after ``step``."""
        from redrl.evaluate import evaluate

        run, cfg = self.run, self.run.cfg
        k = cfg.eval.k
        cuda = [run.par.device] if run.par.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), run.par.full_parameters(run.scorer):
            torch.manual_seed(cfg.train.seed * 1_000_003 + step)
            result = evaluate(
                run.model,
                run.tokenizer,
                self.problems,
                k=k,
                temperature=cfg.eval.temperature,
                max_new_tokens=cfg.eval.max_new_tokens,
                grader=cfg.data.grader,
                **self.settings,
            )
        numbers = {
            "eval_accuracy": result["accuracy"],
            f"eval_pass@{k}": result[f"pass@{k}"],
            "eval_length": result["length"],
        }
        accuracy = run.par.max(result["accuracy"])  # every process takes the same decision (saving is collective)
        if cfg.train.keep_best and accuracy > self.best:
            self.best = accuracy
            run.save(
                run.out / "best",
                step,
                model_card=model_card(cfg, run.method, step, [json.dumps(numbers)], {**numbers, "step": step}),
            )
        return numbers

    def state_dict(self) -> dict:
        return {"best_eval_accuracy": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = float(state.get("best_eval_accuracy", -1.0))
