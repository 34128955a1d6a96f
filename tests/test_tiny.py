"""The tiny base's tokenizer and pretraining corpus: lossless, one token per number, no reasoning."""

import json
import re

import pytest

from redrl.tiny import build_tokenizer

FACT = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.mark.parametrize("text", [
    "Compute 13 + 5 - 9 + 4.",
    "13 + 5 = 18\nWait, let me check: 13 + 5 = 18.\n18 - 9 + 4\nSo the answer is \\boxed{13}.",
    "  So   the answer  is 123456 -7 \\boxed{ 19 }",
])
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


def test_pretraining_corpus_has_direct_answers_and_true_facts_only(tiny_assets):
    rows = [json.loads(line) for line in (tiny_assets.root / "pretrain.jsonl").read_text().splitlines()]
    chat = [r for r in rows if "problem" in r]
    pages = [r["text"] for r in rows if "text" in r]
    assert chat and pages
    for row in chat:  # the expression, its value, the boxed answer: no intermediate step
        expression = row["problem"].removeprefix("Compute ").removesuffix(".")
        assert row["response"] == f"{expression} = {row['answer']}\nSo the answer is \\boxed{{{row['answer']}}}."
    for page in pages:
        for line in page.splitlines():
            a, op, b, c = FACT.fullmatch(line).groups()
            assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    assert not any("Wait" in r.get("response", r.get("text")) for r in rows)
