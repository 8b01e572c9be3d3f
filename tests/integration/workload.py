"""A schema with what real databases have, and concurrent writers for it (used by the sync tests)."""

from __future__ import annotations

import random
import threading
from typing import Any

import psycopg

SOURCE_DDL = r"""
CREATE TYPE mood AS ENUM ('happy', 'sad', 'meh');
CREATE DOMAIN posint AS int CHECK (VALUE >= 0);
CREATE SCHEMA "Sales Dept";
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL, mood mood,
                        tags text[], prefs jsonb, avatar bytea, balance numeric(12,2), seen timestamptz);
CREATE UNIQUE INDEX customers_email ON customers (email);
CREATE TABLE "Sales Dept"."Orders" ("Order Id" int PRIMARY KEY, customer_id int REFERENCES customers(id),
                                    qty posint, price numeric, total numeric GENERATED ALWAYS AS (qty * price) STORED);
CREATE TABLE order_lines (order_id int REFERENCES "Sales Dept"."Orders"("Order Id"), line int, sku text,
                          PRIMARY KEY (order_id, line));
CREATE TABLE notes (code text PRIMARY KEY, body text);
CREATE TABLE events (id int NOT NULL, month int NOT NULL, payload text, PRIMARY KEY (id, month))
    PARTITION BY RANGE (month);
CREATE TABLE events_q1 PARTITION OF events FOR VALUES FROM (1) TO (4);
CREATE TABLE events_q2 PARTITION OF events FOR VALUES FROM (4) TO (13);
CREATE TABLE uniq_only (a int NOT NULL, b text NOT NULL, v int, UNIQUE (a, b));
CREATE TABLE counters (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n int);
"""

# The target: int keys widened to bigint, and a user trigger that must not fire during apply.
TARGET_EXTRA = r"""
ALTER TABLE order_lines DROP CONSTRAINT order_lines_order_id_fkey;
ALTER TABLE customers ALTER COLUMN id TYPE bigint;
ALTER TABLE "Sales Dept"."Orders" ALTER COLUMN "Order Id" TYPE bigint, ALTER COLUMN customer_id TYPE bigint;
ALTER TABLE order_lines ALTER COLUMN order_id TYPE bigint;
ALTER TABLE order_lines ADD FOREIGN KEY (order_id) REFERENCES "Sales Dept"."Orders"("Order Id");
CREATE TABLE trigger_fired (at timestamptz DEFAULT now());
-- The target's own bookkeeping table, written by a user trigger whoever writes customers.
GRANT INSERT ON trigger_fired TO PUBLIC;
CREATE FUNCTION note_fired() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO trigger_fired DEFAULT VALUES; RETURN NULL; END $$;
CREATE TRIGGER user_trigger AFTER INSERT OR UPDATE OR DELETE ON customers FOR EACH ROW EXECUTE FUNCTION note_fired();
"""

SEED = r"""
INSERT INTO customers SELECT g, 'c' || g, 'c' || g || '@x', (ARRAY['happy','sad','meh'])[g % 3 + 1]::mood,
    ARRAY['t' || g, 'q"uote'], jsonb_build_object('n', g, 'x', 'y'), decode(md5(g::text), 'hex'),
    g * 1.25, '2024-01-01'::timestamptz + g * interval '1 hour' FROM generate_series(1, 300) g;
INSERT INTO "Sales Dept"."Orders" SELECT g, g % 300 + 1, g % 7, g * 0.5 FROM generate_series(1, 300) g;
INSERT INTO order_lines SELECT g % 300 + 1, g / 300, 'sku' || g FROM generate_series(1, 900) g;
INSERT INTO notes VALUES (E'tab\there', 'a'), (E'new\nline', 'b'), (E'back\\slash', 'c'), ('plain', 'd');
INSERT INTO events SELECT g, g % 12 + 1, 'e' || g FROM generate_series(1, 300) g;
INSERT INTO uniq_only SELECT g, 'b' || g, g FROM generate_series(1, 100) g;
INSERT INTO counters (n) SELECT g FROM generate_series(1, 50) g;
"""


def _one(cur: psycopg.Cursor[Any], rnd: random.Random, worker: int, i: int) -> None:
    k = rnd.randint(1, 400)
    op = rnd.randrange(12)
    if op == 0:
        cur.execute("INSERT INTO customers VALUES (%s, 'n', %s) ON CONFLICT DO NOTHING", (1000 + worker * 100000 + i,
                                                                                        f"w{worker}-{i}@x"))
    elif op == 1:
        cur.execute("UPDATE customers SET balance = balance + 1, prefs = prefs || '{\"u\": 1}', tags = tags || "
                    "'x'::text, seen = now() WHERE id = %s", (k,))
    elif op == 2:
        # Swap-free move of a unique value: the email moves from one row to another.
        cur.execute("UPDATE customers SET email = 'moved-' || id || '-' || %s WHERE id = %s", (i, k))
    elif op == 3:
        cur.execute('UPDATE "Sales Dept"."Orders" SET qty = qty + 1 WHERE "Order Id" = %s', (k,))
    elif op == 4:
        cur.execute("DELETE FROM order_lines WHERE order_id = %s AND line = %s", (k, rnd.randrange(3)))
    elif op == 5:
        cur.execute("INSERT INTO order_lines VALUES (%s, %s, 'new') ON CONFLICT (order_id, line) DO UPDATE "
                    "SET sku = 'upd'", (rnd.randint(1, 300), rnd.randint(3, 9)))
    elif op == 6:
        cur.execute("UPDATE events SET month = (month %% 12) + 1 WHERE id = %s", (k,))  # moves partitions
    elif op == 7:
        cur.execute("UPDATE notes SET body = body || %s WHERE code = %s", (str(i), rnd.choice(
            ["tab\there", "new\nline", "back\\slash", "plain"])))
    elif op == 8:
        cur.execute("UPDATE uniq_only SET b = b || 'x', v = v + 1 WHERE a = %s", (rnd.randint(1, 100),))
    elif op == 9:
        cur.execute("INSERT INTO counters (n) VALUES (%s)", (i,))
    elif op == 10:
        cur.execute("UPDATE order_lines SET line = line + 100 WHERE order_id = %s AND line = %s AND NOT EXISTS ("
                    "SELECT 1 FROM order_lines WHERE order_id = %s AND line = %s)", (k, 1, k, 101))
    else:
        cur.execute("DELETE FROM customers WHERE id = %s AND NOT EXISTS (SELECT 1 FROM \"Sales Dept\".\"Orders\" "
                    "WHERE customer_id = %s)", (k, k))
        cur.execute("INSERT INTO customers VALUES (%s, 'again', %s) ON CONFLICT DO NOTHING", (k, f"again{k}-{i}"))


class Writers:
    """N threads writing to the source until stopped; each transaction holds 1-3 statements."""

    def __init__(self, params: dict[str, Any], n: int = 3, seed: int = 1):
        self.params = params
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(w, seed + w), daemon=True) for w in range(n)]
        self.commits = 0
        self.errors: list[str] = []

    def _run(self, worker: int, seed: int) -> None:
        rnd = random.Random(seed)
        with psycopg.connect(**self.params) as conn:
            i = 0
            while not self.stop_event.is_set():
                i += 1
                try:
                    with conn.transaction(), conn.cursor() as cur:
                        for _ in range(rnd.randint(1, 3)):
                            _one(cur, rnd, worker, i)
                    self.commits += 1
                except (psycopg.errors.UniqueViolation, psycopg.errors.DeadlockDetected,
                        psycopg.errors.ForeignKeyViolation, psycopg.errors.SerializationFailure):
                    pass
                except psycopg.Error as exc:
                    self.errors.append(str(exc))
                    return

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=30)
        assert not self.errors, self.errors
