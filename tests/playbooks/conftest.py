"""Run the project's playbooks against the test clusters through a generated inventory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPL_PASSWORD, REPL_USER, ROOT, DbPair

ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))


def write_inventory(path: Path, pair: DbPair, work: Path, **overrides: Any) -> Path:
    """An inventory like inventories/local, pointed at `pair`'s databases and a scratch work dir."""
    path.mkdir(parents=True, exist_ok=True)
    hosts = yaml.safe_load((ROOT / "inventories/local/hosts.yml").read_text())
    (path / "hosts.yml").write_text(yaml.safe_dump(hosts))
    (path / "group_vars/all").mkdir(parents=True, exist_ok=True)
    local = yaml.safe_load((ROOT / "inventories/local/group_vars/all/main.yml").read_text())
    local.update(
        ge_migration_name=f"test-{pair.source['dbname']}",
        ge_local_clusters=False,
        ge_local_root=str(work),
        ge_source_host=pair.source["host"], ge_source_port=pair.source["port"],
        ge_source_db=pair.source["dbname"], ge_source_user=pair.source["user"],
        ge_source_password=pair.source["password"],
        ge_target_host=pair.target["host"], ge_target_port=pair.target["port"],
        ge_target_db=pair.target["dbname"], ge_target_master_user=pair.target["user"],
        ge_target_master_password=pair.target["password"],
        ge_target_user=REPL_USER, ge_target_password=REPL_PASSWORD,
    )
    local.update(overrides)
    (path / "group_vars/all/main.yml").write_text(yaml.safe_dump(local))
    return path


@pytest.fixture
def inventory(dbpair: DbPair, tmp_path: Path) -> Path:
    work = Path("/var/tmp/great-escape-tests") / f"work-{pair_name(dbpair)}"
    work.mkdir(parents=True, exist_ok=True)
    return write_inventory(tmp_path / "inventory", dbpair, work)


def pair_name(pair: DbPair) -> str:
    return str(pair.source["dbname"])


PlaybookRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_playbook(inventory: Path) -> PlaybookRunner:
    """run_playbook('playbooks/04_dump.yml', extra={'k': 'v'}, check=True) -> CompletedProcess."""

    def run(playbook: str, extra: dict[str, Any] | None = None, check: bool = True,
            inventory_path: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess[str]:
        cmd = [ANSIBLE_PLAYBOOK, "-i", str(inventory_path or inventory), str(ROOT / playbook)]
        if extra:
            cmd += ["-e", json.dumps(extra)]
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0",
                   ANSIBLE_NOCOLOR="1", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        proc = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{playbook} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")
        return proc

    return run
