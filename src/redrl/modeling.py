"""Forward passes that return per-token log-probabilities and entropies of response tokens."""

from __future__ import annotations

import torch

from redrl.objectives import token_logprobs_and_entropy, token_logprobs_and_entropy_from_hidden

__all__ = ["encode_prompt", "encode_response", "load_model_and_tokenizer", "response_logprobs"]


def _plain_linear_head(model) -> bool:
    """True when logits are ``lm_head(final hidden)`` and nothing else (Qwen2, Llama, Mistral)."""
    config = model.config
    return (
        getattr(config, "final_logit_softcapping", None) is None
        and getattr(config, "logit_scale", None) is None
        and model.get_output_embeddings() is not None
    )


def response_logprobs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor, *, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logp, entropy)``, each ``[N, S-1]``, of ``input_ids[:, 1:]``; zero outside ``loss_mask``.

    Only the response positions go through the output projection and the softmax, ``chunk_size``
    of them at a time, so neither prompt positions nor padding cost vocabulary-sized work and no
    ``[N, S, V]`` tensor is ever held (see
    :func:`redrl.objectives.token_logprobs_and_entropy_from_hidden`).
    """
    targets = input_ids[:, 1:]
    if _plain_linear_head(model):
        backbone = model.base_model
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
        head = model.get_output_embeddings()
        logp_sel, entropy_sel = token_logprobs_and_entropy_from_hidden(
            hidden[loss_mask].unsqueeze(0), head.weight, targets[loss_mask].unsqueeze(0),
            bias=head.bias, chunk_size=chunk_size,
        )
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        logp_sel, entropy_sel = token_logprobs_and_entropy(
            logits[loss_mask].unsqueeze(0), targets[loss_mask].unsqueeze(0), chunk_size=chunk_size
        )
    dtype = logp_sel.dtype
    logp = torch.zeros(loss_mask.shape, dtype=dtype, device=logp_sel.device)
    entropy = torch.zeros(loss_mask.shape, dtype=dtype, device=logp_sel.device)
    logp[loss_mask] = logp_sel.squeeze(0)
    entropy[loss_mask] = entropy_sel.squeeze(0)
    return logp, entropy


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model_and_tokenizer(path: str, *, dtype: str = "float32", attn_implementation: str | None = None,
                             trust_remote_code: bool = False):
    """A causal LM and its tokenizer from a local directory or the Hugging Face Hub.

    The tokenizer must have a chat template, an end-of-sequence token and a pad token (the
    end-of-sequence token is used for padding when it has none). Code shipped with a Hub model
    runs only with ``trust_remote_code=True``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer of {path} has no end-of-sequence token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = {"dtype": _DTYPES[dtype], "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model, tokenizer


def encode_prompt(tokenizer, problem: str, system_prompt: str | None = None) -> list[int]:
    """Token ids of the chat-formatted problem, ending where the assistant's answer begins."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": problem})
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def encode_response(tokenizer, text: str) -> list[int]:
    """Token ids of an assistant answer, closed by the end-of-sequence token."""
    return tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
