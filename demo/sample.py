"""Load the demo's sample database (demo/schema.sql) into the source, sized by --scale.

    python demo/sample.py --port 55432 --scale 1      # a few hundred MB: the demo
    python demo/sample.py --port 55432 --scale 0.01   # a few MB: tests

Rows are made by generate_series in the server (fast); values are deterministic functions of the row
number, so two loads at the same scale hold the same data (timestamps aside, which follow now()).
The password comes from GE_SOURCE_PASSWORD (default: the local inventory's).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sourcedb  # demo/sourcedb.py, next to this script
from psycopg import sql

from great_escape import db

SCHEMA_FILE = Path(__file__).with_name("schema.sql")
SCHEMAS = ("shop", "analytics")

# Rows at scale 1; about 350 MB of tables and indexes.
ROWS = {"customers": 100_000, "products": 10_000, "orders": 500_000, "events": 1_000_000,
        "page_views": 500_000}
LINES_PER_ORDER = 3

LOAD = [
    ("shop.customers", """
INSERT INTO shop.customers (email, name, tags, profile, created_at)
SELECT 'customer' || g || '@example.com', 'Customer ' || g,
       ARRAY['tier' || (g %% 3), CASE WHEN g %% 7 = 0 THEN 'vip' ELSE 'regular' END],
       jsonb_build_object('newsletter', g %% 2 = 0, 'locale', (ARRAY['en', 'de', 'fr', 'ja'])[1 + g %% 4]),
       now() - make_interval(days => g %% 1000)
FROM generate_series(1, %(customers)s) g"""),
    ("shop.products", """
INSERT INTO shop.products (sku, title, price, weight_g, image, attributes)
SELECT 'SKU-' || lpad(g::text, 6, '0'), 'Product ' || g, round((1 + (g * 7919) %% 50000 / 100.0)::numeric, 2),
       CASE WHEN g %% 10 = 0 THEN NULL ELSE 50 + g %% 5000 END,
       CASE WHEN g %% 4 = 0 THEN decode(md5(g::text), 'hex') END,
       jsonb_build_object('color', (ARRAY['red', 'green', 'blue'])[1 + g %% 3],
                          'sizes', jsonb_build_array(g %% 5, g %% 9))
FROM generate_series(1, %(products)s) g"""),
    ("shop.orders", """
INSERT INTO shop.orders (customer_id, status, placed_at, shipping_address, total)
SELECT 1 + (g * 7) %% %(customers)s,
       (ARRAY['new', 'paid', 'shipped', 'shipped', 'shipped', 'cancelled',
              'refunded'])[1 + g %% 7]::shop.order_status,
       now() - make_interval(mins => g %% 525600),
       jsonb_build_object('street', g || ' Main Street', 'zip', lpad((g %% 99999)::text, 5, '0')),
       0
FROM generate_series(1, %(orders)s) g"""),
    ("shop.order_lines", """
INSERT INTO shop.order_lines (order_id, line_no, sku, quantity, unit_price)
SELECT o, l, 'SKU-' || lpad((1 + (o * 31 + l * 17) %% %(products)s)::text, 6, '0'), 1 + (o + l) %% 5,
       round((1 + (o * l) %% 9999 / 100.0)::numeric, 2)
FROM generate_series(1, %(orders)s) o, generate_series(1, %(lines)s) l"""),
    ("shop.orders (totals)", """
UPDATE shop.orders o SET total = s.total
FROM (SELECT order_id, sum(line_total) AS total FROM shop.order_lines GROUP BY order_id) s
WHERE s.order_id = o.id"""),
    ("analytics.events", """
INSERT INTO analytics.events (occurred_at, customer_id, kind, payload)
SELECT now() - make_interval(secs => (g * 31.7) %% (86400 * 400)), 1 + g %% %(customers)s,
       (ARRAY['login', 'view', 'cart', 'checkout', 'logout'])[1 + g %% 5],
       jsonb_build_object('n', g, 'ua', 'demo/' || (g %% 13))
FROM generate_series(1, %(events)s) g"""),
    ("analytics.page_views", """
INSERT INTO analytics.page_views (session_id, seq, url, viewed_at, duration)
SELECT md5('session' || (g / 10))::uuid, g %% 10, '/products/' || (g %% 997),
       now() - make_interval(secs => g %% 2592000), make_interval(secs => g %% 600)
FROM generate_series(1, %(page_views)s) g"""),
]


def month_partitions(now: datetime, back: int = 13, ahead: int = 2) -> list[tuple[str, datetime, datetime]]:
    """(name, from, to) of monthly partitions from `back` months before `now` to `ahead` months after."""
    parts = []
    for k in range(-back, ahead + 1):
        y, m = divmod(now.year * 12 + now.month - 1 + k, 12)
        start = datetime(y, m + 1, 1, tzinfo=UTC)
        y2, m2 = divmod(y * 12 + m + 1, 12)
        parts.append((f"events_{y:04d}_{m + 1:02d}", start, datetime(y2, m2 + 1, 1, tzinfo=UTC)))
    return parts


def load(params: dict[str, Any], scale: float, reset: bool) -> dict[str, int]:
    counts = {k: max(1, int(v * scale)) for k, v in ROWS.items()}
    counts["lines"] = LINES_PER_ORDER
    with db.connect(params, "demo-sample") as conn:
        existing = conn.execute("SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = ANY(%s)",
                                (list(SCHEMAS),)).fetchone()[0]
        if existing and not reset:
            raise SystemExit(f"sample schemas {', '.join(SCHEMAS)} already exist in {db.describe(params)}; "
                             "pass --reset to drop and reload them")
        for schema in SCHEMAS:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.execute(SCHEMA_FILE.read_text())
        for name, start, end in month_partitions(datetime.now(UTC)):
            conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF analytics.events FOR VALUES FROM ({}) TO ({})")
                         .format(sql.Identifier("analytics", name), sql.Literal(start), sql.Literal(end)))
        conn.commit()
        for name, statement in LOAD:
            began = time.monotonic()
            rows = conn.execute(statement, counts).rowcount
            conn.commit()
            print(f"loaded {name}: {rows} rows in {time.monotonic() - began:.1f}s", flush=True)
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        size = conn.execute(
            "SELECT sum(pg_catalog.pg_total_relation_size(c.oid))::int8 FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = ANY(%s) AND c.relkind = 'r'", (list(SCHEMAS),)).fetchone()[0]
    print(f"sample database {db.describe(params)}: {size / 1024 / 1024:.0f} MiB at scale {scale}", flush=True)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sourcedb.add_arguments(parser)
    parser.add_argument("--scale", type=float, default=1.0, help="1 = about 350 MB; 0.01 for tests")
    parser.add_argument("--reset", action="store_true", help="drop the sample schemas first if they exist")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    params = sourcedb.params(args)
    load(params, args.scale, args.reset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
