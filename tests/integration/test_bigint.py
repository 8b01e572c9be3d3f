"""The int -> bigint key migration on the empty target tables (restore phase), against real clusters."""

from __future__ import annotations

import psycopg

from great_escape import bigint
from tests.conftest import DbPair

PARTITIONED = """
CREATE TABLE events (id int NOT NULL, month int NOT NULL, payload text, PRIMARY KEY (id, month))
    PARTITION BY RANGE (month);
CREATE TABLE events_q1 PARTITION OF events FOR VALUES FROM (1) TO (4) PARTITION BY LIST (month);
CREATE TABLE events_q1_all PARTITION OF events_q1 DEFAULT;
CREATE TABLE events_rest PARTITION OF events FOR VALUES FROM (4) TO (13);
CREATE TABLE notes (event_id int, event_month int, FOREIGN KEY (event_id, event_month) REFERENCES events);
CREATE TABLE logs (id int, line text, PRIMARY KEY (id, line)) PARTITION BY RANGE (line);
CREATE TABLE logs_a PARTITION OF logs FOR VALUES FROM ('a') TO ('n') PARTITION BY HASH (id);
CREATE TABLE logs_a0 PARTITION OF logs_a FOR VALUES WITH (MODULUS 1, REMAINDER 0);
"""


def test_partition_key_columns_stay_integer_and_the_rest_of_the_key_widens(dbpair: DbPair) -> None:
    dbpair.sql_source(PARTITIONED)
    dbpair.sql_target(PARTITIONED)
    with psycopg.connect(**dbpair.source) as src:
        plan = bigint.plan_bigint(src, None, "auto")
    assert [c.qualname for c in plan.columns] == ["public.events.id", "public.notes.event_id"]
    assert plan.warnings == [  # logs.id is the key of a partition below the root: it cannot change either
        "public.events.month (primary key) stays integer: it is part of a partition key, whose type PostgreSQL "
        "cannot change",
        "public.logs.id (primary key) stays integer: it is part of a partition key, whose type PostgreSQL "
        "cannot change"]
    with psycopg.connect(**dbpair.target) as tgt:
        bigint.apply_bigint(tgt, plan)
    types = dict(dbpair.sql_target(
        "SELECT attrelid::regclass::text || '.' || attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid IN ('events'::regclass, 'events_q1_all'::regclass, 'notes'::regclass) AND attnum > 0 "
        "AND NOT attisdropped"))
    assert types["events.id"] == types["events_q1_all.id"] == types["notes.event_id"] == "bigint"
    assert types["events.month"] == types["notes.event_month"] == "integer"


VIEWS = """
CREATE SCHEMA "app s";
CREATE TABLE accounts (id int PRIMARY KEY, name text);
CREATE TABLE orders (id int PRIMARY KEY, account_id int REFERENCES accounts, total numeric, note text);
CREATE VIEW "app s".open_orders WITH (security_barrier) AS
    SELECT id, account_id, note FROM orders WHERE total > 0 WITH LOCAL CHECK OPTION;
ALTER VIEW "app s".open_orders ALTER COLUMN note SET DEFAULT 'n/a';
COMMENT ON VIEW "app s".open_orders IS 'orders still open';
COMMENT ON COLUMN "app s".open_orders.account_id IS 'who ordered';
CREATE VIEW big_orders AS
    SELECT o.id, o.account_id, a.name FROM "app s".open_orders o JOIN accounts a ON a.id = o.account_id;
CREATE MATERIALIZED VIEW order_count AS SELECT account_id, count(*) AS n FROM big_orders GROUP BY 1 WITH NO DATA;
"""


def test_views_over_widened_columns_are_created_again_over_the_bigint_columns(dbpair: DbPair) -> None:
    # PostgreSQL refuses ALTER COLUMN TYPE on a column a view reads; the views (a view over a view, a materialized
    # view over that) are dropped and created again in the same transaction, with their options, defaults
    # and comments.
    dbpair.sql_source(VIEWS)
    dbpair.sql_target(VIEWS)
    with psycopg.connect(**dbpair.source) as src:
        plan = bigint.plan_bigint(src, None, "auto")
    with psycopg.connect(**dbpair.target) as tgt:
        bigint.apply_bigint(tgt, plan)
    types = dict(dbpair.sql_target(
        "SELECT attrelid::regclass::text || '.' || attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid IN ('\"app s\".open_orders'::regclass, 'big_orders'::regclass, "
        "'order_count'::regclass) AND attnum > 0"))
    assert types['"app s".open_orders.id'] == types['"app s".open_orders.account_id'] == "bigint"
    assert types["big_orders.account_id"] == types["order_count.account_id"] == "bigint"
    [(options, comment, column_comment, default, populated)] = dbpair.sql_target(
        "SELECT c.reloptions, obj_description(c.oid, 'pg_class'), col_description(c.oid, 2), "
        "(SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = c.oid), "
        "(SELECT ispopulated FROM pg_matviews WHERE matviewname = 'order_count') "
        "FROM pg_class c WHERE c.oid = '\"app s\".open_orders'::regclass")
    assert sorted(options) == ["check_option=local", "security_barrier=true"]
    assert (comment, column_comment, default, populated) == ("orders still open", "who ordered", "'n/a'::text", False)
    with psycopg.connect(**dbpair.target) as tgt:  # a re-run finds nothing left to do
        assert bigint.apply_bigint(tgt, plan) == []
