"""Shared by every great-escape module: connection options, engine import guard, error reporting."""

from __future__ import annotations

import traceback
from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    import great_escape
    from great_escape.errors import GreatEscapeError, PreflightError, SequenceError, VerifyMismatch

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
    sslmode=dict(type="str"),
    sslrootcert=dict(type="path"),
)


def connection_argument_spec(*sides: str) -> dict[str, Any]:
    """Argument spec with one endpoint dict per side, e.g. connection_argument_spec('source', 'target')."""
    return {side: dict(type="dict", required=True, options=dict(_ENDPOINT)) for side in sides}


def endpoint(params: dict[str, Any]) -> dict[str, Any]:
    """libpq parameters from a module's endpoint option, without unset values."""
    return {k: v for k, v in params.items() if v is not None}


def require_engine(module: AnsibleModule) -> None:
    if great_escape is None:
        module.fail_json(msg=missing_required_lib("great_escape"), exception=ENGINE_IMPORT_ERROR)
    if great_escape.__version__ != ENGINE_VERSION:
        module.fail_json(
            msg=f"great_escape engine {great_escape.__version__} does not match the modules ({ENGINE_VERSION}); "
            "install the engine from this checkout on the host that runs the module"
        )


def fail_from(module: AnsibleModule, exc: Exception, **result: Any) -> None:
    """Report an engine error as one sentence plus structured keys; a traceback only if unexpected."""
    if isinstance(exc, (PreflightError, SequenceError)):
        module.fail_json(msg=str(exc), problems=exc.problems, **result)
    if isinstance(exc, VerifyMismatch):
        module.fail_json(msg=str(exc), diffs=exc.diffs, **result)
    if isinstance(exc, GreatEscapeError):
        module.fail_json(msg=str(exc), sqlstate=exc.sqlstate, **result)
    module.fail_json(msg=f"unexpected error: {exc}", exception=traceback.format_exc(), **result)
