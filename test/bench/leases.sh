#!/usr/bin/env bash
#
# test/bench/leases.sh: lease_acquire/renew/release against the
# hand-written lease table people use instead.
#
#   bash test/bench/leases.sh          (starts its own throwaway cluster)
#   BENCH_SECONDS=10 BENCH_ROUNDS=5 BENCH_CLIENTS="8" bash test/bench/leases.sh
#
# Each pgbench transaction is one worker's turn, each call in autocommit
# as a worker makes them: acquire a lease for 30 s, renew it, release it.
# An acquisition that finds the lease held skips the rest.  Two workloads:
# 1,000 names (acquisitions rarely meet), and one hot name that every
# client wants.  Variants, in the same run on the same server, tables
# emptied and checkpointed before each cell:
#   plain      a lease table with a primary key on name: INSERT ... ON
#              CONFLICT (name) DO UPDATE ... WHERE expired RETURNING token,
#              fencing from a sequence; renew and release check the token
#              (the correct hand-written version, with no view)
#   entitlock  lease_acquire, lease_renew, lease_release
# It prints TPS and the ratio entitlock/plain.  A benchmark, not a test: it asserts nothing; the figures go in
# doc/performance.md.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

SECS=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-3}
CLIENT_COUNTS=${BENCH_CLIENTS:-"1 8 32"}
PROTOCOL=${BENCH_PROTOCOL:-prepared}
VARIANTS="plain entitlock"

db=entitlock_bench_lease
bench_start "$db"

psql -X -q -v ON_ERROR_STOP=1 -d "$db" <<'EOF' || die "could not set up $db"
CREATE TABLE plain_lease (name text PRIMARY KEY, token uuid NOT NULL,
						  holder text, fencing bigint NOT NULL,
						  acquired_at timestamptz NOT NULL,
						  expires_at timestamptz NOT NULL);
CREATE SEQUENCE plain_fencing;
EOF

nil=00000000-0000-0000-0000-000000000000

# write_scripts NAMES
write_scripts() {
	cat >"$scripts/plain.sql" <<EOF
\\set n random(1, $1)
WITH a AS (
	INSERT INTO plain_lease AS l
		(name, token, fencing, holder, acquired_at, expires_at)
	VALUES ('lease-' || :n, gen_random_uuid(), nextval('plain_fencing'),
			'worker-' || :client_id, clock_timestamp(),
			clock_timestamp() + interval '30 seconds')
	ON CONFLICT (name) DO UPDATE
		SET token = excluded.token, holder = excluded.holder,
			fencing = excluded.fencing, acquired_at = excluded.acquired_at,
			expires_at = excluded.expires_at
		WHERE l.expires_at <= clock_timestamp()
	RETURNING token)
SELECT count(*) AS got, coalesce(max(token::text), '$nil') AS token FROM a \\gset
\\if :got
UPDATE plain_lease SET expires_at = clock_timestamp() + interval '30 seconds'
 WHERE name = 'lease-' || :n AND token = :token::uuid;
DELETE FROM plain_lease WHERE name = 'lease-' || :n AND token = :token::uuid;
\\endif
EOF
	cat >"$scripts/entitlock.sql" <<EOF
\\set n random(1, $1)
SELECT count(*) AS got, coalesce(max(token::text), '$nil') AS token
  FROM entitlock.lease_acquire('lease-' || :n, '30 seconds', 'worker-' || :client_id) \\gset
\\if :got
SELECT entitlock.lease_renew('lease-' || :n, :token::uuid, '30 seconds');
SELECT entitlock.lease_release('lease-' || :n, :token::uuid);
\\endif
EOF
}

reset() {
	psql -X -q -v ON_ERROR_STOP=1 -d "$db" <<EOF >/dev/null || die "reset failed"
TRUNCATE plain_lease, entitlock.lease_record;
VACUUM ANALYZE;
CHECKPOINT;
EOF
}

echo "TPS (median of $ROUNDS rounds of $SECS s), pgbench -M $PROTOCOL"
printf '%-8s %-8s %10s %10s %6s\n' names clients plain entitlock ratio
for names in 1000 1; do
	write_scripts "$names"
	for c in $CLIENT_COUNTS; do
		bench_rounds "$c"
		printf '%-8s %-8s %10.0f %10.0f %6s\n' \
			"$names" "$c" "${median[plain]}" "${median[entitlock]}" \
			"$(bench_ratio "${median[entitlock]}" "${median[plain]}")"
	done
done
test_db_drop "$db"
