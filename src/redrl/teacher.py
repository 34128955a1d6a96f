"""The teacher *model* of distillation (arXiv 2605.16826): loaded once, frozen, checked against the
student's tokenizer, its distributions compared with the student's token by token."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Teacher", "check_vocabularies", "load_teacher"]


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
