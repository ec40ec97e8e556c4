# test/tap/061_keys_xxhsum.pl: entitlock.key against an independent XXH64,
# xxhsum from Debian's xxhash package.  Random names of every length from
# 1 to 300 bytes (all stripe and tail paths), ASCII and multi-byte UTF-8,
# and pairs hashed as realm, a zero byte and entity.
#
# Run with: bash test/tap.sh test/tap/061_keys_xxhsum.pl

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EntitlockTest;

plan skip_all => 'xxhsum not installed (Debian package xxhash)'
  unless system('sh', '-c', 'command -v xxhsum >/dev/null') == 0;

my $node = new_node('keys');
$node->safe_psql('postgres', 'CREATE EXTENSION entitlock');

# Random text without tabs or newlines, so psql's unaligned output splits
# cleanly: code points from ASCII, Latin-1, CJK and emoji ranges.
my $names_sql = q{
SELECT string_agg(
         CASE (random() * 3)::int
           WHEN 0 THEN chr(33 + (random() * 93)::int)
           WHEN 1 THEN chr(161 + (random() * 94)::int)
           WHEN 2 THEN chr(19968 + (random() * 2000)::int)
           ELSE chr(128512 + (random() * 60)::int)
         END, '')
  FROM generate_series(1, len)};

# Every input, hashed by entitlock: "input<TAB>hex" lines, the input being
# the bytes xxhsum is to hash (realm, a zero byte, entity for pairs).
my @cases;
for my $line (split /\n/,
	$node->safe_psql('postgres', qq{
	WITH n AS (
		SELECT repeat('k', len) AS name FROM generate_series(1, 300) AS len
		UNION ALL
		SELECT ($names_sql) FROM generate_series(1, 200) AS len)
	SELECT name || E'\\t' || lpad(to_hex(entitlock.key(name)), 16, '0') FROM n}))
{
	my ($name, $key) = split /\t/, $line;
	push @cases, ["'$name'", $name, $key];
}
for my $line (split /\n/,
	$node->safe_psql('postgres', qq{
	WITH p AS (
		SELECT ($names_sql) AS realm,
			   (SELECT ($names_sql) FROM (SELECT len % 50 + 1 AS len) AS l) AS entity
		  FROM generate_series(1, 100) AS len)
	SELECT realm || E'\\t' || entity || E'\\t' || lpad(to_hex(entitlock.key(realm, entity)), 16, '0') FROM p}))
{
	my ($realm, $entity, $key) = split /\t/, $line;
	push @cases, ["('$realm', '$entity')", "$realm\0$entity", $key];
}

# xxhsum reads one file per input; names are UTF-8 bytes as the server
# sent them.
my $dir = PostgreSQL::Test::Utils::tempdir();
my @files;
for my $i (0 .. $#cases)
{
	my $f = "$dir/$i";
	open my $fh, '>:raw', $f or die "$f: $!";
	print $fh $cases[$i][1];
	close $fh;
	push @files, $f;
}
my %sum;
for my $line (split /\n/, `xxhsum -H1 @files`)
{
	$sum{$2} = $1 if $line =~ /^([0-9a-f]{16})\s+(\S+)$/;
}

my $mismatches = 0;
for my $i (0 .. $#cases)
{
	my $theirs = $sum{ $files[$i] } // 'missing';
	next if $theirs eq $cases[$i][2];
	$mismatches++;
	diag("key mismatch for $cases[$i][0]: entitlock $cases[$i][2], xxhsum $theirs");
}
cmp_ok(scalar @cases, '>=', 600, 'at least 600 keys were hashed by both');
is($mismatches, 0, 'every key equals xxhsum\'s XXH64 of the same bytes');

$node->stop;
done_testing();
