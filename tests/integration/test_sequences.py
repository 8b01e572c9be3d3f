"""Sequence copy against real clusters; the target side runs as the non-superuser replication user."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql

from great_escape.sequences import SequenceError, copy_sequences, format_table
from tests.conftest import DbPair

SCHEMA = """
CREATE SCHEMA app;
CREATE TABLE app.orders (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text);
CREATE TABLE app.legacy (id serial PRIMARY KEY);
CREATE SEQUENCE app.invoice_no START 1000;
CREATE SEQUENCE app.countdown INCREMENT -1 START 100 MINVALUE 1 MAXVALUE 100;
CREATE SEQUENCE app.untouched;
"""


def values(pair: DbPair, side: str) -> dict[str, tuple[int, bool]]:
    params = pair.source if side == "source" else pair.target
    with psycopg.connect(**params, autocommit=True) as conn:
        names = conn.execute("SELECT sequencename FROM pg_sequences WHERE schemaname = 'app' "
                             "ORDER BY 1").fetchall()
        return {f"app.{name}": tuple(conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
            sql.Identifier("app", name))).fetchone() or ()) for (name,) in names}


@pytest.fixture
def seqpair(dbpair: DbPair) -> DbPair:
    dbpair.sql_source(SCHEMA)
    dbpair.sql_target(SCHEMA)
    dbpair.grant_repl()
    dbpair.sql_source("INSERT INTO app.orders (note) SELECT 'o' FROM generate_series(1, 42)")
    dbpair.sql_source("INSERT INTO app.legacy SELECT FROM generate_series(1, 7)")
    dbpair.sql_source("SELECT nextval('app.invoice_no') FROM generate_series(1, 3)")
    dbpair.sql_source("SELECT nextval('app.countdown') FROM generate_series(1, 5)")
    return dbpair


def test_check_then_copy_then_again(seqpair: DbPair) -> None:
    before = values(seqpair, "target")
    plan = copy_sequences(seqpair.source, seqpair.repl, check=True)
    assert plan.changed and values(seqpair, "target") == before  # check mode changed nothing
    by_name = {i.sequence: i for i in plan.items}
    assert by_name["app.orders_id_seq"].identity and by_name["app.orders_id_seq"].owned_by == "app.orders.id"
    legacy = by_name["app.legacy_id_seq"]
    assert legacy.owned_by == "app.legacy.id" and not legacy.identity
    assert by_name["app.untouched"].action == "unchanged"
    assert plan.queries == [
        "SELECT pg_catalog.setval('\"app\".\"countdown\"'::regclass, 96, true)",
        "SELECT pg_catalog.setval('\"app\".\"invoice_no\"'::regclass, 1002, true)",
        "SELECT pg_catalog.setval('\"app\".\"legacy_id_seq\"'::regclass, 7, true)",
        "SELECT pg_catalog.setval('\"app\".\"orders_id_seq\"'::regclass, 42, true)",
    ]
    real = copy_sequences(seqpair.source, seqpair.repl)
    assert real.queries == plan.queries
    assert values(seqpair, "target") == values(seqpair, "source")
    assert real.diff()["before"]["app.orders_id_seq"] == 1 and real.diff()["after"]["app.orders_id_seq"] == 42
    # The identity column continues where the source stopped.
    seqpair.sql_target("INSERT INTO app.orders (note) VALUES ('next')")
    assert seqpair.sql_target("SELECT max(id) FROM app.orders") == [(43,)]
    again = copy_sequences(seqpair.source, seqpair.repl)
    assert not again.changed and again.queries == []
    assert {i.action for i in again.items} == {"unchanged", "kept"}  # orders_id_seq is ahead now
    assert "5 sequence(s), 0 moved" in format_table(again)


def test_target_ahead_is_kept_unless_backwards_allowed(seqpair: DbPair) -> None:
    copy_sequences(seqpair.source, seqpair.repl)
    seqpair.sql_target("SELECT setval('app.invoice_no', 5000)")
    seqpair.sql_target("SELECT setval('app.countdown', 10)")  # descending: 10 is ahead of 96
    plan = copy_sequences(seqpair.source, seqpair.repl)
    kept = {i.sequence: i for i in plan.items if i.action == "kept"}
    assert set(kept) == {"app.invoice_no", "app.countdown"} and not plan.changed
    assert values(seqpair, "target")["app.invoice_no"] == (5000, True)
    back = copy_sequences(seqpair.source, seqpair.repl, allow_backwards=True)
    assert {i.sequence for i in back.items if i.action == "set"} == {"app.invoice_no", "app.countdown"}
    assert values(seqpair, "target") == values(seqpair, "source")


def test_unused_source_sequence_is_copied_as_unused(seqpair: DbPair) -> None:
    seqpair.sql_source("CREATE SEQUENCE app.fresh START 500")
    seqpair.sql_target("CREATE SEQUENCE app.fresh START 1")
    seqpair.grant_repl()
    plan = copy_sequences(seqpair.source, seqpair.repl)
    fresh = next(i for i in plan.items if i.sequence == "app.fresh")
    assert (fresh.action, fresh.target_after, fresh.target_is_called_after) == ("set", 500, False)
    assert seqpair.sql_target("SELECT nextval('app.fresh')") == [(500,)]


def test_missing_target_sequences_are_all_named(seqpair: DbPair) -> None:
    seqpair.sql_target("DROP SEQUENCE app.invoice_no; DROP TABLE app.legacy")
    with pytest.raises(SequenceError) as err:
        copy_sequences(seqpair.source, seqpair.repl)
    assert err.value.problems == ["app.invoice_no", "app.legacy_id_seq"]
    assert "not on the target" in str(err.value) and "app.invoice_no" in str(err.value)
    # Excluding the table leaves its sequence out too; the standalone one is still missing.
    with pytest.raises(SequenceError) as err:
        copy_sequences(seqpair.source, seqpair.repl, exclude_tables=["app.legacy"])
    assert err.value.problems == ["app.invoice_no"]


def test_value_beyond_target_range_is_refused(seqpair: DbPair) -> None:
    seqpair.sql_source("CREATE SEQUENCE app.wide AS bigint; SELECT setval('app.wide', 3000000000)")
    seqpair.sql_target("CREATE SEQUENCE app.wide AS int")
    seqpair.grant_repl()
    with pytest.raises(SequenceError, match=r"app.wide \(value 3000000000, target range 1..2147483647\)"):
        copy_sequences(seqpair.source, seqpair.repl)
    assert values(seqpair, "target")["app.invoice_no"] == (1000, False)  # nothing applied


def test_missing_update_privilege_names_the_fix(seqpair: DbPair) -> None:
    seqpair.sql_target("REVOKE UPDATE ON ALL SEQUENCES IN SCHEMA app FROM ge_repl")
    with pytest.raises(SequenceError, match="GRANT UPDATE"):
        copy_sequences(seqpair.source, seqpair.repl)


def test_cli_json_and_reverse(seqpair: DbPair, tmp_path: Path) -> None:
    cfg = tmp_path / "ge.yml"
    cfg.write_text(yaml.safe_dump({"name": "t", "source": seqpair.source, "target": seqpair.repl,
                                   "schemas": ["app"]}))
    cli = [sys.executable, "-m", "great_escape.cli", "sequences", "--config", str(cfg)]
    proc = subprocess.run([*cli, "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["changed"] and len(out["queries"]) == 4
    # After cutover the target moves on; --reverse carries it back to the old source.
    seqpair.sql_target("SELECT setval('app.invoice_no', 7000)")
    proc = subprocess.run([*cli, "--reverse"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "app.invoice_no" in proc.stdout and "1 moved" in proc.stdout
    assert values(seqpair, "source")["app.invoice_no"] == (7000, True)
