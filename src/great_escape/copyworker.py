"""A worker of the chunked copy (copy.py), one process each: loads the chunks the coordinator sends, every one in
a source transaction that imports the coordinator's exported snapshot and one target transaction that also
inserts the chunk's marker.
"""

from __future__ import annotations

import ctypes
import signal
from typing import Any

import psycopg
from psycopg import sql

from . import catalog, copyplan, db, sourceread
from . import config as configmod
from .apply import _cols, _from, pump
from .catalog import Table
from .copyplan import Chunk

FIRST_NORMAL_OID = 16384  # types below are built in: the same oid and binary format on every server
# (source type oid, target type oid) -> the cast: the integer widenings of the bigint step (bigint.py)
WIDENED = {(21, 23): "int4", (21, 20): "int8", (23, 20): "int8"}


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent, the coordinator, dies: no worker outlives its snapshot, no
    index build (copybuild.py) races a rerun's."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def select_list(source: psycopg.Connection[Any], target: psycopg.Connection[Any], src: Table,
                tgt: Table) -> tuple[sql.Composable, bool]:
    """The chunk query's select list, and whether COPY may be binary: each copied column of the same built-in
    type on both sides, or an integer the bigint step widened, read cast to the target's type (its binary form
    differs: 4 bytes against 8)."""
    query = ("SELECT attname, atttypid::int8, pg_catalog.format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute "
             "WHERE attrelid = %s::oid AND attnum > 0 AND NOT attisdropped")
    s = {r[0]: (r[1], r[2]) for r in source.execute(query, (src.relid,)).fetchall()}
    t = {r[0]: (r[1], r[2]) for r in target.execute(query, (tgt.relid,)).fetchall()}
    items: list[sql.Composable] = []
    binary = True
    for c in src.copy_columns:
        widened = WIDENED.get((s[c][0], t[c][0])) if c in s and c in t else None
        if widened:
            items.append(sql.SQL("{}::{}").format(sql.Identifier(c), sql.SQL(widened)))
        else:
            items.append(sql.Identifier(c))
            binary = binary and c in s and c in t and s[c] == t[c] and s[c][0] < FIRST_NORMAL_OID
    return sql.SQL(", ").join(items), binary


def copy_chunk(source: psycopg.Connection[Any], target: psycopg.Connection[Any], src: Table, tgt: Table,
               chunk: Chunk, snapshot: str, name: str, report: Any = None, text: bool = False,
               reader: sourceread.SshReader | None = None) -> tuple[int, int, int]:
    """Load one chunk in one target transaction with its marker; returns (rows, bytes, bytes read from the
    source: compressed with a reader, else the COPY's own). Both connections
    must be idle; the source is left idle, the target committed. `text`: text COPY even where binary would do.
    `reader`: the rows of a big enough chunk are read on the source host (sourceread.py), `source` then only
    answers the catalog."""
    source.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
    columns, binary = select_list(source, target, src, tgt)
    fmt = sql.SQL(" (FORMAT binary)" if binary and not text else "")
    query = sql.SQL("COPY (SELECT {} FROM {} WHERE {}) TO STDOUT{}").format(
        columns, _from(src), copyplan.range_filter(src, chunk), fmt)
    load = sql.SQL("COPY {} ({}) FROM STDIN{}").format(tgt.ident, _cols(src.copy_columns), fmt)
    remote = reader is not None and reader.wanted(chunk.est_bytes)
    try:
        with target.transaction():
            with target.cursor() as tcur:
                with tcur.copy(load) as inp:
                    if remote:
                        assert reader is not None
                        steps = sourceread.statements(snapshot, query.as_string(source))
                        nbytes, wire = reader.read(source.info.password, steps, inp.write, report)
                    else:
                        rows, nbytes = pump(source, query, inp, report=report)
                        wire = nbytes
                if remote:
                    rows = tcur.rowcount
            copyplan.mark_loaded(target, name, chunk, rows, nbytes, snapshot)
    finally:
        source.rollback()  # read only: ends the snapshot's transaction
    return rows, nbytes, wire


def worker_main(cfg_raw: dict[str, Any], conn: Any, worker_id: int, text: bool = False,
                reader_spec: dict[str, Any] | None = None) -> None:
    """Connect, then take from `conn` the snapshot and whether the target's triggers must not fire
    ((snapshot, replica), sent once the coordinator has exported it), then load the chunks it sends until None.
    Reports on the same pipe: ("ready"|"bytes"|"done"|"skip"|"error", chunk label, payload). One pipe per worker,
    no shared queue: a worker killed at any moment leaves no lock held that the others would wait for."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides; a ^C reaches it too
    cfg = configmod.from_dict(cfg_raw)
    purpose = f"copy {cfg.name} worker {worker_id}"
    try:
        source = db.connect(cfg.source, purpose)
        source.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        source.read_only = True
        target = db.connect(cfg.target, purpose, autocommit=True)
        # Rows and marker commit together; losing both in a server crash is the same as never committing.
        target.execute("SET synchronous_commit = off")
        src = {t.qualname: t for t in catalog.list_tables(source, cfg.schemas or None)}
        source.rollback()
        tgt = {t.qualname: t for t in catalog.list_tables(target, cfg.schemas or None)}
        reader = sourceread.from_spec(reader_spec, cfg.source) if reader_spec else None
        begun = conn.recv()
        if begun is None:  # stopped before the copy began
            return
        snapshot, replica = begun
        if replica:  # the target's tables have triggers (foreign keys, user triggers): do not fire them
            db.set_replica_role(target, cfg.target_replica_role_function)
    except EOFError:  # the coordinator is gone
        return
    except Exception as exc:  # noqa: BLE001 - reported to the coordinator, which names it
        conn.send(("error", None, _message(exc)))
        return
    conn.send(("ready", None, None))
    while True:
        try:
            raw = conn.recv()
        except EOFError:  # the coordinator is gone
            break
        if raw is None:
            break
        chunk = Chunk(**raw)
        try:
            if copyplan.is_loaded(target, cfg.name, chunk):  # a worker that died after its commit loaded it
                conn.send(("skip", chunk.label, None))
                continue
            rows, nbytes, wire = copy_chunk(source, target, src[chunk.table], tgt[chunk.table], chunk, snapshot,
                                            cfg.name, lambda n, label=chunk.label: conn.send(("bytes", label, n)),
                                            text, reader)
        except psycopg.errors.UniqueViolation:
            conn.send(("skip", chunk.label, None))  # marked by another load of it meanwhile
            continue
        except Exception as exc:  # noqa: BLE001 - reported to the coordinator, which names the chunk
            conn.send(("error", chunk.label, _message(exc)))
            return
        conn.send(("done", chunk.label, (rows, nbytes, wire)))
    source.close()
    target.close()


def _message(exc: BaseException) -> str:
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        return f"{exc.diag.message_primary} (SQLSTATE {exc.sqlstate})"
    return f"{exc.__class__.__name__}: {exc}"
