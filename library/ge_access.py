#!/usr/bin/python
"""Ansible module ge_access: the application's roles, owners and privileges on the target."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ge_access
short_description: Carry the application's roles, owners and privileges from the source to the target
description:
  - Reads every role the replicated objects depend on (owners, grantees of the database, schemas, tables,
    columns, sequences, functions and types, default privileges, policy roles), the O(application_roles)
    and the group roles they belong to, and creates the missing ones on the O(target) as Aurora allows
    (no SUPERUSER, REPLICATION or BYPASSRLS), with their memberships, C(ALTER ROLE ... SET) settings and
    password verifiers where the source user may read C(pg_authid).
  - With O(objects=true) it then gives every replicated object its source owner (through O(role_map)) and
    makes the privileges, default privileges, row level security (enable, force, policies) and database
    settings equal to the source's, compared by meaning (one privilege of one grantee at a time), never
    by ACL text. Privileges the target has and the source has not are revoked, except from the project's
    own users (the O(target) user and O(sync_user)).
  - The master (the O(target) user) becomes a member of the roles that own objects, as on RDS, so it can
    hand objects to them and stop or give back writes at cutover and rollback.
  - Tables with row level security get a permissive policy C(great_escape_sync) for O(sync_user), which
    is neither owner nor BYPASSRLS on Aurora and must see and write every row.
  - RV(differences) lists what differs before the run; the verify phase runs this module in check mode and
    fails on any difference.
  - With O(state=absent) (cleanup) it removes only the project's own policy C(great_escape_sync); roles,
    owners and privileges stay, they are the application's.
version_added: "0.2.0"
options:
  schemas:
    description: Application schemas. Empty means every application schema.
    type: list
    elements: str
    default: []
  exclude_tables:
    description: C(schema.table) names left out of the migration.
    type: list
    elements: str
    default: []
  role_map:
    description:
      - Source role name to target role name, to rename or merge roles, for example C(postgres) to C(ge_master).
      - A source superuser that owns or holds privileges on replicated objects must be mapped (Aurora has
        no superuser); a mapped role must exist on the target.
    type: dict
    default: {}
  application_roles:
    description: The roles the application logs in as; carried over even if no object names them.
    type: list
    elements: str
    default: []
  sync_user:
    description: The replication user on the target; never revoked from, given the row level security policy.
    type: str
    required: true
  source_sync_user:
    description:
      - The source's own sync role (made by the capture phase); its grants on the source are the project's and
        are never carried over to the target.
    type: str
    default: ""
  migration_name:
    description:
      - The migration (ge_migration_name) whose cutover state is read with O(sync_password). Write privileges
        a cutover or rollback revoked on the side that is not live count as held, so they are neither reported
        as differences nor granted back before the switch gives them back.
    type: str
  sync_password:
    description: Password of O(sync_user), which owns the cutover state on the target.
    type: str
  state:
    description: V(present) carries roles and privileges over; V(absent) removes the project's policies.
    type: str
    choices: [present, absent]
    default: present
  objects:
    description:
      - Also owners, privileges, row level security and settings (after the restore).
      - V(false) for roles only (before the restore).
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    details: Reads both sides and reports the plan and the differences without changing anything.
  diff_mode:
    support: full
notes:
  - Run it where the great_escape engine is installed (the replication host, or the controller).
  - The source user must be able to read the catalog; password verifiers need a superuser there. Roles whose
    password could not be read are listed in RV(passwords_needed).
  - The target user is the master (CREATEROLE, no superuser needed).
  - Statements that set a password are never returned or logged.
seealso:
  - name: PostgreSQL privileges
    link: https://www.postgresql.org/docs/15/ddl-priv.html
  - name: aclexplode and acldefault
    link: https://www.postgresql.org/docs/15/functions-info.html
extends_documentation_fragment:
  - ge_connection
  - ge_connection.target
author:
  - great-escape contributors
"""

EXAMPLES = r"""
- name: Ensure the application's roles exist on the target
  ge_access:
    source: "{{ ge_source }}"
    target: "{{ ge_target_admin }}"
    role_map: {postgres: ge_master}
    application_roles: [app]
    sync_user: ge_repl
    objects: false

- name: Read what differs in owners and privileges
  ge_access:
    source: "{{ ge_source }}"
    target: "{{ ge_target_admin }}"
    sync_user: ge_repl
  check_mode: true
  register: verify_access_result
"""

RETURN = r"""
plan:
  description: What was done (or, in check mode, would be done), one line per statement.
  returned: always
  type: list
  elements: str
queries:
  description: The statements run (or that would run); password statements are replaced by a comment.
  returned: always
  type: list
  elements: str
differences:
  description: What differed before the run, one line per object, grantee, privilege and side.
  returned: always
  type: list
  elements: str
roles_created:
  description: Roles created (or to create) on the target.
  returned: always
  type: list
  elements: str
roles_existing:
  description: Roles the target already had.
  returned: always
  type: list
  elements: str
passwords_needed:
  description: Login roles created without a password (the source user may not read it); set them by hand.
  returned: always
  type: list
  elements: str
warnings_found:
  description: What could not be carried over exactly (attributes Aurora does not allow, settings refused).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.ge_common import connection_argument_spec, endpoints, engine_errors, engine_module


def main() -> None:
    module = engine_module(connection_argument_spec(
        "source", "target", scope=True,
        role_map=dict(type="dict", default={}),
        application_roles=dict(type="list", elements="str", default=[]),
        sync_user=dict(type="str", required=True),
        source_sync_user=dict(type="str", default=""),
        objects=dict(type="bool", default=True),
        migration_name=dict(type="str"),
        sync_password=dict(type="str", no_log=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
    ))
    from great_escape import access

    source, target = endpoints(module, "source", "target")
    with engine_errors(module, dict(changed=False, queries=[], plan=[])):
        result = access.carry_over(source, target, module.params, module.check_mode)
    result["diff"] = dict(before="", after="".join(line + "\n" for line in result["plan"]))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
