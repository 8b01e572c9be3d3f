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
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
extends_documentation_fragment: [ge_config]
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

from ansible.module_utils.ge_common import config_argument_spec, engine_errors, engine_module, load_config


def main() -> None:
    module = engine_module(config_argument_spec())
    from great_escape import status

    cfg = load_config(module)
    with engine_errors(module):
        s = status.collect(cfg, module.params["direction"])
    module.exit_json(changed=False, status=s, msg=status.one_line(s))


if __name__ == "__main__":
    main()
