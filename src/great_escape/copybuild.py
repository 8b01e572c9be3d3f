"""Index builds during the chunked copy (copy.py): each table's indexes and its primary key, unique and exclusion
constraints are built as soon as the table's last chunk is loaded, while the workers go on with other tables.

The statements are the dump's own: pg_restore runs the table's INDEX and CONSTRAINT entries of the post-data
section (the restore's TOC list) as the tables' owner, several tables at once. What the copy builds is left out
of the list it writes for the restore's post-data step (foreign keys, triggers, partitioned tables' indexes and
the rest of post-data, which need every table). The builds are described by a JSON file written by the restore
role (`great-escape copy --index-builds FILE`):

    {"toc_list": ".../restore/post-data.list",   # pg_restore -l of the post-data section (lines may be commented)
     "dump_dir": ".../dump/post-data",           # the section's directory dump
     "rest_list": ".../restore/post-data-rest.list",   # written: toc_list without what the copy builds
     "argv": ["pg_restore", "--host=...", "--username=master", "--dbname=...", "--no-password", "--no-owner"],
     "env": {"PGPASSFILE": "...", "PGOPTIONS": "-c maintenance_work_mem=1GB"},   # no secrets: a password file
     "jobs": 2,                                  # tables built at once
     "log_dir": ".../restore/copy/builds"}       # a TOC list and a pg_restore log per table

Idempotent: an entry whose index or constraint is already on the target is not built again, so a rerun after
kill -9 builds only what is missing (CREATE INDEX and ALTER TABLE commit whole or not at all).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from .catalog import Table
from .copyplan import CopyError
from .copyworker import die_with_parent

log = logging.getLogger("great_escape.copy")

# `pg_restore -l`: "dumpId; catalog-table-oid object-oid DESC namespace tag owner". pg_class holds indexes,
# pg_constraint constraints (foreign keys are "FK CONSTRAINT": left to post-data).
_ENTRY = re.compile(r"^\s*(\d+); (\d+) (\d+) (INDEX|CONSTRAINT) ")
PG_CLASS = 1259
PG_CONSTRAINT = 2606


@dataclass(frozen=True)
class Spec:
    toc_list: Path
    dump_dir: Path
    rest_list: Path
    argv: list[str]
    env: dict[str, str]
    jobs: int
    log_dir: Path


@dataclass(frozen=True)
class Entry:
    line: str  # the TOC line, as pg_restore -L reads it
    table: str  # Table.qualname
    constraint: bool  # a constraint of the table, else an index
    schema: str  # of the table, its indexes and constraints
    relname: str  # the table's
    name: str  # of the index or the constraint


def load_spec(path: str | Path) -> Spec:
    try:
        raw = json.loads(Path(path).read_text())
        spec = Spec(toc_list=Path(raw["toc_list"]), dump_dir=Path(raw["dump_dir"]), rest_list=Path(raw["rest_list"]),
                    argv=[str(a) for a in raw["argv"]], env={str(k): str(v) for k, v in raw.get("env", {}).items()},
                    jobs=int(raw.get("jobs", 2)), log_dir=Path(raw["log_dir"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CopyError(f"index builds file {path}: unreadable or incomplete ({exc}); it needs toc_list, dump_dir, "
                        "rest_list, argv and log_dir (the restore role writes it)") from exc
    if spec.jobs < 1 or not spec.argv:
        raise CopyError(f"index builds file {path}: jobs must be positive and argv name pg_restore")
    return spec


def early_entries(source: psycopg.Connection[Any], spec: Spec, tables: list[Table]) -> dict[str, list[Entry]]:
    """The TOC list's entries the copy builds, by table: the indexes and the primary key, unique and exclusion
    constraints of the ordinary tables it copies, looked up by their source oid (the dump's catalog ids)."""
    try:
        lines = spec.toc_list.read_text().splitlines()
    except OSError as exc:
        raise CopyError(f"cannot read the post-data TOC list {spec.toc_list}: {exc.strerror}") from exc
    ids: dict[tuple[int, int], str] = {}
    position: dict[str, int] = {}
    for n, line in enumerate(lines):
        m = _ENTRY.match(line)
        if m:
            ids[(int(m.group(2)), int(m.group(3)))] = line
            position[line] = n
    by_relid = {t.relid: t for t in tables if not t.partitioned}
    found = source.execute(
        "SELECT %(class)s, i.indexrelid::int8, i.indrelid::int8, false, c.relname"
        " FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indexrelid = ANY(%(indexes)s::oid[])"
        " UNION ALL"
        " SELECT %(constraint)s, k.oid::int8, k.conrelid::int8, true, k.conname FROM pg_catalog.pg_constraint k"
        " WHERE k.oid = ANY(%(constraints)s::oid[]) AND k.contype IN ('p', 'u', 'x')",
        {"class": PG_CLASS, "constraint": PG_CONSTRAINT,
         "indexes": [oid for cat, oid in ids if cat == PG_CLASS],
         "constraints": [oid for cat, oid in ids if cat == PG_CONSTRAINT]}).fetchall()
    out: dict[str, list[Entry]] = {}
    for cat, oid, relid, constraint, name in found:
        table = by_relid.get(relid)
        if table is not None:
            out.setdefault(table.qualname, []).append(
                Entry(ids[(cat, oid)], table.qualname, constraint, table.schema, table.name, name))
    for entries in out.values():
        entries.sort(key=lambda e: position[e.line])  # the list's order, pg_restore's
    return out


def write_rest(spec: Spec, built: dict[str, list[Entry]]) -> None:
    """The TOC list without the entries the copy builds, for the restore's post-data step (atomically)."""
    mine = {e.line for entries in built.values() for e in entries}
    text = "".join(f"; built by the copy: {line}\n" if line in mine else f"{line}\n"
                   for line in spec.toc_list.read_text().splitlines())
    tmp = spec.rest_list.with_name(spec.rest_list.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, spec.rest_list)


def missing(target: psycopg.Connection[Any], entries: list[Entry]) -> list[Entry]:
    """The entries whose index or constraint is not on the target yet."""
    out = []
    for e in entries:
        if e.constraint:
            query = ("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE conname = %(name)s AND conrelid ="
                     " pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %(schema)s::text, %(table)s::text)))")
        else:
            query = ("SELECT pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %(schema)s::text, %(name)s::text))"
                     " IS NOT NULL")
        row = target.execute(query, {"schema": e.schema, "table": e.relname, "name": e.name}).fetchone()
        if not (row and row[0]):
            out.append(e)
    target.rollback()
    return out


class Builder:
    """Runs the builds of tables whose chunks are all loaded: `spec.jobs` connections (one pg_restore each)
    while the loads go on; once every chunk is loaded the loads' `spare` connections too, a table's entries
    then built several at once (`pg_restore -j`), so the last big table's indexes do not leave cores idle."""

    def __init__(self, spec: Spec, entries: dict[str, list[Entry]], target: psycopg.Connection[Any], spare: int):
        self.spec = spec
        self.entries = entries
        self.target = target
        self.spare = spare
        self.loads_over = False
        self.queue: deque[str] = deque()
        self.running: dict[str, tuple[subprocess.Popen[bytes], Path, int]] = {}  # process, log, connections
        self.done: list[str] = []
        self.waited: set[str] = set()
        spec.log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def total(self) -> int:
        return len(self.entries)

    @property
    def busy(self) -> bool:
        return bool(self.queue or self.running)

    def loaded(self, table: str) -> None:
        """All of `table`'s chunks are loaded: build its indexes when a job is free."""
        if table in self.entries and table not in self.queue and table not in self.running:
            self.queue.append(table)
        self.poll()

    def all_loaded(self) -> None:
        """Every chunk is loaded: the loads' connections go to the builds not started yet."""
        self.loads_over = True
        self.poll()

    def _free(self) -> int:
        capacity = self.spec.jobs + (self.spare if self.loads_over else 0)
        return capacity - sum(n for _, _, n in self.running.values())

    def poll(self) -> None:
        """Collect finished builds (raising CopyError for a failed one) and start queued ones."""
        for table, (proc, logfile, _) in list(self.running.items()):
            if proc.poll() is None:
                continue
            del self.running[table]
            if missing(self.target, self.entries[table]):
                raise CopyError(f"building the indexes and keys of {table} failed (pg_restore exit {proc.returncode}):"
                                f" {_last_error(logfile)} (log {logfile}). Nothing else of it is lost: fix the cause "
                                "and run the restore again, it builds only what is missing")
            self._finished(table)
        for _ in range(len(self.queue)):
            if self._free() < 1:
                break
            table = self.queue.popleft()
            if self._locked_elsewhere(self.entries[table][0]):
                if table not in self.waited:
                    self.waited.add(table)
                    log.info("%s: another session holds a lock on it (a killed run's build?); building once it "
                             "ends", table)
                self.queue.append(table)  # later
                continue
            todo = missing(self.target, self.entries[table])
            if not todo:
                self._finished(table)
                continue
            self._start(table, todo)

    def wait(self, step: float = 0.2) -> None:
        while self.busy:
            self.poll()
            if self.running:
                _wait_any([p for p, _, _ in self.running.values()], step)
            elif self.queue:  # waiting for another session's lock
                time.sleep(step)

    def stop(self) -> None:
        for proc, _, _ in self.running.values():
            proc.kill()
            proc.wait()
        self.running.clear()

    def _locked_elsewhere(self, entry: Entry) -> bool:
        """Whether another session holds or awaits a lock on the table: a build of a killed run whose server
        side goes on (pg_restore died, its CREATE INDEX did not). Building meanwhile would race it for the
        index's name; once it ended, what it committed is found on the target and not built again.
        Autovacuum does not count (a session without a user, whatever the copy's user may see of it): the
        build's lock request makes it cancel itself within deadlock_timeout, while waiting for it (a freshly
        loaded table's first vacuum) could take longer than the copy."""
        self.target.execute("SELECT pg_catalog.pg_stat_clear_snapshot()")  # else the transaction's first look
        row = self.target.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'relation' AND l.pid <> pg_catalog.pg_backend_pid() AND l.relation ="
            " pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %s::text, %s::text)) AND a.usesysid IS NOT NULL)",
            (entry.schema, entry.relname)).fetchone()
        self.target.rollback()
        return bool(row and row[0])

    def _start(self, table: str, todo: list[Entry]) -> None:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", table)
        listfile, logfile = self.spec.log_dir / f"{stem}.list", self.spec.log_dir / f"{stem}.log"
        listfile.write_text("".join(e.line + "\n" for e in todo))
        # While loads run, one entry at a time: the loads need the CPU more. pg_restore orders a table's
        # entries itself (a key's ALTER TABLE waits for its lock, no error).
        jobs = max(1, min(len(todo), self._free())) if self.loads_over else 1
        with logfile.open("wb") as err:
            proc = subprocess.Popen(
                [*self.spec.argv, "--exit-on-error", f"--jobs={jobs}", f"--use-list={listfile}",
                 str(self.spec.dump_dir)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, **self.spec.env},
                preexec_fn=die_with_parent)  # noqa: PLW1509 - only prctl: a rerun must not race an orphan's build
        self.running[table] = (proc, logfile, jobs)
        log.info("%s: loaded; building %d index(es) and key(s), %d at once", table, len(todo), jobs)

    def _finished(self, table: str) -> None:
        self.done.append(table)
        log.info("%s: indexes and keys built (%d of %d tables)", table, len(self.done), self.total)


def _wait_any(procs: list[subprocess.Popen[bytes]], step: float) -> None:
    try:
        procs[0].wait(step)
    except subprocess.TimeoutExpired:
        pass


def _last_error(logfile: Path) -> str:
    try:
        lines = [line for line in logfile.read_text(errors="replace").splitlines() if "error" in line.lower()]
    except OSError:
        return "no log"
    return lines[-1].strip() if lines else "no error in the log"
