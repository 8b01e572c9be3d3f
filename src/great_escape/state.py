"""Sync progress records on the applying side (schema `great_escape`), written in the apply transaction
so that "applied" and "recorded as applied" commit together (DESIGN.md invariant 5)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from . import capture
from .errors import SyncError

SCHEMA = "great_escape"
CUTOVER_TABLE = "cutover_state"

_DDL = (
    "CREATE TABLE IF NOT EXISTS {schema}.sync_state ("
    " name text NOT NULL, direction text NOT NULL, batches bigint NOT NULL DEFAULT 0,"
    " rows_applied bigint NOT NULL DEFAULT 0, deltas_applied bigint NOT NULL DEFAULT 0,"
    " rate real NOT NULL DEFAULT 0, last_batch_at timestamptz, started_at timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (name, direction))",
    "CREATE TABLE IF NOT EXISTS {schema}.sync_tables ("
    " name text NOT NULL, direction text NOT NULL, table_name text NOT NULL,"
    " rows_applied bigint NOT NULL DEFAULT 0, deltas_applied bigint NOT NULL DEFAULT 0,"
    " last_applied_at timestamptz, PRIMARY KEY (name, direction, table_name))",
)


def ensure(conn: psycopg.Connection[Any]) -> None:
    """Create the progress tables if missing (committed at once)."""
    try:
        with conn.transaction():
            capture.allow_ddl(conn)  # past the schema freeze: the reverse sync records progress on the source
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
            for ddl in _DDL:
                conn.execute(sql.SQL(ddl).format(schema=sql.Identifier(SCHEMA)))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise SyncError(
            f"cannot create schema {SCHEMA} on {conn.info.host}:{conn.info.port}/{conn.info.dbname} as "
            f"{conn.info.user}: {exc.diag.message_primary}; grant CREATE on the database to this user "
            "(the prepare-target phase does)") from exc


def record_batch(conn: psycopg.Connection[Any], name: str, direction: str, per_table: dict[str, tuple[int, int]],
                 rate: float) -> None:
    """Add one batch's counts; per_table maps schema.table -> (rows applied, deltas consumed)."""
    rows = sum(r for r, _ in per_table.values())
    deltas = sum(d for _, d in per_table.values())
    conn.execute(sql.SQL(
        "INSERT INTO {}.sync_state AS s (name, direction, batches, rows_applied, deltas_applied, rate, last_batch_at)"
        " VALUES (%s, %s, 1, %s, %s, %s, now()) ON CONFLICT (name, direction) DO UPDATE SET"
        " batches = s.batches + 1, rows_applied = s.rows_applied + EXCLUDED.rows_applied,"
        " deltas_applied = s.deltas_applied + EXCLUDED.deltas_applied, rate = EXCLUDED.rate,"
        " last_batch_at = now()").format(sql.Identifier(SCHEMA)), (name, direction, rows, deltas, rate))
    if per_table:
        conn.execute(sql.SQL(
            "INSERT INTO {}.sync_tables AS s (name, direction, table_name, rows_applied, deltas_applied,"
            " last_applied_at) SELECT %s, %s, t, r, d, now() FROM unnest(%s::text[], %s::int8[], %s::int8[])"
            " AS u(t, r, d) ON CONFLICT (name, direction, table_name) DO UPDATE SET"
            " rows_applied = s.rows_applied + EXCLUDED.rows_applied,"
            " deltas_applied = s.deltas_applied + EXCLUDED.deltas_applied, last_applied_at = now()"
        ).format(sql.Identifier(SCHEMA)), (name, direction, list(per_table),
                                           [r for r, _ in per_table.values()], [d for _, d in per_table.values()]))


def read(conn: psycopg.Connection[Any], name: str, direction: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(totals, per table) as recorded; empty when nothing was applied yet."""
    exists = conn.execute("SELECT pg_catalog.to_regclass(%s)", (f"{SCHEMA}.sync_state",)).fetchone()
    if not exists or exists[0] is None:
        return {}, {}
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(sql.SQL("SELECT batches, rows_applied, deltas_applied, rate, last_batch_at, started_at "
                            "FROM {}.sync_state WHERE name = %s AND direction = %s").format(sql.Identifier(SCHEMA)),
                    (name, direction))
        totals = cur.fetchone() or {}
        cur.execute(sql.SQL("SELECT table_name, rows_applied, deltas_applied, last_applied_at "
                            "FROM {}.sync_tables WHERE name = %s AND direction = %s").format(sql.Identifier(SCHEMA)),
                    (name, direction))
        tables = {r.pop("table_name"): r for r in cur.fetchall()}
    return totals, tables


def read_cutover(conn: psycopg.Connection[Any], name: str) -> dict[str, Any]:
    """{live, changed_at, write_stops} of the migration `name`; one never switched has the source live.

    Kept on the target (great_escape.cutover_state), written by the cutover and rollback."""
    exists = conn.execute("SELECT pg_catalog.to_regclass(%s)", (f"{SCHEMA}.{CUTOVER_TABLE}",)).fetchone()
    row = None
    if exists and exists[0] is not None:
        row = conn.execute(
            sql.SQL("SELECT live, changed_at, write_stops FROM {} WHERE name = %s").format(
                sql.Identifier(SCHEMA, CUTOVER_TABLE)
            ),
            (name,),
        ).fetchone()
    conn.rollback()
    if row is None:
        return {"live": "source", "changed_at": None, "write_stops": {}}
    return {"live": row[0], "changed_at": row[1], "write_stops": row[2] or {}}


def sending_side(direction: str) -> str:
    """The side that must be live for a sync of `direction` to run."""
    return "source" if direction == "forward" else "target"
