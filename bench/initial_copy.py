"""Benchmark 1: initial copy. great-escape's dump + transfer + restore vs plain pg_dump/rsync/pg_restore
vs `pgcopydb clone`, on the same source database, into the same target cluster.

    python -m bench copy [--scale quick|medium|full]

    python -m bench copy --scale medium --variants plain,great-escape --ge-variant 'z0={"dump_compress": 0}'

Data: pgbench at a scale plus one wide table (bench.initial_copy.WIDE) holding ~60% of the bytes.
great-escape runs its real phase playbooks (DESIGN.md phases 5-7: 04_dump.yml, 05_transfer.yml,
06_restore.yml) through an inventory generated for the bench clusters; --ge-variant adds runs with other
role variables, to measure a setting against the same baselines. Goals: total <= 0.6 x plain and
<= 1.0 x pgcopydb. Besides the totals, the report shows the time per playbook section (profile_tasks)
and per table (both servers' statement logs).
"""

from __future__ import annotations

import datetime as dt
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

from psycopg import sql

from great_escape import db
from great_escape.localcluster import MASTER_USER

from . import common as c

# scale -> (pgbench scale, rows of the wide table, timeout per step in seconds, rounds)
SIZES = {"quick": (1, 60_000, 300, 1), "medium": (10, 1_000_000, 1800, 3),
         "full": (100, 10_000_000, 4 * 3600, 1)}
VARIANTS = ("plain", "great-escape", "pgcopydb")
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

def plain_copy(src: dict[str, Any], dst: dict[str, Any], work: Path, timeout: float) -> c.Phases:
    """What a team would script: pg_dump -Fd -j2 -Z3, one rsync, pg_restore -j2."""
    phases = c.Phases()
    dump, received = work / "plain-dump", work / "plain-received"
    with phases.phase("dump"):
        c.run([c.pg_tool("pg_dump"), "-Fd", "-j", str(JOBS), "-Z", "3", "-f", str(dump)],
              env=c.pg_env(src), timeout=timeout, what="plain pg_dump")
    with phases.phase("transfer"):
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
             (r"Ensure the sha256 manifest", "manifest")),
    "transfer": ((r"Start one rsync per stream|Start rsync", "rsync"),
                 (r"Compare every received file", "verify")),
    "restore": ((r"Restore the schema \(pre-data\)", "pre-data"), (r"Convert int keys", "bigint"),
                (r"Empty the tables|Run pg_restore for the data|Ensure the data step is marked started", "data"),
                (r"Run pg_restore for indexes|Ensure the post-data step is marked started", "post-data"),
                (r"Grant the replication user", "grants")),
}
_TASK = re.compile(r"^TASK \[(?:[\w.]+ : )?(.*?)\] \*+")
_STAMP = re.compile(r"^\w+ \d+ \w+ \d{4}\s+\S+ \S+ \(\S+\)\s+(\d+):(\d+):([\d.]+) \*+")


def task_timeline(output: str) -> tuple[list[tuple[str, float]], float]:
    """([(task name, start in s since the play began)], end in s) from profile_tasks' output."""
    tasks: list[tuple[str, float]] = []
    end = 0.0
    name: str | None = None
    for line in output.splitlines():
        task = _TASK.match(line)
        if task:
            name = task.group(1)
            continue
        if line.startswith("TASKS RECAP"):
            name = ""
            continue
        stamp = _STAMP.match(line)
        if stamp and name is not None:
            at = int(stamp.group(1)) * 3600 + int(stamp.group(2)) * 60 + float(stamp.group(3))
            if name:
                tasks.append((name, at))
            else:
                end = at
            name = None
    return tasks, end


def split_sections(phase: str, tasks: list[tuple[str, float]], end: float) -> dict[str, float]:
    """Seconds per section of one playbook run: a section runs from its first task to the next section's."""
    seconds: dict[str, float] = {}
    label = "setup"
    for i, (name, at) in enumerate(tasks):
        for pattern, template in SECTIONS[phase]:
            m = re.search(pattern, name)
            if m:
                label = template.format(*m.groups())
                break
        following = tasks[i + 1][1] if i + 1 < len(tasks) else end
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


def great_escape_copy(src: dict[str, Any], dst: dict[str, Any], work: Path, timeout: float,
                      extra: dict[str, Any]) -> tuple[c.Phases, dict[str, float]]:
    """ansible-playbook 04_dump.yml, 05_transfer.yml, 06_restore.yml (DESIGN.md phases 5-7) through an
    inventory generated for the bench clusters; the restore runs as the target's non-superuser master.

    Returns the wall time per playbook (Ansible's start-up included: the user pays it) and the seconds
    per section inside each playbook, read from the profile_tasks callback."""
    phases = c.Phases()
    sections: dict[str, float] = {}
    extra = dict(extra)
    env = {"ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks", **extra.pop("_env", {})}
    inventory = c.write_inventory(work / "inventory", src, dst, work / "ge", REPL_USER, REPL_PASSWORD)
    for phase, playbook in PLAYBOOKS:
        log = work.parent / "logs" / f"{work.name}-{phase}.log"
        with phases.phase(phase):
            proc = c.run_playbook(playbook, inventory, extra=extra, timeout=timeout, log=log, env=env)
        tasks, end = task_timeline(proc.stdout)
        for label, secs in split_sections(phase, tasks, end).items():
            sections[f"{phase} {label}"] = secs
        sections[f"{phase} ansible start/stop"] = phases.seconds[phase] - end
    return phases, sections


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
_LOGGED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC \[\d+\] LOG:  duration: ([0-9.]+) ms  "
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
            kind, table = _classify(" ".join([head.group(3), *current]).strip())
            end = dt.datetime.strptime(head.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.UTC).timestamp()
            found.append(Statement(end, float(head.group(2)) / 1000, kind, table))

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


def per_table(source_stmts: list[Statement], target_stmts: list[Statement], started: float) -> dict[str, TableTimes]:
    tables: dict[str, TableTimes] = {}
    for st in source_stmts:
        if st.kind == "read":
            tables.setdefault(st.table, TableTimes()).read += st.seconds
    for st in target_stmts:
        if st.kind in ("load", "index", "key", "fk"):
            t = tables.setdefault(st.table, TableTimes())
            if st.kind == "load":
                t.load += st.seconds
            else:
                t.build += st.seconds
            t.first, t.last = min(t.first, st.start - started), max(t.last, st.end - started)
    return tables


@dataclass
class Run:
    """One variant's run: wall time per phase, sections inside them (great-escape), and per-table times."""

    phases: c.Phases
    sections: dict[str, float]
    tables: dict[str, TableTimes]
    target_busy: dict[str, float]  # statement kind -> seconds on the target


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
    rounds = args.rounds or rounds
    ge_variants: dict[str, dict[str, Any]] = {"great-escape": {}}
    for spec in args.ge_variant:
        name, _, extra = spec.partition("=")
        ge_variants[f"great-escape {name}"] = json.loads(extra or "{}")
    wanted = set(args.variants.split(",")) | {"plain"}
    names = [v for v in VARIANTS if v in wanted] + [v for v in ge_variants if v != "great-escape"]
    if "great-escape" not in wanted:
        del ge_variants["great-escape"]
    with c.clusters("copy", 0, ["source", "aurora"], args.scale, keep=args.keep) as (source, target):
        for cluster in (source, target):
            c.execute(c.superuser(cluster), "ALTER SYSTEM SET log_timezone = 'UTC'",
                      "SELECT pg_catalog.pg_reload_conf()")
        c.execute(c.superuser(target), sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(REPL_USER), sql.Literal(REPL_PASSWORD)))
        src = c.create_database(source, "app_src")
        load_source(src, pgbench_scale, wide_rows, timeout)
        c.execute(src, "ALTER DATABASE app_src SET log_min_duration_statement = 0")
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
                offsets = [(cl.datadir / "server.log").stat().st_size for cl in (source, target)]
                started = time.time()
                sections: dict[str, float] = {}
                try:
                    if name == "plain":
                        phases = plain_copy(src, dst, variant_work, timeout)
                    elif name in ge_variants:
                        phases, sections = great_escape_copy(src, dst, variant_work, timeout, ge_variants[name])
                    else:
                        phases, pgcopydb_summary = pgcopydb_clone(src, dst, variant_work, timeout)
                    got = c.table_counts(dst)
                    if got != want:
                        raise c.BenchError(f"{name}: target row counts {got} differ from the source's {want}")
                    src_stmts, dst_stmts = (read_statements(cl.datadir / "server.log", off)
                                            for cl, off in zip((source, target), offsets, strict=True))
                    busy: dict[str, float] = {}
                    for st in dst_stmts:
                        busy[st.kind] = busy.get(st.kind, 0.0) + st.seconds
                    runs[name].append(Run(phases, sections, per_table(src_stmts, dst_stmts, started), busy))
                    work_bytes[name] = c.dir_size(variant_work)
                finally:
                    c.execute(c.superuser(target), sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(dbname)))
                    shutil.rmtree(variant_work, ignore_errors=True)
        body = _report(runs, ge_variants, work_bytes, pgcopydb_summary, size, wide_size, table_bytes,
                       pgbench_scale, wide_rows, src, args.scale, loads, costs)
        c.write_results(args.results, "copy", "1. Initial copy", body, args.scale)
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
            costs: list[tuple[float, float]]) -> str:
    total = {k: c.median([r.phases.total for r in v]) for k, v in runs.items()}
    base = total.get("pgcopydb", float("nan"))
    rows = []
    for name, variant_runs in runs.items():
        first = variant_runs[0].phases.seconds
        split = ", ".join(f"{p} {c.median([r.phases.seconds[p] for r in variant_runs]):.1f}" for p in first)
        rows.append([name, total[name], total[name] / total["plain"], total[name] / base,
                     ", ".join(f"{r.phases.total:.1f}" for r in variant_runs), split, c.human_bytes(work_bytes[name])])
    judged = scale != "quick"
    lines = [
        f"Data: pgbench scale {pgbench_scale} + public.wide_events with {wide_rows:,} rows; source database "
        f"{c.human_bytes(size)}, of which wide_events {c.human_bytes(wide_size)} "
        f"({100 * wide_size / size:.0f}%).",
        f"Machine: {c.machine(src)}; 1-min load average when each run started: "
        f"{min(loads):.1f} to {max(loads):.1f}.",
        f"Baselines: plain = `pg_dump -Fd -j {JOBS} -Z 3`, `rsync -a`, `pg_restore -j {JOBS}` as the target's "
        f"superuser; pgcopydb = `pgcopydb clone --table-jobs {JOBS} --index-jobs {JOBS}` as the superuser. The "
        "issue fixes their parallelism at 2.",
        "great-escape: `ansible-playbook playbooks/04_dump.yml`, `05_transfer.yml`, `06_restore.yml` with an "
        "inventory generated for these clusters (bench.common.write_inventory), every role default as shipped "
        "unless a variant name says otherwise; the restore runs as the target's non-superuser master user and "
        "includes the int -> bigint migration of the pgbench keys and the grants. Its times include Ansible's "
        "start-up and per-task overhead: the user pays them too. Source and target are local clusters on one "
        "disk, so every transfer is a local copy.",
        f"Rounds: {len(runs['plain'])}, the order rotated each round; totals and phases are medians over rounds.",
    ]
    if ge_variants:
        lines.append("Variants: " + "; ".join(f"{n}: {json.dumps(v) if v else 'role defaults'}"
                                             for n, v in ge_variants.items()) + ".")
    lines += [
        "",
        c.table(["variant", "median total s", "x plain", "x pgcopydb", "each run s", "median phases (s)",
                 "work dir on disk"], rows),
        "",
    ]
    for name in ge_variants:
        ge = total[name]
        lines.append(
            f"{name} / plain = {ge / total['plain']:.3f} (goal <= 0.6: "
            f"{c.goal(ge / total['plain'], 0.6, 'lower') if judged else 'not judged at quick scale'}); "
            f"{name} / pgcopydb = {ge / base:.3f} (goal <= 1.0: "
            f"{c.goal(ge / base, 1.0, 'lower') if judged else 'not judged at quick scale'}).")
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
    lines += ["", "Where the time goes per table, in each variant's median run (from both servers' statement "
              "logs: source COPY TO, target COPY FROM, target index and constraint builds; 'target window' is "
              "when the target first and last worked on the table, in s after the run started):", ""]
    order = sorted(table_bytes, key=lambda t: -table_bytes[t])
    for name, variant_runs in runs.items():
        run = _median_run(variant_runs)
        trows = []
        for table_name in order:
            t = run.tables.get(table_name)
            if t is None:
                continue
            window = f"{t.first:.1f}-{t.last:.1f}" if t.first != float("inf") else "-"
            trows.append([table_name, c.human_bytes(table_bytes[table_name]), t.read, t.load, t.build, window])
        busy = ", ".join(f"{k} {v:.1f}" for k, v in sorted(run.target_busy.items(), key=lambda kv: -kv[1]))
        lines += [f"{name} (run of {run.phases.total:.1f} s; target statement seconds by kind: {busy}):", "",
                  c.table(["table", "size", "source COPY s", "target COPY s", "index+key builds s",
                           "target window s"], trows), ""]
    if pgcopydb_summary:
        lines += ["pgcopydb's own step summary:", "", "```", pgcopydb_summary, "```"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
