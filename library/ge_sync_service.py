#!/usr/bin/python
"""Ansible module ge_sync_service: the sync of one direction running in the background, or not."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ge_sync_service
short_description: Start, stop or restart the great-escape sync under the engine's own supervisor
description:
  - The supervisor (C(great-escape supervise run)) runs the sync of one O(direction) in its own session and
    starts it again whenever it dies; its pid file and log are in the configuration's state directory.
  - For hosts where systemd runs, the sync role installs a unit instead (C(ge_sync_service_manager=systemd));
    this module is for the local default and hosts without a service manager.
  - A sync whose sending side is not live (the source after cutover, the target before) is not started;
    the module says why and changes nothing.
version_added: "0.1.0"
options:
  state:
    description: C(restarted) stops a running sync first (after its batch), then starts it.
    type: str
    choices: [started, stopped, restarted]
    default: started
attributes:
  check_mode:
    support: full
    details: Says whether the supervisor runs; starts and stops nothing.
  diff_mode:
    support: none
extends_documentation_fragment:
  - ge_config
author:
  - great-escape contributors
"""

EXAMPLES = r"""
- name: Ensure the forward sync runs in the background
  ge_sync_service:
    config: /var/lib/great-escape/great-escape.yml
    state: started
"""

RETURN = r"""
running:
  description: Whether the supervisor runs after the task (before it, in check mode).
  returned: always
  type: bool
msg:
  description: What happened, e.g. C(started), C(already running), C(not started; the target is live).
  returned: always
  type: str
log:
  description: The supervisor's log file.
  returned: always
  type: str
"""

from ansible.module_utils.ge_common import config_argument_spec, engine_errors, engine_module, load_config


def main() -> None:
    module = engine_module(config_argument_spec(
        state=dict(type="str", choices=["started", "stopped", "restarted"], default="started")))
    from great_escape import daemon

    cfg = load_config(module, as_written=True)  # the supervisor turns it for the reverse sync
    direction, wanted = module.params["direction"], module.params["state"]
    pidfile, logfile = daemon.pid_and_log_files(cfg, direction)
    running = daemon.running_pid(pidfile) is not None
    result = dict(changed=False, running=running, log=str(logfile))
    if module.check_mode:
        change = wanted == "restarted" or running != (wanted == "started")
        module.exit_json(**dict(result, changed=change, msg=f"{'running' if running else 'not running'}"))
    with engine_errors(module, result):
        msg = "not running"
        if wanted in ("stopped", "restarted") and daemon.stop_detached(cfg, direction):
            result["changed"], msg = True, "stopped"
        if wanted in ("started", "restarted"):
            # The supervisor re-reads the configuration when it runs the sync: its own file, not the module's.
            msg = daemon.start_detached(module.params["config"], cfg, direction)
            result["changed"] = result["changed"] or msg == "started"
        result["running"] = daemon.running_pid(pidfile) is not None
    module.exit_json(msg=msg, **result)


if __name__ == "__main__":
    main()
