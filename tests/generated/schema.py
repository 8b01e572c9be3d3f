"""Random schemas and workloads for the generated migration test: Hypothesis strategies, the DDL they stand for
(identifiers only through psycopg.sql) and the DML of a workload. A row is named by an integer `rid`; every
column's value is a pure function of (type, rid, column), so a workload replays exactly and shrinks."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from functools import partial

from hypothesis import strategies as st
from psycopg import sql

# Names the project uses itself (delta columns, registry columns, tables, triggers, functions, schemas).
INTERNAL_NAMES = ["at", "captured_at", "k1", "k2", "k3", "relid", "ge_capture", "tables", "truncates", "waiting",
                  "ge_capture_row", "ge_capture_truncate", "ge_capture_kick", "ge_capture_writer", "d_1", "f_1",
                  "ge_c_1", "schema_name", "table_name", "delta_table", "key_columns", "layout", "op", "installed_at",
                  "cutover_state", "great_escape", "rds_session_replication_role", "ge_repl", "ge_master"]
HOSTILE_NAMES = ["select", "order", "user", "table", "from", "group", "Mixed Case", "MIXED", "mixed",
                 'with "quotes"', "with space", " lead", "trail ", "ключ", "ü", "日本語", "a.b", "a,b", "100%",
                 "{x}", "%s", "$1", "semi;colon", "back\\slash", "it's", "tab\tname", "—dash",
                 "t" * 63, "ä" * 31 + "x", "€" * 21]
SYSTEM_COLUMNS = {"tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"}
assert all(len(n.encode()) <= 63 for n in HOSTILE_NAMES)




def _ok_name(name: str) -> bool:
    return 0 < len(name.encode()) <= 63 and "\x00" not in name and name not in SYSTEM_COLUMNS


identifiers = st.one_of(
    st.sampled_from(INTERNAL_NAMES + HOSTILE_NAMES),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00", exclude_categories=("Cs", "Cc")),
            min_size=1, max_size=12),
).filter(_ok_name)

KEY_TYPES = ["int", "smallint", "bigint", "numeric", "text", "citext", "uuid", "timestamptz", "date", "bytea",
             "boolean", "enum", "domain"]
RANGE_TYPES = {"smallint", "int", "bigint", "numeric", "timestamptz", "date", "domain"}
ENUM_LABELS = ["a", "B", "with space", "ü", "quo'te", 'x"y']
ENUM_NAME, DOMAIN_NAME, LOG_TABLE = 'Mood "e"', "pos int", "trigger log"
NROWS = 24  # rids 0..NROWS-1


def type_sql(t: str) -> sql.Composable:
    if t == "enum":
        return sql.Identifier("public", ENUM_NAME)
    if t == "domain":
        return sql.Identifier("public", DOMAIN_NAME)
    if t == "text":
        return sql.SQL('text COLLATE "C"')
    if t == "citext":
        return sql.Identifier("public", "citext")
    return sql.SQL(t)


def key_text(t: str, rid: int, i: int) -> str:
    """The text of key column i of row rid (monotonic in rid for RANGE_TYPES)."""
    if t == "smallint":
        return str(rid * 3 + i)
    if t in ("int", "domain"):
        return str(rid * 1000 + i) if t == "domain" else str(rid * 1000 - 5000 + i)
    if t == "bigint":
        return str(rid * 10_000_000_000 + i)
    if t == "numeric":
        return f"{rid}.{i}5"
    if t == "text":
        return ["", "B", "a", "ä", " ", "Z", "'", "\\"][rid % 8] + f"{rid:03d}-{i}"
    if t == "citext":  # rows 0 and 1, 2 and 3 ... differ only in case: the same key
        return ["Key", "kEY", "ÄÖ", "äö"][rid % 4] + f"{rid // 2:03d}-{i}"
    if t == "uuid":
        return str(uuid.UUID(int=(rid << 64) + i))
    if t == "timestamptz":
        return (dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=rid, minutes=i)).isoformat()
    if t == "date":
        return (dt.date(2025, 1, 1) + dt.timedelta(days=rid * 3 + i)).isoformat()
    if t == "bytea":
        return "\\x" + bytes([rid % 256, i, 0, 255]).hex()
    if t == "boolean":
        return "true" if (rid + i) % 2 else "false"
    if t == "enum":
        return ENUM_LABELS[(rid + i) % len(ENUM_LABELS)]
    raise AssertionError(t)


def key_value(t: str, rid: int, i: int) -> sql.Composable:
    return sql.SQL("{}::{}").format(sql.Literal(key_text(t, rid, i)), type_sql(t))


@dataclass
class Column:
    name: str
    kind: str  # key:<type>, v, n, jsonb, arr, gen, ident_always, ident_default, serial, big


@dataclass
class Table:
    schema: str
    name: str
    keys: list[Column]
    extra: list[Column]
    unique_not_pk: bool = False
    dropped_between: bool = False  # a dropped column between the key columns
    partition: str = "none"  # none | range | range2 (a sub-partitioned range) | hash
    triggers: bool = False  # BEFORE (bumps n) and AFTER (writes the log) row triggers
    rls: str = "none"  # none | enabled | forced
    parent: int | None = None  # index of the table this one references (deferrable FK to its key)
    fk_name: str = ""
    unlogged: bool = False
    view: str = "none"  # none | view | matview: depending on every column of the table

    def key_types(self) -> list[str]:
        return [c.kind.split(":", 1)[1] for c in self.keys]

    def col(self, kind: str) -> Column | None:
        return next((c for c in self.extra if c.kind == kind), None)

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


@dataclass
class Op:
    table: int
    kind: str  # insert, fill, update, update_key, swap, swap_uniq, big, delete, truncate, truncate_part
    rid: int = 0
    rid2: int = 0
    size: int = 0


@dataclass
class Case:
    tables: list[Table]
    schemas: list[str] = field(default_factory=list)
    seed_ops: list[Op] = field(default_factory=list)  # before capture
    copy_ops: list[Op] = field(default_factory=list)  # concurrent with the dump
    sync_ops: list[Op] = field(default_factory=list)  # concurrent with the forward sync
    target_ops: list[Op] = field(default_factory=list)  # on the target after cutover
    after_ops: list[Op] = field(default_factory=list)  # on the source again after rollback


EXTRA_KINDS = ["n", "jsonb", "arr", "gen", "ident_always", "ident_default", "serial", "big", "uniq", "uniq_deferrable"]


@st.composite
def tables(draw: st.DrawFn, index: int, schemas: list[str], previous: list[Table]) -> Table:
    nkeys = draw(st.integers(1, 5))
    ktypes = draw(st.lists(st.sampled_from(KEY_TYPES), min_size=nkeys, max_size=nkeys))
    kinds = draw(st.lists(st.sampled_from(EXTRA_KINDS), unique=True, max_size=4))
    partition = draw(st.sampled_from(["none", "none", "range", "range2", "hash"]))
    if partition.startswith("range") and ktypes[0] not in RANGE_TYPES:
        partition = "hash"
    if partition != "none":
        # identity on partitioned tables: PostgreSQL 17+; a unique constraint there must hold the partition key
        kinds = [k for k in kinds if not k.startswith(("ident", "uniq"))]
    triggers = draw(st.booleans())
    if triggers and "n" not in kinds:
        kinds.append("n")
    all_kinds = ["v", *kinds]
    names = draw(st.lists(identifiers, min_size=nkeys + len(all_kinds), max_size=nkeys + len(all_kinds),
                          unique=True))
    keys = [Column(names[i], f"key:{t}") for i, t in enumerate(ktypes)]
    extra = [Column(names[nkeys + i], k) for i, k in enumerate(all_kinds)]
    # (a permanent table may not reference an unlogged one)
    candidates = [i for i, t in enumerate(previous) if t.partition == "none" and not t.unlogged]
    parent = draw(st.sampled_from([None, *candidates])) if candidates else None
    taken = {t.name for t in previous}
    schema = draw(st.sampled_from(schemas))
    name = draw(identifiers.filter(lambda n: n not in taken and n != LOG_TABLE))
    t = Table(schema=schema, name=name, keys=keys, extra=extra, unique_not_pk=draw(st.booleans()),
              dropped_between=draw(st.booleans()), partition=partition, triggers=triggers,
              rls=draw(st.sampled_from(["none", "enabled", "forced"])), parent=parent,
              fk_name=draw(identifiers), unlogged=partition == "none" and draw(st.booleans()))
    t.view = draw(st.sampled_from(["none", "none", "view", "matview"]))
    return t


def ops(ntables: int, max_size: int) -> st.SearchStrategy[list[Op]]:
    rid = st.integers(0, NROWS - 1)
    one = st.one_of(
        st.builds(Op, st.integers(0, ntables - 1), st.just("insert"), rid),
        st.builds(Op, st.integers(0, ntables - 1), st.just("insert"), rid),
        st.builds(Op, st.integers(0, ntables - 1), st.just("update"), rid),
        st.builds(Op, st.integers(0, ntables - 1), st.just("update_key"), rid, rid),
        st.builds(Op, st.integers(0, ntables - 1), st.just("delete"), rid),
        st.builds(Op, st.integers(0, ntables - 1), st.just("swap"), rid, rid),
        st.builds(Op, st.integers(0, ntables - 1), st.just("big"), rid, st.just(0), st.integers(1, 40_000)),
        st.builds(Op, st.integers(0, ntables - 1), st.just("truncate")),
        st.builds(Op, st.integers(0, ntables - 1), st.just("truncate_part")),
        st.builds(Op, st.integers(0, ntables - 1), st.just("swap_uniq"), rid, rid),
        st.builds(Op, st.integers(0, ntables - 1), st.just("fill"), rid),
    )
    return st.lists(one, max_size=max_size)


@st.composite
def cases(draw: st.DrawFn, max_tables: int = 3, max_ops: int = 25) -> Case:
    schemas = ["public", *draw(st.lists(identifiers.filter(
        lambda n: n not in {"public", "ge_capture", "great_escape"} and not n.startswith("pg_")),
        max_size=1))]
    ntables = draw(st.integers(1, max_tables))
    tabs: list[Table] = []
    for i in range(ntables):
        tabs.append(draw(tables(i, schemas, tabs)))
    return Case(tables=tabs, schemas=schemas, seed_ops=draw(ops(ntables, max_ops)),
                copy_ops=draw(ops(ntables, max_ops)), sync_ops=draw(ops(ntables, max_ops)),
                target_ops=draw(ops(ntables, max_ops)), after_ops=draw(ops(ntables, max_ops // 2)))


# ---------------------------------------------------------------------------------------------- DDL


def _extra_def(t: Table, c: Column) -> sql.Composable:
    if c.kind == "gen":
        return sql.SQL("{} text GENERATED ALWAYS AS ({} || '!') STORED").format(
            sql.Identifier(c.name), sql.Identifier(t.col("v").name))  # type: ignore[union-attr]
    return sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL({
        "v": "text", "n": "int", "jsonb": "jsonb", "arr": "int[]", "ident_always": "int GENERATED ALWAYS AS IDENTITY",
        "ident_default": "bigint GENERATED BY DEFAULT AS IDENTITY", "serial": "serial", "big": "text",
        "uniq": "int UNIQUE", "uniq_deferrable": "int UNIQUE DEFERRABLE"}[c.kind]))


def trunc_bytes(name: str, limit: int = 63) -> str:
    while len(name.encode()) > limit:
        name = name[:-1]
    return name


def ref_name(parent_key: Column) -> str:
    """The referencing column of a foreign key to the parent's key column."""
    return trunc_bytes(f"ref {parent_key.name}")


def part_name(t: Table, i: int, suffix: str) -> sql.Identifier:
    return sql.Identifier(t.schema, trunc_bytes(f"{i}{suffix} of {t.name}"))


def ddl(case: Case, app_role: str) -> list[sql.Composable]:
    """The source schema, one statement per item."""
    out: list[sql.Composable] = []
    for s in case.schemas[1:]:
        out.append(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(s)))
    out.append(sql.SQL("CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA public"))
    out.append(sql.SQL("CREATE TYPE {} AS ENUM ({})").format(
        sql.Identifier("public", ENUM_NAME), sql.SQL(", ").join(map(sql.Literal, ENUM_LABELS))))
    out.append(sql.SQL("CREATE DOMAIN {} AS int CHECK (VALUE >= 0)").format(sql.Identifier("public", DOMAIN_NAME)))
    out.append(sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, tbl text NOT NULL, op text NOT NULL)").format(
        sql.Identifier("public", LOG_TABLE)))
    out.append(sql.SQL("""CREATE FUNCTION public."log it"() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN INSERT INTO public."trigger log" (tbl, op) VALUES (TG_TABLE_NAME, TG_OP); RETURN NULL; END $f$"""))
    for i, t in enumerate(case.tables):
        cols: list[sql.Composable] = []
        for j, k in enumerate(t.keys):
            cols.append(sql.SQL("{} {} NOT NULL").format(sql.Identifier(k.name), type_sql(t.key_types()[j])))
            if j == 0 and t.dropped_between:
                cols.append(sql.SQL("{} int").format(sql.Identifier("dropped ✗")))
        cols.extend(_extra_def(t, c) for c in t.extra)
        keylist = sql.SQL(", ").join(sql.Identifier(k.name) for k in t.keys)
        cols.append(sql.SQL("UNIQUE ({})" if t.unique_not_pk else "PRIMARY KEY ({})").format(keylist))
        if t.parent is not None:
            p = case.tables[t.parent]
            # the referencing columns: the parent's key columns under their own names (and types)
            for j, pk in enumerate(p.keys):
                cols.append(sql.SQL("{} {}").format(sql.Identifier(ref_name(pk)), type_sql(p.key_types()[j])))
            cols.append(sql.SQL("CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}) ON UPDATE CASCADE "
                                "ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED").format(
                sql.Identifier(t.fk_name), sql.SQL(", ").join(sql.Identifier(ref_name(pk)) for pk in p.keys),
                p.ident, sql.SQL(", ").join(sql.Identifier(pk.name) for pk in p.keys)))
        part = sql.SQL("")
        k0 = sql.Identifier(t.keys[0].name)
        if t.partition.startswith("range"):
            part = sql.SQL(" PARTITION BY RANGE ({})").format(k0)
        elif t.partition == "hash":
            part = sql.SQL(" PARTITION BY HASH ({})").format(k0)
        out.append(sql.SQL("CREATE {}TABLE {} ({}){}").format(
            sql.SQL("UNLOGGED " if t.unlogged else ""), t.ident, sql.SQL(", ").join(cols), part))
        pname = partial(part_name, t, i)
        if t.partition.startswith("range"):
            kt = t.key_types()[0]
            lo, hi = key_value(kt, NROWS // 3, 0), key_value(kt, 2 * NROWS // 3, 0)
            out.append(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM (MINVALUE) TO ({})").format(
                pname("a"), t.ident, lo))
            sub = sql.SQL(" PARTITION BY HASH ({})").format(k0) if t.partition == "range2" else sql.SQL("")
            out.append(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({}){}").format(
                pname("b"), t.ident, lo, hi, sub))
            if t.partition == "range2":
                for r in range(2):
                    out.append(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES WITH (MODULUS 2, REMAINDER {})")
                               .format(pname(f"b{r}"), pname("b"), sql.Literal(r)))
            out.append(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(pname("default"), t.ident))
        elif t.partition == "hash":
            for r in range(3):
                out.append(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES WITH (MODULUS 3, REMAINDER {})")
                           .format(pname(f"h{r}"), t.ident, sql.Literal(r)))
        if t.dropped_between:
            out.append(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(t.ident, sql.Identifier("dropped ✗")))
        if t.triggers:
            n = sql.Identifier(t.col("n").name)  # type: ignore[union-attr]
            fn = sql.Identifier("public", f"bump {i}")
            out.append(sql.SQL("""CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN NEW.{n} := coalesce(NEW.{n}, 0) + 1; RETURN NEW; END $f$""").format(fn=fn, n=n))
            out.append(sql.SQL("CREATE TRIGGER {} BEFORE INSERT OR UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION {}()")
                       .format(sql.Identifier("before bump"), t.ident, fn))
            out.append(sql.SQL("CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW "
                               "EXECUTE FUNCTION public.\"log it\"()").format(
                sql.Identifier("after log"), t.ident))
        if t.view != "none":
            out.append(sql.SQL("CREATE {} {} AS SELECT * FROM {}").format(
                sql.SQL("MATERIALIZED VIEW" if t.view == "matview" else "VIEW"),
                part_name(t, i, "view"), t.ident))
        if t.rls != "none":
            out.append(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(t.ident))
            if t.rls == "forced":
                out.append(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(t.ident))
            out.append(sql.SQL("CREATE POLICY {} ON {} FOR ALL TO {} USING (true) WITH CHECK (true)").format(
                sql.Identifier("app may"), t.ident, sql.Identifier(app_role)))
    for s in case.schemas:
        out.append(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; "
                           "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA {s} TO {r}; "
                           "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {r}").format(
            s=sql.Identifier(s), r=sql.Identifier(app_role)))
    return out


# ---------------------------------------------------------------------------------------------- DML


def _key_match(t: Table, rid: int) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(c.name), key_value(kt, rid, j))
        for j, (c, kt) in enumerate(zip(t.keys, t.key_types(), strict=True)))


def _insert(case: Case, t: Table, rid: int) -> sql.Composable:
    cols = [sql.Identifier(c.name) for c in t.keys]
    vals = [key_value(kt, rid, j) for j, kt in enumerate(t.key_types())]
    for c in t.extra:
        if c.kind == "v":
            vals.append(sql.Literal(f"v{rid} ü'\"\\"))
        elif c.kind == "jsonb":
            vals.append(sql.SQL("{}::jsonb").format(sql.Literal(f'{{"r": {rid}, "s": "ü\\\\n", "a": [1, null]}}')))
        elif c.kind.startswith("uniq"):
            vals.append(sql.Literal(rid + 100))
        elif c.kind == "arr":
            vals.append(sql.SQL("ARRAY[{}, NULL, {}]::int[]").format(sql.Literal(rid), sql.Literal(-rid)))
        else:
            continue
        cols.append(sql.Identifier(c.name))
    if t.parent is not None:
        p = case.tables[t.parent]
        for j, pk in enumerate(p.keys):
            cols.append(sql.Identifier(ref_name(pk)))
            vals.append(key_value(p.key_types()[j], (rid * 7) % NROWS, j))
    return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(t.ident, sql.SQL(", ").join(cols),
                                                             sql.SQL(", ").join(vals))


def statements(case: Case, op: Op) -> list[sql.Composable]:
    """One op as the statements of one transaction."""
    t = case.tables[op.table]
    v = sql.Identifier(t.col("v").name)  # type: ignore[union-attr]
    if op.kind == "insert":
        return [_insert(case, t, op.rid)]
    if op.kind == "fill":
        return [_insert(case, t, r) for r in range(op.rid, min(op.rid + 6, NROWS))]
    if op.kind == "update":
        return [sql.SQL("UPDATE {} SET {} = {} || '+' WHERE {}").format(t.ident, v, v, _key_match(t, op.rid))]
    if op.kind == "big":
        big = t.col("big") or t.col("v")
        return [sql.SQL("UPDATE {} SET {} = repeat(md5({}::text), {}) WHERE {}").format(
            t.ident, sql.Identifier(big.name), sql.Literal(op.rid), sql.Literal(op.size), _key_match(t, op.rid))]
    if op.kind == "delete":
        return [sql.SQL("DELETE FROM {} WHERE {}").format(t.ident, _key_match(t, op.rid))]
    if op.kind == "truncate":
        return [sql.SQL("TRUNCATE {} CASCADE").format(t.ident)]
    if op.kind == "truncate_part":  # one partition (or the table itself when it has none)
        first = {"none": None, "hash": "h0", "range": "a", "range2": "b0"}[t.partition]
        target = part_name(t, op.table, first) if first else t.ident
        return [sql.SQL("TRUNCATE {} CASCADE").format(target)]
    if op.kind == "swap_uniq":  # two rows exchange a unique value in one statement (or in two, via NULL)
        u = t.col("uniq") or t.col("uniq_deferrable")
        if u is None:
            return []
        ui = sql.Identifier(u.name)
        get = sql.SQL("(SELECT {} FROM {} WHERE {})").format
        if u.kind == "uniq_deferrable":
            return [sql.SQL("UPDATE {} SET {} = CASE WHEN {} THEN {} ELSE {} END WHERE {} OR {}").format(
                t.ident, ui, _key_match(t, op.rid), get(ui, t.ident, _key_match(t, op.rid2)),
                get(ui, t.ident, _key_match(t, op.rid)), _key_match(t, op.rid), _key_match(t, op.rid2))]
        return [sql.SQL("UPDATE {} SET {} = NULL WHERE {}").format(t.ident, ui, _key_match(t, op.rid)),
                sql.SQL("UPDATE {} SET {} = {} WHERE {}").format(t.ident, ui, sql.Literal(op.rid + 100),
                                                                 _key_match(t, op.rid2))]

    def move(a: int, b: int) -> sql.Composable:
        sets = sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(c.name), key_value(kt, b, j))
                                  for j, (c, kt) in enumerate(zip(t.keys, t.key_types(), strict=True)))
        return sql.SQL("UPDATE {} SET {} WHERE {}").format(t.ident, sets, _key_match(t, a))
    if op.kind == "update_key":
        return [move(op.rid, op.rid2)]
    if op.kind == "swap":  # two rows exchange their keys in one transaction (a unique value moves)
        spare = NROWS + 7
        return [move(op.rid, spare), move(op.rid2, op.rid), move(spare, op.rid2)]
    raise AssertionError(op.kind)
