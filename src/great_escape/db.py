"""Connections: pinned session settings, readable names without secrets, replica role switch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import sql

from .errors import ConnectError, SyncError

# Text COPY and checksums must render values identically on both sides (DESIGN.md "Lessons").
PINNED_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "client_encoding": "UTF8",
}

REPLICA_ROLE_FUNCTION = "rds_session_replication_role"

# libpq parameters a configuration may carry; anything else is a typo worth refusing.
CONNINFO_KEYS = frozenset(
    {"host", "port", "dbname", "user", "password", "passfile", "sslmode", "sslrootcert", "connect_timeout"}
)


def describe(params: Mapping[str, Any]) -> str:
    """`user@host:port/dbname`, never the password: the only form that goes into logs and errors."""
    return "{}@{}:{}/{}".format(
        params.get("user", "?"), params.get("host", "localhost"), params.get("port", 5432), params.get("dbname", "?")
    )


def _options(lock_timeout_ms: int | None) -> str:
    settings = dict(PINNED_SETTINGS)
    if lock_timeout_ms is not None:
        settings["lock_timeout"] = f"{lock_timeout_ms}ms"
    return " ".join("-c {}={}".format(k, v.replace(" ", r"\ ")) for k, v in settings.items())


def connect(
    params: Mapping[str, Any],
    purpose: str,
    *,
    autocommit: bool = False,
    lock_timeout_ms: int | None = None,
) -> psycopg.Connection[Any]:
    """Open a connection with the pinned settings and `application_name='great-escape <purpose>'`.

    Failures become ConnectError naming the endpoint (no password) and the likely fix.
    """
    unknown = set(params) - CONNINFO_KEYS
    if unknown:
        raise ConnectError(f"unknown connection option(s) {sorted(unknown)} for {describe(params)}")
    kwargs = {k: v for k, v in params.items() if v not in (None, "")}
    kwargs.setdefault("connect_timeout", 10)
    try:
        return psycopg.connect(
            **kwargs,
            autocommit=autocommit,
            application_name=f"great-escape {purpose}",
            options=_options(lock_timeout_ms),
        )
    except psycopg.OperationalError as exc:
        raise ConnectError(_connect_message(params, str(exc))) from exc


def _connect_message(params: Mapping[str, Any], text: str) -> str:
    where = describe(params)
    if "password authentication failed" in text or "no password supplied" in text:
        return f"cannot log in to {where}: the password was refused; check the password for this user"
    if "does not exist" in text and "database" in text:
        return f"cannot connect to {where}: the database does not exist; check dbname"
    if "role" in text and "does not exist" in text:
        return f"cannot log in to {where}: the user does not exist; check user"
    if "no pg_hba.conf entry" in text:
        return f"cannot connect to {where}: pg_hba.conf has no entry for this client; add one on the server"
    if "Connection refused" in text or "timeout expired" in text or "could not translate host name" in text \
            or "No route to host" in text or "Network is unreachable" in text:
        return (f"cannot reach {where}: the server is not reachable at this host and port; "
                "check host, port, firewall/security group and that the server is running")
    last = text.strip().splitlines()[-1] if text.strip() else "unknown error"
    return f"cannot connect to {where}: {last}"


def set_replica_role(conn: psycopg.Connection[Any]) -> str:
    """Switch the session to `session_replication_role = replica` and prove it took.

    Uses rds_session_replication_role() where it exists and is executable (Aurora/RDS), else SET.
    Returns how it was done ("function" or "set"). Raises SyncError when neither works.
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT n.nspname FROM pg_catalog.pg_proc p "
            "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
            "WHERE p.proname = %s AND pg_catalog.has_function_privilege(p.oid, 'EXECUTE') "
            "ORDER BY n.nspname = 'public' DESC LIMIT 1",
            (REPLICA_ROLE_FUNCTION,),
        )
        row = cur.fetchone()
    method = "function" if row else "set"
    try:
        with conn.transaction():
            with conn.cursor() as cur:
                if row:
                    cur.execute(
                        sql.SQL("SELECT {}(%s)").format(sql.Identifier(row[0], REPLICA_ROLE_FUNCTION)), ("replica",)
                    )
                else:
                    cur.execute("SET session_replication_role = replica")
    except psycopg.Error as exc:
        raise SyncError(
            f"cannot switch session_replication_role to replica on {conn.info.host}:{conn.info.port}/"
            f"{conn.info.dbname} as {conn.info.user} ({method}: {_primary(exc)}); install "
            f"{REPLICA_ROLE_FUNCTION}(text) with the prepare-target phase and grant EXECUTE to this user"
        ) from exc
    actual = conn.execute("SELECT pg_catalog.current_setting('session_replication_role')").fetchone()
    conn.commit()
    if not actual or actual[0] != "replica":
        raise SyncError(
            f"session_replication_role is {actual[0] if actual else None!r} after switching to replica on "
            f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}; the apply would fire triggers and foreign keys"
        )
    return method


def _primary(exc: psycopg.Error) -> str:
    return exc.diag.message_primary or str(exc).splitlines()[0]
