# test/bench/EntitlockBench.pm: what the benchmarks share.
#
# A benchmark runs on the cluster PGHOST and PGPORT point at, if any;
# otherwise on a node of its own (PostgreSQL::Test::Cluster) with fsync on
# and synchronous_commit off, so that commits do not hide the difference
# being measured.  It compares entitlock with plain SQL in the same run:
# the variants take turns within each round, so that a slow moment of the
# machine does not land on one variant only, and the median of the rounds
# is printed, with ratios.  Run through test/bench/run.sh.

package EntitlockBench;

use strict;
use warnings;

use Exporter 'import';
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils ();
use Test::More ();

our @EXPORT = qw(bench_start bench_sql bench_script bench_tps bench_rounds
  bench_median bench_ratio bench_env bench_printf);

# bench_printf FORMAT, ARGS: to the terminal (PostgreSQL::Test::Utils sends
# STDOUT to its log file; Test::More's output handle goes to both).
sub bench_printf
{
	my ($format, @args) = @_;
	my $fh = Test::More->builder->output;
	print $fh sprintf($format, @args);
	return;
}

# bench_env NAME, DEFAULT: the setting BENCH_NAME, or DEFAULT.
sub bench_env
{
	my ($name, $default) = @_;
	return $ENV{"BENCH_$name"} // $default;
}

# bench_start DB: { host, port, db, dir } of a fresh database DB with the
# extension, on the cluster of PGHOST/PGPORT or on a node of its own.
sub bench_start
{
	my ($db) = @_;
	my %b = (db => $db);
	# (PostgreSQL::Test::Cluster sets PGHOST and PGPORT as it loads: the
	# caller's are passed as BENCH_HOST and BENCH_PORT by run.sh.)
	if ($ENV{BENCH_HOST})
	{
		@b{qw(host port)} = ($ENV{BENCH_HOST}, $ENV{BENCH_PORT} || 5432);
	}
	else
	{
		my $node = PostgreSQL::Test::Cluster->new('bench');
		$node->init;
		$node->append_conf('postgresql.conf',
			"fsync = on\nsynchronous_commit = off\nlog_statement = none\n"
			  . "max_connections = 120\nmax_locks_per_transaction = 256\n");
		$node->start;
		@b{qw(host port node)} = ($node->host, $node->port, $node);
	}
	$b{dir} = PostgreSQL::Test::Utils::tempdir();
	my $b = \%b;
	bench_sql({ %b, db => 'postgres' },
		"DROP DATABASE IF EXISTS $db WITH (FORCE)");
	bench_sql({ %b, db => 'postgres' }, "CREATE DATABASE $db");
	bench_sql($b, 'CREATE EXTENSION entitlock');
	return $b;
}

# bench_sql B, SQL: psql -At with SQL on B's database; its output.  Dies
# when psql fails.
sub bench_sql
{
	my ($b, $sql) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run(
		[
			'psql', '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1',
			'-h', $b->{host}, '-p', $b->{port}, '-d', $b->{db}
		],
		'<', \$sql, '>', \$out, '2>', \$err)
	  or die "psql failed: $err\n";
	chomp $out;
	return $out;
}

# bench_script B, NAME, TEXT: TEXT in a file for pgbench; its path.
sub bench_script
{
	my ($b, $name, $text) = @_;
	my $path = "$b->{dir}/$name.sql";
	open my $fh, '>', $path or die "cannot write $path: $!";
	print $fh $text;
	close $fh;
	return $path;
}

# bench_tps B, FILE, CLIENTS, SECONDS, PROTOCOL: the TPS of one pgbench
# run of FILE (0, with pgbench's error, when it printed none).
sub bench_tps
{
	my ($b, $file, $clients, $secs, $protocol) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run(
		[
			'pgbench', '-n', '-M', $protocol // 'simple',
			'-c', $clients, '-j', ($clients < 2 ? 1 : 2),
			'-T', $secs, '-f', $file,
			'-h', $b->{host}, '-p', $b->{port}, $b->{db}
		],
		'>', \$out, '2>', \$err);
	return $1 if $out =~ /^tps = ([0-9.]+) /m;
	my ($first) = grep { /error|abort|fatal/i } split /\n/, $err;
	bench_printf "# pgbench printed no tps: %s\n",
	  $first // "no transaction completed in $secs s";
	return 0;
}

# The median of a list of numbers.
sub bench_median
{
	my @s = sort { $a <=> $b } @_;
	return @s ? $s[ int(($#s) / 2) ] : 0;
}

# A / B with two decimals (0 when B is 0).
sub bench_ratio
{
	my ($x, $y) = @_;
	return sprintf('%.2f', $y > 0 ? $x / $y : 0);
}

# bench_rounds B, CLIENTS, \%FILES, \@VARIANTS, RESET: ROUNDS (BENCH_ROUNDS)
# pgbench runs of each variant's file, each after RESET->(); the variants
# take turns within each round.  Returns { variant => median TPS }.
sub bench_rounds
{
	my ($b, $clients, $files, $variants, $reset, %o) = @_;
	my %tps;
	for (1 .. $o{rounds})
	{
		for my $v (@$variants)
		{
			$reset->() if $reset;
			push @{ $tps{$v} },
			  bench_tps($b, $files->{$v}, $clients, $o{secs}, $o{protocol});
		}
	}
	return { map { ($_ => bench_median(@{ $tps{$_} })) } @$variants };
}

1;
