"""What every benchmark script shares: printing is its own; the figures go to ``--json``."""

from __future__ import annotations

import json


def write_figures(figures: dict, path: str | None) -> dict:
    """Write ``figures`` to ``path`` as JSON when one is given (``benchmarks/run.py`` collects them)."""
    if path:
        with open(path, "w") as f:
            json.dump(figures, f, indent=1)
    return figures


def status_mb(field: str) -> float:
    """A field of ``/proc/self/status`` in MB (Linux): ``VmRSS`` now, ``VmHWM`` the peak."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def reset_peak() -> float:
    """Reset the peak resident memory to the current one (Linux: write 5 to clear_refs); return it."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return status_mb("VmRSS")


def random_tiny_model(hidden: int | None = None):
    """The embedded default's shape (``TinySpec``) with random weights, vocabulary 208, end of
    sequence 5 (so rows run to the whole budget); ``hidden`` widens it (the MLP 4x as wide)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from redrl.tiny import TinySpec

    spec = TinySpec()
    hidden = hidden or spec.hidden_size
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=208,
        hidden_size=hidden,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size * hidden // spec.hidden_size,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=5,
        pad_token_id=5,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config).eval()
