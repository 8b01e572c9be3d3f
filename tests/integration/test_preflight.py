"""Preflight against real clusters: each problem is found, named, and nothing is written."""

from __future__ import annotations

import psycopg
import pytest

from great_escape import preflight
from great_escape.errors import PreflightError
from great_escape.localcluster import MASTER_USER
from tests.conftest import REPL_PASSWORD, REPL_USER

PG_DUMP_15 = "pg_dump (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)"
CLOSED_PORT = 57299  # in this helper's port range, never listened on


def inputs(pair, **overrides) -> preflight.Inputs:
    values = dict(source=dict(pair.source), target=dict(pair.target), replication_user=REPL_USER,
                  replication_password=REPL_PASSWORD, pg_dump_version=PG_DUMP_15,
                  pg_restore_version=PG_DUMP_15, dump_dir="/dump", dump_dir_free_bytes=10 * 1024**3,
                  role_map={"postgres": MASTER_USER})  # as the inventories map it
    values.update(overrides)
    return preflight.Inputs(**values)


@pytest.fixture
def shop(dbpair):
    dbpair.sql_source("CREATE TABLE orders (id int PRIMARY KEY, note text); "
                      "INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 1000) g")
    return dbpair


def test_a_clean_pair_has_no_problem(shop):
    report = preflight.run(inputs(shop))
    assert report.problems == []
    assert report.facts["tables"] == 1
    assert report.facts["data_bytes"] > 0
    assert report.facts["replication_user_exists"] is True
    assert [e["phase"] for e in report.estimates] == [
        "copy data", "restore indexes", "sync catch-up", "verify", "total"]
    assert report.estimate_table()[0].startswith("phase")
    report.raise_if_problems()
    whole = preflight.run(inputs(shop, copy_method="pg_dump"))
    assert [e["phase"] for e in whole.estimates] == [
        "dump", "transfer", "restore data", "restore indexes", "sync catch-up", "verify", "total"]


def test_a_read_measurement_cut_short_leaves_the_source_connection_usable(dbpair):
    # Every real biggest table takes longer to read than measure_seconds; the plan's checks after the measurement
    # run on the same connection, so the cut-short COPY must not leave it busy.
    dbpair.sql_source("CREATE TABLE big (id int PRIMARY KEY, pad text); "
                      "INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 100000) g; ANALYZE big")
    report = preflight.run(inputs(dbpair, measure_seconds=0.001))
    assert report.problems == []
    assert " of public.big in " in report.facts["measured_read"]
    assert "bigint: 1 column(s), 0 sequence(s) widened" in report.plan  # planned on the measured connection


def test_keyless_table_is_refused_or_copied_at_cutover(shop):
    shop.sql_source("CREATE TABLE audit (at timestamptz, what text)")
    refused = preflight.run(inputs(shop))
    assert len(refused.problems) == 1
    assert "public.audit" in refused.problems[0] and "ge_keyless_tables" in refused.problems[0]
    with pytest.raises(PreflightError) as exc:
        refused.raise_if_problems()
    assert exc.value.problems == refused.problems
    copied = preflight.run(inputs(shop, keyless_tables="copy_at_cutover"))
    assert copied.problems == []
    assert any("public.audit" in w and "copied whole" in w for w in copied.warnings)


def test_a_unique_index_on_not_null_columns_is_a_usable_key(shop):
    shop.sql_source("CREATE TABLE views (session uuid NOT NULL, seq int NOT NULL); "
                    "CREATE UNIQUE INDEX ON views (session, seq)")
    assert preflight.run(inputs(shop)).problems == []


def test_large_objects_are_refused_with_the_count_the_columns_and_the_fix(shop):
    # Refused, not migrated: no trigger sees lo_write()/lo_unlink(), so changes after the dump would be lost.
    shop.sql_source("CREATE TABLE scans (id int PRIMARY KEY, image oid); "
                    "INSERT INTO scans SELECT g, lo_from_bytea(0, 'x') FROM generate_series(1, 3) g")
    report = preflight.run(inputs(shop))
    assert len(report.problems) == 1
    problem = report.problems[0]
    assert "3 large object(s) in pg_largeobject" in problem and "public.scans.image" in problem
    assert "bytea" in problem and "lo_get(" in problem and "pg_dump --large-objects" in problem
    assert report.facts["large_objects"] == 3
    shop.sql_source("SELECT lo_unlink(image) FROM scans; ALTER TABLE scans DROP COLUMN image")
    assert preflight.run(inputs(shop)).problems == []


@pytest.mark.parametrize(("source", "target", "aurora", "problem", "warning"), [
    (120022, 160002, True, None, None),  # measured
    (140023, 150020, True, None, None),
    (150020, 150020, True, None, None),
    (150020, 160002, True, None, "PostgreSQL 15 -> 16 is not among the pairs"),
    (130023, 170000, True, None, "PostgreSQL 13 -> 17 is not among the pairs"),
    (120022, 120022, True, "Aurora PostgreSQL runs 13 and newer", "PostgreSQL 12 -> 12 is not among"),
    (120022, 120022, False, None, "PostgreSQL 12 -> 12 is not among"),
])
def test_version_pairs(source, target, aurora, problem, warning):
    problems, warnings = preflight.version_pair_findings(source, target, aurora)
    assert [p for p in problems if problem and problem in p] == problems and len(problems) == bool(problem)
    assert [w for w in warnings if warning and warning in w] == warnings and len(warnings) == bool(warning)



def test_a_target_holding_data_is_a_problem(shop):
    shop.sql_target("CREATE TABLE orders (id bigint PRIMARY KEY, note text); "
                    "INSERT INTO orders VALUES (1, 'x')")
    report = preflight.run(inputs(shop))
    assert len(report.problems) == 1
    assert "already hold rows on the target: public.orders" in report.problems[0]
    shop.sql_target("TRUNCATE orders")  # an empty restored schema is fine
    assert preflight.run(inputs(shop)).problems == []


def test_wrong_password_is_named_without_the_password(shop):
    report = preflight.run(inputs(shop, source={**shop.source, "password": "not-the-secret"}))
    assert len(report.problems) == 1
    assert report.problems[0].startswith("source: cannot log in to postgres@127.0.0.1")
    assert "password was refused" in report.problems[0]
    assert "not-the-secret" not in repr(report.as_dict())


def test_wrong_replication_password_is_a_problem(shop):
    report = preflight.run(inputs(shop, replication_password="wrong"))
    assert len(report.problems) == 1 and report.problems[0].startswith("target (replication user)")


def test_unreachable_target_is_a_problem_and_the_source_is_still_checked(shop):
    shop.sql_source("CREATE TABLE audit (at timestamptz)")
    report = preflight.run(inputs(shop, target={**shop.target, "port": CLOSED_PORT}))
    assert any(p.startswith("target (master user): cannot reach") and str(CLOSED_PORT) in p
               for p in report.problems)
    assert any("public.audit" in p for p in report.problems)


def test_not_enough_disk(shop):
    huge = preflight.Assumptions(compression_factor=10_000.0)
    report = preflight.run(inputs(shop, copy_method="pg_dump", dump_dir_free_bytes=1024**3, assumptions=huge))
    assert len(report.problems) == 1
    assert report.problems[0].startswith("not enough disk at ge_dump_dir /dump")
    assert report.facts["disk_required_bytes"] > 1024**3
    report = preflight.run(inputs(shop, copy_method="pg_dump", replication_dir="/r", replication_dir_free_bytes=0))
    assert report.problems[0].startswith("not enough disk at ge_replication_dir /r")
    # The chunked copy writes no dump on the source host and only the schema on the replication host.
    chunked = preflight.run(inputs(shop, dump_dir_free_bytes=1024**3, replication_dir="/r",
                                   replication_dir_free_bytes=2 * 1024**3, assumptions=huge))
    assert chunked.problems == []
    assert "disk needed on the source host: none (the chunked copy writes no dump there)" in chunked.plan
    short = preflight.run(inputs(shop, replication_dir="/r", replication_dir_free_bytes=1024))
    assert len(short.problems) == 1 and short.problems[0].startswith("not enough disk at ge_replication_dir /r")
    assert "the schema dump" in short.problems[0]


@pytest.mark.parametrize(("output", "message"), [
    ("pg_dump (PostgreSQL) 13.2", "older than the newest server (15)"),
    ("", "was not found"),
])
def test_old_or_missing_clients(shop, output, message):
    report = preflight.run(inputs(shop, pg_restore_version=output))
    assert len(report.problems) == 1
    assert report.problems[0].startswith("pg_restore") and message in report.problems[0]


def test_source_user_that_owns_nothing_and_is_no_superuser(shop):
    shop.sql_source("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ge_app') THEN "
                    "CREATE ROLE ge_app LOGIN PASSWORD 'app-secret'; END IF; END $$")
    try:
        source = {**shop.source, "user": "ge_app", "password": "app-secret"}
        report = preflight.run(inputs(shop, source=source))
        assert len(report.problems) == 1
        assert "neither a superuser nor the owner of 1 table(s): public.orders" in report.problems[0]
    finally:
        shop.sql_source("DROP ROLE ge_app")


def test_unsupported_objects_are_flagged_not_refused(shop):
    shop.sql_source("CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY); "
                    "CREATE MATERIALIZED VIEW order_count AS SELECT count(*) FROM orders")
    report = preflight.run(inputs(shop))
    assert report.problems == []
    assert any("unlogged" in w and "public.scratch" in w for w in report.warnings)
    assert any("materialized" in w and "public.order_count" in w for w in report.warnings)


def test_preflight_writes_nothing(shop):
    shop.sql_source("CREATE TABLE audit (at timestamptz)")  # a problem: preflight still changes nothing
    objects = ("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
               "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')")
    before = (shop.sql_source(objects), shop.sql_target(objects))
    report = preflight.run(inputs(shop))
    assert report.problems
    assert (shop.sql_source(objects), shop.sql_target(objects)) == before
    assert shop.sql_target("SELECT count(*) FROM pg_namespace WHERE nspname = 'great_escape'") == [(0,)]


def test_preflight_sessions_are_read_only(shop):
    conn = preflight._open(shop.source, "source", preflight.Report())
    try:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE forbidden (id int)")
    finally:
        conn.close()


def test_missing_extensions_and_client_versions():
    missing = preflight.missing_extensions({"postgis": "3.4", "hstore": "1.8"}, {"hstore", "plpgsql"})
    assert missing == ["postgis"]
    assert preflight.client_major("pg_restore (PostgreSQL) 16.4") == 1600
    assert preflight.client_major("pg_dump (PostgreSQL) 9.6.24") == 906
    assert preflight.client_major("bash: pg_dump: command not found") is None
    with pytest.raises(PreflightError, match="compression_factor"):
        preflight.Assumptions(compression_factor=0)


def test_a_column_collation_the_target_lacks_is_a_problem(shop):
    # pg_collation is per database: this one exists in the source database only, like a libc locale or ICU
    # collation the target's operating system or engine version does not have.
    shop.sql_source("CREATE COLLATION pg_catalog.ge_only_here (provider = libc, locale = 'C.UTF-8'); "
                    "ALTER TABLE orders ALTER COLUMN note TYPE text COLLATE pg_catalog.ge_only_here")
    try:
        report = preflight.run(inputs(shop))
    finally:
        shop.sql_source("ALTER TABLE orders ALTER COLUMN note TYPE text COLLATE pg_catalog.default; "
                        "DROP COLLATION pg_catalog.ge_only_here")
    assert len(report.problems) == 1
    assert '"ge_only_here" (e.g. public.orders.note)' in report.problems[0]


def test_a_target_database_with_another_encoding_or_collation(shop):
    target_db = shop.target["dbname"] + "_ascii"
    with psycopg.connect(**shop.target, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{target_db}" ENCODING SQL_ASCII LC_COLLATE "C" LC_CTYPE "C" '
                     "TEMPLATE template0")
    try:
        report = preflight.run(inputs(shop, target={**shop.target, "dbname": target_db}))
        assert [p for p in report.problems if "encoding" in p] == [
            f"target {shop.target['user']}@{shop.target['host']}:{shop.target['port']}/{target_db}: the database "
            "encoding is SQL_ASCII, the source's is UTF8; create the target database with ENCODING 'UTF8' "
            "LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8' TEMPLATE template0 and point ge_target_db at it"]
        with psycopg.connect(**shop.target, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{target_db}"')
            conn.execute(f'CREATE DATABASE "{target_db}" ENCODING UTF8 LC_COLLATE "C" LC_CTYPE "C" '
                         "TEMPLATE template0")
        report = preflight.run(inputs(shop, target={**shop.target, "dbname": target_db}))
        assert not [p for p in report.problems if "encoding" in p or "collation" in p]
        assert any("collation/ctype is C/C, the source's C.UTF-8/C.UTF-8" in w for w in report.warnings)
    finally:
        with psycopg.connect(**shop.target, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{target_db}" WITH (FORCE)')


def test_roles_the_application_depends_on_are_listed_and_an_unmapped_superuser_owner_is_a_problem(shop):
    app = f"{shop.source['dbname']}_app"
    shop.sql_source(f"CREATE ROLE {app} LOGIN PASSWORD 'x'; GRANT SELECT, UPDATE ON orders TO {app}")
    report = preflight.run(inputs(shop, application_roles=[app]))
    assert report.problems == [] and report.facts["roles_to_create"] == [app]
    assert report.facts["passwords_needed"] == []
    unmapped = preflight.run(inputs(shop, role_map={}, application_roles=[app, "nobody_here"]))
    assert any(p.startswith("role postgres is a superuser on the source") and "ge_role_map" in p
               for p in unmapped.problems)
    assert "application role(s) nobody_here do not exist on the source; fix ge_application_roles" in unmapped.problems
