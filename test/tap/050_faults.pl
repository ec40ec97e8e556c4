# test/tap/050_faults.pl: killed backends and cancellations at once, on a
# mixed workload.
#
# The other stress tests kill backends under one feature at a time.  Real
# servers see faults together: a deploy terminates connections while a
# timeout cancels a statement halfway through a call.  Here 16 + 4
# pgbench clients run, in rounds of 3 s, a mix of
#   - record_usage_if_under_limit on one hot (subject, feature) whose limit
#     is reached in the first seconds (plus refunds, so that decisions keep
#     going both ways all along), with a ledger row in the same transaction;
#   - record_usage with idempotency keys from a small pool per round;
#   - idempotency_begin/complete around a "payment" row, keys from a small
#     pool, one transaction in ten rolled back; first_time for "jobs";
#   - entitlock.lock around a read-modify-write of a counter (SELECT into
#     a variable, UPDATE to it plus one), with a ledger of increments;
#   - leases on 3 names with short ttls, a history table, renewals,
#     releases and slow workers, as in 053_leases_pgbench.pl (the 4
#     clients);
# while two kinds of fault hit them:
#   (a) a random client backend is terminated every 0.2-0.5 s;
#   (b) a third of the usage, payment and counter transactions set
#       statement_timeout or lock_timeout to 1-20 ms (or use the timed
#       lock(name, timeout)), so cancellations land while they wait on the
#       hot key, inside entitlock's calls.
#
# How the cancellations are handled: the call and its ledger row run in a
# PL/pgSQL block with an EXCEPTION clause, i.e. a subtransaction; a caught
# 57014 or 55P03 undoes both, the transaction records the cancellation in
# a table and commits (the "catch and carry on" pattern).  One
# cancellation in a hundred is re-raised instead: that transaction aborts
# and pgbench drops the client until the next round (the "let it fail"
# pattern), as happens too when a statement_timeout fires before the
# block starts or after it ends.  A canceled idempotency_begin must leave
# no claim behind: completing the key in the same transaction afterwards
# must fail.
#
# Checked afterwards (every ledger row is written in the transaction whose
# entitlock call it records, so a kill or a cancellation drops both or
# neither):
#   - hot usage equals the committed allowed amounts (refunds included), is
#     never over the limit, and no call was denied while under it;
#   - keyed usage: each key recorded once, with its amount; usage = the sum;
#   - each payment key paid exactly once, its claim stores that payment's
#     id, every replay was handed that id; each job ran once;
#   - the counter equals the number of committed increments;
#   - leases: at most one row per name (also watched during the run), no
#     two committed leases of a name overlap in time, fencing follows time,
#     no late renew/release succeeded after a newer acquisition;
#   - some backends were killed, some statement and lock timeouts fired
#     inside entitlock calls, no backend crashed on its own (no
#     "terminated by signal", PANIC or assertion in the server log), and
#     pgbench saw no error other than those the faults explain.
# The rounds go on for at least 24 s, then until all of the above had a
# chance to happen (at most 120 s).  A control then runs the counter
# without entitlock.lock and must lose updates: the check can see the bug
# the lock prevents.
#
# Mutations, for a manual run, each of which makes the test fail:
#   FAULTS_MUTATE=split   the hot ledger row in a transaction of its own
#                         after the call's: usage differs from the ledger
#                         (kills land between the two)
#   FAULTS_MUTATE=ledger  1% of hot ledger rows written without the call:
#                         usage differs from the ledger
#   FAULTS_MUTATE=nolock  the counter without entitlock.lock: lost updates
#   FAULTS_MUTATE=nokey   payments without idempotency_begin: keys paid
#                         twice, claims missing, nothing replayed
#
# Crashes (immediate shutdown) under the same kind of load are
# 005_crash_under_load.pl.
#
# Run with: bash test/tap.sh test/tap/050_faults.pl

use strict;
use warnings;

use EntitlockStress;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $MUTATE = $ENV{FAULTS_MUTATE} // '';
my ($LIMIT, $HEADROOM, $KEYS) = (100000, 1500, 600);
my ($MAIN_CLIENTS, $LEASE_CLIENTS) = (16, 4);

my $node = stress_node('main');
my $t = target($node, 'entitlock_faults');
create_db($t);
my $log_from = -s $node->logfile;
$node->safe_psql('postgres',
	"ALTER DATABASE $t->{db} SET faults.usage_limit = $LIMIT;
	 ALTER DATABASE $t->{db} SET faults.mutate = '" . ($MUTATE || 'none') . "'");
sql($t, $EntitlockStress::LEASE_TABLES . q{
CREATE TABLE usage_ledger (amount bigint NOT NULL, allowed boolean NOT NULL,
						   used bigint NOT NULL);
CREATE TABLE keyed_ledger (k bigint PRIMARY KEY, amount bigint NOT NULL,
						   repeats int NOT NULL DEFAULT 0);
CREATE TABLE payments (id bigserial PRIMARY KEY, k bigint NOT NULL,
					   amount int NOT NULL);
CREATE TABLE replays (k bigint NOT NULL, payment bigint NOT NULL);
CREATE TABLE jobs (j bigint NOT NULL);
CREATE INDEX ON payments (k);
CREATE INDEX ON jobs (j);
CREATE TABLE counter (name text PRIMARY KEY, n bigint NOT NULL);
INSERT INTO counter VALUES ('counter', 0), ('control', 0);
CREATE TABLE increments (name text NOT NULL);
-- caught cancellations: which call, where it was (in the entitlock call
-- or after it), the SQLSTATE ('false' for a timed lock that gave up)
CREATE TABLE cancels (what text NOT NULL, phase text NOT NULL,
					  sqlstate text NOT NULL, message text);
-- what the functions below see go wrong during the run
CREATE TABLE anomalies (what text NOT NULL, detail text);

-- Each function below runs one entitlock call and the row that records it
-- in a subtransaction.  lt: lock_timeout in ms for the entitlock call (0:
-- none); the caller sets statement_timeout for the statement, and the
-- function turns it off once its work is done.  A cancellation undoes the
-- call and its row, and is recorded in cancels, or re-raised when catch is
-- 0.  phase says whether it hit inside the entitlock call.

-- amt > 0: record_usage_if_under_limit; amt < 0: a refund.  With log
-- false the caller writes the ledger row (the "split" mutation).
CREATE FUNCTION hot(amt bigint, lt int, catch int, log boolean DEFAULT true,
					OUT allowed int, OUT used bigint)
LANGUAGE plpgsql AS $$
DECLARE
	phase text := 'start';
	r record;
BEGIN
	BEGIN
		IF current_setting('faults.mutate') = 'ledger' AND random() < 0.01 THEN
			INSERT INTO usage_ledger VALUES (abs(amt), true, 0);
			allowed := 1;
			RETURN;
		END IF;
		PERFORM set_config('lock_timeout', lt || 'ms', true);
		phase := 'entitlock';
		IF amt > 0 THEN
			SELECT d.allowed::int, d.used INTO r
			  FROM entitlock.record_usage_if_under_limit('hot', 'api', amt,
					current_setting('faults.usage_limit')::bigint) AS d;
		ELSE
			SELECT 1 AS allowed, entitlock.record_usage('hot', 'api', amt) AS used
			  INTO r;
		END IF;
		phase := 'after';
		PERFORM set_config('lock_timeout', '0', true);
		allowed := r.allowed;
		used := r.used;
		IF log THEN
			INSERT INTO usage_ledger VALUES (amt, allowed = 1, used);
		END IF;
		PERFORM set_config('statement_timeout', '0', true);
	EXCEPTION WHEN query_canceled OR lock_not_available THEN
		PERFORM set_config('statement_timeout', '0', true);
		IF catch = 0 THEN RAISE; END IF;
		INSERT INTO cancels VALUES ('hot', phase, SQLSTATE, SQLERRM);
		allowed := -1;
	END;
END
$$;

-- record_usage with an idempotency key; the amount is a function of the
-- key, as a retry's would be.
CREATE FUNCTION keyed(key_no bigint, lt int, catch int) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	phase text := 'start';
	amt bigint := key_no % 3 + 1;
BEGIN
	BEGIN
		PERFORM set_config('lock_timeout', lt || 'ms', true);
		phase := 'entitlock';
		PERFORM entitlock.record_usage('hot', 'keyed', amt, 'lifetime', 'k-' || key_no);
		phase := 'after';
		PERFORM set_config('lock_timeout', '0', true);
		INSERT INTO keyed_ledger AS l (k, amount) VALUES (key_no, amt)
			ON CONFLICT (k) DO UPDATE SET repeats = l.repeats + 1;
		PERFORM set_config('statement_timeout', '0', true);
	EXCEPTION WHEN query_canceled OR lock_not_available THEN
		PERFORM set_config('statement_timeout', '0', true);
		IF catch = 0 THEN RAISE; END IF;
		INSERT INTO cancels VALUES ('keyed', phase, SQLSTATE, SQLERRM);
	END;
END
$$;

-- A payment under an idempotency key.  The fingerprint is a function of
-- the key, as a real retry's would be.
CREATE FUNCTION pay(key_no bigint, lt int, catch int) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	phase text := 'start';
	k text := 'pay-' || key_no;
	s text;
	resp jsonb;
	payment bigint;
BEGIN
	BEGIN
		PERFORM set_config('lock_timeout', lt || 'ms', true);
		phase := 'entitlock';
		IF current_setting('faults.mutate') = 'nokey' THEN
			s := 'new';
		ELSE
			SELECT b.status, b.response INTO s, resp
			  FROM entitlock.idempotency_begin(k, 'amount=' || (key_no % 7 + 1)) AS b;
		END IF;
		phase := 'after';
		PERFORM set_config('lock_timeout', '0', true);
		IF s = 'new' THEN
			INSERT INTO payments (k, amount) VALUES (key_no, key_no % 7 + 1)
				RETURNING id INTO payment;
			IF current_setting('faults.mutate') <> 'nokey' THEN
				phase := 'entitlock';
				PERFORM entitlock.idempotency_complete(k, jsonb_build_object('payment', payment));
				phase := 'after';
			END IF;
		ELSE
			INSERT INTO replays VALUES (key_no, coalesce((resp ->> 'payment')::bigint, 0));
		END IF;
		PERFORM set_config('statement_timeout', '0', true);
		RETURN s;
	EXCEPTION WHEN query_canceled OR lock_not_available THEN
		PERFORM set_config('statement_timeout', '0', true);
		IF catch = 0 THEN RAISE; END IF;
		INSERT INTO cancels VALUES ('pay', phase, SQLSTATE, SQLERRM);
	END;
	-- The claim, if it was made, went with the subtransaction.
	BEGIN
		PERFORM entitlock.idempotency_complete(k, '{}');
		INSERT INTO anomalies VALUES ('a claim outlived its canceled subtransaction', k);
	EXCEPTION WHEN object_not_in_prerequisite_state THEN
		NULL;
	END;
	RETURN 'canceled';
END
$$;

-- Read-modify-write of a counter under entitlock.lock.  mode 1: with a
-- lock_timeout of t ms; 3 and 4: lock(name, t ms) instead; otherwise
-- lock(name).  The caller sets statement_timeout in modes 2 and 4.
-- Without locked, no lock.
CREATE FUNCTION bump(cname text, mode int, t int, catch int, locked boolean)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	phase text := 'start';
	v bigint;
BEGIN
	BEGIN
		phase := 'entitlock';
		IF NOT locked THEN
			NULL;
		ELSIF mode IN (3, 4) THEN
			IF NOT entitlock.lock(cname, make_interval(secs => t / 1000.0)) THEN
				INSERT INTO cancels VALUES ('counter', phase, 'false');
				PERFORM set_config('statement_timeout', '0', true);
				RETURN 'gave up';
			END IF;
		ELSE
			PERFORM set_config('lock_timeout', CASE WHEN mode = 1 THEN t ELSE 0 END || 'ms', true);
			PERFORM entitlock.lock(cname);
			PERFORM set_config('lock_timeout', '0', true);
		END IF;
		phase := 'after';
		SELECT c.n INTO v FROM counter AS c WHERE c.name = cname;
		UPDATE counter AS c SET n = v + 1 WHERE c.name = cname;
		INSERT INTO increments VALUES (cname);
		PERFORM set_config('statement_timeout', '0', true);
		RETURN 'bumped';
	EXCEPTION WHEN query_canceled OR lock_not_available THEN
		PERFORM set_config('statement_timeout', '0', true);
		IF catch = 0 THEN RAISE; END IF;
		INSERT INTO cancels VALUES ('counter', phase, SQLSTATE, SQLERRM);
		RETURN 'canceled';
	END;
END
$$;
});

# The hot meter, with its limit a few seconds of calls away.
sql($t, qq{INSERT INTO usage_ledger
SELECT $LIMIT - $HEADROOM, true, entitlock.record_usage('hot', 'api', $LIMIT - $HEADROOM)});

# A third of the usage and payment transactions get a timeout of 1-20 ms:
# mode 1 a lock_timeout, mode 2 a statement_timeout (the counter has modes
# of its own, see bump).  catch = 0 (1%) re-raises the cancellation.
my $timeouts = q{
\set mode random(1, 6)
\set t random(1, 20)
\set lt case when :mode = 1 then :t else 0 end
\set st case when :mode = 2 then :t else 0 end
\set catch random(0, 99)
};

my %s;
if ($MUTATE eq 'split')
{
	$s{hot} = $timeouts . q{
\set amount random(1, 3)
\set signed case when random(1, 5) = 1 then 0 - :amount else :amount end
BEGIN;
SELECT set_config('statement_timeout', :st || 'ms', true);
SELECT allowed, used FROM hot(:signed, :lt, :catch, false) \gset
COMMIT;
\if :allowed >= 0
INSERT INTO usage_ledger VALUES (:signed, :allowed = 1, :used);
\endif
};
}
else
{
	$s{hot} = $timeouts . q{
\set amount random(1, 3)
\set signed case when random(1, 5) = 1 then 0 - :amount else :amount end
BEGIN;
SELECT set_config('statement_timeout', :st || 'ms', true);
SELECT hot(:signed, :lt, :catch);
COMMIT;
};
}

# Keys come from a pool of $KEYS per round (-D round), so each round
# starts with many concurrent first calls.
$s{keyed} = $timeouts . q{
\set k :round * 100000 + random(1, :keys)
BEGIN;
SELECT set_config('statement_timeout', :st || 'ms', true);
SELECT keyed(:k, :lt, :catch);
COMMIT;
};
$s{pay} = $timeouts . q{
\set k :round * 100000 + random(1, :keys)
\set fail random(1, 10)
BEGIN;
SELECT set_config('statement_timeout', :st || 'ms', true);
SELECT pay(:k, :lt, :catch);
\if :fail = 1
ROLLBACK;
\else
COMMIT;
\endif
};
$s{job} = q{
\set j :round * 100000 + random(1, :keys)
BEGIN;
SELECT entitlock.first_time('job-' || :j)::int AS first \gset
\if :first
INSERT INTO jobs VALUES (:j);
\endif
COMMIT;
};
$s{counter} = q{
\set mode random(1, 8)
\set t random(1, 20)
\set st case when :mode = 2 then :t when :mode = 4 then random(1, 20) else 0 end
\set catch random(0, 99)
BEGIN;
SELECT set_config('statement_timeout', :st || 'ms', true);
SELECT bump('counter', :mode, :t, :catch, :locked);
COMMIT;
};
$s{lease} = $EntitlockStress::LEASE_SCRIPT;
$s{watch} = $EntitlockStress::LEASE_WATCH;
$s{control} = q{
BEGIN;
SELECT bump('control', 0, 0, 1, false);
COMMIT;
};
my %f = map { ($_ => script($t, "$_.sql", $s{$_})) } keys %s;

# One round: both pgbench runs at once, a random backend terminated every
# 0.2-0.5 s while they run.
sub round
{
	my ($r) = @_;
	local $ENV{PGAPPNAME} = 'pgbench';
	my @conn = ('-h', $t->{host}, '-p', $t->{port}, $t->{db});
	my ($mo, $me, $lo, $le) = ('', '', '', '');
	my $main = IPC::Run::start(
		[
			'pgbench', '-n', '-T', 3, '-c', $MAIN_CLIENTS, '-j', 2,
			'-D', "round=$r", '-D', "keys=$KEYS",
			'-D', 'locked=' . ($MUTATE eq 'nolock' ? 'false' : 'true'),
			'-f', "$f{hot}\@6", '-f', "$f{keyed}\@3", '-f', "$f{pay}\@4",
			'-f', "$f{job}\@1", '-f', "$f{counter}\@4", @conn
		],
		'>', \$mo, '2>', \$me);
	my $lease = IPC::Run::start(
		[
			'pgbench', '-n', '-T', 3, '-c', $LEASE_CLIENTS, '-j', 1,
			'-D', 'impl=entitlock', '-f', "$f{lease}\@20",
			'-f', "$f{watch}\@1", @conn
		],
		'>', \$lo, '2>', \$le);
	my $kills = 0;
	my $running = sub {
		my $n = 0;
		for my $h ($main, $lease)
		{
			$n++ if eval { $h->pump_nb; 1 } && $h->pumpable;
		}
		return $n;
	};
	while ($running->())
	{
		usleep(200_000 + int(rand(4)) * 100_000);
		$kills += terminate($t) if $running->();
	}
	$main->finish;
	$lease->finish;
	return ($kills, "$mo\n$me\n$lo\n$le");
}

# Totals of the run so far.
sub totals
{
	my %v;
	@v{
		qw(used ledger allowed denied refunds wrong keyed_used keyed_sum
		  keyed_keys keyed_stored keyed_bad keyed_repeats payments paid_keys
		  claims unmatched replays bad_replays jobs job_keys job_claims
		  counter increments caught_st caught_lt caught_ur in_call gave_up
		  anomalies two_rows)
	  }
	  = split /\|/, sql($t, qq{
WITH u AS (SELECT * FROM entitlock.usage_idempotency WHERE subject = 'hot' AND feature = 'keyed')
SELECT entitlock.usage('hot', 'api'),
	   (SELECT coalesce(sum(amount) FILTER (WHERE allowed), 0) FROM usage_ledger),
	   (SELECT count(*) FILTER (WHERE allowed AND amount > 0) FROM usage_ledger),
	   (SELECT count(*) FILTER (WHERE NOT allowed) FROM usage_ledger),
	   (SELECT count(*) FILTER (WHERE amount < 0) FROM usage_ledger),
	   (SELECT count(*) FROM usage_ledger
		 WHERE used > $LIMIT OR (NOT allowed AND used + amount <= $LIMIT)),
	   entitlock.usage('hot', 'keyed'),
	   (SELECT coalesce(sum(amount), 0) FROM keyed_ledger),
	   (SELECT count(*) FROM keyed_ledger),
	   (SELECT count(*) FROM u),
	   (SELECT count(*) FROM keyed_ledger l FULL JOIN u ON u.idempotency_key = 'k-' || l.k
		 WHERE l.k IS NULL OR u.idempotency_key IS NULL OR u.amount <> l.amount),
	   (SELECT coalesce(sum(repeats), 0) FROM keyed_ledger),
	   (SELECT count(*) FROM payments),
	   (SELECT count(DISTINCT k) FROM payments),
	   (SELECT count(*) FROM entitlock.idempotency_key WHERE key LIKE 'pay-%'),
	   -- claims without their payment, or payments without their claim
	   (SELECT count(*) FROM (SELECT * FROM entitlock.idempotency_key WHERE key LIKE 'pay-%') c
			 FULL JOIN payments p ON c.key = 'pay-' || p.k
			WHERE p.id IS NULL OR c.key IS NULL
			   OR (c.response ->> 'payment')::bigint IS DISTINCT FROM p.id),
	   (SELECT count(*) FROM replays),
	   (SELECT count(*) FROM replays r
		 WHERE NOT EXISTS (SELECT FROM payments p WHERE p.k = r.k AND p.id = r.payment)),
	   (SELECT count(*) FROM jobs),
	   (SELECT count(DISTINCT j) FROM jobs),
	   (SELECT count(*) FROM entitlock.idempotency_key WHERE key LIKE 'job-%'),
	   (SELECT n FROM counter WHERE name = 'counter'),
	   (SELECT count(*) FROM increments WHERE name = 'counter'),
	   (SELECT count(*) FROM cancels WHERE message LIKE '%statement timeout'),
	   (SELECT count(*) FROM cancels WHERE message LIKE '%lock timeout'),
	   (SELECT count(*) FROM cancels WHERE message LIKE '%user request'),
	   (SELECT count(*) FROM cancels WHERE phase = 'entitlock' AND sqlstate <> 'false'),
	   (SELECT count(*) FROM cancels WHERE sqlstate = 'false'),
	   (SELECT count(*) FROM anomalies),
	   (SELECT count(*) FROM (SELECT name FROM entitlock.lease_record
							   GROUP BY name HAVING count(*) > 1) AS d)});
	@v{qw(acquisitions untimed overlaps misordered late_ok late releases)} =
	  lease_violations($t, 'entitlock');
	return %v;
}

my ($start, $rounds, $kills, $outs) = (time, 0, 0, '');
my %v;
while (1)
{
	my ($k, $out) = round($rounds++);
	$kills += $k;
	$outs .= $out;
	%v = totals();
	my $elapsed = time - $start;
	next if $elapsed < 24;
	last
	  if $elapsed >= 120
	  || ( $kills >= 3
		&& $v{caught_st} > 0
		&& $v{caught_lt} > 0
		&& $v{in_call} > 0
		&& $v{allowed} > 0
		&& $v{denied} > 0
		&& $v{refunds} > 0
		&& $v{keyed_repeats} > 0
		&& $v{replays} > 0
		&& $v{increments} > 0
		&& $v{acquisitions} >= 100);
}

# The timeouts this test causes on purpose.  Nothing here sends a cancel
# request, yet "user request" cancels occur: PostgreSQL 15 reports a
# statement_timeout that goes off while the query is still being parsed
# as "canceling statement due to user request" (it re-arms the expired
# timer, which clears the flag that says why).  The "catch" functions
# cannot catch it, as it fires before their block starts (as do some
# plain statement timeouts on a busy machine).
$t->{expected} =
  'canceling statement due to (statement timeout|lock timeout|user request)';
my $unexpected = unexpected_errors($t, $outs);
my $server_log = slurp_file($node->logfile, $log_from);
my $escaped_st = () = $server_log =~
  /ERROR:  canceling statement due to statement timeout/g;
my $escaped_lt = () = $server_log =~
  /ERROR:  canceling statement due to lock timeout/g;
my @died = grep { /terminated by signal|PANIC|TRAP:/ } split /\n/,
  $server_log;

note sprintf('%d rounds in %d s, %d backends terminated', $rounds,
	time - $start, $kills);
note "hot: usage $v{used}, ledger $v{ledger} ($v{allowed} allowed, $v{denied} denied, $v{refunds} refunds), $v{wrong} wrong decisions";
note "keyed: usage $v{keyed_used}, ledger $v{keyed_sum}, $v{keyed_keys} keys, $v{keyed_stored} stored, $v{keyed_repeats} repeats";
note "payments: $v{payments} for $v{paid_keys} keys, $v{claims} claims, $v{replays} replays; jobs: $v{jobs}";
note "counter: $v{counter}, $v{increments} increments; leases: $v{acquisitions} acquisitions, $v{releases} released, $v{late} late calls";
note "timeouts caught: $v{caught_st} statement, $v{caught_lt} lock, $v{caught_ur} user request ($v{in_call} inside an entitlock call); escaped: $escaped_st statement, $escaped_lt lock; $v{gave_up} timed locks gave up";

is($unexpected, '', 'no pgbench error other than those the faults explain');
is("@died[0 .. ($#died < 2 ? $#died : 2)]", '',
	'no backend crashed on its own');
cmp_ok($kills, '>=', 3, 'backends were terminated');
ok($v{caught_st} > 0 && $v{caught_lt} > 0 && $v{in_call} > 0,
	'statement and lock timeouts fired inside entitlock calls');
is($v{used}, $v{ledger}, 'hot usage equals the committed allowed amounts');
ok($v{used} <= $LIMIT && $v{wrong} == 0,
	'usage within the limit, no call denied under it');
ok($v{allowed} > 0 && $v{denied} > 0 && $v{refunds} > 0,
	'the run reached the limit and refunded');
is($v{keyed_used}, $v{keyed_sum}, 'keyed usage equals its ledger');
ok( $v{keyed_stored} == $v{keyed_keys}
	  && $v{keyed_bad} == 0
	  && $v{keyed_repeats} > 0,
	'keyed usage and its ledger agree on keys (and keys repeated)');
is($v{payments}, $v{paid_keys}, 'no key was paid twice');
ok($v{claims} == $v{payments} && $v{unmatched} == 0,
	'claims and payments agree');
ok($v{replays} > 0 && $v{bad_replays} == 0,
	'every replay was handed its payment (and keys were replayed)');
ok($v{jobs} == $v{job_keys} && $v{jobs} == $v{job_claims},
	'each job ran once, with its claim');
ok($v{counter} == $v{increments} && $v{increments} > 0,
	"the counter equals its committed increments ($v{increments})");
is($v{anomalies}, 0,
	'no claim outlived its canceled subtransaction: '
	  . sql($t, "SELECT string_agg(DISTINCT what, '; ') FROM anomalies"));
ok($v{acquisitions} >= 100 && $v{untimed} == 0,
	"leases were acquired ($v{acquisitions}), each with its times");
ok($v{overlaps} == 0 && $v{misordered} == 0 && $v{late_ok} == 0,
	'no leases overlapped, fencing followed time, no late call succeeded');
is($v{two_rows}, 0, 'no lease name had two rows');

# Control: the same read-modify-write without the lock must lose updates.
run_pgbench($t,
	[ '-T', 3, '-c', $MAIN_CLIENTS, '-j', 2, '-f', $f{control} ]);
my ($c_n, $c_inc) = split /\|/, sql($t,
	"SELECT n, (SELECT count(*) FROM increments WHERE name = 'control') FROM counter WHERE name = 'control'"
);
cmp_ok($c_n, '<', $c_inc,
	"control without the lock: counter $c_n after $c_inc increments");

$node->stop;
done_testing();
