"""Sequence copy: triggers do not capture sequences (DESIGN.md invariant 7), so their values are copied
at cutover and on request, source -> target, matched by schema.name.

A target sequence is never moved backwards unless asked: after cutover the target's own writes may
have advanced it past the source, and handing out a used value again would break unique keys.
Works as a non-superuser: reading a sequence needs SELECT on it, setval() needs UPDATE.

    great-escape sequences --config /etc/great-escape/local-demo.yml [--reverse] [--check] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from . import config as configmod
from . import db
from .catalog import PROJECT_SCHEMAS, SYSTEM_SCHEMAS
from .errors import SequenceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SequenceInfo:
    schema: str
    name: str
    increment: int
    min_value: int
    max_value: int
    owned_by: str  # "schema.table.column" for serial/identity sequences, else ""
    identity: bool
    last_value: int = 0
    is_called: bool = False

    @property
    def qualname(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def next_value(self) -> int:
        """What nextval() would return: the position compared across the two sides."""
        return self.last_value + self.increment if self.is_called else self.last_value


@dataclass
class SequenceCopy:
    """One sequence: the source value, the target value before and after, and what was decided."""

    sequence: str
    owned_by: str
    identity: bool
    source_value: int
    source_is_called: bool
    target_before: int
    target_is_called_before: bool
    target_after: int
    target_is_called_after: bool
    action: str  # "set", "unchanged" or "kept" (target ahead, not moved backwards)


@dataclass
class SequencePlan:
    items: list[SequenceCopy] = field(default_factory=list)
    # (quoted target identifier, value, is_called) per setval() to run
    steps: list[tuple[str, int, bool]] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.steps)

    @property
    def moved(self) -> int:
        return len(self.steps)

    def diff(self) -> dict[str, dict[str, int]]:
        return {
            "before": {i.sequence: i.target_before for i in self.items},
            "after": {i.sequence: i.target_after for i in self.items},
        }

    def as_dicts(self) -> list[dict[str, Any]]:
        return [asdict(i) for i in self.items]


# Sequences of the schemas in scope with their parameters and owning column, if any
# (deptype 'a' = serial/OWNED BY, 'i' = identity). Extension members are left to the extension.
_SEQUENCES = """
SELECT n.nspname, c.relname, s.seqincrement, s.seqmin, s.seqmax,
       COALESCE(tn.nspname || '.' || t.relname || '.' || a.attname, ''), COALESCE(d.deptype = 'i', false),
       COALESCE(tn.nspname || '.' || t.relname, '')
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_sequence s ON s.seqrelid = c.oid
LEFT JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
     AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i')
LEFT JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
LEFT JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE c.relkind = 'S'
  AND n.nspname <> ALL(%(excluded)s) AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
  AND (%(schemas)s::text[] IS NULL OR n.nspname = ANY(%(schemas)s))
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                  WHERE e.classid = 'pg_catalog.pg_class'::regclass AND e.objid = c.oid AND e.deptype = 'e')
ORDER BY n.nspname, c.relname
"""


def list_sequences(
    conn: psycopg.Connection[Any], schemas: list[str] | None = None, exclude_tables: list[str] | None = None
) -> list[SequenceInfo]:
    """Sequences of `schemas` (all application schemas if empty) with their current values.

    Sequences owned by a column of an excluded table are left out with their table.
    """
    excluded_tables = set(exclude_tables or ())
    with conn.cursor() as cur:
        cur.execute(_SEQUENCES, {"excluded": list(SYSTEM_SCHEMAS + PROJECT_SCHEMAS),
                                 "schemas": schemas or None})
        rows = [r for r in cur.fetchall() if r[7] not in excluded_tables]
        result = []
        for schema, name, increment, min_value, max_value, owned_by, identity, _table in rows:
            try:
                cur.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
                    sql.Identifier(schema, name)))
            except psycopg.errors.InsufficientPrivilege as exc:
                raise SequenceError(
                    f"cannot read sequence {schema}.{name} on {_where(conn)} as {conn.info.user}: "
                    "permission denied; GRANT SELECT, UPDATE ON the application sequences to this user",
                    [f"{schema}.{name}"],
                ) from exc
            last_value, is_called = cur.fetchone() or (0, False)
            result.append(SequenceInfo(schema, name, increment, min_value, max_value, owned_by, identity,
                                       last_value, is_called))
    conn.rollback()  # sequence reads are not transactional; end the read transaction at once
    return result


def plan_sequences(
    source: psycopg.Connection[Any],
    target: psycopg.Connection[Any],
    schemas: list[str] | None = None,
    exclude_tables: list[str] | None = None,
    allow_backwards: bool = False,
) -> SequencePlan:
    """Compare every source sequence with its namesake on the target and plan the setval() calls.

    Raises SequenceError when target sequences are missing or cannot hold the source value; every
    such sequence is named, not only the first.
    """
    src = list_sequences(source, schemas, exclude_tables)
    tgt = {s.qualname: s for s in list_sequences(target, schemas, exclude_tables)}
    missing = [s.qualname for s in src if s.qualname not in tgt]
    if missing:
        raise SequenceError(
            f"{len(missing)} sequence(s) exist on the source {_where(source)} but not on the target "
            f"{_where(target)}: {', '.join(missing)}. Restore the schema (pre-data) on the target, or "
            "exclude their tables.",
            missing,
        )
    plan = SequencePlan()
    out_of_range = []
    for s in src:
        t = tgt[s.qualname]
        # Compare positions in the direction the sequence counts (descending sequences count down).
        ahead = (s.next_value - t.next_value) * (1 if t.increment > 0 else -1)
        if ahead == 0:  # nextval() returns the same on both sides, however it is stored
            action, after = "unchanged", (t.last_value, t.is_called)
        elif ahead < 0 and not allow_backwards:
            action, after = "kept", (t.last_value, t.is_called)
        else:
            if not t.min_value <= s.last_value <= t.max_value:
                out_of_range.append(f"{s.qualname} (value {s.last_value}, target range {t.min_value}.."
                                    f"{t.max_value})")
                continue
            action, after = "set", (s.last_value, s.is_called)
            ident = sql.Identifier(s.schema, s.name).as_string(target)
            plan.steps.append((ident, s.last_value, s.is_called))
            plan.queries.append(_render_setval(target, ident, s.last_value, s.is_called))
        plan.items.append(SequenceCopy(s.qualname, s.owned_by, s.identity, s.last_value, s.is_called,
                                       t.last_value, t.is_called, after[0], after[1], action))
    if out_of_range:
        raise SequenceError(
            f"{len(out_of_range)} target sequence(s) on {_where(target)} cannot hold the source value: "
            f"{', '.join(out_of_range)}. Widen them (ALTER SEQUENCE ... AS bigint MAXVALUE ...) first.",
            out_of_range,
        )
    return plan


_SETVAL = "SELECT pg_catalog.setval(%s::regclass, %s, %s)"


def _render_setval(conn: psycopg.Connection[Any], ident: str, value: int, is_called: bool) -> str:
    return psycopg.ClientCursor(conn).mogrify(_SETVAL, (ident, value, is_called))


def apply_sequences(target: psycopg.Connection[Any], plan: SequencePlan) -> None:
    """Run the planned setval() calls in one transaction (setval itself is not rolled back)."""
    try:
        with target.transaction(), target.cursor() as cur:
            for ident, value, is_called in plan.steps:
                cur.execute(_SETVAL, (ident, value, is_called))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise SequenceError(
            f"cannot set sequences on {_where(target)} as {target.info.user}: {exc.diag.message_primary}; "
            "GRANT UPDATE ON the application sequences to this user (or use the master user)",
            [ident],
        ) from exc


def copy_sequences(
    source_params: Mapping[str, Any],
    target_params: Mapping[str, Any],
    schemas: list[str] | None = None,
    exclude_tables: list[str] | None = None,
    allow_backwards: bool = False,
    check: bool = False,
) -> SequencePlan:
    """Connect, plan and (unless `check`) apply. The entry point of the CLI and of ge_sequences."""
    with db.connect(source_params, "sequences") as source, db.connect(target_params, "sequences") as target:
        plan = plan_sequences(source, target, schemas, exclude_tables, allow_backwards)
        if not check and plan.steps:
            apply_sequences(target, plan)
    for item in plan.items:
        log.debug("sequence %s: source %s, target %s -> %s (%s)", item.sequence, item.source_value,
                  item.target_before, item.target_after, item.action)
    return plan


def _where(conn: psycopg.Connection[Any]) -> str:
    return f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"


def format_table(plan: SequencePlan) -> str:
    """One line per sequence, for people."""
    rows = [("sequence", "source", "target before", "target after", "action")]
    rows += [(i.sequence, _value(i.source_value, i.source_is_called),
              _value(i.target_before, i.target_is_called_before),
              _value(i.target_after, i.target_is_called_after), i.action) for i in plan.items]
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"{len(plan.items)} sequence(s), {plan.moved} moved")
    return "\n".join(lines)


def _value(value: int, is_called: bool) -> str:
    # A sequence never called yet hands out last_value itself next: mark it.
    return str(value) if is_called else f"{value} (unused)"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("sequences", help="copy sequence values from the source to the target",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the engine's configuration file (YAML)")
    p.add_argument("--reverse", action="store_true", help="copy target -> source (after cutover)")
    p.add_argument("--allow-backwards", action="store_true",
                   help="also move sequences that are ahead on the receiving side back to the sender's value")
    p.add_argument("--check", action="store_true", help="show what would change, change nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = configmod.load(args.config, reverse=args.reverse)
    plan = copy_sequences(cfg.source, cfg.target, cfg.schemas, cfg.exclude_tables, args.allow_backwards,
                          args.check)
    if args.json:
        print(json.dumps({"changed": plan.changed, "sequences": plan.as_dicts(), "queries": plan.queries},
                         indent=2))
    else:
        print(format_table(plan))
    return 0
