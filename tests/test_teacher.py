"""The teacher model: tokenizer checks, aligned output sizes, frozen on load."""

import pytest

from redrl.config import load_config
from redrl.teacher import check_vocabularies, load_teacher


class _Tokenizer:
    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return dict(self.vocab)


def test_tokenizers_must_agree_token_by_token():
    same = _Tokenizer({"a": 0, "b": 1, "c": 2})
    assert check_vocabularies(same, same, 3, 3) == (3, None)
    with pytest.raises(
        ValueError, match=r"2 tokens have other ids \(e.g. 'a' is 0 for the student, 1 for the teacher\)"
    ):
        check_vocabularies(same, _Tokenizer({"a": 1, "b": 0, "c": 2}), 3, 3)
    with pytest.raises(ValueError, match="share no tokenizer"):
        check_vocabularies(same, _Tokenizer({"x": 0, "y": 1}), 3, 3)


def test_output_sizes_of_one_family_are_aligned_on_the_smaller_and_said():
    tokens = _Tokenizer({"a": 0, "b": 1, "c": 2})
    common, note = check_vocabularies(tokens, tokens, 4, 8)  # padded embeddings, as Qwen's 151,936 vs 152,064
    assert common == 4 and "compared over the first 4 entries" in note
    with pytest.raises(ValueError, match="token id 2 lies beyond the 2 output entries"):
        check_vocabularies(tokens, tokens, 2, 8)


def test_load_teacher_freezes_it_and_refuses_a_missing_path(tiny_assets):
    from redrl.modeling import load_model_and_tokenizer

    _, tokenizer = load_model_and_tokenizer(str(tiny_assets.base))
    cfg = load_config("tiny", teacher={"path": str(tiny_assets.base)})
    rows = len(tokenizer)
    teacher = load_teacher(cfg, tokenizer, rows, device="cpu")
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    assert teacher.note is None and teacher.vocab <= rows
    with pytest.raises(ValueError, match="set teacher.path"):
        load_teacher(load_config("tiny"), tokenizer, rows)
