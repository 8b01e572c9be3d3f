"""Helpers for the sync tests: config for a DbPair, schema + snapshot copy, and the test's own comparison."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from great_escape import access, capture, config
from great_escape.localcluster import MASTER_USER
from tests.conftest import REPL_USER, DbPair

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def make_config(pair: DbPair, state_dir: Path, **overrides: Any) -> config.Config:
    raw: dict[str, Any] = {"name": f"test-{pair.source['dbname']}", "source": pair.source, "target": pair.repl,
                           "state_dir": str(state_dir), "batch_size": 500, "poll_interval": 0.2}
    raw.update(overrides)
    return config.from_dict(raw)


def setup_schema(pair: DbPair, source_ddl: str, target_ddl: str | None = None) -> None:
    """DDL on the source; the same (or `target_ddl`) on the target as its master, then the restore's grants."""
    pair.sql_source(source_ddl)
    pair.sql_target(target_ddl or source_ddl)
    pair.grant_repl()


def carry_access(pair: DbPair, application_roles: tuple[str, ...] = ()) -> access.Plan:
    """What the migration does for the application's roles and privileges on the target (prepare-target and
    restore phases): the tests never grant the application anything on the target by hand."""
    opts = access.Options(role_map={"postgres": MASTER_USER}, application_roles=application_roles,
                          project_roles=(MASTER_USER, REPL_USER), sync_user=REPL_USER)
    with psycopg.connect(**pair.source) as src, psycopg.connect(**pair.target) as tgt:
        plan = access.plan(src, tgt, opts)
        access.apply(tgt, plan)
    return plan


def install_capture(cfg: config.Config) -> capture.Plan:
    return capture.run(cfg, state="present", freeze=False)


def snapshot_copy(pair: DbPair) -> None:
    """The initial copy, taken after capture: pg_dump --data-only of the source into the target (as its master)."""
    env = {"PGPASSWORD": pair.source["password"]}
    dump = subprocess.run([str(PG_BIN / "pg_dump"), "--data-only", "--exclude-schema", capture.SCHEMA,
                           "-h", pair.source["host"], "-p", str(pair.source["port"]), "-U", pair.source["user"],
                           pair.source["dbname"]], env=env, check=True, capture_output=True)
    env = {"PGPASSWORD": pair.target["password"]}
    restore_sql = b"SET session_replication_role = replica;\n" + dump.stdout
    subprocess.run([str(PG_BIN / "psql"), "-v", "ON_ERROR_STOP=1", "-q", "-h", pair.target["host"], "-p",
                    str(pair.target["port"]), "-U", pair.target["user"], pair.target["dbname"]], input=restore_sql,
                   env=env, check=True, capture_output=True)


def table_rows(params: dict[str, Any], exclude_schemas: tuple[str, ...] = ("ge_capture", "great_escape")) \
        -> dict[str, list[str]]:
    """Every application table's rows as text, ordered, with pinned settings: the test's own comparison."""
    out: dict[str, list[str]] = {}
    with psycopg.connect(**params, options="-c TimeZone=UTC -c extra_float_digits=3 -c DateStyle=ISO") as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r','p') AND NOT c.relispartition AND n.nspname NOT IN "
            "('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg\\_%%' AND n.nspname <> ALL(%s) "
            "ORDER BY 1, 2",
            (list(exclude_schemas),)).fetchall()
        for schema, name in tables:
            cols = [r[0] for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
                "ORDER BY attnum", (sql.Identifier(schema, name).as_string(conn),)).fetchall()]
            rows = conn.execute(sql.SQL("SELECT ROW({})::text AS r FROM {} ORDER BY 1").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in cols), sql.Identifier(schema, name))).fetchall()
            out[f"{schema}.{name}"] = [r[0] for r in rows]
    return out


def assert_identical(pair: DbPair) -> None:
    """Every source table exists on the target with the same rows (the target may hold extra tables)."""
    src, tgt = table_rows(pair.source), table_rows(pair.target)
    assert set(src) <= set(tgt), f"missing on the target: {sorted(set(src) - set(tgt))}"
    for name in src:
        missing = sorted(set(src[name]) - set(tgt[name]))[:5]
        extra = sorted(set(tgt[name]) - set(src[name]))[:5]
        assert src[name] == tgt[name], f"{name}: {len(src[name])} vs {len(tgt[name])} rows; missing on target " \
                                       f"{missing}, extra on target {extra}"
