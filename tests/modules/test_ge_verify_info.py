"""ge_verify_info run through `ansible -m`: read-only in check mode and for real, fails naming the keys."""

from __future__ import annotations

import pytest

from tests.conftest import DbPair
from tests.modules.conftest import run_module


@pytest.fixture
def vpair(dbpair: DbPair) -> DbPair:
    ddl = "CREATE TABLE public.accounts (id int PRIMARY KEY, owner text, balance numeric)"
    dbpair.sql_source(ddl)
    dbpair.sql_target(ddl)
    for run in (dbpair.sql_source, dbpair.sql_target):
        run("INSERT INTO public.accounts SELECT g, 'o' || g, g * 2.5 FROM generate_series(1, 40) g")
    dbpair.grant_repl()
    return dbpair


def test_equal_in_check_mode_and_for_real(vpair: DbPair) -> None:
    args = {"source": vpair.source, "target": vpair.repl, "range_rows": 8, "recheck": 0}
    for check in (True, False):
        res = run_module("ge_verify_info", args, check=check)
        assert not res.get("failed"), res.get("msg")
        assert res["changed"] is False and res["mismatched"] == 0 and res["queries"] == []
        accounts = res["tables"][0]
        assert (accounts["table"], accounts["status"], accounts["rows_source"], accounts["ranges"]) == (
            "public.accounts", "ok", 40, 6)
        assert res["summary"][-1].endswith("all equal")


def test_differences_fail_with_keys_unless_told_not_to(vpair: DbPair) -> None:
    vpair.sql_target("UPDATE public.accounts SET balance = 0 WHERE id = 9")
    vpair.sql_target("DELETE FROM public.accounts WHERE id = 31")
    args = {"source": vpair.source, "target": vpair.repl, "range_rows": 8, "recheck": 1, "recheck_wait": 0.1}
    res = run_module("ge_verify_info", args)
    assert res["failed"] is True and res["changed"] is False
    assert "public.accounts" in res["msg"] and "id=9" in res["msg"] and "id=31" in res["msg"]
    diff = res["diffs"][0]
    assert diff["sample_different"] == [{"id": "9"}] and diff["sample_missing_on_target"] == [{"id": "31"}]
    assert res["tables"][0]["status"] == "different"

    told = run_module("ge_verify_info", {**args, "fail_on_mismatch": False})
    assert not told.get("failed") and told["changed"] is False and told["mismatched"] == 1
    assert any("1 missing on target: id=31" in line for line in told["summary"])


def test_unknown_table_is_a_clear_error(vpair: DbPair) -> None:
    args = {"source": vpair.source, "target": vpair.repl, "tables": ["public.nope"]}
    res = run_module("ge_verify_info", args)
    assert res["failed"] is True and "public.nope" in res["msg"] and "schema.table" in res["msg"]
