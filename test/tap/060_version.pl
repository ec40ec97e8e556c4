# test/tap/060_version.pl: the version lives in entitlock.control.  Check
# that everything that repeats it agrees: the install script's name,
# META.json, and the version the server reports after CREATE EXTENSION.
#
# Run with: bash test/tap.sh test/tap/060_version.pl

use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EntitlockTest;

my $src     = src_dir();
my $version = control_value('default_version');
ok(defined $version && $version ne '', 'entitlock.control sets default_version')
  or BAIL_OUT('no default_version in entitlock.control');

ok(-f "$src/sql/entitlock--$version.sql",
	"the install script sql/entitlock--$version.sql exists");

# PGXN wants semantic versions: control file 1.0 is 1.0.0 there.
my $semver = $version =~ /^\d+\.\d+$/ ? "$version.0" : $version;
my $meta = eval { decode_json(slurp("$src/META.json")) };
ok($meta, 'META.json parses') or diag($@);
is($meta->{version}, $semver, "META.json version is the control file's $version (PGXN: $semver)");
is($meta->{provides}{entitlock}{version},
	$semver, 'META.json provides.entitlock.version likewise');
is($meta->{'meta-spec'}{version}, '1.0.0', 'META.json meta-spec version is 1.0.0');

my $node = new_node('version');
$node->safe_psql('postgres', 'CREATE EXTENSION entitlock');
is( $node->safe_psql(
		'postgres', "SELECT extversion FROM pg_extension WHERE extname = 'entitlock'"),
	$version,
	'CREATE EXTENSION installs the control file\'s version');

$node->stop;
done_testing();
