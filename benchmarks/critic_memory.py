"""Peak memory of the critics on a real model's shapes: classic PPO's one critic as large as the actor
against AsyPPO's two mini-critics cut to a few layers, each measured in a fresh process over what a
training step asks of them (every critic scores the step's rows without gradient, then takes one
AdamW step on its share), weights, gradients and optimizer state included.

Shapes are SmolLM2-135M's (hidden 576, 30 layers, 9 query / 3 key-value heads, MLP 1,536, vocabulary
49,152: the real model redrl's slow tests train), with random weights: memory depends on the shapes
only. Each row holds ``--tokens`` tokens.

    python benchmarks/critic_memory.py [--rows 8] [--tokens 512] [--layers 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import reset_peak, status_mb, write_figures

SMOLLM2 = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}


def _child(count: int, layers: int, rows: int, tokens: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaModel

    from redrl.critics import ValueModel, shard_of_rows
    from redrl.objectives import critic_ensemble, gae, value_loss

    torch.manual_seed(0)
    ids = torch.randint(0, SMOLLM2["vocab_size"], (rows, tokens))
    attention = torch.ones_like(ids)
    mask = torch.zeros(rows, tokens - 1, dtype=torch.bool)
    mask[:, tokens // 4 :] = True  # a quarter prompt, the rest response
    rewards = torch.randint(0, 2, (rows,)).float()
    baseline = reset_peak()  # the inputs are not counted; the critics' weights are
    config = LlamaConfig(**{**SMOLLM2, "num_hidden_layers": layers})
    critics = [ValueModel(LlamaModel(config), config.hidden_size) for _ in range(count)]
    optimizers = [torch.optim.AdamW(c.parameters(), lr=1e-6) for c in critics]
    with torch.no_grad():
        values = torch.stack([c(ids, attention) for c in critics])
    mean, _ = critic_ensemble(values)
    returns = gae(mean, rewards, mask) + mean
    owners = shard_of_rows(rows, rows, count, "responses" if count > 1 else "shared")
    for m, (critic, optimizer) in enumerate(zip(critics, optimizers)):
        share = owners[:, m]
        value_loss(critic(ids[share], attention[share]), returns[share], mask[share]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients kept: a step's full footprint
    parameters = sum(p.numel() for c in critics for p in c.parameters())
    print(json.dumps({"peak_mb": status_mb("VmHWM") - baseline, "parameters": parameters}))


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8, help="rows of one step (a group of 8 responses)")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of each mini-critic")
    parser.add_argument("--json")
    parser.add_argument("--child", nargs=2, type=int, metavar=("COUNT", "LAYERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.rows, args.tokens)
        return {}
    variants = {"ppo": (1, SMOLLM2["num_hidden_layers"]), "asyppo": (2, args.layers)}
    measured = {}
    for name, (count, layers) in variants.items():
        command = [sys.executable, __file__, "--rows", str(args.rows), "--tokens", str(args.tokens)]
        result = subprocess.run(
            [*command, "--child", str(count), str(layers)], capture_output=True, text=True, check=True
        )
        measured[name] = json.loads(result.stdout.strip().splitlines()[-1])
    figures = {
        "critic_memory_ratio": measured["asyppo"]["peak_mb"] / measured["ppo"]["peak_mb"],
        "critic_parameter_ratio": measured["asyppo"]["parameters"] / measured["ppo"]["parameters"],
        "peak_mb": {name: m["peak_mb"] for name, m in measured.items()},
        "parameters": {name: m["parameters"] for name, m in measured.items()},
        "critics": {name: {"count": c, "layers": lv} for name, (c, lv) in variants.items()},
        "rows": args.rows,
        "tokens": args.tokens,
        "shapes": "SmolLM2-135M",
    }
    print(
        f"critics on SmolLM2-135M's shapes, {args.rows} rows x {args.tokens} tokens, scored then one AdamW step: "
        f"ppo (1 critic, 30 layers) {measured['ppo']['peak_mb']:.0f} MB, {measured['ppo']['parameters'] / 1e6:.1f}M "
        f"parameters; asyppo (2 critics, {args.layers} layers) {measured['asyppo']['peak_mb']:.0f} MB, "
        f"{measured['asyppo']['parameters'] / 1e6:.1f}M -> memory ratio {figures['critic_memory_ratio']:.3f}"
    )
    return write_figures(figures, args.json)


if __name__ == "__main__":
    main()
