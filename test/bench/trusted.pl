# test/bench/trusted.pl: the trusted edition (SQL and PL/pgSQL) against
# the C edition, on the same server in the same run.
#
#   bash test/bench/run.sh trusted
#   BENCH_SECONDS=10 BENCH_ROUNDS=5 BENCH_CLIENTS="1 8" bash test/bench/run.sh trusted
#   BENCH_WORKLOADS="usage1000 usagehot" bash test/bench/run.sh trusted
#
# Two databases, one with CREATE EXTENSION entitlock, one with the trusted
# edition's install file (built by run.sh with trusted/build.sh, passed as
# BENCH_TRUSTED_SQL) run by the database's owner, a role without
# superuser.  Each workload is a pgbench script (-M prepared) run on both;
# the variants take turns within each round and the medians are compared.
# Workloads (BENCH_WORKLOADS, default all): lock (1,000 names), usage1000
# and usagehot (record_usage_if_under_limit on 1,000 meters and on one hot
# meter), idempotency (idempotency_begin on new keys), lease (a lease
# acquired and released), rate (a rate limit on 1,000 names); and, for
# usage1000 and usagehot, the trusted edition's usage against careful
# hand-written PL/pgSQL in the same database (a counter row locked with
# SELECT ... FOR UPDATE, created when missing, the check, the update: what
# a team writes without entitlock), target >= 1.0x.  Usage counters are
# emptied, vacuumed and checkpointed before each run.  A benchmark, not a
# test: it asserts nothing.  (Names avoid ":", which pgbench reads as a
# variable.)

use strict;
use warnings;

use EntitlockBench;

my %o = (
	secs => bench_env('SECONDS', 5),
	rounds => bench_env('ROUNDS', 3),
	protocol => bench_env('PROTOCOL', 'prepared'));
my @clients = split ' ', bench_env('CLIENTS', '1 8');
my @workloads = split ' ',
  bench_env('WORKLOADS', 'lock usage1000 usagehot idempotency lease rate');
my $trusted_sql = bench_env('TRUSTED_SQL', '');
die "BENCH_TRUSTED_SQL is not set (run through test/bench/run.sh)\n"
  unless $trusted_sql ne '' && -r $trusted_sql;

my %b = (c => bench_start('entitlock_bench_c'));
my $admin = { %{ $b{c} }, db => 'postgres' };
$b{t} = { %{ $b{c} }, db => 'entitlock_bench_trusted' };
bench_sql($admin, q{
SET client_min_messages = warning;
DROP DATABASE IF EXISTS entitlock_bench_trusted WITH (FORCE);
DROP ROLE IF EXISTS bench_owner;
CREATE ROLE bench_owner LOGIN;
CREATE DATABASE entitlock_bench_trusted OWNER bench_owner;});
bench_sql({ %{ $b{t} }, db => "dbname=$b{t}{db} user=bench_owner" },
	"\\i $trusted_sql");

# Careful hand-written PL/pgSQL usage limit, in the trusted database.
bench_sql($b{t}, q{
CREATE TABLE hand_usage (subject text, feature text, used bigint NOT NULL,
	PRIMARY KEY (subject, feature));
CREATE FUNCTION hand_record(s text, f text, amount bigint, lim bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
	u bigint;
BEGIN
	SELECT used INTO u FROM hand_usage WHERE subject = s AND feature = f FOR UPDATE;
	IF NOT FOUND THEN
		INSERT INTO hand_usage VALUES (s, f, 0) ON CONFLICT DO NOTHING;
		SELECT used INTO u FROM hand_usage WHERE subject = s AND feature = f FOR UPDATE;
	END IF;
	IF u + amount > lim THEN
		RETURN false;
	END IF;
	UPDATE hand_usage SET used = used + amount WHERE subject = s AND feature = f;
	RETURN true;
END
$$;
});

my %call = (
	lock => q{SELECT entitlock.lock('name-' || :i)},
	usage1000 => q{SELECT allowed FROM entitlock.record_usage_if_under_limit('ws-' || :i, 'api', 1, 1000000000000)},
	usagehot => q{SELECT allowed FROM entitlock.record_usage_if_under_limit('ws-hot', 'api', 1, 1000000000000)},
	idempotency => q{SELECT status FROM entitlock.idempotency_begin('evt-' || :r || '-' || :i)},
	lease => q{SELECT count(entitlock.lease_release('job-' || :i, token)) FROM entitlock.lease_acquire('job-' || :i, '1 min')},
	rate => q{SELECT allowed FROM entitlock.rate_limit('rl-' || :i, 1000000, '1 s')},
	hand1000 => q{SELECT hand_record('ws-' || :i, 'api', 1, 1000000000000)},
	handhot => q{SELECT hand_record('ws-hot', 'api', 1, 1000000000000)});
my %file = map {
	(   $_ => bench_script($b{c}, $_,
			"\\set i random(1, 1000)\n\\set r random(1, 1000000000)\nBEGIN;\n$call{$_};\nCOMMIT;\n"
		))
} keys %call;

# Empty the usage counters (and the hand-written one's) of both databases.
sub reset_dbs
{
	bench_sql($b{c}, q{
TRUNCATE entitlock.usage_counter, entitlock.usage_idempotency;
VACUUM;
CHECKPOINT;});
	bench_sql($b{t}, q{
TRUNCATE entitlock.usage_counter, entitlock.usage_idempotency, hand_usage;
VACUUM;
CHECKPOINT;});
}

# compare LABEL, CLIENTS, [WORKLOAD, DB] of A, [WORKLOAD, DB] of B: the
# medians of alternating rounds, and A / B.
sub compare
{
	my ($label, $c, $x, $y) = @_;
	my (@a, @b);
	for (1 .. $o{rounds})
	{
		reset_dbs();
		push @a, bench_tps($b{ $x->[1] }, $file{ $x->[0] }, $c, $o{secs},
			$o{protocol});
		reset_dbs();
		push @b, bench_tps($b{ $y->[1] }, $file{ $y->[0] }, $c, $o{secs},
			$o{protocol});
	}
	my ($ma, $mb) = (bench_median(@a), bench_median(@b));
	bench_printf "%-34s %7s %10.0f %10.0f %7s\n", $label, $c, $ma, $mb,
	  bench_ratio($ma, $mb);
}

bench_printf "TPS (median of %d rounds of %d s), pgbench -M %s\n",
  $o{rounds}, $o{secs}, $o{protocol};
bench_printf "%-34s %7s %10s %10s %7s\n", qw(comparison clients A B A/B);
for my $c (@clients)
{
	for my $w (@workloads)
	{
		compare("trusted/C $w", $c, [ $w, 't' ], [ $w, 'c' ]);
	}
	for my $w (grep { /^usage/ } @workloads)
	{
		(my $keys = $w) =~ s/^usage//;
		compare("trusted usage / hand PL/pgSQL $keys",
			$c, [ $w, 't' ], [ "hand$keys", 't' ]);
	}
}
