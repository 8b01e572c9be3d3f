#!/usr/bin/python
"""Ansible module ge_restore: the restore phase's steps on the target that are not pg_restore itself."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ge_restore
short_description: Check, prepare and finish a restore of the migration's dump into the target
description:
  - One module for the restore role's own steps around C(pg_restore), chosen with O(step) (one or several, run in
    the order given in one program run; a task each would cost Ansible's per-task time). After V(prepare) in the
    same run, V(pre_data), V(bigint) and V(copy_setup) are skipped when an earlier run left their marker
    (C(pre-data.done), C(bigint.done), C(data.done)).
  - V(prepare) reads the dump's identity from the transfer's verification marker, finds the step markers of
    earlier runs (refusing markers of another dump), refuses a target that already holds application tables
    when no marker shows an unfinished restore of this dump, then writes the libpq password file (mode 0600),
    the dump id and the filtered TOC lists for C(pg_restore -L) into O(work_dir), and records the start of this
    restore run in O(progress_state_dir).
  - V(truncate) empties every application table of the target in one statement, before a data re-load.
  - V(grant) gives O(user) what the sync applies with, USAGE on the schemas and DML and TRUNCATE on their
    tables and sequences; C(changed) says whether any of these privileges was new. The restore role runs it with
    the schema, before the data (the privileges do not depend on the rows).
  - V(copy_setup) prepares the chunked copy in one run, with the grants of V(grant) to O(copy_target)'s user (the copy
    loads as that user), the directory O(copy_dir) (0750), the libpq password file of O(source) and
    O(copy_target) (and O(target) with O(access)) there (0600), the engine configuration C(great-escape.yml)
    (O(config) with both endpoints, their passwords replaced by that file), C(index-builds.json) (O(index_builds))
    and with O(access) C(access.json); C(changed) says whether a privilege was new or one of these files changed
    (the password file is a credential of this run, removed by the role at its end).
  - V(pre_data) restores the schema (the dump's C(pre-data) section, through the filtered TOC list V(prepare)
    wrote) with C(pg_restore --single-transaction --exit-on-error) (all or nothing), then writes the marker
    C(pre-data.done) into O(work_dir).
  - V(bigint) widens int keys, the int columns referencing them and their sequences to bigint on the
    target's empty tables (planned from the O(source)'s keys), then writes O(marker).
version_added: "0.1.0"
options:
  step:
    description: The steps to run, in this order.
    type: list
    elements: str
    required: true
    choices: [prepare, pre_data, bigint, copy_setup, truncate, grant]
  pre_data:
    description:
      - V(pre_data) how to run C(pg_restore), a dict with C(argv) (the program and its connection arguments, e.g.
        C(--host), C(--no-owner)) and C(env) (its environment, e.g. C(PGPASSFILE), C(PGSSLMODE)).
    type: dict
  source:
    description:
      - The source database, read for its keys by V(bigint); V(copy_setup) the side the copy reads (required
        there, unused otherwise).
      - A dict of libpq parameters, as O(target).
    type: dict
  copy_target:
    description:
      - V(copy_setup) the target as the copy loads into it, as the replication user; a dict of libpq parameters, as
        O(target).
    type: dict
  copy_dir:
    description: V(copy_setup) the copy's directory (its configuration, password file, state).
    type: path
  config:
    description: V(copy_setup) the engine configuration of the copy but its endpoints (name, schemas, state_dir, ...).
    type: dict
  index_builds:
    description: V(copy_setup) the copy's index builds specification (copybuild.py), written as JSON.
    type: dict
  access:
    description:
      - V(copy_setup) the options of M(ge_access) but its endpoints and passwords (C(sync_user), C(role_map),
        C(application_roles), C(source_sync_user), C(schemas), C(exclude_tables), C(migration_name)), written to
        C(access.json) in O(copy_dir) for C(great-escape access), which the copy's job runs after post-data, from
        O(source) to O(target), their passwords (and the sync user's, O(copy_target)) in the copy's password file.
      - Omitted, the copy's job leaves owners and privileges to M(ge_access).
    type: dict
  schemas:
    description: Application schemas in scope. Empty means every schema but the system's and the project's.
    type: list
    elements: str
    default: []
  work_dir:
    description: V(prepare) and V(pre_data) the restore's markers, TOC lists and password file.
    type: path
  dump_dir:
    description: V(prepare) and V(pre_data) the dump on this host (one directory per section).
    type: path
  dump_marker:
    description:
      - V(prepare) the marker that the dump is complete on this host, holding its identity (the sha256 of its
        manifest); the transfer's verification marker, or the dump's own where it was dumped on this host.
    type: path
  progress_state_dir:
    description:
      - The phase's progress records (C(great-escape progress show)). V(prepare) records the start of this restore
        run there (the restore role's post-data step records its end).
    type: path
  pg_restore:
    description: V(prepare) the pg_restore program that lists the sections' TOC.
    type: str
    default: pg_restore
  user:
    description: V(grant) the role granted the sync's privileges.
    type: str
  mode:
    description: V(bigint) C(auto) (int primary keys, the int columns referencing them, their sequences) or C(none).
    type: str
    choices: [auto, none]
    default: auto
  include:
    description: V(bigint) C(schema.table) or C(schema.table.column) to widen as well.
    type: list
    elements: str
    default: []
  exclude:
    description: V(bigint) C(schema.table) or C(schema.table.column) to leave as they are.
    type: list
    elements: str
    default: []
  marker:
    description: V(bigint) file written with the result once the target has the new types.
    type: path
attributes:
  check_mode:
    support: full
    details: >-
      V(prepare) checks without writing files; V(pre_data) restores nothing; V(truncate) lists what it would empty;
      V(grant) counts the privileges it would give; V(bigint) returns the plan with no queries.
  diff_mode:
    support: none
notes:
  - Runs on the replication host as the target's master user (the owner of the restored schema).
extends_documentation_fragment:
  - ge_connection.target
author:
  - great-escape contributors
"""

EXAMPLES = r"""
- name: Check the dump and the target, then restore the schema and widen int keys (what is not done yet)
  ge_restore:
    step: [prepare, pre_data, bigint]
    target: "{{ restore_target }}"
    source: "{{ restore_source }}"
    work_dir: /var/lib/great-escape/restore
    dump_dir: /var/lib/great-escape/dump
    dump_marker: /var/lib/great-escape/dump.done.json
    marker: /var/lib/great-escape/restore/bigint.done
    pre_data:
      argv: [pg_restore, --host=aurora.example.com, --username=master, --dbname=app, --no-password, --no-owner]
      env: {PGPASSFILE: /var/lib/great-escape/restore/pgpass, PGSSLMODE: verify-full}

- name: Grant the replication user DML on the restored tables
  ge_restore:
    step: grant
    target: "{{ restore_target }}"
    user: ge_repl
"""

RETURN = r"""
ran:
  description: The steps of O(step) that ran (the others an earlier run had finished).
  returned: always
  type: list
  elements: str
dump_id:
  description: V(prepare) the dump's identity (sha256 of its manifest).
  returned: when prepare ran
  type: str
steps:
  description: V(prepare) the markers of finished or started steps found in O(work_dir), e.g. C(pre-data.done).
  returned: when prepare ran
  type: list
  elements: str
dropped:
  description: V(prepare) TOC entries of the project's own objects, left out of the restore.
  returned: when prepare ran
  type: list
  elements: str
truncated:
  description: V(truncate) the tables emptied (or, in check mode, that would be).
  returned: when truncate ran
  type: list
  elements: str
schemas:
  description: V(grant) the schemas whose objects were granted.
  returned: when grant or copy_setup ran
  type: list
  elements: str
new_privileges:
  description: V(grant) how many schema, table and sequence privileges O(user) did not hold before.
  returned: when grant or copy_setup ran
  type: int
files_changed:
  description: V(copy_setup) the configuration files written with a new content (or, in check mode, that would be).
  returned: when copy_setup ran
  type: list
  elements: str
queries:
  description: V(bigint) the ALTER statements run (empty in check mode and when nothing needed widening).
  returned: when bigint ran
  type: list
  elements: str
"""

from pathlib import Path

from ansible.module_utils.ge_common import connection_argument_spec, endpoint, endpoints, engine_errors, engine_module

_NEEDS = {
    "prepare": ["work_dir", "dump_dir", "dump_marker"],
    "pre_data": ["work_dir", "dump_dir", "pre_data"],
    "grant": ["user"],
    "bigint": ["source"],
    "copy_setup": ["source", "copy_target", "copy_dir", "config", "index_builds"],
}
# After prepare in the same run, a step whose marker an earlier run left is skipped.
_MARKERS = {"pre_data": "pre-data.done", "bigint": "bigint.done", "copy_setup": "data.done"}


def main() -> None:
    spec = connection_argument_spec(
        "target", scope=True,
        step=dict(type="list", elements="str", required=True,
                  choices=["prepare", "pre_data", "bigint", "copy_setup", "truncate", "grant"]),
        work_dir=dict(type="path"), dump_dir=dict(type="path"), dump_marker=dict(type="path"),
        progress_state_dir=dict(type="path"),
        pg_restore=dict(type="str", default="pg_restore"),
        pre_data=dict(type="dict", no_log=False),
        user=dict(type="str"),
        mode=dict(type="str", choices=["auto", "none"], default="auto"),
        include=dict(type="list", elements="str", default=[]),
        exclude=dict(type="list", elements="str", default=[]),
        marker=dict(type="path"),
        copy_dir=dict(type="path"),
        config=dict(type="dict"),
        index_builds=dict(type="dict"),
        access=dict(type="dict"),
    )
    spec.pop("exclude_tables")
    spec["source"] = dict(spec["target"], required=False)
    spec["copy_target"] = dict(spec["target"], required=False)
    module = engine_module(spec)
    from great_escape import db, restore

    p, check = module.params, module.check_mode
    missing = sorted({f"{need} (step {step})" for step in p["step"] for need in _NEEDS.get(step, []) if not p[need]})
    if missing:
        module.fail_json(msg=f"ge_restore: missing {', '.join(missing)}")
    (target,) = endpoints(module, "target")
    schemas = p["schemas"] or None
    result: dict = dict(changed=False, ran=[])
    with engine_errors(module, result):
        for step in p["step"]:
            if _MARKERS.get(step) in result.get("steps", []):
                continue
            result["ran"].append(step)
            if step == "prepare":
                request = dict(target=target, schemas=schemas, work_dir=p["work_dir"], dump_dir=p["dump_dir"],
                               dump_marker=p["dump_marker"], pg_restore=p["pg_restore"],
                               progress_state_dir=p["progress_state_dir"])
                result.update(restore.prepare_restore(lambda: db.connect(target, "restore"), request, check=check))
            elif step == "pre_data":
                work, how = Path(p["work_dir"]), p["pre_data"]
                dump_id = result.get("dump_id") or (work / "dump_id").read_text().strip()
                result["changed"] |= restore.restore_pre_data(work, Path(p["dump_dir"]), dump_id, how["argv"],
                                                              how.get("env", {}), check)
            elif step == "bigint":
                marker = Path(p["marker"]) if p["marker"] else None
                result.update(restore.migrate_bigint(endpoint(p["source"]), target, schemas, p["mode"], p["include"],
                                                     p["exclude"], marker, check))
                result["changed"] |= bool(result["queries"]) or bool(check and result.get("columns"))
            else:
                with db.connect(target, "restore") as conn:
                    if step == "truncate":
                        result["truncated"] = restore.truncate_tables(conn, schemas, check)
                        result["changed"] |= bool(result["truncated"])
                    elif step == "copy_setup":
                        request = dict(copy_dir=p["copy_dir"], schemas=schemas, source=endpoint(p["source"]),
                                       copy_target=endpoint(p["copy_target"]), config=p["config"],
                                       index_builds=p["index_builds"], admin=target, access=p["access"])
                        result.update(restore.prepare_copy(conn, request, check))
                        result["changed"] |= result["new_privileges"] > 0 or bool(result["files_changed"])
                    else:
                        names, new = restore.grant_user(conn, schemas, p["user"], check)
                        result.update(schemas=names, new_privileges=new)
                        result["changed"] |= result["new_privileges"] > 0
    module.exit_json(**result)


if __name__ == "__main__":
    main()
