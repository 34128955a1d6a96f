"""Asynchronous rollouts: a worker process samples the next steps' groups while the trainer updates.

With ``rollout.async_staleness: k`` the training loop keeps ``k + 1`` steps of rollouts in flight.
At the start it sends the worker the weights and the prompts of steps ``1 .. k+1``; after each
optimizer step ``t`` it sends the new weights (version ``t``) and the prompts of step ``t + k + 1``.
The worker handles its messages in order, so step ``t``'s rollouts always come from the weights of
step ``max(0, t - 1 - k)``: at most ``k`` steps old, whatever the timing (``staleness`` is logged
per step). Each step's sampling is seeded by ``(train.seed, step)``, so a run is reproducible and a
resumed run repeats the uninterrupted one: a checkpoint waits for the steps in flight and saves
their rollouts (:meth:`AsyncRollouts.state_dict`).

The worker reports the log-probability of every token it sampled (the behaviour policy ``μ``); the
loss's importance ratio uses them (truncated at ``loss.is_cap``, or the decoupled objective with
``loss.decoupled``; :func:`redrl.objectives.red_loss`).

The worker samples with redrl's fast engine, or with vLLM under ``rollout.engine: vllm``, in a
second process: on CPU the cores are split between the two; on GPUs ``rollout.worker_devices``
gives the worker a device of its own (docs/rollouts.md).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from redrl.modeling import merged_weights

__all__ = ["AsyncRollouts", "InFlight"]


@dataclass
class InFlight:
    """One step's request and, once the worker answered, its rollouts."""

    step: int
    prompts: list[int]  # record indices
    budget: int
    rollouts: list[list[int]] | None = None
    logprobs: list[list[float]] | None = None
    version: int = -1  # the weights' step that sampled them
    seconds: float = math.nan

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _start_engine(config, state: dict, settings: dict):
    """The worker's engine, holding ``state``: ``(engine, load)`` where ``load(weights)`` takes
    ``(name, tensor)`` pairs in the Hugging Face checkpoint's names (names left out keep their values)."""
    import os

    if settings.get("devices") is not None:  # before anything in this process touches CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = settings["devices"]
    torch.set_num_threads(settings["threads"])
    from redrl.rollout import standalone_generator

    if settings.get("vllm") is not None and settings["cores"]:  # vLLM's CPU backend binds its threads
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, settings["cores"])))
    engine = standalone_generator(
        config,
        state,
        settings["eos_id"],
        settings["pad_id"],
        batch_size=settings["batch_size"],
        vllm=settings.get("vllm"),
    )
    return engine, engine.load_weights


def _worker(requests, results, config, state, settings: dict) -> None:
    """The worker's loop: load weights, answer generation requests in order, stop on ``None``."""
    engine, load = _start_engine(config, state, settings)
    del state
    version = settings["version"]
    while True:
        message = requests.get()
        if message is None:
            return
        if message[0] == "weights":
            version = message[1]
            load(list(message[2].items()))
            continue
        _, step, prompts, budget = message
        started = time.perf_counter()
        torch.manual_seed(settings["seed"] * 1_000_003 + step)
        rollouts, logprobs = engine.generate_with_logprobs(
            prompts, settings["group_size"], temperature=settings["temperature"], max_new_tokens=budget
        )
        results.put((step, version, rollouts, logprobs, time.perf_counter() - started))


def _weights(model: torch.nn.Module, *, adapted_only: bool = False) -> dict[str, torch.Tensor]:
    """A copy of the model's weights (adapters merged; under LoRA ``adapted_only`` keeps the blocks
    the adapters change) that the worker can load."""
    return {
        name: tensor.detach().to("cpu", copy=True) for name, tensor in merged_weights(model, adapted_only=adapted_only)
    }


class AsyncRollouts:
    """The trainer's side of the rollout worker (see the module's docstring).

    Args:
        model: the trained model (its config and weights start the worker).
        eos_id, pad_id: token ids.
        staleness: ``k``.
        group_size, temperature, seed: as the run's.
        version: the step the model's weights are at (0, or a resumed checkpoint's step).
        batch_size: the engine's rows at once.
        threads: the worker's CPU threads (on a CPU, the last ``threads`` cores this process may use).
        vllm: :meth:`redrl.rollout.VLLMGenerator.create`'s settings: the worker samples with vLLM
            (else with redrl's fast engine).
        devices: the worker's ``CUDA_VISIBLE_DEVICES`` (``None``: the trainer's).
        threads_before: the trainer's torch threads before it gave the worker its share, set
            again by :meth:`close` (``None``: left as they are).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        eos_id: int,
        pad_id: int,
        *,
        staleness: int,
        group_size: int,
        temperature: float,
        seed: int,
        version: int = 0,
        batch_size: int = 256,
        threads: int = 1,
        vllm: dict | None = None,
        devices: str | None = None,
        threads_before: int | None = None,
    ):
        import os

        self.settings = dict(
            eos_id=eos_id,
            pad_id=pad_id,
            group_size=group_size,
            temperature=temperature,
            seed=seed,
            version=version,
            batch_size=batch_size,
            threads=threads,
            vllm=vllm,
            devices=devices,
            cores=sorted(os.sched_getaffinity(0))[-threads:] if hasattr(os, "sched_getaffinity") else [],
        )
        self.model, self.threads_before = model, threads_before
        # Started by the first request: a resumed run whose last steps were all in flight at the
        # checkpoint starts none.
        self.process = None
        self.staleness = staleness
        self.flight: dict[int, InFlight] = {}

    def _start(self) -> None:
        import torch.multiprocessing as mp

        context = mp.get_context("spawn")
        self.requests, self.results = context.Queue(), context.Queue()
        inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.process = context.Process(
            target=_worker,
            args=(self.requests, self.results, inner.config, _weights(self.model), self.settings),
            daemon=True,
        )
        self.process.start()

    def submit(self, step: int, prompts: list[int], prompt_ids: list[list[int]], budget: int) -> None:
        """Ask for step ``step``'s rollouts of ``prompts`` (record indices; ``prompt_ids`` their tokens)."""
        if self.process is None:
            self._start()
        self.flight[step] = InFlight(step, list(prompts), budget)
        self.requests.put(("generate", step, prompt_ids, budget))

    def push_weights(self, model: torch.nn.Module, version: int) -> None:
        """The weights after optimizer step ``version``, for every request submitted after this."""
        if self.process is None:  # the worker, once started, begins from the model as it is then
            self.model, self.settings["version"] = model, version
            return
        self.requests.put(("weights", version, _weights(model, adapted_only=True)))

    def _receive(self) -> None:
        while True:
            try:
                step, version, rollouts, logprobs, seconds = self.results.get(timeout=5)
                break
            except Exception:  # queue.Empty: check that the worker still lives
                if not self.process.is_alive():
                    raise RuntimeError(
                        f"the rollout worker stopped (exit code {self.process.exitcode}); see its error above"
                    ) from None
        entry = self.flight[step]
        entry.rollouts, entry.logprobs, entry.version, entry.seconds = rollouts, logprobs, version, seconds

    def take(self, step: int) -> InFlight:
        """Step ``step``'s rollouts, waiting for the worker if they are not ready."""
        while self.flight[step].rollouts is None:
            self._receive()
        return self.flight.pop(step)

    def state_dict(self) -> dict:
        """Every step in flight, with its rollouts (waits for them): what a resumed run takes instead."""
        while any(entry.rollouts is None for entry in self.flight.values()):
            self._receive()
        return {"async_in_flight": [entry.to_json() for _, entry in sorted(self.flight.items())]}

    def load_state_dict(self, state: dict) -> None:
        self.flight = {
            int(entry["step"]): InFlight(**{**entry, "step": int(entry["step"])})
            for entry in state.get("async_in_flight", [])
        }

    def close(self) -> None:
        if self.threads_before is not None:  # the cores are the trainer's process's again
            torch.set_num_threads(self.threads_before)
        if self.process is None:
            return
        if self.process.is_alive():
            self.requests.put(None)
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
