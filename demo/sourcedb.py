"""The demo scripts' connection to the source database: command line options and libpq parameters.

The password comes from GE_SOURCE_PASSWORD (default: the local inventory's), never from the command line.
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--host, --port, --dbname and --user of the source, defaulting to the local inventory's source."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=55432)
    parser.add_argument("--dbname", default="app")
    parser.add_argument("--user", default="postgres")


def params(args: argparse.Namespace) -> dict[str, Any]:
    """libpq parameters of the source from the parsed options and GE_SOURCE_PASSWORD."""
    return {"host": args.host, "port": args.port, "dbname": args.dbname, "user": args.user,
            "password": os.environ.get("GE_SOURCE_PASSWORD", "ge-local-secret")}
