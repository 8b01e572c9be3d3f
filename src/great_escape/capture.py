"""Change capture on the side changes come from: delta tables, triggers, kick, schema freeze.

Layout (schema `ge_capture`, never dumped, removed by `remove`):
- `ge_capture.tables`: one row per captured table (relid, names, delta table, key columns).
- `ge_capture.d_<relid>`: the table's key columns plus `at` (now() of the writing transaction). No index and
  no sequence: the cheapest insert there is, which is the overhead the application pays per changed row.
- `ge_capture.truncates`: one row per TRUNCATE, a whole-table resync event.
- Triggers on the captured table: `ge_capture_row` (AFTER ROW, records OLD and/or NEW key, both when an UPDATE
  changes the key), `ge_capture_truncate` (AFTER TRUNCATE, statement) and `ge_capture_kick` (statement,
  NOTIFY great_escape, only while a sync waits: see below).
- `ge_capture.waiting` (unlogged): a row per sync that is idle, waiting for a kick. A transaction that
  sends NOTIFY takes a server-wide lock from its commit until the commit is flushed, so notifying commits
  run one at a time (measured: 16 pgbench clients, 2016-2380 TPS without, 1000 with a kick on every
  statement). A sync that is busy applying needs no kick; only while one waits do writers send it.
- `ge_schema_freeze`: event triggers refusing DDL on non-temporary objects until lifted.

Every statement that locks an application table runs with a short lock_timeout and is retried with
backoff, one table per transaction, so application queries never queue behind it for long.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from . import catalog, config, db
from .catalog import Table
from .errors import CaptureError, KeylessTableError

log = logging.getLogger(__name__)

SCHEMA = "ge_capture"
KICK_CHANNEL = "great_escape"
WAITING = "waiting"
ALLOW_DDL_SETTING = "great_escape.allow_ddl"
FREEZE_TRIGGERS = ("ge_schema_freeze", "ge_schema_freeze_drop")
LOCK_TIMEOUT_MS = 2000
T = TypeVar("T")


def delta_name(relid: int) -> str:
    return f"d_{relid}"


def function_name(relid: int) -> str:
    return f"f_{relid}"


@dataclass
class Plan:
    """What `apply_plan` would do; `steps` are (description, SQL composables) pairs."""

    install: list[Table] = field(default_factory=list)
    remove: list[tuple[int, str]] = field(default_factory=list)  # (relid, qualname) of registered tables
    freeze: bool | None = None  # True: install freeze, False: remove it, None: leave as is
    keyless: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.install or self.remove or self.freeze is not None)

    def describe(self) -> list[str]:
        lines = [f"install capture on {t.qualname}" for t in self.install]
        lines += [f"remove capture from {name}" for _, name in self.remove]
        if self.freeze is not None:
            lines.append("install schema freeze" if self.freeze else "remove schema freeze")
        return lines


# ---------------------------------------------------------------- reading state

def registered(conn: psycopg.Connection[Any]) -> dict[int, str]:
    """relid -> schema.table of the tables with capture installed (empty if the schema is absent)."""
    if not _schema_exists(conn):
        return {}
    rows = conn.execute(sql.SQL("SELECT relid::int8, schema_name || '.' || table_name FROM {}").format(
        sql.Identifier(SCHEMA, "tables"))).fetchall()
    return dict(rows)  # type: ignore[arg-type]


def freeze_installed(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT count(*) FROM pg_catalog.pg_event_trigger WHERE evtname = ANY(%s)",
                       (list(FREEZE_TRIGGERS),)).fetchone()
    return bool(row and row[0])


def _schema_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s", (SCHEMA,)).fetchone()
    return row is not None


def selected_tables(conn: psycopg.Connection[Any], cfg: config.Config) -> list[Table]:
    """The application tables in scope of the configuration."""
    excluded = set(cfg.exclude_tables)
    return [t for t in catalog.list_tables(conn, cfg.schemas or None) if t.qualname not in excluded]


# ---------------------------------------------------------------- planning

def plan(conn: psycopg.Connection[Any], tables: list[Table], *, state: str, freeze: bool | None,
         keyless: str = "refuse") -> Plan:
    """Compare what is installed with what `state` (present/absent) asks for `tables`.

    Keyless tables are refused (KeylessTableError listing all of them) unless keyless == 'copy_at_cutover',
    in which case they are left without capture and copied whole at cutover.
    """
    installed = registered(conn)
    result = Plan()
    if state == "present":
        result.keyless = [t.qualname for t in tables if not t.key]
        if result.keyless and keyless == "refuse":
            raise KeylessTableError(result.keyless)
        result.install = [t for t in tables if t.key and t.relid not in installed]
        if freeze and not freeze_installed(conn):
            result.freeze = True
    else:
        wanted = {t.relid for t in tables}
        result.remove = [(relid, name) for relid, name in installed.items() if relid in wanted]
        if freeze is False and freeze_installed(conn):
            result.freeze = False
    return result


# ---------------------------------------------------------------- applying

def apply_plan(conn: psycopg.Connection[Any], p: Plan) -> None:
    """Carry out a plan, one short transaction per table. `conn` must be in autocommit mode."""
    allow_ddl(conn)
    if p.install or p.freeze is not None:
        _retry(conn, "create capture schema", lambda: _ensure_schema(conn))
    for table in p.install:
        _retry(conn, f"install capture on {table.qualname}", lambda t=table: _install(conn, t))  # type: ignore[misc]
        log.info("capture installed on %s", table.qualname)
    for relid, name in p.remove:
        _retry(conn, f"remove capture from {name}", lambda r=relid: _remove(conn, r))  # type: ignore[misc]
        log.info("capture removed from %s", name)
    if p.freeze is True:
        _retry(conn, "install schema freeze", lambda: _install_freeze(conn))
    elif p.freeze is False:
        _retry(conn, "remove schema freeze", lambda: _drop_freeze(conn))
    if p.remove and not registered(conn) and not freeze_installed(conn):
        _retry(conn, "drop capture schema", lambda: _drop_schema(conn))


def allow_ddl(conn: psycopg.Connection[Any]) -> None:
    """Let this session's DDL through the schema freeze (the project's own changes)."""
    conn.execute("SELECT pg_catalog.set_config(%s, 'on', false)", (ALLOW_DDL_SETTING,))


def _retry(conn: psycopg.Connection[Any], what: str, step: Callable[[], T], attempts: int = 8) -> T:
    """Run `step` in a transaction; on lock timeout back off and try again (the application goes first)."""
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{LOCK_TIMEOUT_MS}ms")))
                return step()
        except psycopg.errors.LockNotAvailable as exc:
            if attempt == attempts:
                raise CaptureError(f"{what}: could not get the table lock within {LOCK_TIMEOUT_MS} ms after "
                                   f"{attempts} attempts; a long transaction holds it. Retry when it ends.") from exc
            log.info("%s: lock busy, retrying in %.1fs", what, delay)
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 10)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise CaptureError(f"{what}: permission denied ({exc.diag.message_primary}); run it as the owner of "
                               "the tables or a superuser") from exc
    raise AssertionError("unreachable")


def _ensure_schema(conn: psycopg.Connection[Any]) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (relid oid PRIMARY KEY, schema_name text NOT NULL, table_name text NOT NULL,"
        " delta_table text NOT NULL, key_columns text[] NOT NULL, installed_at timestamptz NOT NULL DEFAULT now())"
    ).format(sql.Identifier(SCHEMA, "tables")))
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (relid oid NOT NULL, at timestamptz NOT NULL DEFAULT now())"
    ).format(sql.Identifier(SCHEMA, "truncates")))
    conn.execute(sql.SQL(
        "CREATE UNLOGGED TABLE IF NOT EXISTS {} (sync text PRIMARY KEY, since timestamptz NOT NULL DEFAULT now())"
    ).format(sql.Identifier(SCHEMA, WAITING)))
    conn.execute(sql.SQL(
        "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF EXISTS (SELECT FROM {}) THEN PERFORM pg_catalog.pg_notify({}, ''); END IF; RETURN NULL; END $$"
    ).format(sql.Identifier(SCHEMA, "kick"), sql.Identifier(SCHEMA, WAITING), sql.Literal(KICK_CHANNEL)))
    # The truncated table's relid comes as an argument: partitions report their partitioned parent.
    conn.execute(sql.SQL(
        "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO {} (relid) VALUES (TG_ARGV[0]::oid); RETURN NULL; END $$"
    ).format(sql.Identifier(SCHEMA, "on_truncate"), sql.Identifier(SCHEMA, "truncates")))
    # The triggers run as whoever writes the table. They only add rows here, and a row added by hand only
    # makes the sync copy a key's current state again: harmless. (SECURITY DEFINER would need a pinned
    # search_path, which PostgreSQL saves and restores on every call: 10-20 % of a small write's cost.)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO PUBLIC").format(sql.Identifier(SCHEMA)))
    conn.execute(sql.SQL("GRANT INSERT ON {} TO PUBLIC").format(sql.Identifier(SCHEMA, "truncates")))
    # Writers read it; the sync (any user on the reverse side) marks itself waiting. A row added or removed
    # by hand only makes writers kick when not needed, or the sync fall back to its poll interval.
    conn.execute(sql.SQL("GRANT SELECT, INSERT, DELETE ON {} TO PUBLIC").format(sql.Identifier(SCHEMA, WAITING)))


def set_waiting(conn: psycopg.Connection[Any], sync: str, waiting: bool) -> None:
    """Mark `sync` as waiting for a kick (writers notify only then), or as busy again. Autocommit `conn`."""
    table = sql.Identifier(SCHEMA, WAITING)
    if waiting:
        conn.execute(sql.SQL("INSERT INTO {} (sync) VALUES (%s) ON CONFLICT DO NOTHING").format(table), (sync,))
    else:
        conn.execute(sql.SQL("DELETE FROM {} WHERE sync = %s").format(table), (sync,))


def _install(conn: psycopg.Connection[Any], table: Table) -> None:
    delta = sql.Identifier(SCHEMA, delta_name(table.relid))
    func = sql.Identifier(SCHEMA, function_name(table.relid))
    key_defs = sql.SQL(", ").join(
        # The type is format_type() output from the catalog, already quoted where needed.
        sql.SQL("{} {} NOT NULL").format(sql.Identifier(k), sql.SQL(table.column(k).type)) for k in table.key)
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, at timestamptz NOT NULL DEFAULT now())")
                 .format(delta, key_defs))
    conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_vacuum_scale_factor = 0.01)").format(delta))
    conn.execute(sql.SQL("GRANT INSERT ON {} TO PUBLIC").format(delta))
    conn.execute(sql.SQL("CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}")
                 .format(func, sql.Literal(row_trigger_body(table, delta).as_string(conn))))
    target = table.ident
    for trigger in ("ge_capture_row", "ge_capture_truncate", "ge_capture_kick"):
        conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), target))
    conn.execute(sql.SQL("CREATE TRIGGER ge_capture_row AFTER INSERT OR UPDATE OR DELETE ON {} "
                         "FOR EACH ROW EXECUTE FUNCTION {}()").format(target, func))
    conn.execute(sql.SQL("CREATE TRIGGER ge_capture_kick AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {} "
                         "FOR EACH STATEMENT EXECUTE FUNCTION {}()").format(target, sql.Identifier(SCHEMA, "kick")))
    for part in [target, *(_partitions(conn, table.relid))]:
        conn.execute(sql.SQL("DROP TRIGGER IF EXISTS ge_capture_truncate ON {}").format(part))
        conn.execute(sql.SQL("CREATE TRIGGER ge_capture_truncate AFTER TRUNCATE ON {} FOR EACH STATEMENT "
                             "EXECUTE FUNCTION {}({})").format(
            part, sql.Identifier(SCHEMA, "on_truncate"), sql.Literal(str(table.relid))))
    conn.execute(sql.SQL("INSERT INTO {} (relid, schema_name, table_name, delta_table, key_columns) "
                         "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (relid) DO NOTHING").format(
        sql.Identifier(SCHEMA, "tables")),
        (table.relid, table.schema, table.name, delta_name(table.relid), list(table.key)))


def row_trigger_body(table: Table, delta: sql.Identifier) -> sql.Composed:
    """PL/pgSQL of the row trigger: the key of the changed row; both keys when an UPDATE moves the key."""
    cols = sql.SQL(", ").join(sql.Identifier(k) for k in table.key)

    def values(record: str) -> sql.Composed:
        return sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.SQL(record), sql.Identifier(k)) for k in table.key)

    return sql.SQL(
        "BEGIN\n"
        "  IF TG_OP = 'DELETE' THEN\n"
        "    INSERT INTO {delta} ({cols}) VALUES ({old});\n"
        "  ELSE\n"
        "    INSERT INTO {delta} ({cols}) VALUES ({new});\n"
        "    IF TG_OP = 'UPDATE' AND ({old}) IS DISTINCT FROM ({new}) THEN\n"
        "      INSERT INTO {delta} ({cols}) VALUES ({old});\n"
        "    END IF;\n"
        "  END IF;\n"
        "  RETURN NULL;\n"
        "END"
    ).format(delta=delta, cols=cols, old=values("OLD"), new=values("NEW"))


def _partitions(conn: psycopg.Connection[Any], relid: int) -> list[sql.Identifier]:
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_catalog.pg_partition_tree(%s::oid) p "
        "JOIN pg_catalog.pg_class c ON c.oid = p.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE p.relid <> %s::oid AND c.relkind IN ('r', 'p')", (relid, relid)).fetchall()
    return [sql.Identifier(s, n) for s, n in rows]


def _remove(conn: psycopg.Connection[Any], relid: int) -> None:
    row = conn.execute("SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                       "ON n.oid = c.relnamespace WHERE c.oid = %s::oid", (relid,)).fetchone()
    if row:  # the table may be gone; its delta table and registry entry still go
        target = sql.Identifier(*row)
        for trigger in ("ge_capture_row", "ge_capture_kick"):
            conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), target))
        for part in [target, *(_partitions(conn, relid))]:
            conn.execute(sql.SQL("DROP TRIGGER IF EXISTS ge_capture_truncate ON {}").format(part))
    conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(SCHEMA, function_name(relid))))
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(SCHEMA, delta_name(relid))))
    conn.execute(sql.SQL("DELETE FROM {} WHERE relid = %s::oid").format(sql.Identifier(SCHEMA, "truncates")), (relid,))
    conn.execute(sql.SQL("DELETE FROM {} WHERE relid = %s::oid").format(sql.Identifier(SCHEMA, "tables")), (relid,))


def _drop_schema(conn: psycopg.Connection[Any]) -> None:
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))


# ---------------------------------------------------------------- schema freeze

_FREEZE_BODY = """
DECLARE
  obj record;
BEGIN
  IF pg_catalog.current_setting('{setting}', true) = 'on' THEN
    RETURN;
  END IF;
  FOR obj IN SELECT * FROM {objects} LOOP
    IF {temp_test} THEN
      CONTINUE;
    END IF;
    RAISE EXCEPTION 'great-escape schema freeze: % refused on %', TG_TAG, obj.object_identity
      USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'A migration is replicating this database and DDL would break it. To run DDL on purpose, '
                   'SET {setting} = on in this session first (then re-run the capture phase), '
                   'or remove the freeze with the cleanup playbook.';
  END LOOP;
END
"""


def _install_freeze(conn: psycopg.Connection[Any]) -> None:
    for name, event, objects, temp_test in (
        ("ge_schema_freeze", "ddl_command_end", "pg_catalog.pg_event_trigger_ddl_commands()",
         "obj.schema_name LIKE 'pg\\_temp%' OR obj.in_extension OR obj.command_tag IN "
         "('GRANT', 'REVOKE', 'COMMENT', 'SECURITY LABEL', 'REFRESH MATERIALIZED VIEW')"),
        ("ge_schema_freeze_drop", "sql_drop", "pg_catalog.pg_event_trigger_dropped_objects()",
         "obj.is_temporary OR NOT obj.original"),
    ):
        func = sql.Identifier(SCHEMA, name)
        body = _FREEZE_BODY.format(setting=ALLOW_DDL_SETTING, objects=objects, temp_test=temp_test)
        conn.execute(sql.SQL("CREATE OR REPLACE FUNCTION {}() RETURNS event_trigger LANGUAGE plpgsql AS {}")
                     .format(func, sql.Literal(body)))
        conn.execute(sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE EVENT TRIGGER {} ON {} EXECUTE FUNCTION {}()")
                     .format(sql.Identifier(name), sql.SQL(event), func))


def _drop_freeze(conn: psycopg.Connection[Any]) -> None:
    for name in FREEZE_TRIGGERS:
        conn.execute(sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(SCHEMA, name)))


# ---------------------------------------------------------------- command line

def run(cfg: config.Config, *, state: str, freeze: bool | None, check: bool = False) -> Plan:
    """Install or remove capture for the configured tables on cfg.source."""
    with db.connect(cfg.source, f"capture {cfg.name}", autocommit=True) as conn:
        tables = selected_tables(conn, cfg)
        if state == "absent":
            # Registered tables that no longer exist are removed too.
            installed = registered(conn)
            known = {t.relid for t in tables}
            tables += [Table("?", name, relid, False, (), (), ()) for relid, name in installed.items()
                       if relid not in known]
        p = plan(conn, tables, state=state, freeze=freeze, keyless=cfg.keyless_tables)
        if not check:
            apply_plan(conn, p)
    return p


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("capture", help="install or remove change capture and the schema freeze on the source")
    parser.add_argument("action", choices=["install", "remove"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--reverse", action="store_true", help="act on the target (capture for the reverse sync)")
    parser.add_argument("--no-freeze", action="store_true", help="leave the schema freeze as it is")
    parser.add_argument("--check", action="store_true", help="only say what would change")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    cfg = config.load(args.config, reverse=args.reverse)
    present = args.action == "install"
    freeze = None if args.no_freeze else present
    p = run(cfg, state="present" if present else "absent", freeze=freeze, check=args.check)
    for line in p.describe() or ["nothing to change"]:
        print(("would " if args.check else "") + line)
    return 0
