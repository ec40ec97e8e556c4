#!/usr/bin/env bash
#
# Stress: 32 pgbench clients on one hot (subject, feature), while backends
# are terminated at random.
#
# Every transaction calls record_usage_if_under_limit and, in the same
# transaction, appends the decision it got to a ledger; a killed backend
# rolls back both.  So afterwards the recorded usage must equal the sum of
# the allowed amounts in the ledger (nothing recorded twice, nothing lost),
# and must not exceed the limit.  The limit is reached early in the run, so
# most calls near it are denials.  A second meter takes idempotency keys
# drawn from a small set, so keys repeat and arrive concurrently: each key
# must be recorded once, and every repeat must get the first decision.
#
# Rounds of pgbench run until the time is up, as pgbench gives up on a
# client whose backend was killed.  Required: some backends were killed,
# no pgbench error other than a lost connection, both invariants hold, and
# no lock is left behind.  A control phase does check-then-record without
# entitlock's lock and must overshoot its limit, showing the check can see
# the bug.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

CLIENTS=${STRESS_CLIENTS:-32}
SECONDS_RUN=${STRESS_SECONDS:-15}
LIMIT=20000
IDEM_LIMIT=4000
db=entitlock_stress_usage
scripts=$(mktemp -d)
killer=
trap '[ -n "$killer" ] && kill "$killer" 2>/dev/null; rm -rf "$scripts"; test_db_drop "$db"' EXIT

test_db_create "$db" || exit 1
psql -X -q -v ON_ERROR_STOP=1 -d "$db" <<'EOF' || exit 1
CREATE TABLE ledger (amount bigint NOT NULL, allowed boolean NOT NULL,
					 used bigint NOT NULL);
CREATE TABLE idem_ledger (k int PRIMARY KEY, amount bigint NOT NULL,
						  allowed boolean NOT NULL,
						  repeats int NOT NULL DEFAULT 0,
						  disagreed boolean NOT NULL DEFAULT false);
EOF

cat >"$scripts/hot.sql" <<EOF
\\set amount random(1, 3)
BEGIN;
SELECT allowed::int AS allowed, used FROM entitlock.record_usage_if_under_limit('hot', 'api', :amount, $LIMIT) \\gset
INSERT INTO ledger VALUES (:amount, :allowed::boolean, :used);
COMMIT;
EOF

# The amount is a function of the key, as a retry's would be.
cat >"$scripts/idem.sql" <<EOF
\\set k random(1, 3000)
\\set amount :k % 3 + 1
BEGIN;
SELECT allowed::int AS allowed FROM entitlock.record_usage_if_under_limit('hot', 'idem', :amount, $IDEM_LIMIT, 'lifetime', 'key-' || :k) \\gset
INSERT INTO idem_ledger AS l (k, amount, allowed) VALUES (:k, :amount, :allowed::boolean)
	ON CONFLICT (k) DO UPDATE
	SET repeats = l.repeats + 1,
		disagreed = l.disagreed OR l.allowed <> excluded.allowed;
COMMIT;
EOF

log "usage stress: $CLIENTS clients, ${SECONDS_RUN}s, random backend kills"
# Lost connections are what the kills cause; anything else is a failure.
stress_under_kills "$db" "$SECONDS_RUN" "$scripts" -c "$CLIENTS" -j 2 \
	-f "$scripts/hot.sql@3" -f "$scripts/idem.sql@1"

read -r used ledger_sum allowed denied over idem_used idem_sum idem_keys idem_rows disagreed repeats <<<"$(
	psql -X -At -F ' ' -d "$db" <<EOF
SELECT entitlock.usage('hot', 'api'),
	   (SELECT coalesce(sum(amount) FILTER (WHERE allowed), 0) FROM ledger),
	   (SELECT count(*) FILTER (WHERE allowed) FROM ledger),
	   (SELECT count(*) FILTER (WHERE NOT allowed) FROM ledger),
	   (SELECT count(*) FROM ledger WHERE used > $LIMIT),
	   entitlock.usage('hot', 'idem'),
	   (SELECT coalesce(sum(amount) FILTER (WHERE allowed), 0) FROM idem_ledger),
	   (SELECT count(*) FROM entitlock.usage_idempotency WHERE feature = 'idem'),
	   (SELECT count(*) FROM idem_ledger),
	   (SELECT count(*) FROM idem_ledger WHERE disagreed),
	   (SELECT coalesce(sum(repeats), 0) FROM idem_ledger);
EOF
)"
log "  $rounds rounds, $committed transactions committed, $kills backends terminated"
log "  hot: usage $used, ledger $ledger_sum ($allowed allowed, $denied denied), limit $LIMIT"
log "  keys: usage $idem_used, ledger $idem_sum, $idem_keys keys stored, $idem_rows in ledger, $repeats repeats, $disagreed disagreed"

check '[ -z "$unexpected" ]' "unexpected pgbench errors: $unexpected"
check '[ "$kills" -ge 3 ]' "only $kills backends were terminated"
check '[ "$used" = "$ledger_sum" ]' "usage $used differs from the committed allowed amounts $ledger_sum"
check '[ "$used" -le "$LIMIT" ] && [ "$over" = 0 ]' "usage went over the limit"
check '[ "$allowed" -gt 0 ] && [ "$denied" -gt 0 ]' "the run did not reach the limit"
check '[ "$idem_used" = "$idem_sum" ]' "keyed usage $idem_used differs from its ledger $idem_sum"
check '[ "$idem_used" -le "$IDEM_LIMIT" ]' "keyed usage went over its limit"
check '[ "$idem_keys" = "$idem_rows" ]' "$idem_keys keys stored for $idem_rows committed keys"
check '[ "$disagreed" = 0 ] && [ "$repeats" -gt 0 ]' "repeated keys got different decisions (or none repeated)"

# Nothing is left locked: a new call gets through at once.
check 'psql -X -q -At -d "$db" -c "SET lock_timeout = '"'1s'"'" \
	-c "SELECT allowed FROM entitlock.record_usage_if_under_limit('"'hot'"', '"'api'"', 1, 1)" >/dev/null' \
	"a lock was left behind"

# Control: check, then record, without entitlock's lock, must overshoot.
cat >"$scripts/naive.sql" <<'EOF'
SELECT entitlock.usage('control', 'api') AS u \gset
\if :u < 200
SELECT entitlock.record_usage('control', 'api', 1);
\endif
EOF
PGDATABASE=$db pgbench -n -c "$CLIENTS" -j 2 -T 3 -f "$scripts/naive.sql" >/dev/null 2>&1
control=$(psql -X -At -d "$db" -c "SELECT entitlock.usage('control', 'api')")
log "  control without the lock: usage $control against a limit of 200"
check '[ "$control" -gt 200 ]' "the unlocked control did not overshoot, so this test cannot see the bug"

exit "$check_failed"
