"""The restore phase's switch of the Aurora cluster parameter group (playbooks/06_restore.yml) against a
real moto server, run through ansible-playbook with the moto inventory.

moto has no database to restore into, so tests/aws/roles/restore stands in for the restore role
(ANSIBLE_ROLES_PATH puts it first): it records the group's values while it "restores", then fails on
request or leaves the restore's post-data marker, as the real role does when it finishes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.aws.conftest import BULK_LOAD, CLUSTER, GROUP, PRODUCTION, Moto, PlaybookRunner
from tests.conftest import ROOT

RESTORE = "playbooks/06_restore.yml"
STUB_RESTORE = {"ANSIBLE_ROLES_PATH": f"{ROOT / 'tests/aws/roles'}:{ROOT / 'roles'}"}


@pytest.fixture
def restore_work(moto: Moto, moto_root: Path) -> Path:
    """The cluster and its parameter group in production mode, as the provision phase leaves them, and an
    empty restore work directory (restore_work_dir) on the replication host."""
    rds = moto.client("rds")
    rds.create_db_cluster_parameter_group(
        DBClusterParameterGroupName=GROUP, DBParameterGroupFamily="aurora-postgresql15",
        Description="great-escape moto-demo: bulk-load and production settings")
    moto.set_cluster_parameters(PRODUCTION)
    rds.create_db_cluster(DBClusterIdentifier=CLUSTER, Engine="aurora-postgresql", EngineVersion="15.4",
                          MasterUsername="ge_master", MasterUserPassword="ge-moto-secret",
                          DBClusterParameterGroupName=GROUP)
    rds.create_db_instance(DBInstanceIdentifier=f"{CLUSTER}-1", DBClusterIdentifier=CLUSTER,
                           Engine="aurora-postgresql", DBInstanceClass="db.t4g.medium")
    work = moto_root / "replication" / "restore"
    shutil.rmtree(work, ignore_errors=True)
    return work


def _during_restore(work: Path) -> dict[str, str]:
    return json.loads((work / "parameters-during-restore.json").read_text())


def test_restore_loads_in_bulk_load_and_always_ends_in_production(
        moto: Moto, run_playbook: PlaybookRunner, restore_work: Path) -> None:
    # A restore that fails: bulk_load while it ran, production again when the run ends.
    failed = run_playbook(RESTORE, extra={"restore_stub_fail": True}, env=STUB_RESTORE, expect_ok=False)
    assert "restore stub failing on purpose" in failed.output
    assert _during_restore(restore_work) == BULK_LOAD
    assert moto.cluster_parameters() == PRODUCTION
    assert not (restore_work / "post-data.done").exists()

    # A run killed during the restore leaves bulk_load behind; the next run restores in bulk_load and
    # ends in production.
    moto.set_cluster_parameters(BULK_LOAD)
    run_playbook(RESTORE, env=STUB_RESTORE)
    assert _during_restore(restore_work) == BULK_LOAD
    assert moto.cluster_parameters() == PRODUCTION
    assert (restore_work / "post-data.done").exists()

    # Once the restore has finished, a re-run does not switch to bulk_load again and changes nothing.
    again = run_playbook(RESTORE, env=STUB_RESTORE)
    assert "is not switched to bulk_load again" in again.output
    assert _during_restore(restore_work) == PRODUCTION
    assert moto.cluster_parameters() == PRODUCTION
    assert again.recap()["replication"]["changed"] == 0, again.output


def test_restore_without_aws_leaves_the_parameter_group_alone(
        moto: Moto, run_playbook: PlaybookRunner, restore_work: Path) -> None:
    # ge_aws_enabled false (inventories/local): the restore runs, the group is not touched.
    moto.set_cluster_parameters(BULK_LOAD)
    run = run_playbook(RESTORE, extra={"ge_aws_enabled": False}, env=STUB_RESTORE)
    assert "aurora_parameter_group :" not in run.output
    assert (restore_work / "post-data.done").exists()
    assert moto.cluster_parameters() == BULK_LOAD
