"""A run's directory: held by one live run at a time (:func:`hold`), claimed before the run writes
anything, so no old checkpoint is taken for this run's (:func:`claim`), and read back when a run
resumes (the metrics it keeps)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from redrl.errors import RunDirectoryInUse

__all__ = ["LOCK", "claim", "hold", "load_metrics"]

#: The file that names the live run holding a directory: its pid, host, start and command.
LOCK = ".redrl.lock"

#: What a run leaves in its directory: the first four mark a run that took a step.
_RUN_MARKS = ("final", "checkpoint-*", ".tmp-checkpoint-*", "stage-*")
_RUN_FILES = (*_RUN_MARKS, "metrics.jsonl", "metrics-rank*.jsonl", "config.yaml")


def claim(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Make ``out`` this run's: refuse a directory that already holds a run (a checkpoint, a final
    model or logged steps) unless resuming it, or (``overwrite``) remove that run's files first, so
    no old checkpoint is taken for this run's. A run that stopped before its first step holds none."""
    metrics = out / "metrics.jsonl"
    held = sorted({path for pattern in _RUN_MARKS for path in out.glob(pattern)})
    held += [metrics] if metrics.is_file() and metrics.stat().st_size else []
    if held and not resume and not overwrite:
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in held[:4]) + (", ..." if len(held) > 4 else "")
        raise ValueError(
            f"train.out {out} already holds a run ({names}); pass --resume to continue it or --overwrite to replace it"
        )
    if overwrite and not resume:
        for path in sorted({path for pattern in _RUN_FILES for path in out.glob(pattern)}):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    _writable(out)


@contextlib.contextmanager
def hold(out: Path):
    """Hold ``out`` for this run while the block runs: ``OUT/.redrl.lock`` names this process, and a
    second run into the same directory is refused in one line while this one lives. A lock whose
    process is gone (killed, crashed, a machine that restarted) is stale: the next run takes it
    over and says so. A process that already holds ``out`` holds it again (a staged run's stages)."""
    _writable(out)
    path = out / LOCK
    me = _identity()
    owner = _read_lock(path)
    if owner and _same_process(owner, me):
        yield
        return
    for _ in range(3):
        tmp = out / f".redrl.lock.{me['pid']}"
        tmp.write_text(json.dumps(me))
        try:
            os.link(tmp, path)  # atomic, and fails if another run got there first
            break
        except FileExistsError:
            owner = _read_lock(path)
            if owner and _alive(owner):
                started = time.strftime("%Y-%m-%d %H:%M", time.localtime(owner.get("started", 0)))
                raise RunDirectoryInUse(
                    f"train.out {out} is in use by another run (pid {owner.get('pid')} on {owner.get('host')}, "
                    f"started {started}); wait for it to end or choose another --out"
                    + (f" (if it is gone, delete {path})" if owner.get("host") != me["host"] else "")
                ) from None
            if owner:
                print(
                    f"redrl: {out} was held by pid {owner.get('pid')}, which is no longer running; taking it over",
                    file=sys.stderr,
                )
            path.unlink(missing_ok=True)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        raise RunDirectoryInUse(f"train.out {out}: could not take {path}; another run keeps taking it")
    try:
        yield
    finally:
        if _same_process(_read_lock(path), me):
            path.unlink(missing_ok=True)


def _identity() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.time(),
        "process_start": _process_start(os.getpid()),
        "command": " ".join(sys.argv),
    }


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (Linux: clock ticks since boot), so that a pid reused by a new
    process is not taken for the run that held a lock; ``None`` where this cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _read_lock(path: Path) -> dict:
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) and isinstance(body.get("pid"), int) else {}


def _same_process(owner: dict, me: dict) -> bool:
    return owner.get("pid") == me["pid"] and owner.get("host") == me["host"]


def _alive(owner: dict) -> bool:
    """Whether the process named by a lock still runs (on another host: assumed so, it cannot be seen)."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = owner["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    start = owner.get("process_start")
    return start is None or _process_start(pid) in (None, start)


def _writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"train.out {out} is not writable ({error.strerror or error})") from None


def load_metrics(path: Path, until: int) -> list[str]:
    """The lines of a metrics file up to and including step ``until`` (a resumed run redoes the rest)."""
    if not path.is_file():
        return []
    return [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= until]
