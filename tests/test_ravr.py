"""RAVR (arXiv 2510.25206): the utility of a path, the utility-baseline reward and whether its
baseline survives group centring, the utility weights and the weighted prior NLL, by hand."""

import math

import pytest
import torch

from redrl.objectives import answer_utility, group_advantages, ravr_rewards, utility_weights, weighted_prior_nll


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_utility_is_the_answers_length_normalised_probability():
    one = answer_utility(_t([[math.log(0.5), 0.0]]), torch.tensor([[True, False]]))
    assert one.item() == pytest.approx(0.5, abs=1e-12)  # one answer token: its probability
    two = answer_utility(_t([[math.log(0.5), math.log(0.8)]]), torch.tensor([[True, True]]))
    assert two.item() == pytest.approx(math.sqrt(0.4), abs=1e-12)  # exp(mean log p) = sqrt(0.5 * 0.8)
    masked = answer_utility(_t([[math.log(0.5), float("nan")]]), torch.tensor([[True, False]]))
    assert masked.item() == pytest.approx(0.5)  # a padded position never reaches the utility
    with pytest.raises(ValueError, match="at least one answer token"):
        answer_utility(_t([[0.0]]), torch.tensor([[False]]))


def test_the_reward_is_the_utility_over_the_question_only_baseline():
    posterior, prior = _t([0.9, 0.5, 0.1, 0.5]), _t([0.2, 0.4])  # b(x) = 0.3
    rewards = ravr_rewards(posterior, prior, group_size=4, prior_size=2)
    assert rewards.tolist() == pytest.approx([0.6, 0.2, -0.2, 0.2], abs=1e-12)
    # unnormalised ("baseline" advantages): the baseline moves every advantage by -0.3
    assert group_advantages(rewards, 4, scale="none").tolist() == pytest.approx([0.4, 0.0, -0.4, 0.0], abs=1e-12)


def test_under_group_centring_the_per_prompt_baseline_cancels():
    """The question the issue asks: does the prior baseline change GRPO's update? No: group
    normalisation subtracts the group mean (and divides by the std), and a per-prompt constant
    shifts the mean by itself and leaves the std alone. r = [0.6, 0.2, -0.2, 0.2]: mean 0.2,
    sample variance 0.32 / 3, std 0.326599 -> A = [1.224741, 0, -1.224741, 0]; the same from s."""
    posterior, prior = _t([0.9, 0.5, 0.1, 0.5]), _t([0.2, 0.4])
    with_baseline = group_advantages(ravr_rewards(posterior, prior, 4, 2), 4, scale="std", eps=1e-6)
    without = group_advantages(posterior, 4, scale="std", eps=1e-6)
    assert with_baseline.tolist() == pytest.approx([1.224741, 0.0, -1.224741, 0.0], abs=1e-6)
    assert torch.allclose(with_baseline, without, atol=1e-12)


def test_the_prior_learns_the_posterior_paths_weighted_by_their_utility():
    weights = utility_weights(_t([0.9, 0.5, 0.1, 0.5]), 4)
    assert weights.tolist() == pytest.approx([0.45, 0.25, 0.05, 0.25], abs=1e-12)
    # per-row mean token log-probs [-1, -2, -3, -2] (rows of 1, 2, 3 and 2 tokens)
    logp = _t([[-1.0, 0, 0], [-2.0, -2.0, 0], [-3.0, -3.0, -3.0], [-1.0, -3.0, 0]]).requires_grad_()
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    loss = weighted_prior_nll(logp, mask, weights)
    assert loss.item() == pytest.approx(1.6, abs=1e-12)  # -(0.45*-1 + 0.25*-2 + 0.05*-3 + 0.25*-2)
    loss.backward()
    # d loss / d logp[i, t] = -w_i / |z_i| on the path's tokens, 0 on padding
    expected = _t([[-0.45, 0, 0], [-0.125, -0.125, 0], [-0.05 / 3] * 3, [-0.125, -0.125, 0]])
    assert torch.allclose(logp.grad, expected, atol=1e-12)


def test_groups_must_line_up():
    with pytest.raises(ValueError, match="2 posterior groups but 1 prior groups"):
        ravr_rewards(_t([0.1] * 8), _t([0.2, 0.4]), 4, 2)


# ---- the objective -------------------------------------------------------------------------------

from redrl.objectives import ravr_loss, raw_advantages  # noqa: E402


def _ravr_rows():
    """Four posterior rows (A = [1.224741, 0, -1.224741, 0], ratio 1), then their four transfer
    rows (mean token log-probs [-1, -2, -3, -2], u = G * w = [1.8, 1, 0.2, 1]); 1, 2, 3, 2 tokens."""
    per_row = [[-1.0, 0, 0], [-2.0, -2.0, 0], [-3.0, -3.0, -3.0], [-1.0, -3.0, 0]]
    logp = _t(per_row + per_row).requires_grad_()
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 0]] * 2, dtype=torch.bool)
    advantages = _t([1.224741, 0.0, -1.224741, 0.0] + [0.0] * 4)
    transfer = torch.tensor([False] * 4 + [True] * 4)
    weights = _t([1.0] * 4 + [1.8, 1.0, 0.2, 1.0])
    return logp, mask, advantages, transfer, weights


def test_ravr_loss_by_hand():
    logp, mask, advantages, transfer, weights = _ravr_rows()
    loss, metrics = ravr_loss(logp, logp.detach(), advantages, mask, transfer, weights)
    # posterior rows: l_i = -A_i (ratio 1), sum 0; transfer rows: u_i * NLL_i = [1.8, 2, 0.6, 2], sum 6.4; N = 8
    assert loss.item() == pytest.approx(0.8, abs=1e-6)
    assert metrics["ravr_posterior"].item() == pytest.approx(0.0, abs=1e-6)
    assert metrics["ravr_prior_nll"].item() == pytest.approx(1.6, abs=1e-6)
    assert metrics["clip_fraction"].item() == 0.0
    loss.backward()
    # d L / d logp[i, t] = -A_i / (|o_i| N) on posterior rows, -c u_i / (|z_i| N) on transfer rows
    lengths = _t([1, 2, 3, 2])
    posterior = -advantages[:4] / (lengths * 8)
    prior = -weights[4:] / (lengths * 8)
    expected = torch.cat([posterior, prior])[:, None] * mask
    assert torch.allclose(logp.grad, expected, atol=1e-7)
    halved, _ = ravr_loss(logp, logp.detach(), advantages, mask, transfer, weights, prior_coef=0.5)
    assert halved.item() == pytest.approx(0.4, abs=1e-6)  # c_prior scales the transfer rows only


def test_ravr_loss_is_half_grpo_and_half_the_prior_nll():
    """With one transfer row per posterior row, L = 1/2 (L_GRPO + c_prior L_prior): the mean of the
    posterior rows' clipped surrogate plus the utility-weighted prior NLL of weighted_prior_nll."""
    logp, mask, advantages, transfer, weights = _ravr_rows()
    old = logp.detach() - 0.3 * mask  # ratios e^0.3 = 1.35: the positive advantage is clipped
    loss, metrics = ravr_loss(logp, old, advantages, mask, transfer, weights)
    ratio = torch.exp(torch.tensor(0.3, dtype=torch.float64))
    grpo = -(min(ratio, 1.2) * 1.224741 + ratio * -1.224741) / 4  # row 0 clipped at 1.2; row 2 not (A < 0)
    prior = weighted_prior_nll(logp[4:], mask[4:], weights[4:] / 4)
    assert loss.item() == pytest.approx(0.5 * (grpo.item() + prior.item()), abs=1e-6)
    assert metrics["clip_fraction"].item() == pytest.approx(1 / 8)  # one token of the 8 posterior tokens


def test_raw_advantages_are_the_rewards_and_ungradable_rows_get_zero():
    assert raw_advantages([0.6, None, -0.2]).tolist() == pytest.approx([0.6, 0.0, -0.2])


# ---- the batch: transfer rows join their group ---------------------------------------------------


def test_transfer_rows_follow_their_group_under_their_own_prompt_and_weight():
    from redrl.batch import assemble_batch
    from redrl.methods import METHODS

    posterior_prompts = [[10, 11, 12], [20, 21, 22]]  # the question-only prompts [10], [20] are the companions'
    rollouts = [[1, 2], [3], [4, 5], [6]]
    companions = [[([10], [1, 2], 1.5), ([10], [3], 0.5)], [([20], [4, 5], 1.0), ([20], [6], 1.0)]]
    batch = assemble_batch(
        posterior_prompts,
        rollouts,
        [0.6, -0.2, 0.1, 0.1],
        [],
        [],
        group_size=2,
        method=METHODS["ravr"],
        pad_id=0,
        companions=companions,
    )
    assert len(batch) == 8 and batch.is_offline.tolist() == [False, False, True, True] * 2
    assert batch.row_weights.tolist() == [1.0, 1.0, 1.5, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert torch.isnan(batch.rewards[[2, 3, 6, 7]]).all()
    # group 1: rewards [0.6, -0.2], centred and over their std (0.565685): +-0.707107; group 2 all equal: 0
    assert batch.advantages.tolist() == pytest.approx([0.707106, -0.707106, 0, 0, 0, 0, 0, 0], abs=1e-5)
    # a transfer row is its path under the prior prompt: [10] then [1, 2]
    row = batch.input_ids[2][batch.attention_mask[2].bool()].tolist()
    assert row == [10, 1, 2] and batch.response_mask[2][batch.attention_mask[2].bool()].tolist() == [0, 1, 1]
    raw = assemble_batch(
        posterior_prompts, rollouts, [0.6, -0.2, 0.1, 0.1], [], [],
        group_size=2, method=METHODS["ravr"], pad_id=0, companions=companions, advantage="raw",
    )  # fmt: skip
    assert raw.advantages.tolist() == pytest.approx([0.6, -0.2, 0, 0, 0.1, 0.1, 0, 0])
    with pytest.raises(ValueError, match="as many companion rows"):
        assemble_batch(
            posterior_prompts, rollouts, [0.0] * 4, [], [],
            group_size=2, method=METHODS["ravr"], pad_id=0, companions=[companions[0], companions[1][:1]],
        )  # fmt: skip


# ---- a path's utility ----------------------------------------------------------------------------


class _MergingTokenizer:
    """A tokenizer whose vocabulary merges a brace and a digit (``\\boxed{1``), greedy longest match."""

    vocab = {1: "a ", 2: "\\boxed{1", 3: "\\boxed{", 4: "1", 5: "}", 9: ""}
    eos_token_id = 9

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.vocab[i] for i in ids)

    def __call__(self, text, add_special_tokens=False):
        ids, rest = [], text
        while rest:
            token = max(
                (i for i, s in self.vocab.items() if s and rest.startswith(s)), key=lambda i: len(self.vocab[i])
            )
            ids.append(token)
            rest = rest[len(self.vocab[token]) :]
        return type("Encoded", (), {"input_ids": ids})()


def test_a_path_is_cut_after_its_last_boxed_or_given_the_answer_prefix(embedded_assets):
    from transformers import AutoTokenizer

    from redrl.strategies import _before_answer

    tok = AutoTokenizer.from_pretrained(str(embedded_assets.base))
    prefix = tok("\nSo the answer is \\boxed{", add_special_tokens=False).input_ids

    def ids(text):
        return tok(text, add_special_tokens=False).input_ids

    path = ids("13 + 5 = 18\nSo the answer is \\boxed{18}.") + [tok.eos_token_id]
    assert tok.decode(_before_answer(path, tok, prefix)) == "13 + 5 = 18\nSo the answer is \\boxed{"
    twice = ids("\\boxed{3}\n13 + 5 = 18 \\boxed{18}")
    assert tok.decode(_before_answer(twice, tok, prefix)) == "\\boxed{3}\n13 + 5 = 18 \\boxed{"
    bare = ids("13 + 5 = 18") + [tok.eos_token_id]
    assert _before_answer(bare, tok, prefix) == ids("13 + 5 = 18") + prefix  # EOS dropped, the prefix after
    merged = _MergingTokenizer()
    assert _before_answer([1, 2, 5, 9], merged, [3]) == [1, 3]  # "\boxed{1" ends past the brace: re-encoded


class _TargetScorer(torch.nn.Module):
    """log p of each position's target token = -target / 100 (so every token scores differently)."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask, mask):
        return type("Out", (), {"logp": -input_ids[:, 1:].double() / 100})()


def test_the_utility_is_the_reference_answers_probability_right_after_the_path():
    from redrl.strategies import path_utilities

    tok = _MergingTokenizer()
    tok.pad_token_id = 0
    # prompts [7, 7] and [8]; answers "1}" = [4, 5] and "1" = [4]; paths: "a \boxed{1}", "a " + EOS, "a "
    utilities = path_utilities(
        _TargetScorer(),
        [[7, 7], [8]],
        [[1, 2, 5, 9], [1, 9], [1]],
        [[4, 5], [4]],
        group_size=2,
        tokenizer=tok,
        answer_prefix="\\boxed{",
        micro_batch_size=2,
    )
    # the first group's paths are scored on their answer [4, 5] only: exp(-(4 + 5) / 200); the second's on [4]
    assert utilities.tolist() == pytest.approx([math.exp(-0.045), math.exp(-0.045), math.exp(-0.04)], abs=1e-6)


# ---- the method on the embedded task --------------------------------------------------------------

from redrl.config import load_config  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*teacher traces exceed")


def _ravr_config(tiny_assets, out, method="ravr", **ravr):
    return load_config(
        "tiny",
        model={"path": str(tiny_assets.base)},
        data={"train": str(tiny_assets.train), "test": str(tiny_assets.test)},
        rollout={"group_size": 2, "max_new_tokens": 32},
        optim={"lr": 2e-4},
        train={"method": method, "steps": 2, "prompts_per_step": 2, "out": str(out)},
        ravr=ravr,
    )


def test_the_posterior_samples_after_the_answer_and_the_prior_after_the_question(tiny_assets, tmp_path):
    from redrl import run_setup
    from redrl.methods import METHODS

    run = run_setup.setup(_ravr_config(tiny_assets, tmp_path / "run"), METHODS["ravr"], progress=False)
    record, prompt = run.data.records[3], run.data.prompts[3]
    posterior = run.conditioning.sample_prompt(record, prompt)
    assert posterior == run.conditioning.train_prompt(record, prompt)
    text, question = run.tokenizer.decode(posterior), run.tokenizer.decode(prompt)
    assert f"So the answer is {record['answer']}." in text and record["problem"] in text
    assert "So the answer is" not in question and record["problem"] in question  # the prior: the record's own prompt
    assert run.strategy.prompts[3] == prompt and run.strategy.prior_size == 2


def test_answer_settings_that_cannot_work_are_refused(tiny_assets, tmp_path, capsys):
    from redrl import run_setup
    from redrl.cli import main
    from redrl.methods import METHODS

    with pytest.raises(ValueError, match=r"'Because the result is \d+, think.', which this tokenizer cannot write"):
        cfg = _ravr_config(tiny_assets, tmp_path / "a", hint_template="Because the result is {answer}, think.")
        run_setup.setup(cfg, METHODS["ravr"], progress=False)  # refused before any step, for the first record
    with pytest.raises(ValueError, match="ravr.\\* settings apply to the answer-conditioned methods"):
        run_setup.setup(_ravr_config(tiny_assets, tmp_path / "b", "grpo", prior_size=4), METHODS["grpo"])
    with pytest.raises(ValueError, match="ravr.hint_template must contain \\{answer\\}"):
        _ravr_config(tiny_assets, tmp_path / "c", hint_template="Think first.")
    with pytest.raises(ValueError, match="loss.advantage must be one of"):
        load_config("tiny", loss={"advantage": "median"})
    args = ["train", "--method", "ravr", "--out", str(tmp_path / "d"), "--set", "optim.lr=2e-4"]
    args += ["--set", f"model.path={tiny_assets.base}", "--set", f"data.train={tiny_assets.train}"]
    assert main([*args, "--set", "ravr.hint_template=Because {answer}, think."]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "redrl train: error: ravr.hint_template renders"
    )


def test_ravr_trains_and_logs_its_utilities(tiny_assets, tmp_path):
    import json

    from redrl.trainer import train

    final = train(_ravr_config(tiny_assets, tmp_path / "run"), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and (final / "config.json").exists()
    for row in rows:
        assert 0.0 < row["ravr_utility_posterior"] <= 1.0 and 0.0 < row["ravr_utility_prior"] <= 1.0
        assert 0.0 <= row["ravr_prior_accuracy"] <= 1.0 and 0.0 <= row["ravr_leak_rate"] <= 1.0
        assert 0.0 <= row["online_accuracy"] <= 1.0  # the grades, not the utility rewards
        assert row["ravr_prior_nll"] > 0 and math.isfinite(row["loss"])
