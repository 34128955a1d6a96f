"""Critics (PPO, AsyPPO): GAE, the ensemble and its masks, the masked objective, the value loss by
hand; the value's position on the loss's grid; PPO's epochs and mini-batches by hand; the critics
trained beside the policy, warmed up, saved and resumed exactly; bad input refused in one line."""

import json
import math
import shutil

import pytest
import torch

from redrl.batch import Batch
from redrl.cli import main
from redrl.config import load_config
from redrl.critics import Critics, critic_settings, load_value_model, shard_of_rows
from redrl.methods import METHODS
from redrl.objectives import (
    LOSSES,
    LossInputs,
    LossSettings,
    critic_ensemble,
    explained_variance,
    gae,
    ppo_loss,
    value_disagreement_masks,
    value_loss,
)
from redrl.regulator import EntropyRegulator
from redrl.step import StepSettings, optimization_step
from redrl.trainer import train

# Two critics, one response of 3 tokens, final reward R = 1 (hand-computed below).
V1, V2 = torch.tensor([[0.2, 0.6, 0.5]]), torch.tensor([[0.4, 0.6, 0.9]])
ALL = torch.ones(1, 3, dtype=torch.bool)


def test_the_ensemble_is_the_critics_mean_and_their_population_std():
    mean, std = critic_ensemble(torch.stack([V1, V2]))
    assert mean.tolist()[0] == pytest.approx([0.3, 0.6, 0.7])
    assert std.tolist()[0] == pytest.approx([0.1, 0.0, 0.2])  # |V1 - V2| / 2
    _, alone = critic_ensemble(V1.unsqueeze(0))
    assert alone.tolist() == [[0.0, 0.0, 0.0]]


def test_gae_by_hand():
    mean = torch.tensor([[0.3, 0.6, 0.7]])
    reward = torch.tensor([1.0])
    # δ = [0 + 0.6 - 0.3, 0 + 0.7 - 0.6, 1 + 0 - 0.7] = [0.3, 0.1, 0.3]
    assert gae(mean, reward, ALL, lam=1.0).tolist()[0] == pytest.approx([0.7, 0.4, 0.3])  # R - V
    assert gae(mean, reward, ALL, lam=0.5).tolist()[0] == pytest.approx([0.425, 0.25, 0.3])
    assert (gae(mean, reward, ALL, lam=1.0) + mean).tolist()[0] == pytest.approx([1.0, 1.0, 1.0])  # returns
    # γ = 0.5, λ = 1: Â_t = γ^(2-t)·R - V_t = [0.25 - 0.3, 0.5 - 0.6, 1 - 0.7]
    assert gae(mean, reward, ALL, gamma=0.5).tolist()[0] == pytest.approx([-0.05, -0.1, 0.3])


def test_gae_runs_over_the_response_span_only_and_gives_an_ungradable_row_nothing():
    # the same response at positions 1-3 of 5 (a prompt position before, padding after, junk values there)
    values = torch.tensor([[9.0, 0.3, 0.6, 0.7, 9.0], [0.1, 0.2, 0.3, 0.4, 0.5]])
    mask = torch.tensor([[False, True, True, True, False], [True] * 5])
    out = gae(values, torch.tensor([1.0, math.nan]), mask, lam=0.5)
    assert out[0].tolist() == pytest.approx([0.0, 0.425, 0.25, 0.3, 0.0])
    assert out[1].tolist() == [0.0] * 5


def test_the_masks_drop_the_lowest_and_the_highest_disagreement_by_hand():
    _, std = critic_ensemble(torch.stack([V1, V2]))  # σ = [0.1, 0.0, 0.2]
    keep_a, keep_h = value_disagreement_masks(std, ALL, advantage_share=0.34, entropy_share=0.34)
    assert keep_a.tolist() == [[True, False, True]]  # max(1, int(3·0.34)) = 1 token, the lowest σ
    assert keep_h.tolist() == [[True, True, False]]  # ... the highest σ
    keep_a, keep_h = value_disagreement_masks(std, ALL, advantage_share=0.0, entropy_share=0.0)
    assert keep_a.all() and keep_h.all()


def test_the_masks_rank_every_token_of_the_batch_together_and_break_ties_by_position():
    std = torch.tensor([[0.1, 0.0, 5.0], [0.3, 0.05, 5.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])  # the 5.0s are padding
    keep_a, keep_h = value_disagreement_masks(std, mask, advantage_share=0.5, entropy_share=0.25)
    assert keep_a.tolist() == [[True, False, True], [True, False, True]]  # A1 (0.0) and B1 (0.05)
    assert keep_h.tolist() == [[True, True, True], [False, True, True]]  # B0 (0.3); padding stays 1
    ties = torch.zeros(2, 2)
    keep_a, keep_h = value_disagreement_masks(
        ties, torch.ones(2, 2, dtype=torch.bool), advantage_share=0.5, entropy_share=0.5
    )
    assert keep_a.tolist() == [[False, False], [True, True]] and keep_h.tolist() == [[False, False], [True, True]]
    with pytest.raises(ValueError, match="advantage_share"):
        value_disagreement_masks(ties, ties.bool(), advantage_share=1.5, entropy_share=0.0)


def test_the_masked_objective_and_its_gradient_by_hand():
    advantages = torch.tensor([[0.7, 0.4, 0.3]])
    entropy = torch.tensor([[1.0, 2.0, 3.0]])
    keep_a, keep_h = torch.tensor([[True, False, True]]), torch.tensor([[True, True, False]])
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    loss, metrics = ppo_loss(
        logp,
        logp.detach(),
        advantages,
        ALL,
        entropy,
        advantage_mask=keep_a,
        entropy_mask=keep_h,
        entropy_coef=0.01,
    )
    # ratio 1, token mean over |o| = 3: [0.7 + 0.01, 0 + 0.02, 0.3 + 0] → -1.03 / 3
    assert loss.item() == pytest.approx(-0.343333, abs=1e-6)
    loss.backward()
    assert logp.grad.tolist()[0] == pytest.approx([-0.7 / 3, 0.0, -0.1], abs=1e-6)  # -I^A·Â/|o|
    assert float(metrics["adv_masked_fraction"]) == pytest.approx(1 / 3)
    assert float(metrics["entropy_filtered_fraction"]) == pytest.approx(1 / 3)
    unmasked, _ = ppo_loss(logp, logp.detach(), advantages, ALL, entropy, entropy_coef=0.01)
    assert float(unmasked) == pytest.approx(-(0.7 + 0.4 + 0.3 + 0.01 * 6) / 3, abs=1e-6)  # -0.486667


def test_the_registered_objective_reads_the_batchs_token_advantages_and_masks():
    logp = torch.zeros(1, 3)
    inputs = LossInputs(
        logp=logp,
        old_logp=logp,
        entropy=torch.tensor([[1.0, 2.0, 3.0]]),
        response_mask=ALL,
        advantages=torch.tensor([0.0]),  # the row's scalar is not what the objective uses
        rewards=torch.tensor([1.0]),
        is_offline=torch.tensor([False]),
        group_accuracy=torch.tensor([1.0]),
        token_advantages=torch.tensor([[0.7, 0.4, 0.3]]),
        advantage_mask=torch.tensor([[True, False, True]]),
        entropy_mask=torch.tensor([[True, True, False]]),
    )
    loss, _ = LOSSES["ppo"].fn(inputs, LossSettings(entropy_coef=0.01))
    assert float(loss) == pytest.approx(-0.343333, abs=1e-6)
    # without token advantages each row's scalar holds for all its tokens
    row = LossInputs(**{**inputs.__dict__, "token_advantages": None, "advantages": torch.tensor([0.5])})
    loss, _ = LOSSES["ppo"].fn(row, LossSettings(entropy_coef=0.01))
    assert loss.item() == pytest.approx(-(0.5 + 0.01 + 0.0 + 0.02 + 0.5 + 0.0) / 3, abs=1e-6)


def test_the_value_loss_and_the_explained_variance_by_hand():
    returns = torch.ones(1, 3)
    assert float(value_loss(V1, returns, ALL)) == pytest.approx((0.64 + 0.16 + 0.25) / 3)
    assert float(value_loss(V2, returns, ALL)) == pytest.approx((0.36 + 0.16 + 0.01) / 3)
    r = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    every = torch.ones(1, 4, dtype=torch.bool)
    assert float(explained_variance(torch.full((1, 4), 0.5), r, every)) == pytest.approx(0.0)  # a constant
    assert float(explained_variance(r, r, every)) == pytest.approx(1.0)
    assert float(explained_variance(torch.tensor([[0.0, 1.0, 0.0, 1.0]]), r, every)) == pytest.approx(-3.0)
    assert math.isnan(float(explained_variance(r, torch.ones(1, 4), every)))  # returns that do not vary


def test_each_critic_takes_a_disjoint_equal_share_of_every_group():
    assert shard_of_rows(8, 4, 2, "responses").int().argmax(-1).tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    assert shard_of_rows(8, 4, 2, "prompts").int().argmax(-1).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert shard_of_rows(4, 4, 2, "shared").all()
    assert shard_of_rows(4, 4, 1, "responses").all()


def test_a_value_sits_on_the_loss_grid_the_state_before_the_token_it_precedes(tiny_assets):
    critic = load_value_model(str(tiny_assets.base), layers=2, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    base = critic(ids, torch.ones_like(ids))
    assert base.shape == (1, 4)  # the target grid: position t precedes input token t + 1
    later = ids.clone()
    later[0, 3] = 12  # the token that position 2 scores: the value there is the state before it
    changed = critic(later, torch.ones_like(later))
    assert torch.equal(changed[0, :3], base[0, :3]) and changed[0, 3] != base[0, 3]
    assert len(critic.body.layers) == 2  # a mini-critic: the base's first 2 of its layers


# ---- PPO's epochs and mini-batches -----------------------------------------------------------------


class OneNumberPolicy(torch.nn.Module):
    """A "policy" whose every response token has log-probability θ (entropy 0)."""

    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask, loss_mask):
        from redrl.modeling import ScorerOutputs

        logp = self.theta * loss_mask.to(torch.float32)
        return ScorerOutputs(logp, torch.zeros_like(logp))


def _two_rows(advantages):
    return Batch(
        input_ids=torch.tensor([[5, 6], [5, 7]]),
        attention_mask=torch.ones(2, 2, dtype=torch.long),
        response_mask=torch.tensor([[False, True], [False, True]]),
        rewards=torch.tensor([1.0, 0.0]),
        advantages=torch.tensor(advantages),
        is_offline=torch.tensor([False, False]),
        group_accuracy=torch.tensor([0.5, 0.5]),
    )


def _step(scorer, batch, **settings):
    optimizer = torch.optim.SGD(scorer.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    stats = optimization_step(
        scorer,
        optimizer,
        schedule,
        EntropyRegulator(max_weight=4),
        batch,
        METHODS["grpo"],
        StepSettings(max_grad_norm=100.0, micro_batch_size=1, **settings),
        LossSettings(aggregation="token-mean"),
    )
    return stats, schedule


def test_ppo_epochs_over_mini_batches_take_every_ratio_against_the_rollout_policy_by_hand():
    scorer = OneNumberPolicy()
    stats, schedule = _step(scorer, _two_rows([1.0, -1.0]), updates=2, mini_batches=2)
    # Mini-batch 1 is row 0 (A = +1), mini-batch 2 row 1 (A = -1); ρ = exp(θ - 0), clip 1 ± 0.2, SGD 0.1.
    # loss = -min(ρA, clip(ρ)A): A = +1 gives dθ = +0.1ρ (while ρ < 1.2), A = -1 gives dθ = -0.1ρ (ρ > 0.8).
    theta = 0.0
    for sign in (1, -1, 1, -1):
        theta += sign * 0.1 * math.exp(theta)
    assert float(scorer.theta) == pytest.approx(theta, abs=1e-7)
    assert stats["updates"] == 4 and schedule.last_epoch == 1  # 2 epochs x 2 mini-batches, one schedule step
    # The same batch as one mini-batch: the two rows' gradients cancel, θ never moves.
    whole = OneNumberPolicy()
    stats, _ = _step(whole, _two_rows([1.0, -1.0]), updates=2)
    assert float(whole.theta) == 0.0 and stats["updates"] == 2


def test_no_update_measures_the_batch_and_moves_nothing():
    scorer = OneNumberPolicy()
    stats, schedule = _step(scorer, _two_rows([1.0, 1.0]), updates=0)
    assert float(scorer.theta) == 0.0 and schedule.last_epoch == 0
    assert stats["skipped"] == 0 and math.isnan(stats["loss"]) and stats["updates"] == 0


# ---- the critics in a run ------------------------------------------------------------------------


def _cfg(tiny_assets, out, method="asyppo", critic=None, **train_values):
    return load_config(
        "tiny",
        model={"path": str(tiny_assets.base)},
        data={"train": str(tiny_assets.train)},
        rollout={"group_size": 4, "max_new_tokens": 16},
        optim={"lr": 2e-4},
        critic={"lr": 1e-3, **(critic or {})},
        train={"method": method, "steps": 3, "prompts_per_step": 2, "seed": 1, "out": str(out), **train_values},
    )


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_attach_gives_the_batch_gae_on_the_critics_mean_and_their_masks(tiny_assets, tmp_path, monkeypatch):
    from redrl.auxiliary import AuxiliaryContext
    from redrl.modeling import load_model_and_tokenizer
    from redrl.parallel import Parallel

    cfg = _cfg(tiny_assets, tmp_path / "unit", critic={"advantage_mask": 0.34, "entropy_mask": 0.34})
    model, tokenizer = load_model_and_tokenizer(str(tiny_assets.base))
    critics = Critics(AuxiliaryContext(cfg, model, tokenizer, None, Parallel(None), progress=False))
    assert len(critics.models) == 2 and critic_settings(cfg, METHODS["asyppo"]).count == 2
    # one row: a 1-token prompt, then 3 response tokens (target positions 0-2); the critics say V1, V2
    batch = Batch(
        input_ids=torch.tensor([[1, 7, 8, 9]]),
        attention_mask=torch.ones(1, 4, dtype=torch.long),
        response_mask=torch.tensor([[False, True, True, True]]),
        rewards=torch.tensor([1.0]),
        advantages=torch.tensor([0.0]),
        is_offline=torch.tensor([False]),
        group_accuracy=torch.tensor([1.0]),
    )
    monkeypatch.setattr(critics, "_values", lambda batch: torch.stack([V1, V2]))
    out = critics.attach(batch, [0])
    assert out.token_advantages.tolist()[0] == pytest.approx([0.7, 0.4, 0.3])
    assert out.returns.tolist()[0] == pytest.approx([1.0, 1.0, 1.0])
    assert out.advantage_mask.tolist() == [[True, False, True]] and out.entropy_mask.tolist() == [[True, True, False]]
    assert float(out.advantages) == pytest.approx((0.7 + 0.4 + 0.3) / 3)


def test_asyppo_trains_its_critics_beside_the_policy_and_resumes_exactly(tiny_assets, tmp_path):
    out = tmp_path / "asyppo"
    train(_cfg(tiny_assets, out, save_every=1, ppo_epochs=2), progress=False)
    steps = _metrics(out)
    for s in steps:
        assert math.isfinite(s["loss"]) and math.isfinite(s["critic_loss"]) and s["updates"] == 2
        assert 0.19 <= s["adv_masked_fraction"] <= 0.2 and 0.19 <= s["entropy_filtered_fraction"] <= 0.2
        assert s["critic_std_mean"] > 0  # the two critics disagree from the first step (their heads differ)
    assert (out / "checkpoint-2" / "auxiliary-critics.pt").is_file()
    again = tmp_path / "again"
    shutil.copytree(out, again)
    shutil.rmtree(again / "final")
    shutil.rmtree(again / "checkpoint-3")
    train(_cfg(tiny_assets, again, save_every=1, ppo_epochs=2, resume=True), progress=False)
    resumed = _metrics(again)[-1]
    keys = ("loss", "critic_loss", "value_explained_variance", "critic_std_mean", "reward")
    assert resumed["step"] == 3 and {k: resumed[k] for k in keys} == {k: steps[2][k] for k in keys}


def test_critics_warm_up_before_the_policy_moves(tiny_assets, tmp_path):
    from redrl.modeling import load_model_and_tokenizer

    out = tmp_path / "warm"
    train(_cfg(tiny_assets, out, "ppo", critic={"warmup_steps": 3}, save_every=1), progress=False)
    steps = _metrics(out)
    assert [s["critics_only"] for s in steps] == [1, 1, 1]
    assert [s["loss"] for s in steps] == [None] * 3 and [s["skipped"] for s in steps] == [0] * 3  # no policy loss
    first, second = (torch.load(out / f"checkpoint-{k}" / "auxiliary-critics.pt") for k in (1, 2))
    assert first["steps_seen"] == 1 and second["steps_seen"] == 2
    head = "head.weight"
    assert not torch.equal(first["models"][0][head], second["models"][0][head])  # the critic learned meanwhile
    before, _ = load_model_and_tokenizer(str(tiny_assets.base))
    after, _ = load_model_and_tokenizer(str(out / "final"))
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith("redrl: warning:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["--method", "asyppo", "--set", "rollout.group_size=3"], "rollout.group_size=3 cannot be split evenly"),
        (["--method", "ppo", "--set", "train.ppo_epochs=0"], "train.ppo_epochs must be >= 1; got 0"),
        (["--method", "grpo", "--set", "train.ppo_mini_batches=99"], "train.ppo_mini_batches=99 is more than"),
        (["--method", "grpo", "--set", "critic.count=2"], "critic.* settings apply to the methods with a value"),
        (["--method", "ppo", "--set", "critic.entropy_mask=0.2"], "need at least 2 critics to disagree"),
        (["--method", "asyppo", "--set", "critic.layers=9"], "critic.layers=9: "),
    ],
)
def test_bad_critic_input_is_refused_in_one_line(tiny_assets, tmp_path, capsys, settings, message):
    args = ["train", *settings, "--out", str(tmp_path / "bad"), "--set", "optim.lr=1e-4"]
    args += ["--set", f"model.path={tiny_assets.base}", "--set", f"data.train={tiny_assets.train}"]
    assert main([*args, "--set", "train.steps=1", "--no-progress"]) == 2
    assert message in _one_error_line(capsys)


def test_the_paper_presets_differ_only_in_their_critics():
    asy, ppo = (load_config(f"configs/paper/qwen3-4b-{name}.yaml").to_dict() for name in ("asyppo", "ppo"))
    differ = {(section, key) for section in asy for key in asy[section] if asy[section][key] != ppo[section][key]}
    assert {key for section, key in differ if section != "critic"} == {"method", "out"}
    assert asy["critic"]["count"] == 2 and asy["critic"]["path"] == "Qwen/Qwen3-0.6B-Base"
    assert ppo["critic"]["count"] == 1 and ppo["critic"]["path"] == ppo["model"]["path"]  # symmetric
    assert (asy["critic"]["advantage_mask"], asy["critic"]["entropy_mask"]) == (0.2, 0.2)
    assert asy["train"]["ppo_epochs"] == 4
