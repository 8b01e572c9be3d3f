"""Engine bugs the schema generator found, each as a plain regression test of its minimal case (shrunk by
hand from the generator's failure)."""

from __future__ import annotations

from pathlib import Path

import psycopg

from great_escape import cutover, daemon
from great_escape.localcluster import LocalCluster
from tests.generated.harness import APP_PASSWORD, assert_same, databases, forward, run_ops
from tests.generated.schema import Case, Column, Op, Table

NO_SYNC = {"start_sync": False, "in_flight_timeout": 5.0}


def _one_table(table: str = "t", key: str = "id", key_type: str = "int", rls: str = "none") -> Case:
    t = Table("public", table, [Column(key, f"key:{key_type}")], [Column("v", "v")], rls=rls)
    return Case([t], ["public"], seed_ops=[Op(0, "fill", 0)], sync_ops=[Op(0, "insert", 10)],
                target_ops=[Op(0, "insert", 11)])


def test_full_verify_sees_every_row_of_a_table_with_forced_row_level_security(
        source_cluster: LocalCluster, aurora_cluster: LocalCluster, tmp_path: Path) -> None:
    # CREATE TABLE t (id int PRIMARY KEY, v text); ALTER TABLE t ENABLE + FORCE ROW LEVEL SECURITY;
    # CREATE POLICY "app may" ON t FOR ALL TO <app> USING (true) WITH CHECK (true); 7 rows.
    case = _one_table(rls="forced")
    with databases(source_cluster, aurora_cluster) as (pair, app, target_su):
        cfg = forward(case, pair, app, target_su, tmp_path)  # the superusers see identical tables
        cutover.switch(cfg, "cutover", target_admin=pair.target,
                       options=cutover.Options(verify="full", **NO_SYNC))  # VerifyMismatch: 7 missing on target


def test_full_verify_reads_a_table_whose_name_contains_percent(
        source_cluster: LocalCluster, aurora_cluster: LocalCluster, tmp_path: Path) -> None:
    case = _one_table(table="100%", key_type="bigint")  # CREATE TABLE "100%" (id bigint PRIMARY KEY, v text)
    with databases(source_cluster, aurora_cluster) as (pair, app, target_su):
        cfg = forward(case, pair, app, target_su, tmp_path)
        cutover.switch(cfg, "cutover", target_admin=pair.target, options=cutover.Options(verify="full", **NO_SYNC))


def test_rollback_range_check_on_a_widened_column_whose_name_contains_percent(
        source_cluster: LocalCluster, aurora_cluster: LocalCluster, tmp_path: Path) -> None:
    case = _one_table(key="a%sb")  # CREATE TABLE t ("a%sb" int PRIMARY KEY, v text): bigint on the target
    with databases(source_cluster, aurora_cluster) as (pair, app, target_su):
        cfg = forward(case, pair, app, target_su, tmp_path)
        cutover.switch(cfg, "cutover", target_admin=pair.target, options=cutover.Options(**NO_SYNC))
        run_ops({**pair.target, "user": app, "password": APP_PASSWORD}, case, case.target_ops)
        daemon.SyncProcess(cfg.reversed(), direction="reverse").run(drain=True)
        cutover.switch(cfg, "rollback", target_admin=pair.target, options=cutover.Options(**NO_SYNC))
        assert_same(pair.source, target_su, case, "after rollback")


def test_bigint_widens_a_key_column_a_view_depends_on(
        source_cluster: LocalCluster, aurora_cluster: LocalCluster, tmp_path: Path) -> None:
    # CREATE TABLE t (id int PRIMARY KEY, v text); CREATE VIEW "0view of t" AS SELECT * FROM t
    case = _one_table()
    case.tables[0].view = "view"
    with databases(source_cluster, aurora_cluster) as (pair, app, target_su):
        forward(case, pair, app, target_su, tmp_path)


def test_restore_refreshes_a_materialized_view_over_a_table_with_forced_row_level_security(
        source_cluster: LocalCluster, aurora_cluster: LocalCluster, tmp_path: Path) -> None:
    # CREATE TABLE t (id smallint PRIMARY KEY, v text); CREATE MATERIALIZED VIEW "0view of t" AS SELECT * FROM t;
    # ALTER TABLE t ENABLE + FORCE ROW LEVEL SECURITY; CREATE POLICY "app may" ON t FOR ALL TO <app> USING (true)
    case = _one_table(key_type="smallint", rls="forced")
    case.tables[0].view = "matview"
    with databases(source_cluster, aurora_cluster) as (pair, app, target_su):
        forward(case, pair, app, target_su, tmp_path)  # was: pg_restore of post-data failed
        with psycopg.connect(**target_su) as conn:
            # Refreshed by post-data from the restored rows, all of them: forced RLS would have hidden every row
            # from the master, which no policy names.
            populated, rows, missing = conn.execute(
                "SELECT ispopulated, (SELECT count(*) FROM \"0view of t\"), "
                "(SELECT count(*) FROM (TABLE \"0view of t\" EXCEPT TABLE t) m) "
                "FROM pg_matviews WHERE matviewname = '0view of t'").fetchone()
            assert (populated, rows > 0, missing) == (True, True, 0)
