"""Chunks read on the source host and compressed there (`copy --source-ssh`): for a slow link between the source
and the replication host.

libpq cannot compress, so a chunk read over the network crosses the link at its full size (text or binary COPY).
With a reader on the source host, each chunk is read there by psql, compressed there (zstd, or gzip, which every
Debian system has), carried to the replication host by ssh and decompressed here on its way into the target's
COPY: the link carries the compressed bytes (the benchmark's tables: ~1/8), as a compressed pg_dump would.

Nothing is installed on the source host but Debian packages (postgresql-client, zstd) and nothing stays there:
one ssh session per chunk runs a POSIX shell script, psql reads the chunk in the coordinator's exported snapshot
(`SET TRANSACTION SNAPSHOT`), so invariant 1 holds as for a chunk read over libpq. The password travels on ssh's
stdin into a 0600 file that lives as long as the chunk's psql (never in an argv or an environment). A failing
read (ssh, psql, the compressor, a stream cut short) fails the chunk before its target transaction commits.
"""

from __future__ import annotations

import shlex
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zstandard
from psycopg import sql
from psycopg.conninfo import make_conninfo

from . import db
from .apply import REPORT_SECONDS
from .copyplan import CopyError

COMPRESSORS = {"zstd": "zstd -1 -q -c", "gzip": "gzip -1 -c"}  # the fastest levels: the link is the slow part
MIN_BYTES = 8 << 20  # default: chunks estimated smaller are read over libpq
READ_BYTES = 1 << 20  # compressed bytes per read from ssh
SSH_VALUE_OPTIONS = frozenset("BbcDEeFIiJLlmOoPpQRSWw")  # ssh's options that take a value (ssh(1))
STDERR_CHARS = 2000  # of the source host's error output, in an error message
# What the reader's psql may take from the source endpoint: connection and TLS settings, never the password.
REMOTE_KEYS = ("host", "hostaddr", "port", "dbname", "user", "sslmode", "sslrootcert", "sslcert", "sslkey",
               "sslcrl", "connect_timeout")
TLS_KEYS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl")

# POSIX sh on the source host. $1: compressor command, $2: libpq conninfo, $3: PGOPTIONS, $4: application name,
# then the statements. psql's exit status is kept in a file: a pipeline's status is the compressor's, and
# `set -o pipefail` is not POSIX. Exit 127: a program is missing.
SCRIPT = r"""
for p in psql "${1%% *}"; do
  command -v "$p" >/dev/null 2>&1 || { echo "$p is not installed on the source host $(uname -n)" >&2; exit 127; }
done
umask 077
f=$(mktemp) || exit 1
trap 'rm -f "$f" "$f.rc"' EXIT
trap 'exit 129' HUP INT TERM
cat >"$f" || exit 1
compress=$1 conninfo=$2 options=$3 app=$4
shift 4
set -- -X -q -v ON_ERROR_STOP=1 -d "$conninfo" "$@"
{ PGPASSFILE=$f PGOPTIONS=$options PGAPPNAME=$app psql "$@"; echo $? >"$f.rc"; } | $compress || exit 1
exit "$(cat "$f.rc")"
"""


@dataclass(frozen=True)
class SshReader:
    """Reads chunks on the source host. `ssh`: the command and destination that run a shell command there, e.g.
    ["ssh", "-i", KEY, "-o", "BatchMode=yes", "-p", "22", "deploy@db01"]; `params`: the source endpoint of the
    configuration; `pghost`: how psql reaches the database from the source host itself (e.g. its socket
    directory), then without the endpoint's TLS settings; None: as the engine does, TLS files at the same paths;
    `min_bytes`: smaller chunks are read over libpq (`wanted`)."""

    ssh: Sequence[str]
    params: Mapping[str, Any]
    compression: str = "zstd"
    pghost: str | None = None
    min_bytes: int = MIN_BYTES
    application_name: str = "great-escape copy reader"

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSORS:
            raise CopyError(f"source compression {self.compression!r} is not one of {sorted(COMPRESSORS)}")
        if not self.ssh:
            raise CopyError("the source host's ssh command is empty")

    def wanted(self, est_bytes: int) -> bool:
        """Whether a chunk of this estimated size is read on the source host: an ssh session costs a few round
        trips and ~0.1 s of CPU, more than compressing a small table saves."""
        return est_bytes >= self.min_bytes

    def where(self) -> str:
        return f"the source host ({_destination(self.ssh)})"

    def command(self, statements: Sequence[str]) -> list[str]:
        """The ssh argv: the script and its arguments as one shell-quoted remote command."""
        remote = {k: v for k, v in self.params.items() if k in REMOTE_KEYS and v not in (None, "")}
        if self.pghost:
            remote = {k: v for k, v in remote.items() if k not in (*TLS_KEYS, "hostaddr")} | {"host": self.pghost}
        args = [COMPRESSORS[self.compression], make_conninfo(**remote), db.session_options(),
                self.application_name, *(a for s in statements for a in ("-c", s))]
        return [*self.ssh, shlex.join(["sh", "-c", SCRIPT, "great-escape-reader", *args])]

    def read(self, password: str | None, statements: Sequence[str], write: Callable[[bytes], Any],
             report: Callable[[int], None] | None = None) -> tuple[int, int]:
        """Run `statements` (the last a COPY TO STDOUT) on the source host; every decompressed block goes to
        `write`. Returns (bytes written, compressed bytes that crossed the link); raises CopyError, naming the
        source host and its error output, unless the reader exited 0 and its stream ended complete."""
        decompressor = zstandard.ZstdDecompressor().decompressobj() if self.compression == "zstd" \
            else zlib.decompressobj(wbits=31)
        written = wire = 0
        last = time.monotonic()
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(self.command(statements), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err)
            try:
                assert proc.stdin is not None and proc.stdout is not None
                try:
                    if password is not None:
                        proc.stdin.write(db.pgpass_line(dict.fromkeys(("host", "port", "dbname", "user"), "*")
                                                        | {"password": password}).encode())
                    proc.stdin.close()
                except BrokenPipeError:  # it ended before reading: its exit status and stderr say why
                    pass
                while block := proc.stdout.read1(READ_BYTES):
                    wire += len(block)
                    try:
                        data = decompressor.decompress(block)
                    except (zstandard.ZstdError, zlib.error) as exc:
                        raise CopyError(f"what {self.where()} sent is not a {self.compression} stream ({exc}): a "
                                        "login script of the ssh user may write to standard output; make it quiet "
                                        "for non-interactive shells") from exc
                    if data:
                        write(data)
                        written += len(data)
                    if report is not None and time.monotonic() - last >= REPORT_SECONDS:
                        report(written)
                        last = time.monotonic()
                rc = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            err.seek(0)
            stderr = err.read().decode(errors="replace").strip()[-STDERR_CHARS:]
        if rc != 0:
            raise CopyError(self._failure(rc, stderr))
        if not decompressor.eof:
            raise CopyError(f"the {self.compression} stream from {self.where()} ended before its end "
                            f"({wire} bytes received){': ' + stderr if stderr else ''}")
        return written, wire

    def check(self, password: str | None, snapshot: str) -> None:
        """One trivial read in the snapshot, before any chunk: ssh, the programs, the login and the snapshot
        work, or the copy stops here with what is wrong."""
        out = bytearray()
        self.read(password, statements(snapshot, "COPY (SELECT 1) TO STDOUT"), out.extend)
        if bytes(out) != b"1\n":
            raise CopyError(f"the reader on {self.where()} returned {bytes(out)[:200]!r} for a one-row COPY")

    def _failure(self, rc: int, stderr: str) -> str:
        what = f"reading on {self.where()} failed (exit {rc})"
        detail = f": {stderr}" if stderr else ""
        if rc == 255:
            fix = ("ssh could not log in: check the migration's key and the pinned host key (roles/ssh_trust, "
                   "ge_copy_read_on_source), or copy without it")
        elif rc == 127:
            fix = (f"install the Debian package on the source host (postgresql-client for psql, {self.compression} "
                   f"for {self.compression}), or set ge_copy_source_compression: gzip (always installed)")
        else:
            fix = ("psql on the source host could not read the chunk: check that it reaches the database from there "
                   "(restore_copy_source_pghost) with the copy's login")
        return f"{what}{detail}. {fix}"


def statements(snapshot: str, copy: str) -> list[str]:
    """A read-only transaction in the coordinator's exported snapshot, then the COPY."""
    return ["BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            f"SET TRANSACTION SNAPSHOT {sql.quote(snapshot)}", copy]


def from_spec(spec: Mapping[str, Any], params: Mapping[str, Any]) -> SshReader:
    """The reader of the copy's --source-ssh options (passed to workers as a dict)."""
    return SshReader(ssh=list(spec["ssh"]), params=params, compression=spec.get("compression", "zstd"),
                     pghost=spec.get("pghost") or None, min_bytes=int(spec.get("min_bytes", MIN_BYTES)))


def _destination(argv: Sequence[str]) -> str:
    """The destination in an ssh command line: its first argument that is neither an option nor an option's value
    (`-p 22`, `-o X=y`; a value may be attached: `-p22`)."""
    args = iter(argv[1:])
    for arg in args:
        if not arg.startswith("-") or arg == "-":
            return arg
        takes = next((i for i, ch in enumerate(arg[1:], 1) if ch in SSH_VALUE_OPTIONS), None)
        if takes == len(arg) - 1:
            next(args, None)
    return argv[-1]


