"""The chunked copy reading on the source host (copy --source-ssh, sourceread.py): a real sshd in front of the
source cluster, psql and zstd/gzip run by it, the rows identical, fewer bytes from the source, nothing left there."""

import shlex
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from great_escape import copy, sourceread
from great_escape.copyplan import CopyError
from great_escape.localcluster import DEFAULT_PASSWORD
from tests.integration.syncutil import assert_identical, setup_schema
from tests.integration.test_copy import (
    CHUNK,
    SPLIT_DDL,
    SPLIT_SEED,
    SPLIT_TARGET_DDL,
    _config,
    _markers,
    kill_a_worker_and_finish,
)
from tests.integration.workload import SEED, SOURCE_DDL, TARGET_EXTRA


def _opts(tmp_path, ssh, jobs=2, chunk=CHUNK, **reader):
    return copy.Options(jobs=jobs, chunk_bytes=chunk, state_dir=tmp_path / "state",
                        source_reader={"ssh": ssh, "compression": "zstd", "min_bytes": 0, **reader})


def _readers_left(dbpair):
    """Source sessions of the reader still open, after a moment for closed ones to go."""
    deadline = time.monotonic() + 5
    while True:
        n = dbpair.sql_source("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                              ("great-escape copy reader",))[0][0]
        if n == 0 or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


def _password_files_left():
    """Files on "the source host" (this machine's /tmp, where the reader's mktemp puts them) holding the password."""
    return [p for p in Path("/tmp").glob("tmp.*") if p.is_file() and DEFAULT_PASSWORD.encode() in p.read_bytes()]


def test_chunks_read_on_the_source_host_arrive_identical_and_compressed(dbpair, tmp_path, source_ssh):
    setup_schema(dbpair, SOURCE_DDL, SOURCE_DDL + TARGET_EXTRA)
    dbpair.sql_source(SEED)
    dbpair.sql_source("INSERT INTO customers SELECT g, 'c' || g, 'c' || g || '@x' FROM generate_series(1000, 9000) g")
    cfg = _config(dbpair, tmp_path)
    summary = copy.run(cfg, _opts(tmp_path, source_ssh, chunk=32 * 1024))
    assert_identical(dbpair)
    assert summary.chunks_copied == summary.chunks_total > 8 and summary.rows > 8000
    # What crossed from the source host is zstd: far fewer bytes than the COPY data loaded.
    assert 0 < summary.source_bytes < summary.bytes / 2, (summary.source_bytes, summary.bytes)
    assert _readers_left(dbpair) == 0 and _password_files_left() == []
    # The password reaches the source host on ssh's stdin only: never in the command line.
    reader = sourceread.from_spec({"ssh": source_ssh}, cfg.source)
    assert DEFAULT_PASSWORD not in " ".join(reader.command(sourceread.statements("S", "COPY t TO STDOUT")))


def test_gzip_and_a_local_socket_on_the_source_host_read_the_same_rows(dbpair, tmp_path, source_ssh, source_cluster):
    setup_schema(dbpair, SPLIT_DDL, SPLIT_TARGET_DDL)
    dbpair.sql_source(SPLIT_SEED)
    cfg = _config(dbpair, tmp_path)
    summary = copy.run(cfg, _opts(tmp_path, source_ssh, jobs=3, compression="gzip",
                                  pghost=str(source_cluster.datadir)))
    assert_identical(dbpair)
    assert summary.rows == 6000 + 6000 + 3000 + 2 and summary.source_bytes < summary.bytes / 2


def _without(programs_dir: Path, missing: str) -> Path:
    """A PATH directory with what the reader's shell needs, but not `missing`."""
    programs_dir.mkdir()
    for name in ("sh", "psql", "mktemp", "cat", "rm", "uname", "zstd", "gzip"):
        if name != missing:
            (programs_dir / name).symlink_to(subprocess.run(["sh", "-c", f"command -v {name}"], check=True,
                                                            capture_output=True, text=True).stdout.strip())
    return programs_dir


@pytest.mark.parametrize("fault", ["no zstd", "no psql", "wrong port", "a socket that is not there"])
def test_a_reader_that_cannot_read_stops_the_copy_before_any_change(dbpair, tmp_path, source_ssh, fault):
    setup_schema(dbpair, SPLIT_DDL, SPLIT_TARGET_DDL)
    dbpair.sql_source(SPLIT_SEED)
    cfg = _config(dbpair, tmp_path)
    ssh, reader, expected = list(source_ssh), {}, ""
    if fault.startswith("no "):
        path = _without(tmp_path / "bin", fault[3:])
        ssh.append(f"PATH={path}")  # the remote command's prefix: the reader's shell finds only these
        expected = f"{fault[3:]} is not installed on the source host"
    elif fault == "wrong port":
        port = ssh.index("-p") + 1
        ssh[port] = str(int(ssh[port]) + 1)
        expected = "ssh could not log in"
    else:
        reader = {"pghost": str(tmp_path / "no-such-socket-dir")}
        expected = "psql on the source host could not read"
    with pytest.raises(CopyError) as err:
        copy.run(cfg, _opts(tmp_path, ssh, **reader))
    assert expected in str(err.value) and "127.0.0.1" in str(err.value)
    assert DEFAULT_PASSWORD not in str(err.value)
    assert _markers(dbpair, cfg.name) == {}
    assert dbpair.sql_target("SELECT (SELECT count(*) FROM bykey) + (SELECT count(*) FROM small)")[0][0] == 0
    assert _password_files_left() == []


def test_a_worker_killed_while_reading_on_the_source_host_is_replaced_in_the_same_snapshot(dbpair, tmp_path,
                                                                                           source_ssh):
    setup_schema(dbpair, SPLIT_DDL, SPLIT_TARGET_DDL)
    dbpair.sql_source(SPLIT_SEED)
    summary = kill_a_worker_and_finish(dbpair, tmp_path, "--source-ssh", shlex.join(source_ssh),
                                       "--source-ssh-min-bytes", "0", chunk=32 * 1024)
    assert summary["source_bytes"] < summary["bytes"] / 2  # read on the source host, compressed
    assert _readers_left(dbpair) == 0 and _password_files_left() == []
    with psycopg.connect(**dbpair.source) as conn:  # the source holds no snapshot of ours any more
        assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_xmin IS NOT NULL "
                            "AND application_name LIKE 'great-escape%'").fetchone()[0] == 0
