"""Verify: compare source and target table by table and name every difference down to the row key.

How, for a table with a key (primary key or unique index on NOT NULL columns):
1. Walk the key on the source in keyset steps of `range_rows` rows (`WHERE key > lower ORDER BY key
   OFFSET range_rows-1 LIMIT 1`, an index scan), giving ranges (lower, upper].
2. Per range, count the rows and sum md5(row text) on each side, each in its own short REPEATABLE READ
   read-only snapshot (a plain reader: ACCESS SHARE locks only, no snapshot held across ranges).
   The sum is order-independent, so the sides need not return rows in the same order.
3. While writes continue a range can differ only because a change is in flight: mismatching ranges are
   checked again `recheck` times, `recheck_wait` seconds apart, and only persisting ones are kept.
4. Persisting ranges are read row by row (key, md5) on both sides to name keys missing on the target,
   extra on the target and different. Memory is bounded by one range plus the sample.

Row text is `ROW(columns in source order)::text` under the session settings db.connect() pins on both
sides, so int and bigint (and int[]/bigint[]) render alike and types that really differ do not.
Range bounds travel as text parameters of unknown type, so each server casts them to its own column type.
Keyless tables are compared whole: count plus one checksum, in one snapshot per side.

    great-escape verify --config /etc/great-escape/local-demo.yml [--reverse] [--table public.orders] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.string import StrDumperUnknown

from . import capture, db
from . import config as configmod
from .catalog import Table, list_tables
from .errors import GreatEscapeError, VerifyMismatch

log = logging.getLogger(__name__)

Key = tuple[str, ...]  # a key as text, one value per key column


@dataclass(frozen=True)
class VerifyOptions:
    range_rows: int = 10000  # rows per checksum range; also bounds the memory of a drill-down
    recheck: int = 2  # how many times a mismatching range is compared again before it is reported
    recheck_wait: float = 5.0  # seconds between rechecks, time for in-flight changes to be applied
    sample: int = 10  # differing keys reported per kind and table

    def __post_init__(self) -> None:
        if self.range_rows < 1 or self.recheck < 0 or self.recheck_wait < 0 or self.sample < 0:
            raise GreatEscapeError(
                "verify options: range_rows must be positive, recheck, recheck_wait and sample not negative"
            )


@dataclass
class TableResult:
    """The outcome for one table; `status` is ok, different, columns_differ, missing_on_target,
    missing_on_source or error."""

    table: str
    status: str = "ok"
    keyless: bool = False
    key: list[str] = field(default_factory=list)
    rows_source: int = 0
    rows_target: int = 0
    ranges: int = 0
    mismatched_ranges: list[dict[str, Any]] = field(default_factory=list)
    missing_on_target: int = 0
    extra_on_target: int = 0
    different: int = 0
    sample_missing_on_target: list[dict[str, str]] = field(default_factory=list)
    sample_extra_on_target: list[dict[str, str]] = field(default_factory=list)
    sample_different: list[dict[str, str]] = field(default_factory=list)
    message: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def summary(self) -> str:
        """What differs, without row values beyond keys."""
        if self.status != "different":
            return self.message
        if self.keyless:
            return (f"no key: {self.rows_source} row(s) on source, {self.rows_target} on target, "
                    "checksums differ")
        parts = []
        kinds = ((self.missing_on_target, self.sample_missing_on_target, "missing on target"),
                 (self.extra_on_target, self.sample_extra_on_target, "extra on target"),
                 (self.different, self.sample_different, "different"))
        for count, sample, what in kinds:
            if count:
                more = f" (+{count - len(sample)} more)" if count > len(sample) else ""
                parts.append(f"{count} {what}: {', '.join(format_key(k) for k in sample)}{more}")
        return "; ".join(parts)


@dataclass
class VerifyReport:
    tables: list[TableResult]
    seconds: float
    # Capture triggers missing or disabled on either side: changes made now would never be synced.
    capture_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables) and not self.capture_problems

    @property
    def mismatched(self) -> list[TableResult]:
        return [t for t in self.tables if not t.ok]

    def as_dicts(self) -> list[dict[str, Any]]:
        return [asdict(t) for t in self.tables]

    def raise_on_mismatch(self) -> None:
        bad = self.mismatched
        if bad or self.capture_problems:
            raise VerifyMismatch(
                f"verify found differences in {len(bad)} of {len(self.tables)} table(s): "
                + "; ".join([f"{t.table} ({t.status}: {t.summary()})" for t in bad] + self.capture_problems),
                [asdict(t) for t in bad],
            )


_PLAIN = re.compile(r"^[\w.:+@-]+$")


def format_key(key: Mapping[str, str]) -> str:
    """`id=42`, `(a=1, b="x\\ty")`: values quoted JSON-style when they hold anything unusual."""
    parts = [f"{c}={v if _PLAIN.match(v) else json.dumps(v)}" for c, v in key.items()]
    return parts[0] if len(parts) == 1 else f"({', '.join(parts)})"


class _Reader:
    """One side of the comparison: a read-only connection and the SQL for one table."""

    def __init__(self, conn: psycopg.Connection[Any], table: Table, columns: tuple[str, ...],
                 key: tuple[str, ...]):
        self.conn = conn
        self.table = table
        self.columns = columns
        self.key = key
        # Every column qualified by the alias "t": a bare name in ORDER BY would bind to the
        # output column `id::text AS id` and order the keys as text.
        self.relation = sql.SQL("{} AS t").format(table.ident)
        self.key_list = sql.SQL(", ").join(sql.Identifier("t", c) for c in key)
        self.key_text = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier("t", c)) for c in key)
        self.row_hash = sql.SQL("pg_catalog.md5(ROW({})::text)").format(
            sql.SQL(", ").join(sql.Identifier("t", c) for c in columns))

    def _where(self, lower: Key | None, upper: Key | None) -> sql.Composable:
        """The range as literals, not parameters: an identifier holding `%` would read as a placeholder."""
        conds: list[sql.Composable] = []
        for op, bound in ((">", lower), ("<=", upper)):
            if bound is not None:
                conds.append(sql.SQL("({}) {} ({})").format(
                    self.key_list, sql.SQL(op), sql.SQL(", ").join(sql.Literal(v) for v in bound)))
        return sql.SQL(" AND ").join(conds) if conds else sql.SQL("true")

    def upper_bound(self, lower: Key | None, rows: int) -> Key | None:
        """The key `rows` rows after `lower` (inclusive end of the next range); None if fewer remain."""
        query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} OFFSET {} LIMIT 1").format(
            self.key_text, self.relation, self._where(lower, None), self.key_list, sql.Literal(rows - 1))
        row = self.conn.execute(query).fetchone()
        return tuple(row) if row else None

    def checksum(self, lower: Key | None, upper: Key | None) -> tuple[int, int, int]:
        """(count, sum of the first 64 md5 bits, sum of the last 64): equal sets give equal sums."""
        query = sql.SQL(
            "SELECT count(*), "
            "COALESCE(sum(('x' || substr(h, 1, 16))::bit(64)::int8::numeric), 0), "
            "COALESCE(sum(('x' || substr(h, 17, 16))::bit(64)::int8::numeric), 0) "
            "FROM (SELECT {} AS h FROM {} WHERE {}) AS r"
        ).format(self.row_hash, self.relation, self._where(lower, upper))
        row = self.conn.execute(query).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    def rows(self, lower: Key | None, upper: Key | None) -> Iterator[tuple[Key, str]]:
        """(key, md5) of every row of the range, streamed through a server-side cursor."""
        query = sql.SQL("SELECT {}, {} FROM {} WHERE {}").format(
            self.key_text, self.row_hash, self.relation, self._where(lower, upper))
        n = len(self.key)
        with self.conn.cursor(name="great_escape_verify") as cur:
            cur.itersize = 2000
            cur.execute(query)
            for row in cur:
                yield tuple(row[:n]), row[n]


@dataclass
class _Range:
    lower: Key | None
    upper: Key | None
    source: tuple[int, int, int]
    target: tuple[int, int, int]


def _snapshot(conn: psycopg.Connection[Any]) -> Any:
    """One short REPEATABLE READ read-only transaction (the connection is configured for it)."""
    return conn.transaction()


def _open(params: Mapping[str, Any], side: str) -> psycopg.Connection[Any]:
    conn = db.connect(params, f"verify {side}")
    # Bounds are quoted as text of unknown type: each server casts them to its own key column type.
    conn.adapters.register_dumper(str, StrDumperUnknown)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return conn


class _TableCheck:
    """State of one table across the passes (scan, rechecks, drill-down)."""

    def __init__(self, result: TableResult, source: _Reader | None, target: _Reader | None):
        self.result = result
        self.source = source
        self.target = target
        self.pending: list[_Range] = []

    def timed(self, fn: Any, *args: Any) -> Any:
        start = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.result.seconds += time.monotonic() - start

    def scan(self, opts: VerifyOptions) -> None:
        assert self.source and self.target
        if self.result.keyless:
            with _snapshot(self.source.conn):
                src = self.source.checksum(None, None)
            with _snapshot(self.target.conn):
                tgt = self.target.checksum(None, None)
            self._add(None, None, src, tgt)
            return
        lower: Key | None = None
        while True:
            with _snapshot(self.source.conn):
                upper = self.source.upper_bound(lower, opts.range_rows)
                src = self.source.checksum(lower, upper)
            with _snapshot(self.target.conn):
                tgt = self.target.checksum(lower, upper)
            self._add(lower, upper, src, tgt)
            if upper is None:
                return
            lower = upper

    def _add(self, lower: Key | None, upper: Key | None, src: tuple[int, int, int],
             tgt: tuple[int, int, int]) -> None:
        self.result.ranges += 1
        self.result.rows_source += src[0]
        self.result.rows_target += tgt[0]
        if src != tgt:
            self.pending.append(_Range(lower, upper, src, tgt))

    def recheck(self) -> None:
        assert self.source and self.target
        still = []
        for r in self.pending:
            with _snapshot(self.source.conn):
                src = self.source.checksum(r.lower, r.upper)
            with _snapshot(self.target.conn):
                tgt = self.target.checksum(r.lower, r.upper)
            if src != tgt:
                still.append(_Range(r.lower, r.upper, src, tgt))
        self.pending = still

    def drill(self, opts: VerifyOptions) -> None:
        """Name the rows of the persisting ranges.

        A key counts only if it still differs after `recheck` waits while its source row stayed the same:
        a row changed meanwhile is a change in flight, which the sync copies again anyway.
        """
        assert self.source and self.target
        res = self.result
        names = self.source.key
        for r in self.pending:
            if res.keyless:
                res.mismatched_ranges.append({"lower": None, "upper": None, "rows_source": r.source[0],
                                              "rows_target": r.target[0]})
                continue
            diffs = self._differing_rows(r)
            for _ in range(opts.recheck):
                if not diffs:
                    break
                time.sleep(opts.recheck_wait)
                now = self._differing_rows(r)
                diffs = {k: v for k, v in now.items() if k in diffs and diffs[k][0] == v[0]}
            for key, (src, tgt) in sorted(diffs.items()):
                if src is None:
                    res.extra_on_target += 1
                    _sample(res.sample_extra_on_target, names, key, opts.sample)
                elif tgt is None:
                    res.missing_on_target += 1
                    _sample(res.sample_missing_on_target, names, key, opts.sample)
                else:
                    res.different += 1
                    _sample(res.sample_different, names, key, opts.sample)
            if diffs:
                res.mismatched_ranges.append({
                    "lower": _keydict(names, r.lower), "upper": _keydict(names, r.upper),
                    "rows_source": r.source[0], "rows_target": r.target[0]})
        if res.mismatched_ranges:
            res.status = "different"
        self.pending = []

    def _differing_rows(self, r: _Range) -> dict[Key, tuple[str | None, str | None]]:
        """key -> (source md5, target md5) of the range's rows that differ; None where the row is absent."""
        assert self.source and self.target
        with _snapshot(self.source.conn):
            src: dict[Key, str | None] = dict(self.source.rows(r.lower, r.upper))
        diffs: dict[Key, tuple[str | None, str | None]] = {}
        with _snapshot(self.target.conn):
            for key, digest in self.target.rows(r.lower, r.upper):
                expected = src.pop(key, None)
                if expected != digest:
                    diffs[key] = (expected, digest)
        diffs.update((key, (digest, None)) for key, digest in src.items())
        return diffs


def _keydict(names: tuple[str, ...], key: Key | None) -> dict[str, str] | None:
    return None if key is None else dict(zip(names, key, strict=True))


def _sample(into: list[dict[str, str]], names: tuple[str, ...], key: Key, limit: int) -> None:
    if len(into) < limit:
        into.append(dict(zip(names, key, strict=True)))


def _pair(source: psycopg.Connection[Any], target: psycopg.Connection[Any], schemas: list[str] | None,
          exclude_tables: list[str], only: list[str] | None) -> list[_TableCheck]:
    """Match tables by schema.name and columns by name; mismatches of structure are results, not errors."""
    src_tables = {t.qualname: t for t in list_tables(source, schemas) if t.qualname not in exclude_tables}
    tgt_tables = {t.qualname: t for t in list_tables(target, schemas) if t.qualname not in exclude_tables}
    source.rollback()
    target.rollback()
    names = sorted(set(src_tables) | set(tgt_tables))
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise GreatEscapeError(
                f"table(s) {', '.join(unknown)} not found on {_where(source)} nor on {_where(target)} "
                "in the schemas in scope; give them as schema.table"
            )
        names = [n for n in names if n in only]
    checks = []
    for name in names:
        s, t = src_tables.get(name), tgt_tables.get(name)
        if s is None or t is None:
            status = "missing_on_target" if t is None else "missing_on_source"
            where = "target" if t is None else "source"
            message = f"table does not exist on the {where}; restore the schema or exclude the table"
            checks.append(_TableCheck(TableResult(name, status, message=message), None, None))
            continue
        src_cols = [c.name for c in s.columns]
        tgt_cols = {c.name for c in t.columns}
        if set(src_cols) != tgt_cols:
            only_src = sorted(set(src_cols) - tgt_cols)
            only_tgt = sorted(tgt_cols - set(src_cols))
            checks.append(_TableCheck(TableResult(
                name, "columns_differ", keyless=not s.key, key=list(s.key),
                message=f"columns only on source {only_src}, only on target {only_tgt}; align the schemas"),
                None, None))
            continue
        columns = tuple(src_cols)
        result = TableResult(name, keyless=not s.key, key=list(s.key))
        checks.append(_TableCheck(result, _Reader(source, s, columns, s.key),
                                  _Reader(target, t, columns, s.key)))
    return checks


def _where(conn: psycopg.Connection[Any]) -> str:
    return f"{conn.info.user}@{conn.info.host}:{conn.info.port}/{conn.info.dbname}"


def verify(
    source_params: Mapping[str, Any],
    target_params: Mapping[str, Any],
    schemas: list[str] | None = None,
    exclude_tables: list[str] | None = None,
    tables: list[str] | None = None,
    options: VerifyOptions | None = None,
) -> VerifyReport:
    """Compare the tables in scope (or only `tables`, as schema.name) and return the result per table.

    Never raises for differences (see VerifyReport.raise_on_mismatch); raises for connection errors and
    for unknown table names. An error reading one table is recorded on that table and the rest go on.
    """
    opts = options or VerifyOptions()
    started = time.monotonic()
    with _open(source_params, "source") as source, _open(target_params, "target") as target:
        checks = _pair(source, target, schemas or None, list(exclude_tables or ()), tables)
        live = [c for c in checks if c.source is not None]
        for check in live:
            _guard(check, source, target, check.scan, opts)
            log.info("verify %s: %d range(s), %d mismatching", check.result.table, check.result.ranges,
                     len(check.pending))
        for attempt in range(opts.recheck):
            waiting = [c for c in live if c.pending]
            if not waiting:
                break
            log.info("verify: %d table(s) differ, checking again in %.1fs (%d/%d)", len(waiting),
                     opts.recheck_wait, attempt + 1, opts.recheck)
            time.sleep(opts.recheck_wait)
            for check in waiting:
                _guard(check, source, target, check.recheck)
        for check in live:
            if check.pending:
                _guard(check, source, target, check.drill, opts)
        broken = [f"{side}: {line}" for side, conn in (("source", source), ("target", target))
                  for line in capture.check_intact(conn)]
    return VerifyReport([c.result for c in checks], time.monotonic() - started, broken)


def _guard(check: _TableCheck, source: psycopg.Connection[Any], target: psycopg.Connection[Any],
           fn: Any, *args: Any) -> None:
    """Run one pass on one table; a database error marks that table, not the whole run."""
    if check.result.status == "error":
        return
    try:
        check.timed(fn, *args)
    except psycopg.Error as exc:
        for conn in (source, target):
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
        check.pending = []
        check.result.status = "error"
        check.result.message = (f"cannot read the table: {exc.diag.message_primary or exc}; "
                                "grant SELECT on it to the verify user")


def format_table(report: VerifyReport) -> str:
    """One line per table, then one line per table that differs naming what differs."""
    head = ("table", "rows source", "rows target", "ranges", "mismatched", "status", "seconds")
    rows = [head] + [(t.table, str(t.rows_source), str(t.rows_target), str(t.ranges),
                      str(len(t.mismatched_ranges)), t.status, f"{t.seconds:.2f}") for t in report.tables]
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for t in report.mismatched:
        lines.append(f"{t.table}: {t.summary()}")
    bad = len(report.mismatched)
    lines.append(f"{len(report.tables)} table(s) compared in {report.seconds:.1f}s: "
                 + ("all equal" if not bad else f"{bad} differ"))
    return "\n".join(lines)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("verify", help="compare source and target table by table",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the engine's configuration file (YAML)")
    p.add_argument("--reverse", action="store_true", help="compare with source and target swapped")
    p.add_argument("--table", action="append", metavar="SCHEMA.TABLE", help="only this table (repeatable)")
    p.add_argument("--range-rows", type=int, default=VerifyOptions.range_rows, help="rows per checksum range")
    p.add_argument("--recheck", type=int, default=VerifyOptions.recheck,
                   help="times a mismatching range is compared again before it is reported")
    p.add_argument("--recheck-wait", type=float, default=VerifyOptions.recheck_wait,
                   help="seconds between rechecks")
    p.add_argument("--sample", type=int, default=VerifyOptions.sample, help="differing keys shown per kind")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    """Exit 0 when every table is equal, 1 when any differs."""
    cfg = configmod.load(args.config, reverse=args.reverse)
    report = verify(cfg.source, cfg.target, cfg.schemas, cfg.exclude_tables, args.table,
                    VerifyOptions(args.range_rows, args.recheck, args.recheck_wait, args.sample))
    if args.json:
        print(json.dumps({"ok": report.ok, "seconds": round(report.seconds, 3), "tables": report.as_dicts()},
                         indent=2))
    else:
        print(format_table(report))
    return 0 if report.ok else 1
