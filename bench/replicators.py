"""The change-replication tools compared by the overhead, catch-up and lag benchmarks, behind one shape:

    r = Tool(pair, work); r.install()   # capture on the source (triggers / publication), sync not running
    r.start(); r.stop()                 # the process that applies changes
    r.cleanup()                         # stop everything it started (also after a failure)

Tools: great-escape (engine CLI: `capture install`, `sync`), Bucardo 5.6 (the real `bucardo` program:
install, add db/table/sync, start/stop), and PostgreSQL's native logical replication.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml
from psycopg import conninfo, sql

from great_escape.localcluster import MASTER_USER, LocalCluster

from . import common as c

REPL_USER = "ge_repl"
REPL_PASSWORD = "ge-bench-repl-secret"
FUNCTION_TEMPLATE = c.ROOT / "roles/replication_role_function/templates/rds_session_replication_role.sql.j2"
GE_BIN = Path(sys.executable).with_name("great-escape")


@dataclass
class Pair:
    """One source database and one target database holding the same data."""

    source_cluster: LocalCluster
    target_cluster: LocalCluster
    source: dict[str, Any]  # superuser on the source database
    target: dict[str, Any]  # superuser on the target database

    @property
    def tag(self) -> str:
        return self.source["dbname"]


def make_pair(source: LocalCluster, target: LocalCluster, template: str, name: str, dump: Path,
              timeout: float) -> Pair:
    """Source database `name` cloned from `template`; target database `name` restored from `dump` (-Fc)."""
    src = c.create_database(source, name, template=template)
    dst = c.create_database(target, name)
    c.run([c.pg_tool("pg_restore"), "--no-owner", "-d", name, str(dump)], env=c.pg_env(dst), timeout=timeout,
          what=f"pg_restore of {template} into {c.db.describe(dst)}")
    c.execute(dst, "VACUUM ANALYZE")
    return Pair(source, target, src, dst)


def ensure_repl_user(target: LocalCluster) -> None:
    """The Aurora-style replication user (no superuser, no SET privilege on session_replication_role)."""
    with c.db.connect(c.superuser(target), "bench setup", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (REPL_USER,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(REPL_USER), sql.Literal(REPL_PASSWORD)))


class Replicator(abc.ABC):
    name: str

    def __init__(self, pair: Pair, work: Path):
        self.pair = pair
        self.work = work / f"{self.name}-{pair.tag}"
        self.work.mkdir(parents=True, exist_ok=True)

    @abc.abstractmethod
    def install(self) -> None:
        """Capture on the source; the applying process is not started."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start applying changes to the target."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop applying (captured changes keep accumulating); a no-op when not started."""

    def cleanup(self) -> None:
        self.stop()

    def diagnostics(self) -> str:
        """The tail of the tool's own log, for error messages (the work directory is removed at the end)."""
        logs = sorted(self.work.rglob("*.log"), key=lambda p: p.stat().st_mtime) + \
            sorted(self.work.rglob("log.bucardo"))
        if not logs:
            return f"{self.name}: no log"
        lines = logs[-1].read_text(errors="replace").splitlines()[-20:]
        return f"last lines of {self.name}'s log {logs[-1].name}:\n" + "\n".join(lines)


# --------------------------------------------------------------------------- great-escape

class GreatEscape(Replicator):
    """great-escape as the sync role runs it: capture triggers on the source, the sync daemon applying to an
    Aurora-like target as the replication user through rds_session_replication_role()."""

    name = "great-escape"

    def __init__(self, pair: Pair, work: Path, batch_size: int = 10000):
        super().__init__(pair, work)
        self.config = self.work / "great-escape.yml"
        self.log = self.work / "sync.log"
        self.proc: subprocess.Popen[str] | None = None
        self.batch_size = batch_size

    def _write_config(self) -> None:
        target = {**self.pair.target, "user": REPL_USER, "password": REPL_PASSWORD}
        cfg = {"name": f"bench-{self.pair.tag}", "source": self.pair.source, "target": target,
               "schemas": ["public"], "batch_size": self.batch_size, "poll_interval": 1.0,
               "state_dir": str(self.work / "state")}
        self.config.write_text(yaml.safe_dump(cfg))
        os.chmod(self.config, 0o600)  # holds passwords

    def prepare_target(self) -> None:
        """What the prepare-target phase does: the replica-role function and the replication user's grants."""
        if self.pair.target_cluster.kind != "aurora":
            raise c.BenchError("great-escape's target must be an aurora-kind cluster (the replica-role "
                               "function is owned by its master user)")
        ensure_repl_user(self.pair.target_cluster)
        function = jinja2.Template(FUNCTION_TEMPLATE.read_text()).render(
            replication_role_function_schema="public", replication_role_function_owner=MASTER_USER,
            replication_role_function_grantee=REPL_USER)
        repl = sql.Identifier(REPL_USER)
        c.execute(self.pair.target, function,
                  sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(
                      sql.Identifier(self.pair.target["dbname"]), repl),
                  sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(repl),
                  sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public "
                          "TO {}").format(repl),
                  sql.SQL("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {}").format(repl))

    def install(self, target: bool = True) -> None:
        self._write_config()
        if target:
            self.prepare_target()
        c.run([str(GE_BIN), "capture", "install", "--config", str(self.config), "--no-freeze"],
              timeout=600, what=f"great-escape capture install on {c.db.describe(self.pair.source)}")

    def start(self, drain: bool = False) -> None:
        args = [str(GE_BIN), "sync", "--config", str(self.config)] + (["--drain"] if drain else [])
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         text=True)

    def wait_drained(self, timeout: float) -> tuple[float, int]:
        """For `start(drain=True)`: seconds until the process exits, and its peak RSS in KiB (wait4)."""
        assert self.proc is not None
        started = time.monotonic()
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() - started > timeout:
                raise c.BenchError(f"great-escape sync --drain still running after {timeout:.0f} s; "
                                   f"see {self.log}")
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        if self.proc.returncode != 0:
            raise c.BenchError(f"great-escape sync --drain exited {self.proc.returncode}: "
                               f"{self.log.read_text()[-1500:]}")
        return elapsed, usage.ru_maxrss

    def stop(self) -> None:
        if self.proc is not None:
            c.kill_tree(self.proc, timeout=60)
            self.proc = None


# --------------------------------------------------------------------------- Bucardo

class Bucardo(Replicator):
    """Bucardo 5.6 for real: `bucardo install` puts its database on the source cluster, `add sync` puts its
    delta, kick and truncate triggers on the source tables, `start` runs MCP/CTL/KID."""

    name = "bucardo"

    def __init__(self, pair: Pair, work: Path):
        super().__init__(pair, work)
        self.piddir = self.work / "run"
        self.logdir = self.work / "log"
        self.sync = "s_" + pair.tag
        self.started = False

    def _cli(self) -> list[str]:
        src = self.pair.source_cluster
        # Unix socket with local trust: `bucardo install` creates the bucardo superuser without a password.
        return ["bucardo", "--dbhost", str(src.datadir), "--dbport", str(src.port), "--dbuser", "bucardo",
                "--dbname", "bucardo", "--piddir", str(self.piddir), "--quiet"]

    def _bucardo(self, *args: str, timeout: float = 300) -> str:
        # cwd: bucardo writes bucardo.restart.reason.* into the current directory.
        return c.run([*self._cli(), *args], timeout=timeout, what=f"bucardo {' '.join(args[:2])}",
                     cwd=self.work).stdout

    def _installed(self) -> bool:
        return bool(c.query(c.superuser(self.pair.source_cluster),
                            "SELECT 1 FROM pg_catalog.pg_database WHERE datname = 'bucardo'"))

    def install(self) -> None:
        self.piddir.mkdir(parents=True, exist_ok=True)
        self.logdir.mkdir(parents=True, exist_ok=True)
        src_cluster, dst_cluster = self.pair.source_cluster, self.pair.target_cluster
        if not self._installed():
            c.run(["bucardo", "install", "--batch", "--dbhost", str(src_cluster.datadir), "--dbport",
                   str(src_cluster.port), "--dbuser", "postgres", "--dbname", "postgres", "--piddir",
                   str(self.piddir)], timeout=300, what="bucardo install", cwd=self.work)
            # Terse logging: the log must not be what we measure.
            self._bucardo("set", "log_level=terse")
        tag = self.pair.tag
        self._bucardo("add", "db", f"src_{tag}", f"dbname={tag}", f"host={src_cluster.datadir}",
                      f"port={src_cluster.port}", "user=postgres")
        self._bucardo("add", "db", f"dst_{tag}", f"dbname={self.pair.target['dbname']}",
                      f"host={dst_cluster.datadir}", f"port={dst_cluster.port}", "user=postgres")
        self._bucardo("add", "table", "all", f"db=src_{tag}", f"relgroup=rg_{tag}")
        self._bucardo("add", "sync", self.sync, f"relgroup=rg_{tag}",
                      f"dbs=src_{tag}:source,dst_{tag}:target", "onetimecopy=0", "autokick=1")

    def start(self) -> None:
        self._bucardo("start", "--log-destination", str(self.logdir), "bench")
        self.started = True

    def _mcp_pid(self) -> int | None:
        pidfile = self.piddir / "bucardo.mcp.pid"
        with contextlib.suppress(OSError, ValueError):
            return int(pidfile.read_text().split()[0])
        return None

    def stop(self) -> None:
        if not self.started:
            return
        pid = self._mcp_pid()
        with contextlib.suppress(c.BenchError):
            self._bucardo("stop", "bench", timeout=120)
        deadline = time.monotonic() + 60
        while pid and time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if pid and _alive(pid):
            # Bucardo did not stop: end the processes it started (each is in the MCP's session).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        # Bucardo refuses to start again while its stop file exists.
        with contextlib.suppress(FileNotFoundError):
            (self.piddir / "fullstopbucardo").unlink()
        self.started = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --------------------------------------------------------------------------- logical replication

class Logical(Replicator):
    """Native logical replication: a publication for all tables, a subscription without the initial copy
    (the target already holds the data). Stopped means the subscription is disabled; the slot keeps the
    WAL."""

    name = "logical"

    def __init__(self, pair: Pair, work: Path):
        super().__init__(pair, work)
        self.pub = sql.Identifier("bench_pub")
        self.sub = sql.Identifier("bench_sub_" + pair.tag)
        self.created = False

    def install(self) -> None:
        c.execute(self.pair.source, sql.SQL("CREATE PUBLICATION {} FOR ALL TABLES").format(self.pub))
        src = self.pair.source
        dsn = conninfo.make_conninfo(host=src["host"], port=src["port"], dbname=src["dbname"],
                                     user=src["user"], password=src["password"],
                                     application_name="bench logical")
        c.execute(self.pair.target, sql.SQL(
            "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = false, enabled = false)")
            .format(self.sub, sql.Literal(dsn), self.pub))
        self.created = True

    def start(self) -> None:
        c.execute(self.pair.target, sql.SQL("ALTER SUBSCRIPTION {} ENABLE").format(self.sub))

    def stop(self) -> None:
        if self.created:
            c.execute(self.pair.target, sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(self.sub))

    def cleanup(self) -> None:
        if self.created:
            # DROP SUBSCRIPTION also drops the slot on the source, releasing its WAL.
            with contextlib.suppress(c.BenchError, Exception):
                self.stop()
            c.execute(self.pair.target, sql.SQL("DROP SUBSCRIPTION {}").format(self.sub))
            self.created = False


TOOLS: dict[str, type[Replicator]] = {"great-escape": GreatEscape, "bucardo": Bucardo, "logical": Logical}


def available(tool: str) -> str | None:
    """None if the tool can run here, else why not."""
    if tool == "great-escape":
        return None if c.engine_has("capture", "daemon", "apply") and GE_BIN.exists() else \
            "the great-escape engine in this venv has no capture/sync yet"
    if tool == "bucardo":
        return None if shutil.which("bucardo") else "bucardo is not installed (apt-get install bucardo)"
    return None
