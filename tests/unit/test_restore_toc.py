"""TOC filtering: the project's objects leave the restore list, the application's stay."""

from great_escape.restore import filter_toc, finished_items, parse_toc_line, restore_errors

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
