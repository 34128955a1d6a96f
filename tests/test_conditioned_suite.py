"""`redrl compare --suite conditioned`: the rank correlation and the claims' judgement on hand-made
numbers, and the suite end to end on the test-sized tiny assets (budget evaluations, table, plot)."""

import json
import math

import pytest

from redrl.cli import main
from redrl.conditioned_suite import _hard_accuracy, judge_conditioned, run_conditioned_suite, spearman
from redrl.report import FAILS, HOLDS, INCONCLUSIVE


def test_spearman_by_hand():
    # ranks of y: 0, 2, 1, 3; d = 0, -1, 1, 0; rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([16, 32, 64, 128], [10, 20, 15, 40]) == pytest.approx(0.8)
    # a tie takes its mean rank: y ranks 0.5, 0.5, 2; Pearson of the ranks = 1.5 / sqrt(2 * 1.5)
    assert spearman([1, 2, 3], [5, 5, 7]) == pytest.approx(1.5 / math.sqrt(3))
    assert spearman([1, 2, 3], [9, 8, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [4, 4, 4]) is None and spearman([1], [2]) is None


def test_hard_accuracy_weighs_levels_4_to_6_by_their_problems():
    record = {
        "by_level": {
            "1": {"accuracy": 1.0, "n": 100},
            "4": {"accuracy": 0.2, "n": 100},
            "5": {"accuracy": 0.4, "n": 100},
            "6": {"accuracy": 0.0, "n": 200},
        }
    }
    assert _hard_accuracy(record) == pytest.approx((20 + 40 + 0) / 400)
    assert _hard_accuracy({"by_level": {"1": {"accuracy": 1.0, "n": 10}}}) is None


def _cell(accuracies, hard=None, leak=None):
    seeds = []
    for i, a in enumerate(accuracies):
        seed = {"accuracy": a, "n": 300, "by_level": {lv: {"accuracy": a, "n": 50} for lv in "456"}}
        seed["hard_accuracy"] = hard[i] if hard else a
        if leak:
            seed["leak_share"] = leak[i]
        seeds.append(seed)
    return {"seeds": seeds}


def _budgets(lengths, within, accuracies):
    """per budget: lengths[b], within[b], and per-seed accuracies[b]"""
    return {
        str(b): {
            "length_mean": lengths[i],
            "within_budget_mean": within[i],
            "seeds": [{"accuracy": a} for a in accuracies[i]],
        }
        for i, b in enumerate((16, 32, 64, 128))
    }


def _results(bard_lengths=(14, 28, 50, 90)):
    good = [[0.80, 0.82, 0.81]] * 4
    return {
        "methods": {
            "sft": _cell([0.81, 0.80, 0.82]),
            "grpo_equal": _cell([0.5] * 3, hard=[0.20, 0.21, 0.22]),
            "red": _cell([0.5] * 3, hard=[0.11, 0.12, 0.10]),
            "ravr": _cell([0.5] * 3, hard=[0.10, 0.11, 0.12], leak=[0.9, 0.8, 0.7]),
        },
        "budgets": {
            "bard": _budgets(bard_lengths, (0.6, 0.7, 0.8, 0.9), good),
            "bard_rl": _budgets((40, 40, 39, 41), (0.1, 0.5, 0.9, 1.0), [[0.50, 0.52, 0.51]] * 4),
            # as accurate as bard at 16 and 32, less at 64 and 128
            "bard_additive": _budgets((14, 28, 50, 90), (0.6, 0.7, 0.8, 0.9), good[:2] + [[0.6, 0.61, 0.62]] * 2),
        },
        "settings": {"eval_k": 4, "budgets": [16, 32, 64, 128]},
    }


def test_claims_are_judged_as_written_before_the_runs():
    verdicts = {v.claim: v for v in judge_conditioned(_results())}
    assert verdicts["B1"].verdict == HOLDS and "ρ 1.00" in verdicts["B1"].note
    assert verdicts["B1b"].verdict == HOLDS  # 0.81 vs 0.81: within 2·se of SFT
    assert verdicts["B2"].verdict == HOLDS  # far above bard_rl, whose length is flat (ρ 0.32)
    assert verdicts["B3"].verdict == FAILS  # as accurate at two of the four budgets
    assert verdicts["R1"].verdict == FAILS  # 0.11 vs 0.21, se 0.008
    assert verdicts["R2"].verdict == INCONCLUSIVE  # 0.11 vs 0.11
    assert verdicts["R3"].verdict == HOLDS and "0.90" in verdicts["R3"].note


def test_length_that_barely_moves_with_the_budget_falsifies_b1():
    verdicts = {v.claim: v for v in judge_conditioned(_results(bard_lengths=(40, 42, 45, 49)))}
    assert verdicts["B1"].verdict == FAILS  # rank order perfect (ρ = 1), but 49 - 40 < 10 tokens


def test_b1b_fails_when_bard_is_below_sft_by_more_than_two_standard_errors():
    results = _results()
    results["methods"]["sft"] = _cell([0.90, 0.91, 0.92])
    assert {v.claim: v for v in judge_conditioned(results)}["B1b"].verdict == FAILS


@pytest.mark.filterwarnings("ignore:.*teacher traces exceed")
def test_conditioned_suite_end_to_end(tiny_assets, tmp_path):
    out = tmp_path / "suite"
    overrides = [
        f"model.path={tiny_assets.base}",
        f"data.train={tiny_assets.train}",
        f"data.test={tiny_assets.test}",
        f"data.val={tiny_assets.val}",
        "optim.lr=1e-4",
        "rollout.group_size=2",
        "train.prompts_per_step=2",
        "eval.max_new_tokens=16",
        "compare.eval_k=1",
    ]
    suite = dict(cells=["sft", "grpo_equal", "bard", "ravr"], seeds=1, steps=2, budgets=(8, 16), out=out, jobs=1)
    results = run_conditioned_suite("tiny", overrides, **suite, progress=False)
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["methods"]) == {"sft", "grpo_equal", "bard", "ravr"}
    # grpo_equal samples as many paths per prompt as ravr: G posterior + G' prior
    config = json.loads((out / "runs" / "grpo_equal" / "seed0" / "eval.json").read_text())["config"]
    assert config["rollout"]["group_size"] == 2 + saved["settings"]["prior_size"]
    for budget in (8, 16):
        record = json.loads((out / "runs" / "bard" / "seed0" / f"eval_budget{budget}.json").read_text())
        assert record["config"]["eval"]["budget"] == budget and 0 <= record["within_budget"] <= 1
        assert saved["budgets"]["bard"][str(budget)]["within_budget_mean"] == record["within_budget"]
    rows = [json.loads(line) for line in (out / "runs" / "ravr" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    right = sum(r["online_accuracy"] for r in rows)  # the barely trained test base is rarely right
    leak = sum(r["ravr_leak_rate"] for r in rows) / right if right else None
    assert saved["methods"]["ravr"]["seeds"][0]["leak_share"] == (leak if leak is None else pytest.approx(leak))
    assert {v["claim"] for v in saved["verdicts"]} >= {"B1", "B1b", "R1", "R3"}
    table = (out / "table.md").read_text()
    assert "| grpo_equal | grpo | 4 |" in table and "| ravr | ravr | 2 + 2 |" in table and "b = 16" in table
    assert (out / "plots" / "length_vs_budget.png").is_file()
    assert "## Claims" in (out / "report.md").read_text()
    # a second call reuses every run and every budget evaluation
    written = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("eval*.json")}
    again = run_conditioned_suite("tiny", overrides, **suite, progress=False)
    assert again["budgets"] == results["budgets"]
    assert {p: p.stat().st_mtime_ns for p in written} == written  # nothing evaluated again


def test_an_unknown_cell_is_one_line_and_exit_2(capsys):
    assert main(["compare", "--suite", "conditioned", "--methods", "sft,nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown cell 'nope'" in err[0]


def test_every_cell_trains_on_the_embedded_default_at_a_swept_rate():
    from redrl.compare import method_learning_rates
    from redrl.conditioned_suite import CELLS

    lrs = method_learning_rates("tiny", [], {method for method, _ in CELLS.values()})
    assert set(lrs) == {"sft", "grpo", "red", "bard_sft", "bard_rl", "bard_rl_additive", "ravr"}
    assert lrs["ravr"] == 1e-5  # chosen on validation by redrl sweep --methods ravr
    with pytest.raises(ValueError, match="no learning rate for kd: run redrl sweep --methods kd"):
        method_learning_rates("tiny", [], {"kd"})
