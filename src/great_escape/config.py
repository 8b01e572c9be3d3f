"""The engine's configuration file (YAML), written by the sync role's template.

    name: local-demo                 # names the migration in logs and application_name
    source: {host: ..., port: 5432, dbname: app, user: ge_sync_source, passfile: /etc/great-escape/pgpass,
             sslmode: verify-full, sslrootcert: /etc/great-escape/source-ca.pem}
    target: {host: ..., port: 5432, dbname: app, user: ge_repl, passfile: /etc/great-escape/pgpass,
             sslmode: verify-full, sslrootcert: /etc/great-escape/global-bundle.pem}  # sslcert/sslkey optional;
                                     # keepalives_idle/_interval/_count, tcp_user_timeout override db.KEEPALIVES
    schemas: [public]                # empty: every application schema
    exclude_tables: []               # schema.table names left out of capture and sync
    keyless_tables: refuse           # refuse | copy_at_cutover
    batch_size: 10000                # delta rows per table per batch
    poll_interval: 1.0               # seconds between polls when no NOTIFY arrives
    state_dir: /var/lib/great-escape/local-demo   # status file, pid file, log
    replica_role_function:           # the target's rds_session_replication_role(text) (Aurora/RDS)
      schema: public                 #   the only schema it is looked up in
      owner: ge_master               #   the role that must own it (the master user)
    role_map: {postgres: ge_master}  # source role -> target role where they differ (ge_role_map)

Where the sync's user may SET session_replication_role itself, it does and no function is called. The
function is only ever called on the target of the forward sync: the source side (reverse sync, rollback)
never calls one (`replica_role_function: null` turns it off on the target too). Without `owner`, the
function's owner must be a role that may SET session_replication_role itself, other than the sync user.

Errors name the YAML path of the bad value, e.g. `target.port: expected an integer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .db import CONNINFO_KEYS, SSLMODES, ReplicaRoleFunction
from .errors import ConfigError

KEYLESS_CHOICES = ("refuse", "copy_at_cutover")


@dataclass(frozen=True)
class Config:
    name: str
    source: dict[str, Any]
    target: dict[str, Any]
    schemas: list[str] = field(default_factory=list)
    exclude_tables: list[str] = field(default_factory=list)
    keyless_tables: str = "refuse"
    batch_size: int = 10000
    poll_interval: float = 1.0
    state_dir: Path = Path("/var/lib/great-escape")
    # The function on the target as written in the file (forward orientation).
    replica_role_function: ReplicaRoleFunction | None = field(default_factory=ReplicaRoleFunction)
    # Source role -> target role where they differ (ge_role_map): the cutover's check of the application's
    # privileges compares through it, in both directions.
    role_map: dict[str, str] = field(default_factory=dict)
    # True once reversed(): `target` is then the original source.
    reversed_sides: bool = False

    def reversed(self) -> Config:
        """The same migration with source and target swapped: the reverse sync after cutover."""
        return replace(self, source=self.target, target=self.source, reversed_sides=not self.reversed_sides)

    @property
    def target_replica_role_function(self) -> ReplicaRoleFunction | None:
        """What db.set_replica_role may call on `target`: the configured function on the original target,
        None on the original source (a function is never called there)."""
        return None if self.reversed_sides else self.replica_role_function


def load(path: str | Path, *, reverse: bool = False) -> Config:
    """The configuration in `path`; with reverse, as the reverse sync sees it (sides swapped)."""
    cfg = _load(path)
    return cfg.reversed() if reverse else cfg


def _load(path: str | Path) -> Config:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration {path} is not valid YAML: {exc}") from exc
    return from_dict(raw, str(path))


def from_dict(raw: Any, origin: str = "configuration") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level")
    known = {"name", "source", "target", "schemas", "exclude_tables", "keyless_tables", "batch_size",
             "poll_interval", "state_dir", "replica_role_function", "role_map"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{origin}: unknown key(s) {unknown}; known keys are {sorted(known)}")
    for required in ("name", "source", "target"):
        if required not in raw:
            raise ConfigError(f"{origin}: {required}: missing; it is required")
    cfg = Config(
        name=_typed(raw, "name", str, origin),
        source=_endpoint(raw["source"], "source", origin),
        target=_endpoint(raw["target"], "target", origin),
        schemas=_str_list(raw, "schemas", origin),
        exclude_tables=_str_list(raw, "exclude_tables", origin),
        keyless_tables=_typed(raw, "keyless_tables", str, origin, "refuse"),
        batch_size=_typed(raw, "batch_size", int, origin, 10000),
        poll_interval=float(_typed(raw, "poll_interval", (int, float), origin, 1.0)),
        state_dir=Path(_typed(raw, "state_dir", str, origin, "/var/lib/great-escape")),
        replica_role_function=_replica_role_function(raw, origin),
        role_map=_str_map(raw, "role_map", origin),
    )
    if cfg.keyless_tables not in KEYLESS_CHOICES:
        raise ConfigError(f"{origin}: keyless_tables: expected one of {list(KEYLESS_CHOICES)}, "
                          f"got {cfg.keyless_tables!r}")
    if cfg.batch_size < 1 or cfg.poll_interval <= 0:
        raise ConfigError(f"{origin}: batch_size and poll_interval must be positive")
    return cfg


def _typed(raw: dict[str, Any], key: str, typ: Any, origin: str, default: Any = None) -> Any:
    value = raw.get(key, default)
    if not isinstance(value, typ) or isinstance(value, bool):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise ConfigError(f"{origin}: {key}: expected {names}, got {value!r}")
    return value


def _str_map(raw: dict[str, Any], key: str, origin: str) -> dict[str, str]:
    value = raw.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(f"{origin}: {key}: expected a mapping of role names to role names")
    return dict(value)


def _str_list(raw: dict[str, Any], key: str, origin: str) -> list[str]:
    value = raw.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{origin}: {key}: expected a list of strings")
    return value


def _replica_role_function(raw: dict[str, Any], origin: str) -> ReplicaRoleFunction | None:
    if "replica_role_function" not in raw:
        return ReplicaRoleFunction()
    value = raw["replica_role_function"]
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{origin}: replica_role_function: expected a mapping with schema and owner, or null")
    unknown = sorted(set(value) - {"schema", "owner"})
    if unknown:
        raise ConfigError(f"{origin}: replica_role_function: unknown key(s) {unknown}; known keys are "
                          "['owner', 'schema']")
    schema = value.get("schema", "public")
    owner = value.get("owner")
    if not isinstance(schema, str) or not schema:
        raise ConfigError(f"{origin}: replica_role_function.schema: expected a schema name, got {schema!r}")
    if owner is not None and (not isinstance(owner, str) or not owner):
        raise ConfigError(f"{origin}: replica_role_function.owner: expected a role name, got {owner!r}")
    return ReplicaRoleFunction(schema=schema, owner=owner)


def _endpoint(value: Any, side: str, origin: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{origin}: {side}: expected a mapping of connection parameters")
    unknown = sorted(set(value) - CONNINFO_KEYS)
    if unknown:
        raise ConfigError(f"{origin}: {side}: unknown connection parameter(s) {unknown}")
    for key in ("host", "dbname", "user"):
        if not value.get(key):
            raise ConfigError(f"{origin}: {side}.{key}: missing; it is required")
    if "port" in value and not isinstance(value["port"], int):
        raise ConfigError(f"{origin}: {side}.port: expected an integer, got {value['port']!r}")
    if value.get("sslmode") not in (None, *SSLMODES):
        raise ConfigError(f"{origin}: {side}.sslmode: expected one of {list(SSLMODES)}, got {value['sslmode']!r}")
    return dict(value)
