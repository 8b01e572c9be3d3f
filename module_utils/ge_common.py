"""Shared by every great-escape module: connection and configuration options, engine import guard,
error reporting."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    import great_escape
    from great_escape.errors import AccessError, GreatEscapeError, PreflightError, SequenceError, VerifyMismatch

    ENGINE_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - reported by require_engine()
    great_escape = None
    ENGINE_IMPORT_ERROR = traceback.format_exc()

# The modules and the engine are released together; a mismatch means a stale install on the host.
ENGINE_VERSION = "0.1.0"

_ENDPOINT = dict(
    host=dict(type="str", default="localhost"),
    port=dict(type="int", default=5432),
    dbname=dict(type="str", required=True),
    user=dict(type="str", required=True),
    password=dict(type="str", no_log=True),
    passfile=dict(type="path"),
    sslmode=dict(type="str", choices=["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]),
    sslrootcert=dict(type="path"),
    sslcert=dict(type="path"),
    sslkey=dict(type="path", no_log=False),
)


def connection_argument_spec(*sides: str, scope: bool = False, **options: Any) -> dict[str, Any]:
    """Argument spec with one endpoint dict per side, with scope=True the migration's scope (options
    schemas and exclude_tables; each module documents what they select for it), then the module's own
    options, e.g. connection_argument_spec('source', 'target', scope=True, tables=dict(type='list'))."""
    spec = {side: dict(type="dict", required=True, options=dict(_ENDPOINT)) for side in sides}
    if scope:
        spec.update(
            schemas=dict(type="list", elements="str", default=[]),
            exclude_tables=dict(type="list", elements="str", default=[]),
        )
    spec.update(options)
    return spec


def config_argument_spec(**options: Any) -> dict[str, Any]:
    """Argument spec of a module that works from the engine configuration file (options config and
    direction, documented by the ge_config fragment), then the module's own options."""
    spec = dict(
        config=dict(type="path", required=True),
        direction=dict(type="str", choices=["forward", "reverse"], default="forward"),
    )
    spec.update(options)
    return spec


def engine_module(argument_spec: dict[str, Any], **kwargs: Any) -> AnsibleModule:
    """The AnsibleModule of a great-escape module (check mode supported), once the engine is known to be
    importable and of the modules' version: the engine may be imported after this call."""
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True, **kwargs)
    require_engine(module)
    return module


def endpoint(params: dict[str, Any]) -> dict[str, Any]:
    """libpq parameters from a module's endpoint option, without unset values."""
    return {k: v for k, v in params.items() if v is not None}


def endpoints(module: AnsibleModule, *sides: str) -> tuple[dict[str, Any], ...]:
    """libpq parameters of the module's endpoint options, in the order of `sides`."""
    return tuple(endpoint(module.params[side]) for side in sides)


def load_config(module: AnsibleModule, as_written: bool = False) -> Any:
    """The engine configuration of the module's config option, as the sync of its direction option sees it
    (sides swapped for reverse), or `as_written` (forward). A missing or invalid file fails the module with the
    engine's message."""
    from great_escape import config

    reverse = not as_written and module.params.get("direction") == "reverse"
    with engine_errors(module):
        return config.load(module.params["config"], reverse=reverse)


def require_engine(module: AnsibleModule) -> None:
    if great_escape is None:
        module.fail_json(msg=missing_required_lib("great_escape"), exception=ENGINE_IMPORT_ERROR)
    if great_escape.__version__ != ENGINE_VERSION:
        module.fail_json(
            msg=f"great_escape engine {great_escape.__version__} does not match the modules ({ENGINE_VERSION}); "
            "install the engine from this checkout on the host that runs the module"
        )


@contextmanager
def engine_errors(module: AnsibleModule, result: dict[str, Any] | None = None) -> Iterator[None]:
    """Fail the module through fail_from() with any exception raised in the block, reporting `result`
    as it stands then (the caller may fill it in the block). exit_json/fail_json pass through."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - fail_from tells engine errors from unexpected ones
        fail_from(module, exc, **(result or {}))


def fail_from(module: AnsibleModule, exc: Exception, **result: Any) -> None:
    """Report an engine error as one sentence plus structured keys; a traceback only if unexpected."""
    if isinstance(exc, (AccessError, PreflightError, SequenceError)):
        module.fail_json(msg=str(exc), problems=exc.problems, **result)
    if isinstance(exc, VerifyMismatch):
        module.fail_json(msg=str(exc), diffs=exc.diffs, **result)
    if isinstance(exc, GreatEscapeError):
        module.fail_json(msg=str(exc), sqlstate=exc.sqlstate, **result)
    module.fail_json(msg=f"unexpected error: {exc}", exception=traceback.format_exc(), **result)
