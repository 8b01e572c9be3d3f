"""The chunked initial copy (great-escape copy): identical rows, one snapshot, exactly-once resume."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
import yaml

from great_escape import catalog, copy, copyplan, copyworker, daemon
from great_escape.copyplan import CopyError
from tests.integration.syncutil import assert_identical, install_capture, make_config, setup_schema
from tests.integration.workload import SEED, SOURCE_DDL, TARGET_EXTRA

CHUNK = 16 * 1024  # bytes: small tables split into many chunks

# A table split by key value, one by ctid (text key), a keyless one (ctid), a small one.
SPLIT_DDL = """
CREATE TABLE bykey (id int PRIMARY KEY, v text, n int);
CREATE TABLE bytext (code text PRIMARY KEY, v text, n int);
CREATE TABLE keyless (a int, b text);
CREATE TABLE small (id int PRIMARY KEY, v text);
"""
# The target as the restore leaves it before post-data: no keys, no indexes, int widened to bigint.
SPLIT_TARGET_DDL = """
CREATE TABLE bykey (id bigint NOT NULL, v text, n int);
CREATE TABLE bytext (code text NOT NULL, v text, n int);
CREATE TABLE keyless (a int, b text);
CREATE TABLE small (id int NOT NULL, v text);
"""
SPLIT_SEED = """
INSERT INTO bykey SELECT g, repeat('k', 40) || g, 0 FROM generate_series(1, 6000) g;
INSERT INTO bytext SELECT 'c' || g, repeat('t', 40) || g, 0 FROM generate_series(1, 6000) g;
INSERT INTO keyless SELECT g, repeat('x', 40) FROM generate_series(1, 3000) g;
INSERT INTO small VALUES (1, 'one'), (2, E'tab\\there');
"""


def _config(dbpair, tmp_path, **overrides):
    cfg = make_config(dbpair, tmp_path, keyless_tables="copy_at_cutover", **overrides)
    install_capture(cfg)
    return cfg


def _opts(tmp_path, jobs=2, chunk=CHUNK):
    return copy.Options(jobs=jobs, chunk_bytes=chunk, state_dir=tmp_path / "state")


def _write_config(cfg, path: Path) -> Path:
    raw = {"name": cfg.name, "source": cfg.source, "target": cfg.target, "state_dir": str(cfg.state_dir),
           "keyless_tables": cfg.keyless_tables}
    path.write_text(yaml.safe_dump(raw))
    return path


def _repl(dbpair, query, params=None):
    """The copy's own tables belong to the replication user, which the copy runs as."""
    with psycopg.connect(**dbpair.repl, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def _plan(dbpair, name):
    rows = _repl(dbpair, "SELECT table_name, kind, count(*) FROM great_escape.copy_plan WHERE name = %s "
                             "GROUP BY 1, 2", (name,))
    return {t: (k, n) for t, k, n in rows}


def _markers(dbpair, name):
    return dict(_repl(dbpair, "SELECT table_name, count(*) FROM great_escape.copy_chunks WHERE name = %s "
                                  "GROUP BY 1", (name,)))


def _wait_for_loaded(dbpair, name, proc, chunks, deadline):
    """Until that many chunks are loaded (or the copy ended): kill moments picked by progress, not by the
    clock, so that a fast machine's copy does not end before the kill comes."""
    while sum(_markers(dbpair, name).values()) < chunks and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)


def _count(params, table):
    with psycopg.connect(**params) as conn:
        return conn.execute(f"SELECT count(*), count(DISTINCT t) FROM {table} t").fetchone()  # noqa: S608


def test_copy_of_a_realistic_schema_is_identical(dbpair, tmp_path):
    setup_schema(dbpair, SOURCE_DDL, SOURCE_DDL + TARGET_EXTRA)
    dbpair.sql_source(SEED)
    dbpair.sql_source("INSERT INTO customers SELECT g, 'c' || g, 'c' || g || '@x' FROM generate_series(1000, 3000) g")
    cfg = _config(dbpair, tmp_path)
    summary = copy.run(cfg, _opts(tmp_path, chunk=32 * 1024))
    assert_identical(dbpair)
    plan = _plan(dbpair, cfg.name)
    assert summary.chunks_copied == summary.chunks_total > 8 and summary.chunks_skipped == 0, plan
    assert plan["public.customers"][0] == "key" and plan["public.customers"][1] > 1
    assert plan["public.events"] == ("whole", 1)  # partitioned, composite key: one chunk
    # Progress for ge_wait and `great-escape progress show`.
    out = subprocess.run([sys.executable, "-m", "great_escape.cli", "copy", "--progress", "--state-dir",
                          str(tmp_path / "state")], check=True, capture_output=True, text=True).stdout
    prog = json.loads(out)
    assert prog["state"] == "done" and prog["bytes_done"] == prog["bytes_total"] > 0
    assert prog["chunks_done"] == prog["chunks_total"] == summary.chunks_total
    assert prog["rows_done"] == summary.rows > 3000
    shown = subprocess.run([sys.executable, "-m", "great_escape.cli", "progress", "show", "--state-dir",
                            str(tmp_path / "state")], check=True, capture_output=True, text=True).stdout
    assert shown.startswith("copy") and "done" in shown
    # A finished copy is not touched again (the sync may be running by then): nothing copied or reconciled.
    dbpair.sql_source("UPDATE customers SET name = 'later' WHERE id = 1")
    again = copy.run(cfg, _opts(tmp_path))
    assert again.chunks_copied == 0 and again.chunks_skipped == summary.chunks_total
    assert again.reconciled_tables == again.recopied_tables == [] and again.snapshot == summary.snapshot
    dbpair.sql_source("UPDATE customers SET name = 'c1' WHERE id = 1")
    assert_identical(dbpair)


def test_split_by_key_and_by_ctid_is_identical(dbpair, tmp_path):
    setup_schema(dbpair, SPLIT_DDL, SPLIT_TARGET_DDL)
    dbpair.sql_source(SPLIT_SEED)
    cfg = _config(dbpair, tmp_path)
    summary = copy.run(cfg, _opts(tmp_path, jobs=3))
    assert_identical(dbpair)
    plan = _plan(dbpair, cfg.name)
    assert plan["public.bykey"][0] == "key" and plan["public.bykey"][1] > 4
    assert plan["public.bytext"][0] == "ctid" and plan["public.bytext"][1] > 4
    assert plan["public.keyless"][0] == "ctid" and plan["public.keyless"][1] > 2
    assert plan["public.small"] == ("whole", 1)
    assert summary.rows == 6000 + 6000 + 3000 + 2
    assert _markers(dbpair, cfg.name) == {t: n for t, (_, n) in plan.items()}


def test_writes_during_the_copy_do_not_leak_in(dbpair, tmp_path):
    """Every writer transaction bumps `n` on every row of two tables: in any one snapshot all rows of both
    share one value. Rows copied from several moments would not; rows moved by an update (new ctid) would
    be counted twice."""
    setup_schema(dbpair, SPLIT_DDL, SPLIT_TARGET_DDL)
    dbpair.sql_source(SPLIT_SEED)
    cfg = _config(dbpair, tmp_path)
    stop = threading.Event()
    bumps = [0]

    def writer():
        with psycopg.connect(**dbpair.source, autocommit=True) as conn:
            while not stop.is_set():
                with conn.transaction():
                    conn.execute("UPDATE bytext SET n = n + 1")
                    conn.execute("UPDATE bykey SET n = n + 1")
                bumps[0] += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while bumps[0] < 2:
            time.sleep(0.05)
        summary = copy.run(cfg, _opts(tmp_path, jobs=2, chunk=8 * 1024))
        during = bumps[0]
        while bumps[0] < during + 2:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    assert summary.chunks_copied > 20
    values = dbpair.sql_target("SELECT DISTINCT n FROM bytext UNION SELECT DISTINCT n FROM bykey")
    assert len(values) == 1, f"rows from several snapshots: n in {sorted(v[0] for v in values)}"
    assert _count(dbpair.target, "bytext") == (6000, 6000)
    assert _count(dbpair.target, "bykey") == (6000, 6000)
    latest = dbpair.sql_source("SELECT max(n) FROM bytext")[0][0]
    assert 0 < values[0][0] < latest  # the copy saw some writes, and missed the later ones


def test_a_copy_resumed_under_writes_is_the_source_at_one_snapshot(dbpair, tmp_path):
    """As above, with the coordinator killed half way: the rerun's snapshot is a later one. Key chunks of the
    first run are kept and their changed rows brought to the new snapshot, the half-loaded ctid table is
    copied again: every row of both tables shares one `n`, as in any single snapshot of the source."""
    setup_schema(dbpair, SPLIT_DDL, SPLIT_TARGET_DDL)
    dbpair.sql_source(SPLIT_SEED)
    cfg = _config(dbpair, tmp_path)
    conf = _write_config(cfg, tmp_path / "ge.yml")
    with psycopg.connect(**dbpair.repl) as conn:
        copyplan.ensure_state(conn)
    stop = threading.Event()

    def writer():
        with psycopg.connect(**dbpair.source, autocommit=True) as conn:
            while not stop.is_set():
                with conn.transaction():
                    conn.execute("UPDATE bytext SET n = n + 1")
                    conn.execute("UPDATE bykey SET n = n + 1")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "great_escape.cli", "copy", "--config", str(conf), "--jobs",
                                 "2", "--chunk-bytes", str(8 * 1024)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not {"public.bykey", "public.bytext"} <= set(_markers(dbpair, cfg.name)) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = _markers(dbpair, cfg.name)
        summary = copy.run(cfg, _opts(tmp_path, jobs=2, chunk=8 * 1024))
    finally:
        stop.set()
        thread.join()
    assert {"public.bykey", "public.bytext"} <= set(before) and sum(before.values()) < summary.chunks_total
    assert summary.snapshots == 2 and "public.bykey" in summary.reconciled_tables
    half = before["public.bytext"] < _plan(dbpair, cfg.name)["public.bytext"][1]
    assert "public.bytext" in (summary.recopied_tables if half else summary.reconciled_tables)
    values = dbpair.sql_target("SELECT DISTINCT n FROM bytext UNION SELECT DISTINCT n FROM bykey")
    assert len(values) == 1, f"rows from several snapshots: n in {sorted(v[0] for v in values)}"
    assert _count(dbpair.target, "bytext") == (6000, 6000)
    assert _count(dbpair.target, "bykey") == (6000, 6000)


def test_target_rows_not_loaded_by_the_copy_stop_it_naming_the_table(dbpair, tmp_path):
    setup_schema(dbpair, SPLIT_DDL, SPLIT_TARGET_DDL)
    dbpair.sql_source(SPLIT_SEED)
    dbpair.sql_target("INSERT INTO small VALUES (99, 'left over')")
    cfg = _config(dbpair, tmp_path)
    with pytest.raises(CopyError, match=r"public\.small on the target already holds rows.*TRUNCATE public\.small"):
        copy.run(cfg, _opts(tmp_path))
    assert _markers(dbpair, cfg.name) == {}


def test_copy_refuses_tables_without_capture(dbpair, tmp_path):
    setup_schema(dbpair, SPLIT_DDL, SPLIT_TARGET_DDL)
    cfg = make_config(dbpair, tmp_path)
    with pytest.raises(CopyError, match=r"capture is not installed on 3 table\(s\).*03_capture"):
        copy.run(cfg, _opts(tmp_path))
    summary = copy.run(cfg, copy.Options(jobs=1, chunk_bytes=CHUNK, state_dir=tmp_path, require_capture=False))
    assert summary.chunks_copied == 4


POISON = """
CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN IF NEW.v = 'poison' THEN RAISE EXCEPTION 'poisoned row'; END IF; RETURN NEW; END $$;
"""


def _poisoned_run(dbpair, tmp_path, ddl, target_ddl, table):
    """Run 1 with jobs=1 stops at `table`'s last chunk (its poisoned row is the last one): every other chunk
    of it is loaded, chunks of equal size going in chunk order. Returns (config, plan, markers)."""
    setup_schema(dbpair, ddl, target_ddl + ";" + POISON)
    dbpair.sql_target(f"CREATE TRIGGER p BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION poison(); "
                      f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER p")  # fires under session_replication_role too
    cfg = _config(dbpair, tmp_path)
    with pytest.raises(CopyError, match=rf"chunk public\.{table}#\d+ failed: poisoned row \(SQLSTATE P0001\)"
                                        ".*resumes"):
        copy.run(cfg, _opts(tmp_path, jobs=1))
    dbpair.sql_target(f"DROP TRIGGER p ON {table}")
    plan = _plan(dbpair, cfg.name)
    markers = _markers(dbpair, cfg.name)
    assert markers[f"public.{table}"] == plan[f"public.{table}"][1] - 1 and set(markers) <= {f"public.{table}",
                                                                                              "public.small"}
    return cfg, plan, markers


def test_resume_recopies_a_ctid_table_loaded_in_part_under_an_older_snapshot(dbpair, tmp_path):
    ddl = "CREATE TABLE bytext (code text PRIMARY KEY, v text, n int); CREATE TABLE small (id int PRIMARY KEY);"
    dbpair.sql_source(ddl)
    dbpair.sql_source("INSERT INTO bytext SELECT 'c' || g, repeat('t', 40) || g, 0 FROM generate_series(1, 6000) g; "
                      "INSERT INTO bytext VALUES ('zz', 'poison', 0); INSERT INTO small VALUES (1)")
    cfg, plan, first = _poisoned_run(dbpair, tmp_path, "SELECT 1", "CREATE TABLE bytext (code text, v text, n int); "
                                 "CREATE TABLE small (id int)", "bytext")
    # Rows of the early pages move to the end of the table, into the chunk not loaded yet: copied again by
    # that chunk alone they would be on the target twice (it has no key yet).
    dbpair.sql_source("UPDATE bytext SET n = 1 WHERE code IN (SELECT code FROM bytext ORDER BY ctid LIMIT 500)")
    dbpair.sql_source("DELETE FROM bytext WHERE code = 'zz'")
    summary = copy.run(cfg, _opts(tmp_path, jobs=2))
    assert summary.recopied_tables == ["public.bytext"]
    assert summary.chunks_copied == plan["public.bytext"][1] + 1 - first.get("public.small", 0)
    assert _count(dbpair.target, "bytext") == (6000, 6000)
    assert_identical(dbpair)


def test_resume_keeps_key_chunks_and_makes_their_rows_those_of_the_new_snapshot(dbpair, tmp_path):
    ddl = "CREATE TABLE bykey (id int PRIMARY KEY, v text, n int); CREATE TABLE small (id int PRIMARY KEY);"
    dbpair.sql_source(ddl)
    dbpair.sql_source("INSERT INTO bykey SELECT g, repeat('k', 40) || g, 0 FROM generate_series(1, 6000) g; "
                      "INSERT INTO bykey VALUES (100000, 'poison', 0); INSERT INTO small VALUES (1)")
    cfg, plan, first = _poisoned_run(dbpair, tmp_path, "SELECT 1", "CREATE TABLE bykey (id bigint NOT NULL, v text, "
                                     "n int); CREATE TABLE small (id int NOT NULL)", "bykey")
    # Changes between the runs: rows in chunk 0 (loaded under the first snapshot), and the poisoned row.
    dbpair.sql_source("UPDATE bykey SET n = 2 WHERE id <= 100; UPDATE bykey SET v = 'cured' WHERE id = 100000")
    summary = copy.run(cfg, _opts(tmp_path, jobs=2))
    assert summary.recopied_tables == [] and summary.chunks_skipped == sum(first.values())
    assert summary.chunks_copied == 2 - first.get("public.small", 0)
    assert f"public.bykey#{plan['public.bykey'][1] - 1}" in summary.copied
    assert summary.snapshots == 2 and summary.reconciled_tables == ["public.bykey"]
    # Chunk 0 was read in the first snapshot; the rows changed since capture started are brought to the
    # second one, so the whole target is the source at one snapshot before post-data and the sync.
    assert dbpair.sql_target("SELECT count(*) FROM bykey WHERE n = 2") == [(100,)]
    assert _count(dbpair.target, "bykey") == (6001, 6001)
    assert_identical(dbpair)
    # The sync replays the same deltas: nothing changes, the target stays identical.
    dbpair.sql_source("UPDATE bykey SET n = 3 WHERE id = 7")
    dbpair.sql_target("ALTER TABLE bykey ADD PRIMARY KEY (id); ALTER TABLE small ADD PRIMARY KEY (id)")
    daemon.SyncProcess(cfg, direction="forward").run(drain=True)
    assert_identical(dbpair)


def _children(pid):
    """The copy's worker processes: forked (the coordinator's command line) or, replacements, spawned."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        ours = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return []
    workers = []
    for child in text.split():
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:  # ended since
            continue
        if cmdline == ours or b"spawn_main" in cmdline:
            workers.append(int(child))
    return workers


def test_kill_9_at_random_moments_resumes_exactly_once(dbpair, tmp_path):
    setup_schema(dbpair, SPLIT_DDL, SPLIT_TARGET_DDL)
    dbpair.sql_source(SPLIT_SEED)
    dbpair.sql_source("INSERT INTO bykey SELECT g, repeat('k', 40), 0 FROM generate_series(6001, 20000) g; "
                      "INSERT INTO bytext SELECT 'd' || g, repeat('t', 40), 0 FROM generate_series(1, 14000) g")
    cfg = _config(dbpair, tmp_path)
    conf = _write_config(cfg, tmp_path / "ge.yml")
    cmd = [sys.executable, "-m", "great_escape.cli", "copy", "--config", str(conf), "--jobs", "2",
           "--chunk-bytes", str(8 * 1024), "--state-dir", str(tmp_path / "state")]
    with psycopg.connect(**dbpair.repl) as conn:
        copyplan.ensure_state(conn)
    rnd = random.Random(14)
    partial = 0
    for trial in range(5):
        dbpair.sql_target("TRUNCATE bykey, bytext, keyless, small")
        _repl(dbpair, "DELETE FROM great_escape.copy_chunks RETURNING 1")
        _repl(dbpair, "DELETE FROM great_escape.copy_done RETURNING 1")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        # Kill at a random chunk count; odd trials kill a worker first and the coordinator some chunks later.
        loaded = rnd.randint(1, 40)
        _wait_for_loaded(dbpair, cfg.name, proc, loaded, deadline)
        if trial % 2 and proc.poll() is None:
            for child in _children(proc.pid)[:1]:
                os.kill(child, signal.SIGKILL)
            _wait_for_loaded(dbpair, cfg.name, proc, loaded + rnd.randint(1, 40), deadline)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.2)  # the killed sessions' transactions roll back
        # The copy recorded its end before the kill (its process may still have been shutting its workers
        # down): a rerun changes nothing.
        finished = bool(_repl(dbpair, "SELECT 1 FROM great_escape.copy_done WHERE name = %s", (cfg.name,)))
        before = _markers(dbpair, cfg.name)
        if finished:
            summary = copy.run(cfg, _opts(tmp_path, jobs=2, chunk=8 * 1024))
            assert (summary.chunks_copied, summary.recopied_tables, summary.reconciled_tables) == (0, [], [])
            assert_identical(dbpair)
            continue
        plan = _plan(dbpair, cfg.name)
        total = sum(n for _, n in plan.values())
        # Recopied whole: ctid-split tables loaded in part, and the keyless table (no capture, so no deltas
        # to bring it to the new snapshot). The others keep their chunks and are reconciled.
        recopied = {t for t, (kind, n) in plan.items() if kind == "ctid" and 0 < before.get(t, 0) < n}
        recopied |= {"public.keyless"} & set(before)
        kept = sum(n for t, n in before.items() if t not in recopied)
        partial += 0 < sum(before.values()) < total
        summary = copy.run(cfg, _opts(tmp_path, jobs=2, chunk=8 * 1024))
        assert summary.chunks_copied == total - kept, (trial, before, summary)
        assert sorted(summary.recopied_tables) == sorted(recopied)
        assert sorted(summary.reconciled_tables) == sorted(set(before) - recopied)
        assert_identical(dbpair)
    assert partial >= 3  # most trials were killed in the middle of the copy


def kill_a_worker_and_finish(dbpair, tmp_path, *args: str, chunk: int = 8 * 1024) -> dict:
    """The copy command on the SPLIT tables (already seeded), one of its two workers SIGKILLed once a chunk is
    loaded; asserts the copy replaced it and loaded every chunk once, in one snapshot, identical. Returns its
    summary. `args`: more options of the copy command."""
    cfg = _config(dbpair, tmp_path)
    conf = _write_config(cfg, tmp_path / "ge.yml")
    with psycopg.connect(**dbpair.repl) as conn:
        copyplan.ensure_state(conn)
    proc = subprocess.Popen([sys.executable, "-m", "great_escape.cli", "copy", "--config", str(conf), "--jobs", "2",
                             "--chunk-bytes", str(chunk), "--state-dir", str(tmp_path / "state"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _markers(dbpair, cfg.name) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert proc.poll() is None and len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "died (exit code -9)" in err
    summary = json.loads(out)
    assert summary["snapshots"] == 1 and summary["chunks_skipped"] == 0
    assert summary["chunks_total"] == sum(_markers(dbpair, cfg.name).values())
    assert_identical(dbpair)
    return summary


def test_a_killed_worker_is_replaced_and_its_chunk_loaded_in_the_same_snapshot(dbpair, tmp_path):
    setup_schema(dbpair, SPLIT_DDL, SPLIT_TARGET_DDL)
    dbpair.sql_source(SPLIT_SEED)
    dbpair.sql_source("INSERT INTO bykey SELECT g, repeat('k', 40), 0 FROM generate_series(6001, 30000) g")
    kill_a_worker_and_finish(dbpair, tmp_path)


def test_widened_integer_keys_are_copied_in_binary_cast_on_the_source(dbpair, tmp_path):
    """The bigint step's int -> bigint keys do not force text COPY: the source reads them cast to bigint."""
    setup_schema(dbpair, SPLIT_DDL, SPLIT_TARGET_DDL)
    dbpair.sql_source(SPLIT_SEED)
    dbpair.sql_target("ALTER TABLE small ALTER id TYPE smallint")  # a narrowing: text COPY, as before
    with psycopg.connect(**dbpair.source) as src, psycopg.connect(**dbpair.repl) as tgt:
        tables = {t.name: t for t in catalog.list_tables(src, ["public"])}
        targets = {t.name: t for t in catalog.list_tables(tgt, ["public"])}
        columns, binary = copyworker.select_list(src, tgt, tables["bykey"], targets["bykey"])
        assert binary and columns.as_string(src) == '"id"::int8, "v", "n"'
        assert copyworker.select_list(src, tgt, tables["bytext"], targets["bytext"])[1]
        assert not copyworker.select_list(src, tgt, tables["small"], targets["small"])[1]
    cfg = _config(dbpair, tmp_path)
    copy.run(cfg, _opts(tmp_path))
    assert_identical(dbpair)


def test_text_format_copies_in_text_where_binary_would_do(dbpair, tmp_path):
    """--format text: every chunk crosses as text COPY (its bytes are the source's text COPY output's), for a
    slow link; the tables end identical."""
    setup_schema(dbpair, SPLIT_DDL, SPLIT_TARGET_DDL)
    dbpair.sql_source(SPLIT_SEED)
    cfg = _config(dbpair, tmp_path)
    copy.run(cfg, copy.Options(jobs=2, chunk_bytes=CHUNK, state_dir=tmp_path / "state", text=True))
    assert_identical(dbpair)
    sent = dict(_repl(dbpair, "SELECT table_name, sum(bytes)::int8 FROM great_escape.copy_chunks WHERE name = %s "
                              "GROUP BY 1", (cfg.name,)))
    with psycopg.connect(**dbpair.source) as src, src.cursor() as cur:
        for table in ("bykey", "bytext"):
            with cur.copy(f"COPY (SELECT * FROM {table}) TO STDOUT") as out:
                text_bytes = sum(len(block) for block in out)
            assert sent[f"public.{table}"] == text_bytes


def test_ranges_cover_every_value_once_with_open_ends():
    from great_escape.copyplan import _bounds, _ranges

    for lo, hi, n in ((1, 10, 3), (1, 2, 5), (-2**63, 2**63 - 1, 7), (5, 1_000_005, 64)):
        cuts = _bounds(lo, hi, min(n, hi - lo + 1))
        ranges = _ranges(cuts)
        assert ranges[0][0] is None and ranges[-1][1] is None
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # adjacent, no gap
        assert all(int(a) < int(b) for a, b in zip(cuts, cuts[1:], strict=False))
        assert all(lo < c <= hi for c in cuts)


def test_a_small_database_is_cut_into_chunks_for_every_worker():
    mib = 1024 * 1024
    assert copyplan.chunk_size(5000 * mib, 256 * mib, 2) == 256 * mib  # big: the configured size
    assert copyplan.chunk_size(512 * mib, 256 * mib, 2) == 64 * mib  # 4 chunks a job, the last ones even
    assert copyplan.chunk_size(40 * mib, 256 * mib, 2) == copyplan.MIN_CHUNK_BYTES  # not below the floor
    assert copyplan.chunk_size(40 * mib, CHUNK, 2) == CHUNK  # a smaller configured size is kept
