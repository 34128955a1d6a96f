"""Offline teacher data in its schemas (flat, LUFFY/OpenR1, DeepScaleR), from files and directories."""

import json

import pytest

from redrl.data import load_offline

FLAT = [
    {"problem": "Compute 1 + 2.", "answer": "3", "distill": "1 + 2 = 3\nSo the answer is \\boxed{3}."},
    {"problem": "Compute 2 + 2.", "answer": "4", "distill": "2 + 2 = 4\nSo the answer is \\boxed{4}."},
]


def luffy(row):
    """The OpenR1-Math-46k-8192 layout of a flat row."""
    return {
        "data_source": "openr1",
        "prompt": [{"role": "system", "content": "Think first."}, {"role": "user", "content": row["problem"]}],
        "target": [{"role": "assistant", "content": "<think>\n" + row["distill"]}],
        "reward_model": {"ground_truth": str(row["answer"]), "style": "rule"},
        "extra_info": {"index": 0},
    }


def write_parquet(rows, path):
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def test_flat_and_luffy_parquet_give_the_same_records(tmp_path):
    flat = load_offline(write_parquet(FLAT, tmp_path / "flat.parquet"))
    assert [(r["problem"], r["answer"], r["distill"]) for r in flat] == [
        ("Compute 1 + 2.", "3", FLAT[0]["distill"]),
        ("Compute 2 + 2.", "4", FLAT[1]["distill"]),
    ]
    converted = load_offline(write_parquet([luffy(r) for r in FLAT], tmp_path / "luffy.parquet"))
    assert [(r["problem"], r["answer"]) for r in converted] == [(r["problem"], r["answer"]) for r in flat]
    assert converted[0]["distill"] == "<think>\n" + FLAT[0]["distill"] and converted[0]["system"] == "Think first."
    assert load_offline(tmp_path / "luffy.parquet", format="luffy") == converted
    (tmp_path / "int.jsonl").write_text(json.dumps({**FLAT[1], "answer": 4}) + "\n")
    assert load_offline(tmp_path / "int.jsonl")[0]["answer"] == "4"  # a numeric answer is read as its string


def test_a_directory_of_files_reads_them_all_in_name_order(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps(FLAT[1]) + "\n")
    (tmp_path / "a.jsonl").write_text(json.dumps(FLAT[0]) + "\n")
    (tmp_path / "notes.txt").write_text("ignored")
    assert [r["answer"] for r in load_offline(tmp_path)] == ["3", "4"]


def test_every_bad_row_is_named_by_file_row_and_field(tmp_path):
    bad = [dict(FLAT[0]), {**FLAT[0], "distill": ""}, {**FLAT[0], "distill": 7}, {"problem": "p", "distill": "d"}]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(ValueError) as error:
        load_offline(path)
    message = str(error.value)
    assert message.startswith("3 bad field(s)")
    assert f"{path}: row 2: distill must be a non-empty string (str '')" in message
    assert f"{path}: row 3: distill must be a non-empty string (int '7')" in message
    assert f"{path}: row 4: answer must be a non-empty string (missing)" in message
    luffy_bad = [luffy(FLAT[0]), {**luffy(FLAT[0]), "reward_model": {"style": "rule"}}]
    with pytest.raises(ValueError, match=r"luffy\.parquet: row 2: answer must be a non-empty string \(missing\)"):
        load_offline(write_parquet(luffy_bad, tmp_path / "luffy.parquet"))
    with pytest.raises(ValueError, match="format must be auto, flat, luffy or deepscaler"):
        load_offline(path, format="csv")


def test_training_reads_luffy_data_and_truncates_long_traces(tiny_assets, tmp_path):
    from redrl.config import load_config
    from redrl.trainer import train

    rows = [json.loads(line) for line in tiny_assets.train.read_text().splitlines()][:8]
    data = write_parquet([luffy(r) for r in rows], tmp_path / "train.parquet")
    cfg = load_config(
        "tiny",
        model={"path": str(tiny_assets.base)},
        data={"train": str(data), "test": str(tiny_assets.test)},
        rollout={"group_size": 2, "max_new_tokens": 16},
        optim={"lr": 2e-4},
        train={"method": "sft", "steps": 1, "prompts_per_step": 2, "out": str(tmp_path / "run")},
    )
    with pytest.warns(UserWarning, match=r"8 of 8 teacher traces exceed rollout.max_new_tokens=16 and are truncated"):
        final = train(cfg, progress=False)
    record = json.loads((final.parent / "metrics.jsonl").read_text())
    assert record["offline_length"] == 16  # cut to the limit, not dropped


def test_deepscaler_schema_reads_the_solution_as_the_trace(tmp_path):
    rows = [
        {"problem": "What is 1+1?", "answer": "2", "solution": "1+1=2, so \\boxed{2}."},
        {"problem": "What is 2+2?", "answer": "4", "solution": ""},  # no solution: left out, said
        {"problem": "What is 3+3?", "answer": 6, "solution": "\\boxed{6}"},
    ]
    path = tmp_path / "deepscaler.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.warns(UserWarning, match="1 of 3 records have no solution and are left out"):
        records = load_offline(path)
    assert [(r["problem"], r["answer"], r["distill"]) for r in records] == [
        ("What is 1+1?", "2", "1+1=2, so \\boxed{2}."),
        ("What is 3+3?", "6", "\\boxed{6}"),
    ]
    assert all("solution" not in r for r in records)
