"""The chunked copy's job runs post-data right after the copy, then gives the objects the source's owners and
privileges (one job, one wait): a post-data failure there is reported as pg_restore's, with its log, one of the
owners and privileges as theirs, and the re-run goes on from where the job stopped without copying again."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.integration.syncutil import assert_identical
from tests.playbooks.conftest import crashing_pg_restore, recorded

pytestmark = pytest.mark.slow

SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE events (id bigint PRIMARY KEY, customer_id int NOT NULL REFERENCES customers (id), payload text);
CREATE INDEX events_payload_idx ON events (payload);
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 200) g;
INSERT INTO events SELECT g, 1 + g % 200, 'payload ' || g FROM generate_series(1, 5000) g;
"""


def _dumped(dbpair, run_playbook, inventory, schema: str = SCHEMA) -> Path:
    """The source with `schema`, taken through the phases before the restore; returns the restore's work dir."""
    dbpair.sql_source(schema)
    for phase in ("00_preflight", "02_prepare_target", "03_capture", "04_dump"):
        run_playbook(f"playbooks/{phase}.yml")
    work = Path(yaml.safe_load((inventory / "group_vars/all/main.yml").read_text())["ge_local_root"])
    return work / "replication" / "restore"


def _owned(dbpair) -> tuple[str, str]:
    """SCHEMA with events owned by an application role of its own, which may also read customers: (schema, role).
    The source's superuser gave it the table; it may not create in the schema (the target's master, no superuser,
    lends it CREATE for the change)."""
    owner = f"owner_{dbpair.source['dbname']}"
    return (SCHEMA + f"CREATE ROLE {owner} NOLOGIN; ALTER TABLE events OWNER TO {owner}; "
            f"GRANT SELECT ON customers TO {owner};"), owner


def _recorded(restore: Path) -> str:
    """The restore phase's state in its progress record (the state directory beside the restore's work dir)."""
    return str(recorded(restore.parents[1] / "state", "restore")["state"])


def _owner_and_grants(dbpair, owner: str) -> tuple[str, bool]:
    """On the target: the owner of events, and whether `owner` may read customers."""
    return dbpair.sql_target("SELECT tableowner, has_table_privilege(%s, 'customers', 'SELECT') FROM pg_tables "
                             "WHERE tablename = 'events'", (owner,))[0]


def test_the_copy_job_gives_the_owners_and_privileges(dbpair, run_playbook, inventory):
    schema, owner = _owned(dbpair)
    restore = _dumped(dbpair, run_playbook, inventory, schema)

    done = run_playbook("playbooks/06_restore.yml")
    assert "TASK [restore : Start the chunked copy, post-data and the owners and privileges]" in done.stdout
    assert "TASK [access : Ensure the application's roles exist" not in done.stdout  # no module run of its own
    assert "TASK [access : Show what was carried over to the target]" in done.stdout
    assert _owner_and_grants(dbpair, owner) == (owner, True)
    assert (restore / "post-data.done").exists() and list(restore.rglob("*pgpass*")) == []
    # The restore is recorded done after its last step, the owners and privileges: no wait sample after it.
    assert _recorded(restore) == "done"
    assert_identical(dbpair)


def test_owners_fail_in_the_copy_job_and_the_rerun_gives_them(dbpair, run_playbook, inventory):
    schema, owner = _owned(dbpair)
    restore = _dumped(dbpair, run_playbook, inventory, schema)
    missing = f"missing_{owner}"

    failed = run_playbook("playbooks/06_restore.yml", check=False, extra={"ge_role_map": {owner: missing}})
    assert failed.returncode != 0
    assert "giving the target's objects the source's owners and privileges failed" in failed.stdout
    assert f"maps {owner} to {missing}, which does not exist on the target" in failed.stdout
    assert "pg_restore of post-data into" not in failed.stdout  # post-data succeeded
    assert (restore / "post-data.done").exists() and list(restore.rglob("*pgpass*")) == []
    assert _owner_and_grants(dbpair, owner) != (owner, True)  # nothing was changed
    assert _recorded(restore) == "failed"

    resumed = run_playbook("playbooks/06_restore.yml")
    assert re.search(r"TASK \[restore : Start the chunked copy\] .*\n.*\nskipping", resumed.stdout)  # copied before
    assert "TASK [access : Ensure the application's roles exist" in resumed.stdout  # the access role's ge_access
    assert _owner_and_grants(dbpair, owner) == (owner, True)
    assert list(restore.rglob("*pgpass*")) == []
    assert _recorded(restore) == "done"  # by the role's last task, after the access role gave them
    assert_identical(dbpair)


def test_post_data_fails_in_the_copy_job_and_the_rerun_goes_on_from_it(dbpair, run_playbook, inventory, tmp_path):
    restore = _dumped(dbpair, run_playbook, inventory)

    crashing = crashing_pg_restore(tmp_path, "post-data-rest.list")  # the copy's index builds use their own lists
    failed = run_playbook("playbooks/06_restore.yml", check=False, extra={"restore_pg_restore": str(crashing)})
    assert failed.returncode != 0
    assert "TASK [restore : Start the chunked copy, post-data and the owners and privileges]" in failed.stdout
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
    assert _recorded(restore) == "done"
    assert_identical(dbpair)
    assert dbpair.sql_target("SELECT count(*) FROM pg_constraint WHERE contype = 'f'")[0][0] == 1
    assert dbpair.sql_target("SELECT count(*) FROM pg_indexes WHERE indexname = 'events_payload_idx'")[0][0] == 1
