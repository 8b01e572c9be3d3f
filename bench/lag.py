"""Benchmark 4: replication lag under a steady load. pgbench -R 200 (tpcb-like) runs against the source
while the sync runs; a probe inserts a row stamped with clock_timestamp() on the source every 100 ms and
a reader polls the target every 10 ms; lag = time the row is seen on the target - its stamp (one machine,
one clock). great-escape vs Bucardo 5.6 vs native logical replication, one tool at a time.

    python -m bench lag [--scale quick|medium|full]

Goal: great-escape's p99 lag <= 1 s.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from psycopg import sql

from great_escape import db

from . import common as c
from . import replicators as r

# scale -> (pgbench scale, seconds of load)
SIZES = {"quick": (1, 6), "medium": (10, 60), "full": (10, 180)}
RATE, CLIENTS, THREADS = 200, 4, 2
PROBE_EVERY, POLL_EVERY, WARMUP = 0.1, 0.01, 3.0
TOOLS = ("logical", "bucardo", "great-escape")
PROBE = sql.Identifier("public", "bench_lag_probe")


class Probe:
    """Writes stamped rows on the source and records when each appears on the target."""

    def __init__(self, source: dict[str, Any], target: dict[str, Any]):
        self.source, self.target = source, target
        self.written: dict[int, dt.datetime] = {}
        self.lags: dict[int, float] = {}
        self.stop = threading.Event()
        self.errors: list[BaseException] = []

    def write(self, seconds: float) -> None:
        with db.connect(self.source, "bench probe writer", autocommit=True) as conn:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                row = conn.execute(sql.SQL("INSERT INTO {} (written_at) VALUES "
                                           "(pg_catalog.clock_timestamp()) RETURNING id, written_at")
                                   .format(PROBE)).fetchone()
                assert row is not None
                self.written[row[0]] = row[1]
                time.sleep(PROBE_EVERY)

    def read(self) -> None:
        try:
            with db.connect(self.target, "bench probe reader", autocommit=True) as conn:
                # Ids come from one writer's sequence, 1, 2, 3...; a tool that applies rows out of commit
                # order must not make the reader skip one, so read from the lowest id not seen yet.
                low = 1
                while not self.stop.is_set():
                    rows = conn.execute(sql.SQL("SELECT id, written_at FROM {} WHERE id >= %s ORDER BY id")
                                        .format(PROBE), (low,)).fetchall()
                    seen = dt.datetime.now(dt.UTC)
                    for pid, written in rows:
                        self.lags.setdefault(pid, (seen - written).total_seconds())
                    while low in self.lags:
                        low += 1
                    time.sleep(POLL_EVERY)
        except BaseException as exc:  # reported by the main thread
            self.errors.append(exc)


def measure(tool: r.Replicator, pair: r.Pair, seconds: int) -> dict[str, Any]:
    tool.start()
    time.sleep(WARMUP)  # connections up, first kick handled: measure the steady state
    probe = Probe(pair.source, pair.target)
    reader = threading.Thread(target=probe.read, daemon=True)
    reader.start()
    load = subprocess.Popen([c.pg_tool("pgbench"), "-n", "-R", str(RATE), "-c", str(CLIENTS),
                             "-j", str(THREADS), "-T", str(seconds)], env=c.pg_env(pair.source),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        probe.write(seconds)
        out, _ = load.communicate(timeout=seconds + 120)
        deadline = time.monotonic() + 60
        while len(probe.lags) < len(probe.written) and time.monotonic() < deadline and not probe.errors:
            time.sleep(0.1)
    finally:
        probe.stop.set()
        c.kill_tree(load)
        reader.join(10)
        tool.stop()
    if probe.errors:
        raise c.BenchError(f"{tool.name}: the probe reader failed: {probe.errors[0]}")
    missing = len(probe.written) - len(probe.lags)
    if missing:
        absent = sorted(set(probe.written) - set(probe.lags))
        there = c.query(pair.target, sql.SQL("SELECT count(*) FROM {} WHERE id = ANY(%s)").format(PROBE),
                        (absent,))[0][0]
        raise c.BenchError(f"{tool.name}: {missing} of {len(probe.written)} probe rows never reached the "
                           f"target within 60 s after the load stopped (first missing ids {absent[:10]}; "
                           f"{there} of them on the target now)\n{tool.diagnostics()}")
    tps = c._TPS.search(out)
    lags = list(probe.lags.values())
    return {"samples": len(lags), "p50": c.percentile(lags, 50), "p99": c.percentile(lags, 99),
            "max": max(lags), "tps": float(tps.group(1)) if tps else float("nan")}


def main(argv: Sequence[str] | None = None) -> int:
    c.install_signal_handlers()
    args = c.parse_args(__doc__ or "", argv)
    scale, seconds = SIZES[args.scale]
    skipped = {t: why for t in TOOLS if (why := r.available(t))}
    results: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    with c.clusters("lag", 3, ["source", "aurora"], args.scale, keep=args.keep) as (source, target):
        work = source.datadir.parent / "work"
        work.mkdir(parents=True, exist_ok=True)
        template = c.create_database(source, "lag_template")
        c.pgbench_init(template, scale, timeout=600)
        c.execute(template, sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, "
                                    "written_at timestamptz NOT NULL)").format(PROBE))
        dump = work / "template.dump"
        c.run([c.pg_tool("pg_dump"), "-Fc", "-f", str(dump)], env=c.pg_env(template), timeout=600,
              what="pg_dump of the template")
        for tool_name in (t for t in TOOLS if t not in skipped):
            name = "lag_" + tool_name.replace("-", "_")
            pair = r.make_pair(source, target, "lag_template", name, dump, 600)
            tool = r.TOOLS[tool_name](pair, work)
            try:
                tool.install()
                results[tool_name] = measure(tool, pair, seconds)
                print(f"lag: {tool_name}: {results[tool_name]}", file=sys.stderr, flush=True)
            except c.BenchError as exc:
                # Record it and go on: the other tools' numbers stay useful; the exit status says it failed.
                print(f"lag: {tool_name} FAILED: {exc}", file=sys.stderr, flush=True)
                failed[tool_name] = str(exc).splitlines()[0]
            finally:
                tool.cleanup()
        body = _report(results, {**skipped, **{k: f"FAILED: {v}" for k, v in failed.items()}}, scale, seconds,
                       template, args.scale)
        c.write_results(args.results, "lag", "4. Lag at a steady 200 TPS", body, args.scale)
    return 1 if failed else 0


def _report(results: dict[str, dict[str, Any]], skipped: dict[str, str], scale: int, seconds: int,
            params: dict[str, Any], scale_name: str) -> str:
    rows = [[name, v["tps"], v["samples"], f"{v['p50'] * 1000:.0f}", f"{v['p99'] * 1000:.0f}",
             f"{v['max'] * 1000:.0f}"] for name, v in results.items()]
    lines = [
        f"Data: pgbench scale {scale}; load pgbench -R {RATE} -c {CLIENTS} -j {THREADS} -T {seconds} "
        f"(tpcb-like) plus one probe row every {PROBE_EVERY * 1000:.0f} ms; target polled every "
        f"{POLL_EVERY * 1000:.0f} ms "
        f"(lag resolution about that); {WARMUP:.0f} s warm-up after starting the sync, not measured.",
        f"Machine: {c.machine(params)}.",
        "Tools as in the catch-up benchmark (Bucardo with autokick=1; great-escape woken by its NOTIFY "
        "kick).",
        "",
        c.table(["tool", "pgbench tps", "probes", "p50 ms", "p99 ms", "max ms"], rows),
    ]
    for name, why in skipped.items():
        lines.append(f"\n{name}: {why if why.startswith('FAILED') else f'not run ({why})'}.")
    if "great-escape" in results:
        p99 = results["great-escape"]["p99"]
        verdict = c.goal(p99, 1.0, "lower") if scale_name != "quick" else "not judged at quick scale"
        lines.append(f"\ngreat-escape p99 lag = {p99 * 1000:.0f} ms (goal <= 1000 ms: {verdict}).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
