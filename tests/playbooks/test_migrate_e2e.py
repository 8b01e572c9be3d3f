"""The whole forward migration through migrate.yml while an application keeps writing, then cutover and
back: the README's demo flow at a small scale, checked by the test's own row-by-row comparison."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from psycopg import sql

from great_escape import config, daemon
from tests.conftest import ROOT
from tests.integration.syncutil import assert_identical

pytestmark = pytest.mark.slow


def _workload(pair, seconds: int | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, str(ROOT / "demo/workload.py"), "--host", pair.source["host"], "--port",
            str(pair.source["port"]), "--dbname", pair.source["dbname"], "--connections", "2", "--rate", "40"]
    if seconds:
        args += ["--duration", str(seconds)]
    return subprocess.Popen(args, env=dict(os.environ, GE_SOURCE_PASSWORD=pair.source["password"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_migrate_with_writes_running(dbpair, run_playbook, inventory):
    subprocess.run([sys.executable, str(ROOT / "demo/sample.py"), "--host", dbpair.source["host"], "--port",
                    str(dbpair.source["port"]), "--dbname", dbpair.source["dbname"], "--scale", "0.01"],
                   env=dict(os.environ, GE_SOURCE_PASSWORD=dbpair.source["password"]), check=True,
                   capture_output=True)
    workload = _workload(dbpair)
    try:
        result = run_playbook("migrate.yml", extra={"ge_sync_max_lag": 5})
        assert "Cutover skipped" in result.stdout
    finally:
        workload.send_signal(signal.SIGTERM)
        out, err = workload.communicate(timeout=60)
    assert workload.returncode == 0, err[-2000:]
    local = yaml.safe_load((inventory / "group_vars/all/main.yml").read_text())
    cfg = config.load(Path(local["ge_local_root"]) / "state" / "great-escape.yml")
    run_playbook("playbooks/07_sync.yml", extra={"sync_state": "stopped"})
    daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    assert_identical(dbpair)
    # Nothing the project installs on the source reached the target through the dump.
    assert dbpair.sql_target("SELECT count(*) FROM pg_namespace WHERE nspname = 'ge_capture'")[0][0] == 0
    assert dbpair.sql_target("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'ge\\_%'")[0][0] == 0
    assert dbpair.sql_target("SELECT count(*) FROM pg_event_trigger")[0][0] == 0



def _run_until(cmd: list[str], env: dict[str, str], marker: str, delay: float) -> None:
    """Run ansible-playbook and kill it (the whole process group, as a lost terminal would) `delay`
    seconds after a line containing `marker` appears."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if marker in line:
            time.sleep(delay)
            break
    else:
        raise AssertionError(f"the run ended before {marker!r}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_migrate_killed_during_dump_and_restore_then_run_again(dbpair, run_playbook, inventory):
    subprocess.run([sys.executable, str(ROOT / "demo/sample.py"), "--host", dbpair.source["host"], "--port",
                    str(dbpair.source["port"]), "--dbname", dbpair.source["dbname"], "--scale", "0.01"],
                   env=dict(os.environ, GE_SOURCE_PASSWORD=dbpair.source["password"]), check=True,
                   capture_output=True)
    cmd = [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(inventory), str(ROOT / "migrate.yml")]
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    workload = _workload(dbpair)
    try:
        _run_until(cmd, env, "TASK [dump : Ensure the schema sections are dumped and the dump sealed]", 0.2)
        _run_until(cmd, env, "TASK [restore : Follow the chunked copy until it ends]", 1.0)
        run_playbook("migrate.yml", extra={"ge_sync_max_lag": 5})
    finally:
        workload.send_signal(signal.SIGTERM)
        workload.communicate(timeout=60)
    local = yaml.safe_load((inventory / "group_vars/all/main.yml").read_text())
    cfg = config.load(Path(local["ge_local_root"]) / "state" / "great-escape.yml")
    run_playbook("playbooks/07_sync.yml", extra={"sync_state": "stopped"})
    daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    assert_identical(dbpair)


def _app_workload(params: dict[str, Any], seconds: int | None = None) -> subprocess.Popen[str]:
    """The demo workload logged in as the application's own role (its password, its privileges only)."""
    args = [sys.executable, str(ROOT / "demo/workload.py"), "--host", params["host"], "--port", str(params["port"]),
            "--dbname", params["dbname"], "--user", params["user"], "--connections", "2", "--rate", "40",
            "--report", "1"]
    if seconds:
        args += ["--duration", str(seconds)]
    return subprocess.Popen(args, env=dict(os.environ, GE_SOURCE_PASSWORD=params["password"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _totals(proc: subprocess.Popen[str], stop: bool = False) -> dict[str, int]:
    if stop:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    totals = json.loads(out.strip().splitlines()[-1])
    totals["ops"] = sum(v for k, v in totals.items() if k.startswith(("insert_", "update_", "delete_")))
    return totals


def test_the_application_moves_with_its_data(dbpair, run_playbook, inventory, tmp_path):
    """The application's role exists on the source only: the migration creates it on the target with its
    privileges, the cutover moves the application's writes there, rollback and cutover again keep it working.
    Nothing is granted to it on the target by anyone but the playbooks."""
    subprocess.run([sys.executable, str(ROOT / "demo/sample.py"), "--host", dbpair.source["host"], "--port",
                    str(dbpair.source["port"]), "--dbname", dbpair.source["dbname"], "--scale", "0.01"],
                   env=dict(os.environ, GE_SOURCE_PASSWORD=dbpair.source["password"]), check=True,
                   capture_output=True)
    role = f"shop_{dbpair.source['dbname']}"
    dbpair.sql_source(sql.SQL(
        "CREATE ROLE {r} LOGIN PASSWORD 'shop-app-secret'; GRANT USAGE ON SCHEMA shop, analytics TO {r}; "
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA shop, analytics TO {r}; "
        "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA shop, analytics TO {r}").format(
        r=sql.Identifier(role)).as_string(None))
    assert dbpair.sql_target("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == [(0,)]
    app_source = {**dbpair.source, "user": role, "password": "shop-app-secret"}
    app_target = {**dbpair.target, "user": role, "password": "shop-app-secret"}
    extra = {"ge_application_roles": [role], "ge_sync_max_lag": 5}
    local = yaml.safe_load((inventory / "group_vars/all/main.yml").read_text())
    workload = _app_workload(app_source)
    try:
        run_playbook("migrate.yml", extra=extra)
        cut = run_playbook("playbooks/09_cutover.yml", extra={**extra, "ge_cutover": True})
        assert "the target is live" in cut.stdout
    finally:
        before = _totals(workload, stop=True)
    # It wrote until the cutover stopped it: its sessions were ended (disconnected) and, if it got to try
    # again before it was told to stop, its writes were refused.
    assert before["ops"] > 20 and before.get("refused", 0) + before.get("disconnected", 0) > 0, before
    cfg = config.load(Path(local["ge_local_root"]) / "state" / "great-escape.yml")
    try:
        on_target = _totals(_app_workload(app_target, seconds=5))
        assert on_target["ops"] > 20 and not on_target.get("refused"), on_target
        run_playbook("playbooks/rollback.yml", extra=extra)
        on_source = _totals(_app_workload(app_source, seconds=5))
        assert on_source["ops"] > 20 and not on_source.get("refused"), on_source
        run_playbook("playbooks/09_cutover.yml", extra={**extra, "ge_cutover": True})
        again = _totals(_app_workload(app_target, seconds=3))
        assert again["ops"] > 10 and not again.get("refused"), again
        verify = run_playbook("playbooks/08_verify.yml", extra={**extra, "verify_recheck_wait": 1})
        assert "The target grants the application what the source does." in verify.stdout
    finally:
        for direction in ("forward", "reverse"):
            daemon.stop_detached(cfg, direction)
    print(f"\napplication commits: {before['ops']} on the source before the cutover, {on_target['ops']} on the "
          f"target, {on_source['ops']} on the source after rollback, {again['ops']} on the target again")
