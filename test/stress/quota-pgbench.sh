#!/usr/bin/env bash
#
# Stress for the quota engine (1.1): 32 pgbench clients, backends
# terminated at random.
#
# Limits.  Each transaction is an API gateway's call: per user an hourly
# and a daily limit and per organisation a monthly one, in one
# record_usage_if_under_limits() call, with the limits listed in a random
# one of two opposite orders; some transactions instead record on the
# organisation's meter alone with record_usage_if_under_limit().  Each
# appends its decision to a ledger in the same transaction, so a killed
# backend rolls back both.  Afterwards every meter's usage must equal the
# amounts of the committed allowed calls that named it (all or nothing:
# a denial recorded nowhere) and be at most its limit, and no call may
# have failed (crossing orders never deadlock).
#
# Rate limits.  The same clients call rate_limit() on one name, 200 units a
# second in bursts of 50, costs 1 to 3.  Each allowed call's decision time
# is the state it stored less its reset_after, exact to the microsecond;
# in no window of 0.1, 0.5, 1 or 2 s starting at an allowed call may more
# than burst + rate * window units have been allowed.
#
# A control removes the guarantee and must be caught: a per-meter check
# then record of the same set, limit by limit, burns quota on denials.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

CLIENTS=${STRESS_CLIENTS:-32}
SECONDS_RUN=${STRESS_SECONDS:-12}
USERS=8
HOUR_LIMIT=300
DAY_LIMIT=500
ORG_LIMIT=3000
RATE=200
BURST=50
db=entitlock_stress_quota
scripts=$(mktemp -d)
killer=
trap '[ -n "$killer" ] && kill "$killer" 2>/dev/null; rm -rf "$scripts"; test_db_drop "$db"' EXIT

test_db_create "$db" || exit 1
psql -X -q -v ON_ERROR_STOP=1 -d "$db" <<EOF || exit 1
CREATE TABLE ledger (usr int, amount bigint NOT NULL, allowed boolean NOT NULL);
CREATE TABLE rl_ledger (cost bigint NOT NULL, allowed boolean NOT NULL,
						decided_at timestamptz);
CREATE FUNCTION gateway(usr int, amount bigint, reversed boolean)
RETURNS boolean LANGUAGE sql AS \$\$
	SELECT bool_and(allowed) FROM entitlock.record_usage_if_under_limits(
		CASE WHEN reversed THEN ARRAY[
			entitlock.usage_limit('org', 'api', $ORG_LIMIT, 'month'),
			entitlock.usage_limit('user:' || usr, 'api', $DAY_LIMIT, 'day'),
			entitlock.usage_limit('user:' || usr, 'api', $HOUR_LIMIT, 'hour')]
		ELSE ARRAY[
			entitlock.usage_limit('user:' || usr, 'api', $HOUR_LIMIT, 'hour'),
			entitlock.usage_limit('user:' || usr, 'api', $DAY_LIMIT, 'day'),
			entitlock.usage_limit('org', 'api', $ORG_LIMIT, 'month')] END,
		amount)
\$\$;
EOF

cat >"$scripts/set.sql" <<EOF
\\set usr random(1, $USERS)
\\set amount random(1, 3)
\\set reversed random(0, 1)
BEGIN;
SELECT gateway(:usr, :amount, :reversed = 1)::int AS allowed \\gset
INSERT INTO ledger VALUES (:usr, :amount, :allowed::boolean);
COMMIT;
EOF
cat >"$scripts/org.sql" <<EOF
\\set amount random(1, 3)
BEGIN;
SELECT allowed::int AS allowed FROM entitlock.record_usage_if_under_limit('org', 'api', :amount, $ORG_LIMIT, 'month') \\gset
INSERT INTO ledger VALUES (NULL, :amount, :allowed::boolean);
COMMIT;
EOF
cat >"$scripts/rate.sql" <<EOF
\\set cost random(1, 3)
BEGIN;
SELECT allowed::int AS allowed, extract(epoch FROM reset_after) AS reset FROM entitlock.rate_limit('hot', $RATE, '1 second', $BURST, :cost) \\gset
INSERT INTO rl_ledger
SELECT :cost, :allowed::boolean,
	   CASE WHEN :allowed::boolean THEN tat - :reset * interval '1 second' END
  FROM entitlock.rate_limit_state WHERE name = 'hot';
COMMIT;
EOF

log "quota stress: $CLIENTS clients, ${SECONDS_RUN}s, random backend kills"
stress_under_kills "$db" "$SECONDS_RUN" "$scripts" -c "$CLIENTS" -j 2 \
	-f "$scripts/set.sql@6" -f "$scripts/org.sql@1" -f "$scripts/rate.sql@3"

# Each meter: its usage, what the ledger says was recorded on it, its limit.
meters=$(psql -X -At -F ' ' -d "$db" <<EOF
WITH meters(subject, period, lim, ledger) AS (
	SELECT 'user:' || u, p.period, p.lim,
		   (SELECT coalesce(sum(amount) FILTER (WHERE allowed), 0) FROM ledger WHERE usr = u)
	  FROM generate_series(1, $USERS) u,
		   (VALUES ('hour', $HOUR_LIMIT), ('day', $DAY_LIMIT)) AS p(period, lim)
	UNION ALL
	SELECT 'org', 'month', $ORG_LIMIT,
		   (SELECT coalesce(sum(amount) FILTER (WHERE allowed), 0) FROM ledger)
)
SELECT subject, period, entitlock.usage(subject, 'api', period), ledger, lim FROM meters;
EOF
)
read -r calls allowed denied <<<"$(psql -X -At -F ' ' -d "$db" -c \
	"SELECT count(*), count(*) FILTER (WHERE allowed), count(*) FILTER (WHERE NOT allowed) FROM ledger")"
log "  $rounds rounds, $committed transactions committed, $kills backends terminated"
log "  limits: $calls calls in the ledger, $allowed allowed, $denied denied"
bad_meters=$(awk '$3 != $4 || $3 > $5 { print }' <<<"$meters")
full=$(awk '$3 > $5 - 3 { n++ } END { print n + 0 }' <<<"$meters")
log "  $(wc -l <<<"$meters") meters, $full at their limit"

read -r rl_calls rl_allowed rl_units span over <<<"$(psql -X -q -At -F ' ' -d "$db" <<EOF
CREATE INDEX ON rl_ledger (decided_at);
SELECT count(*), count(*) FILTER (WHERE allowed),
	   coalesce(sum(cost) FILTER (WHERE allowed), 0),
	   round(extract(epoch FROM max(decided_at) - min(decided_at))::numeric, 2),
	   (SELECT count(*)
		  FROM rl_ledger a, (VALUES (0.1), (0.5), (1.0), (2.0)) AS w(secs)
		 WHERE a.allowed
		   AND (SELECT sum(b.cost) FROM rl_ledger b
				 WHERE b.allowed AND b.decided_at >= a.decided_at
				   AND b.decided_at <= a.decided_at + w.secs * interval '1 second')
			   > $BURST + $RATE * w.secs)
  FROM rl_ledger;
EOF
)"
log "  rate limit: $rl_calls calls, $rl_allowed allowed ($rl_units units over ${span}s), $over windows over burst + rate * window"

check '[ -z "$unexpected" ]' "unexpected pgbench errors: $unexpected"
check '[ "$kills" -ge 3 ]' "only $kills backends were terminated"
check '[ -z "$bad_meters" ]' "meters whose usage differs from the ledger or passes the limit: $bad_meters"
check '[ "$allowed" -gt 0 ] && [ "$denied" -gt 0 ] && [ "$full" -gt 0 ]' "the run did not reach the limits"
check '[ "$over" = 0 ]' "the rate limit let more than burst + rate * window through"
check '[ "$rl_allowed" -gt 0 ] && [ "$rl_allowed" -lt "$rl_calls" ]' "the rate limit was never reached"
check 'awk -v u="$rl_units" -v s="$span" -v b=$BURST -v r=$RATE "BEGIN { exit !(u <= b + r * s) }"' \
	"$rl_units units allowed over ${span}s"

# Nothing is left locked.
check 'psql -X -q -At -d "$db" -c "SET lock_timeout = '"'1s'"'" \
	-c "SELECT count(*) FROM entitlock.record_usage_if_under_limits(ARRAY[entitlock.usage_limit('"'org'"', '"'api'"', 1, '"'month'"')])" \
	-c "SELECT allowed FROM entitlock.rate_limit('"'hot'"', 1, '"'1 second'"', cost => 0)" >/dev/null' \
	"a lock was left behind"

# Control: the same set checked and recorded limit by limit, without
# all-or-nothing, burns the day and the month on hourly denials.
cat >"$scripts/naive.sql" <<EOF
BEGIN;
SELECT allowed::int AS h FROM entitlock.record_usage_if_under_limit('ctl', 'api', 1, 20, 'hour') \\gset
SELECT allowed::int AS d FROM entitlock.record_usage_if_under_limit('ctl', 'api', 1, 1000, 'day') \\gset
INSERT INTO ledger VALUES (0, 1, (:h + :d) = 2);
COMMIT;
EOF
psql -X -q -d "$db" -c "DELETE FROM ledger WHERE usr = 0"
PGDATABASE=$db pgbench -n -c 8 -j 2 -t 10 -f "$scripts/naive.sql" >/dev/null 2>&1
read -r ctl_day ctl_allowed <<<"$(psql -X -At -F ' ' -d "$db" -c \
	"SELECT entitlock.usage('ctl', 'api', 'day'), count(*) FILTER (WHERE allowed) FROM ledger WHERE usr = 0")"
log "  control limit by limit: day usage $ctl_day for $ctl_allowed calls allowed by both"
check '[ "$ctl_day" -gt "$ctl_allowed" ]' "the limit-by-limit control burned no quota, so this test cannot see the bug"

exit "$check_failed"
