"""Run the project's playbooks against the test clusters through a generated inventory."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench import common as bench_common
from tests.conftest import REPL_PASSWORD, REPL_USER, ROOT, DbPair


def write_inventory(path: Path, pair: DbPair, work: Path, **overrides: Any) -> Path:
    """An inventory like inventories/local, pointed at `pair`'s databases and a scratch work dir."""
    return bench_common.write_inventory(path, pair.source, pair.target, work, REPL_USER, REPL_PASSWORD, **overrides)


@pytest.fixture
def inventory(dbpair: DbPair, tmp_path: Path) -> Path:
    work = Path("/var/tmp/great-escape-tests") / f"work-{pair_name(dbpair)}"
    work.mkdir(parents=True, exist_ok=True)
    return write_inventory(tmp_path / "inventory", dbpair, work)


def pair_name(pair: DbPair) -> str:
    return str(pair.source["dbname"])


def crashing_pg_restore(directory: Path, step_list: str) -> Path:
    """pg_restore (for the role's restore_pg_restore) that runs for real, then, after restoring with the TOC list
    `step_list` (e.g. data.list), reports failure: a step that died late, its work done but not marked."""
    script = directory / f"pg_restore_crashes_after_{step_list}"
    script.write_text('#!/bin/bash\npg_restore "$@" || exit\n'
                      f'case " $* " in *" --use-list="*/{step_list}" "*) echo "simulated crash" >&2; exit 1;; esac\n')
    script.chmod(0o755)
    return script


def recorded(state_dir: Path, phase: str) -> dict[str, Any]:
    """`phase`'s progress record in `state_dir`, as `great-escape progress show --json` tells it."""
    shown = subprocess.run([sys.executable, "-m", "great_escape.cli", "progress", "show", "--json", "--state-dir",
                            str(state_dir)], capture_output=True, text=True, check=True).stdout
    return dict(next(p for p in json.loads(shown) if p["phase"] == phase))


PlaybookRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_playbook(inventory: Path) -> PlaybookRunner:
    """run_playbook('playbooks/04_dump.yml', extra={'k': 'v'}, check=True, args=('--check',)) -> CompletedProcess;
    `check` asks for a zero exit status, `args` go to ansible-playbook."""

    def run(playbook: str, extra: dict[str, Any] | None = None, check: bool = True,
            inventory_path: Path | None = None, timeout: int = 900,
            args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        cmd = [bench_common.ANSIBLE_PLAYBOOK, "-i", str(inventory_path or inventory), str(ROOT / playbook), *args]
        if extra:
            cmd += ["-e", json.dumps(extra)]
        proc = subprocess.run(cmd, cwd=ROOT, env=bench_common.playbook_env(), text=True, capture_output=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{playbook} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")
        return proc

    return run
