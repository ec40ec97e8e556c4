#!/usr/bin/env bash
#
# Stress: 32 pgbench clients contend for 3 lease names with short ttls
# (50-250 ms).  A client that gets a lease records it in a history table,
# in the acquiring transaction, with its token and times; then it either
# renews and releases it, releases it, or sleeps past its expiry (a slow
# worker) and tries to renew or release it anyway.  One acquisition in ten
# rolls back.
#
# Afterwards, for every name, taking the committed acquisitions in fencing
# order:
#   - each began only after the one before had ended (released, or expired
#     at its last renewed expiry): at every moment at most one unexpired
#     lease per name;
#   - fencing order is the order in time;
#   - no renew or release succeeded after a newer acquisition of the name;
# and pgbench saw no error at all.  A watcher client checks all along that
# no name ever has two rows.
#
# The same workload then runs against a hand-written lease in plain SQL
# with the usual bug (release and renew by name, without checking the
# token), and the same checks must find overlaps: they can see the bug.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

CLIENTS=${STRESS_CLIENTS:-32}
SECONDS_RUN=${STRESS_SECONDS:-10}
db=entitlock_stress_lease
scripts=$(mktemp -d)
trap '[ -n "${ENTITLOCK_KEEP:-}" ] || rm -rf "$scripts"; test_db_drop "$db"' EXIT

test_db_create "$db" || exit 1
psql -X -q -v ON_ERROR_STOP=1 -d "$db" <<'EOF' || exit 1
CREATE TABLE history (
	impl text NOT NULL,
	fencing bigint NOT NULL,
	name text NOT NULL,
	token uuid NOT NULL,
	acquired_at timestamptz,
	expires_at timestamptz,
	ended_at timestamptz,
	PRIMARY KEY (impl, fencing)
);
-- renew and release calls made after the caller's lease had expired
CREATE TABLE late_calls (
	impl text NOT NULL,
	fencing bigint NOT NULL,
	call text NOT NULL,
	ok boolean NOT NULL,
	at timestamptz NOT NULL
);

-- The control: a lease table the way it is often written by hand.  It
-- acquires correctly, but renews and releases by name alone.
CREATE SCHEMA naive;
CREATE TABLE naive.lease_record (
	name text PRIMARY KEY,
	token uuid NOT NULL,
	fencing bigint NOT NULL,
	acquired_at timestamptz NOT NULL,
	expires_at timestamptz NOT NULL
);
CREATE SEQUENCE naive.fencing;
CREATE FUNCTION naive.lease_acquire(name text, ttl interval, holder text)
RETURNS TABLE (token uuid, fencing bigint) LANGUAGE sql AS $$
	INSERT INTO naive.lease_record AS l
	VALUES (name, gen_random_uuid(), nextval('naive.fencing'),
			clock_timestamp(), clock_timestamp() + ttl)
	ON CONFLICT (name) DO UPDATE
		SET token = excluded.token, fencing = excluded.fencing,
			acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
		WHERE l.expires_at <= clock_timestamp()
	RETURNING l.token, l.fencing
$$;
CREATE FUNCTION naive.lease_renew(name text, token uuid, ttl interval)
RETURNS boolean LANGUAGE sql AS $$
	WITH u AS (UPDATE naive.lease_record l
				  SET expires_at = clock_timestamp() + ttl
				WHERE l.name = lease_renew.name RETURNING 1)
	SELECT count(*) > 0 FROM u
$$;
CREATE FUNCTION naive.lease_release(name text, token uuid)
RETURNS boolean LANGUAGE sql AS $$
	WITH d AS (DELETE FROM naive.lease_record l
				WHERE l.name = lease_release.name RETURNING 1)
	SELECT count(*) > 0 FROM d
$$;
EOF

# :impl is entitlock or naive; both have lease_record with the same times.
cat >"$scripts/lease.sql" <<'EOF'
\set n random(0, 2)
\set ttl_ms random(50, 250)
\set act random(1, 4)
\set fail random(1, 10)
BEGIN;
WITH a AS (SELECT * FROM :impl.lease_acquire('lease-' || :n, make_interval(secs => :ttl_ms / 1000.0), 'c' || :client_id)),
	 i AS (INSERT INTO history (impl, fencing, name, token)
		   SELECT ':impl', fencing, 'lease-' || :n, token FROM a RETURNING fencing)
SELECT coalesce(max(fencing), 0) AS fencing FROM i \gset
UPDATE history h SET acquired_at = r.acquired_at, expires_at = r.expires_at
  FROM :impl.lease_record r
 WHERE h.impl = ':impl' AND h.fencing = :fencing AND r.fencing = :fencing;
\if :fail = 1
ROLLBACK;
\set fencing 0
\else
COMMIT;
\endif
\if :fencing > 0
\if :act = 1
-- renew halfway, then release
\set pause random(0, :ttl_ms / 2)
\sleep :pause ms
BEGIN;
SELECT coalesce((SELECT :impl.lease_renew(name, token, make_interval(secs => :ttl_ms / 1000.0))
				   FROM history WHERE impl = ':impl' AND fencing = :fencing), false)::int AS renewed \gset
UPDATE history h SET expires_at = r.expires_at
  FROM :impl.lease_record r
 WHERE :renewed = 1 AND h.impl = ':impl' AND h.fencing = :fencing AND r.fencing = :fencing;
COMMIT;
\set pause random(0, :ttl_ms / 2)
\sleep :pause ms
\endif
\if :act <= 2
-- release
WITH r AS (SELECT :impl.lease_release(name, token) AS ok
			 FROM history WHERE impl = ':impl' AND fencing = :fencing)
UPDATE history SET ended_at = clock_timestamp()
  FROM r WHERE r.ok AND impl = ':impl' AND fencing = :fencing;
\else
-- a slow worker: wakes after its lease expired, renews or releases anyway
\set pause random(:ttl_ms + 20, :ttl_ms + 200)
\sleep :pause ms
\set call random(0, 1)
BEGIN;
WITH h AS (SELECT * FROM history WHERE impl = ':impl' AND fencing = :fencing),
	 c AS (SELECT CASE WHEN :call = 0
					   THEN :impl.lease_renew(name, token, make_interval(secs => :ttl_ms / 1000.0))
					   ELSE :impl.lease_release(name, token) END AS ok
			 FROM h)
INSERT INTO late_calls
SELECT ':impl', :fencing, CASE WHEN :call = 0 THEN 'renew' ELSE 'release' END,
	   ok, clock_timestamp()
  FROM c;
UPDATE history h SET expires_at = r.expires_at
  FROM :impl.lease_record r, late_calls l
 WHERE :call = 0 AND l.impl = ':impl' AND l.fencing = :fencing AND l.ok
   AND h.impl = ':impl' AND h.fencing = :fencing AND r.fencing = :fencing;
UPDATE history h SET ended_at = l.at
  FROM late_calls l
 WHERE :call = 1 AND l.impl = ':impl' AND l.fencing = :fencing AND l.ok
   AND h.impl = ':impl' AND h.fencing = :fencing;
COMMIT;
\endif
\endif
EOF

# Fails (division by zero) the moment a name has two rows.
cat >"$scripts/watch.sql" <<'EOF'
SELECT 1 / (1 - least(count(*), 1)) AS ok
  FROM (SELECT name FROM :impl.lease_record GROUP BY name HAVING count(*) > 1) AS d;
\sleep 10 ms
EOF

# Overlaps, fencing out of time order, and late calls that succeeded
# after a newer acquisition, for one implementation.
violations() {
	psql -X -At -F ' ' -d "$db" -v impl="$1" <<'EOF'
WITH h AS (
	SELECT *, least(expires_at, coalesce(ended_at, 'infinity')) AS ended,
		   lag(least(expires_at, coalesce(ended_at, 'infinity')))
			   OVER w AS prev_ended,
		   lag(acquired_at) OVER w AS prev_acquired,
		   lag(ended_at IS NOT NULL) OVER w AS prev_released
	  FROM history
	 WHERE impl = :'impl'
	WINDOW w AS (PARTITION BY name ORDER BY fencing))
SELECT (SELECT count(*) FROM h),
	   (SELECT count(*) FROM h WHERE acquired_at IS NULL),
	   (SELECT count(*) FROM h WHERE acquired_at < prev_ended),
	   (SELECT count(*) FROM h WHERE acquired_at <= prev_acquired),
	   (SELECT count(*) FROM late_calls l JOIN history o USING (impl, fencing)
		 WHERE l.impl = :'impl' AND l.ok
		   AND EXISTS (SELECT FROM history n
					    WHERE n.impl = l.impl AND n.name = o.name
						  AND n.fencing > l.fencing AND n.acquired_at < l.at)),
	   (SELECT count(*) FROM late_calls WHERE impl = :'impl'),
	   (SELECT count(*) FROM h WHERE ended_at IS NOT NULL),
	   (SELECT count(*) FROM h WHERE prev_released = false);
EOF
}

log "lease stress: $CLIENTS clients, 3 names, ${SECONDS_RUN}s"
PGDATABASE=$db pgbench -n -c "$CLIENTS" -j 2 -T "$SECONDS_RUN" -D impl=entitlock \
	-f "$scripts/lease.sql@20" -f "$scripts/watch.sql@1" >"$scripts/out.entitlock" 2>&1
errors=$(grep -ciE 'error|abort|fatal' "$scripts/out.entitlock")
processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$scripts/out.entitlock")
failed_tx=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$scripts/out.entitlock")
read -r acquisitions untimed overlaps misordered late_ok late releases takeovers <<<"$(violations entitlock)"
log "  $processed script runs; $acquisitions committed acquisitions, $releases released, $takeovers taken over after expiry"
log "  $late late renew/release calls; $late_ok succeeded after a newer acquisition"
log "  overlapping leases: $overlaps; fencing out of time order: $misordered; pgbench errors: $errors"

check '[ "$errors" = 0 ] && [ "${failed_tx:-0}" = 0 ]' "pgbench reported errors: $(pgbench_unexpected_errors "$scripts/out.entitlock")"
check '[ "$acquisitions" -ge 200 ]' "only $acquisitions acquisitions committed"
check '[ "$untimed" = 0 ]' "$untimed acquisitions have no times recorded"
check '[ "$overlaps" = 0 ]' "$overlaps leases began before the one before them ended"
check '[ "$misordered" = 0 ]' "$misordered fencing numbers out of time order"
check '[ "$late_ok" = 0 ]' "$late_ok late calls succeeded after a newer acquisition"
check '[ "$late" -ge 20 ] && [ "$releases" -ge 20 ] && [ "$takeovers" -ge 20 ]' \
	"the workload did not exercise late calls, releases and takeovers enough"

# Nothing is stuck: every name can be had once its last lease has expired.
sleep 0.3
check '[ "$(psql -X -q -At -d "$db" -c "SET lock_timeout = '"'2s'"'" \
	-c "SELECT count(*) FROM generate_series(0, 2) AS n, entitlock.lease_acquire('"'lease-'"' || n, '"'1 s'"')")" = 3 ]' \
	"a name could not be acquired after the run"

# Control: the hand-written lease must show the overlaps this test looks for.
PGDATABASE=$db pgbench -n -c "$CLIENTS" -j 2 -T 4 -D impl=naive \
	-f "$scripts/lease.sql" >"$scripts/out.naive" 2>&1
read -r n_acq _ n_overlaps _ n_late_ok _ <<<"$(violations naive)"
log "  control without token checks: $n_acq acquisitions, $n_overlaps overlapping, $n_late_ok late calls succeeded after a newer acquisition"
check '[ "$n_overlaps" -gt 0 ] && [ "$n_late_ok" -gt 0 ]' \
	"the control showed no overlap, so this test cannot see the bug"

exit "${check_failed:-0}"
