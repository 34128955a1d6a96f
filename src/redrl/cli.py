"""The ``redrl`` command line.

Each command is a small function that parses its flags and calls into the library; heavy imports
(torch, transformers) happen inside the commands so ``redrl --help`` answers at once.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence

from redrl import __version__


def _cmd_env(args: argparse.Namespace) -> int:
    """Print the versions and devices that matter for a bug report."""
    import importlib.metadata as metadata

    import torch

    rows = [("redrl", __version__), ("python", platform.python_version()), ("platform", platform.platform())]
    for package in ("torch", "transformers", "accelerate", "datasets", "safetensors", "vllm", "peft", "math-verify"):
        try:
            rows.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            rows.append((package, "not installed"))
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        rows.append(("cuda", f"{torch.version.cuda} ({names})"))
    else:
        rows.append(("cuda", "not available"))
    rows.append(("cpu threads", str(torch.get_num_threads())))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="redrl",
        description=(
            "Post-train small language models for verifiable reasoning with Recall-Extend Dynamics "
            "(RED, arXiv 2508.16677): offline teacher traces and online RL in one objective."
        ),
    )
    parser.add_argument("--version", action="version", version=f"redrl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    env = commands.add_parser("env", help="print versions of redrl, torch and friends, and the devices in sight")
    env.set_defaults(func=_cmd_env)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
