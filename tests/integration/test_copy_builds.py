"""Index builds during the chunked copy (copybuild.py): each table's indexes and keys built by pg_restore from the
dump's post-data entries once its chunks are loaded, the rest left to post-data, idempotent across kill -9; and
the sequences' values the copy sets at its end."""

import json
import os
import signal
import subprocess
import sys
import time

import psycopg
import yaml

from great_escape import copy, copybuild
from great_escape.localcluster import SUPERUSER
from tests.integration.syncutil import PG_BIN, assert_identical, install_capture, make_config

SCHEMA_DDL = """
CREATE TABLE parent (id int PRIMARY KEY, code text UNIQUE, at tstzrange,
                     EXCLUDE USING gist (at WITH &&));
CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent, v text, n int);
CREATE INDEX child_v ON child (v);
CREATE INDEX child_n_lower ON child (n, lower(v)) WHERE n > 10;
CREATE TABLE events (id bigint, kind text, at timestamptz NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE events_1 PARTITION OF events FOR VALUES FROM ('2020-01-01') TO ('2030-01-01');
CREATE INDEX events_kind ON events (kind);
CREATE TABLE plain (a int NOT NULL UNIQUE, b text);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER child_touch BEFORE UPDATE ON child FOR EACH ROW EXECUTE FUNCTION touch();
CREATE SEQUENCE ticket_seq;
"""
SEED = """
INSERT INTO parent SELECT g, 'p' || g, tstzrange(now() + g * interval '1 hour', now() + (g + 1) * interval '1 hour')
  FROM generate_series(1, 3000) g;
INSERT INTO child SELECT g, 1 + g % 3000, repeat('c', 30) || g, g % 50 FROM generate_series(1, 20000) g;
INSERT INTO events SELECT g, 'k' || g % 7, '2024-01-01'::timestamptz + g * interval '1 minute'
  FROM generate_series(1, 2000) g;
INSERT INTO plain SELECT g, 'x' FROM generate_series(1, 100) g;
SELECT setval('ticket_seq', 4242);
"""
# What the copy builds (ordinary tables' indexes and keys); events' (partitioned) and the foreign key and trigger
# are post-data's.
EARLY = {"public.parent": {"parent_pkey", "parent_code_key", "parent_at_excl"},
         "public.child": {"child_pkey", "child_v", "child_n_lower"}, "public.plain": {"plain_a_key"}}


def _pg(tool):
    return str(PG_BIN / tool)


def _restore_args(params, passfile):
    argv = [f"--host={params['host']}", f"--port={params['port']}", f"--username={params['user']}",
            f"--dbname={params['dbname']}", "--no-password", "--no-owner", "--no-privileges"]
    env = {"PGPASSFILE": str(passfile)}
    if params.get("sslmode"):
        env.update(PGSSLMODE=params["sslmode"], PGSSLROOTCERT=params["sslrootcert"])
    return argv, env


def _prepare(dbpair, tmp_path):
    """The restore's steps before the copy, with the real tools: pg_dump by section, pre-data restored as the
    master, the post-data TOC list, capture, the replication user's grants."""
    dbpair.sql_source(SCHEMA_DDL)
    dbpair.sql_source(SEED)
    passfile = tmp_path / "pgpass"
    lines = [":".join(str(p[k]) for k in ("host", "port", "dbname", "user", "password"))
             for p in (dbpair.source, dbpair.target)]
    passfile.write_text("\n".join(lines) + "\n")
    passfile.chmod(0o600)
    src_argv, src_env = _restore_args(dbpair.source, passfile)
    env = {**os.environ, **src_env}
    conn = [a for a in src_argv if a.split("=")[0] in ("--host", "--port", "--username", "--dbname")]
    for section in ("pre-data", "post-data"):
        subprocess.run([_pg("pg_dump"), *conn, "-Fd", f"--section={section}", "-f", str(tmp_path / section)],
                       env=env, check=True)
    argv, tgt_env = _restore_args(dbpair.target, passfile)
    subprocess.run([_pg("pg_restore"), *argv, "--exit-on-error", str(tmp_path / "pre-data")],
                   env={**os.environ, **tgt_env}, check=True)
    toc = subprocess.run([_pg("pg_restore"), "-l", str(tmp_path / "post-data")], check=True, capture_output=True,
                         text=True).stdout
    (tmp_path / "post-data.list").write_text(toc)
    dbpair.grant_repl()
    spec = {"toc_list": str(tmp_path / "post-data.list"), "dump_dir": str(tmp_path / "post-data"),
            "rest_list": str(tmp_path / "post-data-rest.list"), "argv": [_pg("pg_restore"), *argv],
            "env": tgt_env, "jobs": 2, "log_dir": str(tmp_path / "builds")}
    (tmp_path / "builds.json").write_text(json.dumps(spec))
    cfg = make_config(dbpair, tmp_path)
    install_capture(cfg)
    return cfg, copybuild.load_spec(tmp_path / "builds.json"), (argv, tgt_env)


def _objects(params):
    """Every index, constraint and trigger of the application's tables (not capture's), with its definition."""
    with psycopg.connect(**params) as conn:
        return set(conn.execute(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
            " UNION ALL SELECT conname, pg_get_constraintdef(k.oid) FROM pg_constraint k"
            " JOIN pg_namespace n ON n.oid = k.connamespace WHERE n.nspname = 'public'"
            " UNION ALL SELECT tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t"
            " WHERE NOT tgisinternal AND tgname NOT LIKE 'ge\\_capture\\_%'").fetchall())


def _names(params):
    return {name for name, _ in _objects(params)}


def test_tables_get_their_indexes_during_the_copy_and_post_data_the_rest(dbpair, tmp_path):
    cfg, spec, (argv, env) = _prepare(dbpair, tmp_path)
    summary = copy.run(cfg, copy.Options(jobs=2, chunk_bytes=64 * 1024, state_dir=tmp_path / "state",
                                         index_builds=spec))
    assert summary.built_tables == 3
    assert summary.sequences_moved == 1  # the schema dump has no sequence values: the copy sets them
    assert dbpair.sql_target("SELECT last_value, is_called FROM ticket_seq") == [(4242, True)]
    built = _names(dbpair.target)
    assert set().union(*EARLY.values()) <= built
    assert not {"child_parent_id_fkey", "events_kind", "events_pkey", "child_touch"} & built
    rest = spec.rest_list.read_text().splitlines()
    commented = [line for line in rest if line.startswith("; built by the copy:")]
    assert len(commented) == sum(len(v) for v in EARLY.values())
    progress = json.loads((tmp_path / "state" / "copy-progress.json").read_text())
    assert (progress["tables_built"], progress["tables_to_build"], progress["building"]) == (3, 3, [])
    # The restore's post-data step with the rest: exactly the source's indexes, keys and triggers.
    subprocess.run([_pg("pg_restore"), *argv, "--exit-on-error", f"--use-list={spec.rest_list}",
                    str(spec.dump_dir)], env={**os.environ, **env}, check=True)
    assert _objects(dbpair.target) == _objects(dbpair.source)
    assert_identical(dbpair)


def _copied_then_cut_short(dbpair, tmp_path, drop: str):
    """A copy as a coordinator killed after the last chunk loaded, during the builds, leaves it: the objects
    `drop` drops are not built and the copy is not marked finished. Returns the config, the options and every
    object of the finished copy."""
    cfg, spec, _ = _prepare(dbpair, tmp_path)
    opts = copy.Options(jobs=2, chunk_bytes=64 * 1024, state_dir=tmp_path / "state", index_builds=spec)
    copy.run(cfg, opts)
    built = _objects(dbpair.target)
    dbpair.sql_target(drop)
    with psycopg.connect(**dbpair.repl, autocommit=True) as conn:  # the copy's markers are the replication user's
        conn.execute("DELETE FROM great_escape.copy_done")
    return cfg, opts, built


def test_a_rerun_builds_only_what_is_missing(dbpair, tmp_path):
    cfg, opts, _ = _copied_then_cut_short(dbpair, tmp_path, "DROP INDEX child_v")
    summary = copy.run(cfg, opts)
    assert summary.chunks_copied == 0
    assert summary.built_tables == 3
    assert summary.sequences_moved == 0  # set by the first run already
    assert dbpair.sql_target("SELECT last_value, is_called FROM ticket_seq") == [(4242, True)]
    assert [line.split()[3:6] for line in (tmp_path / "builds" / "public.child.list").read_text().splitlines()] \
        == [["INDEX", "public", "child_v"]]
    assert set().union(*EARLY.values()) <= _names(dbpair.target)


def test_once_every_chunk_is_loaded_a_table_is_built_several_entries_at_once(dbpair, tmp_path, caplog):
    # Every chunk is loaded: the loads' two connections join the builds' two, so child's three entries are
    # built at once.
    cfg, opts, before = _copied_then_cut_short(
        dbpair, tmp_path, "ALTER TABLE child DROP CONSTRAINT child_pkey; DROP INDEX child_v, child_n_lower")
    caplog.set_level("INFO", logger="great_escape.copy")
    copy.run(cfg, opts)
    assert "public.child: loaded; building 3 index(es) and key(s), 3 at once" in caplog.messages
    assert _objects(dbpair.target) == before


def test_autovacuum_of_a_loaded_table_does_not_hold_its_builds(dbpair, aurora_cluster, tmp_path, caplog):
    # A freshly loaded table's first autovacuum (the bench's full run waited ~100 s for wide_events') yields to
    # the build: waiting for it like for a killed run's build would leave the copy idle.
    cfg, opts, before = _copied_then_cut_short(dbpair, tmp_path, "DROP INDEX child_v")
    # A vacuum that crawls (one page per 100 ms) over a table with dead rows, started by autovacuum.
    dbpair.sql_target("ALTER TABLE child SET (autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0,"
                      " autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1)")
    dbpair.sql_target("UPDATE child SET n = n")
    admin = aurora_cluster.conninfo(user=SUPERUSER, dbname="postgres")  # AWS's side: the parameter group
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET autovacuum_naptime = 1")
        conn.execute("SELECT pg_reload_conf()")
        try:
            deadline = time.monotonic() + 60
            while not conn.execute("SELECT 1 FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
                                   " AND datname = %s AND query LIKE %s", (dbpair.target["dbname"], "%child%")
                                   ).fetchone():
                assert time.monotonic() < deadline, "autovacuum did not start on child within 60 s"
                time.sleep(0.2)
            caplog.set_level("INFO", logger="great_escape.copy")
            started = time.monotonic()
            copy.run(cfg, opts)
            assert time.monotonic() - started < 30
        finally:
            conn.execute("ALTER SYSTEM RESET autovacuum_naptime")
            conn.execute("SELECT pg_reload_conf()")
    assert not [m for m in caplog.messages if "another session holds a lock" in m]
    assert _objects(dbpair.target) == before


def test_kill_9_during_the_builds_then_a_rerun_ends_identical(dbpair, tmp_path):
    cfg, spec, (argv, env) = _prepare(dbpair, tmp_path)
    dbpair.sql_source("INSERT INTO child SELECT g, 1, repeat('c', 200) || g, g % 50 "
                      "FROM generate_series(20001, 300000) g")
    conf = tmp_path / "ge.yml"
    conf.write_text(yaml.safe_dump({"name": cfg.name, "source": cfg.source, "target": cfg.target,
                                    "state_dir": str(tmp_path / "state")}))
    cmd = [sys.executable, "-m", "great_escape.cli", "copy", "--config", str(conf), "--jobs", "2", "--chunk-bytes",
           str(4 * 1024 * 1024), "--index-builds", str(tmp_path / "builds.json")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (tmp_path / "builds" / "public.child.log").exists() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.3)  # the killed sessions end
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert killed, "the copy ended before the kill: make the child table bigger"
    printed = json.loads(rerun.stdout)
    assert printed["built_tables"] == 3
    assert printed["sequences_moved"] == 1  # the killed run died in its builds, before the sequences
    assert dbpair.sql_target("SELECT last_value FROM ticket_seq") == [(4242,)]
    subprocess.run([_pg("pg_restore"), *argv, "--exit-on-error", f"--use-list={spec.rest_list}",
                    str(spec.dump_dir)], env={**os.environ, **env}, check=True)
    assert _objects(dbpair.target) == _objects(dbpair.source)
    assert_identical(dbpair)
