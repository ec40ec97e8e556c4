#!/usr/bin/env bash
#
# test/bench/stats.sh: what the statistics in shared memory (entitlock.stats,
# src/stats.c) cost.
#
#   bash test/bench/stats.sh
#   BENCH_SECONDS=8 BENCH_WARMUP=2 BENCH_ROUNDS=5 BENCH_CLIENTS=8 bash test/bench/stats.sh
#
# Statistics count every call, but only when the library is loaded through
# shared_preload_libraries.  So the same build runs the same workloads on
# one throwaway cluster, restarted between two variants:
#   without  shared_preload_libraries = ''  (nothing is counted)
#   with     shared_preload_libraries = 'entitlock'
# Workloads, BENCH_CLIENTS (8) pgbench clients, those of test/bench/locks.sh
# and test/bench/usage.sh:
#   lock        BEGIN; entitlock.lock('name-' || random(1, 1000)); COMMIT
#               (pgbench -M simple, as locks.sh; 1,000 names, and so 1,000
#               labels: each name is its own label, the most the default
#               entitlock.stats_max keeps apart)
#   usage-1000  record_usage_if_under_limit('s-' || random(1, 1000), 'api',
#               1, <a limit never reached>) (pgbench -M prepared, as usage.sh)
#   usage-hot   the same on one subject
# Usage counters are emptied, vacuumed and checkpointed before each run, as
# in usage.sh.  Each round runs every workload under both variants, one
# right after the other (restarting the server in between; which variant
# goes first alternates from round to round), so that a slow spell of this
# small machine falls on both: BENCH_WARMUP (2) s that are not counted (the
# first seconds after a restart are slow, by varying amounts), then
# BENCH_SECONDS (8) s; BENCH_ROUNDS (5) rounds.  It prints the median TPS
# of each variant, the ratio with / without of the medians and the median
# of the rounds' own ratios (the target is >= 0.95), and, to show that the
# counting really ran, the calls entitlock.stats counted in the "with"
# runs per transaction pgbench committed (1.00 when every call is counted;
# 0 without the preload).
#
# On this small machine (2 cores, 8 clients and pgbench on them) the TPS
# of runs of one variant wander by 10-20 %, more than the difference
# sought; so after each lock run it also times, in one session,
# BENCH_MICRO_CALLS (500,000) lock() calls in one statement (the cheapest
# counted call: re-taking a held lock), and prints what counting adds to a
# call in nanoseconds, and what that is of a lock transaction's time.  A
# benchmark, not a test: it asserts nothing.  About 5.5 minutes with the
# defaults.
#
# Always starts its own cluster (fsync on, synchronous_commit off, as
# bench_start in test/lib.sh), even when PGHOST is set: it has to restart
# the server to change shared_preload_libraries.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

SECS=${BENCH_SECONDS:-8}
WARMUP=${BENCH_WARMUP:-2}
ROUNDS=${BENCH_ROUNDS:-5}
CLIENTS=${BENCH_CLIENTS:-8}
WORKLOADS="lock usage-1000 usage-hot"

echo "# BENCH_SECONDS=$SECS BENCH_WARMUP=$WARMUP BENCH_ROUNDS=$ROUNDS BENCH_CLIENTS=$CLIENTS bash test/bench/stats.sh"

unset PGHOST PGPORT PGDATABASE
scripts=$(mktemp -d)
dir=$(mktemp -d /tmp/entitlock-bench-stats.XXXXXX)
trap 'rm -rf "$scripts"; cluster_destroy "$dir"' EXIT
cluster_start "$dir" "fsync = on" "synchronous_commit = off" >/dev/null
db=entitlock_bench_stats
test_db_create "$db" || exit 1

printf '\\set i random(1, 1000)\nBEGIN;\nSELECT entitlock.lock(%s);\nCOMMIT;\n' \
	"'name-' || :i" >"$scripts/lock.sql"
for keys in 1000 1; do
	printf '\\set i random(1, %d)\n%s\n' "$keys" \
		"SELECT * FROM entitlock.record_usage_if_under_limit('s-' || :i, 'api', 1, 1000000000000);" \
		>"$scripts/usage-$keys.sql"
done
cp "$scripts/usage-1.sql" "$scripts/usage-hot.sql"

protocol() { case $1 in lock) echo simple ;; *) echo prepared ;; esac; }
kind() { case $1 in lock) echo lock ;; *) echo usage ;; esac; }

# restart_as VARIANT: the server restarted with or without the preload.
restart_as() {
	local spl='' set='RESET shared_preload_libraries'
	# (SET to '' would be a list of one empty name, which fails to load)
	[ "$1" = with ] && spl=entitlock set="SET shared_preload_libraries = 'entitlock'"
	psql -X -q -c "ALTER SYSTEM $set" || die "ALTER SYSTEM failed"
	as_pg "$(pg_bindir)/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w restart >/dev/null ||
		{ tail -20 "$dir/server.log" >&2; die "restart failed"; }
	[ "$(psql -X -At -c 'SHOW shared_preload_libraries')" = "$spl" ] ||
		die "shared_preload_libraries is not '$spl' after the restart"
}

# reset: empty the usage counters, vacuum, checkpoint; zero the statistics.
reset() {
	psql -X -q -v ON_ERROR_STOP=1 -d "$db" >/dev/null <<'EOF' || die "reset failed"
TRUNCATE entitlock.usage_counter, entitlock.usage_idempotency;
VACUUM;
CHECKPOINT;
SELECT entitlock.stats_reset();
EOF
}

# run WORKLOAD VARIANT: one pgbench run; appends its TPS to
# $scripts/tps.WORKLOAD.VARIANT and the calls counted per committed
# transaction to $scripts/counted.WORKLOAD.VARIANT.
run() {
	local w=$1 v=$2 out tps processed calls
	# the first seconds after a restart are slow, and slow by varying amounts
	PGDATABASE=$db pgbench -n -M "$(protocol "$w")" -c "$CLIENTS" -j 2 \
		-T "$WARMUP" -f "$scripts/$w.sql" >/dev/null 2>&1
	reset
	out=$(PGDATABASE=$db pgbench -n -M "$(protocol "$w")" -c "$CLIENTS" -j 2 \
		-T "$SECS" -f "$scripts/$w.sql" 2>&1)
	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out")
	processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
	if [ -z "$tps" ] || grep -qiE 'error|aborted' <<<"$out"; then
		log "pgbench failed ($w, $v):"
		grep -iE 'error|aborted' <<<"$out" | head -5 >&2
	fi
	calls=$(psql -X -At -d "$db" -c "SELECT coalesce(sum(calls), 0) FROM entitlock.stats
		WHERE kind = '$(kind "$w")'")
	echo "${tps:-0}" >>"$scripts/tps.$w.$v"
	awk -v c="$calls" -v p="${processed:-0}" 'BEGIN { printf "%.2f\n", (p > 0 ? c / p : 0) }' \
		>>"$scripts/counted.$w.$v"
	log "  round $r, $v, $w: ${tps:-0} tps"
}

# micro VARIANT: the most counting can add to one call, in one session
# with nothing else running: MICRO_CALLS calls of lock() on the 1,000 names
# (1,000 labels) in one statement, where all but the first 1,000 re-take a
# lock the transaction holds, the cheapest call that is counted.  Appends
# nanoseconds per call (the fastest of three statements) to
# $scripts/micro.VARIANT.
MICRO_CALLS=${BENCH_MICRO_CALLS:-500000}
micro() {
	local q="SELECT round(extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1e9 / $MICRO_CALLS)
			   FROM (SELECT count(entitlock.lock('name-' || (i % 1000 + 1)))
					   FROM generate_series(1, $MICRO_CALLS) AS i) AS s"
	psql -X -q -At -d "$db" -c "SELECT entitlock.stats_reset()" >/dev/null
	# the fastest of three: on an idle CPU noise only ever adds time
	psql -X -q -At -d "$db" -c "$q" -c "$q" -c "$q" | sort -n | head -1 \
		>>"$scripts/micro.$1"
	[ -s "$scripts/micro.$1" ] || die "micro benchmark failed"
}

for r in $(seq "$ROUNDS"); do
	if [ $((r % 2)) -eq 1 ]; then order="without with"; else order="with without"; fi
	for w in $WORKLOADS; do
		for v in $order; do
			restart_as "$v"
			run "$w" "$v"
			[ "$w" = lock ] && micro "$v"
		done
	done
done

echo
echo "TPS, median of $ROUNDS rounds of $SECS s, $CLIENTS clients"
echo "ratio = with / without, of the medians; paired = median (min-max) of the rounds' own ratios"
echo "counted = calls in entitlock.stats per committed transaction (median), with the preload"
printf '%-11s %9s %9s %6s %17s %8s  %s\n' workload without with ratio paired counted 'all runs (without | with)'
for w in $WORKLOADS; do
	a=$(bench_median <"$scripts/tps.$w.without")
	b=$(bench_median <"$scripts/tps.$w.with")
	c=$(bench_median <"$scripts/counted.$w.with")
	paired=$(paste "$scripts/tps.$w.with" "$scripts/tps.$w.without" |
		awk '{ printf "%.3f\n", ($2 > 0 ? $1 / $2 : 0) }' | sort -n |
		awk '{ a[NR] = $1 } END { printf "%.2f (%.2f-%.2f)", a[int((NR + 1) / 2)], a[1], a[NR] }')
	printf '%-11s %9.0f %9.0f %6s %17s %8s  %s | %s\n' "$w" "$a" "$b" "$(bench_ratio "$b" "$a")" \
		"$paired" "$c" \
		"$(awk '{ printf "%s%.0f", (NR > 1 ? " " : ""), $1 }' "$scripts/tps.$w.without")" \
		"$(awk '{ printf "%s%.0f", (NR > 1 ? " " : ""), $1 }' "$scripts/tps.$w.with")"
done
echo "target: with >= 0.95 x without"
echo
m0=$(bench_median <"$scripts/micro.without")
m1=$(bench_median <"$scripts/micro.with")
t0=$(bench_median <"$scripts/tps.lock.without")
echo "One session, $MICRO_CALLS lock() calls in one statement (re-taking held locks), ns per call, median of $ROUNDS (each the fastest of 3):"
echo "  without $m0, with $m1 (runs: $(tr '\n' ' ' <"$scripts/micro.without")| $(tr '\n' ' ' <"$scripts/micro.with"))"
awk -v a="$m0" -v b="$m1" -v t="$t0" -v c="$(nproc)" 'BEGIN {
	printf "  counting adds %d ns per call: %.2f%% of a lock transaction at %d tps on %d cores\n",
		b - a, (b - a) * t / (c * 1e9) * 100, t, c }'
echo "calls counted per transaction without the preload: $(cat "$scripts"/counted.*.without | sort -u | tr '\n' ' ')"
