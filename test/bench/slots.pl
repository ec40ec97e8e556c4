# test/bench/slots.pl: what a semaphore slot costs, against the SQL a user
# writes today, and against a plain named lock.
#
#   bash test/bench/run.sh slots
#   BENCH_SECONDS=10 BENCH_ROUNDS=5 BENCH_CLIENTS="8" bash test/bench/run.sh slots
#   BENCH_HOLD_MS=5 bash test/bench/run.sh slots   (hold each slot 5 ms)
#
# Each pgbench transaction takes a slot of one of 100 names (slots rarely
# meet), or of one hot name every client wants, with 3 slots, and
# commits; with BENCH_HOLD_MS it also holds it that long (pg_sleep; 0 by
# default: pure overhead).  Variants, in the same run on the same server,
# taking turns within each round:
#   loop       the hand-written semaphore: a PL/pgSQL function that tries
#              pg_try_advisory_xact_lock on N names name:1..name:N and,
#              when all are taken, waits with pg_advisory_xact_lock on a
#              random one of them (no queue, no fairness)
#   slot       entitlock.lock_slot(name, 3)
#   lock       entitlock.lock(name): a mutex, one holder at a time (the
#              cost of the simplest lock, for scale)
# It prints the median TPS of BENCH_ROUNDS rounds and the ratios slot/loop
# and slot/lock.  A benchmark, not a test: it asserts nothing.

use strict;
use warnings;

use EntitlockBench;

my %o = (
	secs => bench_env('SECONDS', 5),
	rounds => bench_env('ROUNDS', 3),
	protocol => bench_env('PROTOCOL', 'prepared'));
my @clients = split ' ', bench_env('CLIENTS', '1 8 32');
my $hold_ms = bench_env('HOLD_MS', 0);
my $slots = 3;
my @variants = qw(loop slot lock);

my $bench = bench_start('entitlock_bench_slots');
bench_sql($bench, q{
CREATE FUNCTION hand_slot(name text, slots int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
	i int;
BEGIN
	FOR i IN 1 .. slots LOOP
		IF pg_try_advisory_xact_lock(hashtextextended(name || ':' || i, 0)) THEN
			RETURN i;
		END IF;
	END LOOP;
	i := 1 + floor(random() * slots)::int;
	PERFORM pg_advisory_xact_lock(hashtextextended(name || ':' || i, 0));
	RETURN i;
END
$$;
});

# One pgbench script per variant, for NAMES names.
sub scripts
{
	my ($names) = @_;
	my $hold = $hold_ms > 0 ? "SELECT pg_sleep($hold_ms / 1000.0);\n" : '';
	my $n = q{'sem-' || :n};
	my %call = (
		loop => "hand_slot($n, $slots)",
		slot => "entitlock.lock_slot($n, $slots)",
		lock => "entitlock.lock($n)");
	return {
		map {
			(   $_ => bench_script($bench, $_,
					"\\set n random(1, $names)\nBEGIN;\nSELECT $call{$_};\n${hold}COMMIT;\n"
				))
		} @variants
	};
}

bench_printf "TPS (median of %d rounds of %d s), pgbench -M %s, %d slots, hold %d ms\n",
  $o{rounds}, $o{secs}, $o{protocol}, $slots, $hold_ms;
bench_printf "%-6s %-8s %10s %10s %10s %10s %10s\n", qw(names clients loop slot lock
  slot/loop slot/lock);
for my $names (100, 1)
{
	my $f = scripts($names);
	for my $c (@clients)
	{
		my $m = bench_rounds($bench, $c, $f, \@variants, undef, %o);
		bench_printf "%-6s %-8s %10.0f %10.0f %10.0f %10s %10s\n", $names, $c,
		  @{$m}{@variants}, bench_ratio($m->{slot}, $m->{loop}),
		  bench_ratio($m->{slot}, $m->{lock});
	}
}
