"""Config: presets, overrides, types and one-line errors that name the value."""

from pathlib import Path

import pytest

from redrl.config import Config, load_config
from redrl.methods import METHODS


def test_tiny_preset_loads_and_overrides_apply():
    cfg = load_config(
        "tiny", ["optim.lr=1e-3", "train.steps=7", "loss.regulator_ema=0.5", "model.attn_implementation=eager"]
    )
    assert isinstance(cfg, Config)
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.train.steps == 7 and cfg.loss.regulator_ema == 0.5
    assert load_config("configs/tiny.yaml").train.method == "red"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.method=dpo", "unknown method 'dpo'"),
        ("train.steps=-3", "train.steps must be >= 1; got -3"),
        ("optim.lr=fast", "optim.lr must be float | None; got 'fast'"),
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
    from redrl.paths import resolve_paths

    cfg = load_config(
        "tiny",
        [f"data.train={tmp_path}/none.jsonl", f"data.test={tmp_path}/none.jsonl", "model.path=Qwen/Qwen2.5-Math-1.5B"],
    )
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
    load_model_and_tokenizer(
        str(tiny_assets.base), **load_config("tiny", ["model.trust_remote_code=true"]).model.load_kwargs()
    )
    assert seen == [False, False, True, True]  # tokenizer and model, each time


def test_a_preset_extends_another_key_by_key(tmp_path):
    (tmp_path / "base.yaml").write_text("optim: {lr: 1.0e-3, warmup_steps: 2}\ntrain: {method: red, steps: 9}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\noptim: {lr: 5.0e-5}\ntrain: {method: sft}\n")
    cfg = load_config(str(tmp_path / "child.yaml"), ["train.steps=3"])
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.train.method, cfg.train.steps) == (5e-5, 2, "sft", 3)
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ValueError, match="loops back"):
        load_config(str(tmp_path / "loop.yaml"))


def test_system_prompt_unset_empty_or_given():
    record = {"problem": "1", "system": "from the data"}
    assert load_config("tiny").data.system_for(record) == "from the data"
    assert load_config("tiny", ['data.system_prompt=""']).data.system_for(record) == ""
    assert load_config("tiny", ["data.system_prompt=mine"]).data.system_for(record) == "mine"
    with pytest.raises(ValueError, match="must contain {problem}"):
        load_config("tiny", ["data.problem_template=no placeholder"])
    with pytest.raises(ValueError, match="chat_template_kwargs must be a mapping"):
        load_config("tiny", ["data.chat_template_kwargs=3"])
    assert load_config("tiny", ["data.chat_template_kwargs={enable_thinking: false}"]).data.chat_template_kwargs == {
        "enable_thinking": False
    }


PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper"


def test_paper_presets_hold_the_papers_values():
    cfg = load_config("configs/paper/qwen2.5-math-1.5b-red.yaml")
    assert (cfg.model.path, cfg.data.train, cfg.data.grader) == (
        "Qwen/Qwen2.5-Math-1.5B",
        "Elliott/Openr1-Math-46k-8192",
        "math",
    )
    assert (cfg.optim.lr, cfg.rollout.temperature, cfg.rollout.group_size, cfg.train.prompts_per_step) == (
        2e-6,
        1.0,
        7,
        64,
    )
    assert (cfg.data.max_prompt_tokens, cfg.rollout.max_new_tokens, cfg.loss.eps_low, cfg.loss.eps_high) == (
        1024,
        8192,
        0.2,
        0.2,
    )
    assert cfg.model.config_overrides["max_position_embeddings"] >= 1024 + 8192
    assert (cfg.eval.temperature, cfg.eval.max_new_tokens) == (0.6, 8192)
    sft = load_config("configs/paper/qwen2.5-math-1.5b-sft.yaml")
    assert (sft.train.method, sft.optim.lr, sft.train.epochs) == ("sft", 5e-5, 3)
    # every value carries a comment naming its source
    for line in (PAPER / "qwen2.5-math-1.5b-red.yaml").read_text().splitlines():
        if line.startswith("  ") and ":" in line and not line.lstrip().startswith("#"):
            assert "#" in line or line.strip().startswith(
                ("config_overrides", "problem_template", "out:", "method:")
            ), line


def test_the_distillation_preset_holds_the_papers_values_each_with_its_source():
    cfg = load_config("configs/paper/qwen3-0.6b-distill.yaml")
    assert (cfg.model.path, cfg.teacher.path, cfg.data.train) == (
        "Qwen/Qwen3-0.6B",
        "Qwen/Qwen3-4B",
        "agentica-org/DeepScaleR-Preview-Dataset",
    )
    assert (cfg.rollout.max_new_tokens, cfg.distill.window_start, cfg.train.method) == (4096, 128, "opd")
    for line in (PAPER / "qwen3-0.6b-distill.yaml").read_text().splitlines():
        if line.startswith("  ") and ":" in line and not line.lstrip().startswith("#"):
            assert any(tag in line for tag in ("[paper]", "[ours]", "[memory]")) or line.strip().startswith(
                ("out:", "method:")
            ), line


def test_paper_baseline_presets_differ_from_red_only_in_method_settings():
    from redrl.methods import COMPARED

    def flat(cfg):
        return {f"{section}.{key}": value for section, body in cfg.to_dict().items() for key, value in body.items()}

    red = flat(load_config("configs/paper/qwen2.5-math-1.5b-red.yaml"))
    names = sorted(p.stem.removeprefix("qwen2.5-math-1.5b-") for p in PAPER.glob("qwen2.5-math-1.5b-*.yaml"))
    assert names == sorted(COMPARED)  # one preset per method of the comparison
    # the paper's SFT recipe (lr 5e-5, 3 epochs, 10 % warm-up) is its own: SFT and the staged method differ there
    paper_sft = {"optim.lr", "optim.warmup_ratio", "train.epochs"}
    for name in names:
        other = flat(load_config(f"configs/paper/qwen2.5-math-1.5b-{name}.yaml"))
        changed = {key for key in red if red[key] != other[key]}
        allowed = {"train.method", "train.out", "loss.luffy_gamma"} | (
            paper_sft if name in ("sft", "sft_grpo") else set()
        )
        assert {key for key in changed if not key.startswith("baselines.")} <= allowed, (name, changed)
        assert other["train.method"] == name and other["train.out"].endswith(name)


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.betas=[0.9, 1.5]", "optim.betas"),
        ("optim.weight_decay=-1", "optim.weight_decay"),
        ("loss.luffy_gamma=0", "loss.luffy_gamma"),
        ("loss.regulator_ema=1.5", "loss.regulator_ema"),
        ("loss.norm_constant=0", "loss.norm_constant"),
        ("train.chunk_size=0", "train.chunk_size"),
        ("train.keep_last=-1", "train.keep_last"),
        ("train.max_consecutive_skips=0", "train.max_consecutive_skips"),
        ("baselines.relift_entropy_coef=-0.1", "baselines.relift_entropy_coef"),
        ("rollout.old_logp=cache", "rollout.old_logp"),
        ("train.resume=maybe", "train.resume"),
        ("train.steps=many", "train.steps"),
    ],
)
def test_out_of_range_or_ill_typed_values_name_their_key(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as error:
        load_config("tiny", [override])
    assert "\n" not in str(error.value)


def test_a_key_written_twice_is_refused_with_its_line(tmp_path):
    preset = tmp_path / "twice.yaml"
    preset.write_text("train:\n  steps: 3\ncompare:\n  seeds: 2\ncompare:\n  seeds: 3\n")
    with pytest.raises(ValueError, match=r"twice.yaml: line 5: key 'compare' is written twice"):
        load_config(str(preset))
    nested = tmp_path / "nested.yaml"
    nested.write_text("train:\n  steps: 3\n  steps: 4\n")
    with pytest.raises(ValueError, match="line 3: key 'steps' is written twice"):
        load_config(str(nested))


def test_set_reads_a_value_as_its_fields_type():
    # A string field takes the text as written: YAML 1.1 would read "no" as false and refuse it.
    cfg = load_config(
        "tiny", ["train.mixed_precision=no", "data.system_prompt=off", "optim.lr=1e-3", "train.resume=true"]
    )
    assert cfg.train.mixed_precision == "no" and cfg.data.system_prompt == "off"
    assert cfg.optim.lr == 1e-3 and cfg.train.resume is True
    with pytest.raises(ValueError, match="train.resume must be bool; got 'yes'"):
        load_config("tiny", ["train.resume=yes"])  # only true / false are booleans (YAML 1.2)


def test_malformed_yaml_is_one_line_naming_file_and_line(tmp_path):
    preset = tmp_path / "broken.yaml"
    preset.write_text("train:\n  steps: [3\n  method: red\n")
    with pytest.raises(ValueError, match=r"broken.yaml: line \d+: not valid YAML") as error:
        load_config(str(preset))
    assert "\n" not in str(error.value)
    yes = tmp_path / "yes.yaml"
    yes.write_text("train:\n  mixed_precision: no\n")
    assert load_config(str(yes)).train.mixed_precision == "no"


def test_debug_works_anywhere_on_the_command_line(tmp_path, capsys):
    from redrl.cli import main

    missing = str(tmp_path / "nothing")
    assert main(["eval", "--model", missing]) == 2
    assert "error:" in capsys.readouterr().err
    for argv in (["--debug", "eval", "--model", missing], ["eval", "--model", missing, "--debug"]):
        with pytest.raises(FileNotFoundError):
            main(argv)


def test_config_command_prints_every_key_as_loadable_yaml(capsys):
    import dataclasses

    import yaml

    from redrl.cli import main
    from redrl.config import Config

    assert main(["config", "--set", "train.method=sft"]) == 0
    printed = capsys.readouterr().out
    sections = yaml.safe_load(printed)
    from redrl.learning_rate import with_learning_rate

    expected = with_learning_rate(load_config("tiny", ["train.method=sft"]))  # the run's learning rate, as before
    for section in dataclasses.fields(Config):
        assert set(sections[section.name]) == {f.name for f in dataclasses.fields(getattr(expected, section.name))}
    assert sections["train"]["out"] == "runs/sft" and "# str; training method" in printed
    assert load_config(None, **sections) == expected  # what it prints is the config itself


def test_the_bard_preset_holds_what_the_paper_says_each_with_its_source():
    cfg = load_config("configs/paper/qwen3-8b-bard.yaml")
    assert (cfg.train.method, max(cfg.bard.buckets), min(cfg.bard.buckets)) == ("bard", 8000, 500)
    assert cfg.rollout.max_new_tokens >= max(cfg.bard.buckets) and "{budget}" in cfg.bard.budget_template
    for line in (PAPER / "qwen3-8b-bard.yaml").read_text().splitlines():
        if line.startswith("  ") and ":" in line and not line.lstrip().startswith("#"):
            assert any(tag in line for tag in ("[paper]", "[ours]", "[memory]")) or line.strip().startswith(
                ("out:", "method:")
            ), line


def test_the_ravr_preset_holds_what_the_paper_says_each_with_its_source():
    cfg = load_config("configs/paper/qwen3-1.7b-ravr.yaml")
    assert (cfg.train.method, cfg.model.path, cfg.rollout.group_size) == ("ravr", "Qwen/Qwen3-1.7B", 8)
    assert "{answer}" in cfg.ravr.hint_template and cfg.ravr.answer_prefix.endswith("\\boxed{")
    for line in (PAPER / "qwen3-1.7b-ravr.yaml").read_text().splitlines():
        if line.startswith("  ") and ":" in line and not line.lstrip().startswith("#"):
            assert any(tag in line for tag in ("[paper]", "[ours]", "[memory]")) or line.strip().startswith(
                ("out:", "method:")
            ), line
