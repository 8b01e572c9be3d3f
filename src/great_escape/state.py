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
STATE_TABLES = ("sync_state", "sync_tables")

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


def _exists(conn: psycopg.Connection[Any], kind: str, name: str) -> bool:
    func = "to_regnamespace" if kind == "schema" else "to_regclass"
    row = conn.execute(sql.SQL("SELECT pg_catalog.{}(%s) IS NOT NULL").format(sql.Identifier(func)),
                       (name,)).fetchone()
    return bool(row and row[0])


def _tables_exist(conn: psycopg.Connection[Any]) -> bool:
    return all(_exists(conn, "table", sql.Identifier(SCHEMA, t).as_string(conn)) for t in STATE_TABLES)


def ensure(conn: psycopg.Connection[Any]) -> None:
    """Make sure the progress tables exist (committed at once). Where they do (prepare() made them), nothing
    is created and no privilege beyond writing them is needed: the sync user has no CREATE on the database.
    The schema is created here only by a user that may (the cutover's admin on the source)."""
    where = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    try:
        with conn.transaction():
            if _tables_exist(conn):
                return
            capture.allow_ddl(conn)  # past the schema freeze: the reverse sync records progress on the source
            if not _exists(conn, "schema", SCHEMA):
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
            for ddl in _DDL:
                conn.execute(sql.SQL(ddl).format(schema=sql.Identifier(SCHEMA)))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise SyncError(
            f"cannot create the progress tables in schema {SCHEMA} on {where} as {conn.info.user}: "
            f"{exc.diag.message_primary}; the prepare-target phase (playbooks/02_prepare_target.yml) creates "
            "them on the target, the cutover on the source (state.prepare)") from exc


def prepare(conn: psycopg.Connection[Any], user: str) -> list[str]:
    """As an admin of this database (the target's master; the source's owner at cutover): the state schema
    and its progress tables, written by `user` (USAGE and CREATE on that schema, DML on the tables), so the
    sync needs no CREATE on the database. A schema `user` already owns (made by an earlier version) is left
    as it is. Idempotent; returns what it changed. Runs in its own transaction."""
    done: list[str] = []
    schema, grantee = sql.Identifier(SCHEMA), sql.Identifier(user)
    with conn.transaction():
        capture.allow_ddl(conn)
        owner = conn.execute("SELECT pg_catalog.pg_get_userbyid(nspowner) FROM pg_catalog.pg_namespace "
                             "WHERE nspname = %s", (SCHEMA,)).fetchone()
        if owner and owner[0] == user:
            return done
        if owner is None:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
            done.append(f"create schema {SCHEMA}")
        conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(schema))
        if not _has(conn, "schema", user, SCHEMA, "USAGE, CREATE"):
            conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(schema, grantee))
            done.append(f"grant USAGE, CREATE on schema {SCHEMA} to {user}")
        missing = [t for t in STATE_TABLES if not _exists(conn, "table", sql.Identifier(SCHEMA, t).as_string(conn))]
        for ddl in _DDL:
            conn.execute(sql.SQL(ddl).format(schema=schema))
        if missing:
            done.append(f"create tables {', '.join(missing)} in schema {SCHEMA}")
        for table in STATE_TABLES:
            qualified = sql.Identifier(SCHEMA, table)
            if not _has(conn, "table", user, qualified.as_string(conn), "SELECT, INSERT, UPDATE, DELETE"):
                conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(qualified, grantee))
                done.append(f"grant SELECT, INSERT, UPDATE, DELETE on {SCHEMA}.{table} to {user}")
    return done


def _has(conn: psycopg.Connection[Any], kind: str, user: str, name: str, privileges: str) -> bool:
    """Whether `user` holds every one of `privileges` (has_*_privilege with a list says whether any)."""
    func = sql.Identifier(f"has_{kind}_privilege")
    for privilege in privileges.split(","):
        row = conn.execute(sql.SQL("SELECT pg_catalog.{}(%s, %s, %s)").format(func),
                           (user, name, privilege.strip())).fetchone()
        if not (row and row[0]):
            return False
    return True


def prepare_target(conn: psycopg.Connection[Any], user: str) -> list[str]:
    """The prepare-target phase's privileges for the replication user, as the master (the role itself is
    made by the playbook): CONNECT and TEMPORARY on the database and no more (CREATE, which earlier versions
    granted, is revoked), and the state schema (prepare). Table privileges come with the restore
    (restore.grant_user). Idempotent; returns what it changed."""
    done: list[str] = []
    db_ident, grantee = sql.Identifier(conn.info.dbname), sql.Identifier(user)
    with conn.transaction():
        # Granted even where PUBLIC holds them (the default), so revoking them from PUBLIC leaves the sync be.
        if not _has(conn, "database", user, conn.info.dbname, "CONNECT, TEMPORARY"):
            done.append(f"grant CONNECT, TEMPORARY on database {conn.info.dbname} to {user}")
        conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(db_ident, grantee))
        if _has(conn, "database", user, conn.info.dbname, "CREATE"):
            conn.execute(sql.SQL("REVOKE CREATE ON DATABASE {} FROM {}").format(db_ident, grantee))
            done.append(f"revoke CREATE on database {conn.info.dbname} from {user}")
    return done + prepare(conn, user)


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
