# test/tap/010_probe_concurrent_update.pl: a counter row being updated by
# another transaction is never taken for a missing one.
#
# A call finds a meter's counter row (or a rate limit's state row) with an
# index probe that judges each row version when it reaches it.  When a
# concurrent update puts the new version on another page (not HOT: it
# needs a new index entry), a probe can reach the new version's entry
# while its updater is still running and the old version's just after the
# updater committed, or read the index page before the new entry is there:
# it sees neither version, and the call would insert a second row and fail
# with 23505 on usage_counter_pkey (or rate_limit_state_pkey), a SQLSTATE
# no caller expects.
#
# Such updates need full pages: one session holds a REPEATABLE READ
# snapshot open for the whole run, so no dead version can be pruned.  Then
# 24 pgbench clients record on two hot meters, a set of
# both in some (which lock their rows first), and take units from two hot rate
# limits, with a ledger row for every recorded amount in the same
# transaction.  Some of the calls run in REPEATABLE READ transactions,
# which may fail with 40001 (pgbench retries them) but with nothing else.
# No client may fail (no 23505, no XX000), each meter must have one row,
# and usage must equal the ledger.  Before a probe that found nothing was
# checked against one snapshot (entitlock_table_probe_stable()), runs of
# this test had 1 to 6 clients fail with 23505.
#
# Run with: bash test/tap.sh test/tap/010_probe_concurrent_update.pl

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('main');
$node->init;
$node->append_conf('postgresql.conf', "max_connections = 40\nlog_statement = none");
$node->start;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION entitlock;
CREATE TABLE ledger (meter int NOT NULL, amount bigint NOT NULL);
});

# The snapshot that keeps every dead row version (and index entry) around.
my $holder = $node->background_psql('postgres');
$holder->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
$holder->query_safe('SELECT count(*) FROM entitlock.usage_counter');

# Names of 500 bytes make rows of over 1 kB, so that a page holds only a
# few versions of a row and one update in six or so is not HOT.
my $subject = "repeat('s', 500)";
my $feature = "repeat('f', 500)";

$node->pgbench(
	'--no-vacuum --client=24 --jobs=2 --time=30 --max-tries=1000',
	0,
	[qr{actually processed: \d+}],
	[qr{^$}],
	'no client failed (no 23505, no XX000) under non-HOT updates',
	{
		'010_one@10' => qq{
\\set m random(1, 2)
\\set amount random(1, 3)
INSERT INTO ledger
SELECT :m, :amount
  FROM entitlock.record_usage_if_under_limit($subject, :m || $feature,
											 :amount, 1000000000000)
 WHERE allowed;
},
		'010_set@3' => qq{
\\set m random(1, 2)
\\set amount random(1, 3)
INSERT INTO ledger
SELECT left(feature, 1)::int, :amount
  FROM entitlock.record_usage_if_under_limits(ARRAY[
		entitlock.usage_limit($subject, :m || $feature, 1000000000000),
		entitlock.usage_limit($subject, (3 - :m) || $feature, 1000000000000)],
		:amount)
 WHERE allowed;
},
		'010_rr@3' => qq{
\\set m random(1, 2)
\\set amount random(1, 3)
BEGIN ISOLATION LEVEL REPEATABLE READ;
INSERT INTO ledger
SELECT :m, :amount
  FROM entitlock.record_usage_if_under_limit($subject, :m || $feature,
											 :amount, 1000000000000)
 WHERE allowed;
COMMIT;
},
		'010_rate@5' => qq{
\\set m random(1, 2)
SELECT allowed
  FROM entitlock.rate_limit(:m || repeat('r', 500), 1000000000, '1 second');
},
	});

$holder->query_safe('COMMIT');
$holder->quit;

is( $node->safe_psql(
		'postgres', q{
SELECT string_agg(left(feature, 1) || ': ' || rows, ', ' ORDER BY feature)
  FROM (SELECT feature, count(*) AS rows FROM entitlock.usage_counter
		 GROUP BY feature) AS c}),
	'1: 1, 2: 1',
	'one counter row per meter');
is($node->safe_psql('postgres',
		'SELECT count(*) FROM entitlock.rate_limit_state GROUP BY name HAVING count(*) > 1'),
	'', 'one state row per rate limit');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM generate_series(1, 2) AS m
 WHERE entitlock.usage(repeat('s', 500), m || repeat('f', 500)) IS DISTINCT FROM
	   (SELECT coalesce(sum(amount), 0) FROM ledger WHERE meter = m)}),
	'0',
	'usage equals the ledger on every meter');
ok( $node->safe_psql(
		'postgres',
		q{SELECT n_tup_upd - n_tup_hot_upd FROM pg_stat_user_tables
		   WHERE relid = 'entitlock.usage_counter'::regclass}) > 10,
	'the run made non-HOT updates');

$node->stop;
done_testing();
