"""The one place a run's learning rate is settled: ``optim.lr`` when set, else its method's value in
the sweep file ``optim.lr_sweep`` (written by ``redrl sweep``, :mod:`redrl.sweep`).

A sweep file is keyed to its task (:func:`task_key`): a file written for another task is refused,
so a value chosen on one task's validation split never silently trains another. Settings stay
settings (:func:`redrl.config.load_config` reads no sweep file); the lookup happens where a run
is resolved (:func:`redrl.trainer.train`, the commands that report a run's value).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from redrl.methods import METHODS

if TYPE_CHECKING:
    from redrl.config import Config

__all__ = ["read_sweep", "require_learning_rate", "swept_learning_rates", "task_key", "with_learning_rate"]


def task_key(cfg: Config) -> str:
    """What the chosen values belong to: the embedded default's build hash (task, base and teacher
    data), or for any other setup a hash of the model and the training data it names."""
    if cfg.model.path == "tiny" and cfg.data.train == "tiny":
        from redrl.tiny import TinySpec

        return TinySpec().key()
    text = json.dumps({"model": cfg.model.path, "train": cfg.data.train}, sort_keys=True)
    return "data-" + hashlib.sha256(text.encode()).hexdigest()[:10]


def sweep_path(name: str) -> Path:
    """A sweep file: an existing path, or one shipped with redrl (``tiny-lr.json``)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = resources.files("redrl") / "configs" / Path(name).name
    if shipped.is_file():
        return Path(str(shipped))
    raise FileNotFoundError(f"optim.lr_sweep not found: {name} (run `redrl sweep --save {name}` to make it)")


def read_sweep(name: str) -> dict:
    path = sweep_path(name)
    try:
        body = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(body, dict) or not isinstance(body.get("chosen"), dict) or "task" not in body:
        raise ValueError(f"{path} is not a sweep file: it needs 'task' and 'chosen'")
    return body


def swept_learning_rates(cfg: Config) -> tuple[float, float | None]:
    """``(optim.lr, baselines.staged_sft_lr)`` of ``cfg.train.method`` from the sweep file
    ``cfg.optim.lr_sweep``; a staged method takes its last stage's value, and its first stage's for
    that stage (``sft_grpo``: GRPO's, and SFT's for its SFT stage)."""
    body = read_sweep(cfg.optim.lr_sweep)
    key = task_key(cfg)
    if body["task"] != key:
        raise ValueError(
            f"optim.lr_sweep {cfg.optim.lr_sweep} was chosen for task {body['task']}, not this one ({key}): "
            "run `redrl sweep` for this task or set optim.lr"
        )
    method = METHODS[cfg.train.method]
    wanted = list(method.stages[::-1]) if method.stages else [method.name]
    missing = [name for name in wanted if name not in body["chosen"]]
    if missing:
        raise ValueError(f"optim.lr_sweep {cfg.optim.lr_sweep} has no learning rate for {missing[0]}; set optim.lr")
    lr = float(body["chosen"][wanted[0]])
    staged_sft = float(body["chosen"][method.stages[0]]) if method.stages else None  # the first stage's own
    return lr, staged_sft


def with_learning_rate(cfg: Config, *, required: bool = True) -> Config:
    """``cfg`` with ``optim.lr`` (and a staged method's ``baselines.staged_sft_lr``, unless set) taken
    from the sweep file when ``optim.lr`` is null. ``required``: raise, in one line, why there is no
    learning rate; otherwise return ``cfg`` unchanged (what needs no learning rate, e.g. evaluation)."""
    if cfg.optim.lr is not None:
        return cfg
    if not cfg.optim.lr_sweep:
        if required:
            raise ValueError("optim.lr is null: set it, or name a `redrl sweep` file in optim.lr_sweep")
        return cfg
    try:
        lr, staged_sft = swept_learning_rates(cfg)
    except (ValueError, OSError):
        if required:
            raise
        return cfg
    baselines = cfg.baselines
    if baselines.staged_sft_lr is None:
        baselines = dataclasses.replace(baselines, staged_sft_lr=staged_sft)
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=lr), baselines=baselines)


def require_learning_rate(cfg: Config) -> None:
    """Raise, in one line, why ``cfg`` has no learning rate (a training run cannot start without one)."""
    with_learning_rate(cfg)
