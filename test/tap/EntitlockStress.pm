# test/tap/EntitlockStress.pm: what the pgbench stress tests share.
#
# A stress test works on a "target": a database, reached at a host and
# port (the node itself, or a pooler in front of it), with the node kept
# for what must go to the server directly (creating the database,
# terminating backends, reading its log).  The workloads that are run both
# directly and behind PgBouncer (usage, idempotency, leases, locks) are
# functions here, so that test/tap/05x_*.pl and 059_pgbouncer.pl run the
# same checks.
#
# pgbench runs in the background (IPC::Run), so that backends can be
# terminated while it runs; its output is checked with ok()/is() by the
# callers.  A killed backend makes pgbench give up on that client, so the
# tests that kill backends run pgbench in rounds of 3 s.

package EntitlockStress;

use strict;
use warnings;

use Exporter 'import';
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

our @EXPORT = qw(stress_node target create_db sql psql_try script
  run_pgbench stress_under_kills unexpected_errors pgbench_committed
  poll_until usage_workload idempotency_workload leases_workload
  locks_workload terminate lease_violations);

# stress_node NAME, CONF...: a started node for pgbench load (the
# settings test/lib.sh's cluster_start used), with CONF lines added.
sub stress_node
{
	my ($name, @conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf',
		join("\n",
			'max_connections = 120',
			'max_locks_per_transaction = 256',
			'log_statement = none', @conf)
		  . "\n");
	$node->start;
	return $node;
}

# target NODE, DB, host => H, port => P, expected => REGEX: where a
# workload runs (the node's own host and port unless given), and the
# pgbench errors to accept besides those a terminated backend causes.
sub target
{
	my ($node, $db, %o) = @_;
	return {
		node => $node,
		db => $db,
		host => $o{host} // $node->host,
		port => $o{port} // $node->port,
		expected => $o{expected},
	};
}

# create_db T: T's database, fresh, with the extension (created on the
# node directly; the extension through the target).
sub create_db
{
	my ($t) = @_;
	$t->{node}->safe_psql('postgres',
		"DROP DATABASE IF EXISTS $t->{db} WITH (FORCE)");
	$t->{node}->safe_psql('postgres', "CREATE DATABASE $t->{db}");
	sql($t, 'CREATE EXTENSION entitlock');
	return;
}

# psql_try T, SQL, VARS: (exit status, stdout, stderr) of psql -At on T
# with SQL on its standard input; VARS are psql -v variables.
sub psql_try
{
	my ($t, $sql, %vars) = @_;
	my ($out, $err) = ('', '');
	my @cmd = (
		'psql', '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1',
		(map { ('-v', "$_=$vars{$_}") } sort keys %vars),
		'-h', $t->{host}, '-p', $t->{port}, '-d', $t->{db});
	IPC::Run::run(\@cmd, '<', \$sql, '>', \$out, '2>', \$err,
		IPC::Run::timeout(300));
	my $rc = $? >> 8;
	chomp $out;
	return ($rc, $out, $err);
}

# sql T, SQL, VARS: its output; dies when psql fails.
sub sql
{
	my ($t, $sql, %vars) = @_;
	my ($rc, $out, $err) = psql_try($t, $sql, %vars);
	die "psql failed ($rc): $err\nquery: $sql" if $rc != 0;
	return $out;
}

# script T, NAME, TEXT: TEXT written to a file for pgbench; its path.
sub script
{
	my ($t, $name, $text) = @_;
	my $path = $t->{node}->basedir . "/$t->{db}.$name";
	unlink $path;
	append_to_file($path, $text);
	return $path;
}

# The transactions one pgbench output says it committed.
sub pgbench_committed
{
	my ($out) = @_;
	return $out =~ /^number of transactions actually processed: (\d+)/m
	  ? $1
	  : 0;
}

# terminate T: terminates one of T's pgbench backends, if any, at random
# (on the server directly); how many it terminated.
sub terminate
{
	my ($t) = @_;
	# One session for all the kills, kept in T: a psql per kill is slow.
	$t->{killer} //= $t->{node}->background_psql('postgres');
	my $n = $t->{killer}->query_safe(qq{
SELECT count(pg_terminate_backend(pid))
  FROM (SELECT pid FROM pg_stat_activity
		 WHERE datname = '$t->{db}' AND application_name = 'pgbench'
		 ORDER BY random() LIMIT 1) AS victim});
	return $n || 0;
}

# run_pgbench T, [ARGS], kill => 1, tick => CODE: one pgbench run on T
# (-n, plus ARGS), in the background; with kill, a random pgbench backend
# of T is terminated every 0.2-0.5 s meanwhile; tick is called every
# 0.2 s or so.  Returns { rc, out, err, kills, committed }.
sub run_pgbench
{
	my ($t, $args, %o) = @_;
	my ($out, $err) = ('', '');
	my @cmd = (
		'pgbench', '-n', @$args, '-h', $t->{host}, '-p', $t->{port},
		$t->{db});
	# (PostgreSQL::Test::Utils sets PGAPPNAME to the test's name.)
	local $ENV{PGAPPNAME} = 'pgbench';
	my $h = IPC::Run::start(\@cmd, '>', \$out, '2>', \$err);
	my $kills = 0;
	# pump_nb dies when pgbench has just ended: the loop then ends.
	while (eval { $h->pump_nb; 1 } && $h->pumpable)
	{
		usleep($o{kill} ? 200_000 + int(rand(4)) * 100_000 : 200_000);
		last unless eval { $h->pump_nb; 1 } && $h->pumpable;
		$kills += terminate($t) if $o{kill};
		$o{tick}->() if $o{tick};
	}
	$h->finish;
	my $rc = $h->full_result(0) >> 8;
	return {
		rc => $rc,
		out => $out,
		err => $err,
		kills => $kills,
		committed => pgbench_committed($out)
	};
}

# pgbench's words for a terminated backend: its FATAL, the lost
# connection, the aborted client and run.
my $kill_errors = join '|',
  'terminating connection due to administrator command',
  'server closed the connection', 'connection to server .* lost',
  'lost synchronization with server', 'perhaps the backend died',
  'Run was aborted', 'number of failed transactions';

# unexpected_errors T, TEXTS: the error lines in pgbench outputs TEXTS that
# neither a terminated backend nor T's expected errors explain (at most
# five), as one string ('' when none).
sub unexpected_errors
{
	my ($t, @texts) = @_;
	my @lines = grep {
		/error|aborted|fatal/i
		  && !/$kill_errors/i
		  && !(defined $t->{expected} && /$t->{expected}/)
	} map { split /\n/ } @texts;
	return join "\n", @lines[ 0 .. ($#lines < 4 ? $#lines : 4) ];
}

# stress_under_kills T, ARGS, min => S, cap => S, until => CODE: rounds of
# 3 s of pgbench (ARGS, plus -D round=N) on T while its backends are
# terminated at random, for at least min seconds, then until "until"
# (given the totals so far) returns true or cap seconds have passed.
# Returns { rounds, kills, committed, unexpected, seconds }.
sub stress_under_kills
{
	my ($t, $args, %o) = @_;
	my $start = time;
	my %r = (rounds => 0, kills => 0, committed => 0);
	my @outs;
	while (1)
	{
		my $run = run_pgbench($t, [ '-T', 3, '-D', "round=$r{rounds}", @$args ],
			kill => 1);
		$r{rounds}++;
		$r{kills} += $run->{kills};
		$r{committed} += $run->{committed};
		push @outs, $run->{out}, $run->{err};
		my $elapsed = time - $start;
		next if $elapsed < $o{min};
		last if $elapsed >= $o{cap};
		last if !$o{until} || ($r{kills} >= 3 && $o{until}->(\%r));
	}
	$r{seconds} = int(time - $start);
	$r{unexpected} = unexpected_errors($t, @outs);
	if ($t->{killer})
	{
		$t->{killer}->quit;
		delete $t->{killer};
	}
	note "$t->{db}: $r{rounds} rounds in $r{seconds} s, $r{committed} "
	  . "transactions committed, $r{kills} backends terminated";
	return \%r;
}

# poll_until T, SQL: SQL on T until it returns t, at most 30 s.
sub poll_until
{
	my ($t, $query) = @_;
	for (1 .. 600)
	{
		my ($rc, $out) = psql_try($t, $query);
		return 1 if $rc == 0 && $out eq 't';
		usleep(50_000);
	}
	diag "timed out waiting for: $query";
	return 0;
}

#
# The workloads.  Each takes a target and, optionally, min (seconds of
# load before the end conditions are looked at), cap and clients.
#

# 32 clients on one hot (subject, feature), backends terminated at random.
# The meter starts 2,000 below its limit (a ledger row records that).
# Every transaction calls record_usage_if_under_limit and, in the same
# transaction, appends the decision it got to a ledger; a killed backend
# rolls back both.  So the recorded usage must equal the sum of the
# allowed amounts in the ledger (nothing recorded twice, nothing lost), and
# must not exceed the limit.  The limit is reached early, so most calls
# near it are denials; the rounds go on until it is (or the cap).  A
# second meter takes idempotency keys drawn from a small set, so keys
# repeat and arrive concurrently: each key must be recorded once, and
# every repeat must get the first decision.  A control does check-then-
# record without entitlock's lock and must overshoot its limit, showing
# the check can see the bug.
sub usage_workload
{
	my ($t, %o) = @_;
	my $clients = $o{clients} // 32;
	my ($limit, $headroom, $idem_limit) = (20000, 2000, 4000);
	my $d = $t->{db};
	create_db($t);
	sql($t, q{
CREATE TABLE ledger (amount bigint NOT NULL, allowed boolean NOT NULL,
					 used bigint NOT NULL);
CREATE TABLE idem_ledger (k int PRIMARY KEY, amount bigint NOT NULL,
						  allowed boolean NOT NULL,
						  repeats int NOT NULL DEFAULT 0,
						  disagreed boolean NOT NULL DEFAULT false);
});
	sql($t, qq{INSERT INTO ledger
SELECT $limit - $headroom, true,
	   entitlock.record_usage('hot', 'api', $limit - $headroom)});
	my $hot = script($t, 'hot.sql', q{
\set amount random(1, 3)
BEGIN;
SELECT allowed::int AS allowed, used FROM entitlock.record_usage_if_under_limit('hot', 'api', :amount, :limit) \gset
INSERT INTO ledger VALUES (:amount, :allowed::boolean, :used);
COMMIT;
});
	# The amount is a function of the key, as a retry's would be.
	my $idem = script($t, 'idem.sql', q{
\set k random(1, 3000)
\set amount :k % 3 + 1
BEGIN;
SELECT allowed::int AS allowed FROM entitlock.record_usage_if_under_limit('hot', 'idem', :amount, :idem_limit, 'lifetime', 'key-' || :k) \gset
INSERT INTO idem_ledger AS l (k, amount, allowed) VALUES (:k, :amount, :allowed::boolean)
	ON CONFLICT (k) DO UPDATE
	SET repeats = l.repeats + 1,
		disagreed = l.disagreed OR l.allowed <> excluded.allowed;
COMMIT;
});

	my $r = stress_under_kills(
		$t,
		[
			'-c', $clients, '-j', 2, '-D', "limit=$limit",
			'-D', "idem_limit=$idem_limit", '-f', "$hot\@3", '-f', "$idem\@1"
		],
		min => $o{min} // 15,
		cap => $o{cap} // 120,
		until => sub {
			sql($t, "SELECT count(*) FILTER (WHERE NOT allowed) > 0 FROM ledger")
			  eq 't';
		});

	my ($used, $ledger_sum, $allowed, $denied, $over, $idem_used, $idem_sum,
		$idem_keys, $idem_rows, $disagreed, $repeats)
	  = split /\|/, sql($t, qq{
SELECT entitlock.usage('hot', 'api'),
	   (SELECT coalesce(sum(amount) FILTER (WHERE allowed), 0) FROM ledger),
	   (SELECT count(*) FILTER (WHERE allowed) FROM ledger),
	   (SELECT count(*) FILTER (WHERE NOT allowed) FROM ledger),
	   (SELECT count(*) FROM ledger WHERE used > $limit),
	   entitlock.usage('hot', 'idem'),
	   (SELECT coalesce(sum(amount) FILTER (WHERE allowed), 0) FROM idem_ledger),
	   (SELECT count(*) FROM entitlock.usage_idempotency WHERE feature = 'idem'),
	   (SELECT count(*) FROM idem_ledger),
	   (SELECT count(*) FROM idem_ledger WHERE disagreed),
	   (SELECT coalesce(sum(repeats), 0) FROM idem_ledger)});
	note "$d hot: usage $used, ledger $ledger_sum ($allowed allowed, $denied denied), limit $limit";
	note "$d keys: usage $idem_used, ledger $idem_sum, $idem_keys keys stored, $idem_rows in ledger, $repeats repeats, $disagreed disagreed";

	is($r->{unexpected}, '', "$d: no pgbench error other than the kills'");
	cmp_ok($r->{kills}, '>=', 3, "$d: backends were terminated");
	is($used, $ledger_sum, "$d: usage equals the committed allowed amounts");
	ok($used <= $limit && $over == 0, "$d: usage never went over the limit");
	ok($allowed > 0 && $denied > 0, "$d: the run reached the limit");
	is($idem_used, $idem_sum, "$d: keyed usage equals its ledger");
	cmp_ok($idem_used, '<=', $idem_limit, "$d: keyed usage within its limit");
	is($idem_keys, $idem_rows, "$d: each committed key stored once");
	ok($disagreed == 0 && $repeats > 0,
		"$d: repeated keys got the first decision (and keys did repeat)");

	# Nothing is left locked: a new call gets through at once.
	my ($rc) = psql_try($t, q{SET lock_timeout = '1s';
SELECT allowed FROM entitlock.record_usage_if_under_limit('hot', 'api', 1, 1)});
	is($rc, 0, "$d: no lock was left behind");

	# Control: check, then record, without entitlock's lock, must overshoot.
	my $naive = script($t, 'naive.sql', q{
SELECT entitlock.usage('control', 'api') AS u \gset
\if :u < 200
SELECT entitlock.record_usage('control', 'api', 1);
\endif
});
	run_pgbench($t, [ '-c', $clients, '-j', 2, '-T', 3, '-f', $naive ]);
	my $control = sql($t, "SELECT entitlock.usage('control', 'api')");
	cmp_ok($control, '>', 200,
		"$d: control: check-then-record without the lock overshoots its limit of 200"
	);
	return;
}

# 32 clients submit "payments" under idempotency keys drawn from a small
# set, so keys repeat and duplicates arrive concurrently, while backends
# are terminated at random and one transaction in ten rolls back after its
# write.  'new' inserts the payment and completes the key with its id in
# the same transaction; 'replay' logs the id it was given; first_time()
# runs jobs.  Each round draws from a fresh set of keys, so every round
# starts with many concurrent first claims.  Every key's payment must
# exist once, each committed claim match a committed payment and store its
# id, every replay have been handed that id.  A control does the
# hand-written check-then-insert and must apply some key twice.
sub idempotency_workload
{
	my ($t, %o) = @_;
	my $clients = $o{clients} // 32;
	my $keys = 2000;
	my $d = $t->{db};
	create_db($t);
	sql($t, q{
CREATE TABLE payments (id bigserial PRIMARY KEY, k int NOT NULL,
					   amount int NOT NULL);
CREATE TABLE replays (k int NOT NULL, payment bigint NOT NULL);
CREATE TABLE jobs (j int NOT NULL);
CREATE TABLE naive_claims (k int NOT NULL);
CREATE TABLE naive_payments (k int NOT NULL);
});
	# The fingerprint is a function of the key, as a real retry's would be.
	my $pay = script($t, 'pay.sql', q{
\set k :round * 100000 + random(1, :keys)
\set fail random(1, 10)
BEGIN;
SELECT (status = 'new')::int AS is_new, coalesce(response ->> 'payment', '0') AS replayed
  FROM entitlock.idempotency_begin('pay-' || :k, 'amount=' || (:k % 7 + 1)) \gset
\if :is_new
INSERT INTO payments (k, amount) VALUES (:k, :k % 7 + 1) RETURNING id \gset
SELECT entitlock.idempotency_complete('pay-' || :k, jsonb_build_object('payment', :id));
\else
INSERT INTO replays VALUES (:k, :replayed);
\endif
\if :fail = 1
ROLLBACK;
\else
COMMIT;
\endif
});
	my $job = script($t, 'job.sql', q{
\set j :round * 100000 + random(1, :keys)
BEGIN;
SELECT entitlock.first_time('job-' || :j)::int AS first \gset
\if :first
INSERT INTO jobs VALUES (:j);
\endif
COMMIT;
});
	my $r = stress_under_kills(
		$t,
		[
			'-c', $clients, '-j', 2, '-D', "keys=$keys",
			'-f', "$pay\@3", '-f', "$job\@1"
		],
		min => $o{min} // 15,
		cap => $o{cap} // 120,
		until => sub { sql($t, 'SELECT count(*) > 0 FROM replays') eq 't' });

	my ($payments, $paid_keys, $claims, $unmatched, $replays, $bad_replays,
		$jobs, $job_keys, $job_claims)
	  = split /\|/, sql($t, q{
SELECT (SELECT count(*) FROM payments),
	   (SELECT count(DISTINCT k) FROM payments),
	   (SELECT count(*) FROM entitlock.idempotency_key WHERE key LIKE 'pay-%'),
	   -- claims without their payment, or payments without their claim
	   (SELECT count(*) FROM entitlock.idempotency_key c
			 FULL JOIN payments p ON c.key = 'pay-' || p.k
			WHERE (c.key IS NULL OR c.key LIKE 'pay-%')
			  AND (p.id IS NULL OR c.key IS NULL
				   OR (c.response ->> 'payment')::bigint IS DISTINCT FROM p.id
				   OR c.fingerprint IS DISTINCT FROM 'amount=' || p.amount)),
	   (SELECT count(*) FROM replays),
	   (SELECT count(*) FROM replays r
			WHERE NOT EXISTS (SELECT FROM payments p
							   WHERE p.k = r.k AND p.id = r.payment)),
	   (SELECT count(*) FROM jobs),
	   (SELECT count(DISTINCT j) FROM jobs),
	   (SELECT count(*) FROM entitlock.idempotency_key WHERE key LIKE 'job-%')});
	note "$d payments: $payments for $paid_keys keys, $claims claims, $unmatched mismatched; $replays replays, $bad_replays wrong; jobs: $jobs rows for $job_keys keys, $job_claims claims";

	is($r->{unexpected}, '', "$d: no pgbench error other than the kills'");
	cmp_ok($r->{kills}, '>=', 3, "$d: backends were terminated");
	is($payments, $paid_keys, "$d: no key was paid twice");
	ok($claims == $payments && $unmatched == 0,
		"$d: claims and payments agree");
	ok($replays > 0 && $bad_replays == 0,
		"$d: every replay was handed its key's payment (and keys were replayed)");
	ok($jobs == $job_keys && $jobs == $job_claims,
		"$d: each job ran once, with its claim");

	# Nothing is left claimed or locked: every key answers at once.
	my ($rc) = psql_try($t, q{SET lock_timeout = '2s';
SELECT count(*) FROM (SELECT DISTINCT k FROM payments) AS p,
	   entitlock.idempotency_begin('pay-' || k)});
	is($rc, 0, "$d: no key was left locked");

	# Control: look, then claim, without entitlock, must apply some key twice.
	my $naive = script($t, 'naive.sql', q{
\set k random(1, 200)
BEGIN;
SELECT count(*) = 0 AS fresh FROM naive_claims WHERE k = :k \gset
\if :fresh
SELECT pg_sleep(0.001);
INSERT INTO naive_payments VALUES (:k);
INSERT INTO naive_claims VALUES (:k);
\endif
COMMIT;
});
	run_pgbench($t, [ '-c', $clients, '-j', 2, '-T', 3, '-f', $naive ]);
	cmp_ok(
		sql($t, 'SELECT count(*) - count(DISTINCT k) FROM naive_payments'),
		'>', 0,
		"$d: control: look-then-claim without entitlock applies keys twice");
	return;
}

# The lease script of leases_workload (and of 050_faults.pl, with impl
# entitlock): acquire (one in ten rolled back) and record it in history;
# then renew halfway and release, release, or sleep past the ttl (a slow
# worker) and renew or release anyway, recorded in late_calls.  :impl is
# entitlock or naive; both have lease_record with the same columns.
our $LEASE_SCRIPT = q{
\set n random(0, 2)
\set ttl_ms random(50, 250)
\set act random(1, 4)
\set fail random(1, 10)
BEGIN;
WITH a AS (SELECT * FROM :impl.lease_acquire('lease-' || :n, make_interval(secs => :ttl_ms / 1000.0), 'c' || :client_id)),
	 i AS (INSERT INTO history (impl, fencing, name, token)
		   SELECT ':impl', fencing, 'lease-' || :n, token FROM a RETURNING fencing)
SELECT coalesce(max(fencing), 0) AS fencing FROM i \gset
UPDATE history h SET acquired_at = r.acquired_at, expires_at = r.expires_at
  FROM :impl.lease_record r
 WHERE h.impl = ':impl' AND h.fencing = :fencing AND r.fencing = :fencing;
\if :fail = 1
ROLLBACK;
\set fencing 0
\else
COMMIT;
\endif
\if :fencing > 0
\if :act = 1
-- renew halfway, then release
\set pause random(0, :ttl_ms / 2)
\sleep :pause ms
BEGIN;
SELECT coalesce((SELECT :impl.lease_renew(name, token, make_interval(secs => :ttl_ms / 1000.0))
				   FROM history WHERE impl = ':impl' AND fencing = :fencing), false)::int AS renewed \gset
UPDATE history h SET expires_at = r.expires_at
  FROM :impl.lease_record r
 WHERE :renewed = 1 AND h.impl = ':impl' AND h.fencing = :fencing AND r.fencing = :fencing;
COMMIT;
\set pause random(0, :ttl_ms / 2)
\sleep :pause ms
\endif
\if :act <= 2
-- release
WITH r AS (SELECT :impl.lease_release(name, token) AS ok
			 FROM history WHERE impl = ':impl' AND fencing = :fencing)
UPDATE history SET ended_at = clock_timestamp()
  FROM r WHERE r.ok AND impl = ':impl' AND fencing = :fencing;
\else
-- a slow worker: wakes after its lease expired, renews or releases anyway
\set pause random(:ttl_ms + 20, :ttl_ms + 200)
\sleep :pause ms
\set call random(0, 1)
BEGIN;
WITH h AS (SELECT * FROM history WHERE impl = ':impl' AND fencing = :fencing),
	 c AS (SELECT CASE WHEN :call = 0
					   THEN :impl.lease_renew(name, token, make_interval(secs => :ttl_ms / 1000.0))
					   ELSE :impl.lease_release(name, token) END AS ok
			 FROM h)
INSERT INTO late_calls
SELECT ':impl', :fencing, CASE WHEN :call = 0 THEN 'renew' ELSE 'release' END,
	   ok, clock_timestamp()
  FROM c;
UPDATE history h SET expires_at = r.expires_at
  FROM :impl.lease_record r, late_calls l
 WHERE :call = 0 AND l.impl = ':impl' AND l.fencing = :fencing AND l.ok
   AND h.impl = ':impl' AND h.fencing = :fencing AND r.fencing = :fencing;
UPDATE history h SET ended_at = l.at
  FROM late_calls l
 WHERE :call = 1 AND l.impl = ':impl' AND l.fencing = :fencing AND l.ok
   AND h.impl = ':impl' AND h.fencing = :fencing;
COMMIT;
\endif
\endif
};

# The history tables $LEASE_SCRIPT writes.
our $LEASE_TABLES = q{
CREATE TABLE history (
	impl text NOT NULL,
	fencing bigint NOT NULL,
	name text NOT NULL,
	token uuid NOT NULL,
	acquired_at timestamptz,
	expires_at timestamptz,
	ended_at timestamptz,
	PRIMARY KEY (impl, fencing)
);
-- renew and release calls made after the caller's lease had expired
CREATE TABLE late_calls (
	impl text NOT NULL,
	fencing bigint NOT NULL,
	call text NOT NULL,
	ok boolean NOT NULL,
	at timestamptz NOT NULL
);
};

# Fails (division by zero) the moment a lease name has two rows.
our $LEASE_WATCH = q{
SELECT 1 / (1 - least(count(*), 1)) AS ok
  FROM (SELECT name FROM :impl.lease_record GROUP BY name HAVING count(*) > 1) AS d;
\sleep 10 ms
};

# lease_violations T, IMPL: for IMPL's history: acquisitions, without
# times, overlapping the one before, fencing out of time order, late calls
# that succeeded after a newer acquisition, late calls, releases,
# takeovers after expiry.
sub lease_violations
{
	my ($t, $impl) = @_;
	return split /\|/, sql($t, q{
WITH h AS (
	SELECT *, least(expires_at, coalesce(ended_at, 'infinity')) AS ended,
		   lag(least(expires_at, coalesce(ended_at, 'infinity')))
			   OVER w AS prev_ended,
		   lag(acquired_at) OVER w AS prev_acquired,
		   lag(ended_at IS NOT NULL) OVER w AS prev_released
	  FROM history
	 WHERE impl = :'impl'
	WINDOW w AS (PARTITION BY name ORDER BY fencing))
SELECT (SELECT count(*) FROM h),
	   (SELECT count(*) FROM h WHERE acquired_at IS NULL),
	   (SELECT count(*) FROM h WHERE acquired_at < prev_ended),
	   (SELECT count(*) FROM h WHERE acquired_at <= prev_acquired),
	   (SELECT count(*) FROM late_calls l JOIN history o USING (impl, fencing)
		 WHERE l.impl = :'impl' AND l.ok
		   AND EXISTS (SELECT FROM history n
					    WHERE n.impl = l.impl AND n.name = o.name
						  AND n.fencing > l.fencing AND n.acquired_at < l.at)),
	   (SELECT count(*) FROM late_calls WHERE impl = :'impl'),
	   (SELECT count(*) FROM h WHERE ended_at IS NOT NULL),
	   (SELECT count(*) FROM h WHERE prev_released = false)}, impl => $impl);
}

# 32 clients contend for 3 lease names with short ttls (50-250 ms), as
# $LEASE_SCRIPT does.  Per name, in fencing order: each committed
# acquisition began only after the one before had ended (released, or
# expired at its last renewed expiry); fencing order is the order in time;
# no renew or release succeeded after a newer acquisition; and pgbench saw
# no error at all (a watcher client fails the moment a name has two rows).
# Runs of 10 s go on until enough acquisitions, late calls, releases and
# takeovers happened (or the cap).  The same workload against a lease
# written by hand with the usual bug (release and renew by name, without
# the token) must show overlaps and late successes.
sub leases_workload
{
	my ($t, %o) = @_;
	my $clients = $o{clients} // 32;
	my $d = $t->{db};
	create_db($t);
	sql($t, $LEASE_TABLES . q{
-- The control: a lease table the way it is often written by hand.  It
-- acquires correctly, but renews and releases by name alone.
CREATE SCHEMA naive;
CREATE TABLE naive.lease_record (
	name text PRIMARY KEY,
	token uuid NOT NULL,
	fencing bigint NOT NULL,
	acquired_at timestamptz NOT NULL,
	expires_at timestamptz NOT NULL
);
CREATE SEQUENCE naive.fencing;
CREATE FUNCTION naive.lease_acquire(name text, ttl interval, holder text)
RETURNS TABLE (token uuid, fencing bigint) LANGUAGE sql AS $$
	INSERT INTO naive.lease_record AS l
	VALUES (name, gen_random_uuid(), nextval('naive.fencing'),
			clock_timestamp(), clock_timestamp() + ttl)
	ON CONFLICT (name) DO UPDATE
		SET token = excluded.token, fencing = excluded.fencing,
			acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
		WHERE l.expires_at <= clock_timestamp()
	RETURNING l.token, l.fencing
$$;
CREATE FUNCTION naive.lease_renew(name text, token uuid, ttl interval)
RETURNS boolean LANGUAGE sql AS $$
	WITH u AS (UPDATE naive.lease_record l
				  SET expires_at = clock_timestamp() + ttl
				WHERE l.name = lease_renew.name RETURNING 1)
	SELECT count(*) > 0 FROM u
$$;
CREATE FUNCTION naive.lease_release(name text, token uuid)
RETURNS boolean LANGUAGE sql AS $$
	WITH d AS (DELETE FROM naive.lease_record l
				WHERE l.name = lease_release.name RETURNING 1)
	SELECT count(*) > 0 FROM d
$$;
});
	my $lease = script($t, 'lease.sql', $LEASE_SCRIPT);
	my $watch = script($t, 'watch.sql', $LEASE_WATCH);

	my ($start, $errors, $failed, $runs, $processed) = (time, '', 0, 0, 0);
	my @v;
	while (1)
	{
		my $run = run_pgbench($t,
			[
				'-c', $clients, '-j', 2, '-T', 10, '-D', 'impl=entitlock',
				'-f', "$lease\@20", '-f', "$watch\@1"
			]);
		$runs++;
		$processed += $run->{committed};
		$errors .= join "\n",
		  grep { /error|abort|fatal/i } split /\n/, "$run->{out}\n$run->{err}";
		$failed++ if $run->{rc} != 0;
		@v = lease_violations($t, 'entitlock');
		my ($acq, $late, $rel, $take) = @v[ 0, 5, 6, 7 ];
		last
		  if time - $start >= ($o{cap} // 90)
		  || ($acq >= 200 && $late >= 20 && $rel >= 20 && $take >= 20);
	}
	my ($acquisitions, $untimed, $overlaps, $misordered, $late_ok, $late,
		$releases, $takeovers) = @v;
	note "$d: $runs runs, $processed script runs; $acquisitions committed acquisitions, $releases released, $takeovers taken over after expiry";
	note "$d: $late late renew/release calls, $late_ok succeeded after a newer acquisition; $overlaps overlaps, $misordered out of order";

	is($errors, '', "$d: pgbench reported no error");
	is($failed, 0, "$d: every pgbench run succeeded");
	cmp_ok($acquisitions, '>=', 200, "$d: leases were acquired");
	is($untimed, 0, "$d: each acquisition has its times");
	is($overlaps, 0, "$d: no lease began before the one before it ended");
	is($misordered, 0, "$d: fencing numbers follow time");
	is($late_ok, 0, "$d: no late call succeeded after a newer acquisition");
	ok($late >= 20 && $releases >= 20 && $takeovers >= 20,
		"$d: the workload made late calls ($late), releases ($releases) and takeovers ($takeovers)"
	);

	# Nothing is stuck: every name can be had once its last lease expired.
	usleep(300_000);
	is( sql($t, q{SET lock_timeout = '2s';
SELECT count(*) FROM generate_series(0, 2) AS n,
	   entitlock.lease_acquire('lease-' || n, '1 s')}),
		3,
		"$d: every name can be acquired after the run");

	# Control: the hand-written lease must show what this test looks for.
	run_pgbench($t,
		[ '-c', $clients, '-j', 2, '-T', 4, '-D', 'impl=naive', '-f', $lease ]);
	my ($n_acq, undef, $n_overlaps, undef, $n_late_ok) =
	  lease_violations($t, 'naive');
	note "$d control: $n_acq acquisitions, $n_overlaps overlapping, $n_late_ok late successes";
	ok($n_overlaps > 0 && $n_late_ok > 0,
		"$d: control: a lease without token checks shows overlaps and late successes"
	);
	return;
}

# 24 clients on few names, with lock_all (random, crossing orders),
# lock_entity, try_lock_entity, timed lock(name, timeout) and exclusive
# realm locks.  Every transaction does a read-modify-write of a counter
# (SELECT the value into the client, UPDATE it to value + 1) and appends a
# ledger row; each counter must equal its ledger count (a lost update
# leaves it lower).  Realm lockers read the realm's counters twice around
# a pause: nothing may change.  No pgbench error (deadlocks included).  A
# control of the same read-modify-write without locks must lose updates.
sub locks_workload
{
	my ($t, %o) = @_;
	my $clients = $o{clients} // 24;
	my $secs = $o{min} // 15;
	my $d = $t->{db};
	create_db($t);
	sql($t, q{
CREATE TABLE counters (name text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
CREATE TABLE ledger (name text NOT NULL);
CREATE TABLE realm_reads (realm text NOT NULL, unchanged boolean NOT NULL);
INSERT INTO counters (name)
SELECT 'n' || i FROM generate_series(1, 8) AS i
UNION ALL
SELECT 'realm' || r || '/e' || e FROM generate_series(1, 2) AS r, generate_series(1, 4) AS e
UNION ALL
SELECT 'control';
});
	my %s;
	# Three random names of eight, in random order: arrays overlap and cross.
	$s{lock_all} = q{
\set i random(1, 8)
\set j random(1, 8)
\set k random(1, 8)
BEGIN;
SELECT entitlock.lock_all(ARRAY['n' || :i, 'n' || :j, 'n' || :k]);
SELECT n AS v FROM counters WHERE name = 'n' || :i \gset
UPDATE counters SET n = :v + 1 WHERE name = 'n' || :i;
INSERT INTO ledger VALUES ('n' || :i);
SELECT n AS v FROM counters WHERE name = 'n' || :j \gset
UPDATE counters SET n = :v + 1 WHERE name = 'n' || :j;
INSERT INTO ledger VALUES ('n' || :j);
SELECT n AS v FROM counters WHERE name = 'n' || :k \gset
UPDATE counters SET n = :v + 1 WHERE name = 'n' || :k;
INSERT INTO ledger VALUES ('n' || :k);
COMMIT;
};
	$s{lock_entity} = q{
\set r random(1, 2)
\set e random(1, 4)
BEGIN;
SELECT entitlock.lock_entity('realm' || :r, 'e' || :e);
SELECT n AS v FROM counters WHERE name = 'realm' || :r || '/e' || :e \gset
UPDATE counters SET n = :v + 1 WHERE name = 'realm' || :r || '/e' || :e;
INSERT INTO ledger VALUES ('realm' || :r || '/e' || :e);
COMMIT;
};
	$s{try_lock_entity} = q{
\set r random(1, 2)
\set e random(1, 4)
BEGIN;
SELECT entitlock.try_lock_entity('realm' || :r, 'e' || :e)::int AS got \gset
\if :got = 1
SELECT n AS v FROM counters WHERE name = 'realm' || :r || '/e' || :e \gset
UPDATE counters SET n = :v + 1 WHERE name = 'realm' || :r || '/e' || :e;
INSERT INTO ledger VALUES ('realm' || :r || '/e' || :e);
\endif
COMMIT;
};
	# Timed waits (the internal-subtransaction path): a short limit on a
	# hot name, so many calls return false; only a true may touch the
	# counter.
	$s{timed} = q{
\set i random(1, 8)
BEGIN;
SELECT entitlock.lock('n' || :i, '5 ms')::int AS got \gset
\if :got = 1
SELECT n AS v FROM counters WHERE name = 'n' || :i \gset
UPDATE counters SET n = :v + 1 WHERE name = 'n' || :i;
INSERT INTO ledger VALUES ('n' || :i);
\endif
COMMIT;
};
	# Whole-realm lock: nothing in the realm may change while it is held.
	$s{realm} = q{
\set r random(1, 2)
BEGIN;
SELECT entitlock.lock('realm' || :r);
SELECT sum(n) AS before FROM counters WHERE name LIKE 'realm' || :r || '/%' \gset
SELECT pg_sleep(0.002);
INSERT INTO realm_reads
SELECT 'realm' || :r, sum(n) = :before FROM counters WHERE name LIKE 'realm' || :r || '/%';
COMMIT;
};
	$s{control} = q{
BEGIN;
SELECT n AS v FROM counters WHERE name = 'control' \gset
UPDATE counters SET n = :v + 1 WHERE name = 'control';
INSERT INTO ledger VALUES ('control');
COMMIT;
};
	my %f = map { ($_ => script($t, "$_.sql", $s{$_})) } keys %s;

	my $c = run_pgbench($t,
		[ '-c', $clients, '-j', 2, '-T', 3, '-f', $f{control} ]);
	is($c->{rc}, 0, "$d: control run succeeded");
	cmp_ok(
		sql($t, q{SELECT (SELECT count(*) FROM ledger WHERE name = 'control')
					   - (SELECT n FROM counters WHERE name = 'control')}),
		'>', 0,
		"$d: control: read-modify-write without locks loses updates");

	my $run = run_pgbench(
		$t,
		[
			'-c', $clients, '-j', 2, '-T', $secs,
			'-f', "$f{lock_all}\@4", '-f', "$f{lock_entity}\@4",
			'-f', "$f{try_lock_entity}\@2", '-f', "$f{realm}\@1",
			'-f', "$f{timed}\@3"
		]);
	is($run->{rc}, 0, "$d: pgbench succeeded");
	unlike("$run->{out}\n$run->{err}", qr/ERROR/,
		"$d: no pgbench error (no deadlock)");

	my ($checked, $lost, $realm_reads, $realm_changed) = split /\|/, sql($t, q{
SELECT count(*),
	   coalesce(sum(l.cnt - c.n), 0),
	   (SELECT count(*) FROM realm_reads),
	   (SELECT count(*) FROM realm_reads WHERE NOT unchanged)
  FROM counters AS c
  JOIN (SELECT name, count(*) AS cnt FROM ledger GROUP BY name) AS l USING (name)
 WHERE c.name <> 'control'});
	my $total = sql($t, "SELECT count(*) FROM ledger WHERE name <> 'control'");
	note "$d: $total locked increments on $checked counters, $realm_reads realm reads";
	cmp_ok($total, '>', 1000, "$d: enough locked increments to mean anything");
	is($lost, 0, "$d: no locked update was lost");
	cmp_ok($realm_reads, '>', 0, "$d: realm reads ran");
	is($realm_changed, 0,
		"$d: nothing in a realm changed under its exclusive lock");
	is( sql($t, q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
	AND database = (SELECT oid FROM pg_database WHERE datname = current_database())}),
		0,
		"$d: no advisory lock is left after the run");
	return;
}

1;
