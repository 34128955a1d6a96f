"""How far a top-k teacher cache is from the exact KL, on the embedded default.

For teacher prefixes (the traces) redrl can cache the teacher's log-probabilities once: per trace
token its ``k`` most likely entries and the tail's mass (``distill.cache_teacher``,
``distill.cache_top_k``). The KL is then that of the ``k + 1`` buckets, a lower bound on the exact
one. This measures, on the embedded student (the base) and teacher over the training traces, the
mean token KL (forward and reverse) from the cache against the exact full-vocabulary value, the
largest per-token gap, and the cache's size, for several ``k``.

    python benchmarks/teacher_cache.py [--traces 512] [--json FILE]
"""

from __future__ import annotations

import argparse

import torch
from common import write_figures

from redrl.config import load_config
from redrl.data.training import prepare_data
from redrl.modeling import load_frozen_model, response_distillation
from redrl.paths import resolve_model, resolve_paths
from redrl.teacher import TeacherCache, load_teacher


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=512)
    parser.add_argument("--k", default="1,4,16,64,full")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    cfg = load_config("tiny", ["optim.lr=1e-4", "train.method=kd"])
    base, train_path, _ = resolve_paths(cfg, need_test=False, progress=False)
    student, tokenizer = load_frozen_model(base)
    data = prepare_data(cfg, tokenizer, train_path)
    prompts, traces = data.prompts[: args.traces], data.teacher[: args.traces]
    teacher = load_teacher(cfg, tokenizer, student.get_output_embeddings().weight.shape[0])
    from redrl.batch import collate

    input_ids, attention_mask, response_mask = collate(prompts, traces, tokenizer.pad_token_id)
    mask = response_mask[:, 1:]
    with torch.no_grad():
        _, _, exact_fwd, exact_rev = response_distillation(
            student, teacher.model, input_ids, attention_mask, mask, vocab=teacher.vocab, chunk_size=256
        )
    tokens = int(mask.sum())
    figures = {
        "vocab": teacher.vocab,
        "traces": len(traces),
        "tokens": tokens,
        "teacher": resolve_model(cfg.teacher.path),
        "exact": {"kl_fwd": float(exact_fwd[mask].mean()), "kl_rev": float(exact_rev[mask].mean())},
        "top_k": {},
    }
    print(f"{len(traces)} traces, {tokens} tokens, vocabulary {teacher.vocab}")
    print(f"exact: KL_fwd {figures['exact']['kl_fwd']:.4f}  KL_rev {figures['exact']['kl_rev']:.4f}")
    for text in args.k.split(","):
        k = teacher.vocab if text == "full" else int(text)
        cache = TeacherCache.compute(
            teacher.model, prompts, traces, k=k, vocab=teacher.vocab, pad_id=tokenizer.pad_token_id
        )
        batch_ids = torch.zeros(*mask.shape, cache.k, dtype=torch.long)
        batch_logp = torch.zeros(*mask.shape, cache.k + 1)
        batch_ids[mask], batch_logp[mask] = cache.ids.long(), cache.logp
        with torch.no_grad():
            _, _, fwd, rev = response_distillation(
                student,
                None,
                input_ids,
                attention_mask,
                mask,
                vocab=teacher.vocab,
                chunk_size=256,
                teacher_ids=batch_ids,
                teacher_logp=batch_logp,
            )
        row = {
            "kl_fwd": float(fwd[mask].mean()),
            "kl_rev": float(rev[mask].mean()),
            "kl_fwd_relative_gap": float(1 - fwd[mask].mean() / exact_fwd[mask].mean()),
            "kl_rev_relative_gap": float(1 - rev[mask].mean() / exact_rev[mask].mean()),
            "max_token_gap": float(torch.maximum(exact_fwd - fwd, exact_rev - rev)[mask].max()),
            "bytes_per_token": (cache.ids.element_size() * cache.k + cache.logp.element_size() * (cache.k + 1)),
        }
        figures["top_k"][text] = row
        print(
            f"k={text:>5}: KL_fwd {row['kl_fwd']:.4f} ({100 * row['kl_fwd_relative_gap']:.2f}% below exact)  "
            f"KL_rev {row['kl_rev']:.4f} ({100 * row['kl_rev_relative_gap']:.2f}% below)  "
            f"largest token gap {row['max_token_gap']:.2e}  {row['bytes_per_token']} bytes/token"
        )
    return write_figures(figures, args.json)


if __name__ == "__main__":
    main()
