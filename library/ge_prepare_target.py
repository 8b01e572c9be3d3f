#!/usr/bin/python
"""Ansible module ge_prepare_target: the replication user's database privileges and the state schema on the
target."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ge_prepare_target
short_description: Give the replication user what the sync needs on the target database, and no more
description:
  - Connected as the target's master user, grants O(user) CONNECT and TEMPORARY on the database and
    revokes CREATE on it (which earlier versions granted; applying changes needs none).
  - Creates the schema C(great_escape) with the sync's progress tables once, owned by the master, and
    lets O(user) write those tables (USAGE and CREATE on the schema, DML on the tables), so the sync
    never needs to create anything in the application's database.
  - The role itself is made by the prepare-target role (community.postgresql.postgresql_user); table
    privileges come with the restore (ge_restore step=grant).
version_added: "0.1.0"
options:
  user:
    description: The replication user the sync logs in as.
    type: str
    required: true
attributes:
  check_mode:
    support: full
    details: Runs the same statements in a transaction that is rolled back, and reports what they would change.
  diff_mode:
    support: none
notes:
  - Idempotent; RV(actions) is empty when everything was in place.
extends_documentation_fragment:
  - ge_connection.target
author:
  - great-escape contributors
"""

EXAMPLES = r"""
- name: Ensure the replication user holds only what apply needs, and the state schema exists
  ge_prepare_target:
    target:
      host: "{{ ge_target_host }}"
      dbname: "{{ ge_target_db }}"
      user: "{{ ge_target_master_user }}"
      password: "{{ ge_target_master_password }}"
      sslmode: verify-full
      sslrootcert: /etc/ssl/certs/rds-global-bundle.pem
    user: "{{ ge_target_user }}"
"""

RETURN = r"""
actions:
  description: What was changed (or, in check mode, would be).
  returned: always
  type: list
  elements: str
  sample: ["grant CONNECT, TEMPORARY on database shop to ge_repl", "create schema great_escape"]
"""

from ansible.module_utils.ge_common import connection_argument_spec, endpoints, engine_errors, engine_module


def main() -> None:
    module = engine_module(connection_argument_spec("target", user=dict(type="str", required=True)))
    from great_escape import db, state

    (target,) = endpoints(module, "target")
    result = dict(changed=False, actions=[])
    with engine_errors(module, result), db.connect(target, "prepare-target") as conn:
        with conn.transaction(force_rollback=module.check_mode):
            result["actions"] = state.prepare_target(conn, module.params["user"])
    module.exit_json(changed=bool(result["actions"]), actions=result["actions"])


if __name__ == "__main__":
    main()
