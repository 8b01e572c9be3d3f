"""Connections: pinned session settings, readable names without secrets, replica role switch."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from .errors import ConnectError, SyncError

log = logging.getLogger(__name__)

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

# libpq parameters a configuration may carry; anything else is a typo worth refusing. TLS: sslmode and
# sslrootcert (the CA that signed the server's certificate; RDS/Aurora: the RDS CA bundle), a client
# certificate optional (sslcert, sslkey); hostaddr connects to an address while the certificate is checked
# against host.
# TCP keepalives and a bound on unacknowledged data: a connection that waits for hours (an idle sync's LISTEN,
# a copy worker reading a slow source) across a firewall or NAT that forgets idle flows, or to a host that
# lost power, fails within ~2 minutes and is reopened, instead of waiting on a dead socket for the kernel's
# defaults (first probe after 2 h; ~15 min of retransmissions). On Linux tcp_user_timeout also decides when
# unanswered keepalive probes end the connection. A configuration may set other values.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 60, "keepalives_interval": 10, "keepalives_count": 6,
              "tcp_user_timeout": 120_000}
CONNINFO_KEYS = frozenset(
    {"host", "hostaddr", "port", "dbname", "user", "password", "passfile", "sslmode", "sslrootcert", "sslcert",
     "sslkey", "sslcrl", "connect_timeout", *KEEPALIVES}
)
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
RDS_CA_BUNDLE_URL = "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem"
# Endpoints already warned about an unencrypted connection (one warning per endpoint and process).
_warned_plaintext: set[str] = set()


def describe(params: Mapping[str, Any]) -> str:
    """`user@host:port/dbname`, never the password: the only form that goes into logs and errors."""
    return "{}@{}:{}/{}".format(
        params.get("user", "?"), params.get("host", "localhost"), params.get("port", 5432), params.get("dbname", "?")
    )


def pgpass_line(params: Mapping[str, Any]) -> str:
    """One line of a libpq password file for `params` (host, port, dbname, user, password; "*" matches any)."""
    fields = [str(params.get(k, "")) for k in ("host", "port", "dbname", "user", "password")]
    return ":".join(f.replace("\\", "\\\\").replace(":", "\\:") for f in fields) + "\n"


def session_options(lock_timeout_ms: int | None = None) -> str:
    """The pinned settings (and a lock timeout) as libpq `options` / PGOPTIONS: `-c name=value ...`."""
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
    kwargs = {"connect_timeout": 10, **KEEPALIVES, **{k: v for k, v in params.items() if v not in (None, "")}}
    if kwargs.get("sslmode") not in (None, *SSLMODES):
        raise ConnectError(f"sslmode {kwargs['sslmode']!r} for {describe(params)} is not one of {list(SSLMODES)}")
    try:
        conn = psycopg.connect(
            **kwargs,
            autocommit=autocommit,
            application_name=f"great-escape {purpose}",
            options=session_options(lock_timeout_ms),
        )
    except psycopg.OperationalError as exc:
        raise ConnectError(_connect_message(params, str(exc))) from exc
    _warn_if_plaintext(conn, params)
    return conn


def ssl_in_use(conn: psycopg.Connection[Any]) -> bool:
    """Whether this connection is encrypted (TLS), as libpq says."""
    return bool(conn.pgconn.ssl_in_use)


def _warn_if_plaintext(conn: psycopg.Connection[Any], params: Mapping[str, Any]) -> None:
    """A warning, once per endpoint, for a connection that is not encrypted: passwords and rows would cross
    the network in clear text (a Unix socket is exempt)."""
    if ssl_in_use(conn) or str(conn.info.host).startswith("/"):
        return
    where = describe(params)
    if where in _warned_plaintext:
        return
    _warned_plaintext.add(where)
    log.warning("the connection to %s is not encrypted (sslmode %s): set sslmode: verify-full and sslrootcert "
                "(ge_source_sslmode/ge_target_sslmode, ge_source_sslrootcert/ge_target_sslrootcert; Aurora/RDS: "
                "the RDS CA bundle %s) and have the server require TLS (rds.force_ssl = 1, or hostssl in "
                "pg_hba.conf)", where, params.get("sslmode") or "prefer (libpq's default)", RDS_CA_BUNDLE_URL)


def _connect_message(params: Mapping[str, Any], text: str) -> str:
    where = describe(params)
    tls = _tls_message(params, text)
    if tls:
        return f"cannot connect to {where}: {tls}"
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


@dataclass(frozen=True)
class ReplicaRoleFunction:
    """The `schema.rds_session_replication_role(text)` the sync may call on its target (Aurora/RDS), and
    the role that must own it. `owner=None`: any role that may itself SET session_replication_role
    (superuser, rds_superuser member, or granted SET on the parameter) other than the caller."""

    schema: str = "public"
    owner: str | None = None

    def signature(self) -> sql.Composable:
        return sql.SQL("{}(pg_catalog.text)").format(sql.Identifier(self.schema, REPLICA_ROLE_FUNCTION))

    def describe(self) -> str:
        return f"{self.schema}.{REPLICA_ROLE_FUNCTION}(text)"


# Everything that decides whether the function may be called, read in one query. The grants come from
# aclexplode over the default ACL when proacl is NULL (EXECUTE for PUBLIC then).
_FUNCTION_FACTS = """
SELECT pg_catalog.pg_get_userbyid(p.proowner) AS owner,
       p.prosecdef AS security_definer,
       p.proconfig AS config,
       ARRAY(SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE COALESCE(r.rolname::text, a.grantee::text) END
                    || CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END
             FROM pg_catalog.aclexplode(COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner))) a
             LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
             WHERE a.privilege_type = 'EXECUTE'
               AND a.grantee <> p.proowner
               AND (a.grantee <> (SELECT u.oid FROM pg_catalog.pg_roles u WHERE u.rolname = current_user)
                    OR a.is_grantable)
             ORDER BY 1) AS other_grantees,
       pg_catalog.has_function_privilege(p.oid, 'EXECUTE') AS executable,
       o.rolsuper OR EXISTS (SELECT FROM pg_catalog.pg_roles g WHERE g.rolname = 'rds_superuser'
                             AND pg_catalog.pg_has_role(p.proowner, g.oid, 'MEMBER'))
           {owner_may_set} AS owner_may_set,
       p.proowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user) AS owned_by_caller
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_roles o ON o.oid = p.proowner
WHERE p.oid = pg_catalog.to_regprocedure(%s)
"""

# search_path entries a SECURITY DEFINER function may have: nothing another role can create objects in.
_PINNED_PATH = ("pg_catalog", "pg_temp")


def may_set_replica_role(conn: psycopg.Connection[Any]) -> bool:
    """Whether this session may SET session_replication_role itself: a superuser, or (PostgreSQL 15+) a role
    granted SET on the parameter (`GRANT SET ON PARAMETER session_replication_role TO ...`)."""
    if conn.info.server_version >= 150000:
        query = ("SELECT pg_catalog.current_setting('is_superuser') = 'on' "
                 "OR pg_catalog.has_parameter_privilege('session_replication_role', 'SET')")
    else:
        query = "SELECT pg_catalog.current_setting('is_superuser') = 'on'"
    row = conn.execute(query).fetchone()
    return bool(row and row[0])


def check_replica_role_function(conn: psycopg.Connection[Any], function: ReplicaRoleFunction) -> list[str]:
    """What is wrong with the configured function for this session's user, each with its fix; [] if it
    may be called: it exists with exactly that signature, is owned by the configured owner, is SECURITY
    DEFINER with search_path pinned to pg_catalog, and EXECUTE is granted to nobody but its owner and
    this user (no grant option either)."""
    reinstall = "reinstall it with the prepare-target phase (playbooks/02_prepare_target.yml)"
    owner_may_set = sql.SQL("")
    if conn.info.server_version >= 150000:
        owner_may_set = sql.SQL("OR pg_catalog.has_parameter_privilege(p.proowner, 'session_replication_role', 'SET')")
    query = sql.SQL(_FUNCTION_FACTS).format(owner_may_set=owner_may_set)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, (function.signature().as_string(conn),))
        facts = cur.fetchone()
    user = conn.info.user
    if facts is None:
        return ["it does not exist; install it with the prepare-target phase (playbooks/02_prepare_target.yml) "
                "or set replica_role_function.schema to the schema that holds it"]
    problems = []
    if function.owner is not None and facts["owner"] != function.owner:
        problems.append(f"it is owned by {facts['owner']}, not by {function.owner} (replica_role_function.owner): "
                        f"drop it and {reinstall}, or correct replica_role_function.owner")
    elif function.owner is None and (facts["owned_by_caller"] or not facts["owner_may_set"]):
        problems.append(f"its owner {facts['owner']} may not SET session_replication_role itself (or is "
                        f"{user}, the caller): drop it and {reinstall}, and name its owner in "
                        "replica_role_function.owner")
    if not facts["security_definer"]:
        problems.append(f"it is SECURITY INVOKER, so it would run with {user}'s privileges: {reinstall} "
                        "(SECURITY DEFINER)")
    if not _pinned_search_path(facts["config"] or []):
        setting = next((c for c in facts["config"] or [] if c.startswith("search_path=")), None)
        problems.append(f"its search_path is {'not pinned' if setting is None else repr(setting)}: {reinstall} "
                        "(SET search_path = pg_catalog, pg_temp)")
    if facts["other_grantees"]:
        problems.append(f"EXECUTE is granted to {', '.join(facts['other_grantees'])}: revoke it, e.g. REVOKE ALL ON "
                        f"FUNCTION {function.describe()} FROM PUBLIC, or {reinstall}; only {user} and the owner "
                        "may execute it")
    if not facts["executable"]:
        problems.append(f"{user} may not EXECUTE it: {reinstall} with {user} as the replication user")
    return problems


def _pinned_search_path(config: list[str]) -> bool:
    """search_path set in the function's own configuration, to pg_catalog (and pg_temp last) only."""
    values = [c.split("=", 1)[1] for c in config if c.startswith("search_path=")]
    if len(values) != 1:
        return False
    entries = [e.strip().strip('"') for e in values[0].split(",")]
    entries = [e for e in entries if e]
    if any(e not in _PINNED_PATH for e in entries):
        return False
    return "pg_temp" not in entries or entries[-1] == "pg_temp"


def set_replica_role(conn: psycopg.Connection[Any], function: ReplicaRoleFunction | None = None) -> str:
    """Switch the session to `session_replication_role = replica` and prove it took (DESIGN.md invariant 6).

    Where this user may SET it (superuser; PostgreSQL 15+: granted SET on the parameter), SET it and never
    call a function. Otherwise call exactly the configured `function` (Aurora/RDS), once it passed
    check_replica_role_function(). With `function=None` (the source side: reverse sync, rollback) a function
    is never called. Returns how it was done ("set" or "function"). Raises SyncError, naming the fix.
    """
    where = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname} as {conn.info.user}"
    allowed = False
    try:
        with conn.transaction():
            allowed = may_set_replica_role(conn)
            if allowed:
                conn.execute("SET session_replication_role = replica")
            elif function is None:
                raise SyncError(
                    f"cannot switch session_replication_role to replica on {where}: {conn.info.user} may not SET "
                    "it, and on this side no function is ever called. Grant it (PostgreSQL 15+: GRANT SET ON "
                    f"PARAMETER session_replication_role TO {conn.info.user}) or connect as a superuser"
                )
            else:
                problems = check_replica_role_function(conn, function)
                if problems:
                    raise SyncError(
                        f"refusing to call {function.describe()} on {where} to switch session_replication_role"
                        f" (this user may not SET it): {'; '.join(problems)}"
                    )
                conn.execute(
                    sql.SQL("SELECT {}(%s::pg_catalog.text)").format(
                        sql.Identifier(function.schema, REPLICA_ROLE_FUNCTION)
                    ),
                    ("replica",),
                )
    except psycopg.Error as exc:
        if allowed or function is None:
            fix = "check that this user may SET session_replication_role"
        else:
            fix = (f"reinstall {function.describe()} with the prepare-target phase (playbooks/02_prepare_target.yml) "
                   "with this user as the replication user")
        raise SyncError(
            f"cannot switch session_replication_role to replica on {where} "
            f"({'SET' if allowed or function is None else function.describe()}: {_primary(exc)}); {fix}"
        ) from exc
    method = "set" if allowed else "function"
    actual = conn.execute("SELECT pg_catalog.current_setting('session_replication_role')").fetchone()
    conn.commit()
    if not actual or actual[0] != "replica":
        raise SyncError(
            f"session_replication_role is {actual[0] if actual else None!r} after switching to replica on "
            f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}; the apply would fire triggers and foreign keys"
        )
    return method


def _tls_message(params: Mapping[str, Any], text: str) -> str | None:
    """The TLS failures, each with its fix; None for other errors."""
    host = params.get("host", "localhost")
    rootcert = params.get("sslrootcert") or "~/.postgresql/root.crt (libpq's default)"
    if "certificate verify failed" in text:
        return (f"the server's certificate is not signed by a CA in sslrootcert ({rootcert}): set sslrootcert to "
                "the CA bundle that signed it (Aurora/RDS: the RDS CA bundle global-bundle.pem from "
                f"{RDS_CA_BUNDLE_URL}, installed by the replication_host role)")
    if "does not match host name" in text or "no SAN" in text:
        return (f"the server's certificate does not name the host {host!r} ({_last_line(text)}): connect by a name "
                "the certificate holds (Aurora/RDS: the cluster endpoint's DNS name, not an IP address or a CNAME "
                "of your own), or, if you must, use sslmode: verify-ca, which checks the CA only")
    if "root certificate file" in text and "does not exist" in text:
        return (f"the CA file sslrootcert ({rootcert}) does not exist on this host: install it (Aurora/RDS: "
                f"{RDS_CA_BUNDLE_URL}, installed by the replication_host role) or correct the path")
    if "server does not support SSL" in text:
        return (f"the server at {host} does not accept TLS, which sslmode {params.get('sslmode')} requires: turn "
                "on ssl on the server (ssl = on with a certificate) rather than lowering sslmode")
    if "could not read certificate file" in text or "could not load private key" in text \
            or "private key file" in text:
        return (f"the client certificate or key (sslcert/sslkey) cannot be used: {_last_line(text)}; check the "
                "paths and that the key is readable by this user only (chmod 600)")
    return None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else text


def _primary(exc: psycopg.Error) -> str:
    return exc.diag.message_primary or str(exc).splitlines()[0]
