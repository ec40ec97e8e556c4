#!/usr/bin/env bash
#
# Stress: killed backends and cancellations at once, on a mixed workload.
#
# The other stress scripts kill backends under one feature at a time.  Real
# servers see faults together: a deploy terminates connections while a
# timeout cancels a statement halfway through a call.
# Here FAULTS_CLIENTS (default 20) pgbench clients run, in rounds, a mix of
#   - record_usage_if_under_limit on one hot (subject, feature) whose limit
#     is reached in the first seconds (plus refunds, so that decisions keep
#     going both ways all along), with a ledger row in the same transaction;
#   - record_usage with idempotency keys from a small pool per round;
#   - idempotency_begin/complete around a "payment" row, keys from a small
#     pool, one transaction in ten rolled back; first_time for "jobs";
#   - entitlock.lock around a read-modify-write of a counter (SELECT into
#     a variable, UPDATE to it plus one), with a ledger of increments;
#   - leases on 3 names with short ttls, a history table, renewals, releases
#     and slow workers, as in leases-pgbench.sh (a fifth of the clients);
# while two kinds of fault hit them:
#   (a) kill_loop terminates a random client backend every 0.2-0.5 s;
#   (b) a third of the usage, payment and counter transactions set
#       statement_timeout or lock_timeout to 1-20 ms (or use the timed
#       lock(name, timeout)), so cancellations land while they wait on the
#       hot key, inside entitlock's calls.
#
# How the cancellations are handled: the call and its ledger row run in a
# PL/pgSQL block with an EXCEPTION clause, i.e. a subtransaction; a caught
# 57014 or 55P03 undoes both, the transaction records the cancellation in
# a table and commits (the "catch and carry on" pattern).  One cancellation
# in a hundred is re-raised instead: that transaction aborts and pgbench
# drops the client until the next round (the "let it fail" pattern), as
# happens too when a statement_timeout fires before the block starts or
# after it ends.  A canceled idempotency_begin must leave no claim behind:
# completing the key in the same transaction afterwards must fail.
#
# Checked afterwards (every ledger row is written in the transaction whose
# entitlock call it records, so a kill or a cancellation drops both or
# neither):
#   - hot usage equals the committed allowed amounts (refunds included), is
#     never over the limit, and no call was denied while under it;
#   - keyed usage: each key recorded once, with its amount; usage = the sum;
#   - each payment key paid exactly once, its claim stores that payment's
#     id, every replay was handed that id; each job ran once;
#   - the counter equals the number of committed increments (no lost
#     update);
#   - leases: at most one row per name (also watched during the run), no
#     two committed leases of a name overlap in time, fencing follows time,
#     no late renew/release succeeded after a newer acquisition;
#   - some backends were killed, some statement and lock timeouts fired
#     inside entitlock calls, no backend crashed on its own (no "terminated
#     by signal", PANIC or assertion in the server log, when
#     ENTITLOCK_SERVER_LOG names it), and pgbench saw no error other than
#     those the faults explain.
# A control then runs the counter without entitlock.lock and must lose
# updates: the check can see the bug the lock prevents.
#
# Mutations, each of which makes the test fail, with the failure named:
#   FAULTS_MUTATE=split   the hot ledger row in a transaction of its own
#                         after the call's: usage differs from the ledger
#                         (kills land between the two)
#   FAULTS_MUTATE=ledger  1% of hot ledger rows written without the call:
#                         usage differs from the ledger
#   FAULTS_MUTATE=nolock  the counter without entitlock.lock: lost updates
#   FAULTS_MUTATE=nokey   payments without idempotency_begin: keys paid
#                         twice, claims missing, nothing replayed
#
# Crashes (pg_ctl stop -m immediate) under the same kind of load are
# test/tap/005_crash_under_load.pl.
#
# Runs on the cluster PGHOST points at (test/run.sh's), in a database of
# its own; about a minute by default.  FAULTS_SECONDS (48) is the load
# time, in rounds of 3 s.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

CLIENTS=${FAULTS_CLIENTS:-20}
SECONDS_RUN=${FAULTS_SECONDS:-48}
MUTATE=${FAULTS_MUTATE:-}
ROUND=3
LIMIT=100000
HEADROOM=1500
KEYS=600
LEASE_CLIENTS=$((CLIENTS / 5 > 0 ? CLIENTS / 5 : 1))
MAIN_CLIENTS=$((CLIENTS - LEASE_CLIENTS))
db=entitlock_faults

work=$(mktemp -d "${TMPDIR:-/tmp}/entitlock-faults.XXXXXX")
killer=
cleanup() {
	[ -n "$killer" ] && kill "$killer" 2>/dev/null
	kill $(jobs -p) 2>/dev/null
	wait 2>/dev/null
	if [ -n "${ENTITLOCK_KEEP:-}" ]; then
		log "kept $work and database $db"
	else
		rm -rf "$work"
		test_db_drop "$db"
	fi
}
trap cleanup EXIT
q() { psql -X -q -At -d "$db" "$@"; }

# The server log from here on, for the crash and timeout counts.
server_log=${ENTITLOCK_SERVER_LOG:-}
log_from=0
[ -n "$server_log" ] && [ -r "$server_log" ] && log_from=$(stat -c %s "$server_log")
new_log() {
	if [ -n "$server_log" ] && [ -r "$server_log" ]; then
		tail -c +$((log_from + 1)) "$server_log"
	fi
}

test_db_create "$db" || exit 1
psql -X -q -c "ALTER DATABASE $db SET faults.usage_limit = $LIMIT" \
	-c "ALTER DATABASE $db SET faults.mutate = '${MUTATE:-none}'" || exit 1
psql -X -q -v ON_ERROR_STOP=1 -d "$db" <<'EOF' || exit 1
CREATE TABLE usage_ledger (amount bigint NOT NULL, allowed boolean NOT NULL,
						   used bigint NOT NULL);
CREATE TABLE keyed_ledger (k bigint PRIMARY KEY, amount bigint NOT NULL,
						   repeats int NOT NULL DEFAULT 0);
CREATE TABLE payments (id bigserial PRIMARY KEY, k bigint NOT NULL,
					   amount int NOT NULL);
CREATE TABLE replays (k bigint NOT NULL, payment bigint NOT NULL);
CREATE TABLE jobs (j bigint NOT NULL);
CREATE INDEX ON payments (k);
CREATE INDEX ON jobs (j);
CREATE TABLE counter (name text PRIMARY KEY, n bigint NOT NULL);
INSERT INTO counter VALUES ('counter', 0), ('control', 0);
CREATE TABLE increments (name text NOT NULL);
-- caught cancellations: which call, where it was (in the entitlock call
-- or after it), the SQLSTATE ('false' for a timed lock that gave up)
CREATE TABLE cancels (what text NOT NULL, phase text NOT NULL,
					  sqlstate text NOT NULL, message text);
-- what the functions below see go wrong during the run
CREATE TABLE anomalies (what text NOT NULL, detail text);
CREATE TABLE history (
	fencing bigint PRIMARY KEY,
	name text NOT NULL,
	token uuid NOT NULL,
	acquired_at timestamptz,
	expires_at timestamptz,
	ended_at timestamptz
);
CREATE TABLE late_calls (fencing bigint NOT NULL, call text NOT NULL,
						 ok boolean NOT NULL, at timestamptz NOT NULL);


-- Each function below runs one entitlock call and the row that records it
-- in a subtransaction.  lt: lock_timeout in ms for the entitlock call (0:
-- none); the caller sets statement_timeout for the statement, and the
-- function turns it off once its work is done.  A cancellation undoes the
-- call and its row, and is recorded in cancels, or re-raised when catch is
-- 0.  phase says whether it hit inside the entitlock call.

-- amt > 0: record_usage_if_under_limit; amt < 0: a refund.  With log
-- false the caller writes the ledger row (the "split" mutation).
CREATE FUNCTION hot(amt bigint, lt int, catch int, log boolean DEFAULT true,
					OUT allowed int, OUT used bigint)
LANGUAGE plpgsql AS $$
DECLARE
	phase text := 'start';
	r record;
BEGIN
	BEGIN
		IF current_setting('faults.mutate') = 'ledger' AND random() < 0.01 THEN
			INSERT INTO usage_ledger VALUES (abs(amt), true, 0);
			allowed := 1;
			RETURN;
		END IF;
		PERFORM set_config('lock_timeout', lt || 'ms', true);
		phase := 'entitlock';
		IF amt > 0 THEN
			SELECT d.allowed::int, d.used INTO r
			  FROM entitlock.record_usage_if_under_limit('hot', 'api', amt,
					current_setting('faults.usage_limit')::bigint) AS d;
		ELSE
			SELECT 1 AS allowed, entitlock.record_usage('hot', 'api', amt) AS used
			  INTO r;
		END IF;
		phase := 'after';
		PERFORM set_config('lock_timeout', '0', true);
		allowed := r.allowed;
		used := r.used;
		IF log THEN
			INSERT INTO usage_ledger VALUES (amt, allowed = 1, used);
		END IF;
		PERFORM set_config('statement_timeout', '0', true);
	EXCEPTION WHEN query_canceled OR lock_not_available THEN
		PERFORM set_config('statement_timeout', '0', true);
		IF catch = 0 THEN RAISE; END IF;
		INSERT INTO cancels VALUES ('hot', phase, SQLSTATE, SQLERRM);
		allowed := -1;
	END;
END
$$;

-- record_usage with an idempotency key; the amount is a function of the
-- key, as a retry's would be.
CREATE FUNCTION keyed(key_no bigint, lt int, catch int) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	phase text := 'start';
	amt bigint := key_no % 3 + 1;
BEGIN
	BEGIN
		PERFORM set_config('lock_timeout', lt || 'ms', true);
		phase := 'entitlock';
		PERFORM entitlock.record_usage('hot', 'keyed', amt, 'lifetime', 'k-' || key_no);
		phase := 'after';
		PERFORM set_config('lock_timeout', '0', true);
		INSERT INTO keyed_ledger AS l (k, amount) VALUES (key_no, amt)
			ON CONFLICT (k) DO UPDATE SET repeats = l.repeats + 1;
		PERFORM set_config('statement_timeout', '0', true);
	EXCEPTION WHEN query_canceled OR lock_not_available THEN
		PERFORM set_config('statement_timeout', '0', true);
		IF catch = 0 THEN RAISE; END IF;
		INSERT INTO cancels VALUES ('keyed', phase, SQLSTATE, SQLERRM);
	END;
END
$$;

-- A payment under an idempotency key.  The fingerprint is a function of
-- the key, as a real retry's would be.
CREATE FUNCTION pay(key_no bigint, lt int, catch int) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	phase text := 'start';
	k text := 'pay-' || key_no;
	s text;
	resp jsonb;
	payment bigint;
BEGIN
	BEGIN
		PERFORM set_config('lock_timeout', lt || 'ms', true);
		phase := 'entitlock';
		IF current_setting('faults.mutate') = 'nokey' THEN
			s := 'new';
		ELSE
			SELECT b.status, b.response INTO s, resp
			  FROM entitlock.idempotency_begin(k, 'amount=' || (key_no % 7 + 1)) AS b;
		END IF;
		phase := 'after';
		PERFORM set_config('lock_timeout', '0', true);
		IF s = 'new' THEN
			INSERT INTO payments (k, amount) VALUES (key_no, key_no % 7 + 1)
				RETURNING id INTO payment;
			IF current_setting('faults.mutate') <> 'nokey' THEN
				phase := 'entitlock';
				PERFORM entitlock.idempotency_complete(k, jsonb_build_object('payment', payment));
				phase := 'after';
			END IF;
		ELSE
			INSERT INTO replays VALUES (key_no, coalesce((resp ->> 'payment')::bigint, 0));
		END IF;
		PERFORM set_config('statement_timeout', '0', true);
		RETURN s;
	EXCEPTION WHEN query_canceled OR lock_not_available THEN
		PERFORM set_config('statement_timeout', '0', true);
		IF catch = 0 THEN RAISE; END IF;
		INSERT INTO cancels VALUES ('pay', phase, SQLSTATE, SQLERRM);
	END;
	-- The claim, if it was made, went with the subtransaction.
	BEGIN
		PERFORM entitlock.idempotency_complete(k, '{}');
		INSERT INTO anomalies VALUES ('a claim outlived its canceled subtransaction', k);
	EXCEPTION WHEN object_not_in_prerequisite_state THEN
		NULL;
	END;
	RETURN 'canceled';
END
$$;

-- Read-modify-write of a counter under entitlock.lock.  mode 1: with a
-- lock_timeout of t ms; 3 and 4: lock(name, t ms) instead; otherwise
-- lock(name).  The caller sets statement_timeout in modes 2 and 4.
-- Without locked, no lock.
CREATE FUNCTION bump(cname text, mode int, t int, catch int, locked boolean)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	phase text := 'start';
	v bigint;
BEGIN
	BEGIN
		phase := 'entitlock';
		IF NOT locked THEN
			NULL;
		ELSIF mode IN (3, 4) THEN
			IF NOT entitlock.lock(cname, make_interval(secs => t / 1000.0)) THEN
				INSERT INTO cancels VALUES ('counter', phase, 'false');
				PERFORM set_config('statement_timeout', '0', true);
				RETURN 'gave up';
			END IF;
		ELSE
			PERFORM set_config('lock_timeout', CASE WHEN mode = 1 THEN t ELSE 0 END || 'ms', true);
			PERFORM entitlock.lock(cname);
			PERFORM set_config('lock_timeout', '0', true);
		END IF;
		phase := 'after';
		SELECT c.n INTO v FROM counter AS c WHERE c.name = cname;
		UPDATE counter AS c SET n = v + 1 WHERE c.name = cname;
		INSERT INTO increments VALUES (cname);
		PERFORM set_config('statement_timeout', '0', true);
		RETURN 'bumped';
	EXCEPTION WHEN query_canceled OR lock_not_available THEN
		PERFORM set_config('statement_timeout', '0', true);
		IF catch = 0 THEN RAISE; END IF;
		INSERT INTO cancels VALUES ('counter', phase, SQLSTATE, SQLERRM);
		RETURN 'canceled';
	END;
END
$$;
EOF

# The hot meter, with its limit a few seconds of calls away.
q -v ON_ERROR_STOP=1 -c "BEGIN" -c "INSERT INTO usage_ledger
	SELECT $((LIMIT - HEADROOM)), true, entitlock.record_usage('hot', 'api', $((LIMIT - HEADROOM)))" \
	-c "COMMIT" || exit 1

# A third of the usage and payment transactions get a timeout of 1-20 ms:
# mode 1 a lock_timeout, mode 2 a statement_timeout (the counter has modes
# of its own, see bump).  catch = 0 (1%) re-raises the cancellation.
timeouts='\set mode random(1, 6)
\set t random(1, 20)
\set lt case when :mode = 1 then :t else 0 end
\set st case when :mode = 2 then :t else 0 end
\set catch random(0, 99)'

if [ "$MUTATE" = split ]; then
	cat >"$work/hot.sql" <<EOF
$timeouts
\\set amount random(1, 3)
\\set signed case when random(1, 5) = 1 then 0 - :amount else :amount end
BEGIN;
SELECT set_config('statement_timeout', :st || 'ms', true);
SELECT allowed, used FROM hot(:signed, :lt, :catch, false) \\gset
COMMIT;
\\if :allowed >= 0
INSERT INTO usage_ledger VALUES (:signed, :allowed = 1, :used);
\\endif
EOF
else
	cat >"$work/hot.sql" <<EOF
$timeouts
\\set amount random(1, 3)
\\set signed case when random(1, 5) = 1 then 0 - :amount else :amount end
BEGIN;
SELECT set_config('statement_timeout', :st || 'ms', true);
SELECT hot(:signed, :lt, :catch);
COMMIT;
EOF
fi

# Keys come from a pool of $KEYS per round (-D gen), so each round starts
# with many concurrent first calls.
cat >"$work/keyed.sql" <<EOF
$timeouts
\\set k :gen * 100000 + random(1, $KEYS)
BEGIN;
SELECT set_config('statement_timeout', :st || 'ms', true);
SELECT keyed(:k, :lt, :catch);
COMMIT;
EOF

cat >"$work/pay.sql" <<EOF
$timeouts
\\set k :gen * 100000 + random(1, $KEYS)
\\set fail random(1, 10)
BEGIN;
SELECT set_config('statement_timeout', :st || 'ms', true);
SELECT pay(:k, :lt, :catch);
\\if :fail = 1
ROLLBACK;
\\else
COMMIT;
\\endif
EOF

cat >"$work/job.sql" <<EOF
\\set j :gen * 100000 + random(1, $KEYS)
BEGIN;
SELECT entitlock.first_time('job-' || :j)::int AS first \\gset
\\if :first
INSERT INTO jobs VALUES (:j);
\\endif
COMMIT;
EOF

locked=true
[ "$MUTATE" = nolock ] && locked=false
cat >"$work/counter.sql" <<EOF
\\set mode random(1, 8)
\\set t random(1, 20)
\\set st case when :mode = 2 then :t when :mode = 4 then random(1, 20) else 0 end
\\set catch random(0, 99)
BEGIN;
SELECT set_config('statement_timeout', :st || 'ms', true);
SELECT bump('counter', :mode, :t, :catch, $locked);
COMMIT;
EOF

# Leases as in leases-pgbench.sh: acquire (one in ten rolled back), then
# renew and release, release, or sleep past the ttl (a slow worker) and
# renew or release anyway.
cat >"$work/lease.sql" <<'EOF'
\set n random(0, 2)
\set ttl_ms random(50, 250)
\set act random(1, 4)
\set fail random(1, 10)
BEGIN;
WITH a AS (SELECT * FROM entitlock.lease_acquire('lease-' || :n, make_interval(secs => :ttl_ms / 1000.0), 'c' || :client_id)),
	 i AS (INSERT INTO history (fencing, name, token)
		   SELECT fencing, 'lease-' || :n, token FROM a RETURNING fencing)
SELECT coalesce(max(fencing), 0) AS fencing FROM i \gset
UPDATE history h SET acquired_at = r.acquired_at, expires_at = r.expires_at
  FROM entitlock.lease_record r
 WHERE h.fencing = :fencing AND r.fencing = :fencing;
\if :fail = 1
ROLLBACK;
\set fencing 0
\else
COMMIT;
\endif
\if :fencing > 0
\if :act = 1
\set pause random(0, :ttl_ms / 2)
\sleep :pause ms
BEGIN;
SELECT coalesce((SELECT entitlock.lease_renew(name, token, make_interval(secs => :ttl_ms / 1000.0))
				   FROM history WHERE fencing = :fencing), false)::int AS renewed \gset
UPDATE history h SET expires_at = r.expires_at
  FROM entitlock.lease_record r
 WHERE :renewed = 1 AND h.fencing = :fencing AND r.fencing = :fencing;
COMMIT;
\set pause random(0, :ttl_ms / 2)
\sleep :pause ms
\endif
\if :act <= 2
WITH r AS (SELECT entitlock.lease_release(name, token) AS ok
			 FROM history WHERE fencing = :fencing)
UPDATE history SET ended_at = clock_timestamp()
  FROM r WHERE r.ok AND fencing = :fencing;
\else
\set pause random(:ttl_ms + 20, :ttl_ms + 200)
\sleep :pause ms
\set call random(0, 1)
BEGIN;
WITH h AS (SELECT * FROM history WHERE fencing = :fencing),
	 c AS (SELECT CASE WHEN :call = 0
					   THEN entitlock.lease_renew(name, token, make_interval(secs => :ttl_ms / 1000.0))
					   ELSE entitlock.lease_release(name, token) END AS ok
			 FROM h)
INSERT INTO late_calls
SELECT :fencing, CASE WHEN :call = 0 THEN 'renew' ELSE 'release' END,
	   ok, clock_timestamp()
  FROM c;
UPDATE history h SET expires_at = r.expires_at
  FROM entitlock.lease_record r, late_calls l
 WHERE :call = 0 AND l.fencing = :fencing AND l.ok
   AND h.fencing = :fencing AND r.fencing = :fencing;
UPDATE history h SET ended_at = l.at
  FROM late_calls l
 WHERE :call = 1 AND l.fencing = :fencing AND l.ok AND h.fencing = :fencing;
COMMIT;
\endif
\endif
EOF

# Fails (division by zero) the moment a name has two lease rows.
cat >"$work/watch.sql" <<'EOF'
SELECT 1 / (1 - least(count(*), 1)) AS ok
  FROM (SELECT name FROM entitlock.lease_record GROUP BY name HAVING count(*) > 1) AS d;
\sleep 10 ms
EOF

rounds=$((SECONDS_RUN / ROUND))
[ "$rounds" -ge 2 ] || rounds=2

log "faults: $MAIN_CLIENTS + $LEASE_CLIENTS clients, $rounds rounds of ${ROUND}s, kills, timeouts${MUTATE:+, mutation $MUTATE}"
started=$SECONDS
kill_loop "$db" >"$work/kills" &
killer=$!
for r in $(seq 0 $((rounds - 1))); do
	PGDATABASE=$db pgbench -n -T "$ROUND" -c "$MAIN_CLIENTS" -j 2 -D gen=$r \
		-f "$work/hot.sql@6" -f "$work/keyed.sql@3" -f "$work/pay.sql@4" \
		-f "$work/job.sql@1" -f "$work/counter.sql@4" >"$work/out.$r" 2>&1 &
	main_pid=$!
	PGDATABASE=$db pgbench -n -T "$ROUND" -c "$LEASE_CLIENTS" -j 1 \
		-f "$work/lease.sql@20" -f "$work/watch.sql@1" >"$work/lease.$r" 2>&1 &
	lease_pid=$!
	wait "$main_pid" "$lease_pid"
done
[ -n "$killer" ] && kill "$killer" 2>/dev/null && wait "$killer" 2>/dev/null
killer=
elapsed=$((SECONDS - started))

kills=$(awk '{ s += $1 } END { print s + 0 }' "$work/kills")
runs=$(cat "$work"/out.* "$work"/lease.* |
	sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' |
	awk '{ s += $1 } END { print s + 0 }')
# The timeouts this test causes on purpose (what kills do is known to
# pgbench_unexpected_errors).
# Nothing here sends a cancel request, yet "user request" cancels occur:
# PostgreSQL 15 reports a statement_timeout that goes off while the query
# is still being parsed as "canceling statement due to user request" (it
# re-arms the expired timer, which clears the flag that says why).  With
# statement_timeout = '1ms', SELECT count(*) FROM (VALUES (1), ... 20000
# rows) v fails that way every time, without entitlock.  Here too a
# timeout set on purpose; the "catch" functions cannot catch it either, as
# it fires before their block starts (as do some plain statement timeouts
# on a busy machine).
expected='canceling statement due to (statement timeout|lock timeout|user request)'
unexpected=$(PGBENCH_EXPECTED_ERRORS=$expected pgbench_unexpected_errors "$work"/out.* "$work"/lease.*)
new_log >"$work/server.log"
escaped_st=$(grep -c 'ERROR:  canceling statement due to statement timeout' "$work/server.log")
escaped_lt=$(grep -c 'ERROR:  canceling statement due to lock timeout' "$work/server.log")
escaped_ur=$(grep -c 'ERROR:  canceling statement due to user request' "$work/server.log")
died=$(grep -E 'terminated by signal|PANIC|TRAP:' "$work/server.log" | head -3)
[ -s "$work/server.log" ] || log "  no server log to read (set ENTITLOCK_SERVER_LOG): no crash check, no count of escaped timeouts"

read -r used ledger allowed denied refunds wrong_decisions keyed_used keyed_sum keyed_keys keyed_stored keyed_bad keyed_repeats \
	payments paid_keys claims unmatched replays bad_replays jobs job_keys job_claims \
	counter increments caught_st caught_lt caught_ur in_call gave_up anomalies \
	acquisitions untimed overlaps misordered late_ok late releases two_rows <<<"$(
	q -F ' ' <<EOF
WITH u AS (SELECT * FROM entitlock.usage_idempotency WHERE subject = 'hot' AND feature = 'keyed'),
	 h AS (SELECT *, lag(least(expires_at, coalesce(ended_at, 'infinity'))) OVER w AS prev_ended,
				  lag(acquired_at) OVER w AS prev_acquired
			 FROM history WINDOW w AS (PARTITION BY name ORDER BY fencing))
SELECT entitlock.usage('hot', 'api'),
	   (SELECT coalesce(sum(amount) FILTER (WHERE allowed), 0) FROM usage_ledger),
	   (SELECT count(*) FILTER (WHERE allowed AND amount > 0) FROM usage_ledger),
	   (SELECT count(*) FILTER (WHERE NOT allowed) FROM usage_ledger),
	   (SELECT count(*) FILTER (WHERE amount < 0) FROM usage_ledger),
	   (SELECT count(*) FROM usage_ledger
		 WHERE used > $LIMIT OR (NOT allowed AND used + amount <= $LIMIT)),
	   entitlock.usage('hot', 'keyed'),
	   (SELECT coalesce(sum(amount), 0) FROM keyed_ledger),
	   (SELECT count(*) FROM keyed_ledger),
	   (SELECT count(*) FROM u),
	   (SELECT count(*) FROM keyed_ledger l FULL JOIN u ON u.idempotency_key = 'k-' || l.k
		 WHERE l.k IS NULL OR u.idempotency_key IS NULL OR u.amount <> l.amount),
	   (SELECT coalesce(sum(repeats), 0) FROM keyed_ledger),
	   (SELECT count(*) FROM payments),
	   (SELECT count(DISTINCT k) FROM payments),
	   (SELECT count(*) FROM entitlock.idempotency_key WHERE key LIKE 'pay-%'),
	   -- claims without their payment, or payments without their claim
	   (SELECT count(*) FROM (SELECT * FROM entitlock.idempotency_key WHERE key LIKE 'pay-%') c
			 FULL JOIN payments p ON c.key = 'pay-' || p.k
			WHERE p.id IS NULL OR c.key IS NULL
			   OR (c.response ->> 'payment')::bigint IS DISTINCT FROM p.id),
	   (SELECT count(*) FROM replays),
	   (SELECT count(*) FROM replays r
		 WHERE NOT EXISTS (SELECT FROM payments p WHERE p.k = r.k AND p.id = r.payment)),
	   (SELECT count(*) FROM jobs),
	   (SELECT count(DISTINCT j) FROM jobs),
	   (SELECT count(*) FROM entitlock.idempotency_key WHERE key LIKE 'job-%'),
	   (SELECT n FROM counter WHERE name = 'counter'),
	   (SELECT count(*) FROM increments WHERE name = 'counter'),
	   (SELECT count(*) FROM cancels WHERE message LIKE '%statement timeout'),
	   (SELECT count(*) FROM cancels WHERE message LIKE '%lock timeout'),
	   (SELECT count(*) FROM cancels WHERE message LIKE '%user request'),
	   (SELECT count(*) FROM cancels WHERE phase = 'entitlock' AND sqlstate <> 'false'),
	   (SELECT count(*) FROM cancels WHERE sqlstate = 'false'),
	   (SELECT count(*) FROM anomalies),
	   (SELECT count(*) FROM h),
	   (SELECT count(*) FROM h WHERE acquired_at IS NULL),
	   (SELECT count(*) FROM h WHERE acquired_at < prev_ended),
	   (SELECT count(*) FROM h WHERE acquired_at <= prev_acquired),
	   (SELECT count(*) FROM late_calls l JOIN history o USING (fencing)
		 WHERE l.ok AND EXISTS (SELECT FROM history n
								 WHERE n.name = o.name AND n.fencing > l.fencing
								   AND n.acquired_at < l.at)),
	   (SELECT count(*) FROM late_calls),
	   (SELECT count(*) FROM h WHERE ended_at IS NOT NULL),
	   (SELECT count(*) FROM (SELECT name FROM entitlock.lease_record
							   GROUP BY name HAVING count(*) > 1) AS d);
EOF
)"

log "  ${elapsed}s: $runs script runs, $kills backends terminated"
log "  hot: usage $used, ledger $ledger ($allowed allowed, $denied denied, $refunds refunds), limit $LIMIT, $wrong_decisions wrong decisions"
log "  keyed: usage $keyed_used, ledger $keyed_sum, $keyed_keys keys, $keyed_stored stored, $keyed_bad mismatched, $keyed_repeats repeats"
log "  payments: $payments for $paid_keys keys, $claims claims, $unmatched mismatched; $replays replays, $bad_replays wrong; jobs: $jobs for $job_keys keys, $job_claims claims"
log "  counter: $counter, $increments committed increments"
log "  leases: $acquisitions acquisitions, $releases released, $late late calls; $overlaps overlaps, $misordered out of order, $late_ok late successes, $two_rows names with two rows"
log "  timeouts caught: $caught_st statement, $caught_lt lock, $caught_ur reported as user request ($in_call inside an entitlock call); escaped to the client: $escaped_st statement, $escaped_lt lock, $escaped_ur user request; $gave_up timed locks gave up; $anomalies anomalies"

violations=0
must() {
	local before=$check_failed
	check_failed=0
	check "$@"
	violations=$((violations + check_failed))
	check_failed=$((before | check_failed))
}
must '[ -z "$unexpected" ]' "unexpected pgbench errors: $unexpected"
must '[ -z "$died" ]' "a backend crashed on its own: $died"
must '[ "$kills" -ge 3 ]' "only $kills backends were terminated"
must '[ "$caught_st" -gt 0 ] && [ "$caught_lt" -gt 0 ] && [ "$in_call" -gt 0 ]' \
	"not enough timeouts fired inside entitlock calls"
must '[ "$used" = "$ledger" ]' "hot usage $used differs from the committed allowed amounts $ledger"
must '[ "$used" -le "$LIMIT" ] && [ "$wrong_decisions" = 0 ]' "usage went over the limit, or a call was denied under it"
must '[ "$allowed" -gt 0 ] && [ "$denied" -gt 0 ] && [ "$refunds" -gt 0 ]' "the run did not reach the limit"
must '[ "$keyed_used" = "$keyed_sum" ]' "keyed usage $keyed_used differs from its ledger $keyed_sum"
must '[ "$keyed_stored" = "$keyed_keys" ] && [ "$keyed_bad" = 0 ] && [ "$keyed_repeats" -gt 0 ]' \
	"keyed usage and its ledger disagree on keys (or no key repeated)"
must '[ "$payments" = "$paid_keys" ]' "some key was paid twice ($payments payments, $paid_keys keys)"
must '[ "$claims" = "$payments" ] && [ "$unmatched" = 0 ]' "claims and payments disagree"
must '[ "$replays" -gt 0 ] && [ "$bad_replays" = 0 ]' "replays got a wrong payment (or none were replayed)"
must '[ "$jobs" = "$job_keys" ] && [ "$jobs" = "$job_claims" ]' "a job ran twice, or its claim and row disagree"
must '[ "$counter" = "$increments" ] && [ "$increments" -gt 0 ]' "the counter lost updates ($counter, $increments increments)"
must '[ "$anomalies" = 0 ]' "$(q -c "SELECT string_agg(DISTINCT what, '; ') FROM anomalies")"
must '[ "$acquisitions" -ge 100 ] && [ "$untimed" = 0 ]' "only $acquisitions lease acquisitions, $untimed without times"
must '[ "$overlaps" = 0 ] && [ "$misordered" = 0 ] && [ "$late_ok" = 0 ]' "leases overlapped or fencing went out of order"
must '[ "$two_rows" = 0 ]' "two lease rows for a name"

log "faults: $runs transactions run ($((allowed + denied + refunds)) usage decisions, $payments payments, $increments increments, $acquisitions leases committed), $kills kills, $((caught_st + escaped_st)) statement timeouts, $((caught_lt + escaped_lt)) lock timeouts, $gave_up timed locks gave up, $violations violations"

# Control: the same read-modify-write without the lock must lose updates.
cat >"$work/control.sql" <<'EOF'
BEGIN;
SELECT bump('control', 0, 0, 1, false);
COMMIT;
EOF
PGDATABASE=$db pgbench -n -T 3 -c "$MAIN_CLIENTS" -j 2 -f "$work/control.sql" >/dev/null 2>&1
read -r c_n c_inc <<<"$(q -F ' ' -c "SELECT n, (SELECT count(*) FROM increments WHERE name = 'control') FROM counter WHERE name = 'control'")"
log "  control without the lock: counter $c_n after $c_inc increments"
check '[ "$c_n" -lt "$c_inc" ]' "the unlocked control lost no update, so this test cannot see the bug"

exit "$check_failed"
