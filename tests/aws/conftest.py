"""A real moto server for the AWS roles, and a runner for the project's playbooks against it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import ROOT

BIN = Path(sys.executable).parent
REGION = "eu-west-1"
INVENTORY = ROOT / "inventories/moto"
# The brief's range for moto servers is 57300-57399: two ports per pytest process.
PORT_BASE = int(os.environ.get("GE_MOTO_PORT_BASE", 57300 + os.getpid() % 50 * 2))
_RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)

# What inventories/moto provisions: the Aurora cluster and its cluster parameter group, and the group's
# values in the two modes of roles/aurora_parameter_group.
CLUSTER = "ge-moto-demo"
GROUP = "ge-moto-demo-aurora-postgresql15"
# rds.force_ssl = 1 in both modes (aurora_parameter_group_common): Aurora accepts only TLS (issue 13 item 4).
PRODUCTION = {"synchronous_commit": "on", "autovacuum": "1",
              "maintenance_work_mem": "GREATEST({DBInstanceClassMemory*1024/63963136},65536)", "rds.force_ssl": "1"}
BULK_LOAD = {"synchronous_commit": "off", "autovacuum": "0", "maintenance_work_mem": "2097152", "rds.force_ssl": "1"}


@dataclass
class Moto:
    url: str
    process: subprocess.Popen[bytes]

    def client(self, service: str, key: str = "testing", secret: str = "testing") -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id=key, aws_secret_access_key=secret)

    def cluster_parameters(self, group: str = GROUP) -> dict[str, str]:
        """The values set in a DB cluster parameter group, read back from the server."""
        rows = self.client("rds").describe_db_cluster_parameters(DBClusterParameterGroupName=group)["Parameters"]
        return {p["ParameterName"]: p["ParameterValue"] for p in rows}

    def set_cluster_parameters(self, values: dict[str, str], group: str = GROUP) -> None:
        self.client("rds").modify_db_cluster_parameter_group(DBClusterParameterGroupName=group, Parameters=[
            {"ParameterName": k, "ParameterValue": v, "ApplyMethod": "immediate"} for k, v in values.items()])

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).close()


def start_moto(port: int, log: Path, **env: str) -> Moto:
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1).close()
            return Moto(url, proc)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server on port {port} did not start:\n{log.read_text()}") from None
            time.sleep(0.1)


def stop_moto(moto: Moto) -> None:
    moto.process.terminate()
    moto.process.wait(timeout=10)


@pytest.fixture(scope="session")
def moto_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("moto-root")


@pytest.fixture(scope="session")
def checkout_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The engine source as of the session start: the replication_host role installs from it, so
    edits to the shared tree during the run cannot make the idempotence run reinstall."""
    snap = tmp_path_factory.mktemp("checkout")
    shutil.copytree(ROOT / "src/great_escape", snap / "src/great_escape",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "requirements.txt"):
        shutil.copy2(ROOT / name, snap / name)
    return snap


@pytest.fixture(scope="session")
def moto_session(moto_root: Path) -> Iterator[Moto]:
    moto = start_moto(PORT_BASE, moto_root / "moto.log")
    yield moto
    stop_moto(moto)


@pytest.fixture
def moto(moto_session: Moto) -> Moto:
    moto_session.reset()
    return moto_session


@dataclass
class Run:
    returncode: int
    output: str

    def recap(self) -> dict[str, dict[str, int]]:
        return {m[1]: dict(ok=int(m[2]), changed=int(m[3]), unreachable=int(m[4]), failed=int(m[5]))
                for m in _RECAP.finditer(self.output)}


PlaybookRunner = Callable[..., Run]


@pytest.fixture
def run_playbook(moto: Moto, moto_root: Path, checkout_snapshot: Path) -> PlaybookRunner:
    """run_playbook('playbooks/01_provision.yml', extra={...}, check=False, env={...}) -> Run."""

    def run(playbook: str, extra: dict[str, Any] | None = None, expect_ok: bool = True,
            args: list[str] | None = None, env: dict[str, str] | None = None, url: str | None = None) -> Run:
        cmd = [str(BIN / "ansible-playbook"), "-i", str(INVENTORY), str(ROOT / playbook), *(args or [])]
        cmd += ["-e", json.dumps({"replication_host_project_root": str(checkout_snapshot), **(extra or {})})]
        full_env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
                    "ANSIBLE_FORCE_COLOR": "0", "PATH": f"{BIN}:{os.environ['PATH']}",
                    "GE_AWS_ENDPOINT_URL": url or moto.url, "GE_MOTO_ROOT": str(moto_root),
                    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", **(env or {})}
        proc = subprocess.run(cmd, cwd=ROOT, env=full_env, text=True, capture_output=True, timeout=600)
        result = Run(proc.returncode, proc.stdout + proc.stderr)
        if expect_ok and proc.returncode != 0:
            raise AssertionError(f"{playbook} failed ({proc.returncode}):\n{result.output[-8000:]}")
        if not expect_ok and proc.returncode == 0:
            raise AssertionError(f"{playbook} succeeded but should have failed:\n{result.output[-4000:]}")
        return result

    return run
