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
