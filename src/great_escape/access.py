"""The application moves with its data (DESIGN.md invariant 11): roles, owners and privileges.

The restore runs with --no-owner --no-privileges, because the source's roles rarely exist on Aurora and
the on-prem superuser cannot own anything there. This module puts back what the application needs:

- Roles: every role the replicated objects depend on (owners, grantees of schemas, tables, columns,
  sequences, functions, types and the database, default privileges, policy roles), the application roles,
  and the group roles they are members of. Missing ones are created on the target as Aurora allows (no
  SUPERUSER, REPLICATION or BYPASSRLS), with their memberships, `ALTER ROLE ... SET` settings and password
  verifiers where the source user may read them. `role_map` renames or merges roles (the on-prem `postgres`
  becomes the Aurora master); a source superuser that owns or holds something must be mapped.
- Owners and privileges: the target ends with the source's owners (through the map) and the same
  privileges, compared by meaning (aclexplode per object, grantee and privilege, the owner's implicit ones
  included), never by ACL text. Default privileges, row level security (enable/force, policies) and the
  database's `ALTER DATABASE ... SET` likewise. The project's own roles keep what the project granted them.
- The master joins the roles that own objects (as it does on RDS) so it may hand objects to them, manage
  their default privileges, and stop and give back writes at cutover and rollback.

`plan()` reads both sides and returns the statements and the differences (what verify reports); `apply()`
runs them; `required_access()` and `missing_access()` are the cutover's proof that the application can
write on the side about to go live.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from . import db
from .catalog import PROJECT_SCHEMAS, SYSTEM_SCHEMAS
from .errors import AccessError

log = logging.getLogger(__name__)

# The permissive policy that lets the sync user see and write every row of a table with row level
# security on the target (it is neither owner nor BYPASSRLS there). Never compared, removed by cleanup.
SYNC_POLICY = "great_escape_sync"
# Attributes Aurora/RDS does not let the master give; a role that has them on the source gets the rest.
RESERVED_ATTRIBUTES = ("superuser", "replication", "bypassrls")
# GUCs whose stored value is a list of quoted items: written back item by item (as pg_dump does).
_LIST_SETTINGS = frozenset({"search_path", "temp_tablespaces", "session_preload_libraries",
                            "local_preload_libraries", "shared_preload_libraries"})
_KINDS = {"database": "DATABASE", "schema": "SCHEMA", "table": "TABLE", "sequence": "SEQUENCE",
          "function": "ROUTINE", "type": "TYPE"}
_DEFAULT_KINDS = {"r": ("TABLES", "r"), "S": ("SEQUENCES", "s"), "f": ("ROUTINES", "f"), "T": ("TYPES", "T"),
                  "n": ("SCHEMAS", "n")}


# ---------------------------------------------------------------- reading one side

Grant = tuple[str, str, bool]  # (grantee or PUBLIC, privilege, grantable)


@dataclass
class Obj:
    kind: str  # database, schema, table, sequence, column, function, type
    schema: str
    name: str
    sub: str  # column name, or the function's identity arguments
    owner: str | None
    grants: set[Grant]
    owned_by_table: bool = False  # a serial/identity sequence: its owner follows the table's

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.kind, self.schema, self.name, self.sub)

    @property
    def label(self) -> str:
        if self.kind == "database":
            return "database"
        if self.kind == "schema":
            return f"schema {self.schema}"
        if self.kind == "column":
            return f"column {self.schema}.{self.name}.{self.sub}"
        if self.kind == "function":
            return f"function {self.schema}.{self.name}({self.sub})"
        return f"{self.kind} {self.schema}.{self.name}"


@dataclass
class Policy:
    schema: str
    table: str
    name: str
    command: str  # ALL, SELECT, INSERT, UPDATE, DELETE
    permissive: bool
    roles: tuple[str, ...]  # sorted; ("PUBLIC",) for all
    using: str | None
    check: str | None


@dataclass
class RoleInfo:
    name: str
    login: bool
    inherit: bool
    createdb: bool
    createrole: bool
    connlimit: int
    valid_until: str | None
    superuser: bool
    replication: bool
    bypassrls: bool
    password: str | None  # the verifier (SCRAM or md5), None where it cannot be read or there is none
    member_of: dict[str, bool] = field(default_factory=dict)  # group -> admin option
    settings: dict[str, str] = field(default_factory=dict)  # name -> value, everywhere
    db_settings: dict[str, str] = field(default_factory=dict)  # name -> value, in this database


@dataclass
class Side:
    """What one database holds, as far as the application's access goes."""

    objects: dict[tuple[str, str, str, str], Obj]
    defaults: dict[tuple[str, str, str], set[Grant]]  # (role, schema or '', objtype) -> grants
    rls: dict[tuple[str, str], tuple[bool, bool]]  # (schema, table) -> (enabled, forced)
    policies: dict[tuple[str, str, str], Policy]
    db_settings: dict[str, str]
    user: str
    superuser: bool


_OBJECTS = """
WITH scope AS (
    SELECT n.oid, n.nspname FROM pg_catalog.pg_namespace n
    WHERE n.nspname <> ALL(%(excluded)s) AND n.nspname NOT LIKE 'pg\\_%%'
      AND (%(schemas)s::text[] IS NULL OR n.nspname = ANY(%(schemas)s))
),
ext AS (SELECT classid, objid FROM pg_catalog.pg_depend WHERE deptype = 'e'),
objs AS (
    SELECT 'database' AS kind, '' AS schema, '' AS name, '' AS sub, d.datdba AS owner,
           COALESCE(d.datacl, pg_catalog.acldefault('d', d.datdba)) AS acl, false AS owned
    FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()
    UNION ALL
    SELECT 'schema', s.nspname, '', '', n.nspowner, COALESCE(n.nspacl, pg_catalog.acldefault('n', n.nspowner)), false
    FROM scope s JOIN pg_catalog.pg_namespace n ON n.oid = s.oid
    UNION ALL
    SELECT CASE WHEN c.relkind = 'S' THEN 'sequence' ELSE 'table' END, s.nspname, c.relname, '', c.relowner,
           COALESCE(c.relacl, pg_catalog.acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char",
                                                    c.relowner)),
           c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_catalog.pg_depend dp
                                       WHERE dp.classid = 'pg_catalog.pg_class'::regclass AND dp.objid = c.oid
                                         AND dp.refobjsubid > 0 AND dp.deptype IN ('a', 'i'))
    FROM pg_catalog.pg_class c JOIN scope s ON s.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
      AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_catalog.pg_class'::regclass AND ext.objid = c.oid)
    UNION ALL
    SELECT 'column', s.nspname, c.relname, a.attname, NULL, a.attacl, false
    FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
    JOIN scope s ON s.oid = c.relnamespace
    WHERE a.attacl IS NOT NULL AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
    UNION ALL
    SELECT 'function', s.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid), p.proowner,
           COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner)), false
    FROM pg_catalog.pg_proc p JOIN scope s ON s.oid = p.pronamespace
    WHERE NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_catalog.pg_proc'::regclass AND ext.objid = p.oid)
    UNION ALL
    SELECT 'type', s.nspname, t.typname, '', t.typowner, COALESCE(t.typacl, pg_catalog.acldefault('T', t.typowner)),
           false
    FROM pg_catalog.pg_type t JOIN scope s ON s.oid = t.typnamespace
    WHERE (t.typrelid = 0 OR (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid) = 'c')
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.typarray = t.oid)
      AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_catalog.pg_type'::regclass AND ext.objid = t.oid)
)
SELECT o.kind, o.schema, o.name, o.sub,
       CASE WHEN o.owner IS NULL THEN NULL ELSE pg_catalog.pg_get_userbyid(o.owner) END,
       (SELECT COALESCE(pg_catalog.array_agg(CASE WHEN e.grantee = 0 THEN 'PUBLIC'
                                                   ELSE pg_catalog.pg_get_userbyid(e.grantee) END
                                              || '|' || e.privilege_type || '|' || e.is_grantable), '{}')
        FROM pg_catalog.aclexplode(o.acl) e),
       o.owned
FROM objs o
"""

_DEFAULTS = """
SELECT pg_catalog.pg_get_userbyid(d.defaclrole), COALESCE(n.nspname, ''), d.defaclobjtype::text,
       (SELECT COALESCE(pg_catalog.array_agg(CASE WHEN e.grantee = 0 THEN 'PUBLIC'
                                                   ELSE pg_catalog.pg_get_userbyid(e.grantee) END
                                              || '|' || e.privilege_type || '|' || e.is_grantable), '{}')
        FROM pg_catalog.aclexplode(d.defaclacl) e)
FROM pg_catalog.pg_default_acl d LEFT JOIN pg_catalog.pg_namespace n ON n.oid = d.defaclnamespace
WHERE d.defaclnamespace = 0 OR (n.nspname <> ALL(%(excluded)s) AND n.nspname NOT LIKE 'pg\\_%%'
                                AND (%(schemas)s::text[] IS NULL OR n.nspname = ANY(%(schemas)s)))
"""

_RLS = """
SELECT n.nspname, c.relname, c.relrowsecurity, c.relforcerowsecurity
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname <> ALL(%(excluded)s) AND n.nspname NOT LIKE 'pg\\_%%'
  AND (%(schemas)s::text[] IS NULL OR n.nspname = ANY(%(schemas)s))
"""

_POLICIES = """
SELECT n.nspname, c.relname, p.polname,
       CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE'
                     ELSE 'ALL' END,
       p.polpermissive,
       ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(r) END
             FROM pg_catalog.unnest(p.polroles) r ORDER BY 1),
       pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)
FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname <> ALL(%(excluded)s) AND n.nspname NOT LIKE 'pg\\_%%'
  AND (%(schemas)s::text[] IS NULL OR n.nspname = ANY(%(schemas)s))
"""

_DB_SETTINGS = """
SELECT pg_catalog.unnest(s.setconfig) FROM pg_catalog.pg_db_role_setting s
JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
WHERE s.setrole = 0 AND d.datname = pg_catalog.current_database()
"""


def _grants(items: Iterable[str]) -> set[Grant]:
    out = set()
    for item in items:
        grantee, privilege, grantable = item.rsplit("|", 2)
        out.add((grantee, privilege, grantable == "true"))
    return out


def _setting(item: str) -> tuple[str, str]:
    name, _, value = item.partition("=")
    return name, value


def read_side(conn: psycopg.Connection[Any], schemas: list[str] | None, exclude_tables: Iterable[str] = (),
              ignore_roles: Iterable[str] = ()) -> Side:
    """Objects, default privileges, row level security and database settings of `schemas` (all application
    schemas when empty), in one read-only snapshot. Expressions come schema-qualified (search_path pinned).
    Grants to `ignore_roles` (the project's own roles on this side) are left out."""
    excluded = set(exclude_tables)
    ignored = set(ignore_roles)
    args = {"excluded": list(SYSTEM_SCHEMAS + PROJECT_SCHEMAS), "schemas": schemas or None}
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()  # the snapshot settings must come first in their transaction
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute("SET LOCAL search_path = pg_catalog")
        objects = {}
        for kind, schema, name, sub, owner, acl, owned in conn.execute(_OBJECTS, args).fetchall():
            if kind in ("table", "column") and f"{schema}.{name}" in excluded:
                continue
            grants = {g for g in _grants(acl) if g[0] not in ignored}
            obj = Obj(kind, schema, name, sub, owner, grants, bool(owned))
            objects[obj.key] = obj
        defaults = {(role, schema, objtype): _grants(acl)
                    for role, schema, objtype, acl in conn.execute(_DEFAULTS, args).fetchall()}
        rls = {(s, t): (bool(e), bool(f)) for s, t, e, f in conn.execute(_RLS, args).fetchall()
               if f"{s}.{t}" not in excluded}
        policies = {}
        for s, t, name, cmd, permissive, roles, using, check in conn.execute(_POLICIES, args).fetchall():
            if f"{s}.{t}" not in excluded:
                policies[(s, t, name)] = Policy(s, t, name, cmd, bool(permissive), tuple(roles), using, check)
        db_settings = dict(_setting(r[0]) for r in conn.execute(_DB_SETTINGS).fetchall())
        me = conn.execute("SELECT current_user, rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user"
                          ).fetchone()
    assert me is not None
    return Side(objects, defaults, rls, policies, db_settings, str(me[0]), bool(me[1]))


_ROLES = """
SELECT r.rolname, r.rolcanlogin, r.rolinherit, r.rolcreatedb, r.rolcreaterole, r.rolconnlimit,
       r.rolvaliduntil::text, r.rolsuper, r.rolreplication, r.rolbypassrls,
       ARRAY(SELECT g.rolname || '|' || m.admin_option FROM pg_catalog.pg_auth_members m
             JOIN pg_catalog.pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid ORDER BY 1),
       ARRAY(SELECT pg_catalog.unnest(s.setconfig) FROM pg_catalog.pg_db_role_setting s
             WHERE s.setrole = r.oid AND s.setdatabase = 0),
       ARRAY(SELECT pg_catalog.unnest(s.setconfig) FROM pg_catalog.pg_db_role_setting s
             JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
             WHERE s.setrole = r.oid AND d.datname = pg_catalog.current_database())
FROM pg_catalog.pg_roles r WHERE r.rolname = ANY(%s)
"""


def read_roles(conn: psycopg.Connection[Any], names: Iterable[str]) -> dict[str, RoleInfo]:
    """The named roles as they are on this side; password verifiers only where pg_authid may be read."""
    wanted = sorted(set(names) - {"PUBLIC"})
    roles = {}
    for (name, login, inherit, createdb, createrole, connlimit, valid_until, superuser, replication, bypassrls,
         member_of, settings, db_settings) in conn.execute(_ROLES, (wanted,)).fetchall():
        groups = {}
        for item in member_of:
            group, _, admin = item.rpartition("|")
            groups[group] = admin == "true"
        roles[name] = RoleInfo(name, login, inherit, createdb, createrole, connlimit, valid_until, superuser,
                               replication, bypassrls, None, groups, dict(map(_setting, settings)),
                               dict(map(_setting, db_settings)))
    try:
        with conn.transaction():
            rows = conn.execute("SELECT rolname, rolpassword FROM pg_catalog.pg_authid WHERE rolname = ANY(%s)",
                                (wanted,)).fetchall()
        for name, password in rows:
            roles[name].password = password
    except psycopg.errors.InsufficientPrivilege:
        log.info("the source user may not read pg_authid: role passwords cannot be carried over")
    conn.rollback()
    return roles


def dependent_roles(side: Side, application_roles: Iterable[str],
                    roles: Mapping[str, RoleInfo] | None = None) -> set[str]:
    """Every role the objects depend on (owners, grantees, default privileges, policies), the application
    roles, and (when `roles` is given) the groups they are members of, transitively. Predefined roles
    (pg_*) and PUBLIC are not included: they exist everywhere."""
    names: set[str] = set(application_roles)
    for obj in side.objects.values():
        if obj.kind == "database":
            continue  # the database's owner stays the target's own
        if obj.owner:
            names.add(obj.owner)
        names.update(g for g, _, _ in obj.grants)
    for (role, _, _), grants in side.defaults.items():
        names.add(role)
        names.update(g for g, _, _ in grants)
    for pol in side.policies.values():
        names.update(pol.roles)
    names.update(g for obj in side.objects.values() if obj.kind == "database" for g, _, _ in obj.grants)
    if roles is not None:
        todo = list(names)
        while todo:
            info = roles.get(todo.pop())
            for group in info.member_of if info else ():
                if group not in names:
                    names.add(group)
                    todo.append(group)
    return {n for n in names if n != "PUBLIC" and not n.startswith("pg_")}


# ---------------------------------------------------------------- planning


@dataclass
class Difference:
    """One difference between source and target, as verify reports it."""

    object: str
    grantee: str
    privilege: str
    side: str  # where it is: "source only" (missing on the target) or "target only"

    def __str__(self) -> str:
        whom = "" if self.grantee == "-" else f" for {self.grantee}"
        return f"{self.object}: {self.privilege}{whom} on the {self.side}"


@dataclass
class Step:
    """One statement of the plan, with what it is for. `secret` statements are never shown or returned."""

    what: str
    statement: sql.Composable
    secret: bool = False
    optional: bool = False  # a failure is a warning (e.g. a setting only a superuser may set)


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    roles_created: list[str] = field(default_factory=list)
    roles_existing: list[str] = field(default_factory=list)
    passwords_needed: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.steps)

    def describe(self) -> list[str]:
        return [s.what for s in self.steps]

    def queries(self, conn: psycopg.Connection[Any]) -> list[str]:
        return [s.statement.as_string(conn) if not s.secret else f"-- {s.what} (statement withheld: it holds a "
                "password verifier)" for s in self.steps]

    def raise_if_problems(self) -> None:
        if self.problems:
            raise AccessError(f"{len(self.problems)} problem(s) with roles and privileges, nothing was changed",
                              self.problems)


@dataclass(frozen=True)
class Options:
    role_map: Mapping[str, str] = field(default_factory=dict)  # source role -> target role
    application_roles: tuple[str, ...] = ()
    project_roles: tuple[str, ...] = ()  # the target's master and replication user: never revoked from
    # The source's own project role (the sync's, made by capture): its grants there are never carried over.
    source_project_roles: tuple[str, ...] = ()
    sync_user: str = ""  # gets the policy that lets it see every row of RLS tables
    schemas: tuple[str, ...] = ()
    exclude_tables: tuple[str, ...] = ()
    objects: bool = True  # False: roles only (before the restore)
    # Write privileges a cutover or rollback revoked on the side that is not live, per side (the records of
    # great_escape.cutover_state): they count as held, so they are neither reported nor granted back early.
    write_stops: Mapping[str, list[dict[str, Any]]] = field(default_factory=dict)
    grant_master: bool = True  # the master joins the roles that own objects

    def map(self, role: str) -> str:
        return self.role_map.get(role, role)


def _ident(name: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if name == "PUBLIC" else sql.Identifier(name)


def plan_roles(source: psycopg.Connection[Any], target: psycopg.Connection[Any], src: Side,
               opts: Options) -> Plan:
    """Roles to create on the target, memberships and settings to add; problems for what cannot be done."""
    plan = Plan()
    src_roles: dict[str, RoleInfo] = {}
    asked: set[str] = set()
    while wanted := dependent_roles(src, opts.application_roles, src_roles) - asked:  # groups of groups too
        asked |= wanted
        src_roles.update(read_roles(source, wanted))
    missing_on_source = sorted(set(opts.application_roles) - set(src_roles))
    if missing_on_source:
        plan.problems.append(f"application role(s) {', '.join(missing_on_source)} do not exist on the source; "
                             "fix ge_application_roles")
    mapped_targets = {opts.map(r) for r in src_roles}
    tgt_roles = read_roles(target, mapped_targets | set(opts.project_roles))
    target.rollback()
    for name in sorted(src_roles):
        info, tname = src_roles[name], opts.map(name)
        if name in opts.role_map:
            if tname not in tgt_roles:
                plan.problems.append(f"ge_role_map maps {name} to {tname}, which does not exist on the target; "
                                     f"create {tname} or change the mapping")
            continue
        if info.superuser:
            plan.problems.append(
                f"role {name} is a superuser on the source and owns or holds privileges on replicated objects; "
                f"Aurora has no superuser: map it with ge_role_map (e.g. {{{name}: <master user>}})")
            continue
        if tname in tgt_roles:
            plan.roles_existing.append(tname)
            continue
        plan.roles_created.append(tname)
        plan.differences.append(Difference(f"role {tname}", "-", "ROLE", "source only (missing on the target)"))
        dropped = [a.upper() for a in RESERVED_ATTRIBUTES if getattr(info, a)]
        if dropped:
            plan.warnings.append(f"role {tname} is created without {', '.join(dropped)} (Aurora does not allow "
                                 "the master to give it)")
        options = [sql.SQL("LOGIN" if info.login else "NOLOGIN"), sql.SQL("INHERIT" if info.inherit else "NOINHERIT"),
                   sql.SQL("CREATEDB" if info.createdb else "NOCREATEDB"),
                   sql.SQL("CREATEROLE" if info.createrole else "NOCREATEROLE")]
        if info.connlimit != -1:
            options.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(info.connlimit)))
        if info.valid_until:
            options.append(sql.SQL("VALID UNTIL {}").format(sql.Literal(info.valid_until)))
        statement = sql.SQL("CREATE ROLE {} WITH {}").format(sql.Identifier(tname), sql.SQL(" ").join(options))
        plan.steps.append(Step(f"create role {tname}", statement))
        if info.login:
            verifier = info.password if _usable_verifier(info.password) else None
            if verifier:
                plan.steps.append(Step(f"set the password of role {tname} (the source's verifier)",
                                       sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                                           sql.Identifier(tname), sql.Literal(verifier)), secret=True))
            else:
                plan.passwords_needed.append(tname)
    master = target.info.user
    for name in sorted(src_roles):
        info, tname = src_roles[name], opts.map(name)
        if info.superuser and name not in opts.role_map:
            continue
        have = tgt_roles[tname].member_of if tname in tgt_roles else {}
        for group, admin in sorted(info.member_of.items()):
            tgroup = opts.map(group)
            if group.startswith("pg_"):
                if tgroup not in have:
                    plan.warnings.append(f"role {tname} is a member of the predefined role {group} on the source; "
                                         f"grant it on the target if the application needs it")
                continue
            if tgroup == tname or tgroup in have or (group not in src_roles):
                continue
            plan.differences.append(Difference(f"role {tname}", tgroup, "MEMBER",
                                               "source only (missing on the target)"))
            plan.steps.append(Step(f"grant role {tgroup} to {tname}", sql.SQL("GRANT {} TO {}{}").format(
                sql.Identifier(tgroup), sql.Identifier(tname), sql.SQL(" WITH ADMIN OPTION" if admin else ""))))
        existing = tgt_roles[tname] if tname in tgt_roles else None
        for scope_db, wanted, current in (
                (False, info.settings, existing.settings if existing else {}),
                (True, info.db_settings, existing.db_settings if existing else {})):
            for setting, value in sorted(wanted.items()):
                if current.get(setting) == value:
                    continue
                where = (sql.SQL(" IN DATABASE {}").format(sql.Identifier(target.info.dbname)) if scope_db
                         else sql.SQL(""))
                plan.steps.append(Step(
                    f"set {setting} for role {tname}{' in this database' if scope_db else ''}",
                    sql.SQL("ALTER ROLE {}{} SET {} TO {}").format(
                        sql.Identifier(tname), where, sql.Identifier(setting), setting_value(setting, value)),
                    optional=True))
    if opts.grant_master:
        owners = {opts.map(o.owner) for o in src.objects.values() if o.owner and o.kind != "database"}
        owners |= {opts.map(role) for role, _, _ in src.defaults}
        member = tgt_roles[master].member_of if master in tgt_roles else {}
        for owner in sorted(owners - {master} - set(member)):
            if owner.startswith("pg_") or (owner in src_roles and src_roles[owner].superuser):
                continue  # predefined roles take no members; an unmapped superuser is a problem above
            plan.steps.append(Step(
                f"grant role {owner} to {master} (the master manages the objects {owner} owns, as on RDS)",
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(owner), sql.Identifier(master))))
    return plan


def _usable_verifier(verifier: str | None) -> bool:
    """A SCRAM or md5 verifier; md5 is salted with the role name, which is kept (renamed roles are mapped to
    existing ones, never created)."""
    return bool(verifier) and verifier.startswith(("SCRAM-SHA-256$", "md5"))


def split_list_setting(value: str) -> list[str]:
    """`"$user", public` -> ['$user', 'public']: the items of a list setting as stored in pg_db_role_setting."""
    items, current, quoted, i = [], "", False, 0
    while i < len(value):
        ch = value[i]
        if ch == '"':
            if quoted and value[i + 1:i + 2] == '"':
                current += '"'
                i += 1
            else:
                quoted = not quoted
        elif ch == "," and not quoted:
            items.append(current.strip())
            current = ""
        else:
            current += ch
        i += 1
    items.append(current.strip())
    return [item for item in items if item]


def setting_value(name: str, value: str) -> sql.Composable:
    if name in _LIST_SETTINGS:
        return sql.SQL(", ").join(sql.Literal(item) for item in split_list_setting(value))
    return sql.Literal(value)


def _object_ident(obj: Obj) -> sql.Composable:
    if obj.kind == "database":
        raise AssertionError("the database is named by the connection")
    if obj.kind == "schema":
        return sql.Identifier(obj.schema)
    if obj.kind == "function":
        # Identity arguments as pg_get_function_identity_arguments renders them (types already quoted).
        return sql.SQL("{}({})").format(sql.Identifier(obj.schema, obj.name), sql.SQL(obj.sub))
    return sql.Identifier(obj.schema, obj.name)


def _on(obj: Obj, target_db: str) -> sql.Composable:
    if obj.kind == "database":
        return sql.SQL("DATABASE {}").format(sql.Identifier(target_db))
    if obj.kind == "column":
        return sql.SQL("TABLE {}").format(sql.Identifier(obj.schema, obj.name))
    return sql.SQL("{} {}").format(sql.SQL(_KINDS[obj.kind]), _object_ident(obj))


def _privilege(obj: Obj, privilege: str) -> sql.Composable:
    if obj.kind == "column":
        return sql.SQL("{} ({})").format(sql.SQL(privilege), sql.Identifier(obj.sub))
    return sql.SQL(privilege)


def expected_grants(obj: Obj, opts: Options) -> set[Grant]:
    """The source object's grants with the roles mapped."""
    return {(opts.map(grantee), privilege, grantable) for grantee, privilege, grantable in obj.grants}


def _as_owned_by(grants: set[Grant], old: str | None, new: str | None) -> set[Grant]:
    if not old or not new or old == new:
        return set(grants)
    return {(new if g == old else g, p, w) for g, p, w in grants}


def compare(src: Side, tgt: Side, opts: Options, target_db: str, hardwired: Mapping[str, set[Grant]]
            ) -> tuple[list[Step], list[Difference]]:
    """Statements that make the target's owners, privileges, default privileges, row level security and
    database settings match the source's (after the role map), and the differences found."""
    steps: list[Step] = []
    diffs: list[Difference] = []
    project = set(opts.project_roles)
    owner_changes: dict[tuple[str, str], str] = {}  # (schema, table) -> new owner: their sequences follow
    # Who may create in each schema once the target matches the source (the owner's own right included).
    creators = {key[1]: {g for g, p, _ in expected_grants(obj, opts) if p == "CREATE"}
                for key, obj in src.objects.items() if key[0] == "schema"}
    # Schemas first: a new owner needs CREATE on the schema. Tables before their sequences and columns.
    order = ("database", "schema", "type", "table", "sequence", "column", "function")
    for key, sobj in sorted(src.objects.items(), key=lambda item: (order.index(item[0][0]), item[0])):
        tobj = tgt.objects.get(key)
        if tobj is None and sobj.kind == "column" and ("table", sobj.schema, sobj.name, "") in tgt.objects:
            tobj = Obj("column", sobj.schema, sobj.name, sobj.sub, None, set())  # no column privileges yet
        if tobj is None:
            if sobj.kind != "database":
                diffs.append(Difference(sobj.label, "-", "object", "source only (missing on the target)"))
            continue
        owner = opts.map(sobj.owner) if sobj.owner else None
        current_owner = tobj.owner
        if sobj.kind == "database":
            # The database's owner stays the target's own: compare what others are granted.
            want = {g for g in expected_grants(sobj, opts) if g[0] != opts.map(sobj.owner or "")}
            have = {g for g in tobj.grants if g[0] != tobj.owner}
        else:
            follows = sobj.owned_by_table and owner_changes.get((sobj.schema, sobj.name)) == owner
            if owner and owner != tobj.owner and not follows:
                diffs.append(Difference(sobj.label, owner, "OWNER", f"source only (target owner: {tobj.owner})"))
                give = Step(f"give {sobj.label} to {owner}", sql.SQL("ALTER {} {} OWNER TO {}").format(
                    sql.SQL(_KINDS[sobj.kind]), _object_ident(sobj), sql.Identifier(owner)))
                # (never lent to the project's own roles: the take-back would revoke what the project keeps)
                may_create = creators.get(sobj.schema) if sobj.kind != "schema" and owner not in project else None
                steps += _lending_create(sobj.schema, owner, give) if may_create is not None and not (
                    {owner, "PUBLIC"} & may_create) else [give]
                if sobj.kind == "table":
                    owner_changes[(sobj.schema, sobj.name)] = owner
                current_owner = owner
            want = expected_grants(sobj, opts)
            have = _as_owned_by(tobj.grants, tobj.owner, current_owner)
        steps += _acl_steps(sobj, want, have, project, target_db, diffs)
    steps += _compare_defaults(src, tgt, opts, diffs, hardwired)
    steps += _compare_rls(src, tgt, opts, diffs)
    for setting, value in sorted(src.db_settings.items()):
        if tgt.db_settings.get(setting) != value:
            diffs.append(Difference("database", "-", f"setting {setting}={value}", "source only"))
            steps.append(Step(f"set {setting} for the database", sql.SQL("ALTER DATABASE {} SET {} TO {}").format(
                sql.Identifier(target_db), sql.Identifier(setting), setting_value(setting, value)), optional=True))
    return steps, diffs


def _lending_create(schema: str, role: str, give: Step) -> list[Step]:
    """`give` (ALTER ... OWNER TO `role`) between a GRANT and a REVOKE of CREATE on `schema`: a new owner must
    be able to create in the object's schema unless a superuser gives it (Aurora's master is none), and on the
    source `role` may not (a superuser gave it the object there)."""
    names = (sql.Identifier(schema), sql.Identifier(role))
    return [Step(f"let {role} create in schema {schema} while it is given an object there",
                 sql.SQL("GRANT CREATE ON SCHEMA {} TO {}").format(*names)),
            give,
            Step(f"take CREATE on schema {schema} back from {role}, as on the source",
                 sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(*names))]


def _hardwired(objtype: str, owner: str, table: Mapping[str, set[Grant]]) -> set[Grant]:
    """What a role's objects of `objtype` get when no global default privileges are set (acldefault)."""
    return {(owner if g == "" else g, p, w) for g, p, w in table[objtype]}


def _acl_steps(obj: Obj, want: set[Grant], have: set[Grant], project: set[str], target_db: str,
               diffs: list[Difference]) -> list[Step]:
    """GRANT what the target lacks, REVOKE what only the target has (never from the project's own roles);
    a grant option that differs is added or taken back alone."""
    wanted = {(g, p): w for g, p, w in want}
    held = {(g, p): w for g, p, w in have}
    steps = []
    on = _on(obj, target_db)
    for (grantee, privilege), grantable in sorted(wanted.items()):
        if held.get((grantee, privilege)) == grantable or (held.get((grantee, privilege)) and not grantable):
            continue
        diffs.append(Difference(obj.label, grantee, privilege + (" WITH GRANT OPTION" if grantable else ""),
                                "source only (missing on the target)"))
        steps.append(Step(f"grant {privilege} on {obj.label} to {grantee}", sql.SQL("GRANT {} ON {} TO {}{}").format(
            _privilege(obj, privilege), on, _ident(grantee), sql.SQL(" WITH GRANT OPTION" if grantable else ""))))
    for (grantee, privilege), grantable in sorted(held.items()):
        if grantee in project:
            continue
        if (grantee, privilege) not in wanted:
            diffs.append(Difference(obj.label, grantee, privilege, "target only"))
            steps.append(Step(f"revoke {privilege} on {obj.label} from {grantee}",
                              sql.SQL("REVOKE {} ON {} FROM {}").format(
                                  _privilege(obj, privilege), on, _ident(grantee))))
        elif grantable and not wanted[(grantee, privilege)]:
            diffs.append(Difference(obj.label, grantee, privilege + " WITH GRANT OPTION", "target only"))
            steps.append(Step(f"take back the grant option of {privilege} on {obj.label} from {grantee}",
                              sql.SQL("REVOKE GRANT OPTION FOR {} ON {} FROM {}").format(
                                  _privilege(obj, privilege), on, _ident(grantee))))
    return steps


def _compare_defaults(src: Side, tgt: Side, opts: Options, diffs: list[Difference],
                      hardwired: Mapping[str, set[Grant]]) -> list[Step]:
    steps = []
    wanted: dict[tuple[str, str, str], set[Grant]] = {}
    for (role, schema, objtype), grants in src.defaults.items():
        wanted[(opts.map(role), schema, objtype)] = {(opts.map(g), p, w) for g, p, w in grants}
    roles = {role for role, _, _ in wanted}
    keys = set(wanted) | {k for k in tgt.defaults if k[0] in roles}
    for role, schema, objtype in sorted(keys):
        empty = _hardwired(objtype, role, hardwired) if not schema else set()
        want = wanted.get((role, schema, objtype), empty)
        have = tgt.defaults.get((role, schema, objtype), empty)
        plural, _ = _DEFAULT_KINDS[objtype]
        label = f"default privileges of {role} on {plural.lower()}" + (f" in schema {schema}" if schema else "")
        prefix = sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {}{} ").format(
            sql.Identifier(role), sql.SQL(" IN SCHEMA {}").format(sql.Identifier(schema)) if schema else sql.SQL(""))
        for grantee, privilege, grantable in sorted(want - have):
            diffs.append(Difference(label, grantee, privilege, "source only (missing on the target)"))
            steps.append(Step(f"{label}: grant {privilege} to {grantee}", prefix + sql.SQL(
                "GRANT {} ON {} TO {}{}").format(sql.SQL(privilege), sql.SQL(plural), _ident(grantee),
                                                sql.SQL(" WITH GRANT OPTION" if grantable else ""))))
        for grantee, privilege, _ in sorted(have - want):
            if grantee in opts.project_roles or any(g == grantee and p == privilege for g, p, _ in want):
                continue
            diffs.append(Difference(label, grantee, privilege, "target only"))
            steps.append(Step(f"{label}: revoke {privilege} from {grantee}", prefix + sql.SQL(
                "REVOKE {} ON {} FROM {}").format(
                sql.SQL(privilege), sql.SQL(plural), _ident(grantee))))
    return steps


def _create_policy(pol: Policy, roles: Iterable[str]) -> sql.Composable:
    parts = [sql.SQL("CREATE POLICY {} ON {} AS {} FOR {} TO {}").format(
        sql.Identifier(pol.name), sql.Identifier(pol.schema, pol.table),
        sql.SQL("PERMISSIVE" if pol.permissive else "RESTRICTIVE"), sql.SQL(pol.command),
        sql.SQL(", ").join(_ident(r) for r in roles))]
    # Expressions as pg_get_expr rendered them on the source with search_path pinned: names qualified.
    if pol.using is not None:
        parts.append(sql.SQL("USING ({})").format(sql.SQL(pol.using)))
    if pol.check is not None:
        parts.append(sql.SQL("WITH CHECK ({})").format(sql.SQL(pol.check)))
    return sql.SQL(" ").join(parts)


def _compare_rls(src: Side, tgt: Side, opts: Options, diffs: list[Difference]) -> list[Step]:
    steps: list[Step] = []
    for (schema, table), (enabled, forced) in sorted(src.rls.items()):
        if (schema, table) not in tgt.rls:
            continue
        t_enabled, t_forced = tgt.rls[(schema, table)]
        for wanted, have, (on, off, on_state, off_state) in (
                (enabled, t_enabled, ("ENABLE", "DISABLE", "enabled", "disabled")),
                (forced, t_forced, ("FORCE", "NO FORCE", "forced", "not forced"))):
            if wanted != have:
                keyword, state = (on, on_state) if wanted else (off, off_state)
                diffs.append(Difference(f"table {schema}.{table}", "-", f"ROW LEVEL SECURITY {state}", "source only"))
                steps.append(Step(f"{keyword.lower()} row level security on {schema}.{table}",
                                  sql.SQL("ALTER TABLE {} {} ROW LEVEL SECURITY").format(
                                      sql.Identifier(schema, table), sql.SQL(keyword))))
        if enabled and opts.sync_user and (schema, table, SYNC_POLICY) not in tgt.policies:
            steps.append(Step(f"let {opts.sync_user} see and write every row of {schema}.{table} "
                              f"(policy {SYNC_POLICY})",
                              sync_policy(schema, table, opts.sync_user)))
    for key, pol in sorted(src.policies.items()):
        if (pol.schema, pol.table) not in tgt.rls:
            continue
        roles = tuple(sorted(opts.map(r) for r in pol.roles))
        have = tgt.policies.get(key)
        label = f"policy {pol.name} on {pol.schema}.{pol.table}"
        if have and (have.command, have.permissive, have.roles, have.using, have.check) == (
                pol.command, pol.permissive, roles, pol.using, pol.check):
            continue
        diffs.append(Difference(label, ", ".join(roles), "POLICY", "source only (missing or different on the target)"))
        if have:
            steps.append(Step(f"drop the differing {label}", sql.SQL("DROP POLICY {} ON {}").format(
                sql.Identifier(pol.name), sql.Identifier(pol.schema, pol.table))))
        steps.append(Step(f"create {label}", _create_policy(pol, roles)))
    for key, pol in sorted(tgt.policies.items()):
        if key not in src.policies and pol.name != SYNC_POLICY and (pol.schema, pol.table) in src.rls:
            diffs.append(Difference(f"policy {pol.name} on {pol.schema}.{pol.table}", ", ".join(pol.roles), "POLICY",
                                    "target only"))
            steps.append(Step(f"drop policy {pol.name} on {pol.schema}.{pol.table} (not on the source)",
                              sql.SQL("DROP POLICY {} ON {}").format(sql.Identifier(pol.name),
                                                                     sql.Identifier(pol.schema, pol.table))))
    return steps


def sync_policy(schema: str, table: str, user: str) -> sql.Composable:
    return sql.SQL("CREATE POLICY {} ON {} AS PERMISSIVE FOR ALL TO {} USING (true) WITH CHECK (true)").format(
        sql.Identifier(SYNC_POLICY), sql.Identifier(schema, table), sql.Identifier(user))


_HARDWIRED = """
SELECT t.objtype, CASE WHEN e.grantee = 0 THEN 'PUBLIC' ELSE '' END || '|' || e.privilege_type || '|' || e.is_grantable
FROM pg_catalog.unnest(ARRAY['r', 'S', 'f', 'T', 'n']) t(objtype),
     pg_catalog.aclexplode(pg_catalog.acldefault(
        CASE t.objtype WHEN 'S' THEN 's' ELSE t.objtype END::"char", 10::oid)) e
"""


def _hardwired_table(conn: psycopg.Connection[Any]) -> dict[str, set[Grant]]:
    """acldefault per object type on this server, the owner as '' (it differs from major to major)."""
    table: dict[str, set[Grant]] = {k: set() for k in _DEFAULT_KINDS}
    for objtype, item in conn.execute(_HARDWIRED).fetchall():
        table[objtype] |= _grants([item])
    conn.rollback()
    return table


def plan(source: psycopg.Connection[Any], target: psycopg.Connection[Any], opts: Options) -> Plan:
    """Everything the target needs so the application works there as on the source: roles first, then (with
    opts.objects) owners, privileges, default privileges, row level security and database settings.
    `target` is the master's connection."""
    schemas = list(opts.schemas) or None
    src = read_side(source, schemas, opts.exclude_tables, opts.source_project_roles)
    _add_stopped(src, opts.write_stops.get("source", []))
    result = plan_roles(source, target, src, opts)
    if opts.objects:
        tgt = read_side(target, schemas, opts.exclude_tables)
        _add_stopped(tgt, opts.write_stops.get("target", []))
        steps, diffs = compare(src, tgt, opts, target.info.dbname, _hardwired_table(target))
        result.steps += steps
        result.differences += diffs
    return result


def plan_removal(target: psycopg.Connection[Any], schemas: Iterable[str] = ()) -> Plan:
    """What cleanup removes of this module's work: the sync policy on every table. Roles, owners and
    privileges stay: they are the application's now."""
    rows = target.execute(
        "SELECT n.nspname, c.relname FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE p.polname = %s "
        "AND (%s::text[] IS NULL OR n.nspname = ANY(%s)) ORDER BY 1, 2",
        (SYNC_POLICY, list(schemas) or None, list(schemas) or None)).fetchall()
    target.rollback()
    return Plan(steps=[Step(f"drop policy {SYNC_POLICY} on {s}.{t}", sql.SQL("DROP POLICY {} ON {}").format(
        sql.Identifier(SYNC_POLICY), sql.Identifier(s, t))) for s, t in rows])


def _add_stopped(side: Side, stops: Iterable[Mapping[str, Any]]) -> None:
    for e in stops:
        obj = side.objects.get(("table", e["schema"], e["table"], ""))
        if obj is not None:
            obj.grants |= {(e["grantee"], p, False) for p in e["privileges"]}


def apply(target: psycopg.Connection[Any], p: Plan) -> list[str]:
    """Run the plan on the target in one transaction (optional steps in savepoints: their failures become
    warnings). Refuses to start while the plan has problems. Returns the warnings."""
    p.raise_if_problems()
    warnings = list(p.warnings)
    with target.transaction():
        for step in p.steps:
            if not step.optional:
                try:
                    target.execute(step.statement)
                except psycopg.Error as exc:
                    raise AccessError("roles and privileges were not changed on the target",
                                      [f"{step.what}: {exc.diag.message_primary or exc}"]) from exc
                continue
            try:
                with target.transaction():
                    target.execute(step.statement)
            except psycopg.Error as exc:
                warnings.append(f"{step.what}: not allowed on the target ({exc.diag.message_primary}); set it "
                                "in the parameter group or by hand if the application needs it")
    return warnings


def carry_over(source: Mapping[str, Any], target: Mapping[str, Any], req: Mapping[str, Any],
               check: bool = False) -> dict[str, Any]:
    """One run of the ge_access module, or of `great-escape access` in the restore's job: plan from the
    `source` (its admin) to the `target` (the master), then apply unless `check`. `req` holds the module's
    options (sync_user, role_map, application_roles, source_sync_user, schemas, exclude_tables, objects,
    state, migration_name and the sync user's password, or a `passfile` in `target` that has it).
    Returns the module's result; statements that set a password are withheld from `queries`."""
    from . import state  # state -> capture -> access: imported on use

    stops: Mapping[str, list[dict[str, Any]]] = {}
    if req.get("migration_name"):
        sync = {**target, "user": req["sync_user"], "password": req.get("sync_password")}
        with db.connect(sync, "access state") as conn:
            stops = state.read_cutover(conn, req["migration_name"])["write_stops"]
    opts = Options(
        role_map={str(k): str(v) for k, v in (req.get("role_map") or {}).items()},
        application_roles=tuple(req.get("application_roles") or ()),
        project_roles=(target["user"], req["sync_user"]),
        source_project_roles=tuple(r for r in [req.get("source_sync_user")] if r), sync_user=req["sync_user"],
        schemas=tuple(req.get("schemas") or ()), exclude_tables=tuple(req.get("exclude_tables") or ()),
        objects=req.get("objects", True), write_stops=stops)
    with db.connect(source, "access") as src, db.connect(target, "access") as tgt:
        if req.get("state", "present") == "present":
            p = plan(src, tgt, opts)
        else:
            p = plan_removal(tgt, opts.schemas)
        p.raise_if_problems()
        warnings = p.warnings if check else apply(tgt, p)
        queries = p.queries(tgt)
    return {"changed": p.changed, "plan": p.describe(), "queries": queries,
            "differences": [str(d) for d in p.differences], "roles_created": p.roles_created,
            "roles_existing": p.roles_existing, "passwords_needed": p.passwords_needed, "warnings_found": warnings}


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("access", help="give the target the source's roles, owners and privileges (what the "
                            "ge_access module does; the restore's job runs it after post-data)")
    parser.add_argument("--request", required=True, metavar="FILE",
                        help="JSON: source and target (libpq parameters, passwords in their passfile) and the "
                             "ge_access options, as the restore's copy_setup step writes it")
    parser.set_defaults(func=_cli_access)


def _cli_access(args: Any) -> int:
    """Prints the result (without the statements) as one JSON line: the restore role shows it."""
    try:
        with open(args.request, encoding="utf-8") as f:
            req = json.load(f)
    except (OSError, ValueError) as exc:
        raise AccessError("the access request cannot be read", [f"{args.request}: {exc}"]) from exc
    result = carry_over(req["source"], req["target"], req)
    print(json.dumps({k: v for k, v in result.items() if k != "queries"}), flush=True)
    return 0


# ---------------------------------------------------------------- the cutover's proof


TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
SEQUENCE_PRIVILEGES = ("USAGE", "SELECT", "UPDATE")

_CAN = """
SELECT r.role, t.obj, p.priv,
       CASE %(kind)s WHEN 'table' THEN pg_catalog.has_table_privilege(r.role, t.obj, p.priv)
                     WHEN 'sequence' THEN pg_catalog.has_sequence_privilege(r.role, t.obj, p.priv)
                     ELSE pg_catalog.has_schema_privilege(r.role, t.obj, p.priv) END
FROM pg_catalog.unnest(%(roles)s::text[]) r(role)
CROSS JOIN pg_catalog.unnest(%(objs)s::text[]) t(obj)
CROSS JOIN pg_catalog.unnest(%(privs)s::text[]) p(priv)
WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles x WHERE x.rolname = r.role)
"""

Need = tuple[str, str, str, str]  # (kind, role, object, privilege)


def _can(conn: psycopg.Connection[Any], kind: str, roles: list[str], objs: list[str], privs: tuple[str, ...]
         ) -> set[tuple[str, str, str]]:
    if not roles or not objs:
        return set()
    rows = conn.execute(_CAN, {"kind": kind, "roles": roles, "objs": objs, "privs": list(privs)}).fetchall()
    return {(role, obj, priv) for role, obj, priv, ok in rows if ok}


def _sequences(conn: psycopg.Connection[Any], schemas: list[str]) -> list[str]:
    rows = conn.execute(
        "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'S' AND n.nspname = ANY(%s)", (schemas,)).fetchall()
    return [r[0] for r in rows]


@dataclass
class WriteCheck:
    """What the application roles may do on the live side, to be proven on the other one."""

    needs: set[Need]
    logins: set[str]
    role_map: dict[str, str]  # live side's role -> other side's role
    rls_tables: list[tuple[str, str]]

    def roles(self) -> list[str]:
        return sorted({role for _, role, _, _ in self.needs} | self.logins)


def required_access(conn: psycopg.Connection[Any], roles: list[str], tables: list[tuple[str, str]],
                    given_back: Iterable[Mapping[str, Any]], role_map: Mapping[str, str]) -> WriteCheck:
    """On the live side: what each application role may do on the replicated tables (their schemas and
    sequences too), counting the privileges a stopped switch recorded as revoked (`given_back`)."""
    objs = [sql.Identifier(s, t).as_string(conn) for s, t in tables]
    schemas = sorted({s for s, _ in tables})
    needs: set[Need] = set()
    for kind, names, privs in (("table", objs, TABLE_PRIVILEGES),
                               ("sequence", _sequences(conn, schemas), SEQUENCE_PRIVILEGES),
                               ("schema", schemas, ("USAGE",))):  # has_schema_privilege takes the name
        needs |= {(kind, r, o, p) for r, o, p in _can(conn, kind, roles, names, privs)}
    for e in given_back:
        if e["grantee"] in roles:
            obj = sql.Identifier(e["schema"], e["table"]).as_string(conn)
            needs |= {("table", e["grantee"], obj, p) for p in e["privileges"]}
    logins = {r[0] for r in conn.execute("SELECT rolname FROM pg_catalog.pg_roles WHERE rolcanlogin AND "
                                         "rolname = ANY(%s)", (roles,)).fetchall()}
    rls = [(s, t) for s, t, on in conn.execute(
        "SELECT n.nspname, c.relname, c.relrowsecurity FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.oid = ANY(%s::pg_catalog.regclass[])", (objs,)).fetchall() if on]
    conn.rollback()
    return WriteCheck(needs, logins, dict(role_map), rls)


def missing_access(conn: psycopg.Connection[Any], check: WriteCheck, given_back: Iterable[Mapping[str, Any]] = ()
                   ) -> list[str]:
    """On the side about to go live: each thing an application role could do on the old side and cannot do
    here (privileges to be given back by the switch, `given_back`, count as held). One line per problem,
    naming role, object and privilege."""
    mapped = {r: check.role_map.get(r, r) for r in check.roles()}
    held: set[Need] = set()
    for kind in ("table", "sequence", "schema"):
        wanted = [n for n in check.needs if n[0] == kind]
        privs = tuple(sorted({p for _, _, _, p in wanted}))
        objs = sorted({o for _, _, o, _ in wanted})
        held |= {(kind, r, o, p) for r, o, p in _can(conn, kind, sorted({mapped[r] for _, r, _, _ in wanted}),
                                                     objs, privs)}
    for e in given_back:
        obj = sql.Identifier(e["schema"], e["table"]).as_string(conn)
        held |= {("table", e["grantee"], obj, p) for p in e["privileges"]}
    problems = [f"role {mapped[r]} may {p} on {kind} {o} on the live side but not here"
                for kind, r, o, p in sorted(check.needs) if (kind, mapped[r], o, p) not in held]
    rows = conn.execute("SELECT rolname, rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)",
                        (sorted(set(mapped.values())),)).fetchall()
    here = dict(rows)
    for role in sorted(check.logins):
        if mapped[role] not in here:
            problems.append(f"role {mapped[role]} does not exist here")
        elif not here[mapped[role]]:
            problems.append(f"role {mapped[role]} can log in on the live side but not here (NOLOGIN)")
    for schema, table in check.rls_tables:
        row = conn.execute("SELECT c.relrowsecurity FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON "
                           "n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s", (schema, table)).fetchone()
        if not row or not row[0]:
            problems.append(f"table {schema}.{table} has row level security on the live side but not here")
    conn.rollback()
    return problems
