#!/usr/bin/env bash
#
# test/bench/slots.sh: what a semaphore slot costs, against the SQL a user
# writes today, and against a plain named lock.
#
#   bash test/bench/slots.sh          (starts its own throwaway cluster)
#   BENCH_SECONDS=10 BENCH_ROUNDS=5 BENCH_CLIENTS="8" bash test/bench/slots.sh
#
# Each pgbench transaction takes a slot of one of 100 names (slots rarely
# meet), or of one hot name every client wants, with 3 slots, and
# commits; with BENCH_HOLD_MS it also holds it that long (pg_sleep; 0 by
# default: pure overhead).  Variants, in the same run on the same server,
# taking turns within each round:
#   loop       the hand-written semaphore: a PL/pgSQL function that tries
#              pg_try_advisory_xact_lock on N names name:1..name:N and,
#              when all are taken, waits with pg_advisory_xact_lock on a
#              random one of them (no queue, no fairness)
#   slot       entitlock.lock_slot(name, 3)
#   lock       entitlock.lock(name): a mutex, one holder at a time (the
#              cost of the simplest lock, for scale)
# It prints the median TPS of BENCH_ROUNDS rounds and the ratios slot/loop
# and slot/lock.  A benchmark, not a test: it asserts nothing.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

SECS=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-3}
CLIENT_COUNTS=${BENCH_CLIENTS:-"1 8 32"}
PROTOCOL=${BENCH_PROTOCOL:-prepared}
HOLD_MS=${BENCH_HOLD_MS:-0}
SLOTS=3
VARIANTS="loop slot lock"

db=entitlock_bench_slots
bench_start "$db"

psql -X -q -v ON_ERROR_STOP=1 -d "$db" <<'SQL' || die "could not set up $db"
CREATE FUNCTION hand_slot(name text, slots int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
	i int;
BEGIN
	FOR i IN 1 .. slots LOOP
		IF pg_try_advisory_xact_lock(hashtextextended(name || ':' || i, 0)) THEN
			RETURN i;
		END IF;
	END LOOP;
	i := 1 + floor(random() * slots)::int;
	PERFORM pg_advisory_xact_lock(hashtextextended(name || ':' || i, 0));
	RETURN i;
END
$$;
SQL

# write_scripts NAMES
write_scripts() {
	local hold=
	[ "$HOLD_MS" -gt 0 ] && hold="SELECT pg_sleep($HOLD_MS / 1000.0);"
	printf '\\set n random(1, %d)\nBEGIN;\nSELECT hand_slot(%s, %d);\n%s\nCOMMIT;\n' \
		"$1" "'sem-' || :n" "$SLOTS" "$hold" >"$scripts/loop.sql"
	printf '\\set n random(1, %d)\nBEGIN;\nSELECT entitlock.lock_slot(%s, %d);\n%s\nCOMMIT;\n' \
		"$1" "'sem-' || :n" "$SLOTS" "$hold" >"$scripts/slot.sql"
	printf '\\set n random(1, %d)\nBEGIN;\nSELECT entitlock.lock(%s);\n%s\nCOMMIT;\n' \
		"$1" "'sem-' || :n" "$hold" >"$scripts/lock.sql"
}

reset() { :; }

echo "TPS (median of $ROUNDS rounds of $SECS s), pgbench -M $PROTOCOL, $SLOTS slots, hold ${HOLD_MS} ms"
printf '%-6s %-8s %10s %10s %10s %10s %10s\n' names clients loop slot lock slot/loop slot/lock
for names in 100 1; do
	write_scripts "$names"
	for c in $CLIENT_COUNTS; do
		bench_rounds "$c"
		printf '%-6s %-8s %10.0f %10.0f %10.0f %10s %10s\n' \
			"$names" "$c" "${median[loop]}" "${median[slot]}" "${median[lock]}" \
			"$(bench_ratio "${median[slot]}" "${median[loop]}")" \
			"$(bench_ratio "${median[slot]}" "${median[lock]}")"
	done
done
test_db_drop "$db"
