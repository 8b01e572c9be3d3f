"""A background step that outlasts 2,000 progress intervals is waited on to the end: the dump phase with a
stand-in pg_dump that holds the data section until the playbook has printed 2,000 progress lines, then dumps
for real. The playbook succeeds, every line carries a rate and an ETA, and the dump's record reaches done.

Waiting by including a task file again per poll died after 245 polls (RecursionError, exit 250, the job
left running); the wait must not depend on how many polls a phase takes. Counting lines rather than seconds
makes the test exact on a slow or busy machine: the stand-in is released by the test once it has seen
POLLS lines, so it runs for at least that many polls whatever one poll costs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from bench import common as bench_common
from tests.conftest import ROOT
from tests.playbooks.conftest import recorded

pytestmark = pytest.mark.slow

POLLS = 2000
# Seconds between progress lines. Whole seconds (GE_LONG_POLL_INTERVAL=1) run the same test against roles
# that take only an int there, e.g. to see the old self-including poll.yml fail.
INTERVAL = json.loads(os.environ.get("GE_LONG_POLL_INTERVAL", "0.01"))
# The stand-in gives up after this long, so a wait that never ends cannot hold CI, or an orphaned job a host.
DEADLINE = 300

# One progress line of the dump while it runs (the engine's progress.format_line), e.g.
# "dump      running  120.0 KiB / ~1.2 MiB (9.8%)  40.1 KiB/s  ETA 0:00:27  data".
RUNNING = re.compile(r"\bdump\s+running\s+(?P<done>\S+ \S+)(?: / \S+ \S+)?(?: \(\S+%\))?\s+(?P<rate>-|\S+ \S+/s)"
                     r"\s+ETA (?P<eta>\d+d \d+:\d\d:\d\d|\d+:\d\d:\d\d|unknown)")

STANDIN = r"""#!/bin/bash
# pg_dump stand-in: --section=data holds until $RELEASE exists (growing a scratch file next to the dump, so
# the progress lines show a rate), then runs the real pg_dump. Other sections and calls pass straight on.
RELEASE={release}
ABORT={abort}
case " $* " in
  *" --section=data "*)
    for arg in "$@"; do case "$arg" in --file=*) out=${{arg#--file=}};; esac; done
    scratch="$(dirname "$out")/.standin-growing"
    end=$((SECONDS + {deadline}))
    until [ -e "$RELEASE" ]; do
      if [ -e "$ABORT" ] || [ "$SECONDS" -ge "$end" ]; then
        rm -f "$scratch"; echo "pg_dump stand-in: never released" >&2; exit 3
      fi
      head -c 2048 /dev/zero >> "$scratch"
      sleep 0.05
    done
    rm -f "$scratch";;
esac
exec pg_dump "$@"
"""


def _standin(directory: Path) -> tuple[Path, Path, Path]:
    release, abort = directory / "release", directory / "abort"
    script = directory / "pg_dump_standin"
    script.write_text(STANDIN.format(release=release, abort=abort, deadline=DEADLINE))
    script.chmod(0o755)
    return script, release, abort


def test_dump_outlasting_2000_polls_finishes(dbpair, inventory, tmp_path):
    dbpair.sql_source("CREATE TABLE orders (id int PRIMARY KEY, note text); "
                      "INSERT INTO orders SELECT g, repeat('n', 200) FROM generate_series(1, 20000) g")
    work = Path(yaml.safe_load((inventory / "group_vars/all/main.yml").read_text())["ge_local_root"])
    subprocess.run(["rm", "-rf", str(work / "dump"), str(work / "state")], check=True)
    script, release, abort = _standin(tmp_path)

    cmd = [bench_common.ANSIBLE_PLAYBOOK, "-i", str(inventory), str(ROOT / "playbooks/04_dump.yml"),
           "-e", json.dumps({"dump_poll_interval": INTERVAL, "dump_pg_dump": str(script),
                              "ge_copy_method": "pg_dump"})]  # the data section, whose size is estimated
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=bench_common.playbook_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []
    running: list[re.Match[str]] = []
    released_at: float | None = None
    timer = threading.Timer(DEADLINE + 60, os.killpg, (proc.pid, signal.SIGKILL))
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            match = RUNNING.search(line)
            if match:
                running.append(match)
                if len(running) == POLLS:
                    release.touch()
                    released_at = time.monotonic() - started
        rc = proc.wait()
    finally:
        timer.cancel()
        abort.touch()  # an orphaned stand-in stops at once instead of at its deadline
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    elapsed = time.monotonic() - started
    output = "".join(lines)
    sys.stdout.write(f"\nlong poll: {len(running)} progress lines, released after {released_at} s, "
                     f"playbook {elapsed:.1f} s, interval {INTERVAL} s\n")

    assert rc == 0, f"04_dump.yml failed ({rc}) after {len(running)} progress lines:\n{output[-6000:]}"
    assert len(running) >= POLLS
    # Every interval gave a line; once bytes move they carry a rate and a time left.
    assert any(m["rate"].endswith("/s") and m["eta"] != "unknown" for m in running), running[-1].group(0)
    assert "RecursionError" not in output

    for section in ("pre-data", "data", "post-data"):
        assert '"rc": 0' in (work / "dump" / f"{section}.done.json").read_text()
    assert not (work / "dump" / ".standin-growing").exists()
    dump = recorded(work / "state", "dump")
    assert dump["state"] == "done" and dump["done"] == dump["total"] > 0


# --------------------------------------------------------------------------- the wait's own failure modes

# The wait's progress line that names the job's process group.
JOB_GROUP = re.compile(r"waiting for the stand-in job: .*`kill -- -(\d+)`")
WAIT_PLAYBOOK = """
- name: Wait for a stand-in job
  hosts: localhost
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: Start the stand-in job
      ansible.builtin.shell: "{{ job }}"
      async: 600
      poll: 0
      changed_when: true
      register: standin_job

    - name: Wait for the stand-in job
      ge_wait:
        jid: "{{ standin_job.ansible_job_id }}"
        interval: 0.1
        what: the stand-in job
        phase: standin
        state_dir: "{{ state_dir }}"
        measure_path: "{{ state_dir }}"
      register: standin_status
      failed_when: not standin_status.finished | default(false)

    - name: Keep the result for the test
      ansible.builtin.copy:
        content: "{{ standin_status | to_json }}"
        dest: "{{ state_dir }}/result.json"
        mode: "0644"
"""


def _wait_for(tmp_path: Path, job: str, **popen: object) -> subprocess.Popen[str]:
    (tmp_path / "wait.yml").write_text(WAIT_PLAYBOOK)
    (tmp_path / "state").mkdir(exist_ok=True)
    cmd = [bench_common.ANSIBLE_PLAYBOOK, "-i", "localhost,", "-c", "local", str(tmp_path / "wait.yml"),
           "-e", json.dumps({"job": job, "state_dir": str(tmp_path / "state")})]
    return subprocess.Popen(cmd, cwd=ROOT, env=bench_common.playbook_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, **popen)  # type: ignore[call-overload]


def _record(tmp_path: Path) -> dict[str, object]:
    return json.loads((tmp_path / "state" / "progress-standin.json").read_text())


def test_a_failed_job_returns_its_result_and_is_recorded_failed(tmp_path):
    proc = _wait_for(tmp_path, "sleep 1; echo half done >&2; exit 3")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    result = json.loads((tmp_path / "state" / "result.json").read_text())
    assert (result["finished"], result["rc"], result["stderr"]) == (True, 3, "half done")
    assert result["polls"] >= 1 and "the stand-in job ended after" in out
    assert _record(tmp_path)["state"] == "failed"


def test_a_job_killed_without_a_result_fails_the_wait_at_once(tmp_path):
    """The job's process group, named by the wait, killed from outside before any result. (A job that ran
    `kill -9 0` itself sometimes left async_wrapper's job process alive to write a failure result: the
    wrapper moves that process into its own group only after forking it, so a child started meanwhile stays
    in the old group.)"""
    marker = f"standin-{os.getpid()}-{time.monotonic_ns()}"
    proc = _wait_for(tmp_path, f"sleep 300; : {marker}")
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        found = JOB_GROUP.search(line)
        if found:
            os.killpg(int(found.group(1)), signal.SIGKILL)
            break
    out = "".join(lines) + proc.communicate(timeout=300)[0]
    subprocess.run(["pkill", "-KILL", "-f", marker], check=False)  # a shell left in the old group, if any
    assert proc.returncode != 0
    assert "the stand-in job ended without writing its result" in out
    assert re.search(r"It may still run: async job j\d+\.\d+ on localhost", out)


def test_an_interrupted_wait_leaves_the_job_named_in_its_record(tmp_path):
    proc = _wait_for(tmp_path, "sleep 300", start_new_session=True)
    group = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            found = JOB_GROUP.search(line)
            group = int(found.group(1)) if found else group
            if group and re.search(r"\bstandin\s+running\b", line):
                break
        assert group, "no line named the job's process group"
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=60)
        detail = str(_record(tmp_path)["detail"])
        assert "nobody waits for the stand-in job" in detail and f"kill -- -{group}" in detail
        os.killpg(group, 0)  # the job runs on, as the record says
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if group:
            os.killpg(group, signal.SIGKILL)
