"""The training loop: group assembly, one smoke run per method, checkpoints, micro-batch invariance."""

import json
import math

import pytest
import torch

from redrl.config import load_config
from redrl.methods import METHODS
from redrl.trainer import PromptSampler, assemble_batch, train


def test_assemble_batch_puts_the_teacher_row_last_in_every_group():
    prompts = [[1, 2], [3, 4, 5]]
    rollouts = [[10], [11, 12], [13, 14, 15], [20], [21], [22, 23]]  # G = 3, prompt-major
    rewards = [1.0, 0.0, 0.0, None, 1.0, 1.0]
    teacher = [[30, 31, 32, 33], [40]]
    batch = assemble_batch(prompts, rollouts, rewards, teacher, [1.0, 1.0], group_size=3, method=METHODS["red"], pad_id=0)
    assert len(batch) == 8
    assert batch.is_offline.tolist() == [False, False, False, True] * 2
    assert batch.group_id.tolist() == [0] * 4 + [1] * 4
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
        data={"train": str(tiny_assets.train), "test": str(tiny_assets.test)},
        rollout={"group_size": 3, "max_new_tokens": 64},
        train={"method": method, "steps": 2, "prompts_per_step": 2, "out": str(tmp_path / method), **train},
        eval={"k": 2, "max_new_tokens": 32},
    )


def test_methods_are_the_papers_variants():
    # DESIGN.md's table: which teacher ratio and weight each method uses (RED-(I) and RED-(II) are
    # the two halves of RED; MixPolicy and LUFFY differ from RED only in the teacher ratio).
    settings = {name: (m.rollouts, m.offline, m.objective, m.offline_ratio, m.regulator) for name, m in METHODS.items()}
    assert settings["red"] == (True, True, "red", "shift", True)
    assert settings["red_entropy"] == (True, True, "red", "one", True)
    assert settings["red_shift"] == (True, True, "red", "shift", False)
    assert settings["mixpolicy"] == (True, True, "red", "one", False)
    assert settings["onpolicy_offline"] == (True, True, "red", "on_policy", False)
    assert settings["luffy"] == (True, True, "red", "luffy", False)
    assert settings["grpo"][:2] == (True, False) and settings["sft"][:3] == (False, True, "sft")
    assert all(m.source for m in METHODS.values())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_logs_and_saves(tiny_assets, tmp_path, method):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = train(tiny_config(tiny_assets, tmp_path, method), progress=False)
    records = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for key in ("reward", "online_accuracy", "h_rl", "h_sft", "delta_h_rl", "delta_h_sft", "w", "pi_off_mean",
                "clip_fraction", "online_length", "offline_length", "grad_norm", "lr", "rollout_tokens_per_s",
                "train_tokens_per_s", "step_time", "loss"):
        assert key in records[-1], key  # every method logs the same keys (null where undefined)
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] >= 0 for r in records)
    if METHODS[method].offline:  # the teacher row always carries signal here; GRPO's may be all-fail
        assert all(r["grad_norm"] > 0 for r in records)
    if METHODS[method].regulator:  # red, red_entropy
        assert records[0]["w"] == 1.0 and 1.0 <= records[1]["w"] <= 3.0  # clip(ΔH_sft/ΔH_rl, 1, G = 3)
        assert records[1]["delta_h_rl"] is not None
    elif method != "sft":  # every other method weighs teacher rows by w = 1
        assert all(r["w"] == 1.0 and r["delta_h_rl"] is None for r in records)
    last = records[-1]
    ratio = METHODS[method].offline_ratio if METHODS[method].offline and METHODS[method].rollouts else None
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
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Compute 3 + 4."}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    output = model.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert output.shape[1] > prompt["input_ids"].shape[1]
    state = torch.load(final / "trainer_state.pt", weights_only=False)
    assert state["step"] == 2 and {"optimizer", "scheduler", "regulator", "rng", "sampler"} <= set(state)


def test_micro_batches_give_the_same_update_as_one_batch(tiny_assets, tmp_path):
    # Gradient accumulation (with the no-grad entropy pre-pass) must reproduce the one-pass step.
    from transformers import AutoModelForCausalLM

    weights = []
    for micro in (64, 3):
        cfg = tiny_config(tiny_assets, tmp_path / str(micro), "red", steps=1, micro_batch_size=micro)
        model = AutoModelForCausalLM.from_pretrained(train(cfg, progress=False))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=1e-6)
