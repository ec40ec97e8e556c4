# test/bench/locks.pl: what a named lock costs, against the plain-SQL way.
#
#   bash test/bench/run.sh locks
#   BENCH_SECONDS=20 bash test/bench/run.sh locks
#
# Each pgbench transaction locks one of 1,000 names (or one hot name) and
# commits.  Compared in the same run, on the same server:
#   builtin    pg_advisory_xact_lock(hashtextextended(name, 0))
#   entitlock  entitlock.lock(name)
#   entity     entitlock.lock_entity(realm, entity)  (two locks)
#   timed      entitlock.lock(name, '1 s')
# and prints TPS and the ratio to the builtin.  A benchmark, not a test:
# it asserts nothing; the figures go in doc/performance.md.

use strict;
use warnings;

use EntitlockBench;

my $secs = bench_env('SECONDS', 10);
my @clients = split ' ', bench_env('CLIENTS', '1 8 32');

my $bench = bench_start('entitlock_bench_locks');
my %call = (
	builtin => q{pg_advisory_xact_lock(hashtextextended('name-' || :i, 0))},
	entitlock => q{entitlock.lock('name-' || :i)},
	entity => q{entitlock.lock_entity('realm', 'entity-' || :i)},
	timed => q{entitlock.lock('name-' || :i, '1 s')});

bench_printf "%-6s %-8s %-10s %10s %8s\n", qw(keys clients variant tps ratio);
for my $keys (1000, 1)
{
	my %f = map {
		($_ => bench_script($bench, "$_-$keys",
			"\\set i random(1, $keys)\nBEGIN;\nSELECT $call{$_};\nCOMMIT;\n"))
	} keys %call;
	for my $c (@clients)
	{
		my $base = bench_tps($bench, $f{builtin}, $c, $secs);
		bench_printf "%-6s %-8s %-10s %10.0f %8s\n", $keys, $c, 'builtin', $base,
		  '1.00';
		for my $v (qw(entitlock entity timed))
		{
			my $t = bench_tps($bench, $f{$v}, $c, $secs);
			bench_printf "%-6s %-8s %-10s %10.0f %8s\n", $keys, $c, $v, $t,
			  bench_ratio($t, $base);
		}
	}
}
