"""Benchmark 1: initial copy. great-escape's dump + transfer + restore vs plain pg_dump/rsync/pg_restore
vs `pgcopydb clone`, on the same source database, into the same target cluster.

    python -m bench copy [--scale quick|medium|full]

Data: pgbench at a scale plus one wide table (bench.initial_copy.WIDE) holding ~60% of the bytes.
great-escape's commands (DESIGN.md phases 5-7): pg_dump -Fd -j2 -Z3 by section in one exported
snapshot, rsync in parallel streams, pg_restore -j2 pre-data, data, post-data. Goals: total
<= 0.6 x plain and <= 1.0 x pgcopydb.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from psycopg import sql

from great_escape import db

from . import common as c

# scale -> (pgbench scale, rows of the wide table, timeout per step in seconds, rounds)
SIZES = {"quick": (1, 60_000, 300, 1), "medium": (10, 1_000_000, 1800, 3),
         "full": (100, 10_000_000, 4 * 3600, 1)}
VARIANTS = ("plain", "great-escape", "pgcopydb")
JOBS = 2  # -j for pg_dump/pg_restore and pgcopydb's table/index jobs: the same for every variant
STREAMS = 2  # great-escape's parallel rsync streams
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


def _exported_snapshot(src: dict[str, Any]) -> tuple[Any, str]:
    """A repeatable-read transaction kept open so the three section dumps share one snapshot."""
    conn = db.connect(src, "bench snapshot")
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    row = conn.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()
    assert row is not None
    return conn, str(row[0])


def parallel_rsync(source_dir: Path, dest_dir: Path, streams: int, timeout: float) -> None:
    """rsync in `streams` processes, files spread by size (largest first onto the lightest stream)."""
    files = sorted((p for p in source_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size,
                   reverse=True)
    groups: list[list[str]] = [[] for _ in range(streams)]
    loads = [0] * streams
    for path in files:
        i = loads.index(min(loads))
        groups[i].append(str(path.relative_to(source_dir)))
        loads[i] += path.stat().st_size
    procs = []
    for i, group in enumerate(g for g in groups if g):
        listing = dest_dir.parent / f"{dest_dir.name}.files{i}"
        listing.write_text("\n".join(group) + "\n")
        procs.append(subprocess.Popen(["rsync", "-a", f"--files-from={listing}", f"{source_dir}/",
                                       f"{dest_dir}/"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    failed = []
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            failed.append(out.strip()[-500:])
    if failed:
        raise c.BenchError(f"parallel rsync {source_dir} -> {dest_dir} failed: {failed}")


def great_escape_copy(src: dict[str, Any], dst: dict[str, Any], work: Path, timeout: float) -> c.Phases:
    """The commands of the dump, transfer and restore roles (DESIGN.md phases 5-7)."""
    phases = c.Phases()
    sections = ("pre-data", "data", "post-data")
    dumps = {s: work / "ge-dump" / s for s in sections}
    received = {s: work / "ge-received" / s for s in sections}
    for parent in ("ge-dump", "ge-received"):
        (work / parent).mkdir(parents=True, exist_ok=True)
    conn, snapshot = _exported_snapshot(src)
    try:
        for section in sections:
            with phases.phase(f"dump {section}"):
                c.run([c.pg_tool("pg_dump"), "-Fd", "-j", str(JOBS), "-Z", "3", f"--section={section}",
                       f"--snapshot={snapshot}", "-f", str(dumps[section])],
                      env=c.pg_env(src), timeout=timeout, what=f"great-escape pg_dump --section={section}")
    finally:
        conn.close()
    with phases.phase("transfer"):
        for section in sections:
            parallel_rsync(dumps[section], received[section], STREAMS, timeout)
    for section in sections:
        with phases.phase(f"restore {section}"):
            c.run([c.pg_tool("pg_restore"), "-j", str(JOBS), f"--section={section}", "-d", dst["dbname"],
                   str(received[section])], env=c.pg_env(dst), timeout=timeout,
                  what=f"great-escape pg_restore --section={section}")
    return phases


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


# --------------------------------------------------------------------------- the benchmark

def main(argv: Sequence[str] | None = None) -> int:
    c.install_signal_handlers()
    args = c.parse_args(__doc__ or "", argv)
    pgbench_scale, wide_rows, timeout, rounds = SIZES[args.scale]
    with c.clusters("copy", 0, ["source", "aurora"], args.scale, keep=args.keep) as (source, target):
        src = c.create_database(source, "app_src")
        load_source(src, pgbench_scale, wide_rows, timeout)
        size = c.database_size(src)
        wide_size = int(c.query(src, "SELECT pg_catalog.pg_total_relation_size('public.wide_events')")[0][0])
        want = c.table_counts(src)
        work = source.datadir.parent / "work"
        work.mkdir(parents=True, exist_ok=True)
        os.chmod(work, 0o755)
        runs: dict[str, list[c.Phases]] = {name: [] for name in VARIANTS}
        work_bytes: dict[str, int] = {}
        pgcopydb_summary = ""
        for round_no in range(rounds):
            # Rotate the order each round so cache warmth and neighbours' load hit every variant alike.
            order = VARIANTS[round_no % 3:] + VARIANTS[:round_no % 3]
            for name in order:
                print(f"copy: round {round_no + 1}/{rounds} {name} ...", file=sys.stderr, flush=True)
                dst = c.create_database(target, "app_" + name.replace("-", "_"))
                variant_work = work / name
                variant_work.mkdir()
                try:
                    if name == "plain":
                        phases = plain_copy(src, dst, variant_work, timeout)
                    elif name == "great-escape":
                        phases = great_escape_copy(src, dst, variant_work, timeout)
                    else:
                        phases, pgcopydb_summary = pgcopydb_clone(src, dst, variant_work, timeout)
                    got = c.table_counts(dst)
                    if got != want:
                        raise c.BenchError(f"{name}: target row counts {got} differ from the source's {want}")
                    runs[name].append(phases)
                    work_bytes[name] = c.dir_size(variant_work)
                finally:
                    c.execute(c.superuser(target), sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(dst["dbname"])))
                    shutil.rmtree(variant_work, ignore_errors=True)
        body = _report(runs, work_bytes, pgcopydb_summary, size, wide_size, pgbench_scale, wide_rows, src,
                       args.scale)
        c.write_results(args.results, "copy", "1. Initial copy", body, args.scale)
    return 0


def _report(runs: dict[str, list[c.Phases]], work_bytes: dict[str, int], pgcopydb_summary: str, size: int,
            wide_size: int, pgbench_scale: int, wide_rows: int, src: dict[str, Any], scale: str) -> str:
    total = {k: c.median([p.total for p in v]) for k, v in runs.items()}
    rows = []
    for name, phases in runs.items():
        split = ", ".join(f"{p} {c.median([r.seconds[p] for r in phases]):.1f}" for p in phases[0].seconds)
        rows.append([name, total[name], total[name] / total["plain"], total[name] / total["pgcopydb"],
                     ", ".join(f"{p.total:.1f}" for p in phases), split, c.human_bytes(work_bytes[name])])
    ge = total["great-escape"]
    ratio_plain, ratio_pgcopydb = ge / total["plain"], ge / total["pgcopydb"]
    judged = scale != "quick"
    lines = [
        f"Data: pgbench scale {pgbench_scale} + public.wide_events with {wide_rows:,} rows; source database "
        f"{c.human_bytes(size)}, of which wide_events {c.human_bytes(wide_size)} "
        f"({100 * wide_size / size:.0f}%).",
        f"Machine: {c.machine(src)}.",
        f"Parallelism: -j {JOBS} everywhere, -Z 3 for both dumps, {STREAMS} rsync streams for great-escape; "
        "source and target are local clusters on the same disk, so rsync is a local copy. Every variant "
        "restores as the target's superuser into a fresh database; row counts checked after each.",
        "great-escape here is the commands its dump, transfer and restore roles are specified to run, called "
        "directly (the roles were not in the tree when this was written): pg_dump by section in one exported "
        "snapshot, rsync in parallel streams, pg_restore by section.",
        f"Rounds: {len(runs['plain'])}, the order rotated each round; totals and phases are medians over "
        "rounds.",
        "",
        c.table(["variant", "median total s", "x plain", "x pgcopydb", "each run s", "median phases (s)",
                 "work dir on disk"], rows),
        "",
        f"great-escape / plain = {ratio_plain:.3f} (goal <= 0.6: "
        f"{c.goal(ratio_plain, 0.6, 'lower') if judged else 'not judged at quick scale'}); "
        f"great-escape / pgcopydb = {ratio_pgcopydb:.3f} (goal <= 1.0: "
        f"{c.goal(ratio_pgcopydb, 1.0, 'lower') if judged else 'not judged at quick scale'}).",
    ]
    if pgcopydb_summary:
        lines += ["", "pgcopydb's own step summary:", "", "```", pgcopydb_summary, "```"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
