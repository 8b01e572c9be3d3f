"""Local PostgreSQL clusters for the demo, the tests and the benchmarks.

A "source" cluster is a plain on-premises server with a superuser. An "aurora" cluster simulates
Aurora/RDS as DESIGN.md describes: the master user is not a superuser (CREATEDB, CREATEROLE, member of
rds_superuser) and only rds_superuser may SET session_replication_role (PostgreSQL 15 GRANT SET ON PARAMETER).

Clusters run Debian's PostgreSQL 15 (GE_PG_BIN) unless given another build: `find_build(major)` finds the
builds scripts/install-pg-majors.sh puts in GE_PG_CACHE (12, 13, 14, 16). A 12-14 cluster is only a source.

    python -m great_escape.localcluster start --dir /var/tmp/ge/source --port 55432 --kind source [--major 12]
    python -m great_escape.localcluster stop --dir /var/tmp/ge/source [--major 12]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

PG_BIN = Path(os.environ.get("GE_PG_BIN", "/usr/lib/postgresql/15/bin"))
# Server builds of other majors (scripts/install-pg-majors.sh): <cache>/<major>/{bin,lib,INSTALLED}.
PG_CACHE = Path(os.environ.get("GE_PG_CACHE", "/var/cache/great-escape/pg"))
AURORA_MIN_MAJOR = 15  # GRANT SET ON PARAMETER, which the simulated rds_superuser needs
RUN_AS = "postgres"
SUPERUSER = "postgres"
MASTER_USER = "ge_master"
DEFAULT_PASSWORD = "ge-local-secret"


class ClusterError(Exception):
    """A local cluster could not start; the message names the cluster and the fix."""


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on host:port now (PostgreSQL also binds with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _lib_env(lib_dir: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if lib_dir is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib_dir), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


@dataclass(frozen=True)
class PgBuild:
    """The programs of one PostgreSQL major: where they are, and the libraries they need (None: the system's)."""

    major: int
    bin_dir: Path
    lib_dir: Path | None = None
    origin: str = ""

    def env(self) -> dict[str, str]:
        """The environment to run these programs with (pg_dump, psql ... of this build)."""
        return _lib_env(self.lib_dir)

    def program(self, name: str) -> str:
        return str(self.bin_dir / name)


def find_build(major: int) -> PgBuild | None:
    """The installed build of a major: the cache's (scripts/install-pg-majors.sh), else Debian's, else None."""
    cached = PG_CACHE / str(major)
    if (cached / "INSTALLED").is_file() and (cached / "bin" / "postgres").exists():
        return PgBuild(major, cached / "bin", cached / "lib", (cached / "INSTALLED").read_text().strip())
    debian = Path(f"/usr/lib/postgresql/{major}/bin")
    if (debian / "postgres").exists():
        return PgBuild(major, debian, None, f"Debian postgresql-{major}")
    return None


@dataclass
class LocalCluster:
    datadir: Path
    port: int
    kind: str  # "source" or "aurora"
    password: str = DEFAULT_PASSWORD
    dbname: str = "app"
    listen: str = "127.0.0.1"
    bin_dir: Path | None = None  # None: PG_BIN (Debian's PostgreSQL 15, or GE_PG_BIN)
    lib_dir: Path | None = None  # LD_LIBRARY_PATH for a build that brings its own libraries

    def _program(self, name: str) -> str:
        return str((self.bin_dir or PG_BIN) / name)

    def _env(self) -> dict[str, str]:
        return _lib_env(self.lib_dir)

    def major(self) -> int:
        """The server's major version, from `postgres --version` (runs nothing else)."""
        out = subprocess.run([self._program("postgres"), "--version"], env=self._env(), check=True,
                             capture_output=True, text=True).stdout
        match = re.search(r"\(PostgreSQL\) (\d+)", out)
        if not match:
            raise ClusterError(f"{self._program('postgres')} --version printed {out.strip()!r}")
        return int(match.group(1))

    def conninfo(self, user: str | None = None, dbname: str | None = None) -> dict[str, object]:
        """libpq parameters as the engine takes them."""
        return {"host": "127.0.0.1", "port": self.port, "dbname": dbname or self.dbname,
                "user": user or self.admin_user, "password": self.password}

    @property
    def admin_user(self) -> str:
        return SUPERUSER if self.kind == "source" else MASTER_USER

    def _run(self, *args: str) -> None:
        cmd = [self._program(args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", RUN_AS, "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       env=self._env())

    def start(self, settings: dict[str, str] | None = None) -> LocalCluster:
        """initdb (once), start, and set up roles and the database. Re-running on a live cluster is a no-op."""
        if self.running():
            return self
        # listen_addresses syntax: a comma list, "*" for every address.
        if not all(port_free(self.port, "0.0.0.0" if h.strip() == "*" else h.strip()) for h in self.listen.split(",")):
            raise ClusterError(f"cannot start the {self.kind} cluster in {self.datadir}: port {self.port} on "
                               f"{self.listen} is in use by another program; choose a free port")
        fresh = not (self.datadir / "PG_VERSION").exists()
        if fresh and self.kind == "aurora" and (major := self.major()) < AURORA_MIN_MAJOR:
            raise ClusterError(f"cannot create an aurora cluster with PostgreSQL {major} in {self.datadir}: the "
                               f"simulated rds_superuser needs GRANT SET ON PARAMETER ({AURORA_MIN_MAJOR}+); "
                               "use this major as a source")
        if fresh:
            self._initdb()
        conf = {
            "listen_addresses": f"'{self.listen}'", "port": str(self.port),
            "unix_socket_directories": f"'{self.datadir}'", "max_connections": "100",
            "shared_buffers": "256MB", "fsync": "on", "logging_collector": "off",
            "wal_level": "logical", "max_wal_senders": "10", "max_replication_slots": "10",
        }
        conf.update(settings or {})
        (self.datadir / "postgresql.auto.conf").write_text("".join(f"{k} = {v}\n" for k, v in conf.items()))
        log = self.datadir / "server.log"
        try:
            self._run("pg_ctl", "-D", str(self.datadir), "-l", str(log), "-w", "-t", "60", "start")
        except subprocess.CalledProcessError as exc:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-5:]) if log.exists() else ""
            raise ClusterError(f"the {self.kind} cluster in {self.datadir} did not start; {log} ends with:\n"
                               f"{tail or exc.stderr}") from None
        if fresh:
            self._bootstrap()
        return self

    def running(self) -> bool:
        cmd = [self._program("pg_ctl"), "-D", str(self.datadir), "status"]
        return (self.datadir / "postmaster.pid").exists() and subprocess.run(
            ["runuser", "-u", RUN_AS, "--", *cmd] if os.geteuid() == 0 else cmd, env=self._env(),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0

    def stop(self, remove: bool = False) -> None:
        if self.running():
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop")
        if remove:
            shutil.rmtree(self.datadir, ignore_errors=True)

    def _initdb(self) -> None:
        """initdb as the postgres user; every parent of datadir must be traversable by that user."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.datadir, 0o700)
        with tempfile.NamedTemporaryFile("w", delete=False, suffix=".pw") as pw:
            pw.write(self.password + "\n")
        try:
            if os.geteuid() == 0:
                shutil.chown(pw.name, RUN_AS)
                shutil.chown(self.datadir, RUN_AS, RUN_AS)
            self._run("initdb", "-D", str(self.datadir), "-U", SUPERUSER, "--pwfile", pw.name,
                      "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
        finally:
            os.unlink(pw.name)
        hba = self.datadir / "pg_hba.conf"
        hba.write_text(hba.read_text() + "host all all 0.0.0.0/0 scram-sha-256\n")

    def _bootstrap(self) -> None:
        su = psycopg.connect(host=str(self.datadir), port=self.port, user=SUPERUSER, dbname="postgres",
                             autocommit=True)
        with su:
            if self.kind == "aurora":
                su.execute("CREATE ROLE rds_superuser NOLOGIN")
                su.execute("GRANT SET ON PARAMETER session_replication_role TO rds_superuser")
                # RDS: rds_superuser sees every session in pg_stat_activity and may end any non-superuser one.
                su.execute("GRANT pg_monitor, pg_signal_backend TO rds_superuser")
                su.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB CREATEROLE PASSWORD {} IN ROLE rds_superuser")
                           .format(sql.Identifier(MASTER_USER), sql.Literal(self.password)))
            su.execute(sql.SQL("CREATE DATABASE {} OWNER {}")
                       .format(sql.Identifier(self.dbname), sql.Identifier(self.admin_user)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop", "remove"])
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--kind", choices=["source", "aurora"], default="source")
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--major", type=int, help="a PostgreSQL major other than GE_PG_BIN's (find_build)")
    args = parser.parse_args()
    password = os.environ.get("GE_LOCAL_PASSWORD", DEFAULT_PASSWORD)
    cluster = LocalCluster(args.dir, args.port, args.kind, password=password, listen=args.listen)
    if args.major is not None:
        build = find_build(args.major)
        if build is None:
            raise SystemExit(f"no PostgreSQL {args.major} build in {PG_CACHE} or /usr/lib/postgresql; "
                             f"run GE_PG_MAJORS={args.major} scripts/install-pg-majors.sh")
        cluster.bin_dir, cluster.lib_dir = build.bin_dir, build.lib_dir
    if args.action == "start":
        try:
            cluster.start()
        except ClusterError as exc:
            raise SystemExit(str(exc)) from None
    else:
        cluster.stop(remove=args.action == "remove")


if __name__ == "__main__":
    main()
