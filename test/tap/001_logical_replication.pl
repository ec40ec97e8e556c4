# test/tap/001_logical_replication.pl: entitlock under logical replication.
#
# Two clusters, both with entitlock: one publishes FOR ALL TABLES, the
# other subscribes.  A workload on the publisher goes through every write
# path of entitlock's six tables (inserts, updates, deletes), some of it
# before the subscription exists (initial copy) and some after (streamed
# changes).  Once the subscriber has caught up, its tables must equal the
# publisher's, and after a blue/green switch it must answer as the
# publisher did: usage and limits, sets of limits and their refunds, rate
# limit states, replayed keys, first_time keys, renewable and dead lease
# tokens.  The fencing sequence does not
# replicate: a takeover on the subscriber refuses to hand out a number
# already used until the sequence is moved past the publisher's.
#
# A control database on the publisher shows that the primary keys of 1.1
# are what make entitlock's deletes work under a publication: with 1.0
# lease_release fails there.
#
# A name whose lease was released on the publisher has no row to compare
# the sequence with, so only the setval keeps its next number above the
# ones it had (README: Logical replication and blue/green switches).
#
# Run with: bash test/tap.sh test/tap/001_logical_replication.pl

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my @tables = qw(idempotency_key lease_record rate_limit_state usage_counter
  usage_idempotency usage_limits_idempotency);

# The primary key of each table: the order rows are compared in.
my %pkey = (
	idempotency_key   => 'key_hash, claim_id',
	lease_record      => 'key_hash, fencing',
	rate_limit_state  => 'name',
	usage_counter     => 'subject, feature, period, period_start',
	usage_idempotency => 'subject, feature, idempotency_key',
	usage_limits_idempotency => 'idempotency_key',);

# Every row of an entitlock table, in primary key order, one per line.
sub table_rows
{
	my ($node, $table) = @_;
	return $node->safe_psql('postgres',
		"SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY $pkey{$table}), '')
		   FROM entitlock.$table AS t");
}

sub compare_tables
{
	my ($pub, $sub, $when) = @_;
	for my $table (@tables)
	{
		my $rows = table_rows($pub, $table);
		isnt($rows, '', "$when: publisher has rows in entitlock.$table");
		is(table_rows($sub, $table), $rows,
			"$when: entitlock.$table on the subscriber equals the publisher's");
	}
}

# record_usage_if_under_limit(ARGS) as "allowed|used|remaining".
sub usage_call
{
	my ($node, $args) = @_;
	return $node->safe_psql('postgres',
		"SELECT allowed, used, remaining
		   FROM entitlock.record_usage_if_under_limit($args)");
}

# One idempotent request: idempotency_begin, and when it says 'new',
# idempotency_complete with RESPONSE, in one transaction.  Returns the
# status.
sub claim
{
	my ($node, $key, $fp, $ttl, $response) = @_;
	return $node->safe_psql(
		'postgres', qq{
		BEGIN;
		SELECT status, status = 'new' AS is_new
		  FROM entitlock.idempotency_begin('$key', '$fp', '$ttl') \\gset
		\\if :is_new
		SELECT entitlock.idempotency_complete('$key', '$response') \\gset
		\\endif
		COMMIT;
		\\echo :status});
}

# lease_acquire as (token, fencing); an empty list when it returns no row.
sub acquire
{
	my ($node, $name, $ttl, $holder) = @_;
	my $out = $node->safe_psql('postgres',
		"SELECT token, fencing
		   FROM entitlock.lease_acquire('$name', '$ttl', '$holder')");
	return () if $out eq '';
	return split /\|/, $out;
}

# lease_acquire in database DB, without a holder, as (token, fencing).
sub acquire_in
{
	my ($node, $db, $name) = @_;
	return split /\|/,
	  $node->safe_psql($db,
		"SELECT token, fencing FROM entitlock.lease_acquire('$name', '1 hour')");
}

# Runs SQL with verbose errors; returns (exit code, stderr).
sub psql_verbose
{
	my ($node, $db, $sql) = @_;
	my ($ret, $stdout, $stderr) =
	  $node->psql($db, "\\set VERBOSITY verbose\n$sql");
	return ($ret, $stderr);
}

my $meters = "entitlock.usage('ws:1', 'seats'),
			  entitlock.usage('ws:1', 'api_calls', 'day'),
			  entitlock.usage('ws:1', 'storage_gb', 'month'),
			  entitlock.usage('ws:1', 'burst', 'minute'),
			  entitlock.usage('ws:1', 'credits'),
			  entitlock.usage('ws:2', 'credits'),
			  entitlock.usage('org:1', 'api_calls', 'month')";

# record_usage_if_under_limits(a day limit on ws:1 and a month limit on
# org:1, AMOUNT, KEY) as "allowed|used" per limit, in order.
sub set_call
{
	my ($node, $amount, $key) = @_;
	return $node->safe_psql('postgres',
		"SELECT string_agg(CASE WHEN allowed THEN 't' ELSE 'f' END || '|' || used, ',')
		   FROM entitlock.record_usage_if_under_limits(ARRAY[
				entitlock.usage_limit('ws:1', 'api_calls', 100, 'day'),
				entitlock.usage_limit('org:1', 'api_calls', 1000, 'month')],
				$amount, '$key')");
}

# rate_limit(NAME, 10 an hour, COST) as "allowed|remaining".
sub rate_call
{
	my ($node, $name, $cost) = @_;
	return $node->safe_psql('postgres',
		"SELECT CASE WHEN allowed THEN 't' ELSE 'f' END || '|' || remaining
		   FROM entitlock.rate_limit('$name', 10, '1 hour', 10, $cost)");
}

#
# Setup: a publisher with wal_level = logical, a subscriber; entitlock in
# both, at the same version.
#
my $pub = PostgreSQL::Test::Cluster->new('publisher');
$pub->init(allows_streaming => 'logical');
$pub->start;

my $sub = PostgreSQL::Test::Cluster->new('subscriber');
$sub->init;
$sub->start;

for my $node ($pub, $sub)
{
	$node->safe_psql('postgres', 'CREATE EXTENSION entitlock');
	is( $node->safe_psql(
			'postgres',
			"SELECT extversion FROM pg_extension WHERE extname = 'entitlock'"),
		$node->safe_psql(
			'postgres',
			"SELECT default_version FROM pg_available_extensions WHERE name = 'entitlock'"),
		$node->name . ': entitlock installed at its default version');
}

$pub->safe_psql('postgres',
	'CREATE PUBLICATION entitlock_pub FOR ALL TABLES');

is( $pub->safe_psql(
		'postgres',
		"SELECT string_agg(tablename, ',' ORDER BY tablename)
		   FROM pg_publication_tables
		  WHERE pubname = 'entitlock_pub' AND schemaname = 'entitlock'"),
	join(',', @tables),
	'pg_publication_tables lists the six entitlock tables');

is( $pub->safe_psql(
		'postgres',
		"SELECT string_agg(c.relname, ',' ORDER BY c.relname)
		   FROM pg_depend AS d
		   JOIN pg_class AS c ON c.oid = d.objid
		  WHERE d.classid = 'pg_class'::regclass
			AND d.refclassid = 'pg_extension'::regclass
			AND d.refobjid = (SELECT oid FROM pg_extension
							   WHERE extname = 'entitlock')
			AND d.deptype = 'e' AND c.relkind = 'r'"),
	join(',', @tables),
	'those are all the tables of the extension');

is( $pub->safe_psql(
		'postgres',
		"SELECT string_agg(c.relname || ' ' || c.relreplident::text || ' '
						   || pg_get_constraintdef(k.oid), E'\\n'
						   ORDER BY c.relname)
		   FROM pg_class AS c
		   JOIN pg_constraint AS k
			 ON k.conrelid = c.oid AND k.contype = 'p'
		  WHERE c.relnamespace = 'entitlock'::regnamespace"),
	join("\n",
		'idempotency_key d PRIMARY KEY (key_hash, claim_id)',
		'lease_record d PRIMARY KEY (key_hash, fencing)',
		'rate_limit_state d PRIMARY KEY (name)',
		'usage_counter d PRIMARY KEY (subject, feature, period, period_start)',
		'usage_idempotency d PRIMARY KEY (subject, feature, idempotency_key)',
		'usage_limits_idempotency d PRIMARY KEY (idempotency_key)'),
	'each table has a primary key, its replica identity (default)');

#
# Phase 1, before the subscription exists: the initial copy carries it.
#
is(usage_call($pub, "'ws:1', 'seats', 3, 5"),
	't|3|2', 'phase 1: 3 of 5 seats (lifetime)');
is(usage_call($pub, "'ws:1', 'seats', 2, 5, 'lifetime', 'seat-k1'"),
	't|5|0', 'phase 1: 2 more seats with a key reach the limit');
is(usage_call($pub, "'ws:1', 'seats', 1, 5, 'lifetime', 'seat-k2'"),
	'f|5|0', 'phase 1: a sixth seat with a key is denied at the limit');
like(usage_call($pub, "'ws:1', 'api_calls', 10, 100, 'day', 'api-k1'"),
	qr/^t\|/, 'phase 1: 10 api calls in the day, with a key');
like(usage_call($pub, "'ws:1', 'storage_gb', 7, 50, 'month'"),
	qr/^t\|/, 'phase 1: 7 GB in the month');
is(usage_call($pub, "'ws:1', 'burst', 1, 10, 'minute'"),
	't|1|9', 'phase 1: 1 burst in the minute');
is($pub->safe_psql('postgres',
		"SELECT entitlock.record_usage('ws:1', 'credits', 10)"),
	'10', 'phase 1: record_usage of 10 credits');
is($pub->safe_psql('postgres',
		"SELECT entitlock.record_usage('ws:1', 'credits', -4)"),
	'6', 'phase 1: record_usage of -4 credits (a refund)');
like(set_call($pub, 2, 'gw-1'), qr/^t\|\d+,t\|2$/,
	'phase 1: a set of two limits records on both');
is(rate_call($pub, 'rl:1', 3), 't|7', 'phase 1: rate_limit takes 3 of 10');

is(claim($pub, 'pay:1', 'fp-1', '24 hours', '{"charge": "ch_1", "amount": 500}'),
	'new', 'phase 1: idempotency key pay:1 claimed and completed');
is(claim($pub, 'pay:1', 'fp-1', '24 hours', '{}'),
	'replay', 'phase 1: pay:1 again is a replay on the publisher');
is(claim($pub, 'pay:short', 'fp-short', '1 second', '{"attempt": 1}'),
	'new', 'phase 1: pay:short claimed with a ttl of 1 second');
is(claim($pub, 'pay:purge', 'fp-purge', '1 second', '{"attempt": 1}'),
	'new', 'phase 1: pay:purge claimed with a ttl of 1 second');
is($pub->safe_psql('postgres', "SELECT entitlock.first_time('evt:1')"),
	't', 'phase 1: first_time(evt:1) is true once');
is($pub->safe_psql('postgres', "SELECT entitlock.first_time('evt:1')"),
	'f', 'phase 1: first_time(evt:1) is false after');

my ($tok_renew, $f_renew) =
  acquire($pub, 'job:renewable', '1 hour', 'worker-a');
ok(defined $f_renew, 'phase 1: lease job:renewable acquired');
my ($tok_take1, $f_take1) =
  acquire($pub, 'job:takeover', '1 second', 'worker-b');
ok(defined $f_take1, 'phase 1: lease job:takeover acquired for 1 second');
my ($tok_exp, $f_exp) = acquire($pub, 'job:expiring', '1 second', 'worker-x');
ok(defined $f_exp, 'phase 1: lease job:expiring acquired for 1 second');
my ($tok_early, $f_early) = acquire($pub, 'job:early', '1 hour', 'worker-e');
is( $pub->safe_psql(
		'postgres', "SELECT entitlock.lease_release('job:early', '$tok_early')"),
	't',
	'phase 1: lease_release deletes under the FOR ALL TABLES publication');

#
# The subscription, and its initial copy.
#
my $pub_connstr = $pub->connstr . ' dbname=postgres';
$sub->safe_psql('postgres',
	"CREATE SUBSCRIPTION entitlock_sub CONNECTION '$pub_connstr'
	 PUBLICATION entitlock_pub");
$sub->wait_for_subscription_sync($pub, 'entitlock_sub');
compare_tables($pub, $sub, 'initial copy');

#
# Phase 2, streamed: updates and deletes of every kind.
#
# Wait for the claims and leases of 1 second to expire.
$pub->poll_query_until(
	'postgres', "SELECT NOT EXISTS (
		SELECT FROM entitlock.idempotency_key
		 WHERE key IN ('pay:short', 'pay:purge')
		   AND expires_at > clock_timestamp())
	  AND NOT EXISTS (
		SELECT FROM entitlock.lease_record
		 WHERE name IN ('job:takeover', 'job:expiring')
		   AND expires_at > clock_timestamp())")
  or die 'the claims and leases of 1 second did not expire';

# prune_usage deletes counters of periods that end by its argument (the
# minute's) and every usage key recorded before it (phase 1's three).
cmp_ok(
	$pub->safe_psql(
		'postgres', "SELECT entitlock.prune_usage(now() + interval '61 seconds')"),
	'>=', 4,
	'phase 2: prune_usage deletes the minute counter and the usage keys');
is($pub->safe_psql('postgres',
		"SELECT count(*) FROM entitlock.usage_counter WHERE period = 'minute'")
	  . '/'
	  . $pub->safe_psql('postgres',
		'SELECT count(*) FROM entitlock.usage_idempotency'),
	'0/0', 'phase 2: no minute counter and no usage key left');

is(usage_call($pub, "'ws:1', 'seats', 1, 5, 'lifetime', 'seat-k3'"),
	'f|5|0', 'phase 2: a keyed seat is denied at the limit');
is( $pub->safe_psql(
		'postgres',
		"SELECT entitlock.record_usage('ws:1', 'seats', -1, 'lifetime', 'refund-k1')"),
	'4',
	'phase 2: a keyed refund of one seat');
is(usage_call($pub, "'ws:1', 'seats', 1, 5, 'lifetime', 'seat-k4'"),
	't|5|0', 'phase 2: a keyed seat fits again');
is(usage_call($pub, "'ws:1', 'seats', 1, 5"),
	'f|5|0', 'phase 2: an unkeyed seat is denied at the limit');
like(usage_call($pub, "'ws:1', 'api_calls', 5, 100, 'day', 'api-k2'"),
	qr/^t\|/, 'phase 2: 5 more api calls in the day, with a key');
like(usage_call($pub, "'ws:1', 'storage_gb', 3, 50, 'month', 'month-k1'"),
	qr/^t\|/, 'phase 2: 3 more GB in the month, with a key');
is($pub->safe_psql('postgres',
		"SELECT entitlock.record_usage('ws:2', 'credits', 5)"),
	'5', 'phase 2: record_usage of 5 credits for ws:2');
is($pub->safe_psql('postgres',
		"SELECT entitlock.record_usage('ws:2', 'credits', -9)"),
	'0', 'phase 2: a refund of 9 leaves usage at 0, never below');
like(set_call($pub, 3, 'gw-2'), qr/^t\|\d+,t\|5$/,
	'phase 2: a keyed set records on both meters');
is( $pub->safe_psql(
		'postgres', "SELECT entitlock.refund_usage('ws:1', 'api_calls', 'gw-2')"),
	'3', 'phase 2: refund_usage gives the set\'s day usage back');
is(rate_call($pub, 'rl:1', 2), 't|5', 'phase 2: rate_limit takes 2 more');
is(rate_call($pub, 'rl:2', 10), 't|0', 'phase 2: rate_limit empties a second name');

my $claim_id = $pub->safe_psql('postgres',
	"SELECT claim_id FROM entitlock.idempotency_key WHERE key = 'pay:short'");
is(claim($pub, 'pay:short', 'fp-short', '24 hours', '{"attempt": 2}'),
	'new', 'phase 2: the expired key pay:short is claimed again');
is( $pub->safe_psql(
		'postgres',
		"SELECT claim_id FROM entitlock.idempotency_key WHERE key = 'pay:short'"),
	$claim_id,
	'phase 2: the claim reuses the expired row (an UPDATE, same claim_id)');
is($pub->safe_psql('postgres', 'SELECT entitlock.purge_expired()'),
	'1', 'phase 2: purge_expired deletes the expired key pay:purge');
is(claim($pub, 'pay:2', 'fp-2', '24 hours', '{"charge": "ch_2"}'),
	'new', 'phase 2: idempotency key pay:2 claimed and completed');
is($pub->safe_psql('postgres', "SELECT entitlock.first_time('evt:2')"),
	't', 'phase 2: first_time(evt:2) is true once');

is( $pub->safe_psql(
		'postgres',
		"SELECT entitlock.lease_renew('job:renewable', '$tok_renew', '2 hours')"),
	't',
	'phase 2: lease job:renewable renewed');
my ($tok_take2, $f_take2) =
  acquire($pub, 'job:takeover', '1 hour', 'worker-c');
ok(defined $f_take2 && $f_take2 > $f_take1,
	'phase 2: the expired lease job:takeover is taken over, with a higher fencing number'
);
is( $pub->safe_psql(
		'postgres',
		"SELECT entitlock.lease_renew('job:takeover', '$tok_take1', '1 hour')"),
	'f',
	'phase 2: the old holder of job:takeover cannot renew');
my ($tok_done, $f_done) = acquire($pub, 'job:done', '1 hour', 'worker-d');
is( $pub->safe_psql(
		'postgres', "SELECT entitlock.lease_release('job:done', '$tok_done')"),
	't',
	'phase 2: lease job:done acquired and released (a streamed delete)');

#
# Caught up: the same rows, the same answers, no errors.
#
$pub->wait_for_catchup('entitlock_sub');
compare_tables($pub, $sub, 'streamed');

my $leases_sql = "SELECT string_agg(concat_ws(' ', name, holder, fencing,
											  acquired_at, expires_at),
									E'\\n' ORDER BY name)
					FROM entitlock.leases";
my $pub_leases = $pub->safe_psql('postgres', $leases_sql);
is( $pub->safe_psql(
		'postgres',
		"SELECT string_agg(name || ' ' || holder || ' ' || fencing, ', '
						   ORDER BY name)
		   FROM entitlock.leases"),
	"job:renewable worker-a $f_renew, job:takeover worker-c $f_take2",
	'the publisher holds job:renewable (worker-a) and job:takeover (worker-c)');
is($sub->safe_psql('postgres', $leases_sql),
	$pub_leases, 'entitlock.leases shows the same holders on the subscriber');

is( $sub->safe_psql(
		'postgres',
		"SELECT apply_error_count || '/' || sync_error_count
		   FROM pg_stat_subscription_stats
		  WHERE subname = 'entitlock_sub'"),
	'0/0',
	'pg_stat_subscription_stats: no apply or sync errors');
my $sub_log = slurp_file($sub->logfile);
unlike($sub_log, qr/ERROR|FATAL/, 'the subscriber log has no errors');
my $pub_log = slurp_file($pub->logfile);
unlike($pub_log, qr/replica identity/,
	'the publisher log has no replica identity error');
unlike($pub_log, qr/ERROR|FATAL/, 'the publisher log has no errors');

my $pub_fencing = $pub->safe_psql('postgres',
	'SELECT last_value FROM entitlock.lease_fencing');
is($pub_fencing, $f_take2 > $f_done ? $f_take2 : $f_done,
	'the publisher handed out fencing numbers up to its last acquisition');
cmp_ok($pub->safe_psql('postgres',
		'SELECT max(fencing) FROM entitlock.lease_record'),
	'<', $pub_fencing,
	'the highest fencing number in lease_record is below the sequence\'s '
	  . '(released leases had higher ones)');
is($sub->safe_psql('postgres',
		'SELECT last_value || \' \' || is_called FROM entitlock.lease_fencing'),
	'1 false', 'the fencing sequence did not replicate (subscriber unused)');

#
# The switch: writes stopped on the publisher (the workload is over), the
# subscriber has caught up; the subscription goes, clients move.
#
$sub->safe_psql('postgres', 'DROP SUBSCRIPTION entitlock_sub');
is($pub->safe_psql('postgres', 'SELECT count(*) FROM pg_replication_slots'),
	'0', 'switch: the subscription and its slot are dropped');
my $sub_log_offset = -s $sub->logfile;

# Usage: the same numbers, the same decisions.
is($sub->safe_psql('postgres', "SELECT $meters"),
	$pub->safe_psql('postgres', "SELECT $meters"),
	'after the switch: usage() of every meter equals the publisher\'s');
is(usage_call($sub, "'ws:1', 'seats', 1, 5"),
	'f|5|0', 'after the switch: a seat at the limit is still denied');
is(set_call($sub, 3, 'gw-2'), set_call($pub, 3, 'gw-2'),
	'after the switch: a retried set key returns its first decisions');
is( $sub->safe_psql(
		'postgres', "SELECT entitlock.refund_usage('ws:1', 'api_calls', 'gw-2')"),
	'0', 'after the switch: the refunded set key is not refunded again');
is( $sub->safe_psql(
		'postgres', "SELECT entitlock.refund_usage('org:1', 'api_calls', 'gw-2')"),
	'3', 'after the switch: the other pair of the set can still be refunded');
is(rate_call($sub, 'rl:2', 1), 'f|0',
	'after the switch: an emptied rate limit is still empty');
is(rate_call($sub, 'rl:1', 0), rate_call($pub, 'rl:1', 0),
	'after the switch: a rate limit\'s state is the publisher\'s');
is(usage_call($sub, "'ws:1', 'seats', 1, 5, 'lifetime', 'seat-k4'"),
	't|5|0', 'after the switch: a retried usage key returns its first decision');
is(usage_call($sub, "'ws:1', 'seats', 1, 5, 'lifetime', 'seat-k3'"),
	'f|5|0', 'after the switch: a retried denied usage key is still denied');
is($sub->safe_psql('postgres', "SELECT entitlock.usage('ws:1', 'seats')"),
	'5', 'after the switch: the retries recorded nothing');

# Idempotency keys: replays with the stored response.
my $begin_pay1 = "SELECT status, response,
						 response = '{\"charge\": \"ch_1\", \"amount\": 500}'::jsonb
					FROM entitlock.idempotency_begin('pay:1', 'fp-1')";
my $pub_pay1 = $pub->safe_psql('postgres', $begin_pay1);
like($pub_pay1, qr/^replay\|.*\|t$/,
	'the publisher replays pay:1 with its response');
is($sub->safe_psql('postgres', $begin_pay1),
	$pub_pay1,
	'after the switch: pay:1 is a replay with the stored response');
is( $sub->safe_psql(
		'postgres',
		"SELECT status, response->>'attempt'
		   FROM entitlock.idempotency_begin('pay:short', 'fp-short')"),
	'replay|2',
	'after the switch: the reclaimed key pay:short replays its second response');
is( $sub->safe_psql(
		'postgres',
		"SELECT status, response->>'charge'
		   FROM entitlock.idempotency_begin('pay:2', 'fp-2')"),
	'replay|ch_2',
	'after the switch: pay:2 (streamed) is a replay');
is( $sub->safe_psql(
		'postgres', "BEGIN;
		SELECT status FROM entitlock.idempotency_begin('pay:purge', 'fp-purge');
		ROLLBACK;"),
	'new',
	'after the switch: the purged key pay:purge is absent');
my ($ret, $err) = psql_verbose($sub, 'postgres',
	"SELECT * FROM entitlock.idempotency_begin('pay:1', 'fp-other')");
ok($ret != 0 && $err =~ /ERROR:\s+22023: idempotency key "pay:1" was reused with a different request/,
	'after the switch: pay:1 with another fingerprint fails with 22023')
  or diag($err);
is( $sub->safe_psql(
		'postgres',
		"SELECT entitlock.first_time('evt:1'), entitlock.first_time('evt:2')"),
	'f|f',
	'after the switch: first_time of both replicated keys is false');

# Leases: live tokens renew, dead ones do not.
is( $sub->safe_psql(
		'postgres',
		"SELECT entitlock.lease_renew('job:renewable', '$tok_renew', '1 hour')"),
	't',
	'after the switch: the token of job:renewable from the publisher renews');
is( $sub->safe_psql(
		'postgres',
		"SELECT entitlock.lease_renew('job:takeover', '$tok_take2', '1 hour')"),
	't',
	'after the switch: the token of job:takeover\'s new holder renews');
is( $sub->safe_psql(
		'postgres',
		"SELECT entitlock.lease_renew('job:takeover', '$tok_take1', '1 hour')"),
	'f',
	'after the switch: the token of job:takeover\'s old holder does not');
is( $sub->safe_psql(
		'postgres',
		"SELECT entitlock.lease_release('job:done', '$tok_done'),
				entitlock.lease_renew('job:early', '$tok_early', '1 hour')"),
	'f|f',
	'after the switch: the tokens of released leases are dead');
is( $sub->safe_psql(
		'postgres',
		"SELECT count(*) FROM entitlock.lease_acquire('job:renewable', '1 hour', 'intruder')"
	),
	'0',
	'after the switch: a held lease cannot be acquired by another');

#
# Fencing: the subscriber's sequence is behind the publisher's numbers.
#
($ret, $err) = psql_verbose($sub, 'postgres',
	"SELECT * FROM entitlock.lease_acquire('job:expiring', '1 minute', 'worker-y')");
ok( $ret != 0
	  && $err =~
	  /ERROR:\s+55000: sequence "entitlock.lease_fencing" is behind the fencing numbers already handed out/,
	'before setval: taking over an expired lease fails with 55000')
  or diag($err);
is( $sub->safe_psql(
		'postgres',
		"SELECT holder || ' ' || fencing FROM entitlock.lease_record
		  WHERE name = 'job:expiring'"),
	"worker-x $f_exp",
	'before setval: the expired lease is left as it was');

# Only a takeover has a row to compare the sequence with: a name whose
# lease was released on the publisher has none, so before the setval its
# next acquisition gets a number the publisher already gave it.  Not
# caught today; documented here so that a fix shows up.
$sub->safe_psql('postgres',
	"SELECT setval('entitlock.lease_fencing', $pub_fencing)");
my ($tok_y, $f_y) = acquire($sub, 'job:expiring', '1 minute', 'worker-y');
ok(defined $f_y && $f_y > $pub_fencing,
	"after setval: the takeover succeeds with fencing $f_y, above the publisher's $pub_fencing"
);
# A name released on the publisher has no row to show the sequence was
# behind: only the setval keeps its new number above its old one.
my ($tok_r, $f_r) = acquire($sub, 'job:done', '1 minute', 'worker-z');
ok( defined $f_r && $f_r > $f_done,
	"after setval: re-acquiring job:done (fencing $f_done on the publisher) gets a higher number ("
	  . ($f_r // 'none') . ')');
$sub->safe_psql('postgres',
	"SELECT entitlock.lease_release('job:done', '$tok_r')")
  if defined $tok_r;
my ($tok_n, $f_n) = acquire($sub, 'job:new', '1 minute', 'worker-n');
ok(defined $f_n && $f_n > $f_y,
	'after setval: a new lease gets a fencing number above that');
is( $sub->safe_psql(
		'postgres',
		"SELECT string_agg(name || ' ' || holder, ', ' ORDER BY name)
		   FROM entitlock.leases"),
	'job:expiring worker-y, job:new worker-n, job:renewable worker-a, job:takeover worker-c',
	'after setval: entitlock.leases shows the new holders');

my $sub_log_after = slurp_file($sub->logfile, $sub_log_offset);
my @errors = $sub_log_after =~ /ERROR:  (.*)/g;
is(scalar(@errors), 2,
	'after the switch: only the two expected errors in the subscriber log')
  or diag(join("\n", @errors));

#
# Control: the primary keys are what makes deletes work under a
# publication.  With entitlock 1.0 (no primary key on lease_record) a
# FOR ALL TABLES publication makes lease_release fail; after the update
# to 1.1 it works.
#
$pub->safe_psql('postgres', 'CREATE DATABASE control');
$pub->safe_psql(
	'control', "CREATE EXTENSION entitlock VERSION '1.0';
	CREATE PUBLICATION control_pub FOR ALL TABLES;");
my ($tok_c) = acquire_in($pub, 'control', 'job:control');
($ret, $err) = psql_verbose($pub, 'control',
	"SELECT entitlock.lease_release('job:control', '$tok_c')");
ok( $ret != 0
	  && $err =~
	  /cannot delete from table "lease_record" because it does not have a replica identity and publishes deletes/,
	'control: with 1.0 lease_release fails under the publication')
  or diag($err);
$pub->safe_psql('control', 'ALTER EXTENSION entitlock UPDATE');
is( $pub->safe_psql(
		'control', "SELECT entitlock.lease_release('job:control', '$tok_c')"),
	't',
	'control: after ALTER EXTENSION UPDATE lease_release works');

$sub->stop;
$pub->stop;

done_testing();
