#!/usr/bin/env bash
#
# Stress: 32 pgbench clients submit "payments" under idempotency keys drawn
# from a small set, so keys repeat and duplicates arrive concurrently, while
# backends are terminated at random and one transaction in ten rolls back
# after doing its write.
#
# A transaction that gets 'new' inserts the payment and completes the key
# with the payment's id, in the same transaction; one that gets 'replay'
# logs the id it was given.  A third script uses first_time() for jobs.
# Each round of pgbench draws from a fresh set of keys, so every round
# starts with many concurrent first claims.
# Afterwards every key's payment must exist exactly once, each committed
# claim must match a committed payment and store its id, and every replay
# must have been handed that id.  A control phase does the hand-written
# check-then-insert and must apply some key twice, showing the check can
# see the bug.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

CLIENTS=${STRESS_CLIENTS:-32}
SECONDS_RUN=${STRESS_SECONDS:-15}
KEYS=2000
db=entitlock_stress_idem
scripts=$(mktemp -d)
killer=
trap '[ -n "$killer" ] && kill "$killer" 2>/dev/null; [ -n "${ENTITLOCK_KEEP:-}" ] || rm -rf "$scripts"; test_db_drop "$db"' EXIT

test_db_create "$db" || exit 1
psql -X -q -v ON_ERROR_STOP=1 -d "$db" <<'EOF' || exit 1
CREATE TABLE payments (id bigserial PRIMARY KEY, k int NOT NULL,
					   amount int NOT NULL);
CREATE TABLE replays (k int NOT NULL, payment bigint NOT NULL);
CREATE TABLE jobs (j int NOT NULL);
CREATE TABLE naive_claims (k int NOT NULL);
CREATE TABLE naive_payments (k int NOT NULL);
EOF

# The fingerprint is a function of the key, as a real retry's would be.
cat >"$scripts/pay.sql" <<EOF
\\set k :round * 100000 + random(1, $KEYS)
\\set fail random(1, 10)
BEGIN;
SELECT (status = 'new')::int AS is_new, coalesce(response ->> 'payment', '0') AS replayed
  FROM entitlock.idempotency_begin('pay-' || :k, 'amount=' || (:k % 7 + 1)) \\gset
\\if :is_new
INSERT INTO payments (k, amount) VALUES (:k, :k % 7 + 1) RETURNING id \\gset
SELECT entitlock.idempotency_complete('pay-' || :k, jsonb_build_object('payment', :id));
\\else
INSERT INTO replays VALUES (:k, :replayed);
\\endif
\\if :fail = 1
ROLLBACK;
\\else
COMMIT;
\\endif
EOF

cat >"$scripts/job.sql" <<EOF
\\set j :round * 100000 + random(1, $KEYS)
BEGIN;
SELECT entitlock.first_time('job-' || :j)::int AS first \\gset
\\if :first
INSERT INTO jobs VALUES (:j);
\\endif
COMMIT;
EOF

log "idempotency stress: $CLIENTS clients, ${SECONDS_RUN}s, $KEYS keys, random backend kills"
# Lost connections are what the kills cause; anything else is a failure.
stress_under_kills "$db" "$SECONDS_RUN" "$scripts" -c "$CLIENTS" -j 2 \
	-f "$scripts/pay.sql@3" -f "$scripts/job.sql@1"

read -r payments paid_keys claims unmatched replays bad_replays jobs job_keys job_claims <<<"$(
	psql -X -At -F ' ' -d "$db" <<'EOF'
SELECT (SELECT count(*) FROM payments),
	   (SELECT count(DISTINCT k) FROM payments),
	   (SELECT count(*) FROM entitlock.idempotency_key WHERE key LIKE 'pay-%'),
	   -- claims without their payment, or payments without their claim
	   (SELECT count(*) FROM entitlock.idempotency_key c
			 FULL JOIN payments p ON c.key = 'pay-' || p.k
			WHERE (c.key IS NULL OR c.key LIKE 'pay-%')
			  AND (p.id IS NULL OR c.key IS NULL
				   OR (c.response ->> 'payment')::bigint IS DISTINCT FROM p.id
				   OR c.fingerprint IS DISTINCT FROM 'amount=' || p.amount)),
	   (SELECT count(*) FROM replays),
	   (SELECT count(*) FROM replays r
			WHERE NOT EXISTS (SELECT FROM payments p
							   WHERE p.k = r.k AND p.id = r.payment)),
	   (SELECT count(*) FROM jobs),
	   (SELECT count(DISTINCT j) FROM jobs),
	   (SELECT count(*) FROM entitlock.idempotency_key WHERE key LIKE 'job-%');
EOF
)"
log "  $rounds rounds, $committed transactions committed, $kills backends terminated"
log "  payments: $payments for $paid_keys keys, $claims claims, $unmatched mismatched; $replays replays, $bad_replays wrong"
log "  jobs: $jobs rows for $job_keys keys, $job_claims claims"

check '[ -z "$unexpected" ]' "unexpected pgbench errors: $unexpected"
check '[ "$kills" -ge 3 ]' "only $kills backends were terminated"
check '[ "$payments" = "$paid_keys" ]' "some key was paid twice ($payments payments, $paid_keys keys)"
check '[ "$claims" = "$payments" ] && [ "$unmatched" = 0 ]' "claims and payments disagree"
check '[ "$replays" -gt 0 ] && [ "$bad_replays" = 0 ]' "replays got a wrong payment (or none were replayed)"
check '[ "$jobs" = "$job_keys" ] && [ "$jobs" = "$job_claims" ]' "a job ran twice, or its claim and row disagree"

# Nothing is left claimed or locked: every key answers at once.
check 'psql -X -q -At -d "$db" -c "SET lock_timeout = '"'2s'"'" \
	-c "SELECT count(*) FROM (SELECT DISTINCT k FROM payments) AS p, entitlock.idempotency_begin('"'pay-'"' || k)" >/dev/null' \
	"a key was left locked"

# Control: look, then claim, without entitlock, must apply some key twice.
cat >"$scripts/naive.sql" <<'EOF'
\set k random(1, 200)
BEGIN;
SELECT count(*) = 0 AS fresh FROM naive_claims WHERE k = :k \gset
\if :fresh
SELECT pg_sleep(0.001);
INSERT INTO naive_payments VALUES (:k);
INSERT INTO naive_claims VALUES (:k);
\endif
COMMIT;
EOF
PGDATABASE=$db pgbench -n -c "$CLIENTS" -j 2 -T 3 -f "$scripts/naive.sql" >/dev/null 2>&1
twice=$(psql -X -At -d "$db" -c "SELECT count(*) - count(DISTINCT k) FROM naive_payments")
log "  control without entitlock: $twice payments applied twice"
check '[ "$twice" -gt 0 ]' "the control applied nothing twice, so this test cannot see the bug"

exit "$check_failed"
