#!/usr/bin/python
"""Ansible module ge_verify_info: compare source and target table by table."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ge_verify_info
short_description: Compare two PostgreSQL databases table by table and name the differences
description:
  - Compares every table of the schemas in scope on the O(source) and the O(target), matched by
    schema and name, columns matched by name.
  - Each table is walked in key ranges of O(range_rows) rows; per range both sides are counted and
    checksummed (md5 of the row text) in a short read-only snapshot. Ranges that differ are compared
    again O(recheck) times, O(recheck_wait) seconds apart, so changes still in flight through the sync
    are not reported; the ones that persist are read row by row to name keys missing on the target,
    extra on the target and different.
  - Tables without a usable key are compared whole (row count and one checksum).
  - Read-only; never reports a change. The project's own schemas (ge_capture, great_escape) are
    never compared.
version_added: "0.1.0"
options:
  schemas:
    description: Schemas to compare. Empty means every application schema.
    type: list
    elements: str
    default: []
  exclude_tables:
    description: C(schema.table) names left out of the migration, not compared.
    type: list
    elements: str
    default: []
  tables:
    description: Compare only these C(schema.table) names. Empty means every table in scope.
    type: list
    elements: str
    default: []
  range_rows:
    description: Rows per checksum range. Also bounds the memory used to name differing rows.
    type: int
    default: 10000
  recheck:
    description: How many times a differing range is compared again before it is reported.
    type: int
    default: 2
  recheck_wait:
    description: Seconds between rechecks, time for changes in flight to be applied by the sync.
    type: float
    default: 5.0
  sample:
    description: Differing keys reported per kind (missing, extra, different) and table.
    type: int
    default: 10
  fail_on_mismatch:
    description:
      - Fail the task when any table differs, with the differences in RV(diffs).
      - With V(false) the task succeeds and RV(mismatched) says how many tables differ.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    details: Read-only; runs the same in check mode.
  diff_mode:
    support: none
notes:
  - Run it where the great_escape engine is installed (the replication host, or the controller).
  - Needs SELECT on the compared tables on both sides (the replication user holds it on the target).
    It reads as a plain reader (ACCESS SHARE locks, one short snapshot per range and side).
  - Key ranges are ordered by the key columns' collation; source and target must use the same
    collation for text keys (pg_dump keeps column collations).
seealso:
  - module: ge_sequences
extends_documentation_fragment:
  - ge_connection
  - ge_connection.target
author:
  - great-escape contributors
"""

EXAMPLES = r"""
- name: Compare source and target table by table
  ge_verify_info:
    source:
      host: "{{ ge_source_host }}"
      dbname: "{{ ge_source_db }}"
      user: "{{ ge_source_user }}"
      password: "{{ ge_source_password }}"
    target:
      host: "{{ ge_target_host }}"
      dbname: "{{ ge_target_db }}"
      user: "{{ ge_target_user }}"
      password: "{{ ge_target_password }}"
    schemas: "{{ ge_schemas }}"
    fail_on_mismatch: false
  register: verify_result
"""

RETURN = r"""
tables:
  description: The result per table.
  returned: success
  type: list
  elements: dict
  contains:
    table: {description: schema.name, type: str}
    status:
      description: ok, different, columns_differ, missing_on_target, missing_on_source or error
      type: str
    rows_source: {description: Rows counted on the source, type: int}
    rows_target: {description: Rows counted on the target, type: int}
    ranges: {description: Key ranges compared, type: int}
    mismatched_ranges:
      description: Ranges that differ, each with its lower (exclusive) and upper (inclusive) key
      type: list
    missing_on_target: {description: Keys on the source only, type: int}
    extra_on_target: {description: Keys on the target only, type: int}
    different: {description: Keys whose rows differ, type: int}
    sample_missing_on_target: {description: Some of those keys, column -> value as text, type: list}
    sample_extra_on_target: {description: Some of those keys, type: list}
    sample_different: {description: Some of those keys, type: list}
    seconds: {description: Time spent on the table, type: float}
summary:
  description: The human table, one line per table, then one line per differing table.
  returned: success
  type: list
  elements: str
mismatched:
  description: How many tables differ.
  returned: success
  type: int
capture_problems:
  description:
    - Capture triggers missing or disabled on either side, one line per table with the fix (re-run the
      capture phase); changes to such a table would never be synced.
  returned: success
  type: list
  elements: str
diffs:
  description: The results of the tables that differ (when the task fails).
  returned: failure
  type: list
queries:
  description: Always empty; the module runs only reads.
  returned: always
  type: list
"""

from ansible.module_utils.ge_common import connection_argument_spec, endpoints, engine_errors, engine_module


def main() -> None:
    module = engine_module(connection_argument_spec(
        "source", "target", scope=True,
        tables=dict(type="list", elements="str", default=[]),
        range_rows=dict(type="int", default=10000),
        recheck=dict(type="int", default=2),
        recheck_wait=dict(type="float", default=5.0),
        sample=dict(type="int", default=10),
        fail_on_mismatch=dict(type="bool", default=True),
    ))
    from great_escape.verify import VerifyOptions, format_table, verify

    p = module.params
    source, target = endpoints(module, "source", "target")
    result = dict(changed=False, queries=[])
    with engine_errors(module, result):  # reports the tables compared so far if the mismatch check fails
        options = VerifyOptions(p["range_rows"], p["recheck"], p["recheck_wait"], p["sample"])
        report = verify(source, target, p["schemas"], p["exclude_tables"], p["tables"] or None, options)
        result.update(tables=report.as_dicts(), summary=format_table(report).splitlines(),
                      mismatched=len(report.mismatched), capture_problems=report.capture_problems)
        if p["fail_on_mismatch"]:
            report.raise_on_mismatch()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
