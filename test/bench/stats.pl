# test/bench/stats.pl: what the statistics in shared memory
# (entitlock.stats, src/stats.c) cost.
#
#   bash test/bench/run.sh stats
#   BENCH_SECONDS=8 BENCH_WARMUP=2 BENCH_ROUNDS=5 BENCH_CLIENTS=8 bash test/bench/run.sh stats
#
# Statistics count every call, but only when the library is loaded through
# shared_preload_libraries.  So the same build runs the same workloads on
# one node, restarted between two variants:
#   without  shared_preload_libraries = ''  (nothing is counted)
#   with     shared_preload_libraries = 'entitlock'
# Workloads, BENCH_CLIENTS (8) pgbench clients, those of locks.pl and
# usage.pl:
#   lock        BEGIN; entitlock.lock('name-' || random(1, 1000)); COMMIT
#               (pgbench -M simple, as locks.pl; 1,000 names, and so 1,000
#               labels: each name is its own label, the most the default
#               entitlock.stats_max keeps apart)
#   usage-1000  record_usage_if_under_limit('s-' || random(1, 1000), 'api',
#               1, <a limit never reached>) (pgbench -M prepared, as usage.pl)
#   usage-hot   the same on one subject
# Usage counters are emptied, vacuumed and checkpointed before each run, as
# in usage.pl.  Each round runs every workload under both variants, one
# right after the other (restarting the server in between; which variant
# goes first alternates from round to round), so that a slow spell of this
# small machine falls on both: BENCH_WARMUP (2) s that are not counted (the
# first seconds after a restart are slow, by varying amounts), then
# BENCH_SECONDS (8) s; BENCH_ROUNDS (5) rounds.  It prints the median TPS
# of each variant, the ratio with / without of the medians and the median
# of the rounds' own ratios (the target is >= 0.95), and, to show that the
# counting really ran, the calls entitlock.stats counted in the "with"
# runs per transaction pgbench committed (1.00 when every call is counted;
# 0 without the preload).
#
# On a small machine (2 cores, 8 clients and pgbench on them) the TPS of
# runs of one variant wander by 10-20 %, more than the difference sought;
# so after each lock run it also times, in one session, BENCH_MICRO_CALLS
# (500,000) lock() calls in one statement (the cheapest counted call:
# re-taking a held lock), and prints what counting adds to a call in
# nanoseconds, and what that is of a lock transaction's time.  A
# benchmark, not a test: it asserts nothing.  About 5.5 minutes with the
# defaults.
#
# Always starts its own node (fsync on, synchronous_commit off), even when
# PGHOST is set: it has to restart the server to change
# shared_preload_libraries.

use strict;
use warnings;

use EntitlockBench;
use IPC::Run;

my $secs = bench_env('SECONDS', 8);
my $warmup = bench_env('WARMUP', 2);
my $rounds = bench_env('ROUNDS', 5);
my $clients = bench_env('CLIENTS', 8);
my $micro_calls = bench_env('MICRO_CALLS', 500000);
my @workloads = qw(lock usage-1000 usage-hot);
my %protocol = (lock => 'simple', 'usage-1000' => 'prepared',
	'usage-hot' => 'prepared');
my %kind = (lock => 'lock', 'usage-1000' => 'usage', 'usage-hot' => 'usage');

bench_printf "# BENCH_SECONDS=%s BENCH_WARMUP=%s BENCH_ROUNDS=%s BENCH_CLIENTS=%s bash test/bench/run.sh stats\n",
  $secs, $warmup, $rounds, $clients;

delete $ENV{BENCH_HOST};
my $bench = bench_start('entitlock_bench_stats');
my $node = $bench->{node};

my %file = (
	lock => bench_script($bench, 'lock',
		"\\set i random(1, 1000)\nBEGIN;\nSELECT entitlock.lock('name-' || :i);\nCOMMIT;\n"
	));
for my $w ([ 'usage-1000', 1000 ], [ 'usage-hot', 1 ])
{
	$file{ $w->[0] } = bench_script($bench, $w->[0],
		"\\set i random(1, $w->[1])\nSELECT * FROM entitlock.record_usage_if_under_limit('s-' || :i, 'api', 1, 1000000000000);\n"
	);
}

# The server restarted with or without the preload.  (SET to '' would be
# a list of one empty name, which fails to load.)
sub restart_as
{
	my ($v) = @_;
	$node->safe_psql('postgres',
		$v eq 'with'
		? "ALTER SYSTEM SET shared_preload_libraries = 'entitlock'"
		: 'ALTER SYSTEM RESET shared_preload_libraries');
	$node->restart;
	my $spl = $node->safe_psql('postgres', 'SHOW shared_preload_libraries');
	die "shared_preload_libraries is '$spl' after the restart\n"
	  if $spl ne ($v eq 'with' ? 'entitlock' : '');
}

# Empty the usage counters, vacuum, checkpoint; zero the statistics.
sub reset_all
{
	bench_sql($bench, q{
TRUNCATE entitlock.usage_counter, entitlock.usage_idempotency;
VACUUM;
CHECKPOINT;
SELECT entitlock.stats_reset();});
}

# One pgbench run of W (after a warm-up): (tps, transactions).
sub pgbench_run
{
	my ($w, $t) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run(
		[
			'pgbench', '-n', '-M', $protocol{$w}, '-c', $clients, '-j', 2,
			'-T', $t, '-f', $file{$w},
			'-h', $bench->{host}, '-p', $bench->{port}, $bench->{db}
		],
		'>', \$out, '2>', \$err);
	my ($tps) = $out =~ /^tps = ([0-9.]+) /m;
	my ($processed) =
	  $out =~ /^number of transactions actually processed: (\d+)/m;
	my @errors = grep { /error|aborted/i } split /\n/, "$out\n$err";
	bench_printf "# pgbench failed (%s): %s\n", $w, $errors[0] // 'no tps'
	  if !defined $tps || @errors;
	return ($tps // 0, $processed // 0);
}

# The most counting can add to one call, in one session with nothing else
# running: MICRO_CALLS calls of lock() on the 1,000 names (1,000 labels)
# in one statement, where all but the first 1,000 re-take a lock the
# transaction holds, the cheapest call that is counted.  Nanoseconds per
# call, the fastest of three statements (on an idle CPU noise only ever
# adds time).
sub micro
{
	bench_sql($bench, 'SELECT entitlock.stats_reset()');
	my $q =
	  "SELECT round(extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1e9 / $micro_calls)
		 FROM (SELECT count(entitlock.lock('name-' || (i % 1000 + 1)))
				 FROM generate_series(1, $micro_calls) AS i) AS s;\n";
	my @ns = sort { $a <=> $b } split /\n/, bench_sql($bench, $q x 3);
	return $ns[0];
}

my (%tps, %counted, %micro);
for my $r (1 .. $rounds)
{
	my @order = $r % 2 ? qw(without with) : qw(with without);
	for my $w (@workloads)
	{
		for my $v (@order)
		{
			restart_as($v);
			# the first seconds after a restart are slow, and slow by
			# varying amounts
			pgbench_run($w, $warmup);
			reset_all();
			my ($tps, $processed) = pgbench_run($w, $secs);
			my $calls = bench_sql($bench,
				"SELECT coalesce(sum(calls), 0) FROM entitlock.stats WHERE kind = '$kind{$w}'"
			);
			push @{ $tps{$w}{$v} }, $tps;
			push @{ $counted{$w}{$v} },
			  sprintf('%.2f', $processed > 0 ? $calls / $processed : 0);
			push @{ $micro{$v} }, micro() if $w eq 'lock';
		}
	}
}

bench_printf "\nTPS, median of %d rounds of %d s, %d clients\n", $rounds,
  $secs, $clients;
bench_printf "ratio = with / without, of the medians; paired = median (min-max) of the rounds' own ratios\n";
bench_printf "counted = calls in entitlock.stats per committed transaction (median), with the preload\n";
bench_printf "%-11s %9s %9s %6s %17s %8s  %s\n", qw(workload without with ratio paired counted),
  'all runs (without | with)';
for my $w (@workloads)
{
	my ($without, $with) = @{ $tps{$w} }{qw(without with)};
	my $x = bench_median(@$without);
	my $y = bench_median(@$with);
	my @paired = sort { $a <=> $b } map {
		sprintf('%.3f', $without->[$_] > 0 ? $with->[$_] / $without->[$_] : 0)
	} 0 .. $#$with;
	my $paired = sprintf('%.2f (%.2f-%.2f)',
		$paired[ int($#paired / 2) ],
		$paired[0], $paired[-1]);
	bench_printf "%-11s %9.0f %9.0f %6s %17s %8s  %s | %s\n", $w, $x, $y,
	  bench_ratio($y, $x), $paired, bench_median(@{ $counted{$w}{with} }),
	  join(' ', map { sprintf '%.0f', $_ } @$without),
	  join(' ', map { sprintf '%.0f', $_ } @$with);
}
bench_printf "target: with >= 0.95 x without\n\n";

my $m0 = bench_median(@{ $micro{without} });
my $m1 = bench_median(@{ $micro{with} });
my $t0 = bench_median(@{ $tps{lock}{without} });
chomp(my $cores = `nproc`);
bench_printf "One session, %d lock() calls in one statement (re-taking held locks), ns per call, median of %d (each the fastest of 3):\n",
  $micro_calls, $rounds;
bench_printf "  without %s, with %s (runs: %s | %s)\n", $m0, $m1,
  "@{ $micro{without} }", "@{ $micro{with} }";
bench_printf "  counting adds %d ns per call: %.2f%% of a lock transaction at %d tps on %d cores\n",
  $m1 - $m0, ($m1 - $m0) * $t0 / ($cores * 1e9) * 100, $t0, $cores;
my %seen;
bench_printf "calls counted per transaction without the preload: %s\n",
  join(' ',
	grep { !$seen{$_}++ }
	sort map { @{ $counted{$_}{without} } } @workloads);
