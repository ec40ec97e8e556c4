#!/usr/bin/env bash
#
# test/bench/builds.sh: the installed build of entitlock against another
# build of the same version, on the same workloads, in one run.
#
#   ENTITLOCK_BASE_SO=/path/to/other/entitlock.so bash test/bench/builds.sh
#   BENCH_SECONDS=8 BENCH_WARMUP=2 BENCH_ROUNDS=5 BENCH_CLIENTS=8 ...
#
# For measuring what a change costs: build the commit before it somewhere
# else (git archive BASE | tar -x -C DIR; make -C DIR), and point
# ENTITLOCK_BASE_SO at that entitlock.so.  Both builds must have the same
# SQL objects (the same extension version).  One throwaway cluster (fsync
# on, synchronous_commit off, as bench_start in test/lib.sh) gets two
# databases with the extension: in "this" its functions load the installed
# library; in "base" they are pointed at ENTITLOCK_BASE_SO (pg_proc.probin,
# as a superuser may), so each backend runs one build or the other.
# Workloads, BENCH_CLIENTS (8) pgbench clients:
#   lock        BEGIN; entitlock.lock('name-' || random(1, 1000)); COMMIT
#               (pgbench -M simple, as test/bench/locks.sh)
#   entity      BEGIN; entitlock.lock_entity('realm', 'entity-' || random(1, 1000)); COMMIT
#   usage       record_usage_if_under_limit('s-' || random(1, 1000), 'api',
#               1, <a limit never reached>) (pgbench -M prepared, as
#               test/bench/usage.sh)
#   record      record_usage('s-' || random(1, 1000), 'api', 1) (prepared)
# Usage counters are emptied, vacuumed and checkpointed before each run.
# Each round runs every workload on both builds, one right after the other
# (which goes first alternates from round to round): BENCH_WARMUP (2) s not
# counted, then BENCH_SECONDS (8) s; BENCH_ROUNDS (5) rounds.  It prints
# the median TPS of each build, the ratio this / base of the medians and
# the median (and range) of the rounds' own ratios.
#
# TPS on a small shared machine wanders by more than a lock's cost, so each
# round also times, in one session, BENCH_MICRO_CALLS (20,000) transactions
# of one call each of every workload (a procedure that calls and COMMITs
# in a loop: no client round trips), and prints the backend's CPU
# microseconds per transaction, the fastest of three (noise only ever adds
# time), median of the rounds.  Micro only, "bulk": the same number of
# record_usage calls on 5,000 meters in one transaction (past
# entitlock.lock_escalation_threshold, where that exists).  BENCH_MODE ("tps micro") picks the parts.  A benchmark, not
# a test: it asserts nothing.  About 8 minutes with the defaults.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

SECS=${BENCH_SECONDS:-8}
WARMUP=${BENCH_WARMUP:-2}
ROUNDS=${BENCH_ROUNDS:-5}
CLIENTS=${BENCH_CLIENTS:-8}
WORKLOADS=${BENCH_WORKLOADS:-"lock entity usage record"}
MODE=${BENCH_MODE:-"tps micro"}
MICRO_WORKLOADS=${BENCH_MICRO_WORKLOADS:-"$WORKLOADS bulk"}
MICRO_CALLS=${BENCH_MICRO_CALLS:-20000}
BASE_SO=${ENTITLOCK_BASE_SO:-}

[ -n "$BASE_SO" ] && [ -r "$BASE_SO" ] ||
	die "set ENTITLOCK_BASE_SO to the entitlock.so of the build to compare with"
BASE_SO=$(cd "$(dirname "$BASE_SO")" && pwd)/$(basename "$BASE_SO")

echo "# ENTITLOCK_BASE_SO=$BASE_SO BENCH_MODE=\"$MODE\" BENCH_SECONDS=$SECS BENCH_WARMUP=$WARMUP BENCH_ROUNDS=$ROUNDS BENCH_CLIENTS=$CLIENTS BENCH_MICRO_CALLS=$MICRO_CALLS bash test/bench/builds.sh"

unset PGHOST PGPORT PGDATABASE
bench_start entitlock_bench_this
test_db_create entitlock_bench_base || exit 1
psql -X -q -v ON_ERROR_STOP=1 -d entitlock_bench_base -v so="$BASE_SO" <<'EOF' ||
UPDATE pg_catalog.pg_proc SET probin = :'so' WHERE probin = '$libdir/entitlock';
EOF
	die "could not point entitlock_bench_base at $BASE_SO"
# Each database really runs its own library; and has the micro loop.
for v in this base; do
	psql -X -q -At -d "entitlock_bench_$v" -c "SELECT entitlock.key('x')" >/dev/null ||
		die "entitlock does not run in entitlock_bench_$v"
	psql -X -q -v ON_ERROR_STOP=1 -d "entitlock_bench_$v" <<'EOF' || die "could not create bench_loop"
CREATE PROCEDURE bench_loop(w text, n int) LANGUAGE plpgsql AS $$
BEGIN
	FOR i IN 1 .. n LOOP
		CASE w
		WHEN 'lock' THEN
			PERFORM entitlock.lock('name-' || i % 1000);
		WHEN 'entity' THEN
			PERFORM entitlock.lock_entity('realm', 'entity-' || i % 1000);
		WHEN 'usage' THEN
			PERFORM entitlock.record_usage_if_under_limit('s-' || i % 1000, 'api', 1, 1000000000000);
		WHEN 'record' THEN
			PERFORM entitlock.record_usage('s-' || i % 1000, 'api', 1);
		WHEN 'bulk' THEN
			PERFORM entitlock.record_usage('b-' || i % 5000, 'api', 1);
		END CASE;
		IF w <> 'bulk' THEN
			COMMIT;
		END IF;
	END LOOP;
END
$$;
EOF
done
[ "$(psql -X -At -d entitlock_bench_base -c "SELECT DISTINCT probin FROM pg_proc
	WHERE pronamespace = 'entitlock'::regnamespace AND prolang = 13")" = "$BASE_SO" ] ||
	die "entitlock_bench_base does not load $BASE_SO"

printf '\\set i random(1, 1000)\nBEGIN;\nSELECT entitlock.lock(%s);\nCOMMIT;\n' \
	"'name-' || :i" >"$scripts/lock.sql"
printf '\\set i random(1, 1000)\nBEGIN;\nSELECT entitlock.lock_entity(%s, %s);\nCOMMIT;\n' \
	"'realm'" "'entity-' || :i" >"$scripts/entity.sql"
printf '\\set i random(1, 1000)\n%s\n' \
	"SELECT * FROM entitlock.record_usage_if_under_limit('s-' || :i, 'api', 1, 1000000000000);" \
	>"$scripts/usage.sql"
printf '\\set i random(1, 1000)\n%s\n' \
	"SELECT entitlock.record_usage('s-' || :i, 'api', 1);" >"$scripts/record.sql"

protocol() { case $1 in lock | entity) echo simple ;; *) echo prepared ;; esac; }

# reset DB: empty the usage counters, vacuum, checkpoint.
reset() {
	psql -X -q -v ON_ERROR_STOP=1 -d "$1" >/dev/null <<'EOF' || die "reset failed"
TRUNCATE entitlock.usage_counter, entitlock.usage_idempotency;
VACUUM;
CHECKPOINT;
EOF
}

# run WORKLOAD BUILD: one pgbench run; appends its TPS to
# $scripts/tps.WORKLOAD.BUILD.
run() {
	local w=$1 v=$2 db=entitlock_bench_$2 out tps
	reset "$db"
	PGDATABASE=$db pgbench -n -M "$(protocol "$w")" -c "$CLIENTS" -j 2 \
		-T "$WARMUP" -f "$scripts/$w.sql" >/dev/null 2>&1
	out=$(PGDATABASE=$db pgbench -n -M "$(protocol "$w")" -c "$CLIENTS" -j 2 \
		-T "$SECS" -f "$scripts/$w.sql" 2>&1)
	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out")
	if [ -z "$tps" ] || grep -qiE 'error|aborted' <<<"$out"; then
		log "pgbench failed ($w, $v):"
		grep -iE 'error|aborted' <<<"$out" | head -5 >&2
	fi
	echo "${tps:-0}" >>"$scripts/tps.$w.$v"
	log "  round $r, $v, $w: ${tps:-0} tps"
}

# micro WORKLOAD BUILD: the backend's CPU microseconds per transaction of
# MICRO_CALLS one-call transactions in one session, the fastest of three;
# appended to $scripts/micro.WORKLOAD.BUILD.  CPU time (Linux's
# /proc/self/schedstat, read by the backend itself) leaves out the time
# the backend waited for a CPU, which on a busy machine is most of the
# noise.
cpu_ns="split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint"
micro() {
	local w=$1 v=$2 db=entitlock_bench_$2 i us best=
	for i in 1 2 3; do
		reset "$db"
		us=$(psql -X -q -At -d "$db" -v ON_ERROR_STOP=1 <<EOF
CALL bench_loop('$w', 1000);
SELECT $cpu_ns AS t0 \gset
CALL bench_loop('$w', $MICRO_CALLS);
SELECT round(($cpu_ns - :t0) / 1e3 / $MICRO_CALLS, 2);
EOF
		) || die "micro $w failed in $db"
		best=$(printf '%s\n%s\n' "$us" "$best" | sed '/^$/d' | sort -g | head -1)
	done
	echo "$best" >>"$scripts/micro.$w.$v"
	log "  round $r, $v, $w: $best us per transaction (micro)"
}

for r in $(seq "$ROUNDS"); do
	if [ $((r % 2)) -eq 1 ]; then order="base this"; else order="this base"; fi
	for w in $(echo $WORKLOADS $MICRO_WORKLOADS | tr ' ' '\n' | awk '!seen[$0]++'); do
		for v in $order; do
			case " $WORKLOADS " in *" $w "*)
				case " $MODE " in *" tps "*) run "$w" "$v" ;; esac ;;
			esac
			case " $MICRO_WORKLOADS " in *" $w "*)
				case " $MODE " in *" micro "*) micro "$w" "$v" ;; esac ;;
			esac
		done
	done
done

case " $MODE " in *" micro "*)
	echo
	echo "One session, $MICRO_CALLS transactions of one call, backend CPU us per transaction (fastest of 3), median of $ROUNDS rounds"
	echo "ratio = this / base (above 1: this build is slower)"
	printf '%-8s %9s %9s %6s  %s\n' workload base this ratio 'all rounds (base | this)'
	for w in $MICRO_WORKLOADS; do
		a=$(bench_median <"$scripts/micro.$w.base")
		b=$(bench_median <"$scripts/micro.$w.this")
		printf '%-8s %9s %9s %6s  %s| %s\n' "$w" "$a" "$b" "$(bench_ratio "$b" "$a")" \
			"$(tr '\n' ' ' <"$scripts/micro.$w.base")" "$(tr '\n' ' ' <"$scripts/micro.$w.this")"
	done
	;;
esac
case " $MODE " in *" tps "*) ;; *) WORKLOADS= ;; esac
if [ -n "$WORKLOADS" ]; then
	echo
	echo "TPS, median of $ROUNDS rounds of $SECS s, $CLIENTS clients"
	echo "ratio = this / base, of the medians; paired = median (min-max) of the rounds' own ratios"
	printf '%-8s %9s %9s %6s %17s  %s\n' workload base this ratio paired 'all runs (base | this)'
fi
for w in $WORKLOADS; do
	a=$(bench_median <"$scripts/tps.$w.base")
	b=$(bench_median <"$scripts/tps.$w.this")
	paired=$(paste "$scripts/tps.$w.this" "$scripts/tps.$w.base" |
		awk '{ printf "%.3f\n", ($2 > 0 ? $1 / $2 : 0) }' | sort -n |
		awk '{ a[NR] = $1 } END { printf "%.2f (%.2f-%.2f)", a[int((NR + 1) / 2)], a[1], a[NR] }')
	printf '%-8s %9.0f %9.0f %6s %17s  %s | %s\n' "$w" "$a" "$b" "$(bench_ratio "$b" "$a")" \
		"$paired" \
		"$(awk '{ printf "%s%.0f", (NR > 1 ? " " : ""), $1 }' "$scripts/tps.$w.base")" \
		"$(awk '{ printf "%s%.0f", (NR > 1 ? " " : ""), $1 }' "$scripts/tps.$w.this")"
done
test_db_drop entitlock_bench_base
test_db_drop entitlock_bench_this
