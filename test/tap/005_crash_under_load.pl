# test/tap/005_crash_under_load.pl: crashes in the middle of a mixed load.
#
# pgbench clients run, in rounds of 3 s, each entitlock call with the row
# that records it in the same transaction:
#   - record_usage_if_under_limit on one hot meter whose limit is reached
#     in the first seconds, and refunds (so decisions go both ways all
#     along), with a ledger row;
#   - idempotency_begin/complete around a "payment" row, keys from a pool
#     of 300 per round, one transaction in ten rolled back; first_time
#     around a "job" row;
#   - entitlock.lock around a read-modify-write of a counter, with a row
#     per increment;
#   - leases on 3 names with ttls of 50-250 ms, each acquisition written to
#     a history table, half of them released.
# Twice, the server stops with "immediate" in the middle of a round (no
# shutdown checkpoint: crash recovery) and starts again; the round after
# a crash keeps the key pool, so the keys in flight at the crash are
# retried.
#
# Right after each restart, with a statement_timeout of 2 s, nothing is
# left behind: the hot names are free (try_lock), no advisory lock is
# held, a usage call, the pool's payment and job keys (each replays if and
# only if its payment committed) and the counter answer at once, and once
# the ttls have passed every lease name can be taken.
#
# At the end: usage equals the ledger, within the limit, with no call
# denied under it; each key paid once, its claim holding that payment,
# each replay handed it; each job ran once; the counter equals its
# increments; no name has two lease rows, no two leases of a name
# overlap, and every acquisition after a crash has a higher fencing number
# than every one before it (a number handed out twice fails already, as
# an error pgbench reports: history's primary key is the fencing number).
# Nothing crashed on its own (no PANIC, assertion or "terminated by
# signal" in the log).
#
# Backend kills and cancellations under the same load are
# 050_faults.pl.
#
# Run with: bash test/tap.sh test/tap/005_crash_under_load.pl

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $LIMIT = 100000;
my $HEADROOM = 1500;
my $KEYS = 300;
my $ROUND = 3;

my $node = PostgreSQL::Test::Cluster->new('main');
$node->init;
$node->append_conf('postgresql.conf', "max_connections = 50\nlog_statement = none");
$node->start;

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(qq{
CREATE EXTENSION entitlock;
CREATE TABLE usage_ledger (amount bigint NOT NULL, allowed boolean NOT NULL,
						   used bigint NOT NULL);
CREATE TABLE payments (id bigserial PRIMARY KEY, k bigint NOT NULL);
CREATE INDEX ON payments (k);
CREATE TABLE replays (k bigint NOT NULL, payment bigint NOT NULL);
CREATE TABLE jobs (j bigint NOT NULL);
CREATE TABLE counter (n bigint NOT NULL);
INSERT INTO counter VALUES (0);
CREATE TABLE increments ();
CREATE TABLE history (fencing bigint PRIMARY KEY, name text NOT NULL,
					  token uuid NOT NULL, acquired_at timestamptz,
					  expires_at timestamptz, ended_at timestamptz);
CREATE TABLE crashes (n int NOT NULL, before_crash timestamptz NOT NULL,
					  after_restart timestamptz NOT NULL);
INSERT INTO usage_ledger
SELECT $LIMIT - $HEADROOM, true,
	   entitlock.record_usage('hot', 'api', $LIMIT - $HEADROOM);
});

my %scripts = (
	'hot.sql@6' => qq{
\\set amount random(1, 3)
\\set refund random(1, 5)
BEGIN;
\\if :refund = 1
INSERT INTO usage_ledger
SELECT -:amount, true, entitlock.record_usage('hot', 'api', -:amount);
\\else
INSERT INTO usage_ledger
SELECT :amount, allowed, used
  FROM entitlock.record_usage_if_under_limit('hot', 'api', :amount, $LIMIT);
\\endif
COMMIT;
},
	'pay.sql@4' => qq{
\\set k :gen * 100000 + random(1, $KEYS)
\\set fail random(1, 10)
BEGIN;
SELECT (status = 'new')::int AS is_new,
	   coalesce((response ->> 'payment')::bigint, 0) AS paid
  FROM entitlock.idempotency_begin('pay-' || :k, 'amount=' || :k % 7) \\gset
\\if :is_new
WITH p AS (INSERT INTO payments (k) VALUES (:k) RETURNING id)
SELECT entitlock.idempotency_complete('pay-' || :k,
									  jsonb_build_object('payment', id))
  FROM p;
\\else
INSERT INTO replays VALUES (:k, :paid);
\\endif
\\if :fail = 1
ROLLBACK;
\\else
COMMIT;
\\endif
},
	'job.sql@1' => qq{
\\set j :gen * 100000 + random(1, $KEYS)
BEGIN;
INSERT INTO jobs SELECT :j WHERE entitlock.first_time('job-' || :j);
COMMIT;
},
	'counter.sql@4' => q{
BEGIN;
SELECT entitlock.lock('counter');
SELECT n FROM counter \gset
UPDATE counter SET n = :n + 1;
INSERT INTO increments DEFAULT VALUES;
COMMIT;
},
	'lease.sql@5' => q{
\set n random(0, 2)
\set ttl_ms random(50, 250)
\set release random(0, 1)
BEGIN;
WITH a AS (SELECT * FROM entitlock.lease_acquire('lease-' || :n,
					make_interval(secs => :ttl_ms / 1000.0), 'c' || :client_id)),
	 i AS (INSERT INTO history (fencing, name, token)
		   SELECT fencing, 'lease-' || :n, token FROM a RETURNING fencing)
SELECT coalesce(max(fencing), 0) AS fencing FROM i \gset
UPDATE history AS h SET acquired_at = r.acquired_at, expires_at = r.expires_at
  FROM entitlock.lease_record AS r
 WHERE h.fencing = :fencing AND r.fencing = :fencing;
COMMIT;
\if :fencing > 0 AND :release = 1
UPDATE history SET ended_at = clock_timestamp()
 WHERE fencing = :fencing AND entitlock.lease_release(name, token);
\endif
},);

# The script files, for every round.
my @files;
for my $f (sort keys %scripts)
{
	(my $path = $node->basedir . "/$f") =~ s/\@\d+$//;
	append_to_file($path, $scripts{$f});
	push @files, '-f', $node->basedir . "/$f";
}

# pgbench on 16 clients for a round, in the background, with the key pool
# GEN: (harness, \stdout, \stderr).
sub start_round
{
	my ($gen) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[
			'pgbench', '-n', '-T', $ROUND, '-c', 16, '-j', 2,
			'-D', "gen=$gen", @files,
			'-h', $node->host, '-p', $node->port, 'postgres'
		],
		'>', \$out, '2>', \$err);
	return ($h, \$out, \$err);
}

# The transactions a round's pgbench committed.
sub committed
{
	my ($out) = @_;
	return $$out =~ /^number of transactions actually processed: (\d+)/m
	  ? $1
	  : 0;
}

# Right after a restart, all in one rolled-back transaction with a 2 s
# statement_timeout: the hot names free, advisory locks held by others,
# a usage call, wrong answers for pool GEN's payment and job keys, a
# counter increment, and (once the ttls have passed) the lease names
# taken.
sub probe
{
	my ($gen) = @_;
	my ($first, $last) = ($gen * 100000 + 1, $gen * 100000 + $KEYS);
	$node->poll_query_until('postgres',
		'SELECT coalesce(max(expires_at) < clock_timestamp(), true)
		   FROM entitlock.lease_record')
	  or die 'the leases did not expire';
	return sql(qq{
SET statement_timeout = '2s';
BEGIN;
SELECT entitlock.try_lock('counter') AND entitlock.try_lock_entity('hot', 'api')
	   AND entitlock.try_lock('lease-0') AS free,
	   (SELECT count(*) FROM pg_locks
		 WHERE locktype = 'advisory' AND pid <> pg_backend_pid()) AS held,
	   (SELECT allowed IS NOT NULL
		  FROM entitlock.record_usage_if_under_limit('hot', 'api', 1, $LIMIT))
	   AS usage,
	   (SELECT count(*) FROM generate_series($first, $last) AS k,
			   entitlock.idempotency_begin('pay-' || k, 'amount=' || k % 7) AS b
		 WHERE (b.status = 'replay') IS DISTINCT FROM
			   EXISTS (SELECT FROM payments AS p
						WHERE p.k = k.k AND p.id = (b.response ->> 'payment')::bigint)
		   OR (b.status = 'new' AND EXISTS (SELECT FROM payments AS p WHERE p.k = k.k)))
	   AS wrong_replays,
	   (SELECT count(*) FROM generate_series($first, $last) AS j
		 WHERE entitlock.first_time('job-' || j)
			   = EXISTS (SELECT FROM jobs WHERE jobs.j = j.j)) AS wrong_jobs,
	   (SELECT entitlock.lock('counter') IS NOT NULL) AS counter,
	   (SELECT count(*) FROM generate_series(0, 2) AS n,
			   entitlock.lease_acquire('lease-' || n, '1 s')) AS leases;
ROLLBACK;});
}

# Errors a crash explains: the shutdown, the lost connections, the aborted
# clients and run.
my $crash_errors = join '|',
  'terminating connection due to immediate shutdown',
  'server closed the connection',
  'perhaps the backend died',
  'Run was aborted';

# Rounds: 0 plain, 1 crashed, 2 plain (the same key pool), 3 crashed.
my ($gen, $crashes) = (0, 0);
for my $round (0 .. 3)
{
	my $crash = $round % 2;
	my ($h, $out, $err) = start_round($gen);
	if (!$crash)
	{
		ok($h->finish, "round $round: pgbench succeeds");
		is($$err, '', "round $round: pgbench reports no error");
		cmp_ok(committed($out), '>', 1000,
			"round $round: pgbench committed transactions");
		next;
	}

	usleep(1_500_000);
	my $before = sql('SELECT clock_timestamp()');
	$node->stop('immediate');
	$h->finish;
	$crashes++;
	$node->start;
	my $after = sql('SELECT clock_timestamp()');
	sql("INSERT INTO crashes VALUES ($crashes, '$before', '$after')");
	my @unexplained =
	  grep { /error|abort|fatal/i && !/$crash_errors/o } split /\n/, $$err;
	is("@unexplained", '',
		"crash $crashes: pgbench saw no error other than the crash's");
	like($$err, qr/$crash_errors/o,
		"crash $crashes: it hit clients in the middle of their work");
	is(probe($gen), "t|0|t|0|0|t|3",
		"crash $crashes: right after it every name and key is free and answers"
	);
	$gen++;
}

my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal|PANIC|TRAP:/,
	'no backend crashed on its own');

# Usage: the ledger, within the limit, decisions right.
my ($used, $ledger, $allowed, $denied, $refunds, $wrong) = split /\|/, sql(qq{
SELECT entitlock.usage('hot', 'api'),
	   (SELECT sum(amount) FILTER (WHERE allowed) FROM usage_ledger),
	   (SELECT count(*) FILTER (WHERE allowed AND amount > 0) FROM usage_ledger),
	   (SELECT count(*) FILTER (WHERE NOT allowed) FROM usage_ledger),
	   (SELECT count(*) FILTER (WHERE amount < 0) FROM usage_ledger),
	   (SELECT count(*) FROM usage_ledger
		 WHERE used > $LIMIT OR (NOT allowed AND used + amount <= $LIMIT))});
note "hot: usage $used, ledger $ledger: $allowed allowed, $denied denied, $refunds refunds";
is($used, $ledger, 'usage equals the committed allowed amounts');
cmp_ok($used, '<=', $LIMIT, 'usage is within the limit');
is($wrong, 0, 'no call was allowed over the limit or denied under it');
ok($allowed > 0 && $denied > 0 && $refunds > 0,
	'the load reached the limit and refunded');

# Idempotency keys: once each.
my ($payments, $paid_keys, $claims, $unmatched, $replays, $bad_replays,
	$jobs, $job_keys, $job_claims)
  = split /\|/, sql(q{
SELECT (SELECT count(*) FROM payments),
	   (SELECT count(DISTINCT k) FROM payments),
	   (SELECT count(*) FROM entitlock.idempotency_key WHERE key LIKE 'pay-%'),
	   (SELECT count(*)
		  FROM (SELECT * FROM entitlock.idempotency_key WHERE key LIKE 'pay-%') AS c
		  FULL JOIN payments AS p ON c.key = 'pay-' || p.k
		 WHERE p.id IS NULL OR c.key IS NULL
			OR (c.response ->> 'payment')::bigint IS DISTINCT FROM p.id),
	   (SELECT count(*) FROM replays),
	   (SELECT count(*) FROM replays AS r
		 WHERE NOT EXISTS (SELECT FROM payments AS p
							WHERE p.k = r.k AND p.id = r.payment)),
	   (SELECT count(*) FROM jobs),
	   (SELECT count(DISTINCT j) FROM jobs),
	   (SELECT count(*) FROM entitlock.idempotency_key WHERE key LIKE 'job-%')});
note "payments: $payments for $paid_keys keys, $claims claims, $replays replays; jobs: $jobs";
is($payments, $paid_keys, 'no key was paid twice');
is("$claims|$unmatched", "$payments|0",
	'each payment has its claim, holding its id, and no claim is without one');
ok($replays > 0, 'keys were replayed');
is($bad_replays, 0, 'every replay was handed the payment of its key');
is("$jobs|$job_claims", "$job_keys|$job_keys",
	'each job ran once, and has its claim');

# The counter.
my ($n, $increments) = split /\|/,
  sql('SELECT n, (SELECT count(*) FROM increments) FROM counter');
is($n, $increments, "the counter equals its committed increments ($n)");

# Leases.
my ($acquisitions, $untimed, $two_rows, $overlaps, $back) = split /\|/, sql(q{
WITH h AS (SELECT *, lag(least(expires_at, coalesce(ended_at, 'infinity')))
						 OVER (PARTITION BY name ORDER BY fencing) AS prev_ended
			 FROM history)
SELECT (SELECT count(*) FROM h),
	   (SELECT count(*) FROM h WHERE acquired_at IS NULL),
	   (SELECT count(*) FROM (SELECT name FROM entitlock.lease_record
							   GROUP BY name HAVING count(*) > 1) AS d),
	   (SELECT count(*) FROM h WHERE acquired_at < prev_ended),
	   (SELECT count(*) FROM crashes AS c
		 WHERE (SELECT max(fencing) FROM history WHERE acquired_at < c.before_crash)
			>= (SELECT min(fencing) FROM history WHERE acquired_at > c.after_restart))});
note "leases: $acquisitions acquisitions";
cmp_ok($acquisitions, '>=', 100, 'leases were acquired');
is($untimed, 0, 'each with its times');
is($two_rows, 0, 'no name has two lease rows');
is($overlaps, 0, 'no two leases of a name overlapped');
is($back, 0,
	'every acquisition after a crash has a higher fencing number than every one before it'
);

$node->stop;
done_testing();
