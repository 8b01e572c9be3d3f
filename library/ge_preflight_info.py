#!/usr/bin/python
"""Ansible module ge_preflight_info: every problem of a planned migration, found read-only."""

from __future__ import annotations

DOCUMENTATION = r"""
module: ge_preflight_info
short_description: Check a source and a target before a great-escape migration
description:
  - Connects read-only to the source, to the target as the master user and, if it exists already, to the
    target as the replication user, and returns every problem that would stop the migration, warnings worth
    reading, facts (versions, sizes, change rate) and estimated durations of the phases.
  - Problems are returned, not raised, so the playbook can print the whole list at once; the module fails only
    when its own arguments are wrong.
  - Checks versions (source 11 or newer, the pg_dump and pg_restore clients at least the newest server major
    version), logins, privileges (source user superuser or owner of every table, master user may CREATE and
    CREATEROLE), tables without a usable key (refused or copied at cutover as O(keyless_tables) says), large
    objects, extensions missing on the target, target tables that already hold rows, free disk for the dump,
    and flags unlogged and foreign tables, materialized views and tablespaces.
version_added: "0.1.0"
options:
  replication_user:
    description:
      - The replication user on the target. If it exists, preflight logs in as it; if not, it checks that the
        master user may create it.
    type: str
  replication_password:
    description: Password of O(replication_user). Never logged.
    type: str
  schemas:
    description: Schemas to migrate; empty means every application schema.
    type: list
    elements: str
    default: []
  role_map:
    description:
      - Source role to target role where they differ (ge_role_map). A source superuser that owns or holds
        privileges on replicated objects and is not mapped is a problem.
    type: dict
    default: {}
  application_roles:
    description: The roles the application logs in as; a missing one is a problem.
    type: list
    elements: str
    default: []
  bigint:
    description: The int -> bigint migration of the restore (restore_bigint), for the plan; V(auto) or V(none).
    type: str
    choices: [auto, none]
    default: auto
  bigint_include:
    description: Extra columns to widen (restore_bigint_include), C(schema.table) or C(schema.table.column).
    type: list
    elements: str
    default: []
  bigint_exclude:
    description: Columns left int (restore_bigint_exclude), C(schema.table) or C(schema.table.column).
    type: list
    elements: str
    default: []
  measure_seconds:
    description:
      - Seconds of a read of the biggest table (C(COPY ... TO STDOUT), discarded) whose rate the dump estimate
        uses; V(0) uses the assumed rate.
    type: float
    default: 2.0
  keyless_tables:
    description:
      - What to do with tables without a primary key or unique index on NOT NULL columns.
      - V(refuse) makes each one a problem; V(copy_at_cutover) a warning.
    type: str
    choices: [refuse, copy_at_cutover]
    default: refuse
  copy_method:
    description:
      - How the data moves (C(ge_copy_method)). V(chunked) dumps the schema on the replication host and copies the
        data source -> target with the engine, so the source host needs no disk, the replication host the schema
        only, and one copy phase is estimated. V(pg_dump) writes the whole dump on the source host and sends it.
    type: str
    choices: [chunked, pg_dump]
    default: chunked
  pg_dump_version:
    description:
      - Output of C(pg_dump --version) on the host that dumps (the replication host with V(chunked), the source
        host with V(pg_dump)), empty if pg_dump is missing.
      - Omit to skip the check.
    type: str
  pg_restore_version:
    description:
      - Output of C(pg_restore --version) on the replication host, empty if missing. Omit to skip the check.
    type: str
  dump_dir:
    description: Where the dump is written on the source host (for messages).
    type: str
    default: ""
  dump_dir_free_bytes:
    description: Free bytes on the filesystem of O(dump_dir), measured on the source host (V(pg_dump)). Omit to skip.
    type: int
  replication_dir:
    description: Where the dump lands on the replication host (for messages).
    type: str
    default: ""
  replication_dir_free_bytes:
    description: Free bytes on the filesystem of O(replication_dir). Omit to skip.
    type: int
  assumptions:
    description:
      - Overrides of the estimate model, keys of C(great_escape.preflight.Assumptions)
        (C(compression_factor), C(disk_reserve_bytes), C(dump_jobs), C(restore_jobs), C(dump_mb_s_per_job),
        C(transfer_mb_s), C(restore_mb_s_per_job), C(index_mb_s_per_job), C(verify_mb_s), C(apply_rows_s)).
    type: dict
    default: {}
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
notes:
  - Read-only; never reports C(changed). Every session runs with C(default_transaction_read_only).
  - Runs where the great_escape engine is installed and both databases are reachable (the controller in the
    playbooks, since the replication host may not exist yet).
  - Needs login on both databases, reading the catalogs, and SELECT on target tables that already exist.
seealso:
  - name: pg_dump
    description: Why the client must be at least the server's version.
    link: https://www.postgresql.org/docs/current/app-pgdump.html
extends_documentation_fragment:
  - ge_connection
  - ge_connection.target
author:
  - great-escape
"""

EXAMPLES = r"""
- name: Check source and target before migrating
  ge_preflight_info:
    source: {host: db1.example.com, dbname: app, user: postgres, password: "{{ ge_source_password }}"}
    target:
      host: aurora.example.com
      dbname: app
      user: ge_master
      password: "{{ ge_target_master_password }}"
    replication_user: ge_repl
    replication_password: "{{ ge_target_password }}"
    keyless_tables: refuse
    pg_dump_version: "pg_dump (PostgreSQL) 15.10"
    dump_dir: /var/lib/great-escape/dump
    dump_dir_free_bytes: 500000000000
    assumptions: {compression_factor: 0.4, dump_jobs: 8}
  register: preflight_result

- name: Fail with every problem at once
  ansible.builtin.assert:
    that: preflight_result.problems | length == 0
    fail_msg: "{{ preflight_result.problems }}"
"""

RETURN = r"""
problems:
  description: Each problem that stops the migration, one sentence naming the object and the fix.
  returned: always
  type: list
  elements: str
notices:
  description: Findings that do not stop the migration (warnings; the key C(warnings) is Ansible's own).
  returned: always
  type: list
  elements: str
facts:
  description:
    - Versions, table count, data and index bytes per table and in all, dump estimate, free space, change rate,
      the measured read rate of the source.
  returned: always
  type: dict
  sample: {source_version: "15.10", tables: 12, data_bytes: 104857600, dump_estimate_bytes: 41943040}
estimates:
  description: Estimated duration of each phase in seconds (null when it would never finish) and its basis.
  returned: always
  type: list
  elements: dict
plan:
  description:
    - The migration's plan as text lines, largest table first - size, rows, key (or what happens without one),
      the int -> bigint changes - then the disk each host needs.
  returned: always
  type: list
  elements: str
estimate_table:
  description: O(estimates) as fixed-width text lines.
  returned: always
  type: list
  elements: str
queries:
  description: Statements that changed something; always empty, the module only reads.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.ge_common import connection_argument_spec, endpoints, engine_errors, engine_module


def main() -> None:
    module = engine_module(connection_argument_spec(
        "source", "target",
        replication_user=dict(type="str"),
        replication_password=dict(type="str", no_log=True),
        schemas=dict(type="list", elements="str", default=[]),
        keyless_tables=dict(type="str", choices=["refuse", "copy_at_cutover"], default="refuse"),
        copy_method=dict(type="str", choices=["chunked", "pg_dump"], default="chunked"),
        pg_dump_version=dict(type="str"),
        pg_restore_version=dict(type="str"),
        dump_dir=dict(type="str", default=""),
        dump_dir_free_bytes=dict(type="int"),
        replication_dir=dict(type="str", default=""),
        replication_dir_free_bytes=dict(type="int"),
        assumptions=dict(type="dict", default={}),
        role_map=dict(type="dict", default={}),
        application_roles=dict(type="list", elements="str", default=[]),
        bigint=dict(type="str", choices=["auto", "none"], default="auto"),
        bigint_include=dict(type="list", elements="str", default=[]),
        bigint_exclude=dict(type="list", elements="str", default=[]),
        measure_seconds=dict(type="float", default=2.0),
    ))
    from great_escape import preflight

    p = module.params
    with engine_errors(module):  # a value out of range: PreflightError naming the assumption
        try:
            assumptions = preflight.Assumptions(**p["assumptions"])
        except TypeError as exc:
            module.fail_json(msg=f"assumptions: {exc}; the keys are those of great_escape.preflight.Assumptions")
    source, target = endpoints(module, "source", "target")
    inputs = preflight.Inputs(
        source=source, target=target,
        replication_user=p["replication_user"], replication_password=p["replication_password"],
        schemas=p["schemas"], keyless_tables=p["keyless_tables"], copy_method=p["copy_method"],
        pg_dump_version=p["pg_dump_version"], pg_restore_version=p["pg_restore_version"],
        dump_dir=p["dump_dir"], dump_dir_free_bytes=p["dump_dir_free_bytes"],
        replication_dir=p["replication_dir"], replication_dir_free_bytes=p["replication_dir_free_bytes"],
        assumptions=assumptions,
        role_map={str(k): str(v) for k, v in p["role_map"].items()}, application_roles=p["application_roles"],
        bigint_mode=p["bigint"], bigint_include=p["bigint_include"], bigint_exclude=p["bigint_exclude"],
        measure_seconds=p["measure_seconds"],
    )
    with engine_errors(module):  # engine errors become one sentence; anything else keeps its traceback
        report = preflight.run(inputs)
    module.exit_json(changed=False, queries=[], **report.as_dict())


if __name__ == "__main__":
    main()
