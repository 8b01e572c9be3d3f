"""Change capture on the side changes come from: delta tables, triggers, kick, schema freeze.

Layout 2 (schema `ge_capture`, never dumped, removed by `remove`):
- `ge_capture.tables`: one row per captured table (relid, names, delta table, the key's column names in key
  order, `layout`). Capture of an older layout is refused with what to do (see `_check_layout`).
- `ge_capture.d_<relid>`: the table's key in positional columns `k1`..`kn` (key order, the columns' base types
  and collations) plus `captured_at` (now() of the writing transaction). Application names never appear in
  the project's own objects, so no key column name (`at`, `k1`, 63 bytes, any case or quoting) can collide.
  No index and no sequence: the cheapest insert there is, which is the overhead the application pays per row.
- `ge_capture.truncates`: one row per TRUNCATE, a whole-table resync event.
- Triggers on the captured table: `ge_capture_row` (AFTER ROW, records OLD and/or NEW key, both when an UPDATE
  changes the key) and `ge_capture_truncate` (AFTER TRUNCATE, statement, on every partition too). Both also
  kick (NOTIFY great_escape) a sync that waits: see below. An application trigger of one of these names (or of
  `ge_capture_kick`, an earlier version's separate kick trigger, dropped when capture is installed again) is
  never touched: install stops, naming the table and the fix.
- `ge_capture.waiting` (unlogged): a row per sync that is idle, waiting for a kick. A transaction that
  sends NOTIFY takes a server-wide lock from its commit until the commit is flushed, so notifying commits
  run one at a time (measured: 16 pgbench clients, 2016-2380 TPS without, 1000 with a kick on every
  statement). A sync that is busy applying needs no kick; only while one waits do writers send it. The
  trigger functions look at `waiting` once per transaction (a transaction-local setting,
  `great_escape.kick_checked`, remembers they looked; later rows cost one read of it): PostgreSQL sends one
  notification per channel and transaction anyway. The look lives in the row function rather than in a
  statement trigger of its own, whose call cost ~6 us per single-row transaction more than the look
  itself (bench/RESULTS.md, capture overhead). A sync that begins to wait after a transaction's look finds its
  changes at its next poll (daemon.py), as it would for a look made just before.
- `ge_schema_freeze`: event triggers refusing DDL on non-temporary objects until lifted, and only by the
  roles named at install (`ge_ddl_roles`) with `SET great_escape.allow_ddl = on`.

Who may write what (DESIGN.md invariant 12): the trigger functions are SECURITY DEFINER, owned by the NOLOGIN
role `ge_capture_writer`, the only role that may insert into the delta tables and `truncates`; EXECUTE on them
is revoked from PUBLIC (nobody can attach them to a table of their own). They pin no search_path (measured at
10-20 % of a small write's cost); instead every name, type and operator in them is schema-qualified
(OPERATOR(pg_catalog.=)), and the delta columns have the key's base types, so no domain check or
application function runs as that role. `waiting` is written by the sync users only (`grant_sync`). Nothing
in the schema is granted to PUBLIC.

Every statement that locks an application table runs with a short lock_timeout and is retried with
backoff, one table per transaction, so application queries never queue behind it for long.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from . import catalog, config, db
from .access import SYNC_POLICY
from .catalog import Table
from .errors import CaptureError, KeylessTableError

log = logging.getLogger(__name__)

SCHEMA = "ge_capture"
LAYOUT = 2  # the delta table layout this version writes and reads (see the module docstring)
WRITER_ROLE = "ge_capture_writer"  # NOLOGIN owner of the trigger functions: the only writer of the deltas
CAPTURED_AT = "captured_at"  # the project's own column in delta tables and `truncates`
KICK_CHANNEL = "great_escape"
KICK_CHECKED_SETTING = "great_escape.kick_checked"  # transaction-local: this transaction looked at `waiting`
WAITING = "waiting"
ALLOW_DDL_SETTING = "great_escape.allow_ddl"
FREEZE_TRIGGERS = ("ge_schema_freeze", "ge_schema_freeze_drop")
ROW_TRIGGER, TRUNCATE_TRIGGER = "ge_capture_row", "ge_capture_truncate"
# Names reserved on application tables: the capture's triggers and an earlier version's kick trigger, which
# installing capture again drops (and the restore leaves out).
TRIGGERS = (ROW_TRIGGER, TRUNCATE_TRIGGER, "ge_capture_kick")
LOCK_TIMEOUT_MS = 2000
T = TypeVar("T")


def delta_name(relid: int) -> str:
    return f"d_{relid}"


def function_name(relid: int) -> str:
    return f"f_{relid}"


def delta_key_columns(n: int) -> tuple[str, ...]:
    """The delta table's key columns: `k1`..`kn`, in the order of the table's key columns."""
    return tuple(f"k{i}" for i in range(1, n + 1))


def delta_keys(key: tuple[str, ...]) -> sql.Composable:
    """`k1, .., kn` for a key of len(key) columns, to select a delta table's keys (the application's key
    columns, in the same order, are what they mean)."""
    return sql.SQL(", ").join(sql.Identifier(k) for k in delta_key_columns(len(key)))


@dataclass
class Plan:
    """What `apply_plan` would do; `steps` are (description, SQL composables) pairs."""

    install: list[Table] = field(default_factory=list)
    remove: list[tuple[int, str]] = field(default_factory=list)  # (relid, qualname) of registered tables
    freeze: bool | None = None  # True: install freeze, False: remove it, None: leave as is
    keyless: list[str] = field(default_factory=list)
    repair: list[str] = field(default_factory=list)  # registered tables whose capture triggers are re-created
    ddl_roles: list[str] = field(default_factory=list)  # who may lift the freeze (SET great_escape.allow_ddl)

    @property
    def changed(self) -> bool:
        return bool(self.install or self.remove or self.freeze is not None)

    def describe(self) -> list[str]:
        lines = [f"{'repair' if t.qualname in self.repair else 'install'} capture on {t.qualname}"
                 for t in self.install]
        lines += [f"remove capture from {name}" for _, name in self.remove]
        if self.freeze is not None:
            lines.append("install schema freeze" if self.freeze else "remove schema freeze")
        return lines


# ---------------------------------------------------------------- reading state

def registered(conn: psycopg.Connection[Any], *, any_layout: bool = False) -> dict[int, str]:
    """relid -> schema.table of the tables with capture installed (empty if the schema is absent).

    Capture of another layout raises CaptureError saying what to do, unless `any_layout` (removal)."""
    if not _schema_exists(conn) or not _registry_exists(conn):
        return {}
    if not any_layout:
        _check_layout(conn)
    rows = conn.execute(sql.SQL("SELECT relid::int8, schema_name || '.' || table_name FROM {}").format(
        sql.Identifier(SCHEMA, "tables"))).fetchall()
    return dict(rows)  # type: ignore[arg-type]


def freeze_installed(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT count(*) FROM pg_catalog.pg_event_trigger WHERE evtname = ANY(%s)",
                       (list(FREEZE_TRIGGERS),)).fetchone()
    return bool(row and row[0])


def freeze_roles(conn: psycopg.Connection[Any]) -> list[str] | None:
    """The roles allowed to lift the installed freeze (None: no freeze, or one installed without a list)."""
    row = conn.execute("SELECT p.prosrc FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n "
                       "ON n.oid = p.pronamespace WHERE n.nspname = %s AND p.proname = %s",
                       (SCHEMA, FREEZE_TRIGGERS[0])).fetchone()
    if not row:
        return None
    for line in str(row[0]).splitlines():
        if line.startswith(_ROLES_MARKER):
            return list(json.loads(line[len(_ROLES_MARKER):]))
    return None


def _schema_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s", (SCHEMA,)).fetchone()
    return row is not None


def _registry_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL",
                       (sql.Identifier(SCHEMA, "tables").as_string(conn),)).fetchone()
    return bool(row and row[0])


def _where(conn: psycopg.Connection[Any]) -> str:
    return f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"


def _check_layout(conn: psycopg.Connection[Any]) -> None:
    """Refuse capture installed by an older great-escape: its delta tables hold the key under the application's
    column names (which could collide with the project's own `at`), and this version reads k1..kn."""
    row = conn.execute("SELECT count(*) FROM pg_catalog.pg_attribute WHERE attrelid = %s::regclass "
                       "AND attname = 'layout' AND NOT attisdropped",
                       (sql.Identifier(SCHEMA, "tables").as_string(conn),)).fetchone()
    layouts = conn.execute(sql.SQL("SELECT DISTINCT layout FROM {}").format(sql.Identifier(SCHEMA, "tables"))
                           ).fetchall() if row and row[0] else [(1,)]
    other = sorted({r[0] for r in layouts} - {LAYOUT})
    if other:
        raise CaptureError(
            f"the change capture in schema {SCHEMA} on {_where(conn)} was installed by an older great-escape "
            f"(delta table layout {other[0]}: keys stored under the application's column names); this version "
            f"reads layout {LAYOUT} only. Finish this migration with the great-escape version that installed "
            "it, or remove capture (`great-escape capture remove`, or the cleanup playbook: both remove either "
            "layout) and start again from the capture phase, then dump and restore again: changes made between "
            "the removal and the new capture are not recorded anywhere")


def selected_tables(conn: psycopg.Connection[Any], cfg: config.Config) -> list[Table]:
    """The application tables in scope of the configuration."""
    excluded = set(cfg.exclude_tables)
    return [t for t in catalog.list_tables(conn, cfg.schemas or None) if t.qualname not in excluded]


# ---------------------------------------------------------------- integrity

_TRIGGERS = """
SELECT r.relid::int8, pt.relid::int8, n.nspname, c.relname, t.tgname,
       t.tgenabled::text, t.tgfoid IS NOT NULL AND p.pronamespace = s.oid
FROM pg_catalog.unnest(%s::oid[]) AS r(relid)
JOIN pg_catalog.pg_class rc ON rc.oid = r.relid
CROSS JOIN LATERAL (SELECT r.relid, 0 AS level UNION
                    SELECT p.relid, p.level FROM pg_catalog.pg_partition_tree(r.relid) p) AS pt
JOIN pg_catalog.pg_class c ON c.oid = pt.relid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_namespace s ON s.nspname = %s
LEFT JOIN pg_catalog.pg_trigger t ON t.tgrelid = pt.relid AND t.tgname = ANY(%s)
LEFT JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
WHERE c.relkind IN ('r', 'p')
ORDER BY 1, pt.level, 3, 4, 7
"""


def _trigger_problems(conn: psycopg.Connection[Any], registry: dict[int, str]) -> dict[int, list[str]]:
    """relid -> one line per capture trigger missing or disabled on the table or one of its partitions."""
    problems: dict[int, list[str]] = {}
    found: dict[tuple[int, int, str], tuple[str, bool]] = {}  # (table, relation, trigger) -> (tgenabled, ours)
    relations: dict[int, dict[int, tuple[str, str]]] = {}  # table -> relation -> (schema, name), root first
    for relid, rel, schema, name, tgname, enabled, ours in conn.execute(
            _TRIGGERS, (list(registry), SCHEMA, list(TRIGGERS))).fetchall():
        relations.setdefault(relid, {})[rel] = (schema, name)
        if tgname:
            found[(relid, rel, tgname)] = (enabled, bool(ours))
    for relid, name in registry.items():
        if relid not in relations:
            problems[relid] = [f"{name}: the captured table is gone (oid {relid}); restore it, or take it out of "
                               "the migration (exclude_tables, then `great-escape capture remove`)"]
            continue
        partitioned = len(relations[relid]) > 1
        for rel, (schema, relname) in relations[relid].items():
            is_root = rel == relid
            wanted = [ROW_TRIGGER, TRUNCATE_TRIGGER] if is_root or partitioned else []
            part = "" if is_root else f" on its partition {schema}.{relname}"
            for tg in wanted:
                enabled, ours = found.get((relid, rel, tg), ("", False))
                if not ours:
                    problems.setdefault(relid, []).append(
                        f"{name}: capture trigger {tg} is missing{part}, so changes to it are not captured; "
                        "run the capture phase again (it re-creates the triggers), then verify the table: "
                        "changes made meanwhile were not recorded")
                elif enabled in ("D", "R"):
                    how = "disabled" if enabled == "D" else "enabled for replica sessions only"
                    problems.setdefault(relid, []).append(
                        f"{name}: capture trigger {tg} is {how}{part} (tgenabled {enabled}), so changes to it "
                        f"are not captured; run ALTER TABLE {sql.Identifier(schema, relname).as_string(conn)} "
                        f"ENABLE TRIGGER {tg} (or run the capture phase again), then verify the table: "
                        "changes made meanwhile were not recorded")
    return problems


def check_intact(conn: psycopg.Connection[Any]) -> list[str]:
    """One line per captured table whose capture triggers are missing or disabled (on the table or one of its
    partitions), naming the table and the fix; empty when capture is whole. Read-only."""
    registry = registered(conn)
    problems = _trigger_problems(conn, registry) if registry else {}
    return [line for relid in sorted(problems, key=lambda r: registry[r]) for line in problems[relid]]


# ---------------------------------------------------------------- planning

def plan(conn: psycopg.Connection[Any], tables: list[Table], *, state: str, freeze: bool | None,
         keyless: str = "refuse", ddl_roles: Iterable[str] | None = None) -> Plan:
    """Compare what is installed with what `state` (present/absent) asks for `tables`.

    Keyless tables are refused (KeylessTableError listing all of them) unless keyless == 'copy_at_cutover',
    in which case they are left without capture and copied whole at cutover. Registered tables whose capture
    triggers are missing or disabled are installed again (their deltas stay). `ddl_roles` (default: the
    connecting user) may lift the freeze; a freeze installed for other roles is installed again.
    """
    result = Plan(ddl_roles=sorted(set(ddl_roles or [conn.info.user])))
    if state == "present":
        installed = registered(conn)
        broken = _trigger_problems(conn, installed) if installed else {}
        result.keyless = [t.qualname for t in tables if not t.key]
        if result.keyless and keyless == "refuse":
            raise KeylessTableError(result.keyless)
        result.install = [t for t in tables if t.key and (t.relid not in installed or t.relid in broken)]
        result.repair = [t.qualname for t in result.install if t.relid in installed]
        if freeze:
            _check_roles(conn, result.ddl_roles)
            if not freeze_installed(conn) or freeze_roles(conn) != result.ddl_roles:
                result.freeze = True
    else:
        installed = registered(conn, any_layout=True)
        wanted = {t.relid for t in tables}
        result.remove = [(relid, name) for relid, name in installed.items() if relid in wanted]
        if freeze is False and freeze_installed(conn):
            result.freeze = False
    return result


def _check_roles(conn: psycopg.Connection[Any], roles: list[str]) -> None:
    found = {r[0] for r in conn.execute("SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)",
                                        (roles,)).fetchall()}
    missing = [r for r in roles if r not in found]
    if missing:
        raise CaptureError(f"ge_ddl_roles names role(s) {missing} that do not exist on {_where(conn)}; list the "
                           "roles that may lift the schema freeze (default: the user capture is installed as)")


# ---------------------------------------------------------------- applying

def apply_plan(conn: psycopg.Connection[Any], p: Plan) -> None:
    """Carry out a plan, one short transaction per table. `conn` must be in autocommit mode."""
    allow_ddl(conn)
    if p.install or p.freeze is True:
        _retry(conn, "create capture schema", lambda: _ensure_schema(conn))
    for table in p.install:
        _retry(conn, f"install capture on {table.qualname}", lambda t=table: _install(conn, t))  # type: ignore[misc]
        log.info("capture installed on %s", table.qualname)
    for relid, name in p.remove:
        _retry(conn, f"remove capture from {name}", lambda r=relid: _remove(conn, r))  # type: ignore[misc]
        log.info("capture removed from %s", name)
    if p.freeze is True:
        _retry(conn, "install schema freeze", lambda: _install_freeze(conn, p.ddl_roles))
    elif p.freeze is False:
        _retry(conn, "remove schema freeze", lambda: _drop_freeze(conn))
    if p.remove and not registered(conn, any_layout=True) and not freeze_installed(conn):
        _retry(conn, "drop capture schema", lambda: _drop_schema(conn))


def allow_ddl(conn: psycopg.Connection[Any]) -> None:
    """Let this session's DDL through the schema freeze (the project's own changes; only a role named in
    ge_ddl_roles gets through)."""
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


def _ensure_writer(conn: psycopg.Connection[Any]) -> None:
    """The NOLOGIN role owning the trigger functions, with this user a member (to give it the functions)."""
    row = conn.execute("SELECT rolcanlogin, rolsuper, pg_catalog.pg_has_role(current_user, oid, 'USAGE') "
                       "FROM pg_catalog.pg_roles WHERE rolname = %s", (WRITER_ROLE,)).fetchone()
    writer = sql.Identifier(WRITER_ROLE)
    if row is None:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(writer))
        except psycopg.errors.DuplicateObject:
            pass  # made by a capture install running at the same time
        except psycopg.errors.InsufficientPrivilege as exc:
            raise CaptureError(
                f"creating the role {WRITER_ROLE} on {_where(conn)} needs CREATEROLE, which {conn.info.user} "
                f"lacks; have a superuser run: CREATE ROLE {WRITER_ROLE} NOLOGIN; GRANT {WRITER_ROLE} TO "
                f"{sql.Identifier(conn.info.user).as_string(conn)}; then run the capture phase again") from exc
        row = conn.execute("SELECT rolcanlogin, rolsuper, pg_catalog.pg_has_role(current_user, oid, 'USAGE') "
                           "FROM pg_catalog.pg_roles WHERE rolname = %s", (WRITER_ROLE,)).fetchone()
    assert row is not None
    if row[0] or row[1]:
        raise CaptureError(
            f"a role named {WRITER_ROLE} exists on {_where(conn)} and can log in or is a superuser: it is not the "
            "NOLOGIN role great-escape's capture functions run as. Rename that role (ALTER ROLE ... RENAME TO), "
            "then run the capture phase again")
    if not row[2]:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("GRANT {} TO {}").format(writer, sql.Identifier(conn.info.user)))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise CaptureError(
                f"{conn.info.user} must be a member of {WRITER_ROLE} on {_where(conn)} to give it the capture "
                f"functions; have a superuser run: GRANT {WRITER_ROLE} TO "
                f"{sql.Identifier(conn.info.user).as_string(conn)}") from exc


def _check_schema_is_ours(conn: psycopg.Connection[Any]) -> None:
    """A schema named ge_capture without the registry is the application's: never write into it."""
    if not _schema_exists(conn) or _registry_exists(conn):
        return
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = n.oid) "
        "+ (SELECT count(*) FROM pg_catalog.pg_proc WHERE pronamespace = n.oid AND NOT proname = ANY(%s)) "
        "+ (SELECT count(*) FROM pg_catalog.pg_type WHERE typnamespace = n.oid) "
        "FROM pg_catalog.pg_namespace n WHERE n.nspname = %s", (list(FREEZE_TRIGGERS), SCHEMA)).fetchone()
    if row and row[0]:
        raise CaptureError(
            f"schema {SCHEMA} on {_where(conn)} exists and holds objects great-escape did not make (no "
            f"{SCHEMA}.tables registry); great-escape keeps its capture there. Rename the application's schema "
            f"(ALTER SCHEMA {SCHEMA} RENAME TO ...), then run the capture phase again")


# PL/pgSQL of the kick, in every trigger function: the transaction's first look at `waiting` notifies a
# waiting sync; later rows read the mark only. Every name qualified: the functions run as the writer role
# with the caller's search_path.
_KICK = sql.SQL(
    "  IF NOT COALESCE(pg_catalog.current_setting({checked}, true) OPERATOR(pg_catalog.=) 'on', false) THEN\n"
    "    PERFORM pg_catalog.set_config({checked}, 'on', true);\n"
    "    IF EXISTS (SELECT FROM {waiting}) THEN PERFORM pg_catalog.pg_notify({channel}, ''); END IF;\n"
    "  END IF;\n"
).format(checked=sql.Literal(KICK_CHECKED_SETTING), waiting=sql.Identifier(SCHEMA, WAITING),
         channel=sql.Literal(KICK_CHANNEL))


def _ensure_schema(conn: psycopg.Connection[Any]) -> None:
    _check_schema_is_ours(conn)
    if _registry_exists(conn):
        _check_layout(conn)
    _ensure_writer(conn)
    schema, writer = sql.Identifier(SCHEMA), sql.Identifier(WRITER_ROLE)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
    conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(schema))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, writer))
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (relid oid PRIMARY KEY, schema_name text NOT NULL, table_name text NOT NULL,"
        " delta_table text NOT NULL, key_columns text[] NOT NULL, layout int NOT NULL,"
        " installed_at timestamptz NOT NULL DEFAULT now())"
    ).format(sql.Identifier(SCHEMA, "tables")))
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (relid oid NOT NULL, {} timestamptz NOT NULL DEFAULT now())"
    ).format(sql.Identifier(SCHEMA, "truncates"), sql.Identifier(CAPTURED_AT)))
    conn.execute(sql.SQL(
        "CREATE UNLOGGED TABLE IF NOT EXISTS {} (sync text PRIMARY KEY, since timestamptz NOT NULL DEFAULT now())"
    ).format(sql.Identifier(SCHEMA, WAITING)))
    for table in ("tables", "truncates", WAITING):
        conn.execute(sql.SQL("REVOKE ALL ON {} FROM PUBLIC").format(sql.Identifier(SCHEMA, table)))
    conn.execute(sql.SQL("GRANT INSERT ON {} TO {}").format(sql.Identifier(SCHEMA, "truncates"), writer))
    conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(SCHEMA, WAITING), writer))
    # The truncated table's relid comes as an argument: partitions report their partitioned parent.
    _create_writer_function(conn, "on_truncate", sql.SQL(
        "BEGIN\n  INSERT INTO {} (relid) VALUES (TG_ARGV[0]::pg_catalog.oid);\n{}  RETURN NULL;\nEND"
    ).format(sql.Identifier(SCHEMA, "truncates"), _KICK))
    for user in _sync_users(conn):
        _grant_sync_tables(conn, user, [sql.Identifier(SCHEMA, "truncates")])


def _create_writer_function(conn: psycopg.Connection[Any], name: str, body: sql.Composable) -> None:
    """A SECURITY DEFINER trigger function owned by the writer role, executable by nobody else (a trigger
    fires it without EXECUTE; EXECUTE would let anyone attach it to a table of their own and forge rows)."""
    func = sql.Identifier(SCHEMA, name)
    conn.execute(sql.SQL("CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS {}")
                 .format(func, sql.Literal(body.as_string(conn))))
    # A new owner needs CREATE on the schema (unless a superuser gives it): only for this transaction.
    conn.execute(sql.SQL("GRANT CREATE ON SCHEMA {} TO {}").format(sql.Identifier(SCHEMA), sql.Identifier(WRITER_ROLE)))
    conn.execute(sql.SQL("ALTER FUNCTION {}() OWNER TO {}").format(func, sql.Identifier(WRITER_ROLE)))
    conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(sql.Identifier(SCHEMA),
                                                                       sql.Identifier(WRITER_ROLE)))
    conn.execute(sql.SQL("REVOKE ALL ON FUNCTION {}() FROM PUBLIC").format(func))


def _sync_users(conn: psycopg.Connection[Any]) -> list[str]:
    """Roles given the sync's rights (`grant_sync`): those holding INSERT on `waiting`, but its owner."""
    return [r[0] for r in conn.execute(
        "SELECT DISTINCT r.rolname FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a "
        "JOIN pg_catalog.pg_roles r ON r.oid = a.grantee "
        "WHERE c.oid = pg_catalog.to_regclass(%s) AND a.privilege_type = 'INSERT' AND a.grantee <> c.relowner",
        (sql.Identifier(SCHEMA, WAITING).as_string(conn),)).fetchall()]


def _grant_sync_tables(conn: psycopg.Connection[Any], user: str, tables: list[sql.Identifier]) -> None:
    for table in tables:
        conn.execute(sql.SQL("GRANT SELECT, DELETE ON {} TO {}").format(table, sql.Identifier(user)))


def grant_sync(conn: psycopg.Connection[Any], user: str) -> None:
    """Give `user` what a sync reading this side needs, and nothing more: CONNECT, read the replicated tables
    (USAGE on their schemas, SELECT), read the registry, read and purge deltas and truncate events, mark
    itself waiting for a kick. Tables captured later are granted to it too (`_install`). Runs in the
    caller's transaction (as the owner of ge_capture). A user that cannot see every row of a replicated
    table with row level security is refused, naming the fix."""
    if user == conn.info.user:
        return
    ident = sql.Identifier(user)
    conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(conn.info.dbname), ident))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(SCHEMA), ident))
    conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(SCHEMA, "tables"), ident))
    conn.execute(sql.SQL("GRANT SELECT, INSERT, DELETE ON {} TO {}").format(sql.Identifier(SCHEMA, WAITING), ident))
    relids = list(registered(conn))
    deltas = [sql.Identifier(SCHEMA, delta_name(r)) for r in relids]
    _grant_sync_tables(conn, user, [sql.Identifier(SCHEMA, "truncates"), *deltas])
    _grant_replicated(conn, user, relids, "SELECT")
    _check_sees_every_row(conn, user, relids)


def _replicated_idents(conn: psycopg.Connection[Any], relids: list[int]) -> list[tuple[str, str]]:
    """(schema, table) of the existing tables among `relids`."""
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.oid = ANY(%s::pg_catalog.oid[]) ORDER BY 1, 2", (relids,)).fetchall()]


def _grant_replicated(conn: psycopg.Connection[Any], user: str, relids: list[int], privileges: str,
                      *, revoke: bool = False) -> None:
    """GRANT (or REVOKE) `privileges` on the replicated tables `relids`, with USAGE on their schemas."""
    ident = sql.Identifier(user)
    names = _replicated_idents(conn, relids)
    if revoke:
        for schema, table in names:
            conn.execute(sql.SQL("REVOKE {} ON {} FROM {}").format(sql.SQL(privileges),
                                                                   sql.Identifier(schema, table), ident))
        return
    for schema in sorted({s for s, _ in names}):
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), ident))
    for schema, table in names:
        conn.execute(sql.SQL("GRANT {} ON {} TO {}").format(sql.SQL(privileges), sql.Identifier(schema, table),
                                                            ident))


def _check_sees_every_row(conn: psycopg.Connection[Any], user: str, relids: list[int]) -> None:
    # On the target (Aurora: no BYPASSRLS to give) the access step's permissive policy lets the user see every row.
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_catalog.pg_roles r ON r.rolname = %s "
        "WHERE c.oid = ANY(%s::pg_catalog.oid[]) AND c.relrowsecurity AND NOT r.rolbypassrls AND NOT r.rolsuper "
        "AND c.relowner <> r.oid AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid "
        "AND p.polname = %s AND p.polpermissive AND r.oid = ANY(p.polroles)) ORDER BY 1",
        (user, relids, SYNC_POLICY)).fetchall()
    if rows:
        raise CaptureError(
            f"{user} would see only the rows the row level security policies of {', '.join(r[0] for r in rows)} "
            f"show it on {_where(conn)}, and the sync would miss the others; have a superuser run ALTER ROLE "
            f"{sql.Identifier(user).as_string(conn)} BYPASSRLS, then run the capture phase again")


def ensure_sync_role(conn: psycopg.Connection[Any], user: str, password: str | None) -> list[str]:
    """The source's dedicated sync role (ge_sync_source_user): a login that is not a superuser and may create
    nothing (NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT); BYPASSRLS when the installer may give it,
    since the sync must read every row. An existing role gets the password given (the inventory's, which the
    sync logs in with), not reported as a change: it is a credential, like a password file. Privileges come
    from grant_sync. Runs in its own transaction; returns
    what it did. The installing user itself as the sync user (a superuser, e.g. a source older than
    PostgreSQL 15 whose reverse sync must SET session_replication_role) is left alone."""
    if user == conn.info.user:
        return []
    row = conn.execute("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = %s", (user,)).fetchone()
    if row is not None:
        if row[0]:
            log.warning("the sync user %s on %s is a superuser: the sync needs far less (grant_sync)",
                        user, _where(conn))
        elif password:
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(user),
                                                                            sql.Literal(password)))
            except psycopg.errors.InsufficientPrivilege:
                log.warning("cannot set the password of the sync user %s on %s as %s (no CREATEROLE): the sync "
                            "logs in with the inventory's password, which must be the role's", user, _where(conn),
                            conn.info.user)
        return []
    superuser = conn.execute("SELECT pg_catalog.current_setting('is_superuser') = 'on'").fetchone()
    attributes = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT"
    if superuser and superuser[0]:
        attributes += " BYPASSRLS"
    try:
        with conn.transaction():
            conn.execute(sql.SQL("CREATE ROLE {} " + attributes + " PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(password) if password else sql.SQL("NULL")))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise CaptureError(
            f"creating the sync role {user} on {_where(conn)} needs CREATEROLE, which {conn.info.user} lacks; "
            f"have a superuser run: CREATE ROLE {sql.Identifier(user).as_string(conn)} {attributes} PASSWORD "
            "'...'; then run the capture phase again") from exc
    return [f"create role {user}"]


def grant_apply(conn: psycopg.Connection[Any], user: str) -> list[str]:
    """What the reverse sync needs to apply to this side (the source, at cutover), as its admin: write the
    replicated tables (INSERT, UPDATE, DELETE; their sequences USAGE, SELECT, UPDATE), SET
    session_replication_role (PostgreSQL 15+: GRANT SET ON PARAMETER, which needs a superuser; never a
    function on this side), and its progress tables (state.prepare). Before the cutover the sync role has
    none of it. Runs in its own transaction. Raises CaptureError naming the fix."""
    from . import state  # state imports capture

    if user == conn.info.user:
        return []
    ident = sql.Identifier(user)
    relids = list(registered(conn))
    with conn.transaction():
        _grant_replicated(conn, user, relids, "SELECT, INSERT, UPDATE, DELETE")
        for seq in _owned_sequences(conn, relids):
            conn.execute(sql.SQL("GRANT USAGE, SELECT, UPDATE ON SEQUENCE {} TO {}").format(seq, ident))
        if conn.info.server_version < 150000:
            raise CaptureError(
                f"{user} may not SET session_replication_role on {_where(conn)} (PostgreSQL "
                f"{conn.info.server_version // 10000}: only a superuser may), so it cannot apply the reverse sync "
                "here; set ge_sync_source_user to the source's superuser for this migration")
        try:
            with conn.transaction():
                conn.execute(sql.SQL("GRANT SET ON PARAMETER session_replication_role TO {}").format(ident))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise CaptureError(
                f"{conn.info.user} may not GRANT SET ON PARAMETER session_replication_role to {user} on "
                f"{_where(conn)} ({exc.diag.message_primary}); have a superuser run it, then run the switch "
                "again") from exc
    return [f"grant {user} writes on {len(relids)} replicated table(s) and SET session_replication_role",
            *state.prepare(conn, user)]


def revoke_apply(conn: psycopg.Connection[Any], user: str) -> None:
    """Take back what grant_apply gave (at rollback, once the reverse sync is drained): the sync role reads
    again, and nothing more. Runs in its own transaction."""
    if user == conn.info.user:
        return
    ident = sql.Identifier(user)
    relids = list(registered(conn))
    with conn.transaction():
        _grant_replicated(conn, user, relids, "INSERT, UPDATE, DELETE, TRUNCATE", revoke=True)
        for seq in _owned_sequences(conn, relids):
            conn.execute(sql.SQL("REVOKE UPDATE ON SEQUENCE {} FROM {}").format(seq, ident))
        if conn.info.server_version >= 150000 and conn.execute(
                "SELECT pg_catalog.has_parameter_privilege(%s, 'session_replication_role', 'SET')",
                (user,)).fetchone()[0]:
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("REVOKE SET ON PARAMETER session_replication_role FROM {}").format(ident))
            except psycopg.errors.InsufficientPrivilege:
                log.warning("%s keeps SET on session_replication_role on %s: only a superuser may revoke it",
                            user, _where(conn))


def _owned_sequences(conn: psycopg.Connection[Any], relids: list[int]) -> list[sql.Identifier]:
    """Sequences owned by (serial, identity) the replicated tables."""
    return [sql.Identifier(r[0], r[1]) for r in conn.execute(
        "SELECT DISTINCT n.nspname, s.relname FROM pg_catalog.pg_depend d "
        "JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
        "JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace "
        "WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass "
        "AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass "
        "AND d.refobjid = ANY(%s::pg_catalog.oid[]) AND d.deptype IN ('a', 'i')", (relids,)).fetchall()]


def drop_sync_role(conn: psycopg.Connection[Any], user: str) -> list[str]:
    """Cleanup: every privilege of the sync role in this database (and on shared objects: the database,
    the parameter) and what it owns here go (DROP OWNED), then the role. A role still granted something in
    another database of the cluster stays, with a warning naming why. Never the connecting user. Autocommit
    `conn` (as a superuser, or a member of the role)."""
    if user == conn.info.user:
        return []
    if not conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (user,)).fetchone():
        return []
    ident = sql.Identifier(user)
    try:
        with conn.transaction():
            # A non-superuser (Aurora's master) needs the role's privileges for DROP OWNED; with CREATEROLE
            # (15: any non-superuser role; 16+: roles it created) it may take membership.
            if not conn.execute("SELECT pg_catalog.pg_has_role(current_user, %s, 'USAGE')", (user,)).fetchone()[0]:
                conn.execute(sql.SQL("GRANT {} TO {}").format(ident, sql.Identifier(conn.info.user)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise CaptureError(
            f"{conn.info.user} may not drop what {user} owns or holds on {_where(conn)} "
            f"({exc.diag.message_primary}); run cleanup as a superuser, or GRANT {ident.as_string(conn)} TO "
            f"{sql.Identifier(conn.info.user).as_string(conn)} first") from exc
    try:
        with conn.transaction():
            conn.execute(sql.SQL("DROP ROLE {}").format(ident))
    except psycopg.errors.DependentObjectsStillExist as exc:
        log.warning("role %s kept on %s: %s", user, _where(conn), exc.diag.message_detail or exc)
        return [f"revoke everything from {user} in {conn.info.dbname}"]
    return [f"drop role {user}"]


def set_waiting(conn: psycopg.Connection[Any], sync: str, waiting: bool) -> None:
    """Mark `sync` as waiting for a kick (writers notify only then), or as busy again. Autocommit `conn`."""
    table = sql.Identifier(SCHEMA, WAITING)
    if waiting:
        conn.execute(sql.SQL("INSERT INTO {} (sync) VALUES (%s) ON CONFLICT DO NOTHING").format(table), (sync,))
    else:
        conn.execute(sql.SQL("DELETE FROM {} WHERE sync = %s").format(table), (sync,))


@dataclass(frozen=True)
class _KeyColumn:
    name: str  # the application's column name
    type: str  # format_type() of its base type (a domain's checks never run in the trigger)
    collation: sql.Composable | None  # COLLATE clause of the column's collation, if collatable


def _key_columns(conn: psycopg.Connection[Any], table: Table) -> list[_KeyColumn]:
    rows = {r[0]: r[1:] for r in conn.execute(
        "SELECT a.attname, a.atttypid::int8, a.atttypmod, cn.nspname, co.collname "
        "FROM pg_catalog.pg_attribute a "
        "LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation "
        "LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace "
        "WHERE a.attrelid = %s::oid AND a.attname = ANY(%s) AND NOT a.attisdropped",
        (table.relid, list(table.key))).fetchall()}
    result = []
    for name in table.key:
        typid, typmod, coll_schema, coll_name = rows[name]
        for _ in range(100):  # a domain's base type (domains over domains too)
            base = conn.execute("SELECT typtype::text, typbasetype::int8, typtypmod FROM pg_catalog.pg_type "
                                "WHERE oid = %s::oid", (typid,)).fetchone()
            if not base or base[0] != "d":
                break
            typid, typmod = base[1], base[2] if base[2] != -1 else typmod
        formatted = conn.execute("SELECT pg_catalog.format_type(%s::oid, %s)", (typid, typmod)).fetchone()
        assert formatted is not None
        collation = sql.SQL("COLLATE {}").format(sql.Identifier(coll_schema, coll_name)) if coll_name else None
        result.append(_KeyColumn(name, str(formatted[0]), collation))
    return result


# Triggers bearing a capture trigger's name on a table and, when partitioned, on all its partitions
# (pg_partition_tree returns nothing for a plain table); `ours` when the function lives in ge_capture.
_NAMED_TRIGGERS = """
SELECT n.nspname, c.relname, t.tgname,
       COALESCE((pg_catalog.to_jsonb(t) ->> 'tgparentid')::oid <> 0, t.tgisinternal),  -- 12: no tgparentid
       pn.nspname = %(schema)s
FROM (SELECT %(relid)s::oid AS relid, 0 AS level UNION
      SELECT relid, level FROM pg_catalog.pg_partition_tree(%(relid)s::oid)) pt
JOIN pg_catalog.pg_class c ON c.oid = pt.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_trigger t ON t.tgrelid = c.oid JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
WHERE t.tgname = ANY(%(names)s)
ORDER BY pt.level, 1, 2, 3
"""


def _named_triggers(conn: psycopg.Connection[Any], relid: int) -> list[tuple[str, str, str, bool, bool]]:
    """(schema, table, trigger, cloned from the parent, ours) of the triggers bearing a capture trigger name."""
    return conn.execute(_NAMED_TRIGGERS, {"relid": relid, "names": list(TRIGGERS), "schema": SCHEMA}
                        ).fetchall()  # type: ignore[return-value]


def _foreign_triggers(conn: psycopg.Connection[Any], table: Table) -> list[str]:
    """Application triggers on the table or its partitions bearing a name the capture triggers use."""
    return [f"{t} on {s}.{r}" for s, r, t, _, ours in _named_triggers(conn, table.relid) if not ours]


def _install(conn: psycopg.Connection[Any], table: Table) -> None:
    foreign = _foreign_triggers(conn, table)
    if foreign:
        raise CaptureError(
            f"cannot capture {table.qualname}: the application's trigger(s) {', '.join(foreign)} bear a name "
            f"great-escape reserves for its capture triggers ({', '.join(TRIGGERS)}). Rename them "
            "(ALTER TRIGGER ... ON ... RENAME TO ...), then run the capture phase again; nothing was changed "
            "on this table")
    delta = sql.Identifier(SCHEMA, delta_name(table.relid))
    columns = _key_columns(conn, table)
    key_defs = sql.SQL(", ").join(
        # The type is format_type() output from the catalog, already quoted where needed.
        sql.SQL("{} {}{} NOT NULL").format(sql.Identifier(k), sql.SQL(c.type),
                                           sql.SQL(" {}").format(c.collation) if c.collation else sql.SQL(""))
        for k, c in zip(delta_key_columns(len(columns)), columns, strict=True))
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, {} timestamptz NOT NULL DEFAULT now())")
                 .format(delta, key_defs, sql.Identifier(CAPTURED_AT)))
    conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_vacuum_scale_factor = 0.01)").format(delta))
    conn.execute(sql.SQL("REVOKE ALL ON {} FROM PUBLIC").format(delta))
    conn.execute(sql.SQL("GRANT INSERT ON {} TO {}").format(delta, sql.Identifier(WRITER_ROLE)))
    for user in _sync_users(conn):
        _grant_sync_tables(conn, user, [delta])
        _grant_replicated(conn, user, [table.relid], "SELECT")
    func = sql.Identifier(SCHEMA, function_name(table.relid))
    _create_writer_function(conn, function_name(table.relid), row_trigger_body(table, delta))
    target = table.ident
    _drop_capture_triggers(conn, table.relid)
    conn.execute(sql.SQL("CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} "
                         "FOR EACH ROW EXECUTE FUNCTION {}()").format(sql.Identifier(ROW_TRIGGER), target, func))
    for part in [target, *(_partitions(conn, table.relid))]:
        conn.execute(sql.SQL("CREATE TRIGGER {} AFTER TRUNCATE ON {} FOR EACH STATEMENT "
                             "EXECUTE FUNCTION {}({})").format(
            sql.Identifier(TRUNCATE_TRIGGER), part, sql.Identifier(SCHEMA, "on_truncate"),
            sql.Literal(str(table.relid))))
    conn.execute(sql.SQL("INSERT INTO {} (relid, schema_name, table_name, delta_table, key_columns, layout) "
                         "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (relid) DO NOTHING").format(
        sql.Identifier(SCHEMA, "tables")),
        (table.relid, table.schema, table.name, delta_name(table.relid), list(table.key), LAYOUT))


def row_trigger_body(table: Table, delta: sql.Identifier) -> sql.Composed:
    """PL/pgSQL of the row trigger: the key of the changed row; both keys when an UPDATE moves the key; then
    the kick.

    It runs as the writer role with the caller's search_path: every operator is qualified, and the key
    comparison is the binary one of two records (`*<>`, no equality operator looked up by name; the casts to
    record keep PostgreSQL from comparing column by column with an operator of that name for each type). A
    key that changes only in its bytes (1.0 -> 1.00) records both keys: harmless, applying copies state."""
    cols = delta_keys(table.key)

    def values(record: str) -> sql.Composed:
        return sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.SQL(record), sql.Identifier(k)) for k in table.key)

    return sql.SQL(
        "BEGIN\n"
        "  IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN\n"
        "    INSERT INTO {delta} ({cols}) VALUES ({old});\n"
        "  ELSE\n"
        "    INSERT INTO {delta} ({cols}) VALUES ({new});\n"
        "    IF TG_OP OPERATOR(pg_catalog.=) 'UPDATE'\n"
        "       AND ROW({old})::pg_catalog.record OPERATOR(pg_catalog.*<>) ROW({new})::pg_catalog.record THEN\n"
        "      INSERT INTO {delta} ({cols}) VALUES ({old});\n"
        "    END IF;\n"
        "  END IF;\n"
        "{kick}"
        "  RETURN NULL;\n"
        "END"
    ).format(delta=delta, cols=cols, old=values("OLD"), new=values("NEW"), kick=_KICK)


def _partitions(conn: psycopg.Connection[Any], relid: int) -> list[sql.Identifier]:
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_catalog.pg_partition_tree(%s::oid) p "
        "JOIN pg_catalog.pg_class c ON c.oid = p.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE p.relid <> %s::oid AND c.relkind IN ('r', 'p')", (relid, relid)).fetchall()
    return [sql.Identifier(s, n) for s, n in rows]


def _drop_capture_triggers(conn: psycopg.Connection[Any], relid: int) -> None:
    """Drop the capture's own triggers (their function lives in ge_capture) from the table and its
    partitions; an application trigger of the same name is never touched."""
    for schema, name, tgname, cloned, ours in _named_triggers(conn, relid):
        if ours and not cloned:  # a partition's clone goes with its parent's trigger
            conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(tgname),
                                                                          sql.Identifier(schema, name)))


def _remove(conn: psycopg.Connection[Any], relid: int) -> None:
    # The table may be gone (then it has no triggers); its delta table and registry entry still go.
    _drop_capture_triggers(conn, relid)
    conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(SCHEMA, function_name(relid))))
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(SCHEMA, delta_name(relid))))
    conn.execute(sql.SQL("DELETE FROM {} WHERE relid = %s::oid").format(sql.Identifier(SCHEMA, "truncates")), (relid,))
    conn.execute(sql.SQL("DELETE FROM {} WHERE relid = %s::oid").format(sql.Identifier(SCHEMA, "tables")), (relid,))


def _drop_schema(conn: psycopg.Connection[Any]) -> None:
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    # The writer role goes with the last capture on the cluster (another database may still use it).
    try:
        with conn.transaction():
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(WRITER_ROLE)))
    except (psycopg.errors.DependentObjectsStillExist, psycopg.errors.InsufficientPrivilege):
        log.info("role %s kept: capture in another database of this cluster still uses it", WRITER_ROLE)


# ---------------------------------------------------------------- schema freeze

_ROLES_MARKER = "-- ge_ddl_roles: "
_FREEZE_BODY = """
DECLARE
  obj record;
BEGIN
  IF pg_catalog.current_setting('{setting}', true) OPERATOR(pg_catalog.=) 'on' THEN
    IF CURRENT_USER OPERATOR(pg_catalog.=) ANY ({roles}::pg_catalog.name[]) THEN
      RETURN;
    END IF;
  END IF;
  FOR obj IN SELECT * FROM {objects} LOOP
    IF {temp_test} THEN
      CONTINUE;
    END IF;
    RAISE EXCEPTION 'great-escape schema freeze: % refused on %', TG_TAG, obj.object_identity
      USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'A migration is replicating this database and DDL would break it. To run DDL on purpose, '
                   'connect as one of the roles in ge_ddl_roles ({role_list}), '
                   'SET {setting} = on in that session first (then re-run the capture phase), '
                   'or remove the freeze with the cleanup playbook.';
  END LOOP;
END
"""


def _install_freeze(conn: psycopg.Connection[Any], roles: list[str]) -> None:
    roles_literal = sql.Literal(roles).as_string(conn)
    role_list = ", ".join(roles).replace("'", "''")
    for name, event, objects, temp_test in (
        ("ge_schema_freeze", "ddl_command_end", "pg_catalog.pg_event_trigger_ddl_commands()",
         "obj.schema_name LIKE 'pg\\_temp%' OR obj.in_extension OR obj.command_tag IN "
         "('GRANT', 'REVOKE', 'COMMENT', 'SECURITY LABEL', 'REFRESH MATERIALIZED VIEW')"),
        ("ge_schema_freeze_drop", "sql_drop", "pg_catalog.pg_event_trigger_dropped_objects()",
         "obj.is_temporary OR NOT obj.original"),
    ):
        func = sql.Identifier(SCHEMA, name)
        body = _ROLES_MARKER + json.dumps(roles) + _FREEZE_BODY.format(
            setting=ALLOW_DDL_SETTING, objects=objects, temp_test=temp_test, roles=roles_literal,
            role_list=role_list)
        conn.execute(sql.SQL("CREATE OR REPLACE FUNCTION {}() RETURNS event_trigger LANGUAGE plpgsql AS {}")
                     .format(func, sql.Literal(body)))
        conn.execute(sql.SQL("REVOKE ALL ON FUNCTION {}() FROM PUBLIC").format(func))
        conn.execute(sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE EVENT TRIGGER {} ON {} EXECUTE FUNCTION {}()")
                     .format(sql.Identifier(name), sql.SQL(event), func))


def _drop_freeze(conn: psycopg.Connection[Any]) -> None:
    for name in FREEZE_TRIGGERS:
        conn.execute(sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(SCHEMA, name)))


# ---------------------------------------------------------------- command line

def run(cfg: config.Config, *, state: str, freeze: bool | None, check: bool = False,
        ddl_roles: Iterable[str] | None = None) -> Plan:
    """Install or remove capture for the configured tables on cfg.source. `ddl_roles` may lift the freeze
    (default: the user capture is installed as)."""
    with db.connect(cfg.source, f"capture {cfg.name}", autocommit=True) as conn:
        tables = selected_tables(conn, cfg)
        if state == "absent":
            # Registered tables that no longer exist are removed too.
            installed = registered(conn, any_layout=True)
            known = {t.relid for t in tables}
            tables += [Table("?", name, relid, False, (), (), ()) for relid, name in installed.items()
                       if relid not in known]
        p = plan(conn, tables, state=state, freeze=freeze, keyless=cfg.keyless_tables, ddl_roles=ddl_roles)
        if not check:
            apply_plan(conn, p)
    return p


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("capture", help="install or remove change capture and the schema freeze on the source")
    parser.add_argument("action", choices=["install", "remove"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--reverse", action="store_true", help="act on the target (capture for the reverse sync)")
    parser.add_argument("--no-freeze", action="store_true", help="leave the schema freeze as it is")
    parser.add_argument("--ddl-role", action="append", dest="ddl_roles", metavar="ROLE",
                        help="a role that may lift the schema freeze (repeatable; default: the connecting user)")
    parser.add_argument("--check", action="store_true", help="only say what would change")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    cfg = config.load(args.config, reverse=args.reverse)
    present = args.action == "install"
    freeze = None if args.no_freeze else present
    p = run(cfg, state="present" if present else "absent", freeze=freeze, check=args.check,
            ddl_roles=args.ddl_roles)
    for line in p.describe() or ["nothing to change"]:
        print(("would " if args.check else "") + line)
    return 0
