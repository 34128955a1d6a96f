"""BARD (arXiv 2511.01470): budget fidelity and the joined reward, by hand; the embedded task's
compressor and its budget buckets."""

import math

import pytest
import torch

from redrl.objectives import budget_fidelity, budget_reward, group_advantages


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize(
    ("correct", "length", "form", "combine", "expected"),
    [
        (1.0, 40, "two_sided", "product", 1.0),  # exactly the budget
        (1.0, 50, "two_sided", "product", 0.5),  # 10 over: 1 - 10 / (0.5 * 40)
        (1.0, 70, "two_sided", "product", 0.0),  # 30 over: past tau, clamped
        (1.0, 20, "two_sided", "product", 0.0),  # 20 under: as far off as 20 over
        (1.0, 20, "one_sided", "product", 1.0),  # under an upper bound: full fidelity
        (1.0, 50, "one_sided", "product", 0.5),
        (0.0, 40, "two_sided", "product", 0.0),  # wrong: nothing, however well it fits
        (0.0, 40, "two_sided", "sum", 1.0),  # the additive shortcut: wrong and on budget earns 1
        (1.0, 50, "two_sided", "sum", 1.5),
    ],
)
def test_budget_reward_by_hand(correct, length, form, combine, expected):
    reward = budget_reward(_t([correct]), _t([length]), _t([40]), combine=combine, form=form, tau=0.5)
    assert reward.dtype == torch.float64 and reward.item() == pytest.approx(expected, abs=1e-12)


def test_an_ungradable_row_stays_ungradable():
    reward = budget_reward([None, 1.0], torch.tensor([40, 40]), torch.tensor([40, 40]))
    assert math.isnan(reward[0]) and reward[1] == 1.0
    assert math.isnan(budget_reward([None], torch.tensor([40]), torch.tensor([40]), combine="sum")[0])


def test_one_group_of_bard_rewards_gives_the_hand_computed_advantages():
    # rows (correct, L) = (1, 40), (1, 50), (0, 40), (1, 70) at b = 40: R = [1, 0.5, 0, 0]
    rewards = budget_reward(_t([1, 1, 0, 1]), _t([40, 50, 40, 70]), _t([40] * 4))
    assert rewards.tolist() == [1.0, 0.5, 0.0, 0.0]
    # mean 0.375, sample std sqrt(0.6875 / 3) = 0.478714
    advantages = group_advantages(rewards, 4, scale="std", eps=1e-6)
    assert advantages.tolist() == pytest.approx([1.305580, 0.261116, -0.783348, -0.783348], abs=1e-5)


def test_fidelity_refuses_what_has_no_meaning():
    with pytest.raises(ValueError, match="budgets must be > 0"):
        budget_fidelity(torch.tensor([3.0]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="tau must be > 0"):
        budget_fidelity(torch.tensor([3.0]), torch.tensor([4.0]), tau=0)
    with pytest.raises(ValueError, match="form must be one of"):
        budget_fidelity(torch.tensor([3.0]), torch.tensor([4.0]), form="both")


# ---- the embedded task's compressor ---------------------------------------------------------------

from redrl.data.budget import budget_bucket, budget_records, compress_trace, read_compressed, with_budget  # noqa: E402
from redrl.rewards import grade  # noqa: E402

_TRACE = "13 + 5 = 18\nWait, let me check: 13 + 5 = 18.\n18 - 9\n18 - 9 = 9\n9\nSo the answer is \\boxed{9}."


def test_the_compressor_drops_rechecks_then_what_is_left_then_every_step():
    assert compress_trace(_TRACE, "Compute 13 + 5 - 9.") == [
        _TRACE,
        "13 + 5 = 18\n18 - 9\n18 - 9 = 9\n9\nSo the answer is \\boxed{9}.",
        "13 + 5 = 18\n18 - 9 = 9\nSo the answer is \\boxed{9}.",
        "13 + 5 - 9 = 9\nSo the answer is \\boxed{9}.",
    ]
    # a level-1 trace without re-checks: the operation line is the direct answer, each text once
    assert compress_trace("13 + 2 = 15\n15\nSo the answer is \\boxed{15}.", "Compute 13 + 2.") == [
        "13 + 2 = 15\n15\nSo the answer is \\boxed{15}.",
        "13 + 2 = 15\nSo the answer is \\boxed{15}.",
    ]
    with pytest.raises(ValueError, match="bard.traces"):
        compress_trace("The answer is 4.", "What is 2 + 2?")


def test_every_compression_of_the_embedded_traces_is_shorter_and_still_right(embedded_assets):
    import json

    records = [json.loads(line) for line in embedded_assets.train.read_text().splitlines()][:300]
    for record in records:
        traces = compress_trace(record["distill"], record["problem"])
        lengths = [len(t.split()) for t in traces]
        assert lengths == sorted(lengths, reverse=True) and len(set(traces)) == len(traces)
        assert all(grade(t, record["answer"]) == 1.0 for t in traces)


def test_budgets_are_the_smallest_bucket_each_trace_fits_and_one_trace_per_bucket():
    assert budget_bucket(27, (16, 24, 32, 48)) == 32 and budget_bucket(16, (16, 24)) == 16
    assert budget_bucket(49, (16, 24, 32, 48)) is None
    record = {"problem": "Compute 13 + 5 - 9.", "answer": "9", "distill": _TRACE, "level": 2}
    words = {t: len(t.split()) for t in compress_trace(_TRACE, record["problem"])}  # 28, 19, 15, 12 words
    rows = budget_records([record], words.__getitem__, (12, 16, 24))
    # 28 words fit no bucket; 19 -> 24; 15 -> 16; 12 -> 12
    assert [(r["budget"], len(r["distill"].split())) for r in rows] == [(12, 12), (16, 15), (24, 19)]
    assert all(r["level"] == 2 and r["answer"] == "9" for r in rows)
    rows = budget_records([record], words.__getitem__, (24, 32))  # 19, 15 and 12 share 24: the longest stays
    assert [(r["budget"], len(r["distill"].split())) for r in rows] == [(24, 19), (32, 28)]


def test_compressed_traces_from_a_file_are_used_as_given(tmp_path):
    path = tmp_path / "compressed.jsonl"
    path.write_text(
        '{"problem": "p1", "budget": 500, "distill": "short"}\n{"problem": "p1", "budget": 2000, "distill": "long"}\n'
    )
    records = [{"problem": "p1", "answer": "1", "distill": "full"}, {"problem": "p2", "answer": "2", "distill": "x y"}]
    rows = budget_records(records, lambda t: len(t.split()), (1000, 4000), compressed=read_compressed(str(path)))
    assert [(r["problem"], r["budget"], r["distill"]) for r in rows] == [
        ("p1", 500, "short"),
        ("p1", 2000, "long"),
        ("p2", 1000, "x y"),  # no compressed traces: its own, at its bucket
    ]
    path.write_text('{"problem": "p1", "budget": "many", "distill": "short"}\n')
    with pytest.raises(ValueError, match="record 1 needs a budget"):
        read_compressed(str(path))


def test_the_budget_joins_the_system_message():
    assert with_budget(None, 32, "{budget}") == "32"
    assert with_budget("Reason step by step.", 500, "Think within {budget} tokens.") == (
        "Reason step by step.\nThink within 500 tokens."
    )


# ---- the method on the embedded task --------------------------------------------------------------

from redrl.config import load_config  # noqa: E402
from redrl.reward_shapes import REWARD_SHAPES  # noqa: E402


def _bard_config(tiny_assets, out, method="bard", **bard):
    return load_config(
        "tiny",
        model={"path": str(tiny_assets.base)},
        data={"train": str(tiny_assets.train), "test": str(tiny_assets.test)},
        rollout={"group_size": 2, "max_new_tokens": 48},
        optim={"lr": 2e-4},
        train={"method": method, "steps": 4, "prompts_per_step": 2, "out": str(out)},
        eval={"k": 1, "max_new_tokens": 48},
        bard={"buckets": (16, 24, 32, 48), **bard},
    )


def test_the_budget_reward_of_rollouts_by_hand():
    cfg = load_config("tiny")
    eos = 2
    rollouts = [[7] * 40 + [eos], [7] * 50 + [eos], [7] * 40, [7] * 30 + [eos]]
    records = [{"budget": 40}] * 4
    shaped = REWARD_SHAPES["budget"]([1.0, 1.0, 0.0, None], rollouts, records, cfg, eos)
    assert shaped == [1.0, 0.5, 0.0, None]  # L = 40, 50 (EOS not counted), 40 (cut off: no EOS), ungradable
    additive = REWARD_SHAPES["budget_additive"]([1.0, 1.0, 0.0, None], rollouts, records, cfg, eos)
    assert additive == [2.0, 1.5, 1.0, None]
    assert REWARD_SHAPES["correct"]([1.0, None], rollouts[:2], records[:2], cfg, eos) == [1.0, None]


def test_bard_samples_and_scores_under_the_budget_it_trains_for(tiny_assets, tmp_path):
    from redrl import run_setup
    from redrl.methods import METHODS

    run = run_setup.setup(_bard_config(tiny_assets, tmp_path / "run", "bard_rl"), METHODS["bard_rl"], progress=False)
    records = run.data.records
    assert {r["budget"] for r in records} <= {16, 24, 32, 48} and len(records) > 40  # several budgets per problem
    by_problem: dict = {}
    for r in records:
        by_problem.setdefault(r["problem"], []).append(r["budget"])
    assert all(sorted(b) == b and len(set(b)) == len(b) for b in by_problem.values())
    index = next(i for i, r in enumerate(records) if r["budget"] == 32)
    prompt = run.conditioning.sample_prompt(records[index], run.data.prompts[index])
    assert prompt == run.conditioning.train_prompt(records[index], run.data.prompts[index])
    text = run.tokenizer.decode(prompt)
    assert "32" in text and text != run.tokenizer.decode(run.data.prompts[index])  # the budget is in the prompt
    assert records[index]["problem"] in text


@pytest.mark.filterwarnings("ignore:.*teacher traces exceed")
def test_bard_trains_its_two_phases_and_evaluates_at_a_budget(tiny_assets, tmp_path):
    import json

    from redrl.evaluate import evaluate_model
    from redrl.trainer import train

    cfg = _bard_config(tiny_assets, tmp_path / "run")
    final = train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["bard_sft", "bard_sft", "bard_rl", "bard_rl"]
    assert all(0.0 <= r["online_accuracy"] <= 1.0 for r in rows[2:])  # the grades, not the shaped rewards
    cfg.eval.budget = 24
    result = evaluate_model(str(final), [json.loads(x) for x in tiny_assets.test.read_text().splitlines()], cfg, seed=0)
    assert result["budget"] == 24 and 0.0 <= result["within_budget"] <= 1.0 and result["budget_deviation"] >= 0.0


def test_budget_settings_that_cannot_work_are_refused(tiny_assets, tmp_path):
    from redrl import run_setup
    from redrl.methods import METHODS

    def setup(method, **bard):
        cfg = _bard_config(tiny_assets, tmp_path / method, method, **bard)
        return run_setup.setup(cfg, METHODS[method], progress=False)

    with pytest.raises(ValueError, match="bard.\\* settings apply to the budget-conditioned methods"):
        setup("grpo")
    with pytest.raises(ValueError, match="a budget of 64 tokens cannot be met with rollout.max_new_tokens=48"):
        setup("bard_sft", buckets=(16, 64))
    with pytest.raises(ValueError, match="'Think within 48 tokens.', which this tokenizer cannot write"):
        setup("bard_sft", budget_template="Think within {budget} tokens.")
