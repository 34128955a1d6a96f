"""The embedded default's teacher *model*: what distillation (arXiv 2605.16826) distils on the toy.

A larger model of the embedded family with the same tokenizer, built by redrl in a few minutes:

1. **Depth up-scaling** of the base: every layer of the base is followed by a copy of itself whose
   two output projections (attention ``o_proj``, MLP ``down_proj``) are zero, so the new layer adds
   nothing to the residual stream and the grown model computes exactly what the base computes;
   twice the layers, twice the transformer parameters.
2. **SFT on the teacher traces** (``data.train``), through :func:`redrl.trainer.train` at the SFT
   learning rate chosen on validation, for :attr:`TeacherSpec.steps` steps of
   :attr:`TeacherSpec.prompts_per_step` prompts.
3. Its accuracy per level on the validation split (avg@4 at temperature 0.6, the demo's
   evaluation) is measured and stored with it (``accuracy.json``).

Cached beside the task as ``<task key>-teacher-<hash>`` (``teacher.path: tiny-teacher`` resolves
to it), built once under the same lock and staging as the base.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from redrl.tiny import TeacherSpec, build_lock, build_log, ensure_tiny, teacher_root

__all__ = ["TeacherSpec", "ensure_teacher", "grow_depth", "prepare_teacher"]


def grow_depth(model, factor: int):
    """A copy of the Llama-style ``model`` with ``factor`` times its layers that computes the same
    function: layer ``i`` is followed by ``factor - 1`` copies of itself whose ``o_proj`` and
    ``down_proj`` are zero (each such layer adds 0 to the residual stream until trained)."""
    if factor < 1:
        raise ValueError(f"depth factor must be >= 1; got {factor}")
    grown = copy.deepcopy(model)
    layers = []
    for layer in model.model.layers:
        layers.append(copy.deepcopy(layer))
        for _ in range(factor - 1):
            extra = copy.deepcopy(layer)
            with torch.no_grad():
                extra.self_attn.o_proj.weight.zero_()
                extra.mlp.down_proj.weight.zero_()
            layers.append(extra)
    for index, layer in enumerate(layers):
        layer.self_attn.layer_idx = index  # the KV cache is indexed by layer
    grown.model.layers = torch.nn.ModuleList(layers)
    grown.config.num_hidden_layers = len(layers)
    if getattr(grown.config, "layer_types", None) is not None:
        grown.config.layer_types = [grown.config.layer_types[0]] * len(layers)
    return grown


def ensure_teacher(spec: TeacherSpec | None = None, *, assets=None, progress: bool = True) -> Path:
    """The embedded teacher's directory (``from_pretrained`` reads it), built on first use from
    ``assets`` (default: the embedded default's task and base, :func:`redrl.tiny.ensure_tiny`)."""
    spec = spec or TeacherSpec()
    assets = assets or ensure_tiny(progress=progress)
    root = teacher_root(spec, assets)
    if (root / "DONE").exists():
        return root / "model"
    say = build_log(progress)
    with build_lock(root, say):
        if (root / "DONE").exists():
            say(f"reusing {root}")
            return root / "model"
        for leftover in root.parent.glob(root.name + ".building-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        say(f"building the embedded teacher into {root} (a few minutes on 2 CPU cores)")
        staging = root.with_name(root.name + f".building-{os.getpid()}")
        staging.mkdir(parents=True)
        started = time.perf_counter()
        try:
            _build(spec, assets, staging, say, progress)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        seconds = time.perf_counter() - started
        (staging / "DONE").write_text(f"built in {seconds:.0f} s\n")
        staging.rename(root)
        accuracy = json.loads((root / "accuracy.json").read_text())
        levels = " ".join(f"L{level} {100 * value:.0f}" for level, value in accuracy["by_level"].items())
        say(f"built the teacher in {seconds:.0f} s; validation avg@4 {100 * accuracy['accuracy']:.1f}% ({levels})")
    return root / "model"


def prepare_teacher(cfg, *, progress: bool = True) -> None:
    """Build the embedded teacher when ``cfg`` distils it (``teacher.path: tiny-teacher``): the
    commands call this before a run starts, since resolving a path never trains a model."""
    from redrl.methods import METHODS
    from redrl.objectives import LOSSES

    methods = [METHODS[cfg.train.method], *(METHODS[name] for name in METHODS[cfg.train.method].stages)]
    if cfg.teacher.path == "tiny-teacher" and any(LOSSES[m.objective].scores_with_teacher for m in methods):
        ensure_teacher(progress=progress)


def _build(spec: TeacherSpec, assets, staging: Path, say, progress: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from redrl.config import load_config
    from redrl.data.offline import load_problems
    from redrl.evaluate import evaluate_model
    from redrl.learning_rate import with_learning_rate
    from redrl.trainer import train

    base = AutoModelForCausalLM.from_pretrained(assets.base, dtype=torch.float32)
    grown = grow_depth(base, spec.depth_factor)
    grown.save_pretrained(staging / "init")
    AutoTokenizer.from_pretrained(assets.base).save_pretrained(staging / "init")
    say(
        f"teacher: {base.config.num_hidden_layers} -> {grown.config.num_hidden_layers} layers "
        f"({sum(p.numel() for p in grown.parameters()) / 1e6:.2f}M parameters); SFT on the teacher traces, "
        f"{spec.steps} steps of {spec.prompts_per_step} prompts"
    )
    lr = with_learning_rate(load_config("tiny", [], train={"method": "sft"})).optim.lr  # the base's SFT value
    cfg = load_config(
        "tiny",
        [],
        model={"path": str(staging / "init")},
        data={"train": str(assets.train), "val": str(assets.val), "test": str(assets.test)},
        optim={"lr": lr},
        train={
            "method": "sft",
            "steps": spec.steps,
            "prompts_per_step": spec.prompts_per_step,
            "micro_batch_size": spec.prompts_per_step,
            "seed": spec.seed,
            "out": str(staging / "run"),
            "log_every": 0,  # the build says what it does in its own lines
        },
    )
    final = train(cfg, progress=progress and sys.stderr.isatty())  # a bar on a terminal, the build's lines elsewhere
    shutil.copytree(final, staging / "model")
    shutil.rmtree(staging / "init")
    say("teacher: measuring its accuracy on the validation split")
    result = evaluate_model(str(staging / "model"), load_problems(assets.val), cfg, seed=0, progress=progress)
    summary = {
        "split": "val",
        "k": cfg.eval.k,
        "temperature": cfg.eval.temperature,
        "accuracy": result["accuracy"],
        "length": result["length"],
        "by_level": {level: r["accuracy"] for level, r in result["by_level"].items()},
        "spec": asdict(spec),
        "lr": cfg.optim.lr,
    }
    (staging / "accuracy.json").write_text(json.dumps(summary, indent=2))
