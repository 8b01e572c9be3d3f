"""The chunked copy's job runs post-data right after the copy (one job, one wait): a post-data failure there is
reported as pg_restore's, with its log, and the re-run goes on from post-data without copying again."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.integration.syncutil import assert_identical
from tests.playbooks.conftest import crashing_pg_restore

pytestmark = pytest.mark.slow

SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE events (id bigint PRIMARY KEY, customer_id int NOT NULL REFERENCES customers (id), payload text);
CREATE INDEX events_payload_idx ON events (payload);
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 200) g;
INSERT INTO events SELECT g, 1 + g % 200, 'payload ' || g FROM generate_series(1, 5000) g;
"""


def test_post_data_fails_in_the_copy_job_and_the_rerun_goes_on_from_it(dbpair, run_playbook, inventory, tmp_path):
    dbpair.sql_source(SCHEMA)
    for phase in ("00_preflight", "02_prepare_target", "03_capture", "04_dump"):
        run_playbook(f"playbooks/{phase}.yml")
    work = Path(yaml.safe_load((inventory / "group_vars/all/main.yml").read_text())["ge_local_root"])
    restore = work / "replication" / "restore"

    crashing = crashing_pg_restore(tmp_path, "post-data-rest.list")  # the copy's index builds use their own lists
    failed = run_playbook("playbooks/06_restore.yml", check=False, extra={"restore_pg_restore": str(crashing)})
    assert failed.returncode != 0
    assert "TASK [restore : Start the chunked copy and post-data]" in failed.stdout
    assert "Start pg_restore of the section post-data" not in failed.stdout  # no job of its own
    assert "pg_restore of post-data into" in failed.stdout and "post-data.log" in failed.stdout
    assert "The chunked copy into" not in failed.stdout  # the copy itself succeeded
    assert (restore / "data.done").exists() and (restore / "post-data.started").exists()
    assert not (restore / "post-data.done").exists()
    assert list(restore.rglob("*pgpass*")) == []

    resumed = run_playbook("playbooks/06_restore.yml")
    assert re.search(r"TASK \[restore : Start the chunked copy\] .*\n.*\nskipping", resumed.stdout)  # copied before
    assert "TASK [restore : Start pg_restore of the section post-data]" in resumed.stdout
    assert (restore / "post-data.done").exists()
    assert list(restore.rglob("*pgpass*")) == []
    assert_identical(dbpair)
    assert dbpair.sql_target("SELECT count(*) FROM pg_constraint WHERE contype = 'f'")[0][0] == 1
    assert dbpair.sql_target("SELECT count(*) FROM pg_indexes WHERE indexname = 'events_payload_idx'")[0][0] == 1
