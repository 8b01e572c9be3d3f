"""Clusters of two PostgreSQL majors for the cross-version migrations: a plain source of major X (12-16)
and an Aurora-like target of major Y (15+), with the client tools of the newer major of the two.

The builds come from scripts/install-pg-majors.sh (15 is Debian's). Which pairs run:

    GE_PG_MAJORS unset or "ci"   12 -> 16 (the pair CI runs; `pytest tests` includes it)
    GE_PG_MAJORS=all             12, 13, 14 -> 15, 16 (the measured matrix)
    GE_PG_MAJORS="13 15"         the pairs among the listed majors

    GE_PG_MAJORS=all scripts/install-pg-majors.sh && GE_PG_MAJORS=all .venv/bin/python -m pytest tests/crossversion

A missing build skips the pair with the command that installs it; under CI (CI=true) it fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from great_escape.localcluster import LocalCluster, PgBuild, find_build
from tests.conftest import REPL_PASSWORD, REPL_USER, TEST_ROOT, DbPair, _port, render_replica_role_function

SOURCES = (12, 13, 14)
TARGETS = (15, 16)
CI_PAIR = (12, 16)


def selected_pairs() -> list[tuple[int, int]]:
    wanted = os.environ.get("GE_PG_MAJORS", "ci").strip() or "ci"
    if wanted == "ci":
        return [CI_PAIR]
    if wanted == "all":
        return [(s, t) for s in SOURCES for t in TARGETS]
    majors = {int(m) for m in wanted.replace(",", " ").split()}
    return [(s, t) for s in sorted(majors) for t in sorted(majors) if s < t and t in TARGETS]


def require_build(major: int) -> PgBuild:
    """The build of a major, or a skip (locally) / failure (CI) that says how to install it."""
    build = find_build(major)
    if build is None:
        message = (f"no PostgreSQL {major} build in the cache or /usr/lib/postgresql: run "
                   f"GE_PG_MAJORS={major} scripts/install-pg-majors.sh (scripts/setup.sh installs the CI pair)")
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return build


@dataclass
class VersionPair:
    source_major: int
    target_major: int
    tools: PgBuild  # pg_dump, pg_restore, psql of the newer major
    source_cluster: LocalCluster
    target_cluster: LocalCluster
    db: DbPair

    def tool(self, name: str, *args: str, password: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run a client program of the newer major (pg_dump, pg_restore, psql)."""
        env = dict(self.tools.env(), PGPASSWORD=password, PGAPPNAME="great-escape crossversion test")
        proc = subprocess.run([self.tools.program(name), *args], env=env, check=False, capture_output=True,
                              text=True, **kwargs)  # type: ignore[call-overload]
        assert proc.returncode == 0, f"{name} {self.tools.major} failed (exit {proc.returncode}): {proc.stderr[-2000:]}"
        return proc

    def version_output(self, name: str) -> str:
        return subprocess.run([self.tools.program(name), "--version"], env=self.tools.env(), check=True,
                              capture_output=True, text=True).stdout


@pytest.fixture(params=selected_pairs(), ids=lambda p: f"pg{p[0]}-to-pg{p[1]}")
def version_pair(request: pytest.FixtureRequest) -> Iterator[VersionPair]:
    source_major, target_major = request.param
    source_build, target_build = require_build(source_major), require_build(target_major)
    tools = target_build if target_major >= source_major else source_build
    for program in ("pg_dump", "pg_restore", "psql"):
        if not (tools.bin_dir / program).exists():
            pytest.fail(f"the PostgreSQL {tools.major} build in {tools.bin_dir} has no {program}", pytrace=False)
    root = TEST_ROOT / f"pg{source_major}-pg{target_major}"
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(TEST_ROOT.parent, 0o755)
    os.chmod(TEST_ROOT, 0o755)
    source = LocalCluster(root / "source", _port(20), "source", bin_dir=source_build.bin_dir,
                          lib_dir=source_build.lib_dir)
    target = LocalCluster(root / "aurora", _port(21), "aurora", bin_dir=target_build.bin_dir,
                          lib_dir=target_build.lib_dir)
    try:
        source.start()
        target.start()
        with psycopg.connect(**target.conninfo(dbname="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(REPL_USER), sql.Literal(REPL_PASSWORD)))
        pair = DbPair(source.conninfo(), target.conninfo(),
                      {**target.conninfo(), "user": REPL_USER, "password": REPL_PASSWORD})
        with psycopg.connect(**pair.target, autocommit=True) as conn:
            conn.execute(render_replica_role_function())
        yield VersionPair(source_major, target_major, tools, source, target, pair)
    finally:
        for cluster in (source, target):
            cluster.stop(remove=True)
        shutil.rmtree(root, ignore_errors=True)
