"""Models and prompts for real runs: chat formatting, config overrides, devices and precision,
gradient checkpointing, LoRA adapters, epochs and schedules. All on the tiny model, on CPU."""

import json
import math
import warnings

import pytest
import torch
from test_trainer import tiny_config

from redrl.config import load_config
from redrl.data.training import prepare_data
from redrl.modeling import (
    autocast,
    encode_prompt,
    encode_response,
    load_model_and_tokenizer,
    prepare_model,
    resolve_device,
)
from redrl.step import build_scheduler
from redrl.trainer import train


@pytest.fixture(scope="module")
def tokenizer(tiny_assets):
    return load_model_and_tokenizer(str(tiny_assets.base))[1]


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------
# Prompts


def test_default_prompt_is_the_tokenizers_chat_template(tokenizer):
    messages = [{"role": "user", "content": "1 + 2 = ?"}]
    expected = list(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    )
    assert encode_prompt(tokenizer, "1 + 2 = ?") == expected


def test_problem_template_system_prompt_and_response_prefix(tokenizer):
    ids = encode_prompt(tokenizer, "1 + 2", "check", problem_template="Compute {problem} ?", response_prefix="Wait ,")
    text = tokenizer.decode(ids)  # the tiny tokenizer knows a few words only
    assert text.startswith("<|system|>\ncheck<|end|>\n<|user|>\nCompute 1 + 2 ?<|end|>\n<|assistant|>\n")
    assert text.endswith("<|assistant|>\nWait ,")
    # '' and None both mean no system message (a tokenizer's own default system prompt then applies)
    assert encode_prompt(tokenizer, "1", "") == encode_prompt(tokenizer, "1", None)


def test_chat_template_inline_from_a_file_and_with_arguments(tokenizer, tmp_path):
    template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}={{ tail }}{% endif %}"
    )
    inline = encode_prompt(tokenizer, "1 + 2", chat_template=template, template_kwargs={"tail": " 3"})
    assert tokenizer.decode(inline) == "1 + 2= 3"
    (tmp_path / "t.jinja").write_text(template)
    assert (
        encode_prompt(tokenizer, "1 + 2", chat_template=str(tmp_path / "t.jinja"), template_kwargs={"tail": " 3"})
        == inline
    )
    with pytest.raises(FileNotFoundError, match="neither a Jinja template nor an existing file"):
        encode_prompt(tokenizer, "1", chat_template=str(tmp_path / "missing.jinja"))


def test_teacher_trace_loses_the_response_prefix(tokenizer):
    assert encode_response(tokenizer, "Wait , 3", "Wait ,") == encode_response(tokenizer, " 3")
    assert encode_response(tokenizer, "3", "Wait ,") == encode_response(tokenizer, "3")  # no prefix: kept whole
    assert encode_response(tokenizer, "3")[-1] == tokenizer.eos_token_id


def test_prepare_data_formats_prompts_and_traces_as_configured(tiny_assets, tokenizer, tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [
        {"problem": "1 + 2", "answer": "3", "distill": "Wait , 1 + 2 = 3 . \\boxed{3}"},
        {"problem": "4 + 5 + 6 + 7 + 8 + 9", "answer": "39", "distill": "\\boxed{39}"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(
        "tiny", data={"response_prefix": "Wait ,", "system_prompt": "", "problem_template": "{problem} = ?"}
    )
    data = prepare_data(cfg, tokenizer, str(path))
    assert data.prompts[0] == encode_prompt(
        tokenizer, "1 + 2", problem_template="{problem} = ?", response_prefix="Wait ,"
    )
    assert data.teacher[0] == encode_response(tokenizer, " 1 + 2 = 3 . \\boxed{3}")
    assert [data.teacher_reward(i) for i in range(2)] == [1.0, 1.0]

    short = len(data.prompts[0])
    cfg = load_config(
        "tiny", data={"response_prefix": "Wait ,", "problem_template": "{problem} = ?", "max_prompt_tokens": short}
    )
    with pytest.warns(UserWarning, match="1 of 2 prompts are longer than data.max_prompt_tokens"):
        kept = prepare_data(cfg, tokenizer, str(path))
    assert [r["answer"] for r in kept.records] == ["3"] and len(kept.teacher) == len(kept.prompts) == 1
    cfg = load_config("tiny", data={"max_prompt_tokens": 2})
    with pytest.raises(ValueError, match="every prompt .* is longer than data.max_prompt_tokens=2"):
        prepare_data(cfg, tokenizer, str(path))


# ------------------------------------------------------------------------------------------------
# Loading, devices, precision


def test_config_overrides_reach_the_model(tiny_assets):
    model, _ = load_model_and_tokenizer(
        str(tiny_assets.base), config_overrides={"max_position_embeddings": 1024, "rope_theta": 20000}
    )
    config = model.config
    assert config.max_position_embeddings == 1024
    rope = getattr(config, "rope_parameters", None) or {"rope_theta": config.rope_theta}
    assert rope["rope_theta"] == 20000
    with pytest.raises(ValueError, match="has no field 'rope_thetta'"):
        load_model_and_tokenizer(str(tiny_assets.base), config_overrides={"rope_thetta": 1})


def test_devices_and_precisions_that_cannot_run_are_refused():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
            autocast(torch.device("cpu"), "fp16")
    with pytest.raises(ValueError, match="model.device must be"):
        load_config("tiny", model={"device": "gpu"})
    with pytest.raises(ValueError, match="train.mixed_precision must be"):
        load_config("tiny", train={"mixed_precision": "fp8"})
    with autocast(torch.device("cpu"), "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_bf16_autocast_changes_the_numbers_a_little(tiny_assets, tmp_path):
    losses = {}
    for precision in ("no", "bf16"):
        cfg = tiny_config(tiny_assets, tmp_path / precision, "sft", steps=1, mixed_precision=precision)
        train(cfg, progress=False)
        losses[precision] = _metrics(tmp_path / precision / "sft")[0]["loss"]
    # the NLL is computed from bf16 matrix products: close to float32, but not bit-equal (autocast ran)
    assert losses["bf16"] != losses["no"]
    assert losses["bf16"] == pytest.approx(losses["no"], rel=0.05)


def test_gradient_checkpointing_gives_the_same_update(tiny_assets, tmp_path):
    runs = {}
    for checkpointing in (False, True):
        cfg = tiny_config(tiny_assets, tmp_path / str(checkpointing), "red", gradient_checkpointing=checkpointing)
        train(cfg, progress=False)
        runs[checkpointing] = _metrics(tmp_path / str(checkpointing) / "red")
    model, _ = prepare_model(cfg, str(tiny_assets.base))
    on = (
        model.is_activation_checkpointing
        if hasattr(type(model), "is_activation_checkpointing")
        else model.is_gradient_checkpointing
    )
    assert on  # the comparison below is between two different code paths
    for plain, recomputed in zip(runs[False], runs[True]):
        for key in ("loss", "grad_norm", "h_rl", "h_sft"):
            assert recomputed[key] == pytest.approx(plain[key], rel=1e-5, abs=1e-7), key


# ------------------------------------------------------------------------------------------------
# LoRA


def test_lora_trains_adapters_only_and_its_checkpoint_loads_merged(tiny_assets, tmp_path):
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    cfg = load_config(
        "tiny",
        model={
            "path": str(tiny_assets.base),
            "use_peft": True,
            "lora_r": 4,
            "lora_alpha": 8,
            "lora_dropout": 0.0,
            "lora_target_modules": "q_proj,v_proj",
        },
        data={"train": str(tiny_assets.train), "test": str(tiny_assets.test)},
        rollout={"group_size": 3, "max_new_tokens": 64},
        optim={"lr": 1e-2},
        train={"method": "red", "steps": 2, "prompts_per_step": 2, "out": str(tmp_path / "lora")},
    )
    final = train(cfg, progress=False)
    assert (final / "adapter_config.json").is_file() and not (final / "model.safetensors").exists()
    adapter = load_file(final / "adapter_model.safetensors")
    assert adapter and all("lora_" in name and ("q_proj" in name or "v_proj" in name) for name in adapter)
    assert all(math.isfinite(m["loss"]) for m in _metrics(tmp_path / "lora"))

    base, _ = load_model_and_tokenizer(str(tiny_assets.base))
    merged, _ = load_model_and_tokenizer(str(final))
    assert not hasattr(merged, "peft_config") and type(merged) is type(base)
    base_params, merged_params = dict(base.named_parameters()), dict(merged.named_parameters())
    assert base_params.keys() == merged_params.keys()
    for name, value in base_params.items():
        changed = not torch.equal(value, merged_params[name])
        assert changed == ("q_proj" in name or "v_proj" in name), name


def test_staged_method_chains_lora_checkpoints(tiny_assets, tmp_path):
    pytest.importorskip("peft")
    cfg = load_config(
        "tiny",
        model={"path": str(tiny_assets.base), "use_peft": True, "lora_r": 4},
        data={"train": str(tiny_assets.train), "test": str(tiny_assets.test)},
        rollout={"group_size": 3, "max_new_tokens": 32},
        baselines={"staged_sft_lr": 1e-3},
        optim={"lr": 2e-4},
        train={"method": "sft_grpo", "steps": 2, "prompts_per_step": 2, "out": str(tmp_path / "staged")},
    )
    final = train(cfg, progress=False)
    # the GRPO stage's adapter sits on the SFT stage's adapter, which sits on the base
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"].endswith(
        "stage-1-sft/final"
    )
    model, _ = load_model_and_tokenizer(str(final))
    assert not hasattr(model, "peft_config")
    stages = [json.loads(line) for line in (tmp_path / "staged" / "metrics.jsonl").read_text().splitlines()]
    # each stage warms up over optim.warmup_steps = 5 from its own learning rate
    assert [(s["stage"], s["lr"]) for s in stages] == [
        ("sft", pytest.approx(1e-3 / 5)),
        ("grpo", pytest.approx(cfg.optim.lr / 5)),
    ]


# ------------------------------------------------------------------------------------------------
# Steps and schedules


def test_epochs_set_the_number_of_steps(tiny_assets, tmp_path):
    cfg = tiny_config(tiny_assets, tmp_path, "sft", epochs=0.2)  # 40 prompts, 2 per step: ceil(0.2 * 40 / 2) = 4
    train(cfg, progress=False)
    assert [m["step"] for m in _metrics(tmp_path / "sft")] == [1, 2, 3, 4]


def test_schedule_warms_up_then_decays_to_the_floor():
    def lrs(schedule, warmup, min_ratio):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = build_scheduler(optimizer, schedule, warmup, 10, min_ratio=min_ratio)
        out = []
        for _ in range(12):
            out.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return out

    cosine = lrs("cosine", 2, 0.1)
    assert cosine[:2] == pytest.approx([0.5, 1.0])
    assert cosine[2] == pytest.approx(1.0)
    assert cosine[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert cosine[10:] == pytest.approx([0.1, 0.1])
    linear = lrs("linear", 0, 0.2)
    assert linear[5] == pytest.approx(0.2 + 0.8 * 0.5) and linear[11] == pytest.approx(0.2)
    assert lrs("constant", 0, 0.5) == pytest.approx([1.0] * 12)


def test_warmup_ratio_replaces_warmup_steps(tiny_assets, tmp_path):
    cfg = load_config(
        "tiny",
        model={"path": str(tiny_assets.base)},
        data={"train": str(tiny_assets.train), "test": str(tiny_assets.test)},
        rollout={"max_new_tokens": 16},
        optim={"warmup_steps": 0, "warmup_ratio": 0.5, "lr": 1e-3},
        train={"method": "sft", "steps": 4, "prompts_per_step": 2, "out": str(tmp_path / "w")},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # traces cut to 16 tokens
        train(cfg, progress=False)
    assert [m["lr"] for m in _metrics(tmp_path / "w")] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])


# ------------------------------------------------------------------------------------------------
# The paper preset, end to end on the tiny model


def test_paper_preset_runs_end_to_end_with_only_model_data_and_sizes_changed(
    tiny_assets, tmp_path, capsys, monkeypatch
):
    """Every feature the preset turns on (config overrides, bf16 autocast, gradient checkpointing,
    no system prompt, the problem template, the prompt limit, math grading, warm-up ratio and cosine
    floor) runs together; only the model, the data and the sizes are the tiny ones."""
    from redrl.cli import main

    monkeypatch.setenv("REDRL_DEBUG", "1")  # a failure shows its traceback
    preset = "configs/paper/qwen2.5-math-1.5b-red.yaml"
    sizes = [
        "optim.lr=2e-4",
        f"model.path={tiny_assets.base}",
        "rollout.max_new_tokens=48",
        "rollout.group_size=3",
        "train.prompts_per_step=2",
        "train.micro_batch_size=4",
        "eval.max_new_tokens=16",
        "eval.batch_size=8",
    ]
    out = tmp_path / "red"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny traces are cut to 48 tokens
        assert (
            main(
                [
                    "train",
                    "--config",
                    preset,
                    "--steps",
                    "2",
                    "--out",
                    str(out),
                    "--no-progress",
                    "--set",
                    f"data.train={tiny_assets.train}",
                    *sum((["--set", s] for s in sizes), []),
                ]
            )
            == 0
        )
    saved = load_config(str(out / "config.yaml"))
    assert (saved.train.steps, saved.train.epochs, saved.train.mixed_precision, saved.data.grader) == (
        2,
        None,
        "bf16",
        "math",
    )
    metrics = _metrics(out)
    assert len(metrics) == 2 and all(math.isfinite(m["loss"]) and m["lr"] > 0 for m in metrics)
    model, _ = load_model_and_tokenizer(str(out / "final"))
    assert model.config.max_position_embeddings == 16384  # the override is saved with the weights

    assert (
        main(
            [
                "eval",
                "--model",
                str(out / "final"),
                "--config",
                preset,
                "--data",
                str(tiny_assets.test),
                "--k",
                "1",
                "--no-progress",
                *sum((["--set", s] for s in sizes[1:]), []),
            ]
        )
        == 0
    )
    assert "avg@1" in capsys.readouterr().out


def test_the_loss_forward_never_forms_vocabulary_sized_logits_for_every_position(tiny_assets):
    # The output head is only read as a matrix, chunk by chunk, over response positions: calling
    # the head module (full [N, S, V] logits) would raise here.
    from redrl.batch import collate
    from redrl.modeling import TokenScorer

    model, _ = load_model_and_tokenizer(str(tiny_assets.base), device="cpu")

    def refuse(*args, **kwargs):
        raise AssertionError("the head was called on every position")

    model.get_output_embeddings().forward = refuse
    ids, attention, mask = collate([[3, 4, 5]], [[6, 7, 8, 9]], 0)
    logp, entropy, *_ = TokenScorer(model, chunk_size=2)(ids, attention, mask[:, 1:])
    assert logp.shape == entropy.shape == (1, 6) and (logp[mask[:, 1:]] < 0).all()
    with pytest.raises(AssertionError, match="every position"):
        TokenScorer(model, full_logits=True)(ids, attention, mask[:, 1:])  # the ZeRO-3 fallback does call it
