#!/usr/bin/env bash
#
# Leases and fencing numbers across pg_dump/restore, a restart and a crash.
#
# Dump: held leases (one with a 1 MB name) are restored into a new database
# with their holders, fencing numbers and tokens, so their holders can go
# on renewing and releasing them; the fencing sequence is restored too, so
# every acquisition after the restore gets a number above every one before.
#
# Restart and crash: in a cluster of its own, a committed lease survives a
# clean restart and an immediate stop (crash recovery); an acquisition that
# was in progress at the crash is gone, its name free at once; and fencing
# numbers handed out before either, even to the acquisition that was lost,
# are never handed out again.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

src=entitlock_lease_dump_src
dst=entitlock_lease_dump_dst
tmp=$(mktemp -d)
chmod 755 "$tmp"
crash_dir=
trap 'kill $(jobs -p) 2>/dev/null; [ -n "$crash_dir" ] && cluster_destroy "$crash_dir"; rm -rf "$tmp"; test_db_drop "$src"; test_db_drop "$dst"' EXIT

test_db_create "$src" || exit 1
q() { psql -X -q -At -d "$1" -c "$2" 2>&1; }

# Held leases, and some acquisitions released again to move the sequence.
token_a=$(q "$src" "SELECT token FROM entitlock.lease_acquire('report', '1 hour', 'worker-1')")
token_big=$(q "$src" "SELECT token FROM entitlock.lease_acquire(repeat('n', 1048576), '1 hour', 'worker-big')")
q "$src" "SELECT count(entitlock.lease_release('tmp-' || g, token))
			FROM generate_series(1, 20) AS g,
				 entitlock.lease_acquire('tmp-' || g, '1 minute')" >/dev/null
fencing_a=$(q "$src" "SELECT fencing FROM entitlock.leases WHERE name = 'report'")
spent=$(q "$src" "SELECT last_value FROM entitlock.lease_fencing")
log "before the dump: report has fencing $fencing_a; $spent numbers handed out"

pg_dump -Fc -d "$src" -f "$tmp/src.dump" || exit 1
psql -X -q -c "CREATE DATABASE $dst" || exit 1
pg_restore -d "$dst" "$tmp/src.dump" || exit 1

expect "leases restored with holders and fencing numbers" \
	"$(q "$dst" "SELECT string_agg(length(name) || ':' || holder || ':' || fencing, ',' ORDER BY name) FROM entitlock.leases")" \
	"$(q "$src" "SELECT string_agg(length(name) || ':' || holder || ':' || fencing, ',' ORDER BY name) FROM entitlock.leases")"
expect "a restored lease is still held" \
	"$(q "$dst" "SELECT count(*) FROM entitlock.lease_acquire('report', '1 minute')")" 0
expect "its token renews it after the restore" \
	"$(q "$dst" "SELECT entitlock.lease_renew('report', '$token_a', '2 hours')")" t
expect "a stranger still cannot release it" \
	"$(q "$dst" "SELECT entitlock.lease_release('report', gen_random_uuid())")" f
expect "the 1 MB name's token releases it after the restore" \
	"$(q "$dst" "SELECT entitlock.lease_release(repeat('n', 1048576), '$token_big')")" t
expect "a new acquisition after the restore gets a higher fencing number" \
	"$(q "$dst" "SELECT fencing > $spent FROM entitlock.lease_acquire('tmp-1', '1 minute')")" t
expect "so does the next holder of a restored lease" \
	"$(q "$dst" "SELECT entitlock.lease_release('report', '$token_a')")$(q "$dst" "SELECT fencing > $spent FROM entitlock.lease_acquire('report', '1 minute')")" tt

# Restart and crash, in a cluster of its own so the suite's keeps running.
crash_dir=$(mktemp -d /tmp/entitlock-crash.XXXXXX)
(
	PGPORT_BASE=$((PGPORT + 11))
	cluster_start "$crash_dir" >/dev/null
	psql -X -q -c "CREATE EXTENSION entitlock" || exit 1
	cq() { psql -X -q -At -c "$1" 2>&1; }
	restart() {
		as_pg "$(pg_bindir)/pg_ctl" -D "$crash_dir/data" -m "$1" -w stop >/dev/null
		wait
		as_pg "$(pg_bindir)/pg_ctl" -D "$crash_dir/data" -l "$crash_dir/server.log" -w start >/dev/null
	}

	token=$(cq "SELECT token FROM entitlock.lease_acquire('kept', '1 hour', 'worker-1')")
	before=$(cq "SELECT last_value FROM entitlock.lease_fencing")
	restart fast || exit 1
	echo "after restart, held: $(cq "SELECT count(*) FROM entitlock.leases WHERE name = 'kept'")"
	echo "after restart, higher: $(cq "SELECT fencing > $before FROM entitlock.lease_acquire('fresh', '1 hour')")"

	# An acquisition in progress when the server goes down.  Its number
	# is the highest handed out so far, and the first since a checkpoint,
	# so it is the one that makes the sequence write WAL.
	cq "CHECKPOINT" >/dev/null
	psql -X -q -At -c "BEGIN" \
		-c "SELECT fencing FROM entitlock.lease_acquire('in-flight', '1 hour', 'worker-2')" \
		-c "SELECT pg_sleep(600)" >"$tmp/in-flight.out" 2>&1 &
	poll_until postgres "SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND granted" ||
		exit 1
	lost=$(head -1 "$tmp/in-flight.out")
	restart immediate || exit 1

	echo "after crash, kept: $(cq "SELECT holder FROM entitlock.leases WHERE name = 'kept'")"
	echo "after crash, token renews: $(cq "SELECT entitlock.lease_renew('kept', '$token', '1 hour')")"
	echo "after crash, in-flight free: $(PGOPTIONS='-c lock_timeout=2s' cq "SELECT count(*) FROM entitlock.lease_acquire('in-flight', '1 hour')")"
	echo "after crash, above the lost number: $(cq "SELECT fencing > ${lost:-0} FROM entitlock.lease_acquire('after-crash', '1 hour')")"
	echo "lost number: ${lost:-none}"
) >"$tmp/crash.out" 2>&1
cat "$tmp/crash.out" >&2
field() { sed -n "s/^$1: //p" "$tmp/crash.out"; }
expect "a lease survives a restart" "$(field 'after restart, held')" 1
expect "fencing numbers go on rising after a restart" "$(field 'after restart, higher')" t
expect "a committed lease survives a crash" "$(field 'after crash, kept')" worker-1
expect "its token renews it after the crash" "$(field 'after crash, token renews')" t
expect "an acquisition in progress at the crash is gone" "$(field 'after crash, in-flight free')" 1
expect "the number the lost acquisition was handed is never handed out again" \
	"$(field 'after crash, above the lost number')" t

exit "$check_failed"
