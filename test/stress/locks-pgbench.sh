#!/usr/bin/env bash
#
# Stress: many pgbench clients on few names, with lock_all (random, crossing
# orders), lock_entity, try_lock_entity, timed lock(name, timeout) and
# exclusive realm locks.
#
# Every transaction does a read-modify-write of a counter (SELECT the value
# into the client, UPDATE it to value + 1) and appends a ledger row.  The
# ledger is insert-only and cannot lose rows, so afterwards each counter
# must equal its ledger count; a lost update would leave it lower.  Realm
# lockers read the realm's counters twice around a pause and record whether
# they changed.  Required: zero pgbench errors (deadlocks included), zero
# lost updates, zero realm reads that changed.
#
# A control run of the same read-modify-write without locks must lose
# updates: that proves the check can see the bug the locks prevent.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

CLIENTS=${STRESS_CLIENTS:-24}
SECONDS_RUN=${STRESS_SECONDS:-15}
db=entitlock_stress_locks
scripts=$(mktemp -d)
trap 'rm -rf "$scripts"; test_db_drop "$db"' EXIT

test_db_create "$db" || exit 1
psql -X -q -v ON_ERROR_STOP=1 -d "$db" <<'EOF' || exit 1
CREATE TABLE counters (name text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
CREATE TABLE ledger (name text NOT NULL);
CREATE TABLE realm_reads (realm text NOT NULL, unchanged boolean NOT NULL);
INSERT INTO counters (name)
SELECT 'n' || i FROM generate_series(1, 8) AS i
UNION ALL
SELECT 'realm' || r || '/e' || e FROM generate_series(1, 2) AS r, generate_series(1, 4) AS e
UNION ALL
SELECT 'control';
EOF

# Three random names of eight, in random order: arrays overlap and cross.
cat >"$scripts/lock_all.sql" <<'EOF'
\set i random(1, 8)
\set j random(1, 8)
\set k random(1, 8)
BEGIN;
SELECT entitlock.lock_all(ARRAY['n' || :i, 'n' || :j, 'n' || :k]);
SELECT n AS v FROM counters WHERE name = 'n' || :i \gset
UPDATE counters SET n = :v + 1 WHERE name = 'n' || :i;
INSERT INTO ledger VALUES ('n' || :i);
SELECT n AS v FROM counters WHERE name = 'n' || :j \gset
UPDATE counters SET n = :v + 1 WHERE name = 'n' || :j;
INSERT INTO ledger VALUES ('n' || :j);
SELECT n AS v FROM counters WHERE name = 'n' || :k \gset
UPDATE counters SET n = :v + 1 WHERE name = 'n' || :k;
INSERT INTO ledger VALUES ('n' || :k);
COMMIT;
EOF

cat >"$scripts/lock_entity.sql" <<'EOF'
\set r random(1, 2)
\set e random(1, 4)
BEGIN;
SELECT entitlock.lock_entity('realm' || :r, 'e' || :e);
SELECT n AS v FROM counters WHERE name = 'realm' || :r || '/e' || :e \gset
UPDATE counters SET n = :v + 1 WHERE name = 'realm' || :r || '/e' || :e;
INSERT INTO ledger VALUES ('realm' || :r || '/e' || :e);
COMMIT;
EOF

cat >"$scripts/try_lock_entity.sql" <<'EOF'
\set r random(1, 2)
\set e random(1, 4)
BEGIN;
SELECT entitlock.try_lock_entity('realm' || :r, 'e' || :e)::int AS got \gset
\if :got = 1
SELECT n AS v FROM counters WHERE name = 'realm' || :r || '/e' || :e \gset
UPDATE counters SET n = :v + 1 WHERE name = 'realm' || :r || '/e' || :e;
INSERT INTO ledger VALUES ('realm' || :r || '/e' || :e);
\endif
COMMIT;
EOF

# Timed waits (the internal-subtransaction path): a short limit on a hot
# name, so many calls return false; only a true may touch the counter.
cat >"$scripts/timed.sql" <<'EOF'
\set i random(1, 8)
BEGIN;
SELECT entitlock.lock('n' || :i, '5 ms')::int AS got \gset
\if :got = 1
SELECT n AS v FROM counters WHERE name = 'n' || :i \gset
UPDATE counters SET n = :v + 1 WHERE name = 'n' || :i;
INSERT INTO ledger VALUES ('n' || :i);
\endif
COMMIT;
EOF

# Whole-realm lock: nothing in the realm may change while it is held.
cat >"$scripts/realm.sql" <<'EOF'
\set r random(1, 2)
BEGIN;
SELECT entitlock.lock('realm' || :r);
SELECT sum(n) AS before FROM counters WHERE name LIKE 'realm' || :r || '/%' \gset
SELECT pg_sleep(0.002);
INSERT INTO realm_reads
SELECT 'realm' || :r, sum(n) = :before FROM counters WHERE name LIKE 'realm' || :r || '/%';
COMMIT;
EOF

cat >"$scripts/control.sql" <<'EOF'
BEGIN;
SELECT n AS v FROM counters WHERE name = 'control' \gset
UPDATE counters SET n = :v + 1 WHERE name = 'control';
INSERT INTO ledger VALUES ('control');
COMMIT;
EOF

status=0

log "control: $CLIENTS clients, read-modify-write without locks, 3 s"
PGDATABASE=$db pgbench -n -c "$CLIENTS" -j 2 -T 3 -f "$scripts/control.sql" \
	>"$scripts/control.log" 2>&1 || { cat "$scripts/control.log"; exit 1; }
lost_control=$(psql -X -At -d "$db" -c "
	SELECT (SELECT count(*) FROM ledger WHERE name = 'control')
		 - (SELECT n FROM counters WHERE name = 'control')")
log "control: $lost_control updates lost without locks"
if [ "${lost_control:-0}" -le 0 ]; then
	log "the control run lost no update: this test could not see a missing lock"
	status=1
fi

log "stress: $CLIENTS clients for $SECONDS_RUN s on 8 names and 2 realms x 4 entities"
PGDATABASE=$db pgbench -n -c "$CLIENTS" -j 2 -T "$SECONDS_RUN" \
	-f "$scripts/lock_all.sql@4" -f "$scripts/lock_entity.sql@4" \
	-f "$scripts/try_lock_entity.sql@2" -f "$scripts/realm.sql@1" \
	-f "$scripts/timed.sql@3" \
	>"$scripts/stress.log" 2>&1
rc=$?
grep -E 'transactions actually processed|failed transactions|tps|aborted|ERROR' "$scripts/stress.log" | head -20 >&2
if [ $rc -ne 0 ] || grep -q 'ERROR' "$scripts/stress.log"; then
	log "pgbench reported errors (exit $rc)"
	tail -30 "$scripts/stress.log" >&2
	grep -m 5 -E 'aborted in|ERROR' "$scripts/stress.log" >&2
	status=1
fi

read -r checked lost realm_reads realm_changed < <(psql -X -At -F ' ' -d "$db" -c "
	SELECT count(*),
		   coalesce(sum(l.cnt - c.n), 0),
		   (SELECT count(*) FROM realm_reads),
		   (SELECT count(*) FROM realm_reads WHERE NOT unchanged)
	  FROM counters AS c
	  JOIN (SELECT name, count(*) AS cnt FROM ledger GROUP BY name) AS l USING (name)
	 WHERE c.name <> 'control'")
total=$(psql -X -At -d "$db" -c "SELECT count(*) FROM ledger WHERE name <> 'control'")
log "locked increments: $total on $checked counters, lost: $lost"
log "realm reads: $realm_reads, changed under an exclusive realm lock: $realm_changed"
[ "${total:-0}" -gt 1000 ] || { log "too few increments to mean anything"; status=1; }
[ "${lost:-1}" -eq 0 ] || status=1
[ "${realm_reads:-0}" -gt 0 ] || { log "no realm read ran"; status=1; }
[ "${realm_changed:-1}" -eq 0 ] || status=1

# Nothing is left locked once the clients are gone.
left=$(psql -X -At -d "$db" -c "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
	AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
log "advisory locks left after the run: $left"
[ "$left" -eq 0 ] || status=1

exit $status
