"""RAVR's premise on the embedded base: does the reference answer in the prompt help it reason?

RAVR (arXiv 2510.25206) samples reasoning paths from a prompt that carries the reference answer and
uses them to teach the question-only policy. That helps only if the answer-conditioned policy reaches
valid reasoning the question-only one rarely samples. This samples the embedded base ``k`` times per
validation problem with the question alone and with the answer stated in the system message (each
``--hints`` template, ``{answer}`` standing for it), and reports per level: the accuracy of the final
answer, the share of *valid chains* (every ``a op b = c`` line true and the final answer right), and
the *leak* share (right answers with no operation line, the answer copied rather than reasoned).

    python benchmarks/ravr_premise.py [--k 8] [--task DIR] [--json FILE]

``--task`` names another task directory of the cache (one ``redrl build-base`` wrote: its ``base/``
and ``val.jsonl``), e.g. the variant pretrained with varied system messages. A template's ``\\n``
stands for a line break.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from common import write_figures

from redrl.config import load_config
from redrl.data.arithmetic import operation_lines
from redrl.data.offline import load_problems
from redrl.modeling import encode_prompt, load_frozen_model
from redrl.paths import resolve_paths, resolve_split
from redrl.rewards import grade
from redrl.rollout import make_generator


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--hints", default="{answer}|So the answer is {answer}.")
    parser.add_argument("--task", help="a task directory with base/ and val.jsonl (default: the embedded default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    cfg = load_config("tiny", [])
    if args.task:
        base, problems = f"{args.task}/base", load_problems(f"{args.task}/val.jsonl")
    else:
        base, _, _ = resolve_paths(cfg, need_train=False, need_test=False, progress=False)
        problems = load_problems(resolve_split(cfg, "val", progress=False))
    model, tokenizer = load_frozen_model(base)
    generator = make_generator("fast", model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    data = cfg.data
    hints = [h.replace("\\n", "\n") for h in args.hints.split("|")]
    conditions = {"question": None, **{f"hint {h!r}": h for h in hints}}
    figures = {"k": args.k, "problems": len(problems), "base": str(base), "conditions": {}}
    for name, hint in conditions.items():
        torch.manual_seed(args.seed)
        prompts = []
        for p in problems:
            system = data.system_for(p)
            if hint is not None:  # a template without {answer} is a control: the same words, no answer
                stated = hint.replace("{answer}", str(p["answer"]))
                if tokenizer.unk_token_id in tokenizer(stated, add_special_tokens=False).input_ids:
                    raise SystemExit(f"the embedded vocabulary cannot write the hint {stated!r}")
                system = f"{system}\n{stated}" if system else stated
            prompts.append(encode_prompt(tokenizer, p["problem"], system, **data.prompt_kwargs()))
        responses = []
        for start in range(0, len(prompts), 32):
            responses += generator.generate(
                prompts[start : start + 32],
                args.k,
                temperature=cfg.rollout.temperature,
                max_new_tokens=cfg.rollout.max_new_tokens,
            )
        texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
        by_level = defaultdict(lambda: {"n": 0, "correct": 0, "valid": 0, "leak": 0})
        for i, p in enumerate(problems):
            for j in range(args.k):
                text = texts[i * args.k + j]
                correct = grade(text, p["answer"], cfg.data.grader) == 1.0
                found, true = operation_lines(text)
                row = by_level[int(p["level"])]
                row["n"] += 1
                row["correct"] += correct
                row["valid"] += correct and found > 0 and true == found
                row["leak"] += correct and found == 0
        table = {
            level: {key: row[key] / row["n"] for key in ("correct", "valid", "leak")}
            for level, row in sorted(by_level.items())
        }
        figures["conditions"][name] = table
        print(f"{name}:")
        for level, row in table.items():
            print(
                f"  level {level}: correct {row['correct']:.3f}  valid chain {row['valid']:.3f}  leak {row['leak']:.3f}"
            )
    return write_figures(figures, args.json)


if __name__ == "__main__":
    main()
