#!/usr/bin/env bash
#
# test/bench/locks.sh: what a named lock costs, against the plain-SQL way.
#
#   bash test/bench/locks.sh              (starts its own throwaway cluster)
#   BENCH_SECONDS=20 bash test/bench/locks.sh
#
# Each pgbench transaction locks one of 1,000 names (or one hot name) and
# commits.  Compared in the same run, on the same server:
#   builtin    pg_advisory_xact_lock(hashtextextended(name, 0))
#   entitlock  entitlock.lock(name)
#   entity     entitlock.lock_entity(realm, entity)  (two locks)
#   timed      entitlock.lock(name, '1 s')
# and prints TPS and the ratio to the builtin.  A benchmark, not a test:
# it asserts nothing; the figures go in doc/performance.md.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

SECS=${BENCH_SECONDS:-10}
CLIENT_COUNTS=${BENCH_CLIENTS:-"1 8 32"}

db=entitlock_bench_locks
bench_start "$db"

for keys in 1000 1; do
	printf '\\set i random(1, %d)\nBEGIN;\nSELECT pg_advisory_xact_lock(hashtextextended(%s, 0));\nCOMMIT;\n' \
		"$keys" "'name-' || :i" >"$scripts/builtin-$keys.sql"
	printf '\\set i random(1, %d)\nBEGIN;\nSELECT entitlock.lock(%s);\nCOMMIT;\n' \
		"$keys" "'name-' || :i" >"$scripts/entitlock-$keys.sql"
	printf '\\set i random(1, %d)\nBEGIN;\nSELECT entitlock.lock_entity(%s, %s);\nCOMMIT;\n' \
		"$keys" "'realm'" "'entity-' || :i" >"$scripts/entity-$keys.sql"
	printf '\\set i random(1, %d)\nBEGIN;\nSELECT entitlock.lock(%s, %s);\nCOMMIT;\n' \
		"$keys" "'name-' || :i" "'1 s'" >"$scripts/timed-$keys.sql"
done

printf '%-6s %-8s %-10s %10s %8s\n' keys clients variant tps ratio
for keys in 1000 1; do
	for c in $CLIENT_COUNTS; do
		base=$(bench_tps "$scripts/builtin-$keys.sql" "$c")
		printf '%-6s %-8s %-10s %10.0f %8s\n' "$keys" "$c" builtin "$base" 1.00
		for v in entitlock entity timed; do
			t=$(bench_tps "$scripts/$v-$keys.sql" "$c")
			printf '%-6s %-8s %-10s %10.0f %8s\n' "$keys" "$c" "$v" "$t" \
				"$(bench_ratio "$t" "$base")"
		done
	done
done
test_db_drop "$db"
