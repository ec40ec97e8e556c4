#!/usr/bin/env bash
#
# test/bench/periods.sh: usage calls on an anchored billing period (1.2)
# against the same calls on a calendar period.
#
#   bash test/bench/periods.sh              (starts its own throwaway cluster)
#   BENCH_SECONDS=10 BENCH_ROUNDS=5 BENCH_CLIENTS="8" bash test/bench/periods.sh
#   BENCH_PROTOCOL=simple bash test/bench/periods.sh   (pgbench -M; default prepared)
#
# Each pgbench transaction is one call for one of 1,000 subjects, against a
# limit it never reaches.  Variants, all in the same run on the same server,
# taking turns round by round, tables emptied and checkpointed before each
# cell:
#   calendar    record_usage_if_under_limit(..., 'month') (the baseline)
#   anchored    the same on 'month@2026-01-31 10:00:00+00' (the canonical
#               spelling)
#   offset      the same period spelled '1 month@2026-01-31 05:00-05'
#   perday      each subject anchored on its own day of the month
#               ('month@2026-01-<1..28> 10:00+00'): 28 periods, so that
#               calls in a row name different ones (periods.c remembers
#               the periods it read lately)
#   read_cal    usage(..., 'month'), the baseline of the reads
#   read_anch   usage(..., 'month@2026-01-31 10:00:00+00')
# It prints TPS with the ratio to its baseline (calendar for the recording
# calls, read_cal for the reads).  On a busy 2-core machine these move by
# more than the difference measured, so a second table times the calls
# themselves in one backend (a PL/pgSQL loop of calls, the periods built
# before the clock starts; each loop after a reset, the variants taking
# turns in an order that rotates round by round, as a loop's updates
# leave dead rows that slow whichever runs next; medians of rounds):
# microseconds per call and the ratio of calls per second to 'month'.
# A benchmark, not a test: it asserts nothing.  The target of issue 23 is
# a ratio of at least 0.95.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

SECS=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-3}
CLIENT_COUNTS=${BENCH_CLIENTS:-"1 8"}
PROTOCOL=${BENCH_PROTOCOL:-prepared}
VARIANTS="calendar anchored offset perday read_cal read_anch"
KEYS=1000

db=entitlock_bench_periods
bench_start "$db"

s="'s-' || :i"
rec() {
	printf '\\set i random(1, %d)\n%s\n' "$KEYS" \
		"SELECT * FROM entitlock.record_usage_if_under_limit($s, 'api', 1, 1000000000000, $1);" \
		>"$scripts/$2.sql"
}
rec "'month'" calendar
rec "'month@2026-01-31 10:00:00+00'" anchored
rec "'1 month@2026-01-31 05:00-05'" offset
rec "'month@2026-01-' || (1 + :i % 28) || ' 10:00+00'" perday
printf '\\set i random(1, %d)\n%s\n' "$KEYS" \
	"SELECT entitlock.usage($s, 'api', 'month');" >"$scripts/read_cal.sql"
printf '\\set i random(1, %d)\n%s\n' "$KEYS" \
	"SELECT entitlock.usage($s, 'api', 'month@2026-01-31 10:00:00+00');" >"$scripts/read_anch.sql"

# reset: empty the counters, then give every meter a row, so that every
# variant updates a row rather than creating one.
reset() {
	psql -X -q -v ON_ERROR_STOP=1 -d "$db" <<EOF >/dev/null || die "reset failed"
TRUNCATE entitlock.usage_counter, entitlock.usage_idempotency;
SELECT count(entitlock.record_usage('s-' || i, 'api', 1, p))
  FROM generate_series(1, $KEYS) i,
	   unnest(ARRAY['month', 'month@2026-01-31 10:00:00+00',
					'month@2026-01-' || (1 + i % 28) || ' 10:00+00']) p;
VACUUM;
CHECKPOINT;
EOF
}

psql -X -q -v ON_ERROR_STOP=1 -d "$db" <<'EOF' || die "could not set up $db"
-- Microseconds per call of what ('usage' or 'record') over n calls on as
-- many subjects as periods has elements, subject i naming periods[i].
CREATE FUNCTION period_loop(what text, periods text[], n int)
RETURNS double precision LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz := clock_timestamp();
	k int := array_length(periods, 1);
	x bigint;
BEGIN
	FOR i IN 1 .. n LOOP
		IF what = 'usage' THEN
			x := entitlock.usage('s-' || (i % k + 1), 'api', periods[i % k + 1]);
		ELSE
			x := entitlock.record_usage('s-' || (i % k + 1), 'api', 1, periods[i % k + 1]);
		END IF;
	END LOOP;
	RETURN extract(epoch FROM clock_timestamp() - t0) * 1e6 / n;
END
$$;
EOF

echo "TPS (median of $ROUNDS rounds of $SECS s), $KEYS subjects, pgbench -M $PROTOCOL"
echo "ratio = variant / calendar (recording) or / read_cal (reads)"
printf '%-8s %-10s %10s %8s\n' clients variant tps ratio
for c in $CLIENT_COUNTS; do
	bench_rounds "$c"
	for v in $VARIANTS; do
		base=calendar
		case $v in read_*) base=read_cal ;; esac
		printf '%-8s %-10s %10.0f %8s\n' "$c" "$v" "${median[$v]}" \
			"$(bench_ratio "${median[$v]}" "${median[$base]}")"
	done
done

# The calls alone, in one backend.
declare -A periods=(
	[calendar]="'month'"
	[anchored]="'month@2026-01-31 10:00:00+00'"
	[offset]="'1 month@2026-01-31 05:00-05'"
	[perday]="'month@2026-01-' || (1 + i % 28) || ' 10:00+00'"
)
LOOP_VARIANTS="calendar anchored offset perday"
echo
echo "Microseconds per call in one backend (median of $ROUNDS rounds); ratio = calls/s against 'month'"
printf '%-8s %-10s %10s %8s\n' call variant us ratio
for what in usage record; do
	n=$([ "$what" = usage ] && echo 200000 || echo 20000)
	for v in $LOOP_VARIANTS; do : >"$scripts/us-$what-$v"; done
	for r in $(seq "$ROUNDS"); do
		order=($LOOP_VARIANTS)
		for i in "${!order[@]}"; do
			v=${order[$(((i + r) % ${#order[@]}))]}
			reset
			psql -X -At -d "$db" -c "SELECT period_loop('$what',
				ARRAY(SELECT ${periods[$v]} FROM generate_series(0, $KEYS - 1) i), $n)" \
				>>"$scripts/us-$what-$v" || die "loop failed"
		done
	done
	base=$(bench_median <"$scripts/us-$what-calendar")
	for v in $LOOP_VARIANTS; do
		us=$(bench_median <"$scripts/us-$what-$v")
		printf '%-8s %-10s %10.2f %8s\n' "$what" "$v" "$us" "$(bench_ratio "$base" "$us")"
	done
done
test_db_drop "$db"
