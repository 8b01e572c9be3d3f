"""Benchmark 5: write downtime of cutover and rollback on one database. An application (a few connections
as a non-superuser role, pgbench tpcb-like transactions at a steady 200 TPS in total) writes through every
switch; `great-escape cutover` and `great-escape rollback` run as the cutover role runs them. Downtime =
first commit on the new side - last commit on the old side, as the application saw them, next to the figure
the cutover reports itself. Afterwards every committed transaction must be on both sides.

    python -m bench cutover [--scale quick|medium|full]

Goal: cutover and rollback write downtime <= 5 s each (judged on the max over rounds, medium and full).
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from great_escape import access, catalog, cutover, daemon, db, state, status, verify
from great_escape import config as configmod
from great_escape.errors import ConnectError
from great_escape.localcluster import MASTER_USER, LocalCluster

from . import common as c
from . import replicators as r

# scale -> (pgbench scale, rounds of cutover + rollback, seconds of load before each switch, CLI timeout s)
SIZES = {"quick": (1, 1, 3, 300), "medium": (10, 3, 6, 600), "full": (100, 3, 10, 1800)}
RATE, WRITERS = 200, 4  # transactions per second in total, application connections
APP_ROLE, APP_PASSWORD = "bench_app", "bench-app-secret"
RETRY_AFTER = 0.05  # seconds a writer waits before retrying a failed transaction
GIVE_UP = 120.0  # a transaction failing for longer than this stops the benchmark
MAX_LAG = 1.0  # the sync counts as caught up below this lag (seconds of the oldest pending change)
LIMIT = 5.0  # goal: seconds of write downtime per switch

TXN = (
    sql.SQL("UPDATE public.pgbench_accounts SET abalance = abalance + %(delta)s WHERE aid = %(aid)s"),
    sql.SQL("SELECT abalance FROM public.pgbench_accounts WHERE aid = %(aid)s"),
    sql.SQL("UPDATE public.pgbench_tellers SET tbalance = tbalance + %(delta)s WHERE tid = %(tid)s"),
    sql.SQL("UPDATE public.pgbench_branches SET bbalance = bbalance + %(delta)s WHERE bid = %(bid)s"),
)
HISTORY_INSERT = sql.SQL("INSERT INTO public.pgbench_history (tid, bid, aid, delta, mtime) "
                         "VALUES (%(tid)s, %(bid)s, %(aid)s, %(delta)s, pg_catalog.now()) RETURNING id")
CHECK_SUMS = sql.SQL("SELECT count(*), COALESCE(sum(delta), 0), "
                     "(SELECT sum(abalance) FROM public.pgbench_accounts), "
                     "(SELECT sum(tbalance) FROM public.pgbench_tellers), "
                     "(SELECT sum(bbalance) FROM public.pgbench_branches) FROM public.pgbench_history")


@dataclass(frozen=True)
class Commit:
    at: float  # wall clock when COMMIT returned: comparable with the cutover's own timestamps
    side: str
    history_id: int
    delta: int
    retried: bool  # committed only after one or more failed attempts


@dataclass(frozen=True)
class Failure:
    at: float
    kind: str  # exception class, e.g. InsufficientPrivilege, AdminShutdown


class Router:
    """Where the application's writes go: the side great-escape's cutover state (great_escape.cutover_state
    on the target) names as live, read when a write fails, as a pgbouncer or DNS switch driven by it would."""

    def __init__(self, cfg: configmod.Config):
        self.cfg = cfg
        self.lock = threading.Lock()
        self.conn: psycopg.Connection[Any] | None = None
        self.last = "source"

    def live(self) -> str:
        with self.lock:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = db.connect(self.cfg.target, "bench router")
                self.last = state.read_cutover(self.conn, self.cfg.name)["live"]
            except (psycopg.Error, ConnectError):
                if self.conn is not None:  # reconnect on the next call; keep the last answer meanwhile
                    self.conn.close()
                    self.conn = None
            return self.last

    def close(self) -> None:
        with self.lock:
            if self.conn is not None:
                self.conn.close()


class App:
    """WRITERS connections at RATE TPS in total, each transaction pgbench tpcb-like (three UPDATEs, a
    SELECT, one history row). A failed transaction is retried, after RETRY_AFTER, on the side the router
    names (a new session if the side changed or the old one was ended) until it commits."""

    def __init__(self, params: dict[str, dict[str, Any]], router: Router, scale: int):
        self.params = params
        self.router = router
        self.scale = scale
        self.interval = WRITERS / RATE
        self.stop = threading.Event()
        self.commits: list[list[Commit]] = [[] for _ in range(WRITERS)]  # one list per writer: no lock
        self.failures: list[list[Failure]] = [[] for _ in range(WRITERS)]
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._writer, args=(n,), daemon=True) for n in range(WRITERS)]

    def __enter__(self) -> App:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)  # statement_timeout bounds a transaction in hand

    def check(self) -> None:
        if self.errors:
            raise c.BenchError(f"the application stopped: {self.errors[0]}")

    def all_commits(self) -> list[Commit]:
        return sorted((x for w in self.commits for x in w), key=lambda x: x.at)

    def all_failures(self) -> list[Failure]:
        return sorted((x for w in self.failures for x in w), key=lambda x: x.at)

    def _connect(self, side: str) -> psycopg.Connection[Any]:
        return psycopg.connect(**self.params[side], connect_timeout=5, application_name="bench app",
                               options="-c statement_timeout=30s")

    def _args(self, rnd: random.Random) -> dict[str, int]:
        return {"aid": rnd.randint(1, 100_000 * self.scale), "tid": rnd.randint(1, 10 * self.scale),
                "bid": rnd.randint(1, self.scale), "delta": rnd.randint(-5000, 5000)}

    def _writer(self, n: int) -> None:
        rnd = random.Random(n)
        conn: psycopg.Connection[Any] | None = None
        side = ""
        next_at = time.monotonic() + n * self.interval / WRITERS  # spread the writers over the interval
        try:
            while not self.stop.is_set():
                self.stop.wait(max(0.0, next_at - time.monotonic()))
                args, failed_since = self._args(rnd), 0.0
                while not self.stop.is_set():
                    try:
                        if conn is None or conn.closed or conn.broken:
                            side = self.router.live()
                            conn = self._connect(side)
                        with conn.transaction(), conn.cursor() as cur:
                            for stmt in TXN:
                                cur.execute(stmt, args)
                            row = cur.execute(HISTORY_INSERT, args).fetchone()
                        assert row is not None
                        self.commits[n].append(Commit(time.time(), side, row[0], args["delta"], failed_since > 0))
                        break
                    except psycopg.Error as exc:
                        now = time.monotonic()
                        self.failures[n].append(Failure(time.time(), type(exc).__name__))
                        failed_since = failed_since or now
                        if now - failed_since > GIVE_UP:
                            raise c.BenchError(f"writer {n}: a transaction failed for {GIVE_UP:.0f} s on the "
                                               f"{side}, last: {exc}") from exc
                        self.stop.wait(RETRY_AFTER)
                        if conn is not None and (conn.broken or self.router.live() != side):
                            conn.close()
                # No catching up after a stall: the next transaction is due one interval later, or now.
                next_at = max(next_at + self.interval, time.monotonic())
        except BaseException as exc:  # reported by the main thread
            self.errors.append(f"writer {n}: {exc}")
        finally:
            if conn is not None:
                conn.close()


# --------------------------------------------------------------------------- setup


def _hand_target_to_master(pair: r.Pair) -> None:
    """On Aurora the restore runs as the master user, which then owns the database and the tables; the
    cutover needs that (REVOKE/GRANT as owner, reverse capture triggers)."""
    master = sql.Identifier(MASTER_USER)
    stmts: list[sql.Composable] = [sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
        sql.Identifier(pair.target["dbname"]), master)]
    with db.connect(pair.target, "bench setup", autocommit=True) as conn:
        stmts += [sql.SQL("ALTER TABLE {} OWNER TO {}").format(t.ident, master)
                  for t in catalog.list_tables(conn, ["public"])]
    c.execute(pair.target, *stmts)


def _create_app_role(pair: r.Pair) -> dict[str, dict[str, Any]]:
    """The application's login role on the source with the usual grants; the migration's access step (what
    prepare-target and restore run) carries it and its privileges to the target. Its connection parameters."""
    role = sql.Identifier(APP_ROLE)
    if not c.query(c.superuser(pair.source_cluster), "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s",
                   (APP_ROLE,)):
        c.execute(c.superuser(pair.source_cluster), sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            role, sql.Literal(APP_PASSWORD)))
    c.execute(pair.source, sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}")
              .format(role), sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(role))
    opts = access.Options(role_map={"postgres": MASTER_USER}, application_roles=(APP_ROLE,),
                          project_roles=(MASTER_USER, r.REPL_USER), sync_user=r.REPL_USER)
    master = {**pair.target, "user": MASTER_USER}
    with db.connect(pair.source, "bench access") as src, db.connect(master, "bench access") as tgt:
        access.apply(tgt, access.plan(src, tgt, opts))
    return {side: {**params, "user": APP_ROLE, "password": APP_PASSWORD}
            for side, params in (("source", pair.source), ("target", pair.target))}


def _wait_caught_up(cfg: configmod.Config, direction: str, app: App, timeout: float) -> None:
    """Until the sync of `direction` lags less than MAX_LAG behind the running load."""
    scfg = cfg if direction == "forward" else cfg.reversed()
    deadline = time.monotonic() + timeout
    while True:
        app.check()
        s = status.collect(scfg, direction)
        if s["lag_seconds"] < MAX_LAG:
            return
        if time.monotonic() > deadline:
            raise c.BenchError(f"the {direction} sync did not catch up within {timeout:.0f} s: "
                               f"{status.one_line(s)}")
        time.sleep(0.5)


# --------------------------------------------------------------------------- the switches


@dataclass
class Measured:
    """One cutover or rollback: the cutover's own record and what the application saw."""

    action: str
    record: dict[str, Any]  # the Switch as great-escape recorded it in cutover-status.json
    started: float  # wall clock when the command was started
    seconds: float  # how long the command ran
    last_old: float = 0.0
    first_new: float = 0.0
    late_old_commits: int = 0  # commits on the old side after the first on the new one: must stay 0
    failures: Counter[str] = field(default_factory=Counter)
    retried: int = 0

    @property
    def downtime(self) -> float:
        return self.first_new - self.last_old


def _password_file(tool: r.GreatEscape, password: str) -> Path:
    """The master's password as the cutover role hands it over: a file only its owner may read."""
    path = tool.work / "target-admin.password"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return path


def _switch(action: str, tool: r.GreatEscape, cfg: configmod.Config, admin_password: str, timeout: float,
            n: int) -> Measured:
    """The cutover role's command line, as the role runs it; its result read from the status file."""
    before = len(cutover.load_history(cfg.state_dir)["switches"])
    cmd = [sys.executable, "-m", "great_escape.cli", action, "--config", str(tool.config), "--json",
           "--target-admin-user", MASTER_USER, "--stop-writes", "revoke", "--in-flight-timeout", "30",
           "--quiet-seconds", "3", "--target-admin-password-file", str(_password_file(tool, admin_password))]
    started, clock = time.time(), time.monotonic()
    try:
        c.run(cmd, timeout=timeout, what=f"great-escape {action}", log=tool.work / f"{action}-{n}.log")
    except c.BenchError as exc:
        raise c.BenchError(f"{exc}\n{tool.diagnostics()}") from exc
    switches = cutover.load_history(cfg.state_dir)["switches"]
    if len(switches) != before + 1 or switches[-1]["action"] != action:
        raise c.BenchError(f"great-escape {action} exited 0 but recorded no {action} in "
                           f"{cfg.state_dir / cutover.STATUS_FILE}")
    return Measured(action, switches[-1], started, time.monotonic() - clock)


def _attribute(switches: list[Measured], commits: list[Commit], failures: list[Failure]) -> list[Failure]:
    """Fill in what the application saw around each switch; returns the failures outside every switch."""
    ends = [s.started for s in switches[1:]] + [float("inf")]
    outside = [f for f in failures if f.at < switches[0].started] if switches else failures
    for s, end in zip(switches, ends, strict=True):
        frm, to = s.record["from_side"], s.record["to_side"]
        new = [x.at for x in commits if x.side == to and s.started <= x.at < end]
        if not new:
            raise c.BenchError(f"{s.action}: the application committed nothing on the {to} afterwards")
        s.first_new = new[0]
        old = [x.at for x in commits if x.side == frm and x.at < s.first_new]
        if not old:
            raise c.BenchError(f"{s.action}: the application committed nothing on the {frm} before it")
        s.last_old = old[-1]
        s.late_old_commits = sum(1 for x in commits if x.side == frm and s.first_new < x.at < end)
        s.failures = Counter(f.kind for f in failures if s.started <= f.at < end)
        s.retried = sum(1 for x in commits if x.retried and s.started <= x.at < end)
    return outside


def _check_no_loss(pair: r.Pair, commits: list[Commit], timeout: float) -> list[str]:
    """After the last rollback the forward sync runs: once it has caught up with the idle source, both sides
    must hold exactly the committed history rows and balances that add up to the committed deltas."""
    c.wait_converged(pair.source, pair.target, timeout)
    problems = []
    ids = {x.history_id for x in commits}
    deltas = sum(x.delta for x in commits)
    for side, params in (("source", pair.source), ("target", pair.target)):
        have = {row[0] for row in c.query(params, "SELECT id FROM public.pgbench_history")}
        if have != ids:
            problems.append(f"{side}: {len(ids - have)} committed history row(s) missing, {len(have - ids)} extra "
                            f"(first missing ids {sorted(ids - have)[:5]})")
        count, hist, accounts, tellers, branches = c.query(params, CHECK_SUMS)[0]
        if not (count == len(commits) and hist == accounts == tellers == branches == deltas):
            problems.append(f"{side}: {count} history rows for {len(commits)} commits; sum of deltas: committed "
                            f"{deltas}, history {hist}, accounts {accounts}, tellers {tellers}, branches {branches}")
    report = verify.verify(pair.source, pair.target, ["public"], options=verify.VerifyOptions(recheck=0))
    problems += [f"verify: {t.table} {t.status} ({t.summary()})" for t in report.mismatched]
    return problems


def _prepare(source: LocalCluster, target: LocalCluster, scale: int,
             timeout: float) -> tuple[r.GreatEscape, dict[str, dict[str, Any]]]:
    """pgbench data on the source with capture installed, the target restored from its dump and owned by the
    master user, the application role on both. Returns the tool and the application's connection parameters."""
    work = source.datadir.parent / "work"
    work.mkdir(parents=True, exist_ok=True)
    template = c.create_database(source, "co_template")
    c.pgbench_init(template, scale, timeout=timeout)
    dump = work / "template.dump"
    c.run([c.pg_tool("pg_dump"), "-Fc", "-f", str(dump)], env=c.pg_env(template), timeout=timeout,
          what="pg_dump of the template")
    pair = r.make_pair(source, target, "co_template", "co_bench", dump, timeout)
    _hand_target_to_master(pair)
    app_params = _create_app_role(pair)
    tool = r.GreatEscape(pair, work)
    tool.install()
    return tool, app_params


def _measure(tool: r.GreatEscape, cfg: configmod.Config, app_params: dict[str, dict[str, Any]], scale: int,
             rounds: int, dwell: int, timeout: float) -> tuple[list[Measured], App]:
    """The forward sync started, the application writing, `rounds` x (cutover, rollback) under that load."""
    router = Router(cfg)
    switches: list[Measured] = []
    try:
        # The sync role's command: the supervised daemon that the cutover stops and starts.
        c.run([str(r.GE_BIN), "supervise", "start", "--config", str(tool.config)], timeout=60,
              what="great-escape supervise start")
        with App(app_params, router, scale) as app:
            for n in range(rounds):
                for action, direction in (("cutover", "forward"), ("rollback", "reverse")):
                    app.stop.wait(dwell)  # load on the live side, the sync keeping up
                    _wait_caught_up(cfg, direction, app, 120)
                    switches.append(_switch(action, tool, cfg, tool.pair.target_cluster.password, timeout, n))
                    rec = switches[-1].record
                    print(f"cutover: {action} {n + 1}: reported {rec['downtime_seconds']} s, steps {rec['steps']}",
                          file=sys.stderr, flush=True)
            app.stop.wait(dwell)  # commits on the source after the last rollback
        app.check()
    finally:
        router.close()
    return switches, app


def _stop_syncs(cfg: configmod.Config) -> None:
    for direction in ("forward", "reverse"):
        try:
            daemon.stop_detached(cfg, direction)
        except Exception as exc:  # the clusters are stopped next anyway: say it and go on
            print(f"cutover: stopping the {direction} sync: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    c.install_signal_handlers()
    args = c.parse_args(__doc__ or "", argv)
    if why := r.available("great-escape"):
        raise c.BenchError(f"cutover: cannot run: {why}")
    scale, rounds, dwell, timeout = SIZES[args.scale]
    with c.clusters("cutover", 5, ["source", "aurora"], args.scale, keep=args.keep) as (source, target):
        tool, app_params = _prepare(source, target, scale, timeout)
        cfg = configmod.load(tool.config)
        try:
            switches, app = _measure(tool, cfg, app_params, scale, rounds, dwell, timeout)
            commits = app.all_commits()
            outside = _attribute(switches, commits, app.all_failures())
            problems = _check_no_loss(tool.pair, commits, timeout)
        finally:
            _stop_syncs(cfg)
        body = _report(switches, commits, outside, problems, scale, rounds, dwell, tool.pair.source, args.scale)
        c.write_results(args.results, "cutover", "5. Cutover and rollback write downtime", body, args.scale)
    return 1 if problems else 0


# --------------------------------------------------------------------------- report


def _stamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _report(switches: list[Measured], commits: list[Commit], outside: list[Failure], problems: list[str],
            scale: int, rounds: int, dwell: int, params: dict[str, Any], scale_name: str) -> str:
    rows = []
    warnings: dict[str, None] = {}  # the switches' own warnings, each once, in order
    for i, s in enumerate(switches, 1):
        rec = s.record
        steps = ", ".join(f"{k.split()[0]} {v:.2f}" for k, v in rec["steps"].items())
        failures = s.failures
        kinds = ", ".join(f"{k} {v}" for k, v in failures.most_common()) or "-"
        rows.append([i, s.action, f"{rec['downtime_seconds']:.2f}", f"{s.downtime:.2f}",
                     f"{(s.first_new - _stamp(rec['writes_accepted_at'])) * 1000:.0f}",
                     sum(failures.values()), s.retried, kinds, rec["terminated_sessions"], rec["drained_changes"],
                     f"{s.seconds:.1f}", steps])
        warnings.update(dict.fromkeys(f"{s.action}: {w}" for w in rec["warnings"]))
    summary = []
    verdicts = []
    for action in ("cutover", "rollback"):
        mine = [s for s in switches if s.action == action]
        if not mine:
            continue
        measured = [s.downtime for s in mine]
        reported = [float(s.record["downtime_seconds"]) for s in mine]
        summary.append([action, len(mine), c.median(reported), max(reported), c.median(measured), max(measured)])
        verdict = c.goal(max(measured), LIMIT, "lower") if scale_name != "quick" else "not judged at quick scale"
        verdicts.append(f"{action} max {max(measured):.2f} s (goal <= {LIMIT:g} s: {verdict})")
    span = commits[-1].at - commits[0].at if len(commits) > 1 else float("nan")
    writable = span - sum(s.downtime for s in switches)
    on = Counter(x.side for x in commits)
    lines = [
        f"Data: pgbench scale {scale} (history with a bigserial primary key) in one source database; the "
        "Aurora-like target restored from its pg_dump and handed to the master user (who owns the tables, as "
        "on Aurora); capture installed, the forward sync running under `great-escape supervise start` (the "
        f"sync role's command) and caught up (lag < {MAX_LAG:g} s) before each switch.",
        f"Load: an application of {WRITERS} connections as the non-superuser role {APP_ROLE} (created and granted "
        "on the source only; the migration's access step gave it its role and privileges on the target), "
        f"{RATE} TPS in total, pgbench tpcb-like transactions (three UPDATEs, a SELECT, one history row), "
        f"running through every switch. A failed transaction is retried after {RETRY_AFTER * 1000:.0f} ms on the side "
        "great-escape's cutover state (great_escape.cutover_state on the target) names as live, in a new "
        "session if the side changed or the session was ended, as a pgbouncer/DNS switch driven by that state "
        "would; commit times are taken when COMMIT returns.",
        f"Switches: `python -m great_escape.cli cutover|rollback --config ... --json --target-admin-user "
        f"{MASTER_USER} --stop-writes revoke` (the cutover role's command line: revoke and end the "
        "application's sessions, drain, sequences, verify drained (the default: nothing left to apply), allow "
        f"writes, start the other sync); {rounds} round(s) of cutover then rollback on the same database, "
        f"{dwell} s of load before each switch.",
        "Downtime: measured = first commit on the new side - last commit on the old side, as the application "
        "saw them; reported = the cutover's own downtime_seconds (from the revoke to writes allowed); "
        "app lag = first commit on the new side - the cutover's writes_accepted_at.",
        f"Machine: {c.machine(params)}.",
        "",
        c.table(["#", "switch", "reported s", "measured s", "app lag ms", "failed attempts", "txns retried",
                 "errors seen by the app", "sessions ended", "drained", "command s", "steps (s)"], rows),
        *(["", "Warnings of the switches: " + "; ".join(warnings) + "."] if warnings else []),
        "",
        c.table(["switch", "runs", "median reported s", "max reported s", "median measured s", "max measured s"],
                summary),
        "",
        f"Application: {len(commits)} transactions committed in {span:.0f} s, {len(commits) / writable:.0f} TPS "
        f"outside the downtimes; {on['source']} on the source and {on['target']} on the target; "
        f"{sum(s.late_old_commits for s in switches)} committed on an old side after the new side took writes; "
        f"{len(outside)} failed attempt(s) outside the switches.",
    ]
    if problems:
        lines.append("\nCommitted writes check FAILED: " + "; ".join(problems) + ".")
    else:
        lines.append("\nNo committed write lost: after the last rollback and the forward sync caught up with the "
                     "stopped application, pgbench_history holds exactly the committed transactions' rows on "
                     "both sides, the balance sums of accounts, tellers and branches equal the sum of the committed "
                     "deltas on both sides, and great-escape verify finds the four tables equal.")
    lines.append(f"\nWrite downtime: {'; '.join(verdicts)}; judged on the max over rounds.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
