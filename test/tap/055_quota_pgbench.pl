# test/tap/055_quota_pgbench.pl: the quota engine (1.1) under 32 pgbench
# clients, backends terminated at random.
#
# Limits.  Each transaction is an API gateway's call: per user an hourly
# and a daily limit and per organisation a monthly one, in one
# record_usage_if_under_limits() call, with the limits listed in a random
# one of two opposite orders; some transactions instead record on the
# organisation's meter alone with record_usage_if_under_limit().  Each
# appends its decision to a ledger in the same transaction, so a killed
# backend rolls back both.  Every meter's usage must equal the amounts of
# the committed allowed calls that named it (all or nothing: a denial
# recorded nowhere) and be at most its limit, and no call may have failed
# (crossing orders never deadlock).
#
# Rate limits.  The same clients call rate_limit() on one name, 200 units
# a second in bursts of 50, costs 1 to 3.  Each allowed call's decision
# time is the state it stored less its reset_after, exact to the
# microsecond; in no window of 0.1, 0.5, 1 or 2 s starting at an allowed
# call may more than burst + rate * window units have been allowed.
#
# The rounds go on (at least 12 s, at most 120 s) until the limits and the
# rate limit have been reached.  A control removes the guarantee and must
# be caught: a per-meter check then record of the same set, limit by
# limit, burns quota on denials.
#
# Run with: bash test/tap.sh test/tap/055_quota_pgbench.pl

use strict;
use warnings;

use EntitlockStress;
use Test::More;

my ($USERS, $HOUR, $DAY, $ORG, $RATE, $BURST) = (8, 300, 500, 3000, 200, 50);

my $node = stress_node('main');
my $t = target($node, 'entitlock_stress_quota');
create_db($t);
sql($t, qq{
CREATE TABLE ledger (usr int, amount bigint NOT NULL, allowed boolean NOT NULL);
CREATE TABLE rl_ledger (cost bigint NOT NULL, allowed boolean NOT NULL,
						decided_at timestamptz);
CREATE FUNCTION gateway(usr int, amount bigint, reversed boolean)
RETURNS boolean LANGUAGE sql AS \$\$
	SELECT bool_and(allowed) FROM entitlock.record_usage_if_under_limits(
		CASE WHEN reversed THEN ARRAY[
			entitlock.usage_limit('org', 'api', $ORG, 'month'),
			entitlock.usage_limit('user:' || usr, 'api', $DAY, 'day'),
			entitlock.usage_limit('user:' || usr, 'api', $HOUR, 'hour')]
		ELSE ARRAY[
			entitlock.usage_limit('user:' || usr, 'api', $HOUR, 'hour'),
			entitlock.usage_limit('user:' || usr, 'api', $DAY, 'day'),
			entitlock.usage_limit('org', 'api', $ORG, 'month')] END,
		amount)
\$\$;
});

my $set = script($t, 'set.sql', q{
\set usr random(1, :users)
\set amount random(1, 3)
\set reversed random(0, 1)
BEGIN;
SELECT gateway(:usr, :amount, :reversed = 1)::int AS allowed \gset
INSERT INTO ledger VALUES (:usr, :amount, :allowed::boolean);
COMMIT;
});
my $org = script($t, 'org.sql', q{
\set amount random(1, 3)
BEGIN;
SELECT allowed::int AS allowed FROM entitlock.record_usage_if_under_limit('org', 'api', :amount, :org_limit, 'month') \gset
INSERT INTO ledger VALUES (NULL, :amount, :allowed::boolean);
COMMIT;
});
my $rate = script($t, 'rate.sql', q{
\set cost random(1, 3)
BEGIN;
SELECT allowed::int AS allowed, extract(epoch FROM reset_after) AS reset FROM entitlock.rate_limit('hot', :rate, '1 second', :burst, :cost) \gset
INSERT INTO rl_ledger
SELECT :cost, :allowed::boolean,
	   CASE WHEN :allowed::boolean THEN tat - :reset * interval '1 second' END
  FROM entitlock.rate_limit_state WHERE name = 'hot';
COMMIT;
});

# Each meter: subject, period, usage, what the ledger says was recorded on
# it, its limit.
my $meters_sql = qq{
WITH meters(subject, period, lim, ledger) AS (
	SELECT 'user:' || u, p.period, p.lim,
		   (SELECT coalesce(sum(amount) FILTER (WHERE allowed), 0) FROM ledger WHERE usr = u)
	  FROM generate_series(1, $USERS) u,
		   (VALUES ('hour', $HOUR), ('day', $DAY)) AS p(period, lim)
	UNION ALL
	SELECT 'org', 'month', $ORG,
		   (SELECT coalesce(sum(amount) FILTER (WHERE allowed), 0) FROM ledger)
)
SELECT subject, period, entitlock.usage(subject, 'api', period), ledger, lim FROM meters};
sub meters { return map { [ split /\|/ ] } split /\n/, sql($t, $meters_sql); }

my $r = stress_under_kills(
	$t,
	[
		'-c', 32, '-j', 2,
		'-D', "users=$USERS", '-D', "org_limit=$ORG",
		'-D', "rate=$RATE", '-D', "burst=$BURST",
		'-f', "$set\@6", '-f', "$org\@1", '-f', "$rate\@3"
	],
	min => 12,
	cap => 120,
	until => sub {
		my $full = grep { $_->[2] > $_->[4] - 3 } meters();
		return $full > 0
		  && sql($t, q{SELECT count(*) FILTER (WHERE allowed) > 0
							 AND count(*) FILTER (WHERE NOT allowed) > 0
						FROM ledger}) eq 't'
		  && sql($t, q{SELECT count(*) FILTER (WHERE NOT allowed) > 0
						 FROM rl_ledger}) eq 't';
	});

my @meters = meters();
my @bad = grep { $_->[2] != $_->[3] || $_->[2] > $_->[4] } @meters;
my $full = grep { $_->[2] > $_->[4] - 3 } @meters;
my ($calls, $allowed, $denied) = split /\|/, sql($t,
	'SELECT count(*), count(*) FILTER (WHERE allowed), count(*) FILTER (WHERE NOT allowed) FROM ledger');
note "limits: $calls calls, $allowed allowed, $denied denied; "
  . scalar(@meters) . " meters, $full at their limit";

my ($rl_calls, $rl_allowed, $rl_units, $span, $over) = split /\|/, sql($t, qq{
CREATE INDEX ON rl_ledger (decided_at);
SELECT count(*), count(*) FILTER (WHERE allowed),
	   coalesce(sum(cost) FILTER (WHERE allowed), 0),
	   round(extract(epoch FROM max(decided_at) - min(decided_at))::numeric, 2),
	   (SELECT count(*)
		  FROM rl_ledger a, (VALUES (0.1), (0.5), (1.0), (2.0)) AS w(secs)
		 WHERE a.allowed
		   AND (SELECT sum(b.cost) FROM rl_ledger b
				 WHERE b.allowed AND b.decided_at >= a.decided_at
				   AND b.decided_at <= a.decided_at + w.secs * interval '1 second')
			   > $BURST + $RATE * w.secs)
  FROM rl_ledger});
note "rate limit: $rl_calls calls, $rl_allowed allowed ($rl_units units over ${span}s), $over windows over";

is($r->{unexpected}, '', "no pgbench error other than the kills'");
cmp_ok($r->{kills}, '>=', 3, 'backends were terminated');
is(join('; ', map { "@$_" } @bad), '',
	'every meter equals its ledger and is within its limit');
ok($allowed > 0 && $denied > 0 && $full > 0, 'the run reached the limits');
is($over, 0, 'no window let more than burst + rate * window through');
ok($rl_allowed > 0 && $rl_allowed < $rl_calls,
	'the rate limit was reached');
ok($rl_units <= $BURST + $RATE * $span,
	"$rl_units units allowed over ${span}s, within burst + rate * span");

# Nothing is left locked.
my ($rc) = psql_try($t, q{SET lock_timeout = '1s';
SELECT count(*) FROM entitlock.record_usage_if_under_limits(ARRAY[entitlock.usage_limit('org', 'api', 1, 'month')]);
SELECT allowed FROM entitlock.rate_limit('hot', 1, '1 second', cost => 0)});
is($rc, 0, 'no lock was left behind');

# Control: the same set checked and recorded limit by limit, without
# all-or-nothing, burns the day on hourly denials.
my $naive = script($t, 'naive.sql', q{
BEGIN;
SELECT allowed::int AS h FROM entitlock.record_usage_if_under_limit('ctl', 'api', 1, 20, 'hour') \gset
SELECT allowed::int AS d FROM entitlock.record_usage_if_under_limit('ctl', 'api', 1, 1000, 'day') \gset
INSERT INTO ledger VALUES (0, 1, (:h + :d) = 2);
COMMIT;
});
sql($t, 'DELETE FROM ledger WHERE usr = 0');
run_pgbench($t, [ '-c', 8, '-j', 2, '-t', 10, '-f', $naive ]);
my ($ctl_day, $ctl_allowed) = split /\|/, sql($t,
	"SELECT entitlock.usage('ctl', 'api', 'day'), count(*) FILTER (WHERE allowed) FROM ledger WHERE usr = 0");
cmp_ok($ctl_day, '>', $ctl_allowed,
	'control: limit by limit, day usage exceeds the calls allowed by both');

$node->stop;
done_testing();
