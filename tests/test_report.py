"""The report: claims judged from results.json (synthetic results with known verdicts), the table,
the plots and the token-colouring page."""

import json
import re

import pytest

from redrl.compare import aggregate, dynamics_summary
from redrl.report import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    Comparison,
    format_results_table,
    judge_claims,
    token_change_html,
    write_outputs,
)


def test_a_comparison_holds_fails_or_is_inconclusive_by_twice_its_standard_error():
    # d = 0.1; se = sqrt(0.01²/3 + 0.01²/3) ≈ 0.0082: far beyond 2·se.
    assert Comparison("x", [0.49, 0.50, 0.51], [0.39, 0.40, 0.41]).verdict() == HOLDS
    assert Comparison("x", [0.39, 0.40, 0.41], [0.49, 0.50, 0.51]).verdict() == FAILS
    # d = 0.02 with a seed spread of 0.1: se ≈ 0.082, inconclusive either way.
    assert Comparison("x", [0.4, 0.5, 0.6], [0.38, 0.48, 0.58]).verdict() == INCONCLUSIVE
    # One seed each: no spread, so no verdict, unless it is an accuracy on n problems (binomial).
    assert Comparison("x", [0.6], [0.3]).verdict() == INCONCLUSIVE
    # p = 0.6 and 0.3 on 300 problems: se = sqrt(.24/300 + .21/300) ≈ 0.0387 → d = 0.3 holds.
    assert Comparison("x", [0.6], [0.3], binomial_n=300).verdict() == HOLDS
    assert Comparison("x", [0.31], [0.3], binomial_n=300).verdict() == INCONCLUSIVE
    # Equal values with no spread cannot say "a > b": the claim does not hold.
    assert Comparison("x", [0.2, 0.2], [0.2, 0.2]).verdict() == FAILS
    assert Comparison("x", [], [0.2]).verdict() == INCONCLUSIVE


def _seed(accuracy, length, seed=0, **dynamics):
    return {
        "seed": seed,
        "accuracy": accuracy,
        "length": length,
        "by_level": {"1": {"accuracy": accuracy, "length": length}},
        "dynamics": dynamics,
    }


def _method(values, length, **dynamics):
    """Three seeds around ``values`` (±0.005) with the same length and dynamics."""
    return aggregate(
        [_seed(values + delta, length + 10 * delta, i, **dynamics) for i, delta in enumerate((-0.005, 0.0, 0.005))]
    )


def synthetic_results():
    """Every method at a chosen accuracy; seed spread ±0.005, so gaps of 0.02 and more are decisive."""
    calm = dict(h_rl_late=0.8, h_sft_late=0.9, log_gap_late=0.1, ratio_cv=0.1, accuracy_drawdown=0.05)
    methods = {
        "sft": _method(0.50, 120, h_sft_late=0.4),
        "grpo": _method(0.30, 20, h_rl_late=0.3, accuracy_drawdown=0.05),
        "sft_grpo": _method(0.40, 60),  # C2: below SFT → does not hold
        "mixpolicy": _method(0.45, 30, **{**calm, "h_rl_late": 0.2}),
        "onpolicy_offline": _method(0.35, 40, **{**calm, "accuracy_drawdown": 0.4}),
        "luffy": _method(0.52, 50, **calm),
        "srft": _method(0.53, 50, **calm),
        "relift": _method(0.42, 30, **calm),
        "bread": _method(0.44, 30, **calm),
        "red_entropy": _method(0.55, 50, **{**calm, "h_rl_late": 0.5, "h_sft_late": 0.6, "log_gap_late": 0.5}),
        "red_shift": _method(0.56, 50, **{**calm, "ratio_cv": 0.5}),
        "red": _method(0.60, 60, **calm),
    }
    phases = {
        "base": {"seeds": [{"h_rl": 1.0 + d, "h_sft": 2.0 + d} for d in (-0.01, 0, 0.01)]},
        "rl": {"seeds": [{"h_rl": 0.5 + d, "h_sft": 1.98 + d} for d in (-0.01, 0, 0.01)]},
        "sft": {"seeds": [{"h_rl": 0.6 + d, "h_sft": 0.7 + d} for d in (-0.01, 0, 0.01)]},
    }
    return {
        "methods": methods,
        "base": aggregate([_seed(0.3, 20)]),
        "entropy_phases": phases,
        "settings": {"test_problems": 300, "seeds": 3, "steps": 40},
    }


def test_each_claim_is_judged_from_the_numbers():
    verdicts = {v.claim: v.verdict for v in judge_claims(synthetic_results())}
    assert verdicts == {
        "C1": HOLDS,  # SFT 0.50 > GRPO 0.30 and LEN 120 > 20
        "C2": FAILS,  # SFT→GRPO 0.40 < SFT 0.50
        "C3": HOLDS,  # 0.52/0.53/0.60 against 0.42/0.44
        "C4": HOLDS,  # RED 0.60 above every other method and shorter than SFT (60 < 120)
        "C5": HOLDS,  # MixPolicy's late H_rl 0.2 < RED's 0.8; on-policy offline's drawdown 0.4 > 0.05
        "C6": HOLDS,  # RED's entropies above RED-(I)'s and closer; its ratio steadier than RED-(II)'s
        "C7": HOLDS,  # RL: H_rl 1.0 → 0.5 (-50%), H_sft 2.0 → 1.98 (-1%); SFT lowers both
        "C8": HOLDS,  # RED 0.60 > 0.55 and 0.56
    }


def test_verdicts_follow_the_results_when_they_change():
    results = synthetic_results()
    results["methods"]["red"] = _method(
        0.54, 60, h_rl_late=0.8, h_sft_late=0.9, log_gap_late=0.1, ratio_cv=0.1, accuracy_drawdown=0.05
    )
    results["methods"]["sft_grpo"] = _method(0.70, 60)
    del results["methods"]["bread"]
    results["entropy_phases"]["rl"] = {"seeds": [{"h_rl": 0.5 + d, "h_sft": 0.5 + d} for d in (-0.01, 0, 0.01)]}
    verdicts = {v.claim: v.verdict for v in judge_claims(results)}
    assert verdicts["C2"] == HOLDS  # 0.70 above SFT and GRPO now
    assert verdicts["C3"] == INCONCLUSIVE  # BREAD missing: its comparisons cannot be judged, the rest hold
    assert verdicts["C4"] == FAILS  # RED 0.54 below SFT→GRPO 0.70
    assert verdicts["C8"] == FAILS  # RED 0.54 < RED-(II) 0.56
    assert verdicts["C7"] == FAILS  # RL now lowers H_sft by 75%, more than H_rl's 50%


def test_table_marks_best_and_second_and_keeps_base_out_of_the_ranking():
    table = format_results_table(synthetic_results())
    lines = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert "**60.0 ± 0.5**" in lines["RED"] and "_56.0 ± 0.5_" in lines["RED-(II)"]
    assert "**" not in lines["base"] and "_" not in lines["base"].replace("base", "")
    assert lines["SFT"].rstrip(" |").endswith("120 ± 0")  # LEN column, mean ± std
    assert table.splitlines()[0] == "| method | L1 | overall | LEN |"


def test_table_reports_prompts_sampled_beside_the_accuracy_when_a_run_spent_extra_rollouts():
    results = synthetic_results()
    for seed in results["methods"]["red"]["seeds"]:
        seed["dynamics"] = {**seed.get("dynamics", {}), "prompts_sampled_per_step": 20.0}
    lines = format_results_table(results).splitlines()
    assert lines[0].endswith("| LEN | prompts sampled / step |")
    assert [line for line in lines if line.startswith("| RED |")][0].endswith("| 20.0 |")
    assert "prompts sampled" not in format_results_table(synthetic_results())  # nobody spent extra: no column


def test_dynamics_summary_of_a_metrics_log():
    records = [
        {
            "step": i + 1,
            "h_rl": 2.0 - 0.1 * i,
            "h_sft": 1.0,
            "w": 1.0 + (i % 2),
            "online_accuracy": [0.5, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0][i],
            "online_length": 10.0,
        }
        for i in range(12)
    ]
    summary = dynamics_summary(records)
    assert summary["h_rl_early"] == pytest.approx(2.0)  # first tenth: step 1
    assert summary["h_rl_late"] == pytest.approx((1.1 + 1.0 + 0.9) / 3)  # last quarter: steps 10-12
    assert summary["w_mean"] == pytest.approx(1.5)
    assert summary["accuracy_drawdown"] == pytest.approx(0.5)  # the 5-step average falls from 0.5 to 0
    assert summary["log_gap_late"] > 0 and summary["ratio_cv"] > 0
    sft_only = dynamics_summary([{"step": 1, "h_rl": None, "h_sft": 1.0, "w": 1.0, "online_accuracy": None}])
    assert sft_only["h_rl_late"] is None and sft_only["accuracy_drawdown"] is None and sft_only["ratio_cv"] is None


def test_write_outputs_from_results_alone(tmp_path):
    results = synthetic_results()
    for name, entry in results["methods"].items():  # give two methods real-looking metric logs to plot
        if name in ("red", "grpo"):
            for seed in entry["seeds"]:
                run = tmp_path / "runs" / name / f"seed{seed['seed']}"
                run.mkdir(parents=True)
                (run / "metrics.jsonl").write_text(
                    "".join(
                        json.dumps(
                            {
                                "step": s,
                                "h_rl": 1.0 / s,
                                "h_sft": 1.0,
                                "w": 1.0,
                                "online_accuracy": 0.1 * s,
                                "online_length": 10 + s,
                            }
                        )
                        + "\n"
                        for s in range(1, 6)
                    )
                )
                seed["run_dir"] = str(run)
    written = write_outputs(results, tmp_path)
    report = written["report"].read_text()
    for claim in ("C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8"):
        assert re.search(rf"\| {claim} .* \| \*\*(holds|does not hold|inconclusive)\*\* \|", report), claim
    assert "Entropy across phases" in report and "![h_rl](plots/h_rl.png)" in report
    for stem in ("h_rl", "h_sft", "w", "accuracy", "length"):
        assert (tmp_path / "plots" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "table.md").read_text().startswith("| method |")


def test_token_change_page_colours_up_red_and_down_blue():
    page = token_change_html(["a", "<b>", "c"], [0.2, 0.5, 0.3], [0.7, 0.5, 0.1])
    spans = re.findall(
        r'<span style="background:rgba\((\d+),(\d+),(\d+),([\d.]+)\)" title="([^"]*)">([^<]*)</span>', page
    )
    assert [(s[0], s[3], s[5]) for s in spans] == [
        ("220", "0.500", "a"),
        ("40", "0.000", "&lt;b&gt;"),
        ("40", "0.200", "c"),
    ]
    assert "0.200 → 0.700" in spans[0][4]
    with pytest.raises(ValueError, match="3 tokens but 2"):
        token_change_html(["a", "b", "c"], [0.1, 0.2], [0.1, 0.2])


def test_report_and_env_do_not_import_torch(tmp_path):
    import subprocess
    import sys

    results = tmp_path / "results.json"
    results.write_text(json.dumps(synthetic_results()))
    script = (
        "import sys\nfrom redrl.cli import main\nassert main(sys.argv[1:]) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    for args in (["report", str(results)], ["env"]):
        done = subprocess.run(
            [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "report.md").is_file()
