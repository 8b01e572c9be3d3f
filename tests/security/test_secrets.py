"""No password in any argv, environment, Ansible output or leftover file (issue 13, secrets).

The tests give the roles on this session's clusters passwords of their own, so that finding one anywhere
(another test's processes included) can only be a leak of this run; -vvv output is searched whole, and
/proc/*/cmdline and /proc/*/environ of every process are read while the playbooks and the reverse sync run.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from bench import common as bench_common
from great_escape import config, daemon
from great_escape.localcluster import LocalCluster
from tests.conftest import REPL_PASSWORD, REPL_USER, ROOT, DbPair
from tests.integration.syncutil import setup_schema, snapshot_copy, table_rows


@dataclass
class Secrets:
    pair: DbPair
    inventory: Path
    work: Path

    @property
    def passwords(self) -> dict[str, str]:
        return {"source": str(self.pair.source["password"]), "target master": str(self.pair.target["password"]),
                "replication user": str(self.pair.repl["password"])}


def _superuser(cluster: LocalCluster, dbname: str = "postgres") -> dict[str, Any]:
    return {"host": str(cluster.datadir), "port": cluster.port, "user": "postgres", "dbname": dbname}


def _set_password(cluster: LocalCluster, role: str, password: str) -> None:
    """A role cleanup dropped (the replication user) is left dropped: the dbpair fixture makes it again."""
    with psycopg.connect(**_superuser(cluster), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))


def _write_inventory(s_pair: DbPair, path: Path, work: Path, **overrides: Any) -> Path:
    return bench_common.write_inventory(path, s_pair.source, s_pair.target, work, REPL_USER,
                                        str(s_pair.repl["password"]), **overrides)


@pytest.fixture
def secret_pair(dbpair: DbPair, source_cluster: LocalCluster, aurora_cluster: LocalCluster,
                tmp_path: Path) -> Iterator[Secrets]:
    """dbpair with passwords used nowhere else (source superuser, target master, replication user), and an
    inventory for it; the clusters' usual passwords come back afterwards."""
    fresh = {name: f"{name}-{secrets.token_hex(8)}" for name in ("srcpw", "masterpw", "replpw")}
    changes = [(source_cluster, str(dbpair.source["user"]), fresh["srcpw"], source_cluster.password),
               (aurora_cluster, str(dbpair.target["user"]), fresh["masterpw"], aurora_cluster.password),
               (aurora_cluster, REPL_USER, fresh["replpw"], REPL_PASSWORD)]
    pair = DbPair({**dbpair.source, "password": fresh["srcpw"]}, {**dbpair.target, "password": fresh["masterpw"]},
                  {**dbpair.repl, "password": fresh["replpw"]})
    work = Path("/var/tmp/great-escape-tests") / f"secrets-{dbpair.source['dbname']}"
    work.mkdir(parents=True, exist_ok=True)
    for cluster, role, password, _ in changes:
        _set_password(cluster, role, password)
    try:
        yield Secrets(pair, _write_inventory(pair, tmp_path / "inventory", work), work)
    finally:
        state = work / "state" / "great-escape.yml"
        if state.exists():
            cfg = config.load(state)
            for direction in ("forward", "reverse"):
                daemon.stop_detached(cfg, direction)
        for cluster, role, _, password in changes:
            _set_password(cluster, role, password)
        subprocess.run(["rm", "-rf", str(work)], check=False)


def _playbook(inventory: Path, playbook: str, extra: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """ansible-playbook -vvv; extra vars must hold no secret (they are on the command line)."""
    cmd = [bench_common.ANSIBLE_PLAYBOOK, "-vvv", "-i", str(inventory), str(ROOT / playbook)]
    if extra:
        cmd += ["-e", json.dumps(extra)]
    return subprocess.run(cmd, cwd=ROOT, env=bench_common.playbook_env(), text=True, capture_output=True,
                          timeout=900)


def _leaks(text: str, passwords: dict[str, str]) -> list[str]:
    found = []
    for name, password in passwords.items():
        at = text.find(password)
        if at >= 0:
            found.append(f"the {name} password in: ...{text[max(0, at - 300):at + 40]!r}")
    return found


def _proc_snapshot(passwords: dict[str, str]) -> list[str]:
    """Every process's argv and environment (what `ps e` shows) that holds one of the passwords."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        for what in ("cmdline", "environ"):
            try:
                data = (proc / what).read_bytes()
            except OSError:
                continue
            for name, password in passwords.items():
                if password.encode() in data:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ")[:200] if what == "environ" else data
                    found.append(f"the {name} password in /proc/{proc.name}/{what} ({cmd!r})")
    return found


class ProcWatch:
    """Snapshots of /proc taken every 0.1 s in the background while the block runs."""

    def __init__(self, passwords: dict[str, str]):
        self.passwords = passwords
        self.found: list[str] = []
        self.snapshots = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for hit in _proc_snapshot(self.passwords):
                if hit not in self.found:
                    self.found.append(hit)
            self.snapshots += 1
            self._stop.wait(0.1)

    def __enter__(self) -> ProcWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _check(proc: subprocess.CompletedProcess[str], secrets_: Secrets, *, ok: bool) -> None:
    text = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == ok, f"rc {proc.returncode}:\n{text[-5000:]}"
    leaks = _leaks(text, secrets_.passwords)
    assert not leaks, "\n".join(leaks)


def _reverse_sync_pids(state_dir: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--reverse" in cmdline and str(state_dir / "great-escape.yml").encode() in cmdline:
            pids.append(int(proc.name))
    return pids


def test_cutover_and_the_reverse_sync_it_starts_hold_no_password_in_ps_or_verbose_output(secret_pair):
    s = secret_pair
    pair, state_dir = s.pair, s.work / "state"
    setup_schema(pair, "CREATE TABLE accounts (id int PRIMARY KEY, balance int)")
    role = f"app_{pair.source['dbname']}"
    for run in (pair.sql_source, pair.sql_target):
        run(sql.SQL("CREATE ROLE {r} LOGIN; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public "
                    "TO {r}").format(r=sql.Identifier(role)).as_string(None))
    pair.sql_source("INSERT INTO accounts SELECT g, g FROM generate_series(1, 30) g")
    _check(_playbook(s.inventory, "playbooks/03_capture.yml"), s, ok=True)
    snapshot_copy(pair)  # (its pg_dump and psql take PGPASSWORD: done before anything is watched)
    pair.sql_source("UPDATE accounts SET balance = 0 WHERE id <= 5")
    with ProcWatch(s.passwords) as watch:
        _check(_playbook(s.inventory, "playbooks/07_sync.yml", {"ge_sync_max_lag": 1}), s, ok=True)
        _check(_playbook(s.inventory, "playbooks/09_cutover.yml", {"ge_cutover": True}), s, ok=True)
        assert not (state_dir / "cutover-target-admin.password").exists()
        # The reverse sync runs (supervisor and sync process) and applies a change made on the target.
        deadline = time.monotonic() + 30
        while len(_reverse_sync_pids(state_dir)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_reverse_sync_pids(state_dir)) >= 2, "the reverse sync is not running"
        pair.sql_target("UPDATE accounts SET balance = -7 WHERE id = 7")
        while pair.sql_source("SELECT balance FROM accounts WHERE id = 7") != [(-7,)]:
            assert time.monotonic() < deadline + 30, "the reverse sync did not apply a change"
            time.sleep(0.2)
        # A failing switch, verbose: refused as the target is live already.
        again = _playbook(s.inventory, "playbooks/09_cutover.yml", {"ge_cutover": True})
        _check(again, s, ok=False)
        assert "already cut over" in again.stdout
        final = _proc_snapshot(s.passwords)
    assert watch.snapshots > 20
    assert not watch.found + final, "\n".join(watch.found + final)
    assert table_rows(pair.source) == table_rows(pair.target)
    for path in state_dir.iterdir():  # only the 0600 password file of the sync holds passwords
        text = path.read_text(errors="replace") if path.is_file() else ""
        if path.name != "pgpass":
            assert not _leaks(text, s.passwords), path


def test_failing_cleanup_and_cutover_print_no_password_even_with_vvv(secret_pair, tmp_path):
    s = secret_pair
    wrong = {**s.pair.target, "password": f"wrong-master-{secrets.token_hex(8)}"}
    inventory = bench_common.write_inventory(tmp_path / "wrong", s.pair.source, wrong, s.work, REPL_USER,
                                             str(s.pair.repl["password"]))
    passwords = {**s.passwords, "wrong master": str(wrong["password"])}
    cleanup = _playbook(inventory, "playbooks/cleanup.yml", {"ge_cleanup": True})
    assert cleanup.returncode != 0
    assert "password authentication failed" in cleanup.stdout or "password was refused" in cleanup.stdout, \
        cleanup.stdout[-3000:]
    cutover = _playbook(inventory, "playbooks/09_cutover.yml", {"ge_cutover": True})
    assert cutover.returncode != 0
    for proc in (cleanup, cutover):
        leaks = _leaks(proc.stdout + proc.stderr, passwords)
        assert not leaks, "\n".join(leaks)


def _fill(paths: list[Path]) -> None:
    for path in paths:
        if path.suffix in (".pgpass", ".password", ".json") or path.name == "pgpass":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")
            path.chmod(0o600)
        else:
            (path / "sub").mkdir(parents=True, exist_ok=True)
            (path / "sub" / "file").write_text("x")


@pytest.mark.parametrize("keep_dumps", [False, True])
def test_cleanup_removes_password_files_work_directories_and_the_dumps_unless_kept(secret_pair, keep_dumps):
    s = secret_pair
    w = s.work
    dumps = [w / "dump", w / "replication" / "dump", w / "replication" / "dump.done.json",
             w / "replication" / "transfer.done.json"]
    work = [w / "dump.pgpass", w / "dump.transfer", w / "replication" / "restore", w / "replication" / "dump.pgpass"]
    passwords = [w / "state" / "pgpass", w / "replication" / "restore" / "pgpass"]
    _fill(dumps + work + passwords)
    kept = w / "state" / "cutover-status.json"
    kept.write_text("{}")
    extra: dict[str, Any] = {"ge_cleanup": True}
    if keep_dumps:
        extra["cleanup_keep_dumps"] = True
    proc = _playbook(s.inventory, "playbooks/cleanup.yml", extra)
    _check(proc, s, ok=True)
    left = [str(p) for p in work + passwords if p.exists()]
    assert not left, f"cleanup left {left}"
    if keep_dumps:
        assert all(p.exists() for p in dumps)
    else:
        assert not [str(p) for p in dumps if p.exists()]
    assert kept.exists()  # the record of the switches stays
