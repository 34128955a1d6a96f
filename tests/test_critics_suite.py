"""``redrl compare --suite critics``: the critic metrics of a run's last steps, the claims judged on
hand-made numbers, and the suite end to end on the test assets (a rerun trains nothing again)."""

import json

import pytest

from redrl.cli import main
from redrl.critics_suite import TAIL, _tail_means, judge_critics, run_critics_suite
from redrl.report import FAILS, HOLDS, INCONCLUSIVE


def test_the_critic_columns_average_the_last_steps_of_the_run(tmp_path):
    rows = [{"step": s, "value_explained_variance": float(s), "critic_std_mean": None} for s in range(1, 16)]
    rows[-1]["critic_std_mean"] = 0.5
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    means = _tail_means(str(tmp_path))
    assert means["explained_variance"] == pytest.approx(sum(range(16 - TAIL, 16)) / TAIL)  # steps 6-15
    assert means["critic_std"] == 0.5 and means["std_gradient_rho"] is None  # unlogged values are left out


def _cell(accuracy, **logged):
    seeds = [{"accuracy": a, "n": 300, **{k: v[i] for k, v in logged.items()}} for i, a in enumerate(accuracy)]
    return {"seeds": seeds}


def _results(**cells):
    base = {
        "asyppo_e4": _cell([0.60, 0.61, 0.62]),
        "ppo_e4": _cell([0.50, 0.51, 0.52]),
        "asyppo": _cell([0.55, 0.55, 0.56], explained_variance=[0.4, 0.3, 0.35], critic_std=[0.03, 0.03, 0.03],
                        std_gradient_rho=[0.1, 0.2, 0.0]),
        "ppo": _cell([0.55, 0.56, 0.55]),
        "asyppo_no_masks_e4": _cell([0.70, 0.71, 0.72]),
        "grpo_e4": _cell([0.60, 0.62, 0.61]),
        "asyppo_shared": _cell([0.5, 0.5, 0.5], critic_std=[0.01, 0.01, 0.01]),
    }  # fmt: skip
    return {"methods": base | cells, "settings": {"eval_k": 4}}


def test_claims_are_judged_as_written_before_the_runs():
    verdicts = {v.claim: v for v in judge_critics(_results())}
    assert verdicts["C1"].verdict == HOLDS  # 0.61 vs 0.51, se 0.008
    assert verdicts["C2"].verdict == INCONCLUSIVE  # 0.553 vs 0.553
    assert verdicts["C3"].verdict == FAILS  # the unmasked critics are 10 points ahead
    assert verdicts["C4"].verdict == INCONCLUSIVE  # 0.61 vs 0.61
    assert verdicts["C5"].verdict == HOLDS and "0.35" in verdicts["C5"].note  # mean 0.35 >= 0.3
    assert verdicts["C6"].verdict == HOLDS and "ratio 3.00" in verdicts["C6"].note
    assert verdicts["C7"].verdict == FAILS and "0.10" in verdicts["C7"].note  # mean ρ 0.1 < 0.3


def test_a_missing_cell_leaves_its_claims_out_and_no_value_is_inconclusive():
    results = _results(asyppo=_cell([0.5, 0.5, 0.5]))
    del results["methods"]["ppo_e4"]
    verdicts = {v.claim: v for v in judge_critics(results)}
    assert "C1" not in verdicts and verdicts["C5"].verdict == INCONCLUSIVE and verdicts["C6"].verdict == INCONCLUSIVE


@pytest.mark.filterwarnings("ignore:.*teacher traces exceed")
def test_critics_suite_end_to_end(tiny_assets, tmp_path):
    out = tmp_path / "suite"
    overrides = [
        f"model.path={tiny_assets.base}",
        f"data.train={tiny_assets.train}",
        f"data.test={tiny_assets.test}",
        "optim.lr=1e-4",
        "rollout.group_size=2",
        "rollout.max_new_tokens=16",
        "train.prompts_per_step=2",
        "eval.max_new_tokens=16",
        "compare.eval_k=1",
    ]
    suite = {"cells": ["ppo", "asyppo", "asyppo_e4", "asyppo_shared"], "seeds": 1, "steps": 2, "out": out, "jobs": 1}
    results = run_critics_suite("tiny", overrides, **suite, progress=False)
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["methods"]) == {"ppo", "asyppo", "asyppo_e4", "asyppo_shared"}
    config = json.loads((out / "runs" / "asyppo_e4" / "seed0" / "eval.json").read_text())["config"]
    assert config["train"]["ppo_epochs"] == 4 and config["train"]["method"] == "asyppo"
    shared = json.loads((out / "runs" / "asyppo_shared" / "seed0" / "eval.json").read_text())["config"]
    assert shared["critic"]["shards"] == "shared"
    rows = [
        json.loads(line) for line in (out / "runs" / "asyppo_e4" / "seed0" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["updates"] for r in rows] == [4, 4]
    entry = saved["methods"]["asyppo_e4"]
    assert entry["critic_std_mean"] == pytest.approx(sum(r["critic_std_mean"] for r in rows) / 2)
    assert entry["critic_std_mean"] > 0
    assert saved["methods"]["ppo"]["critic_std_mean"] is None  # one critic cannot disagree
    assert {v["claim"] for v in saved["verdicts"]} == {"C2", "C5", "C6", "C7"}
    assert "| asyppo_e4 | asyppo | 4 |" in (out / "table.md").read_text()
    assert (out / "plots" / "critics.png").is_file() and "C6" in (out / "report.md").read_text()
    written = {p: p.stat().st_mtime_ns for p in out.rglob("eval.json")}
    again = run_critics_suite("tiny", overrides, **suite, progress=False)
    assert again["methods"]["ppo"]["accuracy_mean"] == results["methods"]["ppo"]["accuracy_mean"]
    assert {p: p.stat().st_mtime_ns for p in written} == written  # nothing trained or evaluated again


def test_an_unknown_cell_is_one_line_and_exit_2(capsys):
    assert main(["compare", "--suite", "critics", "--methods", "ppo,nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown cell 'nope'" in err[0]


def test_every_cell_trains_on_the_embedded_default_at_a_swept_rate():
    from redrl.compare import method_learning_rates
    from redrl.critics_suite import CELLS

    lrs = method_learning_rates("tiny", [], {method for method, _ in CELLS.values()})
    assert set(lrs) == {"grpo", "ppo", "asyppo", "asyppo_no_masks"}
    assert lrs["ppo"] == lrs["asyppo"] == lrs["asyppo_no_masks"] == 3e-5  # chosen on validation by redrl sweep
