"""`redrl compare` end to end on the test-sized tiny assets: outputs, schema, resuming."""

import json

import pytest

from redrl.cli import main
from redrl.compare import parse_methods, run_compare
from redrl.methods import COMPARED


def overrides(tiny_assets):
    return [
        "optim.lr=2e-4",
        f"model.path={tiny_assets.base}",
        f"data.train={tiny_assets.train}",
        f"data.test={tiny_assets.test}",
        "rollout.group_size=2",
        "rollout.max_new_tokens=64",
        "train.prompts_per_step=2",
        "eval.max_new_tokens=16",
        "compare.eval_k=1",
        "compare.entropy_prompts=3",
    ]


def test_parse_methods():
    assert parse_methods("all") == list(COMPARED) and parse_methods(None) == list(COMPARED)
    assert parse_methods("red, sft,red") == ["red", "sft"]
    with pytest.raises(ValueError, match="unknown method 'redd'"):
        parse_methods("redd")


@pytest.mark.filterwarnings("ignore:.*teacher traces exceed")
def test_compare_writes_results_table_plots_report_and_resumes(tiny_assets, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    # Two worker processes (the default on two cores), as a user's run would go.
    results = run_compare(
        "tiny", overrides(tiny_assets), methods=["sft", "grpo"], seeds=2, steps=2, out=out, jobs=2, progress=False
    )

    saved = json.loads((out / "results.json").read_text())
    assert saved["methods"].keys() == {"sft", "grpo"}
    for entry in saved["methods"].values():
        assert {"accuracy_mean", "accuracy_std", "length_mean", "length_std", "by_level", "seeds"} <= set(entry)
        assert [s["seed"] for s in entry["seeds"]] == [0, 1]
        assert set(entry["by_level"]) == {"1", "2"}
        accuracies = [s["accuracy"] for s in entry["seeds"]]
        assert entry["accuracy_mean"] == pytest.approx(sum(accuracies) / 2)
        assert entry["accuracy_std"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / 2**0.5)
    # The entropy table has every phase, measured once per seed.
    assert set(saved["entropy_phases"]) == {"base", "rl", "sft", "rl_after_sft", "sft_after_rl"}
    assert all(
        len(row["seeds"]) == 2 and row["h_rl_mean"] > 0 and row["h_sft_mean"] > 0
        for row in saved["entropy_phases"].values()
    )
    rl_after_sft = json.loads(
        json.dumps(__import__("yaml").safe_load((out / "phases/rl_after_sft/seed0/config.yaml").read_text()))
    )
    assert (
        rl_after_sft["model"]["path"] == str(out / "runs/sft/seed0/final") and rl_after_sft["train"]["method"] == "grpo"
    )
    assert (out / "table.md").read_text().startswith("| method |")
    assert all((out / "plots" / f"{stem}.png").exists() for stem in ("h_rl", "h_sft", "w", "accuracy", "length"))
    report = (out / "report.md").read_text()
    assert "| C1 SFT is more accurate than GRPO" in report and "Entropy across phases" in report
    assert results["methods"]["sft"]["accuracy_mean"] == saved["methods"]["sft"]["accuracy_mean"]

    # Run again: every run is finished, nothing is trained or evaluated again.
    import redrl.compare as compare
    import redrl.evaluate as evaluate
    import redrl.trainer as trainer

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished run was repeated")

    monkeypatch.setattr(trainer, "train", forbidden)
    monkeypatch.setattr(evaluate, "evaluate_model", forbidden)
    monkeypatch.setattr(compare, "measure_entropies", forbidden)
    again = run_compare(
        "tiny", overrides(tiny_assets), methods=["sft", "grpo"], seeds=2, steps=2, out=out, jobs=1, progress=False
    )
    assert again["methods"] == json.loads(json.dumps(results["methods"]))

    # A changed setting is a different run: it is trained again, not mistaken for the old one.
    monkeypatch.undo()
    calls = []
    real_train = trainer.train
    monkeypatch.setattr(
        trainer, "train", lambda cfg, **kw: calls.append((cfg.train.method, cfg.train.seed)) or real_train(cfg, **kw)
    )
    run_compare(
        "tiny",
        overrides(tiny_assets) + ["optim.lr=1e-4"],
        methods=["grpo"],
        seeds=1,
        steps=2,
        out=out,
        jobs=1,
        progress=False,
    )
    assert calls == [("grpo", 0)]


def test_compare_command_rejects_unknown_methods(capsys):
    assert main(["compare", "--methods", "sft,nope", "--no-progress"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*teacher traces exceed")
def test_diff_probs_command_writes_one_span_per_token(tiny_assets, tmp_path):
    text = tmp_path / "trace.txt"
    text.write_text("Step 1: 3+4=7.\nWait, let me check: 3+4=7.\n\\boxed{7}\n")
    page = tmp_path / "same.html"
    assert (
        main(
            [
                "diff-probs",
                "--a",
                str(tiny_assets.base),
                "--b",
                str(tiny_assets.base),
                "--text",
                str(text),
                "--problem",
                "Compute 3 + 4.",
                "--out",
                str(page),
            ]
        )
        == 0
    )
    html = page.read_text()
    from transformers import AutoTokenizer

    n_tokens = len(
        AutoTokenizer.from_pretrained(tiny_assets.base)(
            text.read_text().strip("\n"), add_special_tokens=False
        ).input_ids
    )
    assert html.count("<span ") == n_tokens
    assert html.count(",0.000)") == n_tokens  # the same model twice: no token moved
    assert (
        main(["diff-probs", "--a", "tiny", "--b", "tiny", "--text", str(tmp_path / "missing.txt"), "--out", str(page)])
        == 2
    )


@pytest.mark.filterwarnings("ignore:.*teacher traces exceed")
def test_compare_with_swept_learning_rates_continues_checkpoints_at_the_tasks_values(tiny_assets, tmp_path):
    from redrl.config import load_config
    from redrl.learning_rate import task_key

    base = [o for o in overrides(tiny_assets) if not o.startswith("optim.lr=")]
    sweep = tmp_path / "lr.json"
    sweep.write_text(json.dumps({"task": task_key(load_config("tiny", base)), "chosen": {"sft": 1e-3, "grpo": 3e-5}}))
    out = tmp_path / "cmp"
    results = run_compare(
        "tiny",
        [*base, "optim.lr=null", f"optim.lr_sweep={sweep}"],
        methods=["sft", "grpo"],
        seeds=1,
        steps=2,
        out=out,
        jobs=1,
        progress=False,
    )
    assert results["settings"]["lr"] == {"sft": 1e-3, "grpo": 3e-5}
    # GRPO continued from the SFT checkpoint (another model path) still takes GRPO's value for this task.
    continued = __import__("yaml").safe_load((out / "phases/rl_after_sft/seed0/config.yaml").read_text())
    assert continued["optim"]["lr"] == 3e-5 and continued["model"]["path"] == str(out / "runs/sft/seed0/final")


def test_compare_can_plot_validation_curves(tiny_assets, tmp_path):
    out = tmp_path / "curves"
    extra = [f"data.val={tiny_assets.val}", "compare.eval_every=1"]
    results = run_compare(
        "tiny", overrides(tiny_assets) + extra, methods=["sft"], seeds=1, steps=2, out=out, jobs=1, progress=False
    )
    rows = [json.loads(line) for line in (out / "runs" / "sft" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval_accuracy" in r] == [1, 2]
    assert (out / "plots" / "validation.png").is_file()
    assert results["methods"]["sft"]["accuracy_mean"] is not None  # the table is still the test split's final model
