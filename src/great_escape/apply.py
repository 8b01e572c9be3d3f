"""One sync batch: read deltas and row state in one source snapshot, copy row state to the target,
commit the target, then delete exactly the deltas that were applied (DESIGN.md invariants 3-6, 10).

A batch runs in a REPEATABLE READ transaction on the source. It takes up to `batch_size` delta rows per
table (identified by ctid, stable within the snapshot because nobody else updates delta rows), reads the
current rows for their keys in the same snapshot and streams them as text COPY into the target, where the
keys were deleted first. The source transaction deletes those same delta rows and commits only after the
target committed: a crash in between re-applies the batch, which is harmless because applying copies state.
A TRUNCATE event makes the table's batch a whole-table copy, after which every delta of the table visible
in the snapshot is covered (DELETE in the snapshot removes exactly those).
"""

from __future__ import annotations

import logging
import select
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq, sql

from . import capture, catalog, ranges, state
from .catalog import Table
from .errors import SyncError

log = logging.getLogger(__name__)

MAX_CONFLICT_ROUNDS = 50
PENDING_QUERY_CHUNK = 200  # tables per "which delta tables have rows" query
COPY_CHUNK = 256 * 1024  # bytes per write into a target COPY
REPORT_SECONDS = 1.0  # at most one progress report per COPY and second
# A batch looks its keys up one by one through the key's index. Left to its estimates (a temp table without
# statistics, a ctid list) the planner picks a hash or merge join over the whole table instead: a full scan
# per batch, seconds on a 1M-row table and hours on a big one. Disabling seq scans inflates costs past the JIT
# threshold, so JIT goes too. Transaction-local; a whole-table copy (TRUNCATE) puts the defaults back.
BY_INDEX_OFF = ("enable_seqscan", "enable_hashjoin", "enable_mergejoin", "jit")


@dataclass(frozen=True)
class Pair:
    """A captured table as seen on both sides (columns by name; types may differ, e.g. int -> bigint)."""

    source: Table
    target: Table

    @property
    def name(self) -> str:
        return self.source.qualname


@dataclass
class BatchResult:
    deltas: int = 0
    rows: int = 0
    per_table: dict[str, tuple[int, int]] = field(default_factory=dict)
    more: bool = False  # some table had more deltas than one batch takes


def load_pairs(source: psycopg.Connection[Any], target: psycopg.Connection[Any]) -> dict[int, Pair]:
    """The captured tables (registry on the source) matched with the target's tables.

    Stops with SyncError naming the table when one vanished on the source or lacks a column on the target.
    """
    registry = capture.registered(source)
    src = {t.relid: t for t in catalog.list_tables(source)}
    tgt = {t.qualname: t for t in catalog.list_tables(target)}
    pairs = {}
    for relid, name in sorted(registry.items(), key=lambda kv: kv[1]):
        if relid not in src:
            raise SyncError(f"source table {name} (oid {relid}) has disappeared while captured; restore it, or take "
                            "it out of the migration with `great-escape capture remove` and the exclude_tables list")
        s = src[relid]
        t = tgt.get(s.qualname)
        if t is None:
            raise SyncError(f"table {s.qualname} is missing on the target {target.info.host}:{target.info.port}/"
                            f"{target.info.dbname}; restore the schema first (restore phase)")
        missing = [c for c in s.copy_columns if c not in {col.name for col in t.columns}]
        if missing:
            raise SyncError(f"table {s.qualname}: column(s) {missing} missing on the target; the schemas differ "
                            "(DDL during the migration?). Apply the same DDL on the target, then restart the sync")
        pairs[relid] = Pair(s, t)
    return pairs


class Applier:
    """Applies batches from `source` to `target`. Both connections are owned by the caller; `target` must be
    in autocommit mode (each batch is one explicit transaction) and already run with
    session_replication_role = replica (db.set_replica_role)."""

    def __init__(self, source: psycopg.Connection[Any], target: psycopg.Connection[Any], pairs: dict[int, Pair],
                 *, name: str, direction: str, batch_size: int):
        self.source = source
        self.target = target
        self.pairs = pairs
        self.name = name
        self.direction = direction
        self.batch_size = batch_size
        self._window: deque[tuple[float, int]] = deque()
        if not target.autocommit:
            raise ValueError("the target connection must be in autocommit mode")
        source.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ

    def rate(self) -> float:
        """Deltas applied per second over the last minute."""
        now = time.monotonic()
        while self._window and now - self._window[0][0] > 60:
            self._window.popleft()
        if not self._window:
            return 0.0
        span = max(now - self._window[0][0], 1.0)
        return sum(n for _, n in self._window) / span

    def run_batch(self) -> BatchResult:
        """Apply one batch; returns what it did. Nothing pending: an empty result, no target transaction."""
        result = BatchResult()
        failed: tuple[Pair, psycopg.Error] | None = None
        if self.source.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raise SyncError("internal: the source connection is inside a transaction before a batch; "
                            "its snapshot would not be the batch's own")
        try:
            truncated = self._truncated()
            pending = self._pending()
            work = [r for r in self.pairs if r in truncated or r in pending]
            if not work:
                self.source.commit()  # read only, but for the removal of events for unknown tables
                return result
            with self.target.transaction():
                for relid in work:
                    pair = self.pairs[relid]
                    try:
                        if relid in truncated:
                            deltas, rows, more = self._copy_whole(pair)
                        else:
                            deltas, rows, more = self._apply_keys(pair)
                    except (psycopg.errors.DataError, psycopg.errors.IntegrityError,
                            psycopg.errors.SyntaxErrorOrAccessRuleViolation) as exc:
                        failed = (pair, exc)
                        raise
                    result.per_table[pair.name] = (rows, deltas)
                    result.deltas += deltas
                    result.rows += rows
                    result.more |= more
                self._window.append((time.monotonic(), result.deltas))
                state.record_batch(self.target, self.name, self.direction, result.per_table, self.rate())
            self.source.commit()  # only now are the deltas gone: target first (invariant 5)
        except BaseException as exc:
            _rollback_quietly(self.source)
            if failed:
                raise self._batch_error(*failed) from exc
            raise
        return result

    def has_work(self) -> bool:
        """Whether a batch would find anything now (in a snapshot of its own, then released)."""
        try:
            found = bool(self._truncated() & set(self.pairs) or self._pending())
            self.source.commit()  # read only, but for the removal of events for unknown tables
            return found
        except BaseException:
            _rollback_quietly(self.source)
            raise

    def _batch_error(self, pair: Pair, exc: psycopg.Error) -> SyncError:
        """The error that stops the sync: table, what went wrong, and for a value out of range its key."""
        detail = f" ({exc.diag.context.strip()})" if exc.diag.context else ""
        if exc.sqlstate == "22003":  # numeric_value_out_of_range: bigint written on one side, int on this one
            try:
                found = ranges.explain_out_of_range(self.source, self.target, pair.source, pair.target)
                detail = f": {found}" if found else detail
            finally:
                _rollback_quietly(self.source)
        return SyncError(f"table {pair.name}: {exc.diag.message_primary}{detail}; nothing of this batch was "
                         "applied. Fix the value on the sending side (or widen the column here) and restart the sync")

    # ------------------------------------------------------------ source side

    def _truncated(self) -> set[int]:
        """Tables with a TRUNCATE event. Events for tables not captured (not in the registry) would keep the
        sync from ever waiting: they are deleted, with a warning, in the current transaction."""
        rows = self.source.execute(sql.SQL(
            "SELECT DISTINCT t.relid::int8, r.relid IS NOT NULL FROM {} t LEFT JOIN {} r "
            "ON r.relid OPERATOR(pg_catalog.=) t.relid").format(
            sql.Identifier(capture.SCHEMA, "truncates"), sql.Identifier(capture.SCHEMA, "tables"))).fetchall()
        unknown = sorted(relid for relid, known in rows if not known)
        if unknown:
            self.source.execute(sql.SQL("DELETE FROM {} WHERE relid OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.oid[])")
                                .format(sql.Identifier(capture.SCHEMA, "truncates")), (unknown,))
            log.warning("TRUNCATE events for tables that are not captured (oid %s) dropped from %s.truncates; "
                        "only the capture triggers write there: if this repeats, look for who else can",
                        ", ".join(map(str, unknown)), capture.SCHEMA)
        return {relid for relid, known in rows if known}

    def _pending(self) -> set[int]:
        relids = list(self.pairs)
        found: set[int] = set()
        for i in range(0, len(relids), PENDING_QUERY_CHUNK):
            parts = [sql.SQL("SELECT {}::int8 WHERE EXISTS (SELECT 1 FROM {})").format(
                sql.Literal(r), sql.Identifier(capture.SCHEMA, capture.delta_name(r)))
                for r in relids[i:i + PENDING_QUERY_CHUNK]]
            found.update(r[0] for r in self.source.execute(sql.SQL(" UNION ALL ").join(parts)).fetchall())
        return found

    # ------------------------------------------------------------ apply by key

    def _apply_keys(self, pair: Pair) -> tuple[int, int, bool]:
        src, tgt = pair.source, pair.target
        _plan_by_index(self.source, True)
        _plan_by_index(self.target, True)
        delta = sql.Identifier(capture.SCHEMA, capture.delta_name(src.relid))
        # The delta table holds the key in k1..kn, in the order of src.key (and of tgt.key: the same index).
        keys = capture.delta_keys(src.key)
        # The batch's delta rows as one tid[] literal: no delta row passes through Python one by one.
        taken, tids = self.source.execute(sql.SQL(
            "SELECT count(*), array_agg(ctid)::text FROM (SELECT ctid FROM {} LIMIT {}) d").format(
            delta, sql.Literal(self.batch_size))).fetchone()
        if not taken:
            return 0, 0, False
        batch = sql.SQL("SELECT {} FROM {} WHERE ctid OPERATOR(pg_catalog.=) ANY({}::pg_catalog.tid[])").format(
            keys, delta, sql.Literal(tids))
        keytab = self._temp_like(tgt, "k", tgt.key)
        # Each changed key once (a hot row changes many times per batch), straight into the target's key table.
        stream(self.source, self.target, sql.SQL("SELECT DISTINCT {} FROM ({}) b").format(keys, batch),
               keytab, tgt.key, keep=_key_filter(pair))
        self.target.execute(sql.SQL("DELETE FROM {} t USING {} k WHERE {}").format(
            _from(tgt), keytab, _join(tgt.key, "t", "k")))
        source_rows = sql.SQL("SELECT {} FROM {} WHERE ({}) IN ({})").format(
            _cols(src.copy_columns), _from(src), _cols(src.key), batch)
        if tgt.other_unique or tgt.row_security:
            rows = self._insert_resolving_conflicts(pair, source_rows, keytab)
        else:
            rows = stream(self.source, self.target, source_rows, tgt.ident, src.copy_columns)
        self.source.execute(sql.SQL("DELETE FROM {} WHERE ctid OPERATOR(pg_catalog.=) ANY({}::pg_catalog.tid[])")
                            .format(delta, sql.Literal(tids)))
        return taken, rows, taken >= self.batch_size

    def _temp_like(self, table: Table, kind: str, columns: tuple[str, ...]) -> sql.Identifier:
        """A session temp table with the target's own types for `columns`, emptied at each commit."""
        name = sql.Identifier("pg_temp", f"ge_{kind}_{table.relid}")
        self.target.execute(sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS SELECT {} FROM {} WITH NO DATA").format(
            sql.Identifier(f"ge_{kind}_{table.relid}"), _cols(columns), table.ident))
        return name

    def _insert_resolving_conflicts(self, pair: Pair, source_rows: sql.Composable, keytab: sql.Identifier) -> int:
        """Stage the rows, then evict target rows that hold one of their other unique values.

        A value can move from row B to row A with only A in this batch: B still holds it on the target. B's
        key joins the batch (deleted, then its state in this snapshot staged), until nothing conflicts.
        """
        src, tgt = pair.source, pair.target
        stage = self._temp_like(tgt, "s", src.copy_columns)
        stream(self.source, self.target, source_rows, stage, src.copy_columns)
        for _ in range(MAX_CONFLICT_ROUNDS):
            conflicts: set[tuple[str, ...]] = set()
            for unique in tgt.other_unique:
                rows = self.target.execute(sql.SQL(
                    "SELECT {} FROM {} t JOIN {} s ON {}").format(
                    sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(k)) for k in tgt.key),
                    _from(tgt), stage, _join(unique, "t", "s"))).fetchall()
                conflicts.update(tuple(r) for r in rows)
            if not conflicts:
                break
            log.info("%s: %d row(s) on the target hold unique values of this batch; taking them in",
                     pair.name, len(conflicts))
            match = sql.SQL(" OR ").join(_key_equals(tgt.key, c) for c in conflicts)
            self.target.execute(sql.SQL("DELETE FROM {} WHERE {}").format(_from(tgt), match))
            stream(self.source, self.target, sql.SQL("SELECT {} FROM {} WHERE {}").format(
                _cols(src.copy_columns), _from(src), match), stage, src.copy_columns)
        else:
            raise SyncError(f"table {pair.name}: unique values keep conflicting after {MAX_CONFLICT_ROUNDS} rounds")
        cur = self.target.execute(sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT DISTINCT ON ({}) {} "
                                          "FROM {}").format(
            tgt.ident, _cols(src.copy_columns), _cols(tgt.key), _cols(src.copy_columns), stage))
        return cur.rowcount

    # ------------------------------------------------------------ whole table (TRUNCATE)

    def _copy_whole(self, pair: Pair) -> tuple[int, int, bool]:
        src, tgt = pair.source, pair.target
        _plan_by_index(self.source, False)
        _plan_by_index(self.target, False)
        delta = sql.Identifier(capture.SCHEMA, capture.delta_name(src.relid))
        rows = copy_table(self.source, self.target, src, tgt)
        # In this snapshot: exactly the events and deltas the copy covers; later ones stay.
        cur = self.source.execute(sql.SQL("DELETE FROM {}").format(delta))
        deltas = cur.rowcount
        self.source.execute(sql.SQL("DELETE FROM {} WHERE relid = %s::oid").format(
            sql.Identifier(capture.SCHEMA, "truncates")), (src.relid,))
        log.info("%s: truncated on the source; copied whole (%d rows)", pair.name, rows)
        return deltas, rows, False


def _key_filter(pair: Pair) -> Callable[[bytes], bool] | None:
    """For keys with integer columns narrower here than on the sending side: a test that a key line fits.

    A key that does not fit cannot exist here (a row deleted on the sending side after it got a big value):
    it is left out of the delete. A row that still exists with such a value stops the batch at its COPY.
    """
    narrow = [(i, ranges.INT_RANGES[pair.target.column(k).type]) for i, k in enumerate(pair.source.key)
              if pair.target.column(k).type in ranges.INT_RANGES
              and pair.source.column(k).type in ranges.INT_RANGES
              and ranges.INT_RANGES[pair.source.column(k).type][1] > ranges.INT_RANGES[pair.target.column(k).type][1]]
    if not narrow:
        return None

    def fits(line: bytes) -> bool:
        fields = line.rstrip(b"\n").split(b"\t")
        return all(low <= int(fields[i]) <= high for i, (low, high) in narrow)

    return fits


def pump(source: psycopg.Connection[Any], query: sql.Composable, inp: Any,
         keep: Callable[[bytes], bool] | None = None,
         report: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Run `query` (a COPY TO STDOUT) on `source` and write its data into `inp`, a COPY FROM; returns (rows
    written, bytes written). With `keep`, a text COPY's rows are filtered (and counted) one by one.

    libpq hands COPY TO data over a row per call. psycopg's Copy.read spends ~1 us of Python a row on its
    wait machinery, more than the rest of the copy's Python: psycopg starts the COPY, the rows are then read
    from libpq directly (waiting on the socket only when its buffer is empty) and gathered into writes of
    COPY_CHUNK bytes (psycopg makes a libpq call per write). `keep` leaves out the rows it rejects; `report`
    gets the bytes written so far, at most every REPORT_SECONDS."""
    kept = written = 0
    buf = bytearray()
    last = time.monotonic()
    with source.cursor() as cur, cur.copy(query):
        pg = source.pgconn
        while True:
            n, data = pg.get_copy_data(1)
            if n == 0:  # nothing buffered: wait for the server (interruptible, like psycopg's own wait)
                select.select([pg.socket], [], [])
                pg.consume_input()
                continue
            if n < 0:  # -1: the end, -2: an error; either way the result tells
                break
            if keep is not None and not keep(bytes(data)):
                continue
            buf += data
            kept += 1
            if len(buf) >= COPY_CHUNK:
                inp.write(buf)
                written += len(buf)
                buf.clear()
                if report is not None and time.monotonic() - last >= REPORT_SECONDS:
                    report(written)
                    last = time.monotonic()
        results = []
        while (res := pg.get_result()) is not None:
            results.append(res)
        if not results:
            raise psycopg.OperationalError(pg.get_error_message())
        if results[0].status != pq.ExecStatus.COMMAND_OK:
            raise psycopg.errors.error_from_result(results[0], encoding=source.info.encoding)
    if buf:
        inp.write(buf)
        written += len(buf)
    # The server's count: binary COPY sends its trailer as one more message.
    return (int(results[0].command_tuples or 0) if keep is None else kept), written


def stream(source: psycopg.Connection[Any], target: psycopg.Connection[Any], query: sql.Composable,
           into: sql.Composable, columns: tuple[str, ...], keep: Callable[[bytes], bool] | None = None) -> int:
    """Text COPY from the source query into the target: values cross as text, so types may differ.
    `keep` leaves out the rows it rejects. Returns the rows copied."""
    with target.cursor() as tcur, tcur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(into, _cols(columns))) as inp:
        return pump(source, sql.SQL("COPY ({}) TO STDOUT").format(query), inp, keep)[0]


def copy_table(source: psycopg.Connection[Any], target: psycopg.Connection[Any], src: Table, tgt: Table) -> int:
    """Replace the target table's rows with the source's (after a TRUNCATE, keyless tables at cutover).
    Caller commits."""
    target.execute(sql.SQL("DELETE FROM {}").format(_from(tgt)))
    query = sql.SQL("SELECT {} FROM {}").format(_cols(src.copy_columns), _from(src))
    if not tgt.row_security:
        return stream(source, target, query, tgt.ident, src.copy_columns)
    # COPY FROM is refused on a table with row level security: stage the rows, then INSERT them.
    stage = sql.Identifier(f"ge_c_{tgt.relid}")
    target.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
        stage, _cols(src.copy_columns), tgt.ident))
    stream(source, target, query, stage, src.copy_columns)
    cur = target.execute(sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {}").format(
        tgt.ident, _cols(src.copy_columns), _cols(src.copy_columns), stage))
    return cur.rowcount


def _from(table: Table) -> sql.Composable:
    """ONLY for plain tables (inheritance children are tables of their own); partitioned parents see all."""
    return table.ident if table.partitioned else sql.SQL("ONLY {}").format(table.ident)


def _key_equals(key: tuple[str, ...], values: tuple[str, ...]) -> sql.Composable:
    """(k1 = 'v1' AND k2 = 'v2'): untyped literals, so each side casts them to its own column types."""
    return sql.SQL("({})").format(sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in zip(key, values, strict=True)))


def _cols(columns: tuple[str, ...]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(c) for c in columns)


def _join(columns: tuple[str, ...], left: str, right: str) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}.{}").format(sql.Identifier(left), sql.Identifier(c), sql.Identifier(right),
                                        sql.Identifier(c)) for c in columns)


def _plan_by_index(conn: psycopg.Connection[Any], by_index: bool) -> None:
    """BY_INDEX_OFF off (or back to the session's values) for the rest of the current transaction."""
    value = sql.SQL("off" if by_index else "DEFAULT")
    conn.execute(sql.SQL("; ").join(sql.SQL("SET LOCAL {} TO {}").format(sql.Identifier(name), value)
                                    for name in BY_INDEX_OFF))


def _rollback_quietly(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.rollback()
    except psycopg.Error:
        pass  # the connection is gone; the server rolled back already
