"""`great-escape` command line. Each engine module that offers a subcommand exposes
`add_parser(subparsers)`, registering a parser whose `func(args) -> int` runs it."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import GreatEscapeError

# Engine modules with a subcommand, in the order `--help` lists them.
SUBCOMMAND_MODULES = ("capture", "daemon", "status", "sequences", "verify", "progress", "cutover", "copy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="great-escape", description="PostgreSQL to Aurora migration engine")
    parser.add_argument("--version", action="version", version=f"great-escape {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"great_escape.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"great_escape.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except GreatEscapeError as exc:
        print(f"great-escape: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
