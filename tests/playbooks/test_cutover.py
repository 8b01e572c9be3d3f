"""09_cutover.yml, rollback.yml and cleanup.yml against the test clusters."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import yaml
from psycopg import sql

from great_escape import capture, daemon
from tests.integration.syncutil import (
    carry_access,
    install_capture,
    make_config,
    setup_schema,
    snapshot_copy,
    table_rows,
)

DDL = "CREATE TABLE accounts (id int PRIMARY KEY, balance int); CREATE TABLE ledger (id serial PRIMARY KEY, n int)"


def _prepare(dbpair, inventory: Path):
    settings = yaml.safe_load((inventory / "group_vars/all/main.yml").read_text())
    state_dir = Path(settings["ge_local_root"]) / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    setup_schema(dbpair, DDL)
    role = f"app_{dbpair.source['dbname']}"
    dbpair.sql_source(sql.SQL("CREATE ROLE {r} LOGIN; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "
                              "public TO {r}; GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {r}").format(
        r=sql.Identifier(role)).as_string(None))
    carry_access(dbpair, (role,))  # what the prepare-target and restore phases do
    dbpair.sql_source("INSERT INTO accounts SELECT g, g FROM generate_series(1, 50) g; "
                      "INSERT INTO ledger (n) SELECT g FROM generate_series(1, 20) g")
    cfg = make_config(dbpair, state_dir, name=settings["ge_migration_name"])
    install_capture(cfg)
    snapshot_copy(dbpair)
    dbpair.sql_source("UPDATE accounts SET balance = balance + 1 WHERE id <= 10")  # pending at cutover
    (state_dir / "great-escape.yml").write_text(yaml.safe_dump(
        {"name": cfg.name, "source": cfg.source, "target": cfg.target, "state_dir": str(state_dir),
         "poll_interval": 0.2}))
    return cfg, role, state_dir


def _can_write(params, role):
    with psycopg.connect(**params) as conn:
        return conn.execute("SELECT has_table_privilege(%s, 'public.accounts', 'UPDATE')", (role,)).fetchone()[0]


def test_cutover_only_when_asked_refused_twice_rollback_and_cleanup(dbpair, inventory, run_playbook):
    cfg, role, state_dir = _prepare(dbpair, inventory)
    try:
        skipped = run_playbook("playbooks/09_cutover.yml")
        assert "Cutover skipped" in skipped.stdout
        assert _can_write(dbpair.source, role) and not (state_dir / "cutover-status.json").exists()

        done = run_playbook("playbooks/09_cutover.yml", extra={"ge_cutover": True})
        assert "write downtime:" in done.stdout and "the target is live" in done.stdout, done.stdout
        status = json.loads((state_dir / "cutover-status.json").read_text())
        downtime = status["switches"][-1]["downtime_seconds"]
        print(f"\nplaybook cutover write downtime: {downtime}s")
        assert status["live"] == "target" and downtime <= 5
        assert not _can_write(dbpair.source, role) and _can_write(dbpair.target, role)
        assert table_rows(dbpair.source) == {k: v for k, v in table_rows(dbpair.target).items()}
        assert daemon.running_pid(state_dir / "sync-reverse.pid")

        again = run_playbook("playbooks/09_cutover.yml", extra={"ge_cutover": True}, check=False)
        assert again.returncode != 0 and "already cut over" in again.stdout
        assert len(json.loads((state_dir / "cutover-status.json").read_text())["switches"]) == 1

        dbpair.sql_target("UPDATE accounts SET balance = -1 WHERE id = 1")
        run_playbook("playbooks/rollback.yml")
        assert dbpair.sql_source("SELECT balance FROM accounts WHERE id = 1") == [(-1,)]
        assert _can_write(dbpair.source, role) and not _can_write(dbpair.target, role)
        refused = run_playbook("playbooks/rollback.yml", check=False)
        assert refused.returncode != 0 and "no cutover is recorded" in refused.stdout

        assert "Cleanup skipped" in run_playbook("playbooks/cleanup.yml").stdout
        assert capture.registered(psycopg.connect(**dbpair.source))
        run_playbook("playbooks/cleanup.yml", extra={"ge_cleanup": True})
        for params in (dbpair.source, dbpair.target):
            assert capture.registered(psycopg.connect(**params)) == {}
            with psycopg.connect(**params) as conn:
                triggers = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'ge_capture%'").fetchone()
                assert triggers[0] == 0
                assert conn.execute("SELECT to_regnamespace('great_escape')").fetchone()[0] is None
        assert dbpair.sql_target("SELECT to_regprocedure('public.rds_session_replication_role(text)')") == [(None,)]
        assert not daemon.running_pid(state_dir / "sync-forward.pid")
    finally:
        for direction in ("forward", "reverse"):
            daemon.stop_detached(cfg, direction)
