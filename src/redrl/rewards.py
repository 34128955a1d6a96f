"""Graders: the training reward and the evaluation call the same function, so they cannot drift.

A grader maps ``(response, answer)`` to a reward: ``1.0`` correct, ``0.0`` wrong (including a
response with no final answer at all), or ``None`` when the *reference* answer cannot be graded
by this grader (the row is then dropped from reward statistics; see
:func:`redrl.objectives.group_advantages`). "Ungradable" means exactly that, and nothing else.

The final answer is the content of the last ``\\boxed{...}`` in the response, the convention of
the math benchmarks and of the embedded arithmetic task alike.

Two graders: ``"integer"`` (the embedded task: exact integer match, pure Python) and ``"math"``
(:func:`math_reward`, equivalence through ``math-verify``, for real math data and benchmarks).
"""

from __future__ import annotations

import collections
import os
import re
import sys
import threading
import unicodedata
from collections.abc import Callable

__all__ = [
    "ANSWER_CHECKS",
    "FAILURES",
    "GRADED",
    "GRADERS",
    "extract_boxed",
    "grade",
    "integer_grader",
    "math_reward",
    "unreadable_answers",
]

_INTEGER = re.compile(r"[+-]?\d+")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (braces may nest), or ``None``."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 1, start + len("\\boxed{")
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i]
    return None  # unclosed: the response was cut off


def _parse_integer(text: str) -> str | None:
    """The integer ``text`` writes, as its canonical digit string (sign, no leading zeros), or
    ``None``. Compared as strings: an answer of any length is graded exactly (Python refuses to
    convert strings of more than 4,300 digits to ``int``)."""
    text = text.strip().replace(" ", "").replace(",", "")
    if not _INTEGER.fullmatch(text):
        return None
    digits = "".join(str(unicodedata.decimal(c)) for c in text.lstrip("+-")).lstrip("0")  # ٤٢ is 42, as int() reads it
    return ("-" if text.startswith("-") and digits else "") + (digits or "0")


def integer_grader(response: str, answer: str) -> float | None:
    """Exact integer match of the last ``\\boxed{}`` against ``answer``.

    ``None`` if ``answer`` is not an integer (ungradable); ``0.0`` if the response has no boxed
    integer; otherwise ``1.0`` or ``0.0``. ``\\boxed{ -12 }``, ``\\boxed{-012}`` and ``\\boxed{-12}``
    are the same answer; integers of any length are compared exactly.
    """
    gold = _parse_integer(str(answer))
    if gold is None:
        return None
    boxed = extract_boxed(response)
    predicted = _parse_integer(boxed) if boxed is not None else None
    return 1.0 if predicted == gold else 0.0


# ------------------------------------------------------------------------------------------------
# math-verify, in a separate process
# ------------------------------------------------------------------------------------------------

#: Only the end of a long completion is searched for its answer (a megabyte of text costs the
#: regular expressions seconds; the answer is at the end).
MAX_ANSWER_CHARS = 20_000


def _math_verify(region: str, answer: str, timeout: int) -> float | None:
    """The grading itself (runs inside the verifier process) of the answer region of a completion.

    Only LaTeX extraction is used, never ``math-verify``'s plain-expression extraction: that one
    goes through ``sympy.parse_expr``, which ``eval``s its input, and model text is untrusted.
    """
    from math_verify import LatexExtractionConfig, parse, verify

    latex = [LatexExtractionConfig(boxed_match_priority=0)]
    gold = _parse_gold(answer, timeout)
    if _gold_problem(gold) is not None:
        return None
    boxed = extract_boxed(region)
    # The last \boxed{} first (math-verify alone would merge every boxed answer into a set); without
    # one, math-verify's anchors ("the final answer is $...$") on the text after the reasoning.
    predicted = parse(
        f"\\boxed{{{boxed}}}" if boxed is not None else region, extraction_config=latex, parsing_timeout=timeout
    )
    if not predicted:
        return 0.0
    return 1.0 if verify(gold, predicted, timeout_seconds=timeout) else 0.0


def _parse_gold(answer: str, timeout: int) -> list:
    from math_verify import LatexExtractionConfig, parse

    text = answer if "\\boxed" in answer else f"\\boxed{{{answer}}}"
    return parse(text, extraction_config=[LatexExtractionConfig(boxed_match_priority=0)], parsing_timeout=timeout)


def _gold_problem(gold: list) -> str | None:
    """Why a parsed reference answer cannot be graded: nothing read, or a value that is no number
    (``\\frac{1}{0}`` reads as complex infinity, and every response writing it would match)."""
    if not gold:
        return "math-verify reads nothing in it"
    import sympy

    value = gold[0]
    if isinstance(value, sympy.Basic) and (value.has(sympy.zoo) or value.has(sympy.nan)):
        return f"it is not a number ({value})"
    return None


def _serve() -> None:
    """The verifier process (``python -m redrl.rewards``): one JSON request per line on stdin,
    one JSON reply per line on stdout."""
    import json
    import sys
    import warnings

    warnings.filterwarnings("ignore")
    import math_verify  # noqa: F401  (imported before "ready": the first request is not charged for it)

    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies on the pipe
    out.write('"ready"\n')
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if "check" in request:  # a reference answer alone: can it be graded at all?
                reply = {"value": _gold_problem(_parse_gold(request["check"], request["timeout"]))}
            else:
                reply = {"value": _math_verify(request["region"], request["answer"], request["timeout"])}
        except Exception as error:  # noqa: BLE001 - a grader error leaves the row ungraded, never a crash
            reply = {"error": f"{type(error).__name__}: {error}"[:200]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


class _Verifier:
    """One verifier process per calling thread (and per process): a hard timeout without signals.

    ``math-verify``'s own timeouts use ``signal.alarm``, which only works in the main thread; here
    the caller waits on the process's pipe for at most ``timeout`` seconds and kills the process if
    it is still busy (a new one starts at once, warm for the next call). The process is a plain
    ``python -m redrl.rewards`` child, so nothing of the caller's ``__main__`` is re-imported.
    """

    START_TIMEOUT = 120.0  # importing sympy and math-verify, once per process

    def __init__(self):
        self.process = None
        self.pid = os.getpid()
        self.ready = False

    def _start(self) -> None:
        import subprocess
        import sys

        self.process = subprocess.Popen(
            [sys.executable, "-m", "redrl.rewards"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            start_new_session=True,  # a Ctrl-C at the terminal stops training at a step boundary, not the grader
        )
        self.ready = False

    def _readline(self, timeout: float) -> str | None:
        import select

        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        return self.process.stdout.readline() if ready else None

    def _kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __call__(self, region: str, answer: str, timeout: float) -> float | None:
        return self.ask({"region": region, "answer": answer}, timeout)

    def ask(self, request: dict, timeout: float):
        """One request to the verifier process: its reply, or ``None`` (counted) when it raised or overran."""
        import json

        if self.process is None or self.process.poll() is not None:
            self._start()
        if not self.ready:
            if (self._readline(self.START_TIMEOUT) or "").strip() != '"ready"':
                self._kill()
                raise RuntimeError("the math-verify process did not start (is math-verify installed?)")
            self.ready = True
        self.process.stdin.write(json.dumps({**request, "timeout": max(1, int(timeout))}) + "\n")
        self.process.stdin.flush()
        line = self._readline(timeout)
        if line:
            reply = json.loads(line)
            if "error" in reply:
                FAILURES["error"] += 1
                return None
            return reply["value"]
        self._kill()  # still busy (or died): kill it, and start the next one now so it is warm
        self._start()
        FAILURES["timeout"] += 1
        return None


#: Rows left ungraded because grading raised (``"error"``) or overran its timeout (``"timeout"``),
#: in this process since it started; the trainer logs the increase per step.
FAILURES: collections.Counter = collections.Counter()

#: Answers graded by :func:`grade` in this process since it started (``"answers"``): the share of a
#: step's gradings that failed is the increase of :data:`FAILURES` over the increase of this.
GRADED: collections.Counter = collections.Counter()

_verifiers = threading.local()


def _verifier() -> _Verifier:
    verifier = getattr(_verifiers, "verifier", None)
    if verifier is None or verifier.pid != os.getpid():
        verifier = _verifiers.verifier = _Verifier()
    return verifier


def math_reward(completion: str, answer: str, *, timeout: float = 5.0) -> float | None:
    """Grade a math completion against a reference answer with ``math-verify``.

    The predicted answer is the last ``\\boxed{}`` after the reasoning (after ``</think>`` when
    there is one); without a boxed answer, ``math-verify``'s answer anchors ("the final answer is
    ...") on that text. Equivalent forms count as equal (``\\dfrac{1}{2}``, ``0.5``, ``1/2``;
    ``2\\sqrt{2}`` and ``\\sqrt{8}``; tuples with ``\\left(``).

    Returns ``1.0`` or ``0.0``; ``None`` when the reference answer cannot be parsed, when grading
    raised, or when it overran ``timeout`` (the row is then left out of the reward statistics and
    of the advantages; overruns and errors are counted in :data:`FAILURES`). Returns within
    ``timeout`` seconds of grading on any input, from any thread or process: grading runs in a
    separate process that is killed when it overruns. The first call of a thread also waits for
    that process to start (about a second). Model text is never evaluated as code.
    """
    if not isinstance(completion, str) or not isinstance(answer, str):
        raise TypeError(f"math_reward needs two strings; got {type(completion).__name__} and {type(answer).__name__}")
    if not answer.strip():
        return None
    region = completion.rsplit("</think>", 1)[-1][-MAX_ANSWER_CHARS:]  # the answer after the reasoning
    return _verifier()(region, answer, timeout)


def _math_grader(response: str, answer: str) -> float | None:
    return math_reward(response, answer)


#: One grader per answer format.
GRADERS: dict[str, Callable[[str, str], float | None]] = {"integer": integer_grader, "math": _math_grader}


def _integer_answer_problem(answer: str) -> str | None:
    return None if _parse_integer(answer) is not None else "it is not an integer"


def _math_answer_problem(answer: str, *, timeout: float = 5.0) -> str | None:
    if not answer.strip():
        return "it is empty"
    if _parse_integer(answer) is not None:  # most reference answers: no need to ask math-verify
        return None
    counted = FAILURES.copy()
    reason = _verifier().ask({"check": answer}, timeout)
    if FAILURES != counted:  # raised or overran: so would every grading against it (not a rollout's failure)
        FAILURES.clear()
        FAILURES.update(counted)
        return f"math-verify fails on it (an error or more than {timeout:g} s)"
    return reason


#: Per grader: why a reference answer cannot be graded (``None``: it can). A grader without an
#: entry here takes every reference answer as readable.
ANSWER_CHECKS: dict[str, Callable[[str], str | None]] = {
    "integer": _integer_answer_problem,
    "math": _math_answer_problem,
}


def unreadable_answers(answers: list[str], grader: str = "integer", *, progress: bool = False) -> dict[str, str]:
    """The distinct reference answers ``grader`` cannot grade, each with the reason (a training set
    is checked when it is loaded, so that such a problem is reported there, not trained on)."""
    check = ANSWER_CHECKS.get(grader)
    if check is None:
        return {}
    distinct = list(dict.fromkeys(answers))
    if progress and grader == "math" and len(distinct) > 500 and sys.stderr.isatty():
        from tqdm.auto import tqdm

        distinct = tqdm(distinct, desc="checking reference answers", leave=False)
    return {answer: reason for answer in distinct if (reason := check(answer)) is not None}


def grade(response: str, answer: str, grader: str = "integer") -> float | None:
    """Grade one response with the named grader (see ``GRADERS``); a grader that raises leaves the
    row ungraded (``None``, counted in :data:`FAILURES`) instead of stopping training."""
    try:
        fn = GRADERS[grader]
    except KeyError:
        raise ValueError(f"unknown grader {grader!r}; choose from {', '.join(GRADERS)}") from None
    GRADED["answers"] += 1
    try:
        return fn(response, answer)
    except Exception:  # noqa: BLE001 - a reward bug must not kill a days-long run; it is counted
        FAILURES["error"] += 1
        return None


def grade_checked(response: str, answer: str, grader: str = "integer") -> tuple[float | None, bool]:
    """:func:`grade`, and whether grading itself failed (raised or overran its timeout) as opposed
    to the reference answer being unreadable; both give ``None``."""
    before = sum(FAILURES.values())
    reward = grade(response, answer, grader)
    return reward, reward is None and sum(FAILURES.values()) > before


if __name__ == "__main__":
    _serve()
