"""TOC filtering: the project's objects leave the restore list, the application's stay; the restore's prepare step."""

import json

import pytest

from great_escape import progress
from great_escape.errors import RestoreError
from great_escape.restore import filter_toc, finished_items, parse_toc_line, prepare_restore, restore_errors

TOC = """;
; Archive created at 2026-11-25 15:52:01 UTC
3218; 2620 16419 TRIGGER public orders ge_capture_row postgres
3219; 2620 16420 TRIGGER public orders audit_row postgres
3217; 2606 16412 FK CONSTRAINT public Order Lines Order Lines_order_id_fkey postgres
3300; 3466 16500 EVENT TRIGGER - ge_schema_freeze postgres
3310; 3467 16501 EVENT TRIGGER - ge_schema_freeze_drop postgres
3301; 0 0 COMMENT - EVENT TRIGGER ge_schema_freeze postgres
3302; 2615 16600 SCHEMA - ge_capture postgres
3303; 1255 16601 FUNCTION ge_capture capture() postgres
3365; 0 16407 TABLE DATA public Order Lines postgres
3366; 0 16408 TABLE DATA great_escape state postgres
"""


def test_parse_multiword_desc_and_names_with_spaces():
    e = parse_toc_line("3217; 2606 16412 FK CONSTRAINT public Order Lines Order Lines_order_id_fkey postgres")
    assert (e.dump_id, e.desc, e.schema) == (3217, "FK CONSTRAINT", "public")
    assert e.tag == "Order Lines Order Lines_order_id_fkey"
    assert parse_toc_line("; a comment") is None


def test_filter_drops_exactly_the_project_objects():
    kept, dropped = filter_toc(TOC.splitlines())
    assert [int(line.split(";")[0]) for line in dropped] == [3218, 3300, 3310, 3301, 3302, 3303, 3366]
    live = [line for line in kept if line and not line.startswith(";")]
    assert [int(line.split(";")[0]) for line in live] == [3219, 3217, 3365]
    assert len(kept) == len(TOC.splitlines())  # dropped entries stay visible as comments


def test_progress_and_errors_from_the_log():
    log = ("pg_restore: launching item 3365 TABLE DATA Order Lines\n"
           "pg_restore: finished item 3365 TABLE DATA Order Lines\n"
           "pg_restore: finished item 3373 SEQUENCE SET customers_id_seq\n")
    assert finished_items(log) == {3365}
    errors, unexpected = restore_errors(
        'pg_restore: error: could not execute query: ERROR:  relation "t_pkey" already exists\n'
        'pg_restore: error: could not execute query: ERROR:  multiple primary keys for table "t" are not allowed\n'
        "pg_restore: error: could not execute query: ERROR:  permission denied for schema x\n")
    assert len(errors) == 3 and unexpected == ["permission denied for schema x"]


# --------------------------------------------------------------------------- the prepare step (no target needed:
# these cases are decided before any connection; the playbook test covers the target checks)

def _no_connection():
    raise AssertionError("prepare must not connect to the target here")


def _prepare_request(tmp_path, dump_id="abc", password="pa:ss\\word"):
    marker = tmp_path / "transfer.done.json"
    if dump_id is not None:
        marker.write_text(json.dumps({"manifest_sha256": dump_id}))
    return {"target": {"host": "db.example", "port": 5432, "dbname": "app", "user": "master", "password": password},
            "schemas": [], "work_dir": str(tmp_path / "restore"), "dump_dir": str(tmp_path / "dump"),
            "dump_marker": str(marker), "pg_restore": str(_fake_pg_restore(tmp_path))}


def _fake_pg_restore(tmp_path):
    """`pg_restore --list --file=F DIR` that writes the TOC above; stands in for a real archive."""
    script = tmp_path / "pg_restore"
    script.write_text(f"#!/bin/bash\nfor a in \"$@\"; do case $a in --file=*) cat > \"${{a#--file=}}\" <<'TOC'\n"
                      f"{TOC}TOC\n;; esac; done\n")
    script.chmod(0o755)
    return script


def test_prepare_refuses_a_dump_without_its_marker(tmp_path):
    with pytest.raises(RestoreError, match="the dump is not complete on this host"):
        prepare_restore(_no_connection, _prepare_request(tmp_path, dump_id=None))
    assert not (tmp_path / "restore").exists()


def test_prepare_refuses_markers_of_another_dump(tmp_path):
    req = _prepare_request(tmp_path)
    work = tmp_path / "restore"
    work.mkdir()
    (work / "dump_id").write_text("other\n")
    (work / "pre-data.done").write_text("other\n")
    with pytest.raises(RestoreError, match="belong to another dump"):
        prepare_restore(_no_connection, req)
    assert sorted(p.name for p in work.iterdir()) == ["dump_id", "pre-data.done"]


def test_prepare_resumes_writes_the_password_file_and_every_list(tmp_path):
    req = _prepare_request(tmp_path)
    work = tmp_path / "restore"
    work.mkdir()
    for name in ("pre-data.done", "data.started"):
        (work / name).write_text("abc\n")
    result = prepare_restore(_no_connection, req)  # pre-data is done: the target is not checked again
    assert result["dump_id"] == "abc" and result["steps"] == ["data.started", "pre-data.done"]
    assert len(result["dropped"]) == 3 * 7 and set(result["entries"]) == {"pre-data", "data", "post-data"}
    passfile = work / "pgpass"
    assert passfile.stat().st_mode & 0o777 == 0o600
    assert passfile.read_text() == "db.example:5432:app:master:pa\\:ss\\\\word\n"
    assert (work / "dump_id").read_text() == "abc\n"
    assert "3218; 2620" not in (work / "data.list").read_text().replace(";great-escape dropped: 3218", "")


def test_prepare_records_the_start_of_the_restore_run(tmp_path):
    state = tmp_path / "state"
    progress.record(state, "restore", 5, 9, state="failed", detail="an earlier run")
    req = {**_prepare_request(tmp_path), "progress_state_dir": str(state)}
    (tmp_path / "restore").mkdir()
    (tmp_path / "restore" / "pre-data.done").write_text("abc\n")
    prepare_restore(_no_connection, req)
    started = progress.load(state, "restore")
    assert started is not None and started.state == "running" and started.done == 0 and started.detail == "starting"
