#!/usr/bin/python
"""Ansible module: install or remove great-escape change capture and the schema freeze."""

from __future__ import annotations

DOCUMENTATION = r"""
module: ge_capture
short_description: Install or remove trigger-based change capture and the schema freeze
description:
  - Installs, on the side changes come from, a delta table per table in schema C(ge_capture), a row trigger
    recording changed keys, a TRUNCATE trigger, a NOTIFY kick, and optionally the schema freeze (event triggers
    that refuse DDL until lifted with C(SET great_escape.allow_ddl = on)).
  - Each table is handled in its own short transaction with a short lock_timeout, retried with backoff.
  - Tables without a primary key or unique index on NOT NULL columns are refused, listed in C(problems),
    unless I(keyless_tables=copy_at_cutover).
version_added: "0.1.0"
options:
  schemas:
    description: Schemas whose tables are captured; empty means every application schema.
    type: list
    elements: str
    default: []
  exclude_tables:
    description: C(schema.table) names left out.
    type: list
    elements: str
    default: []
  keyless_tables:
    description: What to do with tables that have no usable key.
    type: str
    choices: [refuse, copy_at_cutover]
    default: refuse
  freeze:
    description:
      - With I(state=present), also install the schema freeze. With I(state=absent) the freeze is always removed.
    type: bool
    default: true
  ddl_roles:
    description:
      - Roles that may lift the schema freeze for their session with C(SET great_escape.allow_ddl = on);
        for every other role the setting changes nothing. Empty means the I(source) user.
      - A freeze installed for other roles is installed again with these.
    type: list
    elements: str
    default: []
  sync_user:
    description:
      - The source's dedicated sync role (C(ge_sync_source_user)), which the forward sync and verify run as.
      - With I(state=present) it is created if missing (not a superuser, creates nothing; its password is set
        only then) and granted exactly what the sync needs (C(capture.grant_sync)) - CONNECT, USAGE and SELECT
        on the replicated tables, read and purge the deltas, mark itself waiting. It may write no application
        table until the cutover grants it the reverse sync's writes.
      - With I(state=absent) every privilege it holds in the database goes, and the role itself.
      - Omitted, or the I(source) user itself, nothing is done.
    type: str
  sync_password:
    description: Password of I(sync_user), set when the role is created.
    type: str
  state:
    description: Whether capture should be installed or removed.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment: [ge_connection]
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - The I(source) user must own the tables or be a superuser; the freeze needs a superuser (event triggers).
  - The capture trigger functions run as the NOLOGIN role C(ge_capture_writer), the only role that may write
    the delta tables; the I(source) user creates it (CREATEROLE) and becomes a member, or a superuser does
    both beforehand. Nothing in schema C(ge_capture) is granted to PUBLIC.
  - Registered tables whose capture triggers are missing or disabled are repaired (C(repair capture on ...)).
seealso:
  - name: CREATE EVENT TRIGGER
    link: https://www.postgresql.org/docs/15/sql-createeventtrigger.html
author: great-escape
"""

EXAMPLES = r"""
- name: Ensure capture triggers exist on every replicated table
  ge_capture:
    source: "{{ capture_source }}"
    schemas: [public]
    freeze: true
    ddl_roles: [postgres]
"""

RETURN = r"""
actions:
  description: What was (or in check mode would be) done, one line per table.
  returned: always
  type: list
  elements: str
  sample: ["install capture on public.orders", "install schema freeze"]
keyless:
  description: Tables without a usable key left for a whole copy at cutover.
  returned: always
  type: list
  elements: str
diff:
  description: Captured tables before and after.
  returned: always
  type: dict
"""

from ansible.module_utils.ge_common import connection_argument_spec, endpoint, engine_errors, engine_module


def main() -> None:
    module = engine_module(connection_argument_spec(
        "source", scope=True,
        keyless_tables=dict(type="str", choices=["refuse", "copy_at_cutover"], default="refuse"),
        freeze=dict(type="bool", default=True),
        ddl_roles=dict(type="list", elements="str", default=[]),
        sync_user=dict(type="str"),
        sync_password=dict(type="str", no_log=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
    ))
    from great_escape import capture, config, db

    p = module.params
    cfg = config.Config(name="ansible", source=endpoint(p["source"]), target=endpoint(p["source"]),
                        schemas=p["schemas"], exclude_tables=p["exclude_tables"], keyless_tables=p["keyless_tables"])
    # present: install the freeze if asked; absent: capture and freeze go together.
    freeze = (True if p["freeze"] else None) if p["state"] == "present" else False
    roles: list[str] = []
    with engine_errors(module):
        with db.connect(cfg.source, "capture", autocommit=True) as conn:
            before = sorted(capture.registered(conn).values())
            sync_role_exists = bool(p["sync_user"]) and p["sync_user"] != conn.info.user and bool(conn.execute(
                "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (p["sync_user"],)).fetchone())
        plan = capture.run(cfg, state=p["state"], freeze=freeze, check=module.check_mode,
                           ddl_roles=p["ddl_roles"] or None)
        if p["sync_user"]:
            with db.connect(cfg.source, "capture", autocommit=True) as conn:
                if p["state"] == "present":
                    if module.check_mode:
                        roles = [] if sync_role_exists or p["sync_user"] == conn.info.user \
                            else [f"create role {p['sync_user']}"]
                    else:
                        roles = capture.ensure_sync_role(conn, p["sync_user"], p["sync_password"])
                        with conn.transaction():
                            capture.grant_sync(conn, p["sync_user"])
                elif module.check_mode:
                    roles = [f"drop role {p['sync_user']}"] if sync_role_exists else []
                else:
                    roles = capture.drop_sync_role(conn, p["sync_user"])
    after = sorted(set(before) | {t.qualname for t in plan.install}) if p["state"] == "present" \
        else sorted(set(before) - {name for _, name in plan.remove})
    module.exit_json(changed=plan.changed or bool(roles), actions=plan.describe() + roles, keyless=plan.keyless,
                     diff={"before": {"captured": before}, "after": {"captured": after}})


if __name__ == "__main__":
    main()
