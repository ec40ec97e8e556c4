# test/bench/leases.pl: lease_acquire/renew/release against the
# hand-written lease table people use instead.
#
#   bash test/bench/run.sh leases
#   BENCH_SECONDS=10 BENCH_ROUNDS=5 BENCH_CLIENTS="8" bash test/bench/run.sh leases
#
# Each pgbench transaction is one worker's turn, each call in autocommit
# as a worker makes them: acquire a lease for 30 s, renew it, release it.
# An acquisition that finds the lease held skips the rest.  Two workloads:
# 1,000 names (acquisitions rarely meet), and one hot name that every
# client wants.  Variants, in the same run on the same server, tables
# emptied and checkpointed before each cell:
#   plain      a lease table with a primary key on name: INSERT ... ON
#              CONFLICT (name) DO UPDATE ... WHERE expired RETURNING token,
#              fencing from a sequence; renew and release check the token
#              (the correct hand-written version, with no view)
#   entitlock  lease_acquire, lease_renew, lease_release
# It prints TPS and the ratio entitlock/plain.  A benchmark, not a test:
# it asserts nothing; the figures go in doc/performance.md.

use strict;
use warnings;

use EntitlockBench;

my %o = (
	secs => bench_env('SECONDS', 5),
	rounds => bench_env('ROUNDS', 3),
	protocol => bench_env('PROTOCOL', 'prepared'));
my @clients = split ' ', bench_env('CLIENTS', '1 8 32');
my @variants = qw(plain entitlock);
my $nil = '00000000-0000-0000-0000-000000000000';

my $bench = bench_start('entitlock_bench_lease');
bench_sql($bench, q{
CREATE TABLE plain_lease (name text PRIMARY KEY, token uuid NOT NULL,
						  holder text, fencing bigint NOT NULL,
						  acquired_at timestamptz NOT NULL,
						  expires_at timestamptz NOT NULL);
CREATE SEQUENCE plain_fencing;
});

sub scripts
{
	my ($names) = @_;
	return {
		plain => bench_script($bench, 'plain', qq{\\set n random(1, $names)
WITH a AS (
	INSERT INTO plain_lease AS l
		(name, token, fencing, holder, acquired_at, expires_at)
	VALUES ('lease-' || :n, gen_random_uuid(), nextval('plain_fencing'),
			'worker-' || :client_id, clock_timestamp(),
			clock_timestamp() + interval '30 seconds')
	ON CONFLICT (name) DO UPDATE
		SET token = excluded.token, holder = excluded.holder,
			fencing = excluded.fencing, acquired_at = excluded.acquired_at,
			expires_at = excluded.expires_at
		WHERE l.expires_at <= clock_timestamp()
	RETURNING token)
SELECT count(*) AS got, coalesce(max(token::text), '$nil') AS token FROM a \\gset
\\if :got
UPDATE plain_lease SET expires_at = clock_timestamp() + interval '30 seconds'
 WHERE name = 'lease-' || :n AND token = :token::uuid;
DELETE FROM plain_lease WHERE name = 'lease-' || :n AND token = :token::uuid;
\\endif
}),
		entitlock => bench_script($bench, 'entitlock', qq{\\set n random(1, $names)
SELECT count(*) AS got, coalesce(max(token::text), '$nil') AS token
  FROM entitlock.lease_acquire('lease-' || :n, '30 seconds', 'worker-' || :client_id) \\gset
\\if :got
SELECT entitlock.lease_renew('lease-' || :n, :token::uuid, '30 seconds');
SELECT entitlock.lease_release('lease-' || :n, :token::uuid);
\\endif
}),
	};
}

sub reset_tables
{
	bench_sql($bench, q{
TRUNCATE plain_lease, entitlock.lease_record;
VACUUM ANALYZE;
CHECKPOINT;});
}

bench_printf "TPS (median of %d rounds of %d s), pgbench -M %s\n",
  $o{rounds}, $o{secs}, $o{protocol};
bench_printf "%-8s %-8s %10s %10s %6s\n", qw(names clients plain entitlock ratio);
for my $names (1000, 1)
{
	my $f = scripts($names);
	for my $c (@clients)
	{
		my $m = bench_rounds($bench, $c, $f, \@variants, \&reset_tables, %o);
		bench_printf "%-8s %-8s %10.0f %10.0f %6s\n", $names, $c,
		  $m->{plain}, $m->{entitlock},
		  bench_ratio($m->{entitlock}, $m->{plain});
	}
}
