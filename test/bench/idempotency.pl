# test/bench/idempotency.pl: idempotency_begin/complete and first_time
# against the hand-written idempotency table people use instead.
#
#   bash test/bench/run.sh idempotency
#   BENCH_SECONDS=10 BENCH_ROUNDS=5 BENCH_CLIENTS="8" bash test/bench/run.sh idempotency
#
# Each pgbench transaction handles one request: claim its key, and if the
# claim is new insert an order and store the response; otherwise take the
# stored response.  Two workloads: every request new (unique keys), and
# retries (keys drawn from 1,000 already claimed, so nearly all replays).
# Variants, in the same run on the same server, tables emptied and
# checkpointed before each cell:
#   plain      INSERT INTO a keys table ... ON CONFLICT DO NOTHING RETURNING,
#              then UPDATE it with the response, or SELECT the response
#              (the baseline; no fingerprint check, no expiry)
#   entitlock  idempotency_begin, then idempotency_complete when new
#   plain1     the short form by hand: INSERT ... ON CONFLICT DO NOTHING
#   first      entitlock.first_time
# It prints TPS with ratios entitlock/plain and first/plain1.  A benchmark,
# not a test: it asserts nothing; the figures go in doc/performance.md.

use strict;
use warnings;

use EntitlockBench;

my %o = (
	secs => bench_env('SECONDS', 5),
	rounds => bench_env('ROUNDS', 3),
	protocol => bench_env('PROTOCOL', 'prepared'));
my @clients = split ' ', bench_env('CLIENTS', '1 8 32');
my @variants = qw(plain entitlock plain1 first);

my $bench = bench_start('entitlock_bench_idem');
bench_sql($bench, q{
CREATE TABLE plain_idem (key text PRIMARY KEY, fingerprint text,
						 response jsonb,
						 expires_at timestamptz NOT NULL);
CREATE TABLE orders (id bigserial PRIMARY KEY, idem_key text NOT NULL,
					 amount int NOT NULL);
});

# One pgbench script per variant; $k is the SQL expression of the
# request's key.
sub scripts
{
	my ($k) = @_;
	my $fp = q{'amount=' || :amount};
	my $head = "\\set i random(1, 1000000000)\n\\set r random(1, 1000)\n";
	return {
		plain => bench_script($bench, 'plain', $head . qq{\\set amount :r % 50 + 1
BEGIN;
WITH claim AS (INSERT INTO plain_idem VALUES ($k, $fp, NULL, now() + interval '24 hours') ON CONFLICT (key) DO NOTHING RETURNING 1) SELECT count(*) AS is_new FROM claim \\gset
\\if :is_new
INSERT INTO orders (idem_key, amount) VALUES ($k, :amount) RETURNING id \\gset
UPDATE plain_idem SET response = jsonb_build_object('order', :id::bigint) WHERE key = $k;
\\else
SELECT response FROM plain_idem WHERE key = $k;
\\endif
COMMIT;
}),
		entitlock => bench_script($bench, 'entitlock', $head . qq{\\set amount :r % 50 + 1
BEGIN;
SELECT (status = 'new')::int AS is_new, response FROM entitlock.idempotency_begin($k, $fp) \\gset
\\if :is_new
INSERT INTO orders (idem_key, amount) VALUES ($k, :amount) RETURNING id \\gset
SELECT entitlock.idempotency_complete($k, jsonb_build_object('order', :id::bigint));
\\endif
COMMIT;
}),
		plain1 => bench_script($bench, 'plain1', $head
			  . "INSERT INTO plain_idem VALUES ($k, NULL, NULL, now() + interval '24 hours') ON CONFLICT (key) DO NOTHING RETURNING 1;\n"
		),
		first => bench_script($bench, 'first',
			$head . "SELECT entitlock.first_time($k);\n"),
	};
}

# Empty every variant's tables, then claim keys r-1 .. r-1000 in both key
# tables so that the retry workload replays.
sub reset_tables
{
	bench_sql($bench, q{
TRUNCATE plain_idem, orders, entitlock.idempotency_key;
INSERT INTO plain_idem
SELECT 'r-' || r, 'amount=' || (r % 50 + 1), jsonb_build_object('order', r),
	   now() + interval '24 hours'
  FROM generate_series(1, 1000) AS r;
SELECT count(*) FROM generate_series(1, 1000) AS r,
	   entitlock.idempotency_begin('r-' || r, 'amount=' || (r % 50 + 1));
VACUUM ANALYZE;
CHECKPOINT;});
}

bench_printf "TPS (median of %d rounds of %d s), pgbench -M %s\n",
  $o{rounds}, $o{secs}, $o{protocol};
bench_printf "%-8s %-8s %10s %10s %6s %10s %10s %6s\n",
  qw(workload clients plain entitlock ratio plain1 first ratio);
for my $workload (qw(new retry))
{
	# new: unique per transaction (the client, a random number and
	# another); retry: one of the 1,000 claimed keys
	my $f = scripts($workload eq 'new'
		? q{'n-' || :client_id || '-' || :i || '-' || :r}
		: q{'r-' || :r});
	for my $c (@clients)
	{
		my $m = bench_rounds($bench, $c, $f, \@variants, \&reset_tables, %o);
		bench_printf "%-8s %-8s %10.0f %10.0f %6s %10.0f %10.0f %6s\n",
		  $workload, $c, $m->{plain}, $m->{entitlock},
		  bench_ratio($m->{entitlock}, $m->{plain}),
		  $m->{plain1}, $m->{first}, bench_ratio($m->{first}, $m->{plain1});
	}
}
