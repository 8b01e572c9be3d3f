"""The simulated Aurora behaves as DESIGN.md says: only the SECURITY DEFINER function switches the role."""

import psycopg
import pytest

from great_escape import db
from great_escape.errors import SyncError
from great_escape.localcluster import MASTER_USER, ClusterError, LocalCluster

# The target's function as the sync configuration names it (schema, owner).
FUNCTION = db.ReplicaRoleFunction("public", MASTER_USER)


def test_replication_user_cannot_set_replica_role(dbpair):
    with psycopg.connect(**dbpair.repl) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SET session_replication_role = replica")


def test_replica_role_through_function(dbpair):
    with db.connect(dbpair.repl, "test") as conn:
        assert db.set_replica_role(conn, FUNCTION) == "function"
        assert conn.execute("SHOW session_replication_role").fetchone()[0] == "replica"


def test_function_refuses_other_values(dbpair):
    with psycopg.connect(**dbpair.repl) as conn, pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("SELECT public.rds_session_replication_role('superuser')")


def test_neither_function_nor_set_is_a_clear_error(dbpair):
    dbpair.sql_target("DROP FUNCTION public.rds_session_replication_role(text)")
    with db.connect(dbpair.repl, "test") as conn, pytest.raises(SyncError, match="rds_session_replication_role"):
        db.set_replica_role(conn, FUNCTION)


def test_start_on_a_busy_port_names_the_port_and_creates_nothing(source_cluster, tmp_path):
    datadir = tmp_path / "busy"
    with pytest.raises(ClusterError, match=f"port {source_cluster.port} on 127.0.0.1 is in use"):
        LocalCluster(datadir, source_cluster.port, "source").start()
    assert not datadir.exists()
