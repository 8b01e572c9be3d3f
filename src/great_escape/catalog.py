"""Read-only catalog queries: which tables to replicate, their keys, columns and unique indexes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

# Schemas that never hold application data, and the project's own.
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")
PROJECT_SCHEMAS = ("great_escape", "ge_capture")


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type() of the column
    generated: bool  # GENERATED ALWAYS AS (...) STORED: never written by COPY
    identity: str  # '', 'a' (ALWAYS) or 'd' (BY DEFAULT)
    not_null: bool


@dataclass(frozen=True)
class Table:
    schema: str
    name: str
    relid: int
    partitioned: bool
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # primary key, else the narrowest unique index on NOT NULL columns; () if none
    other_unique: tuple[tuple[str, ...], ...]  # further unique indexes (conflicts across batches)
    # Row level security enabled: COPY FROM is refused for users it applies to, rows go in by INSERT.
    row_security: bool = False

    @property
    def qualname(self) -> str:
        """Display name, e.g. public."Order Lines" as `public.Order Lines`."""
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def copy_columns(self) -> tuple[str, ...]:
        """Columns written by COPY: all but generated ones."""
        return tuple(c.name for c in self.columns if not c.generated)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


_TABLES = """
SELECT c.oid::int8, n.nspname, c.relname, c.relkind = 'p', c.relrowsecurity
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname <> ALL(%(excluded)s) AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
  AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'
  AND (%(schemas)s::text[] IS NULL OR n.nspname = ANY(%(schemas)s))
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""

_COLUMNS = """
SELECT a.attrelid::int8, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
       a.attgenerated <> '', a.attidentity::text, a.attnotnull
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = ANY(%s::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

# Unique, valid, immediate, non-partial indexes on plain columns, primary key first, then narrowest.
_UNIQUE = """
SELECT i.indrelid::int8, i.indisprimary,
       array_agg(a.attname ORDER BY k.ord) AS cols, bool_and(a.attnotnull) AS all_not_null
FROM pg_catalog.pg_index i
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = ANY(%s::oid[]) AND i.indisunique AND i.indisvalid AND i.indimmediate
  AND i.indpred IS NULL AND i.indexprs IS NULL AND k.ord <= i.indnkeyatts
GROUP BY i.indrelid, i.indexrelid, i.indisprimary
ORDER BY i.indrelid, i.indisprimary DESC, count(*), i.indexrelid
"""


def list_tables(conn: psycopg.Connection[Any], schemas: list[str] | None = None) -> list[Table]:
    """All ordinary and partitioned tables (not partitions, not extension members) of `schemas`."""
    excluded = list(SYSTEM_SCHEMAS + PROJECT_SCHEMAS)
    with conn.cursor() as cur:
        cur.execute(_TABLES, {"excluded": excluded, "schemas": schemas})
        rels = cur.fetchall()
        oids = [r[0] for r in rels]
        cur.execute(_COLUMNS, (oids,))
        columns: dict[int, list[Column]] = {}
        for relid, name, typ, generated, identity, not_null in cur.fetchall():
            columns.setdefault(relid, []).append(Column(name, typ, generated, identity, not_null))
        cur.execute(_UNIQUE, (oids,))
        uniques: dict[int, list[tuple[bool, tuple[str, ...], bool]]] = {}
        for relid, primary, cols, not_null in cur.fetchall():
            uniques.setdefault(relid, []).append((primary, tuple(cols), not_null))
    tables = []
    for relid, schema, name, partitioned, row_security in rels:
        candidates = uniques.get(relid, [])
        key = next((cols for primary, cols, not_null in candidates if primary or not_null), ())
        others = tuple(dict.fromkeys(cols for _, cols, _ in candidates if cols != key))
        tables.append(Table(schema, name, relid, partitioned, tuple(columns.get(relid, ())), key, others,
                            row_security))
    return tables


def find_table(tables: list[Table], qualname: str) -> Table:
    """The table named `schema.name` (the name may contain dots; the schema may not)."""
    for t in tables:
        if t.qualname == qualname:
            return t
    raise KeyError(qualname)
