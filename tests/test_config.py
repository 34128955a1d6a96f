"""Config: presets, overrides, types and one-line errors that name the value."""

import pytest

from redrl.config import Config, load_config
from redrl.methods import METHODS


def test_tiny_preset_loads_and_overrides_apply():
    cfg = load_config("tiny", ["optim.lr=1e-3", "train.steps=7", "loss.regulator_ema=0.5", "model.attn_implementation=eager"])
    assert isinstance(cfg, Config)
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.train.steps == 7 and cfg.loss.regulator_ema == 0.5
    assert load_config("configs/tiny.yaml").train.method == "red"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.method=ppo", "unknown method 'ppo'"),
        ("train.steps=-3", "train.steps must be >= 1; got -3"),
        ("optim.lr=fast", "optim.lr must be float; got 'fast'"),
        ("loss.aggregation=sum", "loss.aggregation must be one of"),
        ("train.stepz=3", "unknown config key train.stepz"),
        ("trainer.steps=3", "unknown config section 'trainer'"),
        ("steps=3", "--set expects section.key=value"),
    ],
)
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("tiny", [override])


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="config not found: nope.yaml"):
        load_config("nope.yaml")


def test_every_method_is_accepted():
    for name in METHODS:
        assert load_config("tiny", [f"train.method={name}"]).train.method == name


def test_missing_paths_are_named(tmp_path):
    from redrl.trainer import resolve_paths

    cfg = load_config("tiny", [f"data.train={tmp_path}/none.jsonl", f"data.test={tmp_path}/none.jsonl",
                               "model.path=Qwen/Qwen2.5-Math-1.5B"])
    with pytest.raises(FileNotFoundError, match="data.train not found"):
        resolve_paths(cfg)
    with pytest.raises(FileNotFoundError, match="data.test not found"):
        resolve_paths(cfg, need_train=False)
    cfg = load_config("tiny", [f"model.path={tmp_path}/missing/model", f"data.test={tmp_path}/none.jsonl"])
    with pytest.raises(FileNotFoundError, match="model.path not found"):
        resolve_paths(cfg, need_train=False)


def test_remote_code_runs_only_when_the_user_turns_it_on(tiny_assets, monkeypatch):
    import transformers

    from redrl.modeling import load_model_and_tokenizer

    seen = []
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        real = cls.from_pretrained.__func__

        def spy(klass, path, *args, _real=real, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _real(klass, path, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    assert load_config("tiny").model.trust_remote_code is False
    load_model_and_tokenizer(str(tiny_assets.base), **load_config("tiny").model.load_kwargs())
    load_model_and_tokenizer(str(tiny_assets.base), **load_config("tiny", ["model.trust_remote_code=true"]).model.load_kwargs())
    assert seen == [False, False, True, True]  # tokenizer and model, each time
