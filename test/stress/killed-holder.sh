#!/usr/bin/env bash
#
# A killed holder never leaves a lock behind.  A session takes
# lock_entity('acme', 'e1') and lock('job-1') and then hangs; one waiter
# queues on each.  pg_terminate_backend on the holder must let both
# waiters in at once, and afterwards nothing is held.  The same for a
# worker that dies while idle in its transaction (its psql is killed with
# SIGKILL): the server sees the connection close and frees the locks.
# (A backend busy in a long statement notices a dead client only when the
# statement ends, or sooner with client_connection_check_interval; the
# README says so.)

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

db=entitlock_stress_killed
tmp=$(mktemp -d)
trap '[ -f "$tmp/feeder.pid" ] && kill "$(cat "$tmp/feeder.pid")"; kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"; test_db_drop "$db"' EXIT
test_db_create "$db" || exit 1

q() { psql -X -At -d "$db" -c "$1"; }
wait_for() { poll_until "$db" "$1"; }

status=0

for how in terminate sigkill; do
	# The holder takes its locks, then either sleeps in a statement far
	# longer than the test (terminate) or sits idle in its transaction
	# with its client waiting for more input (sigkill).
	take="BEGIN;
		SELECT entitlock.lock_entity('acme', 'e1');
		SELECT entitlock.lock('job-1');"
	if [ "$how" = terminate ]; then
		psql -X -q -d "$db" -c "$take SELECT pg_sleep(600);" >/dev/null 2>&1 &
	else
		(
			printf '%s\n' "$take"
			sleep 600 &
			echo $! >"$tmp/feeder.pid"
			wait
		) | psql -X -q -d "$db" >/dev/null 2>&1 &
	fi
	holder_psql=$!
	wait_for "SELECT count(*) = 1 FROM entitlock.holders('job-1') WHERE granted" || exit 1
	holder_pid=$(q "SELECT pid FROM entitlock.holders('job-1') WHERE granted")

	# Two waiters, each timing its own wait; statement_timeout turns a
	# stuck lock into a failure instead of a hang.
	PGOPTIONS='-c statement_timeout=30s' psql -X -At -d "$db" -c "
		SELECT entitlock.lock('job-1', '60 s'),
			   extract(epoch FROM clock_timestamp() - statement_timestamp())" \
		>"$tmp/w1.out" 2>&1 &
	w1=$!
	PGOPTIONS='-c statement_timeout=30s' psql -X -At -d "$db" -c "
		SELECT entitlock.lock('acme'); SELECT 'realm acquired'" >"$tmp/w2.out" 2>&1 &
	w2=$!
	wait_for "SELECT count(*) = 1 FROM entitlock.holders('job-1') WHERE NOT granted" || exit 1
	wait_for "SELECT count(*) = 1 FROM entitlock.holders('acme') WHERE mode = 'exclusive' AND NOT granted" || exit 1
	sleep 0.5

	start=$(date +%s.%N)
	if [ "$how" = terminate ]; then
		q "SELECT pg_terminate_backend($holder_pid)" >/dev/null
	else
		kill -KILL "$holder_psql"
	fi
	wait "$w1"
	wait "$w2"
	elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')

	log "$how: waiter 1 got: $(tr '\n' ' ' <"$tmp/w1.out")"
	log "$how: waiter 2 got: $(tr '\n' ' ' <"$tmp/w2.out")"
	log "$how: both waiters were through $elapsed s after the holder was killed"
	grep -q '^t|' "$tmp/w1.out" || { log "$how: waiter 1 did not get the lock"; status=1; }
	grep -q 'realm acquired' "$tmp/w2.out" || { log "$how: waiter 2 did not get the realm"; status=1; }
	# The holder would have held on for 600 s; anything near that means the
	# lock stuck.
	if ! awk -v e="$elapsed" 'BEGIN { exit !(e < 10) }'; then
		log "$how: waiters took $elapsed s"
		status=1
	fi
	# Waiting for a pipeline waits for all of it: end the feeder first.
	[ -f "$tmp/feeder.pid" ] && kill "$(cat "$tmp/feeder.pid")" 2>/dev/null
	rm -f "$tmp/feeder.pid"
	wait "$holder_psql" 2>/dev/null

	wait_for "SELECT count(*) = 0 FROM pg_locks WHERE locktype = 'advisory'
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())" || status=1
	[ "$(q "SELECT entitlock.try_lock('job-1') AND entitlock.try_lock_entity('acme', 'e1')")" = t ] ||
		{ log "$how: locks not free afterwards"; status=1; }
done

exit $status
