# test/bench/lease-wait-cost.pl: what a waiting lease_acquire costs the
# server.
#
#   bash test/bench/run.sh lease-wait-cost
#   BENCH_SECONDS=20 BENCH_CLIENTS=32 bash test/bench/run.sh lease-wait-cost
#
# lease_acquire(name, ttl, holder, wait) holds no lock while it waits: it
# looks at the lease again every 20 ms (LEASE_POLL_MS in src/leases.c), or
# at the lease's expiry when that comes first.  So each waiter wakes about
# 50 times a second.  This measures what that costs: BENCH_CLIENTS (16)
# sessions each wait on a lease held (ttl 1 hour) by nobody connected, for
# BENCH_SECONDS (10) s, and for each waiter's backend (found through
# pg_stat_activity.application_name) it reads, before and after:
#   - CPU time, utime + stime of /proc/<pid>/stat (in clock ticks);
#   - wake-ups, voluntary_ctxt_switches of /proc/<pid>/status (each sleep
#     that ends is one), and nonvoluntary_ctxt_switches (preemptions);
#   - RssAnon of /proc/<pid>/status: private memory, which must not grow
#     with the number of polls.
# For comparison, the same number of sessions wait just as long in
#   lock      entitlock.lock(name, timeout) on a lock a session holds (a
#             heavyweight-lock wait, woken only by the release or timer)
#   pg_sleep  pg_sleep(), the floor: a backend that sleeps
# It prints, per variant, CPU milliseconds per waiter per second (= CPU %
# of one core x 10), wake-ups and preemptions per waiter per second, the
# memory growth per waiter, and the CPU share of one core that all waiters
# together took.  Afterwards the lease waiters are cancelled (a cancel must
# end the wait) and the number that ended with "canceling statement" is
# shown.  A benchmark, not a test: it asserts nothing.
#
# Uses the cluster PGHOST points at, if any (it must run on this machine,
# as the same OS user as the server: it reads /proc), otherwise starts a
# node of its own.

use strict;
use warnings;

use EntitlockBench;
use IPC::Run;
use POSIX ();
use Time::HiRes qw(time usleep);

my $secs = bench_env('SECONDS', 10);
my $clients = bench_env('CLIENTS', 16);
my $hz = POSIX::sysconf(POSIX::_SC_CLK_TCK());
my $limit = $secs + 10;

my $bench = bench_start('entitlock_bench_lease_wait');

# psql sessions running SQL as application APP, in the background: the
# harnesses and their outputs.
sub start_sessions
{
	my ($app, $sql, $n) = @_;
	local $ENV{PGAPPNAME} = $app;
	my (@h, @out);
	for my $i (0 .. $n - 1)
	{
		$out[$i] = '';
		push @h,
		  IPC::Run::start(
			[
				'psql', '-X', '-q', '-At', '-h', $bench->{host},
				'-p', $bench->{port}, '-d', $bench->{db}, '-c', $sql
			],
			'<', \undef, '>', \$out[$i], '2>&1');
	}
	return (\@h, \@out);
}

# The waiters' backends, once all of APP wait in WAIT_EVENT.
sub waiter_pids
{
	my ($app, $event) = @_;
	my $n = 0;
	for (1 .. 400)
	{
		$n = bench_sql($bench, qq{SELECT count(*) FROM pg_stat_activity
			WHERE application_name = '$app' AND state = 'active'
			  AND wait_event = '$event'});
		last if $n == $clients;
		usleep(50_000);
	}
	die "only $n of $clients $app sessions waiting in $event\n"
	  if $n != $clients;
	return split /\n/, bench_sql($bench,
		"SELECT pid FROM pg_stat_activity WHERE application_name = '$app' ORDER BY pid"
	);
}

# Per backend: [ ticks, voluntary, nonvoluntary, rss_anon_kB ].
sub sample
{
	my @s;
	for my $pid (@_)
	{
		open my $st, '<', "/proc/$pid/stat" or die "/proc/$pid/stat: $!";
		my @f = split ' ', (<$st> =~ s/^.*\) //r);
		close $st;
		my %v;
		open my $status, '<', "/proc/$pid/status"
		  or die "/proc/$pid/status: $!";
		while (<$status>)
		{
			$v{$1} = $2
			  if /^(voluntary_ctxt_switches|nonvoluntary_ctxt_switches|RssAnon):\s+(\d+)/;
		}
		close $status;
		# utime and stime: fields 14 and 15 of stat, 12 and 13 after the
		# command name
		push @s,
		  [
			$f[11] + $f[12], $v{voluntary_ctxt_switches},
			$v{nonvoluntary_ctxt_switches}, $v{RssAnon}
		  ];
	}
	return @s;
}

# CLIENTS sessions of VARIANT run SQL (which must wait longer than SECS);
# prints the variant's row; returns the sessions' harnesses and outputs.
sub measure
{
	my ($variant, $event, $sql) = @_;
	my ($h, $out) = start_sessions("$variant-waiter", $sql, $clients);
	my @pids = waiter_pids("$variant-waiter", $event);
	my @before = sample(@pids);
	my $t0 = time;
	sleep $secs;
	my @after = sample(@pids);
	my $elapsed = time - $t0;
	my ($cpu, $vol, $invol, $rss) = (0, 0, 0, 0);
	for my $i (0 .. $#pids)
	{
		$cpu += ($after[$i][0] - $before[$i][0]) / $hz;
		$vol += $after[$i][1] - $before[$i][1];
		$invol += $after[$i][2] - $before[$i][2];
		$rss += $after[$i][3] - $before[$i][3];
	}
	bench_printf "%-10s %7d %7.1f %10.2f %10.1f %10.1f %10.1f %10.1f\n",
	  $variant, $clients, $elapsed, $cpu * 1000 / $clients / $elapsed,
	  $vol / $clients / $elapsed, $invol / $clients / $elapsed,
	  $rss / $clients, $cpu / $elapsed * 100;
	return ($h, $out);
}

sub cancel_and_wait
{
	my ($app, $h) = @_;
	bench_sql($bench,
		"SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE application_name = '$app'"
	);
	$_->finish for @$h;
}

chomp(my $cores = `nproc`);
bench_printf "# bash test/bench/run.sh lease-wait-cost  (BENCH_SECONDS=%s BENCH_CLIENTS=%s; %s cores)\n",
  $secs, $clients, $cores;
bench_printf "per waiter: CPU ms per second, voluntary (wake-ups) and involuntary context switches\n";
bench_printf "per second, growth of private memory (RssAnon, kB) over the run; all: %% of one core\n";
bench_printf "%-10s %7s %7s %10s %10s %10s %10s %10s\n", qw(variant waiters seconds
  cpu_ms/s wakeups/s preempt/s rss_kB all_cpu%);

# lease: held for an hour by a session that has gone away
die "could not take the lease\n"
  unless bench_sql($bench,
	"SELECT count(*) FROM entitlock.lease_acquire('cost:held', '1 hour', 'holder')"
  ) == 1;
my ($h, $out) = measure('lease', 'Extension',
	"SELECT count(*) FROM entitlock.lease_acquire('cost:held', '1 min', 'w', wait => '$limit s')"
);
cancel_and_wait('lease-waiter', $h);
my $cancelled = grep { /canceling statement due to user request/ } @$out;

# lock(name, timeout): a session holds the lock in an open transaction
my ($holder) = start_sessions('cost-holder',
	"BEGIN; SELECT entitlock.lock('cost:lock'); SELECT pg_sleep($limit + 5);",
	1);
for (1 .. 400)
{
	last
	  if bench_sql($bench,
		"SELECT count(*) = 1 FROM entitlock.holders('cost:lock') WHERE granted"
	  ) eq 't';
	usleep(50_000);
}
($h) = measure('lock', 'advisory', "SELECT entitlock.lock('cost:lock', '$limit s')");
cancel_and_wait('lock-waiter', $h);
bench_sql($bench,
	"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'cost-holder'"
);
$_->finish for @$holder;

($h) = measure('pg_sleep', 'PgSleep', "SELECT pg_sleep($limit)");
cancel_and_wait('pg_sleep-waiter', $h);

bench_printf "lease waiters ended by a cancel: %d of %d\n", $cancelled, $clients;
