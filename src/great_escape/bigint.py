"""int -> bigint key migration, applied on the target between pre-data and data (tables still empty).

Which columns: every int4 column that is (part of) a primary key, every int4 column whose foreign
key references such a column, plus `include`, minus `exclude` (entries `schema.table` or
`schema.table.column`), minus partition key columns (their type cannot change; a warning says so).
Sequences owned by a converted column (serial or identity) become bigint too. Keys and foreign keys are
read from the SOURCE catalog: on the target they only appear with post-data, after the data is loaded,
when a type change would rewrite every table. Views over the converted tables are dropped and created
again around the type change (PostgreSQL refuses to change a column a view reads), in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .catalog import PROJECT_SCHEMAS, SYSTEM_SCHEMAS
from .errors import ConfigError, RestoreError

MODES = ("auto", "none")

_INT4_COLUMNS = """
SELECT c.oid::int8, n.nspname, c.relname, a.attnum, a.attname
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND a.attnum > 0 AND NOT a.attisdropped AND a.atttypid = 'pg_catalog.int4'::pg_catalog.regtype
  AND n.nspname <> ALL(%(excluded)s) AND n.nspname NOT LIKE 'pg\\_%%'
  AND (%(schemas)s::text[] IS NULL OR n.nspname = ANY(%(schemas)s))
ORDER BY n.nspname, c.relname, a.attnum
"""

_PRIMARY_KEYS = """
SELECT con.conrelid::int8, k.attnum
FROM pg_catalog.pg_constraint con CROSS JOIN LATERAL unnest(con.conkey) AS k(attnum)
WHERE con.contype = 'p'
"""

_FOREIGN_KEYS = """
SELECT con.conrelid::int8, k.attnum, con.confrelid::int8, k.refattnum
FROM pg_catalog.pg_constraint con
CROSS JOIN LATERAL unnest(con.conkey, con.confkey) AS k(attnum, refattnum)
WHERE con.contype = 'f'
"""

# Partition key columns at any level, by the root table and the column's name: PostgreSQL cannot change
# their type ("cannot alter column ... because it is part of the partition key").
_PARTITION_KEYS = """
SELECT pg_catalog.pg_partition_root(p.partrelid)::int8, a.attname
FROM pg_catalog.pg_partitioned_table p
CROSS JOIN LATERAL unnest(p.partattrs::int2[]) AS k(attnum)
JOIN pg_catalog.pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = k.attnum
"""

# Sequences owned by a column: serial (deptype 'a') and identity (deptype 'i').
_OWNED_SEQUENCES = """
SELECT d.refobjid::int8, d.refobjsubid::int4, sn.nspname, s.relname
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
  AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0
"""

_TARGET_COLUMN_TYPE = """
SELECT a.atttypid = 'pg_catalog.int4'::pg_catalog.regtype
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND a.attname = %s AND NOT a.attisdropped
"""

_TARGET_SEQUENCE_TYPE = """
SELECT s.seqtypid = 'pg_catalog.int4'::pg_catalog.regtype
FROM pg_catalog.pg_sequence s
JOIN pg_catalog.pg_class c ON c.oid = s.seqrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""


# Views and materialized views that read the given tables, directly or through other views, with their
# depth (1 = reads a table): PostgreSQL cannot change the type of a column a view uses, so they are dropped
# before the ALTERs and created again after them, deepest first and shallowest first respectively.
_DEPENDENT_VIEWS = """
WITH RECURSIVE dependent(oid, depth) AS (
    SELECT r.ev_class, 1
    FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
    WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
      AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
      AND d.refobjid = ANY(%s::pg_catalog.regclass[]) AND r.ev_class <> d.refobjid
  UNION
    SELECT r.ev_class, dependent.depth + 1
    FROM dependent
    JOIN pg_catalog.pg_depend d ON d.refobjid = dependent.oid
      AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
      AND d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
    JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid AND r.ev_class <> dependent.oid
    WHERE dependent.depth < 100
)
SELECT n.nspname, c.relname, c.relkind = 'm', pg_catalog.pg_get_viewdef(c.oid),
       coalesce(c.reloptions, '{}'), pg_catalog.obj_description(c.oid, 'pg_class'),
       ARRAY(SELECT ARRAY[a.attname::text, pg_catalog.col_description(c.oid, a.attnum)]
             FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND pg_catalog.col_description(c.oid, a.attnum) IS NOT NULL
             ORDER BY a.attnum),
       ARRAY(SELECT ARRAY[a.attname::text, pg_catalog.pg_get_expr(ad.adbin, ad.adrelid)]
             FROM pg_catalog.pg_attrdef ad JOIN pg_catalog.pg_attribute a
               ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
             WHERE ad.adrelid = c.oid ORDER BY a.attnum)
FROM (SELECT oid, max(depth) AS depth FROM dependent GROUP BY oid) v
JOIN pg_catalog.pg_class c ON c.oid = v.oid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
ORDER BY v.depth, n.nspname, c.relname
"""


@dataclass(frozen=True)
class ColumnChange:
    schema: str
    table: str
    column: str
    reason: str  # "primary key", "references s.t.c", "include"

    @property
    def qualname(self) -> str:
        return f"{self.schema}.{self.table}.{self.column}"


@dataclass(frozen=True)
class SequenceChange:
    schema: str
    name: str
    owner: str  # the column's qualname

    @property
    def qualname(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class Plan:
    columns: list[ColumnChange] = field(default_factory=list)
    sequences: list[SequenceChange] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "columns": [dict(name=c.qualname, reason=c.reason) for c in self.columns],
            "sequences": [dict(name=s.qualname, owner=s.owner) for s in self.sequences],
            "warnings": list(self.warnings),
        }


def _matches(entry: str, schema: str, table: str, column: str) -> bool:
    return entry in (f"{schema}.{table}", f"{schema}.{table}.{column}")


def plan_bigint(source: psycopg.Connection[Any], schemas: list[str] | None, mode: str = "auto",
                include: list[str] | None = None, exclude: list[str] | None = None) -> Plan:
    """Columns and sequences to convert, read from the source catalog. `mode='none'` converts only
    `include`. Raises ConfigError for a bad mode or an include entry naming no int4 column."""
    if mode not in MODES:
        raise ConfigError(f"restore_bigint: expected one of {list(MODES)}, got {mode!r}")
    include, exclude = list(include or []), list(exclude or [])
    excluded_schemas = list(SYSTEM_SCHEMAS + PROJECT_SCHEMAS)
    with source.cursor() as cur:
        cur.execute(_INT4_COLUMNS, {"excluded": excluded_schemas, "schemas": schemas or None})
        int4 = {(relid, attnum): (schema, table, column) for relid, schema, table, attnum, column in cur.fetchall()}
        cur.execute(_PRIMARY_KEYS)
        pk = {(relid, attnum) for relid, attnum in cur.fetchall()}
        cur.execute(_FOREIGN_KEYS)
        fks = cur.fetchall()
        cur.execute(_OWNED_SEQUENCES)
        owned = {(relid, attnum): (schema, name) for relid, attnum, schema, name in cur.fetchall()}
        cur.execute(_PARTITION_KEYS)
        partition_keys = {(relid, name) for relid, name in cur.fetchall()}
    source.rollback()
    fixed = {key for key, (_, _, column) in int4.items() if (key[0], column) in partition_keys}

    reasons: dict[tuple[int, int], str] = {}
    if mode == "auto":
        for key in int4:
            if key in pk:
                reasons[key] = "primary key"
        for relid, attnum, refrelid, refattnum in fks:
            ref = (refrelid, refattnum)
            if (relid, attnum) in int4 and ref in int4 and ref in pk and ref not in fixed:
                reasons.setdefault((relid, attnum), "references {}.{}.{}".format(*int4[ref]))
    for entry in include:
        hits = [key for key, names in int4.items() if _matches(entry, *names)]
        if not hits:
            raise ConfigError(f"restore_bigint_include: {entry!r} names no integer (int4) column of a table in "
                              "the migrated schemas; write schema.table or schema.table.column")
        for key in hits:
            reasons.setdefault(key, "include")
    plan = Plan()
    for entry in exclude:
        if not any(_matches(entry, *names) for names in int4.values()):
            plan.warnings.append(f"restore_bigint_exclude: {entry!r} names no integer (int4) column; ignored")
    for key in sorted(reasons, key=lambda k: int4[k]):
        schema, table, column = int4[key]
        if any(_matches(entry, schema, table, column) for entry in exclude):
            continue
        if key in fixed:
            plan.warnings.append(f"{schema}.{table}.{column} ({reasons[key]}) stays integer: it is part of a "
                                 "partition key, whose type PostgreSQL cannot change")
            continue
        change = ColumnChange(schema, table, column, reasons[key])
        plan.columns.append(change)
        if key in owned:
            plan.sequences.append(SequenceChange(*owned[key], owner=change.qualname))
    return plan


def apply_bigint(target: psycopg.Connection[Any], plan: Plan) -> list[str]:
    """Convert on the target what is still int4, in one transaction. Returns the statements run;
    an empty list when everything is already bigint (a re-run)."""
    texts: list[str] = []
    try:
        with target.transaction(), target.cursor() as cur:
            per_table: dict[tuple[str, str], list[str]] = {}
            for c in plan.columns:
                cur.execute(_TARGET_COLUMN_TYPE, (c.schema, c.table, c.column))
                row = cur.fetchone()
                if row is None:
                    raise RestoreError(f"column {c.qualname} is not on the target; restore pre-data first "
                                           "(or the source schema changed since the dump: dump again)")
                if row[0]:
                    per_table.setdefault((c.schema, c.table), []).append(c.column)
            views = _dependent_views(cur, list(per_table))
            for view in reversed(views):
                _run(cur, texts, sql.SQL("DROP {} {}").format(view.keyword, view.ident))
            for (schema, table), columns in per_table.items():
                _run(cur, texts, sql.SQL("ALTER TABLE {} {}").format(
                    sql.Identifier(schema, table),
                    sql.SQL(", ").join(sql.SQL("ALTER COLUMN {} TYPE pg_catalog.int8").format(sql.Identifier(col))
                                       for col in columns)))
            for view in views:
                for stmt in view.create():
                    _run(cur, texts, stmt)
            # Checked after the column changes: an identity sequence follows its column's new type.
            for s in plan.sequences:
                cur.execute(_TARGET_SEQUENCE_TYPE, (s.schema, s.name))
                row = cur.fetchone()
                if row is not None and row[0]:
                    _run(cur, texts, sql.SQL("ALTER SEQUENCE {} AS pg_catalog.int8").format(
                        sql.Identifier(s.schema, s.name)))
    except psycopg.Error as exc:
        detail = f" ({exc.diag.message_detail})" if exc.diag.message_detail else ""
        error = RestoreError(
            f"bigint migration failed at `{texts[-1] if texts else '?'}`: {exc.diag.message_primary}{detail}; "
            "nothing was changed. Exclude the column with restore_bigint_exclude, or fix the object named")
        error.sqlstate = exc.sqlstate
        raise error from exc
    return texts


@dataclass(frozen=True)
class _View:
    """A view or materialized view as pre-data left it: what dropping it for the ALTERs would lose
    (owner and privileges come later, from the access step; rules and triggers with post-data)."""
    schema: str
    name: str
    materialized: bool
    definition: str
    options: list[str]
    comment: str | None
    column_comments: list[list[str]]
    column_defaults: list[list[str]]

    @property
    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)

    @property
    def keyword(self) -> sql.Composable:
        return sql.SQL("MATERIALIZED VIEW" if self.materialized else "VIEW")

    def create(self) -> list[sql.Composable]:
        with_options = sql.SQL("")
        if self.options:
            # reloptions are name=value pairs PostgreSQL itself validated (check_option, security_barrier ...)
            with_options = sql.SQL(" WITH ({})").format(sql.SQL(", ").join(sql.SQL(o) for o in self.options))
        # The definition is pg_get_viewdef's text, which the ALTERs' new column types re-plan; a materialized
        # view stays unpopulated, as pre-data leaves it (post-data refreshes it).
        stmts: list[sql.Composable] = [sql.SQL("CREATE {}{}{} AS {}{}").format(
            self.keyword, self.ident, with_options, sql.SQL(self.definition.rstrip().rstrip(";")),
            sql.SQL(" WITH NO DATA") if self.materialized else sql.SQL(""))]
        for column, default in self.column_defaults:
            stmts.append(sql.SQL("ALTER VIEW {} ALTER COLUMN {} SET DEFAULT {}").format(
                self.ident, sql.Identifier(column), sql.SQL(default)))
        if self.comment is not None:
            stmts.append(sql.SQL("COMMENT ON {} {} IS {}").format(self.keyword, self.ident,
                                                                    sql.Literal(self.comment)))
        for column, comment in self.column_comments:
            stmts.append(sql.SQL("COMMENT ON COLUMN {} IS {}").format(
                sql.Identifier(self.schema, self.name, column), sql.Literal(comment)))
        return stmts


def _dependent_views(cur: psycopg.Cursor[Any], tables: list[tuple[str, str]]) -> list[_View]:
    """Views over `tables` (through other views too), in the order they can be created."""
    if not tables:
        return []
    names = [sql.Identifier(schema, table).as_string(cur.connection) for schema, table in tables]
    cur.execute(_DEPENDENT_VIEWS, (names,))
    return [_View(*row[:8]) for row in cur.fetchall()]


def _run(cur: psycopg.Cursor[Any], texts: list[str], stmt: sql.Composable) -> None:
    texts.append(stmt.as_string(cur.connection))
    cur.execute(stmt)
