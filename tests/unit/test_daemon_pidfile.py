"""The supervisor's pid file after a reboot: the pid it names may belong to another process by then."""

from __future__ import annotations

import os
import subprocess
import sys

from great_escape import daemon


def test_a_pid_file_naming_another_live_process_is_not_a_running_supervisor(tmp_path):
    pidfile = tmp_path / "sync-forward.pid"
    pidfile.write_text(str(os.getpid()))  # alive, ours, but not a supervisor
    assert daemon.running_pid(pidfile) is None


def test_a_supervisor_process_is_found_by_its_pid_file(tmp_path):
    pidfile = tmp_path / "sync-forward.pid"
    # A process whose command line is a supervisor's, as `great-escape supervise run` has it; it says when it
    # runs (until then /proc shows the forked test's own command line).
    proc = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)",
                             "supervise", "run"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        pidfile.write_text(str(proc.pid))
        assert daemon.running_pid(pidfile) == proc.pid
    finally:
        proc.kill()
        proc.communicate()
    assert daemon.running_pid(pidfile) is None
