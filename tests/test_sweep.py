"""`redrl sweep`: the grid rule, the choice on validation, and the file configs read their learning rates from."""

import json

import pytest

from redrl.config import load_config
from redrl.learning_rate import require_learning_rate, task_key, with_learning_rate
from redrl.sweep import ladder_neighbour, run_sweep, select


def test_ladder_neighbours_follow_one_three_ten():
    assert ladder_neighbour(3e-4, -1) == 1e-4 and ladder_neighbour(3e-4, 1) == 1e-3
    assert ladder_neighbour(1e-3, 1) == 3e-3 and ladder_neighbour(3e-5, -1) == 1e-5
    assert ladder_neighbour(1e-4, -1) == 3e-5 and ladder_neighbour(1e-4, 1) == 3e-4


def test_select_reports_the_edge_and_breaks_ties_towards_the_smaller_value():
    assert select({1e-4: 0.5, 3e-4: 0.7, 1e-3: 0.6}) == (3e-4, 0)
    assert select({1e-4: 0.8, 3e-4: 0.7, 1e-3: 0.6}) == (1e-4, -1)
    assert select({1e-4: 0.1, 3e-4: 0.7, 1e-3: 0.9}) == (1e-3, 1)
    assert select({1e-4: 0.5, 3e-4: 0.7, 1e-3: 0.7}) == (3e-4, 0)


def _sweep_file(path, task, chosen):
    path.write_text(json.dumps({"task": task, "chosen": chosen}))
    return str(path)


def test_a_config_without_lr_takes_its_methods_value_and_refuses_a_stale_file(tmp_path):
    values = {"model": {"path": "org/model"}, "data": {"train": "org/data"}}
    key = task_key(load_config(None, **values))
    sweep = _sweep_file(tmp_path / "lr.json", key, {"sft": 3e-4, "grpo": 3e-5, "red": 1e-4})
    red = load_config(None, [f"optim.lr_sweep={sweep}", "optim.lr=null", "train.method=red"], **values)
    assert red.optim.lr is None  # settings read no sweep file: the run resolves its value
    assert with_learning_rate(red).optim.lr == 1e-4
    staged = with_learning_rate(
        load_config(None, [f"optim.lr_sweep={sweep}", "optim.lr=null", "train.method=sft_grpo"], **values)
    )
    assert (staged.optim.lr, staged.baselines.staged_sft_lr) == (3e-5, 3e-4)  # each stage takes its own method's value
    # An explicit learning rate wins over the file.
    assert (
        with_learning_rate(load_config(None, [f"optim.lr_sweep={sweep}", "optim.lr=5e-5"], **values)).optim.lr == 5e-5
    )
    # A config without a usable value still loads (evaluation needs no learning rate); training refuses it.
    with pytest.raises(ValueError, match="no learning rate for luffy"):
        require_learning_rate(
            load_config(None, [f"optim.lr_sweep={sweep}", "optim.lr=null", "train.method=luffy"], **values)
        )
    other = {"model": {"path": "org/model"}, "data": {"train": "org/other-data"}}
    stale = load_config(None, [f"optim.lr_sweep={sweep}", "optim.lr=null"], **other)
    assert with_learning_rate(stale, required=False).optim.lr is None
    with pytest.raises(ValueError, match="was chosen for task .* not this one"):
        require_learning_rate(stale)
    with pytest.raises(ValueError, match="optim.lr is null"):
        require_learning_rate(load_config(None, ["optim.lr=null"], **values))
    with pytest.raises(ValueError, match="not this one"):
        from redrl.trainer import train

        train(stale, progress=False)


def test_the_embedded_default_reads_its_shipped_sweep():
    from redrl.learning_rate import read_sweep
    from redrl.tiny import TinySpec

    cfg = with_learning_rate(load_config("tiny"))
    shipped = read_sweep(cfg.optim.lr_sweep)
    assert shipped["task"] == TinySpec().key() == task_key(cfg)
    assert cfg.optim.lr == shipped["chosen"][cfg.train.method]
    assert set(shipped["chosen"]) >= {"sft", "grpo", "red"}


@pytest.mark.filterwarnings("ignore:.*teacher traces exceed")
def test_sweep_chooses_on_validation_and_grows_an_edge(tiny_assets, tmp_path):
    overrides = [
        f"model.path={tiny_assets.base}",
        f"data.train={tiny_assets.train}",
        f"data.test={tiny_assets.test}",
        f"data.val={tiny_assets.val}",
        "rollout.group_size=2",
        "rollout.max_new_tokens=32",
        "train.prompts_per_step=2",
        "eval.max_new_tokens=16",
        "compare.eval_k=1",
    ]
    save = tmp_path / "chosen.json"
    body = run_sweep(
        "tiny",
        overrides,
        methods=["sft", "sft_grpo"],
        grid=(1e-4, 1e-3),
        steps=2,
        max_extensions=1,
        out=tmp_path / "sweep",
        save=save,
        jobs=1,
        progress=False,
    )
    assert list(body["chosen"]) == ["sft"]  # the staged method has no value of its own
    tried = {float(lr): acc for lr, acc in body["validation"]["sft"].items()}
    assert len(tried) == 3  # two values on a grid always have the winner on an edge: one extension
    assert body["chosen"]["sft"] == select(tried)[0]
    evals = [json.loads(p.read_text()) for p in (tmp_path / "sweep" / "runs" / "sft").glob("lr-*/eval.json")]
    assert len(evals) == 3 and all(
        e["split"] == "val" and e["n"] == len(tiny_assets.val.read_text().splitlines()) for e in evals
    )
    assert json.loads(save.read_text()) == json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    cfg = load_config("tiny", [*overrides, f"optim.lr_sweep={save}", "optim.lr=null", "train.method=sft"])
    assert with_learning_rate(cfg).optim.lr == body["chosen"]["sft"]


@pytest.mark.filterwarnings("ignore:.*teacher traces exceed")
def test_the_sweep_covers_distillation_methods_and_the_suite_takes_their_values(
    tiny_assets, perturbed_teacher, tmp_path
):
    from redrl.compare import method_learning_rates

    overrides = [
        f"model.path={tiny_assets.base}",
        f"teacher.path={perturbed_teacher}",
        f"data.train={tiny_assets.train}",
        f"data.val={tiny_assets.val}",
        "rollout.max_new_tokens=32",
        "train.prompts_per_step=2",
        "eval.max_new_tokens=16",
        "compare.eval_k=1",
    ]
    save = tmp_path / "chosen.json"
    body = run_sweep(
        "tiny",
        overrides,
        methods=["kd"],
        grid=(1e-4, 1e-3),
        steps=2,
        max_extensions=0,
        out=tmp_path / "sweep",
        save=save,
        jobs=1,
        progress=False,
    )
    assert set(body["validation"]["kd"]) == {"0.0001", "0.001"} and body["chosen"]["kd"] in (1e-4, 1e-3)
    lrs = method_learning_rates("tiny", [*overrides, f"optim.lr_sweep={save}", "optim.lr=null"], ["kd", "opd"], 5e-5)
    assert lrs == {"kd": body["chosen"]["kd"], "opd": 5e-5}  # swept where swept, else compare.distill_lr


def test_saving_a_sweep_of_some_methods_keeps_the_others_values():
    from redrl.sweep import merge_sweeps

    def body(methods, command, task="tiny-a"):
        return {
            "task": task,
            "command": command,
            "date": "d",
            "settings": {"grid": [1e-4]},
            "seconds": 1.0,
            "chosen": dict.fromkeys(methods, 1e-4),
            "validation": {m: {"1e-4": 0.5} for m in methods},
            "by_level": {m: {"1e-4": {"1": 1.0}} for m in methods},
        }

    first = merge_sweeps(None, body(["sft", "grpo", "red"], "all"))
    assert first == body(["sft", "grpo", "red"], "all")
    second = merge_sweeps(first, {**body(["grpo", "ravr"], "two"), "chosen": {"grpo": 3e-4, "ravr": 1e-5}})
    assert second["chosen"] == {"sft": 1e-4, "grpo": 3e-4, "red": 1e-4, "ravr": 1e-5}
    assert second["command"] == "all" and second["merged"][-1]["methods"] == ["grpo", "ravr"]
    third = merge_sweeps(second, body(["ravr"], "one"))
    assert [e["methods"] for e in third["merged"]] == [["grpo"], ["ravr"]]  # ravr's older record is dropped
    assert merge_sweeps(third, body(["sft", "grpo", "red", "ravr"], "every")) == body(
        ["sft", "grpo", "red", "ravr"], "every"
    )
    assert merge_sweeps(third, body(["sft"], "other", task="tiny-b"))["chosen"] == {"sft": 1e-4}  # another task
