"""The provision phase and the AWS cleanup against a real moto server (moto_server), run through
ansible-playbook with the moto inventory exactly as a user would run them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from great_escape import __version__
from tests.aws.conftest import (
    BULK_LOAD,
    CLUSTER,
    GROUP,
    PORT_BASE,
    PRODUCTION,
    Moto,
    PlaybookRunner,
    start_moto,
    stop_moto,
)

MIGRATION = "moto-demo"
TAG = [{"Name": "tag:ge:migration", "Values": [MIGRATION]}]
LIVE = [{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]


def _instances(moto: Moto) -> list[dict]:
    pages = moto.client("ec2").describe_instances(Filters=TAG + LIVE)["Reservations"]
    return [i for r in pages for i in r["Instances"]]


def test_provision_is_idempotent_switches_modes_and_cleans_up(
        moto: Moto, run_playbook: PlaybookRunner, moto_root: Path) -> None:
    first = run_playbook("playbooks/01_provision.yml")
    assert first.recap()["localhost"]["changed"] > 0
    second = run_playbook("playbooks/01_provision.yml")
    # The SSH trust play (source -> replication) runs on the source host too, and changes nothing either.
    assert {h: r["changed"] for h, r in second.recap().items()} == {"localhost": 0, "replication": 0, "source": 0}, \
        second.output

    ec2, rds = moto.client("ec2"), moto.client("rds")
    vpcs = ec2.describe_vpcs(Filters=TAG)["Vpcs"]
    assert [v["CidrBlock"] for v in vpcs] == ["10.42.0.0/16"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpcs[0]["VpcId"]]}])["Subnets"]
    assert sorted(s["CidrBlock"] for s in subnets) == ["10.42.1.0/24", "10.42.2.0/24"]

    (instance,) = _instances(moto)
    assert instance["InstanceType"] == "t3.medium"
    assert instance["KeyName"] == "ge-moto-demo"
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags == {"Name": "ge-moto-demo-replication", "ge:migration": MIGRATION, "ge:role": "replication"}
    volumes = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in instance["BlockDeviceMappings"]}
    (data,) = ec2.describe_volumes(VolumeIds=[volumes["/dev/sdf"]])["Volumes"]
    # 200 GiB dump estimate x 1.3 = 260 GiB, gp3.
    assert (data["Size"], data["VolumeType"], data["Encrypted"]) == (260, "gp3", True)

    (sg,) = ec2.describe_security_groups(GroupIds=[g["GroupId"] for g in instance["SecurityGroups"]])["SecurityGroups"]
    ingress = [(r["IpProtocol"], r["FromPort"], [c["CidrIp"] for c in r["IpRanges"]]) for r in sg["IpPermissions"]]
    assert ingress == [("tcp", 22, ["198.51.100.0/24"])]
    egress = sorted((r["FromPort"], tuple(c["CidrIp"] for c in r["IpRanges"])) for r in sg["IpPermissionsEgress"])
    assert egress == [(80, ("0.0.0.0/0",)), (443, ("0.0.0.0/0",)), (5432, ("10.42.0.0/16",))]
    assert [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]] == ["ge-moto-demo"]

    (group,) = rds.describe_db_cluster_parameter_groups(DBClusterParameterGroupName=GROUP)["DBClusterParameterGroups"]
    assert group["DBParameterGroupFamily"] == "aurora-postgresql15"
    assert moto.cluster_parameters() == PRODUCTION
    (cluster,) = rds.describe_db_clusters(DBClusterIdentifier=CLUSTER)["DBClusters"]
    assert cluster["DBClusterParameterGroup"] == GROUP
    assert cluster["Engine"] == "aurora-postgresql"
    assert [m["DBInstanceIdentifier"] for m in cluster["DBClusterMembers"]] == ["ge-moto-demo-1"]
    assert "apply parameter group ge-moto-demo-aurora-postgresql15 only after a reboot" in first.output

    # The engine landed in the venv that ge_engine_python names, from this checkout.
    engine = moto_root / "engine/venv/bin/python"
    out = subprocess.run([str(engine), "-c", "import great_escape, psycopg; print(great_escape.__version__)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == __version__

    # The restore phase's switch: check mode reports a change and changes nothing.
    check = run_playbook("tests/aws/playbooks/parameter_group.yml", args=["--check", "--diff"],
                         extra={"aurora_parameter_group_mode": "bulk_load"})
    assert check.recap()["localhost"]["changed"] >= 1
    assert moto.cluster_parameters() == PRODUCTION
    # moto describes no apply types, so the module treats the changes as static: reboot them.
    bulk = run_playbook("tests/aws/playbooks/parameter_group.yml",
                        extra={"aurora_parameter_group_mode": "bulk_load", "aurora_parameter_group_reboot": "reboot"})
    assert moto.cluster_parameters() == BULK_LOAD
    assert "changed: [localhost] => (item=ge-moto-demo-1)" in bulk.output
    again = run_playbook("tests/aws/playbooks/parameter_group.yml", extra={"aurora_parameter_group_mode": "bulk_load"})
    assert again.recap()["localhost"]["changed"] == 0

    run_playbook("playbooks/cleanup_aws.yml", extra={"ge_cleanup_aws_cluster": True})
    assert _instances(moto) == []
    assert ec2.describe_key_pairs()["KeyPairs"] == []
    assert ec2.describe_security_groups(Filters=TAG)["SecurityGroups"] == []
    assert ec2.describe_vpcs(Filters=TAG)["Vpcs"] == []
    assert rds.describe_db_clusters()["DBClusters"] == []
    assert rds.describe_db_instances()["DBInstances"] == []
    assert rds.describe_db_subnet_groups()["DBSubnetGroups"] == []
    assert [g["DBClusterParameterGroupName"] for g in
            rds.describe_db_cluster_parameter_groups()["DBClusterParameterGroups"]
            if g["DBClusterParameterGroupName"].startswith("ge-")] == []


def test_unknown_engine_version_fails_before_creating_anything(moto: Moto, run_playbook: PlaybookRunner) -> None:
    run = run_playbook("playbooks/01_provision.yml", extra={"ge_target_engine_version": "9.9"}, expect_ok=False)
    assert 'Unknown Aurora PostgreSQL engine version "9.9"' in run.output
    assert "no cluster parameter group family aurora-postgresql9" in run.output
    assert moto.client("ec2").describe_vpcs(Filters=TAG)["Vpcs"] == []


def test_missing_subnet_is_named(moto: Moto, run_playbook: PlaybookRunner) -> None:
    run = run_playbook("playbooks/01_provision.yml", expect_ok=False, extra={
        "ec2_replication_host_create_network": False, "ge_aws_subnet_id": "subnet-0123456789abcdef0"})
    assert "Subnet subnet-0123456789abcdef0 (ge_aws_subnet_id) does not exist in region eu-west-1" in run.output
    assert _instances(moto) == []


def test_wrong_credentials_are_refused(run_playbook: PlaybookRunner, moto_root: Path) -> None:
    # A second server that enforces IAM auth after the three calls that create the one valid key.
    auth = start_moto(PORT_BASE + 1, moto_root / "moto-auth.log", INITIAL_NO_AUTH_ACTION_COUNT="3")
    try:
        iam = auth.client("iam")
        iam.create_user(UserName="ge")
        iam.put_user_policy(UserName="ge", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="ge")["AccessKey"]
        run = run_playbook("playbooks/01_provision.yml", url=auth.url, expect_ok=False,
                           env={"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG0", "AWS_SECRET_ACCESS_KEY": "wrong"})
        assert "AWS was not able to validate the provided access credentials" in run.output
        good = auth.client("ec2", key["AccessKeyId"], key["SecretAccessKey"])
        assert good.describe_vpcs(Filters=TAG)["Vpcs"] == []
    finally:
        stop_moto(auth)
