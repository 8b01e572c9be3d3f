"""Benchmark 1: initial copy. great-escape's dump + transfer + restore vs plain pg_dump/rsync/pg_restore
vs `pgcopydb clone`, on the same source database, into the same target cluster.

    python -m bench copy [--scale quick|medium|full]

    python -m bench copy --scale medium --variants plain,great-escape --ge-variant 'z0={"dump_compress": 0}'
    python -m bench copy --scale medium --link wan              # across an emulated 400 Mbit/s link
    python -m bench copy --link wan --link-rate 100mbit --ge-variant 'read-on-source={"ge_copy_read_on_source": true}'
    python -m bench copy --scale medium --data giant            # one table holds >= 80 % of the bytes

Data (--data standard): pgbench at a scale plus one wide table (bench.initial_copy.WIDE) holding ~60-70% of
the bytes; --data giant: a smaller pgbench and a bigger wide table, >= 80 % of the database's bytes.
Link (--link): loopback (every cluster and program on 127.0.0.1, a transfer is a local copy) or wan
(bench.wan: the source cluster, pg_dump and the rsync push run in a network namespace behind a veth pair
shaped with tc tbf to 400 Mbit/s each way; the replication host, Ansible, pgcopydb and the target run in the
root namespace, so every byte from source to target crosses the link, and the bytes that crossed are counted
per variant).
great-escape runs once per copy method (--ge-methods, `-e ge_copy_method=...`): pg_dump (whole sections
through dump files) and chunked (the engine's chunked, pipelined copy), each labelled; a method the roles do
not have yet is reported as not run.
great-escape runs its real phase playbooks (DESIGN.md phases 5-7: 04_dump.yml, 05_transfer.yml,
06_restore.yml, in one ansible-playbook process as migrate.yml runs them) through an inventory generated
for the bench clusters; --ge-variant adds runs with other
role variables, to measure a setting against the same baselines. Goals: total <= 0.6 x plain and
<= 1.0 x pgcopydb. Besides the totals, the report shows the time per playbook section (profile_tasks)
and per table (both servers' statement logs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from psycopg import sql

from great_escape import db
from great_escape.localcluster import MASTER_USER

from . import common as c
from . import wan

# scale -> (pgbench scale, rows of the wide table, timeout per step in seconds, rounds)
SIZES = {"quick": (1, 60_000, 300, 1), "medium": (10, 1_000_000, 1800, 3),
         "full": (100, 10_000_000, 4 * 3600, 1)}
# --data giant: scale -> (pgbench scale, rows of the wide table), sized like the standard set at each scale
GIANT_SIZES = {"quick": (1, 300_000), "medium": (5, 1_200_000), "full": (50, 11_000_000)}
VARIANTS = ("plain", "great-escape", "pgcopydb")
GE_METHODS = ("pg_dump", "chunked")
JOBS = 2  # -j for pg_dump/pg_restore and pgcopydb's table/index jobs: the same for every variant
WIDE_CHUNK = 1_000_000

WIDE = sql.SQL("""
CREATE TABLE public.wide_events (
    id bigint PRIMARY KEY,
    account_id integer NOT NULL,
    created_at timestamptz NOT NULL,
    status text NOT NULL,
    amount numeric(12, 2) NOT NULL,
    tags text[],
    payload text NOT NULL,
    note text
);
CREATE INDEX wide_events_account_idx ON public.wide_events (account_id);
CREATE INDEX wide_events_created_idx ON public.wide_events (created_at)
""")

# ~320 bytes a row; md5 text compresses about as well as typical application payloads.
WIDE_ROWS = sql.SQL("""
INSERT INTO public.wide_events
SELECT g, (g * 7919) %% 100000, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second',
       (ARRAY['new', 'paid', 'shipped', 'void'])[1 + g %% 4], (g %% 100000) / 100.0,
       ARRAY['t' || g %% 10, 'u' || g %% 7], repeat(md5(g::text), 6),
       CASE WHEN g %% 3 = 0 THEN md5((g * 3)::text) END
FROM generate_series(%s::bigint, %s::bigint) AS g
""")


def load_source(params: dict[str, Any], pgbench_scale: int, wide_rows: int, timeout: float) -> None:
    c.pgbench_init(params, pgbench_scale, timeout)
    with db.connect(params, "bench load", autocommit=True) as conn:
        conn.execute(WIDE)
        for first in range(1, wide_rows + 1, WIDE_CHUNK):
            conn.execute(WIDE_ROWS, (first, min(first + WIDE_CHUNK - 1, wide_rows)))
        conn.execute("VACUUM ANALYZE")


# --------------------------------------------------------------------------- the three pipelines

def plain_copy(src: dict[str, Any], dst: dict[str, Any], work: Path, timeout: float,
               link: wan.Link | None = None) -> c.Phases:
    """What a team would script: pg_dump -Fd -j2 -Z3, one rsync, pg_restore -j2. Over the WAN link the dump
    runs on the source side, rsync pushes it over ssh to the replication host side, pg_restore runs there."""
    phases = c.Phases()
    dump, received = work / "plain-dump", work / "plain-received"
    side = link.ns if link else (lambda cmd: cmd)
    with phases.phase("dump"):
        c.run(side([c.pg_tool("pg_dump"), "-Fd", "-j", str(JOBS), "-Z", "3", "-f", str(dump)]),
              env=c.pg_env(src), timeout=timeout, what="plain pg_dump")
    with phases.phase("transfer"):
        if link:
            c.run(link.ns(["rsync", "-a", "-e", link.rsh(), f"{dump}/", f"root@{wan.HOST_ADDR}:{received}/"]),
                  timeout=timeout, what="plain rsync over the WAN link")
        else:
            c.run(["rsync", "-a", f"{dump}/", f"{received}/"], timeout=timeout, what="plain rsync")
    with phases.phase("restore"):
        c.run([c.pg_tool("pg_restore"), "-j", str(JOBS), "-d", dst["dbname"], str(received)],
              env=c.pg_env(dst), timeout=timeout, what="plain pg_restore")
    return phases


# The great-escape variant runs the three phase playbooks; per-phase time comes from the ansible.cfg's
# profile_tasks callback (each task's start, as elapsed seconds), split into sections at these tasks.
PLAYBOOKS = (("dump", "playbooks/04_dump.yml"), ("transfer", "playbooks/05_transfer.yml"),
             ("restore", "playbooks/06_restore.yml"))
SECTIONS = {
    # Task names of the roles before and after the 2026-11 overhaul (the "before" variant runs the old ones).
    "dump": ((r"(?:Report a section dumped by an earlier run|Check whether this section is already dumped) (\S+)$",
              "pg_dump {0}"),
             (r"Ensure the schema sections are dumped", "pg_dump schema sections"),
             (r"Ensure the data section is dumped", "pg_dump data"),
             (r"Ensure the sha256 manifest", "manifest")),
    "transfer": ((r"Start one rsync per stream|Start rsync", "rsync"),
                 (r"Compare every received file", "verify")),
    "restore": ((r"Check the dump and the target, restore the schema", "checks, pre-data, bigint, grants, copy setup"),
                (r"Restore the schema \(pre-data\)", "pre-data"), (r"Convert int keys", "bigint"),
                (r"Empty the tables|Run pg_restore for the data|Ensure the data step is marked started", "data"),
                # ge_copy_method chunked (the engine's copy instead of pg_restore's data section)
                (r"Grant the replication user DML (?:on the restored tables before the copy|and write the copy's)",
                 "copy setup"),
                # from 2026-12-03 (session 17) the copy's job runs post-data too: "chunked copy and post-data"; from
                # session 18 the owners and privileges as well
                (r"Start the chunked copy, post-data and the owners", "chunked copy, post-data, owners"),
                (r"Start the chunked copy and post-data", "chunked copy and post-data"),
                (r"Start the chunked copy", "chunked copy"), (r"Ensure the sequences' values are copied", "sequences"),
                (r"Run pg_restore for indexes|Ensure the post-data step is marked started", "post-data"),
                # up to 2026-12-03: the replication user's grants at the end, then the application's owners
                (r"Grant the replication user|Ensure the application's owners and privileges", "grants, owners")),
}
_PLAY = re.compile(r"^PLAY \[(.*?)\] \*+")
_TASK = re.compile(r"^TASK \[(?:[\w.]+ : )?(.*?)\] \*+")
_STAMP = re.compile(r"^\w+ \d+ \w+ \d{4}\s+\S+ \S+ \(\S+\)\s+(\d+):(\d+):([\d.]+) \*+")


SKIPPED = "(skipped) "  # prefix of a task every host skipped: it names no section (the other method's tasks)


def task_timeline(output: str) -> tuple[list[tuple[str, float, str]], float]:
    """([(task name, start in s since the first play began, play name)], end in s) from profile_tasks'
    output; a task whose every result line was 'skipping:' has its name prefixed with SKIPPED."""
    tasks: list[tuple[str, float, str]] = []
    end = 0.0
    name: str | None = None
    play = ""
    statuses: set[str] = set()

    def mark_skipped() -> None:
        if tasks and statuses == {"skipping"}:
            tasks[-1] = (SKIPPED + tasks[-1][0], *tasks[-1][1:])

    for line in output.splitlines():
        started = _PLAY.match(line)
        if started:
            play = started.group(1)
            continue
        status = re.match(r"^(ok|changed|skipping|fatal|failed|included): ", line)
        if status:
            statuses.add(status.group(1))
            continue
        task = _TASK.match(line)
        if task:
            mark_skipped()
            statuses = set()
            name = task.group(1)
            continue
        if line.startswith("TASKS RECAP"):
            mark_skipped()
            statuses = {"recap"}
            name = ""
            continue
        stamp = _STAMP.match(line)
        if stamp and name is not None:
            at = int(stamp.group(1)) * 3600 + int(stamp.group(2)) * 60 + float(stamp.group(3))
            if name:
                tasks.append((name, at, play))
            else:
                end = at
            name = None
    return tasks, end


def _task_sections(phase: str, tasks: list[tuple[str, float]], end: float) -> list[tuple[str, float, float]]:
    """(section, start, end) of every task of one playbook run: a section runs from its first task to the next
    section's."""
    out = []
    label = "setup"
    for i, (name, at) in enumerate(tasks):
        for pattern, template in SECTIONS[phase]:
            # The restore's skipped tasks are the other copy method's; the dump's "Report a section dumped
            # by an earlier run" is skipped on a fresh dump and still starts its section.
            m = None if phase == "restore" and name.startswith(SKIPPED) else re.search(pattern, name)
            if m:
                label = template.format(*m.groups())
                break
        out.append((label, at, tasks[i + 1][1] if i + 1 < len(tasks) else end))
    return out


def split_sections(phase: str, tasks: list[tuple[str, float]], end: float) -> dict[str, float]:
    """Seconds per section of one playbook run."""
    seconds: dict[str, float] = {}
    for label, at, following in _task_sections(phase, tasks, end):
        seconds[label] = seconds.get(label, 0.0) + following - at
    return seconds


CALIBRATION_TASKS = 10


def ansible_costs(work: Path, timeout: float) -> tuple[float, float]:
    """(seconds of one trivial module task, seconds of ansible-playbook's own start and stop) at the
    machine's present load: a playbook of CALIBRATION_TASKS `command: "true"` tasks on localhost."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "hosts.yml").write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n")
    tasks = "".join(f"    - name: Run a trivial module {i}\n      ansible.builtin.command: 'true'\n"
                    "      changed_when: false\n" for i in range(CALIBRATION_TASKS))
    (work / "calibrate.yml").write_text(f"- name: Calibrate\n  hosts: all\n  gather_facts: false\n  tasks:\n{tasks}")
    started = time.monotonic()
    proc = c.run([c.ANSIBLE_PLAYBOOK, "-i", str(work / "hosts.yml"), str(work / "calibrate.yml")],
                 env={**c.playbook_env(), "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks"},
                 timeout=timeout, what="ansible calibration", cwd=c.ROOT)
    wall = time.monotonic() - started
    tasks_seen, end = task_timeline(proc.stdout)
    first = tasks_seen[0][1] if tasks_seen else 0.0
    return (end - first) / CALIBRATION_TASKS, wall - (end - first)


def wan_inventory(path: Path, link: wan.Link) -> None:
    """hosts.yml of an inventory whose source host is the far side of the WAN link, reached over ssh (the
    dump runs there; the transfer role pushes from there with rsync over ssh to the replication host side);
    replication and target stay local to the controller, as on the AWS side."""
    ssh_args = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    hosts = {"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"},
        "children": {
            "source": {"hosts": {"source": {
                "ansible_connection": "ssh", "ansible_host": wan.NS_ADDR, "ansible_port": wan.NS_SSH_PORT,
                "ansible_user": "root", "ansible_ssh_private_key_file": str(link.key),
                "ansible_ssh_common_args": ssh_args}}},
            "replication": {"hosts": {"replication": {"ansible_host": wan.HOST_ADDR}}},
            "target": {"hosts": {"target": {}}},
        }}}
    (path / "hosts.yml").write_text(yaml.safe_dump(hosts))


@dataclass
class GreatEscapeRun:
    """What great_escape_setup prepared for one great-escape variant's run."""

    inventory: Path
    env: dict[str, str]
    extra: dict[str, Any]
    work: Path
    timeout: float


# Before the copy, untimed (they are phases 3 and 4 of a migration, not part of the copy): the target's
# replication user and state schema, and capture on the source, which the chunked copy requires
# (invariant 1: capture committed before the copy's snapshot). Both copy methods get them alike; capture
# is removed again after the variant (capture_state absent) so the baselines copy the plain source.
SETUP_PLAYBOOKS = (("prepare_target", "playbooks/02_prepare_target.yml"), ("capture", "playbooks/03_capture.yml"))


def great_escape_setup(src: dict[str, Any], dst: dict[str, Any], work: Path, timeout: float,
                       extra: dict[str, Any], link: wan.Link | None = None) -> GreatEscapeRun:
    """The inventory for the bench clusters (over the WAN link: the source host is the namespace's side,
    reached over ssh, see wan_inventory), then 02_prepare_target.yml and 03_capture.yml."""
    extra = dict(extra)
    env = {"ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks", **extra.pop("_env", {})}
    overrides: dict[str, Any] = {}
    if link:
        overrides = {"transfer_ssh_command": link.rsh(), "transfer_ssh_user": "root",
                     "transfer_dest_address": wan.HOST_ADDR}
        # The link's key for the chunked copy reading on the source host (a variant with ge_copy_read_on_source:
        # true), as an extra variable: it is defined in playbooks/group_vars, above the inventory's.
        if extra.get("ge_copy_read_on_source"):
            extra["ge_copy_source_ssh_command"] = " ".join(["ssh", *link.ssh_options()])
        env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(work / "cp")
    inventory = c.write_inventory(work / "inventory", src, dst, work / "ge", REPL_USER, REPL_PASSWORD,
                                  **overrides)
    if link:
        wan_inventory(inventory, link)
    run = GreatEscapeRun(inventory, env, extra, work, timeout)
    for what, playbook in SETUP_PLAYBOOKS:
        c.run_playbook(playbook, inventory, extra=extra, timeout=timeout, env=env,
                       log=work.parent / "logs" / f"{work.name}-{what}.log")
    return run


def great_escape_teardown(run: GreatEscapeRun) -> None:
    """Capture off the source again (03_capture.yml with capture_state absent)."""
    c.run_playbook("playbooks/03_capture.yml", run.inventory, extra={**run.extra, "capture_state": "absent"},
                   timeout=run.timeout, env=run.env, log=run.work.parent / "logs" / f"{run.work.name}-uncapture.log")


def great_escape_copy(run: GreatEscapeRun) -> tuple[c.Phases, dict[str, float], list[tuple[str, float, float]]]:
    """One `ansible-playbook 04_dump.yml 05_transfer.yml 06_restore.yml` (DESIGN.md phases 5-7), one process as
    migrate.yml runs them, through the inventory great_escape_setup wrote; the restore runs as the target's
    non-superuser master.

    Returns the wall time per phase (a phase runs from its first play's first task to the next phase's;
    Ansible's start-up counts to the dump, its stop to the restore: the user pays them), the seconds per
    section inside each phase, read from the profile_tasks callback, and each section's span (start and end
    in s after ansible-playbook started)."""
    phases = c.Phases()
    log = run.work.parent / "logs" / f"{run.work.name}-copy.log"
    started = time.monotonic()
    proc = c.run_playbook([playbook for _, playbook in PLAYBOOKS], run.inventory, extra=run.extra,
                          timeout=run.timeout, log=log, env=run.env)
    wall = time.monotonic() - started
    tasks, end = task_timeline(proc.stdout)
    # profile_tasks counts from the first play's start: what ansible-playbook spent before it (loading the
    # playbooks, the inventory) and after the recap is its start and stop.
    offset = wall - end
    starts = [(phase, at) for phase, _ in PLAYBOOKS
              for at in [next((at for _, at, play in tasks if play_phase(play) == phase), None)] if at is not None]
    sections: dict[str, float] = {"ansible start/stop": offset}
    spans: list[tuple[str, float, float]] = []
    for i, (phase, begin) in enumerate(starts):
        until = starts[i + 1][1] if i + 1 < len(starts) else end
        mine = [(name, at) for name, at, play in tasks if play_phase(play) == phase]
        phases.seconds[phase] = until - begin + (offset if i == 0 else 0.0)
        phases.spans.append((phase, 0.0 if i == 0 else offset + begin, offset + until))
        for label, secs in split_sections(phase, mine, until).items():
            sections[f"{phase} {label}"] = secs
        spans += [(f"{phase} {label}", offset + a, offset + b) for label, a, b in section_spans(phase, mine, until)]
    return phases, sections, spans


@functools.cache
def play_phase(play: str) -> str | None:
    """The phase (a PLAYBOOKS name) whose playbook holds the play of this name."""
    for phase, playbook in PLAYBOOKS:
        if play in {p.get("name") for p in yaml.safe_load((c.ROOT / playbook).read_text())}:
            return phase
    return None


def section_spans(phase: str, tasks: list[tuple[str, float]], end: float) -> list[tuple[str, float, float]]:
    """(section, first start, last end) in s since the play began, for the sections split_sections finds."""
    spans: dict[str, list[float]] = {}
    for label, at, following in _task_sections(phase, tasks, end):
        span = spans.setdefault(label, [at, following])
        span[0], span[1] = min(span[0], at), max(span[1], following)
    return [(label, a, b) for label, (a, b) in spans.items()]


def pgcopydb_clone(src: dict[str, Any], dst: dict[str, Any], work: Path,
                   timeout: float) -> tuple[c.Phases, str]:
    """`pgcopydb clone` with the same parallelism; returns its own step summary too."""
    phases = c.Phases()

    def uri(p: dict[str, Any]) -> str:
        # No password in the URI (it would show in process lists and logs): PGPASSWORD carries it.
        return f"postgres://{p['user']}@{p['host']}:{p['port']}/{p['dbname']}"

    env = c.pg_env(src)
    log = work / "pgcopydb.log"
    with phases.phase("clone"):
        proc = c.run(["pgcopydb", "clone", "--source", uri(src), "--target", uri(dst),
                      "--table-jobs", str(JOBS), "--index-jobs", str(JOBS), "--dir", str(work / "pgcopydb")],
                     env=env, timeout=timeout, what="pgcopydb clone", log=log)
    lines = proc.stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if "Step" in line and "Connection" in line), len(lines))
    summary = [line for line in lines[start:] if line.strip()][:12]
    return phases, "\n".join(summary)


# --------------------------------------------------------------------------- where the time goes, per table

# Both clusters log every statement of the benchmark's databases with its duration
# (log_min_duration_statement = 0 on those databases only; pg_dump, pg_restore and pgcopydb send a few
# hundred statements, so the logging costs every variant alike and next to nothing).
_LOGGED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC \[(\d+)\] LOG:  duration: ([0-9.]+) ms  "
                     r"(?:statement|execute [^:]*): (.*)$")
_COPY = re.compile(r"^COPY\s+(?:\((?:.*?\bFROM\s+(?:ONLY\s+)?([\w.\"]+)).*\)|([\w.\"]+))(?:\s*\([^)]*\))?\s+"
                   r"(FROM|TO)\b", re.I | re.S)
_INDEX = re.compile(r"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF NOT EXISTS\s+)?\S+\s+ON\s+"
                    r"(?:ONLY\s+)?([\w.\"]+)", re.I)
_ALTER = re.compile(r"^ALTER TABLE\s+(?:ONLY\s+)?([\w.\"]+)\s+(.*)$", re.I | re.S)


@dataclass(frozen=True)
class Statement:
    end: float  # epoch seconds
    seconds: float
    kind: str  # read (COPY TO), load (COPY FROM), index, key (ADD CONSTRAINT other than FK), fk, bigint, other
    table: str
    pid: int  # the server process: one per connection

    @property
    def start(self) -> float:
        return self.end - self.seconds


def _classify(text: str) -> tuple[str, str]:
    m = _COPY.match(text)
    if m:
        return ("read" if m.group(3).upper() == "TO" else "load"), (m.group(1) or m.group(2)).replace('"', "")
    m = _INDEX.match(text)
    if m:
        return "index", m.group(1).replace('"', "")
    m = _ALTER.match(text)
    if m:
        rest = m.group(2).upper()
        kind = ("fk" if "FOREIGN KEY" in rest else "bigint" if "TYPE BIGINT" in rest
                else "key" if "ADD CONSTRAINT" in rest else "other")
        return kind, m.group(1).replace('"', "")
    return "other", ""


def read_statements(log: Path, offset: int) -> list[Statement]:
    """Statements logged with their duration in `log` after byte `offset` (continuation lines joined)."""
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    found: list[Statement] = []
    current: list[str] = []
    head: re.Match[str] | None = None

    def flush() -> None:
        if head:
            kind, table = _classify(" ".join([head.group(4), *current]).strip())
            end = dt.datetime.strptime(head.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.UTC).timestamp()
            found.append(Statement(end, float(head.group(3)) / 1000, kind, table, int(head.group(2))))

    for line in text.splitlines():
        if line.startswith("\t"):
            current.append(line.strip())
            continue
        flush()
        head, current = _LOGGED.match(line), []
    flush()
    return found


@dataclass
class TableTimes:
    """Seconds spent on one table by one run, from both servers' statement logs."""

    read: float = 0.0  # source: COPY TO (pg_dump, pgcopydb)
    load: float = 0.0  # target: COPY FROM
    build: float = 0.0  # target: CREATE INDEX, primary/unique keys, foreign keys
    first: float = float("inf")  # target: first statement's start, s after the run started
    last: float = 0.0  # target: last statement's end
    reads: int = 0  # COPY TO statements on the source (one per table for pg_dump; one per chunk when split)
    loads: int = 0  # COPY FROM statements on the target
    parallel: int = 0  # the most COPY FROM statements on this table running at the same moment
    # target connection (server pid) -> its COPY FROM into this table, (start, end) in s after the run started
    loaders: dict[int, list[tuple[float, float]]] = dataclasses.field(default_factory=dict)


def max_parallel(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def per_table(source_stmts: list[Statement], target_stmts: list[Statement], started: float) -> dict[str, TableTimes]:
    tables: dict[str, TableTimes] = {}
    for st in source_stmts:
        if st.kind == "read":
            t = tables.setdefault(st.table, TableTimes())
            t.read += st.seconds
            t.reads += 1
    for st in target_stmts:
        if st.kind in ("load", "index", "key", "fk"):
            t = tables.setdefault(st.table, TableTimes())
            if st.kind == "load":
                t.load += st.seconds
                t.loads += 1
                t.loaders.setdefault(st.pid, []).append((st.start - started, st.end - started))
            else:
                t.build += st.seconds
            t.first, t.last = min(t.first, st.start - started), max(t.last, st.end - started)
    for t in tables.values():
        t.parallel = max_parallel([span for spans in t.loaders.values() for span in spans])
    return tables


def merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of intervals, as sorted disjoint intervals."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def length(merged: list[tuple[float, float]]) -> float:
    return sum(b - a for a, b in merged)


def overlap(x: list[tuple[float, float]], y: list[tuple[float, float]]) -> float:
    """Seconds during which both unions (merged intervals) were busy."""
    return sum(max(0.0, min(b, d) - max(a, c)) for a, b in x for c, d in y)


@dataclass
class Activity:
    """When the servers worked, from their statement logs, in s after the run started: the union of the
    source's COPY TO (read), the target's COPY FROM (load) and its index and constraint builds (build)."""

    read: list[tuple[float, float]]
    load: list[tuple[float, float]]
    build: list[tuple[float, float]]

    @classmethod
    def of(cls, source_stmts: list[Statement], target_stmts: list[Statement], started: float) -> Activity:
        def spans(stmts: list[Statement], kinds: tuple[str, ...]) -> list[tuple[float, float]]:
            return merge([(s.start - started, s.end - started) for s in stmts if s.kind in kinds])
        return cls(spans(source_stmts, ("read",)), spans(target_stmts, ("load",)),
                   spans(target_stmts, ("index", "key", "fk")))

    @staticmethod
    def window(merged: list[tuple[float, float]]) -> str:
        return f"{merged[0][0]:.1f}-{merged[-1][1]:.1f} (busy {length(merged):.1f})" if merged else "-"


@dataclass
class Run:
    """One variant's run: wall time per phase, sections inside them (great-escape), and per-table times."""

    phases: c.Phases
    sections: dict[str, float]
    tables: dict[str, TableTimes]
    target_busy: dict[str, float]  # statement kind -> seconds on the target
    spans: list[tuple[str, float, float]] = dataclasses.field(default_factory=list)  # phase/section, start, end
    activity: Activity | None = None
    link_bytes: tuple[int, int] | None = None  # (source -> AWS, AWS -> source) over the WAN link
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)  # CPU seconds: source, target, other


def loaders_table(table_name: str, runs: dict[str, Run]) -> str:
    """Who loaded `table_name` in each run: per target connection (a great-escape worker holds one for all its
    chunks; pg_restore and pgcopydb load a table in one), its COPY FROM statements, their seconds, its first
    start and last end, and how much of the table's whole load window it spent loading."""
    rows = []
    for name, run in runs.items():
        t = run.tables.get(table_name)
        if t is None or not t.loaders:
            continue
        spans = [span for loader in t.loaders.values() for span in loader]
        window = max(b for _, b in spans) - min(a for a, _ in spans)
        for number, loader in enumerate(sorted(t.loaders.values(), key=lambda lo: lo[0][0]), 1):
            busy = length(merge(loader))
            rows.append([name, number, len(loader), busy, f"{loader[0][0]:.1f}-{max(b for _, b in loader):.1f}",
                         f"{100 * busy / window:.0f} %" if window > 0 else "-"])
    return "\n".join([f"Who loaded the biggest table, {table_name}, in each variant's median run: per target "
                      "connection (each of great-escape's copy workers holds one for all its chunks; pg_restore and "
                      "pgcopydb load a table through one), its COPY FROM statements, the seconds they ran, its first "
                      "start and last end (s after the run started) and the share of the table's whole load window it "
                      "was loading:",
                      "", c.table(["variant", "connection", "COPY FROM stmts", "load s", "window s", "busy"], rows)])


# --------------------------------------------------------------------------- the benchmark

REPL_USER, REPL_PASSWORD = "ge_repl", "ge-bench-repl-secret"


def _parse_variants(parser: Any) -> None:
    parser.add_argument("--ge-variant", action="append", default=[], metavar="NAME=JSON",
                        help="also run great-escape with these extra vars (e.g. "
                             "'z0={\"dump_compress\": 0}'), reported as 'great-escape NAME'; a key _env holds "
                             "environment variables for ansible-playbook instead (e.g. ANSIBLE_ROLES_PATH)")
    parser.add_argument("--rounds", type=int, help="rounds instead of the scale's default")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset of %(default)s to run (plain is always run: the ratios need it)")
    parser.add_argument("--ge-methods", default=",".join(GE_METHODS),
                        help="great-escape's copy methods to run, each as its own variant 'great-escape METHOD' "
                             "(-e ge_copy_method=METHOD); one the roles lack is reported as not run "
                             "(default %(default)s)")
    parser.add_argument("--link", choices=("loopback", "wan"), default="loopback",
                        help="loopback: everything on 127.0.0.1; wan: source side behind a veth pair shaped "
                             "to --link-rate (bench.wan; needs root, ip and tc)")
    parser.add_argument("--link-rate", default=wan.RATE,
                        help="with --link wan: the pair's bandwidth, as tc writes it (default %(default)s)")
    parser.add_argument("--data", choices=("standard", "giant"), default="standard",
                        help="standard: pgbench + wide table (~60-70%% of the bytes); giant: the wide table "
                             "holds >= 80%% of the bytes")
    parser.add_argument("--keep-going", action="store_true",
                        help="a great-escape or pgcopydb variant that fails is reported as failed (with the "
                             "reason) instead of ending the run")
    parser.add_argument("--key", help="results section key (default: copy, copy-wan, copy-giant, copy-giant-wan)")


def chunked_missing() -> str:
    """Why great-escape's chunked copy cannot run yet ('' when the engine module and the roles have it)."""
    if not (c.ROOT / "src/great_escape/copy.py").exists():
        return "src/great_escape/copy.py does not exist yet"
    texts = [f.read_text(errors="replace") for f in (c.ROOT / "roles").rglob("*.yml")]
    if not any("ge_copy_method" in text for text in texts) or not any("chunked" in text for text in texts):
        return "no role reads ge_copy_method or knows the chunked method yet"
    return ""


def _target_db(target: Any, name: str, owner: str | None) -> dict[str, Any]:
    """A fresh target database logging every statement; owned by the master user for great-escape (its
    restore runs as the non-superuser master, as on Aurora), by the superuser for the others."""
    stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if owner:
        stmt = sql.SQL("{} OWNER {}").format(stmt, sql.Identifier(owner))
    c.execute(c.superuser(target), stmt, sql.SQL("ALTER DATABASE {} SET log_min_duration_statement = 0").format(
        sql.Identifier(name)))
    params = c.superuser(target, name)
    return {**params, "user": owner} if owner else params


def main(argv: Sequence[str] | None = None) -> int:
    c.install_signal_handlers()
    args = c.parse_args(__doc__ or "", argv, extra=_parse_variants)
    pgbench_scale, wide_rows, timeout, rounds = SIZES[args.scale]
    if args.data == "giant":
        pgbench_scale, wide_rows = GIANT_SIZES[args.scale]
    rounds = args.rounds or rounds
    wanted = set(args.variants.split(",")) | {"plain"}
    ge_variants: dict[str, dict[str, Any]] = {}
    not_run: dict[str, str] = {}
    if "great-escape" in wanted:
        for method in args.ge_methods.split(","):
            if method not in GE_METHODS:
                raise SystemExit(f"--ge-methods: unknown method {method!r} (known: {', '.join(GE_METHODS)})")
            why = chunked_missing() if method == "chunked" else ""
            if why:
                not_run[f"great-escape {method}"] = why
            else:
                ge_variants[f"great-escape {method}"] = {"ge_copy_method": method}
    for spec in args.ge_variant:
        name, _, extra = spec.partition("=")
        ge_variants[f"great-escape {name}"] = json.loads(extra or "{}")
    names = ["plain", *(v for v in ge_variants), *(["pgcopydb"] if "pgcopydb" in wanted else [])]
    key = args.key or "copy" + ("-giant" if args.data == "giant" else "") + ("-wan" if args.link == "wan" else "")
    for name, why in not_run.items():
        print(f"copy: {name} not run: {why}", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        link = stack.enter_context(wan.Link(args.link_rate)) if args.link == "wan" else None
        source, target = stack.enter_context(c.clusters("copy", 0, ["source", "aurora"], args.scale, keep=args.keep))
        for cluster in (source, target):
            c.execute(c.superuser(cluster), "ALTER SYSTEM SET log_timezone = 'UTC'",
                      "SELECT pg_catalog.pg_reload_conf()")
        c.execute(c.superuser(target), sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(REPL_USER), sql.Literal(REPL_PASSWORD)))
        src = c.create_database(source, "app_src")
        load_source(src, pgbench_scale, wide_rows, timeout)
        c.execute(src, "ALTER DATABASE app_src SET log_min_duration_statement = 0")
        raw_rate = 0.0
        if link:
            # Loaded on loopback (the load is not what is measured); from here on the source listens only
            # on the far side of the link.
            src = {**wan.move_source(source), "dbname": "app_src"}
            raw_rate = link.measure((50 if args.scale == "quick" else 200) << 20)
            print(f"copy: WAN link measured at {raw_rate * 8 / 1e6:.0f} Mbit/s ({raw_rate / 2**20:.1f} MiB/s) "
                  "raw TCP, source side -> AWS side", file=sys.stderr, flush=True)
        size = c.database_size(src)
        wide_size = int(c.query(src, "SELECT pg_catalog.pg_total_relation_size('public.wide_events')")[0][0])
        table_bytes = dict(c.query(src, "SELECT 'public.' || relname, pg_catalog.pg_total_relation_size(oid) "
                                        "FROM pg_catalog.pg_class WHERE relkind = 'r' "
                                        "AND relnamespace = 'public'::regnamespace"))
        want = c.table_counts(src)
        work = source.datadir.parent / "work"
        work.mkdir(parents=True, exist_ok=True)
        os.chmod(work, 0o755)
        runs: dict[str, list[Run]] = {name: [] for name in names}
        work_bytes: dict[str, int] = {}
        loads: list[float] = []
        costs: list[tuple[float, float]] = []
        pgcopydb_summary = ""
        for round_no in range(rounds):
            # Rotate the order each round so cache warmth and neighbours' load hit every variant alike.
            if ge_variants:
                costs.append(ansible_costs(work / "calibration", timeout))
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                print(f"copy: round {round_no + 1}/{rounds} {name} ...", file=sys.stderr, flush=True)
                loads.append(os.getloadavg()[0])
                dbname = "app_" + re.sub(r"\W", "_", name)
                dst = _target_db(target, dbname, MASTER_USER if name in ge_variants else None)
                variant_work = work / re.sub(r"\W", "_", name)
                variant_work.mkdir()
                sections: dict[str, float] = {}
                spans: list[tuple[str, float, float]] = []
                ge_run: GreatEscapeRun | None = None
                try:
                    if name in ge_variants:
                        ge_run = great_escape_setup(src, dst, variant_work, timeout, ge_variants[name], link)
                    offsets = [(cl.datadir / "server.log").stat().st_size for cl in (source, target)]
                    counted = link.counters() if link else (0, 0)
                    meter = c.CpuMeter({"source": source, "target": target})
                    meter.start()
                    started = time.time()
                    if name == "plain":
                        phases = plain_copy(src, dst, variant_work, timeout, link)
                    elif ge_run:
                        phases, sections, spans = great_escape_copy(ge_run)
                    else:
                        phases, pgcopydb_summary = pgcopydb_clone(src, dst, variant_work, timeout)
                    crossed = link.counters() if link else (0, 0)
                    cpu = meter.stop()
                    got = c.table_counts(dst)
                    if got != want:
                        raise c.BenchError(f"{name}: target row counts {got} differ from the source's {want}")
                    src_stmts, dst_stmts = (read_statements(cl.datadir / "server.log", off)
                                            for cl, off in zip((source, target), offsets, strict=True))
                    busy: dict[str, float] = {}
                    for st in dst_stmts:
                        busy[st.kind] = busy.get(st.kind, 0.0) + st.seconds
                    runs[name].append(Run(phases, sections, per_table(src_stmts, dst_stmts, started), busy,
                                          spans=list(phases.spans) + spans,
                                          activity=Activity.of(src_stmts, dst_stmts, started),
                                          link_bytes=(crossed[0] - counted[0], crossed[1] - counted[1])
                                          if link else None, cpu=cpu))
                    work_bytes[name] = c.dir_size(variant_work)
                except c.BenchError as exc:
                    if not args.keep_going or name == "plain":
                        raise
                    text = str(exc).strip().splitlines()
                    fatal = [line for line in text if line.startswith(("fatal:", "failed:", "ERROR!"))]
                    # The reason ends the message (a module's msg may start with warnings).
                    reason = (fatal[-1] if fatal else text[0]).replace("\\n", " ")
                    kept = c.BENCH_ROOT / "copy-failed-logs"
                    kept.mkdir(parents=True, exist_ok=True)
                    for f in (variant_work.parent / "logs").glob(f"{variant_work.name}-*.log"):
                        shutil.copy(f, kept / f.name)
                    not_run[name] = (f"failed in round {round_no + 1} (playbook logs kept in {kept}): ..."
                                     f"{reason[-600:]}")
                    print(f"copy: {name} {not_run[name]}", file=sys.stderr, flush=True)
                finally:
                    try:
                        if ge_run:
                            great_escape_teardown(ge_run)
                    finally:
                        c.execute(c.superuser(target), sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(dbname)))
                    shutil.rmtree(variant_work, ignore_errors=True)
        for name in [n for n, r in runs.items() if not r]:
            del runs[name]
            ge_variants.pop(name, None)
        body = _report(runs, ge_variants, work_bytes, pgcopydb_summary, size, wide_size, table_bytes,
                       pgbench_scale, wide_rows, src, args.scale, loads, costs,
                       data=args.data, link=args.link, raw_rate=raw_rate, not_run=not_run, rate=args.link_rate)
        title = "1. Initial copy" + (", giant table" if args.data == "giant" else "") + (
            f", over an emulated {args.link_rate} link" if link else "")
        c.write_results(args.results, key, title, body, args.scale)
    return 0


def _median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.phases.total)[(len(runs) - 1) // 2]


def section_table(sections: dict[str, list[dict[str, float]]]) -> str:
    """One row per playbook section, one column per great-escape variant (median over its runs)."""
    labels = list(dict.fromkeys(k for runs in sections.values() for r in runs for k in r))
    rows = [[label, *(c.median([r.get(label, 0.0) for r in runs]) for runs in sections.values())]
            for label in labels]
    return c.table(["section", *sections], rows)


def _report(runs: dict[str, list[Run]], ge_variants: dict[str, dict[str, Any]], work_bytes: dict[str, int],
            pgcopydb_summary: str, size: int, wide_size: int, table_bytes: dict[str, int], pgbench_scale: int,
            wide_rows: int, src: dict[str, Any], scale: str, loads: list[float],
            costs: list[tuple[float, float]], data: str = "standard", link: str = "loopback",
            raw_rate: float = 0.0, not_run: dict[str, str] | None = None, rate: str = wan.RATE) -> str:
    total = {k: c.median([r.phases.total for r in v]) for k, v in runs.items()}
    base = total.get("pgcopydb", float("nan"))
    rows = []
    for name, variant_runs in runs.items():
        first = variant_runs[0].phases.seconds
        split = ", ".join(f"{p} {c.median([r.phases.seconds[p] for r in variant_runs]):.1f}" for p in first)
        row = [name, total[name], total[name] / total["plain"], total[name] / base,
               ", ".join(f"{r.phases.total:.1f}" for r in variant_runs), split, c.human_bytes(work_bytes[name])]
        if link == "wan":
            crossed = c.median([r.link_bytes[0] for r in variant_runs if r.link_bytes])
            back = c.median([r.link_bytes[1] for r in variant_runs if r.link_bytes])
            row += [f"{c.human_bytes(crossed)} / {c.human_bytes(back)}",
                    f"{crossed * 8 / 1e6 / total[name]:.1f}"]
        rows.append(row)
    judged = scale != "quick"
    lines = [
        f"Data ({data}): pgbench scale {pgbench_scale} + public.wide_events with {wide_rows:,} rows; source database "
        f"{c.human_bytes(size)}, of which wide_events {c.human_bytes(wide_size)} "
        f"({100 * wide_size / size:.0f}%).",
        f"Machine: {c.machine(src)}; 1-min load average when each run started: "
        f"{min(loads):.1f} to {max(loads):.1f}.",
        f"Baselines: plain = `pg_dump -Fd -j {JOBS} -Z 3`, `rsync -a`, `pg_restore -j {JOBS}` as the target's "
        f"superuser; pgcopydb = `pgcopydb clone --table-jobs {JOBS} --index-jobs {JOBS}` as the superuser. The "
        "issue fixes their parallelism at 2.",
        "great-escape: one `ansible-playbook playbooks/04_dump.yml playbooks/05_transfer.yml playbooks/06_restore.yml` "
        "(one process, as migrate.yml runs them; recorded before 2026-12-03 17:00 UTC: three processes) with an "
        "inventory generated for these clusters (bench.common.write_inventory), every role default as shipped "
        "unless a variant name says otherwise; the restore runs as the target's non-superuser master user and "
        "includes the int -> bigint migration of the pgbench keys and the grants. Its times include Ansible's "
        "start-up and per-task overhead: the user pays them too. Before each great-escape run, untimed: "
        "02_prepare_target.yml and 03_capture.yml (the chunked copy requires capture committed before its "
        "snapshot; both methods get it alike); after it, capture is removed (capture_state absent) so the "
        "baselines copy the plain source. Copy methods: pg_dump = the data section through pg_dump -Fd files, "
        "rsync and pg_restore; chunked = the engine's copy (great-escape copy: tables split into key or ctid "
        "ranges, read in one exported snapshot and streamed by parallel workers from the replication host "
        "straight into the target), schema still through pg_dump/pg_restore.",
        ("Link: loopback. Source and target are local clusters on one disk, so every transfer is a local copy."
         if link == "loopback" else
         f"Link: emulated WAN (bench.wan): the source cluster runs in network namespace {wan.NS} and listens only "
         f"on {wan.NS_ADDR}; a veth pair to {wan.HOST_ADDR} in the root namespace is shaped on both ends with "
         f"`tc qdisc add dev VETH root {' '.join(wan.tbf(rate))}` (no added delay or loss: netem is not available). "
         f"Measured raw TCP rate source side -> AWS side: {raw_rate * 8 / 1e6:.0f} Mbit/s "
         f"({raw_rate / 2**20:.1f} MiB/s) for {50 if scale == 'quick' else 200} MiB. Source side (in the "
         "namespace): the source cluster, plain's pg_dump and its rsync push (over ssh to the AWS side), "
         "great-escape's source host (Ansible reaches it over ssh across the link; the pg_dump method's dump "
         "and rsync push run there; with ge_copy_read_on_source the chunked copy's psql and zstd run there, "
         "started over ssh from the AWS side). AWS side (root namespace): the target, Ansible's controller and "
         "replication host (great-escape's restore, and the chunked method's schema dump and copy, which read the "
         "source across the link), plain's pg_restore, pgcopydb (it reads the source across the link). "
         "'link MiB' counts what crossed the veth pair during the variant (source -> AWS / AWS -> source), "
         "'link Mbit/s' is that over the variant's total time."),
        f"Rounds: {len(runs['plain'])}, the order rotated each round; totals and phases are medians over rounds.",
    ]
    if ge_variants:
        lines.append("Variants: " + "; ".join(f"{n}: {json.dumps(v) if v else 'role defaults'}"
                                             for n, v in ge_variants.items()) + ".")
    for name, why in (not_run or {}).items():
        lines.append(f"{name}: not run ({why}).")
    header = ["variant", "median total s", "x plain", "x pgcopydb", "each run s", "median phases (s)",
              "work dir on disk"]
    if link == "wan":
        header += ["link MiB", "link Mbit/s"]
    lines += ["", c.table(header, rows), ""]
    # The goals (judged at full scale; medium is a stand-in): loopback <= 0.6 x plain and <= 1.0 x
    # pgcopydb; over the link <= 0.6 x plain and <= 0.5 x pgcopydb; giant table <= 0.6 x plain.
    vs_pgcopydb = 0.5 if link == "wan" else 1.0 if data == "standard" else None
    for name in ge_variants:
        ge = total[name]
        text = (f"{name} / plain = {ge / total['plain']:.3f} (goal <= 0.6: "
                f"{c.goal(ge / total['plain'], 0.6, 'lower') if judged else 'not judged at quick scale'}); "
                f"{name} / pgcopydb = {ge / base:.3f}")
        if vs_pgcopydb is not None:
            text += (f" (goal <= {vs_pgcopydb}: "
                     f"{c.goal(ge / base, vs_pgcopydb, 'lower') if judged else 'not judged at quick scale'})")
        lines.append(text + ".")
    if costs:
        lines += ["", f"Ansible's own cost at this load (a playbook of {CALIBRATION_TASKS} trivial `command` tasks "
                  "on localhost, once per round, medians): "
                  f"{c.median([k[0] for k in costs]):.2f} s per module task, "
                  f"{c.median([k[1] for k in costs]):.2f} s to start and stop ansible-playbook."]
    if ge_variants:
        lines += ["", "Where great-escape's time goes, per playbook section, in s (medians; from the profile_tasks "
                  "callback: a section runs from its first task to the next section's first task, so it includes "
                  "that section's progress polls and bookkeeping tasks; 'ansible start/stop' is the rest of the "
                  "ansible-playbook process's wall time):", "", section_table({n: [r.sections for r in runs[n]]
                                                                               for n in ge_variants})]
    lines += ["", "When each step ran, in each variant's median run, in s after the run started (phases: the "
              "bench's own timing of each command, for great-escape from each phase's first task (profile_tasks); "
              "read/load/build: the union of the source's COPY TO, "
              "the target's COPY FROM and its index and constraint builds, from the statement logs, first start-"
              "last end (busy = seconds with at least one running); 'read+load overlap' = seconds during which "
              "the source was reading and the target loading at the same time, i.e. how far the copy pipelines):",
              ""]
    trows = []
    for name, variant_runs in runs.items():
        run = _median_run(variant_runs)
        spans = ", ".join(f"{n} {a:.1f}-{b:.1f}" for n, a, b in run.spans if " " not in n)
        act = run.activity
        if act is None:
            continue
        trows.append([name, spans, Activity.window(act.read), Activity.window(act.load),
                      Activity.window(act.build), f"{overlap(act.read, act.load):.1f}"])
    lines += [c.table(["variant", "phases", "source read", "target load", "target build", "read+load overlap s"],
                      trows), ""]
    cores = os.cpu_count() or 1
    lines += [f"CPU seconds each variant used in its median run ('other': every process but the two clusters' "
              f"(client tools, Ansible, the engine), i.e. the machine's /proc/stat total minus the clusters'; "
              f"'of the cores' = the total over {cores} cores x the run's wall time: near 100 % the run was "
              "CPU-bound, and a variant that needs fewer CPU seconds for the same rows finishes sooner):", ""]
    crows = []
    for name, variant_runs in runs.items():
        run = _median_run(variant_runs)
        if run.cpu:
            used = sum(run.cpu.values())
            crows.append([name, run.cpu["source"], run.cpu["target"], run.cpu["other"], used,
                          f"{100 * used / (cores * run.phases.total):.0f} %"])
    lines += [c.table(["variant", "source server", "target server", "other", "total", "of the cores"], crows), ""]
    for name in ge_variants:
        run = _median_run(runs[name])
        inner = [(n, a, b) for n, a, b in run.spans if " " in n]
        if inner:
            lines += [f"{name}, playbook sections in its median run (start-end in s after the run started): "
                      + ", ".join(f"{n} {a:.1f}-{b:.1f}" for n, a, b in inner) + ".", ""]
    lines += ["", "Where the time goes per table, in each variant's median run (from both servers' statement "
              "logs: source COPY TO, target COPY FROM, target index and constraint builds; 'target window' is "
              "when the target first and last worked on the table, in s after the run started; 'COPY stmts' = "
              "COPY TO on the source / COPY FROM on the target (more than one: the table was split into chunks); "
              "'max parallel loads' = the most COPY FROM into the table at one moment):", ""]
    order = sorted(table_bytes, key=lambda t: -table_bytes[t])
    for name, variant_runs in runs.items():
        run = _median_run(variant_runs)
        trows = []
        for table_name in order:
            t = run.tables.get(table_name)
            if t is None:
                continue
            window = f"{t.first:.1f}-{t.last:.1f}" if t.first != float("inf") else "-"
            trows.append([table_name, c.human_bytes(table_bytes[table_name]), t.read, t.load, t.build, window,
                          f"{t.reads} / {t.loads}", t.parallel])
        busy = ", ".join(f"{k} {v:.1f}" for k, v in sorted(run.target_busy.items(), key=lambda kv: -kv[1]))
        lines += [f"{name} (run of {run.phases.total:.1f} s; target statement seconds by kind: {busy}):", "",
                  c.table(["table", "size", "source COPY s", "target COPY s", "index+key builds s",
                           "target window s", "COPY stmts", "max parallel loads"], trows), ""]
    if order:
        lines += [loaders_table(order[0], {name: _median_run(variant_runs) for name, variant_runs in runs.items()}), ""]
    if pgcopydb_summary:
        lines += ["pgcopydb's own step summary:", "", "```", pgcopydb_summary, "```"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
