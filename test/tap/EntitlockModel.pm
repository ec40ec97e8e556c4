# test/tap/EntitlockModel.pm: a reference model of entitlock's SQL
# contract, written from SPEC.md alone, and the machinery to check the
# server against it with random operations.
#
# Single-session mode (check_sequence): a seeded generator makes a
# sequence of operations over a small space of names, so that they
# collide: locks, usage on single meters and sets (with and without keys,
# in random orders, on calendar and anchored billing periods spelled in
# several ways), refunds, resets, reads, prune_usage, rate_limit and gcra,
# idempotency keys, leases, and transaction control (BEGIN, COMMIT,
# ROLLBACK, savepoints), plus bad input, which must fail with the SPEC's
# SQLSTATE and change nothing.  The whole sequence runs as one psql
# script; each operation runs through model_op(), which catches its error
# (so an error rolls back just that operation, as a savepoint would) and
# reports the transaction's now() and the clock around the call.  The
# model predicts every answer from what it has seen; the first answer
# that differs fails the sequence.
#
# The model sees no clock of its own: usage periods come from each
# answer's now(), rate limits are bracketed by the clock readings around
# the call, and leases or idempotency keys with a short ttl are
# "uncertain" (either answer is right, and the answer says which) until
# a sleep longer than the ttl has passed.
#
# A failing sequence is shrunk (shrink): chunks of operations are left
# out while it still fails, down to single operations, so the report is
# a short sequence that still fails, with its seed.
#
# Concurrent mode lives in the test that uses it (test/tap/030_model.pl).

package EntitlockModel;

use strict;
use warnings;

use POSIX qw(floor);
use Time::Local qw(timegm);
use IPC::Run;

# ---------------------------------------------------------------------
# Names: small pools so that operations collide.

my @SUBJECTS = ('org:1', 'org:2', 'user:a', 'user:b');
my @FEATURES = ('api', 'seats');
# Anchored billing periods (SPEC 3e): each spelling with the period it
# names, [unit, N, and the anchor's UTC fields year, month, day, hour,
# minute, second], worked out by hand from the spelling.  Several
# spellings of one period (another offset, 'month' and '1 month', 7 days
# and a week, 24 months and 2 years) must be one meter.
my %ANCHORED = (
	'month@2026-01-31 10:00:00+00'  => [ 'month', 1, 2026, 1, 31, 10, 0, 0 ],
	'1 month@2026-01-31 05:00-05'   => [ 'month', 1, 2026, 1, 31, 10, 0, 0 ],
	'Months@2026-01-31 15:45+05:45' => [ 'month', 1, 2026, 1, 31, 10, 0, 0 ],
	'3 months@2025-11-30'           => [ 'month', 3, 2025, 11, 30, 0, 0, 0 ],
	'week@2026-01-07 12:00+00'      => [ 'week', 1, 2026, 1, 7, 12, 0, 0 ],
	'7 days@2026-01-07 07:00-05'    => [ 'week', 1, 2026, 1, 7, 12, 0, 0 ],
	'day@2024-02-29 23:30+00'       => [ 'day', 1, 2024, 2, 29, 23, 30, 0 ],
	'2 years@2024-02-29'            => [ 'year', 2, 2024, 2, 29, 0, 0, 0 ],
	'24 months@2024-02-29 00:00 UTC' => [ 'year', 2, 2024, 2, 29, 0, 0, 0 ],
);
my @PERIODS  = ('lifetime', 'lifetime', 'minute', 'hour', 'day', 'week', 'month', 'year',
	sort keys %ANCHORED);
my @UKEYS    = ('k1', 'k2', 'k3', 'k4');
# Lock names and realms are kept apart from usage subjects: recorders take
# locks of their own on their subjects (an implementation detail the
# single-session model does not predict; the concurrent mode checks what
# they guarantee).
my @LOCKS    = ('n1', 'n2', 'n3', 'acct:1');
my @REALMS   = ('acct:1', 'acct:2');
my @ENTITIES = ('e1', 'e2');
my @RATES    = ('r1', 'r2');
my @IKEYS    = ('i1', 'i2', 'i3');
my @LEASES   = ('L1', 'L2', 'L3');
my @HOLDERS  = ('w1', 'w2', '');
# Semaphores (1.2): lock_slot names, and lease semaphore names, kept apart
# from the plain leases' names.
my @SEMS     = ('S1', 'S2');
my @LSEMS    = ('LS1', 'LS2');

# Rate limits slow enough that the time a test takes moves no integer
# field: [rate, per (seconds), burst or undef].
my @RATE_SHAPES = ([5, 3600, 3], [2, 3600, undef], [10, 3600, 4], [4, 60, 2]);

# ---------------------------------------------------------------------
# A small deterministic generator (xorshift32, in integers that Perl
# holds exactly), the same on every platform and Perl.

sub new_rng
{
	my ($seed) = @_;
	my $rng = { s => (($seed * 2654435761) ^ 0x9e3779b9) & 0xffffffff || 1 };
	rnd($rng, 2) for 1 .. 8;
	return $rng;
}

sub rnd
{
	my ($rng, $n) = @_;
	my $x = $rng->{s};
	$x ^= ($x << 13) & 0xffffffff;
	$x ^= $x >> 17;
	$x ^= ($x << 5) & 0xffffffff;
	$rng->{s} = $x;
	return int($x / 4294967296 * $n);
}

sub pick { my ($rng, @a) = @_; return $a[ rnd($rng, scalar @a) ]; }

# ---------------------------------------------------------------------
# SQL text helpers.

sub sqlq { my ($s) = @_; return 'NULL' unless defined $s; $s =~ s/'/''/g; return "'$s'"; }

# Microseconds since the epoch of a timestamptz expression, as text.
sub us { return "((extract(epoch from ($_[0])) * 1000000)::numeric(30,0))::text"; }

# ---------------------------------------------------------------------
# Operations.  Each is a hash: kind, its arguments, and sql, a query
# returning one text column (one row per answer row).

sub gen_op
{
	my ($rng) = @_;
	my $r = rnd($rng, 1000);
	my $s = pick($rng, @SUBJECTS);
	my $f = pick($rng, @FEATURES);
	my $p = pick($rng, @PERIODS);
	my $op;

	if ($r < 60) { $op = { kind => 'begin' }; }
	elsif ($r < 100) { $op = { kind => 'commit' }; }
	elsif ($r < 120) { $op = { kind => 'rollback' }; }
	elsif ($r < 140) { $op = { kind => 'savepoint' }; }
	elsif ($r < 155) { $op = { kind => 'rollback_to' }; }
	elsif ($r < 165) { $op = { kind => 'release' }; }
	elsif ($r < 240)
	{
		$op = {
			kind   => 'limit',
			s      => $s, f => $f, p => $p,
			amount => pick($rng, 1, 1, 2, 3),
			limit  => pick($rng, 0, 1, 2, 3, 5, 8),
			key    => rnd($rng, 3) == 0 ? pick($rng, @UKEYS) : undef,
		};
	}
	elsif ($r < 280)
	{
		$op = {
			kind   => 'record',
			s      => $s, f => $f, p => $p,
			amount => pick($rng, 1, 2, -1, -3, 4),
			key    => rnd($rng, 3) == 0 ? pick($rng, @UKEYS) : undef,
		};
	}
	elsif ($r < 380)
	{
		# A set of limits: per user and per organisation, two periods of
		# one pair, in a random order; now and then the same meter twice.
		my $n = 1 + rnd($rng, 3);
		my (@lims, %seen);
		while (@lims < $n)
		{
			my $m = [ pick($rng, @SUBJECTS), pick($rng, @FEATURES), pick($rng, @PERIODS),
				pick($rng, 0, 1, 2, 3, 4, 6) ];
			my $id = "$m->[0]\0$m->[1]\0$m->[2]";
			next if $seen{$id}++ && rnd($rng, 8) != 0;
			push @lims, $m;
		}
		$op = {
			kind   => 'limits',
			lims   => \@lims,
			amount => pick($rng, 1, 1, 2),
			key    => rnd($rng, 3) == 0 ? pick($rng, @UKEYS) : undef,
		};
	}
	elsif ($r < 410)
	{
		# Mostly a key that a call already used on that pair.
		my @used = @{ $rng->{keyed} || [] };
		my $u = @used && rnd($rng, 3) ? $used[ rnd($rng, scalar @used) ] : [ $s, $f, pick($rng, @UKEYS) ];
		$op = { kind => 'refund', s => $u->[0], f => $u->[1], key => $u->[2] };
	}
	elsif ($r < 450) { $op = { kind => 'usage', s => $s, f => $f, p => $p }; }
	elsif ($r < 460)
	{
		$op = { kind => 'prune', before => pick($rng, "now() - interval '1 hour'", 'now()', "now() + interval '2 minutes'") };
	}
	elsif ($r < 500)
	{
		my $shape = pick($rng, @RATE_SHAPES);
		$op = {
			kind  => 'rate',
			name  => pick($rng, @RATES),
			rate  => $shape->[0], per => $shape->[1], burst => $shape->[2],
			cost  => pick($rng, 1, 1, 2, 0, 3),
		};
	}
	elsif ($r < 515)
	{
		my $shape = pick($rng, @RATE_SHAPES);
		$op = {
			kind  => 'gcra',
			tat   => pick($rng, undef, -30, 0, 100, 700, 7200, 3599),
			rate  => $shape->[0], per => $shape->[1], burst => $shape->[2],
			cost  => pick($rng, 0, 1, 2, 3, 5),
		};
	}
	elsif ($r < 545)
	{
		$op = { kind => pick($rng, 'lock', 'lock', 'try_lock', 'lock_shared', 'try_lock_shared', 'lock_timeout'),
			name => pick($rng, @LOCKS) };
	}
	elsif ($r < 555)
	{
		my @names = map { pick($rng, @LOCKS, undef) } 1 .. (1 + rnd($rng, 3));
		$op = { kind => 'lock_all', names => \@names };
	}
	elsif ($r < 570)
	{
		$op = { kind => pick($rng, 'lock_entity', 'try_lock_entity'),
			realm => pick($rng, @REALMS), entity => pick($rng, @ENTITIES) };
	}
	elsif ($r < 595)
	{
		$op = { kind => 'holders', name => pick($rng, @LOCKS) };
	}
	elsif ($r < 625)
	{
		$op = { kind => 'probe', what => pick($rng, 'try_lock', 'try_lock_shared', 'try_lock_entity'),
			name => pick($rng, @LOCKS), realm => pick($rng, @REALMS),
			entity => pick($rng, @ENTITIES) };
	}
	elsif ($r < 665)
	{
		$op = { kind => 'idem_begin', key => pick($rng, @IKEYS),
			fp => pick($rng, undef, undef, 'a', 'b'),
			short => rnd($rng, 4) == 0 };
	}
	elsif ($r < 690)
	{
		$op = { kind => 'idem_complete', key => pick($rng, @IKEYS), resp => pick($rng, 1, 2, undef) };
	}
	elsif ($r < 710)
	{
		$op = { kind => 'first_time', key => pick($rng, @IKEYS), short => rnd($rng, 4) == 0 };
	}
	elsif ($r < 720) { $op = { kind => pick($rng, 'purge', 'peer_begin'), key => pick($rng, @IKEYS) }; }
	elsif ($r < 775)
	{
		$op = { kind => 'lease_acquire', name => pick($rng, @LEASES),
			holder => pick($rng, @HOLDERS), short => rnd($rng, 3) == 0,
			wait => rnd($rng, 6) == 0 };
	}
	elsif ($r < 815)
	{
		$op = { kind => 'lease_renew', name => pick($rng, @LEASES),
			which => pick($rng, 'current', 'current', 'old', 'random'), short => rnd($rng, 3) == 0,
			pickn => rnd($rng, 8) };
	}
	elsif ($r < 845)
	{
		$op = { kind => 'lease_release', name => pick($rng, @LEASES),
			which => pick($rng, 'current', 'current', 'old', 'random'), pickn => rnd($rng, 8) };
	}
	elsif ($r < 865) { $op = { kind => 'leases' }; }
	elsif ($r < 885) { $op = { kind => 'sleep' }; }
	elsif ($r < 905) { $op = { kind => 'dump' }; }
	elsif ($r < 925)
	{
		$op = { kind => 'lock_slot', name => pick($rng, @SEMS), slots => pick($rng, 1, 2, 3),
			wait => pick($rng, undef, '0', '20 ms') };
	}
	elsif ($r < 935) { $op = { kind => 'slot_holders', name => pick($rng, @SEMS), slots => pick($rng, 1, 2, 3) }; }
	elsif ($r < 955)
	{
		$op = { kind => 'lease_acquire_slot', name => pick($rng, @LSEMS), slots => pick($rng, 1, 2, 3),
			holder => pick($rng, @HOLDERS), short => rnd($rng, 3) == 0 };
	}
	elsif ($r < 962) { $op = { kind => 'lease_slots' }; }
	elsif ($r < 977) { $op = { kind => 'reset', s => $s, f => $f, p => $p }; }
	else
	{
		$op = gen_bad($rng);
	}
	if (defined $op->{key} && $op->{kind} =~ /^(limit|record)$/)
	{
		push @{ $rng->{keyed} }, [ $op->{s}, $op->{f}, $op->{key} ];
	}
	if (defined $op->{key} && $op->{kind} eq 'limits')
	{
		push @{ $rng->{keyed} }, map { [ $_->[0], $_->[1], $op->{key} ] } @{ $op->{lims} };
	}
	return $op;
}

# Bad input: each must fail with its SQLSTATE and change nothing.
sub gen_bad
{
	my ($rng) = @_;
	my $s = pick($rng, @SUBJECTS);
	my $f = pick($rng, @FEATURES);
	my @bad = (
		[ "entitlock.record_usage_if_under_limit(NULL, 'api', 1, 5)",            '22004' ],
		[ "entitlock.record_usage_if_under_limit('$s', '', 1, 5)",               '22023' ],
		[ "entitlock.record_usage_if_under_limit('$s', '$f', 0, 5)",             '22023' ],
		[ "entitlock.record_usage_if_under_limit('$s', '$f', -2, 5)",            '22023' ],
		[ "entitlock.record_usage_if_under_limit('$s', '$f', 1, -1)",            '22023' ],
		[ "entitlock.record_usage_if_under_limit('$s', '$f', 1, 5, 'fortnight')", '22023' ],
		[ "entitlock.record_usage('$s', '$f', 1, 'decade')",                     '22023' ],
		[ "entitlock.record_usage_if_under_limits(ARRAY[]::entitlock.usage_limit[])", '22023' ],
		[ "entitlock.record_usage_if_under_limits(NULL)",                        '22004' ],
		[ "entitlock.record_usage_if_under_limits(ARRAY[entitlock.usage_limit('$s', '$f', 5), entitlock.usage_limit('$s', '$f', 9)])", '22023' ],
		[ "entitlock.record_usage_if_under_limits(ARRAY[entitlock.usage_limit('$s', '$f', 5), NULL])", '22004' ],
		[ "entitlock.record_usage_if_under_limits(ARRAY[entitlock.usage_limit('$s', '$f', 5)], 0)", '22023' ],
		[ "entitlock.usage_limit('$s', '$f', -1)",                               '22023' ],
		[ "entitlock.rate_limit('r1', 0, '1 hour')",                             '22023' ],
		[ "entitlock.rate_limit('r1', 5, '0 s')",                                '22023' ],
		[ "entitlock.rate_limit('r1', 5, '1 hour', 2, 3)",                       '22023' ],
		[ "entitlock.rate_limit('', 5, '1 hour')",                               '22023' ],
		[ "entitlock.lock('')",                                                  '22023' ],
		[ "entitlock.lock_entity('org:1', '')",                                  '22023' ],
		[ "entitlock.idempotency_begin('')",                                     '22023' ],
		[ "entitlock.lease_acquire('L1', '-1 s')",                               '22023' ],
		[ "entitlock.lease_acquire('', '1 hour')",                               '22023' ],
		[ "entitlock.lock_slot('S1', 0)",                                        '22023' ],
		[ "entitlock.lock_slot('S1', 10001)",                                    '22023' ],
		[ "entitlock.lock_slot('', 2)",                                          '22023' ],
		[ "entitlock.lock_slot(NULL, 2)",                                        '22004' ],
		[ "entitlock.lock_slot('S1', NULL)",                                     '22004' ],
		[ "entitlock.lock_slot('S1', 2, '-1 s')",                                '22023' ],
		[ "entitlock.lease_acquire_slot('LS1', 0, '1 hour')",                    '22023' ],
		[ "entitlock.lease_acquire_slot('LS1', 2, '1 hour', NULL, '-1 s')",      '22023' ],
		[ "entitlock.usage('$s', '$f', 'month\@not a date')",                      '22023' ],
		[ "entitlock.record_usage('$s', '$f', 1, '0 months\@2026-01-31')",          '22023' ],
		[ "entitlock.record_usage_if_under_limit('$s', '$f', 1, 5, '1001 days\@2026-01-31')", '22023' ],
		[ "entitlock.record_usage_if_under_limit('$s', '$f', 1, 5, 'hour\@2026-01-31')", '22023' ],
		[ "entitlock.reset_usage('$s', '$f', 'week\@infinity')",                   '22023' ],
		[ "entitlock.reset_usage(NULL, '$f')",                                   '22004' ],
		[ "entitlock.reset_usage('$s', '$f', NULL)",                             '22004' ],
		[ "entitlock.record_usage_if_under_limits(ARRAY[entitlock.usage_limit('$s', '$f', 5, 'month\@2026-01-31 10:00+00'), entitlock.usage_limit('$s', '$f', 9, '1 month\@2026-01-31 05:00-05')])", '22023' ],
	);
	my $b = pick($rng, @bad);
	return { kind => 'bad', call => $b->[0], state => $b->[1] };
}

# The SQL of an operation (undef for transaction control and sleep).
sub op_sql
{
	my ($op, $ctx) = @_;
	my $k = $op->{kind};
	my $pe = "coalesce(" . us('period_end') . ", '-')";

	if ($k eq 'limit')
	{
		return sprintf("SELECT concat_ws('|', allowed, used, remaining, %s) FROM entitlock.record_usage_if_under_limit(%s, %s, %d, %d, %s, %s)",
			$pe, sqlq($op->{s}), sqlq($op->{f}), $op->{amount}, $op->{limit}, sqlq($op->{p}), sqlq($op->{key}));
	}
	if ($k eq 'record')
	{
		return sprintf("SELECT entitlock.record_usage(%s, %s, %d, %s, %s)::text",
			sqlq($op->{s}), sqlq($op->{f}), $op->{amount}, sqlq($op->{p}), sqlq($op->{key}));
	}
	if ($k eq 'limits')
	{
		my $arr = join(', ', map { sprintf("entitlock.usage_limit(%s, %s, %d, %s)", sqlq($_->[0]), sqlq($_->[1]), $_->[3], sqlq($_->[2])) } @{ $op->{lims} });
		return sprintf("SELECT concat_ws('|', subject, feature, period, allowed, used, remaining, %s) FROM entitlock.record_usage_if_under_limits(ARRAY[%s], %d, %s)",
			$pe, $arr, $op->{amount}, sqlq($op->{key}));
	}
	if ($k eq 'refund')
	{
		return sprintf("SELECT entitlock.refund_usage(%s, %s, %s)::text", sqlq($op->{s}), sqlq($op->{f}), sqlq($op->{key}));
	}
	if ($k eq 'usage')
	{
		return sprintf("SELECT entitlock.usage(%s, %s, %s)::text", sqlq($op->{s}), sqlq($op->{f}), sqlq($op->{p}));
	}
	if ($k eq 'reset')
	{
		return sprintf("SELECT entitlock.reset_usage(%s, %s, %s)::text", sqlq($op->{s}), sqlq($op->{f}), sqlq($op->{p}));
	}
	if ($k eq 'prune')
	{
		return "SELECT entitlock.prune_usage($op->{before})::text";
	}
	if ($k eq 'rate')
	{
		return sprintf("SELECT concat_ws('|', allowed, remaining, %s, %s) FROM entitlock.rate_limit(%s, %d, '%d s', %s, %d)",
			"coalesce(" . us('retry_after') . ", '-')", us('reset_after'), sqlq($op->{name}), $op->{rate}, $op->{per},
			defined $op->{burst} ? $op->{burst} : 'NULL', $op->{cost});
	}
	if ($k eq 'gcra')
	{
		my $tat = defined $op->{tat} ? "'2026-01-01 00:00:00+00'::timestamptz + interval '$op->{tat} s'" : 'NULL';
		return sprintf("SELECT concat_ws('|', allowed, remaining, %s, %s, %s) FROM entitlock.gcra(%s, '2026-01-01 00:00:00+00', %d, '%d s', %s, %d)",
			"coalesce(" . us('retry_after') . ", '-')", us('reset_after'), us('tat'), $tat, $op->{rate}, $op->{per},
			defined $op->{burst} ? $op->{burst} : 'NULL', $op->{cost});
	}
	if ($k eq 'lock' || $k eq 'try_lock' || $k eq 'lock_shared' || $k eq 'try_lock_shared')
	{
		return sprintf("SELECT entitlock.%s(%s)::text", $k, sqlq($op->{name}));
	}
	if ($k eq 'lock_timeout')
	{
		return sprintf("SELECT entitlock.lock(%s, '50 ms')::text", sqlq($op->{name}));
	}
	if ($k eq 'lock_all')
	{
		return sprintf("SELECT entitlock.lock_all(ARRAY[%s]::text[])::text", join(', ', map { sqlq($_) } @{ $op->{names} }));
	}
	if ($k eq 'lock_entity' || $k eq 'try_lock_entity')
	{
		return sprintf("SELECT entitlock.%s(%s, %s)::text", $k, sqlq($op->{realm}), sqlq($op->{entity}));
	}
	if ($k eq 'holders')
	{
		return sprintf("SELECT mode FROM entitlock.holders(%s) WHERE pid = pg_backend_pid() AND granted ORDER BY mode", sqlq($op->{name}));
	}
	if ($k eq 'probe')
	{
		my $call = $op->{what} eq 'try_lock_entity'
		  ? sprintf("entitlock.try_lock_entity(%s, %s)", sqlq($op->{realm}), sqlq($op->{entity}))
		  : sprintf("entitlock.%s(%s)", $op->{what}, sqlq($op->{name}));
		$call =~ s/'/''/g;
		return "SELECT x::text FROM dblink('model_peer', 'SELECT $call') AS t(x boolean)";
	}
	if ($k eq 'idem_begin')
	{
		return sprintf("SELECT concat_ws('|', status, coalesce(response::text, '-')) FROM entitlock.idempotency_begin(%s, %s, %s)",
			sqlq($op->{key}), sqlq($op->{fp}), $op->{short} ? "'30 ms'" : "'1 hour'");
	}
	if ($k eq 'idem_complete')
	{
		return sprintf("SELECT 'done' FROM entitlock.idempotency_complete(%s, %s)",
			sqlq($op->{key}), defined $op->{resp} ? "'{\"r\": $op->{resp}}'" : 'NULL');
	}
	if ($k eq 'first_time')
	{
		return sprintf("SELECT entitlock.first_time(%s, %s)::text", sqlq($op->{key}), $op->{short} ? "'30 ms'" : "'1 hour'");
	}
	if ($k eq 'purge') { return "SELECT entitlock.purge_expired()::text"; }
	if ($k eq 'peer_begin')
	{
		# Another session's request with the same key, waiting at most
		# 10 ms: 'in_progress' while this transaction owns the key.
		my $call = sprintf("SELECT concat_ws('|', status, coalesce(response::text, '-')) FROM entitlock.idempotency_begin(%s, NULL, '1 hour', '10 ms')",
			sqlq($op->{key}));
		$call =~ s/'/''/g;
		return "SELECT x FROM dblink('model_peer', '$call') AS t(x text)";
	}
	if ($k eq 'lease_acquire')
	{
		return sprintf("SELECT concat_ws('|', token, fencing) FROM entitlock.lease_acquire(%s, %s, %s, %s)",
			sqlq($op->{name}), $op->{short} ? "'30 ms'" : "'1 hour'", sqlq($op->{holder} eq '' ? undef : $op->{holder}),
			$op->{wait} ? "'20 ms'" : "'0'");
	}
	if ($k eq 'lease_renew')
	{
		return sprintf("SELECT entitlock.lease_renew(%s, %s, %s)::text", sqlq($op->{name}), sqlq($ctx->{token}),
			$op->{short} ? "'30 ms'" : "'1 hour'");
	}
	if ($k eq 'lease_release')
	{
		return sprintf("SELECT entitlock.lease_release(%s, %s)::text", sqlq($op->{name}), sqlq($ctx->{token}));
	}
	if ($k eq 'leases')
	{
		return "SELECT concat_ws('|', name, coalesce(holder, '-'), fencing) FROM entitlock.leases WHERE slot IS NULL ORDER BY name";
	}
	if ($k eq 'lock_slot')
	{
		return sprintf("SELECT coalesce(entitlock.lock_slot(%s, %d, %s)::text, 'null')", sqlq($op->{name}), $op->{slots},
			defined $op->{wait} ? sqlq($op->{wait}) : 'NULL');
	}
	if ($k eq 'slot_holders')
	{
		return sprintf("SELECT concat_ws('|', coalesce(slot::text, '-'), granted, pid = pg_backend_pid()) FROM entitlock.slot_holders(%s, %d)",
			sqlq($op->{name}), $op->{slots});
	}
	if ($k eq 'lease_acquire_slot')
	{
		return sprintf("SELECT concat_ws('|', slot, token, fencing) FROM entitlock.lease_acquire_slot(%s, %d, %s, %s)",
			sqlq($op->{name}), $op->{slots}, $op->{short} ? "'30 ms'" : "'1 hour'",
			sqlq($op->{holder} eq '' ? undef : $op->{holder}));
	}
	if ($k eq 'lease_slots')
	{
		return "SELECT concat_ws('|', name, slot, coalesce(holder, '-'), fencing) FROM entitlock.leases WHERE slot IS NOT NULL";
	}
	if ($k eq 'dump')
	{
		return "SELECT concat_ws('|', subject, feature, period, CASE WHEN isfinite(period_start) THEN " . us('period_start') . " ELSE '-inf' END, used) FROM entitlock.usage_counter";
	}
	if ($k eq 'bad')
	{
		return "SELECT ($op->{call})::text";
	}
	die "no sql for $k";
}

# ---------------------------------------------------------------------
# Anchored periods (SPEC 3e), by their canonical spelling: N units, the
# anchor's UTC fields, and the anchor in microseconds.  The canonical
# spelling (doc/reference/billing-periods.md): whole weeks of days and
# whole years of months in the larger unit, N and the plural only when
# N > 1, then the anchor in UTC as 'YYYY-MM-DD HH:MM:SS+00'.

my %PERIOD_OF;

sub canon
{
	my ($p) = @_;
	my $a = $ANCHORED{$p};
	return $p unless $a;
	my ($unit, $n, @f) = @$a;
	my $us = timegm($f[5], $f[4], $f[3], $f[2], $f[1] - 1, $f[0]) * 1000000;
	my @g = gmtime($us / 1e6);
	my $name = ($n == 1 ? $unit : "$n ${unit}s") . '@'
	  . sprintf('%04d-%02d-%02d %02d:%02d:%02d+00', $g[5] + 1900, $g[4] + 1, $g[3], $g[2], $g[1], $g[0]);
	$PERIOD_OF{$name} = { unit => $unit, n => $n, f => \@f, us => $us };
	return $name;
}

sub days_in_month
{
	my ($y, $m) = @_;    # $m 1..12
	return 29 if $m == 2 && ($y % 4 == 0 && ($y % 100 != 0 || $y % 400 == 0));
	return (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[ $m - 1 ];
}

# The start of period k: anchor + k*N units, a month's day clamped to its
# last day, always counted from the anchor.
sub anchored_start
{
	my ($a, $k) = @_;
	my $u = $a->{unit};
	return $a->{us} + $k * $a->{n} * ($u eq 'week' ? 7 : 1) * 86400 * 1000000
	  if $u eq 'day' || $u eq 'week';
	my ($y, $m, $d, $h, $mi, $s) = @{ $a->{f} };
	my $months = ($m - 1) + $k * $a->{n} * ($u eq 'year' ? 12 : 1);
	my $yy = $y + floor($months / 12);
	my $mm = $months - 12 * floor($months / 12) + 1;
	my $dd = days_in_month($yy, $mm);
	$dd = $d if $d < $dd;
	return timegm($s, $mi, $h, $dd, $mm - 1, $yy) * 1000000;
}

# The anchored period holding $t: walk from a guess to the last start at
# or before $t.
sub anchored_bounds
{
	my ($a, $t) = @_;
	my $approx = { day => 86400, week => 7 * 86400, month => 2629746, year => 31556952 }->{ $a->{unit} } * $a->{n} * 1e6;
	my $k = floor(($t - $a->{us}) / $approx) - 2;
	$k-- while anchored_start($a, $k) > $t;
	$k++ while anchored_start($a, $k + 1) <= $t;
	return (anchored_start($a, $k), anchored_start($a, $k + 1));
}

# ---------------------------------------------------------------------
# Calendar periods in UTC, from an epoch in microseconds; anchored ones
# by their canonical spelling.

sub period_bounds
{
	my ($p, $now_us) = @_;
	return ('-inf', undef) if $p eq 'lifetime';
	return anchored_bounds($PERIOD_OF{$p}, $now_us) if $PERIOD_OF{$p};
	my $t = floor($now_us / 1e6);
	my ($sec, $min, $hour, $mday, $mon, $year, $wday) = gmtime($t);
	my ($start, $end);
	if ($p eq 'minute') { $start = $t - $sec; $end = $start + 60; }
	elsif ($p eq 'hour') { $start = $t - $sec - 60 * $min; $end = $start + 3600; }
	elsif ($p eq 'day') { $start = timegm(0, 0, 0, $mday, $mon, $year); $end = $start + 86400; }
	elsif ($p eq 'week')
	{
		my $day = timegm(0, 0, 0, $mday, $mon, $year);
		$start = $day - 86400 * (($wday + 6) % 7);    # ISO weeks start on Monday
		$end = $start + 7 * 86400;
	}
	elsif ($p eq 'month')
	{
		$start = timegm(0, 0, 0, 1, $mon, $year);
		$end = $mon == 11 ? timegm(0, 0, 0, 1, 0, $year + 1) : timegm(0, 0, 0, 1, $mon + 1, $year);
	}
	elsif ($p eq 'year')
	{
		$start = timegm(0, 0, 0, 1, 0, $year);
		$end = timegm(0, 0, 0, 1, 0, $year + 1);
	}
	else { die "period $p"; }
	return ($start * 1000000, $end * 1000000);
}

# ---------------------------------------------------------------------
# GCRA, from SPEC 3d: emission interval T = per / rate, tolerance burst*T.
# Times in microseconds.  Returns (allowed, remaining, retry_after or
# undef, reset_after, new tat).

sub gcra_ref
{
	my ($tat, $now, $rate, $per_s, $burst, $cost) = @_;
	$burst = $rate unless defined $burst;
	my $T = $per_s * 1e6 / $rate;
	my $tau = $T * $burst;
	my $base = (!defined $tat || $tat < $now) ? $now : $tat;
	my $new_tat = $base + $cost * $T;
	my $allow_at = $new_tat - $tau;
	if ($now >= $allow_at)
	{
		my $remaining = floor(($now - $allow_at) / $T + 1e-9);
		return (1, $remaining, undef, $new_tat - $now, $new_tat);
	}
	my $remaining = floor(($now - ($base - $tau)) / $T + 1e-9);
	$remaining = 0 if $remaining < 0;
	return (0, $remaining, $allow_at - $now, $base - $now, $base);
}

# ---------------------------------------------------------------------
# The model's state.  Everything under {db} is transactional (restored by
# ROLLBACK and ROLLBACK TO); fencing numbers and tokens seen are not.

sub new_model
{
	return {
		db => {
			counters => {},    # "s|f|p|start" => { used, end }
			ukeys    => {},    # "s|f|key" => single-meter key record
			skeys    => {},    # key => set key record
			idem     => {},    # key => { mine, resp, fp, exp }
			leases   => {},    # name => { token, fencing, holder, exp }
			rl       => {},    # name => [tat low, tat high] (microseconds)
			locks    => {},    # name => { x => 1, s => 1 }, this transaction's
			slots    => {},    # semaphore name => { slot => 1 }, this transaction's
			lslots   => {},    # lease semaphore name => { slot => { token, fencing, holder, exp } }
			pairs    => {},    # "realm|entity" => 1, lock_entity's exclusive pairs
		},
		stack       => [],     # [kind, saved db] for BEGIN and each SAVEPOINT
		max_fencing => 0,
		old_tokens  => {},     # name => [tokens once handed out]
	};
}

sub clone
{
	my ($x) = @_;
	return $x unless ref $x;
	return [ map { clone($_) } @$x ] if ref $x eq 'ARRAY';
	return { map { $_ => clone($x->{$_}) } keys %$x };
}

sub in_tx { return scalar @{ $_[0]->{stack} }; }

sub has_savepoint { return grep { $_->[0] eq 'sp' } @{ $_[0]->{stack} }; }

# Transaction control an operation asks for: whether it is valid now (an
# invalid one is skipped, by the runner and the model alike), and its
# effect on the model.
sub tx_valid
{
	my ($m, $k) = @_;
	return !in_tx($m) if $k eq 'begin';
	return in_tx($m) if $k eq 'commit' || $k eq 'rollback' || $k eq 'savepoint';
	return has_savepoint($m) if $k eq 'rollback_to' || $k eq 'release';
	return 1;
}

sub tx_sql
{
	my ($k) = @_;
	return {
		begin => 'BEGIN;', commit => 'COMMIT;', rollback => 'ROLLBACK;',
		savepoint => 'SAVEPOINT sp;', rollback_to => 'ROLLBACK TO SAVEPOINT sp;',
		release => 'RELEASE SAVEPOINT sp;'
	}->{$k};
}

sub tx_apply
{
	my ($m, $k) = @_;
	if ($k eq 'begin') { push @{ $m->{stack} }, [ 'begin', clone($m->{db}) ]; }
	elsif ($k eq 'savepoint') { push @{ $m->{stack} }, [ 'sp', clone($m->{db}) ]; }
	elsif ($k eq 'commit') { $m->{stack} = []; end_xact($m); }
	elsif ($k eq 'rollback') { $m->{db} = $m->{stack}[0][1]; $m->{stack} = []; end_xact($m); }
	elsif ($k eq 'rollback_to')
	{
		pop @{ $m->{stack} } while $m->{stack}[-1][0] ne 'sp';
		$m->{db} = clone($m->{stack}[-1][1]);
	}
	elsif ($k eq 'release')
	{
		pop @{ $m->{stack} } while $m->{stack}[-1][0] ne 'sp';
		pop @{ $m->{stack} };
	}
}

# The end of a transaction: its locks go, its claims are committed.
sub end_xact
{
	my ($m) = @_;
	$m->{db}{locks} = {};
	$m->{db}{slots} = {};
	$m->{db}{pairs} = {};
	$_->{mine} = 0 for values %{ $m->{db}{idem} };
}

sub sleep_passed
{
	my ($m) = @_;
	for my $h ($m->{db}{idem}, $m->{db}{leases}, map { $_->[1]{idem}, $_->[1]{leases} } @{ $m->{stack} })
	{
		$_->{exp} eq 'short' and $_->{exp} = 'expired' for values %$h;
	}
	for my $ls ($m->{db}{lslots}, map { $_->[1]{lslots} } @{ $m->{stack} })
	{
		for my $h (values %$ls) { $_->{exp} eq 'short' and $_->{exp} = 'expired' for values %$h; }
	}
}

sub remaining { my ($used, $limit) = @_; return $used >= $limit ? 0 : $limit - $used; }

sub fmt_end { return defined $_[0] ? $_[0] : '-'; }

sub err { return { err => $_[0] }; }

# ---------------------------------------------------------------------
# The model's answer to one operation, given the server's answer $ans
# (for what the model cannot know: the transaction's now(), the clock
# around the call, and which way an uncertain expiry went).  Returns
# either { rows => [...] } or { err => SQLSTATE }, or { any => 1 } with a
# check sub for answers the model bounds rather than predicts.  Updates
# the model as the operation would, assuming the answer matches.

sub expect
{
	my ($m, $op, $ans, $ctx) = @_;
	my $k = $op->{kind};
	my $db = $m->{db};
	my $now = $ans->{now};

	if ($k eq 'bad') { return err($op->{state}); }
	if ($k eq 'sleep') { sleep_passed($m); return { rows => [''] }; }

	if ($k eq 'limit' || $k eq 'record')
	{
		my ($s, $f, $p, $amount, $key) = @$op{qw(s f p amount key)};
		$p = canon($p);
		my $limit = $k eq 'limit' ? $op->{limit} : undef;
		my ($start, $end) = period_bounds($p, $now);
		if (defined $key)
		{
			my $rec = $db->{ukeys}{"$s|$f|$key"};
			if ($rec)
			{
				return err('22023') if $rec->{amount} != $amount || $rec->{p} ne $p;
				return { rows => [ $k eq 'limit'
					  ? join('|', $rec->{allowed} ? 't' : 'f', $rec->{used}, remaining($rec->{used}, $limit), fmt_end($rec->{end}))
					  : $rec->{used} ] };
			}
			my $set = $db->{skeys}{$key};
			return err('22023') if $set && grep { $_->{s} eq $s && $_->{f} eq $f } @{ $set->{elems} };
		}
		my $id = "$s|$f|$p|$start";
		my $c = $db->{counters}{$id};
		my $used = $c ? $c->{used} : 0;
		my ($allowed, $new);
		if ($k eq 'limit')
		{
			$allowed = $amount <= $limit && $used <= $limit - $amount;
			$new = $allowed ? $used + $amount : $used;
		}
		else
		{
			$allowed = 1;
			$new = $used + $amount;
			$new = 0 if $new < 0;
		}
		$db->{counters}{$id} = { used => $new, end => $end } if $new != $used;
		$db->{ukeys}{"$s|$f|$key"} = {
			p => $p, start => $start, end => $end, amount => $amount,
			allowed => $allowed, used => $new, recorded_at => $now, refunded => 0,
		} if defined $key;
		return { rows => [ $k eq 'limit'
			  ? join('|', $allowed ? 't' : 'f', $new, remaining($new, $limit), fmt_end($end))
			  : $new ] };
	}

	if ($k eq 'limits')
	{
		my ($amount, $key) = @$op{qw(amount key)};
		my @lims = map { [ $_->[0], $_->[1], canon($_->[2]), $_->[3] ] } @{ $op->{lims} };
		my %seen;
		for (@lims) { return err('22023') if $seen{"$_->[0]|$_->[1]|$_->[2]"}++; }
		if (defined $key)
		{
			my $set = $db->{skeys}{$key};
			if ($set)
			{
				return err('22023') if $set->{amount} != $amount || @{ $set->{elems} } != @lims;
				my @rows;
				for my $l (@lims)
				{
					my ($e) = grep { $_->{s} eq $l->[0] && $_->{f} eq $l->[1] && $_->{p} eq $l->[2] } @{ $set->{elems} };
					return err('22023') unless $e;
					push @rows, join('|', @$l[0 .. 2], $e->{allowed} ? 't' : 'f', $e->{used},
						remaining($e->{used}, $l->[3]), fmt_end($e->{end}));
				}
				return { rows => \@rows };
			}
			for my $l (@lims)
			{
				return err('22023') if grep { /^\Q$l->[0]|$l->[1]|$key\E$/ } keys %{ $db->{ukeys} };
			}
		}
		my (@dec, $all);
		$all = 1;
		for my $l (@lims)
		{
			my ($start, $end) = period_bounds($l->[2], $now);
			my $c = $db->{counters}{"$l->[0]|$l->[1]|$l->[2]|$start"};
			my $used = $c ? $c->{used} : 0;
			my $ok = $amount <= $l->[3] && $used <= $l->[3] - $amount;
			$all &&= $ok;
			push @dec, { s => $l->[0], f => $l->[1], p => $l->[2], start => $start, end => $end,
				used => $used, allowed => $ok, limit => $l->[3] };
		}
		my @rows;
		for my $d (@dec)
		{
			if ($all)
			{
				$d->{used} += $amount;
				$db->{counters}{"$d->{s}|$d->{f}|$d->{p}|$d->{start}"} = { used => $d->{used}, end => $d->{end} };
			}
			push @rows, join('|', @$d{qw(s f p)}, $d->{allowed} ? 't' : 'f', $d->{used},
				remaining($d->{used}, $d->{limit}), fmt_end($d->{end}));
		}
		$db->{skeys}{$key} = {
			amount => $amount, recorded_at => $now, recorded => $all,
			elems => [ map { { %$_, refunded => 0 } } @dec ],
		} if defined $key;
		return { rows => \@rows };
	}

	if ($k eq 'refund')
	{
		my ($s, $f, $key) = @$op{qw(s f key)};
		my $give = sub {
			my ($p, $at, $amount) = @_;
			my ($start) = period_bounds($p, $at);
			my $c = $db->{counters}{"$s|$f|$p|$start"};
			return 0 unless $c;
			my $g = $amount < $c->{used} ? $amount : $c->{used};
			$c->{used} -= $g;
			return $g;
		};
		my $rec = $db->{ukeys}{"$s|$f|$key"};
		if ($rec)
		{
			return { rows => [0] } unless $rec->{allowed} && $rec->{amount} > 0 && !$rec->{refunded};
			$rec->{refunded} = 1;
			return { rows => [ $give->($rec->{p}, $rec->{recorded_at}, $rec->{amount}) ] };
		}
		my $set = $db->{skeys}{$key};
		return { rows => [0] } unless $set && $set->{recorded};
		my $given = 0;
		for my $e (@{ $set->{elems} })
		{
			next unless $e->{s} eq $s && $e->{f} eq $f && !$e->{refunded};
			$e->{refunded} = 1;
			my $g = $give->($e->{p}, $set->{recorded_at}, $set->{amount});
			$given = $g if $g > $given;
		}
		return { rows => [$given] };
	}

	if ($k eq 'usage')
	{
		my $p = canon($op->{p});
		my ($start) = period_bounds($p, $now);
		my $c = $db->{counters}{"$op->{s}|$op->{f}|$p|$start"};
		return { rows => [ $c ? $c->{used} : 0 ] };
	}

	# SPEC 3e: the current period's usage to 0, returning what was there;
	# keys recorded before keep their answers, and refunds of them give
	# back only what is left (the refund above never goes below zero).
	if ($k eq 'reset')
	{
		my $p = canon($op->{p});
		my ($start) = period_bounds($p, $now);
		my $c = $db->{counters}{"$op->{s}|$op->{f}|$p|$start"};
		return { rows => [0] } unless $c;
		my $had = $c->{used};
		$c->{used} = 0;
		return { rows => [$had] };
	}

	if ($k eq 'prune')
	{
		my $before = $now + ($op->{before} =~ /1 hour/ ? -3600e6 : $op->{before} =~ /2 minutes/ ? 120e6 : 0);
		my $n = 0;
		for my $id (keys %{ $db->{counters} })
		{
			my $e = $db->{counters}{$id}{end};
			if (defined $e && $e <= $before) { delete $db->{counters}{$id}; $n++; }
		}
		for my $h ($db->{ukeys}, $db->{skeys})
		{
			for my $id (keys %$h)
			{
				if ($h->{$id}{recorded_at} < $before) { delete $h->{$id}; $n++; }
			}
		}
		return { rows => [$n] };
	}

	if (($k eq 'gcra' || $k eq 'rate') && $op->{cost} > ($op->{burst} // $op->{rate}))
	{
		return err('22023');
	}
	if (($k eq 'gcra' || $k eq 'rate') && $op->{cost} > ($op->{burst} // $op->{rate}))
	{
		return err('22023');
	}
	if ($k eq 'gcra')
	{
		my $base = timegm(0, 0, 0, 1, 0, 2026) * 1e6;
		my $tat = defined $op->{tat} ? $base + $op->{tat} * 1e6 : undef;
		my ($ok, $rem, $retry, $reset, $ntat) = gcra_ref($tat, $base, @$op{qw(rate per burst cost)});
		return { rows => [ join('|', $ok ? 't' : 'f', $rem, defined $retry ? sprintf('%.0f', $retry) : '-',
			sprintf('%.0f', $reset), sprintf('%.0f', $ntat)) ] };
	}

	if ($k eq 'rate')
	{
		my ($lo, $hi) = @{ $db->{rl}{ $op->{name} } || [ undef, undef ] };
		my @args = @$op{qw(rate per burst cost)};
		# The extremes of tat - t: (lo, t1) and (hi, t0).
		my @a = gcra_ref($lo, $ans->{t1}, @args);
		my @b = gcra_ref($hi, $ans->{t0}, @args);
		return {
			check => sub {
				my ($row) = @_;
				my ($ok, $rem, $retry, $reset) = split /\|/, $row;
				return "allowed" unless $ok eq ($a[0] ? 't' : 'f') && $ok eq ($b[0] ? 't' : 'f');
				return "remaining" unless $rem == $a[1] || $rem == $b[1];
				my $between = sub {
					my ($v, $x, $y) = @_;
					($x, $y) = ($y, $x) if $x > $y;
					return $v >= $x - 1 && $v <= $y + 1;
				};
				return "retry_after" unless ($retry eq '-') == !defined $a[2]
				  && ($retry eq '-' || $between->($retry, $a[2], $b[2]));
				return "reset_after" unless $between->($reset, $a[3], $b[3]);
				if ($ok eq 't')
				{
					my @tats = sort { $a <=> $b } ($a[4], $b[4]);
					$db->{rl}{ $op->{name} } = \@tats if $op->{cost} > 0;
				}
				return undef;
			}
		};
	}

	if ($k =~ /^(lock|try_lock|lock_timeout)$/) { $db->{locks}{ $op->{name} }{x} = 1; return { rows => [ $k eq 'lock' ? '' : 'true' ] }; }
	if ($k =~ /^(lock_shared|try_lock_shared)$/) { $db->{locks}{ $op->{name} }{s} = 1; return { rows => [ $k eq 'lock_shared' ? '' : 'true' ] }; }
	if ($k eq 'lock_all') { $db->{locks}{$_}{x} = 1 for grep { defined } @{ $op->{names} }; return { rows => [''] }; }
	if ($k eq 'lock_entity' || $k eq 'try_lock_entity')
	{
		$db->{locks}{ $op->{realm} }{s} = 1;
		$db->{pairs}{"$op->{realm}|$op->{entity}"} = 1;
		return { rows => [ $k eq 'lock_entity' ? '' : 'true' ] };
	}
	if ($k eq 'holders')
	{
		my $l = $db->{locks}{ $op->{name} } || {};
		return { rows => [ ($l->{x} ? ('exclusive') : ()), ($l->{s} ? ('shared') : ()) ] };
	}
	if ($k eq 'probe')
	{
		my $held = $db->{locks};
		my $free;
		if ($op->{what} eq 'try_lock') { $free = !%{ $held->{ $op->{name} } || {} }; }
		elsif ($op->{what} eq 'try_lock_shared') { $free = !($held->{ $op->{name} } || {})->{x}; }
		else
		{
			$free = !($held->{ $op->{realm} } || {})->{x} && !$db->{pairs}{"$op->{realm}|$op->{entity}"};
		}
		return { rows => [ $free ? 'true' : 'false' ] };
	}

	if ($k eq 'idem_begin' || $k eq 'first_time')
	{
		my $e = $db->{idem}{ $op->{key} };
		my $claim = sub {
			$db->{idem}{ $op->{key} } = { mine => 1, resp => undef, fp => $op->{fp}, exp => $op->{short} ? 'short' : 'long' };
			return { rows => [ $k eq 'first_time' ? 'true' : 'new|-' ] };
		};
		my $live = sub {
			return err('22023') if $k eq 'idem_begin' && defined $op->{fp} && defined $e->{fp} && $op->{fp} ne $e->{fp};
			return { rows => [ $k eq 'first_time' ? 'false' : 'replay|' . (defined $e->{resp} ? $e->{resp} : '-') ] };
		};
		return $claim->() if !$e || $e->{exp} eq 'expired';
		return $live->() if $e->{exp} eq 'long';
		# Uncertain: expired (a new claim) or not (as a live key).
		my $as_live = $live->();
		return {
			check_ans => sub {
				my ($ans) = @_;
				my $row = $ans->{rows}[0] // '';
				if ($ans->{status} eq 'ok' && ($row eq 'true' || $row =~ /^new/))
				{
					return compare($claim->(), $ans);
				}
				return compare($as_live, $ans);
			}
		};
	}
	if ($k eq 'peer_begin')
	{
		my $e = $db->{idem}{ $op->{key} };
		# The peer commits at once: its claim outlives a rollback here.
		my $peer_claims = sub {
			for my $d ($db, map { $_->[1] } @{ $m->{stack} })
			{
				$d->{idem}{ $op->{key} } = { mine => 0, resp => undef, fp => undef, exp => 'long' };
			}
			return { rows => ['new|-'] };
		};
		my $seen = sub {
			return { rows => [ $e->{mine} ? 'in_progress|-' : 'replay|' . ($e->{resp} // '-') ] };
		};
		return $peer_claims->() if !$e || $e->{exp} eq 'expired';
		return $seen->() if $e->{exp} eq 'long';
		my $as_seen = $seen->();
		return {
			check_ans => sub {
				my ($ans) = @_;
				return compare($peer_claims->(), $ans) if ($ans->{rows}[0] // '') =~ /^new/;
				return compare($as_seen, $ans);
			}
		};
	}
	if ($k eq 'idem_complete')
	{
		my $e = $db->{idem}{ $op->{key} };
		return err('55000') unless $e && $e->{mine};
		$e->{resp} = defined $op->{resp} ? "{\"r\": $op->{resp}}" : undef;
		return { rows => ['done'] };
	}
	if ($k eq 'purge')
	{
		my @gone = grep { $db->{idem}{$_}{exp} eq 'expired' && !$db->{idem}{$_}{mine} } keys %{ $db->{idem} };
		my @maybe = grep { $db->{idem}{$_}{exp} eq 'short' && !$db->{idem}{$_}{mine} } keys %{ $db->{idem} };
		delete $db->{idem}{$_} for @gone;
		return { rows => [ scalar @gone ] } unless @maybe;
		return {
			check => sub {
				my ($row) = @_;
				return 'purge count' unless $row >= @gone && $row <= @gone + @maybe;
				# All of them went, or some (which, is unknown: they stay
				# uncertain, as gone and as expired look the same), or none.
				if ($row == @gone + @maybe) { delete $db->{idem}{$_} for @maybe; }
				return undef;
			}
		};
	}

	if ($k eq 'lease_acquire')
	{
		my $name = $op->{name};
		my $e = $db->{leases}{$name};
		my $take = sub {
			my ($row) = @_;
			return 'no row' if $row eq '';
			my ($token, $fencing) = split /\|/, $row;
			return "fencing $fencing after $m->{max_fencing}" unless $fencing > $m->{max_fencing};
			$m->{max_fencing} = $fencing;
			push @{ $m->{old_tokens}{$name} }, $token;
			$db->{leases}{$name} = { token => $token, fencing => $fencing,
				holder => $op->{holder} eq '' ? '-' : $op->{holder}, exp => $op->{short} ? 'short' : 'long' };
			return undef;
		};
		if (!$e || $e->{exp} eq 'expired') { return { check => $take }; }
		if ($e->{exp} eq 'long') { return { rows => [] }; }
		return { check => sub { my ($row) = @_; return $row eq '' ? undef : $take->($row); } };
	}
	if ($k eq 'lease_renew' || $k eq 'lease_release')
	{
		my $e = $db->{leases}{ $op->{name} };
		my $ok = $e && $e->{token} eq $ctx->{token};
		if ($ok)
		{
			if ($k eq 'lease_renew') { $e->{exp} = $op->{short} ? 'short' : 'long'; }
			else { delete $db->{leases}{ $op->{name} }; }
		}
		return { rows => [ $ok ? 'true' : 'false' ] };
	}
	if ($k eq 'leases')
	{
		my $ls = $db->{leases};
		return {
			check => sub {
				my @got = @_;
				my %got = map { (split /\|/)[0] => $_ } @got;
				for my $n (keys %$ls)
				{
					my $want = join('|', $n, $ls->{$n}{holder}, $ls->{$n}{fencing});
					if ($ls->{$n}{exp} eq 'long') { return "lease $n missing" unless ($got{$n} // '') eq $want; }
					elsif ($ls->{$n}{exp} eq 'expired') { return "expired lease $n shown" if exists $got{$n}; }
					elsif (exists $got{$n}) { return "lease $n" unless $got{$n} eq $want; }
				}
				for my $n (keys %got) { return "unknown lease $n" unless $ls->{$n}; }
				return undef;
			},
			multi => 1,
		};
	}
	# Semaphores (SPEC 2b).  This session is the only one taking slots, so
	# a slot is always free: the answer is the slot this transaction holds
	# already (among 1..slots), else some slot in 1..slots it does not hold.
	if ($k eq 'lock_slot')
	{
		my $held = $db->{slots}{ $op->{name} } ||= {};
		my @mine = sort { $a <=> $b } grep { $_ <= $op->{slots} } keys %$held;
		return { rows => [ $mine[0] ] } if @mine;
		return {
			check => sub {
				my ($row) = @_;
				return "slot '$row' not in 1..$op->{slots}" unless $row =~ /^\d+$/ && $row >= 1 && $row <= $op->{slots};
				return "slot $row already held" if $held->{$row};
				$held->{$row} = 1;
				return undef;
			}
		};
	}
	if ($k eq 'slot_holders')
	{
		# Outside a transaction nothing is held; inside, this session's slots.
		my $held = $db->{slots}{ $op->{name} } || {};
		my @want = map { "$_|t|t" } sort { $a <=> $b } grep { $_ <= $op->{slots} } keys %$held;
		return { rows => \@want, sorted => 1 };
	}
	# Lease slots (SPEC 5): a slot is free when never taken, released or
	# expired; a short one is uncertain until a sleep has passed it.  The
	# answer is a free slot (or an uncertain one) with a fencing number
	# above every earlier one, or no row when every slot is certainly held.
	if ($k eq 'lease_acquire_slot')
	{
		my $ls = $db->{lslots}{ $op->{name} } ||= {};
		my @state = map { my $e = $ls->{$_}; !$e || $e->{exp} eq 'expired' ? 'free' : $e->{exp} } 1 .. $op->{slots};
		my $any_free = grep { $_ eq 'free' } @state;
		my $all_long = !grep { $_ ne 'long' } @state;
		return {
			check => sub {
				my ($row) = @_;
				if ($row eq '')
				{
					return "no row, but a slot is free" if $any_free;
					return undef;
				}
				my ($slot, $token, $fencing) = split /\|/, $row;
				return "a row, but every slot is held" if $all_long;
				return "slot $slot not in 1..$op->{slots}" unless $slot >= 1 && $slot <= $op->{slots};
				return "slot $slot is held" if $state[ $slot - 1 ] eq 'long';
				return "fencing $fencing after $m->{max_fencing}" unless $fencing > $m->{max_fencing};
				$m->{max_fencing} = $fencing;
				$ls->{$slot} = { token => $token, fencing => $fencing,
					holder => $op->{holder} eq '' ? '-' : $op->{holder}, exp => $op->{short} ? 'short' : 'long' };
				return undef;
			}
		};
	}
	if ($k eq 'lease_slots')
	{
		my $all = $db->{lslots};
		return {
			check => sub {
				my @got = @_;
				my %got = map { my @f = split /\|/; ("$f[0]|$f[1]" => $_) } @got;
				for my $n (keys %$all)
				{
					for my $sl (keys %{ $all->{$n} })
					{
						my $e = $all->{$n}{$sl};
						my $want = join('|', $n, $sl, $e->{holder}, $e->{fencing});
						if ($e->{exp} eq 'long') { return "lease slot $n/$sl missing" unless ($got{"$n|$sl"} // '') eq $want; }
						elsif ($e->{exp} eq 'expired') { return "expired lease slot $n/$sl shown" if exists $got{"$n|$sl"}; }
						elsif (exists $got{"$n|$sl"}) { return "lease slot $n/$sl" unless $got{"$n|$sl"} eq $want; }
					}
				}
				for my $id (keys %got)
				{
					my ($n, $sl) = split /\|/, $id;
					return "unknown lease slot $id" unless $all->{$n} && $all->{$n}{$sl};
				}
				return undef;
			},
			multi => 1,
		};
	}

	if ($k eq 'dump')
	{
		my @rows;
		for my $id (keys %{ $db->{counters} })
		{
			my ($s, $f, $p, $start) = split /\|/, $id;
			push @rows, join('|', $s, $f, $p, $start eq '-inf' ? '-inf' : $start, $db->{counters}{$id}{used});
		}
		return { rows => [ sort @rows ], sorted => 1 };
	}
	die "no model for $k";
}

# The token a renew or release names: the current one, an older one, or
# one never handed out.
sub op_context
{
	my ($m, $op) = @_;
	return {} unless $op->{kind} eq 'lease_renew' || $op->{kind} eq 'lease_release';
	my $e = $m->{db}{leases}{ $op->{name} };
	my @old = @{ $m->{old_tokens}{ $op->{name} } || [] };
	@old = grep { !$e || $_ ne $e->{token} } @old;
	my $token = '00000000-0000-4000-8000-000000000000';
	if ($op->{which} eq 'current' && $e) { $token = $e->{token}; }
	elsif ($op->{which} eq 'old' && @old) { $token = $old[ $op->{pickn} % @old ]; }
	return { token => $token };
}

# ---------------------------------------------------------------------
# Running operations on the server, one at a time, through one psql
# session kept open (the model picks tokens from earlier answers).

# What every model database needs besides the extension: dblink for a
# second session's view of the locks, and model_op(), which runs one
# operation and reports its answer, or its SQLSTATE, with the
# transaction's now() and the clock before and after it.
our $SETUP = <<'SQL';
CREATE EXTENSION IF NOT EXISTS dblink;
CREATE OR REPLACE FUNCTION model_op(q text) RETURNS text LANGUAGE plpgsql AS $f$
DECLARE
	r text[];
	t0 timestamptz := clock_timestamp();
	st text := 'ok';
BEGIN
	BEGIN
		EXECUTE 'SELECT coalesce(array_agg(x), ''{}'') FROM (' || q || ') AS t(x)' INTO r;
	EXCEPTION WHEN OTHERS THEN
		st := 'err:' || SQLSTATE;
		r := '{}';
	END;
	RETURN concat_ws(' ', 'H', st,
		((extract(epoch FROM now()) * 1000000)::numeric(30,0))::text,
		((extract(epoch FROM t0) * 1000000)::numeric(30,0))::text,
		((extract(epoch FROM clock_timestamp()) * 1000000)::numeric(30,0))::text,
		coalesce(array_length(r, 1), 0)::text)
		|| coalesce(E'\n' || array_to_string(r, E'\n', ''), '');
END
$f$;
SQL

sub session_start
{
	my ($connstr) = @_;
	my ($in, $out, $err) = ('', '', '');
	my $h = IPC::Run::start(
		[ 'psql', '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=0', '-d', $connstr ],
		'<', \$in, '>', \$out, '2>', \$err, IPC::Run::timeout(600));
	my $S = { h => $h, in => \$in, out => \$out, err => \$err, connstr => $connstr };
	session_query($S, "SET client_min_messages = warning;");
	session_query($S, "SELECT dblink_connect('model_peer', '" . ($connstr =~ s/'/''/gr) . "');");
	return $S;
}

sub session_query
{
	my ($S, $sql) = @_;
	${ $S->{out} } = '';
	${ $S->{err} } = '';
	${ $S->{in} } .= "$sql\n\\echo __MODEL_END__\n";
	$S->{h}->pump until ${ $S->{out} } =~ /__MODEL_END__\n\z/;
	my $o = ${ $S->{out} };
	$o =~ s/__MODEL_END__\n\z//;
	return $o;
}

sub session_end
{
	my ($S) = @_;
	${ $S->{in} } .= "\\q\n";
	$S->{h}->finish;
}

# Empty every table and start fencing numbers again: a fresh server state
# for a sequence (the extension's tables are its whole state).
sub reset_state
{
	my ($S) = @_;
	session_query($S, "ROLLBACK;");
	my $o = session_query($S,
		"TRUNCATE entitlock.usage_counter, entitlock.usage_idempotency, entitlock.usage_limits_idempotency, "
		  . "entitlock.rate_limit_state, entitlock.idempotency_key, entitlock.lease_record; "
		  . "ALTER SEQUENCE entitlock.lease_fencing RESTART;");
	die "reset failed: ${ $S->{err} }" if ${ $S->{err} } =~ /ERROR/;
}

sub parse_answer
{
	my ($o) = @_;
	my @lines = split /\n/, $o, -1;
	pop @lines if @lines && $lines[-1] eq '';
	my $h = shift @lines;
	die "bad answer: $o" unless defined $h && $h =~ /^H (\S+) (\d+) (\d+) (\d+) (\d+)$/;
	my $a = { status => $1, now => $2, t0 => $3, t1 => $4 };
	my $n = $5;
	$a->{rows} = [ @lines[ 0 .. $n - 1 ] ];
	$a->{rows}[$_] //= '' for 0 .. $n - 1;
	return $a;
}

# Compare one answer with the model's; undef when they agree, else what
# differs.
sub compare
{
	my ($exp, $ans) = @_;
	if (defined $exp->{err})
	{
		return $ans->{status} eq "err:$exp->{err}" ? undef : "expected SQLSTATE $exp->{err}";
	}
	return $exp->{check_ans}->($ans) if $exp->{check_ans};
	return "unexpected $ans->{status}" unless $ans->{status} eq 'ok';
	my @rows = @{ $ans->{rows} };
	if ($exp->{check})
	{
		return $exp->{check}->(@rows) if $exp->{multi};
		return "expected at most one row" if @rows > 1;
		return $exp->{check}->(@rows ? $rows[0] : '');
	}
	@rows = sort @rows if $exp->{sorted};
	my $want = join("\n", @{ $exp->{rows} });
	return undef if join("\n", @rows) eq $want && @rows == @{ $exp->{rows} };
	return "expected [" . join(' / ', @{ $exp->{rows} }) . "]" unless $exp->{sorted};
	# A table read: only the rows that differ.
	my %want = map { $_ => 1 } @{ $exp->{rows} };
	my %got = map { $_ => 1 } @rows;
	return "rows the model does not have: [" . join(' / ', grep { !$want{$_} } @rows)
	  . "]; rows missing: [" . join(' / ', grep { !$got{$_} } @{ $exp->{rows} }) . "]";
}

sub describe_op
{
	my ($op) = @_;
	return uc(tx_sql($op->{kind}) =~ s/;$//r) if tx_sql($op->{kind});
	return 'SELECT pg_sleep(0.05)' if $op->{kind} eq 'sleep';
	my $ctx = $op->{kind} =~ /^lease_(renew|release)$/ ? { token => "<$op->{which} token>" } : {};
	my $sql = op_sql($op, $ctx);
	# Without the formatting of the answer.
	return 'SELECT * FROM entitlock.usage_counter' if $op->{kind} eq 'dump';
	$sql =~ s/^SELECT concat_ws\(.*?\) FROM (entitlock\.\w+\()/SELECT * FROM $1/;
	$sql =~ s/^SELECT (entitlock\.[\w.]+\(.*\))::text$/SELECT $1/;
	return $sql;
}

# Run ops on a fresh state; returns undef when every answer agrees with
# the model, else { index, op, message, got }.  A final read of every
# counter and lease, after the last transaction ends, is part of it.
sub run_ops
{
	my ($S, $ops) = @_;
	reset_state($S);
	my $m = new_model();
	my @all = (@$ops, { kind => 'commit' }, { kind => 'dump' }, { kind => 'leases' });
	for my $i (0 .. $#all)
	{
		my $op = $all[$i];
		my $k = $op->{kind};
		if (tx_sql($k))
		{
			next unless tx_valid($m, $k);
			session_query($S, tx_sql($k));
			return { index => $i, op => $op, message => "error: ${ $S->{err} }", got => '' }
			  if ${ $S->{err} } =~ /ERROR/;
			tx_apply($m, $k);
			next;
		}
		my $ctx = op_context($m, $op);
		my $sql = $k eq 'sleep' ? 'SELECT pg_sleep(0.05)::text' : op_sql($op, $ctx);
		my $o = session_query($S, "SELECT model_op(\$model\$$sql\$model\$);");
		return { index => $i, op => $op, message => "psql: ${ $S->{err} }", got => $o }
		  if ${ $S->{err} } =~ /ERROR/;
		my $ans = parse_answer($o);
		my $exp = expect($m, $op, $ans, $ctx);
		my $diff = compare($exp, $ans);
		return { index => $i, op => $op, message => $diff, got => "$ans->{status}: " . join(' / ', @{ $ans->{rows} }) }
		  if defined $diff;
		end_xact($m) unless in_tx($m);
	}
	return undef;
}

# A shorter sequence that still fails: leave out chunks, halving their
# size, while the rest still fails.  At most $budget replays.
sub shrink
{
	my ($S, $ops, $budget) = @_;
	my @cur = @$ops;
	my $runs = 0;
	my $fails = sub { $runs++; return defined run_ops($S, $_[0]); };
	my $chunk = int(@cur / 2) || 1;
	while ($runs < $budget)
	{
		my $removed = 0;
		for (my $i = 0; $i < @cur && $runs < $budget;)
		{
			my @try = @cur;
			splice(@try, $i, $chunk);
			if ($fails->(\@try)) { @cur = @try; $removed = 1; }
			else { $i += $chunk; }
		}
		last if $chunk == 1 && !$removed;
		$chunk = int($chunk / 2) || 1;
	}
	return (\@cur, $runs);
}

sub gen_ops
{
	my ($seed, $n) = @_;
	my $rng = new_rng($seed);
	return [ map { gen_op($rng) } 1 .. $n ];
}

1;
