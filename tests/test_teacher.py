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
        load_teacher(load_config("tiny", teacher={"path": None}), tokenizer, rows)


def test_response_distillation_equals_the_full_logits_path(tiny_assets):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from redrl.batch import collate
    from redrl.modeling import load_model_and_tokenizer, response_distillation
    from redrl.objectives import token_kl

    student, tokenizer = load_model_and_tokenizer(str(tiny_assets.base))
    rows = student.get_output_embeddings().weight.shape[0]
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=rows + 4,
            hidden_size=48,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=96,
            tie_word_embeddings=False,
        )
    ).eval()  # a different width and 4 padding rows: compared over the student's rows
    prompts, responses = [[3, 4, 5], [6, 7]], [[8, 9, 10, 11], [12, 13]]
    input_ids, attention_mask, response_mask = collate(prompts, responses, tokenizer.pad_token_id)
    loss_mask = response_mask[:, 1:]
    logp, entropy, kl_fwd, kl_rev = response_distillation(
        student, teacher, input_ids, attention_mask, loss_mask, vocab=rows, temperature=2.0, chunk_size=3
    )
    loss = (kl_fwd + 0.5 * kl_rev + 0.1 * logp).sum()
    (grad,) = torch.autograd.grad(loss, student.get_input_embeddings().weight)

    s_logits = student(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][loss_mask]
    with torch.no_grad():
        t_logits = teacher(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][loss_mask]
    naive_fwd, naive_rev, _ = token_kl(s_logits[:, :rows], t_logits[:, :rows], temperature=2.0)
    targets = input_ids[:, 1:][loss_mask]
    naive_logp = torch.log_softmax(s_logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(kl_fwd[loss_mask], naive_fwd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kl_rev[loss_mask], naive_rev, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logp[loss_mask], naive_logp, rtol=1e-5, atol=1e-6)
    assert (kl_fwd[~loss_mask] == 0).all() and (entropy[loss_mask] > 0).all()
    (naive_grad,) = torch.autograd.grad(
        (naive_fwd + 0.5 * naive_rev + 0.1 * naive_logp).sum(), student.get_input_embeddings().weight
    )
    torch.testing.assert_close(grad, naive_grad, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in teacher.parameters())
