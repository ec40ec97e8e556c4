# test/tap/003_failover.pl: what a failover to a streaming standby keeps.
#
# Two pairs of a primary and a physical streaming standby.  In each, a
# mixed entitlock load runs from six pgbench clients, the primary is
# stopped in immediate mode (a crash: no shutdown checkpoint, no last WAL
# sent) while the load runs, and the standby is promoted.  The clients
# lose their connections and stop.  The new primary is then checked.
#
# The load, each statement its own transaction (autocommit):
# - usage: record_usage_if_under_limit of 1 to 3 units on one hot meter
#   whose limit is reached during the run, each call writing a row of
#   usage_ledger (amount, allowed) in the same statement;
# - first_time: keys drawn from a Zipf distribution (a few keys very often,
#   so duplicates come concurrently, and new keys all the time), each key
#   applied writing a row of effect in the same statement;
# - leases: lease_acquire with a 1 ms ttl on four names (each acquisition
#   takes over the expired lease of the one before), each acquisition
#   writing (name, token, fencing) to lease_history in the same statement;
#   and renews and releases of the client's last token, each release that
#   succeeds writing lease_release_log.
# The tables written in the same statement are the server's record of what
# committed: they commit, or are lost, with what they record.
#
# The client's record of what was acknowledged: after each statement
# returns, pgbench's \shell appends the statement's result (ledger id and
# decision, key and whether it was applied, name, token and fencing) to a
# file of the test.  pgbench sends the next command only after the
# statement's result is complete, and the server sends CommandComplete of
# an autocommit statement only after the commit (and with synchronous
# replication, after the standby's flush), so a line in those files is a
# commit acknowledged to a client.  A commit acknowledged just before the
# crash but not yet written down makes the record smaller, never wrong.
#
# Case 1, synchronous standby (synchronous_standby_names names the
# standby's application_name, synchronous_commit = on).  'on' is what
# users run: a commit is acknowledged once the standby has flushed its
# WAL.  remote_apply would also make reads on the standby right after the
# commit see it; after a promotion every flushed record is replayed, so
# 'on' is enough for what is checked here.  On the new primary:
# - nothing acknowledged is lost: every usage call, applied or replayed
#   key and lease acquisition in the clients' record is there.  (A key a
#   client saw replayed was committed by another transaction before, and
#   a commit becomes visible to others only after its standby flush.)
# - usage of the meter equals the sum of the allowed amounts in the ledger
#   and is at most the limit; the record shows both allowed and denied
#   calls.
# - each applied key has exactly one effect row and one claim, first_time
#   of every one of them is false, and no client saw a key applied twice.
# - the latest committed token of each churned lease is the name's
#   lease_record row, unless that token was released (then no row): an
#   expired lease that nobody took over still belongs to its holder, so it
#   renews (README: Expiry), keeping its fencing number; every older token
#   does not renew.  A long lease taken before the load and one taken
#   during it renew with their tokens.
# - fencing numbers are unique, and those drawn on the new primary are
#   above every number committed (lease_history) or seen by a client.
#
# Case 2, asynchronous standby (synchronous_standby_names empty).  To make
# the loss certain rather than likely, the standby's WAL receiver is
# stopped (primary_conninfo = '' and a reload) once the meter is a quarter
# used, and the load goes on until the limit is reached, more than 100
# leases have been taken and more than 20 keys applied since, and a second
# long lease is taken; the standby cannot have any of that.  The test
# reports what was lost (acknowledged usage calls and units, keys, lease
# acquisitions) and requires each to be above zero.  What still holds on
# the new primary: usage equals the ledger and is within the limit, each
# key once, first_time false for the keys it has, unique fencing numbers,
# lease rows as above.  What does not: a key applied and acknowledged on
# the old primary is new again on the new one (first_time is true: the
# request is applied twice); the lost long lease's token does not renew
# and the name can be taken by someone else while its old holder believes
# it holds it; and the fencing sequence is behind: the old primary handed
# out more than the 32 numbers a sequence logs ahead after the standby
# stopped receiving, so the next number of the new primary is not above
# the lost holder's, and the fencing check that should stop the old
# holder stops the new one instead.  After the step the README prescribes,
#   SELECT setval('entitlock.lease_fencing',
#                 GREATEST(<highest number any client saw>,
#                          (SELECT last_value FROM entitlock.lease_fencing))
#                 + 1000);
# new numbers are above every number the old primary handed out.
#
# Run with: bash test/tap.sh test/tap/003_failover.pl

use strict;
use warnings;

use IPC::Run;
use List::Util qw(max sum0);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

# The hot meter's limit, in units (1 to 3 per call).
my $limit = 1500;

# The number of pgbench clients.
my $clients = 6;

my $nil_uuid = '00000000-0000-0000-0000-000000000000';

# A primary (entitlock and the test's tables created) and its streaming
# standby, running; with $sync the standby is synchronous.
sub make_pair
{
	my ($prefix, $sync) = @_;
	my $primary = PostgreSQL::Test::Cluster->new("${prefix}_primary");
	$primary->init(allows_streaming => 1);
	$primary->append_conf(
		'postgresql.conf', qq{
max_connections = 30
shared_buffers = 16MB
log_statement = none
synchronous_commit = on
});
	$primary->start;
	$primary->safe_psql(
		'postgres', q{
		CREATE EXTENSION entitlock;
		CREATE TABLE usage_ledger (
			id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
			amount int NOT NULL,
			allowed boolean NOT NULL);
		CREATE TABLE effect (key text NOT NULL);
		CREATE TABLE lease_history (
			name text NOT NULL,
			token uuid NOT NULL,
			fencing bigint NOT NULL);
		CREATE TABLE lease_release_log (
			name text NOT NULL,
			token uuid NOT NULL);});
	$primary->backup('base');

	my $standby = PostgreSQL::Test::Cluster->new("${prefix}_standby");
	$standby->init_from_backup($primary, 'base', has_streaming => 1);
	# The name synchronous_standby_names refers to.
	$standby->append_conf('postgresql.conf',
		"primary_conninfo = '" . $primary->connstr . " application_name=$prefix'");
	$standby->start;

	if ($sync)
	{
		$primary->append_conf('postgresql.conf',
			"synchronous_standby_names = '$prefix'");
		$primary->reload;
	}
	$primary->poll_query_until('postgres',
		"SELECT sync_state FROM pg_stat_replication WHERE application_name = '$prefix'",
		$sync ? 'sync' : 'async')
	  or die "standby $prefix did not connect";
	return ($primary, $standby);
}

# The pgbench scripts, as name@weight => text; ACK is the directory of
# the clients' records.
sub scripts
{
	my ($ack) = @_;
	return (
		'usage.sql@4' => qq{
\\set amount random(1, 3)
INSERT INTO usage_ledger (amount, allowed) SELECT :amount, allowed FROM entitlock.record_usage_if_under_limit('ws:hot', 'calls', :amount, $limit) RETURNING id, allowed \\gset
\\shell echo :id :amount :allowed >> $ack/usage
},
		'first_time.sql@3' => qq{
\\set k random_zipfian(1, 1000000, 1.1)
WITH e AS (INSERT INTO effect (key) SELECT 'ft:' || :k WHERE entitlock.first_time('ft:' || :k) RETURNING key) SELECT count(*) AS applied FROM e \\gset
\\shell echo :k :applied >> $ack/keys
},
		# otok and oname: the client's last lease, kept when it gets none.
		'acquire.sql@3' => qq{
\\set n random(1, 4)
WITH a AS (SELECT token, fencing FROM entitlock.lease_acquire('churn:' || :n, '1 ms', 'client ' || :client_id)), h AS (INSERT INTO lease_history (name, token, fencing) SELECT 'churn:' || :n, token, fencing FROM a RETURNING token, fencing) SELECT coalesce((SELECT token::text FROM h), '-') AS tok, coalesce((SELECT fencing FROM h), 0) AS fen, coalesce((SELECT token::text FROM h), ':otok') AS otok, coalesce((SELECT :n FROM h), :oname) AS oname \\gset
\\shell echo :n :tok :fen >> $ack/leases
},
		'old.sql@1' => qq{
\\set r random(0, 1)
WITH x AS (SELECT CASE WHEN :r = 0 THEN entitlock.lease_renew('churn:' || :oname, ':otok', '1 ms') ELSE entitlock.lease_release('churn:' || :oname, ':otok') END AS ok), l AS (INSERT INTO lease_release_log (name, token) SELECT 'churn:' || :oname, ':otok' FROM x WHERE ok AND :r = 1 RETURNING 1) SELECT ok FROM x, (SELECT count(*) FROM l) AS c;
});
}

# Starts the load on NODE; returns its handle and the records' directory.
sub start_load
{
	my ($node) = @_;
	my $ack = PostgreSQL::Test::Utils::tempdir;
	my %scripts = scripts($ack);
	my @files;
	for my $name (sort keys %scripts)
	{
		(my $file = "$ack/$name") =~ s/\@\d+$//;
		PostgreSQL::Test::Utils::append_to_file($file, $scripts{$name});
		push @files, '-f', "$file\@" . ($name =~ /\@(\d+)$/)[0];
	}
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[
			'pgbench', '-n', '-c', $clients, '-j', $clients, '-T', '60',
			'-D', "otok=$nil_uuid", '-D', 'oname=1',
			@files, '-h', $node->host, '-p', $node->port, 'postgres'
		],
		'<', \undef, '>', \$out, '2>', \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return { h => $h, out => \$out, err => \$err, ack => $ack };
}

# Waits for the load's clients to end; returns the clients' records:
# usage => { id => [amount, allowed] }, keys => { key => times applied },
# seen => { key seen at all }, leases => [ [name, token, fencing] ].
sub end_load
{
	my ($load) = @_;
	$load->{h}->finish;
	note 'pgbench: ' . (() = ${ $load->{err} } =~ /aborted/g) . ' clients aborted';
	my %rec = (usage => {}, keys => {}, seen => {}, leases => []);
	for my $line (split /\n/, slurp_or_empty("$load->{ack}/usage"))
	{
		my ($id, $amount, $allowed) = split / /, $line;
		$rec{usage}{$id} = [ $amount, $allowed ];
	}
	for my $line (split /\n/, slurp_or_empty("$load->{ack}/keys"))
	{
		my ($k, $applied) = split / /, $line;
		$rec{seen}{"ft:$k"} = 1;
		$rec{keys}{"ft:$k"} += $applied;
	}
	for my $line (split /\n/, slurp_or_empty("$load->{ack}/leases"))
	{
		my ($n, $tok, $fen) = split / /, $line;
		push @{ $rec{leases} }, [ "churn:$n", $tok, $fen ] if $tok ne '-';
	}
	return \%rec;
}

sub slurp_or_empty
{
	my ($file) = @_;
	return -e $file ? slurp_file($file) : '';
}

# SQL on NODE.
sub sql
{
	my ($node, $sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

# lease_acquire as (token, fencing), or () for no row.
sub acquire
{
	my ($node, $name, $ttl) = @_;
	my $out = sql($node,
		"SELECT token, fencing FROM entitlock.lease_acquire('$name', '$ttl', 'test')");
	return $out eq '' ? () : split /\|/, $out;
}

# Until SQL on NODE is true (or die).
sub wait_for
{
	my ($node, $sql, $what) = @_;
	$node->poll_query_until('postgres', $sql)
	  or die "timed out waiting for $what";
	return;
}

# Loss counts for the clients' record REC against the new primary NODE:
# (lost usage calls, lost allowed units, lost applied keys (as a list),
# lost key sightings, lost lease acquisitions, all acknowledged).
sub lost
{
	my ($node, $rec) = @_;
	my %ledger = map { my ($id, $a, $ok) = split /\|/; ($id => "$a $ok") }
	  split /\n/, sql($node, 'SELECT id, amount, allowed FROM usage_ledger');
	my ($calls, $units) = (0, 0);
	for my $id (keys %{ $rec->{usage} })
	{
		my ($amount, $allowed) = @{ $rec->{usage}{$id} };
		my $there = $ledger{$id};
		if (!defined $there)
		{
			$calls++;
			$units += $amount if $allowed eq 't';
		}
		elsif ($there ne "$amount $allowed")
		{
			fail("ledger row $id is \"$there\", the client saw \"$amount $allowed\"");
		}
	}
	my %effect = map { $_ => 1 } split /\n/, sql($node, 'SELECT key FROM effect');
	my @keys = sort grep { $rec->{keys}{$_} && !$effect{$_} } keys %{ $rec->{keys} };
	my $seen = grep { !$effect{$_} } keys %{ $rec->{seen} };
	my %history = map { $_ => 1 }
	  split /\n/, sql($node, "SELECT name || ' ' || token || ' ' || fencing FROM lease_history");
	my $leases = grep { !$history{"@$_"} } @{ $rec->{leases} };
	return ($calls, $units, \@keys, $seen, $leases);
}

# The checks that hold on the new primary NODE after any failover; REC is
# the clients' record, LONG1 the (token, fencing) of the lease taken
# before the load.
sub common_checks
{
	my ($case, $node, $rec, $long1) = @_;

	# Usage: the meter, the ledger and the limit.
	my ($usage, $ledger_sum, $denied) = split /\|/,
	  sql($node,
		"SELECT entitlock.usage('ws:hot', 'calls'),
				coalesce(sum(amount) FILTER (WHERE allowed), 0),
				count(*) FILTER (WHERE NOT allowed)
		   FROM usage_ledger");
	is($usage, $ledger_sum,
		"$case: usage equals the allowed amounts of the ledger ($usage)");
	cmp_ok($usage, '<=', $limit, "$case: usage is within the limit $limit");
	my @calls = values %{ $rec->{usage} };
	my $acked_allowed = grep { $_->[1] eq 't' } @calls;
	my $acked_denied  = grep { $_->[1] eq 'f' } @calls;
	ok($acked_allowed > 0 && $acked_denied > 0,
		"$case: clients saw allowed ($acked_allowed) and denied ($acked_denied) calls");
	is( sum0(map { $_->[1] eq 't' ? $_->[0] : 0 } @calls) <= $limit ? 1 : 0,
		1, "$case: the clients were granted at most the limit");

	# Keys: once each, replayed on the new primary.
	is( sql($node,
			"SELECT count(*) FROM (SELECT key FROM effect GROUP BY key
									HAVING count(*) > 1) AS d"),
		'0', "$case: no key has two effect rows");
	is( sql($node,
			"SELECT (SELECT count(*) FROM effect) || ' '
					|| (SELECT count(*) FROM entitlock.idempotency_key
						 WHERE key LIKE 'ft:%')
					|| ' ' || (SELECT count(*) FROM effect AS e
								WHERE NOT EXISTS (
									  SELECT FROM entitlock.idempotency_key AS k
									   WHERE k.key = e.key))"),
		sql($node, "SELECT count(*) || ' ' || count(*) || ' 0' FROM effect"),
		"$case: each applied key has one claim, and no claim lacks its effect");
	is( join(',', grep { $rec->{keys}{$_} > 1 } sort keys %{ $rec->{keys} }),
		'', "$case: no client saw a key applied twice");
	is( sql($node,
			'SELECT count(*) FILTER (WHERE entitlock.first_time(key)) || \' of \' || count(*) FROM effect'),
		'0 of ' . sql($node, 'SELECT count(*) FROM effect'),
		"$case: first_time of every applied key is false on the new primary");

	# Leases: unique numbers; the latest token of each name is its row.
	my $hist = sql($node, 'SELECT count(*), count(DISTINCT fencing) FROM lease_history');
	my ($n, $distinct) = split /\|/, $hist;
	ok($n > 0 && $n == $distinct,
		"$case: the $n committed acquisitions have distinct fencing numbers");
	my $latest = "(SELECT DISTINCT ON (name) name, token, fencing
					FROM lease_history ORDER BY name, fencing DESC)";
	is( sql($node,
			"SELECT string_agg(h.name || ' ' ||
					CASE WHEN EXISTS (SELECT FROM lease_release_log AS l
									   WHERE l.token = h.token)
						 THEN CASE WHEN r.name IS NULL THEN 'released' ELSE 'row kept' END
						 WHEN r.token = h.token AND r.fencing = h.fencing THEN 'held'
						 ELSE 'row differs' END, ', ' ORDER BY h.name)
			   FROM $latest AS h
			   LEFT JOIN entitlock.lease_record AS r ON r.name = h.name"),
		sql($node,
			"SELECT string_agg(h.name || ' ' ||
					CASE WHEN EXISTS (SELECT FROM lease_release_log AS l
									   WHERE l.token = h.token)
						 THEN 'released' ELSE 'held' END, ', ' ORDER BY h.name)
			   FROM $latest AS h"),
		"$case: the row of each churned name is its latest committed acquisition, or none once released"
	);
	is( sql($node,
			"SELECT count(*) FILTER (WHERE entitlock.lease_renew(h.name, h.token, '1 hour'))
			   FROM lease_history AS h
			  WHERE (h.name, h.fencing) NOT IN (SELECT name, fencing FROM $latest AS x)"),
		'0', "$case: no older token of a churned name renews");
	is( sql($node,
			"SELECT string_agg(CASE WHEN entitlock.lease_renew(h.name, h.token, '1 hour')
									THEN 'renewed' ELSE 'refused' END, ',' ORDER BY h.name)
			   FROM $latest AS h"),
		sql($node,
			"SELECT string_agg(CASE WHEN EXISTS (SELECT FROM lease_release_log AS l
												  WHERE l.token = h.token)
									THEN 'refused' ELSE 'renewed' END, ',' ORDER BY h.name)
			   FROM $latest AS h"),
		"$case: the latest token of each churned name renews, although expired, unless released"
	);
	is( sql($node,
			"SELECT count(*) FROM entitlock.leases AS v JOIN $latest AS h USING (name)
			  WHERE v.fencing <> h.fencing"),
		'0', "$case: a renewed lease keeps its fencing number");
	is(sql($node, "SELECT entitlock.lease_renew('long:1', '$long1->[0]', '1 hour')"),
		't', "$case: the long lease taken before the load renews with its token");
	return;
}

# The highest fencing number of the clients' record, the long leases and
# lease_history of NODE.
sub max_known_fencing
{
	my ($node, $rec, @more) = @_;
	return max(sql($node, 'SELECT coalesce(max(fencing), 0) FROM lease_history'),
		map({ $_->[2] } @{ $rec->{leases} }), @more);
}

# Numbers drawn on NODE: a new name, and a takeover of every churned
# name (released first); all must be above ABOVE.
sub check_new_fencing
{
	my ($case, $node, $above) = @_;
	my @new = ((acquire($node, "after:$case", '1 hour'))[1]);
	for my $line (split /\n/,
		sql($node, 'SELECT DISTINCT ON (name) name, token FROM lease_history ORDER BY name, fencing DESC'))
	{
		my ($name, $token) = split /\|/, $line;
		sql($node, "SELECT entitlock.lease_release('$name', '$token')");
		push @new, (acquire($node, $name, '1 hour'))[1];
	}
	my @low = grep { !defined $_ || $_ <= $above } @new;
	is(scalar @low, 0,
		"$case: the numbers drawn on the new primary (@{[ join ',', map { $_ // 'none' } @new ]}) are above every one known ($above)"
	);
	return;
}

#
# Case 1: a synchronous standby loses nothing that was acknowledged.
#
my ($primary, $standby) = make_pair('sync', 1);
my @long1 = acquire($primary, 'long:1', '1 hour');
my $load = start_load($primary);
wait_for($primary, "SELECT entitlock.usage('ws:hot', 'calls') >= $limit / 2",
	'half the limit');
my @long2 = acquire($primary, 'long:2', '1 hour');
wait_for(
	$primary,
	"SELECT entitlock.usage('ws:hot', 'calls') >= $limit - 2
		AND EXISTS (SELECT FROM usage_ledger WHERE NOT allowed)
		AND (SELECT count(*) FROM lease_history) >= 200
		AND (SELECT count(*) FROM effect) >= 50",
	'the limit, leases and keys');
usleep(300_000);
$primary->stop('immediate');
my $rec = end_load($load);
$standby->promote;
wait_for($standby, 'SELECT NOT pg_is_in_recovery()', 'promotion');

my ($calls, $units, $keys, $seen, $leases) = lost($standby, $rec);
note sprintf 'sync: the clients saw %d usage calls, %d keys, %d acquisitions',
  scalar keys %{ $rec->{usage} }, scalar keys %{ $rec->{seen} },
  scalar @{ $rec->{leases} };
is("$calls $units", '0 0', 'sync: no acknowledged usage call is lost');
is(scalar @$keys . " $seen", '0 0',
	'sync: no key acknowledged as applied or replayed is lost');
is($leases, 0, 'sync: no acknowledged lease acquisition is lost');
common_checks('sync', $standby, $rec, \@long1);
is(sql($standby, "SELECT entitlock.lease_renew('long:2', '$long2[0]', '1 hour')"),
	't', 'sync: the long lease taken during the load renews with its token');
check_new_fencing('sync', $standby,
	max_known_fencing($standby, $rec, $long1[1], $long2[1]));
$standby->stop;

#
# Case 2: an asynchronous standby that stopped receiving loses what came
# after; what it has is consistent, and the fencing sequence must be moved.
#
($primary, $standby) = make_pair('async', 0);
@long1 = acquire($primary, 'long:1', '1 hour');
$primary->wait_for_catchup('async');   # the standby's application_name
$load = start_load($primary);
wait_for($primary, "SELECT entitlock.usage('ws:hot', 'calls') >= $limit / 4",
	'a quarter of the limit');

# Stop the WAL receiver; from now on the standby receives nothing.
$standby->append_conf('postgresql.conf', "primary_conninfo = ''");
$standby->reload;
wait_for($standby, 'SELECT count(*) = 0 FROM pg_stat_wal_receiver',
	'the WAL receiver to stop');
wait_for($primary, 'SELECT count(*) = 0 FROM pg_stat_replication',
	'the standby to disconnect');
my ($acq0, $eff0) = split /\|/,
  sql($primary, 'SELECT (SELECT count(*) FROM lease_history), (SELECT count(*) FROM effect)');
wait_for(
	$primary,
	"SELECT entitlock.usage('ws:hot', 'calls') >= $limit - 2
		AND EXISTS (SELECT FROM usage_ledger WHERE NOT allowed)
		AND (SELECT count(*) FROM lease_history) >= $acq0 + 100
		AND (SELECT count(*) FROM effect) >= $eff0 + 20",
	'the limit, leases and keys after the standby stopped');
# Taken last: its number is above what the standby's sequence has.
@long2 = acquire($primary, 'long:2', '1 hour');
$primary->stop('immediate');
$rec = end_load($load);
$standby->promote;
wait_for($standby, 'SELECT NOT pg_is_in_recovery()', 'promotion');

($calls, $units, $keys, $seen, $leases) = lost($standby, $rec);
diag sprintf
  'async: lost %d of %d acknowledged usage calls (%d units granted), %d of %d keys applied, %d of %d lease acquisitions',
  $calls, scalar keys %{ $rec->{usage} }, $units, scalar @$keys,
  scalar grep({ $rec->{keys}{$_} } keys %{ $rec->{keys} }), $leases,
  scalar @{ $rec->{leases} };
ok($calls > 0 && $units > 0, 'async: acknowledged usage calls are lost');
ok(@$keys > 0, 'async: keys acknowledged as applied are lost');
ok($leases > 0, 'async: acknowledged lease acquisitions are lost');
common_checks('async', $standby, $rec, \@long1);

my $used = sql($standby, "SELECT entitlock.usage('ws:hot', 'calls')");
note sprintf 'async: the new primary grants %d more units; the clients were granted %d',
  $limit - $used,
  sum0(map { $_->[1] eq 't' ? $_->[0] : 0 } values %{ $rec->{usage} });
is( sql($standby,
		'SELECT count(*) FILTER (WHERE entitlock.first_time(k)) FROM unnest($$'
		  . '{' . join(',', @$keys) . '}$$::text[]) AS k'),
	scalar @$keys,
	'async: every lost key is new again on the new primary (applied twice)');
is(sql($standby, "SELECT entitlock.lease_renew('long:2', '$long2[0]', '1 hour')"),
	'f', 'async: the lost long lease does not renew with its token');

# The sequence is behind: a takeover of the lost lease gets a lower number
# than its old holder has.
my ($last_value) = sql($standby, 'SELECT last_value FROM entitlock.lease_fencing');
my $known = max_known_fencing($standby, $rec, $long1[1], $long2[1]);
note "async: the promoted standby's sequence is at $last_value, the highest number handed out $known";
my @stale = acquire($standby, 'long:2', '1 hour');
cmp_ok($stale[1], '<=', $long2[1],
	"async: before setval, long:2 taken again gets $stale[1], not above its old holder's $long2[1]");
sql($standby, "SELECT entitlock.lease_release('long:2', '$stale[0]')");

sql($standby,
	"SELECT setval('entitlock.lease_fencing',
				   GREATEST($known, (SELECT last_value FROM entitlock.lease_fencing)) + 1000)");
my @fresh = acquire($standby, 'long:2', '1 hour');
cmp_ok($fresh[1], '>', $long2[1],
	"async: after setval, long:2 gets $fresh[1], above its old holder's $long2[1]");
check_new_fencing('async', $standby, $known);
$standby->stop;

done_testing();
