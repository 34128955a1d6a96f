"""The seams later methods build on, each exercised by a test implementation that really changes
what it governs, with values checked by hand: prompt conditioning, an auxiliary model trained
beside the policy (its state saved and resumed with the run), per-token advantages from the batch
into the loss, several optimizer updates per rollout batch, and the advantage-estimator registry."""

import dataclasses
import json
import math
import shutil
import zlib

import pytest
import torch

from redrl.batch import Batch, assemble_batch
from redrl.config import load_config
from redrl.methods import METHODS
from redrl.modeling import ScorerOutputs
from redrl.objectives import ADVANTAGE_ESTIMATORS, AdvantageEstimator, LossSettings, group_advantages
from redrl.regulator import EntropyRegulator
from redrl.rewards import GRADERS
from redrl.step import StepSettings, optimization_step
from redrl.trainer import train


def _quarter_right(response: str, answer: str) -> float:
    """A quarter of the responses are right, fixed by their text (the test base gets every answer wrong)."""
    return float(zlib.crc32(response.encode()) % 4 == 0)


def _cfg(tiny_assets, out, method: str, **train):
    return load_config(
        "tiny",
        model={"path": str(tiny_assets.base)},
        optim={"lr": 2e-4},
        data={"train": str(tiny_assets.train), "test": str(tiny_assets.test), "grader": "quarter"},
        rollout={"group_size": 3, "max_new_tokens": 24},
        train={"method": method, "steps": 3, "prompts_per_step": 2, "seed": 3, "out": str(out), **train},
    )


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------
# (a) prompt conditioning: sample after the answer, score under the question alone


class AnswerHint:
    """Samples after the prompt followed by the reference answer's tokens; the loss scores the
    samples under the prompt alone (what an answer-conditioned posterior does)."""

    needs_recomputed_logp = True

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, []

    def hint(self, record: dict) -> list[int]:
        return self.tokenizer(str(record["answer"]), add_special_tokens=False).input_ids

    def sample_prompt(self, record: dict, prompt: list[int]) -> list[int]:
        self.calls.append((list(prompt), self.hint(record)))
        return prompt + self.hint(record)

    def train_prompt(self, record: dict, prompt: list[int]) -> list[int]:
        return prompt


def test_a_method_samples_after_one_prompt_and_its_loss_scores_under_another(tiny_assets, tmp_path, monkeypatch):
    import redrl.conditioning
    import redrl.run_setup
    import redrl.trainer

    made, sampled, batches = [], [], []
    monkeypatch.setitem(
        redrl.conditioning.CONDITIONINGS, "answer_hint", lambda tok, cfg: made.append(AnswerHint(tok)) or made[-1]
    )
    monkeypatch.setitem(
        METHODS, "grpo_hint", dataclasses.replace(METHODS["grpo"], name="grpo_hint", conditioning="answer_hint")
    )
    monkeypatch.setitem(GRADERS, "quarter", _quarter_right)
    real_build, real_step = redrl.run_setup.build_generator, redrl.trainer.optimization_step

    def recording_generator(*args, **kwargs):
        engine = real_build(*args, **kwargs)
        generate = engine.generate

        def record(prompts, n=1, **settings):
            rows = generate(prompts, n, **settings)
            sampled.append(([list(p) for p in prompts], rows))
            return rows

        engine.generate = record
        return engine

    monkeypatch.setattr(redrl.run_setup, "build_generator", recording_generator)
    monkeypatch.setattr(
        redrl.trainer,
        "optimization_step",
        lambda scorer, opt, sch, reg, batch, *a, **k: (
            batches.append(batch) or real_step(scorer, opt, sch, reg, batch, *a, **k)
        ),
    )
    train(_cfg(tiny_assets, tmp_path / "hint", "grpo_hint", steps=1), progress=False)

    (prompts, rows), batch, calls = sampled[0], batches[0], made[0].calls
    # every record's sampling prompt once when the engine is sized for the longest, then the step's two
    assert len(prompts) == 2 and len(calls) == 40 + 2
    calls = calls[-2:]
    for g, (plain, hint) in enumerate(calls):
        assert len(hint) >= 1 and prompts[g] == plain + hint  # the engine saw the answer after the prompt
        for j in range(3):  # ... and the loss scores each sample after the prompt alone
            ids = batch.input_ids[3 * g + j].tolist()
            response = rows[3 * g + j]
            assert ids[: len(plain) + len(response)] == plain + response
            assert batch.response_mask[3 * g + j, len(plain) : len(plain) + len(response)].all()


# ------------------------------------------------------------------------------------------------
# (b) + (c) an auxiliary model trained beside the policy, giving per-token advantages


class MeanRewardBaseline:
    """A one-number critic ``b``: every response token's advantage is ``r - b`` (``Batch.token_advantages``);
    after the policy's step it takes one SGD step on ``(b - mean r)²`` at a learning rate halved each step."""

    name = "baseline"

    def __init__(self, context):
        self.value = torch.zeros((), requires_grad=True)
        self.optimizer = torch.optim.SGD([self.value], lr=0.5)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 0.5**step)

    def scorer(self, module):
        return module

    def attach(self, batch: Batch, chosen: list[int]) -> Batch:
        advantages = (batch.rewards - self.value.detach()).unsqueeze(-1) * batch.loss_mask()
        return dataclasses.replace(batch, token_advantages=advantages)

    def update(self, batch: Batch, stats: dict) -> dict:
        loss = (self.value - batch.rewards.mean()) ** 2
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        return {"baseline": float(self.value)}

    def state_dict(self) -> dict:
        return {
            "value": self.value.detach().clone(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state:
            with torch.no_grad():
                self.value.copy_(state["value"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])


def test_an_auxiliary_model_trains_beside_the_policy_its_advantages_reach_the_loss_and_it_resumes(
    tiny_assets, tmp_path, monkeypatch
):
    import redrl.auxiliary

    monkeypatch.setitem(redrl.auxiliary.AUXILIARIES, "baseline", MeanRewardBaseline)
    monkeypatch.setitem(
        METHODS, "grpo_baseline", dataclasses.replace(METHODS["grpo"], name="grpo_baseline", auxiliaries=("baseline",))
    )
    monkeypatch.setitem(GRADERS, "quarter", _quarter_right)
    out = tmp_path / "baseline"
    train(_cfg(tiny_assets, out, "grpo_baseline", save_every=1, keep_last=5), progress=False)
    steps = _metrics(out)
    r = [s["reward"] for s in steps]  # the mean reward of each step's 6 rollouts
    assert len(set(r)) > 1 or r[0] > 0  # something to learn from
    # By hand: b0 = 0; b_k = b_{k-1} - lr_k · 2 (b_{k-1} - r_k) with lr_k = 0.5, 0.25, 0.125.
    b1 = 0 - 0.5 * 2 * (0 - r[0])
    b2 = b1 - 0.25 * 2 * (b1 - r[1])
    b3 = b2 - 0.125 * 2 * (b2 - r[2])
    assert [s["baseline"] for s in steps] == pytest.approx([b1, b2, b3], abs=1e-6)
    # The loss sees r - b on every token: at ratio 1 the sequence-mean of token-means is -(mean r - b).
    assert [s["loss"] for s in steps] == pytest.approx([-(r[0] - 0), -(r[1] - b1), -(r[2] - b2)], abs=1e-5)
    # Its state is saved with each checkpoint, and a run resumed from step 2 repeats step 3 exactly.
    assert (out / "checkpoint-2" / "auxiliary-baseline.pt").is_file()
    again = tmp_path / "again"
    shutil.copytree(out, again)
    shutil.rmtree(again / "final")
    shutil.rmtree(again / "checkpoint-3")
    cfg = _cfg(tiny_assets, again, "grpo_baseline", save_every=1, keep_last=5, resume=True)
    train(cfg, progress=False)
    resumed = _metrics(again)[-1]
    assert (resumed["step"], resumed["baseline"], resumed["loss"]) == (3, steps[2]["baseline"], steps[2]["loss"])


# ------------------------------------------------------------------------------------------------
# (d) several optimizer updates on one rollout batch


class OneNumberPolicy(torch.nn.Module):
    """A "policy" whose every response token has log-probability θ (entropy 0)."""

    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask, loss_mask):
        logp = self.theta * loss_mask.to(torch.float32)
        return ScorerOutputs(logp, torch.zeros_like(logp))


def test_several_updates_per_rollout_batch_take_the_ratio_against_the_rollout_policy():
    scorer = OneNumberPolicy()
    optimizer = torch.optim.SGD(scorer.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    batch = Batch(
        input_ids=torch.tensor([[5, 6]]),
        attention_mask=torch.ones(1, 2, dtype=torch.long),
        response_mask=torch.tensor([[False, True]]),
        rewards=torch.tensor([1.0]),
        advantages=torch.tensor([1.0]),
        is_offline=torch.tensor([False]),
        group_accuracy=torch.tensor([0.5]),
    )
    stats = optimization_step(
        scorer,
        optimizer,
        schedule,
        EntropyRegulator(max_weight=4),
        batch,
        METHODS["grpo"],
        StepSettings(max_grad_norm=100.0, updates=3),
        LossSettings(aggregation="token-mean"),
    )
    # By hand, A = 1, clip 1 ± 0.2, loss -min(ρA, clip(ρ)A), ρ = exp(θ - θ_rollout), θ_rollout = 0:
    # update 1: ρ = 1, dloss/dθ = -1, θ = 0.1; update 2: ρ = e^0.1 = 1.105 < 1.2, θ = 0.1 + 0.1·e^0.1;
    # update 3: ρ = e^0.2105 = 1.234 > 1.2, the clipped branch is taken: no gradient, θ stays.
    assert float(scorer.theta) == pytest.approx(0.1 + 0.1 * math.exp(0.1), abs=1e-7)
    assert stats["updates"] == 3 and stats["loss"] == pytest.approx(-1.2, abs=1e-6)  # the last update's loss
    assert schedule.last_epoch == 1  # the schedule steps once per rollout batch


# ------------------------------------------------------------------------------------------------
# (e) the advantage-estimator registry


def _discounted(x):
    """Each response token gets ``r · 0.5^(tokens after it)``: the reward credited back to earlier tokens."""
    after = x.response_mask.flip(-1).cumsum(-1).flip(-1) - 1  # response tokens after t
    return torch.where(x.response_mask, x.rewards.unsqueeze(-1) * 0.5 ** after.clamp(min=0), torch.zeros(()))


def test_a_registered_estimator_gives_per_token_advantages_and_the_group_one_is_grpos(monkeypatch):
    monkeypatch.setitem(ADVANTAGE_ESTIMATORS, "discounted", AdvantageEstimator(_discounted))
    method = dataclasses.replace(METHODS["grpo"], advantage="discounted")
    batch = assemble_batch(
        [[1], [1]],
        [[7, 8, 9], [7, 2], [3], [4, 5]],
        [1.0, 0.0, 1.0, 1.0],
        [[0], [0]],
        [None, None],
        group_size=2,
        method=method,
        pad_id=0,
    )
    # Target grid: the response of row 0 ([7, 8, 9] after a 1-token prompt) sits at positions 0, 1, 2.
    assert batch.token_advantages[0].tolist() == [0.25, 0.5, 1.0]
    assert batch.token_advantages[1].tolist() == [0.0, 0.0, 0.0]
    assert batch.token_advantages[3].tolist() == [0.5, 1.0, 0.0]
    assert batch.advantages.tolist() == pytest.approx([1.75 / 3, 0.0, 1.0, 0.75])  # each row's mean over its response
    plain = assemble_batch(
        [[1], [1]],
        [[7, 8, 9], [7, 2], [3], [4, 5]],
        [1.0, 0.0, 1.0, 1.0],
        [[0], [0]],
        [None, None],
        group_size=2,
        method=METHODS["grpo"],
        pad_id=0,
    )
    assert plain.token_advantages is None
    assert torch.equal(plain.advantages, group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2))
