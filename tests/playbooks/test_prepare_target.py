"""playbooks/02_prepare_target.yml against the simulated Aurora: a new replication user, the hardened
function, the state schema; a second run changes nothing; a tampered grant is repaired."""

from __future__ import annotations

import re

import psycopg
import pytest
from psycopg import sql

PLAYBOOK = "playbooks/02_prepare_target.yml"
FUNCTION = "public.rds_session_replication_role(text)"


def changed(stdout: str) -> int:
    return int(re.search(r"^replication\s*:\s*ok=\d+\s+changed=(\d+)", stdout, re.M).group(1))


@pytest.fixture
def repl_user(dbpair, aurora_cluster):
    """A replication user that does not exist yet; dropped, with what it owns, afterwards."""
    user, password = f"ge_repl_{dbpair.target['dbname']}", "prep-secret-42"
    dbpair.sql_target(f"DROP FUNCTION {FUNCTION}")  # installed by the fixture; the playbook must install it
    yield user, password
    superuser = {"host": str(aurora_cluster.datadir), "port": aurora_cluster.port, "user": "postgres"}
    with psycopg.connect(**superuser, dbname=dbpair.target["dbname"], autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(user)))
    with psycopg.connect(**superuser, dbname="postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))


def test_prepare_target_is_complete_hardened_and_idempotent(dbpair, repl_user, run_playbook):
    user, password = repl_user
    extra = {"ge_target_user": user, "ge_target_password": password}
    first = run_playbook(PLAYBOOK, extra=extra)
    assert changed(first.stdout) == 3  # user, its privileges and the state schema (state.prepare_target), function
    assert "a plain SET is denied (as on Aurora/RDS)" in first.stdout
    assert password not in first.stdout + first.stderr

    [(secdef, owner, config, grantees)] = dbpair.sql_target(
        "SELECT prosecdef, pg_get_userbyid(proowner), proconfig, "
        "(SELECT array_agg(coalesce(r.rolname::text, 'PUBLIC') ORDER BY 1) FROM aclexplode(proacl) a "
        " LEFT JOIN pg_roles r ON r.oid = a.grantee WHERE a.privilege_type = 'EXECUTE') "
        "FROM pg_proc WHERE oid = %s::regprocedure", (FUNCTION,))
    assert secdef and owner == dbpair.target["user"]
    assert config == ["search_path=pg_catalog, pg_temp"]
    assert grantees == sorted([owner, user])
    # The state schema is the master's, made once; the replication user writes in it but may not CREATE in the
    # database (issue 13 item 3).
    assert dbpair.sql_target(
        "SELECT pg_get_userbyid(nspowner), has_schema_privilege(%s, nspname, 'CREATE'), "
        "has_database_privilege(%s, current_database(), 'CREATE') FROM pg_namespace WHERE nspname = 'great_escape'",
        (user, user)) == [(dbpair.target["user"], True, False)]

    repl = {**dbpair.repl, "user": user, "password": password}
    with psycopg.connect(**repl) as conn:
        assert conn.execute("SELECT public.rds_session_replication_role('replica')").fetchone() == ("replica",)
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("SELECT public.rds_session_replication_role('superuser')")
    with psycopg.connect(**repl) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SET session_replication_role = replica")

    again = run_playbook(PLAYBOOK, extra=extra)
    assert changed(again.stdout) == 0

    dbpair.sql_target(f"GRANT EXECUTE ON FUNCTION {FUNCTION} TO PUBLIC")
    repaired = run_playbook(PLAYBOOK, extra=extra)
    assert changed(repaired.stdout) == 1
    assert dbpair.sql_target(f"SELECT has_function_privilege('public', '{FUNCTION}', 'EXECUTE')") == [(False,)]


def test_preflight_lists_and_prepare_target_creates_the_application_roles(dbpair, run_playbook):
    db = dbpair.source["dbname"]
    app, owner = f"{db}_app", f"{db}_owner"
    dbpair.sql_source(sql.SQL(
        "CREATE ROLE {o} NOLOGIN; CREATE ROLE {a} LOGIN PASSWORD 'app-pw-42'; GRANT CREATE ON SCHEMA public TO {o}; "
        "SET ROLE {o}; CREATE TABLE public.t (id int PRIMARY KEY); RESET ROLE; "
        "GRANT SELECT, INSERT ON public.t TO {a}").format(o=sql.Identifier(owner), a=sql.Identifier(app))
        .as_string(None))
    extra = {"ge_application_roles": [app]}
    preflight = run_playbook("playbooks/00_preflight.yml", extra=extra)
    assert f"created by prepare-target: {app}, {owner}" in preflight.stdout

    planned = run_playbook(PLAYBOOK, extra=extra, args=("--check",))
    assert f"create role {app}" in planned.stdout and f"create role {owner}" in planned.stdout
    assert dbpair.sql_target("SELECT count(*) FROM pg_roles WHERE rolname IN (%s, %s)", (app, owner)) == [(0,)]

    run_playbook(PLAYBOOK, extra=extra)
    with psycopg.connect(**{**dbpair.target, "user": app, "password": "app-pw-42"}) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (app,)
    assert "app-pw-42" not in planned.stdout + planned.stderr
