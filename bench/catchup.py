"""Benchmark 3: catch-up. A backlog of row changes is written by pgbench while the sync is stopped; then
the sync starts and the time until the target matches the source is the drain time. great-escape vs
Bucardo 5.6 vs native logical replication, on the same backlog size, one tool at a time.

    python -m bench catchup [--scale quick|medium|full]

Goals: great-escape's apply rate >= 2 x Bucardo's and >= 1 x logical replication's.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from . import common as c
from . import replicators as r

# scale -> (pgbench scale, row changes in the backlog, drain timeout s)
SIZES = {"quick": (1, 12_000, 300), "medium": (10, 300_000, 1800), "full": (10, 300_000, 1800)}
CLIENTS, THREADS = 4, 2
CHANGES_PER_TXN = 4  # tpcb-like: three UPDATEs and one INSERT
TOOLS = ("logical", "bucardo", "great-escape")
SEED = "20240101"


def main(argv: Sequence[str] | None = None) -> int:
    c.install_signal_handlers()
    args = c.parse_args(__doc__ or "", argv)
    scale, changes, timeout = SIZES[args.scale]
    per_client = changes // CHANGES_PER_TXN // CLIENTS
    skipped = {t: why for t in TOOLS if (why := r.available(t))}
    tools = [t for t in TOOLS if t not in skipped]
    results: dict[str, dict[str, float]] = {}
    with c.clusters("catchup", 2, ["source", "aurora"], args.scale, keep=args.keep) as (source, target):
        work = source.datadir.parent / "work"
        work.mkdir(parents=True, exist_ok=True)
        template = c.create_database(source, "cu_template")
        c.pgbench_init(template, scale, timeout=600)
        dump = work / "template.dump"
        c.run([c.pg_tool("pg_dump"), "-Fc", "-f", str(dump)], env=c.pg_env(template), timeout=600,
              what="pg_dump of the template")
        for tool_name in tools:
            pair = r.make_pair(source, target, "cu_template", "cu_" + tool_name.replace("-", "_"), dump, 600)
            tool = r.TOOLS[tool_name](pair, work)
            try:
                tool.install()
                load = c.pgbench(pair.source, ["-c", str(CLIENTS), "-j", str(THREADS), "-t", str(per_client),
                                               f"--random-seed={SEED}"], timeout=timeout)
                backlog = load.transactions * CHANGES_PER_TXN
                print(f"catchup: {tool_name}: backlog of {backlog} changes written in {load.seconds:.1f}s, "
                      "draining ...", file=sys.stderr, flush=True)
                started = time.monotonic()
                tool.start()
                try:
                    c.wait_converged(pair.source, pair.target, timeout)
                except c.BenchError as exc:
                    raise c.BenchError(f"{tool_name}: {exc}\n{tool.diagnostics()}") from exc
                drain = time.monotonic() - started  # includes the tool's own start-up
                results[tool_name] = {"changes": backlog, "seconds": drain, "rate": backlog / drain,
                                      "write_seconds": load.seconds}
                print(f"catchup: {tool_name}: drained in {drain:.1f}s ({backlog / drain:.0f} changes/s)",
                      file=sys.stderr, flush=True)
            finally:
                tool.cleanup()
        body = _report(results, skipped, scale, template, args.scale)
        c.write_results(args.results, "catchup", "3. Catch-up", body, args.scale)
    return 0


def _report(results: dict[str, dict[str, float]], skipped: dict[str, str], scale: int, params: dict[str, Any],
            scale_name: str) -> str:
    rows = [[name, int(v["changes"]), v["write_seconds"], v["seconds"], int(v["rate"])]
            for name, v in results.items()]
    lines = [
        f"Data: pgbench scale {scale} (history with a bigserial primary key); backlog written by pgbench "
        f"tpcb-like -c {CLIENTS} -j {THREADS} -t N --random-seed={SEED} with the sync stopped "
        f"({CHANGES_PER_TXN} row changes per transaction). Drain time: from starting the sync until the "
        "target's history count and the balance sums of all four tables equal the source's (polled every "
        "0.2 s), including each tool's start-up.",
        f"Machine: {c.machine(params)}.",
        "Tools: logical = publication FOR ALL TABLES + subscription (copy_data = false) enabled after the "
        "backlog; bucardo = Bucardo 5.6 (`bucardo start` after the backlog, its database on the source "
        "cluster, applying as the target's superuser); great-escape = `great-escape sync` daemon applying "
        "as the non-superuser replication user of the Aurora-like target.",
        "",
        c.table(["tool", "changes", "backlog written in s", "drain s", "changes/s"], rows),
    ]
    for name, why in skipped.items():
        lines.append(f"\n{name}: not run ({why}).")
    ge = results.get("great-escape")
    judged = scale_name != "quick"
    for base, want in (("bucardo", 2.0), ("logical", 1.0)):
        if ge and base in results:
            ratio = ge["rate"] / results[base]["rate"]
            verdict = c.goal(ratio, want, "higher") if judged else "not judged at quick scale"
            lines.append(f"\ngreat-escape / {base} apply rate = {ratio:.2f} (goal >= {want:g}: {verdict}).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
