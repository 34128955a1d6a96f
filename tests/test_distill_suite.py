"""`redrl compare --suite distill`: the findings' judgement on hand-made numbers, and the suite end
to end on the test-sized tiny assets (equal-compute cells, entropies, table, plots, report)."""

import json

import pytest

from redrl.distill_suite import judge_distill, run_distill_suite
from redrl.report import FAILS, HOLDS, INCONCLUSIVE


def _results(cells: dict, entropy: dict, compute=None) -> dict:
    """results.json-shaped numbers: ``cells`` maps a cell to per-seed (avg@k, pass@k, length)."""
    methods = {
        name: {"seeds": [{"accuracy": a, "pass@4": p, "length": n, "n": 300} for a, p, n in seeds]}
        for name, seeds in cells.items()
    }
    return {
        "methods": methods,
        "base": {"seeds": [{"accuracy": 0.4, "n": 300}]},
        "entropy": entropy,
        "equal_compute": compute or {},
        "settings": {"eval_k": 4},
    }


def test_findings_are_judged_by_the_two_standard_error_rule():
    fwd = [(0.60, 0.80, 50), (0.62, 0.82, 52), (0.61, 0.81, 51)]
    rev = [(0.70, 0.72, 80), (0.72, 0.70, 82), (0.71, 0.71, 81)]  # higher avg@k, lower pass@k, longer
    results = _results(
        {"kd": fwd, "dagger": fwd, "offline_rkl": rev, "opd": rev, "kl_mix": fwd, "opd_curriculum": fwd},
        {
            "kd": [0.20, 0.21, 0.19],
            "dagger": [0.20, 0.21, 0.19],
            "offline_rkl": [0.05, 0.06, 0.04],
            "opd": [0.05, 0.06, 0.04],
            "kl_mix": [0.18, 0.2, 0.19],
            "opd_curriculum": [0.05, 0.07, 0.04],
        },
    )
    verdicts = {v.claim: v for v in judge_distill(results)}
    assert [verdicts[c].verdict for c in ("D1a", "D1b", "D1c", "D1d")] == [HOLDS] * 4
    assert verdicts["D2"].verdict == INCONCLUSIVE  # each prefix pair has the same numbers here
    assert verdicts["D6"].verdict == HOLDS  # kl_mix keeps entropy above opd's
    assert verdicts["D4"].verdict == INCONCLUSIVE  # equal entropies within noise
    # the curriculum here is lower on avg@k, higher on pass@k, shorter: one comparison fails -> the claim fails
    assert verdicts["D7"].verdict == FAILS
    assert "D3" not in verdicts and "D5" not in verdicts  # cells not run: not judged


@pytest.mark.filterwarnings("ignore:.*teacher traces exceed")
def test_distill_suite_end_to_end_with_equal_compute_cells(tiny_assets, tmp_path):
    out = tmp_path / "suite"
    overrides = [
        f"model.path={tiny_assets.base}",
        f"teacher.path={tiny_assets.base}",  # the student's own start: the KL starts at 0 and grows
        f"data.train={tiny_assets.train}",
        f"data.test={tiny_assets.test}",
        f"data.val={tiny_assets.val}",
        "rollout.group_size=2",
        "rollout.max_new_tokens=32",
        "train.prompts_per_step=2",
        "eval.max_new_tokens=16",
        "compare.eval_k=1",
        "compare.entropy_prompts=3",
        "compare.distill_eval_every=1",
    ]
    results = run_distill_suite(
        "tiny", overrides, cells=["kd", "dagger", "kd_compute"], seeds=1, steps=2, out=out, jobs=1, progress=False
    )
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["methods"]) == {"kd", "dagger", "kd_compute"}
    assert saved["teacher"]["seeds"][0]["accuracy"] == saved["base"]["seeds"][0]["accuracy"]  # the same model
    spec = saved["equal_compute"]["kd_compute"]
    assert (
        spec["method"] == "kd"
        and spec["against"] == "dagger"
        and spec["steps"] == max(1, round(2 * spec["seconds_ratio"]))
    )
    metrics = (out / "runs" / "kd_compute" / "seed0" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == spec["steps"] and "eval_accuracy" in json.loads(metrics[0])
    assert all(len(saved["entropy"][name]) == 1 and saved["entropy"][name][0] > 0 for name in saved["methods"])
    table = (out / "table.md").read_text()
    assert "| kd | teacher | 1 |" in table and "| dagger | student | 1 |" in table
    report = (out / "report.md").read_text()
    assert "**D2**" in report and "**D3**" in report and "kd for" in report
    assert (out / "plots" / "entropy.png").is_file() and (out / "plots" / "validation_accuracy.png").is_file()
    assert results["settings"]["lr"] == {"dagger": 1e-4, "kd": 1e-4}  # compare.distill_lr: no sweep covers them
