"""Roles, owners and privileges carried to the target (issue 11): the application works there as on the source.

Nothing is granted on the target by hand: the target gets the schema as the restore gives it (no owners, no
privileges), then only what great_escape.access plans."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from great_escape import access, daemon, restore
from great_escape.localcluster import MASTER_USER
from tests.conftest import REPL_USER, DbPair
from tests.integration.syncutil import PG_BIN, install_capture, make_config, table_rows

SCHEMA = """
CREATE ROLE {owner} NOLOGIN;
CREATE ROLE {group} NOLOGIN;
CREATE ROLE {app} LOGIN PASSWORD 'app-secret';
CREATE ROLE {reader} LOGIN PASSWORD 'reader-secret' CONNECTION LIMIT 5;
GRANT {group} TO {app};
CREATE ROLE {base} NOLOGIN;
GRANT {base} TO {group};
CREATE ROLE {top} NOLOGIN;
GRANT {top} TO {base};
ALTER ROLE {app} SET search_path = "$user", public, extra;
ALTER ROLE {reader} SET statement_timeout = '5min';
CREATE SCHEMA extra AUTHORIZATION {owner};
GRANT CREATE ON SCHEMA public TO {owner};
SET ROLE {owner};
ALTER DEFAULT PRIVILEGES IN SCHEMA extra GRANT SELECT ON TABLES TO {reader};
CREATE TABLE public.accounts (id int PRIMARY KEY, owner_name text, balance int NOT NULL DEFAULT 0, secret text);
CREATE TABLE extra.notes (id serial PRIMARY KEY, who text NOT NULL, body text);
CREATE TYPE public.mood AS ENUM ('ok', 'sad');
REVOKE USAGE ON TYPE public.mood FROM PUBLIC;
CREATE FUNCTION public.add_money(acc int, amount int) RETURNS void LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog AS 'UPDATE public.accounts SET balance = balance + amount WHERE id = acc';
REVOKE EXECUTE ON FUNCTION public.add_money(int, int) FROM PUBLIC;
ALTER TABLE extra.notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE extra.notes FORCE ROW LEVEL SECURITY;
CREATE POLICY own_notes ON extra.notes FOR ALL TO {app} USING (who = current_user) WITH CHECK (who = current_user);
CREATE POLICY read_all ON extra.notes FOR SELECT TO {reader} USING (true);
RESET ROLE;
GRANT EXECUTE ON FUNCTION public.add_money(int, int) TO {app};
GRANT USAGE ON TYPE public.mood TO {app};
GRANT USAGE ON SCHEMA extra TO {app}, {reader};
GRANT SELECT, INSERT, UPDATE, DELETE ON public.accounts TO {group};
GRANT SELECT (id, owner_name) ON public.accounts TO {reader};
GRANT SELECT, INSERT, UPDATE, DELETE ON extra.notes TO {app};
GRANT USAGE ON SEQUENCE extra.notes_id_seq TO {app};
ALTER DATABASE {db} SET work_mem = '8MB';
INSERT INTO public.accounts VALUES (1, 'ann', 10, 's1'), (2, 'bob', 20, 's2');
"""


def roles_of(pair: DbPair) -> dict[str, str]:
    db = pair.source["dbname"]
    return {"owner": f"{db}_owner", "group": f"{db}_rw", "base": f"{db}_base", "top": f"{db}_top",
            "app": f"{db}_app", "reader": f"{db}_reader"}


def create_schema(pair: DbPair) -> dict[str, str]:
    names = roles_of(pair)
    idents = {k: sql.Identifier(v) for k, v in names.items()}
    pair.sql_source(sql.SQL(SCHEMA).format(db=sql.Identifier(pair.source["dbname"]), **idents).as_string(None))
    return names


def restore_schema(pair: DbPair, work: Path) -> None:
    """What the restore phase does with the schema: no owners, no privileges, the project's list filter."""
    dump = work / "schema.dump"
    src, tgt = pair.source, pair.target
    subprocess.run([str(PG_BIN / "pg_dump"), "-Fc", "--schema-only", "-f", str(dump), "-h", src["host"], "-p",
                    str(src["port"]), "-U", src["user"], src["dbname"]], env={"PGPASSWORD": src["password"]},
                   check=True, capture_output=True)
    listing = subprocess.run([str(PG_BIN / "pg_restore"), "--list", str(dump)], check=True, capture_output=True,
                             text=True).stdout
    kept, _ = restore.filter_toc(listing.splitlines())
    (work / "schema.list").write_text("\n".join(kept) + "\n")
    subprocess.run([str(PG_BIN / "pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
                    "-L", str(work / "schema.list"), "-h", tgt["host"], "-p", str(tgt["port"]), "-U", tgt["user"],
                    "-d", tgt["dbname"], str(dump)], env={"PGPASSWORD": tgt["password"]}, check=True,
                   capture_output=True)


def options(names: dict[str, str], **kw: Any) -> access.Options:
    return access.Options(role_map={"postgres": MASTER_USER}, application_roles=(names["app"],),
                          project_roles=(MASTER_USER, REPL_USER), sync_user=REPL_USER, **kw)


def carry_over(pair: DbPair, opts: access.Options) -> access.Plan:
    with psycopg.connect(**pair.source) as src, psycopg.connect(**pair.target) as tgt:
        p = access.plan(src, tgt, opts)
        access.apply(tgt, p)
    return p


def login(pair: DbPair, user: str, password: str) -> psycopg.Connection[Any]:
    return psycopg.connect(**{**pair.target, "user": user, "password": password}, autocommit=True)


def test_the_application_works_on_the_target_as_on_the_source(dbpair: DbPair, tmp_path: Path) -> None:
    names = create_schema(dbpair)
    restore_schema(dbpair, tmp_path)
    dbpair.sql_target("INSERT INTO public.accounts VALUES (1, 'ann', 10, 's1'), (2, 'bob', 20, 's2')")

    with psycopg.connect(**dbpair.source) as src, psycopg.connect(**dbpair.target) as tgt:
        roles_only = access.plan(src, tgt, options(names, objects=False))
        assert roles_only.problems == []
        assert set(roles_only.roles_created) == set(names.values())
        assert roles_only.passwords_needed == []  # the source superuser reads the verifiers
        queries = roles_only.queries(tgt)
        assert not any("SCRAM" in q or "secret" in q for q in queries)
        assert tgt.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)",
                           (list(names.values()),)).fetchone() == (0,)  # planning changed nothing
    carry_over(dbpair, options(names, objects=False))
    p = carry_over(dbpair, options(names))
    assert any(s.what.startswith("give table public.accounts to") for s in p.steps)

    with psycopg.connect(**dbpair.source) as src, psycopg.connect(**dbpair.target) as tgt:
        again = access.plan(src, tgt, options(names))
        assert again.differences == [] and again.steps == []  # a second run changes nothing
        owner = tgt.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'public.accounts'::regclass"
                            ).fetchone()
        assert owner == (names["owner"],)
        assert tgt.execute("SELECT prosecdef, pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'add_money'"
                           ).fetchone() == (True, names["owner"])

    # Groups of groups come along, with their memberships (app -> rw -> base -> top).
    assert dbpair.sql_target("SELECT pg_has_role(%s, %s, 'MEMBER')", (names["app"], names["top"])) == [(True,)]
    with login(dbpair, names["app"], "app-secret") as app:  # the source's password verifier works
        assert app.execute("SHOW search_path").fetchone() == ('"$user", public, extra',)
        app.execute("INSERT INTO accounts (id, owner_name) VALUES (3, 'cy')")  # through its group role
        app.execute("SELECT add_money(3, 5)")
        app.execute("INSERT INTO notes (who, body) VALUES (current_user, 'mine')")  # sequence and RLS
        assert app.execute("SELECT count(*) FROM notes").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("INSERT INTO notes (who, body) VALUES ('someone else', 'x')")
    with login(dbpair, names["reader"], "reader-secret") as reader:
        assert reader.execute("SELECT id, owner_name FROM public.accounts ORDER BY id").fetchall()[0] == (1, "ann")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("SELECT secret FROM public.accounts")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("SELECT public.add_money(1, 1)")  # PUBLIC EXECUTE stays revoked
        assert reader.execute("SHOW statement_timeout").fetchone() == ("5min",)
        assert reader.execute("SELECT count(*) FROM extra.notes").fetchone() == (1,)
    # Default privileges: a table the owner creates later is readable by the reader.
    dbpair.sql_target(sql.SQL("SET ROLE {}; CREATE TABLE extra.later (id int)").format(
        sql.Identifier(names["owner"])).as_string(None))
    with login(dbpair, names["reader"], "reader-secret") as reader:
        reader.execute("SELECT * FROM extra.later")
    assert dbpair.sql_target("SELECT setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = setdatabase "
                             "WHERE d.datname = current_database() AND setrole = 0") == [(["work_mem=8MB"],)]


def test_verify_names_a_privilege_the_target_lacks(dbpair: DbPair, tmp_path: Path) -> None:
    names = create_schema(dbpair)
    restore_schema(dbpair, tmp_path)
    carry_over(dbpair, options(names))
    dbpair.sql_target(sql.SQL("REVOKE UPDATE ON public.accounts FROM {}; GRANT EXECUTE ON FUNCTION "
                              "public.add_money(int, int) TO PUBLIC; ALTER TABLE extra.notes NO FORCE ROW LEVEL "
                              "SECURITY; DROP POLICY read_all ON extra.notes").format(
        sql.Identifier(names["group"])).as_string(None))
    with psycopg.connect(**dbpair.source) as src, psycopg.connect(**dbpair.target) as tgt:
        found = {str(d) for d in access.plan(src, tgt, options(names)).differences}
    assert found == {
        f"table public.accounts: UPDATE for {names['group']} on the source only (missing on the target)",
        "function public.add_money(acc integer, amount integer): EXECUTE for PUBLIC on the target only",
        "table extra.notes: ROW LEVEL SECURITY forced on the source only",
        f"policy read_all on extra.notes: POLICY for {names['reader']} on the source only (missing or different "
        "on the target)",
    }


def test_a_source_superuser_owner_must_be_mapped(dbpair: DbPair, tmp_path: Path) -> None:
    dbpair.sql_source("CREATE TABLE t (id int PRIMARY KEY)")  # owned by the source superuser postgres
    with psycopg.connect(**dbpair.source) as src, psycopg.connect(**dbpair.target) as tgt:
        p = access.plan(src, tgt, access.Options(project_roles=(MASTER_USER, REPL_USER), objects=False))
    assert any("role postgres is a superuser on the source" in x and "ge_role_map" in x for x in p.problems)
    with pytest.raises(access.AccessError, match="nothing was changed"):
        p.raise_if_problems()


def test_a_table_given_to_a_role_that_may_not_create_in_its_schema(dbpair: DbPair, tmp_path: Path) -> None:
    """A source superuser gave the table to a role without CREATE on its schema (PostgreSQL 15's public). The
    target's master is no superuser and may only give a table to a role that may create in its schema: CREATE
    is lent for the change and taken back, so the target ends as the source is."""
    role = f"{dbpair.source['dbname']}_bare"
    dbpair.sql_source(f"CREATE ROLE {role} NOLOGIN; CREATE TABLE public.lent (id int PRIMARY KEY); "
                      f"ALTER TABLE public.lent OWNER TO {role}")
    restore_schema(dbpair, tmp_path)
    opts = access.Options(role_map={"postgres": MASTER_USER}, project_roles=(MASTER_USER, REPL_USER),
                          sync_user=REPL_USER)
    carry_over(dbpair, dataclasses.replace(opts, objects=False))
    p = carry_over(dbpair, opts)
    assert [s.what for s in p.steps if role in s.what] == [
        f"let {role} create in schema public while it is given an object there", f"give table public.lent to {role}",
        f"take CREATE on schema public back from {role}, as on the source"]
    assert dbpair.sql_target("SELECT pg_get_userbyid(relowner), has_schema_privilege(%s, 'public', 'CREATE') FROM "
                             "pg_class WHERE oid = 'public.lent'::regclass", (role,)) == [(role, False)]
    with psycopg.connect(**dbpair.source) as src, psycopg.connect(**dbpair.target) as tgt:
        again = access.plan(src, tgt, opts)
    assert again.differences == [] and again.steps == []


def test_list_settings_are_split_as_postgresql_stores_them() -> None:
    assert access.split_list_setting('"$user", public') == ["$user", "public"]
    assert access.split_list_setting('"a,b", "x""y"') == ["a,b", 'x"y']


def test_the_sync_sees_and_writes_every_row_of_tables_with_row_level_security(dbpair: DbPair, tmp_path: Path,
                                                                              aurora_cluster: Any) -> None:
    """The replication user is neither owner nor BYPASSRLS on Aurora: without the project's policy it would see
    and write only what the application's policies allow, and changes would be lost without an error."""
    names = create_schema(dbpair)
    restore_schema(dbpair, tmp_path)
    carry_over(dbpair, options(names))
    dbpair.grant_repl()  # what the restore grants the replication user (roles/restore prepare.yml, step grant)
    cfg = make_config(dbpair, tmp_path)
    install_capture(cfg)
    dbpair.sql_source("INSERT INTO extra.notes (who, body) SELECT 'user' || g % 3, 'n' || g "
                      "FROM generate_series(1, 30) g; UPDATE public.accounts SET balance = balance + 1")
    daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    dbpair.sql_source("DELETE FROM extra.notes WHERE id % 2 = 0; UPDATE extra.notes SET body = 'changed'")
    daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    # Compared as the target's superuser: the master is subject to the application's policies too.
    superuser = {"host": str(aurora_cluster.datadir), "port": aurora_cluster.port, "user": "postgres",
                 "dbname": dbpair.target["dbname"]}
    assert table_rows(dbpair.source) == table_rows(superuser)
    assert dbpair.sql_target("SELECT count(*) FROM extra.notes") == [(0,)]  # the master sees none of them

    with psycopg.connect(**dbpair.target) as tgt:  # cleanup removes the project's policy, nothing else
        removal = access.plan_removal(tgt)
        assert removal.describe() == [f"drop policy {access.SYNC_POLICY} on extra.notes"]
        access.apply(tgt, removal)
    assert dbpair.sql_target("SELECT polname FROM pg_policy ORDER BY 1") == [("own_notes",), ("read_all",)]


def test_a_role_the_dba_created_on_the_target_gets_its_privileges(dbpair: DbPair, tmp_path: Path) -> None:
    names = create_schema(dbpair)
    restore_schema(dbpair, tmp_path)
    dbpair.sql_target(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'dba-chosen'").format(
        sql.Identifier(names["app"])).as_string(None))
    with psycopg.connect(**dbpair.source) as src, psycopg.connect(**dbpair.target) as tgt:
        p = access.plan(src, tgt, options(names))
    assert names["app"] in p.roles_existing and names["app"] not in p.roles_created
    assert not any(s.what == f"set the password of role {names['app']} (the source's verifier)" for s in p.steps)
    carry_over(dbpair, options(names, objects=False))
    carry_over(dbpair, options(names))
    with login(dbpair, names["app"], "dba-chosen") as app:  # the DBA's password stays
        app.execute("INSERT INTO public.accounts (id, owner_name) VALUES (9, 'dba')")
