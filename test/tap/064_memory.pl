# test/tap/064_memory.pl: MEMORY_CALLS (default 1,000,000) calls of each
# hot function, all in ONE backend, must leave that backend's memory flat.
#
# A leak does not fail a functional test; it shows weeks later as a pooled
# backend that has grown to gigabytes.  Pooled backends live for days and
# make millions of calls, so that is what is done here.  Two ways of
# calling catch different leaks:
#
# - "stmt": all calls in one statement.  Catches memory left per call in
#   the query's or the transaction's context, freed only when the
#   statement ends (a result set's copy that is never freed, say).
#   Measured inside the statement, after every tenth of the calls.  One
#   transaction cannot hold a million distinct locks, so keys and names
#   repeat, and this covers the read and decide paths: re-taking a held
#   lock, a denial at the limit, a replay, a duplicate, a lease held by
#   someone else.
# - "txn": statements of MEMORY_BATCH (1000) calls with distinct keys, each
#   its own transaction.  Catches memory that outlives the transaction
#   (TopMemoryContext, CacheMemoryContext, the lock manager's local table,
#   malloc).  Measured between statements.  This covers the write paths:
#   new counters, claims, leases, and a timed lock that times out (a
#   subtransaction per call).
#
# A function with both paths gets half the calls on each.  The timed lock
# that times out waits 1 ms a call, and holders() reads pg_locks and
# pg_stat_activity, so those two make MEMORY_CALLS / 100 calls.
#
# The measure is the backend's private memory, RssAnon in
# /proc/self/status (read by the backend itself with pg_read_file), and
# the total of its memory contexts (pg_backend_memory_contexts).  VmRSS
# and VmHWM also count the shared buffers the backend has touched, which
# grow with the data and are no leak; they are reported, not judged.  The
# first tenth of each workload warms the caches; from there to the end,
# neither measure may grow by MEMORY_LIMIT_KB (8 MB).  The smallest leak,
# one 8-byte palloc per call, takes 24 bytes with its chunk header: 21 MB
# over the last 900,000 calls.  So 8 MB catches any per-call leak at the
# default count, and leaves room for what grows once (an allocator block
# doubling, the catalog caches, the local lock table).  A smaller
# MEMORY_CALLS makes the check less sensitive.
#
# Two controls leak on purpose in the same backend and must be flagged:
# custom settings made with set_config, between statements (malloc'd, so
# only RssAnon sees them), and prepared statements within one statement
# (memory contexts).  Without them the check could pass by measuring
# nothing.
#
# Run with: bash test/tap.sh test/tap/064_memory.pl

use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EntitlockTest;

my $calls    = $ENV{MEMORY_CALLS}    // 1000000;
my $batch    = $ENV{MEMORY_BATCH}    // 1000;
my $limit_kb = $ENV{MEMORY_LIMIT_KB} // 8192;
BAIL_OUT('MEMORY_CALLS must be at least 1000') if $calls < 1000;
my $half = int($calls / 2);
my $slow = int($calls / 100);

# The library preloaded, as in the suite's own cluster: every call is also
# counted in shared memory (src/stats.c), and that path must not leak
# either.
my $node = new_node('memory',
	"max_locks_per_transaction = 256\nshared_preload_libraries = 'entitlock'\n");
my $tmp  = PostgreSQL::Test::Utils::tempdir();
my $db   = 'postgres';
$node->safe_psql($db, 'CREATE EXTENSION entitlock');

# memstat(): RssAnon RssShmem VmRSS VmHWM (kB), the memory contexts'
# total (kB) and the time (epoch seconds), of the calling backend.
$node->safe_psql($db, <<'SQL');
CREATE FUNCTION memstat() RETURNS text LANGUAGE sql VOLATILE AS $$
	SELECT concat_ws(' ',
		(SELECT string_agg(m[2], ' ' ORDER BY array_position(
				ARRAY['RssAnon', 'RssShmem', 'VmRSS', 'VmHWM'], m[1]))
		   FROM regexp_matches(pg_read_file('/proc/self/status'),
				'^(RssAnon|RssShmem|VmRSS|VmHWM):\s+(\d+) kB', 'gn') AS m),
		(SELECT sum(total_bytes)::bigint / 1024 FROM pg_backend_memory_contexts),
		extract(epoch FROM clock_timestamp())::numeric(20, 3))
$$;
-- The control for memory contexts: a prepared statement per call,
-- never deallocated, as an application that leaks them would.
CREATE FUNCTION leak_prepared(i int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE format('PREPARE memory_leak_%s AS SELECT %L::text', i, repeat('x', 4096));
	RETURN true;
END
$$;
SQL

# A session holding the lock that the timed lock waits for; holders()
# reports it.  It waits idle in its transaction, which has no snapshot and
# no transaction id, so vacuum and pruning still remove the dead rows the
# write paths leave (a running statement would hold them all back, and
# make every call slower than the last).  It takes the lock as
# pg_advisory_xact_lock, the same lock without lock escalation's stripe:
# held all along, a stripe would make every bulk statement below wait a
# second to escalate, which is not what this test measures.
my ($h_in, $h_out) = ('', '');
my $holder = IPC::Run::start([ 'psql', '-X', '-q', '-d', $node->connstr($db) ],
	'<', \$h_in, '>', \$h_out, '2>', \$h_out);
$h_in .= "BEGIN; SELECT pg_advisory_xact_lock(entitlock.key('memory:contended'));\n";
$holder->pump_nb;
ok( $node->poll_query_until(
		$db, "SELECT count(*) = 1 FROM entitlock.holders('memory:contended')"),
	'a session holds the contended lock');

my $script = '';
my (@workloads, %made);

# stmt(NAME, N, QUERY): one statement making N calls.  QUERY has columns g
# (1..N, from generate_series(1, @N@)) and ok (the call gave the expected
# answer).  memstat() runs on every row where g is a multiple of N / 10,
# after that row's call.
sub stmt
{
	my ($name, $n, $query) = @_;
	my $step = int($n / 10);
	push @workloads, $name;
	$made{$name} = $step * 10;
	$query =~ s/\@N\@/$step * 10/ge;
	$script .= "SELECT 'ckpt|$name|start|' || memstat();\n"
	  . "SELECT 'stmt|$name|' || count(*) FILTER (WHERE ok) || '|' ||\n"
	  . "       string_agg(CASE WHEN g % $step = 0 THEN memstat() END, ';')\n"
	  . "  FROM ($query OFFSET 0) AS s;\n";
}

# txn(NAME, N, QUERY): N calls in statements of MEMORY_BATCH calls (at
# least ten statements).  QUERY has columns g (@LO@..@HI@) and ok; @B@ is
# the number of calls per statement, so (g % @B@) is distinct within one.
sub txn
{
	my ($name, $n, $query) = @_;
	my $per = $batch;
	$per = int($n / 10) if int($n / 10) < $per;
	my $nstmt = int($n / $per);
	push @workloads, $name;
	$made{$name} = $nstmt * $per;
	$script .= "SELECT 'ckpt|$name|start|' || memstat();\n";
	for my $i (0 .. $nstmt - 1)
	{
		my $q = $query;
		$q =~ s/\@LO\@/$i * $per + 1/ge;
		$q =~ s/\@HI\@/$i * $per + $per/ge;
		$q =~ s/\@B\@/$per/g;
		$script .= "SELECT 'txn|$name|' || count(*) FILTER (WHERE ok) FROM ($q OFFSET 0) AS s;\n";
		$script .= "SELECT 'ckpt|$name|10%|' || memstat();\n" if $i + 1 == int($nstmt / 10);
	}
	$script .= "SELECT 'ckpt|$name|end|' || memstat();\n";
}

# What the read paths read.  'full:*' have used their limit of 10;
# 'done:*' and 'seen:*' were claimed; 'held:*' are leased.
$script .= <<'SQL';
SELECT 'pid|' || pg_backend_pid();
SELECT count(entitlock.record_usage('full:' || g, 'f', 10)) FROM generate_series(0, 63) AS g;
SELECT count(entitlock.idempotency_complete('done:' || g, '{"id": 1}')::text)
  FROM generate_series(0, 999) AS g, LATERAL entitlock.idempotency_begin('done:' || g) AS b;
SELECT count(entitlock.first_time('seen:' || g)) FROM generate_series(0, 999) AS g;
SELECT count(*) FROM generate_series(0, 63) AS g, LATERAL entitlock.lease_acquire('held:' || g, '1 hour') AS l;
SQL

stmt('key(text)', $calls,
	"SELECT g, entitlock.key('name:' || g) IS NOT NULL AS ok FROM generate_series(1, \@N\@) AS g");
stmt('key(text,text)', $calls,
	"SELECT g, entitlock.key('realm', 'entity:' || g) IS NOT NULL AS ok FROM generate_series(1, \@N\@) AS g");
stmt('lock', $half,
	"SELECT g, entitlock.lock('lock:' || g % 64) IS NOT NULL AS ok FROM generate_series(1, \@N\@) AS g");
txn('lock, distinct names', $half,
	"SELECT g, entitlock.lock('lock:' || g) IS NOT NULL AS ok FROM generate_series(\@LO\@, \@HI\@) AS g");
stmt('try_lock', $calls,
	"SELECT g, entitlock.try_lock('try:' || g % 64) AS ok FROM generate_series(1, \@N\@) AS g");
stmt('lock_shared', $calls,
	"SELECT g, entitlock.lock_shared('shared:' || g % 64) IS NOT NULL AS ok FROM generate_series(1, \@N\@) AS g");
stmt('try_lock_shared', $calls,
	"SELECT g, entitlock.try_lock_shared('shared:' || g % 64) AS ok FROM generate_series(1, \@N\@) AS g");
stmt('lock(name, timeout)', $calls,
	"SELECT g, entitlock.lock('timed:' || g % 64, '1 s') AS ok FROM generate_series(1, \@N\@) AS g");
txn('lock(name, timeout) timing out', $slow,
	"SELECT g, NOT entitlock.lock('memory:contended', '1 ms') AS ok FROM generate_series(\@LO\@, \@HI\@) AS g");
stmt('lock_entity', $calls,
	"SELECT g, entitlock.lock_entity('realm', 'entity:' || g % 64) IS NOT NULL AS ok FROM generate_series(1, \@N\@) AS g");
stmt('lock_all', $calls,
	"SELECT g, entitlock.lock_all(ARRAY['all:' || g % 64, NULL, 'all:' || g % 7]) IS NOT NULL AS ok FROM generate_series(1, \@N\@) AS g");
stmt('holders', $slow,
	"SELECT g, h.pid IS NOT NULL AS ok FROM generate_series(1, \@N\@) AS g LEFT JOIN LATERAL entitlock.holders('memory:contended') AS h ON true");
stmt('record_usage_if_under_limit, at the limit', $half,
	"SELECT g, NOT u.allowed AS ok FROM generate_series(1, \@N\@) AS g, LATERAL entitlock.record_usage_if_under_limit('full:' || g % 64, 'f', 1, 10) AS u");
txn('record_usage_if_under_limit, recording', $half,
	"SELECT g, u.allowed AS ok FROM generate_series(\@LO\@, \@HI\@) AS g, LATERAL entitlock.record_usage_if_under_limit('subject:' || g % \@B\@, 'f', 1, 1000000000, 'day') AS u");
txn('record_usage', $half,
	"SELECT g, entitlock.record_usage('subject:' || g % \@B\@, 'g', 1) > 0 AS ok FROM generate_series(\@LO\@, \@HI\@) AS g");
txn('record_usage, idempotency key', $half,
	"SELECT g, entitlock.record_usage('subject:' || g % \@B\@, 'h', 1, 'month', 'key:' || g) > 0 AS ok FROM generate_series(\@LO\@, \@HI\@) AS g");
stmt('usage', $calls,
	"SELECT g, entitlock.usage('subject:' || g % 1000, 'g') >= 0 AS ok FROM generate_series(1, \@N\@) AS g");
txn('idempotency_begin + complete, new', $half,
	"SELECT g, b.status = 'new' AND entitlock.idempotency_complete('new:' || g, '{\"id\": 2}') IS NOT NULL AS ok FROM generate_series(\@LO\@, \@HI\@) AS g, LATERAL entitlock.idempotency_begin('new:' || g, 'fp') AS b");
stmt('idempotency_begin, replay', $half,
	"SELECT g, b.status = 'replay' AS ok FROM generate_series(1, \@N\@) AS g, LATERAL entitlock.idempotency_begin('done:' || g % 1000) AS b");
txn('first_time, new', $half,
	"SELECT g, entitlock.first_time('once:' || g) AS ok FROM generate_series(\@LO\@, \@HI\@) AS g");
stmt('first_time, duplicate', $half,
	"SELECT g, NOT entitlock.first_time('seen:' || g % 1000) AS ok FROM generate_series(1, \@N\@) AS g");
txn('lease_acquire + renew + release', $half,
	"SELECT g, entitlock.lease_renew('lease:' || g % \@B\@, l.token, '1 hour') AND entitlock.lease_release('lease:' || g % \@B\@, l.token) AS ok FROM generate_series(\@LO\@, \@HI\@) AS g, LATERAL entitlock.lease_acquire('lease:' || g % \@B\@, '1 minute', 'worker') AS l");
stmt('lease_acquire, held', $half,
	"SELECT g, l.token IS NULL AS ok FROM generate_series(1, \@N\@) AS g LEFT JOIN LATERAL entitlock.lease_acquire('held:' || g % 64, '1 hour') AS l ON true");
stmt('lease_renew + release, not the holder', $half,
	"SELECT g, NOT entitlock.lease_renew('held:' || g % 64, '00000000-0000-0000-0000-000000000000', '1 hour') AND NOT entitlock.lease_release('held:' || g % 64, '00000000-0000-0000-0000-000000000000') AS ok FROM generate_series(1, \@N\@) AS g");
$script .= "SELECT 'pid|' || pg_backend_pid(); SELECT 'peak|' || memstat();\n";
my @real = @workloads;

# The controls: about 10 kB (a setting) and 50 kB (a prepared statement)
# a call, far above the limit over the calls after the first tenth.
my @controls = ('control: settings (leaks on purpose)', 'control: prepared statements (leaks on purpose)');
txn($controls[0], 2000,
	"SELECT g, set_config('memory_check.leak_' || g, repeat('x', 10240), false) IS NOT NULL AS ok FROM generate_series(\@LO\@, \@HI\@) AS g");
stmt($controls[1], 500, "SELECT g, leak_prepared(g) AS ok FROM generate_series(1, \@N\@) AS g");

open my $fh, '>', "$tmp/calls.sql" or die;
print $fh $script;
close $fh;
my $nstatements = () = $script =~ /\n/g;
note("$calls calls of each function in one backend ($nstatements statements)");
my $started = time;
my ($out, $err) = ('', '');
my $ok = IPC::Run::run([ 'psql', '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1',
		'-d', $node->connstr($db), '-f', "$tmp/calls.sql" ], '>', \$out, '2>', \$err);
ok($ok, 'every statement ran') or BAIL_OUT("psql failed: $err\n" . join("\n", (split /\n/, $out)[-5 .. -1]));
note('ran in ' . (time - $started) . ' s');

my %pids = map { $_ => 1 } $out =~ /^pid\|(\d+)$/mg;
is(scalar keys %pids, 1, 'all calls ran in one backend');

# Fields of a memstat() line: RssAnon RssShmem VmRSS VmHWM contexts time.
sub mb { return sprintf('%.1f', $_[0] / 1024); }
sub line_of
{
	my ($prefix) = @_;
	for (split /\n/, $out) { return substr($_, length $prefix) if index($_, $prefix) == 0; }
	return undef;
}
my %flagged;
note(sprintf('%-48s %8s %6s  %-22s %7s  %s', 'workload', 'calls', 'secs', 'RssAnon start/10%/end',
		'VmHWM', 'contexts 10%/end (MB)'));
for my $w (@workloads)
{
	my ($a0, undef, undef, undef, undef, $t0) = split ' ', line_of("ckpt|$w|start|") // '';
	my ($first, $last);
	my $line = line_of("stmt|$w|");
	if (defined $line)
	{
		my (undef, $points) = split /\|/, $line, 2;
		my @p = split /;/, $points;
		($first, $last) = ($p[0], $p[-1]);
	}
	else
	{
		($first, $last) = (line_of("ckpt|$w|10%|"), line_of("ckpt|$w|end|"));
	}
	my ($a1, undef, undef, undef, $c1) = split ' ', $first // '';
	my ($a2, undef, undef, $h2, $c2, $t2) = split ' ', $last // '';
	note(sprintf('%-48s %8s %6.1f  %-22s %7s  %s', $w, $made{$w}, $t2 - $t0,
			mb($a0) . ' / ' . mb($a1) . ' / ' . mb($a2), mb($h2), mb($c1) . ' / ' . mb($c2)));
	$flagged{$w} = 1 if $a2 - $a1 >= $limit_kb || $c2 - $c1 >= $limit_kb;
	# Every call must have taken the path it was meant to.
	my $answered = 0;
	$answered += $1 for $out =~ /^(?:stmt|txn)\|\Q$w\E\|(\d+)/mg;
	is($answered, $made{$w}, "$w: every call answered as expected");
}
my (undef, undef, undef, $peak) = split ' ', line_of('peak|') // '';
note('peak RSS of the backend (VmHWM, shared buffers included) before the controls: ' . mb($peak) . ' MB');

for my $w (@real)
{
	ok(!$flagged{$w}, "$w: memory did not grow by $limit_kb kB or more after the first tenth of the calls");
}
for my $w (@controls)
{
	ok($flagged{$w}, "$w: flagged (else the test could not see a leak)");
}

$h_in .= "ROLLBACK;\n\\q\n";
$holder->finish;
$node->stop;
done_testing();
