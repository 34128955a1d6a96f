"""The training loop: group assembly, one smoke run per method, checkpoints, micro-batch invariance."""

import json
import math

import pytest
import torch

from redrl.batch import assemble_batch
from redrl.config import load_config
from redrl.data.training import PromptSampler
from redrl.methods import COMPARED, METHODS
from redrl.strategies import teacher_prefix_rollouts
from redrl.trainer import train


def test_assemble_batch_puts_the_teacher_row_last_in_every_group():
    prompts = [[1, 2], [3, 4, 5]]
    rollouts = [[10], [11, 12], [13, 14, 15], [20], [21], [22, 23]]  # G = 3, prompt-major
    rewards = [1.0, 0.0, 0.0, None, 1.0, 1.0]
    teacher = [[30, 31, 32, 33], [40]]
    batch = assemble_batch(
        prompts, rollouts, rewards, teacher, [1.0, 1.0], group_size=3, method=METHODS["red"], pad_id=0
    )
    assert len(batch) == 8
    assert batch.is_offline.tolist() == [False, False, False, True] * 2
    # Row 3 is prompt [1, 2] + teacher [30..33]; row 5 is prompt [3, 4, 5] + rollout [21].
    assert batch.input_ids[3, :6].tolist() == [1, 2, 30, 31, 32, 33]
    assert batch.response_mask[3].tolist() == [False, False, True, True, True, True]  # width 6, no padding
    assert batch.response_lengths().tolist() == [1, 2, 3, 4, 1, 1, 2, 1]
    assert batch.attention_mask.sum(-1).tolist() == [3, 4, 5, 6, 4, 4, 5, 4]
    # Group 0: rewards (1, 0, 0 | teacher 1): r̄ = 1/3 over the rollouts; advantages over all 4 rows.
    assert batch.group_accuracy[:4].tolist() == pytest.approx([1 / 3] * 4)
    expected = torch.tensor([1.0, 0.0, 0.0, 1.0])
    expected = (expected - expected.mean()) / (expected.std() + 1e-6)
    torch.testing.assert_close(batch.advantages[:4], expected)
    # Group 1: the ungradable rollout gets advantage 0, NaN reward; r̄ = 2/2 over the gradable ones.
    assert math.isnan(batch.rewards[4]) and batch.advantages[4] == 0
    assert batch.group_accuracy[4].item() == pytest.approx(1.0)
    # The loss mask sits on the target grid: it selects exactly the response tokens as targets.
    targets = batch.input_ids[:, 1:][batch.loss_mask()]
    assert targets.tolist() == [10, 11, 12, 13, 14, 15, 30, 31, 32, 33, 20, 21, 22, 23, 40]


def test_assemble_batch_for_grpo_and_sft():
    prompts, rollouts, teacher = [[1]], [[5], [6]], [[7, 8]]
    grpo = assemble_batch(prompts, rollouts, [1.0, 0.0], teacher, [1.0], group_size=2, method=METHODS["grpo"], pad_id=0)
    assert grpo.is_offline.tolist() == [False, False]
    sft = assemble_batch(prompts, [], [], teacher, [1.0], group_size=2, method=METHODS["sft"], pad_id=0)
    assert sft.is_offline.tolist() == [True] and sft.input_ids.tolist() == [[1, 7, 8]]


def test_prompt_sampler_covers_each_epoch_once_and_is_seeded():
    sampler = PromptSampler(10, seed=3)
    first_epoch = sampler.next(10)
    assert sorted(first_epoch) == list(range(10))
    assert PromptSampler(10, seed=3).next(10) == first_epoch
    assert sorted(sampler.next(10)) == list(range(10))


def tiny_config(tiny_assets, tmp_path, method, **train):
    return load_config(
        "tiny",
        model={"path": str(tiny_assets.base)},
        optim={"lr": 2e-4},
        data={"train": str(tiny_assets.train), "test": str(tiny_assets.test)},
        rollout={"group_size": 3, "max_new_tokens": 64},
        train={"method": method, "steps": 2, "prompts_per_step": 2, "out": str(tmp_path / method), **train},
        eval={"k": 2, "max_new_tokens": 32},
        teacher={"path": None},  # the distillation tests name their own teacher
    )


def test_compare_runs_every_method_once():
    assert set(COMPARED) <= set(METHODS) and len(COMPARED) == len(set(COMPARED)) == 12  # the RED paper's Table 2
    assert all(m.source for m in METHODS.values())  # every method names where it comes from


@pytest.mark.parametrize("method", sorted(COMPARED))
def test_each_method_trains_logs_and_saves(tiny_assets, tmp_path, method):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = train(tiny_config(tiny_assets, tmp_path, method), progress=False)
    records = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for key in (
        "reward",
        "online_accuracy",
        "h_rl",
        "h_sft",
        "delta_h_rl",
        "delta_h_sft",
        "w",
        "pi_off_mean",
        "clip_fraction",
        "online_length",
        "offline_length",
        "grad_norm",
        "lr",
        "rollout_tokens_per_s",
        "train_tokens_per_s",
        "step_time",
        "loss",
    ):
        assert key in records[-1], key  # every method logs the same keys (null where undefined)
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    if not METHODS[method].rollouts:  # no rollouts, no rollout accuracy (not a 0.0 from grading nothing)
        assert all(r["online_accuracy"] is None and r["h_rl"] is None for r in records)
    staged = bool(METHODS[method].stages)
    if staged:  # SFT for one step, then GRPO for one, numbered on
        assert [r["stage"] for r in records] == ["sft", "grpo"]
    if METHODS[method].offline and not staged:  # the teacher row always carries signal here; GRPO's may be all-fail
        assert all(r["grad_norm"] > 0 for r in records)
    if METHODS[method].regulator:  # red, red_entropy
        assert records[0]["w"] == 1.0 and 1.0 <= records[1]["w"] <= 3.0  # clip(ΔH_sft/ΔH_rl, 1, G = 3)
        assert records[1]["delta_h_rl"] is not None
    elif method not in ("sft", "sft_grpo"):  # every other method weighs teacher rows by w = 1
        assert all(r["w"] == 1.0 and r["delta_h_rl"] is None for r in records)
    last = records[-1]
    m = METHODS[method]
    ratio = m.offline_ratio if m.offline and m.rollouts and m.objective == "red" and not staged else None
    if ratio == "one":  # MixPolicy, RED-(I): π_off = 1
        assert last["pi_off_mean"] == pytest.approx(1.0)
    elif ratio == "on_policy":  # π_off = π
        assert last["pi_off_mean"] == pytest.approx(last["offline_pi_mean"], rel=1e-5)
    elif ratio == "luffy":  # logged π_off is π + γ
        assert last["pi_off_mean"] == pytest.approx(last["offline_pi_mean"] + 0.1, rel=1e-5)
    elif ratio == "shift":  # RED, RED-(II): π ≤ π + (1 − π)·r̄ ≤ 1
        assert last["offline_pi_mean"] - 1e-6 <= last["pi_off_mean"] <= 1.0 + 1e-6
    # The checkpoint reloads with plain transformers and generates.
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Compute 3 + 4."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert output.shape[1] > prompt["input_ids"].shape[1]
    # final/ is a model to ship: weights, tokenizer, chat template, generation config, a model card;
    # no optimizer, generator or trainer state (those live in checkpoint-N, see the resume tests).
    shipped = {p.name for p in final.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md", "manifest.json"} <= shipped
    assert not shipped & {"trainer_state.json", "optimizer.safetensors", "rng-rank0.safetensors"}, shipped
    assert len({p.stat().st_mode for p in final.iterdir()}) == 1  # one file mode for all (no stray 0600)
    card = (final / "README.md").read_text()
    assert f"method `{'grpo' if staged else method}`" in card and "```yaml" in card and not list(final.glob("*.pt"))


def test_micro_batches_give_the_same_update_as_one_batch(tiny_assets, tmp_path):
    # Gradient accumulation (with the no-grad entropy pre-pass) must reproduce the one-pass step.
    from transformers import AutoModelForCausalLM

    weights = []
    for micro in (64, 3):
        cfg = tiny_config(tiny_assets, tmp_path / str(micro), "red", steps=1, micro_batch_size=micro)
        model = AutoModelForCausalLM.from_pretrained(train(cfg, progress=False))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("prefix", ["teacher", "student"])
def test_distillation_micro_batches_give_the_same_update_as_one_batch(tiny_assets, tmp_path, perturbed_teacher, prefix):
    from transformers import AutoModelForCausalLM

    weights = []
    for micro in (64, 3):
        cfg = tiny_config(tiny_assets, tmp_path / str(micro), "kl_mix", steps=1, micro_batch_size=micro)
        cfg.teacher.path, cfg.distill.prefix = str(perturbed_teacher), prefix  # both KL directions (alpha 0.8)
        model = AutoModelForCausalLM.from_pretrained(train(cfg, progress=False))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=1e-6)


def test_staged_method_starts_rl_from_the_sft_checkpoint(tiny_assets, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import redrl.modeling as modeling

    loaded = []
    real_load = modeling.load_model_and_tokenizer
    monkeypatch.setattr(
        modeling, "load_model_and_tokenizer", lambda path, **kw: loaded.append(path) or real_load(path, **kw)
    )
    final = train(tiny_config(tiny_assets, tmp_path, "sft_grpo", steps=4), progress=False)
    out = tmp_path / "sft_grpo"
    sft_final = out / "stage-1-sft" / "final"
    assert loaded == [str(tiny_assets.base), str(sft_final)]  # GRPO loads what SFT saved, not the base
    base = load_file(tiny_assets.base / "model.safetensors")
    after_sft = load_file(sft_final / "model.safetensors")
    assert any(not torch.equal(base[k], after_sft[k]) for k in base)  # SFT really moved the weights
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["stage"]) for r in records] == [(1, "sft"), (2, "sft"), (3, "grpo"), (4, "grpo")]
    assert final == out / "final" and (final / "model.safetensors").exists()
    stage2 = load_config(str(out / "stage-2-grpo" / "config.yaml"))
    assert stage2.model.path == str(sft_final) and stage2.train.method == "grpo"


def test_relift_takes_an_sft_step_when_its_buffer_is_full(tiny_assets, tmp_path, monkeypatch):
    from redrl.rewards import GRADERS

    monkeypatch.setitem(GRADERS, "integer", lambda text, answer: 0.0)  # every rollout fails
    cfg = tiny_config(tiny_assets, tmp_path, "relift", steps=3)
    cfg.baselines.relift_buffer = 2
    records = [
        json.loads(line) for line in (train(cfg, progress=False).parent / "metrics.jsonl").read_text().splitlines()
    ]
    # Step 1: RL, both prompts fail and fill the buffer (2); step 2: the SFT step on their traces;
    # step 3: RL again on new prompts.
    assert [r["relift_sft_step"] for r in records] == [0, 1, 0]
    assert records[0]["relift_buffer"] == 2 and records[2]["relift_buffer"] == 2
    sft_step = records[1]
    assert sft_step["h_rl"] is None and sft_step["h_sft"] > 0 and sft_step["online_accuracy"] is None
    assert sft_step["grad_norm"] > 0 and records[0]["grad_norm"] == 0  # all-fail RL step: zero advantages


class _Tokenizer:
    eos_token_id = 0

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(str(t) for t in row if t != 0) for row in rows]


class _Generator:
    """Returns the same continuation [7, 0] for every sample and records the prompts it was given."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, n, *, temperature, max_new_tokens):
        self.calls.append((prompts, n, max_new_tokens))
        return [[7, 0] for _ in prompts for _ in range(n)]


def test_bread_uses_the_shortest_teacher_prefix_that_rescues_a_group(monkeypatch):
    import redrl.strategies as strategies

    # A sample is correct when the teacher's token 52 precedes it (the prefix reached it).
    monkeypatch.setattr(strategies, "grade_checked", lambda text, answer, grader: (float("52" in text.split()), False))
    prompts = [[1], [2], [3]]
    rollouts = [[9, 0], [9, 0], [9, 0], [9, 0], [9, 0], [9, 0]]  # G = 2
    rewards = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]  # group 0 has a success; groups 1 and 2 all fail
    teacher = [[50, 51, 52, 53, 0], [50, 51, 52, 53, 0], [60, 61, 62, 63, 0]]
    generator = _Generator()
    new_prompts, new_rollouts, new_rewards, stats = teacher_prefix_rollouts(
        generator,
        _Tokenizer(),
        prompts,
        rollouts,
        rewards,
        teacher,
        ["x"] * 3,
        group_size=2,
        fractions=(0.25, 0.5, 0.75),
        temperature=1.0,
        max_new_tokens=10,
        grader="integer",
    )
    # Fraction 0.25 gives prefix [50] (fails), 0.5 gives [50, 51] (fails), 0.75 gives [50, 51, 52]: rescued.
    assert new_prompts == [[1], [2, 50, 51, 52], [3]]
    assert new_rollouts[2:4] == [[7, 0], [7, 0]] and new_rewards[2:4] == [1.0, 1.0]
    assert new_rollouts[4:] == rollouts[4:] and new_rewards[4:] == [0.0, 0.0]  # never rescued: its own rollouts
    assert new_rollouts[:2] == rollouts[:2] and new_rewards[:2] == rewards[:2]  # had a success: untouched
    assert stats == {"bread_failed_groups": 2, "bread_rescued": 1, "bread_prefix": 0.75}
    # Only the two failed groups were re-sampled, G each, the prefix joined to the prompt.
    assert [call[0] for call in generator.calls] == [
        [[2, 50], [3, 60]],
        [[2, 50, 51], [3, 60, 61]],
        [[2, 50, 51, 52], [3, 60, 61, 62]],
    ]
    assert all(call[1] == 2 for call in generator.calls)


@pytest.mark.parametrize("failed_grading, expected", [("ungraded", [1.0, None]), ("wrong", [1.0, 0.0])])
def test_bread_grades_its_resamples_as_every_rollout_is_graded(monkeypatch, failed_grading, expected):
    import itertools

    import redrl.strategies as strategies

    # Of the two re-samples, the first is right and grading the second fails (an error or a timeout):
    # data.failed_grading says what the failure is, as for every rollout.
    outcomes = itertools.cycle([(1.0, False), (None, True)])
    monkeypatch.setattr(strategies, "grade_checked", lambda text, answer, grader: next(outcomes))
    _, _, rewards, stats = teacher_prefix_rollouts(
        _Generator(),
        _Tokenizer(),
        [[1]],
        [[9, 0], [9, 0]],
        [0.0, 0.0],
        [[50, 51, 0]],
        ["x"],
        group_size=2,
        fractions=(0.5,),
        temperature=1.0,
        max_new_tokens=10,
        grader="integer",
        failed_grading=failed_grading,
    )
    assert stats["bread_rescued"] == 1 and rewards == expected


def test_kl_to_the_reference_starts_at_zero_and_grows(tiny_assets, tmp_path, monkeypatch):
    import zlib

    from redrl.rewards import GRADERS

    # A third of the answers right, fixed by their text: GRPO gets advantages, so the policy moves.
    monkeypatch.setitem(GRADERS, "integer", lambda text, answer: float(zlib.crc32(text.encode()) % 3 == 0))
    cfg = tiny_config(tiny_assets, tmp_path, "grpo", steps=3)
    cfg.loss.kl_coef = 0.1
    cfg.optim.lr = 1e-2  # large steps, so the policy leaves its reference at once
    records = [
        json.loads(line) for line in (train(cfg, progress=False).parent / "metrics.jsonl").read_text().splitlines()
    ]
    # Step 1: the policy is the reference, so k3 is exactly 0; afterwards they differ.
    assert records[0]["kl_ref"] == 0.0
    assert records[1]["kl_ref"] > 0 and records[2]["kl_ref"] > 0
    plain = tiny_config(tiny_assets, tmp_path / "plain", "grpo", steps=1)
    assert (
        json.loads((train(plain, progress=False).parent / "metrics.jsonl").read_text())["kl_ref"] is None
    )  # off: not computed


def test_kl_to_the_reference_is_refused_where_the_objective_has_none(tiny_assets, tmp_path):
    cfg = tiny_config(tiny_assets, tmp_path, "srft")
    cfg.loss.kl_coef = 0.1
    with pytest.raises(ValueError, match="the srft objective of srft has no KL-to-reference term"):
        train(cfg, progress=False)


def test_the_regulator_cap_is_its_own_key(tiny_assets, tmp_path):
    cfg = tiny_config(tiny_assets, tmp_path, "red", steps=3)
    cfg.loss.regulator_max_weight = 1.0  # G = 3 would allow w up to 3
    records = [
        json.loads(line) for line in (train(cfg, progress=False).parent / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["w"] for r in records] == [1.0, 1.0, 1.0]


def test_a_directory_holding_a_run_is_refused_unless_resumed_or_overwritten(tiny_assets, tmp_path):
    cfg = tiny_config(tiny_assets, tmp_path, "grpo", steps=2, save_every=1)
    train(cfg, progress=False)
    with pytest.raises(
        ValueError, match=r"already holds a run \(.*final/.*\); pass --resume to continue it or --overwrite"
    ):
        train(cfg, progress=False)
    cfg.train.overwrite = True
    (tmp_path / "grpo" / "notes.txt").write_text("mine")  # not a run's file: kept
    train(cfg, progress=False)
    out = tmp_path / "grpo"
    assert (out / "notes.txt").read_text() == "mine"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # one run's steps, not two
    cfg.train.overwrite, cfg.train.resume = False, True
    train(cfg, progress=False)  # resuming a finished run is allowed


def test_the_default_output_directory_names_the_method():
    assert load_config("tiny", ["train.method=sft"]).train.out == "runs/sft"
    assert load_config("tiny", ["train.out=elsewhere"]).train.out == "elsewhere"


def test_report_to_tensorboard_logs_what_metrics_jsonl_holds(tiny_assets, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tiny_assets, tmp_path, "red", report_to="tensorboard")
    final = train(cfg, progress=False)
    records = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert all(isinstance(r["time"], float) and r["time"] > 1.7e9 for r in records)  # wall clock on every row
    events = EventAccumulator(str(final.parent / "tensorboard")).Reload()
    logged = events.Scalars("loss")
    assert [e.step for e in logged] == [1, 2]
    assert [e.value for e in logged] == pytest.approx([r["loss"] for r in records], rel=1e-6)


def test_a_tracker_that_is_not_installed_is_one_clear_line(tiny_assets, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ImportError, match=r"train.report_to=wandb needs wandb: pip install 'redrl\[wandb\]'"):
        train(tiny_config(tiny_assets, tmp_path, "red", report_to="wandb"), progress=False)


def test_evaluation_during_training_logs_keeps_the_best_and_changes_nothing_else(tiny_assets, tmp_path):
    plain = train(tiny_config(tiny_assets, tmp_path / "plain", "red", steps=3), progress=False)
    cfg = tiny_config(tiny_assets, tmp_path / "eval", "red", steps=3, eval_every=2, keep_best=True)
    cfg.train.eval_on = str(tiny_assets.val)
    evaluated = train(cfg, progress=False)
    rows = [json.loads(line) for line in (evaluated.parent / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (plain.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in reference]  # training's random state untouched
    assert "eval_accuracy" not in rows[0] and "eval_accuracy" not in rows[2]
    assert 0.0 <= rows[1]["eval_accuracy"] <= rows[1]["eval_pass@2"] <= 1.0 and rows[1]["eval_length"] > 0
    best = evaluated.parent / "best"
    assert (best / "model.safetensors").is_file() and "evaluated accuracy" in (best / "README.md").read_text()
    card = (evaluated / "README.md").read_text()  # the final model's card carries the last evaluation
    assert f"evaluated during training (last at step 2, on `{tiny_assets.val}`): avg@2 " in card
    assert f"{100 * rows[1]['eval_accuracy']:.1f}%" in card and "3 optimizer steps of" in card


@pytest.mark.parametrize("method", ["kd", "dagger", "offline_rkl", "opd", "kl_mix"])
def test_each_distillation_cell_trains_on_the_teachers_distributions(tiny_assets, tmp_path, perturbed_teacher, method):
    cfg = tiny_config(tiny_assets, tmp_path, method)
    cfg.teacher.path = str(perturbed_teacher)
    records = [
        json.loads(line) for line in (train(cfg, progress=False).parent / "metrics.jsonl").read_text().splitlines()
    ]
    student_prefix = method in ("dagger", "opd", "kl_mix")
    alpha = {"kd": 1.0, "dagger": 1.0, "offline_rkl": 0.0, "opd": 0.0, "kl_mix": 0.8}[method]
    for r in records:
        assert r["kl_fwd"] > 0 and r["kl_rev"] > 0 and r["grad_norm"] > 0 and r["distill_entropy"] > 0
        # the loss is the alpha-mixture of the two logged token means (one micro-batch)
        assert r["loss"] == pytest.approx(alpha * r["kl_fwd"] + (1 - alpha) * r["kl_rev"], rel=1e-5)
        # student prefixes are rollouts (graded, so online accuracy exists); teacher prefixes are the traces
        assert (r["online_accuracy"] is not None) == student_prefix and (
            r["offline_length"] is not None
        ) != student_prefix
    # the first step starts from the same student whatever the cell: equal prefixes give equal KLs
    if method == "kd":
        cfg2 = tiny_config(tiny_assets, tmp_path / "rkl", "offline_rkl", steps=1)
        cfg2.teacher.path = str(perturbed_teacher)
        first = json.loads((train(cfg2, progress=False).parent / "metrics.jsonl").read_text().splitlines()[0])
        assert first["kl_fwd"] == pytest.approx(records[0]["kl_fwd"]) and first["kl_rev"] == pytest.approx(
            records[0]["kl_rev"]
        )


def test_distill_prefix_and_alpha_override_the_preset(tiny_assets, tmp_path, perturbed_teacher):
    cfg = tiny_config(tiny_assets, tmp_path, "opd", steps=1)  # student prefix, reverse KL ...
    cfg.teacher.path = str(perturbed_teacher)
    cfg.distill.prefix, cfg.distill.alpha = "teacher", 0.5  # ... made teacher prefix, half-half
    (r,) = [json.loads(line) for line in (train(cfg, progress=False).parent / "metrics.jsonl").read_text().splitlines()]
    assert r["online_accuracy"] is None and r["loss"] == pytest.approx(0.5 * r["kl_fwd"] + 0.5 * r["kl_rev"], rel=1e-5)
    with pytest.raises(ValueError, match="set teacher.path"):
        train(tiny_config(tiny_assets, tmp_path / "none", "kd", steps=1), progress=False)


@pytest.mark.parametrize("method", ["kd", "opd"])
def test_the_length_curriculum_bounds_what_is_trained_and_logs_its_window(
    tiny_assets, tmp_path, perturbed_teacher, method
):
    cfg = tiny_config(tiny_assets, tmp_path, method, steps=3)
    cfg.teacher.path = str(perturbed_teacher)
    d = cfg.distill
    d.curriculum, d.window_start, d.window_every, d.entropy_threshold = True, 4, 2, 0.0  # grows after step 2
    records = [
        json.loads(line) for line in (train(cfg, progress=False).parent / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["window"] for r in records] == [4, 4, 8]
    length = "online_length" if method == "opd" else "offline_length"
    assert all(r[length] <= r["window"] for r in records)  # rollouts or teacher tokens cut to the window
    with pytest.raises(ValueError, match="distill.curriculum applies to the distillation methods, not red"):
        bad = tiny_config(tiny_assets, tmp_path / "red", "red", steps=1)
        bad.distill.curriculum = True
        train(bad, progress=False)


def _kd_metrics(tiny_assets, out, teacher, steps, **distill):
    """The per-step metrics of a kd run from ``teacher`` with ``distill.*`` settings."""
    cfg = tiny_config(tiny_assets, out, "kd", steps=steps)
    cfg.teacher.path = str(teacher)
    for key, value in distill.items():
        setattr(cfg.distill, key, value)
    path = train(cfg, progress=False).parent / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cached_teacher_log_probs_train_as_the_teacher_does(tiny_assets, tmp_path, perturbed_teacher, monkeypatch):
    from redrl import teacher as teacher_module

    monkeypatch.setenv("REDRL_CACHE", str(tmp_path / "cache"))

    def run(name, **distill):
        return _kd_metrics(tiny_assets, tmp_path / name, perturbed_teacher, 3, **distill)

    exact = run("exact")
    full = run("full", cache_teacher=True, cache_top_k=None)  # the whole distribution: the same run
    for a, b in zip(exact, full):
        for key in ("loss", "kl_fwd", "kl_rev", "distill_entropy", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
    assert len(list((tmp_path / "cache" / "teacher-logprobs").glob("*.safetensors"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("the cache was computed again")

    monkeypatch.setattr(teacher_module.TeacherCache, "compute", refuse)
    again = run("again", cache_teacher=True, cache_top_k=None)  # read back from the cache directory
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in full], rel=1e-6)
    monkeypatch.undo()
    monkeypatch.setenv("REDRL_CACHE", str(tmp_path / "cache"))
    top2 = run("top2", cache_teacher=True, cache_top_k=2)  # 2 entries + the tail: a lower bound
    assert top2[0]["kl_fwd"] < exact[0]["kl_fwd"] and top2[0]["kl_rev"] < exact[0]["kl_rev"]
    assert top2[0]["distill_entropy"] == pytest.approx(
        exact[0]["distill_entropy"], rel=1e-5
    )  # the student's side is exact
    with pytest.raises(ValueError, match="distill.cache_teacher caches the teacher on the traces"):
        cfg = tiny_config(tiny_assets, tmp_path / "opd", "opd", steps=1)
        cfg.teacher.path, cfg.distill.cache_teacher = str(perturbed_teacher), True
        train(cfg, progress=False)


def test_teacher_samples_replace_the_traces_drawn_once_and_reused(
    tiny_assets, tmp_path, perturbed_teacher, monkeypatch
):
    monkeypatch.setenv("REDRL_CACHE", str(tmp_path / "cache"))

    def run(name, **distill):
        return _kd_metrics(tiny_assets, tmp_path / name, perturbed_teacher, 2, **distill)

    traces = run("traces")
    sampled = run("sampled", teacher_samples=True)
    (stored,) = (tmp_path / "cache" / "teacher-samples").glob("*.json")
    samples = json.loads(stored.read_text())
    assert len(samples) == len(tiny_assets.train.read_text().splitlines())
    assert all(0 < len(s) <= 64 for s in samples)  # rollout.max_new_tokens
    assert [r["offline_length"] for r in sampled] != [r["offline_length"] for r in traces]  # other rows trained
    again = run("again", teacher_samples=True, cache_teacher=True, cache_top_k=None)  # the same samples, read back
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in sampled], rel=1e-5)
    with pytest.raises(ValueError, match="distill.teacher_samples replaces the traces"):
        cfg = tiny_config(tiny_assets, tmp_path / "opd", "opd", steps=1)
        cfg.teacher.path, cfg.distill.teacher_samples = str(perturbed_teacher), True
        train(cfg, progress=False)


def test_distillation_staged_into_grpo(tiny_assets, tmp_path, perturbed_teacher):
    cfg = tiny_config(tiny_assets, tmp_path, "opd_grpo", steps=2)
    cfg.teacher.path, cfg.baselines.staged_sft_lr = str(perturbed_teacher), 1e-3  # the distillation stage's own
    final = train(cfg, progress=False)
    records = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["stage"]) for r in records] == [(1, "opd"), (2, "grpo")]
    assert records[0]["kl_rev"] > 0 and records[1]["kl_rev"] is None  # GRPO has no teacher term
    stage1 = load_config(str(tmp_path / "opd_grpo" / "stage-1-opd" / "config.yaml"))
    stage2 = load_config(str(tmp_path / "opd_grpo" / "stage-2-grpo" / "config.yaml"))
    assert stage2.model.path == str(tmp_path / "opd_grpo" / "stage-1-opd" / "final")
    assert (stage1.optim.lr, stage2.optim.lr) == (1e-3, 2e-4)  # GRPO at optim.lr
