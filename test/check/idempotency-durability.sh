#!/usr/bin/env bash
#
# Idempotency claims across pg_dump/restore and a crash.
#
# Dump: committed claims (short, 1 MB, with responses and fingerprints)
# are dumped with the database (pg_extension_config_dump) and restored
# into a new one, where they replay their responses, a mismatched
# fingerprint still fails, and new keys claim as before.
#
# Crash: in a cluster of its own, one session commits a claim and another
# leaves one open (claimed, not committed); the server then stops with
# "immediate" (no shutdown checkpoint, as in a crash) and recovers.  The
# committed claim must replay; the open one must be gone ('new'), with
# nothing stuck.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

src=entitlock_idem_dump_src
dst=entitlock_idem_dump_dst
tmp=$(mktemp -d)
chmod 755 "$tmp"
crash_dir=
trap 'kill $(jobs -p) 2>/dev/null; [ -n "$crash_dir" ] && cluster_destroy "$crash_dir"; rm -rf "$tmp"; test_db_drop "$src"; test_db_drop "$dst"' EXIT

test_db_create "$src" || exit 1
psql -X -q -v ON_ERROR_STOP=1 -d "$src" >/dev/null <<'EOF' || exit 1
BEGIN;
SELECT status FROM entitlock.idempotency_begin('order-1', 'fp-1');
SELECT entitlock.idempotency_complete('order-1', '{"order": 1, "total": "9.99"}');
COMMIT;
BEGIN;
SELECT status FROM entitlock.idempotency_begin(repeat('k', 1048576), 'fp-big');
SELECT entitlock.idempotency_complete(repeat('k', 1048576), '"big"');
COMMIT;
SELECT entitlock.first_time('job-1');
EOF

pg_dump -Fc -d "$src" -f "$tmp/src.dump" || exit 1
psql -X -q -c "CREATE DATABASE $dst" || exit 1
pg_restore -d "$dst" "$tmp/src.dump" || exit 1

q() { psql -X -At -d "$dst" -c "$1" 2>&1; }
expect "claims restored" "$(q "SELECT count(*) FROM entitlock.idempotency_key")" 3
expect "replay after restore" \
	"$(q "SELECT status || ' ' || response::text FROM entitlock.idempotency_begin('order-1', 'fp-1')")" \
	'replay {"order": 1, "total": "9.99"}'
expect "1 MB key replays after restore" \
	"$(q "SELECT status || ' ' || response::text FROM entitlock.idempotency_begin(repeat('k', 1048576), 'fp-big')")" \
	'replay "big"'
expect "first_time after restore" "$(q "SELECT entitlock.first_time('job-1')")" f
expect "fingerprint still checked after restore" \
	"$(q "SELECT status FROM entitlock.idempotency_begin('order-1', 'other')" | head -1)" \
	'ERROR:  idempotency key "order-1" was reused with a different request'
expect "new key after restore" "$(q "SELECT status FROM entitlock.idempotency_begin('order-2')")" new

# The crash, in a cluster of its own so the suite's keeps running.
crash_dir=$(mktemp -d /tmp/entitlock-crash.XXXXXX)
(
	PGPORT_BASE=$((PGPORT + 7))
	cluster_start "$crash_dir" >/dev/null
	psql -X -q -c "CREATE EXTENSION entitlock" || exit 1
	cq() { psql -X -At -c "$1" 2>&1; }

	psql -X -q -v ON_ERROR_STOP=1 >/dev/null <<'EOF' || exit 1
BEGIN;
SELECT status FROM entitlock.idempotency_begin('committed', 'fp');
SELECT entitlock.idempotency_complete('committed', '"kept"');
COMMIT;
EOF
	# The open claim: claimed, completed, never committed.
	psql -X -q -c "BEGIN" \
		-c "SELECT status FROM entitlock.idempotency_begin('in-flight')" \
		-c "SELECT entitlock.idempotency_complete('in-flight', '\"lost\"')" \
		-c "SELECT pg_sleep(600)" >/dev/null 2>&1 &
	poll_until postgres "SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND granted" ||
		exit 1
	# A duplicate is waiting for it when the server goes down.
	psql -X -At -c "SELECT status FROM entitlock.idempotency_begin('in-flight')" \
		>"$tmp/waiter.out" 2>&1 &
	poll_until postgres "SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted" ||
		exit 1

	as_pg "$(pg_bindir)/pg_ctl" -D "$crash_dir/data" -m immediate -w stop >/dev/null
	wait
	as_pg "$(pg_bindir)/pg_ctl" -D "$crash_dir/data" -l "$crash_dir/server.log" -w start >/dev/null ||
		exit 1

	echo "committed: $(cq "SELECT status || ' ' || response::text FROM entitlock.idempotency_begin('committed', 'fp')")"
	echo "in-flight: $(PGOPTIONS='-c lock_timeout=2s' cq "SELECT status FROM entitlock.idempotency_begin('in-flight')")"
	echo "rows: $(cq "SELECT string_agg(key || '=' || coalesce(response::text, 'none'), ',' ORDER BY key) FROM entitlock.idempotency_key")"
) >"$tmp/crash.out" 2>&1
cat "$tmp/crash.out" >&2
expect "committed claim survives the crash" "$(sed -n 's/^committed: //p' "$tmp/crash.out")" 'replay "kept"'
expect "open claim does not survive the crash" "$(sed -n 's/^in-flight: //p' "$tmp/crash.out")" new
expect "only committed claims remain" "$(sed -n 's/^rows: //p' "$tmp/crash.out")" 'committed="kept",in-flight=none'

exit "$check_failed"
