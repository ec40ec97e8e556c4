# test/bench/builds.pl: the installed build of entitlock against another
# build of the same version, on the same workloads, in one run.
#
#   ENTITLOCK_BASE_SO=/path/to/other/entitlock.so bash test/bench/run.sh builds
#   BENCH_SECONDS=8 BENCH_WARMUP=2 BENCH_ROUNDS=5 BENCH_CLIENTS=8 ...
#
# For measuring what a change costs: build the commit before it somewhere
# else (git archive BASE | tar -x -C DIR; make -C DIR), and point
# ENTITLOCK_BASE_SO at that entitlock.so (readable by the server's OS
# user).  Both builds must have the same SQL objects (the same extension
# version).  One node of its own (fsync on, synchronous_commit off) gets
# two databases with the extension: in "this" its functions load the
# installed library; in "base" they are pointed at ENTITLOCK_BASE_SO
# (pg_proc.probin, as a superuser may), so each backend runs one build or
# the other.  Workloads, BENCH_CLIENTS (8) pgbench clients:
#   lock        BEGIN; entitlock.lock('name-' || random(1, 1000)); COMMIT
#               (pgbench -M simple, as locks.pl)
#   entity      BEGIN; entitlock.lock_entity('realm', 'entity-' || random(1, 1000)); COMMIT
#   usage       record_usage_if_under_limit('s-' || random(1, 1000), 'api',
#               1, <a limit never reached>) (pgbench -M prepared, as
#               usage.pl)
#   record      record_usage('s-' || random(1, 1000), 'api', 1) (prepared)
# Usage counters are emptied, vacuumed and checkpointed before each run.
# Each round runs every workload on both builds, one right after the other
# (which goes first alternates from round to round): BENCH_WARMUP (2) s not
# counted, then BENCH_SECONDS (8) s; BENCH_ROUNDS (5) rounds.  It prints
# the median TPS of each build, the ratio this / base of the medians and
# the median (and range) of the rounds' own ratios.
#
# TPS on a small shared machine wanders by more than a lock's cost, so each
# round also times, in one session, BENCH_MICRO_CALLS (20,000) transactions
# of one call each of every workload (a procedure that calls and COMMITs
# in a loop: no client round trips), and prints the backend's CPU
# microseconds per transaction, the fastest of three (noise only ever adds
# time), median of the rounds.  Micro only, "bulk": the same number of
# record_usage calls on 5,000 meters in one transaction (past
# entitlock.lock_escalation_threshold, where that exists).  BENCH_MODE
# ("tps micro") picks the parts.  A benchmark, not a test: it asserts
# nothing.  About 8 minutes with the defaults.

use strict;
use warnings;

use Cwd ();
use EntitlockBench;
use IPC::Run;

my $secs = bench_env('SECONDS', 8);
my $warmup = bench_env('WARMUP', 2);
my $rounds = bench_env('ROUNDS', 5);
my $clients = bench_env('CLIENTS', 8);
my @workloads = split ' ', bench_env('WORKLOADS', 'lock entity usage record');
my $mode = bench_env('MODE', 'tps micro');
my %mode = map { ($_ => 1) } split ' ', $mode;
my @micro_workloads = split ' ',
  bench_env('MICRO_WORKLOADS', "@workloads bulk");
my $micro_calls = bench_env('MICRO_CALLS', 20000);
my $base_so = $ENV{ENTITLOCK_BASE_SO} // '';

die "set ENTITLOCK_BASE_SO to the entitlock.so of the build to compare with\n"
  unless $base_so ne '' && -r $base_so;
$base_so = Cwd::abs_path($base_so);

bench_printf "# ENTITLOCK_BASE_SO=%s BENCH_MODE=\"%s\" BENCH_SECONDS=%s BENCH_WARMUP=%s BENCH_ROUNDS=%s BENCH_CLIENTS=%s BENCH_MICRO_CALLS=%s bash test/bench/run.sh builds\n",
  $base_so, $mode, $secs, $warmup, $rounds, $clients,
  $micro_calls;

delete $ENV{BENCH_HOST};
my %b = (this => bench_start('entitlock_bench_this'));
$b{base} = { %{ $b{this} }, db => 'entitlock_bench_base' };
bench_sql({ %{ $b{this} }, db => 'postgres' },
	'CREATE DATABASE entitlock_bench_base');
bench_sql($b{base}, 'CREATE EXTENSION entitlock');
bench_sql($b{base},
	"UPDATE pg_catalog.pg_proc SET probin = '$base_so' WHERE probin = '\$libdir/entitlock'"
);

# Each database really runs its own library; and has the micro loop.
for my $v (qw(this base))
{
	bench_sql($b{$v}, "SELECT entitlock.key('x')");
	bench_sql($b{$v}, q{
CREATE PROCEDURE bench_loop(w text, n int) LANGUAGE plpgsql AS $$
BEGIN
	FOR i IN 1 .. n LOOP
		CASE w
		WHEN 'lock' THEN
			PERFORM entitlock.lock('name-' || i % 1000);
		WHEN 'entity' THEN
			PERFORM entitlock.lock_entity('realm', 'entity-' || i % 1000);
		WHEN 'usage' THEN
			PERFORM entitlock.record_usage_if_under_limit('s-' || i % 1000, 'api', 1, 1000000000000);
		WHEN 'record' THEN
			PERFORM entitlock.record_usage('s-' || i % 1000, 'api', 1);
		WHEN 'bulk' THEN
			PERFORM entitlock.record_usage('b-' || i % 5000, 'api', 1);
		END CASE;
		IF w <> 'bulk' THEN
			COMMIT;
		END IF;
	END LOOP;
END
$$;});
}
die "entitlock_bench_base does not load $base_so\n"
  unless bench_sql($b{base}, q{SELECT DISTINCT probin FROM pg_proc
	WHERE pronamespace = 'entitlock'::regnamespace AND prolang = 13}) eq
  $base_so;

my $i = "\\set i random(1, 1000)\n";
my %file = (
	lock => bench_script($b{this}, 'lock',
		$i . "BEGIN;\nSELECT entitlock.lock('name-' || :i);\nCOMMIT;\n"),
	entity => bench_script($b{this}, 'entity',
		$i
		  . "BEGIN;\nSELECT entitlock.lock_entity('realm', 'entity-' || :i);\nCOMMIT;\n"
	),
	usage => bench_script($b{this}, 'usage',
		$i
		  . "SELECT * FROM entitlock.record_usage_if_under_limit('s-' || :i, 'api', 1, 1000000000000);\n"
	),
	record => bench_script($b{this}, 'record',
		$i . "SELECT entitlock.record_usage('s-' || :i, 'api', 1);\n"));
my %protocol = (lock => 'simple', entity => 'simple');

# Empty the usage counters, vacuum, checkpoint.
sub reset_db
{
	bench_sql($_[0], q{
TRUNCATE entitlock.usage_counter, entitlock.usage_idempotency;
VACUUM;
CHECKPOINT;});
}

# One pgbench run of W on build V (after a warm-up): its TPS.
sub pgbench_run
{
	my ($w, $v) = @_;
	my $tps;
	reset_db($b{$v});
	for my $t ($warmup, $secs)
	{
		my ($out, $err) = ('', '');
		IPC::Run::run(
			[
				'pgbench', '-n', '-M', $protocol{$w} // 'prepared',
				'-c', $clients, '-j', 2, '-T', $t, '-f', $file{$w},
				'-h', $b{$v}{host}, '-p', $b{$v}{port}, $b{$v}{db}
			],
			'>', \$out, '2>', \$err);
		($tps) = $out =~ /^tps = ([0-9.]+) /m;
		my @errors = grep { /error|aborted/i } split /\n/, "$out\n$err";
		bench_printf "# pgbench failed (%s, %s): %s\n", $w, $v,
		  $errors[0] // 'no tps'
		  if $t == $secs && (!defined $tps || @errors);
	}
	return $tps // 0;
}

# The backend's CPU microseconds per transaction of MICRO_CALLS one-call
# transactions of W in one session on build V, the fastest of three.  CPU
# time (Linux's /proc/self/schedstat, read by the backend itself) leaves
# out the time the backend waited for a CPU, which on a busy machine is
# most of the noise.
sub micro
{
	my ($w, $v) = @_;
	my $cpu_ns =
	  q{split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint};
	my @us;
	for (1 .. 3)
	{
		reset_db($b{$v});
		push @us, bench_sql($b{$v}, qq{
CALL bench_loop('$w', 1000);
SELECT $cpu_ns AS t0 \\gset
CALL bench_loop('$w', $micro_calls);
SELECT round(($cpu_ns - :t0) / 1e3 / $micro_calls, 2);});
	}
	return (sort { $a <=> $b } @us)[0];
}

my (%tps, %micro);
my %seen;
my @all = grep { !$seen{$_}++ } @workloads, @micro_workloads;
my %is_tps = map { ($_ => 1) } @workloads;
my %is_micro = map { ($_ => 1) } @micro_workloads;
for my $r (1 .. $rounds)
{
	for my $w (@all)
	{
		for my $v ($r % 2 ? qw(base this) : qw(this base))
		{
			push @{ $tps{$w}{$v} }, pgbench_run($w, $v)
			  if $mode{tps} && $is_tps{$w};
			push @{ $micro{$w}{$v} }, micro($w, $v)
			  if $mode{micro} && $is_micro{$w};
		}
	}
}

if ($mode{micro})
{
	bench_printf "\nOne session, %d transactions of one call, backend CPU us per transaction (fastest of 3), median of %d rounds\n",
	  $micro_calls, $rounds;
	bench_printf "ratio = this / base (above 1: this build is slower)\n";
	bench_printf "%-8s %9s %9s %6s  %s\n", qw(workload base this ratio),
	  'all rounds (base | this)';
	for my $w (@micro_workloads)
	{
		my ($x, $y) = map { bench_median(@{ $micro{$w}{$_} }) } qw(base this);
		bench_printf "%-8s %9s %9s %6s  %s | %s\n", $w, $x, $y,
		  bench_ratio($y, $x), "@{ $micro{$w}{base} }", "@{ $micro{$w}{this} }";
	}
}
if ($mode{tps})
{
	bench_printf "\nTPS, median of %d rounds of %d s, %d clients\n", $rounds,
	  $secs, $clients;
	bench_printf "ratio = this / base, of the medians; paired = median (min-max) of the rounds' own ratios\n";
	bench_printf "%-8s %9s %9s %6s %17s  %s\n", qw(workload base this ratio paired),
	  'all runs (base | this)';
	for my $w (@workloads)
	{
		my ($base, $this) = @{ $tps{$w} }{qw(base this)};
		my @paired = sort { $a <=> $b } map {
			sprintf('%.3f', $base->[$_] > 0 ? $this->[$_] / $base->[$_] : 0)
		} 0 .. $#$this;
		bench_printf "%-8s %9.0f %9.0f %6s %17s  %s | %s\n", $w,
		  bench_median(@$base), bench_median(@$this),
		  bench_ratio(bench_median(@$this), bench_median(@$base)),
		  sprintf('%.2f (%.2f-%.2f)',
			$paired[ int($#paired / 2) ], $paired[0], $paired[-1]),
		  join(' ', map { sprintf '%.0f', $_ } @$base),
		  join(' ', map { sprintf '%.0f', $_ } @$this);
	}
}
