"""TLS everywhere (issue 13, item 4): the test clusters serve TLS with a certificate signed by a CA made in
this test session (tests/conftest.py `tls_files`), every connection verifies it (sslmode=verify-full), and
the engine's own sessions are read back as encrypted on the server (pg_stat_ssl). A wrong CA, a wrong host
name or a missing CA file fails naming the host and the fix; an unencrypted connection is warned about."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg
import pytest

from great_escape import config, daemon, db, verify
from great_escape.errors import ConfigError, ConnectError
from great_escape.localcluster import make_tls
from tests.integration.syncutil import install_capture, make_config, setup_schema, snapshot_copy

DDL = "CREATE TABLE t (id int PRIMARY KEY, v text)"

_ENGINE_SESSIONS = """
SELECT a.application_name, s.ssl, s.version
FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid
WHERE a.datname = current_database() AND a.application_name LIKE 'great-escape %%' AND a.pid <> pg_backend_pid()
ORDER BY 1
"""


def _sessions(params: dict[str, Any]) -> list[tuple[Any, ...]]:
    with psycopg.connect(**params) as conn:
        return conn.execute(_ENGINE_SESSIONS).fetchall()


def test_the_clusters_are_reached_with_verify_full(dbpair):
    for params in (dbpair.source, dbpair.target, dbpair.repl):
        assert params["sslmode"] == "verify-full" and params["sslrootcert"]
        with db.connect(params, "tls check") as conn:
            assert db.ssl_in_use(conn)
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)


def test_every_connection_of_a_running_sync_is_encrypted(dbpair, tmp_path, caplog):
    setup_schema(dbpair, DDL)
    cfg = make_config(dbpair, tmp_path)
    install_capture(cfg)
    snapshot_copy(dbpair)
    dbpair.sql_source("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g")
    proc = daemon.SyncProcess(cfg, direction="forward")
    runner = threading.Thread(target=proc.run, daemon=True)
    caplog.set_level(logging.WARNING, logger="great_escape")
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while dbpair.sql_target("SELECT count(*) FROM t") != [(100,)] and time.monotonic() < deadline:
            time.sleep(0.2)
        source_sessions, target_sessions = _sessions(dbpair.source), _sessions(dbpair.repl)
    finally:
        proc.stop()
        runner.join(timeout=30)
    # The sync's source reader and listener, and its target writer: every one encrypted.
    assert len(source_sessions) >= 2 and len(target_sessions) >= 1, (source_sessions, target_sessions)
    assert all(ssl for _, ssl, _ in source_sessions + target_sessions), source_sessions + target_sessions
    assert all(version.startswith("TLSv1.") for _, _, version in source_sessions + target_sessions)
    report = verify.verify(dbpair.source, dbpair.repl, ["public"])
    assert report.ok
    assert "not encrypted" not in caplog.text


def test_a_server_certificate_from_another_ca_is_refused_naming_host_and_fix(dbpair, tmp_path):
    other = make_tls(tmp_path / "other", ca_name="some other CA")
    params = {**dbpair.source, "sslrootcert": str(other.ca_cert)}
    with pytest.raises(ConnectError) as err:
        db.connect(params, "tls check")
    message = str(err.value)
    assert db.describe(params) in message and "127.0.0.1" in message
    assert "not signed by a CA in sslrootcert" in message and str(other.ca_cert) in message
    assert "global-bundle.pem" in message


def test_a_host_name_the_certificate_does_not_hold_is_refused_naming_it(dbpair):
    # The right server (hostaddr), reached under a name its certificate does not carry.
    params = {**dbpair.target, "host": "db.wrong.example", "hostaddr": "127.0.0.1"}
    with pytest.raises(ConnectError) as err:
        db.connect(params, "tls check")
    message = str(err.value)
    assert "does not name the host 'db.wrong.example'" in message and "verify-ca" in message
    assert db.describe(params) in message


def test_a_missing_ca_file_is_named(dbpair, tmp_path):
    params = {**dbpair.source, "sslrootcert": str(tmp_path / "absent.pem")}
    with pytest.raises(ConnectError, match="absent.pem.*does not exist on this host"):
        db.connect(params, "tls check")


def test_an_unencrypted_connection_is_warned_about_once(dbpair, caplog):
    params = {**dbpair.source, "sslmode": "disable"}
    params.pop("sslrootcert")
    caplog.set_level(logging.WARNING, logger="great_escape.db")
    for _ in range(2):
        with db.connect(params, "tls check") as conn:
            assert not db.ssl_in_use(conn)
    warnings = [r.getMessage() for r in caplog.records if "not encrypted" in r.getMessage()]
    assert len(warnings) == 1
    assert db.describe(params) in warnings[0] and "sslmode: verify-full" in warnings[0]


def test_the_configuration_takes_tls_settings_and_refuses_a_misspelt_sslmode(dbpair, tmp_path):
    cfg = make_config(dbpair, tmp_path, source={**dbpair.source, "sslcert": "/c.crt", "sslkey": "/c.key"})
    assert cfg.source["sslmode"] == "verify-full" and cfg.source["sslcert"] == "/c.crt"
    with pytest.raises(ConfigError, match=r"source\.sslmode: expected one of"):
        config.from_dict({"name": "x", "source": {**dbpair.source, "sslmode": "verify_full"}, "target": dbpair.repl})


def test_preflight_names_a_side_reached_without_tls(dbpair):
    from great_escape import preflight

    plain = {**dbpair.source, "sslmode": "disable"}
    plain.pop("sslrootcert")
    report = preflight.run(preflight.Inputs(source=plain, target=dbpair.target))
    notices = [w for w in report.warnings if "not encrypted" in w]
    assert len(notices) == 1 and db.describe(plain) in notices[0] and "verify-full" in notices[0]
