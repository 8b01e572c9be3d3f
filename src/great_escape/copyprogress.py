"""Progress of the chunked copy (copy.py): per table and overall, in the copy's state directory.

    <state_dir>/copy-progress.json   written every second by the coordinator, read by `great-escape copy --progress`
                                     (JSON: bytes_done, bytes_total, chunks, rows, rate, eta_seconds, per table)
    <state_dir>/progress-copy.json   the same amounts as a progress record (`great-escape progress show`)

Amounts are the planned estimates (pg_table_size of each chunk), so the total is known up front: a finished
chunk counts its estimate, a running one what it streamed so far, at most its estimate.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import progress
from .copyplan import Chunk, CopyError

PROGRESS_FILE = "copy-progress.json"
PROGRESS_PHASE = "copy"


@dataclass
class TableProgress:
    chunks: int = 0
    chunks_done: int = 0
    est_bytes: int = 0
    bytes_done: int = 0  # estimate-weighted: finished chunks count their estimate
    rows: int = 0
    bytes_copied: int = 0  # COPY stream bytes this run


class Tracker:
    """Per-table and overall progress, written to <state_dir>/copy-progress.json and the progress record
    `copy` (`great-escape progress show`). Amounts are the planned estimates (pg_table_size), so the total is
    known up front: a finished chunk counts its estimate, a running one what it streamed, at most that."""

    def __init__(self, state_dir: Path, planned: list[Chunk], done: dict[tuple[str, int], str]):
        self.state_dir = state_dir
        self.chunks = {c.label: c for c in planned}
        self.tables: dict[str, TableProgress] = {}
        self.running: dict[str, int] = {}
        self.builder: Any = None  # copybuild.Builder when the copy builds indexes
        self.started = time.time()
        for c in planned:
            tp = self.tables.setdefault(c.table, TableProgress())
            tp.chunks += 1
            tp.est_bytes += c.est_bytes
            if (c.table, c.chunk) in done:
                tp.chunks_done += 1
                tp.bytes_done += c.est_bytes
        self.start_done = sum(t.bytes_done for t in self.tables.values())
        self.write("running", restart=True)

    def start(self, label: str) -> None:
        self.running[label] = 0

    def bytes(self, label: str, n: int) -> None:
        self.running[label] = n

    def finish(self, label: str, rows: int, nbytes: int, *, loaded: bool = True) -> None:
        self.running.pop(label, None)
        if not loaded:
            return
        c = self.chunks[label]
        tp = self.tables[c.table]
        tp.chunks_done += 1
        tp.bytes_done += c.est_bytes
        tp.rows += rows
        tp.bytes_copied += nbytes

    def snapshot(self, state: str) -> dict[str, Any]:
        partial: dict[str, int] = {}
        for label, n in self.running.items():
            c = self.chunks[label]
            partial[c.table] = partial.get(c.table, 0) + min(n, c.est_bytes)
        tables = {name: dict(asdict(tp), bytes_done=tp.bytes_done + partial.get(name, 0))
                  for name, tp in sorted(self.tables.items())}
        done = sum(t["bytes_done"] for t in tables.values())
        total = sum(t.est_bytes for t in self.tables.values())
        elapsed = time.time() - self.started
        rate = (done - self.start_done) / elapsed if elapsed > 0 and done > self.start_done else None
        return {"state": state, "bytes_done": done, "bytes_total": total,
                "chunks_done": sum(t.chunks_done for t in self.tables.values()),
                "chunks_total": sum(t.chunks for t in self.tables.values()),
                "rows_done": sum(t.rows for t in self.tables.values()),
                "tables_done": sum(1 for t in self.tables.values() if t.chunks_done == t.chunks),
                "tables_total": len(self.tables), "rate": rate,
                "eta_seconds": 0.0 if state == "done" else ((total - done) / rate if rate else None),
                "running": sorted(self.running), "updated_at": time.time(), "tables": tables,
                **self._builds()}

    def _builds(self) -> dict[str, Any]:
        if self.builder is None:
            return {}
        return {"tables_built": len(self.builder.done), "tables_to_build": self.builder.total,
                "building": sorted(self.builder.running)}

    def write(self, state: str, *, restart: bool = False) -> None:
        snap = self.snapshot(state)
        progress._write_atomic(self.state_dir / PROGRESS_FILE, json.dumps(snap, indent=1) + "\n")
        progress.record(self.state_dir, PROGRESS_PHASE, snap["bytes_done"], snap["bytes_total"], state=state,
                        estimated=True, restart=restart,
                        detail=f"{snap['chunks_done']}/{snap['chunks_total']} chunks, "
                               f"{snap['tables_done']}/{snap['tables_total']} tables"
                               + (f", indexes of {snap['tables_built']}/{snap['tables_to_build']} built"
                                  if "tables_built" in snap else ""))

    @staticmethod
    def fail(state_dir: Path) -> None:
        path = state_dir / PROGRESS_FILE
        if path.exists():
            snap = json.loads(path.read_text())
            snap["state"] = "failed"
            progress._write_atomic(path, json.dumps(snap, indent=1) + "\n")
            progress.record(state_dir, PROGRESS_PHASE, snap["bytes_done"], snap["bytes_total"], state="failed",
                            estimated=True)


def read_progress(state_dir: Path) -> dict[str, Any]:
    """What `copy --progress` prints: the last progress written, or zeros before the first."""
    path = state_dir / PROGRESS_FILE
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return {"state": "pending", "bytes_done": 0, "bytes_total": 0, "chunks_done": 0, "chunks_total": 0,
                "rows_done": 0, "tables_done": 0, "tables_total": 0, "tables": {}}
    except ValueError as exc:
        raise CopyError(f"{path} is unreadable ({exc}); it is rewritten every second while the copy runs") from exc
