#!/usr/bin/env bash
#
# A whole database that uses entitlock, through pg_dump and every usual way
# of restoring it.
#
# entitlock's state lives in extension tables and a sequence that pg_dump
# saves only because they are registered with pg_extension_config_dump; a
# restore recreates them with CREATE EXTENSION and then loads the rows.
# This check restores all of it together, in a database whose own objects
# depend on entitlock, because that is where restores go wrong (what
# survives a restart and a crash is test/tap/004_durability.pl):
#
# - State: usage in several meters and periods, with usage idempotency keys
#   and a conditional call refused at its limit; idempotency claims
#   (fingerprinted, not, never completed, expired, a 1 MB key); first_time
#   keys; held leases (one with a 1 MB name), an expired one, and released
#   ones so that the fencing sequence is past every live number; and, while
#   the dumps run, a claim and a lease acquisition still in flight.
# - User objects that need the extension to exist before them: a domain, a
#   CHECK constraint, generated and DEFAULT columns, an expression index, a
#   materialized view, a view over entitlock.leases, a BEGIN ATOMIC function
#   (which records a dependency on an entitlock function), a trigger that
#   records usage (it must not fire again while the rows are restored), in
#   a schema "aaa" that sorts before "entitlock", and the GRANTs README
#   tells an application role to have.
# - Restores: custom format with pg_restore, directory format with
#   pg_restore -j 2 (parallel restore reorders the work), plain SQL through
#   psql -v ON_ERROR_STOP=1, pg_restore --single-transaction, and
#   pg_restore --clean --if-exists into a database that already has the
#   extension.  Each must succeed with nothing on stderr, and the restored
#   database must hold the same rows as the source (md5 of every entitlock
#   table, the sequence, and the user tables and views) and answer the same
#   through the functions: usage, replayed responses and usage decisions,
#   fingerprint checks, first_time, old lease tokens, fencing numbers above
#   every number handed out before the dump, the application role's grants
#   (and its 42501 on everything it was not granted), and working user
#   objects.
# - Partial dumps: pg_dump -e entitlock (the extension and its state only)
#   and pg_dump -a -n entitlock (the state only, into a database that
#   already has the extension) restore the same entitlock state.
#
# Controls show the comparisons can fail: a dump without the extension's
# table data must not compare equal, nor replay or fence correctly; a dump
# without the sequence's position must hand out low fencing numbers and
# refuse (55000) to take over a restored lease, until setval() moves it on;
# an older dump restored in place sets fencing numbers back, and setval()
# (what README tells the user to do) repairs it.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

src=entitlock_dr_src
targets="fc dir sql onetx pre ext data nodata noseq"
role=entitlock_dump_restore_app
tmp=$(mktemp -d)
chmod 755 "$tmp"
inflight=
cleanup() {
	[ -n "$inflight" ] && kill "$inflight" 2>/dev/null
	wait 2>/dev/null
	rm -rf "$tmp"
	test_db_drop "$src"
	local t
	for t in $targets; do test_db_drop "entitlock_dr_$t"; done
	psql -X -q -c "DROP ROLE IF EXISTS $role"
}
trap cleanup EXIT

q() { psql -X -q -At -d "$1" -c "$2" 2>&1; }
# The SQLSTATE instead of the message, for the error checks.
qs() { psql -X -q -At -v VERBOSITY=sqlstate -d "$1" -c "$2" 2>&1; }
# As the application role; stops if SET ROLE fails rather than go on as
# the superuser.
app() { psql -X -q -At -v ON_ERROR_STOP=1 -v VERBOSITY=sqlstate -d "$1" -c "SET ROLE $role" -c "$2" 2>&1; }

test_db_create "$src" || exit 1
psql -X -q -c "DO \$\$ BEGIN
	IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') THEN
		CREATE ROLE $role NOLOGIN;
	END IF; END \$\$" || exit 1

# User objects, then the grants README gives an application role.
psql -X -q -v ON_ERROR_STOP=1 -v role="$role" -d "$src" >/dev/null <<'EOF' || exit 1
CREATE SCHEMA aaa;
CREATE DOMAIN aaa.lock_name AS text CHECK (entitlock.key(VALUE) IS NOT NULL);
CREATE TABLE aaa.account (
	name aaa.lock_name PRIMARY KEY,
	lock_key bigint GENERATED ALWAYS AS (entitlock.key('account', name)) STORED,
	plan_key bigint NOT NULL DEFAULT entitlock.key('plan:free'),
	CONSTRAINT account_name_hashes CHECK (entitlock.key(name) <> 0)
);
CREATE INDEX account_name_key_idx ON aaa.account (entitlock.key(name));
INSERT INTO aaa.account (name) VALUES ('acme'), ('globex'), (repeat('x', 5000));
CREATE MATERIALIZED VIEW aaa.account_keys AS
	SELECT name, entitlock.key(name) AS k FROM aaa.account;

CREATE TABLE public.job (
	id int PRIMARY KEY,
	name text NOT NULL,
	name_key bigint GENERATED ALWAYS AS (entitlock.key(name)) STORED
);
CREATE FUNCTION public.count_job() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM entitlock.record_usage('jobs', 'created', 1);
	RETURN NEW;
END
$$;
CREATE TRIGGER job_counted AFTER INSERT ON public.job
	FOR EACH ROW EXECUTE FUNCTION public.count_job();
INSERT INTO public.job (id, name) VALUES (1, 'import'), (2, 'export');

CREATE FUNCTION public.charge(subject text, n bigint) RETURNS boolean
LANGUAGE sql
BEGIN ATOMIC
	SELECT allowed
	  FROM entitlock.record_usage_if_under_limit(subject, 'api_calls', n, 100);
END;
CREATE FUNCTION public.calls_left(subject text) RETURNS bigint
LANGUAGE sql STABLE AS $$ SELECT 100 - entitlock.usage(subject, 'api_calls') $$;
CREATE VIEW public.lease_board AS
	SELECT l.name, l.holder, l.fencing,
		   entitlock.usage('ws:1', 'api_calls') AS api_calls
	  FROM entitlock.leases AS l;

GRANT USAGE ON SCHEMA entitlock TO :role;
GRANT EXECUTE ON FUNCTION
	entitlock.record_usage_if_under_limit(text, text, bigint, bigint, text, text),
	entitlock.usage(text, text, text),
	entitlock.idempotency_begin(text, text, interval, interval),
	entitlock.idempotency_complete(text, jsonb),
	entitlock.first_time(text, interval),
	entitlock.lease_acquire(text, interval, text, interval),
	entitlock.lease_renew(text, uuid, interval),
	entitlock.lease_release(text, uuid)
  TO :role;
GRANT SELECT ON entitlock.leases TO :role;
GRANT USAGE ON SCHEMA aaa TO :role;
GRANT SELECT ON aaa.account, public.lease_board TO :role;
EOF

# Usage and idempotency keys.
psql -X -q -v ON_ERROR_STOP=1 -d "$src" >/dev/null <<'EOF' || exit 1
SELECT entitlock.record_usage('ws:1', 'api_calls', 40);
SELECT entitlock.record_usage('ws:1', 'api_calls', 7, 'day');
SELECT entitlock.record_usage('ws:1', 'api_calls', 9, 'month', 'req-1');
SELECT entitlock.record_usage('ws:1', 'api_calls', -2, 'month', 'refund-1');
SELECT * FROM entitlock.record_usage_if_under_limit('ws:1', 'seats', 3, 3, 'lifetime', 'seat-1');
SELECT * FROM entitlock.record_usage_if_under_limit('ws:1', 'seats', 1, 3, 'lifetime', 'seat-2');
SELECT entitlock.record_usage('ws:2', 'storage', n, p)
  FROM unnest(ARRAY['minute', 'hour', 'day', 'week', 'month', 'year', 'lifetime'])
	   WITH ORDINALITY AS u(p, n);

BEGIN;
SELECT status FROM entitlock.idempotency_begin('order-1', 'fp-1');
SELECT entitlock.idempotency_complete('order-1', '{"order": 1, "total": "9.99"}');
COMMIT;
BEGIN;
SELECT status FROM entitlock.idempotency_begin('order-2');
SELECT entitlock.idempotency_complete('order-2', '{"order": 2}');
COMMIT;
SELECT status FROM entitlock.idempotency_begin('order-3', 'fp-3');
SELECT status FROM entitlock.idempotency_begin('old-1', 'fp-old', '1 millisecond');
BEGIN;
SELECT status FROM entitlock.idempotency_begin(repeat('k', 1048576), 'fp-big');
SELECT entitlock.idempotency_complete(repeat('k', 1048576), '"big"');
COMMIT;
SELECT entitlock.first_time('job-1');
SELECT entitlock.first_time('job-2', '7 days');
EOF

# Leases: held, expired, released.
token_a=$(q "$src" "SELECT token FROM entitlock.lease_acquire('report', '1 hour', 'worker-1')")
token_big=$(q "$src" "SELECT token FROM entitlock.lease_acquire(repeat('n', 1048576), '1 hour', 'worker-big')")
token_stale=$(q "$src" "SELECT token FROM entitlock.lease_acquire('stale', '1 millisecond', 'worker-stale')")
q "$src" "SELECT entitlock.lease_release('done', token) FROM entitlock.lease_acquire('done', '1 hour')" >/dev/null
spent=$(q "$src" "SELECT max(fencing) FROM generate_series(1, 20) AS g,
	LATERAL entitlock.lease_acquire('tmp-' || g, '1 minute') AS a,
	LATERAL entitlock.lease_release('tmp-' || g, a.token) AS r")
live=$(q "$src" "SELECT max(fencing) FROM entitlock.leases")
[[ $token_a =~ ^[0-9a-f-]{36}$ && $token_big =~ ^[0-9a-f-]{36}$ &&
	$token_stale =~ ^[0-9a-f-]{36}$ && $spent =~ ^[0-9]+$ ]] ||
	die "source setup failed: '$token_a' '$token_big' '$token_stale' '$spent'"

# In flight while the dumps run: a claim and an acquisition, uncommitted.
# Neither is in a dump, but the acquisition's fencing number was handed
# out and must never be handed out again.
PGAPPNAME=entitlock_dr_inflight psql -X -q -At -d "$src" -c "BEGIN" \
	-c "SELECT status FROM entitlock.idempotency_begin('in-flight')" \
	-c "SELECT fencing FROM entitlock.lease_acquire('in-flight', '1 hour')" \
	-c "SELECT pg_sleep(600)" >"$tmp/inflight.out" 2>&1 &
inflight=$!
for _ in $(seq 200); do
	[ "$(wc -l <"$tmp/inflight.out")" -ge 2 ] && break
	sleep 0.05
done
inflight_fencing=$(sed -n 2p "$tmp/inflight.out")
[[ $inflight_fencing =~ ^[0-9]+$ ]] || die "in-flight acquisition failed: $(cat "$tmp/inflight.out")"
[ "$inflight_fencing" -gt "$spent" ] && spent=$inflight_fencing
log "before the dumps: held leases' highest fencing $live; $spent numbers handed out"

# The dumps, all of one state.
dump_err=$tmp/dump.err
pg_dump -Fc -d "$src" -f "$tmp/all.dump" 2>>"$dump_err" &&
	pg_dump -Fd -j 2 -d "$src" -f "$tmp/all.dir" 2>>"$dump_err" &&
	pg_dump -Fp -d "$src" -f "$tmp/all.sql" 2>>"$dump_err" &&
	pg_dump -Fc -e entitlock -d "$src" -f "$tmp/ext.dump" 2>>"$dump_err" &&
	pg_dump -Fc -a -n entitlock -d "$src" -f "$tmp/data.dump" 2>>"$dump_err" &&
	pg_dump -Fc --exclude-table-data 'entitlock.*' -d "$src" -f "$tmp/nodata.dump" 2>>"$dump_err" &&
	pg_dump -Fc --exclude-table-data entitlock.lease_fencing -d "$src" -f "$tmp/noseq.dump" 2>>"$dump_err" ||
	die "pg_dump failed: $(cat "$dump_err")"
expect "pg_dump writes nothing on stderr" "$(cat "$dump_err")" ""
q "$src" "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'entitlock_dr_inflight'" >/dev/null
wait "$inflight" 2>/dev/null
inflight=

# What a database holds, for comparing source and copy.  Rows are compared
# whole (text of each row, sorted), so a lost column, row or sequence
# position shows.
digest_entitlock() {
	q "$1" "SELECT n || ' ' || d FROM (
		SELECT 'usage_counter' AS n, count(*) || ' ' || md5(coalesce(string_agg(t::text, E'\n' ORDER BY t::text), '')) AS d FROM entitlock.usage_counter AS t
		UNION ALL
		SELECT 'usage_idempotency', count(*) || ' ' || md5(coalesce(string_agg(t::text, E'\n' ORDER BY t::text), '')) FROM entitlock.usage_idempotency AS t
		UNION ALL
		SELECT 'idempotency_key', count(*) || ' ' || md5(coalesce(string_agg(t::text, E'\n' ORDER BY t::text), '')) FROM entitlock.idempotency_key AS t
		UNION ALL
		SELECT 'lease_record', count(*) || ' ' || md5(coalesce(string_agg(t::text, E'\n' ORDER BY t::text), '')) FROM entitlock.lease_record AS t
		UNION ALL
		SELECT 'lease_fencing', last_value || ' ' || is_called FROM entitlock.lease_fencing
	) AS s ORDER BY n"
}
digest_user() {
	q "$1" "SELECT n || ' ' || d FROM (
		SELECT 'aaa.account' AS n, count(*) || ' ' || md5(string_agg(t::text, E'\n' ORDER BY t::text)) AS d FROM aaa.account AS t
		UNION ALL
		SELECT 'aaa.account_keys', count(*) || ' ' || md5(string_agg(t::text, E'\n' ORDER BY t::text)) FROM aaa.account_keys AS t
		UNION ALL
		SELECT 'public.job', count(*) || ' ' || md5(string_agg(t::text, E'\n' ORDER BY t::text)) FROM public.job AS t
		UNION ALL
		SELECT 'public.lease_board', string_agg(length(name) || ':' || coalesce(holder, '-') || ':' || fencing || ':' || api_calls, ',' ORDER BY length(name), fencing) FROM public.lease_board
	) AS s ORDER BY n"
}
# Every meter's usage, read with entitlock.usage().
meters() {
	q "$1" "SELECT string_agg(s || '/' || f || '/' || p || '=' || entitlock.usage(s, f, p), ' ' ORDER BY s, f, p)
		FROM (VALUES ('ws:1', 'api_calls', 'lifetime'), ('ws:1', 'api_calls', 'day'),
					 ('ws:1', 'api_calls', 'month'), ('ws:1', 'seats', 'lifetime'),
					 ('ws:2', 'storage', 'minute'), ('ws:2', 'storage', 'hour'),
					 ('ws:2', 'storage', 'day'), ('ws:2', 'storage', 'week'),
					 ('ws:2', 'storage', 'month'), ('ws:2', 'storage', 'year'),
					 ('ws:2', 'storage', 'lifetime'), ('jobs', 'created', 'lifetime')) AS m(s, f, p)"
}
src_entitlock=$(digest_entitlock "$src")
src_user=$(digest_user "$src")

# A restored database: the same state, and it behaves as the source would.
# Run right after the restore (the checks change the copy).  Prints each
# check for the first database, then only failures and a count.
verified=
vexpect() {
	checks=$((checks + 1))
	[ "$2" = "$3" ] || failures=$((failures + 1))
	[ -n "$verified" ] && [ "$2" = "$3" ] && return
	expect "$@"
}
verify() {
	local db=$1 t=$2 got want
	checks=0 failures=0
	vexpect "$t: entitlock's tables and sequence equal the source's" "$(digest_entitlock "$db")" "$src_entitlock"
	vexpect "$t: user tables, generated columns and views equal the source's" "$(digest_user "$db")" "$src_user"
	# Meters in short periods read 0 in both once their period ends; read
	# again if a period ended between the two reads.
	got=$(meters "$db") want=$(meters "$src")
	[ "$got" = "$want" ] || { got=$(meters "$db") want=$(meters "$src"); }
	vexpect "$t: usage() of every meter equals the source's" "$got" "$want"
	vexpect "$t: usage values" \
		"$(q "$db" "SELECT entitlock.usage('ws:1', 'api_calls') || ' ' || entitlock.usage('ws:1', 'seats') || ' ' || entitlock.usage('jobs', 'created')")" \
		"40 3 2"

	# Usage idempotency keys replay their first outcome.
	want=$(q "$db" "SELECT entitlock.usage('ws:1', 'api_calls', 'month')")
	vexpect "$t: a usage key replays, recording nothing" \
		"$(q "$db" "SELECT entitlock.record_usage('ws:1', 'api_calls', 9, 'month', 'req-1')") $(q "$db" "SELECT entitlock.usage('ws:1', 'api_calls', 'month')")" \
		"9 $want"
	vexpect "$t: a refusal at the limit replays as a refusal under a higher limit" \
		"$(q "$db" "SELECT allowed || ' ' || used || ' ' || remaining FROM entitlock.record_usage_if_under_limit('ws:1', 'seats', 1, 5, 'lifetime', 'seat-2')")" \
		"false 3 2"
	vexpect "$t: the meter is still at its limit" \
		"$(q "$db" "SELECT allowed || ' ' || used || ' ' || remaining FROM entitlock.record_usage_if_under_limit('ws:1', 'seats', 1, 3)")" \
		"false 3 0"

	# Idempotency claims.
	vexpect "$t: a completed claim replays its response" \
		"$(q "$db" "SELECT status || ' ' || response::text FROM entitlock.idempotency_begin('order-1', 'fp-1')")" \
		'replay {"order": 1, "total": "9.99"}'
	vexpect "$t: a different fingerprint is refused" \
		"$(qs "$db" "SELECT status FROM entitlock.idempotency_begin('order-1', 'fp-other')")" \
		"ERROR:  22023"
	vexpect "$t: a claim without fingerprint replays" \
		"$(q "$db" "SELECT status || ' ' || response::text FROM entitlock.idempotency_begin('order-2', 'any')")" \
		'replay {"order": 2}'
	vexpect "$t: a claim never completed replays with no response" \
		"$(q "$db" "SELECT status || ' ' || coalesce(response::text, 'none') FROM entitlock.idempotency_begin('order-3', 'fp-3')")" \
		"replay none"
	vexpect "$t: the 1 MB key replays" \
		"$(q "$db" "SELECT status || ' ' || response::text FROM entitlock.idempotency_begin(repeat('k', 1048576), 'fp-big')")" \
		'replay "big"'
	vexpect "$t: first_time is false for restored keys" \
		"$(q "$db" "SELECT entitlock.first_time('job-1') || ' ' || entitlock.first_time('job-2')")" \
		"false false"
	vexpect "$t: an expired key is absent, and purged" \
		"$(q "$db" "SELECT entitlock.purge_expired()")$(q "$db" "SELECT status FROM entitlock.idempotency_begin('old-1', 'fp-new')")" \
		"1new"
	vexpect "$t: the claim in flight during the dump is not restored" \
		"$(q "$db" "SELECT status FROM entitlock.idempotency_begin('in-flight')")" new

	# Leases and fencing.
	vexpect "$t: a restored lease is still held" \
		"$(q "$db" "SELECT count(*) FROM entitlock.lease_acquire('report', '1 minute')")" 0
	vexpect "$t: its old token renews it" \
		"$(q "$db" "SELECT entitlock.lease_renew('report', '$token_a', '2 hours')")" t
	vexpect "$t: a stranger's token does not release it" \
		"$(q "$db" "SELECT entitlock.lease_release('report', gen_random_uuid())")" f
	vexpect "$t: the 1 MB name's old token releases it" \
		"$(q "$db" "SELECT entitlock.lease_release(repeat('n', 1048576), '$token_big')")" t
	vexpect "$t: a new name gets a fencing number above every one handed out" \
		"$(q "$db" "SELECT fencing > $spent FROM entitlock.lease_acquire('fresh', '1 minute')")" t
	vexpect "$t: so does the lease in flight during the dump" \
		"$(q "$db" "SELECT fencing > $spent FROM entitlock.lease_acquire('in-flight', '1 minute')")" t
	vexpect "$t: the lease expired in the dump is taken over above them, and its old token is dead" \
		"$(q "$db" "SELECT fencing > $spent FROM entitlock.lease_acquire('stale', '1 minute')") $(q "$db" "SELECT entitlock.lease_renew('stale', '$token_stale', '1 minute')")" \
		"t f"
	vexpect "$t: the next holder of a restored lease gets a higher number" \
		"$(q "$db" "SELECT entitlock.lease_release('report', '$token_a')") $(q "$db" "SELECT fencing > $spent FROM entitlock.lease_acquire('report', '1 minute')")" \
		"t t"

	# The application role keeps what it was granted, and only that.
	got=
	for sql in "SELECT entitlock.usage('ws:1', 'api_calls')" \
		"SELECT count(*) FROM entitlock.leases WHERE name = 'report'" \
		"SELECT count(*) FROM public.lease_board WHERE name = 'report'" \
		"SELECT count(*) FROM entitlock.lease_acquire('app-lease', '1 minute')" \
		"SELECT status FROM entitlock.idempotency_begin('app-key')" \
		"SELECT public.charge('ws:3', 1)" \
		"SELECT public.calls_left('ws:3')"; do
		got+="$(app "$db" "$sql" | tr '\n' ' ')"
	done
	vexpect "$t: the role calls what it was granted" "$got" "40 1 1 1 new t 99 "
	got=
	for sql in "SELECT entitlock.record_usage('ws:1', 'api_calls', 1)" \
		"SELECT entitlock.purge_expired()" \
		"SELECT entitlock.prune_usage(now())" \
		"SELECT count(*) FROM entitlock.lease_record" \
		"SELECT count(*) FROM entitlock.idempotency_key" \
		"INSERT INTO entitlock.usage_counter VALUES ('a', 'b', 'lifetime', '-infinity', NULL, 1)" \
		"DELETE FROM entitlock.usage_idempotency" \
		"SELECT nextval('entitlock.lease_fencing')" \
		"INSERT INTO public.job (id, name) VALUES (9, 'x')"; do
		got+="$(app "$db" "$sql" | tr '\n' ' ')"
	done
	vexpect "$t: the role gets 42501 for everything it was not granted" "$got" \
		"$(printf 'ERROR:  42501 %.0s' 1 2 3 4 5 6 7 8 9)"

	# User objects work on.
	vexpect "$t: generated, DEFAULT and CHECK on a new row" \
		"$(q "$db" "INSERT INTO aaa.account (name) VALUES ('initech') RETURNING lock_key = entitlock.key('account', 'initech') AND plan_key = entitlock.key('plan:free')") $(qs "$db" "INSERT INTO aaa.account (name) VALUES ('')")" \
		"t ERROR:  22023"
	vexpect "$t: the expression index is valid and used" \
		"$(q "$db" "SELECT indisvalid FROM pg_index WHERE indexrelid = 'aaa.account_name_key_idx'::regclass")$(psql -X -q -At -d "$db" -c "SET enable_seqscan = off" -c "EXPLAIN (COSTS OFF) SELECT name FROM aaa.account WHERE entitlock.key(name) = entitlock.key('acme')" | grep -c account_name_key_idx)" \
		"t1"
	vexpect "$t: the trigger fires for new rows only" \
		"$(q "$db" "INSERT INTO public.job (id, name) VALUES (3, 'sync')")$(q "$db" "SELECT entitlock.usage('jobs', 'created')")" \
		3
	[ -n "$verified" ] && [ "$failures" = 0 ] && log "ok: $t: all $checks checks"
	verified=1
}

restore_into() {
	local t=$1 db=entitlock_dr_$1
	shift
	test_db_drop "$db"
	psql -X -q -c "CREATE DATABASE $db" || exit 1
	"$@" -d "$db" 2>"$tmp/$t.err" >"$tmp/$t.out"
	expect "$t: the restore succeeds" "$?" 0
	expect "$t: the restore writes nothing on stderr" "$(head -c 2000 "$tmp/$t.err")" ""
}

started=$SECONDS
restore_into fc pg_restore "$tmp/all.dump"
verify entitlock_dr_fc "custom format"
restore_into dir pg_restore -j 2 "$tmp/all.dir"
verify entitlock_dr_dir "directory format, pg_restore -j 2"
restore_into sql psql -X -q -v ON_ERROR_STOP=1 -f "$tmp/all.sql"
verify entitlock_dr_sql "plain SQL through psql"
restore_into onetx pg_restore --single-transaction "$tmp/all.dump"
verify entitlock_dr_onetx "pg_restore --single-transaction"

# A target that already has the extension (created by hand, or inherited
# from template1).  pg_dump writes CREATE EXTENSION IF NOT EXISTS, but
# also CREATE SCHEMA entitlock (the schema CREATE EXTENSION made is not a
# member of the extension), so a plain pg_restore reports that one error
# and restores the rest.  --clean --if-exists drops both first: no error.
test_db_create entitlock_dr_pre || exit 1
pg_restore -d entitlock_dr_pre "$tmp/all.dump" 2>"$tmp/pre-plain.err"
log "into a database that has the extension, plain pg_restore exits $? with: $(grep -E '^pg_restore: (error|warning)' "$tmp/pre-plain.err" | tr '\n' ' ')"
test_db_create entitlock_dr_pre || exit 1
pg_restore --clean --if-exists -d entitlock_dr_pre "$tmp/all.dump" 2>"$tmp/pre.err"
expect "existing extension: pg_restore --clean --if-exists succeeds" "$?" 0
expect "existing extension: nothing on stderr" "$(head -c 2000 "$tmp/pre.err")" ""
verify entitlock_dr_pre "pg_restore --clean --if-exists over an existing extension"
log "full restores and checks: $((SECONDS - started)) s"

# entitlock's state alone.  pg_dump -n entitlock leaves out CREATE
# EXTENSION (extensions are dumped only with the whole database or -e) but
# keeps CREATE SCHEMA and the rows: it restores into nothing.  -e entitlock
# dumps the extension with its rows; -a -n entitlock the rows alone, for a
# database that already has the extension.
restore_into ext pg_restore "$tmp/ext.dump"
expect "pg_dump -e entitlock: entitlock's state restored" "$(digest_entitlock entitlock_dr_ext)" "$src_entitlock"
test_db_create entitlock_dr_data || exit 1
pg_restore -d entitlock_dr_data "$tmp/data.dump" 2>"$tmp/data.err"
expect "pg_dump -a -n entitlock into a database with the extension: succeeds" "$?:$(head -c 2000 "$tmp/data.err")" "0:"
expect "pg_dump -a -n entitlock: entitlock's state restored" "$(digest_entitlock entitlock_dr_data)" "$src_entitlock"
expect "pg_dump -a -n entitlock: a restored lease's old token renews it" \
	"$(q entitlock_dr_data "SELECT entitlock.lease_renew('report', '$token_a', '1 hour')")" t

# Control: without the extension's table data.  The comparisons above
# must see it.
restore_into nodata pg_restore "$tmp/nodata.dump"
expect "control: a dump without entitlock's data compares unequal" \
	"$([ "$(digest_entitlock entitlock_dr_nodata)" != "$src_entitlock" ] && echo unequal)" unequal
expect "control: without entitlock's data, no replay" \
	"$(q entitlock_dr_nodata "SELECT status FROM entitlock.idempotency_begin('order-1', 'fp-1')")" new
expect "control: without entitlock's data, fencing numbers start over" \
	"$(q entitlock_dr_nodata "SELECT fencing > $spent FROM entitlock.lease_acquire('fresh', '1 minute')")" f

# Control: the leases without the sequence's position.  New names get
# numbers already handed out; taking over a restored lease refuses
# (55000) instead; setval() as README says repairs both.
restore_into noseq pg_restore "$tmp/noseq.dump"
expect "control: only the sequence's position compares unequal" \
	"$(diff <(digest_entitlock entitlock_dr_noseq) <(echo "$src_entitlock") | grep -c '^[<>]')$(diff <(digest_entitlock entitlock_dr_noseq) <(echo "$src_entitlock") | grep -c '^[<>] lease_fencing')" \
	22
expect "control: without the sequence's position, numbers are handed out again" \
	"$(q entitlock_dr_noseq "SELECT fencing <= $spent FROM entitlock.lease_acquire('fresh', '1 minute')")" t
expect "control: taking over a restored lease refuses" \
	"$(qs entitlock_dr_noseq "SELECT fencing FROM entitlock.lease_acquire('stale', '1 minute')")" "ERROR:  55000"
q entitlock_dr_noseq "SELECT setval('entitlock.lease_fencing', $spent + 1000)" >/dev/null
expect "after setval(), fencing numbers are above every one handed out" \
	"$(q entitlock_dr_noseq "SELECT fencing > $spent FROM entitlock.lease_acquire('stale', '1 minute')")" t

# An older dump restored in place: numbers handed out since the dump are
# handed out again, until setval() moves the sequence past them.
later=$(q "$src" "SELECT max(fencing) FROM generate_series(1, 5) AS g,
	LATERAL entitlock.lease_acquire('later-' || g, '1 minute') AS a")
pg_restore --clean --if-exists -d "$src" "$tmp/all.dump" 2>"$tmp/inplace.err"
expect "older dump restored in place: succeeds" "$?:$(head -c 2000 "$tmp/inplace.err")" "0:"
expect "older dump restored in place: fencing numbers go back" \
	"$(q "$src" "SELECT fencing <= $later FROM entitlock.lease_acquire('later-1', '1 minute')")" t
q "$src" "SELECT setval('entitlock.lease_fencing', $later + 1000)" >/dev/null
expect "after setval(), above every number handed out" \
	"$(q "$src" "SELECT fencing > $later FROM entitlock.lease_acquire('later-2', '1 minute')")" t

exit "$check_failed"
