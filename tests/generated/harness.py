"""Runs one generated Case through the engine pieces the playbooks run, without Ansible (as
tests/crossversion/test_crossversion.py does): capture -> random DML concurrent with pg_dump by section ->
pg_restore (TOC filtered, int -> bigint between pre-data and data) -> forward sync concurrent with more DML ->
comparison -> cutover -> DML on the target -> reverse sync -> comparison -> rollback -> comparison.
The comparison is the test's own: an order-independent md5 per table, read by each side's superuser."""

from __future__ import annotations

import itertools
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from great_escape import access, bigint, capture, cutover, daemon, restore
from great_escape.config import Config
from great_escape.localcluster import MASTER_USER, SUPERUSER, LocalCluster
from tests.conftest import REPL_PASSWORD, REPL_USER, DbPair, render_replica_role_function
from tests.generated.schema import LOG_TABLE, Case, Op, Table, ddl, ref_name, statements
from tests.integration.syncutil import PG_BIN, make_config

APP_PASSWORD = "app-secret"
PINNED = "-c TimeZone=UTC -c extra_float_digits=3 -c DateStyle=ISO -c IntervalStyle=postgres -c bytea_output=hex"
_counter = itertools.count()


@contextmanager
def databases(source: LocalCluster, aurora: LocalCluster) -> Iterator[tuple[DbPair, str, dict[str, Any]]]:
    """Fresh databases on both clusters, the replica-role function on the target, an application role on the
    source. Yields the pair, the application role and the target's superuser connection parameters."""
    name = f"gen{os.getpid()}_{next(_counter)}"
    app = f"app_{name}"
    for cluster in (source, aurora):  # as each side's admin (the target's master owns its database, as on RDS)
        with psycopg.connect(**cluster.conninfo(dbname="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    pair = DbPair(source.conninfo(dbname=name), aurora.conninfo(dbname=name),
                  {**aurora.conninfo(dbname=name), "user": REPL_USER, "password": REPL_PASSWORD})
    pair.sql_target(render_replica_role_function())
    pair.sql_source(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
        sql.Identifier(app), sql.Literal(APP_PASSWORD)).as_string(None))
    try:
        yield pair, app, aurora.conninfo(user=SUPERUSER, dbname=name)
    finally:
        for cluster in (source, aurora):
            with psycopg.connect(**cluster.conninfo(user=SUPERUSER, dbname="postgres"), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(app)))


def run_ops(params: dict[str, Any], case: Case, ops: list[Op], pause: float = 0.0) -> int:
    """The application's writes, one transaction per op; constraint violations are the application's problem."""
    done = 0
    with psycopg.connect(**params) as conn:
        for op in ops:
            time.sleep(pause)
            try:
                for stmt in statements(case, op):
                    conn.execute(stmt)
                conn.commit()
                done += 1
            except psycopg.errors.IntegrityError as exc:
                if exc.diag.table_name == LOG_TABLE:  # its key comes from a sequence: a collision is a bug
                    raise AssertionError(f"{op}: {exc}") from exc
                conn.rollback()
    return done


class Background(threading.Thread):
    """run_ops in a thread; join() re-raises what it raised."""

    def __init__(self, params: dict[str, Any], case: Case, ops: list[Op]):
        super().__init__(daemon=True)
        self.args_ = (params, case, ops)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            run_ops(*self.args_, pause=0.02)  # spread over the dump / the sync
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error


def _columns(case: Case, t: Table) -> list[str]:
    cols = [c.name for c in t.keys] + [c.name for c in t.extra]
    if t.parent is not None:
        cols += [ref_name(pk) for pk in case.tables[t.parent].keys]
    return cols


def table_texts(params: dict[str, Any], case: Case) -> dict[str, list[str]]:
    """Every generated table's rows as text, sorted, read with pinned settings (the superuser sees past RLS)."""
    out: dict[str, list[str]] = {}
    with psycopg.connect(**params, options=PINNED) as conn:
        targets = [(f"{t.schema}.{t.name}", t.ident, _columns(case, t)) for t in case.tables]
        targets.append((LOG_TABLE, sql.Identifier("public", LOG_TABLE), ["id", "tbl", "op"]))
        for label, ident, cols in targets:
            rows = conn.execute(sql.SQL("SELECT ROW({})::text FROM {}").format(
                sql.SQL(", ").join(map(sql.Identifier, cols)), ident)).fetchall()
            out[label] = sorted(r[0] for r in rows)
    return out


def digests(params: dict[str, Any], case: Case) -> dict[str, tuple[int, str]]:
    """Per table: row count and md5 of the sorted row texts (computed in the server, order-independent)."""
    out: dict[str, tuple[int, str]] = {}
    with psycopg.connect(**params, options=PINNED) as conn:
        targets = [(f"{t.schema}.{t.name}", t.ident, _columns(case, t)) for t in case.tables]
        targets.append((LOG_TABLE, sql.Identifier("public", LOG_TABLE), ["id", "tbl", "op"]))
        for label, ident, cols in targets:
            n, md5 = conn.execute(sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(r, E'\\n' ORDER BY r COLLATE \"C\"), '')) "
                "FROM (SELECT ROW({})::text AS r FROM {}) s").format(
                sql.SQL(", ").join(map(sql.Identifier, cols)), ident)).fetchone()
            out[label] = (n, md5)
    return out


def assert_same(source: dict[str, Any], target: dict[str, Any], case: Case, when: str) -> None:
    a, b = digests(source, case), digests(target, case)
    if a == b:
        return
    ta, tb = table_texts(source, case), table_texts(target, case)
    lines = []
    for name in a:
        if a[name] != b[name]:
            only_a = sorted(set(ta[name]) - set(tb[name]))[:4]
            only_b = sorted(set(tb[name]) - set(ta[name]))[:4]
            lines.append(f"{name}: {a[name][0]} rows on the source, {b[name][0]} on the target; only on the source "
                         f"{[r[:200] for r in only_a]}, only on the target {[r[:200] for r in only_b]}")
    raise AssertionError(f"{when}: " + "; ".join(lines))


def assert_sequences_follow(frm: dict[str, Any], to: dict[str, Any], when: str) -> None:
    """Invariant 7: after a switch no sequence on the new live side is behind the old one."""
    query = ("SELECT schemaname || '.' || sequencename, coalesce(last_value, 0) FROM pg_sequences "
             "WHERE schemaname NOT IN ('ge_capture', 'great_escape')")
    with psycopg.connect(**frm) as a, psycopg.connect(**to) as b:
        old, new = dict(a.execute(query).fetchall()), dict(b.execute(query).fetchall())
    behind = {name: (value, new.get(name)) for name, value in old.items() if (new.get(name) or 0) < value}
    assert not behind, f"{when}: sequences behind on the new live side (old, new): {behind}"


def _access(pair: DbPair, app: str, objects: bool) -> None:
    opts = access.Options(role_map={SUPERUSER: MASTER_USER}, application_roles=(app,),
                          project_roles=(MASTER_USER, REPL_USER), sync_user=REPL_USER, objects=objects)
    with psycopg.connect(**pair.source) as src, psycopg.connect(**pair.target) as tgt:
        plan = access.plan(src, tgt, opts)
        access.apply(tgt, plan)


def _tool(program: str, *args: str, params: dict[str, Any]) -> None:
    conn = [f"--host={params['host']}", f"--port={params['port']}", f"--username={params['user']}",
            f"--dbname={params['dbname']}", "--no-password"]
    res = subprocess.run([str(PG_BIN / program), *conn, *args], env={"PGPASSWORD": str(params["password"])},
                         capture_output=True, text=True)
    if res.returncode:
        raise AssertionError(f"{program} {' '.join(args)} failed: {res.stderr[-2000:]}")


def dump(pair: DbPair, dump_dir: Path) -> None:
    for section in restore.SECTIONS:
        _tool("pg_dump", "--format=directory", "--exclude-schema=ge_capture", "--exclude-schema=great_escape",
              f"--section={section}", f"--file={dump_dir / section}", params=pair.source)


def restore_target(pair: DbPair, app: str, dump_dir: Path, work: Path) -> None:
    restore.write_toc_lists(dump_dir, work, str(PG_BIN / "pg_restore"))
    common = ["--no-owner", "--no-privileges", "--exit-on-error"]
    _tool("pg_restore", *common, "--single-transaction", f"--use-list={work / 'pre-data.list'}",
          str(dump_dir / "pre-data"), params=pair.target)
    with psycopg.connect(**pair.source) as src, psycopg.connect(**pair.target) as dst:
        bigint.apply_bigint(dst, bigint.plan_bigint(src, None, "auto"))
    for section in ("data", "post-data"):
        _tool("pg_restore", *common, f"--use-list={work / f'{section}.list'}", str(dump_dir / section),
              params=pair.target)
    pair.grant_repl()
    _access(pair, app, objects=True)


def forward(case: Case, pair: DbPair, app: str, target_su: dict[str, Any], work: Path) -> Config:
    """Schema and seed rows on the source, capture, writes during the dump, restore, forward sync with writes
    running, then the test's own comparison. Returns the migration's config."""
    app_source = {**pair.source, "user": app, "password": APP_PASSWORD}
    for stmt in ddl(case, app):
        pair.sql_source(stmt.as_string(None))
    run_ops(app_source, case, case.seed_ops)
    _access(pair, app, objects=False)  # prepare-target: the roles exist before the restore needs them
    cfg = make_config(pair, work / "state", batch_size=7)
    capture.run(cfg, state="present", freeze=True)

    dump_dir, restore_dir = work / "dump", work / "restore"
    dump_dir.mkdir()
    restore_dir.mkdir()
    writer = Background(app_source, case, case.copy_ops)
    writer.start()
    dump(pair, dump_dir)
    writer.join()
    restore_target(pair, app, dump_dir, restore_dir)

    writer = Background(app_source, case, case.sync_ops)
    writer.start()
    daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    writer.join()
    daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    assert_same(pair.source, target_su, case, "after the forward sync")
    return cfg


def migrate(case: Case, pair: DbPair, app: str, target_su: dict[str, Any], work: Path) -> None:
    cfg = forward(case, pair, app, target_su, work)
    cutover.switch(cfg, "cutover", target_admin=pair.target,
                   options=cutover.Options(start_sync=False, in_flight_timeout=5.0, verify="full"))
    assert_same(pair.source, target_su, case, "after cutover")
    assert_sequences_follow(pair.source, target_su, "after cutover")
    run_ops({**pair.target, "user": app, "password": APP_PASSWORD}, case, case.target_ops)
    daemon.SyncProcess(cfg.reversed(), direction="reverse").run(drain=True)
    assert_same(pair.source, target_su, case, "after the reverse sync")
    cutover.switch(cfg, "rollback", target_admin=pair.target,
                   options=cutover.Options(start_sync=False, in_flight_timeout=5.0, verify="full"))
    assert_same(pair.source, target_su, case, "after rollback")
    assert_sequences_follow(target_su, pair.source, "after rollback")
    run_ops({**pair.source, "user": app, "password": APP_PASSWORD}, case, case.after_ops)
    daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    assert_same(pair.source, target_su, case, "after rollback and more writes on the source")
