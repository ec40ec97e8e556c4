# test/tap/EntitlockTest.pm: small helpers shared by the TAP tests that
# check the tree against the installed extension (060 to 064).
#
# test/tap.sh copies the files those tests read from the tree (sql/,
# entitlock.control, META.json, entitlock.so) to a directory the postgres
# OS user can read, and names it in ENTITLOCK_SRC.

package EntitlockTest;

use strict;
use warnings;

use Exporter 'import';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(src_dir slurp control_value new_node pg_config_value);

# The copy of the tree's files.
sub src_dir
{
	my $dir = $ENV{ENTITLOCK_SRC};
	BAIL_OUT('ENTITLOCK_SRC is not set (run the test through test/tap.sh)')
	  unless defined $dir && -f "$dir/entitlock.control";
	return $dir;
}

sub slurp
{
	my ($file) = @_;
	open my $fh, '<', $file or die "$file: $!\n";
	local $/;
	my $text = <$fh>;
	close $fh;
	return $text;
}

# control_value(NAME): NAME's value in entitlock.control, unquoted; undef
# when it is not set.  With two settings the last wins, as in PostgreSQL.
sub control_value
{
	my ($name) = @_;
	my $value;
	for my $line (split /\n/, slurp(src_dir() . '/entitlock.control'))
	{
		next unless $line =~ /^\s*\Q$name\E\s*=\s*(.*?)\s*(?:#.*)?$/;
		($value = $1) =~ s/^'(.*)'$/$1/;
	}
	return $value;
}

# pg_config_value(OPTION): e.g. pg_config_value('--sharedir').
sub pg_config_value
{
	my ($option) = @_;
	my $out = `pg_config $option`;
	die "pg_config $option failed\n" if $?;
	chomp $out;
	return $out;
}

# new_node(NAME, [postgresql.conf text]): a started cluster.
sub new_node
{
	my ($name, $conf, %params) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name, %params);

	# UTF8 whatever the environment's locale: a bare Debian root has no
	# LANG, and initdb would pick SQL_ASCII, where names of other scripts
	# are not text.
	$node->init(extra => [ '--encoding=UTF8', '--locale=C.UTF-8' ]);
	$node->append_conf('postgresql.conf', "jit = off\n" . ($conf // ''));
	$node->start;
	return $node;
}

1;
