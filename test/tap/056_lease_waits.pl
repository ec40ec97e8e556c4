# test/tap/056_lease_waits.pl: bounded waits of lease_acquire.
#
# 16 pgbench clients wait on 2 leases (job:1, job:2) whose holders let go
# at random.  Each client calls, in autocommit,
#   lease_acquire('job:' || random(1, 2), ttl, 'c' || client, wait)
# with a wait of 50-500 ms.  A client that gets the lease records the
# holding in an insert-only ledger (right after the acquiring statement
# committed), works for 1-8 ms (pg_sleep) and then, three times in four,
# records that its work is done and releases the lease (ttl 2 s); once in
# four it took a short ttl (20-60 ms) and walks away, so the lease ends by
# expiring and the next waiter must wake at the expiry.  Every attempt is
# recorded, in its own transaction, with its start and end time
# (clock_timestamp() around the call, inside a PL/pgSQL wrapper), its wait
# bound and its outcome, and, when served, the lease row's acquired_at and
# expires_at as the acquiring transaction sees them.
#
# What is guaranteed, and so checked, per name:
#   - a holding is exclusive from the moment the acquiring statement has
#     committed (the ledger's "held" time) until the earlier of the
#     holder's "work done" time (read before it calls lease_release) and
#     its lease's expires_at.  No two such intervals of one name intersect;
#   - server side: a lease is taken no earlier than the end of the one
#     before it (the release call, or its expiry), and fencing numbers
#     increase in the order of acquired_at;
#   - every attempt ended within its wait bound + 200 ms (the lateness
#     allowed on a loaded 2-core machine); one that timed out did not end
#     before its bound (less 2 ms of clock rounding);
#   - no waiter slept through a free lease: when a lease ended while an
#     attempt on the name was waiting and went on waiting for another
#     200 ms, someone took the lease within those 200 ms;
#   - waiters were really served after waiting, both endings occurred
#     (runs of 12 s go on until enough happened, at most 90 s);
#   - zero pgbench errors, and both names can be had after the run;
#   - the library is preloaded, so entitlock.stats must agree with the
#     ledger: its lease calls, timeouts and takeovers.
#
# Two controls show that the checks can fail:
#   - "none": lease_acquire replaced by nothing at all (every client
#     "gets" the name at once): the overlap check must find overlaps;
#   - "sleepy": a waiter that does not watch the lease but sleeps through
#     its whole wait (300-500 ms) and then tries once (lease_acquire
#     without wait), 4 clients: the wake-up check must find free leases
#     left unserved while an attempt was waiting.
#
# Run with: bash test/tap.sh test/tap/056_lease_waits.pl

use strict;
use warnings;

use EntitlockStress;
use Test::More;
use Time::HiRes qw(time);

my $CLIENTS = 16;
my $TOL = 200;

my $node = stress_node('main', "shared_preload_libraries = 'entitlock'");
my $t = target($node, 'entitlock_stress_lease_waits');
create_db($t);
sql($t, q{
-- run is 'entitlock' (the real leases), 'none' or 'sleepy' (the controls)
CREATE TABLE attempts (
	run text NOT NULL,
	client int NOT NULL,
	name text NOT NULL,
	wait_ms int NOT NULL,
	ttl_ms int NOT NULL,
	t0 timestamptz NOT NULL,		-- before the call
	t1 timestamptz NOT NULL,		-- after it returned
	fencing bigint,					-- NULL: timed out
	acquired_at timestamptz,		-- the lease row, as the acquirer saw it
	expires_at timestamptz
);
-- insert-only: 'held' (after the acquiring commit), 'work_done' (before
-- the release call), 'released' (after it, with its result)
CREATE TABLE ledger (
	run text NOT NULL,
	event text NOT NULL,
	name text NOT NULL,
	fencing bigint NOT NULL,
	client int NOT NULL,
	at timestamptz NOT NULL,
	ok boolean
);
CREATE INDEX ON attempts (run, name, t0);
CREATE INDEX ON ledger (run, fencing, event);
CREATE SEQUENCE fake_fencing;

CREATE FUNCTION attempt(run text, lease text, ttl_ms int, client int, wait_ms int,
						OUT got_fencing bigint, OUT got_token uuid)
LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz;
	t1 timestamptz;
	acq timestamptz;
	exp timestamptz;
BEGIN
	t0 := clock_timestamp();
	IF run = 'entitlock' THEN
		SELECT a.fencing, a.token INTO got_fencing, got_token
		  FROM entitlock.lease_acquire(lease, make_interval(secs => ttl_ms / 1000.0),
									   'c' || client,
									   make_interval(secs => wait_ms / 1000.0)) AS a;
	ELSIF run = 'sleepy' THEN
		-- the control of wake-ups: sleep through the wait, then try once
		PERFORM pg_sleep(wait_ms / 1000.0);
		SELECT a.fencing, a.token INTO got_fencing, got_token
		  FROM entitlock.lease_acquire(lease, make_interval(secs => ttl_ms / 1000.0),
									   'c' || client) AS a;
	ELSE
		-- the control: no lease at all, everybody "gets" it
		got_fencing := nextval('fake_fencing');
		got_token := gen_random_uuid();
	END IF;
	t1 := clock_timestamp();
	IF got_fencing IS NOT NULL THEN
		IF run <> 'none' THEN
			-- this transaction's own row: nobody can change it before we commit
			SELECT r.acquired_at, r.expires_at INTO acq, exp
			  FROM entitlock.lease_record AS r WHERE r.fencing = got_fencing;
		ELSE
			acq := t1;
			exp := t1 + make_interval(secs => ttl_ms / 1000.0);
		END IF;
	END IF;
	INSERT INTO attempts
	VALUES (run, client, lease, wait_ms, ttl_ms, t0, t1, got_fencing, acq, exp);
	got_fencing := coalesce(got_fencing, 0);
END
$$;

CREATE FUNCTION release(run text, lease text, token uuid) RETURNS boolean
LANGUAGE sql AS $$
	SELECT CASE WHEN run <> 'none' THEN entitlock.lease_release(lease, token)
				ELSE true END
$$;
});

my $waits = script($t, 'waits.sql', q{
\set n random(1, 2)
\set wait_ms random(:wait_min, 500)
\set walk_away random(1, 4)
\set hold_ms random(1, 8)
\if :walk_away = 1
\set ttl_ms random(20, 60)
\else
\set ttl_ms 2000
\endif
SELECT got_fencing AS fencing, got_token AS token
  FROM attempt(':run', 'job:' || :n, :ttl_ms, :client_id, :wait_ms) \gset
\if :fencing > 0
INSERT INTO ledger VALUES (':run', 'held', 'job:' || :n, :fencing, :client_id, clock_timestamp());
SELECT pg_sleep(:hold_ms / 1000.0);
\if :walk_away > 1
INSERT INTO ledger VALUES (':run', 'work_done', 'job:' || :n, :fencing, :client_id, clock_timestamp());
SELECT release(':run', 'job:' || :n, ':token') AS ok \gset
INSERT INTO ledger VALUES (':run', 'released', 'job:' || :n, :fencing, :client_id, clock_timestamp(), ':ok'::boolean);
\endif
\endif
});

# overlaps RUN: ANALYZE first (so that the joins are not nested loops
# planned for empty tables); then holdings, non-empty holding intervals
# and the overlapping ones among them (an interval that begins before an
# earlier one of its name has ended).
sub overlaps
{
	return split /\|/, sql($t, q{
ANALYZE attempts, ledger;
WITH h AS (
	SELECT a.name, a.fencing, held.at AS held_from,
		   least(a.expires_at, coalesce(w.at, 'infinity')) AS held_until
	  FROM attempts a
	  JOIN ledger held ON held.run = a.run AND held.fencing = a.fencing AND held.event = 'held'
	  LEFT JOIN ledger w ON w.run = a.run AND w.fencing = a.fencing AND w.event = 'work_done'
	 WHERE a.run = :'run' AND a.fencing IS NOT NULL),
	 o AS (
	SELECT *, max(held_until) OVER (PARTITION BY name ORDER BY held_from, fencing
									ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before_until
	  FROM h WHERE held_from < held_until)
SELECT (SELECT count(*) FROM h), count(*), count(*) FILTER (WHERE held_from < before_until)
  FROM o}, run => $_[0]);
}

# attempt_times RUN: attempts, served, timed out, served without a lease
# row of their own, ended later than bound + tolerance, timed out before
# the bound, served after waiting >= 20 ms and >= 100 ms, the worst
# lateness, and how soon after its bound the earliest timeout ended (ms).
sub attempt_times
{
	return split /\|/, sql($t, q{
WITH a AS (
	SELECT *, extract(epoch FROM t1 - t0) * 1000 AS took_ms
	  FROM attempts WHERE run = :'run')
SELECT count(*),
	   count(fencing),
	   count(*) FILTER (WHERE fencing IS NULL),
	   count(*) FILTER (WHERE fencing IS NOT NULL AND (acquired_at IS NULL OR expires_at IS NULL)),
	   count(*) FILTER (WHERE took_ms > wait_ms + :tol),
	   count(*) FILTER (WHERE fencing IS NULL AND took_ms < wait_ms - 2),
	   count(*) FILTER (WHERE fencing IS NOT NULL AND took_ms >= 20),
	   count(*) FILTER (WHERE fencing IS NOT NULL AND took_ms >= 100),
	   round(coalesce(max(took_ms - wait_ms), 0)::numeric, 1),
	   round(coalesce(min(took_ms - wait_ms) FILTER (WHERE fencing IS NULL), 0)::numeric, 1)
  FROM a}, run => $_[0], tol => $TOL);
}

# handovers RUN: server side, per name in fencing order: leases taken
# before the previous one ended (its release call, or its expiry),
# acquired_at out of fencing order; releases, leases left to expire,
# takeovers of an expired lease and the latest one after its expiry (ms);
# free leases that an attempt went on waiting for over the tolerance;
# the longest a free lease stayed so while an attempt was waiting
# throughout (ms); release calls that returned false.
sub handovers
{
	return split /\|/, sql($t, q{
WITH h AS (
	SELECT a.name, a.fencing, a.acquired_at, a.expires_at, w.at AS work_done,
		   r.at AS released_at, r.ok AS released_ok
	  FROM attempts a
	  LEFT JOIN ledger w ON w.run = a.run AND w.fencing = a.fencing AND w.event = 'work_done'
	  LEFT JOIN ledger r ON r.run = a.run AND r.fencing = a.fencing AND r.event = 'released'
	 WHERE a.run = :'run' AND a.fencing IS NOT NULL),
	 s AS (
	SELECT *,
		   -- when this lease was over: its release (a time after the
		   -- release committed) or, unreleased, its expiry
		   CASE WHEN released_ok THEN least(released_at, expires_at) ELSE expires_at END AS ended,
		   lag(least(expires_at, coalesce(work_done, 'infinity'))) OVER w AS prev_end,
		   lag(acquired_at) OVER w AS prev_acquired,
		   lag(released_ok IS TRUE) OVER w AS prev_released,
		   lead(acquired_at) OVER w AS next_acquired
	  FROM h WINDOW w AS (PARTITION BY name ORDER BY fencing)),
	 gaps AS (
	SELECT s.*, extract(epoch FROM next_acquired - ended) * 1000 AS free_ms,
		   EXISTS (SELECT FROM attempts x
					WHERE x.run = :'run' AND x.name = s.name AND x.t0 < s.ended
					  AND x.t1 > s.ended + make_interval(secs => :tol / 1000.0)) AS waited_over_tol,
		   EXISTS (SELECT FROM attempts x
					WHERE x.run = :'run' AND x.name = s.name AND x.t0 < s.ended
					  AND x.t1 >= s.next_acquired) AS waited_throughout
	  FROM s)
SELECT count(*) FILTER (WHERE acquired_at < prev_end),
	   count(*) FILTER (WHERE acquired_at <= prev_acquired),
	   count(*) FILTER (WHERE released_ok),
	   count(*) FILTER (WHERE released_ok IS NOT TRUE),
	   count(*) FILTER (WHERE prev_released = false),
	   round(coalesce(max(extract(epoch FROM acquired_at - prev_end) * 1000)
							FILTER (WHERE prev_released = false), 0)::numeric, 1),
	   count(*) FILTER (WHERE waited_over_tol AND
							  coalesce(next_acquired, 'infinity') > ended + make_interval(secs => :tol / 1000.0)),
	   round(coalesce(max(free_ms) FILTER (WHERE waited_throughout), 0)::numeric, 1),
	   count(*) FILTER (WHERE released_ok = false)
  FROM gaps}, run => $_[0], tol => $TOL);
}

sql($t, 'SELECT entitlock.stats_reset()');
my ($start, $errors, $failed, $runs) = (time, '', 0, 0);
my (@times, @hand);
while (1)
{
	my $run = run_pgbench($t,
		[
			'-c', $CLIENTS, '-j', 2, '-T', 12, '-D', 'run=entitlock',
			'-D', 'wait_min=50', '-f', $waits
		]);
	$runs++;
	$failed++ if $run->{rc} != 0;
	$errors .= join "\n",
	  grep { /error|abort|fatal/i } split /\n/, "$run->{out}\n$run->{err}";
	@times = attempt_times('entitlock');
	@hand = handovers('entitlock');
	my ($attempts, $served, $timed_out, $served_waiting, $served_long) =
	  @times[ 0, 1, 2, 6, 7 ];
	my ($released, $takeovers) = @hand[ 2, 4 ];
	last
	  if time - $start >= 90
	  || ( $attempts >= 500
		&& $served >= 200
		&& $timed_out >= 50
		&& $served_waiting >= 50
		&& $served_long >= 10
		&& $released >= 50
		&& $takeovers >= 20);
}

my ($holdings, $intervals, $overlapping) = overlaps('entitlock');
my ($attempts, $served, $timed_out, $untimed, $too_late, $too_early,
	$served_waiting, $served_long, $max_late_ms, $early_ms)
  = @times;
my ($early_takes, $misordered, $released, $expired, $takeovers,
	$late_takeover_ms, $missed, $longest_free_ms, $release_false)
  = @hand;

note "$runs runs: $attempts attempts: $served served ($served_waiting after waiting >= 20 ms, $served_long >= 100 ms), $timed_out timed out";
note "$holdings holdings: $released released, $expired left to expire ($takeovers taken over at expiry, at worst $late_takeover_ms ms after it); $release_false late releases returned false";
note "worst lateness $max_late_ms ms past the bound; the earliest timeout ended $early_ms ms after its bound; longest free with an attempt waiting: $longest_free_ms ms";

is($failed, 0, 'every pgbench run succeeded');
is($errors, '', 'pgbench reported no error');
ok($attempts >= 500 && $served >= 200 && $timed_out >= 50,
	"enough happened: $attempts attempts, $served served, $timed_out timed out");
is($untimed, 0, 'every served attempt found its own lease row');
is($holdings, $served, 'one holding in the ledger per served attempt');
is($overlapping, 0, 'no holding overlapped an earlier one of its name');
is($early_takes, 0,
	'no lease was taken before the previous one was released or expired');
is($misordered, 0, 'fencing numbers follow the order of acquisition');
is($too_late, 0, "no attempt ended more than $TOL ms after its bound");
is($too_early, 0, 'no attempt timed out before its bound');
is($missed, 0, 'no lease stayed free while an attempt went on waiting');
ok($served_waiting >= 50 && $served_long >= 10,
	"waiters were served after waiting: $served_waiting after 20 ms, $served_long after 100 ms"
);
ok($released >= 50 && $takeovers >= 20,
	"both endings occurred: $released releases, $takeovers takeovers at expiry");

# The counts in shared memory: one lease call per attempt and per release;
# a timeout per attempt without a row (every wait here is > 0); a takeover
# per lease taken over at expiry.
my ($s_calls, $s_timeouts, $s_takeovers, $s_waits) = split /\|/, sql($t,
	"SELECT calls, timeouts, takeovers, waits FROM entitlock.stats WHERE kind = 'lease' AND label = 'job'"
);
my $releases = sql($t,
	"SELECT count(*) FROM ledger WHERE run = 'entitlock' AND event = 'released'");
is($s_calls, $attempts + $releases, 'stats: lease calls = attempts + releases');
is($s_timeouts, $timed_out, 'stats: lease timeouts = timed-out attempts');
is($s_takeovers, $takeovers,
	'stats: lease takeovers = leases taken over at expiry');
cmp_ok($s_waits, '>=', $served_waiting,
	'stats: at least as many waits as attempts served after waiting');

# Nothing is stuck: both names can be had once the last ttl (2 s) is
# over.  (Those leases, of 1 s, are over before the sleepy control.)
is( sql($t, q{SET statement_timeout = '10s';
SELECT count(*) FROM generate_series(1, 2) AS n,
	   entitlock.lease_acquire('job:' || n, '1 s', wait => '3 s')}),
	2,
	'both names can be acquired after the run');

# Control 1: without the lease every client "holds" the name at once; the
# overlap check must see it.
run_pgbench($t,
	[
		'-c', $CLIENTS, '-j', 2, '-T', 3, '-D', 'run=none',
		'-D', 'wait_min=50', '-f', $waits
	]);
my (undef, $c_intervals, $c_overlapping) = overlaps('none');
cmp_ok($c_overlapping, '>', 0,
	"control without a lease: $c_overlapping of $c_intervals holdings overlap");

# Control 2: waiters that sleep through their wait (300-500 ms) and try
# once at its end, 4 clients; the wake-up check must see free leases left
# unserved (and the real lease still allows no overlap).
run_pgbench($t,
	[
		'-c', 4, '-j', 2, '-T', 5, '-D', 'run=sleepy',
		'-D', 'wait_min=300', '-f', $waits
	]);
my (undef, undef, $z_overlapping) = overlaps('sleepy');
my @z = handovers('sleepy');
cmp_ok($z[6], '>', 0,
	"control of sleeping waiters: $z[6] free leases left unserved over $TOL ms");
is($z_overlapping, 0, 'no overlapping holdings in the sleepy control');

$node->stop;
done_testing();
