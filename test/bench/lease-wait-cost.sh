#!/usr/bin/env bash
#
# test/bench/lease-wait-cost.sh: what a waiting lease_acquire costs the
# server.
#
#   bash test/bench/lease-wait-cost.sh          (starts its own throwaway cluster)
#   BENCH_SECONDS=20 BENCH_CLIENTS=32 bash test/bench/lease-wait-cost.sh
#
# lease_acquire(name, ttl, holder, wait) holds no lock while it waits: it
# looks at the lease again every 20 ms (LEASE_POLL_MS in src/leases.c), or
# at the lease's expiry when that comes first.  So each waiter wakes about
# 50 times a second.  This measures what that costs: BENCH_CLIENTS (16)
# sessions each wait on a lease held (ttl 1 hour) by nobody connected, for
# BENCH_SECONDS (10) s, and for each waiter's backend (found through
# pg_stat_activity.application_name) it reads, before and after:
#   - CPU time, utime + stime of /proc/<pid>/stat (in clock ticks);
#   - wake-ups, voluntary_ctxt_switches of /proc/<pid>/status (each sleep
#     that ends is one), and nonvoluntary_ctxt_switches (preemptions);
#   - RssAnon of /proc/<pid>/status: private memory, which must not grow
#     with the number of polls.
# For comparison, the same number of sessions wait just as long in
#   lock      entitlock.lock(name, timeout) on a lock a session holds (a
#             heavyweight-lock wait, woken only by the release or timer)
#   pg_sleep  pg_sleep(), the floor: a backend that sleeps
# It prints, per variant, CPU milliseconds per waiter per second (= CPU %
# of one core x 10), wake-ups and preemptions per waiter per second, the
# memory growth per waiter, and the CPU share of one core that all waiters
# together took.  Afterwards the lease waiters are cancelled (a cancel must
# end the wait) and the number that ended with "canceling statement" is
# shown.  A benchmark, not a test: it asserts nothing.
#
# Uses the cluster PGHOST points at, if any (it must run on this machine:
# it reads /proc), otherwise starts a throwaway one.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

SECS=${BENCH_SECONDS:-10}
CLIENTS=${BENCH_CLIENTS:-16}
HZ=$(getconf CLK_TCK)
db=entitlock_bench_lease_wait
tmp=$(mktemp -d)
own_cluster=
holder=

cleanup() {
	[ -n "$holder" ] && kill "$holder" 2>/dev/null
	if [ -n "$own_cluster" ]; then
		cluster_destroy "$own_cluster"
	else
		test_db_drop "$db" >/dev/null 2>&1
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

if [ -z "${PGHOST:-}" ]; then
	own_cluster=$(mktemp -d /tmp/entitlock-bench-wait.XXXXXX)
	cluster_start "$own_cluster" >/dev/null
fi
test_db_create "$db" || exit 1

q() { psql -X -q -At -d "$db" -c "$1"; }

# The waiters' backends, once all CLIENTS of APP wait in WAIT_EVENT.
waiter_pids() {
	local app=$1 event=$2 i n
	for i in $(seq 1 400); do
		n=$(q "SELECT count(*) FROM pg_stat_activity
				WHERE application_name = '$app' AND state = 'active'
				  AND wait_event = '$event'")
		[ "$n" = "$CLIENTS" ] && break
		sleep 0.05
	done
	[ "$n" = "$CLIENTS" ] || die "only $n of $CLIENTS $app sessions waiting in $event"
	q "SELECT pid FROM pg_stat_activity WHERE application_name = '$app' ORDER BY pid"
}

# sample PID...: per backend, "ticks voluntary nonvoluntary rss_anon_kB".
sample() {
	local pid
	for pid in "$@"; do
		printf '%s %s\n' \
			"$(awk '{ print $14 + $15 }' "/proc/$pid/stat")" \
			"$(awk '/^(voluntary_ctxt_switches|nonvoluntary_ctxt_switches|RssAnon):/ { v[$1] = $2 }
				END { print v["voluntary_ctxt_switches:"], v["nonvoluntary_ctxt_switches:"], v["RssAnon:"] }' \
				"/proc/$pid/status")"
	done
}

# measure VARIANT WAIT_EVENT SQL: CLIENTS sessions run SQL (which must
# wait longer than SECS); prints the variant's row.  Leaves the sessions'
# pids in $pids and their psql jobs in $jobs_started.
measure() {
	local variant=$1 event=$2 sql=$3 i before after elapsed t0
	jobs_started=()
	for i in $(seq 1 "$CLIENTS"); do
		PGAPPNAME=$variant-waiter psql -X -q -At -d "$db" -c "$sql" \
			>"$tmp/$variant.$i.out" 2>&1 &
		jobs_started+=($!)
	done
	pids=$(waiter_pids "$variant-waiter" "$event")
	# shellcheck disable=SC2086
	before=$(sample $pids)
	t0=$(date +%s.%N)
	sleep "$SECS"
	# shellcheck disable=SC2086
	after=$(sample $pids)
	elapsed=$(echo "$(date +%s.%N) - $t0" | bc)
	paste -d ' ' <(echo "$before") <(echo "$after") |
		awk -v hz="$HZ" -v s="$elapsed" -v n="$CLIENTS" -v v="$variant" '
			{ cpu += ($5 - $1) / hz; vol += $6 - $2; invol += $7 - $3; rss += $8 - $4 }
			END {
				printf "%-10s %7d %7.1f %10.2f %10.1f %10.1f %10.1f %10.1f\n", v, n, s,
					cpu * 1000 / n / s, vol / n / s, invol / n / s, rss / n, cpu / s * 100
			}'
}

echo "# bash test/bench/lease-wait-cost.sh  (BENCH_SECONDS=$SECS BENCH_CLIENTS=$CLIENTS; $(nproc) cores)"
echo "per waiter: CPU ms per second, voluntary (wake-ups) and involuntary context switches"
echo "per second, growth of private memory (RssAnon, kB) over the run; all: % of one core"
printf '%-10s %7s %7s %10s %10s %10s %10s %10s\n' variant waiters seconds cpu_ms/s wakeups/s preempt/s rss_kB 'all_cpu%'

limit=$((SECS + 10))

# lease: held for an hour by a session that has gone away
got=$(q "SELECT count(*) FROM entitlock.lease_acquire('cost:held', '1 hour', 'holder')")
[ "$got" = 1 ] || die "could not take the lease"
measure lease Extension \
	"SELECT count(*) FROM entitlock.lease_acquire('cost:held', '1 min', 'w', wait => '$limit s')"
q "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE application_name = 'lease-waiter'" >/dev/null
wait "${jobs_started[@]}"
cancelled=$(cat "$tmp"/lease.*.out | grep -c 'canceling statement due to user request')

# lock(name, timeout): a session holds the lock in an open transaction
psql -X -q -d "$db" -c "BEGIN" -c "SELECT entitlock.lock('cost:lock')" \
	-c "SELECT pg_sleep($limit + 5)" >/dev/null 2>&1 &
holder=$!
poll_until "$db" "SELECT count(*) = 1 FROM entitlock.holders('cost:lock') WHERE granted" ||
	die "the lock holder did not start"
measure lock advisory "SELECT entitlock.lock('cost:lock', '$limit s')"
q "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE application_name IN ('lock-waiter')" >/dev/null
wait "${jobs_started[@]}"
kill "$holder" 2>/dev/null
q "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
	WHERE datname = '$db' AND pid <> pg_backend_pid() AND query LIKE '%pg_sleep%'" >/dev/null
wait "$holder" 2>/dev/null
holder=

measure pg_sleep PgSleep "SELECT pg_sleep($limit)"
q "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE application_name = 'pg_sleep-waiter'" >/dev/null
wait "${jobs_started[@]}"

echo "lease waiters ended by a cancel: $cancelled of $CLIENTS"
