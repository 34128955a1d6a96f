"""The teacher *model* of distillation (arXiv 2605.16826): loaded once, frozen, checked against the
student's tokenizer, its distributions compared with the student's token by token."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Teacher", "TeacherCache", "check_vocabularies", "load_teacher", "teacher_cache", "use_teacher_samples"]


@dataclass
class Teacher:
    """A frozen teacher: ``vocab`` is the number of output entries both models' distributions are
    compared over; ``note`` says, in one line, how they were aligned (``None`` when nothing was)."""

    model: torch.nn.Module
    tokenizer: object
    vocab: int
    note: str | None = None


def check_vocabularies(
    student_tokenizer, teacher_tokenizer, student_rows: int, teacher_rows: int
) -> tuple[int, str | None]:
    """``(common, note)``: how many output entries the two distributions are compared over.

    Distillation compares distributions entry by entry, so every token both tokenizers know must
    have the same id in both, and neither may have a token beyond the compared entries; anything
    else is refused in one line. Output sizes may still differ within one family (Qwen pads its
    embeddings to 151,936 or 152,064 rows, beyond its ~151,665 tokens): the distributions are then
    compared over the smaller size, both renormalised there. Padding the smaller instead would let
    the larger put probability on rows that are no token at all, and the KL would count it.
    """
    student, teacher = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    shared = student.keys() & teacher.keys()
    if not shared:
        raise ValueError(
            "the student and the teacher share no tokenizer: distillation compares their distributions token by token"
        )
    moved = sorted(token for token in shared if student[token] != teacher[token])
    if moved:
        token = moved[0]
        raise ValueError(
            f"the student's and the teacher's tokenizers differ: {len(moved)} tokens have other ids "
            f"(e.g. {token!r} is {student[token]} for the student, {teacher[token]} for the teacher)"
        )
    common = min(student_rows, teacher_rows)
    highest = max(max(student.values()), max(teacher.values()))
    if highest >= common:
        raise ValueError(
            f"token id {highest} lies beyond the {common} output entries both models have "
            f"(student {student_rows}, teacher {teacher_rows})"
        )
    if student_rows == teacher_rows:
        return common, None
    return common, (
        f"student and teacher output sizes differ ({student_rows} vs {teacher_rows}): their distributions are "
        f"compared over the first {common} entries, which hold every token (the rest are padding rows)"
    )


def load_teacher(cfg, student_tokenizer, student_rows: int, device: torch.device | str | None = None) -> Teacher:
    """``cfg.teacher``'s model, frozen, on ``teacher.device`` (``auto``: ``device``, the student's),
    in ``teacher.dtype`` (default ``model.dtype``), checked with :func:`check_vocabularies`."""
    from redrl.modeling import load_frozen_model
    from redrl.paths import resolve_model

    settings = cfg.teacher
    if not settings.path:
        raise ValueError("this method distils a teacher model: set teacher.path (a checkpoint or Hub id)")
    where = str(device) if settings.device == "auto" and device is not None else settings.device
    model, tokenizer = load_frozen_model(
        resolve_model(settings.path),
        dtype=settings.dtype or cfg.model.dtype,
        trust_remote_code=settings.trust_remote_code,
        device=where,
    )
    teacher_rows = model.get_output_embeddings().weight.shape[0]
    common, note = check_vocabularies(student_tokenizer, tokenizer, student_rows, teacher_rows)
    return Teacher(model, tokenizer, common, note)


@dataclass
class TeacherCache:
    """The teacher's log-probabilities on fixed teacher prefixes (the traces), computed once and
    reused every epoch: per trace token the ``k`` most likely entries and the tail's log-mass
    (:func:`redrl.objectives.teacher_top_k`; ``k`` at least the vocabulary: the exact distribution).

    ``ids`` ``[M, k]`` and ``logp`` ``[M, k + 1]`` hold every trace's positions one after the other,
    trace ``i`` at rows ``offsets[i]:offsets[i + 1]``. Training with it needs no teacher forward: the
    loss compares the student with the cached buckets (:func:`redrl.objectives.top_k_kl_from_hidden`)."""

    ids: torch.Tensor
    logp: torch.Tensor
    offsets: torch.Tensor
    k: int

    @classmethod
    @torch.no_grad()
    def compute(
        cls,
        teacher,
        prompts: list[list[int]],
        traces: list[list[int]],
        *,
        k: int,
        vocab: int,
        temperature: float = 1.0,
        pad_id: int = 0,
        batch_size: int = 32,
        chunk_size: int = 128,
        progress: bool = False,
    ) -> TeacherCache:
        """Run ``teacher`` over every prompt + trace (``batch_size`` at a time) and keep, at each trace
        position, the top ``k`` of its distribution over the first ``vocab`` entries."""
        from tqdm.auto import tqdm

        from redrl.batch import collate
        from redrl.modeling import _unwrap
        from redrl.objectives import teacher_top_k

        model = _unwrap(teacher)
        head = model.get_output_embeddings()
        device = head.weight.device
        weight = head.weight[:vocab]
        bias = None if head.bias is None else head.bias[:vocab]
        ids, logp = [], []
        starts = range(0, len(traces), batch_size)
        for start in tqdm(
            starts, desc="caching teacher log-probs", disable=not (progress and sys.stderr.isatty()), leave=False
        ):
            input_ids, attention_mask, response_mask = collate(
                prompts[start : start + batch_size], traces[start : start + batch_size], pad_id
            )
            hidden = model.base_model(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
            ).last_hidden_state
            hidden = hidden[:, :-1][response_mask[:, 1:].to(device)]  # row by row, position by position
            for first in range(0, hidden.shape[0], chunk_size):
                logits = torch.nn.functional.linear(hidden[first : first + chunk_size], weight, bias)
                top_ids, top_logp = teacher_top_k(logits, k, temperature=temperature)
                ids.append(top_ids.to(torch.int32).cpu())
                logp.append(top_logp.float().cpu())
        lengths = torch.tensor([0] + [len(trace) for trace in traces])
        k_kept = min(k, vocab)
        return cls(
            torch.cat(ids) if ids else torch.zeros(0, k_kept, dtype=torch.int32),
            torch.cat(logp) if logp else torch.zeros(0, k_kept + 1),
            lengths.cumsum(0),
            k_kept,
        )

    @staticmethod
    def key(teacher_path: str, traces: list[list[int]], prompts: list[list[int]], **settings) -> str:
        """A name for the cache entry: the teacher's weights (path, size and time of its files), the
        tokenised prompts and traces, and the settings (k, temperature, vocab)."""
        digest = hashlib.sha256()
        path = Path(teacher_path)
        files = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) if path.is_dir() else []
        digest.update(json.dumps([str(path.resolve()) if path.exists() else teacher_path]).encode())
        for file in files:
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        digest.update(json.dumps([prompts, traces, sorted(settings.items())]).encode())
        return digest.hexdigest()[:16]

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        save_file({"ids": self.ids, "logp": self.logp, "offsets": self.offsets}, str(tmp), metadata={"k": str(self.k)})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> TeacherCache:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            k = int(handle.metadata()["k"])
            return cls(handle.get_tensor("ids"), handle.get_tensor("logp"), handle.get_tensor("offsets"), k)

    def attach(self, batch, records: list[int]):
        """``batch`` (teacher rows only, one per record of ``records`` in order) with the cached
        ``teacher_ids`` / ``teacher_logp`` ``[N, S-1, ·]`` laid on its target grid; each row's
        response may be a prefix of its trace (the length curriculum's window)."""
        from dataclasses import replace

        offline = batch.is_offline.nonzero().flatten().tolist()
        if len(offline) != len(batch) or len(offline) != len(records):
            raise ValueError("cached teacher log-probs apply to teacher prefixes only (one teacher row per prompt)")
        n, width = batch.input_ids.shape[0], batch.input_ids.shape[1] - 1
        ids = torch.zeros(n, width, self.k, dtype=torch.long)
        logp = torch.zeros(n, width, self.k + 1)
        mask = batch.loss_mask().cpu()
        for row, record in zip(offline, records):
            positions = mask[row].nonzero().flatten()
            first = int(self.offsets[record])
            if len(positions) > int(self.offsets[record + 1]) - first:
                raise ValueError(f"trace {record} is longer than its cached teacher log-probs")
            ids[row, positions] = self.ids[first : first + len(positions)].long()
            logp[row, positions] = self.logp[first : first + len(positions)]
        device = batch.input_ids.device
        return replace(batch, teacher_ids=ids.to(device), teacher_logp=logp.to(device))


def teacher_cache(
    cfg, teacher: Teacher, data, pad_id: int, *, write: bool = True, progress: bool = False
) -> TeacherCache:
    """The :class:`TeacherCache` of ``data``'s traces under ``cfg.distill`` (``cache_top_k``,
    ``temperature``), read from the cache directory when an earlier run computed it, else computed
    and (``write``: the main process) stored there as safetensors."""
    from redrl.paths import resolve_model
    from redrl.tiny import cache_dir

    d = cfg.distill
    k = d.cache_top_k or teacher.vocab
    key = TeacherCache.key(
        resolve_model(cfg.teacher.path), data.teacher, data.prompts, k=k, temperature=d.temperature, vocab=teacher.vocab
    )
    path = cache_dir() / "teacher-logprobs" / f"{key}.safetensors"
    if path.exists():
        return TeacherCache.load(path)
    cache = TeacherCache.compute(
        teacher.model,
        data.prompts,
        data.teacher,
        k=k,
        vocab=teacher.vocab,
        temperature=d.temperature,
        pad_id=pad_id,
        chunk_size=d.chunk_size,
        progress=progress,
    )
    if write:
        cache.save(path)
    return cache


def use_teacher_samples(cfg, teacher: Teacher, data, tokenizer, *, write: bool = True, progress: bool = False) -> None:
    """Replace ``data``'s traces by the teacher's own samples (``distill.teacher_samples``): one
    response per training prompt at ``rollout.temperature``, up to ``rollout.max_new_tokens``, drawn
    with ``train.seed`` on a forked random state (training's own is untouched) and stored in the cache
    directory, so every run with the same teacher, prompts and settings trains on the same samples.
    Each record's ``distill`` text becomes its sample, so the teacher row's reward grades the sample."""
    from redrl.paths import resolve_model
    from redrl.rollout import in_process_engine, make_generator
    from redrl.tiny import cache_dir

    settings = {
        "kind": "samples",
        "temperature": cfg.rollout.temperature,
        "max_new_tokens": cfg.rollout.max_new_tokens,
        "seed": cfg.train.seed,
    }
    key = TeacherCache.key(resolve_model(cfg.teacher.path), [], data.prompts, **settings)
    path = cache_dir() / "teacher-samples" / f"{key}.json"
    if path.exists():
        samples = json.loads(path.read_text())
    else:
        engine = in_process_engine(cfg.rollout.engine)
        generator = make_generator(
            engine,
            teacher.model,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            batch_size=cfg.rollout.batch_size,
            mixed_precision=cfg.train.mixed_precision,
        )
        if progress:
            print(f"redrl: sampling the teacher once on {len(data.prompts)} training prompts", flush=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            samples = generator.generate(
                data.prompts, 1, temperature=cfg.rollout.temperature, max_new_tokens=cfg.rollout.max_new_tokens
            )
        if write:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
            tmp.write_text(json.dumps(samples))
            tmp.replace(path)
    data.teacher = [list(sample) for sample in samples]
    texts = tokenizer.batch_decode(samples, skip_special_tokens=True)
    data.records = [{**record, "distill": text} for record, text in zip(data.records, texts)]
    data._rewards.clear()


class DistillationTeacher:
    """The distillation teacher as an auxiliary model (:mod:`redrl.auxiliary`): frozen, loaded at
    set-up (:func:`load_teacher`), optionally replacing the traces by its own samples
    (``distill.teacher_samples``) or caching its log-probs on them (``distill.cache_teacher``), and
    placed inside the scorer's forward (:class:`redrl.modeling.DistillScorer`)."""

    name = "teacher"

    def __init__(self, context):
        cfg, par, progress = context.cfg, context.par, context.progress and context.par.is_main
        model = context.model
        self.settings = cfg.distill
        self.teacher = load_teacher(cfg, context.tokenizer, model.get_output_embeddings().weight.shape[0], par.device)
        if self.teacher.note and par.is_main:
            print(f"redrl: {self.teacher.note}", file=sys.stderr)
        if self.settings.teacher_samples:
            use_teacher_samples(
                cfg, self.teacher, context.data, context.tokenizer, write=par.is_main, progress=progress
            )
        self.cache = None
        if self.settings.cache_teacher:
            self.cache = teacher_cache(
                cfg, self.teacher, context.data, context.tokenizer.pad_token_id, write=par.is_main, progress=progress
            )
            self.teacher.model = None  # not needed again: every step reads the cache

    def scorer(self, module):
        from redrl.modeling import DistillScorer

        return DistillScorer(
            module.model,
            self.teacher.model,
            vocab=self.teacher.vocab,
            temperature=self.settings.temperature,
            chunk_size=self.settings.chunk_size,
        )

    def attach(self, batch, chosen: list[int]):
        return batch if self.cache is None else self.cache.attach(batch, chosen)

    def update(self, batch, stats: dict) -> dict:
        return {}  # frozen

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
