"""Where is the sync and how long until it catches up: pending changes, lag, apply rate, ETA.

    great-escape status --config FILE [--reverse] [--json]
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from . import capture, config, db, state
from .daemon import direction_of

CHUNK = 200


def pending(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    """schema.table -> {pending, oldest, truncates} from the delta tables on the capturing side."""
    registry = capture.registered(conn)
    result: dict[str, dict[str, Any]] = {name: {"pending": 0, "oldest": None, "truncates": 0}
                                         for name in registry.values()}
    relids = list(registry)
    for i in range(0, len(relids), CHUNK):
        parts = [sql.SQL("SELECT {}::int8, count(*), min({}) FROM {}").format(
            sql.Literal(r), sql.Identifier(capture.CAPTURED_AT), sql.Identifier(capture.SCHEMA, capture.delta_name(r)))
            for r in relids[i:i + CHUNK]]
        for relid, count, oldest in conn.execute(sql.SQL(" UNION ALL ").join(parts)).fetchall():
            result[registry[relid]].update(pending=count, oldest=oldest)
    if relids:
        for relid, count, oldest in conn.execute(sql.SQL("SELECT relid::int8, count(*), min({}) FROM {} GROUP BY 1")
                                                 .format(sql.Identifier(capture.CAPTURED_AT),
                                                         sql.Identifier(capture.SCHEMA, "truncates"))).fetchall():
            if relid in registry:
                entry = result[registry[relid]]
                entry["truncates"] = count
                entry["oldest"] = min(filter(None, [entry["oldest"], oldest]))
    return result


def collect(cfg: config.Config, direction: str) -> dict[str, Any]:
    """The status as a dict (the JSON form)."""
    now = datetime.now(UTC)
    with db.connect(cfg.source, f"status {cfg.name}") as src:
        tables = pending(src)
    with db.connect(cfg.target, f"status {cfg.name}") as tgt:
        totals, applied = state.read(tgt, cfg.name, direction)
    rate = float(totals.get("rate") or 0.0)
    oldest = [t["oldest"] for t in tables.values() if t["oldest"]]
    total_pending = sum(t["pending"] + t["truncates"] for t in tables.values())
    per_table = {}
    for name, t in sorted(tables.items()):
        done = applied.get(name, {})
        per_table[name] = {
            "pending": t["pending"], "truncates": t["truncates"],
            "lag_seconds": round((now - t["oldest"]).total_seconds(), 3) if t["oldest"] else 0.0,
            "deltas_applied": done.get("deltas_applied", 0), "rows_applied": done.get("rows_applied", 0),
        }
    last = totals.get("last_batch_at")
    return {
        "name": cfg.name, "direction": direction,
        "source": db.describe(cfg.source), "target": db.describe(cfg.target),
        "tables": len(tables), "pending": total_pending,
        "lag_seconds": round((now - min(oldest)).total_seconds(), 3) if oldest else 0.0,
        "rate_per_second": round(rate, 1),
        "eta_seconds": round(total_pending / rate, 1) if rate > 0 and total_pending else (0.0 if not total_pending
                                                                                           else None),
        "deltas_applied": totals.get("deltas_applied", 0), "rows_applied": totals.get("rows_applied", 0),
        "batches": totals.get("batches", 0),
        "last_batch_at": last.isoformat() if last else None,
        "per_table": per_table,
    }


def one_line(s: dict[str, Any]) -> str:
    eta = s["eta_seconds"]
    eta_text = "caught up" if s["pending"] == 0 else ("ETA unknown (no apply rate yet)" if eta is None
                                                      else f"ETA {eta:.0f}s")
    return (f"{s['name']} {s['direction']}: {s['pending']} pending in {s['tables']} tables, lag "
            f"{s['lag_seconds']:.1f}s, {s['rate_per_second']:.0f} changes/s, {eta_text}; "
            f"{s['deltas_applied']} applied in {s['batches']} batches")


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("status", help="pending changes, lag, apply rate and ETA of the sync")
    parser.add_argument("--config", required=True)
    parser.add_argument("--reverse", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tables", action="store_true", help="one line per table too")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    cfg = config.load(args.config, reverse=args.reverse)
    s = collect(cfg, direction_of(args.reverse))
    if args.json:
        print(json.dumps(s, indent=2, default=str))
        return 0
    print(one_line(s))
    if args.tables:
        for name, t in s["per_table"].items():
            print(f"  {name}: {t['pending']} pending, lag {t['lag_seconds']:.1f}s, {t['deltas_applied']} applied")
    return 0
