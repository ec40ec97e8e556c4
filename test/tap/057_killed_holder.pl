# test/tap/057_killed_holder.pl: a killed holder never leaves a lock
# behind.
#
# A session takes lock_entity('acme', 'e1') and lock('job-1') and then
# hangs; one waiter queues on each.  pg_terminate_backend on the holder
# must let both waiters in at once, and afterwards nothing is held.  The
# same for a worker that dies while idle in its transaction (its psql is
# killed with SIGKILL): the server sees the connection close and frees the
# locks.  (A backend busy in a long statement notices a dead client only
# when the statement ends, or sooner with client_connection_check_interval;
# the README says so.)
#
# Run with: bash test/tap.sh test/tap/057_killed_holder.pl

use strict;
use warnings;

use EntitlockStress;
use IPC::Run;
use Test::More;
use Time::HiRes qw(time);

my $node = stress_node('main');
my $t = target($node, 'entitlock_stress_killed');
create_db($t);

# psql on the test database, in the background, with its standard input
# from \$in: (harness, \stdout).
sub start_psql
{
	my ($in, @args) = @_;
	my $out = '';
	local $ENV{PGOPTIONS} = '-c statement_timeout=30s';
	my $h = IPC::Run::start(
		[
			'psql', '-X', '-At', '-h', $node->host, '-p', $node->port,
			'-d', $t->{db}, @args
		],
		'<', $in, '>', \$out, '2>&1');
	return ($h, \$out);
}

my $take = "BEGIN;
SELECT entitlock.lock_entity('acme', 'e1');
SELECT entitlock.lock('job-1');\n";

for my $how ('terminate', 'sigkill')
{
	# The holder takes its locks, then either sleeps in a statement far
	# longer than the test (terminate) or sits idle in its transaction
	# with its client waiting for more input (sigkill).
	my $in = $how eq 'terminate' ? $take . "SELECT pg_sleep(600);\n" : $take;
	my ($holder) = start_psql(\$in);
	# Its statements are written as the harness is pumped; the standard
	# input stays open (the sigkill case's psql waits for more).
	$holder->pump_nb while length $in > 0;
	ok(poll_until($t,
		"SELECT count(*) = 1 FROM entitlock.holders('job-1') WHERE granted"),
		"$how: the holder has its locks");
	my $holder_pid =
	  sql($t, "SELECT pid FROM entitlock.holders('job-1') WHERE granted");

	# Two waiters, each timing its own wait; statement_timeout turns a
	# stuck lock into a failure instead of a hang.
	my ($w1, $o1) = start_psql(\'', '-c', "SELECT entitlock.lock('job-1', '60 s'),
		extract(epoch FROM clock_timestamp() - statement_timestamp())");
	my ($w2, $o2) = start_psql(\'', '-c',
		"SELECT entitlock.lock('acme'); SELECT 'realm acquired'");
	ok( poll_until($t,
			"SELECT count(*) = 1 FROM entitlock.holders('job-1') WHERE NOT granted")
		  && poll_until($t,
			"SELECT count(*) = 1 FROM entitlock.holders('acme') WHERE mode = 'exclusive' AND NOT granted"
		  ),
		"$how: both waiters wait");
	Time::HiRes::usleep(500_000);

	my $start = time;
	if ($how eq 'terminate')
	{
		sql($t, "SELECT pg_terminate_backend($holder_pid)");
	}
	else
	{
		$holder->signal('KILL');
	}
	$w1->finish;
	$w2->finish;
	my $elapsed = time - $start;
	$holder->finish;
	note "$how: waiter 1 got: $$o1; waiter 2 got: $$o2; through "
	  . sprintf('%.3f', $elapsed) . " s after the kill";

	like($$o1, qr/^t\|/m, "$how: waiter 1 got the lock");
	like($$o2, qr/realm acquired/, "$how: waiter 2 got the realm");
	# The holder would have held on for 600 s; anything near that means
	# the lock stuck.
	cmp_ok($elapsed, '<', 10, "$how: both waiters were through at once");
	ok( poll_until($t, q{SELECT count(*) = 0 FROM pg_locks WHERE locktype = 'advisory'
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())}),
		"$how: no advisory lock is left");
	is( sql($t,
			"SELECT entitlock.try_lock('job-1') AND entitlock.try_lock_entity('acme', 'e1')"),
		't',
		"$how: the locks are free afterwards");
}

$node->stop;
done_testing();
