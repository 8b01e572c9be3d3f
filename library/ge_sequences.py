#!/usr/bin/python
"""Ansible module ge_sequences: copy sequence values from the source to the target."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ge_sequences
short_description: Copy sequence values from one PostgreSQL database to another
description:
  - Sets every sequence of the schemas in scope on the O(target) to the value it has on the O(source),
    matched by schema and name, with C(setval(sequence, value, is_called)).
  - Identity-column and serial sequences are included. Change-capture triggers do not see sequences,
    so this runs at cutover (and on request in both directions).
  - A target sequence that is ahead of the source is left alone unless O(allow_backwards=true),
    because handing out a used value again would break unique keys.
  - A sequence missing on the target, or whose range cannot hold the source value, fails the task
    naming every such sequence.
version_added: "0.1.0"
options:
  schemas:
    description: Schemas whose sequences are copied. Empty means every application schema.
    type: list
    elements: str
    default: []
  exclude_tables:
    description: C(schema.table) names left out of the migration; their serial and identity sequences too.
    type: list
    elements: str
    default: []
  allow_backwards:
    description: Also move target sequences that are ahead of the source back to the source's value.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details: Reads both sides and reports the C(setval) calls it would run, without running them.
  diff_mode:
    support: full
notes:
  - Run it where the great_escape engine is installed (the replication host, or the controller).
  - On the source it needs SELECT on the sequences; on the target SELECT and UPDATE (the replication
    user holds them after prepare-target; the master user works too). No superuser is needed.
seealso:
  - name: PostgreSQL sequence functions
    description: setval() and is_called.
    link: https://www.postgresql.org/docs/15/functions-sequence.html
extends_documentation_fragment:
  - ge_connection
  - ge_connection.target
author:
  - great-escape contributors
"""

EXAMPLES = r"""
- name: Ensure target sequences continue where the source stopped
  ge_sequences:
    source:
      host: "{{ ge_source_host }}"
      port: "{{ ge_source_port }}"
      dbname: "{{ ge_source_db }}"
      user: "{{ ge_source_user }}"
      password: "{{ ge_source_password }}"
    target:
      host: "{{ ge_target_host }}"
      port: "{{ ge_target_port }}"
      dbname: "{{ ge_target_db }}"
      user: "{{ ge_target_user }}"
      password: "{{ ge_target_password }}"
    schemas: "{{ ge_schemas }}"
  register: cutover_sequences_result
"""

RETURN = r"""
sequences:
  description: One entry per sequence in scope.
  returned: always
  type: list
  elements: dict
  contains:
    sequence: {description: schema.name, type: str}
    owned_by: {description: schema.table.column for serial/identity sequences, else empty, type: str}
    identity: {description: Whether it backs an identity column, type: bool}
    source_value: {description: last_value on the source, type: int}
    target_before: {description: last_value on the target before, type: int}
    target_after: {description: last_value on the target after (planned, in check mode), type: int}
    action: {description: "set, unchanged or kept (target ahead, not moved backwards)", type: str}
queries:
  description: The setval() statements run (or, in check mode, that would run).
  returned: always
  type: list
  elements: str
  sample: ["SELECT pg_catalog.setval('\"app\".\"orders_id_seq\"'::regclass, 42, true)"]
diff:
  description: Target sequence values before and after, by sequence name.
  returned: always
  type: dict
"""

from ansible.module_utils.ge_common import connection_argument_spec, endpoints, engine_errors, engine_module


def main() -> None:
    module = engine_module(connection_argument_spec(
        "source", "target", scope=True,
        allow_backwards=dict(type="bool", default=False),
    ))
    from great_escape.sequences import copy_sequences

    p = module.params
    source, target = endpoints(module, "source", "target")
    with engine_errors(module, dict(changed=False, queries=[])):
        plan = copy_sequences(source, target, p["schemas"], p["exclude_tables"],
                              allow_backwards=p["allow_backwards"], check=module.check_mode)
    module.exit_json(changed=plan.changed, sequences=plan.as_dicts(), queries=plan.queries, diff=plan.diff())


if __name__ == "__main__":
    main()
