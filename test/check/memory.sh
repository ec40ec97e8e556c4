#!/usr/bin/env bash
#
# Memory: MEMORY_CALLS (default 1,000,000) calls of each hot function, all
# in ONE backend, must leave that backend's memory flat.
#
# A leak does not fail a functional test; it shows weeks later as a pooled
# backend that has grown to gigabytes.  Pooled backends live for days and
# make millions of calls, so that is what is done here.  Two ways of
# calling catch different leaks:
#
# - "stmt": all calls in one statement.  Catches memory left per call in
#   the query's or the transaction's context, freed only when the
#   statement ends (a result set's copy that is never freed, say).
#   Measured inside the statement, after every tenth of the calls.  One
#   transaction cannot hold a million distinct locks, so keys and names
#   repeat, and this covers the read and decide paths: re-taking a held
#   lock, a denial at the limit, a replay, a duplicate, a lease held by
#   someone else.
# - "txn": statements of MEMORY_BATCH (1000) calls with distinct keys, each
#   its own transaction.  Catches memory that outlives the transaction
#   (TopMemoryContext, CacheMemoryContext, the lock manager's local table,
#   malloc).  Measured between statements.  This covers the write paths:
#   new counters, claims, leases, and a timed lock that times out (a
#   subtransaction per call).
#
# A function with both paths gets half the calls on each.  The timed lock
# that times out waits 1 ms a call, and holders() reads pg_locks and
# pg_stat_activity, so those two make MEMORY_CALLS / 100 calls.
#
# The measure is the backend's private memory, RssAnon in
# /proc/self/status (read by the backend itself with pg_read_file), and
# the total of its memory contexts (pg_backend_memory_contexts).  VmRSS
# and VmHWM also count the shared buffers the backend has touched, which
# grow with the data and are no leak; they are reported, not judged.  The
# first tenth of each workload warms the caches; from there to the end,
# neither measure may grow by MEMORY_LIMIT_KB (8 MB).  The smallest leak,
# one 8-byte palloc per call, takes 24 bytes with its chunk header: 21 MB
# over the last 900,000 calls.  So 8 MB catches any per-call leak at the
# default count, and leaves room for what grows once (an allocator block
# doubling, the catalog caches, the local lock table).  A smaller
# MEMORY_CALLS makes the check less sensitive.
#
# Two controls leak on purpose in the same backend and must be flagged:
# custom settings made with set_config, between statements (malloc'd, so
# only RssAnon sees them), and prepared statements within one statement
# (memory contexts).  Without them the check could pass by measuring
# nothing.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

calls=${MEMORY_CALLS:-1000000}
batch=${MEMORY_BATCH:-1000}
limit_kb=${MEMORY_LIMIT_KB:-8192}
db=entitlock_memory_check
tmp=$(mktemp -d)
holder=
trap 'exec 3>&-; [ -n "$holder" ] && kill "$holder" 2>/dev/null; test_db_drop "$db"; rm -rf "$tmp"' EXIT

[ "$calls" -ge 1000 ] || die "MEMORY_CALLS must be at least 1000"
half=$((calls / 2))
slow=$((calls / 100))

test_db_create "$db" || exit 1
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$db" "$@"; }

# memstat(): RssAnon RssShmem VmRSS VmHWM (kB), the memory contexts'
# total (kB) and the time (epoch seconds), of the calling backend.
q <<'EOF' || exit 1
CREATE FUNCTION memstat() RETURNS text LANGUAGE sql VOLATILE AS $$
	SELECT concat_ws(' ',
		(SELECT string_agg(m[2], ' ' ORDER BY array_position(
				ARRAY['RssAnon', 'RssShmem', 'VmRSS', 'VmHWM'], m[1]))
		   FROM regexp_matches(pg_read_file('/proc/self/status'),
				'^(RssAnon|RssShmem|VmRSS|VmHWM):\s+(\d+) kB', 'gn') AS m),
		(SELECT sum(total_bytes)::bigint / 1024 FROM pg_backend_memory_contexts),
		extract(epoch FROM clock_timestamp())::numeric(20, 3))
$$;
-- The control for memory contexts: a prepared statement per call,
-- never deallocated, as an application that leaks them would.
CREATE FUNCTION leak_prepared(i int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE format('PREPARE memory_leak_%s AS SELECT %L::text', i, repeat('x', 4096));
	RETURN true;
END
$$;
EOF

# A session holding the lock that the timed lock waits for; holders()
# reports it.  It waits idle in its transaction, which has no snapshot and
# no transaction id, so vacuum and pruning still remove the dead rows the
# write paths leave (a running statement would hold them all back, and
# make every call slower than the last).  It takes the lock as
# pg_advisory_xact_lock, the same lock without lock escalation's stripe:
# held all along, a stripe would make every bulk statement below wait a
# second to escalate (see Lock escalation in README.md), which is not what
# this check measures.
mkfifo "$tmp/holder"
psql -X -q -d "$db" <"$tmp/holder" >/dev/null 2>&1 &
holder=$!
exec 3>"$tmp/holder"
echo "BEGIN; SELECT pg_advisory_xact_lock(entitlock.key('memory:contended'));" >&3
poll_until "$db" "SELECT count(*) = 1 FROM entitlock.holders('memory:contended')" || exit 1

script=$tmp/calls.sql
: >"$script"
workloads=()
declare -A made

# stmt NAME N QUERY: one statement making N calls.  QUERY has columns g
# (1..N, from generate_series(1, @N@)) and ok (the call gave the expected
# answer).  memstat() runs on every row where g is a multiple of N / 10,
# after that row's call.
stmt() {
	local name=$1 n=$2 query=$3 step=$(($2 / 10))
	workloads+=("$name")
	made[$name]=$((step * 10))
	query=${query//@N@/$((step * 10))}
	cat >>"$script" <<-EOF
	SELECT 'ckpt|$name|start|' || memstat();
	SELECT 'stmt|$name|' || count(*) FILTER (WHERE ok) || '|' ||
	       string_agg(CASE WHEN g % $step = 0 THEN memstat() END, ';')
	  FROM ($query OFFSET 0) AS s;
	EOF
}

# txn NAME N QUERY: N calls in statements of MEMORY_BATCH calls (at least
# ten statements).  QUERY has columns g (@LO@..@HI@) and ok; @B@ is the
# number of calls per statement, so (g % @B@) is distinct within one.
txn() {
	local name=$1 n=$2 query=$3 per=$batch i nstmt q
	workloads+=("$name")
	[ $((n / 10)) -lt "$per" ] && per=$((n / 10))
	nstmt=$((n / per))
	made[$name]=$((nstmt * per))
	echo "SELECT 'ckpt|$name|start|' || memstat();" >>"$script"
	for i in $(seq 0 $((nstmt - 1))); do
		q=${query//@LO@/$((i * per + 1))}
		q=${q//@HI@/$((i * per + per))}
		q=${q//@B@/$per}
		echo "SELECT 'txn|$name|' || count(*) FILTER (WHERE ok) FROM ($q OFFSET 0) AS s;" >>"$script"
		[ $((i + 1)) -eq $((nstmt / 10)) ] &&
			echo "SELECT 'ckpt|$name|10%|' || memstat();" >>"$script"
	done
	echo "SELECT 'ckpt|$name|end|' || memstat();" >>"$script"
}

# What the read paths read.  'full:*' have used their limit of 10;
# 'done:*' and 'seen:*' were claimed; 'held:*' are leased.
cat >>"$script" <<'EOF'
SELECT 'pid|' || pg_backend_pid();
SELECT count(entitlock.record_usage('full:' || g, 'f', 10)) FROM generate_series(0, 63) AS g;
SELECT count(entitlock.idempotency_complete('done:' || g, '{"id": 1}')::text)
  FROM generate_series(0, 999) AS g, LATERAL entitlock.idempotency_begin('done:' || g) AS b;
SELECT count(entitlock.first_time('seen:' || g)) FROM generate_series(0, 999) AS g;
SELECT count(*) FROM generate_series(0, 63) AS g, LATERAL entitlock.lease_acquire('held:' || g, '1 hour') AS l;
EOF

stmt "key(text)" "$calls" \
	"SELECT g, entitlock.key('name:' || g) IS NOT NULL AS ok FROM generate_series(1, @N@) AS g"
stmt "key(text,text)" "$calls" \
	"SELECT g, entitlock.key('realm', 'entity:' || g) IS NOT NULL AS ok FROM generate_series(1, @N@) AS g"
stmt "lock" "$half" \
	"SELECT g, entitlock.lock('lock:' || g % 64) IS NOT NULL AS ok FROM generate_series(1, @N@) AS g"
txn "lock, distinct names" "$half" \
	"SELECT g, entitlock.lock('lock:' || g) IS NOT NULL AS ok FROM generate_series(@LO@, @HI@) AS g"
stmt "try_lock" "$calls" \
	"SELECT g, entitlock.try_lock('try:' || g % 64) AS ok FROM generate_series(1, @N@) AS g"
stmt "lock_shared" "$calls" \
	"SELECT g, entitlock.lock_shared('shared:' || g % 64) IS NOT NULL AS ok FROM generate_series(1, @N@) AS g"
stmt "try_lock_shared" "$calls" \
	"SELECT g, entitlock.try_lock_shared('shared:' || g % 64) AS ok FROM generate_series(1, @N@) AS g"
stmt "lock(name, timeout)" "$calls" \
	"SELECT g, entitlock.lock('timed:' || g % 64, '1 s') AS ok FROM generate_series(1, @N@) AS g"
txn "lock(name, timeout) timing out" "$slow" \
	"SELECT g, NOT entitlock.lock('memory:contended', '1 ms') AS ok FROM generate_series(@LO@, @HI@) AS g"
stmt "lock_entity" "$calls" \
	"SELECT g, entitlock.lock_entity('realm', 'entity:' || g % 64) IS NOT NULL AS ok FROM generate_series(1, @N@) AS g"
stmt "lock_all" "$calls" \
	"SELECT g, entitlock.lock_all(ARRAY['all:' || g % 64, NULL, 'all:' || g % 7]) IS NOT NULL AS ok FROM generate_series(1, @N@) AS g"
stmt "holders" "$slow" \
	"SELECT g, h.pid IS NOT NULL AS ok FROM generate_series(1, @N@) AS g LEFT JOIN LATERAL entitlock.holders('memory:contended') AS h ON true"
stmt "record_usage_if_under_limit, at the limit" "$half" \
	"SELECT g, NOT u.allowed AS ok FROM generate_series(1, @N@) AS g, LATERAL entitlock.record_usage_if_under_limit('full:' || g % 64, 'f', 1, 10) AS u"
txn "record_usage_if_under_limit, recording" "$half" \
	"SELECT g, u.allowed AS ok FROM generate_series(@LO@, @HI@) AS g, LATERAL entitlock.record_usage_if_under_limit('subject:' || g % @B@, 'f', 1, 1000000000, 'day') AS u"
txn "record_usage" "$half" \
	"SELECT g, entitlock.record_usage('subject:' || g % @B@, 'g', 1) > 0 AS ok FROM generate_series(@LO@, @HI@) AS g"
txn "record_usage, idempotency key" "$half" \
	"SELECT g, entitlock.record_usage('subject:' || g % @B@, 'h', 1, 'month', 'key:' || g) > 0 AS ok FROM generate_series(@LO@, @HI@) AS g"
stmt "usage" "$calls" \
	"SELECT g, entitlock.usage('subject:' || g % 1000, 'g') >= 0 AS ok FROM generate_series(1, @N@) AS g"
txn "idempotency_begin + complete, new" "$half" \
	"SELECT g, b.status = 'new' AND entitlock.idempotency_complete('new:' || g, '{\"id\": 2}') IS NOT NULL AS ok FROM generate_series(@LO@, @HI@) AS g, LATERAL entitlock.idempotency_begin('new:' || g, 'fp') AS b"
stmt "idempotency_begin, replay" "$half" \
	"SELECT g, b.status = 'replay' AS ok FROM generate_series(1, @N@) AS g, LATERAL entitlock.idempotency_begin('done:' || g % 1000) AS b"
txn "first_time, new" "$half" \
	"SELECT g, entitlock.first_time('once:' || g) AS ok FROM generate_series(@LO@, @HI@) AS g"
stmt "first_time, duplicate" "$half" \
	"SELECT g, NOT entitlock.first_time('seen:' || g % 1000) AS ok FROM generate_series(1, @N@) AS g"
txn "lease_acquire + renew + release" "$half" \
	"SELECT g, entitlock.lease_renew('lease:' || g % @B@, l.token, '1 hour') AND entitlock.lease_release('lease:' || g % @B@, l.token) AS ok FROM generate_series(@LO@, @HI@) AS g, LATERAL entitlock.lease_acquire('lease:' || g % @B@, '1 minute', 'worker') AS l"
stmt "lease_acquire, held" "$half" \
	"SELECT g, l.token IS NULL AS ok FROM generate_series(1, @N@) AS g LEFT JOIN LATERAL entitlock.lease_acquire('held:' || g % 64, '1 hour') AS l ON true"
stmt "lease_renew + release, not the holder" "$half" \
	"SELECT g, NOT entitlock.lease_renew('held:' || g % 64, '00000000-0000-0000-0000-000000000000', '1 hour') AND NOT entitlock.lease_release('held:' || g % 64, '00000000-0000-0000-0000-000000000000') AS ok FROM generate_series(1, @N@) AS g"
echo "SELECT 'pid|' || pg_backend_pid(); SELECT 'peak|' || memstat();" >>"$script"
real=("${workloads[@]}")

# The controls: about 10 kB (a setting) and 50 kB (a prepared statement)
# a call, far above the limit over the calls after the first tenth.
txn "control: settings (leaks on purpose)" 2000 \
	"SELECT g, set_config('memory_check.leak_' || g, repeat('x', 10240), false) IS NOT NULL AS ok FROM generate_series(@LO@, @HI@) AS g"
stmt "control: prepared statements (leaks on purpose)" 500 \
	"SELECT g, leak_prepared(g) AS ok FROM generate_series(1, @N@) AS g"

log "$calls calls of each function in one backend ($(grep -c . "$script") statements)"
started=$SECONDS
q -f "$script" >"$tmp/out" || { tail -5 "$tmp/out" >&2; exit 1; }
log "ran in $((SECONDS - started)) s"

pids=$(sed -n 's/^pid|//p' "$tmp/out" | sort -u)
expect "all calls ran in one backend" "$(wc -l <<<"$pids")" 1

# Fields of a memstat() line: RssAnon RssShmem VmRSS VmHWM contexts time.
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
row() { printf '%-48s %8s %6s  %-22s %7s  %s\n' "$@" >&2; }
row workload calls secs "RssAnon start/10%/end" VmHWM "contexts 10%/end (MB)"
flagged=()
for w in "${workloads[@]}"; do
	read -r a0 _ _ _ _ t0 < <(grep -F "ckpt|$w|start|" "$tmp/out" | cut -d'|' -f4)
	line=$(grep -F "stmt|$w|" "$tmp/out")
	if [ -n "$line" ]; then
		points=$(cut -d'|' -f4 <<<"$line")
		first=${points%%;*}
		last=${points##*;}
	else
		first=$(grep -F "ckpt|$w|10%|" "$tmp/out" | cut -d'|' -f4)
		last=$(grep -F "ckpt|$w|end|" "$tmp/out" | cut -d'|' -f4)
	fi
	read -r a1 _ _ _ c1 _ <<<"$first"
	read -r a2 _ _ h2 c2 t2 <<<"$last"
	row "$w" "${made[$w]}" "$(awk -v a="$t0" -v b="$t2" 'BEGIN { printf "%.1f", b - a }')" \
		"$(mb "$a0") / $(mb "$a1") / $(mb "$a2")" "$(mb "$h2")" "$(mb "$c1") / $(mb "$c2")"
	if [ $((a2 - a1)) -ge "$limit_kb" ] || [ $((c2 - c1)) -ge "$limit_kb" ]; then
		flagged+=("$w")
	fi
	# Every call must have taken the path it was meant to.
	ok=$(grep -F -e "stmt|$w|" -e "txn|$w|" "$tmp/out" | cut -d'|' -f3 |
		awk '{ s += $1 } END { print s + 0 }')
	check '[ "$ok" -eq "${made[$w]}" ]' "$w: $ok of ${made[$w]} calls answered as expected"
done

read -r _ _ _ peak _ < <(sed -n 's/^peak|//p' "$tmp/out")
log "peak RSS of the backend (VmHWM, shared buffers included) before the controls: $(mb "$peak") MB"

for w in "${real[@]}"; do
	check '! printf "%s\n" "${flagged[@]}" | grep -qxF "$w"' \
		"$w: memory grew by $limit_kb kB or more after the first tenth of the calls"
done
for w in "control: settings (leaks on purpose)" "control: prepared statements (leaks on purpose)"; do
	check 'printf "%s\n" "${flagged[@]}" | grep -qxF "$w"' \
		"$w: not flagged, so the check cannot see a leak"
done
[ "$check_failed" -eq 0 ] && log "memory stayed flat in every workload; both controls were flagged"
exit "$check_failed"
