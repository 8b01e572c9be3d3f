#!/bin/sh
# The application that keeps writing on the source while the migration runs: inserts, updates
# (including the secondary unique column) and deletes, a few transactions a second, over one
# session at a time. Survives refused writes and dropped sessions (capture install, cutover) and
# reconnects. Stops when the stop file appears.
#   workload.sh STATE_DIR   (libpq settings from PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD)
set -u
state=$1
mkdir -p "$state"
echo $$ > "$state/pid"
[ -s "$state/iterations" ] || echo 0 > "$state/iterations"

transactions() {
    # Each session continues the count where the last one stopped (values stay unique).
    i=$(cat "$state/iterations")
    while [ ! -e "$state/stop" ]; do
        i=$((i + 1))
        cat <<SQL
BEGIN;
INSERT INTO shop.orders (customer_id, amount, attributes)
    VALUES (1 + $i % 100, $i % 900 + 0.25, '{"channel": "workload"}');
INSERT INTO shop.order_lines (order_id, line_no, product, quantity)
    SELECT max(id), 1, 'product-$i', 1 + $i % 4 FROM shop.orders;
UPDATE shop.orders SET status = 'paid', updated_at = now() WHERE id = 1 + ($i * 37) % 1000;
UPDATE shop.customers SET email = 'moved$i-' || email WHERE id = 1 + ($i * 13) % 100;
DELETE FROM shop.orders WHERE id = (SELECT min(id) FROM shop.orders WHERE status = 'new');
COMMIT;
SQL
        echo "$i" > "$state/iterations.new" && mv "$state/iterations.new" "$state/iterations"
        sleep 0.3
    done
}

while [ ! -e "$state/stop" ]; do
    transactions | /usr/lib/postgresql/15/bin/psql -X -q -v ON_ERROR_STOP=0 >>"$state/psql.log" 2>&1
    sleep 1
done
rm -f "$state/pid"
