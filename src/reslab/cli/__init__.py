"""The `reslab` command: one subcommand module per verb, each with `register(subparsers)`.

The CLI only parses flags, builds the library's config objects and calls the library
(docs/architecture.md); a ReslabError is printed on one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from reslab import __version__
from reslab.errors import ReslabError

#: subcommand modules under reslab.cli, in `--help` order.
COMMANDS = ("models", "weights", "info", "train", "eval", "predict", "detect", "export",
            "reproduce", "responses")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reslab",
        description="Deep Residual Learning for Image Recognition (He et al., 2015): "
        "every network of the paper, its training recipes and its experiments.",
    )
    parser.add_argument("--version", action="version", version=f"reslab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"reslab.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    command = "reslab"
    try:  # Ctrl-C while torch and the subcommands load is an interruption too
        args = build_parser().parse_args(argv)
        command = f"reslab {args.command}"
        return int(args.func(args) or 0)
    except ReslabError as e:
        print(f"{command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
