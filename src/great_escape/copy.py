"""The chunked, parallel initial copy of the data: source tables straight into the target's, in one snapshot.

    great-escape copy --config FILE [--jobs N] [--chunk-bytes BYTES] [--state-dir DIR]
                      [--source-ssh 'ssh ... user@source-host' [--source-compression zstd|gzip]]
    great-escape copy --progress --state-dir DIR          # JSON: bytes_done, bytes_total, per table

Run on the replication host after capture is installed (DESIGN.md invariant 1) and the target's schema is
restored without indexes (pre-data, bigint step); post-data comes after. Process tree:

    coordinator   (this module) plans (copyplan.py), holds the exported snapshot, hands out chunks over one
                  pipe per worker, replaces workers that die, writes progress (copyprogress.py)
    worker x N    (copyworker.py, a process each, killed with the coordinator)
                  per chunk: source BEGIN REPEATABLE READ READ ONLY + SET TRANSACTION SNAPSHOT, then
                  COPY (SELECT cols FROM t WHERE range) TO STDOUT streamed block by block into
                  COPY t (cols) FROM STDIN on the target, whose transaction also inserts the chunk's marker;
                  with --source-ssh a big chunk's COPY runs on the source host, compressed (sourceread.py)

Exactly once: a chunk's rows and its marker commit together, the marker's primary key refuses a second load,
and a run loads only chunks without a marker. A worker that dies has its chunk handed to a new worker under
the same snapshot. When the coordinator dies the snapshot dies with it, and a rerun exports a new one, S:
- Key-range and whole-table chunks loaded under an older snapshot are kept. Each key value belongs to exactly
  one key range, so no key is loaded twice; but the table now holds rows of several snapshots. Capture was
  installed and committed before the first snapshot, so every row changed since then has its key in the
  table's delta table (apply.py: the delta holds the key of each changed row, old and new key for a key
  change; the sync replays deltas by key from the start of capture and deletes them only once applied, so
  before the sync ran they are all there). Once every chunk is loaded, the coordinator, still in S, deletes
  those keys on the target and inserts the source's rows for them as of S (_reconcile): rows changed since
  capture started are then as in S, rows never changed are alike in every snapshot, so the table equals S.
  That matters before the sync: post-data builds unique indexes and validates foreign keys across tables.
- ctid chunks are not safe across snapshots: an updated row moves to another ctid, so it could be loaded by
  two chunks. A ctid-split table with some but not all chunks loaded under an older snapshot is emptied
  (TRUNCATE on the target, markers deleted, in one transaction) and all its chunks copied again in S.
- Tables whose changes are not all in a delta table (not captured: no key, excluded, or a copy run with
  --without-capture; or a TRUNCATE event pending) are emptied and copied again in S the same way.
At the end the sequences' values are copied from the source (sequences.py), never moving one backwards.
Binary COPY where every column has the same built-in type on both sides, or is an integer the bigint step
widened (read cast to bigint on the source); text otherwise, or everywhere with --format text (binary sends ~17 %
more bytes for integer-heavy tables: a length word per field, widened keys as 8 bytes), with the session settings
db.connect() pins on both sides.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import shlex
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from . import capture, catalog, copybuild, copyplan, copyprogress, db, sequences, sourceread
from . import config as configmod
from .apply import REPORT_SECONDS, _cols, _from, _join, stream
from .catalog import Table
from .copyplan import Chunk, CopyError
from .copyworker import worker_main

log = logging.getLogger("great_escape.copy")

DEFAULT_CHUNK_BYTES = 256 * 1024 * 1024
BUILD_POLL_SECONDS = 0.2  # while index builds run: start the next soon after one ends


@dataclass
class Options:
    jobs: int = 2
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    state_dir: Path | None = None  # default: the configuration's state_dir
    require_capture: bool = True  # False only for benchmarks: then it is not a migration's initial copy
    worker_restarts: int = 3  # per job, for workers that die
    index_builds: copybuild.Spec | None = None  # build each table's indexes once loaded (copybuild.py)
    # Text COPY even where binary would do: ~15 % fewer bytes for integer-heavy tables (a slow link to the
    # source), at more CPU on both servers.
    text: bool = False
    # Read chunks on the source host and compress them there (sourceread.py): {"ssh": argv, "compression":
    # "zstd"|"gzip", "pghost": host or socket directory or None, "min_bytes": smaller chunks over libpq}; None:
    # read every chunk over libpq.
    source_reader: dict[str, Any] | None = None


@dataclass
class Summary:
    chunks_total: int = 0
    chunks_skipped: int = 0  # marked loaded by an earlier run
    chunks_copied: int = 0
    rows: int = 0
    bytes: int = 0
    source_bytes: int = 0  # read from the source: compressed where read on the source host (--source-ssh)
    seconds: float = 0.0
    snapshot: str = ""
    snapshots: int = 1  # distinct snapshots the target's loaded chunks were read in
    recopied_tables: list[str] = field(default_factory=list)  # emptied and copied again whole
    reconciled_tables: list[str] = field(default_factory=list)  # older snapshots' rows made current
    copied: list[str] = field(default_factory=list)  # table#chunk of this run
    built_tables: int = 0  # tables whose indexes and keys this run built (or found built)
    sequences_moved: int = 0  # sequences set to the source's value at the end (never moved backwards)


# ---------------------------------------------------------------- coordinator

def _tables(source: psycopg.Connection[Any], target: psycopg.Connection[Any], cfg: configmod.Config,
            require_capture: bool) -> tuple[list[Table], dict[str, Table]]:
    """The tables pg_dump's data section would hold (the configured schemas), checked against the target
    and against capture."""
    tables = catalog.list_tables(source, cfg.schemas or None)
    tgt = {t.qualname: t for t in catalog.list_tables(target, cfg.schemas or None)}
    missing = [t.qualname for t in tables if t.qualname not in tgt]
    if missing:
        raise CopyError(f"table(s) missing on the target: {', '.join(missing[:10])}; restore the schema "
                        "(pre-data) first")
    for t in tables:
        absent = [c for c in t.copy_columns if c not in {col.name for col in tgt[t.qualname].columns}]
        if absent:
            raise CopyError(f"table {t.qualname}: column(s) {absent} missing on the target; restore the same "
                            "schema on both sides")
    if require_capture:
        registered = set(capture.registered(source))
        excluded = set(cfg.exclude_tables)
        uncaptured = [t.qualname for t in tables if t.key and t.qualname not in excluded
                      and t.relid not in registered]
        if uncaptured:
            raise CopyError(f"capture is not installed on {len(uncaptured)} table(s) "
                            f"({', '.join(uncaptured[:10])}): changes made during the copy would be lost. "
                            "Run the capture phase (playbooks/03_capture.yml) first")
    source.rollback()
    target.rollback()
    return tables, tgt


def _prepare_target(target: psycopg.Connection[Any], name: str, tables: list[Table], tgt: dict[str, Table],
                    planned: list[Chunk], snapshot: str, reconcilable: set[int],
                    summary: Summary) -> tuple[list[Chunk], dict[tuple[str, int], str]]:
    """Empty the tables whose chunks loaded under another snapshot cannot be made current (ctid-split and
    loaded in part, or not reconcilable: see the module docstring); refuse tables that hold rows this copy
    did not load. Returns the chunks still to copy and the markers kept."""
    done = copyplan.loaded(target, name)
    by_table: dict[str, list[Chunk]] = {}
    for c in planned:
        by_table.setdefault(c.table, []).append(c)
    for t in tables:
        chunks = by_table.get(t.qualname, [])
        marked = [c for c in chunks if (c.table, c.chunk) in done]
        stale = any(done[(c.table, c.chunk)] != snapshot for c in marked)
        half_ctid = 0 < len(marked) < len(chunks) and chunks[0].kind == "ctid"
        if stale and (half_ctid or t.relid not in reconcilable):
            with target.transaction():
                target.execute(sql.SQL("TRUNCATE {}").format(tgt[t.qualname].ident))
                copyplan.forget_table(target, name, t.qualname)
            for c in marked:
                del done[(c.table, c.chunk)]
            summary.recopied_tables.append(t.qualname)
            log.info("%s: loaded %s under an earlier snapshot: emptied, copied again whole", t.qualname,
                     "in part, split by ctid," if half_ctid else "without capture (or truncated since)")
        elif not marked:
            row = target.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(_from(tgt[t.qualname])))
            found = row.fetchone()
            if found and found[0]:
                raise CopyError(
                    f"table {t.qualname} on the target already holds rows that this copy did not load (no chunk "
                    f"of it is marked in {copyplan.SCHEMA}.{copyplan.CHUNKS_TABLE} for {name}). Nothing was "
                    f"copied. If they are left from an earlier attempt, empty it (TRUNCATE {t.qualname}) and "
                    "copy again; otherwise copy into an empty database")
    todo = [c for c in planned if (c.table, c.chunk) not in done]
    return copyplan.biggest_first(todo), done


def _reconcilable(source: psycopg.Connection[Any], tables: list[Table]) -> set[int]:
    """Tables whose every change since capture started is in their delta table, read in the current snapshot:
    captured, with a key, and no TRUNCATE event pending (a truncate leaves no keys behind)."""
    registered = set(capture.registered(source))
    truncated: set[int] = set()
    if registered:
        truncated = {r[0] for r in source.execute(sql.SQL("SELECT DISTINCT relid::int8 FROM {}").format(
            sql.Identifier(capture.SCHEMA, "truncates"))).fetchall()}
    return {t.relid for t in tables if t.key and t.relid in registered and t.relid not in truncated}


def _reconcile(source: psycopg.Connection[Any], target: psycopg.Connection[Any], src: Table, tgt: Table) -> int:
    """Make the rows of a table loaded in part under older snapshots those of the current one: every key in
    the delta table (every row changed since capture started) is deleted on the target and the source's row
    in this snapshot inserted. Rows not changed since capture are alike in every snapshot. The deltas stay
    for the sync, whose replay of them is then a no-op. Returns the rows inserted."""
    delta = sql.Identifier(capture.SCHEMA, capture.delta_name(src.relid))
    keys = capture.delta_keys(src.key)
    keytab = sql.Identifier(f"ge_copy_keys_{src.relid}")
    with target.transaction():
        target.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
            keytab, _cols(src.key), tgt.ident))
        stream(source, target, sql.SQL("SELECT DISTINCT {} FROM {}").format(keys, delta), keytab, src.key)
        target.execute(sql.SQL("DELETE FROM {} t USING {} k WHERE {}").format(_from(tgt), keytab,
                                                                             _join(src.key, "t", "k")))
        return stream(source, target, sql.SQL("SELECT {} FROM {} WHERE ({}) IN (SELECT {} FROM {})").format(
            _cols(src.copy_columns), _from(src), _cols(src.key), keys, delta), tgt.ident, src.copy_columns)


def run(cfg: configmod.Config, opts: Options) -> Summary:
    """Copy every table's data from cfg.source to cfg.target, resuming from the target's markers."""
    started = time.monotonic()
    state_dir = opts.state_dir or cfg.state_dir
    summary = Summary()
    purpose = f"copy {cfg.name}"
    pool = _Workers(cfg, opts)  # first: they come up while this process connects and plans
    try:
        source = db.connect(cfg.source, purpose)
        target = db.connect(cfg.target, purpose, autocommit=True)  # each change an explicit transaction
    except BaseException:
        pool.stop()
        raise
    builder: copybuild.Builder | None = None
    try:
        tables, tgt = _tables(source, target, cfg, opts.require_capture)
        copyplan.ensure_state(target)
        if not _lock(target, cfg.name):
            raise CopyError(f"another copy of {cfg.name} is running against {db.describe(cfg.target)}; wait for it "
                            "or stop it first (one copy per migration)")
        previous = copyplan.finished(target, cfg.name)
        if previous is not None:
            # Finished: the sync may be applying changes by now, so nothing is copied or reconciled again.
            summary.chunks_total = summary.chunks_skipped = len(copyplan.loaded(target, cfg.name))
            summary.snapshot = previous
            if opts.index_builds:  # built before it finished: the post-data step's list only
                copybuild.write_rest(opts.index_builds, copybuild.early_entries(source, opts.index_builds, tables))
            log.info("copy %s: finished before (snapshot %s); nothing to do. To copy again, empty the target's "
                     "tables and delete the rows of %s in %s.copy_done and %s.copy_chunks", cfg.name, previous,
                     cfg.name, copyplan.SCHEMA, copyplan.SCHEMA)
            summary.sequences_moved = _copy_sequences(cfg)  # never backwards: harmless if the sync runs
            return summary
        with target.transaction():
            planned = copyplan.load_plan(target, cfg.name)
            known = {c.table for c in planned}
            new = [t for t in tables if t.qualname not in known]
            if new:
                fresh = copyplan.plan(source, new, opts.chunk_bytes, opts.jobs)
                copyplan.save_plan(target, cfg.name, fresh)
                planned += fresh
        in_scope = {t.qualname for t in tables}
        planned = [c for c in planned if c.table in in_scope]
        summary.chunks_total = len(planned)
        # The snapshot: after capture (checked above), held until every chunk is read.
        source.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        source.read_only = True
        source.execute("SET idle_in_transaction_session_timeout = 0")
        row = source.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()
        assert row is not None
        snapshot = summary.snapshot = str(row[0])
        if opts.source_reader and planned:  # before any change: ssh, programs, login and snapshot work
            sourceread.from_spec(opts.source_reader, cfg.source).check(source.info.password, snapshot)
        reconcilable = _reconcilable(source, tables)
        todo, done = _prepare_target(target, cfg.name, tables, tgt, planned, snapshot, reconcilable, summary)
        summary.chunks_skipped = len(planned) - len(todo)
        log.info("copy %s: %d chunk(s) in %d table(s), %d loaded by earlier runs, %d to copy with %d job(s), "
                 "snapshot %s", cfg.name, len(planned), len(tables), summary.chunks_skipped, len(todo), opts.jobs,
                 snapshot)
        tracker = copyprogress.Tracker(state_dir, planned, done)
        replica = _has_triggers(target, tgt)
        if opts.index_builds:
            builder = copybuild.Builder(opts.index_builds,
                                        copybuild.early_entries(source, opts.index_builds, tables), target, opts.jobs)
            tracker.builder = builder
        left = {t.qualname: 0 for t in tables}
        for c in todo:
            left[c.table] += 1
        if builder and not todo:
            builder.all_loaded()
        for name, n in left.items():
            if n == 0 and builder:
                builder.loaded(name)
        if todo:
            pool.begin(snapshot, replica)
            _run_workers(cfg, opts, pool, todo, tracker, summary, left, builder)
            if builder:
                builder.all_loaded()
        pool.stop()  # now: their connections are not needed while the builds finish
        stale = sorted({table for (table, _), snap in done.items() if snap != snapshot and table in in_scope})
        if stale and replica:  # the target's triggers must not fire (DESIGN.md invariant 6)
            db.set_replica_role(target, cfg.target_replica_role_function)
        for name in stale:
            src = next(t for t in tables if t.qualname == name)
            rows = _reconcile(source, target, src, tgt[name])
            summary.reconciled_tables.append(name)
            log.info("%s: loaded in part under an earlier snapshot; %d changed row(s) made current", name, rows)
        snapshots = target.execute(sql.SQL("SELECT count(DISTINCT snapshot) FROM {} WHERE name = %s").format(
            sql.Identifier(copyplan.SCHEMA, copyplan.CHUNKS_TABLE)), (cfg.name,)).fetchone()
        target.rollback()
        summary.snapshots = int(snapshots[0]) if snapshots else 1
        if builder:
            tracker.write("running")
            builder.wait()
            summary.built_tables = len(builder.done)
            copybuild.write_rest(builder.spec, builder.entries)
        copyplan.mark_finished(target, cfg.name, snapshot)
        summary.sequences_moved = _copy_sequences(cfg)
        summary.seconds = round(time.monotonic() - started, 3)
        tracker.write("done")
        return summary
    except BaseException:
        if builder:
            builder.stop()
        try:
            copyprogress.Tracker.fail(state_dir)
        except Exception:  # noqa: BLE001 - the original error matters more
            pass
        raise
    finally:
        pool.stop()
        source.close()
        target.close()


def _copy_sequences(cfg: configmod.Config) -> int:
    """The sequences' values, read from the source now (pg_dump's data section holds them; the schema dump
    of the chunked method does not). Never moved backwards, so a rerun is harmless; the cutover copies them
    again once writes have stopped."""
    plan = sequences.copy_sequences(cfg.source, cfg.target, cfg.schemas, cfg.exclude_tables)
    log.info("copy %s: %d sequence(s), %d set to the source's value", cfg.name, len(plan.items), plan.moved)
    return plan.moved


def _lock(target: psycopg.Connection[Any], name: str, wait: float = 10.0) -> bool:
    """One coordinator per migration: a session advisory lock on the target. A killed coordinator's session
    may take a moment to end, so wait a little for it."""
    deadline = time.monotonic() + wait
    while True:
        row = target.execute("SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext(%s))",
                             (f"great-escape copy {name}",)).fetchone()
        if row and row[0]:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


class _Workers:
    """The copy's worker processes, one pipe each. Started first, forked before the coordinator connects (nothing
    of it to inherit but the imports, ~0.6 s of CPU a fresh interpreter would spend on them again); their
    connections are made while the coordinator connects, plans and exports the snapshot; `begin` then tells them
    the snapshot. A worker started later, to replace one that died, is a fresh interpreter (the coordinator's
    connections must not be inherited) and is told the snapshot at once."""

    def __init__(self, cfg: configmod.Config, opts: Options) -> None:
        self.raw, self.opts = _config_dict(cfg), opts
        self.procs: dict[int, tuple[Any, Any]] = {}  # id -> (process, pipe)
        self.begun: tuple[str, bool] | None = None  # (snapshot, replica)
        self.next_id = 0
        for _ in range(max(1, opts.jobs)):
            self.spawn(fork=True)

    def spawn(self, fork: bool = False) -> int:
        ctx = mp.get_context("fork" if fork else "spawn")
        ours, theirs = ctx.Pipe()
        wid = self.next_id
        args = (self.raw, theirs, wid, self.opts.text, self.opts.source_reader)
        target, args = ((_forked_worker, ([pipe for _, pipe in self.procs.values()], *args)) if fork
                        else (worker_main, args))
        p = ctx.Process(target=target, args=args, daemon=True, name=f"great-escape copy worker {wid}")
        p.start()
        theirs.close()
        self.procs[wid] = (p, ours)
        self.next_id += 1
        if self.begun:
            self.send(wid, self.begun)
        return wid

    def begin(self, snapshot: str, replica: bool) -> None:
        self.begun = (snapshot, replica)
        for wid in list(self.procs):
            self.send(wid, self.begun)

    def send(self, wid: int, message: Any) -> bool:
        """False when the worker is gone (its end is seen when its pipe is read)."""
        try:
            self.procs[wid][1].send(message)
        except OSError:
            return False
        return True

    def stop(self) -> None:
        for wid in self.procs:
            self.send(wid, None)  # a busy worker finishes its chunk first
        deadline = time.monotonic() + 10
        for p, pipe in self.procs.values():
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
            pipe.close()
        self.procs.clear()


def _forked_worker(inherited: list[Any], *args: Any) -> None:
    """worker_main in a forked process: first close the coordinator's ends of the earlier workers' pipes, so
    that each worker holds its own pipe only (a worker sees the coordinator's end closed when it dies)."""
    for pipe in inherited:
        pipe.close()
    worker_main(*args)


def _run_workers(cfg: configmod.Config, opts: Options, pool: _Workers, todo: list[Chunk],
                 tracker: copyprogress.Tracker, summary: Summary, left: dict[str, int],
                 builder: copybuild.Builder | None) -> None:
    """Hand the chunks, biggest first, to the pool's workers (told the snapshot); replace a worker that dies and
    hand its chunk out again (the snapshot is still held here, so it is read in the same snapshot). `left` counts
    each table's chunks still to load; the builder gets a table when its count reaches 0."""
    pending = deque(todo)
    workers = pool.procs
    jobs = max(1, min(opts.jobs, len(todo)))
    assigned: dict[int, Chunk | None] = dict.fromkeys(workers)
    restarts = 0

    def hand_out(wid: int) -> None:
        chunk = pending.popleft() if pending else None
        assigned[wid] = chunk
        if not pool.send(wid, None if chunk is None else asdict(chunk)):  # it died meanwhile
            died(wid)
            return
        if chunk is not None:
            tracker.start(chunk.label)

    def died(wid: int) -> None:
        nonlocal restarts
        p, pipe = workers.pop(wid)
        pipe.close()
        p.join(5)
        lost = assigned.pop(wid, None)
        if lost is None and p.exitcode == 0:
            return
        restarts += 1
        if restarts > opts.worker_restarts * jobs:
            raise CopyError(f"copy {cfg.name}: workers keep dying (the last with exit code {p.exitcode}); see the "
                            "log, then run the copy again: it resumes")
        log.warning("copy worker %d died (exit code %s)%s; starting another", wid, p.exitcode,
                    f" while loading {lost.label}: handed out again" if lost else "")
        if lost is not None:
            tracker.finish(lost.label, 0, 0, loaded=False)
            pending.appendleft(lost)
        if pending:
            assigned[pool.spawn()] = None

    remaining = len(todo)
    last_write = 0.0
    while remaining:
        if not workers:
            raise CopyError(f"copy {cfg.name}: no worker left with {remaining} chunk(s) to copy")
        by_pipe = {pipe: wid for wid, (_, pipe) in workers.items()}
        building = builder is not None and builder.busy
        for pipe in mp_connection.wait(list(by_pipe), timeout=BUILD_POLL_SECONDS if building else REPORT_SECONDS):
            wid = by_pipe[pipe]
            try:
                kind, label, payload = pipe.recv()
            except (EOFError, OSError):
                died(wid)
                continue
            if kind == "bytes":
                tracker.bytes(label, payload)
                continue
            if kind == "error":
                where = f"chunk {label}" if label else "a worker"
                raise CopyError(f"copy {cfg.name}: {where} failed: {payload}. Nothing of that chunk was loaded; "
                                "fix the cause and run the copy again: it resumes from the chunks marked loaded")
            if kind in ("done", "skip"):
                rows, nbytes, wire = payload if kind == "done" else (0, 0, 0)
                tracker.finish(label, rows, nbytes)
                remaining -= 1
                table = tracker.chunks[label].table
                left[table] -= 1
                if left[table] == 0 and builder:
                    builder.loaded(table)
                if kind == "done":
                    summary.chunks_copied += 1
                    summary.rows += rows
                    summary.bytes += nbytes
                    summary.source_bytes += wire
                    summary.copied.append(label)
            hand_out(wid)  # after ready, done or skip
        if builder:
            builder.poll()
        if time.monotonic() - last_write >= REPORT_SECONDS:
            tracker.write("running")
            last_write = time.monotonic()


def _has_triggers(target: psycopg.Connection[Any], tgt: dict[str, Table]) -> bool:
    """Whether any target table has a trigger (foreign keys included). Before post-data none has, and the
    copy needs no session_replication_role; otherwise workers switch to replica (DESIGN.md invariant 6)."""
    row = target.execute("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = ANY(%s::oid[]))",
                         ([t.relid for t in tgt.values()],)).fetchone()
    return bool(row and row[0])


def _config_dict(cfg: configmod.Config) -> dict[str, Any]:
    fn = cfg.replica_role_function
    return {"name": cfg.name, "source": cfg.source, "target": cfg.target, "schemas": cfg.schemas,
            "exclude_tables": cfg.exclude_tables, "keyless_tables": cfg.keyless_tables,
            "state_dir": str(cfg.state_dir),
            "replica_role_function": None if fn is None else {"schema": fn.schema, "owner": fn.owner}}


# ---------------------------------------------------------------- command line

def add_parser(sub: Any) -> None:
    parser = sub.add_parser("copy", help="chunked parallel initial copy of the data (resumable), or its progress")
    parser.add_argument("--config", help="the engine configuration (source and target connections)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel workers, each one source and one target "
                        "connection (default 2)")
    parser.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES,
                        help=f"split tables larger than this (pg_table_size) into chunks of about this size "
                             f"(default {DEFAULT_CHUNK_BYTES}; smaller, down to 16 MiB, when the database is too "
                             "small for 4 chunks per job); a rerun keeps the plan recorded by the first run")
    parser.add_argument("--state-dir", help="where progress is written (default: state_dir of the configuration)")
    parser.add_argument("--progress", action="store_true", help="print the progress as JSON and exit")
    parser.add_argument("--index-builds", metavar="FILE",
                        help="build each table's indexes and keys with pg_restore as soon as its chunks are loaded, "
                             "as this JSON file says (written by the restore role; see copybuild.py)")
    parser.add_argument("--format", choices=("auto", "text"), default="auto",
                        help="auto: binary COPY where every column has the same built-in type on both sides (less "
                             "CPU), else text; text: always text (fewer bytes for integer-heavy tables: for a slow "
                             "link between the source and the replication host)")
    parser.add_argument("--source-ssh", metavar="COMMAND",
                        help="read each chunk on the source host and compress it there (for a slow link): the ssh "
                             "command and destination that run a shell command there, e.g. 'ssh -i KEY -p 22 "
                             "deploy@db01'; that host needs psql and the compressor (sourceread.py)")
    parser.add_argument("--source-compression", choices=sorted(sourceread.COMPRESSORS), default="zstd",
                        help="with --source-ssh: zstd (default; Debian package zstd on the source host) or gzip")
    parser.add_argument("--source-pghost", metavar="HOST",
                        help="with --source-ssh: how psql on the source host reaches the database (e.g. its socket "
                             "directory; then without TLS); default: the configuration's source host and TLS files")
    parser.add_argument("--source-ssh-min-bytes", type=int, default=sourceread.MIN_BYTES, metavar="BYTES",
                        help=f"with --source-ssh: chunks estimated smaller are read over libpq (default "
                             f"{sourceread.MIN_BYTES}: an ssh session costs more than compressing them saves)")
    parser.add_argument("--without-capture", action="store_true",
                        help="copy even where capture is not installed (benchmarks only: changes during the copy "
                             "are not recorded)")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.progress:
        if not args.state_dir and not args.config:
            raise CopyError("copy --progress needs --state-dir (or --config)")
        state_dir = Path(args.state_dir) if args.state_dir else configmod.load(args.config).state_dir
        snap = copyprogress.read_progress(state_dir)
        if not args.verbose:
            snap.pop("tables", None)
        print(json.dumps(snap))
        return 0
    if not args.config:
        raise CopyError("copy needs --config (the engine configuration with source and target)")
    if args.jobs < 1 or args.chunk_bytes < 1:
        raise CopyError("copy: --jobs and --chunk-bytes must be positive")
    cfg = configmod.load(args.config)
    opts = Options(jobs=args.jobs, chunk_bytes=args.chunk_bytes,
                   state_dir=Path(args.state_dir) if args.state_dir else None,
                   require_capture=not args.without_capture, text=args.format == "text",
                   index_builds=copybuild.load_spec(args.index_builds) if args.index_builds else None,
                   source_reader={"ssh": shlex.split(args.source_ssh), "compression": args.source_compression,
                                  "pghost": args.source_pghost, "min_bytes": args.source_ssh_min_bytes}
                   if args.source_ssh else None)
    summary = run(cfg, opts)
    out = asdict(summary)
    out["copied"] = len(summary.copied)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":  # pragma: no cover - the console script is `great-escape copy`
    from .cli import main

    sys.exit(main(["copy", *sys.argv[1:]]))
