"""Local PostgreSQL clusters for the demo, the tests and the benchmarks.

A "source" cluster is a plain on-premises server with a superuser. An "aurora" cluster simulates
Aurora/RDS as DESIGN.md describes: the master user is not a superuser (CREATEDB, CREATEROLE, member of
rds_superuser) and only rds_superuser may SET session_replication_role (PostgreSQL 15 GRANT SET ON PARAMETER).

    python -m great_escape.localcluster start --dir /var/tmp/ge/source --port 55432 --kind source
    python -m great_escape.localcluster stop --dir /var/tmp/ge/source
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

PG_BIN = Path(os.environ.get("GE_PG_BIN", "/usr/lib/postgresql/15/bin"))
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


@dataclass
class LocalCluster:
    datadir: Path
    port: int
    kind: str  # "source" or "aurora"
    password: str = DEFAULT_PASSWORD
    dbname: str = "app"
    listen: str = "127.0.0.1"

    def conninfo(self, user: str | None = None, dbname: str | None = None) -> dict[str, object]:
        """libpq parameters as the engine takes them."""
        return {"host": "127.0.0.1", "port": self.port, "dbname": dbname or self.dbname,
                "user": user or self.admin_user, "password": self.password}

    @property
    def admin_user(self) -> str:
        return SUPERUSER if self.kind == "source" else MASTER_USER

    def _run(self, *args: str) -> None:
        cmd = [str(PG_BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", RUN_AS, "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def start(self, settings: dict[str, str] | None = None) -> LocalCluster:
        """initdb (once), start, and set up roles and the database. Re-running on a live cluster is a no-op."""
        if self.running():
            return self
        # listen_addresses syntax: a comma list, "*" for every address.
        if not all(port_free(self.port, "0.0.0.0" if h.strip() == "*" else h.strip()) for h in self.listen.split(",")):
            raise ClusterError(f"cannot start the {self.kind} cluster in {self.datadir}: port {self.port} on "
                               f"{self.listen} is in use by another program; choose a free port")
        fresh = not (self.datadir / "PG_VERSION").exists()
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
        return (self.datadir / "postmaster.pid").exists() and subprocess.run(
            ["runuser", "-u", RUN_AS, "--", str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "status"]
            if os.geteuid() == 0 else [str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "status"],
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
    args = parser.parse_args()
    password = os.environ.get("GE_LOCAL_PASSWORD", DEFAULT_PASSWORD)
    cluster = LocalCluster(args.dir, args.port, args.kind, password=password, listen=args.listen)
    if args.action == "start":
        try:
            cluster.start()
        except ClusterError as exc:
            raise SystemExit(str(exc)) from None
    else:
        cluster.stop(remove=args.action == "remove")


if __name__ == "__main__":
    main()
