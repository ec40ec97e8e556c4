#!/usr/bin/env bash
#
# test/bench/idempotency.sh: idempotency_begin/complete and first_time
# against the hand-written idempotency table people use instead.
#
#   bash test/bench/idempotency.sh          (starts its own throwaway cluster)
#   BENCH_SECONDS=10 BENCH_ROUNDS=5 BENCH_CLIENTS="8" bash test/bench/idempotency.sh
#
# Each pgbench transaction handles one request: claim its key, and if the
# claim is new insert an order and store the response; otherwise take the
# stored response.  Two workloads: every request new (unique keys), and
# retries (keys drawn from 1,000 already claimed, so nearly all replays).
# Variants, in the same run on the same server, tables emptied and
# checkpointed before each cell:
#   plain      INSERT INTO a keys table ... ON CONFLICT DO NOTHING RETURNING,
#              then UPDATE it with the response, or SELECT the response
#              (the baseline; no fingerprint check, no expiry)
#   entitlock  idempotency_begin, then idempotency_complete when new
#   plain1     the short form by hand: INSERT ... ON CONFLICT DO NOTHING
#   first      entitlock.first_time
# It prints TPS with ratios entitlock/plain and first/plain1.  A benchmark,
# not a test: it asserts nothing; the figures go in doc/performance.md.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

SECS=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-3}
CLIENT_COUNTS=${BENCH_CLIENTS:-"1 8 32"}
PROTOCOL=${BENCH_PROTOCOL:-prepared}
VARIANTS="plain entitlock plain1 first"

db=entitlock_bench_idem
bench_start "$db"

psql -X -q -v ON_ERROR_STOP=1 -d "$db" <<'EOF' || die "could not set up $db"
CREATE TABLE plain_idem (key text PRIMARY KEY, fingerprint text,
						 response jsonb,
						 expires_at timestamptz NOT NULL);
CREATE TABLE orders (id bigserial PRIMARY KEY, idem_key text NOT NULL,
					 amount int NOT NULL);
EOF

# write_scripts KEYEXPR: one pgbench script per variant; KEYEXPR is the
# SQL expression of the request's key.
write_scripts() {
	local k=$1
	local fp="'amount=' || :amount"

	cat >"$scripts/plain.sql" <<EOF
\\set i random(1, 1000000000)
\\set r random(1, 1000)
\\set amount :r % 50 + 1
BEGIN;
WITH claim AS (INSERT INTO plain_idem VALUES ($k, $fp, NULL, now() + interval '24 hours') ON CONFLICT (key) DO NOTHING RETURNING 1) SELECT count(*) AS is_new FROM claim \\gset
\\if :is_new
INSERT INTO orders (idem_key, amount) VALUES ($k, :amount) RETURNING id \\gset
UPDATE plain_idem SET response = jsonb_build_object('order', :id::bigint) WHERE key = $k;
\\else
SELECT response FROM plain_idem WHERE key = $k;
\\endif
COMMIT;
EOF
	cat >"$scripts/entitlock.sql" <<EOF
\\set i random(1, 1000000000)
\\set r random(1, 1000)
\\set amount :r % 50 + 1
BEGIN;
SELECT (status = 'new')::int AS is_new, response FROM entitlock.idempotency_begin($k, $fp) \\gset
\\if :is_new
INSERT INTO orders (idem_key, amount) VALUES ($k, :amount) RETURNING id \\gset
SELECT entitlock.idempotency_complete($k, jsonb_build_object('order', :id::bigint));
\\endif
COMMIT;
EOF
	cat >"$scripts/plain1.sql" <<EOF
\\set i random(1, 1000000000)
\\set r random(1, 1000)
INSERT INTO plain_idem VALUES ($k, NULL, NULL, now() + interval '24 hours') ON CONFLICT (key) DO NOTHING RETURNING 1;
EOF
	cat >"$scripts/first.sql" <<EOF
\\set i random(1, 1000000000)
\\set r random(1, 1000)
SELECT entitlock.first_time($k);
EOF
}

# reset PRECLAIM: empty every variant's tables, then claim keys r-1 ..
# r-PRECLAIM in both key tables so that the retry workload replays.
reset() {
	psql -X -q -v ON_ERROR_STOP=1 -d "$db" <<EOF >/dev/null || die "reset failed"
TRUNCATE plain_idem, orders, entitlock.idempotency_key;
INSERT INTO plain_idem
SELECT 'r-' || r, 'amount=' || (r % 50 + 1), jsonb_build_object('order', r),
	   now() + interval '24 hours'
  FROM generate_series(1, $1) AS r;
SELECT count(*) FROM generate_series(1, $1) AS r,
	   entitlock.idempotency_begin('r-' || r, 'amount=' || (r % 50 + 1));
VACUUM ANALYZE;
CHECKPOINT;
EOF
}

# the variants take turns within each round, as in usage.sh
echo "TPS (median of $ROUNDS rounds of $SECS s), pgbench -M $PROTOCOL"
printf '%-8s %-8s %10s %10s %6s %10s %10s %6s\n' \
	workload clients plain entitlock ratio plain1 first ratio
for workload in new retry; do
	if [ "$workload" = new ]; then
		# unique per transaction: the client, its transaction count and a
		# random number
		write_scripts "'n-' || :client_id || '-' || :i || '-' || :r"
	else
		write_scripts "'r-' || :r"
	fi
	for c in $CLIENT_COUNTS; do
		bench_rounds "$c" 1000
		printf '%-8s %-8s %10.0f %10.0f %6s %10.0f %10.0f %6s\n' \
			"$workload" "$c" "${median[plain]}" "${median[entitlock]}" \
			"$(bench_ratio "${median[entitlock]}" "${median[plain]}")" \
			"${median[plain1]}" "${median[first]}" \
			"$(bench_ratio "${median[first]}" "${median[plain1]}")"
	done
done
test_db_drop "$db"
