"""Least privilege (issue 13, item 3): the sync and verify read the source as a dedicated role that is not a
superuser and holds exactly what they need; the replication user on the target has no CREATE on the
database; cleanup leaves no role of the project behind.

The source's superuser only installs capture and creates the sync role (capture.ensure_sync_role, grant_sync:
what the capture phase runs); the target's grants come from the product's own steps (the dbpair fixture runs
state.prepare_target, setup_schema the restore's restore.grant_user)."""

from __future__ import annotations

import inspect
import time
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from great_escape import capture, cutover, daemon, db, restore, state, status, verify
from great_escape.errors import CaptureError
from tests.conftest import REPL_USER
from tests.integration.syncutil import assert_identical, carry_access, make_config, setup_schema, snapshot_copy

SYNC_USER = "ge_sync_source"
SYNC_PASSWORD = "ge-sync-source-secret"
DDL = ("CREATE TABLE t (id serial PRIMARY KEY, v int); CREATE TABLE secret (id int PRIMARY KEY, pin text); "
       "CREATE SCHEMA other; CREATE TABLE other.o (id int PRIMARY KEY)")
EXCLUDED = ["public.secret"]


def _as(params: dict[str, Any], statement: str | sql.Composable) -> list[tuple[Any, ...]]:
    with psycopg.connect(**params, autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


def _refused(params: dict[str, Any], statement: str | sql.Composable) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _as(params, statement)


def _setup(dbpair, tmp_path, schemas: list[str] | None = None, *, create: bool = True):
    """Capture as the source's superuser, then the sync role as the capture phase makes it."""
    if create:
        setup_schema(dbpair, DDL)
    cfg = make_config(dbpair, tmp_path, exclude_tables=EXCLUDED, schemas=schemas or ["public"])
    capture.run(cfg, state="present", freeze=False)
    with psycopg.connect(**dbpair.source, autocommit=True) as conn:
        capture.ensure_sync_role(conn, SYNC_USER, SYNC_PASSWORD)
        with conn.transaction():
            capture.grant_sync(conn, SYNC_USER)
    return cfg, {**dbpair.source, "user": SYNC_USER, "password": SYNC_PASSWORD}


def _role(params: dict[str, Any], name: str) -> tuple[Any, ...] | None:
    rows = _as(params, sql.SQL("SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolcanlogin "
                               "FROM pg_roles WHERE rolname = {}").format(sql.Literal(name)))
    return rows[0] if rows else None


def test_the_sync_and_verify_run_as_a_source_role_that_only_reads_and_consumes(dbpair, tmp_path):
    cfg, syncer = _setup(dbpair, tmp_path)
    assert _role(dbpair.source, SYNC_USER) == (False, False, False, False, True)
    snapshot_copy(dbpair)
    dbpair.sql_source("INSERT INTO t (v) SELECT g FROM generate_series(1, 50) g; UPDATE t SET v = -v WHERE id < 10; "
                      "DELETE FROM t WHERE id = 3")
    sync_cfg = make_config(dbpair, tmp_path, source=syncer, exclude_tables=EXCLUDED, schemas=["public"])
    assert daemon.SyncProcess(sync_cfg, direction="forward").run(drain=True) > 0
    assert dbpair.sql_target("SELECT count(*) FROM t") == [(49,)]
    assert status.collect(sync_cfg, "forward")["pending"] == 0
    report = verify.verify(syncer, dbpair.repl, ["public"], EXCLUDED)
    assert report.ok, report.as_dicts()
    # A table captured later is readable by the sync role without a grant by hand.
    dbpair.sql_source("CREATE TABLE later (id int PRIMARY KEY)")
    dbpair.sql_target("CREATE TABLE later (id int PRIMARY KEY)")
    dbpair.grant_repl()
    capture.run(cfg, state="present", freeze=False)
    dbpair.sql_source("INSERT INTO later VALUES (1)")
    daemon.SyncProcess(sync_cfg, direction="forward").run(drain=True)
    assert dbpair.sql_target("SELECT id FROM later") == [(1,)]
    assert_identical(dbpair)


def test_the_sync_role_cannot_write_create_or_read_what_is_not_replicated(dbpair, tmp_path):
    _, syncer = _setup(dbpair, tmp_path)
    # A parameter privilege is the cluster's, not a database's: a cutover left live by another test of this
    # session's shared cluster would have granted it. Before a cutover this database's role holds none.
    dbpair.sql_source(f"REVOKE SET ON PARAMETER session_replication_role FROM {SYNC_USER}")
    for statement in ("INSERT INTO t (v) VALUES (1)", "UPDATE t SET v = 0", "DELETE FROM t", "TRUNCATE t",
                      "SELECT * FROM secret", "SELECT * FROM other.o", "CREATE SCHEMA mine",
                      "CREATE TABLE public.mine (id int)", "CREATE TABLE ge_capture.mine (id int)",
                      "INSERT INTO ge_capture.truncates (relid) VALUES ('t'::regclass)",
                      "SET session_replication_role = replica", "ALTER TABLE t DISABLE TRIGGER ALL"):
        _refused(syncer, statement)
    with psycopg.connect(**syncer) as conn:
        with pytest.raises(Exception, match="may not SET it"):
            db.set_replica_role(conn, None)
        assert not conn.execute("SELECT has_database_privilege(current_database(), 'CREATE')").fetchone()[0]


def test_the_reverse_sync_may_write_the_source_only_from_the_switch_until_the_way_back(dbpair, tmp_path):
    """grant_apply (cutover, as the source's admin) lets the sync role write the replicated tables, SET
    session_replication_role (GRANT SET ON PARAMETER, PostgreSQL 15+) and record progress with no CREATE on
    the database; revoke_apply (rollback) takes it back."""
    _, syncer = _setup(dbpair, tmp_path)
    with psycopg.connect(**dbpair.source, autocommit=True) as conn:
        actions = capture.grant_apply(conn, SYNC_USER)
        assert capture.grant_apply(conn, SYNC_USER)[1:] == []  # the state schema is made once
    assert "create schema great_escape" in actions
    with psycopg.connect(**syncer) as conn:
        assert db.set_replica_role(conn, None) == "set"
        state.ensure(conn)
        state.record_batch(conn, "x", "reverse", {"public.t": (1, 1)}, 1.0)
        conn.execute("INSERT INTO t (v) VALUES (7)")
        conn.commit()
    _refused(syncer, "SELECT * FROM secret")
    _refused(syncer, "CREATE SCHEMA mine")
    with psycopg.connect(**dbpair.source, autocommit=True) as conn:
        capture.revoke_apply(conn, SYNC_USER)
    _refused(syncer, "INSERT INTO t (v) VALUES (8)")
    _refused(syncer, "SET session_replication_role = replica")
    assert _as(syncer, "SELECT count(*) FROM t") == [(1,)]


def test_a_sync_role_that_would_miss_rows_hidden_by_row_level_security_is_refused(dbpair, tmp_path):
    setup_schema(dbpair, DDL)
    dbpair.sql_source("ALTER TABLE t ENABLE ROW LEVEL SECURITY")
    capture.run(make_config(dbpair, tmp_path, schemas=["public"], exclude_tables=EXCLUDED), state="present",
                freeze=False)
    with psycopg.connect(**dbpair.source, autocommit=True) as conn:
        capture.ensure_sync_role(conn, SYNC_USER, SYNC_PASSWORD)  # made by a superuser: BYPASSRLS
        conn.execute(sql.SQL("ALTER ROLE {} NOBYPASSRLS").format(sql.Identifier(SYNC_USER)))
        with pytest.raises(CaptureError, match="row level security.*public.t.*BYPASSRLS"), conn.transaction():
            capture.grant_sync(conn, SYNC_USER)
        conn.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(sql.Identifier(SYNC_USER)))
        with conn.transaction():
            capture.grant_sync(conn, SYNC_USER)


def test_the_replication_user_gets_only_what_apply_needs(dbpair, tmp_path):
    setup_schema(dbpair, DDL)
    rows = dbpair.sql_target(sql.SQL(
        "SELECT has_database_privilege({u}, current_database(), 'CREATE'), "
        "has_database_privilege({u}, current_database(), 'TEMPORARY'), "
        "has_schema_privilege({u}, 'public', 'CREATE'), has_table_privilege({u}, 't', 'DELETE'), "
        "(SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'great_escape')").format(
        u=sql.Literal(REPL_USER)).as_string(None))
    assert rows == [(False, True, False, True, "ge_master")]
    # An earlier version granted CREATE on the database: prepare-target takes it back.
    dbpair.sql_target(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
        sql.Identifier(dbpair.target["dbname"]), sql.Identifier(REPL_USER)).as_string(None))
    with psycopg.connect(**dbpair.target) as conn:
        state.prepare_target(conn, REPL_USER)
    assert dbpair.sql_target(f"SELECT has_database_privilege('{REPL_USER}', current_database(), 'CREATE')") \
        == [(False,)]
    # With no CREATE on the database the sync still records its progress (the schema was made for it).
    cfg = make_config(dbpair, tmp_path, schemas=["public"], exclude_tables=EXCLUDED)
    capture.run(cfg, state="present", freeze=False)
    dbpair.sql_source("INSERT INTO t (v) VALUES (1)")
    daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    assert dbpair.sql_target("SELECT rows_applied FROM great_escape.sync_state") == [(1,)]


def test_cleanup_leaves_no_project_role(dbpair, tmp_path, aurora_cluster):
    """Capture removal, then the roles: the source's sync role and capture writer, the target's replication
    user (a user of this test's own here: the session's ge_repl serves the other tests)."""
    repl = "ge_repl_cleanup"
    _, syncer = _setup(dbpair, tmp_path)
    with psycopg.connect(**dbpair.source, autocommit=True) as conn:
        capture.grant_apply(conn, SYNC_USER)
    with psycopg.connect(**dbpair.target, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (repl,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'x'").format(sql.Identifier(repl)))
    with psycopg.connect(**dbpair.target) as conn:
        state.prepare_target(conn, repl)
        restore.grant_user(conn, None, repl)
    _as({**dbpair.target, "user": repl, "password": "x"}, "CREATE TABLE great_escape.mine (id int)")
    capture.run(make_config(dbpair, tmp_path, schemas=["public"], exclude_tables=EXCLUDED), state="absent",
                freeze=False)
    with psycopg.connect(**dbpair.source, autocommit=True) as conn:
        assert capture.drop_sync_role(conn, SYNC_USER) == [f"drop role {SYNC_USER}"]
        assert capture.drop_sync_role(conn, SYNC_USER) == []
    with psycopg.connect(**dbpair.target, autocommit=True) as conn:  # as the master, not a superuser
        assert capture.drop_sync_role(conn, repl) == [f"drop role {repl}"]
    assert _role(dbpair.source, SYNC_USER) is None
    assert _role(dbpair.source, capture.WRITER_ROLE) is None
    assert _role(dbpair.target, repl) is None
    assert dbpair.sql_source("SELECT count(*) FROM pg_namespace WHERE nspname = 'ge_capture'") == [(0,)]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _as(syncer, "SELECT 1")


@pytest.fixture
def stop_daemons():
    configs: list[Any] = []
    yield configs.append
    for cfg in configs:
        for direction in ("forward", "reverse"):
            daemon.stop_detached(cfg, direction)


def _wait_for(check: Any, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.skipif("source_admin" not in inspect.signature(cutover.switch).parameters,
                    reason="needs the cutover patch of the issue 13 item 3 report (switch(source_admin=...))")
def test_cutover_and_rollback_with_the_sync_role_as_the_source_user(dbpair, tmp_path, stop_daemons):
    """The engine configuration names the sync role on the source; the source's superuser comes to the switch
    only (source_admin). The sync role may write the source only from the cutover to the rollback."""
    app = f"app_{dbpair.source['dbname']}"
    setup_schema(dbpair, DDL)
    dbpair.sql_source(sql.SQL("CREATE ROLE {r} LOGIN PASSWORD 'app-secret'; GRANT SELECT, INSERT, UPDATE, DELETE "
                              "ON t TO {r}; GRANT USAGE ON SEQUENCE t_id_seq TO {r}").format(
        r=sql.Identifier(app)).as_string(None))
    carry_access(dbpair, (app,))
    _, syncer = _setup(dbpair, tmp_path, create=False)
    snapshot_copy(dbpair)
    cfg = make_config(dbpair, tmp_path, source=syncer, exclude_tables=EXCLUDED, schemas=["public"])
    stop_daemons(cfg)
    conf = tmp_path / "ge.yml"
    conf.write_text(yaml.safe_dump({"name": cfg.name, "source": cfg.source, "target": cfg.target,
                                    "schemas": cfg.schemas, "exclude_tables": cfg.exclude_tables,
                                    "poll_interval": cfg.poll_interval, "state_dir": str(cfg.state_dir)}))
    app_source = {**dbpair.source, "user": app, "password": "app-secret"}
    app_target = {**dbpair.target, "user": app, "password": "app-secret"}
    _as(app_source, "INSERT INTO t (v) VALUES (1), (2)")
    may_write = sql.SQL("SELECT has_table_privilege({}, 't', 'INSERT')").format(sql.Literal(SYNC_USER))

    sw = cutover.switch(cfg, "cutover", target_admin=dbpair.target, source_admin=dbpair.source,
                        config_path=str(conf))
    assert sw.sync_started == "reverse"
    assert _as(dbpair.source, may_write) == [(True,)]
    _as(app_target, "UPDATE t SET v = 100 WHERE v = 1")
    assert _wait_for(lambda: _as(dbpair.source, "SELECT count(*) FROM t WHERE v = 100") == [(1,)])

    back = cutover.switch(cfg, "rollback", target_admin=dbpair.target, source_admin=dbpair.source,
                          config_path=str(conf))
    assert back.sync_started == "forward"
    assert _as(dbpair.source, may_write) == [(False,)]
    _refused(syncer, "SET session_replication_role = replica")
    assert _role(dbpair.source, SYNC_USER) == (False, False, False, False, True)
    _as(app_source, "INSERT INTO t (v) VALUES (3)")
    assert _wait_for(lambda: dbpair.sql_target("SELECT count(*) FROM t") == [(3,)])
