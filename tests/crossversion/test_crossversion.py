"""A real migration from an older PostgreSQL major to a newer Aurora-like one, through the engine pieces the
playbooks run: preflight -> capture (with the schema freeze) while the application writes -> pg_dump by
section (-j 2, -Z 3) and pg_restore of the newer major's client tools (the project's objects filtered out of
the TOC, int -> bigint between pre-data and data) -> forward sync of the changes made during and after the
copy -> verify and the test's own row comparison -> cutover (the reverse sync writes into the old major) ->
rollback -> capture removed. Which pairs run: tests/crossversion/conftest.py."""

from __future__ import annotations

import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from great_escape import bigint, capture, cutover, daemon, preflight, restore, state, verify
from tests.conftest import REPL_PASSWORD, REPL_USER, DbPair
from tests.crossversion.conftest import VersionPair
from tests.integration.syncutil import make_config, table_rows
from tests.integration.workload import SEED, SOURCE_DDL, Writers

APP_ROLE = "app_crossversion"
APP_GRANTS = ('GRANT USAGE ON SCHEMA public, "Sales Dept" TO {r}; '
              'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public, "Sales Dept" TO {r}; '
              'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public, "Sales Dept" TO {r}')


def _grant_app(run: Any) -> None:
    run(sql.SQL(APP_GRANTS).format(r=sql.Identifier(APP_ROLE)).as_string(None))


def _dump(vp: VersionPair, dump_dir: Path) -> None:
    """pg_dump as roles/dump runs it: directory format, one archive per section, the project's schemas out."""
    src = vp.db.source
    common = [f"--host={src['host']}", f"--port={src['port']}", f"--username={src['user']}",
              f"--dbname={src['dbname']}", "--no-password", "--format=directory", "--lock-wait-timeout=5min",
              "--exclude-schema=ge_capture", "--exclude-schema=great_escape"]
    for section in restore.SECTIONS:
        jobs = 2 if section == "data" else 1
        vp.tool("pg_dump", *common, f"--section={section}", f"--file={dump_dir / section}", f"--jobs={jobs}",
                "--compress=3", password=src["password"])


def _restore(vp: VersionPair, dump_dir: Path, work: Path) -> dict[str, Any]:
    """pg_restore as roles/restore runs it (master user, --no-owner --no-privileges), bigint after pre-data."""
    tgt = vp.db.target
    toc = restore.write_toc_lists(dump_dir, work, vp.tools.program("pg_restore"))
    conn_args = [f"--host={tgt['host']}", f"--port={tgt['port']}", f"--username={tgt['user']}",
                 f"--dbname={tgt['dbname']}", "--no-password", "--no-owner", "--no-privileges"]
    vp.tool("pg_restore", *conn_args, "--single-transaction", "--exit-on-error",
            f"--use-list={work / 'pre-data.list'}", str(dump_dir / "pre-data"), password=tgt["password"])
    with psycopg.connect(**vp.db.source) as src, psycopg.connect(**tgt) as dst:
        # events.month is a partition key: the plan keeps it integer (a warning), the rest of the key widens.
        plan = bigint.plan_bigint(src, None, "auto")
        bigint.apply_bigint(dst, plan)
    for section in ("data", "post-data"):
        vp.tool("pg_restore", "--verbose", "--jobs=2", *conn_args, "--exit-on-error",
                f"--use-list={work / f'{section}.list'}", str(dump_dir / section), password=tgt["password"])
    with psycopg.connect(**tgt) as conn:  # the prepare-target and restore phases' grants (DbPair.grant_repl)
        state.prepare_target(conn, REPL_USER)
        restore.grant_user(conn, None, REPL_USER)
    _grant_app(vp.db.sql_target)
    return {"toc": toc, "bigint": plan}


def _replicated_rows(params: dict[str, Any]) -> dict[str, list[str]]:
    return table_rows(params)


def _assert_same(pair: DbPair) -> None:
    src, tgt = _replicated_rows(pair.source), _replicated_rows(pair.target)
    assert set(src) == set(tgt)
    for name in src:
        assert src[name] == tgt[name], f"{name}: {len(src[name])} rows on the source, {len(tgt[name])} on the target"


def test_migration_between_majors(version_pair: VersionPair, tmp_path: Path) -> None:
    vp, pair = version_pair, version_pair.db
    started = time.monotonic()
    pair.sql_source(SOURCE_DDL)
    pair.sql_source(SEED)
    for run in (pair.sql_source, pair.sql_target):
        run(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'app-secret'").format(sql.Identifier(APP_ROLE)).as_string(None))
    _grant_app(pair.sql_source)
    app = {**pair.source, "user": APP_ROLE, "password": "app-secret"}

    # Preflight with the client tools the migration will use: a supported pair, nothing to fix.
    # The source's superuser owns the tables: mapped to the master user, as on Aurora (when preflight checks roles).
    roles = {"role_map": {"postgres": "ge_master"}} if "role_map" in {f.name for f in fields(preflight.Inputs)} else {}
    report = preflight.run(preflight.Inputs(
        source=pair.source, target=pair.target, replication_user=REPL_USER, replication_password=REPL_PASSWORD,
        pg_dump_version=vp.version_output("pg_dump"), pg_restore_version=vp.version_output("pg_restore"), **roles))
    assert report.problems == []
    assert report.facts["source_version_num"] // 10000 == vp.source_major
    assert report.facts["target_version_num"] // 10000 == vp.target_major
    assert report.facts["target_aurora_like"] is True
    assert not any("not among the pairs" in w for w in report.warnings)
    # Before 15, PUBLIC may CREATE in schema public; the restore does not carry that over.
    assert any("PUBLIC may CREATE in schema public" in w for w in report.warnings)
    # A pg_dump of the older major cannot be used: named with the client to install.
    older = preflight.run(preflight.Inputs(source=pair.source, target=pair.target, copy_method="pg_dump",
                                           pg_dump_version=f"pg_dump (PostgreSQL) {vp.source_major}.1", **roles))
    assert [p for p in older.problems if p.startswith("pg_dump")] == [
        f"pg_dump on the source host is {vp.source_major}, older than the newest server ({vp.target_major}); "
        f"install the PostgreSQL {vp.target_major} client there"]

    cfg = make_config(pair, tmp_path / "state")
    conf = tmp_path / "ge.yml"
    conf.write_text(yaml.safe_dump({"name": cfg.name, "source": cfg.source, "target": cfg.target,
                                    "batch_size": cfg.batch_size, "poll_interval": cfg.poll_interval,
                                    "state_dir": str(cfg.state_dir)}))
    dump_dir, work = tmp_path / "dump", tmp_path / "restore"
    dump_dir.mkdir()
    work.mkdir()
    with Writers(app, n=2) as during_copy:
        capture.run(cfg, state="present", freeze=True)
        time.sleep(0.5)  # changes between capture and the dump's snapshot
        _dump(vp, dump_dir)
        restored = _restore(vp, dump_dir, work)
    assert during_copy.commits > 20
    applied = daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    assert applied > 0

    # Nothing of the project's reached the target; the keys are bigint there; the copy is exact.
    assert any("ge_capture" in line for line in restored["toc"]["dropped"])
    assert pair.sql_target("SELECT count(*) FROM pg_namespace WHERE nspname = 'ge_capture'") == [(0,)]
    assert pair.sql_target("SELECT count(*) FROM pg_event_trigger") == [(0,)]
    assert pair.sql_target("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                           "WHERE attrelid = 'customers'::regclass AND attname = 'id'") == [("bigint",)]
    verify.verify(cfg.source, pair.target).raise_on_mismatch()
    _assert_same(pair)

    try:
        # The sync daemon follows the application's writes; cutover drains it and starts the reverse sync,
        # which then writes into the older major; rollback brings the target's writes back.
        daemon.start_detached(str(conf), cfg, "forward")
        with Writers(app, n=2) as after_copy:
            time.sleep(1.5)
        sw = cutover.switch(cfg, "cutover", target_admin=pair.target, config_path=str(conf))
        assert sw.sync_started == "reverse"
        _assert_same(pair)
        with Writers({**pair.target, "user": APP_ROLE, "password": "app-secret"}, n=1) as on_target:
            time.sleep(1.0)
        assert on_target.commits > 5
        back = cutover.switch(cfg, "rollback", target_admin=pair.target, config_path=str(conf),
                              options=cutover.Options(verify="full"))
        assert back.sync_started == "forward" and back.tables_verified == 7
        _assert_same(pair)
    finally:
        for direction in ("forward", "reverse"):
            daemon.stop_detached(cfg, direction)
    # Cleanup on both majors: the capture (and the freeze) removed, as their owners.
    capture.run(cfg, state="absent", freeze=False)
    capture.run(replace(cfg, source=dict(pair.target), target=dict(cfg.source)), state="absent", freeze=False)
    for run in (pair.sql_source, pair.sql_target):
        assert run("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'ge\\_%'") == [(0,)]
    print(f"\nPostgreSQL {vp.source_major} -> {vp.target_major} (client tools {vp.tools.major}, {vp.tools.origin}): "
          f"{during_copy.commits + after_copy.commits} source commits, {on_target.commits} target commits, "
          f"downtime {sw.downtime_seconds:.2f}s / {back.downtime_seconds:.2f}s, {time.monotonic() - started:.1f}s")

