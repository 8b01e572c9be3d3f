"""Progress records: rate and ETA from this run's work, atomic files, the CLI the roles call."""

import dataclasses
import json

import pytest

from great_escape import cli, progress
from great_escape.errors import ConfigError


def test_rate_and_eta_count_only_this_run(tmp_path):
    progress.record(tmp_path, "dump", 1000, 5000, now=100.0, restart=True)
    p = progress.record(tmp_path, "dump", 3000, 5000, now=110.0)
    assert p.started_at == 100.0 and p.start_done == 1000
    assert p.rate == pytest.approx(200.0)
    assert p.eta_seconds == pytest.approx(10.0)
    assert p.fraction == pytest.approx(0.6)


def test_new_run_after_done_resets_start(tmp_path):
    progress.record(tmp_path, "transfer", 10, 10, state="done", now=1.0)
    p = progress.record(tmp_path, "transfer", 4, 10, now=50.0)
    assert (p.started_at, p.start_done, p.rate, p.eta_seconds) == (50.0, 4, None, None)


def test_done_has_zero_eta_and_duration_line(tmp_path):
    progress.record(tmp_path, "restore", 0, 3, "tables", now=0.0)
    p = progress.record(tmp_path, "restore", 3, 3, "tables", state="done", now=3725.0)
    assert p.eta_seconds == 0.0
    assert progress.format_line(p) == (
        "restore    done      3 tables / 3 tables (100.0%)  0 tables/s  took 1:02:05")


def test_line_flags_estimate_and_unknown_eta(tmp_path):
    p = progress.record(tmp_path, "dump", 0, 3 * 1024**3, estimated=True, detail="data", now=5.0)
    line = progress.format_line(p)
    assert "0 B / ~3.0 GiB (0.0%)" in line and "ETA unknown" in line and line.endswith("data")


def test_unknown_total_has_no_fraction(tmp_path):
    p = progress.record(tmp_path, "dump", 2048, None, now=1.0)
    assert p.fraction is None and p.eta_seconds is None
    assert "2.0 KiB  -  ETA unknown" in progress.format_line(p)


@pytest.mark.parametrize("bad", [dict(state="half"), dict(unit="parsecs"), dict(done=-1)])
def test_bad_samples_are_refused(tmp_path, bad):
    args = dict(done=1, total=2, unit="bytes", state="running") | bad
    with pytest.raises(ConfigError):
        progress.record(tmp_path, "dump", args["done"], args["total"], args["unit"], state=args["state"])


def test_phase_name_cannot_escape_state_dir(tmp_path):
    with pytest.raises(ConfigError, match="not usable as a file name"):
        progress.record(tmp_path, "../etc/passwd", 1, 1)


def test_corrupt_file_names_the_file(tmp_path):
    (tmp_path / "progress-dump.json").write_text("{not json")
    with pytest.raises(ConfigError, match="progress-dump.json"):
        progress.load(tmp_path, "dump")


def test_directory_size_counts_nested_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"1" * 700)
    (tmp_path / "y").write_bytes(b"2" * 300)
    assert progress.directory_size(tmp_path) == 1000


def test_cli_measure_then_show_lists_phases_in_order(tmp_path, capsys):
    data = tmp_path / "dump"
    data.mkdir()
    (data / "1.dat.gz").write_bytes(b"z" * 4096)
    state = str(tmp_path / "state")
    assert cli.main(["progress", "record", "--state-dir", state, "--phase", "restore", "--done", "1",
                     "--total", "4", "--unit", "tables"]) == 0
    assert cli.main(["progress", "measure", "--state-dir", state, "--phase", "dump", "--path", str(data),
                     "--total", "8192", "--estimated", "--detail", "data"]) == 0
    capsys.readouterr()
    assert cli.main(["progress", "show", "--state-dir", state]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["dump", "restore"]
    assert "4.0 KiB / ~8.0 KiB (50.0%)" in lines[0]
    assert cli.main(["progress", "show", "--state-dir", state, "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert records[1] | {"phase": "restore", "done": 1, "total": 4} == records[1]
    assert "eta_seconds" in records[0]


def test_show_tells_the_age_of_a_running_record_only(tmp_path, capsys):
    state = tmp_path / "state"
    progress.record(state, "dump", 10, 100, state="done")
    stale = progress.record(state, "restore", 5, 100, state="running")
    progress._write_atomic(progress.path_for(state, "restore"), json.dumps(
        dict(dataclasses.asdict(stale), updated_at=stale.updated_at - 7200)) + "\n")
    assert cli.main(["progress", "show", "--state-dir", str(state)]) == 0
    dump, restore = capsys.readouterr().out.splitlines()
    assert "last sample" not in dump
    assert restore.endswith("last sample 2:00:00 ago")
