"""The embedded teacher: depth up-scaling that starts as the base, and the build (on the test-sized task)."""

import json

import torch

from redrl.tiny_teacher import TeacherSpec, ensure_teacher, grow_depth


def test_grown_model_computes_what_the_base_computes(tiny_assets):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_assets.base)
    grown = grow_depth(base, 3)
    assert grown.config.num_hidden_layers == 3 * base.config.num_hidden_layers
    assert base.config.num_hidden_layers == len(base.model.layers)  # the base is untouched
    ids = torch.randint(6, 50, (2, 12))
    with torch.no_grad():
        assert torch.equal(base(ids).logits, grown(ids).logits)
        cached = grown.generate(ids[:, :4], max_new_tokens=6, do_sample=False)  # the KV cache sees every layer
        assert torch.equal(cached, base.generate(ids[:, :4], max_new_tokens=6, do_sample=False))


def test_the_teacher_is_built_once_trained_and_measured(tiny_assets, tmp_path, monkeypatch):
    from transformers import AutoConfig

    monkeypatch.setenv("REDRL_CACHE", str(tmp_path))
    spec = TeacherSpec(steps=2, prompts_per_step=2)
    path = ensure_teacher(spec, assets=tiny_assets, progress=False)
    assert (
        AutoConfig.from_pretrained(path).num_hidden_layers
        == 2 * AutoConfig.from_pretrained(tiny_assets.base).num_hidden_layers
    )
    accuracy = json.loads((path.parent / "accuracy.json").read_text())
    assert set(accuracy["by_level"]) == {"1", "2"} and 0 <= accuracy["accuracy"] <= 1
    assert not list(tmp_path.glob("*.building-*"))  # staged, then renamed into place
    assert ensure_teacher(spec, assets=tiny_assets, progress=False) == path  # reused, not rebuilt
