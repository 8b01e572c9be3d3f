"""Compare every application table of the source and the target, row for row, with this test's own
queries (not the engine's verify): count and md5 over the rows in key order, rendered as text under
the engine's pinned session settings, so int and bigint columns compare equal.

    compare_tables.py            # connection settings from GE_SOURCE_* / GE_TARGET_* (HOST, PORT, DB,
                                 # USER, PASSWORD); prints JSON, exits 1 when a table differs
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from psycopg import sql

from great_escape.catalog import Table, list_tables
from great_escape.db import connect


def _params(side: str) -> dict[str, Any]:
    env = os.environ
    return {"host": env[f"GE_{side}_HOST"], "port": int(env[f"GE_{side}_PORT"]),
            "dbname": env[f"GE_{side}_DB"], "user": env[f"GE_{side}_USER"],
            "password": env[f"GE_{side}_PASSWORD"]}


def _fingerprint(conn: Any, table: Table) -> list[Any]:
    # Generated columns are left out: the target computes them itself, and differences there are
    # a restore question, not a sync one.
    columns = [c.name for c in table.columns if not c.generated]
    query = sql.SQL(
        "SELECT count(*), coalesce(md5(string_agg(row_text, E'\\n' ORDER BY {order})), '') "
        "FROM (SELECT {key}, ({cols})::text AS row_text FROM {only} {table}) AS r"
    ).format(
        # A partitioned table's rows are in its partitions: read through it; ONLY everywhere else, so
        # an inheritance child is not counted twice.
        only=sql.SQL("" if table.partitioned else "ONLY"),
        order=sql.SQL(", ").join(sql.Identifier(k) for k in table.key),
        key=sql.SQL(", ").join(sql.Identifier(k) for k in table.key),
        cols=sql.SQL("ROW({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns)),
        table=table.ident,
    )
    count, digest = conn.execute(query).fetchone()
    return [count, digest]


def main() -> int:
    report: dict[str, Any] = {"tables": {}, "differences": []}
    with connect(_params("SOURCE"), "molecule verify", autocommit=True) as source, \
            connect(_params("TARGET"), "molecule verify", autocommit=True) as target:
        source_tables = {t.qualname: t for t in list_tables(source)}
        target_tables = {t.qualname: t for t in list_tables(target)}
        for name in sorted(source_tables.keys() ^ target_tables.keys()):
            side = "target" if name in source_tables else "source"
            report["differences"].append(f"{name}: missing on the {side}")
        for name in sorted(source_tables.keys() & target_tables.keys()):
            table = source_tables[name]
            if not table.key:
                report["differences"].append(f"{name}: no key to order rows by")
                continue
            src, tgt = _fingerprint(source, table), _fingerprint(target, table)
            report["tables"][name] = {"source": src, "target": tgt}
            if src != tgt:
                report["differences"].append(f"{name}: source rows/md5 {src} != target {tgt}")
        report["tables_compared"] = len(report["tables"])
    print(json.dumps(report, indent=1, sort_keys=True))
    return 1 if report["differences"] or not report["tables"] else 0


if __name__ == "__main__":
    sys.exit(main())
