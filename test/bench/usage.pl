# test/bench/usage.pl: record_usage_if_under_limit against the ways people
# write "check the limit, then record" by hand.
#
#   bash test/bench/run.sh usage
#   BENCH_SECONDS=10 BENCH_ROUNDS=5 BENCH_CLIENTS="8" bash test/bench/run.sh usage
#   BENCH_PROTOCOL=simple bash test/bench/run.sh usage   (pgbench -M; default prepared)
#
# Each pgbench transaction records 1 unit for one of 1,000 subjects (or one
# hot subject) against a limit it never reaches, so every variant does the
# same work: a decision and a write.  Variants, all in the same run on the
# same server, tables emptied and checkpointed before each cell:
#   upsert      INSERT ... ON CONFLICT DO UPDATE SET used = used + 1
#               WHERE used + 1 <= limit RETURNING used (the baseline)
#   entitlock   SELECT * FROM entitlock.record_usage_if_under_limit(...)
#   forupdate   BEGIN; SELECT used ... FOR UPDATE; UPDATE; COMMIT
#   ledger      PL/pgSQL: pg_advisory_xact_lock, sum() over a usage ledger,
#               INSERT into the ledger
#   naive       SELECT sum() from a ledger, then INSERT if under the limit,
#               with no lock (wrong: see the overshoot table)
# It prints TPS with the ratio to upsert, then an overshoot table: 16
# clients x 100 calls on one subject with a limit of 500, and the usage
# each variant ends with.  A benchmark, not a test: it asserts nothing;
# the figures go in doc/performance.md.

use strict;
use warnings;

use EntitlockBench;
use IPC::Run;

my %o = (
	secs => bench_env('SECONDS', 5),
	rounds => bench_env('ROUNDS', 3),
	protocol => bench_env('PROTOCOL', 'prepared'));
my @clients = split ' ', bench_env('CLIENTS', '1 8 32');
my @variants = qw(upsert entitlock forupdate ledger naive);

my $bench = bench_start('entitlock_bench_usage');
bench_sql($bench, q{
CREATE TABLE plain_usage (subject text, feature text, used bigint NOT NULL,
						  PRIMARY KEY (subject, feature));
CREATE TABLE forupdate_usage (subject text, feature text, used bigint NOT NULL,
							  PRIMARY KEY (subject, feature));
CREATE TABLE ledger (subject text NOT NULL, feature text NOT NULL,
					 amount bigint NOT NULL,
					 at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON ledger (subject, feature);
CREATE TABLE naive_ledger (LIKE ledger INCLUDING ALL);

CREATE FUNCTION ledger_record(s text, f text, amt bigint, lim bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
	u bigint;
BEGIN
	PERFORM pg_advisory_xact_lock(hashtextextended(s || '/' || f, 0));
	SELECT coalesce(sum(amount), 0) INTO u
	  FROM ledger WHERE subject = s AND feature = f;
	IF u + amt > lim THEN
		RETURN false;
	END IF;
	INSERT INTO ledger (subject, feature, amount) VALUES (s, f, amt);
	RETURN true;
END
$$;
});

# One pgbench script per variant, for KEYS subjects and a limit.
sub scripts
{
	my ($keys, $limit) = @_;
	my $s = q{'s-' || :i};
	my $i = "\\set i random(1, $keys)\n";
	return {
		upsert => bench_script($bench, 'upsert',
			$i
			  . "INSERT INTO plain_usage AS u (subject, feature, used) VALUES ($s, 'api', 1) ON CONFLICT (subject, feature) DO UPDATE SET used = u.used + 1 WHERE u.used + 1 <= $limit RETURNING used;\n"
		),
		entitlock => bench_script($bench, 'entitlock',
			$i
			  . "SELECT * FROM entitlock.record_usage_if_under_limit($s, 'api', 1, $limit);\n"
		),
		forupdate => bench_script($bench, 'forupdate',
			$i
			  . "BEGIN;\nSELECT used FROM forupdate_usage WHERE subject = $s AND feature = 'api' FOR UPDATE \\gset\n"
			  . "\\if :used < $limit\nUPDATE forupdate_usage SET used = used + 1 WHERE subject = $s AND feature = 'api';\n\\endif\nCOMMIT;\n"
		),
		ledger => bench_script($bench, 'ledger',
			$i . "SELECT ledger_record($s, 'api', 1, $limit);\n"),
		naive => bench_script($bench, 'naive',
			$i
			  . "SELECT coalesce(sum(amount), 0) AS used FROM naive_ledger WHERE subject = $s AND feature = 'api' \\gset\n"
			  . "\\if :used < $limit\nINSERT INTO naive_ledger (subject, feature, amount) VALUES ($s, 'api', 1);\n\\endif\n"
		),
	};
}

# Empty every variant's tables; FOR UPDATE needs its rows.  No ANALYZE:
# statistics of an empty ledger would make PL/pgSQL's cached plan scan
# the whole ledger as it grows.
sub reset_tables
{
	my ($keys) = @_;
	bench_sql($bench, qq{
TRUNCATE plain_usage, forupdate_usage, ledger, naive_ledger,
		 entitlock.usage_counter, entitlock.usage_idempotency;
INSERT INTO forupdate_usage SELECT 's-' || i, 'api', 0 FROM generate_series(1, $keys) i;
VACUUM;
CHECKPOINT;});
}

bench_printf "TPS (median of %d rounds of %d s), pgbench -M %s; ratio = variant / upsert\n",
  $o{rounds}, $o{secs}, $o{protocol};
bench_printf "%-6s %-8s %-10s %10s %8s\n", qw(keys clients variant tps ratio);
for my $keys (1000, 1)
{
	my $f = scripts($keys, 1000000000000);
	for my $c (@clients)
	{
		my $m = bench_rounds($bench, $c, $f, \@variants,
			sub { reset_tables($keys) }, %o);
		bench_printf "%-6s %-8s %-10s %10.0f %8s\n", $keys, $c, $_, $m->{$_},
		  bench_ratio($m->{$_}, $m->{upsert})
		  for @variants;
	}
}

bench_printf "\nOvershoot: 16 clients x 100 calls of 1 unit on one subject, limit 500\n";
bench_printf "%-10s %10s %10s\n", qw(variant usage overshoot);
my $f = scripts(1, 500);
for my $v (@variants)
{
	reset_tables(1);
	IPC::Run::run(
		[
			'pgbench', '-n', '-M', $o{protocol}, '-c', 16, '-j', 2,
			'-t', 100, '-f', $f->{$v},
			'-h', $bench->{host}, '-p', $bench->{port}, $bench->{db}
		],
		'>', \my $out, '2>', \my $err);
	my $u = bench_sql($bench, qq{SELECT CASE '$v'
		WHEN 'upsert' THEN (SELECT coalesce(sum(used), 0) FROM plain_usage)
		WHEN 'entitlock' THEN entitlock.usage('s-1', 'api')
		WHEN 'forupdate' THEN (SELECT coalesce(sum(used), 0) FROM forupdate_usage)
		WHEN 'ledger' THEN (SELECT coalesce(sum(amount), 0) FROM ledger)
		ELSE (SELECT coalesce(sum(amount), 0) FROM naive_ledger) END});
	bench_printf "%-10s %10s %10s\n", $v, $u, ($u > 500 ? $u - 500 : 0);
}
