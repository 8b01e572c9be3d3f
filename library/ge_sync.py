#!/usr/bin/python
"""Ansible module: drain the great-escape sync, or wait until its lag is low enough."""

from __future__ import annotations

DOCUMENTATION = r"""
module: ge_sync
short_description: Drain the sync or wait until its lag is below a threshold
description:
  - With I(wait_for=drained), applies every pending change and returns when none is left. When the sync
    daemon runs (it holds the sync lock), waits for it to drain instead of applying itself.
  - With I(wait_for=lag), waits until the age of the oldest pending change is below I(max_lag) seconds.
  - Reads the engine configuration file written by the sync role (endpoints and password file).
version_added: "0.1.0"
options:
  wait_for:
    description: What to wait for.
    type: str
    choices: [drained, lag]
    default: drained
  max_lag:
    description: Seconds of lag accepted with I(wait_for=lag).
    type: float
    default: 5
  timeout:
    description: Give up (and fail, naming the lag and pending count) after this many seconds.
    type: int
    default: 3600
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
notes:
  - In check mode nothing is applied; the current status is returned.
extends_documentation_fragment: [ge_config]
author: great-escape
"""

EXAMPLES = r"""
- name: Ensure the forward sync has caught up
  ge_sync:
    config: /var/lib/great-escape/great-escape.yml
    wait_for: lag
    max_lag: 5
"""

RETURN = r"""
status:
  description: Status after waiting (pending, lag_seconds, rate_per_second, eta_seconds, per_table ...).
  returned: always
  type: dict
applied:
  description: Changes applied by this module itself (0 when the daemon did the work).
  returned: always
  type: int
"""

import time

from ansible.module_utils.ge_common import config_argument_spec, engine_errors, engine_module, load_config


def main() -> None:
    module = engine_module(config_argument_spec(
        wait_for=dict(type="str", choices=["drained", "lag"], default="drained"),
        max_lag=dict(type="float", default=5),
        timeout=dict(type="int", default=3600),
    ))
    from great_escape import daemon, status
    from great_escape.errors import SyncError

    p = module.params
    cfg = load_config(module)
    with engine_errors(module):
        if module.check_mode:
            module.exit_json(changed=False, applied=0, status=status.collect(cfg, p["direction"]))
        applied = 0
        daemon_running = daemon.running_pid(cfg.state_dir / f"sync-{p['direction']}.pid") is not None
        if p["wait_for"] == "drained" and not daemon_running:
            try:
                applied = daemon.SyncProcess(cfg, direction=p["direction"]).run(drain=True)
            except SyncError as exc:
                if "another" not in str(exc):
                    raise
        deadline = time.monotonic() + p["timeout"]
        while True:
            s = status.collect(cfg, p["direction"])
            done = s["pending"] == 0 if p["wait_for"] == "drained" else s["lag_seconds"] <= p["max_lag"]
            if done:
                break
            if time.monotonic() > deadline:
                module.fail_json(msg=f"the {p['direction']} sync did not reach {p['wait_for']} within "
                                 f"{p['timeout']}s: {status.one_line(s)}", status=s)
            time.sleep(1)
    module.exit_json(changed=applied > 0, applied=applied, status=s, msg=status.one_line(s))


if __name__ == "__main__":
    main()
