"""Cutover and rollback end to end on real clusters: writes running, the way back, refusals, int range."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from great_escape import capture, cutover, daemon, ranges, verify
from great_escape.errors import SyncError
from tests.conftest import DbPair
from tests.integration.syncutil import (
    carry_access,
    install_capture,
    make_config,
    setup_schema,
    snapshot_copy,
    table_rows,
)
from tests.integration.workload import SEED, SOURCE_DDL, TARGET_EXTRA, Writers, _one

MASTER = {"user": "ge_master"}


def _app_role(pair: DbPair) -> str:
    """An application login role on the source with the usual grants; the migration carries it over."""
    role = f"app_{pair.source['dbname']}"
    pair.sql_source(
        sql.SQL(
            "CREATE ROLE {r} LOGIN PASSWORD 'app-secret'; "
            'GRANT USAGE ON SCHEMA public, "Sales Dept" TO {r}; '
            'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public, "Sales Dept" TO {r}; '
            'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public, "Sales Dept" TO {r}'
        )
        .format(r=sql.Identifier(role))
        .as_string(None)
    )
    carry_access(pair, (role,))
    return role


class AppWriters(Writers):
    """The application: writes through its own role, survives refused writes and ended sessions, and
    can be pointed at the other side (what the operator does at cutover)."""

    def __init__(self, params: dict[str, Any], n: int = 2):
        super().__init__(params, n, seed=0)
        self.refused = 0
        self.expect_refusals = False  # set when the test stops writes on this side

    def _run(self, worker: int, seed: int) -> None:
        rnd = random.Random(seed)
        i = 0
        while not self.stop_event.is_set():
            try:
                with psycopg.connect(**self.params) as conn:
                    while not self.stop_event.is_set():
                        i += 1
                        try:
                            with conn.transaction(), conn.cursor() as cur:
                                _one(cur, rnd, worker, i)
                            self.commits += 1
                        except (
                            psycopg.errors.UniqueViolation,
                            psycopg.errors.DeadlockDetected,
                            psycopg.errors.ForeignKeyViolation,
                            psycopg.errors.SerializationFailure,
                        ):
                            pass
                        except psycopg.errors.InsufficientPrivilege as exc:
                            if not self.expect_refusals:
                                raise AssertionError(f"write refused before the stop: {exc}") from exc
                            self.refused += 1
                            time.sleep(0.05)
            except psycopg.OperationalError:  # session ended at cutover: reconnect
                self.refused += 1
                time.sleep(0.05)
            except (psycopg.Error, AssertionError) as exc:
                self.errors.append(str(exc))
                return


def _prepare(dbpair: DbPair, tmp_path: Any, **overrides: Any) -> tuple[Any, str, str]:
    setup_schema(dbpair, SOURCE_DDL, SOURCE_DDL + TARGET_EXTRA)
    dbpair.sql_source(SEED)
    role = _app_role(dbpair)
    cfg = make_config(dbpair, tmp_path, **overrides)
    install_capture(cfg)
    snapshot_copy(dbpair)
    conf = tmp_path / "ge.yml"
    conf.write_text(
        yaml.safe_dump(
            {
                "name": cfg.name,
                "source": cfg.source,
                "target": cfg.target,
                "batch_size": cfg.batch_size,
                "poll_interval": cfg.poll_interval,
                "state_dir": str(cfg.state_dir),
            }
        )
    )
    return cfg, role, str(conf)


def _replicated_rows(params: dict[str, Any]) -> dict[str, list[str]]:
    rows = table_rows(params)
    rows.pop("public.trigger_fired", None)  # the target's own table (TARGET_EXTRA), not replicated
    return rows


def _can_write(params: dict[str, Any], role: str, table: str = "public.customers") -> bool:
    with psycopg.connect(**params) as conn:
        return bool(conn.execute("SELECT has_table_privilege(%s, %s, 'INSERT')", (role, table)).fetchone()[0])


@pytest.fixture
def stop_daemons():
    configs: list[Any] = []
    yield configs.append
    for cfg in configs:
        for direction in ("forward", "reverse"):
            daemon.stop_detached(cfg, direction)


def test_cutover_rollback_and_cutover_again_with_writes_running(dbpair, tmp_path, stop_daemons):
    cfg, role, conf = _prepare(dbpair, tmp_path)
    stop_daemons(cfg)
    admin = {**dbpair.target}
    app_source = {**dbpair.source, "user": role, "password": "app-secret"}
    app_target = {**dbpair.target, "user": role, "password": "app-secret"}
    daemon.start_detached(conf, cfg, "forward")

    with AppWriters(app_source) as app:
        time.sleep(2.5)
        assert app.commits > 20 and not app.errors
        app.expect_refusals = True
        sw = cutover.switch(cfg, "cutover", target_admin=admin, config_path=conf)
        refused_at_cutover = app.refused
        commits_at_cutover = app.commits
        time.sleep(0.5)
        assert app.commits == commits_at_cutover  # nothing committed on the source after the stop
    assert refused_at_cutover > 0
    print(f"\ncutover write downtime: {sw.downtime_seconds:.3f}s, steps {sw.steps}")
    assert sw.downtime_seconds is not None and sw.downtime_seconds <= 5
    assert sw.sync_started == "reverse"
    assert "public.customers.id is bigint on the target but integer on the source" in " ".join(sw.warnings)
    assert sw.tables_verified >= 7 and sw.revoked
    assert not _can_write(dbpair.source, role) and _can_write(dbpair.target, role)
    assert _replicated_rows(dbpair.source) == _replicated_rows(dbpair.target)
    assert sorted(capture.registered(psycopg.connect(**dbpair.target)).values()) == sorted(
        capture.registered(psycopg.connect(**dbpair.source)).values()
    )

    # The application now writes on the target, new keys from the copied sequences included.
    before_max = dbpair.sql_source("SELECT max(id) FROM counters")[0][0]
    with AppWriters(app_target) as app:
        time.sleep(2.5)
        assert app.commits > 20
        with psycopg.connect(**app_target, autocommit=True) as conn:
            new_id = conn.execute("INSERT INTO counters (n) VALUES (-1) RETURNING id").fetchone()[0]
        assert new_id > before_max and not app.errors
        app.expect_refusals = True
        back = cutover.switch(cfg, "rollback", target_admin=admin, config_path=conf,
                              options=cutover.Options(verify="full"))
    print(f"rollback write downtime: {back.downtime_seconds:.3f}s, steps {back.steps}")
    assert back.downtime_seconds is not None and back.downtime_seconds <= 5
    assert back.drained_changes > 0 and back.sync_started == "forward" and "verify" in back.steps
    assert _replicated_rows(dbpair.source) == _replicated_rows(dbpair.target)  # exactly the target's data
    assert dbpair.sql_source("SELECT n FROM counters WHERE id = %s", (new_id,)) == [(-1,)]
    assert _can_write(dbpair.source, role) and not _can_write(dbpair.target, role)
    # The source's sequence was moved past the keys the target handed out.
    with psycopg.connect(**app_source, autocommit=True) as conn:
        assert conn.execute("INSERT INTO counters (n) VALUES (-2) RETURNING id").fetchone()[0] > new_id

    # And cut over again: the forward sync carries the source's writes since the rollback.
    with AppWriters(app_source) as app:
        time.sleep(1.5)
        app.expect_refusals = True
        again = cutover.switch(cfg, "cutover", target_admin=admin, config_path=conf)
    assert again.downtime_seconds is not None and again.downtime_seconds <= 5
    assert _replicated_rows(dbpair.source) == _replicated_rows(dbpair.target)
    assert _can_write(dbpair.target, role) and not _can_write(dbpair.source, role)
    history = json.loads((tmp_path / cutover.STATUS_FILE).read_text())
    assert [s["action"] for s in history["switches"]] == ["cutover", "rollback", "cutover"]
    assert history["live"] == "target"
    assert all(s["downtime_seconds"] <= 5 for s in history["switches"])


def _run_repl(pair: DbPair, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(**pair.repl) as conn:
        return conn.execute(query).fetchall()


def _privileges(pair: DbPair) -> tuple[Any, ...]:
    q = (
        "SELECT c.relname, c.relacl::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname IN ('public', 'Sales Dept') AND c.relkind IN ('r', 'p') ORDER BY 1"
    )
    return tuple(pair.sql_source(q)), tuple(pair.sql_target(q))


def test_cutover_twice_and_rollback_without_cutover_are_refused_changing_nothing(
    dbpair, tmp_path, stop_daemons
):
    cfg, role, conf = _prepare(dbpair, tmp_path)
    stop_daemons(cfg)
    admin = {**dbpair.target}
    before = _privileges(dbpair)
    with pytest.raises(
        cutover.CutoverError, match="rollback of .* refused, nothing changed: no cutover is recorded"
    ):
        cutover.switch(cfg, "rollback", target_admin=admin, config_path=conf)
    assert _privileges(dbpair) == before
    assert capture.registered(psycopg.connect(**dbpair.target)) == {}
    assert dbpair.sql_target("SELECT to_regclass('great_escape.cutover_state')") == [(None,)]
    assert not (tmp_path / cutover.STATUS_FILE).exists()

    cutover.switch(cfg, "cutover", target_admin=admin, config_path=conf)
    after_cutover = _privileges(dbpair)
    state_row = _run_repl(
        dbpair, "SELECT live, changed_at, write_stops::text FROM great_escape.cutover_state"
    )
    with pytest.raises(cutover.CutoverError, match="already cut over .*run rollback.yml"):
        cutover.switch(cfg, "cutover", target_admin=admin, config_path=conf)
    assert _privileges(dbpair) == after_cutover
    assert (
        _run_repl(dbpair, "SELECT live, changed_at, write_stops::text FROM great_escape.cutover_state")
        == state_row
    )
    assert len(json.loads((tmp_path / cutover.STATUS_FILE).read_text())["switches"]) == 1
    assert daemon.running_pid(tmp_path / "sync-reverse.pid")
    # With the target live, the forward sync refuses to run: the source's old state must not flow in.
    assert daemon.start_detached(str(conf), cfg, "forward").startswith("not started: the forward sync")
    with pytest.raises(SyncError, match="forward sync .* does not run: the target is live"):
        daemon.SyncProcess(cfg, direction="forward").run(drain=True)


def test_cutover_refuses_when_the_application_lacks_a_privilege_on_the_target(dbpair, tmp_path, stop_daemons):
    cfg, role, conf = _prepare(dbpair, tmp_path)
    stop_daemons(cfg)
    dbpair.sql_target(sql.SQL("REVOKE UPDATE ON public.notes FROM {r}; ALTER ROLE {r} NOLOGIN").format(
        r=sql.Identifier(role)).as_string(None))
    before = _privileges(dbpair)
    with pytest.raises(cutover.CutoverError) as refused:
        cutover.switch(cfg, "cutover", target_admin={**dbpair.target}, config_path=conf)
    message = str(refused.value)
    assert "cutover of" in message and "refused, nothing changed: the application could not work on the target" \
        in message
    assert f'role {role} may UPDATE on table "public"."notes" on the live side but not here' in message
    assert f"role {role} can log in on the live side but not here (NOLOGIN)" in message
    assert "06_restore.yml" in message
    assert _privileges(dbpair) == before and _can_write(dbpair.source, role)
    assert capture.registered(psycopg.connect(**dbpair.target)) == {}
    assert not (tmp_path / cutover.STATUS_FILE).exists()
    # wait mode (the operator stopped the application) checks the same before anything happens.
    with pytest.raises(cutover.CutoverError, match="could not work on the target"):
        cutover.switch(cfg, "cutover", target_admin={**dbpair.target}, config_path=conf,
                       options=cutover.Options(stop_writes="wait", application_roles=[role]))
    assert _privileges(dbpair) == before

    carry_access(dbpair, (role,))  # what re-running the restore phase does
    dbpair.sql_target(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)).as_string(None))
    sw = cutover.switch(cfg, "cutover", target_admin={**dbpair.target}, config_path=conf)
    assert sw.to_side == "target" and _can_write(dbpair.target, role, "public.notes")


def test_bigint_value_on_the_target_stops_the_way_back_naming_table_column_and_key(
    dbpair, tmp_path, stop_daemons
):
    cfg, role, conf = _prepare(dbpair, tmp_path)
    stop_daemons(cfg)
    admin = {**dbpair.target}
    sw = cutover.switch(cfg, "cutover", target_admin=admin, options=cutover.Options(start_sync=False))
    assert any("customers.id is bigint" in w for w in sw.warnings)
    app_target = {**dbpair.target, "user": role, "password": "app-secret"}
    with psycopg.connect(**app_target, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO customers (id, name, email) VALUES (3000000000, 'big', 'big@x'), (77777, 'ok', 'o@x')"
        )
    source_before = table_rows(dbpair.source)

    with pytest.raises(
        SyncError, match=r"table public\.customers: .*out of range for type integer.*column id"
    ) as err:
        daemon.SyncProcess(cfg.reversed(), direction="reverse").run(drain=True)
    assert "nothing of this batch was applied" in str(err.value)
    assert table_rows(dbpair.source) == source_before  # nothing half-applied: 77777 did not go alone
    assert dbpair.sql_source("SELECT count(*) FROM customers WHERE id = 77777") == [(0,)]

    problems = ranges.check_range(cfg, "reverse")
    assert problems == [
        "public.customers.id = 3000000000 at key (id)=(3000000000) does not fit integer on the source"
    ]
    privileges = _privileges(dbpair)
    with pytest.raises(
        cutover.CutoverError,
        match=r"rollback .* refused, nothing changed: .*public\.customers\.id = "
        r"3000000000 at key \(id\)=\(3000000000\)",
    ):
        cutover.switch(cfg, "rollback", target_admin=admin)
    assert _privileges(dbpair) == privileges

    assert not _can_write(dbpair.source, role) and _can_write(dbpair.target, role)  # still cut over


def test_a_bigint_key_gone_from_the_target_does_not_stop_the_way_back(dbpair, tmp_path, stop_daemons):
    cfg, role, conf = _prepare(dbpair, tmp_path)
    stop_daemons(cfg)
    cutover.switch(cfg, "cutover", target_admin={**dbpair.target}, options=cutover.Options(start_sync=False))
    with psycopg.connect(**dbpair.target, autocommit=True) as conn:
        conn.execute("INSERT INTO customers (id, name, email) VALUES (3000000000, 'big', 'big@x'), "
                     "(77777, 'ok', 'o@x')")
        conn.execute("DELETE FROM customers WHERE id = 3000000000")
    # Its delta cannot exist on the integer source; it is left out of the batch's keys, the rest applies.
    daemon.SyncProcess(cfg.reversed(), direction="reverse").run(drain=True)
    assert dbpair.sql_source("SELECT name FROM customers WHERE id = 77777") == [("ok",)]
    assert _replicated_rows(dbpair.source) == _replicated_rows(dbpair.target)


def test_wait_mode_refuses_while_writes_arrive_and_then_switches(dbpair, tmp_path, stop_daemons):
    cfg, role, conf = _prepare(dbpair, tmp_path)
    stop_daemons(cfg)
    app_source = {**dbpair.source, "user": role, "password": "app-secret"}
    opts = cutover.Options(stop_writes="wait", quiet_seconds=0.5, quiet_timeout=1.5, start_sync=False)
    with AppWriters(app_source, n=1):
        time.sleep(0.5)
        with pytest.raises(cutover.CutoverError, match="writes still arrive on .*stop the application first"):
            cutover.switch(cfg, "cutover", target_admin={**dbpair.target}, options=opts)
    assert _can_write(dbpair.source, role)  # wait mode never touches privileges
    sw = cutover.switch(cfg, "cutover", target_admin={**dbpair.target}, options=opts)
    assert sw.revoked == [] and sw.downtime_seconds is not None
    assert _replicated_rows(dbpair.source) == _replicated_rows(dbpair.target)


def test_revoke_refuses_when_only_project_users_write(dbpair, tmp_path, stop_daemons):
    setup_schema(dbpair, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = make_config(dbpair, tmp_path)
    stop_daemons(cfg)
    install_capture(cfg)
    with pytest.raises(
        cutover.CutoverError, match="no application role holds write privileges .*stop_writes=wait"
    ):
        cutover.switch(cfg, "cutover", target_admin={**dbpair.target})
    assert capture.registered(psycopg.connect(**dbpair.target)) == {}


def test_the_drained_check_names_changes_that_arrived_after_the_drain(dbpair, tmp_path):
    setup_schema(dbpair, "CREATE TABLE items (id int PRIMARY KEY, n int); CREATE TABLE other (id int PRIMARY KEY)")
    cfg = make_config(dbpair, tmp_path)
    install_capture(cfg)
    with psycopg.connect(**dbpair.source, autocommit=True) as conn:
        assert cutover.assert_drained(conn, "cutover") == 2
        conn.execute("INSERT INTO items VALUES (1, 1), (2, 2)")
        with pytest.raises(cutover.CutoverError, match=r"changes arrived on .* after writes were stopped and "
                           r"drained: public\.items \(2 change\(s\), 0 truncate\(s\)\)\. Something still writes"):
            cutover.assert_drained(conn, "cutover")


def test_in_flight_wait_covers_this_database_only(dbpair):
    other_db = {**dbpair.source, "dbname": "postgres"}
    with psycopg.connect(**dbpair.source, autocommit=True) as conn, psycopg.connect(**other_db) as elsewhere:
        elsewhere.execute("SELECT pg_current_xact_id()")  # a write transaction left open in another database
        started = time.monotonic()
        cutover.wait_in_flight(conn, timeout=3)
        assert time.monotonic() - started < 1
        with psycopg.connect(**dbpair.source) as here:
            here.execute("SELECT pg_current_xact_id()")  # one in this database could still commit a write
            with pytest.raises(cutover.CutoverError, match=r"1 transaction\(s\) on .* still run 1s after writes"):
                cutover.wait_in_flight(conn, timeout=1)


def test_keyless_table_is_copied_whole_at_cutover(dbpair, tmp_path, stop_daemons):
    setup_schema(dbpair, "CREATE TABLE orders (id int PRIMARY KEY, note text); "
                         "CREATE TABLE audit_log (at int, what text)")
    dbpair.sql_source("INSERT INTO orders SELECT g, 'o' FROM generate_series(1, 50) g; "
                      "INSERT INTO audit_log SELECT g, 'before' FROM generate_series(1, 30) g")
    role = f"app_{dbpair.source['dbname']}"  # the application, whose writes the cutover stops
    dbpair.sql_source(f"CREATE ROLE {role} LOGIN; GRANT INSERT, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
    carry_access(dbpair, (role,))
    cfg = make_config(dbpair, tmp_path, keyless_tables="copy_at_cutover")
    stop_daemons(cfg)
    install_capture(cfg)
    snapshot_copy(dbpair)
    # After the snapshot: the keyless table changes with nothing capturing it (duplicates included).
    dbpair.sql_source("DELETE FROM audit_log WHERE at <= 10; "
                      "INSERT INTO audit_log VALUES (99, 'after'), (99, 'after'); "
                      "UPDATE orders SET note = 'changed' WHERE id = 1")
    sw = cutover.switch(cfg, "cutover", target_admin={**dbpair.target}, options=cutover.Options(start_sync=False))
    assert sw.keyless_copied == {"public.audit_log": 22}
    assert table_rows(dbpair.target) == table_rows(dbpair.source)


def test_a_disabled_capture_trigger_stops_verify_and_the_cutover(dbpair, tmp_path, stop_daemons):
    cfg, _, conf = _prepare(dbpair, tmp_path)
    stop_daemons(cfg)
    dbpair.sql_source("ALTER TABLE customers DISABLE TRIGGER ge_capture_row")  # the table owner can
    report = verify.verify(dbpair.source, dbpair.target, options=verify.VerifyOptions(recheck=0))
    assert not report.ok and any(p.startswith("source: ") and "public.customers" in p
                                 for p in report.capture_problems)
    before = _privileges(dbpair)
    with pytest.raises(cutover.CutoverError, match="refused, nothing changed: capture on the source is not whole"):
        cutover.switch(cfg, "cutover", target_admin={**dbpair.target}, config_path=conf)
    assert _privileges(dbpair) == before and not (tmp_path / cutover.STATUS_FILE).exists()
