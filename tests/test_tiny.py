"""The tiny base's tokenizer, pretraining corpus and shipped weights."""

import json
import re

import pytest
from conftest import TINY_TEST_SPEC

from redrl.tiny import build_tokenizer

FACT = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.mark.parametrize(
    "text",
    [
        "Compute 13 + 5 - 9 + 4.",
        "13 + 5 = 18\nWait, let me check: 13 + 5 = 18.\n18 - 9 + 4\nSo the answer is \\boxed{13}.",
        "  So   the answer  is 123456 -7 \\boxed{ 19 }",
    ],
)
def test_tokenizer_is_lossless(tokenizer, text):
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text


def test_a_number_is_one_token_wherever_it_stands(tokenizer):
    def ids(text):
        return tokenizer(text, add_special_tokens=False).input_ids

    eighteen = ids("18")
    assert len(eighteen) == 1
    for text in ("18 - 9", "13 + 5 = 18", "\\boxed{18}", "Compute 18 + 1."):
        assert eighteen[0] in ids(text), text
    assert tokenizer.unk_token_id not in ids("Compute 99 - 0 + 100.")


def test_pretraining_corpus_answers_directly_or_step_by_step_with_true_facts(tiny_assets):
    from redrl.rewards import grade

    spec = json.loads((tiny_assets.root / "spec.json").read_text())
    rows = [json.loads(line) for line in (tiny_assets.root / "pretrain.jsonl").read_text().splitlines()]
    chat = [r for r in rows if "problem" in r]
    pages = [r["text"] for r in rows if "text" in r]
    assert chat and pages
    kinds = {"direct": 0, "steps": 0, "prompted": 0}
    for row in chat:
        assert grade(row["response"], row["answer"]) == 1.0
        expression = row["problem"].removeprefix("Compute ").removesuffix(".")
        if row["response"] == f"{expression} = {row['answer']}\nSo the answer is \\boxed{{{row['answer']}}}.":
            assert "system" not in row  # asked to think step by step, the corpus always does
            kinds["direct"] += 1
            continue
        kinds["prompted" if row.get("system") == spec["prompted_system"] else "steps"] += 1
        for a, op, b, c in FACT.findall(row["response"]):  # every step is a true fact
            assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        assert row["response"].splitlines()[-2] == row["answer"]  # the rest of the expression, down to its value
    assert all(kinds.values()), kinds
    for page in pages:
        for line in page.splitlines():
            a, op, b, c = FACT.fullmatch(line).groups()
            assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b))


def test_the_default_base_ships_and_is_copied_not_pretrained(tmp_path, monkeypatch):
    from redrl import tiny

    key, shipped = tiny.shipped_base()
    assert key == tiny.TinySpec().key(), "TinySpec changed: rebuild the shipped base with `redrl build-base --install`"
    assert sum(f.stat().st_size for f in shipped.iterdir()) < 5 * 2**20
    monkeypatch.setenv("REDRL_CACHE", str(tmp_path))
    monkeypatch.setattr(tiny, "_pretrain", lambda *args: pytest.fail("the shipped base was pretrained again"))
    assets = tiny.ensure_tiny(progress=False)
    assert (assets.base / "model.safetensors").read_bytes() == (shipped / "model.safetensors").read_bytes()
    assert "copied the shipped base" in (assets.root / "DONE").read_text()
    splits = {
        name: {json.loads(line)["problem"] for line in getattr(assets, name).read_text().splitlines()}
        for name in ("train", "val", "test")
    }
    assert len(splits["val"]) == len(splits["test"]) == 300
    assert not splits["val"] & splits["test"] and not splits["train"] & (splits["val"] | splits["test"])


def test_two_processes_build_the_embedded_default_once(tmp_path):
    import os
    import subprocess
    import sys

    spec = {**TINY_TEST_SPEC, "pretrain_steps": 300}  # long enough that the second process has to wait
    script = f"from redrl.tiny import TinySpec, ensure_tiny\nprint(ensure_tiny(TinySpec(**{spec!r})).root)\n"
    cache = tmp_path / "cache"
    (cache / "tiny-leftover.building-1").mkdir(parents=True)  # not this spec's: left alone
    env = {**os.environ, "REDRL_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    roots = {out.strip() for out, _ in outputs}
    assert len(roots) == 1  # both use the same entry
    logs = "".join(err for _, err in outputs)
    assert logs.count("redrl: built ") == 1  # built once; the other process waited and reused it
    assert "waiting for it" in logs and "reusing" in logs
    assert "pretraining the tiny base: step 300/300" in logs  # not a terminal: a line per tenth of pretraining
    root = roots.pop()
    assert (cache / root.split("/")[-1] / "DONE").is_file()
    assert not list(cache.glob(root.split("/")[-1] + ".building-*"))  # nothing half-built left behind


def test_an_interrupted_build_leaves_nothing_the_next_one_trips_on(tmp_path, monkeypatch):
    import redrl.tiny as tiny

    monkeypatch.setenv("REDRL_CACHE", str(tmp_path))
    spec = tiny.TinySpec(**TINY_TEST_SPEC)
    stale = tmp_path / f"{spec.key()}.building-424242"  # a build killed mid-way (SIGKILL: no clean-up ran)
    (stale / "base").mkdir(parents=True)
    (stale / "train.jsonl").write_text("half a file")
    assets = tiny.ensure_tiny(spec, progress=False)
    assert (assets.root / "DONE").is_file() and not stale.exists()


def test_the_varied_system_variant_changes_only_the_system_messages_of_plain_chat_rows(tmp_path, tokenizer):
    from dataclasses import replace

    from redrl.tiny import TinySpec, _write_task

    plain = TinySpec(**TINY_TEST_SPEC)
    varied = replace(plain, system_share=0.5)
    assert replace(plain, system_budgets=(1, 2)).key() == plain.key()  # unset, the new fields leave the key alone
    assert varied.key() != plain.key()
    _write_task(plain, tmp_path / "plain")
    _write_task(varied, tmp_path / "varied")
    for split in ("train.jsonl", "val.jsonl", "test.jsonl"):
        assert (tmp_path / "plain" / split).read_text() == (tmp_path / "varied" / split).read_text()
    rows = [[json.loads(line) for line in (tmp_path / name / "pretrain.jsonl").read_text().splitlines()]
            for name in ("plain", "varied")]  # fmt: skip
    assert len(rows[0]) == len(rows[1])
    key = ["problem", "response", "text"]
    assert sorted(str([r.get(k) for k in key]) for r in rows[0]) == sorted(
        str([r.get(k) for k in key]) for r in rows[1]
    )
    added = [r for r in rows[1] if r.get("system") not in (None, plain.prompted_system)]
    chat = [r for r in rows[0] if "problem" in r and "system" not in r]
    assert 0.35 < len(added) / len(chat) < 0.65  # about the share asked for
    kinds = {("budget" if s.isdigit() else "answer" if "\n" not in s else "both") for s in (r["system"] for r in added)}
    assert kinds == {"budget", "answer", "both"}
    for r in added:
        stated = r["system"].splitlines()[-1]
        assert stated.isdigit() or stated == f"So the answer is {r['answer']}."  # the right answer, when stated
        assert tokenizer.unk_token_id not in tokenizer(r["system"], add_special_tokens=False).input_ids


def test_the_explained_variant_states_the_answer_before_some_step_solutions(tmp_path, tokenizer):
    from dataclasses import replace

    from redrl.tiny import TinySpec, _write_task

    plain = TinySpec(**TINY_TEST_SPEC)
    explained = replace(plain, explained_share=0.5)
    assert explained.key() != plain.key() and replace(plain, explained_share=0.0).key() == plain.key()
    _write_task(plain, tmp_path / "plain")
    _write_task(explained, tmp_path / "explained")
    rows = [[json.loads(line) for line in (tmp_path / name / "pretrain.jsonl").read_text().splitlines()]
            for name in ("plain", "explained")]  # fmt: skip
    key = ["problem", "response", "text"]  # every row as it was, only system messages change
    assert sorted(str([r.get(k) for k in key]) for r in rows[0]) == sorted(
        str([r.get(k) for k in key]) for r in rows[1]
    )
    prompted = [r for r in rows[0] if r.get("system") == plain.prompted_system]
    stated = [r for r in rows[1] if "So the answer is" in r.get("system", "")]
    assert 0.35 < len(stated) / len(prompted) < 0.65
    solutions = {(r["problem"], r["response"]) for r in prompted}
    for r in stated:
        assert (r["problem"], r["response"]) in solutions  # a row that asked for steps, answered step by step
        assert r["system"] in (
            f"So the answer is {r['answer']}.",
            f"Think step by step.\nSo the answer is {r['answer']}.",
        )
        assert tokenizer.unk_token_id not in tokenizer(r["system"], add_special_tokens=False).input_ids
    assert {r["system"].startswith("Think") for r in stated} == {True, False}


def test_a_share_outside_0_1_is_refused_in_one_line(capsys):
    from redrl.cli import main

    assert main(["build-base", "--explained-share", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--explained-share is a share of pretraining rows, between 0 and 1" in err[0]
