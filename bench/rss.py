"""Benchmark 6: peak memory of the sync. A backlog of N captured row changes (INSERTs of distinct keys into
one table, written with the sync stopped) is drained by `great-escape sync --drain`; its peak RSS comes
from the kernel (wait4 ru_maxrss), which is exact, not sampled.

    python -m bench rss [--scale quick|medium|full]

Goal: peak RSS <= 150 MB for 10M changes (full scale; quick drains 200k, medium 2M).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from psycopg import sql

from great_escape import db

from . import common as c
from . import replicators as r

# scale -> (row changes in the backlog, drain timeout s)
SIZES = {"quick": (200_000, 600), "medium": (2_000_000, 3600), "full": (10_000_000, 4 * 3600)}
CHUNK = 250_000  # rows per INSERT transaction while building the backlog
TABLE = sql.Identifier("public", "rss_items")
LIMIT_MB = 150


def main(argv: Sequence[str] | None = None) -> int:
    c.install_signal_handlers()
    args = c.parse_args(__doc__ or "", argv)
    changes, timeout = SIZES[args.scale]
    why = r.available("great-escape")
    if why:
        raise c.BenchError(f"rss: cannot run: {why}")
    with c.clusters("rss", 4, ["source", "aurora"], args.scale, keep=args.keep) as (source, target):
        work = source.datadir.parent / "work"
        work.mkdir(parents=True, exist_ok=True)
        template = c.create_database(source, "rss_template")
        c.execute(template, sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, account integer NOT NULL, "
                                    "note text NOT NULL)").format(TABLE))
        dump = work / "template.dump"
        c.run([c.pg_tool("pg_dump"), "-Fc", "-f", str(dump)], env=c.pg_env(template), timeout=600,
              what="pg_dump of the template")
        pair = r.make_pair(source, target, "rss_template", "rss_ge", dump, 600)
        tool = r.GreatEscape(pair, work)
        try:
            tool.install()
            started = time.monotonic()
            with db.connect(pair.source, "bench backlog", autocommit=True) as conn:
                for first in range(1, changes + 1, CHUNK):
                    conn.execute(sql.SQL("INSERT INTO {} SELECT g, g %% 1000, md5(g::text) "
                                         "FROM generate_series(%s::bigint, %s::bigint) AS g").format(TABLE),
                                 (first, min(first + CHUNK - 1, changes)))
            written = time.monotonic() - started
            print(f"rss: backlog of {changes} changes written in {written:.1f}s; draining ...",
                  file=sys.stderr, flush=True)
            tool.start(drain=True)
            seconds, maxrss_kib = tool.wait_drained(timeout)
        finally:
            tool.cleanup()
        got = int(c.query(pair.target, sql.SQL("SELECT count(*) FROM {}").format(TABLE))[0][0])
        if got != changes:
            raise c.BenchError(f"rss: the target holds {got} rows of public.rss_items after the drain, "
                               f"expected {changes}; see {tool.log}")
        body = _report(changes, written, seconds, maxrss_kib, template, args.scale)
        c.write_results(args.results, "rss", "6. Peak RSS of the sync draining a backlog", body, args.scale)
    return 0


def _report(changes: int, written: float, seconds: float, maxrss_kib: int, params: dict[str, Any],
            scale: str) -> str:
    mb = maxrss_kib * 1024 / 1e6
    lines = [
        f"Backlog: {changes:,} INSERTs of distinct keys into public.rss_items (id bigint primary key, "
        f"integer, md5 text), written in {CHUNK:,}-row transactions in {written:.1f} s with capture "
        "installed and the sync stopped; drained by `great-escape sync --drain` (default batch_size 10000) "
        "into the Aurora-like target; row count checked after.",
        f"Machine: {c.machine(params)}.",
        "",
        c.table(["changes", "drain s", "changes/s", "peak RSS MB"],
                [[changes, seconds, int(changes / seconds), f"{mb:.1f}"]]),
        "",
    ]
    if scale == "full":
        lines.append(f"Peak RSS {mb:.1f} MB (goal <= {LIMIT_MB} MB: {c.goal(mb, LIMIT_MB, 'lower')}).")
    else:
        lines.append(f"Peak RSS {mb:.1f} MB (the goal is judged at full scale, 10M changes; "
                     f"{'already above' if mb > LIMIT_MB else 'within'} {LIMIT_MB} MB here).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
