"""Exceptions of the engine. Each message names the object at fault and the fix."""

from __future__ import annotations


class GreatEscapeError(Exception):
    """Base of every error the engine raises on purpose."""

    sqlstate: str | None = None


class ConfigError(GreatEscapeError):
    """The configuration is missing something or holds a wrong value."""


class ConnectError(GreatEscapeError):
    """A database could not be reached or refused the login."""


class PreflightError(GreatEscapeError):
    """Preflight found problems; `problems` lists every one of them."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message)
        self.problems = problems


class KeylessTableError(PreflightError):
    """Tables without a primary key or unique index on NOT NULL columns."""

    def __init__(self, tables: list[str]):
        super().__init__(
            f"{len(tables)} table(s) have no primary key and no unique index on NOT NULL columns: "
            f"{', '.join(tables)}. Add a primary key, or list them in keyless_tables to copy them "
            "whole at cutover.",
            tables,
        )
        self.tables = tables


class AccessError(GreatEscapeError):
    """Roles or privileges cannot be carried over to the other side; `problems` names each and its fix."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message + ": " + "; ".join(problems))
        self.problems = problems


class CaptureError(GreatEscapeError):
    """Installing or removing change capture failed."""


class RestoreError(GreatEscapeError):
    """The restore cannot go on; the message names the object and the fix."""


class SequenceError(GreatEscapeError):
    """Sequences cannot be copied; `problems` names every offending sequence."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message)
        self.problems = problems


class SyncError(GreatEscapeError):
    """The sync could not apply a batch."""


class VerifyMismatch(GreatEscapeError):
    """Source and target differ; `diffs` holds the differences per table."""

    def __init__(self, message: str, diffs: list[dict[str, object]]):
        super().__init__(message)
        self.diffs = diffs
