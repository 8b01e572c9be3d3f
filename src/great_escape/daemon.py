"""The sync process: batches in a loop, woken by NOTIFY or the poll interval, reconnecting by itself.

    great-escape sync --config FILE [--reverse] [--drain] [--max-lag SECONDS]

--drain applies everything pending and exits; otherwise it keeps up until SIGTERM/SIGINT, finishing the
batch in hand first. One decision line per batch goes to the log. Only one sync per migration and
direction runs at a time (an advisory lock on the side changes come from).
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from . import apply, capture, config, db, state
from .errors import ConnectError, SyncError

log = logging.getLogger("great_escape.sync")

RECONNECT_MAX_DELAY = 30.0


def check_live(original_target: psycopg.Connection[Any], name: str, direction: str) -> None:
    """Refuse to sync from a side that is not live: after cutover only the reverse sync may run."""
    cut = state.read_cutover(original_target, name)
    if cut["live"] != state.sending_side(direction):
        flow = "target -> source (the reverse sync)" if cut["live"] == "target" else "source -> target (forward)"
        raise SyncError(f"the {direction} sync of {name} does not run: the {cut['live']} is live since "
                        f"{cut['changed_at']}, so changes flow {flow}")


def direction_of(reverse: bool) -> str:
    return "reverse" if reverse else "forward"


class SyncProcess:
    def __init__(self, cfg: config.Config, *, direction: str):
        self.cfg = cfg
        self.direction = direction
        self.stopping = False
        self.reload_interval = 30.0  # seconds between re-reads of the captured tables and their columns
        self._conns: list[psycopg.Connection[Any]] = []
        self._kick_refused = False  # warned once that this sync user may not mark itself waiting

    # ------------------------------------------------------------ connections

    def _open(self) -> tuple[apply.Applier, psycopg.Connection[Any]]:
        purpose = f"sync {self.cfg.name} {self.direction}"
        source = db.connect(self.cfg.source, purpose)
        self._conns = [source]
        # Autocommit: every target transaction is an explicit one (the batch), so no statement outside a batch
        # can leave a transaction open that would turn the next batch into an uncommitted savepoint.
        target = db.connect(self.cfg.target, purpose, autocommit=True)
        self._conns.append(target)
        listener = db.connect(self.cfg.source, purpose + " listen", autocommit=True)
        self._conns.append(listener)
        lock = listener.execute("SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext(%s))",
                                (f"great-escape sync {self.cfg.name} {self.direction}",)).fetchone()
        if not lock or not lock[0]:
            raise SyncError(f"another {self.direction} sync of {self.cfg.name} is running against "
                            f"{db.describe(self.cfg.source)}; stop it first (one sync per direction)")
        check_live(target if self.direction == "forward" else source, self.cfg.name, self.direction)
        listener.execute(f"LISTEN {capture.KICK_CHANNEL}")
        method = db.set_replica_role(target, self.cfg.target_replica_role_function)
        state.ensure(target)
        pairs = apply.load_pairs(source, target)
        if not pairs:
            raise SyncError(f"no captured tables on {db.describe(self.cfg.source)}; run the capture phase first")
        source.commit()
        log.info("connected: %s -> %s, %d tables, replica role by %s", db.describe(self.cfg.source),
                 db.describe(self.cfg.target), len(pairs), method)
        return apply.Applier(source, target, pairs, name=self.cfg.name, direction=self.direction,
                             batch_size=self.cfg.batch_size), listener

    def _close(self) -> None:
        for conn in self._conns:
            try:
                conn.close()
            except psycopg.Error:
                pass
        self._conns = []

    # ------------------------------------------------------------ loop

    def run(self, *, drain: bool = False) -> int:
        """Run until stopped (or, with drain, until nothing is pending). Returns the deltas applied."""
        total = 0
        delay = 1.0
        while not self.stopping:
            try:
                applier, listener = self._open()
                delay = 1.0
                total += self._loop(applier, listener, drain)
                return total
            except (psycopg.OperationalError, ConnectError) as exc:
                if drain and isinstance(exc, ConnectError):
                    raise
                log.warning("connection lost (%s); reconnecting in %.0fs", _first_line(exc), delay)
                self._close()
                self._sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
            finally:
                self._close()
        return total

    def _loop(self, applier: apply.Applier, listener: psycopg.Connection[Any], drain: bool) -> int:
        total = 0
        checked = time.monotonic()
        while not self.stopping:
            started = time.monotonic()
            result = applier.run_batch()
            total += result.deltas
            if result.deltas:
                log.info("batch: %d deltas -> %d rows in %d table(s) in %.2fs, %.0f deltas/s, %s",
                         result.deltas, result.rows, len(result.per_table), time.monotonic() - started,
                         applier.rate(), "more pending" if result.more else "caught up")
            if result.more:
                continue
            if drain and not result.deltas:
                return total
            if not result.deltas:
                self._wait_for_changes(applier, listener)
            if time.monotonic() - checked > self.reload_interval:  # new or vanished tables, changed columns
                applier.pairs = apply.load_pairs(applier.source, applier.target)
                applier.source.rollback()
                checked = time.monotonic()
        return total

    def _wait_for_changes(self, applier: apply.Applier, listener: psycopg.Connection[Any]) -> None:
        """Announce that this sync waits (writers kick only then), look once more for changes committed before
        the announcement was visible to them, then wait. A writer whose transaction read the table before the
        announcement and commits after the second look is found at the next poll: poll_interval at most."""
        sync = f"{self.cfg.name} {self.direction}"
        try:
            capture.set_waiting(listener, sync, True)
        except psycopg.errors.InsufficientPrivilege as exc:
            # Only sync users may announce themselves (capture.grant_sync): without it, no writer kicks this sync.
            if not self._kick_refused:
                log.warning("%s may not mark itself waiting in %s.%s (%s), so writers do not wake it: it "
                            "polls every %.1fs instead. Grant it the sync's rights on %s (capture.grant_sync, "
                            "done by the capture and cutover phases)", listener.info.user, capture.SCHEMA,
                            capture.WAITING, exc.diag.message_primary, self.cfg.poll_interval, capture.SCHEMA)
                self._kick_refused = True
            if not applier.has_work():
                self._wait(listener)
            return
        try:
            if not applier.has_work():
                self._wait(listener)
        finally:
            capture.set_waiting(listener, sync, False)

    def _wait(self, listener: psycopg.Connection[Any]) -> None:
        """Sleep until a kick arrives or the poll interval passes; consume all queued kicks."""
        fd = listener.pgconn.socket
        ready, _, _ = select.select([fd], [], [], self.cfg.poll_interval)
        if ready:
            listener.pgconn.consume_input()
            while listener.pgconn.notifies() is not None:
                pass

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(0.2)

    def stop(self, *_: Any) -> None:
        self.stopping = True


def add_parser(sub: Any) -> None:
    add_supervise_parser(sub)
    parser = sub.add_parser("sync", help="apply captured changes to the other side")
    parser.add_argument("--config", required=True)
    parser.add_argument("--reverse", action="store_true", help="target -> source (after cutover)")
    parser.add_argument("--drain", action="store_true", help="apply everything pending, then exit")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    cfg = config.load(args.config, reverse=args.reverse)
    proc = SyncProcess(cfg, direction=direction_of(args.reverse))
    signal.signal(signal.SIGTERM, proc.stop)
    signal.signal(signal.SIGINT, proc.stop)
    total = proc.run(drain=args.drain)
    log.info("sync stopped after %d deltas", total)
    return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------- supervisor

def pid_and_log_files(cfg: config.Config, direction: str) -> tuple[Path, Path]:
    return cfg.state_dir / f"sync-{direction}.pid", cfg.state_dir / f"sync-{direction}.log"


def running_pid(pidfile: Path) -> int | None:
    """The supervisor's pid if it is alive and is a supervisor: after a reboot the file names a pid that another
    process may hold now (a unit's ExecCondition would then never start the sync again)."""
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"supervise" in argv and b"run" in argv else None


def supervise(cfg_path: str, cfg: config.Config, direction: str) -> int:
    """Run `great-escape sync` and start it again whenever it dies, until SIGTERM."""
    pidfile, _ = pid_and_log_files(cfg, direction)
    pidfile.write_text(str(os.getpid()))
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True
        if child and child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    delay = 1.0
    cmd = [sys.executable, "-m", "great_escape.cli", "sync", "--config", cfg_path]
    if direction == "reverse":
        cmd.append("--reverse")
    try:
        while not stopping:
            started = time.monotonic()
            child = subprocess.Popen(cmd)
            code = child.wait()
            if stopping:
                break
            delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, 60.0)
            log.warning("sync exited with %s; starting it again in %.0fs", code, delay)
            end = time.monotonic() + delay
            while not stopping and time.monotonic() < end:
                time.sleep(0.2)
    finally:
        pidfile.unlink(missing_ok=True)
    return 0


def start_detached(cfg_path: str, cfg: config.Config, direction: str) -> str:
    """Start the supervisor in its own session, logging to the state dir.

    Returns "started", "already running", or "not started: <why>" when the sending side is not live.
    """
    pidfile, logfile = pid_and_log_files(cfg, direction)
    if running_pid(pidfile):
        return "already running"
    try:
        with db.connect(cfg.target, f"supervise {cfg.name}", autocommit=True) as conn:
            check_live(conn, cfg.name, direction)
    except SyncError as exc:
        return f"not started: {exc}"
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "great_escape.cli", "supervise", "run", "--config", cfg_path]
    if direction == "reverse":
        cmd.append("--reverse")
    with open(logfile, "ab") as out:
        subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not running_pid(pidfile):
        time.sleep(0.1)
    if not running_pid(pidfile):
        raise SyncError(f"the {direction} sync supervisor did not start; see {logfile}")
    return "started"


def stop_detached(cfg: config.Config, direction: str, timeout: float = 60) -> bool:
    """SIGTERM the supervisor (which stops the sync after its batch); False if it was not running."""
    pidfile, logfile = pid_and_log_files(cfg, direction)
    pid = running_pid(pidfile)
    if not pid:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_pid(pidfile) is None:
            return True
        time.sleep(0.2)
    raise SyncError(f"the {direction} sync (pid {pid}) did not stop within {timeout:.0f}s; see {logfile}")


def add_supervise_parser(sub: Any) -> None:
    parser = sub.add_parser("supervise", help="run the sync in the background, restarted if it dies")
    parser.add_argument("action", choices=["start", "stop", "status", "run"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--reverse", action="store_true")
    parser.set_defaults(func=_supervise_main)


def _supervise_main(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    direction = direction_of(args.reverse)
    pidfile, logfile = pid_and_log_files(cfg, direction)
    if args.action == "run":
        return supervise(args.config, cfg, direction)
    if args.action == "start":
        print(start_detached(args.config, cfg, direction), f"(log: {logfile})")
    elif args.action == "stop":
        print("stopped" if stop_detached(cfg, direction) else "not running")
    else:
        pid = running_pid(pidfile)
        print(f"running (pid {pid}, log {logfile})" if pid else "not running")
        return 0 if pid else 3
    return 0
