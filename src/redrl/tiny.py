"""The embedded default's student: a tiny Llama-style causal LM that already reasons a little.

Built deterministically from a seed and cached under ``$REDRL_CACHE`` (default
``~/.cache/redrl``): the arithmetic task (train with teacher traces, validation, test, pretraining
corpus) and a base model in Hugging Face format (``AutoModelForCausalLM.from_pretrained`` loads
it), with a word-level tokenizer that carries a chat template. The base of the default spec ships
with redrl (``redrl/assets/tiny-base``); ``redrl build-base`` pretrains it again from scratch.

The base's pretraining corpus mirrors what a math base model such as Qwen2.5-Math has seen before
RL, in three kinds of rows:

- chat rows, a problem and its answer, deep problems rarer than shallow ones
  (``pretrain_per_level``). Most answer *directly* (``13 + 5 - 9 + 4 = 13`` /
  ``\\boxed{13}``); on levels 2-3 half are short step-by-step solutions in the teacher's line
  format, some with a re-check (``base_step_share``, ``base_recheck_prob``). Sampled, the base
  writes steps on those levels only part of the time: it is unreliable where it can succeed, which
  is what RL's "Recall" sharpens;
- chat rows whose system message asks "Think step by step." (``prompted_per_level``), answered
  step by step on levels 2-6. The base *can* solve deep problems that way, but unprompted it
  answers them directly and almost never samples a step line: the skill lies outside its
  exploration space. The teacher's traces, unprompted and step by step on every level, are what
  brings it there ("Extend"), as R1 traces bring out reasoning a math base produces only when
  asked;
- raw-text "fact sheets": pages of single arithmetic facts, one per line (``13 + 5 = 18``), the
  addition table any corpus holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from redrl.data.arithmetic import direct_answer, fact_line, generate_problems, step_solution, teacher_trace, write_jsonl

__all__ = [
    "TeacherSpec",
    "TinySpec",
    "build_lock",
    "build_log",
    "build_tokenizer",
    "cache_dir",
    "ensure_tiny",
    "shipped_base",
    "teacher_root",
]

SPECIAL_TOKENS = ["<|pad|>", "<|unk|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
WORDS = ["Compute", "Wait", "let", "me", "check", "So", "the", "answer", "is", "Think", "step", "by"]
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

    format_version: int = 8  # bump when the task's text format changes, so caches are rebuilt
    seed: int = 0
    levels: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    max_value: int = 19  # every number and intermediate value lies in [0, max_value]
    train_per_level: tuple[int, ...] = (150, 400, 400, 400, 400, 400)  # level 1 has 270 problems in all
    val_per_level: int = 50
    test_per_level: int = 50
    pretrain_per_level: tuple[int, ...] = (6000, 3000, 1500, 800, 400, 200)  # deep problems are rarer
    base_step_share: tuple[float, ...] = (0.0, 0.5, 0.5, 0.0, 0.0, 0.0)  # pretraining answers written step by step
    base_recheck_prob: float = 0.3
    teacher_recheck_prob: float = 0.3
    fact_sheets: int = 3000  # raw-text pages of level-1 facts, one per line
    facts_per_sheet: int = 8
    prompted_per_level: tuple[int, ...] = (
        0,
        300,
        300,
        600,
        600,
        600,
    )  # chat rows asked to think step by step, answered so
    prompted_system: str = "Think step by step."
    # the share of the other chat rows whose prompt also carries a system message of the kinds redrl's
    # methods write (a thinking budget, a stated answer, or both), the response unchanged: a pretrained
    # LLM has read many system messages, and this base otherwise knows only the one above
    system_share: float = 0.0
    system_budgets: tuple[int, ...] = (16, 24, 32, 48, 64, 96, 128, 160)
    # the share of the rows asked to think step by step whose system message also states the right
    # answer (alone or after the think-aloud line), the step solution unchanged: the worked solutions
    # to given answers a pretrained LLM has read, which RAVR's premise rests on
    explained_share: float = 0.0
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    pretrain_steps: int = 1000
    pretrain_batch: int = 64
    pretrain_lr: float = 2e-3

    def key(self) -> str:
        values = asdict(self)
        if not self.system_share:  # fields added later enter the key only when they change the task
            del values["system_share"], values["system_budgets"]
        if not self.explained_share:
            del values["explained_share"]
        digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]
        return f"tiny-{digest}"


@dataclass
class TinyAssets:
    root: Path
    train: Path = field(init=False)
    val: Path = field(init=False)
    test: Path = field(init=False)
    base: Path = field(init=False)

    def __post_init__(self):
        self.train, self.val, self.test = self.root / "train.jsonl", self.root / "val.jsonl", self.root / "test.jsonl"
        self.base = self.root / "base"


def _write_task(spec: TinySpec, root: Path) -> None:
    per_level = (spec.train_per_level, spec.pretrain_per_level, spec.base_step_share, spec.prompted_per_level)
    if not all(len(counts) == len(spec.levels) for counts in per_level):
        raise ValueError(
            "TinySpec.train_per_level, pretrain_per_level, base_step_share and prompted_per_level need one value per level"
        )
    test = generate_problems(spec.seed * 3 + 1, spec.test_per_level, spec.levels, max_value=spec.max_value)
    val = generate_problems(
        spec.seed * 3 + 2,
        spec.val_per_level,
        spec.levels,
        exclude={p["problem"] for p in test},
        max_value=spec.max_value,
    )
    held_out = {p["problem"] for p in test + val}
    # Train, validation and test are disjoint. Pretraining avoids the held-out problems of levels
    # >= 2 and may share problems with the train split, as a real pretraining corpus would. Level-1
    # problems are single arithmetic facts (270 in all): the base learns all of them, as a small
    # model knows its addition table, so level 1 measures that the base has its facts.
    train, pretrain = [], []
    for level, n_train, n_pretrain in zip(spec.levels, spec.train_per_level, spec.pretrain_per_level):
        train += generate_problems(
            spec.seed * 100 + level, n_train, [level], exclude=held_out, max_value=spec.max_value
        )
        pretrain += generate_problems(
            spec.seed * 100 + 50 + level,
            n_pretrain,
            [level],
            exclude=held_out if level > 1 else set(),
            distinct=False,
            max_value=spec.max_value,
        )
    random.Random(spec.seed).shuffle(train)
    rng = random.Random(spec.seed)
    write_jsonl(
        (
            {
                "problem": p["problem"],
                "answer": p["answer"],
                "level": p["level"],
                "distill": teacher_trace(p["steps"], rng, spec.teacher_recheck_prob),
            }
            for p in train
        ),
        root / "train.jsonl",
    )
    for name, split in (("val", val), ("test", test)):
        write_jsonl(
            ({"problem": p["problem"], "answer": p["answer"], "level": p["level"]} for p in split),
            root / f"{name}.jsonl",
        )
    share = dict(zip(spec.levels, spec.base_step_share))
    rows = []
    systems = random.Random(spec.seed + 7)  # its own stream: the default task draws nothing from it
    for p in pretrain:
        stepwise = rng.random() < share[p["level"]]
        response = step_solution(p["steps"], rng, spec.base_recheck_prob) if stepwise else direct_answer(p["steps"])
        row = {"problem": p["problem"], "answer": p["answer"], "response": response, "level": p["level"]}
        if spec.system_share and systems.random() < spec.system_share:
            row["system"] = varied_system(p["answer"], systems, spec.system_budgets)
        rows.append(row)
    explained = random.Random(spec.seed + 11)  # its own stream too
    for level, count in zip(spec.levels, spec.prompted_per_level):
        for p in generate_problems(
            spec.seed * 100 + 70 + level, count, [level], exclude=held_out, distinct=False, max_value=spec.max_value
        ):
            system = spec.prompted_system
            if spec.explained_share and explained.random() < spec.explained_share:
                stated = f"So the answer is {p['answer']}."
                system = explained.choice((stated, f"{spec.prompted_system}\n{stated}"))
            rows.append(
                {
                    "problem": p["problem"],
                    "answer": p["answer"],
                    "system": system,
                    "response": step_solution(p["steps"], rng, spec.base_recheck_prob),
                    "level": p["level"],
                }
            )
    sheets = generate_problems(
        spec.seed * 100 + 99, spec.fact_sheets * spec.facts_per_sheet, [1], distinct=False, max_value=spec.max_value
    )
    for i in range(spec.fact_sheets):
        facts = sheets[i * spec.facts_per_sheet : (i + 1) * spec.facts_per_sheet]
        rows.append({"text": "\n".join(fact_line(p["steps"][0]) for p in facts)})
    random.Random(spec.seed + 1).shuffle(rows)
    write_jsonl(rows, root / "pretrain.jsonl")


def varied_system(answer: str, rng: random.Random, budgets: tuple[int, ...]) -> str:
    """A system message of a kind redrl's methods write, drawn uniformly: a thinking budget (a
    number), the answer stated (``So the answer is 13.``), or both."""
    budget, stated = str(rng.choice(budgets)), f"So the answer is {answer}."
    return rng.choice((budget, stated, f"{budget}\n{stated}"))


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
    prompts = [encode_prompt(tokenizer, r["problem"], r.get("system")) if "problem" in r else [] for r in records]
    responses = [encode_response(tokenizer, r["response"] if "problem" in r else r["text"]) for r in records]
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.pretrain_lr, weight_decay=0.01)
    warmup = max(1, spec.pretrain_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / spec.pretrain_steps))),
    )
    rng = random.Random(spec.seed)
    model.train()
    on_terminal = progress and sys.stderr.isatty()
    bar = tqdm(range(spec.pretrain_steps), desc="pretraining the tiny base", disable=not on_terminal, leave=False)
    say, every = (
        build_log(progress and not on_terminal),
        max(1, spec.pretrain_steps // 10),
    )  # elsewhere: a line per tenth
    for step in bar:
        rows = rng.sample(range(len(records)), spec.pretrain_batch)
        input_ids, attention_mask, response_mask = collate(
            [prompts[i] for i in rows], [responses[i] for i in rows], tokenizer.pad_token_id
        )
        loss_mask = response_mask[:, 1:]
        logp, _ = response_logprobs(model, input_ids, attention_mask, loss_mask)
        loss = sft_loss(logp, loss_mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % every == 0:
            say(f"pretraining the tiny base: step {step + 1}/{spec.pretrain_steps}, loss {loss.item():.3f}")
    (root / "pretrain_loss.txt").write_text(f"{loss.item():.4f}\n")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


@dataclass(frozen=True)
class TeacherSpec:
    """How the embedded teacher is built from the embedded base; its hash names the cache entry."""

    format_version: int = 1
    depth_factor: int = 2  # layers of the teacher per layer of the base
    steps: int = 200
    prompts_per_step: int = 32
    seed: int = 0

    def key(self, task_key: str) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]
        return f"{task_key}-teacher-{digest}"


def teacher_root(spec: TeacherSpec | None = None, assets: TinyAssets | None = None) -> Path:
    """Where the embedded teacher of ``spec`` lives in the cache, built or not (it is built by
    :func:`redrl.tiny_teacher.ensure_teacher`, a training run, never by resolving a path)."""
    assets = assets or ensure_tiny(progress=False)
    return cache_dir() / (spec or TeacherSpec()).key(assets.root.name)


def shipped_base() -> tuple[str | None, Path]:
    """``(key, directory)`` of the base shipped with redrl: the :meth:`TinySpec.key` it was built
    from (``None`` when no base ships) and the directory ``from_pretrained`` reads."""
    from importlib import resources

    root = Path(str(resources.files("redrl") / "assets" / "tiny-base"))
    manifest = root / "spec.json"
    if not manifest.is_file():
        return None, root
    return json.loads(manifest.read_text())["key"], root


def build_log(progress: bool):
    """One line per phase of a build on stderr (logs, CI, notebooks see them; ``progress=False`` is quiet)."""
    return (lambda line: print(f"redrl: {line}", file=sys.stderr, flush=True)) if progress else (lambda line: None)


@contextlib.contextmanager
def build_lock(root: Path, say):
    """Hold ``<root>.lock`` while building ``root``: a second process waits (and says so), then
    finds the finished build and reuses it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, builds may repeat side by side
        yield
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_name(root.name + ".lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"another process is building {root.name}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_tiny(spec: TinySpec | None = None, *, progress: bool = True, rebuild: bool = False) -> TinyAssets:
    """Build (or reuse from the cache) the arithmetic task and the tiny base student.

    The task's files are written from the spec's seed in seconds. The base for the default spec
    ships with redrl (``redrl/assets/tiny-base``, built by ``redrl build-base``) and is copied;
    any other spec, or ``rebuild``, pretrains it here (8 to 15 minutes on 2 CPU cores). A rebuilt
    base goes to its own cache entry (``<key>-rebuilt``), so it never replaces the shipped one.

    One process builds a cache entry at a time (a file lock; the others wait, then reuse it). A
    build is written beside its entry and renamed into place when complete, so an interrupted one
    leaves no entry behind, and its leftovers are removed by the next build."""
    spec = spec or TinySpec()
    key, shipped = shipped_base()
    use_shipped = key == spec.key() and not rebuild
    assets = TinyAssets(cache_dir() / (spec.key() + ("-rebuilt" if rebuild else "")))
    if (assets.root / "DONE").exists():
        return assets
    say = build_log(progress)
    with build_lock(assets.root, say):
        if (assets.root / "DONE").exists():  # built by the process we waited for
            say(f"reusing {assets.root}")
            return assets
        for leftover in assets.root.parent.glob(assets.root.name + ".building-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # an interrupted build's; nobody else builds now
        if use_shipped:
            say(f"unpacking the embedded default (task and shipped base) into {assets.root}")
        else:
            say(
                f"building the embedded default into {assets.root}: the task, then pretraining its base "
                "(8 to 15 minutes on 2 CPU cores)"
            )
        staging = assets.root.with_name(assets.root.name + f".building-{os.getpid()}")
        staging.mkdir(parents=True)
        started = time.perf_counter()
        try:
            _write_task(spec, staging)
            if use_shipped:
                shutil.copytree(shipped, staging / "base", ignore=shutil.ignore_patterns("spec.json"))
            else:
                _pretrain(spec, staging, staging / "base", progress)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        (staging / "spec.json").write_text(json.dumps(asdict(spec) | {"key": spec.key()}, indent=2))
        how = "copied the shipped base" if use_shipped else "pretrained the base"
        seconds = time.perf_counter() - started
        (staging / "DONE").write_text(f"{how}; {seconds:.0f} s\n")
        staging.rename(assets.root)
        say(f"built {assets.root.name} in {seconds:.0f} s ({how})")
    return assets


def build_base(
    *,
    seed: int | None = None,
    system_share: float = 0.0,
    explained_share: float = 0.0,
    install: bool = False,
    progress: bool = True,
) -> dict:
    """``redrl build-base``: pretrain the embedded default's base from scratch and check it against
    the shipped one on the validation split (avg@4 at temperature 0.6, the demo's evaluation).

    ``seed`` builds a fresh task instead (new problems, new teacher traces, a new base): the same
    task family drawn again. ``system_share`` > 0 builds the variant whose pretraining prompts also
    carry varied system messages (:attr:`TinySpec.system_share`), ``explained_share`` > 0 the one whose
    step-by-step rows also state the answer (:attr:`TinySpec.explained_share`). ``install`` copies the rebuilt base into ``redrl/assets/tiny-base``
    (what a maintainer commits after changing :class:`TinySpec`)."""
    from dataclasses import replace

    from redrl.config import load_config
    from redrl.data.offline import load_problems
    from redrl.evaluate import evaluate_model

    for flag, share in (("--system-share", system_share), ("--explained-share", explained_share)):
        if not 0 <= share <= 1:
            raise ValueError(f"{flag} is a share of pretraining rows, between 0 and 1; got {share}")
    spec = replace(
        TinySpec(),
        seed=TinySpec().seed if seed is None else seed,
        system_share=system_share,
        explained_share=explained_share,
    )
    started = time.perf_counter()
    assets = ensure_tiny(spec, progress=progress, rebuild=True)
    built_seconds = time.perf_counter() - started
    cfg = load_config("tiny", ["optim.lr=1e-4"])
    problems = load_problems(assets.val)
    candidates = {"rebuilt": assets.base}
    key, shipped = shipped_base()
    if key == spec.key():
        candidates = {"shipped": shipped} | candidates
    results = {
        name: evaluate_model(str(path), problems, cfg, seed=0, progress=progress) for name, path in candidates.items()
    }
    summary = {
        "key": spec.key(),
        "base": str(assets.base),
        "build_seconds": built_seconds,
        "validation": {
            name: {"accuracy": r["accuracy"], "by_level": {lv: v["accuracy"] for lv, v in r["by_level"].items()}}
            for name, r in results.items()
        },
    }
    if install:
        target = Path(str(shipped))
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(assets.base, target)
        (target / "spec.json").write_text(json.dumps(asdict(spec) | {"key": spec.key()}, indent=2) + "\n")
        summary["installed"] = str(target)
    return summary
