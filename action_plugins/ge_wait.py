"""Wait for an async job (a task started with ``async:`` and ``poll: 0``) for as long as it runs, printing one
progress line with rate and ETA per interval and recording it in the engine's progress records.

One task, one loop on the controller: nothing nests, so a dump that runs for days polls as often as it needs.
Each poll is one shell command on the job's host (wait for the job's results file for at most one interval,
check that the job's process group is alive, measure the progress); the poll that sees the job ended reads
its results file too and returns it as Ansible's ``async_status`` module would (a module run less at each end
of the wait). The job's process group is found once at the start and named in the
first line and in every error, so an interrupted wait never leaves a job running unmentioned.
"""

from __future__ import annotations

import json
import math
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

# Read by people only: ansible-doc reads modules, not action plugins.
DOCUMENTATION = r"""
---
module: ge_wait
short_description: Wait for a long async job, one progress line with rate and ETA per interval
description:
  - Waits, without a task loop or nested includes, until the async job O(jid) ends, however long it runs.
  - At every O(interval) it measures the progress on the job's host (O(measure_path) or O(measure_argv)),
    records it with the great_escape engine's progress records in O(state_dir) (read by
    C(great-escape progress show --state-dir DIR)) and prints one line, e.g.
    C([source] dump      running  1.2 GiB / ~3.4 GiB (35.3%)  12.3 MiB/s  ETA 0:03:10  data).
  - The wait ends within a quarter of a second of the job's end, then returns the job's own result
    (C(rc), C(stdout), C(stderr), C(msg)) with C(finished=true). A job that failed is recorded as C(failed)
    in its phase's record.
  - Errors of the wait itself (the job's results file gone, the job killed without a result, a lost
    connection, an interrupt) return C(finished=false) and a message naming the job's process group and
    how to stop it, since the job may still run.
version_added: "0.1.0"
options:
  jid:
    description:
      - The C(ansible_job_id) registered from the task started with C(async) and C(poll=0).
      - May be omitted in check mode only, where the starting task did not run; the wait is then skipped.
    type: str
  interval:
    description: Seconds between progress lines (a fraction is allowed).
    type: float
    default: 10
  what:
    description: What the job is, for the messages, e.g. C(pg_dump --section=data).
    type: str
    default: the job
  phase:
    description: Phase of the progress record, e.g. C(dump).
    type: str
    required: true
  state_dir:
    description: Directory of the progress records, on the controller or, with O(record_on_host), on the job's host.
    type: path
    required: true
  progress_python:
    description:
      - Python with the great_escape engine, on the controller or, with O(record_on_host), on the job's host.
        On the controller the records are written in-process when its Python imports the engine (the project's
        venv); otherwise each sample runs C(PYTHON -m great_escape.cli progress record).
    type: str
  record_on_host:
    description:
      - Write the records on the job's host (its C(delegate_to)) with O(progress_python) there, one command per
        sample over the task's connection, so that host answers C(great-escape progress show); for jobs on the
        host where the engine is installed (the replication host). Default, on the controller.
    type: bool
    default: false
  total:
    description: The total amount, when known; omit when unknown.
    type: int
  estimated:
    description: O(total) is an estimate.
    type: bool
    default: false
  cap_at_total:
    description: Report no more than O(total) done (a directory that also holds what is not counted).
    type: bool
    default: false
  unit:
    description: Unit of the amounts.
    type: str
    default: bytes
    choices: [bytes, tables, rows, items]
  detail:
    description:
      - Shown after the ETA and kept in the record. With O(measure_done_key) its C({name}) fields are filled
        from the measure's JSON output, e.g. C(data {tables_done}/{tables_total} tables).
    type: str
    default: ""
  measure_path:
    description: Directory on the job's host whose size (C(du --summarize --bytes)) is the amount done.
    type: str
  measure_argv:
    description:
      - Command on the job's host that prints the amount done as its first word, or a JSON object
        (see O(measure_done_key)). A failing measure is shown and the wait goes on.
    type: list
    elements: str
  measure_done_key:
    description: Key of the amount done in the JSON object O(measure_argv) prints.
    type: str
  measure_total_key:
    description: Key of the total in that JSON object; it replaces O(total).
    type: str
attributes:
  check_mode:
    support: full
    details: A job started in check mode is waited on and shown, but nothing is recorded.
  diff_mode:
    support: none
notes:
  - An action plugin running on the controller; the polls run on the job's host (or its C(delegate_to))
    with the task's connection and become settings, and need only C(sh), C(cat), C(sleep), C(ps) and
    C(du) there.
  - The job's own time limit is the starting task's C(async) value; Ansible kills the job when it is reached.
  - A job found dead without a result (host rebooted, killed with SIGKILL) fails the wait at the next poll.
seealso:
  - module: ansible.builtin.async_status
author: great-escape
"""

EXAMPLES = r"""
- name: Start pg_dump of the data section
  ansible.builtin.command:
    argv: [pg_dump, --format=directory, --file=/srv/dump/data, --section=data, app]
  async: 1209600
  poll: 0
  changed_when: true
  register: dump_job

- name: Wait for pg_dump, one progress line per interval
  ge_wait:
    jid: "{{ dump_job.ansible_job_id }}"
    interval: 10
    what: pg_dump --section=data
    phase: dump
    state_dir: /var/lib/great-escape/state
    measure_path: /srv/dump
    total: 1500000000000
    estimated: true
    detail: data
  register: dump_job_status
  failed_when: not dump_job_status.finished | default(false)

- name: Fail when pg_dump failed
  ansible.builtin.assert:
    that: dump_job_status.rc | default(1) == 0
    fail_msg: "pg_dump failed ({{ dump_job_status.rc | default('?') }}): {{ dump_job_status.stderr | default('') }}"
"""

RETURN = r"""
finished:
  description: True when the job ended and the other keys are its result; false when the wait failed.
  returned: always
  type: bool
rc:
  description: The job's exit status (command and shell jobs).
  returned: when the job returned one
  type: int
stdout:
  description: The job's standard output.
  returned: when the job returned one
  type: str
stderr:
  description: The job's standard error.
  returned: when the job returned one
  type: str
polls:
  description: Progress intervals waited.
  returned: always
  type: int
waited:
  description: Seconds waited.
  returned: always
  type: float
progress:
  description: The last progress line.
  returned: always
  type: str
process_group:
  description: The job's process group on the host (kill -- -GROUP stops it); null when it was not found.
  returned: always
  type: int
"""

display = Display()

ARGUMENT_SPEC: dict[str, Any] = {
    "jid": {"type": "str"},
    "interval": {"type": "float", "default": 10},
    "what": {"type": "str", "default": "the job"},
    "phase": {"type": "str", "required": True},
    "state_dir": {"type": "path", "required": True},
    "progress_python": {"type": "str"},
    "record_on_host": {"type": "bool", "default": False},
    "total": {"type": "int"},
    "estimated": {"type": "bool", "default": False},
    "cap_at_total": {"type": "bool", "default": False},
    "unit": {"type": "str", "default": "bytes", "choices": ["bytes", "tables", "rows", "items"]},
    "detail": {"type": "str", "default": ""},
    "measure_path": {"type": "str"},
    "measure_argv": {"type": "list", "elements": "str"},
    "measure_done_key": {"type": "str"},
    "measure_total_key": {"type": "str"},
}
MUTUALLY_EXCLUSIVE = [["measure_path", "measure_argv"]]
REQUIRED_BY = {"measure_done_key": ["measure_argv"], "measure_total_key": ["measure_done_key"]}

# The longest the wait may overrun the job's end: the results file is looked at this often.
CHECK_STEP = 0.25
# Polls in a row that may fail to reach the host before the wait gives up.
CONNECTION_RETRIES = 5
# A sample written by async_wrapper while the job runs; its result, once written, starts otherwise.
_RUNNING_HEAD = '{"started"'
_MARK = "--ge-wait--"


# --------------------------------------------------------------------------- pure helpers (tests/unit)

@dataclass(frozen=True)
class Poll:
    """What one poll saw on the host."""

    state: str  # running | ended | missing (the results file)
    alive: bool | None  # the job's process group exists; None when the group is unknown
    measure_rc: int | None  # None: nothing was measured
    measure_out: str = ""
    result: str | None = None  # the results file's text, once the job has ended


@dataclass
class Sample:
    done: int | None = None
    total: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def check_steps(interval: float) -> tuple[int, float]:
    """(checks, seconds between checks): the wait looks at the results file `checks` times an interval."""
    steps = max(1, math.ceil(interval / CHECK_STEP - 1e-9))
    return steps, interval / steps


def wrapper_pattern(jid: str) -> str:
    """grep pattern of the lines of `ps -eo ...,args` that show the job's async_wrapper processes (their
    arguments carry the jid without its .PID suffix); the brackets keep the grep and the poll's own shell,
    whose arguments hold this pattern, from matching it."""
    prefix = jid.rsplit(".", 1)[0]
    if not prefix.replace("_", "").isalnum():
        raise ValueError(f"{jid!r} is not an async job id (like j123456789012.4567)")
    return f"[a]sync_wrapper[^ ]* {prefix} "


def poll_script(results_file: str, interval: float, jid: str, group: int | None, measure: list[str] | None,
                after_end: bool = False) -> str:
    """POSIX sh for one poll: wait up to `interval` for the job to end, then report whether it wrote its
    result, whether it still runs, and the measure's output, after marker lines. A job that has ended is
    measured only `after_end` (a failed job's last line): a measure may be a Python start of a second or so,
    which every phase would otherwise wait for after its job.

    Each check uses shell builtins only (no process started): the results file's first line, and while the
    group is known `kill -0`. The file is what ends the wait: the job's group outlives the job by up to 5 s,
    its leader a zombie until async_wrapper's supervisor wakes from its sleep to reap it. Without the group,
    `ps` tells once per poll whether the job's async_wrapper processes still run."""
    steps, step = check_steps(interval)
    quoted = shlex.quote(results_file)
    ended = (f"{{ l=; [ -r {quoted} ] && IFS= read -r l < {quoted}; "
             f"case $l in ''|'{_RUNNING_HEAD}'*) false;; esac; }}")
    if group is None:
        gone = f"[ ! -e {quoted} ] || {ended}"
        alive = ("if ! ps -ww -eo args= >/dev/null 2>&1; then al=unknown\n"
                 f"elif ps -ww -eo args= 2>/dev/null | grep -q -e {shlex.quote(wrapper_pattern(jid))}; then al=1\n"
                 "else al=0; fi")
    else:
        # kill -0 answers for our own jobs; ps also for a group we may not signal (another user's).
        gone = f"! kill -0 -{group} 2>/dev/null || {ended}"
        alive = (f"if kill -0 -{group} 2>/dev/null; then al=1\n"
                 f"elif ps -eo pgid= 2>/dev/null | tr -d ' ' | grep -qx {group}; then al=1\n"
                 "else al=0; fi")
    lines = [
        "i=0; unset mrc",
        f"until {gone} || [ \"$i\" -ge {steps} ]; do sleep {step:.3f}; i=$((i + 1)); done",
        f"if [ ! -e {quoted} ]; then st=missing; elif {ended}; then st=ended; else st=running; fi",
    ]
    if measure:
        # Measured before the state is told: a job that ends while the measure runs (its own last record written
        # meanwhile) is reported ended, so the wait records no "running" sample after that record.
        run = f'mo=$({" ".join(shlex.quote(a) for a in measure)}); mrc=$?'
        lines.append(run if after_end else
                     f'if [ "$st" != ended ]; then {run}; if [ "$st" = running ] && {ended}; then st=ended; fi; fi')
    lines += [
        alive,
        f'echo "{_MARK} state=$st alive=$al"',
        # The job's result, read here instead of by a second module run (async_status, ~0.4 s a call).
        f'if [ "$st" = ended ]; then echo "{_MARK} result"; cat {quoted}; echo; echo "{_MARK} result-end"; fi',
    ]
    if measure:
        lines.append(f'if [ -n "${{mrc+x}}" ]; then printf \'%s\\n\' "$mo"; echo "{_MARK} measure_rc=$mrc"; fi')
    return "\n".join(lines) + "\n"


def parse_poll(stdout: str) -> Poll:
    """The poll script's output -> Poll; ValueError when it is not the script's output."""
    # Through ssh with a terminal (become's -tt) every line ends in \r\n; the job's JSON has no raw line break.
    head, sep, rest = stdout.replace("\r\n", "\n").partition(_MARK + " state=")
    if not sep:
        raise ValueError(f"unexpected output of the poll: {stdout.strip()[-500:]!r}")
    status_line, _, rest = rest.partition("\n")
    state, _, alive = status_line.partition(" alive=")
    if state not in ("running", "ended", "missing"):
        raise ValueError(f"unexpected job state in the poll's output: {status_line!r}")
    result, opening = None, f"{_MARK} result\n"
    if rest.startswith(opening):
        result, sep, rest = rest[len(opening):].partition(f"\n{_MARK} result-end\n")
        if not sep:
            raise ValueError(f"the job's result was cut short in the poll's output: {result[-500:]!r}")
    measure_out, sep, rc_line = rest.rpartition(_MARK + " measure_rc=")
    measure_rc = int(rc_line.split()[0]) if sep else None
    return Poll(state, {"1": True, "0": False}.get(alive.strip()), measure_rc, measure_out if sep else "", result)


def job_status(text: str, jid: str) -> dict[str, Any]:
    """An ended job's results file -> the result Ansible's async_status would return for it."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return {"failed": True, "finished": True, "ansible_job_id": jid,
                "msg": f"could not parse the job's output: {text.strip()[:500]!r}"}
    data = {k: v for k, v in data.items() if not k.startswith("_ansible_")}
    data.update(finished=True, ansible_job_id=jid)
    for stream in ("stdout", "stderr"):
        if isinstance(data.get(stream), str) and f"{stream}_lines" not in data:
            data[f"{stream}_lines"] = data[stream].splitlines()
    return data


def parse_measure(output: str, rc: int, done_key: str | None, total_key: str | None) -> Sample:
    """The measure's output -> Sample; a failure is reported in Sample.error, never raised."""
    if rc != 0:
        return Sample(error=f"exit {rc}: {_first_line(output)}")
    try:
        if done_key:
            fields = json.loads(output)
            if not isinstance(fields, dict):
                raise ValueError(f"not a JSON object: {_first_line(output)}")
            total = int(fields[total_key]) if total_key else None
            return Sample(int(fields[done_key]), total, fields)
        return Sample(int(output.split()[0]))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return Sample(error=f"unreadable output ({exc.__class__.__name__}: {exc}): {_first_line(output)}")


class _Unknown(dict):  # type: ignore[type-arg]
    def __missing__(self, key: str) -> str:
        return "?"


def fill_detail(template: str, fields: dict[str, Any]) -> str:
    """`detail` with its {name} fields from the measure's JSON, "?" for a field not measured (yet); a template
    that is not a format string stays as it is."""
    try:
        return template.format_map(_Unknown(fields))
    except (IndexError, ValueError, AttributeError, TypeError):
        return template


def find_group(ps_output: str, jid: str) -> int | None:
    """The job's process group from the lines of `ps -eo pid=,pgid=,args=` that match wrapper_pattern(jid):
    async_wrapper forks a child that leads its own group and runs the job in it; the supervising parent
    stays in the group of the daemonized wrapper."""
    prefix = jid.rsplit(".", 1)[0]
    for line in ps_output.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3 or not parts[0].isdigit() or parts[0] != parts[1]:
            continue
        args = parts[2].split()
        if prefix in args and any("async_wrapper" in a for a in args):
            return int(parts[0])
    return None


def stop_hint(host: str, jid: str, group: int | None) -> str:
    """How to see and stop the job, for the operator."""
    if group is None:
        prefix = jid.rsplit(".", 1)[0]
        return (f"async job {jid} on {host}, process group not found: find it there with "
                f"`ps -ww -eo pid,pgid,args | grep {prefix}` and stop it with `kill -- -PGID`")
    return (f"async job {jid} on {host}, process group {group}: see it there with `pgrep -a -g {group}`, "
            f"stop it with `kill -- -{group}`")


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "(no output)"


# --------------------------------------------------------------------------- progress records

class _Recorder:
    """Writes samples with the engine's progress records and formats the line: on the controller in-process when
    its Python has the engine, else through `progress_python -m great_escape.cli`; on the job's host through
    `shell` (the action's connection) when given."""

    def __init__(self, state_dir: str, phase: str, unit: str, python: str | None, check_mode: bool,
                 shell: Callable[[str], dict[str, Any]] | None = None) -> None:
        self.state_dir, self.phase, self.unit, self.python = Path(state_dir), phase, unit, python
        self.check_mode, self.shell = check_mode, shell
        self.started = time.time()
        self.start_done: int | None = None
        self.engine = None
        if shell is not None:
            if not python:
                raise AnsibleError("record_on_host needs progress_python: the engine's Python on the job's host")
            return
        try:
            from great_escape import progress
        except ImportError:
            if not python:
                raise AnsibleError("the great_escape engine is not importable by the controller's Python "
                                   f"({sys.executable}) and no progress_python is given") from None
        else:
            self.engine = progress

    def record(self, done: int, total: int | None, state: str, detail: str, estimated: bool) -> str:
        if self.start_done is None:
            self.start_done = done
        if self.engine is None:
            return self._record_with(done, total, state, detail, estimated)
        if self.check_mode:  # nothing written: the line from this wait's own samples
            p = self.engine.Progress(self.phase, done, total, self.unit, state, self.started, time.time(),
                                     self.start_done, estimated, detail)
        else:
            p = self.engine.record(self.state_dir, self.phase, done, total, self.unit, state=state,
                                   detail=detail, estimated=estimated)
        return str(self.engine.format_line(p))

    def _record_with(self, done: int, total: int | None, state: str, detail: str, estimated: bool) -> str:
        if self.check_mode:
            return f"{self.phase}  {state}  {done} {self.unit}  (check mode, not recorded)  {detail}"
        argv = [str(self.python), "-m", "great_escape.cli", "progress", "record", "--state-dir", str(self.state_dir),
                "--phase", self.phase, "--done", str(done), "--unit", self.unit, "--state", state, "--detail", detail]
        if total is not None:
            argv += ["--total", str(total)] + (["--estimated"] if estimated else [])
        if self.shell is not None:
            out = self.shell(shlex.join(argv))
            rc, stdout, stderr = out.get("rc"), out.get("stdout", ""), out.get("stderr", "")
        else:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
            rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        if rc != 0:
            raise AnsibleError(f"recording the progress of {self.phase} failed: {_first_line(stderr or stdout)}")
        return str(stdout).strip()


# --------------------------------------------------------------------------- the action

class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        del tmp
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC, mutually_exclusive=MUTUALLY_EXCLUSIVE,
                                              required_by=REQUIRED_BY)
        check_mode = bool(self._task.check_mode if self._task.check_mode is not None
                          else self._play_context.check_mode)
        if not args["jid"]:
            if check_mode:
                return dict(result, skipped=True, finished=False, polls=0, waited=0.0, progress="",
                            process_group=None, msg="check mode: the job was not started, nothing to wait for")
            raise AnsibleError("ge_wait: jid is empty: pass the ansible_job_id registered from the task started "
                               "with async and poll: 0")
        if not args["interval"] > 0:
            raise AnsibleError(f"ge_wait: interval must be more than 0 seconds, not {args['interval']}")
        try:
            wrapper_pattern(args["jid"])
        except ValueError as exc:
            raise AnsibleError(f"ge_wait: jid {exc}: pass the ansible_job_id registered from the task started "
                               "with async and poll: 0") from None
        host = str((task_vars or {}).get("inventory_hostname", "?"))
        wait = _Wait(self, args, host, check_mode)
        return dict(result, **wait.run())

    # Thin wrappers, so _Wait does not reach into ActionBase's protected API in many places.
    def _shell(self, cmd: str) -> dict[str, Any]:
        # The script is POSIX sh: run by /bin/sh whatever the login shell, and without Ansible's trailing
        # `sleep 0`; the local connection already runs it with /bin/sh (one process less per poll).
        local = self._connection.transport in ("local", "ansible.builtin.local", "ansible.legacy.local")
        return self._low_level_execute_command(cmd, sudoable=True, executable="" if local else "/bin/sh")

    def _async_dir(self) -> str:
        return str(self._remote_expand_user(self.get_shell_option("async_dir", default="~/.ansible_async")))


class _Wait:
    def __init__(self, action: ActionModule, args: dict[str, Any], host: str, check_mode: bool) -> None:
        self.action, self.args, self.host = action, args, host
        self.jid: str = args["jid"]
        self.what: str = args["what"]
        self.group: int | None = None
        self.polls = 0
        self.started = time.monotonic()
        self.line = ""
        self.results_file = ""
        self.previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        self.displaying = False
        self.pending: int | None = None
        self.sample = Sample(total=args["total"])
        self.check_mode = check_mode
        self.recorder: _Recorder | None = None
        if args["measure_path"]:
            self.measure: list[str] | None = ["du", "--summarize", "--bytes", args["measure_path"]]
        else:
            self.measure = args["measure_argv"] or None

    def run(self) -> dict[str, Any]:
        for signum in self.previous:
            signal.signal(signum, self._interrupted)
        try:
            return self._wait()
        except Exception as exc:  # a lost connection, a vanished results file...: say what still runs
            return self._failure(f"{exc}")
        finally:
            for signum, handler in self.previous.items():
                signal.signal(signum, handler)

    def _wait(self) -> dict[str, Any]:
        self.recorder = _Recorder(self.args["state_dir"], self.args["phase"], self.args["unit"],
                                  self.args["progress_python"], self.check_mode,
                                  self.action._shell if self.args["record_on_host"] else None)
        results_file = self.results_file = f"{self.action._async_dir().rstrip('/')}/{self.jid}"
        first = self._poll(results_file, wait=False)
        if first.state == "missing":
            raise AnsibleError(f"no async job {self.jid} on {self.host} (no {results_file}): the task that started "
                               "it did not run there, or its result was already collected")
        status = self._status(first)
        if status is None:
            self.group = self._find_group()
            self._say(f"[{self.host}] waiting for {self.what}: {stop_hint(self.host, self.jid, self.group)}; "
                      f"a line every {self.args['interval']:g} s")
        lost = 0
        while status is None:
            try:
                poll = self._poll(results_file)
            except AnsibleConnectionFailure as exc:  # a network blip must not end a wait of days
                lost += 1
                if lost > CONNECTION_RETRIES:
                    raise
                self._say(f"[{self.host}] polling {self.what} failed ({exc}); retry {lost} of "
                          f"{CONNECTION_RETRIES} in {self.args['interval']:g} s", warning=True)
                time.sleep(self.args["interval"])
                continue
            lost = 0
            self.polls += 1
            if poll.state == "missing":
                raise AnsibleError(f"the results file {results_file} of the async job is gone")
            if poll.alive is False and poll.state != "ended":
                poll = self._poll(results_file, wait=False)  # it may have written its result since that check
                if poll.state != "ended":
                    raise AnsibleError(f"{self.what} ended without writing its result to {results_file} "
                                       "(killed with SIGKILL, or the host restarted)")
            status = self._status(poll)
            if status is None:
                self._show("running")
        return self._finished(status)

    def _find_group(self) -> int | None:
        pattern = shlex.quote(wrapper_pattern(self.jid))
        out = self.action._shell(f"ps -ww -eo pid=,pgid=,args= 2>/dev/null | grep -e {pattern}")
        return find_group(out.get("stdout", ""), self.jid)

    def _status(self, poll: Poll) -> dict[str, Any] | None:
        """The job's result once the poll saw it ended, else None."""
        return job_status(poll.result or "", self.jid) if poll.state == "ended" else None

    def _poll(self, results_file: str, after_end: bool = False, wait: bool = True) -> Poll:
        """One poll; without `wait` a look at once, nothing measured."""
        out = self.action._shell(poll_script(results_file, self.args["interval"] if wait else 0, self.jid, self.group,
                                             self.measure if wait or after_end else None, after_end))
        if out.get("rc") not in (0, None) and _MARK not in out.get("stdout", ""):
            raise AnsibleError(f"polling {self.host} failed (exit {out.get('rc')}): "
                               f"{_first_line(out.get('stderr', '') or out.get('stdout', ''))}")
        poll = parse_poll(out.get("stdout", ""))
        if poll.measure_rc is not None:
            sample = parse_measure(poll.measure_out, poll.measure_rc, self.args["measure_done_key"],
                                   self.args["measure_total_key"])
            if sample.error:
                sample.error += f" {_first_line(out.get('stderr', ''))}" if out.get("stderr") else ""
                self.sample.error = sample.error
            else:
                if sample.total is None:
                    sample.total = self.args["total"]
                self.sample = sample
        return poll

    def _show(self, state: str) -> None:
        done = self.sample.done or 0
        total = self.sample.total
        if self.args["cap_at_total"] and total is not None:
            done = min(done, total)
        detail = self.args["detail"]
        if self.args["measure_done_key"]:
            detail = fill_detail(detail, self.sample.fields)
        if self.sample.error:
            detail = f"{detail} (measure failed: {self.sample.error})".strip()
            self.sample.error = ""
        assert self.recorder is not None
        self.line = f"[{self.host}] {self.recorder.record(done, total, state, detail, self.args['estimated'])}"
        self._say(self.line)

    def _finished(self, status: dict[str, Any]) -> dict[str, Any]:
        failed = bool(status.get("failed")) or status.get("rc", 0) not in (0, None)
        if failed:
            if self.measure:  # what the job got done, measured now that it has ended
                try:
                    self._poll(self.results_file, after_end=True)
                except (AnsibleError, ValueError):
                    pass  # the line shows the last measure
            self._show("failed")
        waited = time.monotonic() - self.started
        self._say(f"[{self.host}] {self.what} ended after {self.polls} poll(s), {waited:.1f} s: "
                  + (f"failed (exit {status.get('rc', '?')})" if failed else "ok"))
        result = {k: v for k, v in status.items() if k not in ("changed", "started", "results_file")}
        return dict(result, changed=False, finished=True, polls=self.polls, waited=round(waited, 3),
                    progress=self.line, process_group=self.group)

    def _failure(self, reason: str) -> dict[str, Any]:
        hint = stop_hint(self.host, self.jid, self.group)
        return {"failed": True, "finished": False, "polls": self.polls, "progress": self.line,
                "waited": round(time.monotonic() - self.started, 3), "process_group": self.group,
                "msg": f"Stopped waiting for {self.what} ({reason}). It may still run: {hint}; "
                       "or let it end and run this phase again."}

    def _say(self, text: str, warning: bool = False) -> None:
        """Display through Ansible's queue to the controller's output with Ctrl-C held back meanwhile: a worker
        ended while it holds the queue's lock would leave ansible-playbook hanging at its exit."""
        self.displaying = True
        try:
            (display.warning if warning else display.display)(text)
        finally:
            self.displaying = False
        if self.pending is not None:
            signum, self.pending = self.pending, None
            self._interrupted(signum, None)

    def _interrupted(self, signum: int, frame: Any) -> None:
        """Ctrl-C or SIGTERM: leave the job's whereabouts in its progress record (the worker's output is
        about to be dropped), then let Ansible's own handler end the worker."""
        if self.displaying:
            self.pending = signum
            return
        handler = self.previous.get(signal.Signals(signum))
        if handler == signal.SIG_IGN:
            return
        # No display here: a signal may arrive while the display queue's lock is held. No remote command
        # either (a record on the job's host): it could hang the worker's exit; `progress show` there tells
        # how old the last sample is.
        try:
            assert self.recorder is not None
            if self.recorder.shell is None:
                self.recorder.record(self.sample.done or 0, self.sample.total, "running",
                                     f"nobody waits for {self.what} any more: "
                                     f"{stop_hint(self.host, self.jid, self.group)}", self.args["estimated"])
        except Exception:  # noqa: BLE001, S110 - best effort on the way out; the first line named the job already
            pass
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if callable(handler):
            handler(signum, frame)
        else:
            signal.raise_signal(signum)
