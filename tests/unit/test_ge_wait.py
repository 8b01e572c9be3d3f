"""The pure parts of action_plugins/ge_wait.py: the poll script (run here with /bin/sh against a fake
results file and a real process group), its output, the measures and the operator's stop hint."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location("ge_wait", ROOT / "action_plugins/ge_wait.py")
assert _spec and _spec.loader
ge_wait = importlib.util.module_from_spec(_spec)
sys.modules["ge_wait"] = ge_wait  # dataclasses look their module up there
_spec.loader.exec_module(ge_wait)

RUNNING = json.dumps({"started": True, "finished": False, "ansible_job_id": "j1.2"})
RESULT = json.dumps({"changed": True, "stdout": '{"started": 1}', "rc": 0, "cmd": "x"})


@pytest.fixture
def group():
    """A process group of our own, like the one async_wrapper leads for a job."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def poll(results: Path, interval: float, pgid: int | None, measure: list[str] | None = None, jid: str = "j1.2",
         after_end: bool = False):
    out = subprocess.run(["/bin/sh", "-c", ge_wait.poll_script(str(results), interval, jid, pgid, measure, after_end)],
                         capture_output=True, text=True, check=True).stdout
    return ge_wait.parse_poll(out)


@pytest.mark.parametrize(("interval", "steps", "step"), [(10, 40, 0.25), (0.02, 1, 0.02), (0.3, 2, 0.15),
                                                        (0.25, 1, 0.25), (86400, 345600, 0.25)])
def test_an_interval_is_checked_every_quarter_second_at_most(interval, steps, step):
    assert ge_wait.check_steps(interval) == (steps, pytest.approx(step))


def test_a_running_job_is_waited_on_for_one_interval_and_measured(tmp_path, group):
    results = tmp_path / "j1.2"
    results.write_text(RUNNING)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_bytes(b"x" * 5000)
    started = time.monotonic()
    seen = poll(results, 0.4, group.pid, ["du", "--summarize", "--bytes", str(tmp_path / "data")])
    assert time.monotonic() - started >= 0.4
    assert (seen.state, seen.alive, seen.measure_rc) == ("running", True, 0)
    assert ge_wait.parse_measure(seen.measure_out, 0, None, None).done >= 5000


def test_the_wait_ends_as_soon_as_the_job_group_ends(tmp_path, group):
    results = tmp_path / "j1.2"
    results.write_text(RUNNING)
    group.kill()
    group.wait()
    started = time.monotonic()
    seen = poll(results, 30, group.pid)
    assert time.monotonic() - started < 5
    assert (seen.state, seen.alive, seen.measure_rc) == ("running", False, None)  # killed before its result


def test_a_written_result_ends_the_wait_while_the_job_group_lingers(tmp_path, group):
    # async_wrapper reaps the job's group leader only when its supervisor wakes (every 5 s): the group still
    # answers kill -0 after the job wrote its result.
    results = tmp_path / "j1.2"
    results.write_text(RESULT)
    started = time.monotonic()
    seen = poll(results, 30, group.pid)
    assert time.monotonic() - started < 1
    assert (seen.state, seen.alive) == ("ended", True)


def test_a_written_result_ends_the_wait_without_a_known_group(tmp_path):
    results = tmp_path / "j1.2"
    results.write_text(RESULT)  # its stdout holds '"started"', the file does not start with it
    started = time.monotonic()
    seen = poll(results, 30, None)
    assert time.monotonic() - started < 5
    assert (seen.state, seen.alive) == ("ended", False)  # no async_wrapper of j1 runs here


def test_without_a_group_ps_tells_whether_the_job_runs(tmp_path):
    results = tmp_path / "j77.5"
    results.write_text(RUNNING)
    # A process that looks like async_wrapper of job j77 (its arguments are all ps shows).
    fake_wrapper = subprocess.Popen(["python3", "-c", "import time; time.sleep(60)", "/tmp/x/async_wrapper.py",
                                     "j77", "600", "/tmp/x/AnsiballZ_command.py", "_"])
    try:
        cmdline = Path(f"/proc/{fake_wrapper.pid}/cmdline")
        deadline = time.monotonic() + 10
        while b"async_wrapper" not in cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)  # until the exec has happened
        assert poll(results, 0.05, None, jid="j77.5").alive is True
    finally:
        fake_wrapper.kill()
        fake_wrapper.wait()
    assert poll(results, 0.05, None, jid="j77.5").alive is False


def test_a_job_id_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="not an async job id"):
        ge_wait.wrapper_pattern("j1; rm -rf /.5")


def test_a_missing_results_file_is_reported(tmp_path, group):
    assert poll(tmp_path / "gone", 0.05, group.pid).state == "missing"


def test_paths_with_quotes_and_spaces_reach_the_shell_intact(tmp_path, group):
    odd = tmp_path / "it's a dir"
    odd.mkdir()
    results = odd / "j1.2"
    results.write_text(RESULT)
    seen = poll(results, 0.05, group.pid, ["du", "--summarize", "--bytes", str(odd)], after_end=True)
    assert seen.state == "ended" and seen.measure_rc == 0


def test_an_ended_job_is_measured_only_when_asked(tmp_path, group):
    # The wait returns the job's result at once; a failed job's last line measures what it got done.
    results = tmp_path / "j1.2"
    results.write_text(RESULT)
    measure = ["sh", "-c", "echo measured > " + shlex.quote(str(tmp_path / "ran"))]
    assert poll(results, 0.05, group.pid, measure).measure_rc is None
    assert not (tmp_path / "ran").exists()
    assert poll(results, 0.05, group.pid, measure, after_end=True).measure_rc == 0
    assert (tmp_path / "ran").read_text() == "measured\n"


def test_the_poll_that_sees_the_job_ended_brings_its_result(tmp_path, group):
    results = tmp_path / "j1.2"
    results.write_text(RUNNING)
    assert poll(results, 0.05, group.pid).result is None
    results.write_text(RESULT + "\n")
    seen = poll(results, 0.05, group.pid, ["true"])
    status = ge_wait.job_status(seen.result, "j1.2")
    assert (status["finished"], status["rc"], status["ansible_job_id"]) == (True, 0, "j1.2")
    assert status["stdout_lines"] == ['{"started": 1}'] and "stderr_lines" not in status


def test_a_job_that_ends_while_it_is_measured_is_reported_ended(tmp_path, group):
    """The job writes its own last progress record as it ends: a poll whose measure ran across that end must not
    report it running (the wait would then record a "running" sample after the job's "done")."""
    results = tmp_path / "j1.2"
    results.write_text(RUNNING)
    ends = f"sleep 0.3; printf '%s' {shlex.quote(RESULT)} > {shlex.quote(str(results))}; echo 7"
    seen = poll(results, 0.05, group.pid, ["sh", "-c", ends])
    assert (seen.state, seen.measure_rc) == ("ended", 0)
    assert ge_wait.job_status(seen.result, "j1.2")["rc"] == 0
    assert ge_wait.parse_measure(seen.measure_out, seen.measure_rc, None, None).done == 7

    results.write_text(RUNNING)
    seen = poll(results, 0.05, group.pid, ["echo", "8"])  # still running after the measure
    assert (seen.state, seen.result, seen.measure_rc) == ("running", None, 0)


def test_a_poll_through_a_terminal_reads_the_same(tmp_path, group):
    # ssh -tt (become over ssh) ends every line in \r\n: found by molecule's hosts, not by the local connection.
    results = tmp_path / "j1.2"
    results.write_text(RESULT)
    out = subprocess.run(["/bin/sh", "-c", ge_wait.poll_script(str(results), 0.05, "j1.2", group.pid, ["echo", "7"],
                                                                after_end=True)],
                         capture_output=True, text=True, check=True).stdout
    seen = ge_wait.parse_poll(out.replace("\n", "\r\n"))
    assert ge_wait.job_status(seen.result, "j1.2")["rc"] == 0
    assert ge_wait.parse_measure(seen.measure_out, seen.measure_rc, None, None).done == 7


def test_a_result_that_is_not_json_fails_the_job_with_its_text():
    status = ge_wait.job_status("Traceback (most recent call last):\n", "j1.2")
    assert status["failed"] is True and status["finished"] is True and "Traceback" in status["msg"]


def test_ansibles_internal_keys_are_not_returned():
    status = ge_wait.job_status(json.dumps({"rc": 1, "_ansible_no_log": False, "stderr": "boom"}), "j1.2")
    assert "_ansible_no_log" not in status and status["stderr_lines"] == ["boom"]


def test_unexpected_poll_output_is_an_error():
    with pytest.raises(ValueError, match="unexpected output"):
        ge_wait.parse_poll("sh: 1: syntax error\n")


@pytest.mark.parametrize(("output", "rc", "keys", "done", "total", "error"), [
    ("123456\t/srv/dump\n", 0, (None, None), 123456, None, ""),
    ('{"bytes_done": 10, "bytes_total": 40, "tables_done": 1}', 0, ("bytes_done", "bytes_total"), 10, 40, ""),
    ("du: cannot access '/srv/x': No such file or directory\n", 1, (None, None), None, None, "exit 1: du: cannot"),
    ("Traceback...\n", 0, ("bytes_done", None), None, None, "unreadable output"),
    ('{"tables_done": 1}', 0, ("bytes_done", None), None, None, "unreadable output (KeyError"),
    ("", 0, (None, None), None, None, "unreadable output"),
])
def test_a_measure_is_read_or_its_failure_told(output, rc, keys, done, total, error):
    sample = ge_wait.parse_measure(output, rc, *keys)
    assert (sample.done, sample.total) == (done, total)
    assert sample.error.startswith(error) if error else not sample.error


def test_the_detail_takes_the_measure_fields_and_survives_a_mismatch():
    template = "data: {tables_done}/{tables_total} tables"
    assert ge_wait.fill_detail(template, {"tables_done": 3, "tables_total": 9}) == "data: 3/9 tables"
    assert ge_wait.fill_detail(template, {}) == "data: ?/? tables"  # before the first measure
    assert ge_wait.fill_detail("data: {0} {", {"tables_done": 3}) == "data: {0} {"


def test_the_job_group_is_the_async_wrapper_child_leading_its_group():
    ps = """16916     16914 /usr/bin/python3 /root/.ansible/tmp/ansible-tmp-1/async_wrapper.py j418880560753 100 /root/.ansible/tmp/ansible-tmp-1/AnsiballZ_command.py _
16917     16917 /usr/bin/python3 /root/.ansible/tmp/ansible-tmp-1/async_wrapper.py j418880560753 100 /root/.ansible/tmp/ansible-tmp-1/AnsiballZ_command.py _
17001     17001 /usr/bin/python3 /root/.ansible/tmp/ansible-tmp-2/async_wrapper.py j99 100 /root/.ansible/tmp/ansible-tmp-2/AnsiballZ_command.py _
17005     16917 grep -F -e j418880560753
"""  # noqa: E501 - ps lines as they are
    assert ge_wait.find_group(ps, "j418880560753.16892") == 16917
    assert ge_wait.find_group(ps, "j5.1") is None


def test_the_stop_hint_names_the_job_and_the_command():
    assert "kill -- -4242" in ge_wait.stop_hint("source", "j1.2", 4242)
    assert "j1.2 on source" in ge_wait.stop_hint("source", "j1.2", 4242)
    assert "grep j1" in ge_wait.stop_hint("source", "j1.2", None)


def test_the_poll_script_parses_as_sh():
    for group in (77, None):
        script = ge_wait.poll_script("/x/j1.2", 10, "j1.2", group, ["du", "--summarize", "--bytes", "/srv"])
        checker = subprocess.run(["/bin/sh", "-n", "-c", script], capture_output=True, text=True, check=False)
        assert checker.returncode == 0, checker.stderr
