"""Checkpoints that survive crashes and load without pickle.

A checkpoint ``OUT/checkpoint-N`` is written into a temporary directory beside it and renamed into
place only when complete, so a crash leaves either the whole checkpoint or a ``.tmp-*`` directory
that is ignored (and removed by the next save). Its ``manifest.json``, written last, lists every
file with its size and SHA-256; a checkpoint whose files do not match is reported in one line and
skipped for the one before it.

Contents: the model in Hugging Face format (safetensors; under LoRA the adapter), the tokenizer,
``optimizer.safetensors`` (every optimizer tensor), ``rng-rankR.safetensors`` (each process's torch
generator states), and ``trainer_state.json`` (the step, optimizer hyper-parameters, scheduler,
entropy regulator, prompt sampler, ReLIFT buffer, loss scaler, Python and NumPy generator states,
the config). Nothing is unpickled on load: safetensors and JSON only.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from redrl.errors import CheckpointError

__all__ = [
    "CheckpointError",
    "find_latest",
    "list_checkpoints",
    "load_auxiliary",
    "load_rng",
    "load_training_state",
    "rotate",
    "save_checkpoint",
    "save_rng",
    "save_training_state",
    "verify",
    "write_manifest",
]

MANIFEST = "manifest.json"
STATE = "trainer_state.json"
_NAME = re.compile(r"checkpoint-(\d+)$")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """List every file of ``folder`` with its size and hash, then make it durable (fsync)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (folder / MANIFEST).write_text(json.dumps({"files": manifest}, indent=1))
    for path in [*files, folder / MANIFEST]:
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def verify(folder: Path) -> str | None:
    """``None`` when ``folder`` is a complete checkpoint, else what is wrong with it (one line)."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (the save did not finish)"
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError) as error:
        return f"unreadable manifest ({error})"
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {entry['bytes']}"
        if _sha256(path) != entry["sha256"]:
            return f"{name} does not match its hash"
    return None


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``checkpoint-N`` in ``out``, newest first (complete or not)."""
    found = []
    for path in Path(out).glob("checkpoint-*"):
        match = _NAME.search(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def find_latest(out: Path, warn=print) -> Path | None:
    """The newest complete checkpoint in ``out``; broken newer ones are reported through ``warn``."""
    for _step, path in list_checkpoints(out):
        problem = verify(path)
        if problem is None:
            return path
        warn(f"redrl: skipping {path.name}: {problem}")
    return None


def rotate(out: Path, keep_last: int) -> None:
    """Delete all but the ``keep_last`` newest complete checkpoints (0: keep all). Broken ones older
    than the newest complete one go too; the newest complete checkpoint is never deleted."""
    if keep_last <= 0:
        return
    complete = 0
    for _step, path in list_checkpoints(out):
        if verify(path) is None:
            complete += 1
            if complete > keep_last:
                shutil.rmtree(path, ignore_errors=True)
        elif complete:  # broken, and a newer complete checkpoint exists
            shutil.rmtree(path, ignore_errors=True)


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer ``state_dict`` as tensors (for safetensors) and JSON (everything else)."""
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_rng(folder: Path, rank: int) -> None:
    """This process's torch generators (CPU and every CUDA device) into ``rng-rankR.safetensors``."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{index}"] = state
    save_file(tensors, str(folder / f"rng-rank{rank}.safetensors"))


def load_rng(folder: Path, rank: int) -> None:
    path = folder / f"rng-rank{rank}.safetensors"
    if not path.is_file():
        raise CheckpointError(
            f"{folder.name} has no generator state for process {rank} (was it written by fewer processes?)"
        )
    tensors = load_file(str(path))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda{i}"] for i in range(len(tensors) - 1) if f"cuda{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def save_training_state(
    folder: Path,
    *,
    step: int,
    optimizer,
    scheduler,
    regulator,
    sampler,
    state: dict,
    config: dict,
    save_optimizer: bool = True,
) -> None:
    """The trainer's state beside the model (main process): optimizer tensors in safetensors,
    the rest in JSON, with Python's and NumPy's generator states."""
    meta = None
    if save_optimizer:
        tensors, meta = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(folder / "optimizer.safetensors"))
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    body = {
        "step": step,
        "optimizer": meta,
        "scheduler": scheduler.state_dict(),
        "regulator": regulator.state_dict(),
        "sampler": sampler.state_dict(),
        "rng": {
            "python": [python_state[0], list(python_state[1]), python_state[2]],
            "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        },
        "state": state,
        "config": config,
    }
    (folder / STATE).write_text(
        json.dumps(body, indent=1)
    )  # NaN (an unset regulator entropy) round-trips in Python's JSON


def load_training_state(folder: Path, *, optimizer, scheduler, regulator, sampler) -> dict:
    """Restore what :func:`save_training_state` wrote; returns the JSON body (``step``, ``state``, ...)."""
    body = json.loads((folder / STATE).read_text())
    if body["optimizer"] is not None:
        optimizer.load_state_dict(
            _unflatten_optimizer(load_file(str(folder / "optimizer.safetensors")), body["optimizer"])
        )
    scheduler.load_state_dict(body["scheduler"])
    regulator.load_state_dict(body["regulator"])
    sampler.load_state_dict(body["sampler"])
    version, internal, gauss = body["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = body["rng"]["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    return body


def load_auxiliary(folder: Path, name: str) -> dict:
    """The state an auxiliary model saved with a checkpoint (``{}`` when it saved none)."""
    path = folder / f"auxiliary-{name}.pt"
    return torch.load(path, weights_only=True) if path.is_file() else {}


def _same_modes(folder: Path) -> None:
    """Give every file the mode a new file gets under this umask (some writers use 0600 temporary files)."""
    umask = os.umask(0)
    os.umask(umask)
    for file in folder.rglob("*"):
        if file.is_file():
            file.chmod(0o666 & ~umask)


def save_checkpoint(
    path: Path,
    par,
    scorer,
    tokenizer,
    optimizer,
    scheduler,
    regulator,
    sampler,
    step: int,
    *,
    config: dict,
    keep_last: int = 0,
    state: dict | None = None,
    auxiliary: dict[str, dict] | None = None,
    model_card: str | None = None,
) -> None:
    """Write a complete checkpoint to ``path`` or leave the previous ones untouched (see above).

    Call it on every process: sharded weights (FSDP, DeepSpeed) are gathered first and every process
    writes its generator state; the main process writes the rest into a temporary directory, lists
    it in the manifest and renames it into place. Under LoRA the model is the adapter and the base
    model's config. A sharded optimizer's state is not saved (those runs resume without it).
    ``config`` is the run's config as a dict; ``keep_last`` rotates ``checkpoint-N`` folders (0: keep
    all); ``state`` holds the loop's own state (strategy, loss scaler, skip counters).

    With ``model_card`` (the text of its ``README.md``) the folder is a model to ship, not a point to
    resume from: weights, config, generation config, tokenizer and chat template, and the card; no
    optimizer, generator or trainer state (those stay in ``checkpoint-N``)."""
    lean = model_card is not None
    weights = par.state_dict(scorer) if par.sharded else None  # a collective: every rank takes part
    tmp = path.parent / f".tmp-{path.name}"
    failed = None
    if par.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    par.wait()
    try:
        if not lean:
            save_rng(tmp, par.rank)
    except Exception as error:  # noqa: BLE001 - OSError, or safetensors' own error on a full disk
        failed = error
    par.wait()  # every process's part is in place before the manifest lists it
    try:
        if par.is_main and failed is None:
            model = par.unwrap(scorer).model
            if weights is not None:
                model.save_pretrained(
                    tmp, state_dict={key.removeprefix("model."): value for key, value in weights.items()}
                )
            else:
                model.save_pretrained(tmp)
            if hasattr(model, "peft_config"):
                model.get_base_model().config.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if lean:
                (tmp / "README.md").write_text(model_card)
            else:
                save_training_state(
                    tmp,
                    step=step,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    regulator=regulator,
                    sampler=sampler,
                    state={**(state or {}), "processes": par.world},
                    config=config,
                    save_optimizer=not par.sharded,
                )
                for name, body in (auxiliary or {}).items():  # models beside the policy (redrl.auxiliary)
                    if body:
                        torch.save(body, tmp / f"auxiliary-{name}.pt")
            _same_modes(tmp)
            write_manifest(tmp)
    except Exception as error:  # noqa: BLE001 - as above
        failed = error
    if par.distributed and par.max(1.0 if failed else 0.0) > 0 and failed is None:
        failed = OSError("another process could not write its part")
    if failed is not None:
        if par.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = next((p.name for _, p in list_checkpoints(path.parent) if p != path), None)
        kept = f"the previous checkpoint ({previous}) is intact" if previous else "there is no earlier checkpoint"
        raise CheckpointError(
            f"could not write {path}: {getattr(failed, 'strerror', None) or failed}; {kept}"
        ) from failed
    if par.is_main:
        if path.exists():  # an older save under this name (a rerun's final, a step redone after resuming)
            shutil.rmtree(path)
        os.replace(tmp, path)
        if path.name.startswith("checkpoint-"):
            rotate(path.parent, keep_last)
    par.wait()  # nobody reads the checkpoint before it is complete
