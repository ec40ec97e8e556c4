# test/tap/020_bulk_recording.pl: one transaction records on a million
# meters, at default settings.
#
# Every recording call holds shared locks on its subject and its (subject,
# feature) pair until its transaction ends, and a new meter's first row is
# created under an internal lock.  The shared lock table has room for
# max_locks_per_transaction (64) locks per connection, some 7,800 in all,
# so a bulk import that recorded on thousands of meters in one transaction
# used to fail with "out of shared memory".  Now a transaction past
# entitlock.lock_escalation_threshold locks coarsely instead (see locks.c),
# and a row's creation lock is given back once the row is in the table
# (see table.c).
#
# One transaction records on 1,000,000 distinct meters with record_usage,
# makes 5,000 record_usage_if_under_limits calls on 10,000 new meters (and
# 7 shared ones) and 10,000 new rate limits; it holds a bounded number of
# locks, the totals are right once it commits, and meanwhile the coarse
# locks still keep lock_entity() and lock() off its meters while other
# recorders go on.
#
# Run with: bash test/tap.sh test/tap/020_bulk_recording.pl

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $meters = 1_000_000;
my $sets = 5_000;
my $rates = 10_000;

my $node = PostgreSQL::Test::Cluster->new('bulk');
$node->init;
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION entitlock');

is( $node->safe_psql(
		'postgres', 'SHOW max_locks_per_transaction; SHOW max_connections'),
	"64\n100",
	'the lock table has its default size');

my $bulk = $node->background_psql('postgres', on_error_stop => 0);

# One statement of the bulk transaction, and its output.  If it fails
# (with the error in the test's output), nothing after it can pass.
sub bulk_step
{
	my ($what, $sql) = @_;
	my $t0 = time;
	my ($out, $failed) = $bulk->query($sql);
	note(sprintf('%s: %.1f s', $what, time - $t0));
	return $out if ok(!$failed, $what);
	diag($bulk->{stderr});
	$bulk->quit;
	$node->stop;
	done_testing();
	exit;
}

# Another session holds an exclusive lock on an unrelated name when the
# bulk transaction passes the threshold, and ends half a second later, as
# a request would: escalation waits for it (it holds a stripe; an
# escalation waits up to 1 s), rather than giving up at once and running
# out of the lock table with per-key locks.
my $holder = $node->background_psql('postgres');
$holder->query_until(qr/locked/, "BEGIN;
SELECT entitlock.lock('unrelated-holder');
\\echo locked
SELECT pg_sleep(0.5);
COMMIT;
");

$bulk->query_safe('BEGIN');
bulk_step(
	"record_usage on $meters distinct meters",
	"SELECT count(entitlock.record_usage('m:' || g, 'api', 1))
	   FROM generate_series(1, $meters) AS g");
bulk_step(
	"$sets record_usage_if_under_limits calls on distinct users",
	"SELECT count(*)
	   FROM generate_series(1, $sets) AS g,
			entitlock.record_usage_if_under_limits(ARRAY[
				entitlock.usage_limit('u:' || g, 'api', 10, 'hour'),
				entitlock.usage_limit('u:' || g, 'api', 100, 'day'),
				entitlock.usage_limit('org:' || g % 7, 'api', $sets * 2, 'month')], 2) AS r
	  WHERE r.allowed");
bulk_step(
	"rate_limit on $rates distinct names",
	"SELECT count(*)
	   FROM generate_series(1, $rates) AS g,
			entitlock.rate_limit('r:' || g, 10, '1 minute') AS r
	  WHERE r.allowed");

# Calls that create no row hold nothing afterwards either: denials on new
# meters, refunds of nothing, denied sets and peeks at new rate limits
# give back their claim on creating the row once they have decided.
bulk_step(
	"20000 denials on distinct new meters",
	"SELECT count(*) FROM generate_series(1, 20000) AS g,
			entitlock.record_usage_if_under_limit('d:' || g, 'api', 1, 0) AS r
	  WHERE NOT r.allowed");
bulk_step(
	"20000 refunds of nothing on distinct missing meters",
	"SELECT count(entitlock.record_usage('n:' || g, 'api', -1)) FROM generate_series(1, 20000) AS g");
bulk_step(
	"3000 denied sets on new meters",
	"SELECT count(*) FROM generate_series(1, 3000) AS g,
			entitlock.record_usage_if_under_limits(ARRAY[
				entitlock.usage_limit('ds:' || g, 'api', 5),
				entitlock.usage_limit('dz:' || g, 'api', 0)]) AS r
	  WHERE NOT r.allowed");
bulk_step(
	"10000 peeks at new rate limits",
	"SELECT count(*) FROM generate_series(1, 10000) AS g,
			entitlock.rate_limit('p:' || g, 10, '1 minute', NULL, 0) AS r");

# About the threshold (1,000 locks), the stripes (64) and a few relation
# locks, whatever the number of meters.
my $held = $bulk->query_safe(
	'SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()');
cmp_ok($held, '<', 1200, "the bulk transaction holds $held locks");

# Meanwhile its meters stay out of lock_entity()'s and lock()'s reach, and
# a recorder elsewhere goes on.
is( $node->safe_psql(
		'postgres', "SELECT entitlock.try_lock_entity('m:123456', 'api'),
						   entitlock.lock('u:17', '100 ms')"),
	"f|f",
	'lock_entity and lock wait for the bulk transaction');
is( $node->safe_psql(
		'postgres', "SELECT entitlock.record_usage('elsewhere', 'api', 1)"),
	'1',
	'another transaction records meanwhile');

bulk_step('commit', 'COMMIT');
$bulk->quit;
$holder->quit;

is( $node->safe_psql(
		'postgres', "SELECT count(*), sum(used) FROM entitlock.usage_counter
					  WHERE subject LIKE 'm:%' AND feature = 'api'
						AND period = 'lifetime'"),
	"$meters|$meters",
	'every meter recorded once');
is( $node->safe_psql(
		'postgres', "SELECT count(*) FROM entitlock.usage_counter
					  WHERE subject LIKE 'd:%' OR subject LIKE 'n:%'
						 OR subject LIKE 'ds:%' OR subject LIKE 'dz:%'"),
	'0',
	'denials and refunds of nothing left no rows');
is( $node->safe_psql(
		'postgres', "SELECT sum(entitlock.usage('u:' || g, 'api', 'hour')),
						   sum(entitlock.usage('u:' || g, 'api', 'day'))
					  FROM generate_series(1, $sets) AS g"),
	($sets * 2) . '|' . ($sets * 2),
	'every set recorded on its user meters');
is( $node->safe_psql(
		'postgres', "SELECT sum(entitlock.usage('org:' || g, 'api', 'month'))
					  FROM generate_series(0, 6) AS g"),
	$sets * 2,
	'and on the shared organisation meters');
is( $node->safe_psql(
		'postgres', "SELECT count(*) FROM entitlock.rate_limit_state
					  WHERE name LIKE 'r:%'"),
	$rates,
	'every rate limit has its state');
is( $node->safe_psql(
		'postgres', "SELECT entitlock.try_lock_entity('m:123456', 'api')"),
	't',
	'lock_entity is free again after the commit');

$node->stop;
done_testing();
