# test/bench/quota.pl: the 1.1 quota engine against what people write by
# hand, in one run on one server.
#
#   bash test/bench/run.sh quota
#   BENCH_SECONDS=10 BENCH_ROUNDS=5 bash test/bench/run.sh quota
#   BENCH_SECTIONS="plpgsql rate" bash test/bench/run.sh quota
#
# Sections (BENCH_SECTIONS, default all three):
#   plpgsql  record_usage_if_under_limit with an idempotency key against a
#            careful PL/pgSQL implementation of the same contract
#            (pg_advisory_xact_lock on the pair, an idempotency table looked
#            up first, an upsert of the counter, the key stored with its
#            decision): 1,000 meters, a new key per call, 8 clients.
#   limits   two limits (per user per day, per organisation per month) in
#            one record_usage_if_under_limits call, against two
#            record_usage_if_under_limit calls in one transaction: 1,000
#            users in 10 organisations, 8 clients.
#   rate     rate_limit against a one-statement GCRA in SQL (INSERT ... ON
#            CONFLICT DO UPDATE SET tat = greatest(tat, clock_timestamp())
#            + interval WHERE it fits), on 1,000 names and on one hot name,
#            8 and 32 clients.  The rate is high enough that every call is
#            allowed, so both do the same work.
# Each cell runs the variants in turns, ROUNDS times, tables emptied and
# checkpointed before each run, and prints median TPS and the ratio to the
# baseline.  A benchmark, not a test: it asserts nothing; the figures go in
# README.md.

use strict;
use warnings;

use EntitlockBench;

my %o = (
	secs => bench_env('SECONDS', 5),
	rounds => bench_env('ROUNDS', 3),
	protocol => bench_env('PROTOCOL', 'prepared'));
my @sections = split ' ', bench_env('SECTIONS', 'plpgsql limits rate');

my $bench = bench_start('entitlock_bench_quota');
bench_sql($bench, q{
-- SPEC section 3 in PL/pgSQL, written with care: the pair's advisory lock
-- before anything is read, the key looked up under it, one counter row per
-- meter (an upsert, not a ledger), the key stored with its decision.
CREATE TABLE pl_counter (subject text, feature text, used bigint NOT NULL,
						 PRIMARY KEY (subject, feature));
CREATE TABLE pl_idempotency (subject text, feature text, key text,
							 amount bigint NOT NULL, allowed boolean NOT NULL,
							 used bigint NOT NULL,
							 PRIMARY KEY (subject, feature, key));
CREATE FUNCTION pl_record(s text, f text, amt bigint, lim bigint, k text,
						  OUT allowed boolean, OUT used bigint)
LANGUAGE plpgsql AS $$
DECLARE
	prior pl_idempotency;
BEGIN
	PERFORM pg_advisory_xact_lock(hashtextextended(s || '/' || f, 0));
	IF k IS NOT NULL THEN
		SELECT * INTO prior FROM pl_idempotency i
		 WHERE i.subject = s AND i.feature = f AND i.key = k;
		IF FOUND THEN
			allowed := prior.allowed;
			used := prior.used;
			RETURN;
		END IF;
	END IF;
	INSERT INTO pl_counter AS c (subject, feature, used) VALUES (s, f, amt)
	ON CONFLICT (subject, feature) DO UPDATE SET used = c.used + amt
	 WHERE c.used + amt <= lim
	RETURNING c.used INTO used;
	allowed := FOUND;
	IF NOT allowed THEN
		SELECT c.used INTO used FROM pl_counter c
		 WHERE c.subject = s AND c.feature = f;
	END IF;
	IF k IS NOT NULL THEN
		INSERT INTO pl_idempotency VALUES (s, f, k, amt, allowed, used);
	END IF;
END
$$;

-- The one-statement GCRA: one row per name holding its theoretical
-- arrival time.
CREATE TABLE sql_gcra (name text PRIMARY KEY, tat timestamptz NOT NULL);
});

# Empty every variant's tables.
sub reset_tables
{
	bench_sql($bench, q{
TRUNCATE pl_counter, pl_idempotency, sql_gcra, entitlock.usage_counter,
		 entitlock.usage_idempotency, entitlock.usage_limits_idempotency,
		 entitlock.rate_limit_state;
VACUUM;
CHECKPOINT;});
}

# cell TITLE, CLIENTS, [VARIANT => SCRIPT]...: the variants' median TPS,
# each with its ratio to the first (the baseline).
sub cell
{
	my ($title, $c, @pairs) = @_;
	my (@variants, %f);
	while (my ($v, $text) = splice @pairs, 0, 2)
	{
		push @variants, $v;
		$f{$v} = bench_script($bench, $v, $text);
	}
	my $m = bench_rounds($bench, $c, \%f, \@variants, \&reset_tables, %o);
	bench_printf "%-26s %-8s %-16s %10.0f %8s\n", $title, $c, $_, $m->{$_},
	  bench_ratio($m->{$_}, $m->{ $variants[0] })
	  for @variants;
}

bench_printf "TPS (median of %d rounds of %d s), pgbench -M %s; ratio = variant / baseline (the first of each cell)\n",
  $o{rounds}, $o{secs}, $o{protocol};
bench_printf "%-26s %-8s %-16s %10s %8s\n", qw(cell clients variant tps ratio);

my $key = q{'k-' || :client_id || '-' || :r};
for my $section (@sections)
{
	if ($section eq 'plpgsql')
	{
		my $head = "\\set i random(1, 1000)\n\\set r random(1, 1000000000000)\n";
		cell('keyed, 1000 meters', 8,
			plpgsql => $head
			  . "SELECT * FROM pl_record('s-' || :i, 'api', 1, 1000000000000, $key);\n",
			entitlock => $head
			  . "SELECT * FROM entitlock.record_usage_if_under_limit('s-' || :i, 'api', 1, 1000000000000, 'lifetime', $key);\n"
		);
	}
	elsif ($section eq 'limits')
	{
		cell('two limits', 8,
			two_calls => "\\set u random(1, 1000)\nBEGIN;\n"
			  . "SELECT * FROM entitlock.record_usage_if_under_limit('user:' || :u, 'api', 1, 1000000000000, 'day');\n"
			  . "SELECT * FROM entitlock.record_usage_if_under_limit('org:' || :u % 10, 'api', 1, 1000000000000, 'month');\n"
			  . "COMMIT;\n",
			one_call => "\\set u random(1, 1000)\n"
			  . "SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[entitlock.usage_limit('user:' || :u, 'api', 1000000000000, 'day'), entitlock.usage_limit('org:' || :u % 10, 'api', 1000000000000, 'month')]);\n"
		);
	}
	elsif ($section eq 'rate')
	{
		for my $names (1000, 1)
		{
			# a million a second (one unit per microsecond) in bursts of
			# ten million: every call is allowed
			for my $c (8, 32)
			{
				cell("rate limit, $names names", $c,
					sql => "\\set i random(1, $names)\n"
					  . "INSERT INTO sql_gcra AS g (name, tat) VALUES ('n-' || :i, clock_timestamp() + interval '1 microsecond') ON CONFLICT (name) DO UPDATE SET tat = greatest(g.tat, clock_timestamp()) + interval '1 microsecond' WHERE greatest(g.tat, clock_timestamp()) + interval '1 microsecond' - clock_timestamp() <= interval '10 s' RETURNING tat;\n",
					rate_limit => "\\set i random(1, $names)\n"
					  . "SELECT * FROM entitlock.rate_limit('n-' || :i, 1000000, '1 second', 10000000);\n"
				);
			}
		}
	}
	else
	{
		die "unknown section $section\n";
	}
}
