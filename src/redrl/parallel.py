"""Several processes through ``accelerate``: who I am, what I train on, and what all of us agree on.

One process per device (``accelerate launch`` or ``torchrun``). Every process draws the same
prompts for a step and takes its contiguous share of them, so a group — its ``G`` rollouts and its
teacher row — never crosses processes and group advantages stay exact. Everything that is logged or
feeds the entropy regulator is summed over processes first, so every rank computes the same ``w``.
Only the main process writes logs and checkpoints.

A single process without a launcher goes through the same code with ``world = 1``: nothing is
wrapped and every reduction is the identity.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

__all__ = ["Parallel", "close_process_group"]


_close_at_exit: list[bool] = []


def _ours() -> bool:
    """Whether the default process group is the one a multi-process launch of redrl made. An
    in-process vLLM engine starts a one-process group of its own and closes it (with its subgroups)
    at its shutdown: closing it first makes that shutdown fail."""
    return bool(_close_at_exit) and torch.distributed.is_available() and torch.distributed.is_initialized()


def _destroy_process_group() -> None:
    """Close the process group while the interpreter is still whole: left to interpreter shutdown,
    gloo's worker threads can abort the process ("terminate called without an active exception")
    after training has finished."""
    if _ours():
        torch.distributed.destroy_process_group()


def close_process_group() -> None:
    """End a multi-process run that succeeded: wait until every process is done (no collective or
    asynchronous gloo work left in flight), then close the group, as PyTorch advises at the end of
    ``main``. Only on success: after a failure a barrier could wait for a process that is gone (the
    exit handler then closes the group without one). A single process has nothing to close."""
    if _ours():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


@dataclass
class Parallel:
    """The process group as the trainer sees it.

    Attributes:
        accelerator: the ``accelerate.Accelerator`` (``None`` only in unit tests).
        rank, world: this process's index and the number of processes.
        device: the device this process computes on.
    """

    accelerator: object | None
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def create(cls, device: str = "auto", *, log_with: str | None = None, project_dir: str | None = None) -> Parallel:
        """The accelerator of this launch. Without CUDA (or with ``device='cpu'``) processes talk over
        gloo on the CPU; a single process keeps ``device`` as configured (``cuda:1`` included).
        ``log_with`` names an accelerate tracker (``tensorboard``, ``wandb``, ``trackio``) writing under
        ``project_dir``."""
        from accelerate import Accelerator

        from redrl.modeling import resolve_device

        accelerator = Accelerator(
            cpu=device == "cpu" or not torch.cuda.is_available(), log_with=log_with, project_dir=project_dir
        )
        world = accelerator.num_processes
        if world > 1 and not _close_at_exit:  # once per process, however many runs it starts
            import atexit

            _close_at_exit.append(True)
            atexit.register(_destroy_process_group)
        return cls(
            accelerator, accelerator.process_index, world, accelerator.device if world > 1 else resolve_device(device)
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def share(self, items: list) -> list:
        """This process's contiguous share of ``items`` (the same list on every process)."""
        if len(items) % self.world:
            raise ValueError(
                f"{len(items)} prompts cannot be split evenly over {self.world} processes; "
                f"make train.prompts_per_step a multiple of {self.world}"
            )
        size = len(items) // self.world
        return items[self.rank * size : (self.rank + 1) * size]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over processes (float64, so counts and sums stay exact)."""
        if not self.distributed:
            return [float(v) for v in values]
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(tensor, reduction="sum").tolist()

    def max(self, value: float) -> float:
        if not self.distributed:
            return float(value)
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return float(tensor.item())

    def gather(self, items: list) -> list:
        """Every process's list, concatenated in rank order (picklable items)."""
        if not self.distributed:
            return list(items)
        from accelerate.utils import gather_object

        return list(gather_object(list(items)))

    def prepare(self, module: torch.nn.Module, optimizer, micro_batch_size: int = 1):
        """Wrap for DDP / FSDP / DeepSpeed as the launch configured; untouched in one process.
        (DeepSpeed needs a micro-batch size and gets no data loader to read it from.)"""
        if not self.distributed:
            return module, optimizer
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if plugin is not None and plugin.deepspeed_config.get("train_micro_batch_size_per_gpu") in (None, "auto"):
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch_size
        return self.accelerator.prepare(module, optimizer)

    def unwrap(self, module: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(module) if self.distributed else module

    def backward(self, loss: torch.Tensor) -> None:
        if self.distributed:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    @contextlib.contextmanager
    def accumulate(self, module: torch.nn.Module, last: bool):
        """A micro-batch's backward: gradients are synchronised (DDP all-reduce, DeepSpeed's step)
        only after the step's last one; the others accumulate locally."""
        if not self.distributed:
            yield
            return
        accelerator = self.accelerator
        previous = accelerator.sync_gradients
        accelerator.sync_gradients = last  # DeepSpeed steps its engine on the boundary only
        try:
            with contextlib.nullcontext() if last else accelerator.no_sync(module):
                yield
        finally:
            accelerator.sync_gradients = previous

    def clip_grad_norm(self, module: torch.nn.Module, parameters: list, max_norm: float) -> float:
        """The global gradient norm after clipping (``max_norm = 0``: measured, not clipped)."""
        limit = max_norm if max_norm > 0 else float("inf")
        if self.distributed:
            from accelerate.utils import DistributedType

            if self.accelerator.distributed_type == DistributedType.FSDP:
                parameters = list(module.parameters())  # FSDP clips over all ranks' shards only for the whole list
            norm = self.accelerator.clip_grad_norm_(parameters, limit)
        else:
            norm = torch.nn.utils.clip_grad_norm_(parameters, limit)
        return float(norm) if norm is not None else float("nan")

    def full_parameters(self, module: torch.nn.Module):
        """Gather sharded parameters (FSDP, DeepSpeed ZeRO-3) for generation with the whole model;
        a no-op when every process holds them all."""
        if not self.distributed:
            return contextlib.nullcontext()
        from accelerate.utils import DistributedType

        kind = self.accelerator.distributed_type
        if kind == DistributedType.FSDP:
            from torch.distributed.fsdp import FullyShardedDataParallel

            return FullyShardedDataParallel.summon_full_params(module, writeback=False, recurse=True)
        if kind == DistributedType.DEEPSPEED and self.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
        return contextlib.nullcontext()

    @property
    def sharded(self) -> bool:
        """Parameters or optimizer state split over processes (FSDP, DeepSpeed)."""
        if not self.distributed:
            return False
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)

    @property
    def zero_stage(self) -> int:
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None) if self.accelerator else None
        return int(plugin.zero_stage) if plugin is not None else 0

    def state_dict(self, module: torch.nn.Module) -> dict:
        """The full state dict of a prepared module (a collective under FSDP / ZeRO-3: call on every rank)."""
        if not self.distributed:
            return module.state_dict()
        return self.accelerator.get_state_dict(module)

    def wait(self) -> None:
        if self.distributed:
            self.accelerator.wait_for_everyone()
