#!/usr/bin/python
"""Ansible module ge_cutover: switch the live side (cutover or rollback) and report the write downtime."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ge_cutover
short_description: Move writes to the other side of the migration (cutover or rollback)
description:
  - V(cutover) stops writes on the source, lets the forward sync apply the last changes, proves nothing is
    left (or compares every table, O(verify=full)), copies the sequences, gives the application its writes on
    the target and starts the reverse sync. V(rollback) does the same the other way.
  - Refused, with nothing changed, when the side writes would move from is not the live one, or when capture
    there is not whole.
  - Every switch is recorded on the target (C(great_escape.cutover_state)) and appended to
    C(cutover-status.json) in the configuration's state directory.
  - The admins' passwords come as module options, which Ansible hands to the module in its own payload; they
    never appear on a command line, in an environment, or in a file on the host.
version_added: "0.1.0"
options:
  action:
    description: Which switch to make.
    type: str
    choices: [cutover, rollback]
    default: cutover
  target_admin_user:
    description: The target's master user (owns the tables).
    type: str
    required: true
  target_admin_password:
    description: Its password.
    type: str
    required: true
  source_admin_user:
    description:
      - The source's owner of the tables or a superuser. The configuration names the source's sync role, which
        may not revoke the application's privileges, install capture or grant the reverse sync its writes.
    type: str
    required: true
  source_admin_password:
    description: Its password.
    type: str
    required: true
  stop_writes:
    description: How writes stop on the live side, C(revoke) (privileges revoked, sessions ended) or C(wait) (quiet).
    type: str
    choices: [revoke, wait]
    default: revoke
  application_roles:
    description: Roles whose writes are stopped; empty means every writer but the project's own users.
    type: list
    elements: str
    default: []
  terminate_sessions:
    description: End the application's sessions after revoking its writes.
    type: bool
    default: true
  in_flight_timeout:
    description: Seconds to wait for transactions that were open when writes stopped.
    type: float
    default: 30
  quiet_seconds:
    description: With O(stop_writes=wait), seconds without a new change that prove writes stopped.
    type: float
    default: 3
  verify:
    description:
      - With writes stopped, before the other side takes them. C(drained) proves that no captured change is left
        to apply; C(full) also compares every table, so the downtime grows with the database; C(none) skips it.
    type: str
    choices: [drained, full, none]
    default: drained
  start_sync:
    description: Start the sync of the other direction afterwards (the way back).
    type: bool
    default: true
attributes:
  check_mode:
    support: partial
    details: Reports which side is live and what the switch would do; nothing is stopped, checked or changed.
  diff_mode:
    support: none
extends_documentation_fragment:
  - ge_config
author:
  - great-escape contributors
"""

EXAMPLES = r"""
- name: Ensure the target is live
  ge_cutover:
    config: /var/lib/great-escape/great-escape.yml
    action: cutover
    target_admin_user: "{{ ge_target_master_user }}"
    target_admin_password: "{{ ge_target_master_password }}"
    source_admin_user: "{{ ge_source_user }}"
    source_admin_password: "{{ ge_source_password }}"
  register: cutover_result
"""

RETURN = r"""
to_side:
  description: The side that is live afterwards.
  returned: success, not in check mode
  type: str
downtime_seconds:
  description: Seconds between writes stopping on one side and being accepted on the other.
  returned: success, not in check mode
  type: float
steps:
  description: Seconds per step of the switch (check, stop writes, drain, verify, sequences, grant, ...).
  returned: success, not in check mode
  type: dict
sync_started:
  description: The sync started for the way back, if any.
  returned: success, not in check mode
  type: str
warnings:
  description: What the switch noticed and left as it was.
  returned: success, not in check mode
  type: list
  elements: str
live:
  description: In check mode, the side that is live now.
  returned: check mode
  type: str
"""

from dataclasses import asdict

from ansible.module_utils.ge_common import config_argument_spec, engine_errors, engine_module, load_config


def main() -> None:
    spec = config_argument_spec(
        action=dict(type="str", choices=["cutover", "rollback"], default="cutover"),
        target_admin_user=dict(type="str", required=True),
        target_admin_password=dict(type="str", required=True, no_log=True),
        source_admin_user=dict(type="str", required=True),
        source_admin_password=dict(type="str", required=True, no_log=True),
        stop_writes=dict(type="str", choices=["revoke", "wait"], default="revoke"),
        application_roles=dict(type="list", elements="str", default=[]),
        terminate_sessions=dict(type="bool", default=True),
        in_flight_timeout=dict(type="float", default=30),
        quiet_seconds=dict(type="float", default=3),
        verify=dict(type="str", choices=["drained", "full", "none"], default="drained"),
        start_sync=dict(type="bool", default=True),
    )
    spec.pop("direction")  # the action says which way
    module = engine_module(spec)
    from great_escape import cutover

    p = module.params
    cfg = load_config(module, as_written=True)  # the switch turns it as needed
    result: dict = dict(changed=False)
    with engine_errors(module, result):
        if module.check_mode:
            now = cutover.current_state(cfg)
            wanted = "target" if p["action"] == "cutover" else "source"
            module.exit_json(changed=now["live"] != wanted, live=now["live"],
                             msg=f"{p['action']} would make the {wanted} live (the {now['live']} is live now)")
        admin = {side: {**cutover.admin_params(getattr(cfg, side), p[f"{side}_admin_user"]),
                        "password": p[f"{side}_admin_password"]} for side in ("target", "source")}
        options = cutover.Options(
            stop_writes=p["stop_writes"], application_roles=p["application_roles"],
            terminate=p["terminate_sessions"], in_flight_timeout=p["in_flight_timeout"],
            quiet_seconds=p["quiet_seconds"], verify=p["verify"], start_sync=p["start_sync"],
        )
        switch = cutover.switch(cfg, p["action"], target_admin=admin["target"], source_admin=admin["source"],
                                options=options, config_path=p["config"])
        result = asdict(switch)
    module.exit_json(changed=True, **result)


if __name__ == "__main__":
    main()
