"""Real PostgreSQL 15 clusters for the tests: a plain "source" and an "aurora" target simulated as
DESIGN.md describes (non-superuser master in rds_superuser; the replication user can switch
session_replication_role only through the SECURITY DEFINER function).

Both serve TLS with a server certificate for 127.0.0.1 and localhost signed by a CA made in this test
session (`tls_files`), and every connection the tests and the engine make from `conninfo()` verifies it
(sslmode=verify-full, sslrootcert the session's CA)."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import psycopg
import pytest
from psycopg import sql

from great_escape import restore, state
from great_escape.localcluster import MASTER_USER, LocalCluster, TlsFiles, make_tls, port_free

ROOT = Path(__file__).resolve().parents[1]
TEST_ROOT = Path(os.environ.get("GE_TEST_ROOT", "/var/tmp/great-escape-tests")) / str(os.getpid())
REPL_USER = "ge_repl"
REPL_PASSWORD = "ge-repl-secret"
FUNCTION_TEMPLATE = ROOT / "roles/replication_role_function/templates/rds_session_replication_role.sql.j2"
_counter = itertools.count()


def _port(offset: int) -> int:
    """A free port from this pytest process's range (xdist-safe enough); override with GE_TEST_PORT_BASE.

    The range lies in Linux's ephemeral ports, where any client socket may hold one: busy ones are skipped.
    """
    base = int(os.environ.get("GE_TEST_PORT_BASE", 60000 + os.getpid() % 1000 * 2)) + offset
    return next(p for p in range(base, base + 200, 2) if port_free(p))


def _test_root() -> Path:
    TEST_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(TEST_ROOT.parent, 0o755)
    os.chmod(TEST_ROOT, 0o755)
    return TEST_ROOT


@pytest.fixture(scope="session")
def tls_files() -> TlsFiles:
    """The session's CA and the clusters' server certificate (127.0.0.1, localhost)."""
    return make_tls(_test_root() / "tls")


@pytest.fixture(scope="session")
def source_cluster(tls_files: TlsFiles) -> Iterator[LocalCluster]:
    _test_root()
    cluster = LocalCluster(TEST_ROOT / "source", _port(0), "source", tls=tls_files).start()
    yield cluster
    cluster.stop(remove=True)
    shutil.rmtree(TEST_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def aurora_cluster(tls_files: TlsFiles) -> Iterator[LocalCluster]:
    _test_root()
    cluster = LocalCluster(TEST_ROOT / "aurora", _port(1), "aurora", tls=tls_files).start()
    _ensure_repl_user(cluster)
    yield cluster
    cluster.stop(remove=True)


@pytest.fixture(scope="session")
def source_ssh() -> Iterator[list[str]]:
    """The ssh command that reaches "the source host" through a real sshd on 127.0.0.1 (this machine, where the
    source cluster runs): its own host key, pinned (StrictHostKeyChecking=yes), and a client key made here;
    nothing of the system's ssh configuration is read or changed."""
    home = _test_root() / "sshd"
    home.mkdir(exist_ok=True)
    for name in ("host", "client"):
        if not (home / name).exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)], check=True)
    port = _port(6)
    host_key = (home / "host.pub").read_text().split()[:2]
    (home / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_key)}\n")
    (home / "sshd.conf").write_text("\n".join([
        f"ListenAddress 127.0.0.1:{port}", f"HostKey {home / 'host'}", f"PidFile {home / 'sshd.pid'}",
        f"AuthorizedKeysFile {home / 'client.pub'}", "PermitRootLogin prohibit-password", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "MaxStartups 100:30:200", ""]))
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    log = (home / "sshd.log").open("wb")
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(home / "sshd.conf")], stdout=log,
                            stderr=subprocess.STDOUT)
    argv = ["ssh", "-i", str(home / "client"), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={home / 'known_hosts'}",
            "-p", str(port), "root@127.0.0.1"]
    deadline = time.monotonic() + 20
    while subprocess.run([*argv, "true"], capture_output=True).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the tests' sshd does not answer: {(home / 'sshd.log').read_text()[-1000:]}")
        time.sleep(0.2)
    yield argv
    proc.terminate()
    proc.wait(10)
    log.close()


def _ensure_repl_user(cluster: LocalCluster) -> None:
    """The replication user, as prepare-target's first task makes it (again after a test's cleanup dropped it)."""
    with psycopg.connect(**cluster.conninfo(dbname="postgres"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (REPL_USER,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(REPL_USER), sql.Literal(REPL_PASSWORD)))


def render_replica_role_function(schema: str = "public") -> str:
    """The prepare-target role's SQL, rendered exactly as the role renders it."""
    return jinja2.Template(FUNCTION_TEMPLATE.read_text()).render(
        replication_role_function_schema=schema,
        replication_role_function_owner=MASTER_USER,
        replication_role_function_grantee=REPL_USER,
    )


@dataclass
class DbPair:
    """One fresh database on each cluster: `source` (superuser), `target` (master), `repl` (replication user)."""

    source: dict[str, Any]
    target: dict[str, Any]
    repl: dict[str, Any]

    def sql_source(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return _run(self.source, query, params)

    def sql_target(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return _run(self.target, query, params)

    def grant_repl(self) -> None:
        """What the migration grants the replication user, through the product's own steps: the prepare-target
        phase's (roles/prepare_target: state.prepare_target, CONNECT, TEMPORARY and the state schema, no
        CREATE on the database) and the restore's on the application's tables (roles/restore prepare.yml, step grant:
        restore.grant_user). The tests grant the replication user nothing by hand."""
        with psycopg.connect(**self.target) as conn:
            state.prepare_target(conn, REPL_USER)
            restore.grant_user(conn, None, REPL_USER)


def _run(params: dict[str, Any], query: str, args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(**params, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def dbpair(source_cluster: LocalCluster, aurora_cluster: LocalCluster) -> Iterator[DbPair]:
    """Fresh databases; the target has the replica-role function installed and the repl user may CONNECT."""
    name = f"t{os.getpid()}_{next(_counter)}"
    _ensure_repl_user(aurora_cluster)
    with psycopg.connect(**source_cluster.conninfo(dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(**aurora_cluster.conninfo(dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    pair = DbPair(source_cluster.conninfo(dbname=name), aurora_cluster.conninfo(dbname=name),
                  {**aurora_cluster.conninfo(dbname=name), "user": REPL_USER, "password": REPL_PASSWORD})
    with psycopg.connect(**pair.target, autocommit=True) as conn:
        conn.execute(render_replica_role_function())
    yield pair
    for cluster in (source_cluster, aurora_cluster):
        with psycopg.connect(**cluster.conninfo(dbname="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
