#!/usr/bin/env bash
#
# test/bench/usage.sh: record_usage_if_under_limit against the ways people
# write "check the limit, then record" by hand.
#
#   bash test/bench/usage.sh              (starts its own throwaway cluster)
#   BENCH_SECONDS=10 BENCH_ROUNDS=5 BENCH_CLIENTS="8" bash test/bench/usage.sh
#   BENCH_PROTOCOL=simple bash test/bench/usage.sh   (pgbench -M; default prepared)
#
# Each pgbench transaction records 1 unit for one of 1,000 subjects (or one
# hot subject) against a limit it never reaches, so every variant does the
# same work: a decision and a write.  Variants, all in the same run on the
# same server, tables emptied and checkpointed before each cell:
#   upsert      INSERT ... ON CONFLICT DO UPDATE SET used = used + 1
#               WHERE used + 1 <= limit RETURNING used (the baseline)
#   entitlock   SELECT * FROM entitlock.record_usage_if_under_limit(...)
#   forupdate   BEGIN; SELECT used ... FOR UPDATE; UPDATE; COMMIT
#   ledger      PL/pgSQL: pg_advisory_xact_lock, sum() over a usage ledger,
#               INSERT into the ledger
#   naive       SELECT sum() from a ledger, then INSERT if under the limit,
#               with no lock (wrong: see the overshoot table)
# It prints TPS with the ratio to upsert, then an overshoot table: 16
# clients x 100 calls on one subject with a limit of 500, and the usage
# each variant ends with.  A benchmark, not a test: it asserts nothing;
# the figures go in doc/performance.md.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

SECS=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-3}
CLIENT_COUNTS=${BENCH_CLIENTS:-"1 8 32"}
PROTOCOL=${BENCH_PROTOCOL:-prepared}
VARIANTS="upsert entitlock forupdate ledger naive"

db=entitlock_bench_usage
bench_start "$db"

psql -X -q -v ON_ERROR_STOP=1 -d "$db" <<'EOF' || die "could not set up $db"
CREATE TABLE plain_usage (subject text, feature text, used bigint NOT NULL,
						  PRIMARY KEY (subject, feature));
CREATE TABLE forupdate_usage (subject text, feature text, used bigint NOT NULL,
							  PRIMARY KEY (subject, feature));
CREATE TABLE ledger (subject text NOT NULL, feature text NOT NULL,
					 amount bigint NOT NULL,
					 at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON ledger (subject, feature);
CREATE TABLE naive_ledger (LIKE ledger INCLUDING ALL);

CREATE FUNCTION ledger_record(s text, f text, amt bigint, lim bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
	u bigint;
BEGIN
	PERFORM pg_advisory_xact_lock(hashtextextended(s || '/' || f, 0));
	SELECT coalesce(sum(amount), 0) INTO u
	  FROM ledger WHERE subject = s AND feature = f;
	IF u + amt > lim THEN
		RETURN false;
	END IF;
	INSERT INTO ledger (subject, feature, amount) VALUES (s, f, amt);
	RETURN true;
END
$$;
EOF

# write_scripts KEYS LIMIT: one pgbench script per variant
write_scripts() {
	local keys=$1 limit=$2 s="'s-' || :i"

	printf '\\set i random(1, %d)\n%s\n' "$keys" \
		"INSERT INTO plain_usage AS u (subject, feature, used) VALUES ($s, 'api', 1) ON CONFLICT (subject, feature) DO UPDATE SET used = u.used + 1 WHERE u.used + 1 <= $limit RETURNING used;" \
		>"$scripts/upsert.sql"
	printf '\\set i random(1, %d)\n%s\n' "$keys" \
		"SELECT * FROM entitlock.record_usage_if_under_limit($s, 'api', 1, $limit);" \
		>"$scripts/entitlock.sql"
	printf '\\set i random(1, %d)\nBEGIN;\n%s\n\\if :used < %s\n%s\n\\endif\nCOMMIT;\n' "$keys" \
		"SELECT used FROM forupdate_usage WHERE subject = $s AND feature = 'api' FOR UPDATE \\gset" \
		"$limit" \
		"UPDATE forupdate_usage SET used = used + 1 WHERE subject = $s AND feature = 'api';" \
		>"$scripts/forupdate.sql"
	printf '\\set i random(1, %d)\n%s\n' "$keys" \
		"SELECT ledger_record($s, 'api', 1, $limit);" \
		>"$scripts/ledger.sql"
	printf '\\set i random(1, %d)\n%s\n\\if :used < %s\n%s\n\\endif\n' "$keys" \
		"SELECT coalesce(sum(amount), 0) AS used FROM naive_ledger WHERE subject = $s AND feature = 'api' \\gset" \
		"$limit" \
		"INSERT INTO naive_ledger (subject, feature, amount) VALUES ($s, 'api', 1);" \
		>"$scripts/naive.sql"
}

# reset KEYS: empty every variant's tables; FOR UPDATE needs its rows.  No
# ANALYZE: statistics of an empty ledger would make PL/pgSQL's cached plan
# scan the whole ledger as it grows.
reset() {
	psql -X -q -v ON_ERROR_STOP=1 -d "$db" <<EOF >/dev/null || die "reset failed"
TRUNCATE plain_usage, forupdate_usage, ledger, naive_ledger,
		 entitlock.usage_counter, entitlock.usage_idempotency;
INSERT INTO forupdate_usage SELECT 's-' || i, 'api', 0 FROM generate_series(1, $1) i;
VACUUM;
CHECKPOINT;
EOF
}

# median TPS of ROUNDS runs (bench_rounds)
echo "TPS (median of $ROUNDS rounds of $SECS s), pgbench -M $PROTOCOL; ratio = variant / upsert"
printf '%-6s %-8s %-10s %10s %8s\n' keys clients variant tps ratio
for keys in 1000 1; do
	write_scripts "$keys" 1000000000000
	for c in $CLIENT_COUNTS; do
		bench_rounds "$c" "$keys"
		for v in $VARIANTS; do
			printf '%-6s %-8s %-10s %10.0f %8s\n' "$keys" "$c" "$v" "${median[$v]}" \
				"$(bench_ratio "${median[$v]}" "${median[upsert]}")"
		done
	done
done

echo
echo "Overshoot: 16 clients x 100 calls of 1 unit on one subject, limit 500"
printf '%-10s %10s %10s\n' variant usage overshoot
write_scripts 1 500
for v in $VARIANTS; do
	reset 1
	PGDATABASE=$db pgbench -n -M "$PROTOCOL" -c 16 -j 2 -t 100 -f "$scripts/$v.sql" \
		>/dev/null 2>&1
	u=$(psql -X -At -d "$db" -c "SELECT CASE '$v'
		WHEN 'upsert' THEN (SELECT coalesce(sum(used), 0) FROM plain_usage)
		WHEN 'entitlock' THEN entitlock.usage('s-1', 'api')
		WHEN 'forupdate' THEN (SELECT coalesce(sum(used), 0) FROM forupdate_usage)
		WHEN 'ledger' THEN (SELECT coalesce(sum(amount), 0) FROM ledger)
		ELSE (SELECT coalesce(sum(amount), 0) FROM naive_ledger) END")
	printf '%-10s %10s %10s\n' "$v" "$u" "$((u > 500 ? u - 500 : 0))"
done
test_db_drop "$db"
