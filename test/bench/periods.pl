# test/bench/periods.pl: usage calls on an anchored billing period (1.2)
# against the same calls on a calendar period.
#
#   bash test/bench/run.sh periods
#   BENCH_SECONDS=10 BENCH_ROUNDS=5 BENCH_CLIENTS="8" bash test/bench/run.sh periods
#   BENCH_PROTOCOL=simple bash test/bench/run.sh periods   (pgbench -M; default prepared)
#
# Each pgbench transaction is one call for one of 1,000 subjects, against a
# limit it never reaches.  Variants, all in the same run on the same server,
# taking turns round by round, counters reset (every meter given a row,
# so that every variant updates a row rather than creating one), vacuumed
# and checkpointed before each run:
#   calendar    record_usage_if_under_limit(..., 'month') (the baseline)
#   anchored    the same on 'month@2026-01-31 10:00:00+00' (the canonical
#               spelling)
#   offset      the same period spelled '1 month@2026-01-31 05:00-05'
#   perday      each subject anchored on its own day of the month
#               ('month@2026-01-<1..28> 10:00+00'): 28 periods, so that
#               calls in a row name different ones (periods.c remembers
#               the periods it read lately)
#   read_cal    usage(..., 'month'), the baseline of the reads
#   read_anch   usage(..., 'month@2026-01-31 10:00:00+00')
# It prints TPS with the ratio to its baseline (calendar for the recording
# calls, read_cal for the reads).  On a busy 2-core machine these move by
# more than the difference measured, so a second table times the calls
# themselves in one backend (a PL/pgSQL loop of calls, the periods built
# before the clock starts; each loop after a reset, the variants taking
# turns in an order that rotates round by round, as a loop's updates
# leave dead rows that slow whichever runs next; medians of rounds):
# microseconds per call and the ratio of calls per second to 'month'.
# A benchmark, not a test: it asserts nothing.  The target of issue 23 is
# a ratio of at least 0.95.

use strict;
use warnings;

use EntitlockBench;

my %o = (
	secs => bench_env('SECONDS', 5),
	rounds => bench_env('ROUNDS', 3),
	protocol => bench_env('PROTOCOL', 'prepared'));
my @clients = split ' ', bench_env('CLIENTS', '1 8');
my @variants = qw(calendar anchored offset perday read_cal read_anch);
my $keys = 1000;

my $bench = bench_start('entitlock_bench_periods');
bench_sql($bench, q{
-- Microseconds per call of what ('usage' or 'record') over n calls on as
-- many subjects as periods has elements, subject i naming periods[i].
CREATE FUNCTION period_loop(what text, periods text[], n int)
RETURNS double precision LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz := clock_timestamp();
	k int := array_length(periods, 1);
	x bigint;
BEGIN
	FOR i IN 1 .. n LOOP
		IF what = 'usage' THEN
			x := entitlock.usage('s-' || (i % k + 1), 'api', periods[i % k + 1]);
		ELSE
			x := entitlock.record_usage('s-' || (i % k + 1), 'api', 1, periods[i % k + 1]);
		END IF;
	END LOOP;
	RETURN extract(epoch FROM clock_timestamp() - t0) * 1e6 / n;
END
$$;
});

# The period each variant names, as an SQL expression of pgbench's :i (or
# of i in the loops).
my %period = (
	calendar => q{'month'},
	anchored => q{'month@2026-01-31 10:00:00+00'},
	offset => q{'1 month@2026-01-31 05:00-05'},
	perday => q{'month@2026-01-' || (1 + :i % 28) || ' 10:00+00'});

my $s = q{'s-' || :i};
my $head = "\\set i random(1, $keys)\n";
my %file;
$file{$_} = bench_script($bench, $_,
	$head
	  . "SELECT * FROM entitlock.record_usage_if_under_limit($s, 'api', 1, 1000000000000, $period{$_});\n"
) for qw(calendar anchored offset perday);
$file{read_cal} = bench_script($bench, 'read_cal',
	$head . "SELECT entitlock.usage($s, 'api', $period{calendar});\n");
$file{read_anch} = bench_script($bench, 'read_anch',
	$head . "SELECT entitlock.usage($s, 'api', $period{anchored});\n");

# Empty the counters, then give every meter a row, so that every variant
# updates a row rather than creating one.
sub reset_counters
{
	bench_sql($bench, qq{
TRUNCATE entitlock.usage_counter, entitlock.usage_idempotency;
SELECT count(entitlock.record_usage('s-' || i, 'api', 1, p))
  FROM generate_series(1, $keys) i,
	   unnest(ARRAY['month', 'month\@2026-01-31 10:00:00+00',
					'month\@2026-01-' || (1 + i % 28) || ' 10:00+00']) p;
VACUUM;
CHECKPOINT;});
}

bench_printf "TPS (median of %d rounds of %d s), %d subjects, pgbench -M %s\n",
  $o{rounds}, $o{secs}, $keys, $o{protocol};
bench_printf "ratio = variant / calendar (recording) or / read_cal (reads)\n";
bench_printf "%-8s %-10s %10s %8s\n", qw(clients variant tps ratio);
for my $c (@clients)
{
	my $m = bench_rounds($bench, $c, \%file, \@variants, \&reset_counters, %o);
	for my $v (@variants)
	{
		my $base = $v =~ /^read_/ ? 'read_cal' : 'calendar';
		bench_printf "%-8s %-10s %10.0f %8s\n", $c, $v, $m->{$v},
		  bench_ratio($m->{$v}, $m->{$base});
	}
}

# The calls alone, in one backend.
my @loop_variants = qw(calendar anchored offset perday);
bench_printf "\nMicroseconds per call in one backend (median of %d rounds); ratio = calls/s against 'month'\n",
  $o{rounds};
bench_printf "%-8s %-10s %10s %8s\n", qw(call variant us ratio);
for my $what (qw(usage record))
{
	my $n = $what eq 'usage' ? 200000 : 20000;
	my %us;
	for my $r (1 .. $o{rounds})
	{
		for my $i (0 .. $#loop_variants)
		{
			my $v = $loop_variants[ ($i + $r) % @loop_variants ];
			(my $p = $period{$v}) =~ s/:i/i/g;
			reset_counters();
			push @{ $us{$v} }, bench_sql($bench,
				"SELECT period_loop('$what', ARRAY(SELECT $p FROM generate_series(0, $keys - 1) i), $n)"
			);
		}
	}
	my $base = bench_median(@{ $us{calendar} });
	for my $v (@loop_variants)
	{
		my $x = bench_median(@{ $us{$v} });
		bench_printf "%-8s %-10s %10.2f %8s\n", $what, $v, $x,
		  bench_ratio($base, $x);
	}
}
