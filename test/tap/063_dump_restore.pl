# test/tap/063_dump_restore.pl: a whole database that uses entitlock,
# through pg_dump and every usual way of restoring it.
#
# entitlock's state lives in extension tables and a sequence that pg_dump
# saves only because they are registered with pg_extension_config_dump; a
# restore recreates them with CREATE EXTENSION and then loads the rows.
# This test restores all of it together, in a database whose own objects
# depend on entitlock, because that is where restores go wrong (what
# survives a restart and a crash is 004_durability.pl):
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
#
# Run with: bash test/tap.sh test/tap/063_dump_restore.pl

use strict;
use warnings;

use IPC::Run;
use Time::HiRes qw(usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EntitlockTest;

my $node = new_node('dump_restore');
my $tmp  = PostgreSQL::Test::Utils::tempdir();
my $src  = 'dr_src';
my $role = 'entitlock_dump_restore_app';

# run_cmd(ARGS...): (exit status, stdout, stderr).
sub run_cmd
{
	my ($out, $err) = ('', '');
	IPC::Run::run([@_], '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

# psql's answer, errors included (as the answer: a check that expects a
# value sees the error instead).
sub sq
{
	my ($db, $sql, @extra) = @_;
	my ($out, $err) = ('', '');
	$node->psql($db, $sql, stdout => \$out, stderr => \$err, on_error_stop => 0,
		extra_params => [@extra]);
	$err =~ s/^psql:[^:\n]*:\d+: //mg;
	$err =~ s/\s+$//;
	return $out . ($out ne '' && $err ne '' ? "\n" : '') . $err;
}
# The SQLSTATE instead of the message, for the error checks.
sub qs { return sq($_[0], $_[1], '-v', 'VERBOSITY=sqlstate'); }
# As the application role; stops if SET ROLE fails rather than go on as
# the superuser.
sub app
{
	my ($db, $sql) = @_;
	my ($out, $err) = ('', '');
	$node->psql($db, "SET ROLE $role;\n$sql", stdout => \$out, stderr => \$err,
		on_error_stop => 1, extra_params => [ '-v', 'VERBOSITY=sqlstate' ]);
	$err =~ s/^psql:[^:\n]*:\d+: //mg;
	$err =~ s/\s+$//;
	return $out . $err;
}
sub create_db
{
	my ($db, $ext) = @_;
	$node->safe_psql('postgres', "DROP DATABASE IF EXISTS $db WITH (FORCE)");
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION entitlock') if $ext;
}

create_db($src, 1);
$node->safe_psql('postgres', "CREATE ROLE $role NOLOGIN");

# User objects, then the grants README gives an application role.
$node->safe_psql($src, <<SQL);
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
LANGUAGE plpgsql AS \$\$
BEGIN
	PERFORM entitlock.record_usage('jobs', 'created', 1);
	RETURN NEW;
END
\$\$;
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
LANGUAGE sql STABLE AS \$\$ SELECT 100 - entitlock.usage(subject, 'api_calls') \$\$;
CREATE VIEW public.lease_board AS
	SELECT l.name, l.holder, l.fencing,
		   entitlock.usage('ws:1', 'api_calls') AS api_calls
	  FROM entitlock.leases AS l;

GRANT USAGE ON SCHEMA entitlock TO $role;
GRANT EXECUTE ON FUNCTION
	entitlock.record_usage_if_under_limit(text, text, bigint, bigint, text, text),
	entitlock.usage(text, text, text),
	entitlock.idempotency_begin(text, text, interval, interval),
	entitlock.idempotency_complete(text, jsonb),
	entitlock.first_time(text, interval),
	entitlock.lease_acquire(text, interval, text, interval),
	entitlock.lease_renew(text, uuid, interval),
	entitlock.lease_release(text, uuid)
  TO $role;
GRANT SELECT ON entitlock.leases TO $role;
GRANT USAGE ON SCHEMA aaa TO $role;
GRANT SELECT ON aaa.account, public.lease_board TO $role;
SQL

# Usage and idempotency keys.
$node->safe_psql($src, <<'SQL');
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
SQL

# Leases: held, expired, released.
my $token_a = sq($src, "SELECT token FROM entitlock.lease_acquire('report', '1 hour', 'worker-1')");
my $token_big = sq($src, "SELECT token FROM entitlock.lease_acquire(repeat('n', 1048576), '1 hour', 'worker-big')");
my $token_stale = sq($src, "SELECT token FROM entitlock.lease_acquire('stale', '1 millisecond', 'worker-stale')");
sq($src, "SELECT entitlock.lease_release('done', token) FROM entitlock.lease_acquire('done', '1 hour')");
my $spent = sq($src, "SELECT max(fencing) FROM generate_series(1, 20) AS g,
	LATERAL entitlock.lease_acquire('tmp-' || g, '1 minute') AS a,
	LATERAL entitlock.lease_release('tmp-' || g, a.token) AS r");
my $live = sq($src, 'SELECT max(fencing) FROM entitlock.leases');
ok( $token_a =~ /^[0-9a-f-]{36}$/ && $token_big =~ /^[0-9a-f-]{36}$/
	  && $token_stale =~ /^[0-9a-f-]{36}$/ && $spent =~ /^\d+$/,
	'the source is set up')
  or BAIL_OUT("source setup failed: '$token_a' '$token_big' '$token_stale' '$spent'");

# In flight while the dumps run: a claim and an acquisition, uncommitted.
# Neither is in a dump, but the acquisition's fencing number was handed
# out and must never be handed out again.
my ($if_out, $if_err) = ('', '');
my $inflight = IPC::Run::start(
	[ 'psql', '-X', '-q', '-At', '-d', $node->connstr($src) . ' application_name=entitlock_dr_inflight',
		'-c', 'BEGIN',
		'-c', "SELECT status FROM entitlock.idempotency_begin('in-flight')",
		'-c', "SELECT fencing FROM entitlock.lease_acquire('in-flight', '1 hour')",
		'-c', 'SELECT pg_sleep(600)' ],
	'>', \$if_out, '2>', \$if_err);
for (1 .. 400)
{
	$inflight->pump_nb;
	last if ($if_out =~ tr/\n//) >= 2;
	usleep(50_000);
}
my ($inflight_fencing) = $if_out =~ /^new\n(\d+)\n/;
ok(defined $inflight_fencing, 'an acquisition is in flight') or BAIL_OUT("in-flight acquisition failed: $if_out$if_err");
$spent = $inflight_fencing if $inflight_fencing > $spent;
note("before the dumps: held leases' highest fencing $live; $spent numbers handed out");

# The dumps, all of one state.
my $dump_err = '';
my $srcc = $node->connstr($src);
for my $args (
	[ '-Fc', '-f', "$tmp/all.dump" ],
	[ '-Fd', '-j', '2', '-f', "$tmp/all.dir" ],
	[ '-Fp', '-f', "$tmp/all.sql" ],
	[ '-Fc', '-e', 'entitlock', '-f', "$tmp/ext.dump" ],
	[ '-Fc', '-a', '-n', 'entitlock', '-f', "$tmp/data.dump" ],
	[ '-Fc', '--exclude-table-data', 'entitlock.*', '-f', "$tmp/nodata.dump" ],
	[ '-Fc', '--exclude-table-data', 'entitlock.lease_fencing', '-f', "$tmp/noseq.dump" ])
{
	my ($rc, undef, $err) = run_cmd('pg_dump', @$args, '-d', $srcc);
	BAIL_OUT("pg_dump @$args failed: $err") if $rc;
	$dump_err .= $err;
}
is($dump_err, '', 'pg_dump writes nothing on stderr');
sq($src, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'entitlock_dr_inflight'");
$inflight->finish;

# What a database holds, for comparing source and copy.  Rows are compared
# whole (text of each row, sorted), so a lost column, row or sequence
# position shows.
sub digest_entitlock
{
	return sq($_[0], q{SELECT n || ' ' || d FROM (
		SELECT 'usage_counter' AS n, count(*) || ' ' || md5(coalesce(string_agg(t::text, E'\n' ORDER BY t::text), '')) AS d FROM entitlock.usage_counter AS t
		UNION ALL
		SELECT 'usage_idempotency', count(*) || ' ' || md5(coalesce(string_agg(t::text, E'\n' ORDER BY t::text), '')) FROM entitlock.usage_idempotency AS t
		UNION ALL
		SELECT 'idempotency_key', count(*) || ' ' || md5(coalesce(string_agg(t::text, E'\n' ORDER BY t::text), '')) FROM entitlock.idempotency_key AS t
		UNION ALL
		SELECT 'lease_record', count(*) || ' ' || md5(coalesce(string_agg(t::text, E'\n' ORDER BY t::text), '')) FROM entitlock.lease_record AS t
		UNION ALL
		SELECT 'lease_fencing', last_value || ' ' || is_called FROM entitlock.lease_fencing
	) AS s ORDER BY n});
}
sub digest_user
{
	return sq($_[0], q{SELECT n || ' ' || d FROM (
		SELECT 'aaa.account' AS n, count(*) || ' ' || md5(string_agg(t::text, E'\n' ORDER BY t::text)) AS d FROM aaa.account AS t
		UNION ALL
		SELECT 'aaa.account_keys', count(*) || ' ' || md5(string_agg(t::text, E'\n' ORDER BY t::text)) FROM aaa.account_keys AS t
		UNION ALL
		SELECT 'public.job', count(*) || ' ' || md5(string_agg(t::text, E'\n' ORDER BY t::text)) FROM public.job AS t
		UNION ALL
		SELECT 'public.lease_board', string_agg(length(name) || ':' || coalesce(holder, '-') || ':' || fencing || ':' || api_calls, ',' ORDER BY length(name), fencing) FROM public.lease_board
	) AS s ORDER BY n});
}
# Every meter's usage, read with entitlock.usage().
sub meters
{
	return sq($_[0], q{SELECT string_agg(s || '/' || f || '/' || p || '=' || entitlock.usage(s, f, p), ' ' ORDER BY s, f, p)
		FROM (VALUES ('ws:1', 'api_calls', 'lifetime'), ('ws:1', 'api_calls', 'day'),
					 ('ws:1', 'api_calls', 'month'), ('ws:1', 'seats', 'lifetime'),
					 ('ws:2', 'storage', 'minute'), ('ws:2', 'storage', 'hour'),
					 ('ws:2', 'storage', 'day'), ('ws:2', 'storage', 'week'),
					 ('ws:2', 'storage', 'month'), ('ws:2', 'storage', 'year'),
					 ('ws:2', 'storage', 'lifetime'), ('jobs', 'created', 'lifetime')) AS m(s, f, p)});
}
my $src_entitlock = digest_entitlock($src);
my $src_user      = digest_user($src);

# A restored database: the same state, and it behaves as the source would.
# Run right after the restore (the checks change the copy).
sub verify
{
	my ($db, $t) = @_;
	is(digest_entitlock($db), $src_entitlock, "$t: entitlock's tables and sequence equal the source's");
	is(digest_user($db), $src_user, "$t: user tables, generated columns and views equal the source's");
	# Meters in short periods read 0 in both once their period ends; read
	# again if a period ended between the two reads.
	my ($got, $want) = (meters($db), meters($src));
	($got, $want) = (meters($db), meters($src)) if $got ne $want;
	is($got, $want, "$t: usage() of every meter equals the source's");
	is(sq($db, "SELECT entitlock.usage('ws:1', 'api_calls') || ' ' || entitlock.usage('ws:1', 'seats') || ' ' || entitlock.usage('jobs', 'created')"),
		'40 3 2', "$t: usage values");

	# Usage idempotency keys replay their first outcome.
	$want = sq($db, "SELECT entitlock.usage('ws:1', 'api_calls', 'month')");
	is(sq($db, "SELECT entitlock.record_usage('ws:1', 'api_calls', 9, 'month', 'req-1')") . ' '
		  . sq($db, "SELECT entitlock.usage('ws:1', 'api_calls', 'month')"),
		"9 $want", "$t: a usage key replays, recording nothing");
	is(sq($db, "SELECT allowed || ' ' || used || ' ' || remaining FROM entitlock.record_usage_if_under_limit('ws:1', 'seats', 1, 5, 'lifetime', 'seat-2')"),
		'false 3 2', "$t: a refusal at the limit replays as a refusal under a higher limit");
	is(sq($db, "SELECT allowed || ' ' || used || ' ' || remaining FROM entitlock.record_usage_if_under_limit('ws:1', 'seats', 1, 3)"),
		'false 3 0', "$t: the meter is still at its limit");

	# Idempotency claims.
	is(sq($db, "SELECT status || ' ' || response::text FROM entitlock.idempotency_begin('order-1', 'fp-1')"),
		'replay {"order": 1, "total": "9.99"}', "$t: a completed claim replays its response");
	is(qs($db, "SELECT status FROM entitlock.idempotency_begin('order-1', 'fp-other')"),
		'ERROR:  22023', "$t: a different fingerprint is refused");
	is(sq($db, "SELECT status || ' ' || response::text FROM entitlock.idempotency_begin('order-2', 'any')"),
		'replay {"order": 2}', "$t: a claim without fingerprint replays");
	is(sq($db, "SELECT status || ' ' || coalesce(response::text, 'none') FROM entitlock.idempotency_begin('order-3', 'fp-3')"),
		'replay none', "$t: a claim never completed replays with no response");
	is(sq($db, "SELECT status || ' ' || response::text FROM entitlock.idempotency_begin(repeat('k', 1048576), 'fp-big')"),
		'replay "big"', "$t: the 1 MB key replays");
	is(sq($db, "SELECT entitlock.first_time('job-1') || ' ' || entitlock.first_time('job-2')"),
		'false false', "$t: first_time is false for restored keys");
	is(sq($db, 'SELECT entitlock.purge_expired()')
		  . sq($db, "SELECT status FROM entitlock.idempotency_begin('old-1', 'fp-new')"),
		'1new', "$t: an expired key is absent, and purged");
	is(sq($db, "SELECT status FROM entitlock.idempotency_begin('in-flight')"),
		'new', "$t: the claim in flight during the dump is not restored");

	# Leases and fencing.
	is(sq($db, "SELECT count(*) FROM entitlock.lease_acquire('report', '1 minute')"),
		0, "$t: a restored lease is still held");
	is(sq($db, "SELECT entitlock.lease_renew('report', '$token_a', '2 hours')"), 't', "$t: its old token renews it");
	is(sq($db, "SELECT entitlock.lease_release('report', gen_random_uuid())"),
		'f', "$t: a stranger's token does not release it");
	is(sq($db, "SELECT entitlock.lease_release(repeat('n', 1048576), '$token_big')"),
		't', "$t: the 1 MB name's old token releases it");
	is(sq($db, "SELECT fencing > $spent FROM entitlock.lease_acquire('fresh', '1 minute')"),
		't', "$t: a new name gets a fencing number above every one handed out");
	is(sq($db, "SELECT fencing > $spent FROM entitlock.lease_acquire('in-flight', '1 minute')"),
		't', "$t: so does the lease in flight during the dump");
	is(sq($db, "SELECT fencing > $spent FROM entitlock.lease_acquire('stale', '1 minute')") . ' '
		  . sq($db, "SELECT entitlock.lease_renew('stale', '$token_stale', '1 minute')"),
		't f', "$t: the lease expired in the dump is taken over above them, and its old token is dead");
	is(sq($db, "SELECT entitlock.lease_release('report', '$token_a')") . ' '
		  . sq($db, "SELECT fencing > $spent FROM entitlock.lease_acquire('report', '1 minute')"),
		't t', "$t: the next holder of a restored lease gets a higher number");

	# The application role keeps what it was granted, and only that.
	$got = '';
	for my $sql ("SELECT entitlock.usage('ws:1', 'api_calls')",
		"SELECT count(*) FROM entitlock.leases WHERE name = 'report'",
		"SELECT count(*) FROM public.lease_board WHERE name = 'report'",
		"SELECT count(*) FROM entitlock.lease_acquire('app-lease', '1 minute')",
		"SELECT status FROM entitlock.idempotency_begin('app-key')",
		"SELECT public.charge('ws:3', 1)",
		"SELECT public.calls_left('ws:3')")
	{
		$got .= app($db, $sql) . ' ';
	}
	is($got, '40 1 1 1 new t 99 ', "$t: the role calls what it was granted");
	$got = '';
	for my $sql ("SELECT entitlock.record_usage('ws:1', 'api_calls', 1)",
		'SELECT entitlock.purge_expired()',
		'SELECT entitlock.prune_usage(now())',
		'SELECT count(*) FROM entitlock.lease_record',
		'SELECT count(*) FROM entitlock.idempotency_key',
		"INSERT INTO entitlock.usage_counter VALUES ('a', 'b', 'lifetime', '-infinity', NULL, 1)",
		'DELETE FROM entitlock.usage_idempotency',
		"SELECT nextval('entitlock.lease_fencing')",
		"INSERT INTO public.job (id, name) VALUES (9, 'x')")
	{
		$got .= app($db, $sql) . ' ';
	}
	is($got, 'ERROR:  42501 ' x 9, "$t: the role gets 42501 for everything it was not granted");

	# User objects work on.
	is(sq($db, "INSERT INTO aaa.account (name) VALUES ('initech') RETURNING lock_key = entitlock.key('account', 'initech') AND plan_key = entitlock.key('plan:free')")
		  . ' ' . qs($db, "INSERT INTO aaa.account (name) VALUES ('')"),
		't ERROR:  22023', "$t: generated, DEFAULT and CHECK on a new row");
	my $plan = sq($db, "SET enable_seqscan = off;
		EXPLAIN (COSTS OFF) SELECT name FROM aaa.account WHERE entitlock.key(name) = entitlock.key('acme')");
	is(sq($db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'aaa.account_name_key_idx'::regclass")
		  . ($plan =~ /account_name_key_idx/ ? 'used' : 'unused'),
		'tused', "$t: the expression index is valid and used");
	is(sq($db, "INSERT INTO public.job (id, name) VALUES (3, 'sync')")
		  . sq($db, "SELECT entitlock.usage('jobs', 'created')"),
		3, "$t: the trigger fires for new rows only");
}

sub restore_into
{
	my ($t, @cmd) = @_;
	my $db = "dr_$t";
	create_db($db, 0);
	my ($rc, undef, $err) = run_cmd(@cmd, '-d', $node->connstr($db));
	is($rc, 0, "$t: the restore succeeds");
	is(substr($err, 0, 2000), '', "$t: the restore writes nothing on stderr");
	return $db;
}

verify(restore_into('fc', 'pg_restore', "$tmp/all.dump"), 'custom format');
verify(restore_into('dir', 'pg_restore', '-j', '2', "$tmp/all.dir"), 'directory format, pg_restore -j 2');
verify(restore_into('sql', 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', "$tmp/all.sql"),
	'plain SQL through psql');
verify(restore_into('onetx', 'pg_restore', '--single-transaction', "$tmp/all.dump"),
	'pg_restore --single-transaction');

# A target that already has the extension (created by hand, or inherited
# from template1).  pg_dump writes CREATE EXTENSION IF NOT EXISTS, but
# also CREATE SCHEMA entitlock (the schema CREATE EXTENSION made is not a
# member of the extension), so a plain pg_restore reports that one error
# and restores the rest.  --clean --if-exists drops both first: no error.
{
	create_db('dr_pre', 1);
	my ($rc, undef, $err) = run_cmd('pg_restore', '-d', $node->connstr('dr_pre'), "$tmp/all.dump");
	note("into a database that has the extension, plain pg_restore exits $rc with: "
		  . join(' ', grep { /^pg_restore: (?:error|warning)/ } split /\n/, $err));
	create_db('dr_pre', 1);
	($rc, undef, $err) =
	  run_cmd('pg_restore', '--clean', '--if-exists', '-d', $node->connstr('dr_pre'), "$tmp/all.dump");
	is($rc, 0, 'existing extension: pg_restore --clean --if-exists succeeds');
	is(substr($err, 0, 2000), '', 'existing extension: nothing on stderr');
	verify('dr_pre', 'pg_restore --clean --if-exists over an existing extension');
}

# entitlock's state alone.  pg_dump -n entitlock leaves out CREATE
# EXTENSION (extensions are dumped only with the whole database or -e) but
# keeps CREATE SCHEMA and the rows: it restores into nothing.  -e entitlock
# dumps the extension with its rows; -a -n entitlock the rows alone, for a
# database that already has the extension.
is(digest_entitlock(restore_into('ext', 'pg_restore', "$tmp/ext.dump")),
	$src_entitlock, "pg_dump -e entitlock: entitlock's state restored");
{
	create_db('dr_data', 1);
	my ($rc, undef, $err) = run_cmd('pg_restore', '-d', $node->connstr('dr_data'), "$tmp/data.dump");
	is("$rc:" . substr($err, 0, 2000), '0:',
		'pg_dump -a -n entitlock into a database with the extension: succeeds');
	is(digest_entitlock('dr_data'), $src_entitlock, "pg_dump -a -n entitlock: entitlock's state restored");
	is(sq('dr_data', "SELECT entitlock.lease_renew('report', '$token_a', '1 hour')"),
		't', "pg_dump -a -n entitlock: a restored lease's old token renews it");
}

# Control: without the extension's table data.  The comparisons above
# must see it.
my $nodata = restore_into('nodata', 'pg_restore', "$tmp/nodata.dump");
isnt(digest_entitlock($nodata), $src_entitlock,
	"control: a dump without entitlock's data compares unequal");
is(sq($nodata, "SELECT status FROM entitlock.idempotency_begin('order-1', 'fp-1')"),
	'new', "control: without entitlock's data, no replay");
is(sq($nodata, "SELECT fencing > $spent FROM entitlock.lease_acquire('fresh', '1 minute')"),
	'f', "control: without entitlock's data, fencing numbers start over");

# Control: the leases without the sequence's position.  New names get
# numbers already handed out; taking over a restored lease refuses
# (55000) instead; setval() as README says repairs both.
my $noseq = restore_into('noseq', 'pg_restore', "$tmp/noseq.dump");
{
	my @got  = split /\n/, digest_entitlock($noseq);
	my @want = split /\n/, $src_entitlock;
	my @differ = grep { ($got[$_] // '') ne ($want[$_] // '') } 0 .. ($#got > $#want ? $#got : $#want);
	is(join(',', map { (split / /, $want[$_])[0] } @differ),
		'lease_fencing', "control: only the sequence's position compares unequal");
}
is(sq($noseq, "SELECT fencing <= $spent FROM entitlock.lease_acquire('fresh', '1 minute')"),
	't', "control: without the sequence's position, numbers are handed out again");
is(qs($noseq, "SELECT fencing FROM entitlock.lease_acquire('stale', '1 minute')"),
	'ERROR:  55000', 'control: taking over a restored lease refuses');
sq($noseq, "SELECT setval('entitlock.lease_fencing', $spent + 1000)");
is(sq($noseq, "SELECT fencing > $spent FROM entitlock.lease_acquire('stale', '1 minute')"),
	't', 'after setval(), fencing numbers are above every one handed out');

# An older dump restored in place: numbers handed out since the dump are
# handed out again, until setval() moves the sequence past them.
my $later = sq($src, "SELECT max(fencing) FROM generate_series(1, 5) AS g,
	LATERAL entitlock.lease_acquire('later-' || g, '1 minute') AS a");
{
	my ($rc, undef, $err) =
	  run_cmd('pg_restore', '--clean', '--if-exists', '-d', $srcc, "$tmp/all.dump");
	is("$rc:" . substr($err, 0, 2000), '0:', 'older dump restored in place: succeeds');
}
is(sq($src, "SELECT fencing <= $later FROM entitlock.lease_acquire('later-1', '1 minute')"),
	't', 'control: older dump restored in place: fencing numbers go back');
sq($src, "SELECT setval('entitlock.lease_fencing', $later + 1000)");
is(sq($src, "SELECT fencing > $later FROM entitlock.lease_acquire('later-2', '1 minute')"),
	't', 'after setval(), above every number handed out');

$node->stop;
done_testing();
