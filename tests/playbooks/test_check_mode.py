"""`migrate.yml --check`: every phase runs in check mode, prints the plan, and changes nothing on any host:
the catalogs and rows of both databases and the files of the work directories are the same afterwards."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from tests.conftest import ROOT, DbPair

# Everything a phase could change in a database, as sorted text: relations and their columns, owners,
# privileges and RLS flags, triggers, event triggers, functions, schemas, roles and their settings, default
# privileges, policies and the database's own privileges.
CATALOG = """
SELECT format('relation %s.%s %s %s %s %s %s', n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner), c.relacl,
              c.relrowsecurity, c.relforcerowsecurity)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_to%'
  AND n.nspname NOT LIKE 'pg\\_temp%'
UNION ALL
SELECT format('column %s.%s %s', a.attrelid::regclass, a.attname, format_type(a.atttypid, a.atttypmod))
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE a.attnum > 0 AND NOT a.attisdropped AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_to%' AND n.nspname NOT LIKE 'pg\\_temp%'
UNION ALL
SELECT format('trigger %s.%s %s', tgrelid::regclass, tgname, tgenabled) FROM pg_trigger
UNION ALL
SELECT format('event trigger %s %s', evtname, evtenabled) FROM pg_event_trigger
UNION ALL
SELECT format('function %s %s %s', p.oid::regprocedure, pg_get_userbyid(p.proowner), p.proacl)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT format('schema %s %s %s', nspname, pg_get_userbyid(nspowner), nspacl) FROM pg_namespace
UNION ALL
SELECT format('role %s %s %s %s %s member of %s', rolname, rolsuper, rolcanlogin, rolbypassrls, rolconfig,
              (SELECT string_agg(m.roleid::regrole::text, ',' ORDER BY m.roleid::regrole::text)
               FROM pg_auth_members m WHERE m.member = r.oid))
FROM pg_roles r
UNION ALL
SELECT format('role setting %s %s %s', setrole, setdatabase, setconfig) FROM pg_db_role_setting
UNION ALL
SELECT format('default acl %s %s %s', defaclrole::regrole, defaclobjtype, defaclacl) FROM pg_default_acl
UNION ALL
SELECT format('policy %s.%s', polrelid::regclass, polname) FROM pg_policy
UNION ALL
SELECT format('database %s %s', datname, datacl) FROM pg_database WHERE datname = current_database()
ORDER BY 1
"""

TABLES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_to%' ORDER BY 1, 2
"""


def database_fingerprint(params: dict[str, Any]) -> list[str]:
    with psycopg.connect(**params, autocommit=True) as conn:
        lines = [row[0] for row in conn.execute(CATALOG)]
        for schema, table in conn.execute(TABLES).fetchall():
            digest = conn.execute(sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), "
                                          "'')) FROM {} t").format(sql.Identifier(schema, table))).fetchone()
            lines.append(f"rows {schema}.{table} {digest}")
    return lines


def files_fingerprint(root: Path) -> list[str]:
    """Path, mode and content of every file under `root` (missing root: nothing)."""
    lines = []
    for path in sorted(root.rglob("*")) if root.exists() else []:
        if path.is_file():
            lines.append(f"{path.relative_to(root)} {oct(path.stat().st_mode)} "
                         f"{hashlib.sha256(path.read_bytes()).hexdigest()}")
        else:
            lines.append(f"{path.relative_to(root)}/")
    return lines


def test_migrate_in_check_mode_prints_the_plan_and_changes_nothing(dbpair: DbPair, run_playbook, inventory) -> None:
    subprocess.run([sys.executable, str(ROOT / "demo/sample.py"), "--host", dbpair.source["host"], "--port",
                    str(dbpair.source["port"]), "--dbname", dbpair.source["dbname"], "--scale", "0.01"],
                   env=dict(os.environ, GE_SOURCE_PASSWORD=dbpair.source["password"]), check=True,
                   capture_output=True)
    dbpair.sql_source("CREATE TABLE public.keyless (note text); INSERT INTO public.keyless VALUES ('a'), ('b')")
    local = yaml.safe_load((inventory / "group_vars/all/main.yml").read_text())
    work = Path(local["ge_local_root"])

    def fingerprint() -> dict[str, list[str]]:
        return {"source": database_fingerprint(dbpair.source), "target": database_fingerprint(dbpair.target),
                "files": files_fingerprint(work)}

    before = fingerprint()
    result = run_playbook("migrate.yml", extra={"ge_keyless_tables": "copy_at_cutover"}, args=("--check",))
    after = fingerprint()
    for side in before:
        assert after[side] == before[side], f"check mode changed the {side}"
    plan = result.stdout
    for expected in (
            # tables largest first with size, key and the int -> bigint changes; keyless tables; disk; durations
            "shop.orders ", "customer_id, id", "public.keyless", "none: copied whole at cutover",
            "bigint: 4 column(s), 2 sequence(s) widened", "disk needed on the source host: none",
            "disk needed on the replication host", "(measured: ", "created by prepare-target:",
            # what capture installs, then what each later phase would do
            "install capture on shop.order_lines", "install schema freeze",
            "check mode: would run pg_dump --section=pre-data",
            "--section=data (no table data: the chunked copy reads it)", "nothing to transfer",
            "check mode: restore would restore", "check mode: sync would start", "check mode: verify would compare"):
        assert expected in plan, f"the plan does not mention {expected!r}"
