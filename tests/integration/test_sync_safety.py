"""Crash safety, unique values moving between rows, the schema freeze, and bad input."""

import os
import random
import signal
import subprocess
import sys
import time

import psycopg
import pytest
import yaml
from psycopg import sql

from great_escape import capture, daemon, status
from great_escape.errors import ConnectError, KeylessTableError, SyncError
from tests.integration.syncutil import assert_identical, install_capture, make_config, setup_schema, snapshot_copy
from tests.integration.workload import SEED, SOURCE_DDL, TARGET_EXTRA, Writers


def _write_config(cfg, path):
    raw = {"name": cfg.name, "source": cfg.source, "target": cfg.target, "batch_size": cfg.batch_size,
           "poll_interval": cfg.poll_interval, "state_dir": str(cfg.state_dir)}
    path.write_text(yaml.safe_dump(raw))
    return path


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(dbpair, tmp_path):
    setup_schema(dbpair, SOURCE_DDL, SOURCE_DDL + TARGET_EXTRA)
    dbpair.sql_source(SEED)
    cfg = make_config(dbpair, tmp_path, batch_size=40)
    install_capture(cfg)
    snapshot_copy(dbpair)
    conf = _write_config(cfg, tmp_path / "ge.yml")
    rnd = random.Random(7)
    kills = 0
    with Writers(dbpair.source, n=2, seed=11):
        for _ in range(10):
            proc = subprocess.Popen([sys.executable, "-m", "great_escape.cli", "sync", "--config", str(conf)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(rnd.uniform(0.6, 1.6))
            assert proc.poll() is None, proc.stderr.read().decode()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
    assert kills == 10
    daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    assert_identical(dbpair)
    applied = status.collect(cfg, "forward")
    assert applied["pending"] == 0 and applied["batches"] > 10


def test_unique_value_moving_between_rows_across_batches(dbpair, tmp_path):
    setup_schema(dbpair, "CREATE TABLE acct (id int PRIMARY KEY, email text NOT NULL UNIQUE, n int)")
    dbpair.sql_source("INSERT INTO acct VALUES (1, 'x', 0), (2, 'y', 0)")
    cfg = make_config(dbpair, tmp_path, batch_size=1)
    install_capture(cfg)
    snapshot_copy(dbpair)
    dbpair.sql_source("UPDATE acct SET n = 1 WHERE id = 1")  # A's first delta comes first
    dbpair.sql_source("BEGIN; UPDATE acct SET email = 'z' WHERE id = 2; UPDATE acct SET email = 'y' WHERE id = 1; "
                      "COMMIT")
    daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    assert_identical(dbpair)


def test_schema_freeze_refuses_ddl_and_can_be_lifted(dbpair, tmp_path):
    setup_schema(dbpair, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = make_config(dbpair, tmp_path)
    capture.run(cfg, state="present", freeze=True)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="schema freeze"):
        dbpair.sql_source("ALTER TABLE t ADD COLUMN x int")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="schema freeze"):
        dbpair.sql_source("DROP TABLE t")
    dbpair.sql_source("BEGIN; CREATE TEMP TABLE scratch (a int); DROP TABLE scratch; COMMIT")  # temp tables pass
    dbpair.sql_source("BEGIN; SET LOCAL great_escape.allow_ddl = on; CREATE TABLE t2 (id int PRIMARY KEY); COMMIT")
    capture.run(cfg, state="absent", freeze=False)
    dbpair.sql_source("ALTER TABLE t ADD COLUMN x int")
    assert dbpair.sql_source("SELECT count(*) FROM pg_namespace WHERE nspname = 'ge_capture'")[0][0] == 0
    assert dbpair.sql_source("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'ge_capture%'")[0][0] == 0


def test_capture_is_idempotent_and_reports_changes(dbpair, tmp_path):
    setup_schema(dbpair, "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
    cfg = make_config(dbpair, tmp_path)
    first = capture.run(cfg, state="present", freeze=True, check=True)
    assert first.describe() == ["install capture on public.a", "install capture on public.b",
                                "install schema freeze"]
    assert capture.registered(psycopg.connect(**dbpair.source)) == {}
    assert capture.run(cfg, state="present", freeze=True).changed
    assert not capture.run(cfg, state="present", freeze=True).changed


def test_keyless_table_is_refused_with_the_list(dbpair, tmp_path):
    setup_schema(dbpair, "CREATE TABLE ok (id int PRIMARY KEY); CREATE TABLE loose (a int, b text);"
                         "CREATE TABLE nullable_unique (a int UNIQUE)")
    cfg = make_config(dbpair, tmp_path)
    with pytest.raises(KeylessTableError, match="public.loose, public.nullable_unique") as err:
        install_capture(cfg)
    assert "primary key" in str(err.value)
    assert capture.registered(psycopg.connect(**dbpair.source)) == {}  # nothing changed
    plan = capture.run(make_config(dbpair, tmp_path, keyless_tables="copy_at_cutover"), state="present", freeze=False)
    assert [t.qualname for t in plan.install] == ["public.ok"]


def test_wrong_password_and_unreachable_host(dbpair, tmp_path):
    bad = make_config(dbpair, tmp_path, source={**dbpair.source, "password": "wrong"})
    with pytest.raises(ConnectError, match="password was refused") as err:
        install_capture(bad)
    assert "wrong" not in str(err.value)
    closed = make_config(dbpair, tmp_path, target={**dbpair.repl, "port": 1})
    install_capture(make_config(dbpair, tmp_path))
    with pytest.raises(ConnectError, match="not reachable"):
        daemon.SyncProcess(closed, direction="forward").run(drain=True)


def test_target_without_function_or_set_stops_clearly(dbpair, tmp_path):
    setup_schema(dbpair, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = make_config(dbpair, tmp_path)
    install_capture(cfg)
    dbpair.sql_source("INSERT INTO t VALUES (1)")
    dbpair.sql_target("DROP FUNCTION public.rds_session_replication_role(text)")
    with pytest.raises(SyncError, match="rds_session_replication_role"):
        daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    assert dbpair.sql_target("SELECT count(*) FROM t")[0][0] == 0
    relid = capture.registered(psycopg.connect(**dbpair.source)).popitem()[0]
    delta = sql.Identifier(capture.SCHEMA, capture.delta_name(relid))
    assert dbpair.sql_source(sql.SQL("SELECT count(*) FROM {}").format(delta).as_string(None))[0][0] == 1


def test_source_table_that_disappears_is_named(dbpair, tmp_path):
    setup_schema(dbpair, "CREATE TABLE stay (id int PRIMARY KEY); CREATE TABLE gone (id int PRIMARY KEY)")
    cfg = make_config(dbpair, tmp_path)
    install_capture(cfg)
    dbpair.sql_source("INSERT INTO stay VALUES (1)")
    dbpair.sql_source("DROP TABLE gone")  # no freeze here
    with pytest.raises(SyncError, match="public.gone .* has disappeared"):
        daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    assert dbpair.sql_target("SELECT count(*) FROM stay")[0][0] == 0


def test_changes_keep_arriving_across_table_reloads(dbpair, tmp_path):
    """The daemon re-reads its tables now and then; every batch after that must still commit on the target
    (a reload once left the target inside a transaction, so later batches were silently never committed)."""
    import threading

    setup_schema(dbpair, "CREATE TABLE t (id int PRIMARY KEY, v int)")
    cfg = make_config(dbpair, tmp_path)
    install_capture(cfg)
    proc = daemon.SyncProcess(cfg, direction="forward")
    proc.reload_interval = 0.3
    runner = threading.Thread(target=proc.run, daemon=True)
    runner.start()
    try:
        for i in range(1, 31):
            dbpair.sql_source("INSERT INTO t VALUES (%s, %s)", (i, i))
            time.sleep(0.1)
        deadline = time.monotonic() + 30
        while dbpair.sql_target("SELECT count(*) FROM t")[0][0] < 30 and time.monotonic() < deadline:
            time.sleep(0.2)
        # Seen from another session: committed, not merely applied inside an open transaction.
        assert dbpair.sql_target("SELECT count(*) FROM t")[0][0] == 30
    finally:
        proc.stop()
        runner.join(timeout=30)
