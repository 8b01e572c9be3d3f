"""Capture and sync on simple tables: every kind of change arrives, nothing else."""

from great_escape import daemon
from tests.integration.syncutil import assert_identical, install_capture, make_config, setup_schema, snapshot_copy

DDL = """
CREATE TABLE items (id int PRIMARY KEY, name text, qty int);
CREATE TABLE "Order Lines" ("Order Id" int, "line no" int, note text, PRIMARY KEY ("Order Id", "line no"));
"""


def test_insert_update_delete_key_change_truncate(dbpair, tmp_path):
    setup_schema(dbpair, DDL)
    dbpair.sql_source("INSERT INTO items SELECT g, 'item ' || g, g FROM generate_series(1, 100) g")
    cfg = make_config(dbpair, tmp_path)
    install_capture(cfg)
    snapshot_copy(dbpair)
    dbpair.sql_source("UPDATE items SET qty = qty + 1 WHERE id <= 10")
    dbpair.sql_source("DELETE FROM items WHERE id BETWEEN 11 AND 20")
    dbpair.sql_source("UPDATE items SET id = id + 1000 WHERE id BETWEEN 21 AND 25")
    dbpair.sql_source("INSERT INTO \"Order Lines\" SELECT g / 3, g % 3, E'tab\\there' FROM generate_series(1, 50) g")
    dbpair.sql_source("BEGIN; DELETE FROM items WHERE id = 30; INSERT INTO items VALUES (30, 'again', 0); COMMIT")
    daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    assert_identical(dbpair)
    dbpair.sql_source('TRUNCATE "Order Lines"')
    dbpair.sql_source("INSERT INTO \"Order Lines\" VALUES (1, 1, 'after truncate')")
    daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    assert_identical(dbpair)
    assert dbpair.sql_source("SELECT count(*) FROM ge_capture.truncates")[0][0] == 0
