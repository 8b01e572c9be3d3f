"""The project's own names never collide with the application's (issue 15, item 1): key columns named like the
project's columns (`at`, `captured_at`, `k1`...), case, quoting, spaces, unicode, 63-byte names, application
triggers named like the capture triggers, an application schema named ge_capture, and capture of an older
layout."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from great_escape import capture, daemon, status
from great_escape.errors import CaptureError, SyncError
from tests.integration.syncutil import assert_identical, install_capture, make_config, setup_schema, snapshot_copy

LONG_TABLE = "t" * 63
LONG_COLUMN = "ä" * 31 + "k"  # 63 bytes
assert len(LONG_TABLE.encode()) == len(LONG_COLUMN.encode()) == 63

HOSTILE_DDL = sql.SQL("""
CREATE SCHEMA "Weird ""Schema"" ü";
CREATE TABLE events (id int, at timestamptz, payload text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_rest PARTITION OF events DEFAULT;
CREATE TABLE own_names (k2 int, k1 text, captured_at int, relid int, "at" int, v text,
                        PRIMARY KEY (k2, k1, captured_at, relid, "at"));
CREATE TABLE "Weird ""Schema"" ü"."Mixed ""Case"" Table" (
    "ID" int, id int, "select" text, "key with space" text, "ключ" text, "a""b" int, v text,
    PRIMARY KEY ("ID", id, "select", "key with space", "ключ", "a""b"));
CREATE TABLE {long_table} ({long_column} int PRIMARY KEY, v text);
CREATE SCHEMA private;
CREATE FUNCTION private.valid_code(text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT length($1) > 0 $$;
REVOKE EXECUTE ON FUNCTION private.valid_code(text) FROM PUBLIC;
CREATE DOMAIN code AS text CHECK (private.valid_code(VALUE));
CREATE TABLE coded (c code COLLATE "C" PRIMARY KEY, v text);
CREATE TABLE "AT" ("AT" int PRIMARY KEY, "At" int, at int);
""").format(long_table=sql.Identifier(LONG_TABLE), long_column=sql.Identifier(LONG_COLUMN)).as_string(None)

HOSTILE_DML = sql.SQL("""
INSERT INTO events SELECT g, timestamptz '2025-03-01' + g * interval '1 day', 'p' || g FROM generate_series(1, 40) g;
UPDATE events SET at = at + interval '1 year' WHERE id <= 10;              -- rows move between partitions
UPDATE events SET id = id + 1000 WHERE id BETWEEN 11 AND 15;               -- key changes
DELETE FROM events WHERE id BETWEEN 16 AND 20;
INSERT INTO own_names SELECT g, 'k' || g, g * 2, g * 3, g * 4, 'v' FROM generate_series(1, 30) g;
UPDATE own_names SET k1 = 'moved ' || k1, "at" = "at" + 1 WHERE k2 <= 5;
DELETE FROM own_names WHERE k2 BETWEEN 6 AND 8;
INSERT INTO "Weird ""Schema"" ü"."Mixed ""Case"" Table"
    SELECT g, -g, 'sel' || g, 'space ' || g, 'ключ ' || g, g % 3, 'v' FROM generate_series(1, 30) g;
UPDATE "Weird ""Schema"" ü"."Mixed ""Case"" Table" SET "ключ" = 'новый' || "ID", v = 'w' WHERE "ID" <= 5;
DELETE FROM "Weird ""Schema"" ü"."Mixed ""Case"" Table" WHERE "ID" BETWEEN 6 AND 9;
INSERT INTO {long_table} SELECT g, 'v' FROM generate_series(1, 20) g;
UPDATE {long_table} SET {long_column} = {long_column} + 100 WHERE {long_column} <= 3;
INSERT INTO coded SELECT 'code ' || g, 'v' FROM generate_series(1, 20) g;
UPDATE coded SET c = 'Code ' || c WHERE c < 'code 2';
DELETE FROM coded WHERE c = 'code 5';
INSERT INTO "AT" SELECT g, g, g FROM generate_series(1, 10) g;
UPDATE "AT" SET "AT" = "AT" + 100, at = 0 WHERE "AT" <= 2;
TRUNCATE own_names;
INSERT INTO own_names VALUES (1, 'after truncate', 0, 0, 0, 'v');
""").format(long_table=sql.Identifier(LONG_TABLE), long_column=sql.Identifier(LONG_COLUMN)).as_string(None)


def test_hostile_key_names_are_captured_and_synced(dbpair, tmp_path):
    """Key columns named `at` (the report: 03_capture failed with 'column "at" specified more than once'),
    named like the delta columns in another order, in every case and quoting, 63 bytes long; a key whose
    domain checks call a function only its owner may run, with a non-default collation."""
    setup_schema(dbpair, HOSTILE_DDL)
    dbpair.sql_target("GRANT EXECUTE ON FUNCTION private.valid_code(text) TO ge_repl")
    dbpair.sql_source("INSERT INTO events VALUES (100, '2025-06-01', 'before capture')")
    cfg = make_config(dbpair, tmp_path, batch_size=7)
    plan = install_capture(cfg)
    assert len(plan.install) == 6
    snapshot_copy(dbpair)
    dbpair.sql_source(HOSTILE_DML)
    with psycopg.connect(**dbpair.source) as conn:
        pending = status.pending(conn)
        assert capture.check_intact(conn) == []
    assert pending["public.own_names"]["truncates"] == 1
    assert pending["public.events"]["pending"] > 0
    daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    assert_identical(dbpair)
    with psycopg.connect(**dbpair.source) as conn:
        assert sum(p["pending"] + p["truncates"] for p in status.pending(conn).values()) == 0
    # Removal leaves nothing of the project's behind.
    capture.run(cfg, state="absent", freeze=False)
    assert dbpair.sql_source("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'ge\\_capture%'") == [(0,)]
    assert dbpair.sql_source("SELECT count(*) FROM pg_namespace WHERE nspname = 'ge_capture'") == [(0,)]


APP_TRIGGERS = """
CREATE TABLE audit_log (id serial PRIMARY KEY, what text);
CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit_log (what) VALUES (TG_TABLE_NAME || ' ' || TG_OP); RETURN NULL; END $$;
CREATE TABLE audited (id int PRIMARY KEY);
CREATE TRIGGER ge_capture_row AFTER INSERT ON audited FOR EACH ROW EXECUTE FUNCTION audit();
CREATE TABLE parts (id int PRIMARY KEY) PARTITION BY RANGE (id);
CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (0) TO (100);
CREATE TRIGGER ge_capture_truncate AFTER TRUNCATE ON parts_1 FOR EACH STATEMENT EXECUTE FUNCTION audit();
"""


def test_application_triggers_named_like_the_capture_triggers_are_named_and_kept(dbpair, tmp_path):
    setup_schema(dbpair, APP_TRIGGERS)
    cfg = make_config(dbpair, tmp_path)
    with pytest.raises(CaptureError, match=r"cannot capture public\.audited: the application's trigger\(s\) "
                                           r"ge_capture_row on public\.audited .*ALTER TRIGGER"):
        install_capture(cfg)
    dbpair.sql_source("ALTER TRIGGER ge_capture_row ON audited RENAME TO audit_row")
    with pytest.raises(CaptureError, match=r"cannot capture public\.parts: .*ge_capture_truncate on public\.parts_1"):
        install_capture(cfg)
    # Nothing of the application's was dropped or replaced: its trigger still fires.
    dbpair.sql_source("INSERT INTO audited VALUES (1); TRUNCATE parts_1")
    assert dbpair.sql_source("SELECT what FROM audit_log ORDER BY 1") == [("audited INSERT",), ("parts_1 TRUNCATE",)]
    dbpair.sql_source("ALTER TRIGGER ge_capture_truncate ON parts_1 RENAME TO audit_truncate")
    install_capture(cfg)
    snapshot_copy(dbpair)
    dbpair.sql_source("INSERT INTO audited VALUES (2); INSERT INTO parts VALUES (5); TRUNCATE parts_1")
    daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    assert_identical(dbpair)
    capture.run(cfg, state="absent", freeze=False)
    assert sorted(r[0] for r in dbpair.sql_source("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")) == \
        ["audit_row", "audit_truncate"]


def test_an_application_schema_named_ge_capture_is_left_alone(dbpair, tmp_path):
    setup_schema(dbpair, "CREATE SCHEMA ge_capture; CREATE TABLE ge_capture.app_data (id int PRIMARY KEY);"
                         "CREATE TABLE t (id int PRIMARY KEY)")
    with pytest.raises(CaptureError, match="schema ge_capture .* holds objects great-escape did not make"):
        install_capture(make_config(dbpair, tmp_path))
    assert dbpair.sql_source("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'ge\\_capture%'") == [(0,)]
    assert dbpair.sql_source("SELECT count(*) FROM ge_capture.app_data") == [(0,)]


def _old_layout(dbpair) -> None:
    """Capture as great-escape 0.1 installed it: keys under the application's names, plus `at`."""
    setup_schema(dbpair, "CREATE TABLE t (id int PRIMARY KEY, v int)")
    relid = dbpair.sql_source("SELECT 't'::regclass::oid::int8")[0][0]
    delta, func = sql.Identifier("ge_capture", f"d_{relid}"), sql.Identifier("ge_capture", f"f_{relid}")
    dbpair.sql_source(sql.SQL("""
CREATE SCHEMA ge_capture;
GRANT USAGE ON SCHEMA ge_capture TO PUBLIC;
CREATE TABLE ge_capture.tables (relid oid PRIMARY KEY, schema_name text NOT NULL, table_name text NOT NULL,
    delta_table text NOT NULL, key_columns text[] NOT NULL, installed_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE ge_capture.truncates (relid oid NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE UNLOGGED TABLE ge_capture.waiting (sync text PRIMARY KEY, since timestamptz NOT NULL DEFAULT now());
CREATE TABLE {delta} (id int NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO {delta} (id) VALUES (NEW.id); RETURN NULL; END $$;
CREATE TRIGGER ge_capture_row AFTER INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION {func}();
INSERT INTO ge_capture.tables VALUES ({relid}, 'public', 't', {name}, '{{id}}');
""").format(delta=delta, func=func, relid=sql.Literal(relid), name=sql.Literal(f"d_{relid}")).as_string(None))


def test_capture_of_the_old_layout_is_refused_with_what_to_do_and_can_be_removed(dbpair, tmp_path):
    _old_layout(dbpair)
    dbpair.sql_source("INSERT INTO t VALUES (1, 1)")
    cfg = make_config(dbpair, tmp_path)
    refusal = r"installed by an older great-escape \(delta table layout 1.*remove capture"
    with pytest.raises(CaptureError, match=refusal):
        install_capture(cfg)
    with psycopg.connect(**dbpair.source) as conn, pytest.raises(CaptureError, match=refusal):
        status.pending(conn)
    with pytest.raises((CaptureError, SyncError), match=refusal):
        daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    # Removal works on either layout; a new install then captures with this version's layout.
    assert capture.run(cfg, state="absent", freeze=False).describe() == ["remove capture from public.t"]
    assert dbpair.sql_source("SELECT count(*) FROM pg_namespace WHERE nspname = 'ge_capture'") == [(0,)]
    assert dbpair.sql_source("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'ge\\_capture%'") == [(0,)]
    install_capture(cfg)
    snapshot_copy(dbpair)
    dbpair.sql_source("UPDATE t SET v = 2")
    daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    assert_identical(dbpair)


def test_an_earlier_versions_kick_trigger_goes_when_capture_is_installed_again(dbpair, tmp_path):
    """Before the kick moved into the row function, a statement trigger ge_capture_kick ran it. Capture left
    by that version keeps working (its functions stay); installing it again leaves the table with this
    version's two triggers only, and an application's trigger of that name is still refused."""
    setup_schema(dbpair, "CREATE TABLE t (id int PRIMARY KEY, v int)")
    cfg = make_config(dbpair, tmp_path)
    install_capture(cfg)
    dbpair.sql_source("CREATE FUNCTION ge_capture.kick() RETURNS trigger LANGUAGE plpgsql AS "
                      "'BEGIN RETURN NULL; END';"
                      "CREATE TRIGGER ge_capture_kick AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON t "
                      "FOR EACH STATEMENT EXECUTE FUNCTION ge_capture.kick();"
                      "ALTER TABLE t DISABLE TRIGGER ge_capture_row")
    assert capture.run(cfg, state="present", freeze=False).describe() == ["repair capture on public.t"]
    triggers = "SELECT tgname FROM pg_trigger WHERE tgrelid = 't'::regclass ORDER BY 1"
    assert dbpair.sql_source(triggers) == [("ge_capture_row",), ("ge_capture_truncate",)]
    setup_schema(dbpair, "CREATE TABLE u (id int PRIMARY KEY); CREATE FUNCTION public.noop() RETURNS trigger "
                         "LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END'; CREATE TRIGGER ge_capture_kick AFTER INSERT "
                         "ON u FOR EACH ROW EXECUTE FUNCTION public.noop()")
    with pytest.raises(CaptureError, match=r"cannot capture public\.u: .*ge_capture_kick on public\.u"):
        install_capture(cfg)
