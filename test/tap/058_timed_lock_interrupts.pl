# test/tap/058_timed_lock_interrupts.pl: lock(name, timeout) must not
# swallow a statement_timeout.
#
# When the statement timer and the lock timer have both expired by the
# time a backend checks for interrupts, PostgreSQL reports only the lock
# timeout.  A timed lock that turned that into "false" would let the
# statement run on past statement_timeout.  To make both expire together,
# the waiting backend is frozen with SIGSTOP past both deadlines and then
# resumed: the statement must end with 57014 at once, not return false and
# carry on sleeping.  (The test runs as the owner of the server's
# processes, so it may signal the backend.)
#
# Also: with a statement_timeout that has not expired, an expiring lock
# wait still returns false; and a lock timer expiring just after the grant
# never leaks its cancel into the caller's next statement (48 pgbench
# clients, 1 ms waits).
#
# Run with: bash test/tap.sh test/tap/058_timed_lock_interrupts.pl

use strict;
use warnings;

use EntitlockStress;
use IPC::Run;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = stress_node('main');
my $t = target($node, 'entitlock_stress_interrupts');
create_db($t);

sub start_psql
{
	my ($out, @args) = @_;
	return IPC::Run::start(
		[
			'psql', '-X', '-q', '-At', '-h', $node->host, '-p', $node->port,
			'-d', $t->{db}, @args
		],
		'<', \undef, '>', $out, '2>&1');
}

my $holder_out = '';
my $holder = start_psql(\$holder_out, '-c',
	"SET statement_timeout = '60s'; BEGIN; SELECT entitlock.lock('frozen'); SELECT pg_sleep(20);");
ok(poll_until($t,
	"SELECT count(*) = 1 FROM entitlock.holders('frozen') WHERE granted"),
	'the holder has the lock');

# Case 1: both timers expire while the waiter is frozen.
my $start = time;
my $waiter_out = '';
my $waiter;
{
	local $ENV{PGAPPNAME} = 'frozen-waiter';
	$waiter = start_psql(\$waiter_out, '-c', "SET statement_timeout = '2s'",
		'-c',
		"SELECT entitlock.lock('frozen', '1 s') AS got, pg_sleep(5) AS slept_on");
}
ok(poll_until($t,
	"SELECT count(*) = 1 FROM entitlock.holders('frozen') WHERE NOT granted"),
	'the waiter waits');
my $pid = sql($t,
	"SELECT pid FROM pg_stat_activity WHERE application_name = 'frozen-waiter'");
ok(kill('STOP', $pid), 'the waiting backend is stopped');
usleep(2_500_000);
kill 'CONT', $pid;
$waiter->finish;
my $elapsed = time - $start;
note "frozen waiter said: $waiter_out after " . sprintf('%.2f', $elapsed) . ' s';
like($waiter_out, qr/canceling statement due to statement timeout/,
	'the statement_timeout was not swallowed');
cmp_ok($elapsed, '<', 5, 'the statement did not run on');

# Case 2: a statement_timeout that has not expired leaves "false" alone.
is( sql($t, "SET statement_timeout = '30s';
SELECT entitlock.lock('frozen', '200 ms')"),
	'f',
	'with statement_timeout not reached, the timed lock returns false');

$holder->kill_kill;

# Case 3: many short timed waits on two hot names.  The lock timer can
# expire after the lock was granted, before the woken waiter disabled it:
# PostgreSQL's ProcSleep() then returns success with the timer's cancel
# still pending.  Left alone, that cancel aborts the caller's next
# statement with 55P03 although the call returned; the call must answer
# false instead (its time ran out) and the transaction go on.  On a
# 2-core machine the window is hit a few times in ten seconds.
my $hot = script($t, 'hot.sql', q{
\set i random(1, 2)
BEGIN;
SELECT entitlock.lock('hot' || :i, '1 ms');
SELECT pg_sleep(0.0005);
COMMIT;
});
my $run = run_pgbench($t, [ '-c', 48, '-j', 2, '-T', 10, '-f', $hot ]);
note "48 clients, 1 ms timed waits on two names: $run->{committed} transactions";
is($run->{rc}, 0, 'pgbench succeeded');
unlike("$run->{out}\n$run->{err}", qr/ERROR/,
	"no timed lock's expired timer leaked out of the call");
cmp_ok($run->{committed}, '>', 0, 'transactions were committed');

$node->stop;
done_testing();
