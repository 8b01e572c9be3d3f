"""Cutover and rollback: stop writes on the live side, drain, sequences, verify, let the other side take
writes, with the write downtime measured.

    great-escape cutover  --config FILE [--target-admin-user ge_master] [--stop-writes revoke|wait] [--json]
    great-escape rollback --config FILE [--target-admin-user ge_master] [--stop-writes revoke|wait] [--json]

A switch goes from the live side ("from") to the other side ("to"): cutover source -> target, rollback
target -> source. In order, each step only once the previous one succeeded:
1. Refuse unless `from` is live (cutover twice, rollback without cutover): nothing is changed then.
   Rollback also refuses while a value on the target does not fit the source's narrower column. Both refuse
   unless every application role (the named ones, else every role that writes the replicated tables) may do on
   `to` what it may do on `from`: log in, use the schemas, SELECT/INSERT/UPDATE/DELETE/TRUNCATE the tables,
   use the sequences, with row level security where `from` has it (privileges the switch gives back count).
2. Capture on `to` for the replicated tables (the reverse capture on the target at cutover), BEFORE `to`
   takes any application write. The target's master cannot create event triggers: no freeze there.
3. Stop writes on `from` (t0). `revoke`: the write privileges of the application roles on the replicated
   tables are recorded on the target, then revoked; their sessions are terminated where allowed, and the
   transactions in flight at the revoke are waited for. `wait`: the operator stopped the application; the
   check is that no captured change arrives for `quiet_seconds`.
4. Drain the `from` -> `to` sync (the daemon of that direction is stopped first), copy sequences, copy
   keyless tables whole (keyless_tables: copy_at_cutover), verify. Any failure restores writes on `from`.
   verify "drained" (default) proves, with writes stopped, that no captured change is left on `from`: the
   tables were compared by the verify phase while the sync ran, and the drain applied everything since.
   "full" compares every table again inside the window: exact, but the downtime grows with the database
   (minutes per 100 GB), so only for small databases.
5. Give back the writes revoked on `to` by an earlier switch, prove the application roles' privileges in
   place on `to` (has_table_privilege per role, table and privilege) and record `to` as live (t1):
   downtime = t1 - t0, the time the application could write on neither side.
6. Start the `to` -> `from` sync in the background (when the configuration file is known).

Which side is live and what was revoked live in `great_escape.cutover_state` on the target (Aurora
outlives the replication host); every switch is appended to `cutover-status.json` in the state dir.
Revoking privileges works for a non-superuser master (the owner revokes), is exact to undo (only the
privileges recorded are granted back) and holds for sessions already open, unlike
default_transaction_read_only, which any session may SET off and which would stop the sync itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from . import access, apply, capture, catalog, daemon, db, sequences, state, status, verify
from . import config as configmod
from .catalog import Table
from .errors import GreatEscapeError, SyncError
from .ranges import check_range, narrowing_columns, range_problems

log = logging.getLogger(__name__)

SIDES = ("source", "target")
STATUS_FILE = "cutover-status.json"
WRITE_PRIVILEGES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")
STOP_MODES = ("revoke", "wait")
VERIFY_MODES = ("drained", "full", "none")



class CutoverError(GreatEscapeError):
    """A cutover or rollback was refused or failed; the message says what was left in which state."""


@dataclass
class Switch:
    """One cutover or rollback as it went; the JSON status file holds a list of these."""

    action: str  # cutover | rollback
    name: str
    from_side: str
    to_side: str
    stop_writes: str
    started_at: str = ""
    writes_stopped_at: str = ""
    writes_accepted_at: str = ""
    downtime_seconds: float | None = None
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds
    revoked: list[dict[str, Any]] = field(default_factory=list)
    terminated_sessions: int = 0
    drained_changes: int = 0
    sequences_set: int = 0
    keyless_copied: dict[str, int] = field(default_factory=dict)
    tables_verified: int = 0
    capture_installed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sync_started: str = ""  # direction of the sync started afterwards, "" if none


@dataclass(frozen=True)
class Sides:
    """Connection parameters per side: `admin` owns the tables (DDL, GRANT), `sync` is what the sync uses."""

    admin: Mapping[str, Mapping[str, Any]]
    sync: Mapping[str, Mapping[str, Any]]


def sides_of(cfg: configmod.Config, target_admin: Mapping[str, Any] | None,
             source_admin: Mapping[str, Any] | None = None) -> Sides:
    """On each side an admin owns the tables (the source's owner or superuser, the target's master) and the
    sync user syncs (the source's dedicated sync role, the target's replication user). Without
    `source_admin` the configuration's source user does both jobs on the source (an older configuration)."""
    return Sides(
        admin={"source": source_admin or cfg.source, "target": target_admin or cfg.target},
        sync={"source": cfg.source, "target": cfg.target},
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _where(params: Mapping[str, Any]) -> str:
    return db.describe(params)


# ---------------------------------------------------------------- state: which side is live


def _ensure_state_table(conn: psycopg.Connection[Any]) -> None:
    state.ensure(conn)
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, live text NOT NULL CHECK (live IN "
                "('source', 'target')), changed_at timestamptz NOT NULL DEFAULT now(), "
                "write_stops jsonb NOT NULL DEFAULT '{{}}')"
            ).format(sql.Identifier(state.SCHEMA, state.CUTOVER_TABLE))
        )


def _write_state(
    conn: psycopg.Connection[Any],
    name: str,
    *,
    live: str | None = None,
    side: str | None = None,
    stops: list[dict[str, Any]] | None = None,
) -> None:
    """Set the live side and/or the write-stop record of one side (None: leave as is), committed."""
    with conn.transaction():
        conn.execute(
            sql.SQL("INSERT INTO {} (name, live) VALUES (%s, 'source') ON CONFLICT (name) DO NOTHING").format(
                sql.Identifier(state.SCHEMA, state.CUTOVER_TABLE)
            ),
            (name,),
        )
        if live is not None:
            conn.execute(
                sql.SQL("UPDATE {} SET live = %s, changed_at = now() WHERE name = %s").format(
                    sql.Identifier(state.SCHEMA, state.CUTOVER_TABLE)
                ),
                (live, name),
            )
        if side is not None:
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET write_stops = CASE WHEN %s::jsonb = '[]' THEN write_stops - %s "
                    "ELSE jsonb_set(write_stops, ARRAY[%s], %s::jsonb) END WHERE name = %s"
                ).format(sql.Identifier(state.SCHEMA, state.CUTOVER_TABLE)),
                (Jsonb(stops or []), side, side, Jsonb(stops or []), name),
            )


def load_history(state_dir: Path) -> dict[str, Any]:
    path = state_dir / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {"switches": []}
    except (OSError, ValueError) as exc:
        raise CutoverError(
            f"cannot read the status file {path}: {exc}; move it away to start a new one"
        ) from exc


def record_history(state_dir: Path, sw: Switch, live: str) -> Path:
    """Append the switch to the status file (written atomically: a reader never sees half a file)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    data = load_history(state_dir)
    data.update(name=sw.name, live=live, updated_at=_now())
    data.setdefault("switches", []).append(asdict(sw))
    path = state_dir / STATUS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- stopping and allowing writes


def _scope(conn: psycopg.Connection[Any], cfg: configmod.Config) -> list[Table]:
    return capture.selected_tables(conn, cfg)


def _relids_with_partitions(conn: psycopg.Connection[Any], tables: list[Table]) -> list[int]:
    """Partitions take writes of their own (INSERT INTO a partition directly): they are stopped too."""
    rows = conn.execute(
        "SELECT DISTINCT p.relid::int8 FROM unnest(%s::oid[]) r(oid), pg_catalog.pg_partition_tree(r.oid) p "
        "JOIN pg_catalog.pg_class c ON c.oid = p.relid WHERE c.relkind IN ('r', 'p')",
        ([t.relid for t in tables],),
    ).fetchall()
    return sorted({r[0] for r in rows} | {t.relid for t in tables})


_WRITE_GRANTS = """
SELECT n.nspname, c.relname, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
       array_agg(a.privilege_type ORDER BY a.privilege_type)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL pg_catalog.aclexplode(COALESCE(c.relacl, pg_catalog.acldefault('r', c.relowner))) a
LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
WHERE c.oid = ANY(%(relids)s::oid[]) AND a.privilege_type = ANY(%(privs)s)
  AND (a.grantee = 0 OR NOT r.rolsuper)
  -- USAGE (inherits its privileges), not MEMBER: from PostgreSQL 16 the master user holds ADMIN OPTION, without
  -- INHERIT or SET, on every role it created, and that must not hide the application's roles.
  AND (a.grantee = 0 OR NOT EXISTS (SELECT 1 FROM unnest(%(protected)s::text[]) p(name)
                                    JOIN pg_catalog.pg_roles pr ON pr.rolname = p.name
                                    WHERE NOT pr.rolsuper AND pg_catalog.pg_has_role(pr.oid, a.grantee, 'USAGE')))
  AND (%(roles)s::text[] IS NULL OR (CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                     ELSE pg_catalog.pg_get_userbyid(a.grantee) END) = ANY(%(roles)s))
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""


def plan_write_stop(
    conn: psycopg.Connection[Any], tables: list[Table], protected: list[str], roles: list[str] | None
) -> list[dict[str, Any]]:
    """The write privileges to revoke: [{schema, table, grantee, privileges}].

    Never the project's own users (`protected`) nor roles they are members of (the sync writes through
    them), never superusers (privileges do not bind them). `roles` limits it to the named roles.
    """
    if roles:
        problems = []
        for role in roles:
            row = conn.execute(
                "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)
            ).fetchone()
            if role != "PUBLIC" and row is None:
                problems.append(f"role {role} does not exist on {_conn_where(conn)}")
            elif row and row[0]:
                problems.append(
                    f"role {role} is a superuser: privileges cannot stop its writes; use "
                    "stop_writes=wait and stop the application"
                )
            elif role in protected:
                problems.append(
                    f"role {role} is the project's own user on {_conn_where(conn)}; the sync needs it"
                )
        if problems:
            conn.rollback()
            raise CutoverError("cannot stop writes: " + "; ".join(problems))
    rows = conn.execute(
        _WRITE_GRANTS,
        {
            "relids": _relids_with_partitions(conn, tables),
            "privs": list(WRITE_PRIVILEGES),
            "protected": protected,
            "roles": roles or None,
        },
    ).fetchall()
    conn.rollback()
    return [{"schema": s, "table": t, "grantee": g, "privileges": list(p)} for s, t, g, p in rows]


def _conn_where(conn: psycopg.Connection[Any]) -> str:
    return f"{conn.info.user}@{conn.info.host}:{conn.info.port}/{conn.info.dbname}"


def _grantee(name: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if name == "PUBLIC" else sql.Identifier(name)


def _privileges(entry: Mapping[str, Any]) -> sql.Composable:
    privs = [
        p for p in entry["privileges"] if p in WRITE_PRIVILEGES
    ]  # recorded data: keep it to the known set
    return sql.SQL(", ").join(sql.SQL(p) for p in privs)


def revoke_writes(conn: psycopg.Connection[Any], stops: list[dict[str, Any]]) -> None:
    """REVOKE the planned privileges in one transaction: application writes fail from the commit on."""
    with conn.transaction():
        for e in stops:
            conn.execute(
                sql.SQL("REVOKE {} ON TABLE {} FROM {}").format(
                    _privileges(e), sql.Identifier(e["schema"], e["table"]), _grantee(e["grantee"])
                )
            )
        # Grants by a third role survive the owner's REVOKE: refuse to call writes stopped then.
        left = []
        for e in stops:
            row = conn.execute(
                "SELECT pg_catalog.has_table_privilege(%s, %s::regclass, %s)",
                (
                    "public" if e["grantee"] == "PUBLIC" else e["grantee"],
                    sql.Identifier(e["schema"], e["table"]).as_string(conn),
                    ",".join(e["privileges"]),
                ),
            ).fetchone()
            if row and row[0]:
                left.append(e)
        if left:
            names = ", ".join(f"{e['grantee']} on {e['schema']}.{e['table']}" for e in left[:10])
            raise CutoverError(
                f"write privileges remain after REVOKE on {_conn_where(conn)} ({names}); they were "
                "granted by another role: revoke them as that role or use stop_writes=wait"
            )


def grant_writes(conn: psycopg.Connection[Any], stops: list[dict[str, Any]]) -> None:
    """Give back exactly the recorded privileges (tables dropped meanwhile are skipped)."""
    with conn.transaction():
        for e in stops:
            exists = conn.execute(
                "SELECT pg_catalog.to_regclass(%s)",
                (sql.Identifier(e["schema"], e["table"]).as_string(conn),),
            ).fetchone()
            if exists and exists[0] is not None:
                conn.execute(
                    sql.SQL("GRANT {} ON TABLE {} TO {}").format(
                        _privileges(e), sql.Identifier(e["schema"], e["table"]), _grantee(e["grantee"])
                    )
                )


def terminate_sessions(
    conn: psycopg.Connection[Any], stops: list[dict[str, Any]], protected: list[str]
) -> tuple[int, list[str]]:
    """End the sessions of the roles whose writes were revoked (all but protected ones for PUBLIC).

    Returns (terminated, refused): a master without pg_signal_backend may not end some sessions; their
    open transactions are then waited for instead.
    """
    grantees = sorted({e["grantee"] for e in stops})
    rows = conn.execute(
        "SELECT a.pid, a.usename FROM pg_catalog.pg_stat_activity a "
        "WHERE a.datname = pg_catalog.current_database() AND a.pid <> pg_catalog.pg_backend_pid() "
        # backend_type is NULL for sessions a master without pg_read_all_stats may not inspect: try those too.
        "AND COALESCE(a.backend_type, 'client backend') = 'client backend' AND a.usesysid IS NOT NULL "
        "AND NOT a.usename = ANY(%s) "
        "AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles s WHERE s.oid = a.usesysid AND s.rolsuper) "
        "AND (%s OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles g WHERE g.rolname = ANY(%s) "
        "AND pg_catalog.pg_has_role(a.usesysid, g.oid, 'MEMBER')))",
        (protected, "PUBLIC" in grantees, grantees),
    ).fetchall()
    conn.rollback()
    terminated, refused = 0, []
    for pid, user in rows:
        try:
            with conn.transaction():
                ok = conn.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (pid,)).fetchone()
            terminated += bool(ok and ok[0])
        except psycopg.errors.InsufficientPrivilege:
            refused.append(f"{user} (pid {pid})")
    return terminated, refused


# Transactions running now: the snapshot lists those below its xmax; those at or above it (started after
# the latest commit) are not listed, so the range up to our own new xid is added. Our own one is excluded.
_RUNNING_XIDS = """
WITH s AS (SELECT pg_catalog.txid_current_snapshot() AS snap, pg_catalog.txid_current() AS me),
running AS (  -- txid_* (int8): PostgreSQL 12 has no pg_current_snapshot() and xid8
    SELECT x FROM s, pg_catalog.txid_snapshot_xip(s.snap) x
    UNION
    SELECT g FROM s, pg_catalog.generate_series(pg_catalog.txid_snapshot_xmax(s.snap), s.me - 1) g
)
SELECT x FROM running
WHERE (x % 4294967296)::text::xid NOT IN (
    SELECT backend_xid FROM pg_catalog.pg_stat_activity
    WHERE backend_xid IS NOT NULL AND datname IS DISTINCT FROM pg_catalog.current_database())
"""


def wait_in_flight(conn: psycopg.Connection[Any], timeout: float) -> None:
    """Wait until every transaction running now has ended: one that wrote before the REVOKE could still
    commit. Works without privileges (txid_status). The snapshot covers the whole server: transactions
    seen running in other databases are left out, those the user may not see are waited for."""
    xids = [r[0] for r in conn.execute(_RUNNING_XIDS).fetchall()]
    conn.rollback()
    deadline = time.monotonic() + timeout
    while xids:
        rows = conn.execute(
            "SELECT x FROM unnest(%s::int8[]) x WHERE pg_catalog.txid_status(x) = 'in progress'",
            (xids,),
        ).fetchall()
        conn.rollback()
        xids = [r[0] for r in rows]
        if not xids:
            return
        if time.monotonic() > deadline:
            raise CutoverError(
                f"{len(xids)} transaction(s) on {_conn_where(conn)} still run {timeout:.0f}s after "
                f"writes were stopped (xids {', '.join(str(x) for x in xids[:10])}); they could "
                "still commit writes. End them (pg_terminate_backend) or raise the timeout"
            )
        time.sleep(0.05)


def wait_quiet(conn: psycopg.Connection[Any], quiet_seconds: float, timeout: float) -> float:
    """`wait` mode: the captured changes on this side stay the same for `quiet_seconds` (no one drains them
    meanwhile: the sync of this direction is stopped). Returns the monotonic time the quiet window began."""
    deadline = time.monotonic() + timeout

    def count() -> int:
        n = sum(t["pending"] + t["truncates"] for t in status.pending(conn).values())
        conn.rollback()
        return n

    while True:
        began, before = time.monotonic(), count()
        time.sleep(quiet_seconds)
        after = count()
        if after == before:
            return began
        if time.monotonic() > deadline:
            raise CutoverError(
                f"writes still arrive on {_conn_where(conn)}: {after - before} new change(s) in "
                f"{quiet_seconds:.1f}s; stop the application first (stop_writes=wait), or use "
                "stop_writes=revoke"
            )
        log.info(
            "%d new change(s) in %.1fs; waiting for the application to stop", after - before, quiet_seconds
        )


# ---------------------------------------------------------------- the switch


@dataclass
class Options:
    stop_writes: str = "revoke"
    application_roles: list[str] = field(default_factory=list)  # empty: every non-project writer
    terminate: bool = True
    in_flight_timeout: float = 30.0
    quiet_seconds: float = 3.0
    quiet_timeout: float = 300.0
    verify: str = "drained"
    verify_range_rows: int = 10000
    start_sync: bool = True

    def __post_init__(self) -> None:
        if self.stop_writes not in STOP_MODES:
            raise CutoverError(f"stop_writes: expected one of {list(STOP_MODES)}, got {self.stop_writes!r}")
        if self.verify not in VERIFY_MODES:
            raise CutoverError(f"verify: expected one of {list(VERIFY_MODES)}, got {self.verify!r}")


class _Timer:
    def __init__(self, sw: Switch):
        self.sw = sw

    def __call__(self, step: str) -> _Step:
        return _Step(self.sw, step)


class _Step:
    def __init__(self, sw: Switch, step: str):
        self.sw, self.step = sw, step

    def __enter__(self) -> None:
        self.started = time.monotonic()
        log.info("%s: %s", self.sw.action, self.step)

    def __exit__(self, *exc: object) -> None:
        self.sw.steps[self.step] = round(time.monotonic() - self.started, 3)


def _protected(sides: Sides, side: str) -> list[str]:
    return sorted({str(sides.admin[side]["user"]), str(sides.sync[side]["user"])})


def switch(
    cfg: configmod.Config,
    action: str,
    *,
    target_admin: Mapping[str, Any] | None = None,
    options: Options | None = None,
    config_path: str | None = None,
    source_admin: Mapping[str, Any] | None = None,
) -> Switch:
    """Carry out a cutover (action='cutover') or rollback (action='rollback'); see the module docstring."""
    opts = options or Options()
    sides = sides_of(cfg, target_admin, source_admin)
    frm, to = ("source", "target") if action == "cutover" else ("target", "source")
    direction = "forward" if frm == "source" else "reverse"
    dcfg = cfg if direction == "forward" else cfg.reversed()  # the sync that carries the last changes
    sw = Switch(action, cfg.name, frm, to, opts.stop_writes, started_at=_now())
    step = _Timer(sw)

    with (
        db.connect(sides.sync["target"], f"cutover {cfg.name} state") as st,
        db.connect(sides.admin[frm], f"cutover {cfg.name}", autocommit=True) as fconn,
        db.connect(sides.admin[to], f"cutover {cfg.name}", autocommit=True) as tconn,
    ):
        with step("check"):
            current = state.read_cutover(st, cfg.name)
            _refuse_unless_live(cfg.name, action, frm, current)  # before anything is created or changed
            f_tables, t_tables = _scope(fconn, cfg), _scope(tconn, cfg)
            replicated = _replicated(fconn, tconn, frm)
            broken = capture.check_intact(fconn)
            if broken:
                raise CutoverError(
                    f"{action} of {cfg.name} refused, nothing changed: capture on the {frm} is not whole, so "
                    f"changes made there were not all recorded: {'; '.join(broken)}. Re-run the capture phase "
                    "(it repairs them), let the sync catch up, verify, then run the switch again"
                )
            narrowing = narrowing_columns(
                t_tables if to == "target" else f_tables,
                f_tables if to == "target" else t_tables,
                "target",
                replicated,
            )
            if action == "cutover":
                sw.warnings += [n.describe() for n in narrowing]
            else:
                problems = range_problems(fconn, f_tables, narrowing)
                if problems:
                    raise CutoverError(
                        f"rollback of {cfg.name} refused, nothing changed: {len(problems)} value(s) "
                        f"on the target do not fit the source: {'; '.join(problems)}. Change them "
                        "on the target (or widen the source columns), then run rollback again"
                    )
            stops: list[dict[str, Any]] = list(current["write_stops"].get(frm, []))
            if opts.stop_writes == "revoke":
                stops = _merge(
                    stops,
                    plan_write_stop(fconn, f_tables, _protected(sides, frm), opts.application_roles or None),
                )
                if not stops:
                    raise CutoverError(
                        f"{action} of {cfg.name} refused, nothing changed: no application role holds write "
                        f"privileges on the replicated tables on {_where(sides.admin[frm])} apart from the project's "
                        f"own users ({', '.join(_protected(sides, frm))}) and superusers. If the application "
                        "connects as one of those, stop it and use stop_writes=wait"
                    )
            writers = stops if opts.stop_writes == "revoke" else plan_write_stop(
                fconn, f_tables, _protected(sides, frm), None)
            need = _application_access(cfg, fconn, f_tables, replicated, opts, writers, current, frm)
            missing = access.missing_access(tconn, need, current["write_stops"].get(to, []))
            if missing:
                raise CutoverError(
                    f"{action} of {cfg.name} refused, nothing changed: the application could not work on the {to} "
                    f"({_where(sides.admin[to])}): {'; '.join(missing[:20])}"
                    f"{f' (and {len(missing) - 20} more)' if len(missing) > 20 else ''}. Run the restore phase "
                    "again (playbooks/06_restore.yml carries roles and privileges over), or grant them there, "
                    f"then run the {action} again"
                )

        _ensure_state_table(st)
        # The reverse sync records progress on the source: create its schema now, past the schema freeze.
        src_conn = fconn if frm == "source" else tconn
        capture.allow_ddl(src_conn)
        state.ensure(src_conn)
        # The source's sync role writes the source only while the target is live (issue 13 item 3): the
        # reverse sync (and the rollback's keyless copy) need it; granted before writes stop, so a source
        # where it cannot be granted (PostgreSQL < 15, no superuser) refuses with nothing stopped.
        src_sync_user = str(sides.sync["source"]["user"])
        if action == "cutover":
            capture.grant_apply(src_conn, src_sync_user)
        with step("capture on " + to):
            sw.capture_installed = _ensure_capture(tconn, t_tables, replicated, sides, to)

        daemon.stop_detached(dcfg, direction)
        stopped_at = time.monotonic()
        try:
            with step("stop writes on " + frm):
                if opts.stop_writes == "revoke":
                    _write_state(
                        st, cfg.name, side=frm, stops=stops
                    )  # recorded before revoking: undo is possible
                    stopped_at = time.monotonic()
                    sw.writes_stopped_at = _now()
                    revoke_writes(fconn, stops)
                    sw.revoked = stops
                    if opts.terminate:
                        sw.terminated_sessions, refused = terminate_sessions(
                            fconn, stops, _protected(sides, frm)
                        )
                        if refused:
                            sw.warnings.append(
                                f"not allowed to end {len(refused)} session(s) on the {frm} "
                                f"({', '.join(refused[:5])}); waited for their transactions instead"
                            )
                    wait_in_flight(fconn, opts.in_flight_timeout)
                else:
                    stopped_at = wait_quiet(fconn, opts.quiet_seconds, opts.quiet_timeout)
                    sw.writes_stopped_at = datetime.fromtimestamp(
                        time.time() - (time.monotonic() - stopped_at), UTC
                    ).isoformat(timespec="milliseconds")
            with step("drain " + direction):
                sw.drained_changes = _drain(dcfg, direction)
            with step("sequences"):
                plan = sequences.copy_sequences(
                    sides.admin[frm], sides.admin[to], cfg.schemas or None, cfg.exclude_tables
                )
                sw.sequences_set = len(plan.steps)
            if cfg.keyless_tables == "copy_at_cutover":
                with step("keyless tables"):
                    sw.keyless_copied = _copy_keyless(
                        sides, frm, to, f_tables, cfg.target_replica_role_function if to == "target" else None)
            if opts.verify == "drained":
                with step("verify drained"):
                    sw.tables_verified = assert_drained(fconn, action)
            elif opts.verify == "full":
                with step("verify"):
                    # Only the replicated tables: the target may hold tables of its own.
                    # As the sync users: on the target only the replication user sees every row of a table
                    # with row level security (the project's policy); the master may see none.
                    report = verify.verify(
                        sides.sync[frm],
                        sides.sync[to],
                        cfg.schemas or None,
                        cfg.exclude_tables,
                        sorted(replicated | set(sw.keyless_copied)),
                        options=verify.VerifyOptions(
                            range_rows=opts.verify_range_rows, recheck=0, recheck_wait=0
                        ),
                    )
                    sw.tables_verified = len(report.tables)
                    report.raise_on_mismatch()
            with step("allow writes on " + to):
                # The downtime ends when the application roles' privileges are proven in place on `to`.
                back = current["write_stops"].get(to, [])
                if back:
                    grant_writes(tconn, back)
                missing = access.missing_access(tconn, need)
                if missing:
                    if back:
                        revoke_writes(tconn, back)
                    raise CutoverError(
                        f"{action} of {cfg.name} stopped: the application lost privileges on the {to} during the "
                        f"switch ({'; '.join(missing[:10])}); writes on the {frm} were given back"
                    )
                _write_state(st, cfg.name, live=to)
        except BaseException as exc:
            _undo_stop(st, fconn, cfg.name, frm, opts, sw, exc)
            if action == "cutover":
                capture.revoke_apply(src_conn, src_sync_user)
            raise
        sw.downtime_seconds = round(time.monotonic() - stopped_at, 3)
        sw.writes_accepted_at = _now()
        if back:
            _write_state(st, cfg.name, side=to, stops=[])
        if action == "rollback":  # drained: the source's sync role only reads again
            capture.revoke_apply(src_conn, src_sync_user)

    if opts.start_sync and config_path:
        back_direction = "reverse" if direction == "forward" else "forward"
        daemon.start_detached(config_path, cfg, back_direction)  # cfg as in the file: forward orientation
        sw.sync_started = back_direction
    path = record_history(cfg.state_dir, sw, to)
    log.info(
        "%s of %s done: the %s is live; write downtime %.3fs (recorded in %s)",
        action,
        cfg.name,
        to,
        sw.downtime_seconds,
        path,
    )
    return sw


def _application_access(
    cfg: configmod.Config,
    fconn: psycopg.Connection[Any],
    f_tables: list[Table],
    replicated: set[str],
    opts: Options,
    writers: list[dict[str, Any]],
    current: dict[str, Any],
    frm: str,
) -> access.WriteCheck:
    """What the application roles (the named ones, else every role that writes the replicated tables) may do
    on the live side, privileges revoked by an unfinished switch included, with role names as on the other
    side (ge_role_map forward, its inverse back)."""
    roles = opts.application_roles or sorted({e["grantee"] for e in writers} - {"PUBLIC"})
    tables = sorted((t.schema, t.name) for t in f_tables
                    if t.qualname in replicated or (not t.key and cfg.keyless_tables == "copy_at_cutover"))
    role_map = cfg.role_map if frm == "source" else _inverse(cfg.role_map)
    return access.required_access(fconn, roles, tables, current["write_stops"].get(frm, []), role_map)


def _inverse(role_map: Mapping[str, str]) -> dict[str, str]:
    """Target role -> source role, for the roles the map renames (merged roles have no single way back)."""
    targets = list(role_map.values())
    return {t: s for s, t in role_map.items() if targets.count(t) == 1}


def assert_drained(conn: psycopg.Connection[Any], action: str) -> int:
    """With writes stopped and the drain done, no captured change may be left; returns the tables checked."""
    pending = status.pending(conn)
    left = {name: p for name, p in pending.items() if p["pending"] or p["truncates"]}
    if left:
        shown = ", ".join(f"{name} ({p['pending']} change(s), {p['truncates']} truncate(s))"
                          for name, p in sorted(left.items())[:10])
        raise CutoverError(
            f"{action}: changes arrived on {_conn_where(conn)} after writes were stopped and drained: {shown}. "
            "Something still writes (a project user or a superuser, or a role not in application_roles); "
            "writes were given back, stop that writer and run the switch again")
    return len(pending)


def _refuse_unless_live(name: str, action: str, frm: str, current: dict[str, Any]) -> None:
    if current["live"] == frm:
        return
    since = f" since {current['changed_at']:%Y-%m-%d %H:%M:%S %Z}" if current["changed_at"] else ""
    if action == "cutover":
        raise CutoverError(
            f"cutover of {name} refused, nothing changed: it is already cut over (the target is live"
            f"{since}). To go back to the source run rollback.yml (great-escape rollback)"
        )
    raise CutoverError(
        f"rollback of {name} refused, nothing changed: no cutover is recorded (the source is live"
        f"{since}); there is nothing to roll back"
    )


def _merge(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A stop left recorded by an interrupted switch plus the privileges found now (already revoked ones
    are no longer found, so the record keeps them)."""
    seen = {(e["schema"], e["table"], e["grantee"]): e for e in a}
    for e in b:
        key = (e["schema"], e["table"], e["grantee"])
        if key in seen:
            seen[key] = {**e, "privileges": sorted(set(seen[key]["privileges"]) | set(e["privileges"]))}
        else:
            seen[key] = e
    return [seen[k] for k in sorted(seen)]


def _replicated(fconn: psycopg.Connection[Any], tconn: psycopg.Connection[Any], frm: str) -> set[str]:
    """The tables the forward capture covers (registered on the source): the reverse capture covers the same."""
    registry = capture.registered(fconn if frm == "source" else tconn)
    if not registry:
        raise CutoverError(
            "no captured tables on the source: the migration's capture phase has not run "
            "(or cleanup removed it); nothing can be cut over"
        )
    return set(registry.values())


def _ensure_capture(
    conn: psycopg.Connection[Any], tables: list[Table], replicated: set[str], sides: Sides, side: str
) -> list[str]:
    """Capture on `side` for the replicated tables, and the sync user's right to read and purge its deltas."""
    wanted = [t for t in tables if t.qualname in replicated]
    p = capture.plan(conn, wanted, state="present", freeze=None)
    capture.apply_plan(conn, p)
    sync_user = str(sides.sync[side]["user"])
    if sync_user != conn.info.user:
        with conn.transaction():
            capture.grant_sync(conn, sync_user)
    return [t.qualname for t in p.install]


def _drain(dcfg: configmod.Config, direction: str) -> int:
    proc = daemon.SyncProcess(dcfg, direction=direction)
    try:
        return proc.run(drain=True)
    except SyncError as exc:
        if "out of range" not in str(exc):
            raise
        detail = check_range(dcfg)
        raise SyncError(f"{exc}; values that do not fit: {'; '.join(detail) or 'not found'}") from exc


def _copy_keyless(sides: Sides, frm: str, to: str, f_tables: list[Table],
                  function: db.ReplicaRoleFunction | None) -> dict[str, int]:
    """Copy the keyless tables whole into `to`; `function` only on the target (never one on the source)."""
    keyless = [t for t in f_tables if not t.key]
    if not keyless:
        return {}
    copied = {}
    with (
        db.connect(sides.admin[frm], "cutover keyless") as src,
        db.connect(sides.sync[to], "cutover keyless") as dst,
    ):
        db.set_replica_role(dst, function)
        t_tables = {t.qualname: t for t in catalog.list_tables(dst)}
        with dst.transaction():
            for t in keyless:
                if t.qualname not in t_tables:
                    raise CutoverError(f"keyless table {t.qualname} is missing on the {to}; restore it first")
                copied[t.qualname] = apply.copy_table(src, dst, t, t_tables[t.qualname])
        src.rollback()
    return copied


def _undo_stop(
    st: psycopg.Connection[Any],
    fconn: psycopg.Connection[Any],
    name: str,
    frm: str,
    opts: Options,
    sw: Switch,
    exc: BaseException,
) -> None:
    """A step after the write stop failed: `from` takes writes again, the live side is unchanged."""
    if opts.stop_writes != "revoke":
        return
    try:
        st.rollback()
        fconn.rollback()
        stops = state.read_cutover(st, name)["write_stops"].get(frm, [])
        grant_writes(fconn, stops)
        _write_state(st, name, side=frm, stops=[])
        log.error("%s of %s failed (%s); writes on the %s are allowed again", sw.action, name, exc, frm)
    except psycopg.Error as undo_exc:
        log.error(
            "%s failed and writes on the %s could not be given back (%s): run the same command again to "
            "finish, or rollback/cleanup",
            sw.action,
            frm,
            undo_exc,
        )


def current_state(cfg: configmod.Config) -> dict[str, Any]:
    """Which side is live, from the target's state table and the status file."""
    with db.connect(cfg.target, f"cutover {cfg.name} state") as conn:
        s = state.read_cutover(conn, cfg.name)
    history = load_history(cfg.state_dir).get("switches", [])
    last = history[-1] if history else None
    return {
        "name": cfg.name,
        "live": s["live"],
        "changed_at": s["changed_at"],
        "writes_stopped": {k: len(v) for k, v in s["write_stops"].items()},
        "last_switch": last,
    }


# ---------------------------------------------------------------- command line


def add_parser(sub: Any) -> None:
    for action, text in (
        ("cutover", "stop writes on the source, drain, and let the target take writes"),
        ("rollback", "stop writes on the target, drain back, and let the source take writes"),
    ):
        p = sub.add_parser(
            action, help=text, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        p.add_argument("--config", required=True)
        p.add_argument(
            "--target-admin-user",
            help="the target's master user (owns the tables); password from --target-admin-password-file "
            "or the configuration's password file",
        )
        p.add_argument(
            "--target-admin-password-file",
            metavar="FILE",
            help="file holding the master user's password on its first line, readable by its owner only "
            "(mode 0600); - reads it from standard input. Never pass a password on the command line",
        )
        p.add_argument(
            "--source-admin-user",
            help="the source's owner of the tables or superuser (capture, privileges, sequences at the switch), "
            "when the configuration's source user is the dedicated sync role; password from "
            "--source-admin-password-file",
        )
        p.add_argument(
            "--source-admin-password-file",
            metavar="FILE",
            help="file holding that user's password on its first line (mode 0600); - reads standard input",
        )
        p.add_argument("--stop-writes", choices=STOP_MODES, default="revoke")
        p.add_argument(
            "--application-role",
            action="append",
            default=[],
            metavar="ROLE",
            help="only these roles lose write privileges (repeatable; default: every non-project writer)",
        )
        p.add_argument("--no-terminate", action="store_true", help="do not end application sessions")
        p.add_argument("--in-flight-timeout", type=float, default=30.0)
        p.add_argument("--quiet-seconds", type=float, default=3.0)
        p.add_argument("--verify", choices=VERIFY_MODES, default="drained",
                       help="with writes stopped: prove nothing is left to apply (drained), or also compare "
                       "every table (full: downtime grows with the database), or skip (none)")
        p.add_argument("--no-start-sync", action="store_true", help="do not start the sync back afterwards")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=_main, action=action)
    p = sub.add_parser("cutover-status", help="which side is live, and the last cutover or rollback")
    p.add_argument("--config", required=True)
    p.add_argument(
        "--check-range",
        action="store_true",
        help="also list values on the live side that do not fit the other side's columns",
    )
    p.set_defaults(func=_status_main)


def admin_params(
    endpoint: Mapping[str, Any], user: str | None, password_file: str | None = None
) -> dict[str, Any] | None:
    """libpq parameters of a side's admin (the target's master, the source's owner or superuser): the side's
    endpoint as `user`, with the password read from `password_file` ("-": standard input) or else from the
    configuration's password file (passfile).

    The password never comes from the command line, and never stays in this process's environment, which the
    sync started after the switch would inherit."""
    if not user:
        return None
    params = {**endpoint, "user": user}
    params.pop("password", None)
    if password_file:
        params["password"] = _read_password(password_file)
    return params


def _read_password(path: str) -> str:
    if path == "-":
        text = sys.stdin.readline()
    else:
        try:
            mode = os.stat(path).st_mode
            if mode & 0o077:
                raise CutoverError(
                    f"the password file {path} may be read by others (mode {oct(mode & 0o777)}); "
                    f"chmod 600 {path}"
                )
            with open(path, encoding="utf-8") as f:
                text = f.readline()
        except OSError as exc:
            raise CutoverError(f"cannot read the password file {path}: {exc.strerror}") from exc
    password = text.rstrip("\r\n")
    if not password:
        raise CutoverError(f"the password file {path if path != '-' else '(standard input)'} is empty")
    return password


def _main(args: argparse.Namespace) -> int:
    cfg = configmod.load(args.config)
    opts = Options(
        stop_writes=args.stop_writes,
        application_roles=args.application_role,
        terminate=not args.no_terminate,
        in_flight_timeout=args.in_flight_timeout,
        quiet_seconds=args.quiet_seconds,
        verify=args.verify,
        start_sync=not args.no_start_sync,
    )
    sw = switch(
        cfg,
        args.action,
        target_admin=admin_params(cfg.target, args.target_admin_user, args.target_admin_password_file),
        source_admin=admin_params(cfg.source, args.source_admin_user, args.source_admin_password_file),
        options=opts,
        config_path=args.config,
    )
    if args.json:
        print(json.dumps(asdict(sw), indent=2, default=str))
    else:
        for w in sw.warnings:
            print(f"warning: {w}")
        print(
            f"{sw.action} of {sw.name}: the {sw.to_side} is live; write downtime {sw.downtime_seconds:.3f}s "
            f"({', '.join(f'{k} {v:.2f}s' for k, v in sw.steps.items())})"
        )
    return 0


def _status_main(args: argparse.Namespace) -> int:
    cfg = configmod.load(args.config)
    s = current_state(cfg)
    if args.check_range:
        s["range_problems"] = check_range(cfg, "forward" if s["live"] == "source" else "reverse")
    print(json.dumps(s, indent=2, default=str))
    return 0
