# test/tap/002_statistics.pl: entitlock.stats, the call statistics of 1.1.
#
# With shared_preload_libraries = 'entitlock' every call of entitlock's
# functions is counted in shared memory, by kind ('lock', 'usage', 'rate',
# 'idempotency', 'lease') and label (the feature for usage, otherwise the
# name's prefix up to its first ':'), and entitlock.stats shows the counts.
# They are the numbers an operator reads to find a hot lock or a quota
# that denies too much, so they have to be exact, and the regression
# suite cannot test them: it runs without the preload.
#
# A workload from several sessions goes through every counter: locks that
# are free, refused, timed out and waited for; usage and rate limit calls
# that are allowed and denied, some of the denials in transactions that
# roll back (a denial counts when it is decided); a set of two limits;
# idempotency keys that are new, replayed and in progress; leases taken,
# refused after a bounded wait, renewed, released and taken over.  Each
# call also writes what it must add to entitlock.stats into a ledger
# table, in autocommit, so that rollbacks do not remove it, and every
# counter of the view is compared with the ledger's sums.  wait_time must
# lie between what the test saw the call wait (the bounded wait's length
# for a timeout) and the call's wall time.
#
# Then: more labels than entitlock.stats_max (6 here, for all kinds
# together) are counted under 'other' of their kind; stats_reset() empties
# the view and makes room for new labels; labels are cut at 63 bytes, on
# a character boundary; the view and stats_reset() are for roles granted
# them; a restart empties the counts; and a node without the preload
# works and shows nothing.
#
# Two waits that were once counted wrong are checked in phase 4: a
# bounded wait that ends in a grant counts its wait time once, and a usage
# call that waited for a recorder which rolled back counts as a wait.
#
# Run with: bash test/tap.sh test/tap/002_statistics.pl

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $stats_max = 6;

# How long a holder keeps a waiter waiting, in seconds.
my $hold = 0.2;

#
# Setup: a node with the preload and room for 6 labels.  UTF-8, so that a
# label can be cut inside a multibyte character.
#
my $node = PostgreSQL::Test::Cluster->new('preloaded');
$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
$node->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'entitlock'
entitlock.stats_max = $stats_max
});
$node->start;
$node->safe_psql(
	'postgres', q{
	CREATE EXTENSION entitlock;
	-- One row per counted call: what it adds to entitlock.stats.  fits is
	-- false for a call whose label is past stats_max (counted as 'other').
	-- wait_min_ms and wait_max_ms bound the call's share of wait_time.
	CREATE TABLE ledger (
		phase int NOT NULL,
		kind text NOT NULL,
		label text NOT NULL,
		fits boolean NOT NULL DEFAULT true,
		calls int NOT NULL DEFAULT 1,
		waits int NOT NULL DEFAULT 0,
		timeouts int NOT NULL DEFAULT 0,
		denied int NOT NULL DEFAULT 0,
		replays int NOT NULL DEFAULT 0,
		takeovers int NOT NULL DEFAULT 0,
		wait_min_ms float8 NOT NULL DEFAULT 0,
		wait_max_ms float8 NOT NULL DEFAULT 0);});

is($node->safe_psql('postgres', 'SHOW entitlock.stats_max'),
	$stats_max, 'entitlock.stats_max is set from postgresql.conf');
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSET entitlock.stats_max = 7");
like($stderr, qr/ERROR:\s+55P02: parameter "entitlock.stats_max" cannot be changed/,
	'entitlock.stats_max can only be set at server start');
is($node->safe_psql('postgres', 'SELECT count(*) FROM entitlock.stats'),
	'0', 'nothing is counted before the first call');

# Two sessions for the workload, one to write the ledger and look.
my $s1  = $node->background_psql('postgres');
my $s2  = $node->background_psql('postgres');
my $ctl = $node->background_psql('postgres');
my $pid2 = $s2->query_safe('SELECT pg_backend_pid()');

my $phase = 1;

# The ledger entry of one call: kind, label (or label_sql, an SQL
# expression) and the counters it adds beyond calls = 1.
sub ledger
{
	my ($kind, $label, %c) = @_;
	my $label_sql = $c{label_sql} // "'$label'";
	my @cols =
	  qw(fits calls waits timeouts denied replays takeovers wait_min_ms wait_max_ms);
	my %default = (fits => 'true', calls => 1);
	$ctl->query_safe(
		"INSERT INTO ledger (phase, kind, label, "
		  . join(', ', @cols)
		  . ") VALUES ($phase, '$kind', $label_sql, "
		  . join(', ', map { $c{$_} // $default{$_} // 0 } @cols) . ')');
	return;
}

# SQL in a session, and its wall time in milliseconds.
sub timed
{
	my ($s, $sql) = @_;
	my $t0 = time;
	my $out = $s->query_safe($sql);
	return ($out, (time - $t0) * 1000);
}

# Send SQL that will block, without waiting for it.
my $async_count = 0;

sub start_async
{
	my ($s, $sql) = @_;
	my $tag = ++$async_count;
	my $t0 = time;
	$s->query_until(qr/sent-$tag\n/,
		"\\echo sent-$tag\n$sql\n\\echo done-$tag\n");
	return { s => $s, tag => $tag, t0 => $t0 };
}

# Its output, once it is done, and its wall time in milliseconds.
sub finish_async
{
	my ($h) = @_;
	my $tag = $h->{tag};
	my $out = $h->{s}->query_until(qr/done-$tag\n/, '');
	my $ms = (time - $h->{t0}) * 1000;
	$out =~ s/done-$tag\n$//;
	chomp $out;
	return ($out, $ms);
}

# Until backend pid waits (for a lock, or in a lease's sleep); returns
# the time it was first seen waiting.
sub wait_until_waiting
{
	my ($pid) = @_;
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	while (time < $deadline)
	{
		return time
		  if $ctl->query_safe(
			"SELECT EXISTS (SELECT FROM pg_locks WHERE pid = $pid AND NOT granted)
				 OR EXISTS (SELECT FROM pg_stat_activity
							 WHERE pid = $pid AND wait_event_type = 'Extension')"
		  ) eq 't';
		usleep(5_000);
	}
	die "backend $pid did not start waiting";
}

# Hold a waiter: SQL in $s2 blocks on what $s1 holds; once it waits,
# $s1 holds on for $hold seconds and then runs $release.  Returns the
# waiter's output, its wall time and the time it certainly waited (ms).
sub hold_waiter
{
	my ($waiter_sql, $release) = @_;
	my $h = start_async($s2, $waiter_sql);
	my $t0 = wait_until_waiting($pid2);
	usleep($hold * 1_000_000);
	my $waited = (time - $t0) * 1000;
	$s1->query_safe($release);
	my ($out, $ms) = finish_async($h);
	return ($out, $ms, $waited);
}

# The rows of a query, "kind/label" => the rest, joined by '|'.
sub rows_by_label
{
	my ($sql) = @_;
	my %rows;
	for my $line (split /\n/, $ctl->query_safe($sql))
	{
		my ($kind, $label, @rest) = split /\|/, $line, -1;
		$rows{"$kind/$label"} = \@rest;
	}
	return %rows;
}

my $counters = 'calls, waits, timeouts, denied, replays, takeovers';

# What entitlock.stats must show for the ledger's rows of @phases, those
# with fits = false under 'other'.
sub expected_sql
{
	my @phases = @_;
	my $in = join(', ', @phases);
	return "SELECT kind, CASE WHEN fits THEN label ELSE 'other' END,
				   sum(calls), sum(waits), sum(timeouts), sum(denied),
				   sum(replays), sum(takeovers), sum(wait_min_ms),
				   sum(wait_max_ms)
			  FROM ledger WHERE phase IN ($in) GROUP BY 1, 2";
}

# Every row and counter of entitlock.stats against the ledger.
sub compare_with_ledger
{
	my ($what, @phases) = @_;
	my %view = rows_by_label(
		"SELECT kind, label, $counters, wait_time FROM entitlock.stats");
	my %want = rows_by_label(expected_sql(@phases));

	is(join(', ', sort keys %view), join(', ', sort keys %want),
		"$what: entitlock.stats has a row for each kind and label of the ledger");
	for my $key (sort keys %want)
	{
		my @w = @{ $want{$key} };
		my @v = @{ $view{$key} // [ ('') x 7 ] };
		is( "calls $v[0] waits $v[1] timeouts $v[2] denied $v[3] replays $v[4] takeovers $v[5]",
			"calls $w[0] waits $w[1] timeouts $w[2] denied $w[3] replays $w[4] takeovers $w[5]",
			"$what: $key counts as the ledger says");
		my $wait_time = $v[6] eq '' ? -1 : $v[6];
		if ($w[1] > 0)
		{
			ok($wait_time > 0, "$what: $key has wait_time > 0 ($wait_time ms)");
			cmp_ok($wait_time, '>=', $w[6],
				"$what: $key waited at least what the test saw ($w[6] ms)");
			cmp_ok($wait_time, '<=', $w[7],
				"$what: $key waited no longer than its waiting calls took ($w[7] ms)");
		}
		else
		{
			is($wait_time, 0, "$what: $key has no wait_time");
		}
	}
	return;
}

#
# Phase 1: every counter, on exactly stats_max labels (acct, seats, calls,
# api, pay, job).
#
my ($out, $ms, $waited);

# Locks (label 'acct').
$s1->query_safe("SELECT entitlock.lock('acct:1')");
ledger('lock', 'acct');
$s1->query_safe("BEGIN; SELECT entitlock.lock('acct:2')");
ledger('lock', 'acct');
is($s2->query_safe("SELECT entitlock.try_lock('acct:2')"),
	'f', 'try_lock of a held lock is false');
ledger('lock', 'acct');
($out, $ms) = timed($s2, "SELECT entitlock.lock('acct:2', '50 ms')");
is($out, 'f', "lock(name, '50 ms') of a held lock times out");
ledger('lock', 'acct', waits => 1, timeouts => 1, wait_min_ms => 50,
	wait_max_ms => $ms);
($out, $ms, $waited) =
  hold_waiter("BEGIN;\nSELECT entitlock.lock('acct:2');", 'COMMIT');
is($out, '', 'lock() waits for the holder and is granted');
ledger('lock', 'acct', waits => 1, wait_min_ms => $waited, wait_max_ms => $ms);
$s2->query_safe('COMMIT');
is($s1->query_safe("SELECT entitlock.try_lock('acct:3')"),
	't', 'try_lock of a free lock is true');
ledger('lock', 'acct');
$s1->query_safe(
	"BEGIN; SELECT entitlock.lock_shared('acct:4'), entitlock.try_lock_shared('acct:4'); COMMIT"
);
ledger('lock', 'acct') for 1 .. 2;
# One call per distinct name; NULL elements are no call.
$s1->query_safe(
	"SELECT entitlock.lock_all(ARRAY['acct:5', 'acct:6', 'acct:5', NULL])");
ledger('lock', 'acct') for 1 .. 2;
# One call, labelled by the realm's prefix (here the whole realm).
$s1->query_safe("SELECT entitlock.lock_entity('acct', 'e1')");
ledger('lock', 'acct');
is($s1->query_safe("SELECT entitlock.try_lock_entity('acct:7', 'e2')"),
	't', 'try_lock_entity of a free pair is true');
ledger('lock', 'acct');

# Usage on one meter (label: the feature, 'seats').
sub usage_sql
{
	my ($amount, $limit, $key) = @_;
	$key = defined $key ? ", 'lifetime', '$key'" : '';
	return "SELECT allowed, used FROM entitlock.record_usage_if_under_limit('ws:1', 'seats', $amount, $limit$key)";
}
is($s1->query_safe(usage_sql(2, 5)), 't|2', 'usage: 2 of 5 seats allowed');
ledger('usage', 'seats');
is($s1->query_safe(usage_sql(4, 5)), 'f|2', 'usage: 4 more denied');
ledger('usage', 'seats', denied => 1);
is($s1->query_safe('BEGIN; ' . usage_sql(9, 5) . '; ROLLBACK'),
	'f|2', 'usage: a denial in a transaction that rolls back');
ledger('usage', 'seats', denied => 1);
is($s1->query_safe('BEGIN; ' . usage_sql(1, 5) . '; ROLLBACK'),
	't|3', 'usage: an allowed call in a transaction that rolls back');
ledger('usage', 'seats');
is($s1->query_safe(usage_sql(1, 5, 'seat-k1')), 't|3', 'usage: a keyed call');
ledger('usage', 'seats');
is($s1->query_safe(usage_sql(1, 5, 'seat-k1')),
	't|3', 'usage: its retry is answered from the key');
ledger('usage', 'seats', replays => 1);
is($s1->query_safe(usage_sql(5, 5, 'seat-k2')), 'f|3', 'usage: a keyed denial');
ledger('usage', 'seats', denied => 1);
is($s1->query_safe(usage_sql(5, 5, 'seat-k2')),
	'f|3', 'usage: its retry is the same denial, from the key');
ledger('usage', 'seats', denied => 1, replays => 1);
is($s1->query_safe("SELECT entitlock.record_usage('ws:1', 'seats', 1)"),
	'4', 'usage: record_usage');
ledger('usage', 'seats');
is($s1->query_safe("SELECT entitlock.refund_usage('ws:1', 'seats', 'seat-k1')"),
	'1', 'usage: refund_usage of the keyed call');
ledger('usage', 'seats');
is($s1->query_safe('BEGIN; ' . usage_sql(1, 5)), 't|4',
	'usage: a recorder holds the counter row');
ledger('usage', 'seats');
($out, $ms, $waited) = hold_waiter(usage_sql(1, 5) . ';', 'COMMIT');
is($out, 't|5', 'usage: a second recorder waits for it, then decides');
ledger('usage', 'seats', waits => 1, wait_min_ms => $waited,
	wait_max_ms => $ms);

# Two limits at once (label 'calls', one call per element).
sub set_sql
{
	my ($amount, $key) = @_;
	$key = defined $key ? ", '$key'" : '';
	return "SELECT string_agg(allowed::text, ',')
			  FROM entitlock.record_usage_if_under_limits(ARRAY[
				   entitlock.usage_limit('ws:1', 'calls', 10, 'day'),
				   entitlock.usage_limit('org:1', 'calls', 3, 'month')],
				   $amount$key)";
}
is($s1->query_safe(set_sql(2)), 'true,true', 'set: both limits have room');
ledger('usage', 'calls') for 1 .. 2;
is($s1->query_safe(set_sql(2)), 'true,false', 'set: the month limit denies');
ledger('usage', 'calls');
ledger('usage', 'calls', denied => 1);
is($s1->query_safe('BEGIN; ' . set_sql(5) . '; ROLLBACK'),
	'true,false', 'set: a denial in a transaction that rolls back');
ledger('usage', 'calls');
ledger('usage', 'calls', denied => 1);
is($s1->query_safe(set_sql(1, 'set-k1')), 'true,true', 'set: a keyed call');
ledger('usage', 'calls') for 1 .. 2;
is($s1->query_safe(set_sql(1, 'set-k1')),
	'true,true', 'set: its retry is answered from the key');
ledger('usage', 'calls', replays => 1) for 1 .. 2;

# Rate limits (label 'api').
my $rate_sql = "SELECT allowed FROM entitlock.rate_limit('api:ws1', 2, '1 hour')";
is($s1->query_safe($rate_sql), 't', 'rate: first of 2 allowed');
ledger('rate', 'api');
is($s1->query_safe($rate_sql), 't', 'rate: second of 2 allowed');
ledger('rate', 'api');
is($s1->query_safe($rate_sql), 'f', 'rate: third denied');
ledger('rate', 'api', denied => 1);
is($s1->query_safe("BEGIN; $rate_sql; ROLLBACK"),
	'f', 'rate: a denial in a transaction that rolls back');
ledger('rate', 'api', denied => 1);
is( $s1->query_safe(
		"SELECT allowed, remaining FROM entitlock.rate_limit('api:ws1', 2, '1 hour', 2, 0)"),
	't|0',
	'rate: a peek (cost 0) is allowed and takes nothing');
ledger('rate', 'api');
my $rate2_sql = "SELECT allowed FROM entitlock.rate_limit('api:ws2', 100, '1 hour')";
is($s1->query_safe("BEGIN; $rate2_sql"), 't', 'rate: a caller holds a name');
ledger('rate', 'api');
($out, $ms, $waited) = hold_waiter("$rate2_sql;", 'COMMIT');
is($out, 't', 'rate: a second caller waits for it, then decides');
ledger('rate', 'api', waits => 1, wait_min_ms => $waited, wait_max_ms => $ms);

# Idempotency keys (label 'pay').
sub begin_sql
{
	my ($key, $wait) = @_;
	$wait = defined $wait ? ", NULL, '24 hours', '$wait'" : '';
	return "SELECT status FROM entitlock.idempotency_begin('$key'$wait)";
}
is( $s1->query_safe(
		'BEGIN; ' . begin_sql('pay:1') . ";
		 SELECT entitlock.idempotency_complete('pay:1', '{\"ok\": 1}'); COMMIT"),
	"new\n",
	'idempotency: a new key, completed');
ledger('idempotency', 'pay');
is($s1->query_safe(begin_sql('pay:1')), 'replay', 'idempotency: a replay');
ledger('idempotency', 'pay', replays => 1);
is($s1->query_safe('BEGIN; ' . begin_sql('pay:3') . '; ROLLBACK'),
	'new', 'idempotency: a new key whose transaction rolls back');
ledger('idempotency', 'pay');
is($s1->query_safe('BEGIN; ' . begin_sql('pay:2')),
	'new', 'idempotency: a key held by an open transaction');
ledger('idempotency', 'pay');
($out, $ms) = timed($s2, begin_sql('pay:2', '50 ms'));
is($out, 'in_progress', "idempotency: a duplicate with wait => '50 ms' is in_progress");
ledger('idempotency', 'pay', waits => 1, timeouts => 1, wait_min_ms => 50,
	wait_max_ms => $ms);
($out, $ms, $waited) = hold_waiter(begin_sql('pay:2') . ';', 'COMMIT');
is($out, 'replay', 'idempotency: a duplicate without wait waits for the commit, then replays');
ledger('idempotency', 'pay', waits => 1, replays => 1, wait_min_ms => $waited,
	wait_max_ms => $ms);
is($s1->query_safe("SELECT entitlock.first_time('pay:evt1')"),
	't', 'idempotency: first_time is true once');
ledger('idempotency', 'pay');
is($s1->query_safe("SELECT entitlock.first_time('pay:evt1')"),
	'f', 'idempotency: first_time of a committed key is false');
ledger('idempotency', 'pay', replays => 1);

# Leases (label 'job').
sub acquire_sql
{
	my ($name, $ttl, $holder, $wait) = @_;
	$wait = defined $wait ? ", '$wait'" : '';
	return "SELECT token FROM entitlock.lease_acquire('$name', '$ttl', '$holder'$wait)";
}
my $tok1 = $s1->query_safe(acquire_sql('job:1', '1 hour', 'w1'));
like($tok1, qr/^[0-9a-f-]{36}$/, 'lease: taken');
ledger('lease', 'job');
is($s1->query_safe(acquire_sql('job:1', '1 hour', 'w2')),
	'', 'lease: held by another, no row (wait 0: no timeout)');
ledger('lease', 'job');
($out, $ms) = timed($s2, acquire_sql('job:1', '1 hour', 'w2', '100 ms'));
is($out, '', "lease: held by another, no row after wait => '100 ms'");
ledger('lease', 'job', waits => 1, timeouts => 1, wait_min_ms => 100,
	wait_max_ms => $ms);
is($s1->query_safe("SELECT entitlock.lease_renew('job:1', '$tok1', '2 hours')"),
	't', 'lease: renewed by its holder');
ledger('lease', 'job');
is( $s1->query_safe(
		"SELECT entitlock.lease_renew('job:1', gen_random_uuid(), '2 hours')"),
	'f',
	'lease: not renewed with another token');
ledger('lease', 'job');
is($s1->query_safe("SELECT entitlock.lease_release('job:1', '$tok1')"),
	't', 'lease: released');
ledger('lease', 'job');
like($s1->query_safe(acquire_sql('job:1', '1 hour', 'w3')),
	qr/^[0-9a-f-]{36}$/, 'lease: a released lease is taken (not a takeover)');
ledger('lease', 'job');
like($s1->query_safe(acquire_sql('job:2', '1 ms', 'w1')),
	qr/^[0-9a-f-]{36}$/, 'lease: taken for 1 ms');
ledger('lease', 'job');
usleep(20_000);
like($s1->query_safe(acquire_sql('job:2', '1 hour', 'w2')),
	qr/^[0-9a-f-]{36}$/, 'lease: the expired lease is taken over');
ledger('lease', 'job', takeovers => 1);
like($s1->query_safe(acquire_sql('job:3', '300 ms', 'w1')),
	qr/^[0-9a-f-]{36}$/, 'lease: taken for 300 ms');
ledger('lease', 'job');
($out, $ms) = timed($s2, acquire_sql('job:3', '1 hour', 'w2', '10 s'));
like($out, qr/^[0-9a-f-]{36}$/,
	'lease: a waiter sleeps until it expires, then takes it over');
ledger('lease', 'job', waits => 1, takeovers => 1, wait_max_ms => $ms);
like($s1->query_safe(acquire_sql('job:4', '1 hour', 'w1', '1 s')),
	qr/^[0-9a-f-]{36}$/, 'lease: a free lease with a wait is taken at once');
ledger('lease', 'job');

compare_with_ledger('phase 1', 1);
is( $ctl->query_safe(
		"SELECT count(*) FROM entitlock.stats WHERE label = 'other'"),
	'0',
	"phase 1: $stats_max labels fit, nothing under 'other'");

#
# Phase 2: labels past stats_max.  The table is full, so every new label
# is counted under 'other' of its kind, with all its counters; the six
# labels of phase 1 are still counted as themselves.
#
$phase = 2;
my $full = "SELECT count(*) FROM entitlock.stats WHERE label <> 'other'";
my @bounded;

$s1->query_safe("SELECT entitlock.lock('ovf1:a')");
ledger('lock', 'ovf1', fits => 'false');
push @bounded, $ctl->query_safe($full);
is($s1->query_safe("SELECT entitlock.try_lock('ovf2')"),
	't', 'phase 2: try_lock of a new label');
ledger('lock', 'ovf2', fits => 'false');
push @bounded, $ctl->query_safe($full);
$s1->query_safe("SELECT entitlock.lock('acct:9')");
ledger('lock', 'acct');
is( $s1->query_safe(
		"SELECT allowed FROM entitlock.record_usage_if_under_limit('ws:1', 'ovf_feature', 5, 1)"),
	'f',
	'phase 2: a denied usage call of a new feature');
ledger('usage', 'ovf_feature', fits => 'false', denied => 1);
push @bounded, $ctl->query_safe($full);
is($s1->query_safe("SELECT allowed FROM entitlock.rate_limit('ovf3:x', 1, '1 hour')"),
	't', 'phase 2: rate_limit of a new label allowed');
ledger('rate', 'ovf3', fits => 'false');
is($s1->query_safe("SELECT allowed FROM entitlock.rate_limit('ovf3:x', 1, '1 hour')"),
	'f', 'phase 2: and then denied');
ledger('rate', 'ovf3', fits => 'false', denied => 1);
push @bounded, $ctl->query_safe($full);
is( $s1->query_safe(
		"SELECT entitlock.first_time('ovf4:e'), entitlock.first_time('ovf4:e')"),
	't|f',
	'phase 2: first_time twice in one statement (the second finds its own claim)');
ledger('idempotency', 'ovf4', fits => 'false');
ledger('idempotency', 'ovf4', fits => 'false', replays => 1);
push @bounded, $ctl->query_safe($full);
like($s1->query_safe(acquire_sql('ovf5:j', '1 ms', 'w1')),
	qr/^[0-9a-f-]{36}$/, 'phase 2: a lease of a new label');
ledger('lease', 'ovf5', fits => 'false');
usleep(20_000);
like($s1->query_safe(acquire_sql('ovf5:j', '1 hour', 'w2')),
	qr/^[0-9a-f-]{36}$/, 'phase 2: taken over');
ledger('lease', 'ovf5', fits => 'false', takeovers => 1);
push @bounded, $ctl->query_safe($full);
$s1->query_safe("BEGIN; SELECT entitlock.lock('ovf6:z')");
ledger('lock', 'ovf6', fits => 'false');
($out, $ms) = timed($s2, "SELECT entitlock.lock('ovf6:z', '50 ms')");
is($out, 'f', 'phase 2: a timed out lock of a new label');
ledger('lock', 'ovf6', fits => 'false', waits => 1, timeouts => 1,
	wait_min_ms => 50, wait_max_ms => $ms);
$s1->query_safe('COMMIT');
push @bounded, $ctl->query_safe($full);

is(join(',', @bounded), join(',', ($stats_max) x scalar @bounded),
	"phase 2: after each new label, still $stats_max labels besides 'other'");
is( $ctl->query_safe(
		"SELECT string_agg(kind || '/' || label, ',' ORDER BY kind, label)
		   FROM entitlock.stats WHERE label <> 'other'"),
	'idempotency/pay,lease/job,lock/acct,rate/api,usage/calls,usage/seats',
	'phase 2: the labels kept apart are the first six');
compare_with_ledger('phase 2', 1, 2);
is( $ctl->query_safe(
		"SELECT string_agg(v.kind || ' ' || v.calls || '=' || l.calls, ', '
						   ORDER BY v.kind)
		   FROM (SELECT kind, sum(calls) AS calls FROM entitlock.stats
				  GROUP BY kind) AS v
		   FULL JOIN (SELECT kind, sum(calls) AS calls FROM ledger
					   WHERE phase IN (1, 2) GROUP BY kind) AS l USING (kind)"),
	$ctl->query_safe(
		"SELECT string_agg(kind || ' ' || calls || '=' || calls, ', ' ORDER BY kind)
		   FROM (SELECT kind, sum(calls) AS calls FROM ledger
				  WHERE phase IN (1, 2) GROUP BY kind) AS l"),
	"phase 2: the calls of each kind add up to the ledger's");

#
# Phase 3: stats_reset() forgets every count and label; new labels fit
# again, cut at 63 bytes.
#
$phase = 3;
$ctl->query_safe('SELECT entitlock.stats_reset()');
is($ctl->query_safe('SELECT count(*) FROM entitlock.stats'),
	'0', 'phase 3: after stats_reset() the view is empty');

# A prefix of 80 bytes is cut to 63.
$s1->query_safe("SELECT entitlock.lock(repeat('L', 80) || ':x')");
ledger('lock', '', label_sql => "repeat('L', 63)");
# 40 two-byte characters, no ':': cut to 31 characters (62 bytes), not
# into the 32nd.
$s1->query_safe("SELECT entitlock.lock(repeat(chr(233), 40))");
ledger('lock', '', label_sql => 'repeat(chr(233), 31)');
# A feature is the whole label, ':' and all.
$s1->query_safe("SELECT entitlock.record_usage('ws:1', 'plan:pro', 1)");
ledger('usage', 'plan:pro');
$s1->query_safe("SELECT entitlock.rate_limit('r3', 5, '1 hour')");
ledger('rate', 'r3');
$s1->query_safe(begin_sql('k3:1'));
ledger('idempotency', 'k3');
$s1->query_safe(acquire_sql('p3:1', '1 hour', 'w1'));
ledger('lease', 'p3');
is($ctl->query_safe($full), $stats_max,
	"phase 3: $stats_max new labels fit after the reset");
# The seventh does not, nor does a label of phase 1: the reset forgot it.
$s1->query_safe("SELECT entitlock.lock('seventh:1')");
ledger('lock', 'seventh', fits => 'false');
$s1->query_safe("SELECT entitlock.lock('acct:1')");
ledger('lock', 'acct', fits => 'false');
is($ctl->query_safe($full), $stats_max,
	"phase 3: a seventh label goes under 'other'");
is( $ctl->query_safe(
		"SELECT octet_length(label) || ',' || length(label)
		   FROM entitlock.stats WHERE label LIKE chr(233) || '%'"),
	'62,31',
	'phase 3: a label of two-byte characters is cut at a character boundary');
compare_with_ledger('phase 3', 3);

#
# Phase 4: waits that the code of this commit counts wrongly.
#
$phase = 4;
$ctl->query_safe('SELECT entitlock.stats_reset()');

# The view's counters of one label, as "calls waits timeouts", and its
# wait_time.
sub label_counts
{
	my ($kind, $label) = @_;
	return split /\|/,
	  $ctl->query_safe(
		"SELECT calls || ' ' || waits || ' ' || timeouts, wait_time
		   FROM entitlock.stats WHERE kind = '$kind' AND label = '$label'");
}

# lock(name, timeout) that waits and is granted.
$s1->query_safe("BEGIN; SELECT entitlock.lock('tl:1')");
($out, $ms, $waited) = hold_waiter("SELECT entitlock.lock('tl:1', '10 s');", 'COMMIT');
is($out, 't', "phase 4: lock(name, '10 s') waits and is granted");
my ($counts, $wait_time) = label_counts('lock', 'tl');
is($counts, '2 1 0', 'phase 4: two lock calls, one wait, no timeout');
cmp_ok($wait_time, '>=', $waited,
	"phase 4: the timed lock's wait_time is at least what it waited ($waited ms)");
cmp_ok($wait_time, '<=', $ms,
	"phase 4: the timed lock's wait_time is at most its wall time ($ms ms)");

# idempotency_begin(..., wait) that waits for an owner who rolls back.
$s1->query_safe('BEGIN; ' . begin_sql('tk:1'));
($out, $ms, $waited) = hold_waiter(begin_sql('tk:1', '10 s') . ';', 'ROLLBACK');
is($out, 'new', "phase 4: idempotency_begin(wait => '10 s') gets the key after a rollback");
($counts, $wait_time) = label_counts('idempotency', 'tk');
is($counts, '2 1 0', 'phase 4: two idempotency calls, one wait, no timeout');
cmp_ok($wait_time, '<=', $ms,
	"phase 4: the bounded claim's wait_time is at most its wall time ($ms ms)");

# A usage call that waits for a recorder who rolls back.
$s1->query_safe("SELECT entitlock.record_usage('ws:9', 'rb', 1)");
$s1->query_safe("BEGIN; SELECT entitlock.record_usage('ws:9', 'rb', 1)");
($out, $ms, $waited) = hold_waiter(
	"SELECT entitlock.record_usage('ws:9', 'rb', 1);", 'ROLLBACK');
is($out, '2', 'phase 4: a recorder waits for one that rolls back, then records');
($counts, $wait_time) = label_counts('usage', 'rb');
like($counts, qr/^3 /, 'phase 4: three usage calls');
is($counts, '3 1 0',
	'phase 4: the call that waited for the rolled back recorder is a wait');

#
# Privileges: the view and stats_reset() are for roles granted them.
#
$node->safe_psql(
	'postgres', 'CREATE ROLE monitor LOGIN;
	GRANT USAGE ON SCHEMA entitlock TO monitor;');

# SQL as monitor: (stdout, stderr with SQLSTATEs).
sub as_monitor
{
	my ($sql) = @_;
	my ($r, $o, $e) = $node->psql('postgres', "\\set VERBOSITY verbose\n$sql",
		extra_params => [ '-U', 'monitor' ]);
	return ($o, $e);
}

my $all_rows = "SELECT string_agg(s::text, E'\\n' ORDER BY kind, label)
				  FROM entitlock.stats AS s";
my $rows_before = $node->safe_psql('postgres', $all_rows);
isnt($rows_before, '', 'privileges: there are counts to read');

my ($o, $e) = as_monitor('SELECT count(*) FROM entitlock.stats');
like($e, qr/ERROR:\s+42501: permission denied for view stats/,
	'privileges: SELECT on entitlock.stats without a grant fails with 42501');
($o, $e) = as_monitor('SELECT count(*) FROM entitlock.stats_entries()');
like($e, qr/ERROR:\s+42501: permission denied for view stats/,
	'privileges: stats_entries() without SELECT on the view fails with 42501');
($o, $e) = as_monitor('SELECT entitlock.stats_reset()');
like($e, qr/ERROR:\s+42501: permission denied for function stats_reset/,
	'privileges: stats_reset() without a grant fails with 42501');
is($node->safe_psql('postgres', $all_rows),
	$rows_before, 'privileges: the refused calls changed nothing');

$node->safe_psql('postgres', 'GRANT SELECT ON entitlock.stats TO monitor');
($o, $e) = as_monitor($all_rows);
is($e, '', 'privileges: after GRANT SELECT the view can be read');
is($o, $rows_before, 'privileges: monitor reads the same rows');
($o, $e) = as_monitor('SELECT count(*) FROM entitlock.stats_entries()');
is("$o$e", scalar(() = $rows_before =~ /^/mg),
	'privileges: and stats_entries() too');
($o, $e) = as_monitor('SELECT entitlock.stats_reset()');
like($e, qr/ERROR:\s+42501: permission denied for function stats_reset/,
	'privileges: SELECT on the view does not allow stats_reset()');
is($node->safe_psql('postgres', $all_rows),
	$rows_before, 'privileges: nothing was reset');

$node->safe_psql('postgres',
	'GRANT EXECUTE ON FUNCTION entitlock.stats_reset() TO monitor');
($o, $e) = as_monitor('SELECT entitlock.stats_reset()');
is($e, '', 'privileges: after GRANT EXECUTE stats_reset() works');
is($node->safe_psql('postgres', 'SELECT count(*) FROM entitlock.stats'),
	'0', 'privileges: and it reset the counts');

#
# A restart empties the counts.
#
$s1->query_safe("SELECT entitlock.lock('restart:1')");
is($ctl->query_safe("SELECT calls FROM entitlock.stats WHERE label = 'restart'"),
	'1', 'restart: a call is counted before the restart');
$_->quit for ($s1, $s2, $ctl);
$node->restart;
is($node->safe_psql('postgres', 'SELECT count(*) FROM entitlock.stats'),
	'0', 'restart: the view is empty after a restart');
$node->safe_psql('postgres', "SELECT entitlock.lock('restart:2')");
is( $node->safe_psql(
		'postgres', "SELECT kind, label, $counters FROM entitlock.stats"),
	'lock|restart|1|0|0|0|0|0',
	'restart: counting starts again from zero');
$node->stop;

#
# A node without the preload: the same calls work, nothing is counted.
#
my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init;
$plain->start;
$plain->safe_psql('postgres', 'CREATE EXTENSION entitlock');
is( $plain->safe_psql(
		'postgres', "SELECT entitlock.try_lock('acct:1'), entitlock.lock('acct:1', '50 ms');
		SELECT entitlock.lock_all(ARRAY['acct:2', 'acct:3']);
		SELECT entitlock.lock_entity('acct', 'e1');"),
	"t|t\n\n",
	'no preload: locks work');
is( $plain->safe_psql(
		'postgres', "SELECT allowed FROM entitlock.record_usage_if_under_limit('ws:1', 'seats', 2, 3);
		SELECT allowed FROM entitlock.record_usage_if_under_limit('ws:1', 'seats', 2, 3);
		SELECT string_agg(allowed::text, ',')
		  FROM entitlock.record_usage_if_under_limits(ARRAY[
			   entitlock.usage_limit('ws:1', 'calls', 10, 'day'),
			   entitlock.usage_limit('org:1', 'calls', 3, 'month')], 2);"),
	"t\nf\ntrue,true",
	'no preload: usage is allowed, then denied; a set of limits works');
is( $plain->safe_psql(
		'postgres', "SELECT allowed FROM entitlock.rate_limit('api:1', 1, '1 hour');
		SELECT allowed FROM entitlock.rate_limit('api:1', 1, '1 hour');"),
	"t\nf",
	'no preload: rate_limit allows, then denies');
is( $plain->safe_psql(
		'postgres', "SELECT status FROM entitlock.idempotency_begin('pay:1');
		SELECT status FROM entitlock.idempotency_begin('pay:1');
		SELECT entitlock.first_time('pay:e'), entitlock.first_time('pay:e');"),
	"new\nreplay\nt|f",
	'no preload: idempotency keys are new, then replayed');
my $ptok = $plain->safe_psql('postgres',
	"SELECT token FROM entitlock.lease_acquire('job:1', '1 hour', 'w1')");
is( $plain->safe_psql(
		'postgres', "SELECT count(*) FROM entitlock.lease_acquire('job:1', '1 hour', 'w2', '50 ms');
		SELECT entitlock.lease_renew('job:1', '$ptok', '1 hour'),
			   entitlock.lease_release('job:1', '$ptok');"),
	"0\nt|t",
	'no preload: leases are refused after a wait, renewed and released');
is($plain->safe_psql('postgres', 'SELECT count(*) FROM entitlock.stats'),
	'0', 'no preload: the view is empty');
($ret, $stdout, $stderr) =
  $plain->psql('postgres', 'SELECT entitlock.stats_reset()');
is("$ret|$stdout|$stderr", '0||', 'no preload: stats_reset() succeeds');
is($plain->safe_psql('postgres', 'SELECT count(*) FROM entitlock.stats_entries()'),
	'0', 'no preload: and the view is still empty');
$plain->stop;

done_testing();
