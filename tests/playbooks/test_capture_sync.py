"""The capture and sync phases through ansible-playbook: capture, copy, daemon in the background, lag wait."""


from tests.integration.syncutil import assert_identical, setup_schema, snapshot_copy


def test_capture_then_sync_daemon_catches_up(dbpair, run_playbook, inventory):
    setup_schema(dbpair, "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE loose (a int)")
    dbpair.sql_source("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 100) g")
    refused = run_playbook("playbooks/03_capture.yml", check=False)
    assert refused.returncode != 0 and "public.loose" in refused.stdout
    assert dbpair.sql_source("SELECT count(*) FROM pg_namespace WHERE nspname = 'ge_capture'")[0][0] == 0
    dbpair.sql_source("ALTER TABLE loose ADD PRIMARY KEY (a)")
    dbpair.sql_target("ALTER TABLE loose ADD PRIMARY KEY (a)")
    first = run_playbook("playbooks/03_capture.yml")
    assert "changed=1" in first.stdout
    again = run_playbook("playbooks/03_capture.yml")
    assert "changed=0" in again.stdout
    snapshot_copy(dbpair)
    dbpair.sql_source("UPDATE t SET v = 'changed' WHERE id < 50; INSERT INTO loose VALUES (1)")
    try:
        run_playbook("playbooks/07_sync.yml", extra={"ge_sync_max_lag": 0.5})
        dbpair.sql_source("DELETE FROM t WHERE id > 90")
        drained = run_playbook("playbooks/07_sync.yml", extra={"ge_sync_max_lag": 0})
        assert "0 pending" in drained.stdout
        assert_identical(dbpair)
        status = run_playbook("playbooks/07_sync.yml", extra={"sync_wait": False, "ge_sync_max_lag": 0})
        assert "changed=0" in status.stdout
    finally:
        stopped = run_playbook("playbooks/07_sync.yml", extra={"sync_state": "stopped"})
    assert "changed=1" in stopped.stdout
