"""verify against real clusters: the source (superuser), the simulated Aurora (master / replication user)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml

from great_escape import verify as verifymod
from great_escape.errors import VerifyMismatch
from great_escape.verify import VerifyOptions, format_key, format_table, verify
from tests.conftest import DbPair

FAST = VerifyOptions(range_rows=7, recheck=0, recheck_wait=0, sample=10)


def both(pair: DbPair, query: str, params: Any = None) -> None:
    pair.sql_source(query, params)
    pair.sql_target(query, params)


def result(report: verifymod.VerifyReport, table: str) -> verifymod.TableResult:
    return next(t for t in report.tables if t.table == table)


def test_identical_tables_of_many_types_verify_clean(dbpair: DbPair) -> None:
    both(dbpair, """
        CREATE TABLE public.items (
            id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            doc jsonb, amount numeric(12,3), at timestamptz, blob bytea, tags text[], nums int[],
            ratio float8, note text, doubled numeric GENERATED ALWAYS AS (amount * 2) STORED)""")
    both(dbpair, """
        INSERT INTO public.items (doc, amount, at, blob, tags, nums, ratio, note)
        SELECT jsonb_build_object('n', g, 'nested', jsonb_build_array(g, 'x')), g / 7.0,
               timestamptz '2024-03-01 12:00+02' + g * interval '1 hour 3 min', decode(md5(g::text), 'hex'),
               ARRAY['a' || g, 'with "quote"', NULL], ARRAY[g, -g], 1.0 / (g + 3), E'tab\\there ' || g
        FROM generate_series(1, 50) g""")
    report = verify(dbpair.source, dbpair.target, options=FAST)
    assert report.ok, format_table(report)
    items = result(report, "public.items")
    assert (items.rows_source, items.rows_target, items.ranges) == (50, 50, 8)
    assert items.key == ["id"] and not items.mismatched_ranges


def test_changed_missing_and_extra_rows_are_named_by_key(dbpair: DbPair) -> None:
    both(dbpair, "CREATE TABLE public.orders (id bigint PRIMARY KEY, customer text, total numeric)")
    both(dbpair, "INSERT INTO public.orders SELECT g, 'c' || g, g * 1.5 FROM generate_series(1, 100) g")
    dbpair.sql_target("UPDATE public.orders SET total = 0 WHERE id = 42")
    dbpair.sql_target("DELETE FROM public.orders WHERE id = 17")
    dbpair.sql_target("INSERT INTO public.orders VALUES (1000, 'late', 1)")
    report = verify(dbpair.source, dbpair.target, options=FAST)
    orders = result(report, "public.orders")
    assert orders.status == "different"
    assert orders.sample_different == [{"id": "42"}]
    assert orders.sample_missing_on_target == [{"id": "17"}]
    assert orders.sample_extra_on_target == [{"id": "1000"}]
    assert (orders.different, orders.missing_on_target, orders.extra_on_target) == (1, 1, 1)
    assert (orders.rows_source, orders.rows_target) == (100, 100)
    # Named down to the range: 17 in (14, 21], 42 in (35, 42], 1000 past the last source key.
    assert [(r["lower"], r["upper"]) for r in orders.mismatched_ranges] == [
        ({"id": "14"}, {"id": "21"}), ({"id": "35"}, {"id": "42"}), ({"id": "98"}, None)]
    text = format_table(report)
    assert "public.orders: 1 missing on target: id=17; 1 extra on target: id=1000; 1 different: id=42" in text
    with pytest.raises(VerifyMismatch) as err:
        report.raise_on_mismatch()
    assert "public.orders" in str(err.value) and err.value.diffs[0]["sample_different"] == [{"id": "42"}]


def test_composite_and_awkward_text_keys(dbpair: DbPair) -> None:
    both(dbpair, "CREATE TABLE public.lines (region text, code text, n int, v text, "
                 "PRIMARY KEY (region, code, n))")
    keys = [("north", "a\tb", 1), ("north", "line\nbreak", 2), ("south", "back\\slash", 3),
            ("south", "plain", 4), ("south", "quote'\"", 5), ("west", "", 6), ("west", "ünï", 7)]
    for region, code, n in keys:
        both(dbpair, "INSERT INTO public.lines VALUES (%s, %s, %s, 'v')", (region, code, n))
    both(dbpair, "INSERT INTO public.lines SELECT 'z', 'k' || g, g, 'v' FROM generate_series(1, 30) g")
    assert verify(dbpair.source, dbpair.target, options=VerifyOptions(range_rows=3, recheck=0)).ok

    dbpair.sql_target("UPDATE public.lines SET v = 'changed' WHERE code = %s", ("line\nbreak",))
    dbpair.sql_target("DELETE FROM public.lines WHERE code = %s", ("back\\slash",))
    report = verify(dbpair.source, dbpair.target, options=VerifyOptions(range_rows=3, recheck=0))
    lines = result(report, "public.lines")
    assert lines.sample_different == [{"region": "north", "code": "line\nbreak", "n": "2"}]
    assert lines.sample_missing_on_target == [{"region": "south", "code": "back\\slash", "n": "3"}]
    assert format_key(lines.sample_different[0]) == '(region=north, code="line\\nbreak", n=2)'


def test_int_on_source_and_bigint_on_target_compare_equal(dbpair: DbPair) -> None:
    dbpair.sql_source("CREATE TABLE public.t (id int PRIMARY KEY, ref int, refs int[])")
    dbpair.sql_target("CREATE TABLE public.t (id bigint PRIMARY KEY, ref bigint, refs bigint[])")
    both(dbpair, "INSERT INTO public.t SELECT g, g * 10, ARRAY[g, g + 1] FROM generate_series(1, 40) g")
    assert verify(dbpair.source, dbpair.target, options=FAST).ok
    # A real type difference is not hidden: numeric(10,2) renders 1.00, numeric renders 1.
    dbpair.sql_target("UPDATE public.t SET ref = 3000000000 WHERE id = 5")
    report = verify(dbpair.source, dbpair.target, options=FAST)
    assert result(report, "public.t").sample_different == [{"id": "5"}]


def test_partitioned_table(dbpair: DbPair) -> None:
    both(dbpair, """
        CREATE TABLE public.events (id int, day date, payload text, PRIMARY KEY (day, id))
            PARTITION BY RANGE (day);
        CREATE TABLE public.events_1 PARTITION OF public.events
            FOR VALUES FROM ('2024-01-01') TO ('2024-02-01');
        CREATE TABLE public.events_2 PARTITION OF public.events
            FOR VALUES FROM ('2024-02-01') TO ('2024-03-01')""")
    both(dbpair, "INSERT INTO public.events SELECT g, date '2024-01-01' + g % 59, 'p' || g "
                 "FROM generate_series(1, 60) g")
    report = verify(dbpair.source, dbpair.target, options=FAST)
    assert report.ok and [t.table for t in report.tables] == ["public.events"]
    assert result(report, "public.events").rows_source == 60
    dbpair.sql_target("DELETE FROM public.events WHERE id = 33")
    report = verify(dbpair.source, dbpair.target, options=FAST)
    assert result(report, "public.events").sample_missing_on_target == [{"day": "2024-02-03", "id": "33"}]


def test_keyless_table_compared_whole(dbpair: DbPair) -> None:
    both(dbpair, "CREATE TABLE public.log (at timestamptz, msg text)")
    both(dbpair, "INSERT INTO public.log SELECT timestamptz '2024-01-01' + g * interval '1 s', 'm' "
                 "FROM generate_series(1, 25) g")
    both(dbpair, "INSERT INTO public.log SELECT timestamptz '2024-01-01', 'dup' FROM generate_series(1, 2)")
    report = verify(dbpair.source, dbpair.target, options=FAST)
    log = result(report, "public.log")
    assert report.ok and log.keyless and log.ranges == 1 and log.rows_source == 27
    # A duplicate removed keeps every distinct row present: only count + checksum can see it.
    dbpair.sql_target("DELETE FROM public.log "
                      "WHERE ctid = (SELECT min(ctid) FROM public.log WHERE msg = 'dup')")
    log = result(verify(dbpair.source, dbpair.target, options=FAST), "public.log")
    assert log.status == "different" and (log.rows_source, log.rows_target) == (27, 26)
    assert "no key" in log.summary()


def test_structure_differences_scope_and_project_schemas(dbpair: DbPair) -> None:
    both(dbpair, "CREATE SCHEMA app; CREATE SCHEMA ge_capture; CREATE SCHEMA other")
    dbpair.sql_source("CREATE TABLE app.a (id int PRIMARY KEY, x int, y int)")
    dbpair.sql_target("CREATE TABLE app.a (id int PRIMARY KEY, x int, z int)")
    dbpair.sql_source("CREATE TABLE app.only_source (id int PRIMARY KEY)")
    dbpair.sql_target("CREATE TABLE app.only_target (id int PRIMARY KEY)")
    both(dbpair, "CREATE TABLE app.skipped (id int PRIMARY KEY)")
    dbpair.sql_source("INSERT INTO app.skipped VALUES (1)")
    dbpair.sql_source("CREATE TABLE ge_capture.deltas (id int PRIMARY KEY); "
                      "INSERT INTO ge_capture.deltas VALUES (1)")
    dbpair.sql_target("CREATE TABLE ge_capture.deltas (id int PRIMARY KEY)")
    dbpair.sql_source("CREATE TABLE other.t (id int PRIMARY KEY); INSERT INTO other.t VALUES (1)")
    dbpair.sql_target("CREATE TABLE other.t (id int PRIMARY KEY)")
    report = verify(dbpair.source, dbpair.target, schemas=["app", "ge_capture"],
                    exclude_tables=["app.skipped"], options=FAST)
    statuses = {t.table: t.status for t in report.tables}
    assert statuses == {"app.a": "columns_differ", "app.only_source": "missing_on_target",
                        "app.only_target": "missing_on_source"}
    assert "only on source ['y'], only on target ['z']" in result(report, "app.a").message
    with pytest.raises(Exception, match="app.nope"):
        verify(dbpair.source, dbpair.target, tables=["app.nope"], options=FAST)
    only = verify(dbpair.source, dbpair.target, tables=["other.t"], options=FAST)
    assert [t.table for t in only.tables] == ["other.t"] and not only.ok


def test_recheck_drops_changes_in_flight_and_keeps_persisting_ones(dbpair: DbPair,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    both(dbpair, "CREATE TABLE public.acc (id int PRIMARY KEY, balance int)")
    both(dbpair, "INSERT INTO public.acc SELECT g, 100 FROM generate_series(1, 30) g")
    # Changed on the source, not yet applied to the target.
    dbpair.sql_source("UPDATE public.acc SET balance = 50 WHERE id IN (3, 20)")
    waits: list[float] = []

    def sync_catches_up(seconds: float) -> None:
        # What the sync does while verify waits: applies the change to row 3; row 20 stays behind.
        waits.append(seconds)
        dbpair.sql_target("UPDATE public.acc SET balance = 50 WHERE id = 3")

    monkeypatch.setattr(verifymod.time, "sleep", sync_catches_up)
    report = verify(dbpair.source, dbpair.target,
                    options=VerifyOptions(range_rows=5, recheck=2, recheck_wait=0.5))
    acc = result(report, "public.acc")
    assert waits == [0.5] * 4  # two range rechecks, then two row rechecks of the range left
    assert acc.sample_different == [{"id": "20"}] and acc.different == 1
    assert [r["upper"] for r in acc.mismatched_ranges] == [{"id": "20"}]


def test_a_row_still_changing_on_the_source_is_in_flight_not_a_difference(
        dbpair: DbPair, monkeypatch: pytest.MonkeyPatch) -> None:
    both(dbpair, "CREATE TABLE public.hot (id int PRIMARY KEY, n int)")
    both(dbpair, "INSERT INTO public.hot SELECT g, 0 FROM generate_series(1, 10) g")
    dbpair.sql_source("UPDATE public.hot SET n = 1 WHERE id = 4")

    def busy_application(seconds: float) -> None:
        # The application keeps changing row 4 faster than the checks; the sync is always one step behind.
        dbpair.sql_source("UPDATE public.hot SET n = n + 1 WHERE id = 4")

    monkeypatch.setattr(verifymod.time, "sleep", busy_application)
    report = verify(dbpair.source, dbpair.target,
                    options=VerifyOptions(range_rows=5, recheck=2, recheck_wait=0.5))
    assert result(report, "public.hot").ok


def test_large_table_verifies_in_bounded_memory(dbpair: DbPair) -> None:
    both(dbpair, "CREATE TABLE public.big (id bigint PRIMARY KEY, a int, b text)")
    both(dbpair, "INSERT INTO public.big SELECT g, g % 1000, md5(g::text) FROM generate_series(1, 200000) g")
    dbpair.sql_target("UPDATE public.big SET b = 'x' WHERE id = 123456")
    both(dbpair, "ANALYZE public.big")
    tracemalloc.start()
    started = time.monotonic()
    report = verify(dbpair.source, dbpair.target, options=VerifyOptions(range_rows=5000, recheck=0))
    elapsed = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    big = result(report, "public.big")
    assert (big.rows_source, big.rows_target, big.ranges) == (200000, 200000, 41)
    assert big.sample_different == [{"id": "123456"}]
    # Holding 200k keys and digests would take tens of MB; one 5000-row range a few.
    assert peak < 8 * 1024 * 1024, f"peak python memory {peak} bytes"
    print(f"\nverify 200000 rows, range_rows 5000: {elapsed:.2f}s, peak python memory {peak / 1e6:.1f} MB")


def test_replication_user_can_verify_and_cli_exit_codes(dbpair: DbPair, tmp_path: Path) -> None:
    both(dbpair, "CREATE TABLE public.p (id int PRIMARY KEY, v text)")
    both(dbpair, "INSERT INTO public.p SELECT g, 'v' FROM generate_series(1, 10) g")
    dbpair.grant_repl()
    cfg = tmp_path / "ge.yml"
    cfg.write_text(yaml.safe_dump({"name": "t", "source": dbpair.source, "target": dbpair.repl}))
    cli = [sys.executable, "-m", "great_escape.cli", "verify", "--config", str(cfg), "--recheck", "0"]
    clean = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0, clean.stderr
    assert "public.p" in clean.stdout and "all equal" in clean.stdout
    dbpair.sql_target("DELETE FROM public.p WHERE id = 4")
    differ = subprocess.run([*cli, "--json", "--table", "public.p"], capture_output=True, text=True,
                            timeout=120)
    assert differ.returncode == 1, differ.stderr
    out = json.loads(differ.stdout)
    assert out["ok"] is False and out["tables"][0]["sample_missing_on_target"] == [{"id": "4"}]
    # --reverse swaps the sides: the row is now extra on the receiving side's counterpart.
    rev = subprocess.run([*cli, "--json", "--reverse"], capture_output=True, text=True, timeout=120)
    assert rev.returncode == 1
    assert json.loads(rev.stdout)["tables"][0]["sample_extra_on_target"] == [{"id": "4"}]


def test_unreadable_table_is_an_error_on_that_table_only(dbpair: DbPair) -> None:
    both(dbpair, "CREATE TABLE public.open (id int PRIMARY KEY); "
                 "CREATE TABLE public.secret (id int PRIMARY KEY)")
    both(dbpair, "INSERT INTO public.open VALUES (1), (2); INSERT INTO public.secret VALUES (1)")
    dbpair.grant_repl()
    dbpair.sql_target("REVOKE SELECT ON public.secret FROM ge_repl")
    report = verify(dbpair.source, dbpair.repl, options=FAST)
    assert result(report, "public.open").status == "ok"
    secret = result(report, "public.secret")
    assert secret.status == "error"
    assert "permission denied" in secret.message and "grant SELECT" in secret.message
    assert not report.ok
