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

Here the worker is redrl's fast engine in a second process on the same machine (on CPU the cores
are split between the two). On GPUs the same protocol fits a vLLM server on its own device, the
weights sent over NCCL instead of a queue (docs/rollouts.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

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
        return {
            "step": self.step,
            "prompts": self.prompts,
            "budget": self.budget,
            "rollouts": self.rollouts,
            "logprobs": self.logprobs,
            "version": self.version,
            "seconds": self.seconds,
        }


def _worker(requests, results, config, state, settings: dict) -> None:
    """The worker's loop: load weights, answer generation requests in order, stop on ``None``."""
    torch.set_num_threads(settings["threads"])
    from transformers import AutoModelForCausalLM

    from redrl.fast_engine import FastGenerator

    model = AutoModelForCausalLM.from_config(config).eval()
    model.load_state_dict(state)
    version = settings["version"]
    engine = FastGenerator(model, settings["eos_id"], settings["pad_id"], settings["batch_size"])
    while True:
        message = requests.get()
        if message is None:
            return
        if message[0] == "weights":
            version, state = message[1], message[2]
            model.load_state_dict(state)
            continue
        _, step, prompts, budget = message
        started = time.perf_counter()
        torch.manual_seed(settings["seed"] * 1_000_003 + step)
        rollouts, logprobs = engine.generate_with_logprobs(
            prompts, settings["group_size"], temperature=settings["temperature"], max_new_tokens=budget
        )
        results.put((step, version, rollouts, logprobs, time.perf_counter() - started))


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's full weights (adapters merged) that the worker can load."""
    from redrl.rollout import _full_weights

    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in _full_weights(model)}


class AsyncRollouts:
    """The trainer's side of the rollout worker (see the module's docstring).

    Args:
        model: the trained model (its config and weights start the worker).
        eos_id, pad_id: token ids.
        staleness: ``k``.
        group_size, temperature, seed: as the run's.
        version: the step the model's weights are at (0, or a resumed checkpoint's step).
        batch_size: the engine's rows at once.
        threads: the worker's CPU threads.
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
    ):
        import torch.multiprocessing as mp

        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        context = mp.get_context("spawn")
        self.requests, self.results = context.Queue(), context.Queue()
        settings = dict(
            eos_id=eos_id,
            pad_id=pad_id,
            group_size=group_size,
            temperature=temperature,
            seed=seed,
            version=version,
            batch_size=batch_size,
            threads=threads,
        )
        self.process = context.Process(
            target=_worker, args=(self.requests, self.results, inner.config, _weights(model), settings), daemon=True
        )
        self.process.start()
        self.staleness = staleness
        self.flight: dict[int, InFlight] = {}

    def submit(self, step: int, prompts: list[int], prompt_ids: list[list[int]], budget: int) -> None:
        """Ask for step ``step``'s rollouts of ``prompts`` (record indices; ``prompt_ids`` their tokens)."""
        self.flight[step] = InFlight(step, list(prompts), budget)
        self.requests.put(("generate", step, prompt_ids, budget))

    def push_weights(self, model: torch.nn.Module, version: int) -> None:
        """The weights after optimizer step ``version``, for every request submitted after this."""
        self.requests.put(("weights", version, _weights(model)))

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
        if self.process.is_alive():
            self.requests.put(None)
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
