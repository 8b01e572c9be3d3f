"""Local PostgreSQL clusters for the demo, the tests and the benchmarks.

A "source" cluster is a plain on-premises server with a superuser. An "aurora" cluster simulates
Aurora/RDS as DESIGN.md describes: the master user is not a superuser (CREATEDB, CREATEROLE, member of
rds_superuser) and only rds_superuser may SET session_replication_role (PostgreSQL 15 GRANT SET ON PARAMETER).

Clusters run Debian's PostgreSQL 15 (GE_PG_BIN) unless given another build: `find_build(major)` finds the
builds scripts/install-pg-majors.sh puts in GE_PG_CACHE (12, 13, 14, 16). A 12-14 cluster is only a source.

    python -m great_escape.localcluster start --dir /var/tmp/ge/source --port 55432 --kind source [--major 12]
    python -m great_escape.localcluster stop --dir /var/tmp/ge/source [--major 12]
    python -m great_escape.localcluster tls --dir /var/tmp/ge/tls     # a CA and a server certificate

With a TLS directory (`make_tls`: ca.crt, server.crt and server.key for localhost and 127.0.0.1) a cluster
serves TLS, like Aurora with rds.force_ssl = 1 serves it, and `conninfo()` connects with sslmode=verify-full.
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


TLS_HOSTS = ("localhost", "127.0.0.1")


class ClusterError(Exception):
    """A local cluster could not start; the message names the cluster and the fix."""


@dataclass(frozen=True)
class TlsFiles:
    """A CA and a server certificate it signed (PEM files)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls(directory: Path, hosts: tuple[str, ...] = TLS_HOSTS, *, ca_name: str = "great-escape test CA") -> TlsFiles:
    """A new CA (ca.crt; its key is not kept) and a server certificate for `hosts` (DNS names and IP
    addresses as subjectAltName) in `directory`; the key readable by the server's user only. Idempotent: an
    existing set is kept."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    files = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    if all(f.exists() for f in (files.ca_cert, files.server_cert, files.server_key)):
        return files
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca = (x509.CertificateBuilder().subject_name(ca_subject).issuer_name(ca_subject)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(files.server_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(directory, 0o755)
    os.chmod(files.ca_cert, 0o644)
    os.chmod(files.server_cert, 0o644)
    if os.geteuid() == 0:  # the server runs as RUN_AS and must own its key
        shutil.chown(files.server_key, RUN_AS, RUN_AS)
    return files


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
    tls: TlsFiles | None = None  # serve TLS with this server certificate; clients verify it (verify-full)

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
        params: dict[str, object] = {"host": "127.0.0.1", "port": self.port, "dbname": dbname or self.dbname,
                                     "user": user or self.admin_user, "password": self.password}
        if self.tls is not None:
            params.update(sslmode="verify-full", sslrootcert=str(self.tls.ca_cert))
        return params

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
        if self.tls is not None:
            conf.update(ssl="on", ssl_cert_file=f"'{self.tls.server_cert}'", ssl_key_file=f"'{self.tls.server_key}'",
                        ssl_min_protocol_version="'TLSv1.2'")
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
    parser.add_argument("action", choices=["start", "stop", "remove", "tls"])
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--kind", choices=["source", "aurora"], default="source")
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--major", type=int, help="a PostgreSQL major other than GE_PG_BIN's (find_build)")
    parser.add_argument("--tls-dir", type=Path,
                        help="serve TLS with the certificate in this directory (made by the tls action)")
    args = parser.parse_args()
    if args.action == "tls":
        files = make_tls(args.dir)
        print(files.ca_cert)
        return
    password = os.environ.get("GE_LOCAL_PASSWORD", DEFAULT_PASSWORD)
    tls = None
    if args.tls_dir is not None:
        tls = TlsFiles(args.tls_dir / "ca.crt", args.tls_dir / "server.crt", args.tls_dir / "server.key")
        if not tls.server_key.exists():
            raise SystemExit(f"no server.key in {args.tls_dir}: run python -m great_escape.localcluster tls --dir "
                             f"{args.tls_dir} first")
    cluster = LocalCluster(args.dir, args.port, args.kind, password=password, listen=args.listen, tls=tls)
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
