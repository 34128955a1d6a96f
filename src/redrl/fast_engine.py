"""redrl's own sampler for small Llama/Qwen2/Mistral-style models: a preallocated KV cache for the
whole batch and one decoding step per token for all rows, without ``generate``'s per-token overhead
(BENCHMARKS.md measures it against ``generate``). Sampling is ``generate``'s: temperature, top-p,
stop tokens, budget."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from redrl.modeling import autocast

__all__ = ["FastGenerator", "sample_tokens"]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass
class _LayerPlan:
    """A decoder layer's projections fused into one product each where they are plain linear maps
    (LoRA-wrapped or unusual layers keep their own modules). ``qkv`` has the attention's scaling
    folded into its query rows (the rotation is linear, so it commutes)."""

    qkv: torch.Tensor | None = None
    qkv_bias: torch.Tensor | None = None
    qkv_sizes: tuple[int, int, int] = (0, 0, 0)
    gate_up: torch.Tensor | None = None


def _layer_plan(layer, scaling: float) -> _LayerPlan:
    plain = torch.nn.Linear
    attn, mlp, plan = layer.self_attn, layer.mlp, _LayerPlan()
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    if all(type(p) is plain for p in projections) and len({p.bias is None for p in projections}) == 1:
        plan.qkv = torch.cat([attn.q_proj.weight * scaling, attn.k_proj.weight, attn.v_proj.weight])
        if attn.q_proj.bias is not None:
            plan.qkv_bias = torch.cat([attn.q_proj.bias * scaling, attn.k_proj.bias, attn.v_proj.bias])
        plan.qkv_sizes = tuple(p.out_features for p in projections)
    gate, up = getattr(mlp, "gate_proj", None), getattr(mlp, "up_proj", None)
    if (
        type(gate) is plain
        and type(up) is plain
        and gate.bias is None
        and up.bias is None
        and type(getattr(mlp, "down_proj", None)) is plain
        and hasattr(mlp, "act_fn")
    ):
        plan.gate_up = torch.cat([gate.weight, up.weight])
    return plan


def _norm(module, x: torch.Tensor) -> torch.Tensor:
    """An RMS norm in one fused call where it is the Llama/Qwen2/Mistral one (same formula), else the module."""
    if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon") and x.dtype == torch.float32:
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), module.weight, module.variance_epsilon)
    return module(x)


def _linear(module, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x, module.weight, module.bias) if type(module) is torch.nn.Linear else module(x)


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """One token per row from ``softmax(logits / temperature)`` restricted to the smallest set of
    most likely tokens whose probability reaches ``top_p`` (``generate``'s top-p: the token that
    crosses ``top_p`` is kept; at least one token always is); ``temperature = 0`` is greedy."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the more likely tokens
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    # Inverse-CDF sampling: one uniform number per row (torch.multinomial draws one per entry).
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, device=probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


@dataclass
class FastGenerator:
    """Rollouts for small Llama/Qwen2/Mistral-style models without ``generate``'s per-token overhead.

    A preallocated key/value cache for the whole batch, prompts left-padded once, one decoding step
    per new token for all rows at once, finished rows dropped from the batch (the cache is
    compacted when a quarter of the rows are done). The model's own modules compute everything
    but the attention (projections, MLP, norms, rotary tables: LoRA layers and biases included),
    so outputs follow the model's numerics; sampling is ``generate``'s (temperature, top-p, stop
    tokens, budget; :func:`sample_tokens`). Also reports each sampled token's log-probability
    under the model (temperature 1, as the trainer computes it).

    Refuses, in one line, models it does not implement (other attention types, sliding windows,
    query/key norms); :func:`redrl.rollout.make_generator` then samples with ``generate``.
    """

    model: torch.nn.Module
    eos_id: int
    pad_id: int
    batch_size: int = 256
    mixed_precision: str = "no"
    top_p: float = 1.0
    stop_ids: tuple[int, ...] = ()

    SUPPORTED = ("llama", "qwen2", "mistral")

    def __post_init__(self):
        inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        config = inner.config
        kind = getattr(config, "model_type", "?")
        reason = None
        if kind not in self.SUPPORTED:
            reason = f"model type {kind!r} is not one of {', '.join(self.SUPPORTED)}"
        elif getattr(config, "use_sliding_window", False) or (
            kind == "mistral" and getattr(config, "sliding_window", None)
        ):
            reason = "sliding-window attention is not implemented"
        elif getattr(config, "final_logit_softcapping", None) or getattr(config, "attn_logit_softcapping", None):
            reason = "logit soft-capping is not implemented"
        elif any(hasattr(layer.self_attn, "q_norm") for layer in inner.model.layers):
            reason = "query/key norms are not implemented"
        if reason:
            raise ValueError(f"rollout.engine=fast: {reason}; use rollout.engine=hf for this model")
        self._inner = inner

    def generate(
        self, prompts: list[list[int]], n: int = 1, *, temperature: float = 1.0, max_new_tokens: int = 256
    ) -> list[list[int]]:
        return self.generate_with_logprobs(prompts, n, temperature=temperature, max_new_tokens=max_new_tokens)[0]

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Nothing to copy: it samples from the trained model's own modules."""

    def load_weights(self, weights) -> None:
        """Load ``(name, tensor)`` pairs (all or some of the model's) into this engine's model."""
        unknown = self.model.load_state_dict(dict(weights), strict=False).unexpected_keys
        if unknown:
            raise KeyError(f"the engine's model has no weights named {unknown[:3]}")

    @torch.no_grad()
    def generate_with_logprobs(
        self, prompts: list[list[int]], n: int = 1, *, temperature: float = 1.0, max_new_tokens: int = 256
    ) -> tuple[list[list[int]], list[list[float]]]:
        """As :meth:`HFGenerator.generate`, with each sampled token's log-probability."""
        rows = [list(p) for p in prompts for _ in range(n)]
        responses: list[list[int]] = [[] for _ in rows]
        logprobs: list[list[float]] = [[] for _ in rows]
        was_training = self.model.training
        self.model.eval()
        try:
            device = self._inner.get_input_embeddings().weight.device
            with autocast(device, self.mixed_precision):
                for start in range(0, len(rows), self.batch_size):
                    index = list(range(start, min(start + self.batch_size, len(rows))))
                    self._batch(
                        [rows[i] for i in index], index, responses, logprobs, temperature, max_new_tokens, device
                    )
        finally:
            self.model.train(was_training)
        return responses, logprobs

    def _batch(self, prompts, index, responses, logprobs, temperature, max_new_tokens, device):
        inner = self._inner
        body, layers = inner.model, inner.model.layers
        head = inner.get_output_embeddings()
        stops = torch.tensor(sorted({self.eos_id, *self.stop_ids}), device=device)
        B, width = len(prompts), max(len(p) for p in prompts)
        total = width + max_new_tokens
        ids = torch.full((B, width), self.pad_id, dtype=torch.long, device=device)
        valid = torch.zeros(B, total, dtype=torch.bool, device=device)  # key positions that hold real tokens
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt) :] = torch.tensor(prompt, device=device)
            valid[i, width - len(prompt) : width] = True
        pads = width - torch.tensor([len(p) for p in prompts], device=device)
        attn = layers[0].self_attn
        heads, kv_heads = inner.config.num_attention_heads, inner.config.num_key_value_heads
        head_dim = getattr(attn, "head_dim", inner.config.hidden_size // heads)
        scaling = getattr(attn, "scaling", head_dim**-0.5)
        x = body.embed_tokens(ids)
        cos_table, sin_table = body.rotary_emb(x, torch.arange(total, device=device)[None])
        cos_table, sin_table = cos_table[0], sin_table[0]
        # rotate_half(x)·sin = roll(x, half)·(sign·sin) with sign = (-1 … -1, 1 … 1): one roll, no cat
        half = head_dim // 2
        sign = torch.cat([-torch.ones(half, device=device), torch.ones(head_dim - half, device=device)])
        sin_table = sin_table * sign.to(sin_table.dtype)
        cache = [
            (
                torch.zeros(B, kv_heads, total, head_dim, dtype=x.dtype, device=device),
                torch.zeros(B, kv_heads, total, head_dim, dtype=x.dtype, device=device),
            )
            for _ in layers
        ]

        plans = [
            _layer_plan(layer, scaling) for layer in layers
        ]  # fused weights, taken afresh: the model trains between calls

        def rotate(x, cos, sin):  # x [b, length, heads, head_dim], cos/sin [b, length, 1, head_dim]
            return torch.addcmul(x * cos, x.roll(half, dims=-1), sin)

        def run(hidden, at: int, length: int, rows_alive):
            """The layers over ``length`` new positions starting at column ``at``; returns the last hidden state."""
            positions = (torch.arange(at, at + length, device=device)[None] - pads[rows_alive][:, None]).clamp(min=0)
            cos, sin = cos_table[positions][:, :, None], sin_table[positions][:, :, None]
            keys_valid = valid[rows_alive, : at + length]
            if length == 1:  # the newest query may see every real key: one additive mask for every layer
                bias = torch.zeros(keys_valid.shape, dtype=hidden.dtype, device=device)
                bias = bias.masked_fill_(~keys_valid, float("-inf"))[:, None, None, :]
            else:
                causal = torch.ones(length, at + length, dtype=torch.bool, device=device).tril(at)
                mask = (keys_valid[:, None, :] & causal[None])[:, None]  # [b, 1, q, k]
                diagonal = torch.arange(length, device=device)
                mask[:, :, diagonal, at + diagonal] = True  # a padding query sees itself (no empty softmax row)
            b = hidden.shape[0]
            for layer, plan, (k_cache, v_cache) in zip(layers, plans, cache):
                residual = hidden
                h = _norm(layer.input_layernorm, hidden)
                if plan.qkv is not None:  # queries come out scaled (folded into the weights)
                    out = torch.nn.functional.linear(h, plan.qkv, plan.qkv_bias).view(b, length, -1, head_dim)
                    qk = rotate(out[:, :, : heads + kv_heads], cos, sin)
                    q, k = qk[:, :, :heads].transpose(1, 2), qk[:, :, heads:].transpose(1, 2)
                    v = out[:, :, heads + kv_heads :].transpose(1, 2)
                else:
                    q = layer.self_attn.q_proj(h).view(b, length, heads, head_dim) * scaling
                    k = layer.self_attn.k_proj(h).view(b, length, kv_heads, head_dim)
                    v = layer.self_attn.v_proj(h).view(b, length, kv_heads, head_dim).transpose(1, 2)
                    q, k = rotate(q, cos, sin).transpose(1, 2), rotate(k, cos, sin).transpose(1, 2)
                k_cache[:, :, at : at + length] = k
                v_cache[:, :, at : at + length] = v
                keys, values = k_cache[:, :, : at + length], v_cache[:, :, : at + length]
                if kv_heads != heads:
                    keys = keys.repeat_interleave(heads // kv_heads, dim=1)
                    values = values.repeat_interleave(heads // kv_heads, dim=1)
                if keys.dtype != q.dtype:
                    keys, values = keys.to(q.dtype), values.to(q.dtype)
                if length == 1:  # one new token: two small batched products beat the fused kernel on CPU
                    out = torch.softmax(q @ keys.transpose(-1, -2) + bias, dim=-1) @ values
                else:
                    out = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=1.0)
                hidden = residual + _linear(
                    layer.self_attn.o_proj, out.transpose(1, 2).reshape(b, length, heads * head_dim)
                )
                h = _norm(layer.post_attention_layernorm, hidden)
                if plan.gate_up is not None:
                    gate, up = torch.nn.functional.linear(h, plan.gate_up).chunk(2, dim=-1)
                    hidden = hidden + _linear(layer.mlp.down_proj, layer.mlp.act_fn(gate) * up)
                else:
                    hidden = hidden + layer.mlp(h)
            return _norm(body.norm, hidden[:, -1])

        alive = torch.arange(B, device=device)  # the batch's rows, as positions in this batch
        running = torch.ones(B, dtype=torch.bool, device=device)  # rows that have not stopped yet
        tokens = torch.full((B, max_new_tokens), -1, dtype=torch.long, device=device)  # -1: not generated
        scores = torch.zeros(B, max_new_tokens, device=device)
        last = run(x, 0, width, alive)
        for step in range(max_new_tokens):
            logits = head(last).float()
            token = sample_tokens(logits, temperature, self.top_p)
            chosen = torch.log_softmax(logits, dim=-1).gather(-1, token[:, None]).squeeze(-1)
            tokens[alive, step] = torch.where(running, token, -1)
            scores[alive, step] = chosen
            running = running & ~torch.isin(token, stops)
            if not running.any() or step == max_new_tokens - 1:
                break
            column = width + step
            valid[alive, column] = True
            if (~running).sum() * 4 >= running.numel():  # a quarter of the rows are done: drop them
                alive, token = alive[running], token[running]
                cache = [(k[running], v[running]) for k, v in cache]
                running = running[running]
            last = run(body.embed_tokens(token[:, None]), column, 1, alive)
        for row, (ids, values) in enumerate(zip(tokens.tolist(), scores.tolist())):
            length = next((j for j, token in enumerate(ids) if token < 0), len(ids))
            responses[index[row]] = ids[:length]
            logprobs[index[row]] = values[:length]
