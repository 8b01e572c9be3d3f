"""`great-escape` command line. Each engine module that offers a subcommand exposes
`add_parser(subparsers)`, registering a parser whose `func(args) -> int` runs it."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import GreatEscapeError

# Each subcommand and the engine module that registers it, in the order `--help` lists them.
SUBCOMMANDS = {"capture": "capture", "sync": "daemon", "supervise": "daemon", "status": "status",
               "sequences": "sequences", "verify": "verify", "progress": "progress", "cutover": "cutover",
               "rollback": "cutover", "cutover-status": "cutover", "copy": "copy",
               "access": "access"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or of `command` alone: a progress record or measure, run by the roles at
    every sample, then starts in a tenth of a second instead of importing psycopg and the whole engine."""
    parser = argparse.ArgumentParser(prog="great-escape", description="PostgreSQL to Aurora migration engine")
    parser.add_argument("--version", action="version", version=f"great-escape {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = [SUBCOMMANDS[command]] if command in SUBCOMMANDS else SUBCOMMANDS.values()
    for name in dict.fromkeys(modules):
        importlib.import_module(f"great_escape.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The global options take no value: the first other word is the subcommand.
    args = build_parser(next((a for a in argv if not a.startswith("-")), None)).parse_args(argv)
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
