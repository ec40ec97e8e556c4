# test/tap/004_durability.pl: what idempotency claims and leases keep
# across a clean restart and a crash.
#
# Claims and leases are rows in entitlock's tables, written in the
# caller's transaction, and fencing numbers come from a sequence; so what
# survives a crash is what committed, and nothing that was in flight
# holds a name afterwards.  In one cluster:
#
# - A clean restart keeps a held lease, and fencing numbers go on rising.
# - Then, in flight at an immediate stop (no shutdown checkpoint: crash
#   recovery): a claim made and completed but not committed, a duplicate
#   request waiting for it, and a lease acquisition not committed, the
#   first since a checkpoint (so its number is the one that makes the
#   sequence write WAL).  After recovery the committed claim replays and
#   the committed lease is held, its token renews it; the claim in flight
#   is gone ('new', its key free at once), so is the acquisition (its name
#   free at once); and the number the lost acquisition was handed is never
#   handed out again.
# - With synchronous_commit = off, committed acquisitions may be lost in a
#   crash, but their numbers are never handed out again either (README:
#   How the numbers are made).
#
# The same state through pg_dump and restore is test/tap/063_dump_restore.pl.
#
# Run with: bash test/tap.sh test/tap/004_durability.pl

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('main');
$node->init;
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION entitlock');

sub sql { return $node->safe_psql('postgres', $_[0]); }

# SQL that must answer within 2 s: a claim or a name left locked fails it.
sub q_at_once
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', "SET lock_timeout = '2s';\n$sql");
}

# How many advisory locks are held (granted) or waited for.
sub advisory
{
	my ($granted) = @_;
	return "SELECT count(*) FROM pg_locks
			 WHERE locktype = 'advisory' AND granted = $granted";
}

#
# A clean restart.
#
my $kept_token =
  sql("SELECT token FROM entitlock.lease_acquire('kept', '1 hour', 'worker-1')");
my $before = sql('SELECT last_value FROM entitlock.lease_fencing');
$node->restart;
is(sql("SELECT holder FROM entitlock.leases WHERE name = 'kept'"),
	'worker-1', 'restart: a held lease survives a clean restart');
cmp_ok(sql("SELECT fencing FROM entitlock.lease_acquire('fresh', '1 hour')"),
	'>', $before, 'restart: fencing numbers go on rising after it');

#
# A crash with work in flight.
#
sql(q{BEGIN;
	SELECT status FROM entitlock.idempotency_begin('committed', 'fp');
	SELECT entitlock.idempotency_complete('committed', '"kept"');
	COMMIT;});
sql('CHECKPOINT');

my $open = $node->background_psql('postgres');
$open->query_safe(
	q{BEGIN;
	  SELECT status FROM entitlock.idempotency_begin('in-flight');
	  SELECT entitlock.idempotency_complete('in-flight', '"lost"');});
my $lost = $open->query_safe(
	"SELECT fencing FROM entitlock.lease_acquire('in-flight', '1 hour', 'worker-2')");
like($lost, qr/^\d+$/, "crash: the acquisition in flight was handed $lost");

# A duplicate of the claim in flight, waiting for it when the server goes.
my ($waiter_out, $waiter_err) = ('', '');
my $waiter = IPC::Run::start(
	[
		'psql', '-XAt', '-d', $node->connstr('postgres'),
		'-c', "SELECT status FROM entitlock.idempotency_begin('in-flight')"
	],
	'>', \$waiter_out, '2>', \$waiter_err);
$node->poll_query_until('postgres', advisory('false'), '1')
  or die 'the duplicate claim did not wait';

$node->stop('immediate');
$waiter->finish;
like($waiter_err, qr/terminat|closed the connection/,
	'crash: the waiting duplicate lost its connection');
$open->quit;
$node->start;

is( sql("SELECT status || ' ' || response::text
		 FROM entitlock.idempotency_begin('committed', 'fp')"),
	'replay "kept"',
	'crash: a committed claim survives and replays its response');
is(q_at_once("SELECT status FROM entitlock.idempotency_begin('in-flight')"),
	'new', 'crash: the claim in flight is gone, its key free at once');
is( sql("SELECT string_agg(key || '=' || coalesce(response::text, 'none'), ','
						 ORDER BY key)
		 FROM entitlock.idempotency_key"),
	'committed="kept",in-flight=none',
	'crash: only committed claims remain (and the one just made)');

is(sql("SELECT holder FROM entitlock.leases WHERE name = 'kept'"),
	'worker-1', 'crash: a committed lease survives');
is(sql("SELECT entitlock.lease_renew('kept', '$kept_token', '1 hour')"),
	't', 'crash: its token renews it');
is( q_at_once(
		"SELECT count(*) FROM entitlock.lease_acquire('in-flight', '1 hour')"),
	'1',
	'crash: the acquisition in flight is gone, its name free at once');
cmp_ok(sql("SELECT fencing FROM entitlock.lease_acquire('after-crash', '1 hour')"),
	'>', $lost,
	'crash: the number the lost acquisition was handed is never handed out again');
is(sql(advisory('true')), '0', 'crash: no advisory lock is held afterwards');

#
# A crash under synchronous_commit = off.
#
sql('CHECKPOINT');
my @handed = split /\n/,
  sql("SET synchronous_commit = off;\n"
	  . join "\n",
	  map { "SELECT fencing FROM entitlock.lease_acquire('async-$_', '1 hour');" }
	  1 .. 5);
my $spent = $handed[-1];
like($spent, qr/^\d+$/,
	"synchronous_commit = off: 5 acquisitions committed, up to fencing $spent");
$node->stop('immediate');
$node->start;
cmp_ok(sql("SELECT fencing FROM entitlock.lease_acquire('after-async', '1 hour')"),
	'>', $spent,
	'synchronous_commit = off: numbers handed out before a crash are not handed out again');

$node->stop;
done_testing();
