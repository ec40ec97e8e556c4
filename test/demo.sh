#!/usr/bin/env bash
#
# test/demo.sh: a throwaway PostgreSQL with entitlock, and a race to watch.
#
#   bash test/demo.sh          build, install, start, demonstrate; leave it running
#   bash test/demo.sh stop     stop the demo cluster and delete it
#
# Installs what it needs (Debian packages, then the extension) like the test
# suite.  The cluster belongs to the postgres OS user and lives in
# /tmp/entitlock-demo with its own socket and port; the system cluster is
# not touched.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEMO_DIR=${ENTITLOCK_DEMO_DIR:-/tmp/entitlock-demo}
CLIENTS=${DEMO_CLIENTS:-16}
REQUESTS=${DEMO_REQUESTS:-150}
SEATS=${DEMO_SEATS:-100}
db=entitlock_demo

if [ "${1:-}" = stop ]; then
	cluster_destroy "$DEMO_DIR"
	echo "demo cluster stopped and removed"
	exit 0
fi

ensure_packages
build_install
cluster_destroy "$DEMO_DIR"
PGPORT_BASE=54340 cluster_start "$DEMO_DIR"

test_db_create "$db" || exit 1
export PGDATABASE=$db
psql -X -q -v ON_ERROR_STOP=1 <<EOF || exit 1
CREATE TABLE workspaces (
    name         text PRIMARY KEY,
    seat_limit   int NOT NULL,
    member_count int NOT NULL DEFAULT 0
);
CREATE TABLE members (id bigserial PRIMARY KEY, workspace text NOT NULL);
EOF

scripts=$(mktemp -d)
trap 'rm -rf "$scripts"' EXIT

# The handler every app replica runs for "add a member": read the count,
# compare with the plan, insert, write the count back.  Fine with one
# request at a time; not with many.
write_handler() {
	local file=$1 lock_line=$2
	cat >"$file" <<EOF
BEGIN;
$lock_line
SELECT member_count AS used, seat_limit AS lim FROM workspaces WHERE name = 'acme' \\gset
\\if :used < :lim
INSERT INTO members (workspace) VALUES ('acme');
UPDATE workspaces SET member_count = :used + 1 WHERE name = 'acme';
\\endif
COMMIT;
EOF
}
write_handler "$scripts/unlocked.sql" "-- no lock"
write_handler "$scripts/locked.sql" \
	"SELECT entitlock.lock_entity('workspace:acme', 'members');"

race() {
	local label=$1 script=$2
	psql -X -q -c "TRUNCATE members; DELETE FROM workspaces;
		INSERT INTO workspaces VALUES ('acme', $SEATS, 0);" || exit 1
	pgbench -n -c "$CLIENTS" -j 2 -t "$REQUESTS" -f "$script" >"$scripts/pgbench.log" 2>&1 ||
		{ cat "$scripts/pgbench.log"; exit 1; }
	psql -X -At -F ' ' -c "
		SELECT count(*),
			   (SELECT member_count FROM workspaces WHERE name = 'acme'),
			   greatest(count(*) - $SEATS, 0),
			   count(*) - (SELECT member_count FROM workspaces WHERE name = 'acme')
		  FROM members WHERE workspace = 'acme'" |
		while read -r added counter over lost; do
			printf '  %-26s %13s %14s %16s %14s\n' "$label" "$added" "$counter" "$over" "$lost"
		done
}

cat <<EOF

== The race ==
$CLIENTS clients send $((CLIENTS * REQUESTS)) "add a member" requests to workspace acme,
whose plan allows $SEATS seats.  Each request reads member_count, compares it
with the limit, inserts a member and writes member_count + 1.

  $(printf '%-26s %13s %14s %16s %14s' "" "members added" "counter says" "over the limit" "lost updates")
EOF
race "without a lock" "$scripts/unlocked.sql"
race "with entitlock.lock_entity" "$scripts/locked.sql"

cat <<'EOF'

Without a lock the requests interleave: several read the same count, all
pass the limit check, and each writes back the same count + 1 (lost
updates).  With SELECT entitlock.lock_entity('workspace:acme', 'members')
as the first statement, requests for the same workspace take turns until
COMMIT; other workspaces, and other entities of acme, are not held up.

== A usage limit ==
EOF

# The same race on an API quota, as applications write it by hand (read
# the usage, compare, record) and with record_usage_if_under_limit.  Request
# ids repeat, as retries do.
cat >"$scripts/quota-naive.sql" <<'EOF'
\set req random(1, 1500)
BEGIN;
SELECT coalesce(sum(amount), 0) AS used FROM naive_log WHERE workspace = 'acme' \gset
\if :used < 1000
INSERT INTO naive_log VALUES ('acme', :req, 1);
\endif
COMMIT;
EOF
cat >"$scripts/quota-entitlock.sql" <<'EOF'
\set req random(1, 1500)
BEGIN;
SELECT allowed::int AS allowed FROM entitlock.record_usage_if_under_limit('workspace:acme', 'api_calls', 1, 1000, 'month', 'req-' || :req) \gset
\if :allowed
INSERT INTO api_log VALUES ('acme', :req, 1) ON CONFLICT DO NOTHING;
\endif
COMMIT;
EOF
psql -X -q -c "CREATE TABLE IF NOT EXISTS naive_log (workspace text, request int, amount int);
	CREATE TABLE IF NOT EXISTS api_log (workspace text, request int, amount int,
										UNIQUE (workspace, request));
	TRUNCATE naive_log, api_log, entitlock.usage_counter, entitlock.usage_idempotency;" || exit 1
pgbench -n -c "$CLIENTS" -j 2 -t 125 -f "$scripts/quota-naive.sql" >/dev/null 2>&1
naive=$(psql -X -At -c "SELECT count(*) FROM naive_log")
pgbench -n -c "$CLIENTS" -j 2 -t 125 -f "$scripts/quota-entitlock.sql" >/dev/null 2>&1
cat <<EOF
$CLIENTS clients send $((CLIENTS * 125)) API requests (ids drawn from 1,500, so some are retries)
against a quota of 1000 calls a month.

  by hand (read, compare, insert):          $naive calls logged
  record_usage_if_under_limit:              $(psql -X -At -c "SELECT count(*) FROM api_log") calls logged, usage $(psql -X -At -c "SELECT entitlock.usage('workspace:acme', 'api_calls', 'month')"), retries not counted twice

EOF
psql -X <<'EOF'
SELECT * FROM entitlock.record_usage_if_under_limit('workspace:acme', 'api_calls', 1, 1000, 'month');
EOF

cat <<'EOF'
== Webhook retries ==
EOF

# A payment provider delivers 200 events, each several times and some
# deliveries concurrently, as retries after a timeout are.  By hand: look
# for the event id, then record the payment.  With entitlock: claim the id
# with idempotency_begin, in the transaction that records the payment.
cat >"$scripts/hook-naive.sql" <<'EOF'
\set evt random(1, 200)
BEGIN;
SELECT count(*) = 0 AS fresh FROM naive_seen WHERE event = :evt \gset
\if :fresh
INSERT INTO naive_payments VALUES (:evt, 4999);
INSERT INTO naive_seen VALUES (:evt);
\endif
COMMIT;
EOF
cat >"$scripts/hook-entitlock.sql" <<'EOF'
\set evt random(1, 200)
BEGIN;
SELECT (status = 'new')::int AS fresh FROM entitlock.idempotency_begin('webhook:evt_' || :evt) \gset
\if :fresh
INSERT INTO payments VALUES (:evt, 4999);
SELECT entitlock.idempotency_complete('webhook:evt_' || :evt, '{"ok": true}');
\endif
COMMIT;
EOF
psql -X -q -c "CREATE TABLE IF NOT EXISTS naive_seen (event int);
	CREATE TABLE IF NOT EXISTS naive_payments (event int, amount int);
	CREATE TABLE IF NOT EXISTS payments (event int, amount int);
	TRUNCATE naive_seen, naive_payments, payments, entitlock.idempotency_key;" || exit 1
pgbench -n -c "$CLIENTS" -j 2 -t 50 -f "$scripts/hook-naive.sql" >/dev/null 2>&1
pgbench -n -c "$CLIENTS" -j 2 -t 50 -f "$scripts/hook-entitlock.sql" >/dev/null 2>&1
paid() {
	psql -X -At -F ' ' -c "SELECT count(DISTINCT event), count(*) - count(DISTINCT event) FROM $1"
}
read -r naive_n naive_twice <<<"$(paid naive_payments)"
read -r el_n el_twice <<<"$(paid payments)"
cat <<EOF
$CLIENTS clients deliver $((CLIENTS * 50)) webhooks, event ids drawn from 200, so each
event arrives about four times, often concurrently.

                                events paid   extra payments
  by hand (look, then insert)   $(printf '%10s %16s' "$naive_n" "$naive_twice")
  idempotency_begin             $(printf '%10s %16s' "$el_n" "$el_twice")

A retry of an event already paid gets 'replay' and the stored response:
EOF
psql -X -c "SELECT * FROM entitlock.idempotency_begin('webhook:evt_7')"

cat <<'EOF'
== Slow workers and leases ==
EOF

# Workers take turns at one job under a 200 ms lease.  Some pause longer
# than that (a GC pause, a slow disk) and then finish anyway: they write
# their result and release.  By hand: a lock table with a unique name
# (acquire correctly with ON CONFLICT, but release by name, and write
# without checking).  With entitlock: lease_acquire, a fencing check on the
# write, and lease_release with the token.
psql -X -q -v ON_ERROR_STOP=1 <<'EOF' >/dev/null || exit 1
CREATE TABLE IF NOT EXISTS report (id int PRIMARY KEY, fencing_seen bigint NOT NULL DEFAULT 0, body text);
CREATE TABLE IF NOT EXISTS job_log (impl text, event text, fencing bigint, at timestamptz, ok boolean);
CREATE TABLE IF NOT EXISTS naive_lock (name text PRIMARY KEY, fencing bigint, expires_at timestamptz);
CREATE SEQUENCE IF NOT EXISTS naive_fencing;
TRUNCATE report, job_log, naive_lock;
INSERT INTO report VALUES (1, 0, NULL);
EOF
cat >"$scripts/job-naive.sql" <<'EOF'
\set pause random(20, 400)
WITH a AS (INSERT INTO naive_lock AS l VALUES ('nightly-report', nextval('naive_fencing'), clock_timestamp() + interval '200 ms')
			ON CONFLICT (name) DO UPDATE SET fencing = excluded.fencing, expires_at = excluded.expires_at
			WHERE l.expires_at <= clock_timestamp() RETURNING fencing),
	 g AS (INSERT INTO job_log SELECT 'naive', 'acquired', fencing, clock_timestamp(), true FROM a RETURNING fencing)
SELECT count(*) AS got, coalesce(max(fencing), 0) AS fencing FROM g \gset
\if :got
\sleep :pause ms
WITH w AS (UPDATE report SET body = 'by ' || :fencing WHERE id = 1 RETURNING 1)
INSERT INTO job_log SELECT 'naive', 'wrote', :fencing, clock_timestamp(), count(*) > 0 FROM w;
WITH d AS (DELETE FROM naive_lock WHERE name = 'nightly-report' RETURNING 1)
INSERT INTO job_log SELECT 'naive', 'released', :fencing, clock_timestamp(), count(*) > 0 FROM d;
\endif
EOF
cat >"$scripts/job-entitlock.sql" <<'EOF'
\set pause random(20, 400)
WITH a AS (SELECT * FROM entitlock.lease_acquire('nightly-report', '200 ms', 'worker-' || :client_id)),
	 g AS (INSERT INTO job_log SELECT 'entitlock', 'acquired', fencing, clock_timestamp(), true FROM a RETURNING fencing)
SELECT count(*) AS got, coalesce(max(a.fencing), 0) AS fencing,
	   coalesce(max(a.token::text), '00000000-0000-0000-0000-000000000000') AS token
  FROM g, a \gset
\if :got
UPDATE report SET fencing_seen = :fencing WHERE id = 1 AND fencing_seen < :fencing;
\sleep :pause ms
WITH w AS (UPDATE report SET body = 'by ' || :fencing WHERE id = 1 AND fencing_seen = :fencing RETURNING 1)
INSERT INTO job_log SELECT 'entitlock', 'wrote', :fencing, clock_timestamp(), count(*) > 0 FROM w;
INSERT INTO job_log SELECT 'entitlock', 'released', :fencing, clock_timestamp(),
	   entitlock.lease_release('nightly-report', :token::uuid);
\endif
EOF
pgbench -n -M prepared -c 8 -j 2 -T 4 -f "$scripts/job-naive.sql" >/dev/null 2>&1
pgbench -n -M prepared -c 8 -j 2 -T 4 -f "$scripts/job-entitlock.sql" >/dev/null 2>&1
# holders; late writes accepted and late releases that succeeded, "late"
# meaning after another worker had acquired the job
job_stats() {
	psql -X -At -F ' ' -v impl="$1" <<'EOF'
SELECT count(*) FILTER (WHERE event = 'acquired'),
	   count(*) FILTER (WHERE event = 'wrote' AND ok AND late),
	   count(*) FILTER (WHERE event = 'released' AND ok AND late)
  FROM (SELECT j.*, EXISTS (SELECT FROM job_log n
							 WHERE n.impl = j.impl AND n.event = 'acquired'
							   AND n.fencing > j.fencing AND n.at < j.at) AS late
		  FROM job_log j WHERE j.impl = :'impl') AS s;
EOF
}
read -r n_held n_writes n_releases <<<"$(job_stats naive)"
read -r e_held e_writes e_releases <<<"$(job_stats entitlock)"
cat <<EOF
8 workers for 4 s on one job with a 200 ms lease; a worker pauses 20-400 ms
before it writes and releases, so many overrun their lease.

                                       turns   stale writes   stale releases
                                               accepted       that succeeded
  lock table, release by name       $(printf '%6s %14s %16s' "$n_held" "$n_writes" "$n_releases")
  lease + fencing check             $(printf '%6s %14s %16s' "$e_held" "$e_writes" "$e_releases")

A stale release by name frees the next worker's lock, letting a third one in;
a stale write overwrites a newer worker's result.  With entitlock the
stale worker's release returns false, and its write finds a higher fencing
number and changes nothing.
EOF
psql -X <<'EOF'
SELECT token AS t, fencing FROM entitlock.lease_acquire('demo-job', '1 minute', 'demo-worker') \gset
SELECT name, holder, fencing, expires_at - acquired_at AS ttl FROM entitlock.leases;
SELECT entitlock.lease_release('demo-job', gen_random_uuid()) AS a_stranger_releases;
SELECT entitlock.lease_release('demo-job', :'t') AS the_holder_releases;
EOF

cat <<'EOF'
== Waiting with a limit ==
EOF

# Session A holds a lock for two seconds; session B tries, then waits with
# a limit, then watches who holds it.
psql -X -q -c "BEGIN; SELECT entitlock.lock('invoice:7'); SELECT pg_sleep(2); COMMIT;" \
	>/dev/null 2>&1 &
holder=$!
for _ in $(seq 1 50); do
	[ "$(psql -X -At -c "SELECT count(*) FROM entitlock.holders('invoice:7')")" = 1 ] && break
	sleep 0.1
done
psql -X <<'EOF'
-- session A holds invoice:7 for two seconds; this is session B
SELECT pid, mode, granted, application_name FROM entitlock.holders('invoice:7');
BEGIN;
SELECT entitlock.try_lock('invoice:7') AS try_lock;
SELECT entitlock.lock('invoice:7', '300 ms') AS waited_300ms;
SELECT entitlock.lock('invoice:7', '10 s') AS waited_up_to_10s;
COMMIT;
EOF
wait "$holder"

cat <<EOF
== Try it yourself ==
The demo cluster is still running:

  psql -h $PGHOST -p $PGPORT -U postgres $db

  $db=# BEGIN;
  $db=# SELECT entitlock.lock_entity('workspace:acme', 'members');
  -- in a second psql, the same call waits until the first COMMITs

Stop and delete it with:  bash test/demo.sh stop
EOF
