#!/usr/bin/python
"""Set parameter values in an existing Aurora/RDS DB cluster parameter group."""

from __future__ import annotations

from typing import Any

try:
    import botocore
except ImportError:
    pass  # reported by AnsibleAWSModule

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule
from ansible_collections.amazon.aws.plugins.module_utils.retries import AWSRetry

DOCUMENTATION = r"""
---
module: ge_cluster_parameters
short_description: Set parameter values in an Aurora DB cluster parameter group
description:
  - Sets the given parameters of an existing DB cluster parameter group to the given values and
    leaves every other parameter alone.
  - Exists because M(amazon.aws.rds_cluster_param_group) refuses to set a parameter it cannot find
    among the group's described parameters; it also picks no apply method by itself. This module
    takes the apply method from the parameter's C(ApplyType) (C(dynamic) -> C(immediate),
    C(static) -> C(pending-reboot)) and reports which changes wait for a reboot.
  - Create the group itself with M(amazon.aws.rds_cluster_param_group).
options:
  name:
    description: Name of the DB cluster parameter group.
    type: str
    required: true
  parameters:
    description:
      - Parameter names and the values they must have, as AWS spells them (strings; numbers in the
        parameter's unit, e.g. kB for C(maintenance_work_mem); formulas like
        C({DBInstanceClassMemory/16384}) are passed through).
    type: dict
    required: true
  apply_method:
    description:
      - C(auto) uses C(immediate) for parameters AWS describes as dynamic and C(pending-reboot) for
        static ones and for parameters whose apply type AWS does not describe.
    type: str
    choices: [auto, immediate, pending-reboot]
    default: auto
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - Runs on the controller with boto3; needs C(rds:DescribeDBClusterParameters) and
    C(rds:ModifyDBClusterParameterGroup) on the group.
  - When AWS describes the group's engine parameters (it always does; moto does not), an unknown
    parameter name or a parameter that is not modifiable fails the task before anything changes.
seealso:
  - module: amazon.aws.rds_cluster_param_group
  - name: Aurora PostgreSQL parameters
    link: https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/AuroraPostgreSQL.Reference.ParameterGroups.html
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
author:
  - great-escape
"""

EXAMPLES = r"""
- name: Ensure the cluster parameter group holds the bulk-load settings
  ge_cluster_parameters:
    name: ge-shop-aurora-postgresql15
    parameters:
      synchronous_commit: "off"
      autovacuum: "0"
  register: aurora_parameter_group_values_result
"""

RETURN = r"""
parameters:
  description: The values of the requested parameters after the change (before it in check mode).
  returned: always
  type: dict
  sample: {"synchronous_commit": "off"}
modifications:
  description: The parameter changes sent to (or, in check mode, that would be sent to) AWS.
  returned: always
  type: list
  elements: dict
  sample: [{"parameter_name": "synchronous_commit", "parameter_value": "off", "apply_method": "immediate"}]
pending_reboot:
  description: Names of the changed parameters that take effect only after the cluster's instances reboot.
  returned: always
  type: list
  elements: str
  sample: ["shared_preload_libraries"]
diff:
  description: Values of the requested parameters before and after.
  returned: always
  type: dict
"""

# modify_db_cluster_parameter_group accepts at most 20 parameters per call.
_CHUNK = 20


def _describe(module: AnsibleAWSModule, client: Any, name: str) -> dict[str, dict[str, Any]]:
    try:
        paginator = client.get_paginator("describe_db_cluster_parameters")
        pages = paginator.paginate(DBClusterParameterGroupName=name).build_full_result()
    except client.exceptions.DBParameterGroupNotFoundFault:
        module.fail_json(msg=f"DB cluster parameter group {name!r} does not exist; create it first "
                             "(amazon.aws.rds_cluster_param_group, role aurora_parameter_group)")
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
        module.fail_json_aws(e, msg=f"Couldn't describe the parameters of cluster parameter group {name!r}")
    return {p["ParameterName"]: p for p in pages.get("Parameters", [])}


def _plan(
    module: AnsibleAWSModule, current: dict[str, dict[str, Any]], desired: dict[str, str]
) -> list[dict[str, str]]:
    # Real AWS lists every engine parameter with its Source; a group without any (moto) cannot be checked.
    described = any("Source" in p for p in current.values())
    method = module.params["apply_method"]
    group = module.params["name"]
    changes = []
    for name, value in desired.items():
        param = current.get(name)
        if described and param is None:
            module.fail_json(msg=f"Parameter {name!r} does not exist in DB cluster parameter group "
                                 f"{group!r}; it may be an instance-level parameter "
                                 "(set it in a DB parameter group) or misspelt")
        if param is not None and param.get("IsModifiable") is False:
            module.fail_json(msg=f"Parameter {name!r} of DB cluster parameter group {group!r} "
                                 "is not modifiable; remove it from the settings")
        if param is not None and param.get("ParameterValue") == value:
            continue
        apply_type = (param or {}).get("ApplyType")
        if method != "auto":
            apply_method = method
        else:
            apply_method = "immediate" if apply_type == "dynamic" else "pending-reboot"
        changes.append({"ParameterName": name, "ParameterValue": value, "ApplyMethod": apply_method})
    return changes


def main() -> None:
    module = AnsibleAWSModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            parameters=dict(type="dict", required=True),
            apply_method=dict(type="str", default="auto", choices=["auto", "immediate", "pending-reboot"]),
        ),
        supports_check_mode=True,
    )
    name = module.params["name"]
    desired = {k: _as_aws_value(module, k, v) for k, v in module.params["parameters"].items()}
    client = module.client("rds", retry_decorator=AWSRetry.jittered_backoff())

    current = _describe(module, client, name)
    changes = _plan(module, current, desired)
    before = {k: current.get(k, {}).get("ParameterValue") for k in desired}
    after = {**before, **{c["ParameterName"]: c["ParameterValue"] for c in changes}}
    if changes and not module.check_mode:
        for start in range(0, len(changes), _CHUNK):
            try:
                chunk = changes[start:start + _CHUNK]
                client.modify_db_cluster_parameter_group(
                    aws_retry=True, DBClusterParameterGroupName=name, Parameters=chunk)
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
                module.fail_json_aws(e, msg=f"Couldn't set parameters of DB cluster parameter group {name!r}")
        current = _describe(module, client, name)
        after = {k: current.get(k, {}).get("ParameterValue") for k in desired}
    module.exit_json(
        changed=bool(changes),
        parameters=before if module.check_mode else after,
        modifications=[
            {"parameter_name": c["ParameterName"], "parameter_value": c["ParameterValue"],
             "apply_method": c["ApplyMethod"]}
            for c in changes
        ],
        pending_reboot=[c["ParameterName"] for c in changes if c["ApplyMethod"] == "pending-reboot"],
        diff={"before": before, "after": after},
    )


def _as_aws_value(module: AnsibleAWSModule, name: str, value: Any) -> str:
    # The RDS API takes strings; an unquoted YAML off/on arrives as a bool whose meaning is ambiguous
    # (synchronous_commit wants "off", autovacuum "0").
    if isinstance(value, bool) or value is None:
        module.fail_json(msg=f"Parameter {name!r}: give the value as a quoted string (e.g. 'off' or '0'); "
                             f"YAML turned it into {value!r}")
    return str(value)


if __name__ == "__main__":
    main()
