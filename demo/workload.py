"""A write workload on the sample database (demo/schema.sql): the busy application during the migration.

    python demo/workload.py --port 55432 --connections 4 --rate 200

N connections, each its own thread, share a target rate of operations per second: new orders with lines,
status updates, quantity changes, deleted orders, key updates (a product's SKU, cascading to its order
lines; an order line's number), events inserted and moved between monthly partitions, page views,
customer profile updates. It runs until SIGTERM/SIGINT (or --duration), prints a line of counts every
--report seconds, and the totals as one JSON line at the end.

It must outlive the migration: serialization failures and deadlocks are retried, key collisions skipped,
and a refused write (read-only source at cutover, lock timeout, terminated session, server gone) backs
off and reconnects instead of crashing. The password comes from GE_SOURCE_PASSWORD.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import sourcedb  # demo/sourcedb.py, next to this script
from psycopg import errors

from great_escape import db
from great_escape.errors import ConnectError

# Retried at once: the transaction lost a race, running it again is correct.
RETRY = (errors.SerializationFailure, errors.DeadlockDetected)
# Skipped: a random key collided with an existing one (a key update onto a taken key).
SKIP = (errors.UniqueViolation, errors.ForeignKeyViolation)
# Backed off: writes refused for now (cutover made the source read-only, the freeze took a lock...).
BACKOFF = (errors.ReadOnlySqlTransaction, errors.LockNotAvailable, errors.QueryCanceled,
           errors.InsufficientPrivilege)
MAX_RETRIES = 5

Op = Callable[[psycopg.Connection[Any], random.Random, "Ids"], int]


class Ids:
    """Highest ids known, so random picks mostly hit existing rows (deleted ones are a harmless no-op)."""

    def __init__(self, conn: psycopg.Connection[Any]):
        one = lambda q: conn.execute(q).fetchone()[0] or 1  # noqa: E731
        self.customers = one("SELECT max(id) FROM shop.customers")
        self.orders = one("SELECT max(id) FROM shop.orders")
        self.products = one("SELECT count(*) FROM shop.products")
        conn.rollback()
        self.lock = threading.Lock()

    def new_order(self, order_id: int) -> None:
        with self.lock:
            self.orders = max(self.orders, order_id)


def insert_order(conn: psycopg.Connection[Any], rnd: random.Random, ids: Ids) -> int:
    row = conn.execute(
        "INSERT INTO shop.orders (customer_id, status, shipping_address) VALUES (%s, 'new', %s) RETURNING id",
        (rnd.randint(1, ids.customers), json.dumps({"street": f"{rnd.randint(1, 999)} Demo Road"})),
    ).fetchone()
    order_id = row[0]
    lines = rnd.randint(1, 4)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO shop.order_lines (order_id, line_no, sku, quantity, unit_price) "
            "SELECT %s, %s, sku, %s, price FROM shop.products ORDER BY sku OFFSET %s LIMIT 1",
            [(order_id, n, rnd.randint(1, 5), rnd.randrange(ids.products)) for n in range(1, lines + 1)])
    conn.execute("UPDATE shop.orders SET total = (SELECT coalesce(sum(line_total), 0) FROM shop.order_lines "
                 "WHERE order_id = %s) WHERE id = %s", (order_id, order_id))
    ids.new_order(order_id)
    return 1


def update_status(conn: psycopg.Connection[Any], rnd: random.Random, ids: Ids) -> int:
    return conn.execute("UPDATE shop.orders SET status = %s WHERE id = %s",
                        (rnd.choice(["paid", "shipped", "cancelled"]), rnd.randint(1, ids.orders))).rowcount


def update_quantity(conn: psycopg.Connection[Any], rnd: random.Random, ids: Ids) -> int:
    return conn.execute("UPDATE shop.order_lines SET quantity = quantity %% 9 + 1 WHERE order_id = %s",
                        (rnd.randint(1, ids.orders),)).rowcount


def delete_order(conn: psycopg.Connection[Any], rnd: random.Random, ids: Ids) -> int:
    return conn.execute("DELETE FROM shop.orders WHERE id = %s", (rnd.randint(1, ids.orders),)).rowcount


def rename_sku(conn: psycopg.Connection[Any], rnd: random.Random, ids: Ids) -> int:
    """A primary key update that cascades to order_lines (ON UPDATE CASCADE)."""
    return conn.execute(
        "UPDATE shop.products SET sku = CASE WHEN sku LIKE '%%-R' THEN left(sku, -2) ELSE sku || '-R' END "
        "WHERE sku = (SELECT sku FROM shop.products ORDER BY sku OFFSET %s LIMIT 1)",
        (rnd.randrange(ids.products),)).rowcount


def renumber_line(conn: psycopg.Connection[Any], rnd: random.Random, ids: Ids) -> int:
    """A composite key update: the old and the new key must both reach the target."""
    return conn.execute(
        "UPDATE shop.order_lines SET line_no = line_no + 100 WHERE order_id = %s AND line_no = 1",
        (rnd.randint(1, ids.orders),)).rowcount


def insert_event(conn: psycopg.Connection[Any], rnd: random.Random, ids: Ids) -> int:
    return conn.execute(
        "INSERT INTO analytics.events (occurred_at, customer_id, kind, payload) VALUES (now(), %s, %s, %s)",
        (rnd.randint(1, ids.customers), rnd.choice(["login", "view", "cart"]),
         json.dumps({"w": rnd.random()}))).rowcount


def move_event(conn: psycopg.Connection[Any], rnd: random.Random, ids: Ids) -> int:
    """Back-date a recent event by a month: the row moves to another partition (delete + insert)."""
    return conn.execute(
        "UPDATE analytics.events SET occurred_at = occurred_at - interval '31 days' "
        "WHERE (id, occurred_at) = (SELECT id, occurred_at FROM analytics.events "
        "WHERE occurred_at > now() - interval '1 day' ORDER BY id DESC OFFSET %s LIMIT 1)",
        (rnd.randrange(50),)).rowcount


def page_view(conn: psycopg.Connection[Any], rnd: random.Random, ids: Ids) -> int:
    session = f"{rnd.getrandbits(128):032x}"
    return conn.execute(
        "INSERT INTO analytics.page_views (session_id, seq, url, viewed_at, duration) "
        "SELECT %s::uuid, s, '/demo/' || s, now(), make_interval(secs => s) FROM generate_series(0, %s) s",
        (session, rnd.randint(0, 4))).rowcount


def update_profile(conn: psycopg.Connection[Any], rnd: random.Random, ids: Ids) -> int:
    return conn.execute(
        "UPDATE shop.customers SET profile = profile || jsonb_build_object('seen', now()), "
        "tags = array_append(tags[1:3], %s) WHERE id = %s",
        (rnd.choice(["a", "b", "c"]), rnd.randint(1, ids.customers))).rowcount


# (operation, weight)
MIX: list[tuple[Op, int]] = [
    (insert_order, 20), (update_status, 20), (update_quantity, 10), (delete_order, 5), (rename_sku, 3),
    (renumber_line, 3), (insert_event, 20), (move_event, 4), (page_view, 10), (update_profile, 5),
]


class _Stopped(Exception):
    """Raised in a worker when the workload stops while it waits for a connection."""


class Pacer:
    """A shared token bucket: at most `rate` operations per second across all threads."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def wait(self, stop: threading.Event) -> None:
        with self.lock:
            now = time.monotonic()
            self.next = max(self.next + self.interval, now - 1.0)  # no burst after a pause
            delay = self.next - now
        if delay > 0:
            stop.wait(delay)


class Workload:
    def __init__(self, params: dict[str, Any], connections: int, rate: float, seed: int):
        self.params = params
        self.connections = connections
        self.pacer = Pacer(rate)
        self.seed = seed
        self.stop = threading.Event()
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def _connect(self) -> tuple[psycopg.Connection[Any], Ids]:
        delay = 0.5
        while not self.stop.is_set():
            conn = None
            try:
                conn = db.connect(self.params, "demo-workload")
                return conn, Ids(conn)
            except (ConnectError, psycopg.Error):
                if conn is not None:
                    conn.close()
                self.count("reconnect_failed")
                self.stop.wait(delay)
                delay = min(delay * 2, 5.0)
        raise _Stopped

    def worker(self, number: int) -> None:
        rnd = random.Random(self.seed + number)
        ops, weights = zip(*MIX, strict=True)
        conn = None
        try:
            while not self.stop.is_set():
                if conn is None or conn.closed:
                    conn, ids = self._connect()
                self.pacer.wait(self.stop)
                op = rnd.choices(ops, weights)[0]
                if not self._run(conn, op, rnd, ids):
                    conn.close()
        except _Stopped:
            pass
        finally:
            if conn is not None:
                conn.close()

    def _run(self, conn: psycopg.Connection[Any], op: Op, rnd: random.Random, ids: Ids) -> bool:
        """One operation in its own transaction; False when the connection must be replaced."""
        for _ in range(MAX_RETRIES):
            try:
                with conn.transaction():
                    rows = op(conn, rnd, ids)
                self.count(op.__name__)
                self.count("rows", rows)
                return True
            except RETRY:
                self.count("retried")
            except SKIP:
                self.count("skipped")
                return True
            except BACKOFF:
                self.count("refused")
                self.stop.wait(1.0)
                return True
            except psycopg.OperationalError:  # terminated session, server restart, network
                self.count("disconnected")
                self.stop.wait(1.0)
                return False
        self.count("gave_up")
        return True

    def run(self, duration: float | None, report_every: float) -> Counter[str]:
        threads = [threading.Thread(target=self.worker, args=(n,), daemon=True)
                   for n in range(self.connections)]
        for t in threads:
            t.start()
        began = time.monotonic()
        while not self.stop.wait(report_every):
            if duration is not None and time.monotonic() - began >= duration:
                self.stop.set()
            with self.lock:
                ops = sum(v for k, v in self.counts.items() if k in {op.__name__ for op, _ in MIX})
                line = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
            print(f"workload: {ops} ops in {time.monotonic() - began:.0f}s ({line})",
                  file=sys.stderr, flush=True)
        for t in threads:
            t.join(timeout=30)
        self.counts["seconds"] = round(time.monotonic() - began)
        return self.counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sourcedb.add_arguments(parser)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rate", type=float, default=200.0, help="operations per second, all connections")
    parser.add_argument("--duration", type=float, help="seconds; default: until SIGTERM or SIGINT")
    parser.add_argument("--report", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.connections < 1 or args.rate <= 0:
        parser.error("--connections and --rate must be positive")
    params = sourcedb.params(args)
    workload = Workload(params, args.connections, args.rate, args.seed)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: workload.stop.set())
    counts = workload.run(args.duration, args.report)
    print(json.dumps(dict(sorted(counts.items()))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
