"""Benchmark 2: capture overhead. pgbench TPS (tpcb-like, -c 4 -j 2, fixed duration) on a database with
great-escape's capture installed, with Bucardo 5.6's triggers installed (by `bucardo add sync`), and with
none. Many short rounds, each running every variant back to back in a rotated order: the load of a shared
machine drifts by the minute, so each round's ratio compares runs made under the same load, and the goal is
judged on the median of those per-round ratios.

    python -m bench overhead [--scale quick|medium|full]

A second measurement shows where the cost is: one session runs single-row UPDATE transactions on
pgbench_accounts (synchronous_commit off, so the CPU cost shows rather than the disk flush) with no
capture, with great-escape's (with and without a waiting sync) and with Bucardo's; the fastest of several
repetitions, per transaction.

Only the triggers are measured: neither sync process runs (on two cores it would compete with pgbench
for CPU and measure the machine, not the trigger). great-escape's kick sends NOTIFY only while a sync waits
for changes, so it is measured twice: as while its sync is busy applying (no NOTIFY), and with a waiting
sync's row in place (a NOTIFY per transaction, the case of a caught-up sync). Goal: median per-round TPS
ratio great-escape/none >= 0.90.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from psycopg import sql

from great_escape import capture

from . import common as c
from . import replicators as r

# scale -> (pgbench scale, seconds per run, rounds)
SIZES = {"quick": (2, 5, 1), "medium": (10, 10, 9), "full": (10, 20, 15)}
CLIENTS, THREADS = 4, 2
# great-escape's triggers send NOTIFY only while a sync waits for changes (ge_capture.waiting): both
# cases are measured on the same database, the second with a waiting row in place during its runs.
WAITING = "great-escape, sync waiting"
VARIANTS = ("none", "great-escape", WAITING, "bucardo")
STATEMENT_TXNS, STATEMENT_REPEATS = 5000, 5
# Single-row UPDATE transactions in one session: the per-statement cost of each capture part.
STATEMENT_LOOP = sql.SQL("DO $$ BEGIN FOR i IN 1..{} LOOP UPDATE public.pgbench_accounts SET abalance = abalance + 1 "
                         "WHERE aid = (i * 7919) % 100000 + 1; COMMIT; END LOOP; END $$")


def main(argv: Sequence[str] | None = None) -> int:
    c.install_signal_handlers()
    args = c.parse_args(__doc__ or "", argv)
    scale, seconds, rounds = SIZES[args.scale]
    skipped = {v: why for v in VARIANTS if v != "none" and (why := r.available(_tool(v)))}
    variants = [v for v in VARIANTS if v not in skipped]
    with c.clusters("overhead", 1, ["source", "aurora"], args.scale, keep=args.keep) as (source, target):
        work = source.datadir.parent / "work"
        work.mkdir(parents=True, exist_ok=True)
        template = c.create_database(source, "ov_template")
        c.pgbench_init(template, scale, timeout=600)
        dump = work / "template.dump"
        c.run([c.pg_tool("pg_dump"), "-Fc", "-f", str(dump)], env=c.pg_env(template), timeout=600,
              what="pg_dump of the template")
        tools: list[r.Replicator] = []
        dbs: dict[str, dict[str, Any]] = {}
        try:
            for variant in variants:
                name = "ov_" + variant.replace("-", "_")
                if variant == "none":
                    dbs[variant] = c.create_database(source, name, template="ov_template")
                    continue
                if variant == WAITING:
                    dbs[variant] = dbs["great-escape"]
                    continue
                pair = r.make_pair(source, target, "ov_template", name, dump, timeout=600)
                tool = r.TOOLS[variant](pair, work)
                tools.append(tool)
                tool.install()
                dbs[variant] = pair.source
            tps: dict[str, list[float]] = {v: [] for v in variants}
            for round_no in range(rounds):
                for variant in variants[round_no % len(variants):] + variants[:round_no % len(variants)]:
                    c.execute(c.superuser(source), "CHECKPOINT")
                    with _sync_waiting(dbs[variant], variant == WAITING):
                        result = c.pgbench(dbs[variant],
                                           ["-c", str(CLIENTS), "-j", str(THREADS), "-T", str(seconds)],
                                           timeout=seconds * 3 + 60)
                    tps[variant].append(result.tps)
                    print(f"overhead: round {round_no + 1}/{rounds} {variant}: {result.tps:.0f} tps",
                          file=sys.stderr, flush=True)
            changes = {v: _pending_changes(v, dbs[v]) for v in variants if v not in ("none", WAITING)}
            statement_us = _statement_costs(dbs)
        finally:
            for tool in tools:
                tool.cleanup()
        body = _report(tps, changes, skipped, scale, seconds, rounds, template, args.scale) + \
            _statement_report(statement_us)
        c.write_results(args.results, "overhead", "2. Capture overhead", body, args.scale)
    return 0


# Where each tool keeps its delta rows: (schema, table name prefix).
DELTA_TABLES = {"great-escape": ("ge_capture", "d_"), "bucardo": ("bucardo", "delta_")}


def _pending_changes(variant: str, params: dict[str, Any]) -> int:
    """Rows the capture recorded: proof that the triggers fired at all."""
    schema, prefix = DELTA_TABLES[variant]
    names = c.query(params, "SELECT c.relname FROM pg_catalog.pg_class c "
                            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE n.nspname = %s AND c.relkind = 'r' AND starts_with(c.relname, %s)",
                    (schema, prefix))
    counts = [c.query(params, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name)))[0][0]
              for (name,) in names]
    return sum(int(n) for n in counts)


def _tool(variant: str) -> str:
    return "great-escape" if variant == WAITING else variant


@contextlib.contextmanager
def _sync_waiting(params: dict[str, Any], waiting: bool) -> Iterator[None]:
    """A sync's waiting row in great-escape's capture schema while the block runs: every kick notifies."""
    if not waiting:
        yield
        return
    with c.db.connect(params, "bench waiting sync", autocommit=True) as conn:
        capture.set_waiting(conn, "bench", True)
        try:
            yield
        finally:
            capture.set_waiting(conn, "bench", False)


def _loop_seconds(params: dict[str, Any]) -> float:
    with c.db.connect(params, "bench statement cost", autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        started = time.perf_counter()
        conn.execute(STATEMENT_LOOP.format(sql.Literal(STATEMENT_TXNS)))
        return time.perf_counter() - started


def _statement_costs(dbs: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Microseconds per single-row UPDATE transaction: the fastest of STATEMENT_REPEATS rounds, every capture
    measured once per round so that the machine's drifting load hits all alike."""
    runs: dict[str, list[float]] = {}
    for _ in range(STATEMENT_REPEATS):
        for variant, params in dbs.items():
            with _sync_waiting(params, variant == WAITING):
                runs.setdefault(variant, []).append(_loop_seconds(params))
    return {name: min(seconds) / STATEMENT_TXNS * 1e6 for name, seconds in runs.items()}


def _statement_report(costs: dict[str, float]) -> str:
    base = costs["none"]
    rows = [[name, us, us - base, us / base] for name, us in costs.items()]
    return "\n".join([
        "",
        f"Where the cost is: one session, {STATEMENT_TXNS} single-row UPDATE transactions on pgbench_accounts "
        f"(synchronous_commit off), fastest of {STATEMENT_REPEATS}.",
        "",
        c.table(["capture", "us per transaction", "extra us", "x none"], rows),
    ])


def _report(tps: dict[str, list[float]], changes: dict[str, int], skipped: dict[str, str], scale: int,
            seconds: int, rounds: int, params: dict[str, Any], scale_name: str) -> str:
    base = c.median(tps["none"])

    def per_round(variant: str, baseline: str = "none") -> list[float]:
        return [v / n for v, n in zip(tps[variant], tps[baseline], strict=True)]

    rows = []
    for variant, values in tps.items():
        med = c.median(values)
        rows.append([variant, med, med / base, c.median(per_round(variant)),
                     ", ".join(f"{v:.0f}" for v in values), changes.get(variant, "-")])
    lines = [
        f"Data: pgbench scale {scale}, pgbench_history given a bigserial primary key in every variant alike; "
        f"tpcb-like, -c {CLIENTS} -j {THREADS} -T {seconds}, {rounds} round(s) of "
        f"{', '.join(tps)} back to back, the order rotated each round; CHECKPOINT before each run; each "
        "variant in its own database cloned from one template on one cluster.",
        f"Machine: {c.machine(params)}.",
        "Bucardo: the real Bucardo 5.6 (`bucardo install`, `add table all`, `add sync ... autokick=1`), so "
        "its delta, kick and truncate triggers are exactly the ones Bucardo installs; great-escape: "
        "`great-escape capture install --no-freeze`. Sync processes not running; delta rows accumulate "
        f"across rounds for both. \"{WAITING}\": the same database with a waiting sync's row in "
        "ge_capture.waiting during its runs, so every transaction sends its kick as NOTIFY.",
        "",
        c.table(["variant", "median tps", "x none (medians)", "x none (median of per-round ratios)",
                 "tps per run", "delta rows recorded"], rows),
    ]
    for variant, why in skipped.items():
        lines.append(f"\n{variant}: not run ({why}).")
    if "great-escape" in tps:
        ratio = c.median(per_round("great-escape"))
        verdict = c.goal(ratio, 0.90, "higher") if scale_name != "quick" else "not judged at quick scale"
        lines.append(f"\ngreat-escape / none = {ratio:.3f}, median of the per-round ratios (goal >= 0.90: "
                     f"{verdict}).")
    if WAITING in tps:
        lines.append(f"{WAITING} / none = {c.median(per_round(WAITING)):.3f}, likewise.")
    if "bucardo" in tps and "great-escape" in tps:
        lines.append(f"great-escape / bucardo = {c.median(per_round('great-escape', 'bucardo')):.3f}, likewise.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
