"""Staged methods (SFT→GRPO): the stages run one after the other, each a whole training run that
starts from the previous stage's final checkpoint."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from redrl import checkpoint
from redrl.data.offline import load_offline
from redrl.data.training import total_steps
from redrl.parallel import Parallel
from redrl.paths import resolve_paths

if TYPE_CHECKING:
    from redrl.config import Config
    from redrl.methods import Method

__all__ = ["train_staged"]


def train_staged(cfg: Config, method: Method, train_stage: Callable[..., Path], *, progress: bool = True) -> Path:
    """Run ``method.stages`` one after the other, each from the previous stage's final checkpoint.

    Stage ``k`` writes to ``OUT/stage-k-NAME``; ``OUT/metrics.jsonl`` holds every stage's steps,
    numbered on (with a ``stage`` field), and ``OUT/final`` is the last stage's model. ``train_stage``
    trains one single-stage config (:func:`redrl.trainer.train`).

    With ``train.resume`` a stage whose ``final`` checkpoint is complete is not trained again and the
    interrupted stage resumes from its newest complete checkpoint, so the run repeats exactly what
    the uninterrupted one would have done.
    """
    out = Path(cfg.train.out)
    steps = cfg.train.steps
    if cfg.train.epochs is not None:  # epochs over every record (before data.max_prompt_tokens leaves any out)
        steps = total_steps(cfg, len(load_offline(resolve_paths(cfg, need_test=False)[1])))
    first = max(1, min(steps - 1, round(steps * cfg.baselines.staged_sft_fraction)))
    budgets = [first, steps - first]
    if len(method.stages) != 2 or budgets[1] < 1:
        raise ValueError(f"{method.name}: a staged method needs two stages and train.steps >= 2")
    model_path, offset, merged = cfg.model.path, 0, []
    for index, (name, stage_steps) in enumerate(zip(method.stages, budgets), start=1):
        stage_out = out / f"stage-{index}-{name}"
        # the first (SFT or distillation) stage may have its own learning rate; the RL stage takes optim.lr
        lr = cfg.baselines.staged_sft_lr if index == 1 and cfg.baselines.staged_sft_lr else cfg.optim.lr
        stage_cfg = dataclasses.replace(
            cfg,
            model=dataclasses.replace(cfg.model, path=model_path),
            optim=dataclasses.replace(cfg.optim, lr=lr),
            train=dataclasses.replace(cfg.train, method=name, steps=stage_steps, epochs=None, out=str(stage_out)),
        )
        finished = stage_out / "final"
        if cfg.train.resume and finished.is_dir() and checkpoint.verify(finished) is None:
            final = finished
        else:
            final = train_stage(stage_cfg, progress=progress)
        for line in (stage_out / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            merged.append({**record, "step": record["step"] + offset, "stage": name})
        model_path, offset = str(final), offset + stage_steps
    par = Parallel.create(cfg.model.device)
    if par.is_main:
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        (out / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in merged))
        if (out / "final").exists():
            shutil.rmtree(out / "final")
        shutil.copytree(final, out / "final")
    par.wait()
    return out / "final"
