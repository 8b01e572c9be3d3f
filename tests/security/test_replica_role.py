"""The replica-role switch calls exactly the configured, hardened function, and only where SET is not allowed
(DESIGN.md invariants 6 and 12): a function planted by an unprivileged login is never called, on either side."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from great_escape import cutover, daemon, db
from great_escape.errors import SyncError
from great_escape.localcluster import MASTER_USER, LocalCluster
from tests.conftest import REPL_USER, DbPair
from tests.integration.syncutil import install_capture, make_config, setup_schema, snapshot_copy, table_rows

FUNCTION = "public.rds_session_replication_role(text)"
FN_CONFIG = {"schema": "public", "owner": MASTER_USER}


def _superuser(cluster: LocalCluster, dbname: str) -> dict[str, Any]:
    """The cluster's bootstrap superuser over its Unix socket (the aurora master is not one)."""
    return {"host": str(cluster.datadir), "port": cluster.port, "user": "postgres", "dbname": dbname}


def _run(params: dict[str, Any], *statements: sql.Composable | str) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    with psycopg.connect(**params, autocommit=True) as conn:
        for stmt in statements:
            cur = conn.execute(stmt)
            rows = cur.fetchall() if cur.description else []
    return rows


def _is_superuser(params: dict[str, Any], role: str) -> bool:
    return bool(_run(params, sql.SQL("SELECT rolsuper FROM pg_roles WHERE rolname = {}").format(
        sql.Literal(role)))[0][0])


@pytest.fixture
def mallory(dbpair: DbPair, source_cluster: LocalCluster, aurora_cluster: LocalCluster) -> Iterator[str]:
    """An unprivileged login on both clusters that may create a schema of its own in the test database."""
    role = f"mallory_{dbpair.source['dbname']}"
    for cluster, params in ((source_cluster, dbpair.source), (aurora_cluster, dbpair.target)):
        su = _superuser(cluster, str(params["dbname"]))
        _run(su, sql.SQL("CREATE ROLE {r} LOGIN PASSWORD 'mallory-pw'; GRANT CREATE ON DATABASE {d} TO {r}; "
                         "GRANT CREATE ON SCHEMA public TO {r}").format(
            r=sql.Identifier(role), d=sql.Identifier(str(params["dbname"]))))
    yield role
    for cluster, params in ((source_cluster, dbpair.source), (aurora_cluster, dbpair.target)):
        _run(_superuser(cluster, str(params["dbname"])), sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        _run(_superuser(cluster, "postgres"), sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _plant(params: dict[str, Any], mallory: str, schema: str) -> None:
    """As mallory: schema.rds_session_replication_role(text) that turns its caller's power into mallory's."""
    _run({**params, "user": mallory, "password": "mallory-pw"},
         sql.SQL("CREATE SCHEMA IF NOT EXISTS {s}").format(s=sql.Identifier(schema)),
         sql.SQL(
             "CREATE FUNCTION {s}.rds_session_replication_role(role text) RETURNS text LANGUAGE plpgsql AS $f$ "
             "BEGIN EXECUTE pg_catalog.format('ALTER ROLE %I SUPERUSER', {m}::text); "
             "PERFORM pg_catalog.set_config('session_replication_role', role, false); "
             "RETURN pg_catalog.current_setting('session_replication_role'); END $f$"
         ).format(s=sql.Identifier(schema), m=sql.Literal(mallory)),
         sql.SQL("GRANT EXECUTE ON FUNCTION {s}.rds_session_replication_role(text) TO PUBLIC").format(
             s=sql.Identifier(schema)))


def _write_config(cfg: Any, path: Any) -> str:
    path.write_text(yaml.safe_dump({
        "name": cfg.name, "source": cfg.source, "target": cfg.target, "state_dir": str(cfg.state_dir),
        "poll_interval": cfg.poll_interval, "replica_role_function": FN_CONFIG}))
    return str(path)


def test_mallorys_function_on_the_source_is_never_called_by_the_reverse_sync_or_rollback(
        dbpair, mallory, tmp_path):
    """The attack of issue 13: the reverse sync and the rollback run on the source as its superuser. A
    function named rds_session_replication_role in mallory's schema must not be called."""
    setup_schema(dbpair, "CREATE TABLE accounts (id int PRIMARY KEY, balance int)")
    dbpair.sql_source("INSERT INTO accounts SELECT g, g FROM generate_series(1, 20) g")
    role = f"app_{dbpair.source['dbname']}"
    for run in (dbpair.sql_source, dbpair.sql_target):
        run(sql.SQL("CREATE ROLE {r} LOGIN; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public "
                    "TO {r}").format(r=sql.Identifier(role)).as_string(None))
    cfg = make_config(dbpair, tmp_path, replica_role_function=FN_CONFIG)
    install_capture(cfg)
    snapshot_copy(dbpair)
    conf = _write_config(cfg, tmp_path / "ge.yml")
    _plant(dbpair.source, mallory, mallory)
    _plant(dbpair.source, mallory, "public")  # an old database whose public schema anyone may create in
    try:
        cutover.switch(cfg, "cutover", target_admin=dbpair.target,
                       options=cutover.Options(start_sync=False), config_path=conf)
        dbpair.sql_target("UPDATE accounts SET balance = -1 WHERE id = 1")
        # The reverse sync as the daemon runs it: the source is its target, switched by SET only.
        applied = daemon.SyncProcess(cfg.reversed(), direction="reverse").run(drain=True)
        assert applied == 1
        assert not _is_superuser(dbpair.source, mallory)
        dbpair.sql_target("UPDATE accounts SET balance = -2 WHERE id = 2")
        cutover.switch(cfg, "rollback", target_admin=dbpair.target,
                       options=cutover.Options(start_sync=False), config_path=conf)
    finally:
        for direction in ("forward", "reverse"):
            daemon.stop_detached(cfg, direction)
    assert not _is_superuser(dbpair.source, mallory), "the engine called mallory's function as the superuser"
    assert table_rows(dbpair.source)["public.accounts"] == table_rows(dbpair.target)["public.accounts"]
    assert dbpair.sql_source("SELECT balance FROM accounts WHERE id IN (1, 2) ORDER BY id") == [(-1,), (-2,)]


def test_the_source_side_never_calls_a_function_even_a_well_made_one(dbpair, source_cluster, tmp_path):
    """A non-superuser on the source that may not SET the setting gets a clear refusal, not a function call."""
    user = f"srcsync_{dbpair.source['dbname']}"
    su = _superuser(source_cluster, str(dbpair.source["dbname"]))
    _run(su, sql.SQL("CREATE ROLE {u} LOGIN PASSWORD 'srcsync-pw'").format(u=sql.Identifier(user)),
         "CREATE TABLE public.fn_calls (who text)", "GRANT INSERT ON public.fn_calls TO PUBLIC",
         sql.SQL(_HARDENED).format(s=sql.Identifier("public"), secdef=sql.SQL("SECURITY DEFINER"),
                                   path=sql.SQL("SET search_path = pg_catalog, pg_temp")),
         f"REVOKE ALL ON FUNCTION {FUNCTION} FROM PUBLIC",
         sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(FUNCTION), sql.Identifier(user)))
    params = {**dbpair.source, "user": user, "password": "srcsync-pw"}
    try:
        with db.connect(params, "test") as conn, pytest.raises(SyncError) as err:
            db.set_replica_role(conn, make_config(dbpair, tmp_path).reversed().target_replica_role_function)
        assert f"GRANT SET ON PARAMETER session_replication_role TO {user}" in str(err.value)
        assert dbpair.sql_source("SELECT count(*) FROM fn_calls") == [(0,)]
        # Granted SET on the parameter (PostgreSQL 15+): SET, still no function.
        _run(su, sql.SQL("GRANT SET ON PARAMETER session_replication_role TO {}").format(sql.Identifier(user)))
        with db.connect(params, "test") as conn:
            assert db.set_replica_role(conn, None) == "set"
        assert dbpair.sql_source("SELECT count(*) FROM fn_calls") == [(0,)]
    finally:
        _run(su, sql.SQL("REVOKE SET ON PARAMETER session_replication_role FROM {u}; DROP OWNED BY {u}").format(
            u=sql.Identifier(user)))
        _run(_superuser(source_cluster, "postgres"), sql.SQL("DROP ROLE {}").format(sql.Identifier(user)))


# The prepare-target function's shape, with a call log so a test can tell whether it ran.
_HARDENED = (
    "CREATE OR REPLACE FUNCTION {s}.rds_session_replication_role(role text) RETURNS text LANGUAGE plpgsql "
    "{secdef} {path} AS $f$ BEGIN "
    "INSERT INTO public.fn_calls VALUES (session_user); "
    "PERFORM pg_catalog.set_config('session_replication_role', role, false); "
    "RETURN pg_catalog.current_setting('session_replication_role'); END $f$"
)


def _install(dbpair: DbPair, *, secdef: str = "SECURITY DEFINER", path: str = "SET search_path = pg_catalog, pg_temp",
             schema: str = "public") -> None:
    dbpair.sql_target(sql.SQL(_HARDENED).format(s=sql.Identifier(schema), secdef=sql.SQL(secdef),
                                                path=sql.SQL(path)).as_string(None))
    dbpair.sql_target(f"REVOKE ALL ON FUNCTION {FUNCTION} FROM PUBLIC; "
                      f"GRANT EXECUTE ON FUNCTION {FUNCTION} TO {REPL_USER}")


@pytest.fixture
def target_with_call_log(dbpair: DbPair) -> DbPair:
    """A table on the target to sync, and public.fn_calls where every call of the function is logged."""
    setup_schema(dbpair, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    dbpair.sql_target("CREATE TABLE public.fn_calls (who text); GRANT INSERT ON public.fn_calls TO PUBLIC; "
                      f"DROP FUNCTION {FUNCTION}")
    return dbpair


def _forward_drain(dbpair: DbPair, tmp_path: Any, fn: dict[str, Any] | None = None) -> tuple[int, Any]:
    cfg = make_config(dbpair, tmp_path, replica_role_function=fn or FN_CONFIG)
    install_capture(cfg)
    dbpair.sql_source("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    return daemon.SyncProcess(cfg, direction="forward").run(drain=True), cfg


def _calls(dbpair: DbPair) -> int:
    return int(dbpair.sql_target("SELECT count(*) FROM fn_calls")[0][0])


def test_the_configured_hardened_function_is_called(target_with_call_log, tmp_path):
    pair = target_with_call_log
    _install(pair)
    applied, _ = _forward_drain(pair, tmp_path)
    assert applied == 2 and _calls(pair) >= 1
    assert pair.sql_target("SELECT count(*) FROM t") == [(2,)]


def _tamper_owner(pair: DbPair, aurora: LocalCluster) -> None:
    imposter = f"imposter_{pair.target['dbname']}"
    _run(_superuser(aurora, str(pair.target["dbname"])),
         sql.SQL("CREATE ROLE {r}; ALTER FUNCTION public.rds_session_replication_role(text) OWNER TO {r}").format(
             r=sql.Identifier(imposter)))


TAMPERED = {
    "wrong owner": (lambda pair, aurora: (_install(pair), _tamper_owner(pair, aurora)),
                    r"owned by imposter_\w+, not by ge_master"),
    "security invoker": (lambda pair, aurora: _install(pair, secdef="SECURITY INVOKER"),
                         r"it is SECURITY INVOKER"),
    "search_path not pinned": (lambda pair, aurora: _install(pair, path=""), r"search_path is not pinned"),
    "search_path with public": (lambda pair, aurora: _install(pair, path="SET search_path = public, pg_catalog"),
                                r"search_path is 'search_path=public, pg_catalog'"),
    "execute for public": (lambda pair, aurora: (_install(pair), pair.sql_target(
        f"GRANT EXECUTE ON FUNCTION {FUNCTION} TO PUBLIC")), r"EXECUTE is granted to PUBLIC"),
    "execute for another role": (lambda pair, aurora: (_install(pair), pair.sql_target(
        f"GRANT EXECUTE ON FUNCTION {FUNCTION} TO pg_monitor")), r"EXECUTE is granted to pg_monitor"),
    "grant option for the sync user": (lambda pair, aurora: (_install(pair), pair.sql_target(
        f"GRANT EXECUTE ON FUNCTION {FUNCTION} TO {REPL_USER} WITH GRANT OPTION")),
        r"EXECUTE is granted to ge_repl WITH GRANT OPTION"),
    "only in another schema": (lambda pair, aurora: (pair.sql_target("CREATE SCHEMA other"),
                                                     pair.sql_target(sql.SQL(_HARDENED).format(
                                                         s=sql.Identifier("other"),
                                                         secdef=sql.SQL("SECURITY DEFINER"),
                                                         path=sql.SQL("SET search_path = pg_catalog")
                                                     ).as_string(None)),
                                                     pair.sql_target("GRANT USAGE ON SCHEMA other TO PUBLIC")),
                               r"public\.rds_session_replication_role\(text\) .*it does not exist"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_function_that_is_not_exactly_the_hardened_one_is_refused_naming_the_problem(
        target_with_call_log, aurora_cluster, tmp_path, case):
    pair = target_with_call_log
    tamper, message = TAMPERED[case]
    tamper(pair, aurora_cluster)
    with pytest.raises(SyncError, match=message) as err:
        _forward_drain(pair, tmp_path)
    assert "refusing to call" in str(err.value) and "prepare-target" in str(err.value)
    assert _calls(pair) == 0, f"{case}: the function was called"
    assert pair.sql_target("SELECT count(*) FROM t") == [(0,)]


def test_mallorys_function_in_her_schema_on_the_target_is_never_called(target_with_call_log, mallory, tmp_path):
    pair = target_with_call_log
    _plant(pair.target, mallory, mallory)
    with pytest.raises(SyncError, match="it does not exist"):
        _forward_drain(pair, tmp_path)
    assert not _is_superuser(pair.target, mallory)


def test_where_the_sync_user_may_set_it_set_is_used_and_no_function(target_with_call_log, aurora_cluster, tmp_path):
    pair = target_with_call_log
    _install(pair)
    su = _superuser(aurora_cluster, str(pair.target["dbname"]))
    _run(su, sql.SQL("GRANT SET ON PARAMETER session_replication_role TO {}").format(sql.Identifier(REPL_USER)))
    try:
        applied, _ = _forward_drain(pair, tmp_path)
    finally:
        _run(su, sql.SQL("REVOKE SET ON PARAMETER session_replication_role FROM {}").format(
            sql.Identifier(REPL_USER)))
    assert applied == 2 and _calls(pair) == 0


def test_the_config_carries_the_function_and_names_bad_values(tmp_path):
    from great_escape import config
    from great_escape.errors import ConfigError

    base = {"name": "n", "source": {"host": "h", "dbname": "d", "user": "u"},
            "target": {"host": "h", "dbname": "d", "user": "r"}}
    cfg = config.from_dict({**base, "replica_role_function": {"schema": "ops", "owner": "ge_master"}})
    assert cfg.target_replica_role_function == db.ReplicaRoleFunction("ops", "ge_master")
    assert cfg.reversed().target_replica_role_function is None  # the source never calls a function
    assert cfg.reversed().reversed().target_replica_role_function == db.ReplicaRoleFunction("ops", "ge_master")
    assert config.from_dict({**base, "replica_role_function": None}).target_replica_role_function is None
    with pytest.raises(ConfigError, match=re.escape("replica_role_function.owner: expected a role name")):
        config.from_dict({**base, "replica_role_function": {"owner": 3}})
    with pytest.raises(ConfigError, match="replica_role_function: unknown key"):
        config.from_dict({**base, "replica_role_function": {"schema": "public", "grantee": "x"}})


def test_the_function_role_revokes_every_earlier_grant_and_a_second_run_changes_nothing(
        dbpair, aurora_cluster, tmp_path):
    """playbooks/02_prepare_target.yml over a function that PUBLIC, a role with grant option and a role that role
    granted to may execute: afterwards only the replication user may; the next run reports no change."""
    from bench import common as bench_common
    from tests.conftest import REPL_PASSWORD, ROOT

    intruder, second = f"intruder_{dbpair.target['dbname']}", f"second_{dbpair.target['dbname']}"
    dbpair.sql_target(sql.SQL("CREATE ROLE {i} LOGIN PASSWORD 'intruder-pw'; CREATE ROLE {s}; "
                              "GRANT EXECUTE ON FUNCTION public.rds_session_replication_role(text) TO PUBLIC; "
                              "GRANT EXECUTE ON FUNCTION public.rds_session_replication_role(text) TO {i} "
                              "WITH GRANT OPTION").format(i=sql.Identifier(intruder), s=sql.Identifier(second))
                      .as_string(None))
    _run({**dbpair.target, "user": intruder, "password": "intruder-pw"},
         sql.SQL("GRANT EXECUTE ON FUNCTION public.rds_session_replication_role(text) TO {}").format(
             sql.Identifier(second)))
    work = tmp_path / "work"
    inventory = bench_common.write_inventory(tmp_path / "inventory", dbpair.source, dbpair.target, work, REPL_USER,
                                             REPL_PASSWORD)

    def run() -> int:
        proc = subprocess.run([bench_common.ANSIBLE_PLAYBOOK, "-i", str(inventory),
                               str(ROOT / "playbooks/02_prepare_target.yml")], cwd=ROOT,
                              env=bench_common.playbook_env(), text=True, capture_output=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-4000:]
        return int(re.search(r"^replication\s*:\s*ok=\d+\s+changed=(\d+)", proc.stdout, re.M).group(1))

    try:
        assert run() >= 1
        grantees = dbpair.sql_target(
            "SELECT array_agg(coalesce(r.rolname::text, 'PUBLIC') || CASE WHEN a.is_grantable THEN '*' ELSE '' END "
            "ORDER BY 1) FROM pg_proc p, aclexplode(p.proacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
            "WHERE p.oid = %s::regprocedure AND a.grantee <> p.proowner", (FUNCTION,))
        assert grantees == [([REPL_USER],)]
        assert run() == 0, "the second run changed something"
        with db.connect(dbpair.repl, "test") as conn:
            assert db.set_replica_role(conn, db.ReplicaRoleFunction("public", MASTER_USER)) == "function"
    finally:
        su = _superuser(aurora_cluster, str(dbpair.target["dbname"]))
        _run(su, sql.SQL("DROP OWNED BY {}, {}").format(sql.Identifier(intruder), sql.Identifier(second)))
        _run(_superuser(aurora_cluster, "postgres"), sql.SQL("DROP ROLE {}, {}").format(
            sql.Identifier(second), sql.Identifier(intruder)))
