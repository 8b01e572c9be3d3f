"""Capture that only the application's own writes can feed (issue 13, item 2).

`mallory` is a login with nothing but CONNECT (and what PUBLIC gets by default). Each test is one attack from
the issue; each failed on the capture before the lockdown (PUBLIC could write every ge_capture table).
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest
from psycopg import sql

from great_escape import apply, capture, cutover, daemon, status
from tests.integration.syncutil import assert_identical, make_config, setup_schema, snapshot_copy

MALLORY = "mallory"
MALLORY_PASSWORD = "mallory-secret"
SYNC_USER = "ge_sync_lockdown"
SYNC_PASSWORD = "ge-sync-secret"
UNKNOWN_RELID = 4242424
DDL = "CREATE TABLE t (id int PRIMARY KEY, v int)"


def _ensure_login(params: dict[str, Any], role: str, password: str) -> dict[str, Any]:
    """A login role on the source's cluster (roles are cluster-wide: made once), connecting to its database."""
    with psycopg.connect(**params, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role),
                                                                            sql.Literal(password)))
    return {**params, "user": role, "password": password}


@pytest.fixture
def mallory(dbpair) -> dict[str, Any]:
    return _ensure_login(dbpair.source, MALLORY, MALLORY_PASSWORD)


def _as(params: dict[str, Any], *statements: sql.Composable | str, args: Any = None) -> list[tuple[Any, ...]]:
    """Run the statements in one session as the given login; the last one's rows."""
    rows: list[tuple[Any, ...]] = []
    with psycopg.connect(**params, autocommit=True) as conn:
        for statement in statements:
            cur = conn.execute(statement, args)
            rows = cur.fetchall() if cur.description else []
    return rows


def _capture(dbpair, tmp_path, ddl: str = DDL, **kwargs: Any):
    setup_schema(dbpair, ddl)
    cfg = make_config(dbpair, tmp_path)
    capture.run(cfg, state="present", freeze=kwargs.pop("freeze", False), **kwargs)
    with psycopg.connect(**dbpair.source) as conn:
        relids = {name: relid for relid, name in capture.registered(conn).items()}
    return cfg, relids


def _delta(relid: int) -> sql.Identifier:
    return sql.Identifier(capture.SCHEMA, capture.delta_name(relid))


def _pending(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    with psycopg.connect(**params) as conn:
        return status.pending(conn)


def test_forged_delta_rows_are_refused_and_the_application_is_still_captured(dbpair, tmp_path, mallory):
    """200,000 keys dated 1970 made status report a lag of 1.8e9 s and grew the disk without bound."""
    _, relids = _capture(dbpair, tmp_path)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _as(mallory, sql.SQL("INSERT INTO {} SELECT g, '1970-01-01' FROM generate_series(1, 200000) g").format(
            _delta(relids["public.t"])))
    assert _pending(dbpair.source)["public.t"] == {"pending": 0, "oldest": None, "truncates": 0}
    # An application role that may write the table (not its owner, not a superuser) is captured as before.
    dbpair.sql_source(sql.SQL("GRANT SELECT, INSERT, UPDATE ON t TO {}").format(sql.Identifier(MALLORY))
                      .as_string(None))
    _as(mallory, "INSERT INTO t VALUES (1, 1)", "UPDATE t SET id = 2 WHERE id = 1")
    keys = dbpair.sql_source(sql.SQL("SELECT k1 FROM {} ORDER BY 1").format(_delta(relids["public.t"]))
                             .as_string(None))
    assert keys == [(1,), (1,), (2,)]  # the insert; the update's new and old key


def test_forged_truncate_event_is_refused(dbpair, tmp_path, mallory):
    """A row in truncates forced a whole-table copy at will."""
    _, relids = _capture(dbpair, tmp_path)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _as(mallory, "INSERT INTO ge_capture.truncates (relid) VALUES (%s)", args=(relids["public.t"],))
    assert _pending(dbpair.source)["public.t"]["truncates"] == 0


def test_capture_functions_cannot_be_attached_to_another_table(dbpair, tmp_path, mallory):
    """With EXECUTE on the capture functions, a table of one's own fires them: forged deltas and events."""
    _, relids = _capture(dbpair, tmp_path)
    relid = relids["public.t"]
    forge_rows = (
        "CREATE TEMP TABLE forge (id int)",
        sql.SQL("CREATE TRIGGER forge AFTER INSERT ON pg_temp.forge FOR EACH ROW EXECUTE FUNCTION {}()").format(
            sql.Identifier(capture.SCHEMA, capture.function_name(relid))),
        "INSERT INTO pg_temp.forge SELECT generate_series(1, 1000)",
    )
    forge_truncate = (
        "CREATE TEMP TABLE forge (id int)",
        sql.SQL("CREATE TRIGGER forge AFTER TRUNCATE ON pg_temp.forge FOR EACH STATEMENT EXECUTE FUNCTION "
                "{}({})").format(sql.Identifier(capture.SCHEMA, "on_truncate"), sql.Literal(str(relid))),
        "TRUNCATE pg_temp.forge",
    )
    for attack in (forge_rows, forge_truncate):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            _as(mallory, *attack)
    assert _pending(dbpair.source)["public.t"] == {"pending": 0, "oldest": None, "truncates": 0}


def test_operators_of_another_schema_never_run_inside_the_capture_functions(dbpair, tmp_path, mallory):
    """The capture functions pin no search_path (its cost per write): a writer's own `=` found first on the
    path would run as the role that may write the deltas. Every operator in them is qualified."""
    _, relids = _capture(dbpair, tmp_path)
    delta = _delta(relids["public.t"])
    ident = sql.Identifier(MALLORY)
    dbpair.sql_source(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON t TO {}; GRANT CREATE ON SCHEMA public TO {}")
                      .format(ident, ident).as_string(None))

    def evil(name: str, args: str, result: str) -> sql.Composable:
        """A function that forges a delta row (when its caller may) and answers like the real operator."""
        body = sql.SQL("BEGIN BEGIN INSERT INTO {} VALUES (999999); EXCEPTION WHEN OTHERS THEN NULL; END; "
                       "RETURN {}; END").format(delta, sql.SQL(result)).as_string(None)
        return sql.SQL("CREATE FUNCTION {}({}) RETURNS boolean LANGUAGE plpgsql AS {}").format(
            sql.Identifier("public", name), sql.SQL(args), sql.Literal(body))

    _as(mallory,
        evil("evil_eq", "text, text", "$1 OPERATOR(pg_catalog.=) $2"),
        "CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.evil_eq)",
        evil("evil_ne", "record, record", "true"),
        "CREATE OPERATOR public.*<> (LEFTARG = record, RIGHTARG = record, FUNCTION = public.evil_ne)",
        "SET search_path = public, pg_catalog",
        "INSERT INTO t VALUES (1, 1)", "UPDATE t SET v = 2", "DELETE FROM t")
    # The insert's key, the update's (unchanged: one row) and the delete's; nothing forged.
    assert dbpair.sql_source(sql.SQL("SELECT count(*), count(*) FILTER (WHERE d::text LIKE '(999999,%') FROM {} d")
                             .format(delta).as_string(None)) == [(3, 0)]


def test_truncate_event_for_an_unknown_table_is_dropped_with_a_warning(dbpair, tmp_path, caplog):
    """An event no table claims was never removed: the idle sync looped ~110 times a second. Nobody but the
    triggers can write one now (above); one left from before the lockdown, or by a superuser, is dropped and
    the sync can wait again."""
    cfg, _ = _capture(dbpair, tmp_path)
    dbpair.sql_source("INSERT INTO ge_capture.truncates (relid) VALUES (%s)", (UNKNOWN_RELID,))
    with psycopg.connect(**cfg.source) as src, psycopg.connect(**cfg.target, autocommit=True) as tgt:
        pairs = apply.load_pairs(src, tgt)
        src.commit()
        applier = apply.Applier(src, tgt, pairs, name=cfg.name, direction="forward", batch_size=100)
        with caplog.at_level(logging.WARNING, logger="great_escape.apply"):
            assert applier.has_work() is False
    assert str(UNKNOWN_RELID) in caplog.text and "not captured" in caplog.text
    assert dbpair.sql_source("SELECT count(*) FROM ge_capture.truncates") == [(0,)]


def test_only_a_sync_user_can_make_writers_notify(dbpair, tmp_path, mallory):
    """A row in `waiting` made every application commit send NOTIFY (halving write throughput)."""
    cfg, relids = _capture(dbpair, tmp_path)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _as(mallory, "INSERT INTO ge_capture.waiting (sync) VALUES ('forged')")
    with psycopg.connect(**dbpair.source, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(capture.KICK_CHANNEL)))
        dbpair.sql_source("INSERT INTO t VALUES (1, 1)")
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
    # A sync user given the sync's rights (and nothing else on ge_capture) may, and can drain as well.
    syncer = _ensure_login(dbpair.source, SYNC_USER, SYNC_PASSWORD)
    with psycopg.connect(**dbpair.source, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(SYNC_USER)))
        with conn.transaction():
            capture.grant_sync(conn, SYNC_USER)
    with psycopg.connect(**syncer, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(capture.KICK_CHANNEL)))
        capture.set_waiting(listener, "lockdown forward", True)
        dbpair.sql_source("INSERT INTO t VALUES (2, 2)")
        assert len(list(listener.notifies(timeout=5, stop_after=1))) == 1
        capture.set_waiting(listener, "lockdown forward", False)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            listener.execute(sql.SQL("INSERT INTO {} VALUES (3)").format(_delta(relids["public.t"])))
    # A table captured after the grant is readable by the sync user too.
    dbpair.sql_source("CREATE TABLE later (id int PRIMARY KEY)")
    dbpair.sql_target("CREATE TABLE later (id int PRIMARY KEY)")
    dbpair.grant_repl()
    capture.run(cfg, state="present", freeze=False)
    dbpair.sql_source(sql.SQL("GRANT SELECT ON later TO {}").format(sql.Identifier(SYNC_USER)).as_string(None))
    dbpair.sql_source("INSERT INTO later VALUES (1)")
    daemon.SyncProcess(make_config(dbpair, tmp_path, source=syncer), direction="forward").run(drain=True)
    assert_identical(dbpair)
    assert sum(p["pending"] for p in _pending(dbpair.source).values()) == 0


def test_a_forged_change_after_the_write_stop_cannot_block_the_cutover(dbpair, tmp_path, mallory):
    """With writes stopped and the sync drained, one forged delta made the drain check fail."""
    cfg, relids = _capture(dbpair, tmp_path)
    snapshot_copy(dbpair)
    dbpair.sql_source("INSERT INTO t SELECT g, g FROM generate_series(1, 100) g")
    daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _as(mallory, sql.SQL("INSERT INTO {} VALUES (1)").format(_delta(relids["public.t"])))
    with psycopg.connect(**dbpair.source) as conn:
        assert cutover.assert_drained(conn, "cutover") == 1
    assert_identical(dbpair)


def test_only_named_roles_can_lift_the_schema_freeze(dbpair, tmp_path, mallory):
    """The table owner lifted the freeze, disabled the capture trigger, and an update went uncaptured."""
    setup_schema(dbpair, DDL)
    dbpair.sql_source(sql.SQL("ALTER TABLE t OWNER TO {}").format(sql.Identifier(MALLORY)).as_string(None))
    cfg = make_config(dbpair, tmp_path)
    capture.run(cfg, state="present", freeze=True)  # ge_ddl_roles by default: the source user (postgres)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="schema freeze"):
        _as(mallory, "SET great_escape.allow_ddl = on", "ALTER TABLE t DISABLE TRIGGER ge_capture_row")
    _as(mallory, "UPDATE t SET v = 1", "INSERT INTO t VALUES (1, 1)")
    assert _pending(dbpair.source)["public.t"]["pending"] == 1
    with psycopg.connect(**dbpair.source) as conn:
        assert capture.check_intact(conn) == []
    # The named role gets through.
    dbpair.sql_source("BEGIN; SET LOCAL great_escape.allow_ddl = on; CREATE TABLE scratch (id int); "
                      "DROP TABLE scratch; COMMIT")
    # Naming mallory too installs the freeze again; now she may.
    p = capture.run(cfg, state="present", freeze=True, ddl_roles=["postgres", MALLORY])
    assert p.describe() == ["install schema freeze"]
    _as(mallory, "SET great_escape.allow_ddl = on", "ALTER TABLE t ADD COLUMN note text")
    assert not capture.run(cfg, state="present", freeze=True, ddl_roles=[MALLORY, "postgres"]).changed


def test_check_intact_names_missing_and_disabled_triggers_and_capture_repairs_them(dbpair, tmp_path):
    _capture(dbpair, tmp_path, DDL + "; CREATE TABLE p (id int PRIMARY KEY) PARTITION BY RANGE (id);"
                                     "CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10);"
                                     "CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (10) TO (20)")
    with psycopg.connect(**dbpair.source) as conn:
        assert capture.check_intact(conn) == []
    dbpair.sql_source("ALTER TABLE t DISABLE TRIGGER ge_capture_row")
    dbpair.sql_source("ALTER TABLE p1 DISABLE TRIGGER ge_capture_row")  # the clone on one partition
    dbpair.sql_source("DROP TRIGGER ge_capture_truncate ON p2")
    with psycopg.connect(**dbpair.source) as conn:
        problems = capture.check_intact(conn)
    assert len(problems) == 3, problems
    assert problems[0].startswith("public.p: capture trigger ge_capture_row is disabled on its partition "
                                  "public.p1 (tgenabled D)")
    assert "ALTER TABLE \"public\".\"p1\" ENABLE TRIGGER ge_capture_row" in problems[0]
    assert problems[1].startswith("public.p: capture trigger ge_capture_truncate is missing on its partition "
                                  "public.p2")
    assert "run the capture phase again" in problems[1]
    assert problems[2].startswith("public.t: capture trigger ge_capture_row is disabled (tgenabled D)")
    dbpair.sql_source("INSERT INTO t VALUES (1, 1)")
    assert _pending(dbpair.source)["public.t"]["pending"] == 0  # indeed not captured
    p = capture.run(make_config(dbpair, tmp_path), state="present", freeze=False)
    assert p.describe() == ["repair capture on public.p", "repair capture on public.t"]
    with psycopg.connect(**dbpair.source) as conn:
        assert capture.check_intact(conn) == []
    dbpair.sql_source("INSERT INTO t VALUES (2, 2); INSERT INTO p VALUES (5)")
    assert _pending(dbpair.source)["public.t"]["pending"] == 1
    assert _pending(dbpair.source)["public.p"]["pending"] == 1
