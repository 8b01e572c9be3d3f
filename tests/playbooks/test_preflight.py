"""playbooks/00_preflight.yml: passes on a clean pair, fails with a clear list and changes nothing otherwise;
the local_clusters play starts the two clusters once and then reports ok."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from great_escape.localcluster import LocalCluster, port_free
from tests.playbooks.conftest import write_inventory

PLAYBOOK = "playbooks/00_preflight.yml"
OBJECTS = ("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
           "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')")


def changed(stdout: str, host: str) -> int:
    return int(re.search(rf"^{host}\s*:\s*ok=\d+\s+changed=(\d+)", stdout, re.M).group(1))


@pytest.fixture
def shop(dbpair):
    dbpair.sql_source("CREATE TABLE orders (id int PRIMARY KEY, note text); "
                      "INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 500) g")
    return dbpair


def test_preflight_passes_and_prints_the_estimates(shop, run_playbook):
    proc = run_playbook(PLAYBOOK)
    assert "Preflight found no problem." in proc.stdout
    assert re.search(r'"restore indexes +\d+:\d\d:\d\d +', proc.stdout)
    assert changed(proc.stdout, "source") == 0


@pytest.mark.parametrize(("case", "extra", "problems", "message"), [
    ("keyless", {}, 1, "public.audit. Add a primary key, or set ge_keyless_tables: copy_at_cutover"),
    ("password", {"ge_source_password": "wrong-secret-123"}, 1, "the password was refused"),
    ("closed port", {"ge_target_port": 57299}, 1, "cannot reach ge_master@127.0.0.1:57299"),
    # The pg_dump method's dump directory and replication directory: both too small.
    ("disk", {"preflight_compression_factor": 1e9, "ge_copy_method": "pg_dump"}, 2, "not enough disk at ge_dump_dir"),
    ("target data", {}, 1, "already hold rows on the target: public.orders"),
])
def test_preflight_fails_with_a_clear_message_and_changes_nothing(shop, run_playbook, case, extra, problems,
                                                                  message):
    if case == "keyless":
        shop.sql_source("CREATE TABLE audit (at timestamptz)")
    if case == "target data":
        shop.sql_target("CREATE TABLE orders (id bigint PRIMARY KEY); INSERT INTO orders VALUES (1)")
    before = (shop.sql_source(OBJECTS), shop.sql_target(OBJECTS))
    proc = run_playbook(PLAYBOOK, extra=extra, check=False)
    assert proc.returncode != 0
    assert f"Preflight found {problems} problem(s); nothing was changed." in proc.stdout
    assert message in proc.stdout
    for secret in ("wrong-secret-123", "ge-local-secret", "ge-repl-secret"):
        assert secret not in proc.stdout + proc.stderr
    assert (shop.sql_source(OBJECTS), shop.sql_target(OBJECTS)) == before


def test_local_clusters_start_once(dbpair, run_playbook, tmp_path):
    root = Path("/var/tmp/great-escape-tests") / f"local-{dbpair.source['dbname']}"
    # Fixed ports can be taken by any client's ephemeral port: take two that are free now.
    source_port, target_port = [p for p in range(57210, 57300) if port_free(p)][:2]
    # The role starts the clusters with TLS from a CA of its own, in ge_local_root/tls, as inventories/local says.
    ca = str(root / "tls/ca.crt")
    inventory = write_inventory(tmp_path / "inv", dbpair, root, ge_local_clusters=True,
                                ge_source_port=source_port, ge_target_port=target_port,
                                ge_source_sslrootcert=ca, ge_target_sslrootcert=ca)
    clusters = [LocalCluster(root / "source", source_port, "source"),
                LocalCluster(root / "aurora", target_port, "aurora")]
    try:
        first = run_playbook(PLAYBOOK, inventory_path=inventory)
        assert changed(first.stdout, "source") >= 1 and changed(first.stdout, "target") >= 1, first.stdout
        assert all(c.running() for c in clusters)
        again = run_playbook(PLAYBOOK, inventory_path=inventory)
        assert changed(again.stdout, "source") == 0 and changed(again.stdout, "target") == 0
        assert "Preflight found no problem." in again.stdout
    finally:
        for c in clusters:
            c.stop(remove=True)
