# test/tap/059_pgbouncer.pl: behind a connection pooler.
#
# PgBouncer (Debian's pgbouncer; test/tap.sh installs it) in transaction
# pooling mode in front of the node, with fewer server connections than
# clients, so that every server connection serves many clients, one
# transaction at a time.
#
# README promises that entitlock is safe behind such a pooler because
# everything it does belongs to the caller's transaction: locks end at
# COMMIT or ROLLBACK, claims and usage are rows written in the
# transaction, leases are rows and tokens.  Session advisory locks are not
# safe, because they stay with the server connection when the pooler
# hands it to the next client.  This test shows both on one pooled server
# connection (a database alias with pool_size=1):
#   - entitlock.lock taken by client A in a transaction is held (a direct
#     connection cannot take it) until A commits; then client B, served by
#     the same server backend, gets it at once, and nothing is left in
#     pg_locks;
#   - pg_advisory_lock taken by A outlives A's transaction: B, served by
#     the same backend, "gets" it although A never let go, a direct
#     connection cannot, it is still in pg_locks after A disconnected, and
#     a third client can release it.
# The two cases differ only in the kind of lock, so each is the other's
# control: a check that could not tell them apart would fail one of them.
#
# Then it runs the four pgbench workloads of 051-054 (usage, idempotency,
# leases, locks; EntitlockStress.pm) through the pooler, with their own
# checks and controls, and requires that their clients really shared
# server connections (PgBouncer's pools, sampled, had at least twice as
# many clients as server connections) and that the server did not crash.
# Through PgBouncer a killed backend reaches pgbench in PgBouncer's words:
# "server conn crashed?", "server connection closed", or "invalid server
# parameter" when it dies just as PgBouncer sets the client's
# application_name on it; the workloads accept these, and a crashed
# backend would get the same words, hence the look at the server log.
#
# PgBouncer runs as the test's user on a private Unix socket; the
# system's pgbouncer service, if any, is never used.
#
# Run with: bash test/tap.sh test/tap/059_pgbouncer.pl

use strict;
use warnings;

use EntitlockStress;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my ($bouncer) = grep { -x $_ } map { "$_/pgbouncer" }
  split(/:/, $ENV{PATH}), '/usr/sbin';
plan skip_all => 'pgbouncer is not installed (Debian package pgbouncer)'
  unless $bouncer;

my $POOL_SIZE = 8;
my $CLIENTS = 32;
my $db = 'entitlock_pgbouncer';
my $one = "${db}_one";

my $node = stress_node('main');
my $log_from = -s $node->logfile;
my $direct = target($node, $db);
create_db($direct);

# Listens on a Unix socket only (no listen_addr: no TCP).  auth_type trust
# matches the node's; the user must still be listed.  In transaction mode
# server_reset_query is not run between clients, so session state stays on
# the server connection, as in production.
my $dir = PostgreSQL::Test::Utils::tempdir_short();
my $port = PostgreSQL::Test::Cluster::get_free_port();
my ($host, $nport) = ($node->host, $node->port);
my $user = getpwuid($<);
append_to_file("$dir/pgbouncer.ini", qq{[databases]
$one = host=$host port=$nport dbname=$db pool_size=1
* = host=$host port=$nport

[pgbouncer]
listen_port = $port
unix_socket_dir = $dir
pool_mode = transaction
default_pool_size = $POOL_SIZE
reserve_pool_size = 0
max_client_conn = @{[$CLIENTS * 2 + 50]}
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = $user
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
});
append_to_file("$dir/userlist.txt", qq{"$user" ""\n});
system($bouncer, '-d', '-q', "$dir/pgbouncer.ini") == 0
  or BAIL_OUT('pgbouncer did not start: ' . slurp_file("$dir/pgbouncer.log"));

# pgbouncer's admin console: the rows of COMMAND as hashes.
sub admin
{
	my ($command) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run(
		[
			'psql', '-X', '-q', '-A', '-h', $dir, '-p', $port, '-d',
			'pgbouncer', '-c', $command
		],
		'>', \$out, '2>', \$err);
	return $? == 0 ? $out : undef;
}
my $version;
for (1 .. 100)
{
	$version = admin('SHOW VERSION');
	last if defined $version && -s "$dir/pgbouncer.pid";
	usleep(50_000);
}
ok(defined $version, 'pgbouncer answers');
my $bouncer_pid = slurp_file("$dir/pgbouncer.pid");
chomp $bouncer_pid;
END { kill 'TERM', $bouncer_pid if $bouncer_pid; }
note "pgbouncer: transaction pooling, $POOL_SIZE server connections per database, port $port";

my $pooled = target($node, $one, host => $dir, port => $port);
sub held_by
{
	return sql($direct,
		"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = $_[0]"
	);
}
# Client A: a psql session through the one-connection pool, which holds
# no server connection between its transactions.  (BackgroundPsql's
# constructor is for PostgreSQL::Test::Cluster alone, which would connect
# to the node itself.)
my ($a_in, $a_out) = ('', '');
my $a_timer = IPC::Run::timeout(60);
my $a_psql = IPC::Run::start(
	[
		'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-h', $dir, '-p', $port,
		'-d', $one
	],
	'<', \$a_in, '>', \$a_out, '2>&1', $a_timer);
sub a_query
{
	my ($query) = @_;
	$a_out = '';
	$a_in .= "$query;\n\\echo __done__\n";
	$a_timer->start(60);
	$a_psql->pump until $a_out =~ /__done__\n/;
	(my $result = $a_out) =~ s/\n?__done__\n//;
	return $result;
}

# The transaction lock.
a_query('BEGIN');
a_query("SELECT entitlock.lock('pooled-xact')");
my $a_pid = a_query('SELECT pg_backend_pid()');
is(sql($direct, "SELECT entitlock.try_lock('pooled-xact')"),
	'f', "while A's transaction runs, a direct connection cannot take the lock");
a_query('COMMIT');
is( sql($pooled,
		"SELECT entitlock.try_lock('pooled-xact')::text || ' ' || pg_backend_pid()"),
	"true $a_pid",
	"after A's COMMIT, B gets it at once, on A's server connection");
is(held_by($a_pid), 0, 'and no advisory lock is left on that connection');

# The session lock.
$a_pid = a_query(
	"SELECT pg_backend_pid() FROM (SELECT pg_advisory_lock(entitlock.key('pooled-session'))) AS l"
);
is( sql($pooled,
		"SELECT pg_try_advisory_lock(entitlock.key('pooled-session'))::text || ' ' || pg_backend_pid()"
	),
	"true $a_pid",
	"B, on A's server connection, gets the session lock A never released");
is(sql($direct, "SELECT pg_try_advisory_lock(entitlock.key('pooled-session'))"),
	'f', 'a direct connection cannot take it');
$a_in .= "\\q\n";
$a_psql->finish;
is(held_by($a_pid), 1,
	'after A disconnected, the lock is still held by the pooled connection');
is(sql($pooled, "SELECT pg_advisory_unlock(entitlock.key('pooled-session'))"),
	't', 'and another client can release it');
sql($pooled, 'SELECT pg_advisory_unlock_all()');

# The workloads, pointed at the pooler, while a child process samples the
# pools every 0.2 s, to show that they had fewer server connections than
# clients.  pgbench uses the simple query protocol there, which
# transaction pooling supports.
my $sampler = fork();
die "fork: $!" unless defined $sampler;
if ($sampler == 0)
{
	while (1)
	{
		my $pools = admin('SHOW POOLS');
		append_to_file("$dir/pools", $pools) if defined $pools;
		usleep(200_000);
	}
}
my $expected =
  'server conn crashed\?|server connection closed|invalid server parameter';
my %via = map {
	($_ => target($node, "entitlock_stress_$_", host => $dir, port => $port,
		expected => $expected))
} qw(usage idem lease locks);
usage_workload($via{usage}, min => 10);
idempotency_workload($via{idem}, min => 10);
leases_workload($via{lease});
locks_workload($via{locks}, min => 10);
kill 'TERM', $sampler;
waitpid($sampler, 0);

# Rows of pgbouncer's SHOW output ("|"-separated, with header lines) as
# hashes.
sub rows
{
	my ($text, $first) = @_;
	my (@cols, @rows);
	for my $line (split /\n/, $text)
	{
		my @f = split /\|/, $line, -1;
		if ($f[0] eq $first) { @cols = @f; next; }
		next if !@cols || $line =~ /^\(\d+ rows?\)$/;
		my %r;
		@r{@cols} = @f;
		push @rows, \%r;
	}
	return @rows;
}

# Each workload's traffic went through the pooler, and at its busiest its
# clients outnumbered its server connections at least two to one: these
# were shared.  (A pool as large as the client count fails this: the kill
# loop's connections go to the server directly.)
my @stats = rows(admin('SHOW STATS'), 'database');
my @pools = rows(slurp_file("$dir/pools"), 'database');
for my $d (map { $_->{db} } @via{qw(usage idem lease locks)})
{
	my ($s) = grep { $_->{database} eq $d } @stats;
	my $xacts = $s ? $s->{total_xact_count} : 0;
	my ($max_clients, $max_servers) = (0, 0);
	for my $p (grep { $_->{database} eq $d } @pools)
	{
		my $c = $p->{cl_active} + $p->{cl_waiting};
		my $v = 0;
		$v += $p->{$_} // 0 for qw(sv_active sv_idle sv_used sv_tested sv_login);
		$max_clients = $c if $c > $max_clients;
		$max_servers = $v if $v > $max_servers;
	}
	note "pgbouncer, $d: $xacts transactions; at most $max_clients clients on $max_servers server connections";
	cmp_ok($xacts, '>', 1000, "$d: its transactions went through pgbouncer");
	ok( $max_servers > 0
		  && $max_servers <= $POOL_SIZE
		  && $max_clients >= 2 * $max_servers,
		"$d: $max_clients clients shared $max_servers server connections");
}

unlike(
	slurp_file($node->logfile, $log_from),
	qr/was terminated by signal|terminating connection because of crash/,
	'no backend crashed');

$node->stop;
done_testing();
