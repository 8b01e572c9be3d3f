"""Progress of the long phases (dump, transfer, restore), one JSON file per phase in a state dir.

The roles record a sample at every poll (`great-escape progress record ...`), the operator reads
all phases with `great-escape progress show --state-dir DIR`. A record holds the absolute amounts;
rate and ETA are derived from the amount done since this run started, so a resumed phase does not
claim the bytes of its earlier run as speed.

    <state_dir>/progress-dump.json  {"phase": "dump", "done": 1200, "total": 5000, "unit": "bytes", ...}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

# The order `show` lists phases in; phases not named here follow alphabetically.
PHASE_ORDER = ("preflight", "capture", "dump", "transfer", "restore", "sync", "verify", "cutover")
STATES = ("pending", "running", "done", "failed")
UNITS = ("bytes", "tables", "rows", "items")


@dataclass(frozen=True)
class Progress:
    phase: str
    done: int
    total: int | None  # None: unknown; an estimate is flagged by `estimated`
    unit: str
    state: str
    started_at: float
    updated_at: float
    start_done: int = 0  # `done` when this run started: rate counts only this run's work
    estimated: bool = False
    detail: str = ""

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(self.done / self.total, 1.0)

    @property
    def rate(self) -> float | None:
        """Units per second during this run, None before there is anything to measure."""
        elapsed = self.updated_at - self.started_at
        moved = self.done - self.start_done
        if elapsed <= 0 or moved <= 0:
            return None
        return moved / elapsed

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the current rate; 0 when done, None when it cannot be told."""
        if self.state == "done":
            return 0.0
        rate = self.rate
        if rate is None or self.total is None:
            return None
        return max(self.total - self.done, 0) / rate


def path_for(state_dir: Path, phase: str) -> Path:
    if not phase or "/" in phase or phase.startswith("."):
        raise ConfigError(f"progress phase name {phase!r} is not usable as a file name; use e.g. 'dump'")
    return state_dir / f"progress-{phase}.json"


def load(state_dir: Path, phase: str) -> Progress | None:
    path = path_for(state_dir, phase)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"progress file {path} is unreadable ({exc}); delete it, the next poll rewrites it") from exc
    return Progress(**raw)


def load_all(state_dir: Path) -> list[Progress]:
    records = [p for p in (load(state_dir, f.name[len("progress-"):-len(".json")])
                           for f in sorted(state_dir.glob("progress-*.json"))) if p is not None]
    order = {name: i for i, name in enumerate(PHASE_ORDER)}
    return sorted(records, key=lambda p: (order.get(p.phase, len(order)), p.phase))


def record(state_dir: Path, phase: str, done: int, total: int | None, unit: str = "bytes", *,
           state: str = "running", detail: str = "", estimated: bool = False,
           restart: bool = False, now: float | None = None) -> Progress:
    """Write one sample of `phase`. A sample after a finished or failed run (or with `restart`)
    starts a new run: started_at and start_done are reset so the rate is this run's own."""
    if state not in STATES:
        raise ConfigError(f"progress state {state!r} is not one of {list(STATES)}")
    if unit not in UNITS:
        raise ConfigError(f"progress unit {unit!r} is not one of {list(UNITS)}")
    if done < 0 or (total is not None and total < 0):
        raise ConfigError(f"progress of {phase}: done ({done}) and total ({total}) must not be negative")
    now = time.time() if now is None else now
    previous = load(state_dir, phase)
    new_run = restart or previous is None or previous.state in ("done", "failed", "pending")
    if new_run:
        current = Progress(phase, done, total, unit, state, now, now, done, estimated, detail)
    else:
        assert previous is not None
        current = replace(previous, done=done, total=total, unit=unit, state=state, updated_at=now,
                          estimated=estimated, detail=detail)
    _write_atomic(path_for(state_dir, phase), json.dumps(asdict(current), sort_keys=True) + "\n")
    return current


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def directory_size(path: Path) -> int:
    """Bytes in the regular files under `path` (apparent size, as the dump and rsync see it)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # a temporary file renamed while we walk
                continue
    return total


def format_amount(amount: float, unit: str) -> str:
    if unit != "bytes":
        return f"{amount:,.0f} {unit}"
    value = float(amount)
    for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or suffix == "TiB":
            return f"{value:.0f} {suffix}" if suffix == "B" else f"{value:.1f} {suffix}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def format_line(p: Progress) -> str:
    """One line, e.g. `dump      running  1.2 GiB / ~3.4 GiB (35.3%)  12.3 MiB/s  ETA 0:03:10  data`."""
    amount = format_amount(p.done, p.unit)
    if p.total is not None:
        amount += f" / {'~' if p.estimated else ''}{format_amount(p.total, p.unit)}"
        if p.fraction is not None:
            amount += f" ({p.fraction * 100:.1f}%)"
    rate = p.rate
    speed = f"{format_amount(rate, p.unit)}/s" if rate is not None else "-"
    eta = p.eta_seconds
    if p.state == "done":
        timing = f"took {format_duration(p.updated_at - p.started_at)}"
    else:
        timing = f"ETA {format_duration(eta)}" if eta is not None else "ETA unknown"
    parts = [f"{p.phase:<9}", f"{p.state:<8}", amount, speed, timing]
    if p.detail:
        parts.append(p.detail)
    return "  ".join(parts)


def _cmd_show(args: argparse.Namespace) -> int:
    records = load_all(Path(args.state_dir))
    if args.json:
        rows = [dict(asdict(p), rate=p.rate, eta_seconds=p.eta_seconds) for p in records]
        print(json.dumps(rows, indent=2))
    elif not records:
        print(f"no progress recorded in {args.state_dir}")
    else:
        now = time.time()
        for p in records:
            # A record that stays `running` after whatever wrote it stopped (an interrupted playbook) shows its age.
            age = f"  last sample {format_duration(now - p.updated_at)} ago" if p.state == "running" else ""
            print(format_line(p) + age)
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    p = record(Path(args.state_dir), args.phase, args.done, args.total, args.unit, state=args.state,
               detail=args.detail, estimated=args.estimated, restart=args.restart)
    print(format_line(p))
    return 0


def _cmd_measure(args: argparse.Namespace) -> int:
    p = record(Path(args.state_dir), args.phase, directory_size(Path(args.path)), args.total, "bytes",
               state=args.state, detail=args.detail, estimated=args.estimated, restart=args.restart)
    print(format_line(p))
    return 0


def _nonnegative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("progress", help="show or record the progress of dump, transfer, restore")
    sub = parser.add_subparsers(dest="progress_command", required=True)

    show = sub.add_parser("show", help="one line per phase: done/total, rate, ETA")
    show.add_argument("--state-dir", required=True)
    show.add_argument("--json", action="store_true", help="machine-readable, with rate and eta_seconds")
    show.set_defaults(func=_cmd_show)

    def sample_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-dir", required=True)
        p.add_argument("--phase", required=True)
        p.add_argument("--total", type=_nonnegative, help="total amount; omit when unknown")
        p.add_argument("--estimated", action="store_true", help="the total is an estimate")
        p.add_argument("--state", choices=STATES, default="running")
        p.add_argument("--detail", default="", help="what is running now, e.g. the dump section")
        p.add_argument("--restart", action="store_true", help="start a new run (resets rate and start time)")

    rec = sub.add_parser("record", help="record an amount done")
    sample_options(rec)
    rec.add_argument("--done", type=_nonnegative, required=True)
    rec.add_argument("--unit", choices=UNITS, default="bytes")
    rec.set_defaults(func=_cmd_record)

    measure = sub.add_parser("measure", help="record the size of a directory as the bytes done")
    sample_options(measure)
    measure.add_argument("--path", required=True)
    measure.set_defaults(func=_cmd_measure)


if __name__ == "__main__":  # pragma: no cover - the console script is `great-escape progress`
    from .cli import main

    sys.exit(main(["progress", *sys.argv[1:]]))
