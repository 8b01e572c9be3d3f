"""The chunked initial copy's plan and markers: which tables are split, how, and what is loaded.

A table larger than the chunk size (pg_table_size on the source) is split into ranges. The chunk size is
`chunk_bytes`, or less for a database too small to give each worker CHUNKS_PER_JOB chunks (never below
MIN_CHUNK_BYTES): with a few big chunks one worker loads the last while the others idle.
- by value of its key when the key is one integer column (min..max cut into equal value ranges),
- else by ctid pages (`ctid >= '(a,0)' AND ctid < '(b,0)'`: a TID range scan, PostgreSQL 14+),
- else (partitioned tables without an integer key, sources older than 14) it stays one chunk.
The first range is open below and the last open above, so rows added after planning are not missed.
Small tables are one chunk each. Chunks are copied biggest first.

Everything is kept on the target, in the state schema `great_escape` (one plan per migration name):

    great_escape.copy_plan    one row per chunk: table, chunk number, kind (whole|key|ctid), range, estimate
    great_escape.copy_chunks  one row per loaded chunk, inserted in the transaction that loaded its rows
                              (rows, bytes, the snapshot it was read in, loaded_at)
    great_escape.copy_done    one row per finished copy: a rerun then changes nothing

A rerun reads the plan back, so chunk numbers and ranges stay those of the first run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from .apply import _from
from .catalog import Table
from .errors import GreatEscapeError

SCHEMA = "great_escape"
PLAN_TABLE = "copy_plan"
CHUNKS_TABLE = "copy_chunks"
INTEGER_TYPES = ("smallint", "integer", "bigint")
TID_RANGE_SCAN_VERSION = 140000  # TID range scans: below this a ctid range reads the whole table
CHUNKS_PER_JOB = 4
MIN_CHUNK_BYTES = 16 * 1024 * 1024  # below this a chunk's own cost (transaction, snapshot, range scan) shows

_DDL = (
    "CREATE TABLE IF NOT EXISTS {schema}.copy_plan ("
    " name text NOT NULL, table_name text NOT NULL, chunk int NOT NULL, chunks int NOT NULL,"
    " kind text NOT NULL, lo text, hi text, est_bytes int8 NOT NULL,"
    " planned_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (name, table_name, chunk))",
    "CREATE TABLE IF NOT EXISTS {schema}.copy_chunks ("
    " name text NOT NULL, table_name text NOT NULL, chunk int NOT NULL, kind text NOT NULL, lo text, hi text,"
    " rows int8 NOT NULL, bytes int8 NOT NULL, snapshot text NOT NULL,"
    " loaded_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (name, table_name, chunk))",
    "CREATE TABLE IF NOT EXISTS {schema}.copy_done ("
    " name text PRIMARY KEY, snapshot text NOT NULL, finished_at timestamptz NOT NULL DEFAULT now())",
)


class CopyError(GreatEscapeError):
    """The chunked copy cannot go on; the message names the table and the fix."""


@dataclass(frozen=True)
class Chunk:
    table: str  # schema.table (Table.qualname)
    chunk: int  # 0..chunks-1
    chunks: int  # how many chunks the table has
    kind: str  # whole | key | ctid
    lo: str | None  # key value or first page (inclusive); None: open below
    hi: str | None  # key value or page (exclusive); None: open above
    est_bytes: int

    @property
    def label(self) -> str:
        return f"{self.table}#{self.chunk}"


def ensure_state(conn: psycopg.Connection[Any]) -> None:
    """Create the plan and marker tables if missing (committed at once). The replication user may create
    tables in the state schema (prepare-target grants it CREATE there); the schema is made only if absent."""
    try:
        with conn.transaction():
            row = conn.execute("SELECT pg_catalog.to_regnamespace(%s) IS NOT NULL", (SCHEMA,)).fetchone()
            if not row or not row[0]:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
            for ddl in _DDL:
                conn.execute(sql.SQL(ddl).format(schema=sql.Identifier(SCHEMA)))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise CopyError(
            f"cannot create the copy's markers in schema {SCHEMA} on {conn.info.host}:{conn.info.port}/"
            f"{conn.info.dbname} as {conn.info.user}: {exc.diag.message_primary}; copy as the replication user, "
            f"which the prepare-target phase (playbooks/02_prepare_target.yml) lets create tables in {SCHEMA}"
        ) from exc


def table_sizes(conn: psycopg.Connection[Any], tables: list[Table]) -> dict[int, tuple[int, int]]:
    """relid -> (pg_table_size, heap pages); a partitioned table counts its partitions, pages 0."""
    rows = conn.execute(
        "SELECT c.oid::int8,"
        " CASE WHEN c.relkind = 'p' THEN (SELECT coalesce(sum(pg_catalog.pg_table_size(p.relid)), 0)"
        "      FROM pg_catalog.pg_partition_tree(c.oid) p WHERE p.isleaf)"
        " ELSE pg_catalog.pg_table_size(c.oid) END::int8,"
        " (pg_catalog.pg_relation_size(c.oid) / pg_catalog.current_setting('block_size')::int8)::int8"
        " FROM pg_catalog.pg_class c WHERE c.oid = ANY(%s::oid[])",
        ([t.relid for t in tables],)).fetchall()
    return {relid: (size, pages) for relid, size, pages in rows}


def integer_key(table: Table) -> str | None:
    """The key column when the key is one integer column (splittable by value)."""
    if len(table.key) == 1 and table.column(table.key[0]).type in INTEGER_TYPES:
        return table.key[0]
    return None


def _bounds(lo: int, hi: int, n: int) -> list[int]:
    """n-1 cut points splitting [lo, hi] into n ranges of equal width."""
    return sorted({lo + (hi - lo + 1) * i // n for i in range(1, n)})  # integers: exact for any bigint


def _ranges(cuts: list[int]) -> list[tuple[str | None, str | None]]:
    edges: list[int | None] = [None, *cuts, None]
    pairs = zip(edges[:-1], edges[1:], strict=True)
    return [(None if a is None else str(a), None if b is None else str(b)) for a, b in pairs]


def plan_table(conn: psycopg.Connection[Any], table: Table, size: int, pages: int, chunk_bytes: int) -> list[Chunk]:
    """The chunks of one table (see the module docstring)."""
    n = max(1, math.ceil(size / chunk_bytes)) if chunk_bytes > 0 else 1
    kind, cuts = "whole", []
    key = integer_key(table)
    if n > 1 and key is not None:
        lo, hi = conn.execute(sql.SQL("SELECT min({k})::int8, max({k})::int8 FROM {t}").format(
            k=sql.Identifier(key), t=_from(table))).fetchone() or (None, None)
        if lo is not None and hi is not None and hi > lo:
            kind, cuts = "key", _bounds(lo, hi, min(n, hi - lo + 1))
    elif n > 1 and not table.partitioned and conn.info.server_version >= TID_RANGE_SCAN_VERSION and pages > 1:
        kind, cuts = "ctid", _bounds(0, pages - 1, min(n, pages))
    if not cuts:
        return [Chunk(table.qualname, 0, 1, "whole", None, None, size)]
    ranges = _ranges(cuts)
    return [Chunk(table.qualname, i, len(ranges), kind, lo, hi, size // len(ranges))
            for i, (lo, hi) in enumerate(ranges)]


def chunk_size(total_bytes: int, chunk_bytes: int, jobs: int) -> int:
    """The size tables are split at (see the module docstring)."""
    return min(chunk_bytes, max(MIN_CHUNK_BYTES, total_bytes // (max(1, jobs) * CHUNKS_PER_JOB)))


def plan(conn: psycopg.Connection[Any], tables: list[Table], chunk_bytes: int, jobs: int) -> list[Chunk]:
    """Every table's chunks, read from the source (outside any snapshot: the open ends cover growth)."""
    sizes = table_sizes(conn, tables)
    size_at = chunk_size(sum(size for size, _ in sizes.values()), chunk_bytes, jobs)
    chunks: list[Chunk] = []
    for t in tables:
        size, pages = sizes.get(t.relid, (0, 0))
        chunks += plan_table(conn, t, size, pages, size_at)
    conn.rollback()
    return chunks


def biggest_first(chunks: list[Chunk]) -> list[Chunk]:
    return sorted(chunks, key=lambda c: (-c.est_bytes, c.table, c.chunk))


def load_plan(conn: psycopg.Connection[Any], name: str) -> list[Chunk]:
    rows = conn.execute(sql.SQL("SELECT table_name, chunk, chunks, kind, lo, hi, est_bytes FROM {} WHERE name = %s "
                                "ORDER BY table_name, chunk").format(sql.Identifier(SCHEMA, PLAN_TABLE)),
                        (name,)).fetchall()
    return [Chunk(*r) for r in rows]


def save_plan(conn: psycopg.Connection[Any], name: str, chunks: list[Chunk]) -> None:
    """Record chunks (of tables not planned yet) in the current transaction."""
    with conn.cursor() as cur:
        cur.executemany(sql.SQL("INSERT INTO {} (name, table_name, chunk, chunks, kind, lo, hi, est_bytes) "
                                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)").format(sql.Identifier(SCHEMA, PLAN_TABLE)),
                        [(name, c.table, c.chunk, c.chunks, c.kind, c.lo, c.hi, c.est_bytes) for c in chunks])


def loaded(conn: psycopg.Connection[Any], name: str) -> dict[tuple[str, int], str]:
    """(table, chunk) -> snapshot of every chunk marked loaded."""
    rows = conn.execute(sql.SQL("SELECT table_name, chunk, snapshot FROM {} WHERE name = %s").format(
        sql.Identifier(SCHEMA, CHUNKS_TABLE)), (name,)).fetchall()
    return {(t, c): s for t, c, s in rows}


def is_loaded(conn: psycopg.Connection[Any], name: str, chunk: Chunk) -> bool:
    row = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE name = %s AND table_name = %s AND chunk = %s)")
                       .format(sql.Identifier(SCHEMA, CHUNKS_TABLE)), (name, chunk.table, chunk.chunk)).fetchone()
    return bool(row and row[0])


def mark_loaded(conn: psycopg.Connection[Any], name: str, chunk: Chunk, rows: int, nbytes: int,
                snapshot: str) -> None:
    """The chunk's marker, in the transaction that loaded its rows."""
    conn.execute(sql.SQL("INSERT INTO {} (name, table_name, chunk, kind, lo, hi, rows, bytes, snapshot) "
                         "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)").format(sql.Identifier(SCHEMA, CHUNKS_TABLE)),
                 (name, chunk.table, chunk.chunk, chunk.kind, chunk.lo, chunk.hi, rows, nbytes, snapshot))


def finished(conn: psycopg.Connection[Any], name: str) -> str | None:
    """The snapshot of the finished copy `name`, None while it is not finished."""
    row = conn.execute(sql.SQL("SELECT snapshot FROM {} WHERE name = %s").format(
        sql.Identifier(SCHEMA, "copy_done")), (name,)).fetchone()
    return None if row is None else str(row[0])


def mark_finished(conn: psycopg.Connection[Any], name: str, snapshot: str) -> None:
    conn.execute(sql.SQL("INSERT INTO {} (name, snapshot) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING").format(
        sql.Identifier(SCHEMA, "copy_done")), (name, snapshot))


def forget_table(conn: psycopg.Connection[Any], name: str, table: str) -> int:
    """Delete the table's markers in the current transaction (its rows are being emptied with them)."""
    cur = conn.execute(sql.SQL("DELETE FROM {} WHERE name = %s AND table_name = %s").format(
        sql.Identifier(SCHEMA, CHUNKS_TABLE)), (name, table))
    return cur.rowcount


def range_filter(table: Table, chunk: Chunk) -> sql.Composable:
    """The WHERE condition of a chunk (TRUE for a whole table)."""
    if chunk.kind == "whole":
        return sql.SQL("TRUE")
    if chunk.kind == "key":
        column = sql.Identifier(table.key[0])
        def value(v: str) -> sql.Composable:
            return sql.Literal(int(v))
    elif chunk.kind == "ctid":
        column = sql.Identifier("ctid")
        def value(v: str) -> sql.Composable:
            return sql.SQL("{}::pg_catalog.tid").format(sql.Literal(f"({int(v)},0)"))
    else:
        raise CopyError(f"table {table.qualname}: chunk {chunk.chunk} has an unknown kind {chunk.kind!r} in "
                        f"{SCHEMA}.{PLAN_TABLE}; delete that table's rows there and copy again")
    parts = []
    if chunk.lo is not None:
        parts.append(sql.SQL("{} OPERATOR(pg_catalog.>=) {}").format(column, value(chunk.lo)))
    if chunk.hi is not None:
        parts.append(sql.SQL("{} OPERATOR(pg_catalog.<) {}").format(column, value(chunk.hi)))
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("TRUE")
