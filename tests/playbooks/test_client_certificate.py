"""A client certificate named in the inventory (ge_source_sslcert, ge_source_sslkey) is what the phases present.

The source here requires one for the migration's login (pg_hba `cert`: no password is asked, none would do),
so the preflight's module and the dump's pg_dump and psql get in only when the connection description carries
the certificate to them. The inventories documented these settings long before any phase read them."""

from __future__ import annotations

import datetime
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from psycopg import sql

from great_escape.localcluster import LocalCluster
from tests.playbooks.conftest import pair_name

CERT_USER = "ge_cert_admin"
PG_DUMP = {"ge_copy_method": "pg_dump"}  # the dump holds the data too: pg_dump reads every table


def _pem(path: Path, data: bytes, mode: int) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _client_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, client certificate for CERT_USER, its key): a CA of the test's own, not the servers'."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "great-escape test client CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CERT_USER)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (_pem(directory / "client-ca.crt", ca.public_bytes(pem), 0o644),
            _pem(directory / "client.crt", cert.public_bytes(pem), 0o644),
            _pem(directory / "client.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()), 0o600))


@pytest.fixture
def cert_login(source_cluster: LocalCluster) -> Iterator[tuple[Path, Path]]:
    """CERT_USER, a superuser on the source cluster who may log in only with a certificate of the test's CA;
    (certificate, key). The cluster's hba and ssl_ca_file are put back afterwards."""
    directory = Path("/var/tmp/great-escape-tests") / f"client-cert-{os.getpid()}"  # the server reads the CA
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    ca, cert, key = _client_certificate(directory)
    hba = source_cluster.datadir / "pg_hba.conf"
    original = hba.read_text()
    admin = source_cluster.conninfo(dbname="postgres")
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(CERT_USER)))
        conn.execute(sql.SQL("ALTER SYSTEM SET ssl_ca_file = {}").format(sql.Literal(str(ca))))
        hba.write_text(f"hostssl all {CERT_USER} all cert\n{original}")
        conn.execute("SELECT pg_catalog.pg_reload_conf()")
    try:
        yield cert, key
    finally:
        hba.write_text(original)
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET ssl_ca_file")
            conn.execute("SELECT pg_catalog.pg_reload_conf()")
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(CERT_USER)))
        shutil.rmtree(directory, ignore_errors=True)


def test_the_inventorys_client_certificate_reaches_the_modules_and_pg_dump(dbpair, cert_login, run_playbook):
    cert, key = cert_login
    dbpair.sql_source("CREATE TABLE orders (id int PRIMARY KEY, note text); "
                      "INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 100) g")
    login = {**dbpair.source, "user": CERT_USER, "password": ""}
    # The server asks for the certificate: without it (and without a password to fall back on) no way in.
    with pytest.raises(psycopg.OperationalError, match="certificate"):
        psycopg.connect(**login).close()
    with psycopg.connect(**login, sslcert=str(cert), sslkey=str(key)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (CERT_USER,)

    settings = {"ge_source_user": CERT_USER, "ge_source_password": "", "ge_source_sslcert": str(cert),
                "ge_source_sslkey": str(key)}
    proc = run_playbook("playbooks/00_preflight.yml", extra=settings)
    assert "Preflight found no problem." in proc.stdout
    run_playbook("playbooks/04_dump.yml", extra={**settings, **PG_DUMP})
    dump = Path("/var/tmp/great-escape-tests") / f"work-{pair_name(dbpair)}" / "dump"
    for section in ("pre-data", "data", "post-data"):
        assert (dump / section / "toc.dat").is_file(), section
