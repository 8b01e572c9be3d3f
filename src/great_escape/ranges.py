"""Integer columns narrower on one side (bigint on the target, int on the source): values that cannot go back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from . import capture, db
from . import config as configmod
from .catalog import Table

# Integer types by width: a column wider on the sending side can hold values the receiver cannot.
INT_RANGES = {
    "smallint": (-(2**15), 2**15 - 1),
    "integer": (-(2**31), 2**31 - 1),
    "bigint": (-(2**63), 2**63 - 1),
}


def other_side(side: str) -> str:
    return "target" if side == "source" else "source"



@dataclass(frozen=True)
class Narrowing:
    """A column wider on `wide_side` than on the other side, e.g. bigint on the target, integer on the source."""

    table: str
    column: str
    wide_side: str
    wide_type: str
    narrow_type: str

    def describe(self) -> str:
        low, high = INT_RANGES[self.narrow_type]
        return (
            f"{self.table}.{self.column} is {self.wide_type} on the {self.wide_side} but {self.narrow_type} on "
            f"the {other_side(self.wide_side)}: a value outside {low}..{high} written on the {self.wide_side} "
            f"cannot go back and stops the sync"
        )


def narrowing_columns(
    wide: list[Table], narrow: list[Table], wide_side: str, only: set[str] | None = None
) -> list[Narrowing]:
    """Integer columns (by table and column name) whose type is wider in `wide` than in `narrow`."""
    by_name = {t.qualname: t for t in narrow}
    found = []
    for t in wide:
        other = by_name.get(t.qualname)
        if other is None or (only is not None and t.qualname not in only):
            continue
        narrow_types = {c.name: c.type for c in other.columns}
        for col in t.columns:
            n = narrow_types.get(col.name)
            if col.type in INT_RANGES and n in INT_RANGES and INT_RANGES[col.type][1] > INT_RANGES[n][1]:
                found.append(Narrowing(t.qualname, col.name, wide_side, col.type, n))
    return found


def out_of_range(
    conn: psycopg.Connection[Any], table: Table, column: str, narrow_type: str, limit: int = 5
) -> list[dict[str, Any]]:
    """Rows of `table` whose `column` does not fit `narrow_type`: [{key: {col: value}, value}]."""
    low, high = INT_RANGES[narrow_type]
    key = table.key or tuple(c.name for c in table.columns)
    # Literals, not parameters: an identifier holding `%` would read as a placeholder.
    rows = conn.execute(
        sql.SQL("SELECT {}, {}::text FROM {} WHERE {} < {} OR {} > {} ORDER BY {} LIMIT {}").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in key),
            sql.Identifier(column),
            table.ident,
            sql.Identifier(column),
            sql.Literal(low),
            sql.Identifier(column),
            sql.Literal(high),
            sql.SQL(", ").join(sql.Identifier(k) for k in key),
            sql.Literal(limit),
        )
    ).fetchall()
    return [{"key": dict(zip(key, r[:-1], strict=True)), "value": r[-1]} for r in rows]


def format_key(key: Mapping[str, Any]) -> str:
    """(id)=(3000000000), as PostgreSQL names keys in its own messages."""
    return "({})=({})".format(", ".join(key), ", ".join(str(v) for v in key.values()))


def range_problems(
    conn: psycopg.Connection[Any], tables: list[Table], narrowing: list[Narrowing]
) -> list[str]:
    """One sentence per value that would not fit, naming table, column, key and value."""
    by_name = {t.qualname: t for t in tables}
    problems = []
    for n in narrowing:
        for row in out_of_range(conn, by_name[n.table], n.column, n.narrow_type):
            problems.append(
                f"{n.table}.{n.column} = {row['value']} at key {format_key(row['key'])} does not fit "
                f"{n.narrow_type} on the {other_side(n.wide_side)}"
            )
    conn.rollback()
    return problems


def explain_out_of_range(
    source: psycopg.Connection[Any], target: psycopg.Connection[Any], src: Table, tgt: Table
) -> str:
    """For a batch that failed with `out of range` on the applying side: which columns, keys and values.

    Reads on `source` in its current transaction (the batch's snapshot); "" when nothing is found.
    """
    found = narrowing_columns([src], [tgt], "source")
    problems = []
    for n in found:
        for row in out_of_range(source, src, n.column, n.narrow_type):
            problems.append(
                f"column {n.column} = {row['value']} at key {format_key(row['key'])} "
                f"({n.narrow_type} on {target.info.host}:{target.info.port}/{target.info.dbname})"
            )
    return "; ".join(problems)


def check_range(cfg: configmod.Config, direction: str = "forward") -> list[str]:
    """Values on the sending side of `direction` that do not fit the receiving side's columns."""
    dcfg = cfg if direction == "forward" else cfg.reversed()
    with (
        db.connect(dcfg.source, f"range check {cfg.name}") as src,
        db.connect(dcfg.target, "range check") as tgt,
    ):
        s_tables, t_tables = capture.selected_tables(src, dcfg), capture.selected_tables(tgt, dcfg)
        side = "source" if direction == "forward" else "target"
        return range_problems(src, s_tables, narrowing_columns(s_tables, t_tables, side))
