"""The chunked copy reading on the source host (ge_copy_read_on_source) through the phases, as an inventory sets it:
the ssh destination from the source host's inventory entry, psql and zstd run through a real sshd there."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.integration.syncutil import assert_identical

pytestmark = pytest.mark.slow

SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE events (id bigint PRIMARY KEY, customer_id int NOT NULL REFERENCES customers (id), payload text);
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 2000) g;
INSERT INTO events SELECT g, 1 + g % 2000, repeat('payload ', 20) || g FROM generate_series(1, 40000) g;
"""


def test_the_phases_read_the_rows_on_the_source_host_compressed(dbpair, run_playbook, inventory, source_ssh):
    dbpair.sql_source(SCHEMA)
    at = source_ssh.index("-p")
    extra = {
        "ge_copy_read_on_source": True,
        # What the provision phase's roles/ssh_trust would have set up: the key, the pinned host key.
        "ge_copy_source_ssh_command": " ".join(source_ssh[:at] + source_ssh[at + 2:-1]),
        # The source host's inventory entry (its connection stays local: these only name it for ssh).
        "ansible_host": "127.0.0.1", "ansible_port": int(source_ssh[at + 1]), "ansible_user": "root",
        "restore_copy_source_min_bytes": 0, "restore_copy_chunk_bytes": 256 * 1024, "restore_poll_interval": 1,
    }
    for phase in ("00_preflight", "02_prepare_target", "03_capture", "04_dump"):
        run_playbook(f"playbooks/{phase}.yml", extra=extra)
    restored = run_playbook("playbooks/06_restore.yml", extra=extra)
    assert_identical(dbpair)
    summary = json.loads(re.search(r'\{\\?"chunks_total.*?\}', restored.stdout).group(0).replace('\\"', '"'))
    assert summary["chunks_copied"] > 4 and summary["rows"] == 42000
    # zstd from the source host: far fewer bytes crossed than were loaded.
    assert 0 < summary["source_bytes"] < summary["bytes"] / 3, summary
    assert dbpair.sql_target("SELECT count(*) FROM pg_constraint WHERE contype = 'f'")[0][0] == 1
    # The copy's and pg_restore's password files went with the steps that read them.
    work = Path(yaml.safe_load((inventory / "group_vars/all/main.yml").read_text())["ge_local_root"])
    assert list((work / "replication" / "restore").rglob("*pgpass*")) == []
