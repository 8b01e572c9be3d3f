"""Target-side steps of the restore phase, called by roles/restore on the replication host.

    python -m great_escape.restore data-progress --toc L --log F --dump-dir D [--state-dir S]
    python -m great_escape.restore restore-errors --log F     # only "already exists" allowed on a re-run

The steps that connect (prepare_restore, truncate_tables, grant_user, migrate_bigint) are run by the
ge_restore module; these two commands read files only and print one JSON result.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from . import bigint, db, progress
from .capture import FREEZE_TRIGGERS
from .capture import TRIGGERS as CAPTURE_TRIGGERS
from .catalog import PROJECT_SCHEMAS, SYSTEM_SCHEMAS, list_tables
from .errors import ConfigError, GreatEscapeError, RestoreError

# TOC descriptions of more than one word (pg_dump's te->desc); the longest match wins.
_MULTIWORD_DESCS = sorted((
    "FK CONSTRAINT", "CHECK CONSTRAINT", "TABLE DATA", "TABLE ATTACH", "INDEX ATTACH", "SEQUENCE SET",
    "SEQUENCE OWNED BY", "EVENT TRIGGER", "DEFAULT ACL", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA",
    "FOREIGN TABLE", "FOREIGN DATA WRAPPER", "FOREIGN SERVER", "USER MAPPING", "SECURITY LABEL",
    "ROW SECURITY", "SHELL TYPE", "OPERATOR CLASS", "OPERATOR FAMILY", "PROCEDURAL LANGUAGE",
    "ACCESS METHOD", "LARGE OBJECT", "BLOB METADATA", "PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA",
    "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY", "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE",
    "DATABASE PROPERTIES", "DUMMY TYPE", "EXTENDED STATISTICS", "EXTENDED STATISTICS DATA",
), key=len, reverse=True)
_ENTRY = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
_LABELS = ("COMMENT", "ACL", "SECURITY LABEL")


@dataclass(frozen=True)
class TocEntry:
    dump_id: int
    desc: str
    schema: str  # "-" when the object has none
    tag: str  # the object's name; "table name" for triggers and constraints
    line: str


def parse_toc_line(line: str) -> TocEntry | None:
    """One `pg_restore -l` line (`ID; TABLEOID OID DESC SCHEMA TAG OWNER`), None for comments."""
    m = _ENTRY.match(line.rstrip("\n"))
    if not m:
        return None
    rest = m.group(4)
    desc = next((d for d in _MULTIWORD_DESCS if rest.startswith(d + " ")), rest.split(" ", 1)[0])
    after = rest[len(desc) + 1:]
    schema, _, tag_owner = after.partition(" ")
    tag = tag_owner.rsplit(" ", 1)[0] if " " in tag_owner else tag_owner
    return TocEntry(int(m.group(1)), desc, schema, tag, line.rstrip("\n"))


def is_project_object(entry: TocEntry) -> bool:
    """What the project installs on the source: its schemas, the capture triggers, the schema freeze."""
    if entry.schema in PROJECT_SCHEMAS:
        return True
    if entry.desc == "SCHEMA" and entry.tag in PROJECT_SCHEMAS:
        return True
    if entry.desc == "TRIGGER" and entry.tag.rsplit(" ", 1)[-1] in CAPTURE_TRIGGERS:
        return True
    if entry.desc == "EVENT TRIGGER" and entry.tag in FREEZE_TRIGGERS:
        return True
    if entry.desc in _LABELS:
        return (entry.tag in {f"SCHEMA {s}" for s in PROJECT_SCHEMAS}
                or entry.tag in {f"EVENT TRIGGER {t}" for t in FREEZE_TRIGGERS}
                or any(entry.tag.startswith(f"TRIGGER {t} ") for t in CAPTURE_TRIGGERS))
    return False


def filter_toc(lines: Iterable[str]) -> tuple[list[str], list[str]]:
    """(the list for `pg_restore -L`, the dropped entries). Dropped lines stay as comments so the
    list documents what was left out."""
    out: list[str] = []
    dropped: list[str] = []
    for line in lines:
        entry = parse_toc_line(line)
        if entry is not None and is_project_object(entry):
            dropped.append(entry.line)
            out.append(f";great-escape dropped: {entry.line}")
        elif entry is not None and entry.desc in ("POLICY", "ROW SECURITY"):
            # Policies name roles, which ge_role_map may rename, and row level security enabled during
            # post-data would make the master's REFRESH MATERIALIZED VIEW over a table with FORCE fail:
            # the access step creates both after the restore (access.py).
            out.append(f";great-escape left to the access step: {entry.line}")
        else:
            out.append(line.rstrip("\n"))
    return out, dropped


SECTIONS = ("pre-data", "data", "post-data")


def write_toc_lists(dump_dir: Path, work_dir: Path, pg_restore: str = "pg_restore") -> dict[str, Any]:
    """`pg_restore --list` of every section's archive into WORK/<section>.toc, and the filtered list for
    `pg_restore -L` into WORK/<section>.list (one program run instead of two per section)."""
    dropped: list[str] = []
    entries: dict[str, int] = {}
    for section in SECTIONS:
        toc, listing = work_dir / f"{section}.toc", work_dir / f"{section}.list"
        proc = subprocess.run([pg_restore, "--list", f"--file={toc}", str(dump_dir / section)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise GreatEscapeError(f"pg_restore --list {dump_dir / section} failed (exit {proc.returncode}): "
                                   f"{proc.stderr.strip()[-500:]}")
        kept, gone = filter_toc(toc.read_text().splitlines())
        listing.write_text("\n".join(kept) + "\n")
        dropped += gone
        entries[section] = sum(1 for line in kept if _ENTRY.match(line))
    return {"dropped": dropped, "entries": entries}


def table_data_files(toc_lines: Iterable[str], dump_dir: Path) -> dict[int, int]:
    """dump id -> bytes of its data file, for every TABLE DATA entry the list restores."""
    sizes = {}
    for line in toc_lines:
        entry = parse_toc_line(line)
        if entry is None or entry.desc != "TABLE DATA":
            continue
        files = sorted(dump_dir.glob(f"{entry.dump_id}.dat*"))
        sizes[entry.dump_id] = sum(f.stat().st_size for f in files)
    return sizes


_FINISHED = re.compile(r"finished item (\d+) TABLE DATA ")
_PROCESSING = re.compile(r"processing item (\d+) TABLE DATA ")


def finished_items(log_text: str) -> set[int]:
    """Dump ids whose data pg_restore -v reported done. Serial runs (-j 1) log only the start of an
    item, so an item there counts as done once the next one starts (or the run ends)."""
    done = {int(m) for m in _FINISHED.findall(log_text)}
    started = [int(m) for m in _PROCESSING.findall(log_text)]
    if started and not done:
        done = set(started[:-1])
    return done


# What a post-data re-run meets for objects the failed run created; a primary key that exists
# is reported as a second primary key, not as "already exists".
_ALREADY_THERE = ("already exists", "multiple primary keys for table")


def restore_errors(log_text: str) -> tuple[list[str], list[str]]:
    """(all SQL errors, those not saying the object is already there) from a pg_restore log."""
    errors = [line.split("ERROR:", 1)[1].strip() for line in log_text.splitlines() if "ERROR:" in line]
    return errors, [e for e in errors if not any(marker in e for marker in _ALREADY_THERE)]


def app_schemas(conn: psycopg.Connection[Any], schemas: list[str] | None) -> list[str]:
    """The application's schemas on this database: `schemas`, else all but system and project ones."""
    rows = conn.execute(
        "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname <> ALL(%s) AND nspname NOT LIKE 'pg\\_%%' "
        "AND (%s::text[] IS NULL OR nspname = ANY(%s)) ORDER BY nspname",
        (list(SYSTEM_SCHEMAS + PROJECT_SCHEMAS), schemas or None, schemas or None)).fetchall()
    conn.rollback()
    return [r[0] for r in rows]


def check_target(conn: psycopg.Connection[Any], schemas: list[str] | None) -> dict[str, Any]:
    """The application tables already on the target, and which of them hold rows."""
    tables = list_tables(conn, schemas or None)
    with_rows = []
    for t in tables:
        row = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(t.ident)).fetchone()
        if row and row[0]:
            with_rows.append(t.qualname)
    conn.rollback()
    return {"tables": [t.qualname for t in tables], "with_rows": with_rows}


def truncate_tables(conn: psycopg.Connection[Any], schemas: list[str] | None, check: bool = False) -> list[str]:
    """Empty every application table on the target in one statement (before a data re-load); with `check`,
    only name them."""
    tables = list_tables(conn, schemas or None)
    conn.rollback()
    if tables and not check:
        with conn.transaction():
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(t.ident for t in tables)))
    return [t.qualname for t in tables]


_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
_SEQUENCE_PRIVILEGES = ("USAGE", "SELECT", "UPDATE")


def missing_grants(conn: psycopg.Connection[Any], schemas: list[str], user: str) -> int:
    """How many of the privileges grant_user gives `user` it does not hold yet (schema, table and sequence
    privileges counted one by one: has_*_privilege with a list says whether any is held)."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM unnest(%(schemas)s::text[]) AS n(name)"
        "        WHERE NOT pg_catalog.has_schema_privilege(%(user)s, n.name, 'USAGE'))"
        "     + (SELECT count(*) FROM pg_catalog.pg_class c"
        "        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        "        CROSS JOIN unnest(CASE WHEN c.relkind = 'S' THEN %(seq)s::text[] ELSE %(tab)s::text[] END) AS p(priv)"
        "        WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')"
        "          AND NOT CASE WHEN c.relkind = 'S' THEN pg_catalog.has_sequence_privilege(%(user)s, c.oid, p.priv)"
        "                       ELSE pg_catalog.has_table_privilege(%(user)s, c.oid, p.priv) END)",
        {"schemas": schemas, "user": user, "tab": list(_TABLE_PRIVILEGES), "seq": list(_SEQUENCE_PRIVILEGES)},
    ).fetchone()
    return int(row[0]) if row else 0


def grant_user(conn: psycopg.Connection[Any], schemas: list[str] | None, user: str,
               check: bool = False) -> tuple[list[str], int]:
    """What the sync needs as `user`: USAGE on the schemas, DML + TRUNCATE on tables, sequences. Returns the
    schemas and how many of these privileges were new; with `check`, grants nothing."""
    names = app_schemas(conn, schemas)
    grantee = sql.Identifier(user)
    with conn.transaction():
        new = missing_grants(conn, names, user)
        for name in names if not check else []:
            schema = sql.Identifier(name)
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, grantee))
            conn.execute(sql.SQL("GRANT {} ON ALL TABLES IN SCHEMA {} TO {}").format(
                sql.SQL(", ").join(map(sql.SQL, _TABLE_PRIVILEGES)), schema, grantee))
            conn.execute(sql.SQL("GRANT {} ON ALL SEQUENCES IN SCHEMA {} TO {}").format(
                sql.SQL(", ").join(map(sql.SQL, _SEQUENCE_PRIVILEGES)), schema, grantee))
    return names, new


def _holds(path: Path, text: str) -> bool:
    return path.exists() and path.read_text() == text


def _write_private(path: Path, text: str, mode: int) -> bool:
    """Write `text` to `path` created with `mode` (never wider for a moment); True when the content changed."""
    if _holds(path, text):
        os.chmod(path, mode)
        return False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), mode)
        f.write(text)
    return True


def prepare_copy(conn: psycopg.Connection[Any], req: dict[str, Any], check: bool = False) -> dict[str, Any]:
    """Everything the chunked copy needs before it starts, in one program run (one Ansible task, not five):
    the copy user's DML on the restored tables (it loads as that user), the copy directory (0750), the libpq
    password file of both sides (0600), the engine configuration (its endpoints without passwords, pointing
    at that file; the rest of `req["config"]` as given) and the index builds file (`req["index_builds"]`).

    With `req["access"]` (the ge_access options) and `req["admin"]` (the target's master), also the request of
    `great-escape access` (access.json), which the copy's job runs after post-data, and the master's password in
    the same file.

    Returns the schemas granted, how many privileges were new and which files changed; with `check`, grants
    and writes nothing. The password file is a credential of this run (the role removes it at its end), so
    writing it is no change."""
    copy_dir = Path(req["copy_dir"])
    source, target = req["source"], req["copy_target"]
    schemas, new = grant_user(conn, req.get("schemas"), target["user"], check)
    passfile = copy_dir / "pgpass"

    def without_password(side: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in side.items() if k != "password"}, "passfile": str(passfile)}

    config = {**req["config"], "source": without_password(source), "target": without_password(target)}
    files = {copy_dir / "great-escape.yml": yaml.safe_dump(config, sort_keys=False),
             copy_dir / "index-builds.json": json.dumps(req["index_builds"], indent=1) + "\n"}
    sides = [source, target]
    if req.get("access"):  # the master, and the sync user where access reads the cutover state (the master's endpoint)
        sides += [req["admin"], {**req["admin"], "user": target["user"], "password": target.get("password")}]
        access = {**req["access"], "source": without_password(source), "target": without_password(req["admin"])}
        files[copy_dir / "access.json"] = json.dumps(access, indent=1) + "\n"
    if check:
        changed = [str(f) for f, text in files.items() if not _holds(f, text)]
        return {"schemas": schemas, "new_privileges": new, "files_changed": changed}
    copy_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    _write_private(passfile, "".join(db.pgpass_line(side) for side in sides), 0o600)
    changed = [str(f) for f, text in files.items() if _write_private(f, text, 0o640)]
    return {"schemas": schemas, "new_privileges": new, "files_changed": changed}


def prepare_restore(connect: Callable[[], psycopg.Connection[Any]], req: dict[str, Any],
                    check: bool = False) -> dict[str, Any]:
    """Everything the restore role checks and writes before pg_restore, in one program run.

    Reads the dump's identity from its marker (the transfer's verification, or the dump's own where it was
    written on this host); finds the step markers of
    earlier runs and refuses markers of another dump; before pre-data is restored, refuses a target that
    already has application tables; then (unless `check`) writes the libpq password file (0600), the dump
    id and the TOC lists, and records the start of the restore phase in `progress_state_dir` (if given).
    `connect` opens a target connection, only when the check needs one."""
    missing = [k for k in ("work_dir", "dump_dir", "dump_marker", "target") if not req.get(k)]
    if missing:
        raise ConfigError(f"the prepare request lacks {', '.join(missing)}")
    work, dump_dir = Path(req["work_dir"]), Path(req["dump_dir"])
    marker = Path(req["dump_marker"])
    try:
        dump_id = str(json.loads(marker.read_text())["manifest_sha256"])
    except (OSError, ValueError, KeyError) as exc:
        raise RestoreError(f"{marker} is missing or unreadable ({exc.__class__.__name__}): the dump is not "
                           "complete on this host. Run the dump phase (playbooks/04_dump.yml) and, with "
                           "ge_copy_method pg_dump, the transfer phase (playbooks/05_transfer.yml) first.") from exc
    steps = sorted(p.name for p in work.iterdir() if p.suffix in (".done", ".started")) if work.is_dir() else []
    owner = work / "dump_id"
    if owner.exists() and owner.read_text().strip() != dump_id:
        raise RestoreError(f"The restore markers in {work} belong to another dump than the one in {dump_dir}. "
                           f"Nothing was changed. To restore this dump, empty the target database and remove {work}.")
    if "pre-data.done" not in steps:
        target = req["target"]
        with connect() as conn:
            found = check_target(conn, req.get("schemas"))
        if found["tables"]:
            raise RestoreError(
                f"The target {target.get('dbname')} on {target.get('host')} already has {len(found['tables'])} "
                f"application table(s) ({len(found['with_rows'])} with rows: {', '.join(found['with_rows'][:10])}) "
                f"and no marker in {work} shows an unfinished restore of this dump. Nothing was changed. Restore "
                "into an empty database, or drop those tables first.")
    if check:
        return {"dump_id": dump_id, "steps": steps, "dropped": [], "entries": {}}
    work.mkdir(mode=0o750, parents=True, exist_ok=True)
    _write_private(work / "pgpass", db.pgpass_line(req["target"]), 0o600)
    owner.write_text(dump_id + "\n")
    toc = write_toc_lists(dump_dir, work, req.get("pg_restore") or "pg_restore")
    if req.get("progress_state_dir"):  # this run's start, for `great-escape progress show`
        progress.record(Path(req["progress_state_dir"]), "restore", 0, None, detail="starting", restart=True)
    return {"dump_id": dump_id, "steps": steps, "dropped": toc["dropped"], "entries": toc["entries"]}


def restore_pre_data(work_dir: Path, dump_dir: Path, dump_id: str, argv: list[str], env: dict[str, str],
                     check: bool = False) -> bool:
    """pg_restore of the schema (pre-data) as one transaction that stops at the first error (all or nothing),
    then its marker WORK/pre-data.done with the dump's identity. `argv`: pg_restore and its connection
    arguments; `env`: its environment (password file, TLS). True when it ran (with `check`: would run)."""
    if check:
        return True
    proc = subprocess.run([*argv, "--single-transaction", "--exit-on-error", f"--use-list={work_dir / 'pre-data.list'}",
                           str(dump_dir / "pre-data")], env={**os.environ, **env}, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RestoreError(f"pg_restore of the schema (pre-data, {dump_dir / 'pre-data'}) failed (exit "
                           f"{proc.returncode}), so none of it was kept (one transaction): "
                           f"{proc.stderr.strip()[-1500:].rstrip('.')}. Fix the cause and run the restore phase again.")
    (work_dir / "pre-data.done").write_text(dump_id + "\n")
    return True


def migrate_bigint(source: dict[str, Any], target: dict[str, Any], schemas: list[str] | None, mode: str,
                   include: list[str], exclude: list[str], marker: Path | None, check: bool) -> dict[str, Any]:
    """The int -> bigint step: plan from the source's keys (bigint.plan_bigint), apply on the target's
    empty tables, then write `marker` (the result as JSON), only once the target has the new types.
    With `check`, the plan alone (queries empty)."""
    with db.connect(source, "restore bigint") as src:
        plan = bigint.plan_bigint(src, schemas or None, mode, include, exclude)
    if check:
        return dict(plan.as_dict(), queries=[])
    with db.connect(target, "restore bigint") as dst:
        result = dict(plan.as_dict(), queries=bigint.apply_bigint(dst, plan))
    if marker is not None:
        marker.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _cmd(args: argparse.Namespace) -> Any:
    if args.command == "restore-errors":
        errors, unexpected = restore_errors(Path(args.log).read_text(errors="replace"))
        return {"errors": errors, "unexpected": unexpected}
    return _data_progress(args)


def _data_progress(args: argparse.Namespace) -> dict[str, Any]:
    toc = Path(args.toc).read_text().splitlines()
    sizes = table_data_files(toc, Path(args.dump_dir))
    log = Path(args.log)
    done = finished_items(log.read_text(errors="replace")) if log.exists() else set()
    if args.finished:
        done = set(sizes)
    done &= set(sizes)
    result = {"tables_done": len(done), "tables_total": len(sizes),
              "bytes_done": sum(sizes[i] for i in done), "bytes_total": sum(sizes.values())}
    if args.state_dir:
        p = progress.record(Path(args.state_dir), args.phase, result["bytes_done"], result["bytes_total"],
                            state="done" if args.finished else "running", restart=args.restart,
                            detail=f"data: {len(done)}/{len(sizes)} tables (dump bytes)")
        result["line"] = progress.format_line(p)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m great_escape.restore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    errs = sub.add_parser("restore-errors", help="SQL errors in a pg_restore log")
    errs.add_argument("--log", required=True)
    dp = sub.add_parser("data-progress", help="tables and dump bytes restored so far")
    dp.add_argument("--toc", required=True)
    dp.add_argument("--log", required=True)
    dp.add_argument("--dump-dir", required=True)
    dp.add_argument("--state-dir")
    dp.add_argument("--phase", default="restore")
    dp.add_argument("--finished", action="store_true", help="pg_restore exited 0: everything is done")
    dp.add_argument("--restart", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = _cmd(args)
    except GreatEscapeError as exc:
        print(json.dumps({"error": str(exc), "sqlstate": exc.sqlstate}))
        print(f"great-escape restore: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
