"""Shared parts of the benchmarks: local clusters in the bench port range, pgbench, timing, results.

Every benchmark compares great-escape with baselines run in the same invocation on the same data
(ENVIRONMENT.md "Timing": absolute times on these shared 2-core machines mean little, ratios do).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from psycopg import sql

from great_escape import catalog, db
from great_escape.localcluster import PG_BIN, LocalCluster, port_free

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
BENCH_ROOT = Path(os.environ.get("GE_BENCH_ROOT", "/var/tmp/ge-bench"))
# The port range given to the benchmarks; each benchmark takes a block of ten.
PORT_MIN, PORT_MAX = 57500, 57599
SCALES = ("quick", "medium", "full")

# Settings for every bench cluster, the same for every variant. Bigger WAL keeps checkpoints out
# of short runs; autovacuum stays on because the application would have it.
CLUSTER_SETTINGS = {
    "shared_buffers": "512MB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "maintenance_work_mem": "256MB",
    "max_worker_processes": "16",
    "max_logical_replication_workers": "8",
}
# Quick runs only check that everything works, within the CI budget: no durable writes.
QUICK_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
QUICK_NOTE = ("Quick scale: fsync, synchronous_commit and full_page_writes off to bound the run time; the numbers "
              "show that every variant works, they are not comparable with medium/full runs.")


class BenchError(RuntimeError):
    """A benchmark could not run; the message names the step and what to check."""


def _raise_on_signal(signum: int, _frame: Any) -> None:
    # Turn SIGTERM/SIGHUP into an exception so every `finally` stops its clusters and daemons.
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_on_signal)


def parse_args(description: str, argv: Sequence[str] | None, extra: Any = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=SCALES, default="full",
                        help="data size: quick (CI, no goals judged), medium, full (the issue's size)")
    parser.add_argument("--quick", action="store_const", const="quick", dest="scale",
                        help="same as --scale quick: small, bounded, for CI")
    parser.add_argument("--results", type=Path, default=Path(os.environ.get("GE_BENCH_RESULTS", RESULTS)),
                        help="markdown file whose section for this benchmark is replaced "
                             "(default %(default)s)")
    parser.add_argument("--keep", action="store_true", help="leave the clusters running for inspection")
    if extra:
        extra(parser)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- clusters

def pick_ports(block: int, count: int) -> list[int]:
    """`count` free ports from the benchmark's block of ten (57500 + 10 * block)."""
    start = PORT_MIN + 10 * block
    free = [p for p in range(start, min(start + 10, PORT_MAX + 1)) if port_free(p)]
    if len(free) < count:
        raise BenchError(f"ports {start}-{start + 9} are busy (need {count} free); "
                         "is another run of this benchmark still active? stop it or wait")
    return free[:count]


@contextlib.contextmanager
def clusters(name: str, block: int, kinds: Sequence[str], scale: str,
             keep: bool = False) -> Iterator[list[LocalCluster]]:
    """Start one fresh cluster per kind ("source"/"aurora"); stop and remove them all at the end."""
    settings = QUICK_SETTINGS if scale == "quick" else {}
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(BENCH_ROOT, 0o755)
    workdir = BENCH_ROOT / f"{name}-{os.getpid()}"
    ports = pick_ports(block, len(kinds))
    started: list[LocalCluster] = []
    try:
        for i, (kind, port) in enumerate(zip(kinds, ports, strict=True)):
            cluster = LocalCluster(workdir / f"{kind}{i}", port, kind)
            started.append(cluster)
            cluster.start({**CLUSTER_SETTINGS, **settings})
        yield started
    finally:
        if keep:
            print(f"clusters kept: {[(str(c.datadir), c.port) for c in started]}", file=sys.stderr)
        else:
            for cluster in started:
                with contextlib.suppress(Exception):
                    cluster.stop(remove=True)
            shutil.rmtree(workdir, ignore_errors=True)


def superuser(cluster: LocalCluster, dbname: str = "postgres") -> dict[str, Any]:
    """Connection parameters of the cluster's superuser (postgres exists on both kinds)."""
    return {**cluster.conninfo(dbname=dbname), "user": "postgres"}


def execute(params: dict[str, Any], *statements: sql.Composable | str, purpose: str = "bench") -> None:
    with db.connect(params, purpose, autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt)


def query(params: dict[str, Any], stmt: sql.Composable | str, args: Any = None) -> list[tuple[Any, ...]]:
    with db.connect(params, "bench", autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(stmt, args)
        return cur.fetchall() if cur.description else []


def create_database(cluster: LocalCluster, name: str, template: str | None = None) -> dict[str, Any]:
    stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
    execute(superuser(cluster), stmt)
    return superuser(cluster, name)


def pg_env(params: dict[str, Any]) -> dict[str, str]:
    """libpq environment for the PostgreSQL client programs (the password never goes on a command line)."""
    env = dict(os.environ)
    env.update({"PGHOST": str(params["host"]), "PGPORT": str(params["port"]), "PGUSER": str(params["user"]),
                "PGDATABASE": str(params["dbname"]), "PGPASSWORD": str(params.get("password", "")),
                "PGAPPNAME": "great-escape bench"})
    return env


def run(cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float, what: str,
        log: Path | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a program; on failure raise BenchError with its last lines of output."""
    try:
        proc = subprocess.run(list(cmd), env=env, timeout=timeout, text=True, cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what}: no result after {timeout:.0f} s ({cmd[0]}); the machine may be "
                         "overloaded, try a smaller --scale") from exc
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise BenchError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd[:3])} ...\n{tail}")
    return proc


def pg_tool(name: str) -> str:
    return str(PG_BIN / name)


# --------------------------------------------------------------------------- the playbooks

ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))


def write_inventory(path: Path, source: dict[str, Any], target: dict[str, Any], work: Path,
                    repl_user: str, repl_password: str, **overrides: Any) -> Path:
    """An inventory like inventories/local (every host this machine), pointed at the `source` database
    (a reader that may dump it), the `target` database as its master user, and `work` as ge_local_root.

    Shared by the benchmarks and tests/playbooks/conftest.py; `overrides` are more group_vars/all values.
    """
    path.mkdir(parents=True, exist_ok=True)
    hosts = yaml.safe_load((ROOT / "inventories/local/hosts.yml").read_text())
    (path / "hosts.yml").write_text(yaml.safe_dump(hosts))
    (path / "group_vars/all").mkdir(parents=True, exist_ok=True)
    local = yaml.safe_load((ROOT / "inventories/local/group_vars/all/main.yml").read_text())
    local.update(
        ge_migration_name=f"test-{source['dbname']}",
        ge_local_clusters=False,
        ge_local_root=str(work),
        ge_source_host=source["host"], ge_source_port=source["port"],
        ge_source_db=source["dbname"], ge_source_user=source["user"],
        ge_source_password=source["password"],
        ge_target_host=target["host"], ge_target_port=target["port"],
        ge_target_db=target["dbname"], ge_target_master_user=target["user"],
        ge_target_master_password=target["password"],
        ge_target_user=repl_user, ge_target_password=repl_password,
        # TLS as the clusters serve it (tests/conftest.py: verify-full against the session's CA).
        ge_source_sslmode=source.get("sslmode", "prefer"), ge_source_sslrootcert=source.get("sslrootcert", ""),
        ge_target_sslmode=target.get("sslmode", "prefer"), ge_target_sslrootcert=target.get("sslrootcert", ""),
    )
    local.update(overrides)
    (path / "group_vars/all/main.yml").write_text(yaml.safe_dump(local))
    return path


def playbook_env() -> dict[str, str]:
    """Environment of an ansible-playbook run from the project root, with the project's ansible.cfg."""
    return dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1",
                PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


def run_playbook(playbook: str | list[str], inventory: Path, *, extra: dict[str, Any] | None = None,
                 timeout: float, log: Path | None = None,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """ansible-playbook -i inventory ROOT/playbook... [-e extra] (several playbooks: one after the other in one
    process); BenchError with the tail of its output on failure."""
    playbooks = [playbook] if isinstance(playbook, str) else playbook
    cmd = [ANSIBLE_PLAYBOOK, "-i", str(inventory), *(str(ROOT / p) for p in playbooks)]
    if extra:
        cmd += ["-e", json.dumps(extra)]
    try:
        return run(cmd, env={**playbook_env(), **(env or {})}, timeout=timeout, what=" ".join(playbooks), log=log,
                   cwd=ROOT)
    except BenchError as exc:
        # Ansible's reason is on the fatal/failed lines, far above the recap that ends the output.
        text = log.read_text() if log and log.exists() else ""
        fatal = [line for line in text.splitlines() if line.startswith(("fatal:", "failed:", "ERROR!"))]
        raise BenchError(f"{exc}\n" + "\n".join(line[:2000] for line in fatal[-3:])) from exc


# --------------------------------------------------------------------------- pgbench

@dataclass
class PgbenchResult:
    tps: float
    transactions: int
    seconds: float


def pgbench_init(params: dict[str, Any], scale: int, timeout: float) -> None:
    """pgbench tables at `scale`, with a serial primary key on pgbench_history (it has none, and every
    trigger-based tool needs one); added for every variant alike."""
    run([pg_tool("pgbench"), "-i", "-q", "-s", str(scale), "--foreign-keys"], env=pg_env(params),
        timeout=timeout, what=f"pgbench -i -s {scale}")
    execute(params, "ALTER TABLE public.pgbench_history ADD COLUMN id bigserial PRIMARY KEY",
            "VACUUM ANALYZE")


_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
_TXN = re.compile(r"^number of transactions actually processed: (\d+)", re.M)


def pgbench(params: dict[str, Any], args: Sequence[str], timeout: float) -> PgbenchResult:
    """Run pgbench (tpcb-like unless args say otherwise) without its own vacuum/truncate (-n)."""
    started = time.monotonic()
    proc = run([pg_tool("pgbench"), "-n", *args], env=pg_env(params), timeout=timeout,
               what=f"pgbench {' '.join(args)}")
    tps, txn = _TPS.search(proc.stdout), _TXN.search(proc.stdout)
    if not tps or not txn:
        raise BenchError(f"pgbench output has no tps line:\n{proc.stdout[-2000:]}")
    return PgbenchResult(float(tps.group(1)), int(txn.group(1)), time.monotonic() - started)


# --------------------------------------------------------------------------- data checks

def table_counts(params: dict[str, Any], schemas: list[str] | None = None) -> dict[str, int]:
    """Row count of every application table (catalog.list_tables decides which)."""
    with db.connect(params, "bench", autocommit=True) as conn:
        counts = {}
        for table in catalog.list_tables(conn, schemas):
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table.ident)).fetchone()
            counts[table.qualname] = int(row[0]) if row else 0
        return counts


PGBENCH_FINGERPRINT = sql.SQL(
    "SELECT (SELECT count(*) FROM public.pgbench_history),"
    " (SELECT sum(abalance) FROM public.pgbench_accounts),"
    " (SELECT sum(tbalance) FROM public.pgbench_tellers),"
    " (SELECT sum(bbalance) FROM public.pgbench_branches)")
HISTORY_COUNT = sql.SQL("SELECT count(*) FROM public.pgbench_history")


def wait_converged(source: dict[str, Any], target: dict[str, Any], timeout: float,
                   poll: float = 0.2) -> float:
    """Seconds until the target's pgbench tables match the source's (the source must be idle).

    Polls the cheap history count first and confirms with balance sums over all four tables.
    """
    want = query(source, PGBENCH_FINGERPRINT)[0]
    started = time.monotonic()
    with db.connect(target, "bench probe", autocommit=True) as conn:
        while True:
            elapsed = time.monotonic() - started
            row = conn.execute(HISTORY_COUNT).fetchone()
            if row and row[0] == want[0]:
                got = conn.execute(PGBENCH_FINGERPRINT).fetchone()
                if got == want:
                    return time.monotonic() - started
            if elapsed > timeout:
                got = conn.execute(PGBENCH_FINGERPRINT).fetchone()
                raise BenchError(f"target {db.describe(target)} did not converge in {timeout:.0f} s: "
                                 f"source (history, accounts, tellers, branches) = {want}, target = {got}")
            time.sleep(poll)


# --------------------------------------------------------------------------- timing and results

@dataclass
class Phases:
    """Wall-clock seconds per named phase, in the order they ran, and when each ran (start and end in
    seconds after `origin`, the moment this object was made)."""

    seconds: dict[str, float] = field(default_factory=dict)
    spans: list[tuple[str, float, float]] = field(default_factory=list)
    origin: float = field(default_factory=time.monotonic)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            ended = time.monotonic()
            self.seconds[name] = self.seconds.get(name, 0.0) + ended - started
            self.spans.append((name, started - self.origin, ended - self.origin))

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> tuple[float, float]:
    """(own, reaped children's) CPU seconds of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK, (int(fields[13]) + int(fields[14])) / _TICK


def server_cpu(cluster: LocalCluster) -> float:
    """CPU seconds a cluster has used so far: its postmaster, the backends it has reaped, and its live
    processes (checkpointer, WAL writer, backends still running)."""
    postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    own, reaped = _proc_cpu(postmaster)
    total = own + reaped
    for child in Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split():
        with contextlib.suppress(OSError):  # ended meanwhile: counted by `reaped` at the next reading
            total += sum(_proc_cpu(int(child)))
    return total


def machine_cpu() -> float:
    """CPU seconds every process on the machine has used since boot (/proc/stat: user to steal, not idle)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return sum(int(f) for i, f in enumerate(fields[:8]) if i not in (3, 4)) / _TICK  # 3: idle, 4: iowait


@dataclass
class CpuMeter:
    """CPU seconds used between `start` and `stop`: by each cluster, and by everything else on the machine
    (client tools, Ansible, the engine: async jobs leave this process's tree, so they are counted as the
    machine's total minus the clusters')."""

    clusters: dict[str, LocalCluster]
    _start: dict[str, float] = field(default_factory=dict)

    def _read(self) -> dict[str, float]:
        return {"machine": machine_cpu(), **{name: server_cpu(c) for name, c in self.clusters.items()}}

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        end = self._read()
        used = {name: end[name] - self._start[name] for name in self.clusters}
        used["other"] = end["machine"] - self._start["machine"] - sum(used.values())
        return used


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 100 samples is the 99th smallest)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-pct * len(ordered) // 100))))
    return ordered[rank - 1]


def machine(params: dict[str, Any]) -> str:
    version = query(params, "SELECT pg_catalog.current_setting('server_version')")[0][0]
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    load = os.getloadavg()
    return (f"nproc {os.cpu_count()}, RAM {mem_kb / 1024 / 1024:.1f} GiB, {cpu}, PostgreSQL {version}, "
            f"1-min load average {load[0]:.2f} (machine shared with other helpers)")


def goal(value: float, limit: float, better: str) -> str:
    """'met'/'NOT met' for a measured ratio against its goal; better is 'lower' or 'higher'."""
    if value != value:  # NaN: not measured
        return "not measured"
    ok = value <= limit if better == "lower" else value >= limit
    return "met" if ok else "NOT met"


def write_results(path: Path, key: str, title: str, body: str, scale: str) -> None:
    """Replace the section `key`/`scale` of the results file (create it if needed) and print it."""
    argv = list(sys.argv[1:])
    if "--results" in argv:  # where the text goes is not part of the command worth repeating
        i = argv.index("--results")
        del argv[i:i + 2]
    module = "bench" if Path(sys.argv[0]).stem == "__main__" else f"bench.{Path(sys.argv[0]).stem}"
    command = " ".join(["python -m", module, *argv])
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if scale == "quick":
        body = f"{body.rstrip()}\n\n{QUICK_NOTE}"
    section = (f"<!-- BEGIN {key}:{scale} -->\n### {title} ({scale} scale)\n\n"
               f"Recorded {stamp} by `{command.strip()}`.\n\n{body.rstrip()}\n<!-- END {key}:{scale} -->\n")
    print(section)
    write_section(path, key, scale, section)


def write_section(path: Path, key: str, scale: str, section: str) -> None:
    """Put `section` (with its BEGIN/END markers) into `path`, replacing the one with the same key and scale."""
    text = path.read_text() if path.exists() else "# great-escape benchmark results\n\n"
    tag = re.escape(f"{key}:{scale}")
    pattern = re.compile(rf"<!-- BEGIN {tag} -->.*?<!-- END {tag} -->\n", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text)
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def engine_has(*modules: str) -> bool:
    """Whether the great-escape engine already ships these modules (the sync engine is being written)."""
    import importlib.util
    return all(importlib.util.find_spec(f"great_escape.{m}") is not None for m in modules)


def kill_tree(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    """Stop a process group we started: SIGTERM, then SIGKILL after `timeout`."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def database_size(params: dict[str, Any]) -> int:
    return int(query(params, "SELECT pg_catalog.pg_database_size(pg_catalog.current_database())")[0][0])

