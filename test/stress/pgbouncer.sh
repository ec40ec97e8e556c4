#!/usr/bin/env bash
#
# Behind a connection pooler: PgBouncer (Debian's pgbouncer) in transaction
# pooling mode in front of the cluster, with fewer server connections than
# clients, so that every server connection serves many clients, one
# transaction at a time.
#
# README promises that entitlock is safe behind such a pooler because
# everything it does belongs to the caller's transaction: locks end at
# COMMIT or ROLLBACK, claims and usage are rows written in the transaction,
# leases are rows and tokens.  Session advisory locks are not safe, because
# they stay with the server connection when the pooler hands it to the
# next client.  This script shows both on one pooled server connection
# (a database alias with pool_size=1):
#   - entitlock.lock taken by client A in a transaction is held (a direct
#     connection cannot take it) until A commits; then client B, served by
#     the same server backend, gets it at once, and nothing is left in
#     pg_locks;
#   - pg_advisory_lock taken by A outlives A's transaction: B, served by
#     the same backend, "gets" it although A never let go, a direct
#     connection cannot, it is still in pg_locks after A disconnected, and
#     a third client can release it.
# The two cases differ only in the kind of lock, so each is the other's
# control: a check that could not tell them apart would fail one of them.
#
# Then it runs the four pgbench stress scripts (usage, idempotency, leases,
# locks) through the pooler, with their own checks and controls, and
# requires that their clients really shared server connections (PgBouncer's
# pools, sampled, had at least twice as many clients as server connections)
# and that the server did not crash.  Through PgBouncer a killed backend
# reaches pgbench in PgBouncer's words: "server conn crashed?", "server
# connection closed", or "invalid server parameter" when it dies just as
# PgBouncer sets the client's application_name on it.  The kill-tolerant
# scripts are told to accept these; a crashed backend would get the same
# words, hence the look at the server log.
#
# Uses the cluster PGHOST points at (test/run.sh's), or starts one of its
# own.  Installs pgbouncer when missing, and runs its own instance as the
# postgres OS user on a private Unix socket; the system's pgbouncer
# service, if any, is never used.
#
#   STRESS_SECONDS (default 15) length of each stress script's main run
#   STRESS_CLIENTS (default 32) pgbench clients of each stress script
#   POOLER_POOL_SIZE (default 8) server connections per database

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

SECONDS_RUN=${STRESS_SECONDS:-15}
CLIENTS=${STRESS_CLIENTS:-32}
POOL_SIZE=${POOLER_POOL_SIZE:-8}
db=entitlock_pgbouncer
one=${db}_one
dir=$(mktemp -d /tmp/entitlock-pgbouncer.XXXXXX)
own_cluster=
bouncer_pid=
sampler=
direct_host=
direct_port=

stop_bouncer() {
	[ -n "$bouncer_pid" ] || bouncer_pid=$(cat "$dir/pgbouncer.pid" 2>/dev/null)
	[ -n "$bouncer_pid" ] || return 0
	kill "$bouncer_pid" 2>/dev/null
	for _ in $(seq 1 100); do
		kill -0 "$bouncer_pid" 2>/dev/null || break
		sleep 0.05
	done
	bouncer_pid=
}
cleanup() {
	[ -n "$sampler" ] && kill "$sampler" 2>/dev/null
	stop_bouncer
	if [ -n "$own_cluster" ]; then
		cluster_destroy "$own_cluster"
	elif [ -n "$direct_host" ]; then
		PGHOST=$direct_host PGPORT=$direct_port test_db_drop "$db"
	fi
	if [ -n "${ENTITLOCK_KEEP:-}" ]; then log "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT

ensure_packages pgbouncer
bouncer=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
chmod 755 "$dir"
[ "$(id -u)" -eq 0 ] && chown postgres: "$dir"

if [ -z "${PGHOST:-}" ]; then
	own_cluster=$dir/cluster
	cluster_start "$own_cluster" >/dev/null
	server_log=$own_cluster/server.log
else
	server_log=${ENTITLOCK_SERVER_LOG:-}
fi
export PGUSER=${PGUSER:-postgres}
direct_host=$PGHOST
direct_port=$PGPORT
log_from=0
[ -n "$server_log" ] && [ -r "$server_log" ] && log_from=$(stat -c %s "$server_log")

test_db_create "$db" || exit 1

# Listens on a Unix socket in $dir only (no listen_addr: no TCP).  auth_type
# trust matches the throwaway cluster's; the user must still be listed.
# In transaction mode server_reset_query is not run between clients, so
# session state stays on the server connection, as in production.
port=$(free_port $((direct_port + 7)))
cat >"$dir/pgbouncer.ini" <<EOF
[databases]
$one = host=$direct_host port=$direct_port dbname=$db pool_size=1
* = host=$direct_host port=$direct_port

[pgbouncer]
listen_port = $port
unix_socket_dir = $dir
pool_mode = transaction
default_pool_size = $POOL_SIZE
reserve_pool_size = 0
max_client_conn = $((CLIENTS * 2 + 50))
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = $PGUSER
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
printf '"%s" ""\n' "$PGUSER" >"$dir/userlist.txt"
[ "$(id -u)" -eq 0 ] && chown postgres: "$dir"/*
as_pg "$bouncer" -d -q "$dir/pgbouncer.ini" ||
	{ cat "$dir/pgbouncer.log" >&2; die "pgbouncer did not start"; }
admin() { psql -X -q -A -F ' ' -h "$dir" -p "$port" -d pgbouncer -c "$1"; }
for _ in $(seq 1 100); do
	admin "SHOW VERSION" >/dev/null 2>&1 && [ -s "$dir/pgbouncer.pid" ] && break
	sleep 0.05
done
bouncer_pid=$(cat "$dir/pgbouncer.pid" 2>/dev/null)
admin "SHOW VERSION" >/dev/null 2>&1 && [ -n "$bouncer_pid" ] ||
	{ cat "$dir/pgbouncer.log" >&2; die "pgbouncer does not answer"; }
log "pgbouncer $("$bouncer" --version | sed -n '1s/^PgBouncer //p'): transaction pooling, $POOL_SIZE server connections per database, port $port, in front of $direct_host:$direct_port"

direct() { psql -X -q -At -h "$direct_host" -p "$direct_port" -d "$db" -c "$1" 2>&1; }
pooled() { timeout 10 psql -X -q -At -h "$dir" -p "$port" -d "$one" -c "$1" 2>&1; }
advisory_held_by() {
	direct "SELECT count(*) FROM pg_locks
			 WHERE locktype = 'advisory' AND granted AND pid = ${1:-0}"
}

# Client A runs in one psql session through the one-connection pool; "\!"
# runs B (through the same pool) and direct checks while A is between
# statements, so A is still connected but holds no server connection
# unless it is inside a transaction.
cat >"$dir/xact.sql" <<EOF
BEGIN;
SELECT entitlock.lock('pooled-xact');
\\o $dir/xact.a
SELECT pg_backend_pid();
\\o
\\! psql -X -q -At -h '$direct_host' -p $direct_port -d $db -c "SELECT entitlock.try_lock('pooled-xact')" >$dir/xact.direct 2>&1
COMMIT;
\\! timeout 10 psql -X -q -At -h '$dir' -p $port -d $one -c "SELECT entitlock.try_lock('pooled-xact')::text || ' ' || pg_backend_pid()" >$dir/xact.b 2>&1
EOF
cat >"$dir/session.sql" <<EOF
\\o $dir/session.a
SELECT pg_backend_pid() FROM (SELECT pg_advisory_lock(entitlock.key('pooled-session'))) AS l;
\\o
\\! timeout 10 psql -X -q -At -h '$dir' -p $port -d $one -c "SELECT pg_try_advisory_lock(entitlock.key('pooled-session'))::text || ' ' || pg_backend_pid()" >$dir/session.b 2>&1
\\! psql -X -q -At -h '$direct_host' -p $direct_port -d $db -c "SELECT pg_try_advisory_lock(entitlock.key('pooled-session'))" >$dir/session.direct 2>&1
EOF

log "transaction lock through a pool of one server connection"
timeout 30 psql -X -q -At -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -d "$one" -f "$dir/xact.sql" >/dev/null ||
	{ log "FAILED: client A's session"; check_failed=1; }
a_pid=$(cat "$dir/xact.a" 2>/dev/null)
expect "while A's transaction runs, a direct connection cannot take the lock" \
	"$(cat "$dir/xact.direct")" f
expect "after A's COMMIT, B gets it at once, on A's server connection" \
	"$(cat "$dir/xact.b")" "true $a_pid"
expect "and no advisory lock is left on that connection" "$(advisory_held_by "$a_pid")" 0

log "session lock through a pool of one server connection"
timeout 30 psql -X -q -At -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -d "$one" -f "$dir/session.sql" >/dev/null ||
	{ log "FAILED: client A's session"; check_failed=1; }
a_pid=$(cat "$dir/session.a" 2>/dev/null)
expect "B, on A's server connection, gets the lock A never released" \
	"$(cat "$dir/session.b")" "true $a_pid"
expect "a direct connection cannot take it" "$(cat "$dir/session.direct")" f
expect "after A disconnected, the lock is still held by the pooled connection" \
	"$(advisory_held_by "$a_pid")" 1
expect "and another client can release it" \
	"$(pooled "SELECT pg_advisory_unlock(entitlock.key('pooled-session'))")" t
pooled "SELECT pg_advisory_unlock_all()" >/dev/null

# The stress scripts, pointed at the pooler.  Their setup (CREATE and DROP
# DATABASE) and checks go through it too.  pgbench uses the simple query
# protocol there, which transaction pooling supports.  Meanwhile the pools
# are sampled, to show that they had fewer server connections than clients.
while :; do
	admin "SHOW POOLS" 2>/dev/null
	sleep 0.2
done >"$dir/pools" &
sampler=$!
for s in usage idempotency leases locks; do
	log "--- $s-pgbench through pgbouncer"
	PGHOST=$dir PGPORT=$port STRESS_SECONDS=$SECONDS_RUN STRESS_CLIENTS=$CLIENTS \
		PGBENCH_EXPECTED_ERRORS='server conn crashed\?|server connection closed|invalid server parameter' \
		bash "$ENTITLOCK_ROOT/test/stress/$s-pgbench.sh"
	rc=$?
	check '[ "$rc" = 0 ]' "$s-pgbench through pgbouncer: exit $rc"
done
kill "$sampler"
wait "$sampler" 2>/dev/null
sampler=

# Each stress database's traffic went through the pooler, and at its
# busiest its clients outnumbered its server connections at least two to
# one: these were shared.  (A pool as large as the client count fails
# this: the kill loop's client alone does not double the count.)
stats=$(admin "SHOW STATS")
for s in usage idem lease locks; do
	read -r xacts queries wait_us <<<"$(awk -v d="entitlock_stress_$s" '
		NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
		$1 == d { print $col["total_xact_count"], $col["total_query_count"], $col["total_wait_time"] }' <<<"$stats")"
	read -r max_clients max_servers <<<"$(awk -v d="entitlock_stress_$s" '
		$1 == "database" { for (i = 1; i <= NF; i++) col[$i] = i; next }
		$1 == d {
			c = $col["cl_active"] + $col["cl_waiting"]
			v = $col["sv_active"] + $col["sv_idle"] + $col["sv_used"] + $col["sv_tested"] + $col["sv_login"]
			if (c > mc) mc = c
			if (v > mv) mv = v
		}
		END { print mc + 0, mv + 0 }' "$dir/pools")"
	log "  pgbouncer, entitlock_stress_$s: ${xacts:-0} transactions, ${queries:-0} queries; at most $max_clients clients on $max_servers server connections; clients waited $(((${wait_us:-0} + 500000) / 1000000)) s in all for one"
	check '[ "${xacts:-0}" -gt 1000 ]' "entitlock_stress_$s: only ${xacts:-0} transactions went through pgbouncer"
	check '[ "$max_servers" -gt 0 ] && [ "$max_servers" -le "$POOL_SIZE" ] && [ "$max_clients" -ge $((2 * max_servers)) ]' \
		"entitlock_stress_$s: $max_clients clients on $max_servers server connections: the pool was not shared"
done

if [ -n "$server_log" ] && [ -r "$server_log" ]; then
	crashes=$(tail -c +$((log_from + 1)) "$server_log" |
		grep -cE 'was terminated by signal|terminating connection because of crash')
	expect "no backend crashed" "$crashes" 0
else
	log "no server log to check for crashes (set ENTITLOCK_SERVER_LOG)"
fi

exit "$check_failed"
