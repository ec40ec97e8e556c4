#!/usr/bin/env bash
#
# test/check/readme.sh: the manual points only at things that exist.
#
#   bash test/check/readme.sh
#
# Checks README.md, CONTRIBUTING.md and every doc/**/*.md:
#   - every link to a file of the tree ([text](path), relative to the
#     file that links) names a file or directory that exists, and every
#     link to a section (#anchor, or path.md#anchor) names a heading of
#     that file, with GitHub's rules for anchors (lower case, punctuation
#     dropped, spaces to hyphens, -1, -2, ... for repeated headings);
#   - every file or directory of the tree named in backquotes
#     (test/..., sql/..., src/..., debian/..., doc/..., from the top of
#     the tree) exists;
#   - the supported versions README's "Supported versions" names are
#     exactly the ones the suite tests: $PG_MAJOR on the host and
#     test/matrix.sh's default majors.
# The JavaScript blocks are checked against test/examples/ by
# test/check/examples.sh.  Needs only perl.

set -uo pipefail

# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$ENTITLOCK_ROOT" || exit 1

matrix=$(sed -n 's/^majors=\${ENTITLOCK_MATRIX-\([0-9 ]*\)}$/\1/p' test/matrix.sh)
[ -n "$matrix" ] || die "cannot read the default majors from test/matrix.sh"
mapfile -t docs < <(find doc -name '*.md' 2>/dev/null | LC_ALL=C sort)

perl -e '
use strict;
use warnings;
use File::Basename qw(dirname);
use File::Spec;
my ($tested, @files) = @ARGV;
my (%anchors, $bad, $links);
$bad = 0;
$links = 0;

# The anchors of each file, as GitHub makes them.
for my $f (@files) {
	open(my $fh, "<:encoding(UTF-8)", $f) or die "$f: $!";
	my ($fence, %seen) = (0);
	while (my $l = <$fh>) {
		$fence = !$fence if $l =~ /^\s*```/;
		next if $fence or $l !~ /^#{1,6}\s+(.*?)\s*$/;
		my $a = lc $1;
		$a =~ s/[^\w\- ]//g;
		$a =~ s/ /-/g;
		my $n = $seen{$a}++;
		$anchors{$f}{$n ? "$a-$n" : $a} = 1;
	}
}

for my $f (@files) {
	open(my $fh, "<:encoding(UTF-8)", $f) or die "$f: $!";
	my $text = do { local $/; <$fh> };
	# Links: a file of the tree, relative to this one, and its section.
	while ($text =~ /\]\(([^)\s#]*)(?:#([^)\s]+))?\)/g) {
		my ($path, $a) = ($1, $2);
		next if $path =~ /^\w+:/;	# https:, mailto:
		my $target = $f;
		if ($path ne "") {
			$target = File::Spec->canonpath(dirname($f) . "/$path");
			1 while $target =~ s{(^|/)(?!\.\./)[^/]+/\.\.(/|$)}{$1};
			$target =~ s{^\./}{};
			unless (-e $target) {
				print "FAILED: $f links to $path, which does not exist\n";
				$bad++;
				next;
			}
		}
		next unless defined $a;
		$links++;
		unless (exists $anchors{$target} && $anchors{$target}{$a}) {
			print "FAILED: $f links to $target#$a, which is no heading\n";
			$bad++;
		}
	}
	# Paths of the tree named in backquotes, from the top of the tree.
	my %paths;
	while ($text =~ /`((?:test|sql|src|debian|expected|doc)\/[\w.\/*-]*)/g) {
		my $p = $1;
		$p =~ s/[.,:]$//;
		$paths{$p} = 1;
	}
	for my $p (sort keys %paths) {
		next if $p =~ /NNN|NAME|\*|OLD|NEW/;	# patterns, not paths
		unless (-e $p) {
			print "FAILED: $f names $p, which does not exist\n";
			$bad++;
		}
	}
	print "ok: $f: ", scalar(keys %paths), " paths of the tree exist\n";
}
print "ok: $links links to sections checked\n";

# Supported versions: the README sentence after the heading.
open(my $fh, "<:encoding(UTF-8)", "README.md") or die;
my $readme = do { local $/; <$fh> };
my ($sv) = $readme =~ /^### Supported versions\n\n(.*?)\n\n/ms;
if (!defined $sv) {
	print "FAILED: README.md has no Supported versions section\n";
	$bad++;
} else {
	my @named = sort { $a <=> $b } ($sv =~ /PostgreSQL ((?:\d+(?:, | and )?)+)/)[0] =~ /(\d+)/g;
	my @want = sort { $a <=> $b } split / /, $tested;
	if ("@named" eq "@want") {
		print "ok: README supports exactly the tested majors: @want\n";
	} else {
		print "FAILED: README names PostgreSQL @named, the suite tests @want\n";
		$bad++;
	}
}
exit($bad ? 1 : 0);
' "$PG_MAJOR $matrix" README.md CONTRIBUTING.md "${docs[@]}"
