"""Capture and sync on simple tables: every kind of change arrives, nothing else."""

import threading
import time

import psycopg

from great_escape import capture, daemon
from tests.integration.syncutil import assert_identical, install_capture, make_config, setup_schema, snapshot_copy

DDL = """
CREATE TABLE items (id int PRIMARY KEY, name text, qty int);
CREATE TABLE "Order Lines" ("Order Id" int, "line no" int, note text, PRIMARY KEY ("Order Id", "line no"));
"""


# The transaction's looks at ge_capture.waiting: a session of its own per transaction holds only its own.
WAITING_LOOKS = "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE schemaname = %s AND relname = %s"


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


def _seq_scans(sql_runner, table: str) -> int:
    return sql_runner("SELECT seq_scan FROM pg_stat_user_tables WHERE relid = %s::regclass", (table,))[0][0]


def test_batches_look_keys_up_through_the_index(dbpair, tmp_path):
    """A batch must not read the whole table on either side: on a big table that is minutes per batch. Left
    to its estimates (a temp table without statistics, a ctid list) the planner picks a hash or merge join
    over the whole table for a batch that is a tenth of it."""
    setup_schema(dbpair, "CREATE TABLE big (a int, b int, pad text, PRIMARY KEY (a, b))")
    dbpair.sql_source("INSERT INTO big SELECT g / 10, g % 10, repeat('x', 100) FROM generate_series(1, 50000) g")
    cfg = make_config(dbpair, tmp_path, batch_size=5000)
    install_capture(cfg)
    snapshot_copy(dbpair)
    dbpair.sql_source("ANALYZE big")
    dbpair.sql_target("ANALYZE big")
    dbpair.sql_source("UPDATE big SET pad = 'changed' WHERE a BETWEEN 100 AND 549")
    dbpair.sql_source("DELETE FROM big WHERE a BETWEEN 500 AND 509")
    before = _seq_scans(dbpair.sql_source, "big"), _seq_scans(dbpair.sql_target, "big")
    daemon.SyncProcess(cfg, direction="forward").run(drain=True)  # closing its connections flushes their stats
    assert (_seq_scans(dbpair.sql_source, "big"), _seq_scans(dbpair.sql_target, "big")) == before
    assert_identical(dbpair)


def test_writers_kick_only_while_a_sync_waits(dbpair, tmp_path):
    """A NOTIFY serializes commits server-wide: writers send one only while a sync waits for it."""
    setup_schema(dbpair, "CREATE TABLE items (id int PRIMARY KEY)")
    install_capture(make_config(dbpair, tmp_path))
    with psycopg.connect(**dbpair.source, autocommit=True) as listener:
        listener.execute(f"LISTEN {capture.KICK_CHANNEL}")
        dbpair.sql_source("INSERT INTO items VALUES (1)")
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
        capture.set_waiting(listener, "test forward", True)
        dbpair.sql_source("INSERT INTO items VALUES (2)")
        assert len(list(listener.notifies(timeout=5, stop_after=1))) == 1
        capture.set_waiting(listener, "test forward", False)
        dbpair.sql_source("INSERT INTO items VALUES (3)")
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []


def test_the_kick_looks_for_a_waiting_sync_once_per_transaction(dbpair, tmp_path):
    """A look at ge_capture.waiting per statement cost ~10 us each; one per transaction is enough (PostgreSQL
    sends one notification per channel and transaction), and the next transaction looks again."""
    setup_schema(dbpair, "CREATE TABLE items (id int PRIMARY KEY)")
    install_capture(make_config(dbpair, tmp_path))
    with psycopg.connect(**dbpair.source, autocommit=True) as listener:
        listener.execute(f"LISTEN {capture.KICK_CHANNEL}")
        capture.set_waiting(listener, "test forward", True)
        for first in (1, 11):
            # A session of its own per transaction: its table statistics hold this transaction's looks only.
            with psycopg.connect(**dbpair.source) as writer:
                for i in range(first, first + 10):
                    writer.execute("INSERT INTO items VALUES (%s)", (i,))
                assert writer.execute(WAITING_LOOKS, (capture.SCHEMA, capture.WAITING)).fetchone() == (1,)
                writer.commit()
                # The mark is the transaction's own: the session's next transaction looks again.
                mark = writer.execute("SELECT current_setting(%s, true)", (capture.KICK_CHECKED_SETTING,)).fetchone()
                assert mark is not None and mark[0] != "on"
            assert len(list(listener.notifies(timeout=1))) == 1
        capture.set_waiting(listener, "test forward", False)


def test_a_truncate_kicks_a_waiting_sync_once_per_transaction(dbpair, tmp_path):
    """The truncate trigger kicks too (a TRUNCATE writes no row for the row trigger to kick from), and shares
    the transaction's one look with the row trigger."""
    setup_schema(dbpair, "CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY)")
    install_capture(make_config(dbpair, tmp_path))
    with psycopg.connect(**dbpair.source, autocommit=True) as listener:
        listener.execute(f"LISTEN {capture.KICK_CHANNEL}")
        capture.set_waiting(listener, "test forward", True)
        dbpair.sql_source("TRUNCATE items")
        assert len(list(listener.notifies(timeout=5, stop_after=1))) == 1
        with psycopg.connect(**dbpair.source) as writer:
            writer.execute("INSERT INTO other VALUES (1)")
            writer.execute("TRUNCATE items")
            assert writer.execute(WAITING_LOOKS, (capture.SCHEMA, capture.WAITING)).fetchone() == (1,)
            writer.commit()
        assert len(list(listener.notifies(timeout=1))) == 1
        capture.set_waiting(listener, "test forward", False)
    assert dbpair.sql_source("SELECT count(*) FROM ge_capture.truncates") == [(2,)]


def test_an_idle_sync_is_woken_by_the_kick_long_before_its_poll_interval(dbpair, tmp_path):
    setup_schema(dbpair, "CREATE TABLE items (id int PRIMARY KEY)")
    cfg = make_config(dbpair, tmp_path, poll_interval=60)
    install_capture(cfg)
    sync = daemon.SyncProcess(cfg, direction="forward")
    thread = threading.Thread(target=sync.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not dbpair.sql_source("SELECT count(*) FROM ge_capture.waiting")[0][0]:
            assert time.monotonic() < deadline, "the sync never announced that it waits"
            time.sleep(0.05)
        dbpair.sql_source("INSERT INTO items VALUES (1)")
        deadline = time.monotonic() + 5
        while not dbpair.sql_target("SELECT count(*) FROM items")[0][0]:
            assert time.monotonic() < deadline, "the kick did not wake the sync"
            time.sleep(0.05)
    finally:
        sync.stop()
        dbpair.sql_source("INSERT INTO items VALUES (2)")  # a kick, so the waiting sync sees it should stop
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert dbpair.sql_source("SELECT count(*) FROM ge_capture.waiting") == [(0,)]
