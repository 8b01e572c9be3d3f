"""Preflight: every reason the migration would fail, found before anything changes.

`run(inputs)` connects read-only to the source, the target (as the master user) and, if it already
exists, the target as the replication user, and returns a Report: `problems` (each one stops the
migration), `warnings` (worth reading, not blocking), `facts` (versions, sizes) and `estimates`
(duration of each phase from sizes and the throughput assumptions). `Report.raise_if_problems()`
turns the list into one PreflightError. Nothing here writes to any database.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql

from . import access, bigint, catalog, db, state
from .errors import ConnectError, PreflightError

# Capture and cutover use pg_partition_tree() (12+); 12, 13, 14 -> 15, 16 are measured (tests/crossversion).
MIN_SOURCE_VERSION = 120000
MIN_AURORA_TARGET_VERSION = 130000  # the oldest major Aurora PostgreSQL still runs
# source -> target majors migrated end to end by the tests (tests/crossversion, and 15 -> 15 by the rest).
MEASURED_PAIRS = ((12, 15), (12, 16), (13, 15), (13, 16), (14, 15), (14, 16), (15, 15))
KEYLESS_CHOICES = ("refuse", "copy_at_cutover")
# Extensions that come with every server and need no check on the target.
BUILTIN_EXTENSIONS = ("plpgsql",)
# How many object names a problem lists before it says "and N more".
NAME_LIMIT = 20
MB = 1024 * 1024


@dataclass(frozen=True)
class Assumptions:
    """Throughput behind the estimates and the dump size model; each one is overridable from the inventory."""

    compression_factor: float = 0.4  # dump bytes per byte of table data (pg_dump -Z 3 on typical data)
    disk_reserve_bytes: int = 1024**3  # free space that must remain after the dump is written
    dump_jobs: int = 4
    restore_jobs: int = 4
    dump_mb_s_per_job: float = 40.0  # table data read and compressed, per pg_dump job
    transfer_mb_s: float = 100.0  # compressed bytes over the network, all rsync streams together
    restore_mb_s_per_job: float = 25.0  # table data written by COPY, per pg_restore job
    index_mb_s_per_job: float = 30.0  # index bytes built in post-data, per pg_restore job
    verify_mb_s: float = 80.0  # table data checksummed on both sides
    apply_rows_s: float = 5000.0  # captured changes applied per second by the sync

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name == "disk_reserve_bytes":
                if value < 0:
                    raise PreflightError(f"preflight assumption {name} must be >= 0, not {value}", [name])
            elif value <= 0:
                raise PreflightError(f"preflight assumption {name} must be positive, not {value}", [name])


@dataclass
class Inputs:
    source: dict[str, Any]
    target: dict[str, Any]  # the master user
    replication_user: str | None = None
    replication_password: str | None = None
    schemas: list[str] | None = None
    keyless_tables: str = "refuse"
    # chunked: the schema is dumped on the replication host, the engine copies the data source -> target;
    # pg_dump: the whole dump is written on the source host and sent to the replication host (ge_copy_method).
    copy_method: str = "chunked"
    pg_dump_version: str | None = None  # output of `pg_dump --version` on the dumping host; "" if missing
    pg_restore_version: str | None = None  # output of `pg_restore --version` on the replication host
    dump_dir: str = ""
    dump_dir_free_bytes: int | None = None
    replication_dir: str = ""
    replication_dir_free_bytes: int | None = None
    assumptions: Assumptions = field(default_factory=Assumptions)
    role_map: dict[str, str] = field(default_factory=dict)  # ge_role_map
    application_roles: list[str] = field(default_factory=list)
    bigint_mode: str = "auto"  # restore_bigint and its include/exclude lists, for the plan
    bigint_include: list[str] = field(default_factory=list)
    bigint_exclude: list[str] = field(default_factory=list)
    measure_seconds: float = 2.0  # the measured read of the source that the dump estimate uses; 0: none


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    estimates: list[dict[str, Any]] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)

    def raise_if_problems(self) -> None:
        if self.problems:
            raise PreflightError(
                f"preflight found {len(self.problems)} problem(s); fix them and run preflight again: "
                + " | ".join(self.problems),
                self.problems,
            )

    def estimate_table(self) -> list[str]:
        """The estimates as fixed-width lines, for the playbook's output."""
        rows = [("phase", "estimate", "basis")]
        rows += [(e["phase"], _duration(e["seconds"]), e["basis"]) for e in self.estimates]
        width = [max(len(r[i]) for r in rows) for i in range(2)]
        return [f"{r[0]:<{width[0]}}  {r[1]:>{width[1]}}  {r[2]}" for r in rows]

    def as_dict(self) -> dict[str, Any]:
        # "warnings" is a key Ansible reserves in module results: the module returns them as "notices".
        return {"problems": self.problems, "notices": self.warnings, "facts": self.facts,
                "estimates": self.estimates, "estimate_table": self.estimate_table(), "plan": self.plan}


def run(inputs: Inputs) -> Report:
    """Run every check; a check that cannot run becomes a problem, the others still run."""
    report = Report()
    if inputs.keyless_tables not in KEYLESS_CHOICES:
        report.problems.append(f"ge_keyless_tables is {inputs.keyless_tables!r}; set it to one of "
                               f"{', '.join(KEYLESS_CHOICES)}")
    source = _open(inputs.source, "source", report)
    target = _open(inputs.target, "target (master user)", report)
    try:
        tables: list[catalog.Table] = []
        if source is not None:
            tables = _check_source(source, inputs, report)
        if target is not None:
            _check_target(target, inputs, tables if source is not None else None, report)
        if target is not None and inputs.replication_user:
            _check_replication_login(target, inputs, report)
        if source is not None and target is not None:
            _check_roles(source, target, inputs, report)
        _check_clients(inputs, report)
        _check_versions(source, target, tables, report)
        if source is not None:
            _check_disk(inputs, report)
            _measure_read(source, inputs, tables, report)
            _estimate(inputs, report)
            _plan(source, inputs, tables, report)
    finally:
        for conn in (source, target):
            if conn is not None:
                conn.close()
    return report


def _open(params: dict[str, Any], role: str, report: Report) -> psycopg.Connection[Any] | None:
    try:
        conn = db.connect(params, "preflight", autocommit=True)
    except ConnectError as exc:
        report.problems.append(f"{role}: {exc}")
        return None
    # Autocommit, so one failed check does not abort the others; every statement still runs read-only.
    conn.execute("SET default_transaction_read_only = on")
    if not db.ssl_in_use(conn) and not str(conn.info.host).startswith("/"):
        report.warnings.append(
            f"{role} {db.describe(params)}: the connection is not encrypted (sslmode "
            f"{params.get('sslmode') or 'prefer'}); set sslmode verify-full and sslrootcert for this side "
            "(ge_source_sslmode/ge_target_sslmode, ge_source_sslrootcert/ge_target_sslrootcert) and have the "
            "server require TLS (Aurora: rds.force_ssl = 1)")
    return conn


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:NAME_LIMIT])
    return shown + (f" and {len(names) - NAME_LIMIT} more" if len(names) > NAME_LIMIT else "")


def _one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def _check(report: Report, what: str, where: str, func: Any, *args: Any) -> Any:
    """Run one check; a database error becomes a problem of that check instead of stopping preflight."""
    try:
        return func(*args)
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc).splitlines()[0]
        report.problems.append(f"{where}: cannot check {what}: {message}")
        return None


# --- source ---------------------------------------------------------------------------------------------

_SOURCE_FACTS = """
SELECT pg_catalog.current_setting('server_version_num')::int,
       pg_catalog.current_setting('server_version'),
       pg_catalog.pg_is_in_recovery(),
       (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
"""

_DATABASE_LOCALE = """
SELECT pg_catalog.pg_encoding_to_char(encoding), datcollate, datctype
FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()
"""

# System collations (pg_catalog: libc locales, ICU) the migrated columns use, with one column as an example;
# pg_dump names them in CREATE TABLE but does not create them, so the target must have each one.
_COLUMN_COLLATIONS = """
SELECT co.collname, min(pg_catalog.format('%%I.%%I.%%I', n.nspname, c.relname, a.attname))
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
WHERE a.attrelid = ANY(%s::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
  AND co.collnamespace = 'pg_catalog'::regnamespace AND co.collname <> 'default'
GROUP BY 1 ORDER BY 1
"""

_TARGET_COLLATIONS = """
SELECT collname FROM pg_catalog.pg_collation
WHERE collnamespace = 'pg_catalog'::regnamespace AND collname = ANY(%s)
  AND collencoding IN (-1, (SELECT encoding FROM pg_catalog.pg_database
                            WHERE datname = pg_catalog.current_database()))
"""

_NOT_OWNED = """
SELECT n.nspname || '.' || c.relname
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = ANY(%s::oid[]) AND NOT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')
ORDER BY 1
"""

# Every relation of the replicated schemas, partitions included: the dump's data and the restore's indexes.
_SIZES = """
SELECT c.relkind::text, c.relpersistence::text, c.reltablespace <> 0, n.nspname || '.' || c.relname,
       CASE WHEN c.relkind IN ('r', 'm') THEN pg_catalog.pg_table_size(c.oid) ELSE 0 END,
       CASE WHEN c.relkind IN ('r', 'm') THEN pg_catalog.pg_indexes_size(c.oid) ELSE 0 END,
       GREATEST(c.reltuples, 0)::int8
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm', 'f', 'p')
  AND n.nspname <> ALL(%(excluded)s) AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
  AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'
  AND (%(schemas)s::text[] IS NULL OR n.nspname = ANY(%(schemas)s))
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
"""

# Partitioned tables: the sizes and row estimates of their leaf partitions, at every level.
_PARTITION_SIZES = """
SELECT n.nspname || '.' || c.relname, sum(pg_catalog.pg_table_size(p.relid))::int8,
       sum(pg_catalog.pg_indexes_size(p.relid))::int8, sum(GREATEST(pc.reltuples, 0))::int8
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL pg_catalog.pg_partition_tree(c.oid) p
JOIN pg_catalog.pg_class pc ON pc.oid = p.relid
WHERE c.oid = ANY(%s::oid[]) AND p.isleaf
GROUP BY 1
"""

# Changes per second since the statistics were reset (or the server started): the load the sync must follow.
_CHANGE_RATE = """
SELECT (tup_inserted + tup_updated + tup_deleted)::float8
       / GREATEST(EXTRACT(EPOCH FROM now() - COALESCE(stats_reset, pg_catalog.pg_postmaster_start_time())), 1)
FROM pg_catalog.pg_stat_database WHERE datname = current_database()
"""


def _check_source(conn: psycopg.Connection[Any], inputs: Inputs, report: Report) -> list[catalog.Table]:
    where = f"source {db.describe(inputs.source)}"
    facts = _check(report, "the server version", where, lambda: conn.execute(_SOURCE_FACTS).fetchone())
    if facts is None:
        return []
    version_num, version, in_recovery, superuser = facts
    report.facts.update(source_version=version, source_version_num=version_num,
                        source_superuser=bool(superuser))
    if version_num < MIN_SOURCE_VERSION:
        report.problems.append(f"{where}: PostgreSQL {version} is too old; great-escape needs "
                               f"{MIN_SOURCE_VERSION // 10000} or newer (capture uses pg_partition_tree). "
                               "Upgrade the source in place first")
    if in_recovery:
        report.problems.append(f"{where}: the server is a standby (in recovery); capture triggers can "
                               "only be installed on the primary. Point ge_source_host at the primary")
    tables = _check(report, "the tables", where, catalog.list_tables, conn, inputs.schemas or None) or []
    report.facts["tables"] = len(tables)
    if inputs.schemas:
        present = {t.schema for t in tables}
        missing = [s for s in inputs.schemas if s not in present]
        if missing:
            report.warnings.append(f"{where}: schema(s) in ge_schemas without tables: {_names(missing)}")
    if not superuser and tables:
        not_owned = _check(report, "table ownership", where,
                           lambda: [r[0] for r in conn.execute(_NOT_OWNED, ([t.relid for t in tables],))])
        if not_owned:
            report.problems.append(
                f"{where}: user {inputs.source.get('user')} is neither a superuser nor the owner of "
                f"{len(not_owned)} table(s): {_names(not_owned)}. "
                "Use the owner or a superuser as ge_source_user"
            )
    keyless = [t.qualname for t in tables if not t.key]
    report.facts["keyless_tables"] = keyless
    if keyless and inputs.keyless_tables == "refuse":
        report.problems.append(
            f"{where}: {len(keyless)} table(s) have no primary key and no unique index on NOT NULL columns: "
            f"{_names(keyless)}. Add a primary key, or set ge_keyless_tables: copy_at_cutover to copy them "
            "whole during the cutover downtime"
        )
    elif keyless:
        report.warnings.append(f"{where}: {len(keyless)} table(s) without a key will be copied whole "
                               f"at cutover (longer downtime): {_names(keyless)}")
    large_objects = _check(report, "large objects", where, _one, conn,
                           "SELECT count(*) FROM pg_catalog.pg_largeobject_metadata")
    report.facts["large_objects"] = large_objects
    if large_objects:
        report.problems.append(_large_objects_problem(conn, where, large_objects, tables))
    report.facts["source_locale"] = _check(report, "the database locale", where,
                                           lambda: list(conn.execute(_DATABASE_LOCALE).fetchone() or []))
    report.facts["source_collations"] = _check(report, "column collations", where, lambda: dict(conn.execute(
        _COLUMN_COLLATIONS, ([t.relid for t in tables],)).fetchall())) or {}
    extensions = _check(report, "extensions", where, lambda: dict(conn.execute(
        "SELECT extname, extversion FROM pg_catalog.pg_extension WHERE extname <> ALL(%s) ORDER BY 1",
        (list(BUILTIN_EXTENSIONS),)).fetchall()))
    report.facts["source_extensions"] = extensions or {}
    sizes = _check(report, "table sizes", where, lambda: conn.execute(
        _SIZES, {"excluded": list(catalog.SYSTEM_SCHEMAS + catalog.PROJECT_SCHEMAS),
                 "schemas": inputs.schemas or None}).fetchall())
    if sizes is not None:
        _size_facts(sizes, where, report)
    rate = _check(report, "the change rate", where, _one, conn, _CHANGE_RATE)
    report.facts["changes_per_second"] = round(rate or 0.0, 1)
    return tables


def _size_facts(rows: list[tuple[Any, ...]], where: str, report: Report) -> None:
    report.facts["table_sizes"] = {r[3]: [r[4], r[5], r[6]] for r in rows if r[0] in ("r", "p", "m")}
    report.facts["data_bytes"] = sum(r[4] for r in rows)
    report.facts["index_bytes"] = sum(r[5] for r in rows)
    report.facts["rows_estimate"] = sum(r[6] for r in rows if r[0] == "r")
    flagged = {
        "unlogged": ([r[3] for r in rows if r[1] == "u" and r[0] in ("r", "p")],
                     "unlogged table(s) are emptied by a crash of the source; they are migrated like "
                     "the others: "),
        "foreign": ([r[3] for r in rows if r[0] == "f"],
                    "foreign table(s) are restored as definitions only; their data stays on the "
                    "remote server, which Aurora must reach through its own foreign data wrapper: "),
        "matview": ([r[3] for r in rows if r[0] == "m"],
                    "materialized view(s) are not captured; refresh them on the target after cutover: "),
        "tablespace": ([r[3] for r in rows if r[2]],
                       "relation(s) in a non-default tablespace; Aurora has none, restore them with "
                       "--no-tablespaces: "),
    }
    for names, text in flagged.values():
        if names:
            report.warnings.append(f"{where}: {len(names)} {text}{_names(sorted(names))}")


# --- target ---------------------------------------------------------------------------------------------

_TARGET_FACTS = """
SELECT pg_catalog.current_setting('server_version_num')::int,
       pg_catalog.current_setting('server_version'),
       pg_catalog.has_database_privilege(current_user, current_database(), 'CREATE'),
       (SELECT rolcreaterole OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user),
       EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s)
"""


def _check_target(conn: psycopg.Connection[Any], inputs: Inputs, tables: list[catalog.Table] | None,
                  report: Report) -> None:
    where = f"target {db.describe(inputs.target)}"
    facts = _check(report, "the server version", where,
                   lambda: conn.execute(_TARGET_FACTS, (inputs.replication_user or "",)).fetchone())
    if facts is None:
        return
    version_num, version, can_create, can_create_role, repl_exists = facts
    report.facts.update(target_version=version, target_version_num=version_num,
                        replication_user_exists=bool(repl_exists))
    source_num = report.facts.get("source_version_num")
    if source_num and version_num // 10000 < source_num // 10000:
        report.problems.append(f"{where}: PostgreSQL {version} is older than the source "
                               f"({report.facts['source_version']}); create the target with the same or a "
                               "newer major version")
    if not can_create:
        report.problems.append(f"{where}: user {inputs.target.get('user')} may not CREATE in the database; "
                               "use the master user (the database owner) as ge_target_master_user")
    if inputs.replication_user and not repl_exists and not can_create_role:
        report.problems.append(f"{where}: the replication user {inputs.replication_user} does not exist and "
                               f"{inputs.target.get('user')} lacks CREATEROLE to create it; create it or use "
                               "the master user")
    _check_locale(conn, where, report)
    available = _check(report, "available extensions", where, lambda: {r[0] for r in conn.execute(
        "SELECT name FROM pg_catalog.pg_available_extensions")})
    wanted = report.facts.get("source_extensions") or {}
    if available is not None and wanted:
        missing = missing_extensions(wanted, available)
        if missing:
            report.problems.append(
                f"{where}: extension(s) used on the source are not available on the target: "
                f"{_names(missing)}. Install them on the target (Aurora: check the supported extensions of "
                "this engine version) or remove them from the source"
            )
    if tables:
        with_data = _check(report, "existing data", where, _tables_with_data, conn, tables)
        ours = conn.execute("SELECT pg_catalog.to_regnamespace(%s) IS NOT NULL", (state.SCHEMA,)).fetchone()
        if with_data and ours and ours[0]:
            # The prepare-target phase ran here: this is a migration run again, and the rows are its own.
            report.warnings.append(f"{where}: {len(with_data)} table(s) already hold rows from this migration "
                                   "(schema great_escape exists): the phases carry on from where they stopped")
        elif with_data:
            report.problems.append(
                f"{where}: {len(with_data)} table(s) to migrate already hold rows on the target: "
                f"{_names(with_data)}. Migrate into an empty database: drop or empty them (or point "
                "ge_target_db at a new database)"
            )


def _check_locale(conn: psycopg.Connection[Any], where: str, report: Report) -> None:
    """Same encoding (or rows fail to convert), same collation (or text sorts differently), every column
    collation present (or the pre-data restore fails)."""
    source = report.facts.get("source_locale")
    target = _check(report, "the database locale", where, lambda: list(conn.execute(_DATABASE_LOCALE).fetchone()))
    if not source or not target:
        return
    create = (f"create the target database with ENCODING '{source[0]}' LC_COLLATE '{source[1]}' "
              f"LC_CTYPE '{source[2]}' TEMPLATE template0 and point ge_target_db at it")
    if source[0] != target[0]:
        report.problems.append(f"{where}: the database encoding is {target[0]}, the source's is {source[0]}; "
                               f"{create}")
    elif source[1:] != target[1:]:
        report.warnings.append(
            f"{where}: the database collation/ctype is {target[1]}/{target[2]}, the source's {source[1]}/"
            f"{source[2]}: text sorts and compares differently after the move (ORDER BY, indexes, verify's "
            f"text-key ranges report false differences). Unless that is intended, {create}")
    used: dict[str, str] = report.facts.get("source_collations") or {}
    present = _check(report, "collations", where, lambda: {r[0] for r in conn.execute(
        _TARGET_COLLATIONS, (list(used),))}) if used else set()
    missing = [f'"{name}" (e.g. {column})' for name, column in used.items() if present is not None
               and name not in present]
    if missing:
        report.problems.append(f"{where}: collation(s) used by source columns do not exist on the target: "
                               f"{_names(missing)}. The restore would fail on them: give those columns a "
                               "collation the target provides (ALTER TABLE ... ALTER COLUMN ... TYPE ... COLLATE) "
                               "on the source first, or use a target engine version that provides them")


def missing_extensions(source: dict[str, str], available: set[str]) -> list[str]:
    """Source extensions the target cannot CREATE."""
    return sorted(name for name in source if name not in available)


def _tables_with_data(conn: psycopg.Connection[Any], tables: list[catalog.Table]) -> list[str]:
    names = [t.qualname for t in tables]
    existing = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname || '.' || c.relname = ANY(%s) ORDER BY 1, 2",
        (names,)).fetchall()
    found = []
    for schema, name in existing:
        query = sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.Identifier(schema, name))
        if conn.execute(query).fetchone()[0]:  # type: ignore[index]
            found.append(f"{schema}.{name}")
    return found


def _check_roles(source: psycopg.Connection[Any], target: psycopg.Connection[Any], inputs: Inputs,
                 report: Report) -> None:
    """Every role the application's objects depend on: on the target already, or created by prepare-target."""
    opts = access.Options(role_map=inputs.role_map, application_roles=tuple(inputs.application_roles),
                          project_roles=tuple(r for r in (inputs.target.get("user"), inputs.replication_user) if r),
                          schemas=tuple(inputs.schemas or ()), objects=False)
    plan = _check(report, "the roles the application depends on", f"source {db.describe(inputs.source)}",
                  access.plan, source, target, opts)
    if plan is None:
        return
    report.problems += plan.problems
    report.warnings += plan.warnings
    report.facts.update(roles_to_create=plan.roles_created, roles_on_target=plan.roles_existing,
                        passwords_needed=plan.passwords_needed)
    if plan.passwords_needed:
        report.warnings.append(
            f"login role(s) {', '.join(plan.passwords_needed)} will be created on the target without a password: "
            "the source user may not read pg_authid. Set them on the target (ALTER ROLE ... PASSWORD) before cutover")


def _check_replication_login(target: psycopg.Connection[Any], inputs: Inputs, report: Report) -> None:
    if not report.facts.get("replication_user_exists"):
        report.warnings.append(f"the replication user {inputs.replication_user} does not exist on the "
                               "target yet; the prepare-target phase creates it")
        return
    params = {**inputs.target, "user": inputs.replication_user, "password": inputs.replication_password}
    try:
        db.connect(params, "preflight").close()
    except ConnectError as exc:
        report.problems.append(f"target (replication user): {exc}")


# --- clients, disk, estimates ---------------------------------------------------------------------------

_CLIENT_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def client_major(version_output: str) -> int | None:
    """Major version from `pg_dump --version` output, e.g. 'pg_dump (PostgreSQL) 15.10 (Debian ...)' -> 15."""
    match = _CLIENT_VERSION.search(version_output or "")
    if not match:
        return None
    major = int(match.group(1))
    # Before 10 the major version had two parts (9.6).
    return major * 100 + int(match.group(2) or 0) if major < 10 else major * 100


def _check_clients(inputs: Inputs, report: Report) -> None:
    servers = [report.facts.get("source_version_num"), report.facts.get("target_version_num")]
    # server_version_num 150010 -> 1500, 90624 -> 906: the same scale as client_major().
    majors = [(v // 10000 * 100 if v >= 100000 else v // 100) for v in servers if v]
    needed = max(majors) if majors else None
    dumps_on = "replication" if inputs.copy_method == "chunked" else "source"
    for name, output, host in (("pg_dump", inputs.pg_dump_version, dumps_on),
                               ("pg_restore", inputs.pg_restore_version, "replication")):
        if output is None:
            continue  # not checked (the host does not exist yet)
        major = client_major(output)
        report.facts[f"{name}_version"] = output.strip()
        if major is None:
            report.problems.append(f"{name} was not found or did not report a version on the {host} host "
                                   f"({output.strip()[:80]!r}); install the PostgreSQL client of the newest "
                                   "server major version (source or target) there")
        elif needed and major < needed:
            report.problems.append(f"{name} on the {host} host is {_major_text(major)}, older than the "
                                   f"newest server ({_major_text(needed)}); install the PostgreSQL "
                                   f"{_major_text(needed)} client there")


def _major_text(major: int) -> str:
    return str(major // 100) if major >= 1000 else f"{major // 100}.{major % 100}"


def _check_disk(inputs: Inputs, report: Report) -> None:
    a = inputs.assumptions
    data = report.facts.get("data_bytes")
    if data is None:
        return
    estimate = int(data * a.compression_factor)
    required = estimate + a.disk_reserve_bytes
    report.facts.update(dump_estimate_bytes=estimate, disk_required_bytes=required)
    why = (f"dump estimate {human_bytes(estimate)} = {human_bytes(data)} of table data x compression factor "
           f"{a.compression_factor}, plus a reserve of {human_bytes(a.disk_reserve_bytes)}")
    for var, need in disk_needs(inputs, required).items():
        path, free = {"ge_dump_dir": (inputs.dump_dir, inputs.dump_dir_free_bytes),
                      "ge_replication_dir": (inputs.replication_dir, inputs.replication_dir_free_bytes)}[var]
        if free is None:
            continue
        report.facts[f"{var.removeprefix('ge_')}_free_bytes"] = free
        if free < need:
            report.problems.append(
                f"not enough disk at {var} {path}: {human_bytes(free)} free, {human_bytes(need)} needed "
                f"({why if need == required else 'the schema dump, within a reserve of ' + human_bytes(need)}). "
                f"Free space there or point {var} at a larger filesystem"
            )


def disk_needs(inputs: Inputs, required: int) -> dict[str, int]:
    """Bytes each dump directory needs: the whole dump on both hosts with pg_dump; with the chunked copy the
    source host writes nothing and the replication host holds the schema only (the reserve covers it)."""
    if inputs.copy_method == "chunked":
        return {"ge_replication_dir": inputs.assumptions.disk_reserve_bytes}
    return {"ge_dump_dir": required, "ge_replication_dir": required}


class _ReadEnough(Exception):
    """Ends the measured read. psycopg cancels the rest of a COPY TO only when its block ends with an exception;
    a `break` leaves the connection inside the COPY, and every later query on it fails ("another command is
    already in progress")."""


def _measure_read(conn: psycopg.Connection[Any], inputs: Inputs, tables: list[catalog.Table],
                  report: Report) -> None:
    """Read the biggest table with COPY for up to `measure_seconds` (rows discarded, nothing written): the
    source's read rate per job, which the dump estimate uses instead of the assumption."""
    sizes = report.facts.get("table_sizes") or {}
    biggest = max(tables, key=lambda t: (sizes.get(t.qualname) or [0])[0], default=None)
    if inputs.measure_seconds <= 0 or biggest is None or not (sizes.get(biggest.qualname) or [0])[0]:
        return
    started, moved = time.monotonic(), 0
    try:
        with conn.cursor().copy(sql.SQL("COPY (SELECT * FROM {}) TO STDOUT").format(biggest.ident)) as copy:
            for block in copy:
                moved += len(block)
                if time.monotonic() - started >= inputs.measure_seconds:
                    raise _ReadEnough
    except _ReadEnough:
        pass
    except psycopg.Error as exc:
        report.warnings.append(f"could not measure a read of {biggest.qualname}: {exc.diag.message_primary}; "
                               "the dump estimate uses the assumed rate")
        return
    elapsed = time.monotonic() - started
    if moved and elapsed > 0:
        rate = moved / elapsed / MB
        report.facts["measured_read_mb_s"] = round(rate, 1)
        report.facts["measured_read"] = f"{human_bytes(moved)} of {biggest.qualname} in {elapsed:.1f} s"


def _plan(conn: psycopg.Connection[Any], inputs: Inputs, tables: list[catalog.Table], report: Report) -> None:
    """What the migration will do, table by table, and the disk it needs: the plan a check-mode run prints."""
    plan = _check(report, "the int -> bigint changes", f"source {db.describe(inputs.source)}",
                  bigint.plan_bigint, conn, inputs.schemas or None, inputs.bigint_mode, inputs.bigint_include,
                  inputs.bigint_exclude)
    widened: dict[str, list[str]] = {}
    for change in plan.columns if plan else []:
        widened.setdefault(f"{change.schema}.{change.table}", []).append(change.column)
    sizes = dict(report.facts.get("table_sizes") or {})
    partitioned = [t for t in tables if t.partitioned]
    if partitioned:  # a partitioned table holds no rows itself: its size is its partitions'
        sizes.update(_check(report, "partition sizes", f"source {db.describe(inputs.source)}", lambda: {
            name: [data, index, count] for name, data, index, count in conn.execute(_PARTITION_SIZES, (
                [t.relid for t in partitioned],)).fetchall()}) or {})
    rows = [("table", "size", "rows", "key", "int -> bigint")]
    for t in sorted(tables, key=lambda t: (-(sizes.get(t.qualname) or [0])[0], t.qualname)):
        data, index, count = sizes.get(t.qualname, [0, 0, 0])
        key = ", ".join(t.key) if t.key else ("none: copied whole at cutover" if inputs.keyless_tables
                                               == "copy_at_cutover" else "none: refused")
        rows.append((t.qualname, f"{human_bytes(data)} + {human_bytes(index)} idx", f"~{count}", key,
                     ", ".join(widened.get(t.qualname, [])) or "-"))
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    report.plan = [f"{r[0]:<{width[0]}}  {r[1]:>{width[1]}}  {r[2]:>{width[2]}}  {r[3]:<{width[3]}}  {r[4]}"
                   for r in rows]
    if plan:
        report.plan += [f"bigint: {len(plan.columns)} column(s), {len(plan.sequences)} sequence(s) widened"] + [
            f"bigint: {w}" for w in plan.warnings]
    required = report.facts.get("disk_required_bytes")
    if required is not None:
        places = {"ge_dump_dir": ("source host", inputs.dump_dir, inputs.dump_dir_free_bytes),
                  "ge_replication_dir": ("replication host", inputs.replication_dir, inputs.replication_dir_free_bytes)}
        for var, need in disk_needs(inputs, required).items():
            label, path, free = places[var]
            report.plan.append(f"disk needed on the {label} at {path}: {human_bytes(need)}"
                               + (f" ({human_bytes(free)} free)" if free is not None else ""))
        if inputs.copy_method == "chunked":
            report.plan.append("disk needed on the source host: none (the chunked copy writes no dump there)")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return str(timedelta(seconds=round(seconds)))


def _estimate(inputs: Inputs, report: Report) -> None:
    data = report.facts.get("data_bytes")
    if data is None:
        return
    a = inputs.assumptions
    index = report.facts.get("index_bytes", 0)
    mb = data / MB
    read_mb_s = report.facts.get("measured_read_mb_s") or a.dump_mb_s_per_job
    measured = (f" (measured: {report.facts['measured_read']})" if "measured_read" in report.facts
                else " (assumed)")
    if inputs.copy_method == "chunked":
        # Read, link and load run at once: the slowest of them sets the pace; the link carries the rows
        # uncompressed (COPY's text).
        pace = min(read_mb_s * a.restore_jobs, a.restore_mb_s_per_job * a.restore_jobs, a.transfer_mb_s)
        copying = [{"phase": "copy data", "seconds": data / (pace * MB),
                    "basis": f"{mb:.0f} MiB at {pace:g} MiB/s, the least of: read {read_mb_s:g} MiB/s x "
                             f"{a.restore_jobs} jobs{measured}, load {a.restore_mb_s_per_job:g} MiB/s x "
                             f"{a.restore_jobs} jobs, link {a.transfer_mb_s:g} MiB/s"}]
    else:
        dump_bytes = data * a.compression_factor
        copying = [
            {"phase": "dump", "seconds": data / (read_mb_s * MB * a.dump_jobs),
             "basis": f"{mb:.0f} MiB at {read_mb_s:g} MiB/s x {a.dump_jobs} jobs{measured}"},
            {"phase": "transfer", "seconds": dump_bytes / (a.transfer_mb_s * MB),
             "basis": f"{dump_bytes / MB:.0f} MiB compressed at {a.transfer_mb_s:g} MiB/s"},
            {"phase": "restore data", "seconds": data / (a.restore_mb_s_per_job * MB * a.restore_jobs),
             "basis": f"{mb:.0f} MiB at {a.restore_mb_s_per_job:g} MiB/s x {a.restore_jobs} jobs"}]
    indexes = index / (a.index_mb_s_per_job * MB * a.restore_jobs)
    verify = data / (a.verify_mb_s * MB)
    # Changes made while the data is copied are applied afterwards, while new ones keep coming.
    rate = report.facts.get("changes_per_second", 0.0)
    backlog = rate * (sum(e["seconds"] for e in copying) + indexes)
    catch_up = backlog / (a.apply_rows_s - rate) if a.apply_rows_s > rate else None
    if catch_up is None:
        report.warnings.append(f"the source changes {rate:.0f} rows/s, faster than the assumed apply rate "
                               f"{a.apply_rows_s:.0f} rows/s: the sync would never catch up; measure the "
                               "real apply rate (bench/) and set preflight_apply_rows_s")
    report.estimates = copying + [
        {"phase": "restore indexes", "seconds": indexes, "basis": f"{index / MB:.0f} MiB of indexes at "
                                                                  f"{a.index_mb_s_per_job:g} MiB/s x "
                                                                  f"{a.restore_jobs} jobs"},
        {"phase": "sync catch-up", "seconds": catch_up, "basis": f"{backlog:.0f} changes ({rate:.1f}/s) at "
                                                                 f"{a.apply_rows_s:g} rows/s"},
        {"phase": "verify", "seconds": verify, "basis": f"{mb:.0f} MiB at {a.verify_mb_s:g} MiB/s"},
    ]
    total = sum(e["seconds"] for e in report.estimates if e["seconds"] is not None)
    report.estimates.append({"phase": "total", "seconds": total, "basis": "before cutover"})


# --- large objects --------------------------------------------------------------------------------------

# Columns that can hold large object references: type oid or the lo extension's domain, in migrated tables.
_LO_COLUMNS = """
SELECT pg_catalog.format('%%I.%%I.%%I', n.nspname, c.relname, a.attname)
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = ANY(%s::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
  AND (a.atttypid = 'pg_catalog.oid'::pg_catalog.regtype OR (t.typname = 'lo' AND t.typtype = 'd'))
ORDER BY 1
"""


def _large_objects_problem(conn: psycopg.Connection[Any], where: str, count: int,
                           tables: list[catalog.Table]) -> str:
    """Large objects are refused: no trigger sees lo_write/lo_unlink, so changes after the dump would be lost.
    The message names how many, the columns that probably reference them, and the two ways out."""
    try:
        columns = [r[0] for r in conn.execute(_LO_COLUMNS, ([t.relid for t in tables],))]
    except psycopg.Error:
        columns = []
    refs = f" (referenced from oid column(s) such as {_names(columns)})" if columns else ""
    return (f"{where}: the database holds {count} large object(s) in pg_largeobject{refs}; great-escape does not "
            "migrate them: no trigger sees lo_write() or lo_unlink(), so a change after the dump would be lost. "
            "Move them into bytea columns (add a bytea column, fill it with lo_get(<oid column>), then "
            "lo_unlink() each large object), or, if they never change during the migration, "
            "copy them yourself after cutover (pg_dump --large-objects --data-only) and remove them from the "
            "source before this migration")


# --- versions ---------------------------------------------------------------------------------------------

# What a source older than the target carries over that the target does not accept or treats differently.
_ATTRIBUTE_OPTIONS = """
SELECT DISTINCT split_part(o, '=', 1), pg_catalog.format('%%I.%%I.%%I', n.nspname, c.relname, a.attname)
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL unnest(a.attoptions) o
WHERE a.attrelid = ANY(%s::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
  AND split_part(o, '=', 1) NOT IN ('n_distinct', 'n_distinct_inherited')
ORDER BY 1, 2
"""

_PUBLIC_MAY_CREATE = """
SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace s,
                          pg_catalog.aclexplode(COALESCE(s.nspacl, pg_catalog.acldefault('n', s.nspowner))) a
               WHERE s.nspname = 'public' AND a.grantee = 0 AND a.privilege_type = 'CREATE')
"""

_AURORA_LIKE = "SELECT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'rds_superuser')"


def version_pair_findings(source_num: int | None, target_num: int | None,
                          aurora_like: bool) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a source/target pair of server_version_num values (120022, 160002).
    A target older than the source is _check_target's, a pg_dump older than either server _check_clients'."""
    problems: list[str] = []
    warnings: list[str] = []
    if target_num and aurora_like and target_num < MIN_AURORA_TARGET_VERSION:
        problems.append(f"the target runs PostgreSQL {target_num // 10000}; Aurora PostgreSQL runs "
                        f"{MIN_AURORA_TARGET_VERSION // 10000} and newer: create the target with a supported "
                        "engine version (the same major as the source or newer)")
    if source_num and target_num and source_num // 10000 <= target_num // 10000:
        pair = (source_num // 10000, target_num // 10000)
        if pair not in MEASURED_PAIRS:
            measured = ", ".join(f"{s} -> {t}" for s, t in MEASURED_PAIRS)
            warnings.append(f"PostgreSQL {pair[0]} -> {pair[1]} is not among the pairs the tests migrate end to end "
                            f"({measured}): rehearse the migration on a copy first")
    return problems, warnings


def _check_versions(source: psycopg.Connection[Any] | None, target: psycopg.Connection[Any] | None,
                    tables: list[catalog.Table], report: Report) -> None:
    """Unsupported version pairs, and what differs between the two majors that the migration carries over."""
    source_num, target_num = report.facts.get("source_version_num"), report.facts.get("target_version_num")
    aurora_like = bool(target is not None and _check(report, "the target kind", "target", _one, target, _AURORA_LIKE))
    report.facts["target_aurora_like"] = aurora_like
    problems, warnings = version_pair_findings(source_num, target_num, aurora_like)
    report.problems += problems
    report.warnings += warnings
    if source is None or target is None or not source_num or not target_num:
        return
    # A release of another major (or an older one of the same) may not know an option the source's sets.
    if source_num // 10000 != target_num // 10000 or target_num < source_num:
        options = _check(report, "column attribute options", "source", lambda: source.execute(
            _ATTRIBUTE_OPTIONS, ([t.relid for t in tables],)).fetchall()) or []
        by_option: dict[str, list[str]] = {}
        for option, column in options:
            by_option.setdefault(option, []).append(column)
        for option, columns in by_option.items():
            report.warnings.append(
                f"source: {len(columns)} column(s) carry the attribute option {option} ({_names(columns)}), which "
                f"pg_dump restores verbatim (ALTER TABLE ... ALTER COLUMN ... SET ({option}=...)); a target release "
                "that does not know it stops the pre-data restore with 'unrecognized parameter'. Use a target "
                "release at least as recent as the source's, or reset the option on the source")
    if source_num < 150000 <= target_num:
        src_create = _check(report, "schema public privileges", "source", _one, source, _PUBLIC_MAY_CREATE)
        tgt_create = _check(report, "schema public privileges", "target", _one, target, _PUBLIC_MAY_CREATE)
        if src_create and not tgt_create:
            report.warnings.append(
                f"PUBLIC may CREATE in schema public on the source (the default before PostgreSQL 15) but not on "
                f"the target ({target_num // 10000}); the restore does not copy privileges. If application roles "
                "create objects there, grant it on the target (GRANT CREATE ON SCHEMA public TO <role>)")
