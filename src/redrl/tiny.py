"""The embedded default's student: a tiny Llama-style causal LM that answers arithmetic directly.

Built deterministically from a seed and cached under ``$REDRL_CACHE`` (default
``~/.cache/redrl``): the arithmetic task (train with teacher traces, test, pretraining corpus)
and a base model in Hugging Face format (``AutoModelForCausalLM.from_pretrained`` loads it), with
a word-level tokenizer that carries a chat template.

The base's pretraining corpus has two kinds of rows, and no reasoning line in either:

- chat rows: a problem and its *direct answer* (``13 + 5 - 9 + 4 = 13`` / ``\\boxed{13}``), with
  deep problems rarer than shallow ones (``pretrain_per_level``), as in a real corpus;
- raw-text "fact sheets": pages of single arithmetic facts, one per line (``13 + 5 = 18``), the
  addition table any corpus holds. They make the facts known *in any context*, not only right
  after a question, which is what lets the teacher's one-fact-per-line steps build on them.

So the base knows every fact (level 1) and answers deeper levels rarely: a narrow exploration
space that RL can sharpen but not widen.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from redrl.data.arithmetic import direct_answer, fact_line, generate_problems, teacher_trace, write_jsonl

__all__ = ["TinySpec", "build_tokenizer", "cache_dir", "ensure_tiny"]

SPECIAL_TOKENS = ["<|pad|>", "<|unk|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
WORDS = ["Compute", "Wait", "let", "me", "check", "So", "the", "answer", "is"]
SYMBOLS = list("+-*/=.,:;!?(){}") + ["\\boxed{"]
NUMBERS = [str(n) for n in range(100)]  # whole numbers below 100 are words; longer ones split
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# Splits text into words and symbols, each with the spaces around it, whole numbers below 100 (a
# longer number is read two digits at a time) and newlines: lossless. Numbers never carry a space,
# so a value is one and the same token wherever it stands (line start, after "=", in \boxed{}).
PRE_TOKENIZER_PATTERN = r" ?\\boxed\{| ?[A-Za-z]+ ?| ?[^\sA-Za-z\d] ?|\d{1,2}|\n| "


def cache_dir() -> Path:
    """Where built assets go: ``$REDRL_CACHE``, else ``~/.cache/redrl``."""
    return Path(os.environ.get("REDRL_CACHE", Path.home() / ".cache" / "redrl")).expanduser()


def build_tokenizer():
    """The tiny word-level tokenizer, as a ``transformers`` fast tokenizer with a chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for piece in NUMBERS + ["\n", " "]:
        vocab.setdefault(piece, len(vocab))
    for piece in WORDS + SYMBOLS:
        for variant in (piece, " " + piece, piece + " ", " " + piece + " "):
            vocab.setdefault(variant, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(PRE_TOKENIZER_PATTERN), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        eos_token="<|end|>",
        additional_special_tokens=SPECIAL_TOKENS[2:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@dataclass(frozen=True)
class TinySpec:
    """Everything the embedded default is built from; its hash names the cache entry."""

    format_version: int = 7  # bump when the task's text format changes, so caches are rebuilt
    seed: int = 0
    levels: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    train_per_level: tuple[int, ...] = (150, 400, 400, 400, 400, 400)  # level 1 has 270 problems in all
    test_per_level: int = 50
    pretrain_per_level: tuple[int, ...] = (6000, 3000, 1500, 800, 400, 200)  # deep problems are rarer
    fact_sheets: int = 3000  # raw-text pages of level-1 facts, one per line
    facts_per_sheet: int = 8
    recheck_prob: float = 0.5
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    pretrain_steps: int = 600
    pretrain_batch: int = 64
    pretrain_lr: float = 2e-3

    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"tiny-{digest}"


@dataclass
class TinyAssets:
    root: Path
    train: Path = field(init=False)
    test: Path = field(init=False)
    base: Path = field(init=False)

    def __post_init__(self):
        self.train, self.test, self.base = self.root / "train.jsonl", self.root / "test.jsonl", self.root / "base"


def _write_task(spec: TinySpec, root: Path) -> None:
    if not len(spec.levels) == len(spec.train_per_level) == len(spec.pretrain_per_level):
        raise ValueError("TinySpec.train_per_level and pretrain_per_level need one count per level")
    test = generate_problems(spec.seed * 3 + 1, spec.test_per_level, spec.levels)
    held_out = {p["problem"] for p in test}
    # Train and test are disjoint. Pretraining (direct answers) avoids the test problems of levels
    # >= 2 and may share problems with the train split, as a real pretraining corpus would. Level-1
    # problems are single arithmetic facts (270 in all): the base learns all of them, as a small
    # model knows its addition table, so level 1 measures that the base has its facts.
    train, pretrain = [], []
    for level, n_train, n_pretrain in zip(spec.levels, spec.train_per_level, spec.pretrain_per_level):
        train += generate_problems(spec.seed * 100 + level, n_train, [level], exclude=held_out)
        pretrain += generate_problems(spec.seed * 100 + 50 + level, n_pretrain, [level],
                                      exclude=held_out if level > 1 else set(), distinct=False)
    random.Random(spec.seed).shuffle(train)
    rng = random.Random(spec.seed)
    write_jsonl(
        ({"problem": p["problem"], "answer": p["answer"], "distill": teacher_trace(p["steps"], rng, spec.recheck_prob),
          "level": p["level"]} for p in train),
        root / "train.jsonl",
    )
    write_jsonl(({"problem": p["problem"], "answer": p["answer"], "level": p["level"]} for p in test), root / "test.jsonl")
    rows = [{"problem": p["problem"], "answer": p["answer"], "response": direct_answer(p["steps"]), "level": p["level"]}
            for p in pretrain]
    sheets = generate_problems(spec.seed * 100 + 99, spec.fact_sheets * spec.facts_per_sheet, [1], distinct=False)
    for i in range(spec.fact_sheets):
        facts = sheets[i * spec.facts_per_sheet : (i + 1) * spec.facts_per_sheet]
        rows.append({"text": "\n".join(fact_line(p["steps"][0]) for p in facts)})
    random.Random(spec.seed + 1).shuffle(rows)
    write_jsonl(rows, root / "pretrain.jsonl")


def _pretrain(spec: TinySpec, root: Path, out: Path, progress: bool) -> None:
    from tqdm.auto import tqdm
    from transformers import LlamaConfig, LlamaForCausalLM

    from redrl.batch import collate
    from redrl.data.offline import read_records
    from redrl.modeling import encode_prompt, encode_response, response_logprobs
    from redrl.objectives import sft_loss

    torch.manual_seed(spec.seed)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    records = read_records(root / "pretrain.jsonl")
    # Chat rows (problem -> direct answer) learn the answer; raw text pages learn every token.
    prompts = [encode_prompt(tokenizer, r["problem"]) if "problem" in r else [] for r in records]
    responses = [encode_response(tokenizer, r["response"] if "problem" in r else r["text"]) for r in records]
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.pretrain_lr, weight_decay=0.01)
    warmup = max(1, spec.pretrain_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / spec.pretrain_steps))),
    )
    rng = random.Random(spec.seed)
    model.train()
    bar = tqdm(range(spec.pretrain_steps), desc="pretraining the tiny base", disable=not progress, leave=False)
    for _ in bar:
        rows = rng.sample(range(len(records)), spec.pretrain_batch)
        input_ids, attention_mask, response_mask = collate([prompts[i] for i in rows], [responses[i] for i in rows],
                                                           tokenizer.pad_token_id)
        loss_mask = response_mask[:, 1:]
        logp, _ = response_logprobs(model, input_ids, attention_mask, loss_mask)
        loss = sft_loss(logp, loss_mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    (root / "pretrain_loss.txt").write_text(f"{loss.item():.4f}\n")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def ensure_tiny(spec: TinySpec | None = None, *, progress: bool = True) -> TinyAssets:
    """Build (or reuse from the cache) the arithmetic task and the tiny base student."""
    spec = spec or TinySpec()
    assets = TinyAssets(cache_dir() / spec.key())
    if (assets.root / "DONE").exists():
        return assets
    staging = assets.root.with_name(assets.root.name + f".building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.perf_counter()
    try:
        _write_task(spec, staging)
        _pretrain(spec, staging, staging / "base", progress)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    (staging / "spec.json").write_text(json.dumps(asdict(spec), indent=2))
    (staging / "DONE").write_text(f"built in {time.perf_counter() - started:.0f} s\n")
    try:
        staging.rename(assets.root)
    except OSError:  # another process finished first: use its copy
        shutil.rmtree(staging, ignore_errors=True)
    return assets
