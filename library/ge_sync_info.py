#!/usr/bin/python
"""Ansible module: where the sync is and how long until it catches up."""

from __future__ import annotations

DOCUMENTATION = r"""
module: ge_sync_info
short_description: Report pending changes, lag, apply rate and ETA of the sync
description:
  - Reads the delta tables on the capturing side and the progress records on the applying side.
  - Never changes anything.
version_added: "0.1.0"
options:
  config:
    description: The engine configuration file on the host that runs the module.
    type: path
    required: true
  direction:
    description: C(forward) or C(reverse).
    type: str
    choices: [forward, reverse]
    default: forward
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author: great-escape
"""

EXAMPLES = r"""
- name: Read the sync status
  ge_sync_info:
    config: /var/lib/great-escape/great-escape.yml
  register: sync_status_result
"""

RETURN = r"""
status:
  description: pending, lag_seconds, rate_per_second, eta_seconds, deltas_applied, per_table and more.
  returned: always
  type: dict
msg:
  description: The status as one human-readable line.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.ge_common import fail_from, require_engine


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            config=dict(type="path", required=True),
            direction=dict(type="str", choices=["forward", "reverse"], default="forward"),
        ),
        supports_check_mode=True,
    )
    require_engine(module)
    from great_escape import config, status

    try:
        cfg = config.load(module.params["config"], reverse=module.params["direction"] == "reverse")
        s = status.collect(cfg, module.params["direction"])
    except Exception as exc:  # noqa: BLE001 - mapped to fail_json by fail_from
        fail_from(module, exc)
    module.exit_json(changed=False, status=s, msg=status.one_line(s))


if __name__ == "__main__":
    main()
