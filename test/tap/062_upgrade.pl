# test/tap/062_upgrade.pl: ALTER EXTENSION entitlock UPDATE.  A database
# updated from an older version must end up exactly like a fresh CREATE
# EXTENSION of the new version, with its data intact.  PostgreSQL runs the
# update scripts (sql/entitlock--OLD--NEW.sql) on existing databases and
# the full script (or the base script plus updates) on new ones; nothing
# makes the two agree except a test, and a difference (a forgotten REVOKE,
# a function left VOLATILE, a table not registered for pg_dump) only shows
# later, in a customer's database that was updated rather than created.
#
# The versions come from the tree: default_version from entitlock.control,
# the older ones from sql/entitlock--*.sql (full scripts and both ends of
# every update script).  Each older version must have an update path to
# default_version (pg_extension_update_paths), and from each one this test:
#   - creates the extension at that version in one database, puts data in
#     (usage with and without idempotency keys, idempotency keys completed
#     and not, first_time, held leases and spent fencing numbers), runs
#     ALTER EXTENSION entitlock UPDATE, and creates it fresh in another;
#   - compares the two catalogs fact by fact (members, function attributes
#     and sources, columns, constraints, indexes, views, sequences, ACLs
#     and initial privileges, comments, pg_dump config registration) and
#     pg_dump --binary-upgrade --schema-only of both;
#   - checks the data survived and works: the same usage, idempotent
#     retries answered as before and recording nothing, keys replayed,
#     leases still held and renewable with their old tokens, fencing
#     numbers continuing above every one handed out;
#   - and, in another database, that user objects depending on the old
#     version's functions (a view over holders(), SQL-standard bodies, a
#     column default, an expression index, a GRANT) survive the update,
#     work, and restore from pg_dump.
# With a single version there is no update path: it then compares a fresh
# install holding data with another fresh install, which keeps the
# comparison and the data checks themselves tested.  The data goes in
# through the API and, for version 1.0, also as rows written straight into
# its tables: a library whose tables changed refuses the old ones until
# ALTER EXTENSION UPDATE (by design), and then only the rows can go in.
#
# Checks that hold with any number of versions:
#   - sql/ and the server's extension directory hold the same scripts and
#     control file (otherwise the server tests stale files: make install);
#   - every C symbol any script names exists in the installed library, with
#     its pg_finfo_ record: the library is replaced before ALTER EXTENSION
#     UPDATE runs, and until it does the old version's SQL calls it;
#   - every object the scripts create or name is qualified with schema
#     entitlock (an unqualified name can resolve to pg_catalog first);
#   - the control file: not relocatable, schema entitlock, module_pathname
#     $libdir/entitlock, requires only available extensions;
#   - in every database: each table and sequence is registered with
#     pg_extension_config_dump, and each function not written in C pins
#     its search_path.
#
# Negative controls (the self-test): the static scanners must flag a
# script with a missing C symbol and unqualified names; and a synthetic
# next version (9.9-selftest-NAME, updating from default_version) in
# several broken forms (the update script forgets a function, a REVOKE, a
# pg_extension_config_dump, a volatility change; or loses lease tokens or
# usage idempotency keys) and one correct form must be caught, each naming
# what is missing, while the correct one passes.  The synthetic scripts
# go into a private mirror of the installation (the PostgreSQL binaries
# copied, everything else linked, its extension directory a directory of
# links plus the synthetic files): PostgreSQL finds its share directory
# relative to its binaries, so the real installation is never written to.
# Set UPGRADE_SELFTEST=0 to skip the synthetic versions.
#
# Run with: bash test/tap.sh test/tap/062_upgrade.pl

use strict;
use warnings;

use File::Basename qw(basename dirname);
use File::Copy qw(copy);
use File::Compare qw(compare);
use File::Path qw(make_path);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EntitlockTest;

my $src     = src_dir();
my $tmp     = PostgreSQL::Test::Utils::tempdir();
my $extdir  = pg_config_value('--sharedir') . '/extension';
my $libdir  = pg_config_value('--pkglibdir');
my $default_version = control_value('default_version');
BAIL_OUT('no default_version in entitlock.control') unless $default_version;

# The catalog queries join temporary tables the planner knows nothing
# about; its guesses would make JIT compile them for a second each
# (new_node sets jit = off).
my $node = new_node('upgrade');
my $dbseq = 0;

sub write_file
{
	my ($file, $text) = @_;
	open my $fh, '>', $file or die "$file: $!\n";
	print $fh $text;
	close $fh;
}

# run_cmd(ARGS...): (exit status, stdout, stderr).
sub run_cmd
{
	my ($out, $err) = ('', '');
	IPC::Run::run([@_], '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

# psql_run(NODE, DB, SQL, [params]): (exit status, stdout, stderr), psql
# -XAtq, ON_ERROR_STOP unless on_error_stop => 0.
sub psql_run
{
	my ($n, $db, $sql, %p) = @_;
	my ($out, $err) = ('', '');
	my $rc = $n->psql($db, $sql, stdout => \$out, stderr => \$err,
		on_error_stop => $p{on_error_stop} // 1, extra_params => $p{extra} // []);
	return ($rc, $out, $err);
}

sub q1
{
	my ($n, $db, $sql) = @_;
	return $n->safe_psql($db, $sql);
}

# A unified diff of two texts, without hunk headers, at most $max lines;
# empty when they are equal.
sub text_diff
{
	my ($a, $b, $la, $lb, $max) = @_;
	return '' if $a eq $b;
	my $n = ++$dbseq;
	write_file("$tmp/diff.$n.a", $a eq '' ? '' : "$a\n");
	write_file("$tmp/diff.$n.b", $b eq '' ? '' : "$b\n");
	my (undef, $out) = run_cmd('diff', '-U0', '--label', $la, '--label', $lb,
		"$tmp/diff.$n.a", "$tmp/diff.$n.b");
	my @lines = grep { !/^@@/ } split /\n/, $out;
	splice @lines, $max if @lines > $max;
	return join("\n", @lines);
}

# The static scanner, run as a script on the files it is given.
my $sqlscan = "$tmp/sqlscan.pl";
write_file($sqlscan, <<'PERL');
use strict;
use warnings;

# sqlscan.pl MODE FILE...
#   symbols: print "FILE:LINE<tab>SYMBOL" for every C function the scripts
#            define with MODULE_PATHNAME (or $libdir/entitlock)
#   qualify: print "FILE:LINE: ..." for every object a statement creates or
#            names that is not qualified with schema entitlock
# Statements are split by a small tokenizer that knows comments, quoted
# strings and identifiers, and dollar-quoted bodies (whose text is dropped).

my $mode = shift @ARGV;
my $id = qr/(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_\$]*)/;
my $qname = qr/$id(?:\s*\.\s*$id)*/;
my $kinds = qr/(?:FUNCTION|PROCEDURE|AGGREGATE|ROUTINE|TABLE|VIEW|MATERIALIZED\s+VIEW|SEQUENCE|TYPE|DOMAIN|INDEX|STATISTICS|COLLATION|CONVERSION|FOREIGN\s+TABLE|OPERATOR\s+CLASS|OPERATOR\s+FAMILY|TEXT\s+SEARCH\s+\w+)/i;
my ($statements, $names, $problems) = (0, 0, 0);

sub statements {
	my ($file) = @_;
	open my $fh, '<', $file or die "$file: $!\n";
	local $/;
	my $src = <$fh>;
	close $fh;
	my (@out, $start);
	my $cur = '';
	my $add = sub {
		my ($text, $at) = @_;
		$start = $at if $cur eq '';
		$cur .= $text;
	};
	pos($src) = 0;
	while (pos($src) < length $src) {
		my $at = pos($src);
		if ($src =~ /\G--[^\n]*/gc) {
			next;
		} elsif ($src =~ m{\G/\*}gc) {
			my $depth = 1;
			while ($depth > 0 && $src =~ m{\G(?:[^/*]+|/\*|\*/|[/*])}gc) {
				my $t = substr($src, $-[0], $+[0] - $-[0]);
				$depth++ if $t eq '/*';
				$depth-- if $t eq '*/';
			}
		} elsif ($src =~ /\G((?:[EeNn])?'(?:[^']|'')*')/gc) {
			$add->($1, $at);
		} elsif ($src =~ /\G("(?:[^"]|"")*")/gc) {
			$add->($1, $at);
		} elsif ($src =~ /\G(\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$)/gc) {
			my $tag = $1;
			my $end = index($src, $tag, pos($src));
			die "$file: unterminated $tag\n" if $end < 0;
			pos($src) = $end + length $tag;
			$add->(' $body$ ', $at);
		} elsif ($src =~ /\G;/gc) {
			push @out, [$start, $cur] if $cur =~ /\S/;
			$cur = '';
		} elsif ($cur eq '' && $src =~ /\G\\[^\n]*/gc) {
			next;    # psql meta-command (\echo ... \quit)
		} elsif ($src =~ /\G\s+/gc) {
			$cur .= ' ' if $cur ne '';
		} elsif ($src =~ /\G([^\s;'"\$\-\/\\]+|.)/gcs) {
			$add->($1, $at);
		}
	}
	push @out, [$start, $cur] if $cur =~ /\S/;
	my @result;
	for my $s (@out) {
		my $line = 1 + (substr($src, 0, $s->[0]) =~ tr/\n//);
		(my $text = $s->[1]) =~ s/\s+$//;
		push @result, [$line, $text];
	}
	return @result;
}

# The parts of a possibly quoted, dotted name, unquoted.
sub parts {
	my ($name) = @_;
	my @p;
	while ($name =~ /\G\s*($id)\s*\.?/gc) {
		my $part = $1;
		if ($part =~ /^"(.*)"$/) { ($part = $1) =~ s/""/"/g; } else { $part = lc $part; }
		push @p, $part;
	}
	return @p;
}

# A comma-separated list of names, each maybe with an argument list.
sub name_list {
	my ($text) = @_;
	1 while $text =~ s/\([^()]*\)//g;
	$text =~ s/\s+(?:CASCADE|RESTRICT)\s*$//i;
	return grep { /\S/ } map { s/^\s+|\s+$//gr } split /,/, $text;
}

sub check_name {
	my ($where, $what, $name, $min_parts) = @_;
	$names++;
	my @p = parts($name);
	my $short = length($what) > 70 ? substr($what, 0, 70) . '...' : $what;
	if (@p < $min_parts) {
		print "$where: \"$name\" is not schema-qualified (in: $short)\n";
		$problems++;
	} elsif ($p[0] ne 'entitlock') {
		print "$where: \"$name\" is outside schema entitlock (in: $short)\n";
		$problems++;
	}
}

for my $file (@ARGV) {
	for my $st (statements($file)) {
		my ($line, $s) = @$st;
		my $where = "$file:$line";
		$statements++;
		if ($mode eq 'symbols') {
			next unless $s =~ /^CREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE)\s+($qname)\s*\(/i;
			my @p = parts($1);
			if ($s =~ /\bAS\s+'(?:MODULE_PATHNAME|\$libdir\/entitlock)'(?:\s*,\s*'([^']*)')?/i) {
				print "$where\t", (defined $1 ? $1 : $p[-1]), "\n";
			} elsif ($s =~ /\bLANGUAGE\s+'?c'?\b/i) {
				print "$where\t?C function $p[-1] does not name MODULE_PATHNAME\n";
			}
			next;
		}
		if ($s =~ /^CREATE\s+(?:OR\s+REPLACE\s+)?(?:(?:TEMP|TEMPORARY|UNLOGGED)\s+)?$kinds\s+(?:IF\s+NOT\s+EXISTS\s+)?($qname)/i &&
			$s !~ /^CREATE\s+(?:UNIQUE\s+)?INDEX\b/i) {
			check_name($where, $s, $1, 2);
		} elsif ($s =~ /^CREATE\s+OPERATOR\s+(?!CLASS\b|FAMILY\b)(\S+?)\s*\(/i) {
			my $op = $1;
			$names++;
			if ($op !~ /^(?:entitlock|"entitlock")\./) {
				print "$where: operator \"$op\" is not qualified with schema entitlock\n";
				$problems++;
			}
		}
		if ($s =~ /^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:(?:IF\s+NOT\s+EXISTS\s+)?$id\s+)?ON\s+(?:ONLY\s+)?($qname)/i) {
			check_name($where, $s, $1, 2);
		}
		if ($s =~ /^CREATE\s+(?:OR\s+REPLACE\s+)?(?:CONSTRAINT\s+)?TRIGGER\s+$id\s.*?\bON\s+($qname)/i ||
			$s =~ /^CREATE\s+POLICY\s+$id\s+ON\s+($qname)/i ||
			$s =~ /^CREATE\s+(?:OR\s+REPLACE\s+)?RULE\s+$id\s+AS\s+ON\s+\w+\s+TO\s+($qname)/i) {
			check_name($where, $s, $1, 2);
		}
		if ($s =~ /^ALTER\s+$kinds\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?($qname)/i ||
			$s =~ /^ALTER\s+EXTENSION\s+$id\s+(?:ADD|DROP)\s+$kinds\s+($qname)/i) {
			check_name($where, $s, $1, 2);
		}
		if ($s =~ /^DROP\s+$kinds\s+(?:CONCURRENTLY\s+)?(?:IF\s+EXISTS\s+)?(.*)$/i) {
			check_name($where, $s, $_, 2) for name_list($1);
		}
		if ($s =~ /^COMMENT\s+ON\s+$kinds\s+($qname)/i) {
			check_name($where, $s, $1, 2);
		} elsif ($s =~ /^COMMENT\s+ON\s+COLUMN\s+($qname)/i) {
			check_name($where, $s, $1, 3);
		} elsif ($s =~ /^COMMENT\s+ON\s+(?:CONSTRAINT|TRIGGER|POLICY|RULE)\s+$id\s+ON\s+(?:DOMAIN\s+)?($qname)/i) {
			check_name($where, $s, $1, 2);
		}
		if ($s =~ /^(?:GRANT|REVOKE)\b.*?\bON\s+(?!ALL\s|SCHEMA\s|DATABASE\s|LANGUAGE\s|FOREIGN\s|LARGE\s|TABLESPACE\s|PARAMETER\s)(?:(?:FUNCTION|PROCEDURE|ROUTINE|TABLE|SEQUENCE|TYPE|DOMAIN)\s+)?(.*?)\s+(?:TO|FROM)\s/i) {
			check_name($where, $s, $_, 2) for name_list($1);
		}
		while ($s =~ /pg_extension_config_dump\s*\(\s*'((?:[^']|'')*)'/gi) {
			check_name($where, $s, $1 =~ s/''/'/gr, 2);
		}
	}
}
print STDERR "sqlscan: $statements statements, $names names checked\n" if $mode eq 'qualify';
exit($problems ? 1 : 0);
PERL

# Everything the extension owns, one fact per line, without OIDs, so that
# two databases can be compared line by line.
my $snapshot_sql = <<'SQL';
\set ON_ERROR_STOP 1
SET search_path = pg_catalog;
SET client_min_messages = warning;

CREATE TEMP TABLE ext AS
SELECT * FROM pg_extension WHERE extname = 'entitlock';

-- The members, and what hangs off them through automatic and internal
-- dependencies: columns' defaults, constraints, indexes, row types, rules,
-- triggers, policies.  TOAST tables are left out (their names hold OIDs),
-- and so are internal triggers (likewise).
CREATE TEMP TABLE obj AS
WITH RECURSIVE m(classid, objid, objsubid, how, depth) AS (
	SELECT d.classid, d.objid, d.objsubid, 'member'::text, 0
	  FROM pg_depend AS d, ext
	 WHERE d.refclassid = 'pg_extension'::regclass
	   AND d.refobjid = ext.oid AND d.deptype = 'e'
	UNION
	SELECT d.classid, d.objid, d.objsubid,
		   'part of ' || pg_describe_object(d.refclassid, d.refobjid, 0) ||
		   CASE d.deptype WHEN 'a' THEN ' (auto)' ELSE ' (internal)' END,
		   m.depth + 1
	  FROM m
	  JOIN pg_depend AS d ON d.refclassid = m.classid AND d.refobjid = m.objid
	 WHERE d.deptype IN ('a', 'i') AND m.depth < 6
	   AND NOT EXISTS (SELECT 1 FROM pg_class AS c
					   WHERE d.classid = 'pg_class'::regclass AND c.oid = d.objid
						 AND c.relnamespace = 'pg_toast'::regnamespace)
	   AND NOT EXISTS (SELECT 1 FROM pg_trigger AS t
					   WHERE d.classid = 'pg_trigger'::regclass AND t.oid = d.objid
						 AND t.tgisinternal)
)
SELECT DISTINCT ON (classid, objid, objsubid) classid, objid, objsubid, how
  FROM m
 ORDER BY classid, objid, objsubid, how <> 'member', how COLLATE "C";

-- Relations to describe: those above, and those behind composite types.
CREATE TEMP TABLE rel AS
SELECT c.oid, pg_describe_object('pg_class'::regclass, c.oid, 0) AS what
  FROM pg_class AS c
 WHERE c.oid IN (SELECT objid FROM obj WHERE classid = 'pg_class'::regclass)
	OR (c.relkind = 'c' AND
		c.reltype IN (SELECT objid FROM obj WHERE classid = 'pg_type'::regclass));

CREATE FUNCTION pg_temp.acl_lines(what text, acl aclitem[])
RETURNS SETOF text LANGUAGE sql AS $$
	SELECT what || ': ' ||
		   CASE WHEN e.grantee = 0 THEN 'PUBLIC' ELSE e.grantee::regrole::text END ||
		   ' ' || e.privilege_type ||
		   CASE WHEN e.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END ||
		   ' (granted by ' || e.grantor::regrole::text || ')'
	  FROM aclexplode(acl) AS e
$$;

CREATE FUNCTION pg_temp.text_lines(what text, body text)
RETURNS SETOF text LANGUAGE sql AS $$
	SELECT what || ' ' || lpad(l.n::text, 4, '0') || ': ' || l.t
	  FROM regexp_split_to_table(body, E'\n') WITH ORDINALITY AS l(t, n)
$$;

SELECT line FROM (
	-- the extension itself
	SELECT 'extension entitlock: version ' || extversion ||
		   ', relocatable ' || extrelocatable ||
		   ', schema ' || extnamespace::regnamespace ||
		   ', owner ' || extowner::regrole AS line
	  FROM ext
	UNION ALL
	-- tables and sequences whose contents pg_dump saves
	SELECT 'config dump: ' || coalesce(c.oid::regclass::text, 'missing relation') ||
		   ' (relkind ' || coalesce(c.relkind::text, '?') || '), condition ' ||
		   coalesce(quote_literal(u.cond), 'NULL')
	  FROM ext, unnest(ext.extconfig, ext.extcondition) AS u(cfg, cond)
	  LEFT JOIN pg_class AS c ON c.oid = u.cfg
	UNION ALL
	SELECT 'object ' || pg_describe_object(classid, objid, objsubid) || ': ' || how
	  FROM obj
	UNION ALL
	-- objects in the schema that are not the extension's
	SELECT 'in schema entitlock but not part of the extension: ' ||
		   pg_describe_object(x.cls, x.oid, 0)
	  FROM (SELECT 'pg_class'::regclass, oid FROM pg_class
			 WHERE relnamespace = 'entitlock'::regnamespace
			UNION ALL
			SELECT 'pg_proc'::regclass, oid FROM pg_proc
			 WHERE pronamespace = 'entitlock'::regnamespace
			UNION ALL
			SELECT 'pg_type'::regclass, oid FROM pg_type
			 WHERE typnamespace = 'entitlock'::regnamespace
			UNION ALL
			SELECT 'pg_operator'::regclass, oid FROM pg_operator
			 WHERE oprnamespace = 'entitlock'::regnamespace
			UNION ALL
			SELECT 'pg_collation'::regclass, oid FROM pg_collation
			 WHERE collnamespace = 'entitlock'::regnamespace
			UNION ALL
			SELECT 'pg_statistic_ext'::regclass, oid FROM pg_statistic_ext
			 WHERE stxnamespace = 'entitlock'::regnamespace
			UNION ALL
			SELECT 'pg_opclass'::regclass, oid FROM pg_opclass
			 WHERE opcnamespace = 'entitlock'::regnamespace
			UNION ALL
			SELECT 'pg_opfamily'::regclass, oid FROM pg_opfamily
			 WHERE opfnamespace = 'entitlock'::regnamespace) AS x(cls, oid)
	 WHERE NOT EXISTS (SELECT 1 FROM obj
					   WHERE obj.classid = x.cls AND obj.objid = x.oid)
	UNION ALL
	-- the schema
	SELECT 'schema entitlock | owner: ' || nspowner::regrole
	  FROM pg_namespace WHERE nspname = 'entitlock'
	UNION ALL
	SELECT pg_temp.acl_lines('schema entitlock | acl',
							 coalesce(nspacl, acldefault('n', nspowner)))
	  FROM pg_namespace WHERE nspname = 'entitlock'
	UNION ALL
	-- functions
	SELECT 'function ' || p.oid::regprocedure || ' | ' || a.k || ': ' ||
		   coalesce(a.v, 'NULL')
	  FROM obj
	  JOIN pg_proc AS p ON obj.classid = 'pg_proc'::regclass AND p.oid = obj.objid
	  JOIN pg_language AS l ON l.oid = p.prolang,
	  LATERAL (VALUES
		('kind', p.prokind::text),
		('language', l.lanname::text),
		('arguments', pg_get_function_arguments(p.oid)),
		('result', pg_get_function_result(p.oid)),
		('volatility', CASE p.provolatile WHEN 'i' THEN 'immutable'
						 WHEN 's' THEN 'stable' ELSE 'volatile' END),
		('strict', p.proisstrict::text),
		('security definer', p.prosecdef::text),
		('leakproof', p.proleakproof::text),
		('parallel', CASE p.proparallel WHEN 's' THEN 'safe'
					   WHEN 'r' THEN 'restricted' ELSE 'unsafe' END),
		('cost', p.procost::text),
		('rows', p.prorows::text),
		('config (SET)', coalesce(p.proconfig::text, 'none')),
		('support', p.prosupport::regproc::text),
		('library (probin)', coalesce(p.probin, 'none')),
		('owner', p.proowner::regrole::text),
		('sql body', pg_get_function_sqlbody(p.oid))) AS a(k, v)
	UNION ALL
	SELECT pg_temp.text_lines('function ' || p.oid::regprocedure || ' | source line',
							  p.prosrc)
	  FROM obj
	  JOIN pg_proc AS p ON obj.classid = 'pg_proc'::regclass AND p.oid = obj.objid
	UNION ALL
	SELECT pg_temp.acl_lines('function ' || p.oid::regprocedure || ' | acl',
							 coalesce(p.proacl, acldefault('f', p.proowner)))
	  FROM obj
	  JOIN pg_proc AS p ON obj.classid = 'pg_proc'::regclass AND p.oid = obj.objid
	UNION ALL
	-- relations: tables, views, sequences, indexes, composite types
	SELECT rel.what || ' | ' || a.k || ': ' || a.v
	  FROM rel
	  JOIN pg_class AS c ON c.oid = rel.oid,
	  LATERAL (VALUES
		('kind', c.relkind::text),
		('persistence', c.relpersistence::text),
		('access method', coalesce((SELECT amname::text FROM pg_am WHERE oid = c.relam), 'none')),
		('options', coalesce(c.reloptions::text, 'none')),
		('tablespace', coalesce((SELECT spcname::text FROM pg_tablespace WHERE oid = c.reltablespace), 'default')),
		('owner', c.relowner::regrole::text),
		('row security', CASE WHEN c.relkind IN ('r', 'p') THEN c.relrowsecurity || ', forced ' || c.relforcerowsecurity END),
		('replica identity', CASE WHEN c.relkind IN ('r', 'p', 'm') THEN c.relreplident::text END),
		('partition key', CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END),
		('partition bound', pg_get_expr(c.relpartbound, c.oid)),
		('inherits', (SELECT string_agg(i.inhparent::regclass::text, ', ' ORDER BY i.inhseqno)
						FROM pg_inherits AS i WHERE i.inhrelid = c.oid))) AS a(k, v)
	 WHERE a.v IS NOT NULL
	UNION ALL
	SELECT rel.what || ' | column ' || lpad(a.attnum::text, 3, '0') || ': ' ||
		   CASE WHEN a.attisdropped THEN '(dropped column)' ELSE
		   quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod) ||
		   CASE WHEN a.attcollation <> 0 THEN ' COLLATE ' || a.attcollation::regcollation ELSE '' END ||
		   CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END ||
		   coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '') ||
		   CASE a.attidentity WHEN 'a' THEN ' GENERATED ALWAYS AS IDENTITY'
			 WHEN 'd' THEN ' GENERATED BY DEFAULT AS IDENTITY' ELSE '' END ||
		   CASE a.attgenerated WHEN 's' THEN ' (generated, stored)' ELSE '' END ||
		   ', storage ' || a.attstorage::text ||
		   CASE WHEN a.attcompression <> '' THEN ', compression ' || a.attcompression::text ELSE '' END ||
		   CASE WHEN a.attstattarget <> -1 THEN ', statistics ' || a.attstattarget ELSE '' END ||
		   -- pg_attver: a per-column version stamp some builds keep here
		   coalesce(', options ' || (SELECT array_agg(o ORDER BY o)::text FROM unnest(a.attoptions) AS o
									  WHERE o NOT LIKE 'pg\_attver=%'), '') ||
		   CASE WHEN a.attinhcount > 0 OR NOT a.attislocal
				THEN ', inherited ' || a.attinhcount || ' local ' || a.attislocal ELSE '' END
		   END
	  FROM rel
	  JOIN pg_attribute AS a ON a.attrelid = rel.oid AND a.attnum > 0
	  LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
	UNION ALL
	SELECT pg_temp.acl_lines(rel.what || ' | acl',
							 coalesce(c.relacl, acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char",
														   c.relowner)))
	  FROM rel JOIN pg_class AS c ON c.oid = rel.oid
	 WHERE c.relkind NOT IN ('i', 'I', 'c')
	UNION ALL
	SELECT pg_temp.acl_lines(rel.what || ' | acl on column ' || quote_ident(a.attname), a.attacl)
	  FROM rel
	  JOIN pg_attribute AS a ON a.attrelid = rel.oid AND a.attnum > 0 AND a.attacl IS NOT NULL
	UNION ALL
	SELECT rel.what || ' | index: ' || pg_get_indexdef(i.indexrelid) ||
		   CASE WHEN i.indisprimary THEN ', primary key' ELSE '' END ||
		   CASE WHEN i.indisexclusion THEN ', exclusion' ELSE '' END ||
		   CASE WHEN NOT i.indimmediate THEN ', deferrable' ELSE '' END ||
		   CASE WHEN i.indisclustered THEN ', clustered' ELSE '' END ||
		   CASE WHEN NOT i.indisvalid THEN ', INVALID' ELSE '' END ||
		   CASE WHEN i.indisreplident THEN ', replica identity' ELSE '' END ||
		   CASE WHEN i.indnullsnotdistinct THEN ', nulls not distinct' ELSE '' END
	  FROM rel JOIN pg_index AS i ON i.indexrelid = rel.oid
	UNION ALL
	SELECT pg_temp.text_lines(rel.what || ' | definition line', pg_get_viewdef(c.oid))
	  FROM rel JOIN pg_class AS c ON c.oid = rel.oid
	 WHERE c.relkind IN ('v', 'm')
	UNION ALL
	SELECT rel.what || ' | sequence: ' || format_type(s.seqtypid, NULL) ||
		   ' start ' || s.seqstart || ' increment ' || s.seqincrement ||
		   ' min ' || s.seqmin || ' max ' || s.seqmax || ' cache ' || s.seqcache ||
		   CASE WHEN s.seqcycle THEN ' cycle' ELSE ' no cycle' END
	  FROM rel JOIN pg_sequence AS s ON s.seqrelid = rel.oid
	UNION ALL
	SELECT rel.what || ' | owned by ' ||
		   pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid) ||
		   ' (' || d.deptype::text || ')'
	  FROM rel
	  JOIN pg_class AS c ON c.oid = rel.oid AND c.relkind = 'S'
	  JOIN pg_depend AS d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid
			AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0
			AND d.deptype IN ('a', 'i')
	UNION ALL
	-- constraints (of tables and of domains)
	SELECT pg_describe_object(obj.classid, obj.objid, 0) || ' | definition: ' ||
		   pg_get_constraintdef(k.oid) ||
		   CASE WHEN k.condeferrable THEN ' DEFERRABLE' ELSE '' END ||
		   CASE WHEN k.condeferred THEN ' INITIALLY DEFERRED' ELSE '' END ||
		   CASE WHEN NOT k.convalidated THEN ' NOT VALID' ELSE '' END ||
		   CASE WHEN k.connoinherit THEN ' NO INHERIT' ELSE '' END
	  FROM obj JOIN pg_constraint AS k
			ON obj.classid = 'pg_constraint'::regclass AND k.oid = obj.objid
	UNION ALL
	-- triggers, rules, policies, statistics objects
	SELECT pg_describe_object(obj.classid, obj.objid, 0) || ' | definition: ' ||
		   pg_get_triggerdef(t.oid) || ', enabled ' || t.tgenabled::text
	  FROM obj JOIN pg_trigger AS t
			ON obj.classid = 'pg_trigger'::regclass AND t.oid = obj.objid
	UNION ALL
	SELECT pg_describe_object(obj.classid, obj.objid, 0) || ' | definition: ' ||
		   pg_get_ruledef(r.oid) || ', enabled ' || r.ev_enabled::text
	  FROM obj JOIN pg_rewrite AS r
			ON obj.classid = 'pg_rewrite'::regclass AND r.oid = obj.objid
	 WHERE r.rulename <> '_RETURN'
	UNION ALL
	SELECT pg_describe_object(obj.classid, obj.objid, 0) || ' | definition: ' ||
		   p.polcmd::text || CASE WHEN p.polpermissive THEN ' permissive' ELSE ' restrictive' END ||
		   ' to ' || (SELECT string_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE r::regrole::text END, ', ' ORDER BY 1)
						FROM unnest(p.polroles) AS r) ||
		   coalesce(' using ' || pg_get_expr(p.polqual, p.polrelid), '') ||
		   coalesce(' with check ' || pg_get_expr(p.polwithcheck, p.polrelid), '')
	  FROM obj JOIN pg_policy AS p
			ON obj.classid = 'pg_policy'::regclass AND p.oid = obj.objid
	UNION ALL
	SELECT pg_describe_object(obj.classid, obj.objid, 0) || ' | definition: ' ||
		   pg_get_statisticsobjdef(obj.objid)
	  FROM obj WHERE obj.classid = 'pg_statistic_ext'::regclass
	UNION ALL
	-- types (domains, enums, ranges, base and composite types)
	SELECT pg_describe_object(obj.classid, obj.objid, 0) || ' | type: ' ||
		   t.typtype::text || ' category ' || t.typcategory::text || ' length ' || t.typlen ||
		   ' byval ' || t.typbyval || ' align ' || t.typalign::text ||
		   ' storage ' || t.typstorage::text ||
		   CASE WHEN t.typcollation <> 0 THEN ' COLLATE ' || t.typcollation::regcollation ELSE '' END ||
		   CASE WHEN t.typtype = 'd' THEN ' over ' || format_type(t.typbasetype, t.typtypmod) ||
				CASE WHEN t.typnotnull THEN ' NOT NULL' ELSE '' END ||
				coalesce(' DEFAULT ' || pg_get_expr(t.typdefaultbin, 0), '') ELSE '' END ||
		   CASE WHEN t.typtype = 'e' THEN ' labels ' ||
				(SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
				   FROM pg_enum AS e WHERE e.enumtypid = t.oid) ELSE '' END ||
		   CASE WHEN t.typtype = 'r' THEN ' range of ' ||
				(SELECT format_type(r.rngsubtype, NULL) FROM pg_range AS r WHERE r.rngtypid = t.oid)
				ELSE '' END ||
		   CASE WHEN t.typtype = 'b' THEN ' input ' || t.typinput::regproc ||
				' output ' || t.typoutput::regproc || ' receive ' || t.typreceive::regproc ||
				' send ' || t.typsend::regproc ELSE '' END
	  FROM obj JOIN pg_type AS t ON obj.classid = 'pg_type'::regclass AND t.oid = obj.objid
	UNION ALL
	SELECT pg_temp.acl_lines(pg_describe_object(obj.classid, obj.objid, 0) || ' | acl',
							 coalesce(t.typacl, acldefault('T', t.typowner)))
	  FROM obj JOIN pg_type AS t ON obj.classid = 'pg_type'::regclass AND t.oid = obj.objid
	 WHERE obj.how = 'member'
	UNION ALL
	-- operators
	SELECT pg_describe_object(obj.classid, obj.objid, 0) || ' | definition: ' ||
		   o.oprkind::text || ' ' || o.oprcode::regproc || ' returns ' || format_type(o.oprresult, NULL) ||
		   ' commutator ' || o.oprcom::regoperator || ' negator ' || o.oprnegate::regoperator ||
		   ' restrict ' || o.oprrest::regproc || ' join ' || o.oprjoin::regproc ||
		   ' merges ' || o.oprcanmerge || ' hashes ' || o.oprcanhash
	  FROM obj JOIN pg_operator AS o
			ON obj.classid = 'pg_operator'::regclass AND o.oid = obj.objid
	UNION ALL
	-- casts
	SELECT pg_describe_object(obj.classid, obj.objid, 0) || ' | definition: ' ||
		   'function ' || coalesce(NULLIF(k.castfunc, 0)::regprocedure::text, 'none') ||
		   ' context ' || k.castcontext::text || ' method ' || k.castmethod::text
	  FROM obj JOIN pg_cast AS k ON obj.classid = 'pg_cast'::regclass AND k.oid = obj.objid
	UNION ALL
	-- comments on all of the above, their columns, and the schema
	SELECT 'comment on ' || pg_describe_object(d.classoid, d.objoid, d.objsubid) ||
		   ': ' || d.description
	  FROM pg_description AS d
	 WHERE (d.classoid, d.objoid) IN (SELECT classid, objid FROM obj)
		OR (d.classoid = 'pg_namespace'::regclass AND d.objoid = 'entitlock'::regnamespace)
		OR (d.classoid = 'pg_class'::regclass AND d.objoid IN (SELECT oid FROM rel))
	UNION ALL
	-- the privileges pg_dump treats as the extension's own
	SELECT pg_temp.acl_lines('initial privileges (' || ip.privtype::text || ') of ' ||
							 pg_describe_object(ip.classoid, ip.objoid, ip.objsubid),
							 ip.initprivs)
	  FROM pg_init_privs AS ip
	 WHERE (ip.classoid, ip.objoid) IN (SELECT classid, objid FROM obj)
		OR (ip.classoid = 'pg_namespace'::regclass AND ip.objoid = 'entitlock'::regnamespace)
) AS facts
ORDER BY line COLLATE "C";
SQL

# Rules every database must satisfy, whatever its history ("problem: ..."
# lines), and the C symbols its functions call ("csym: ..." lines).
my $rules_sql = <<'SQL';
\set ON_ERROR_STOP 1
SET search_path = pg_catalog;
WITH ext AS (SELECT * FROM pg_extension WHERE extname = 'entitlock'),
members AS (
	SELECT d.classid, d.objid, d.objsubid
	  FROM pg_depend AS d, ext
	 WHERE d.refclassid = 'pg_extension'::regclass
	   AND d.refobjid = ext.oid AND d.deptype = 'e'
), funcs AS (
	SELECT p.*, l.lanname
	  FROM members JOIN pg_proc AS p ON members.classid = 'pg_proc'::regclass AND p.oid = members.objid
	  JOIN pg_language AS l ON l.oid = p.prolang
)
SELECT 'problem: ' || c.oid::regclass || ' is not registered with pg_extension_config_dump, so pg_dump would lose its contents'
  FROM members, ext, pg_class AS c
 WHERE members.classid = 'pg_class'::regclass AND c.oid = members.objid
   AND c.relkind IN ('r', 'p', 'S')
   AND NOT c.oid = ANY (coalesce(ext.extconfig, '{}'))
UNION ALL
SELECT 'problem: pg_extension_config_dump names ' || cfg || ', which is not a table or sequence of the extension'
  FROM ext, unnest(ext.extconfig) AS cfg
 WHERE cfg NOT IN (SELECT objid FROM members WHERE classid = 'pg_class'::regclass)
UNION ALL
SELECT 'problem: function ' || oid::regprocedure || ' (LANGUAGE ' || lanname ||
	   ') does not pin search_path with SET, so it depends on the caller''s'
  FROM funcs
 WHERE lanname NOT IN ('c', 'internal') AND prosqlbody IS NULL
   AND NOT EXISTS (SELECT 1 FROM unnest(proconfig) AS s WHERE s LIKE 'search\_path=%')
UNION ALL
SELECT 'problem: C function ' || oid::regprocedure || ' loads ' || coalesce(probin, 'nothing') ||
	   ', not $libdir/entitlock'
  FROM funcs
 WHERE lanname = 'c' AND probin IS DISTINCT FROM '$libdir/entitlock'
UNION ALL
SELECT 'problem: ' || pg_describe_object(classid, objid, objsubid) || ' is in schema ' ||
	   (pg_identify_object(classid, objid, objsubid)).schema || ', not entitlock'
  FROM members
 WHERE (pg_identify_object(classid, objid, objsubid)).schema <> 'entitlock'
UNION ALL
SELECT 'csym: ' || prosrc || ' ' || oid::regprocedure
  FROM funcs WHERE lanname = 'c';
SQL

# Data put in through the API at the old version.  One transaction, so a
# failure leaves nothing behind.
my $seed_api_sql = <<'SQL';
SELECT * FROM entitlock.record_usage_if_under_limit('ws:1', 'api', 3, 10);
SELECT * FROM entitlock.record_usage_if_under_limit('ws:1', 'api', 8, 10);
SELECT * FROM entitlock.record_usage_if_under_limit('ws:1', 'api', 2, 10, 'lifetime', 'req-1');
SELECT * FROM entitlock.record_usage_if_under_limit('ws:1', 'api', 100, 10, 'lifetime', 'req-denied');
SELECT entitlock.record_usage('ws:1', 'seats', 5);
SELECT entitlock.record_usage('ws:1', 'seats', -2);
SELECT entitlock.record_usage('ws:2', 'api', 7, 'lifetime', 'm-1');
SELECT entitlock.record_usage('ws:2', 'api', 1);
SELECT * FROM entitlock.record_usage_if_under_limit('ws:2', 'api', 1, 5, 'month');
SELECT * FROM entitlock.idempotency_begin('order-1', 'fp-1');
SELECT entitlock.idempotency_complete('order-1', '{"id": 1}');
SELECT * FROM entitlock.idempotency_begin('order-2');
SELECT entitlock.first_time('webhook-1');
SELECT count(entitlock.lease_release('tmp-' || g, l.token))
  FROM generate_series(1, 5) AS g, entitlock.lease_acquire('tmp-' || g, '1 minute') AS l;
SELECT 'lease job-a', token, fencing FROM entitlock.lease_acquire('job-a', '1 hour', 'worker-1');
SELECT 'lease job-b', token, fencing FROM entitlock.lease_acquire('job-b', '1 hour', 'worker-2');
SQL


# The same kinds of rows written straight into version 1.0's tables.  A
# library whose tables changed refuses to work on 1.0's (by design, until
# ALTER EXTENSION UPDATE runs), so the API cannot seed 1.0 then; these rows
# still can.  Loaded alongside the API's rows whenever the old version is
# 1.0, so that they stay tested.
my $seed_fixture_sql = <<'SQL';
INSERT INTO entitlock.usage_counter (subject, feature, period, period_start, period_end, used)
VALUES ('fx:1', 'api', 'lifetime', '-infinity', NULL, 4);
INSERT INTO entitlock.usage_idempotency (subject, feature, idempotency_key, period, amount,
										 allowed, used, period_end, recorded_at)
VALUES ('fx:1', 'api', 'fx-req', 'lifetime', 4, true, 4, NULL, now());
INSERT INTO entitlock.idempotency_key (key_hash, key, fingerprint, response, claimed_at,
									   expires_at, completed_at)
VALUES (entitlock.key('entitlock.idempotency', 'fx-order'), 'fx-order', 'fx-fp', '{"fx": true}',
		now(), now() + interval '1 day', now()),
	   (entitlock.key('entitlock.idempotency', 'fx-hook'), 'fx-hook', NULL, NULL,
		now(), now() + interval '1 day', NULL);
INSERT INTO entitlock.lease_record (key_hash, name, token, holder, fencing, acquired_at, expires_at)
VALUES (entitlock.key('entitlock.lease', 'fx-job'), 'fx-job', 'f1f1f1f1-0000-4000-8000-000000000001',
		'fx-worker', 1000, now(), now() + interval '1 hour');
SELECT setval('entitlock.lease_fencing', greatest(1000, (SELECT last_value FROM entitlock.lease_fencing)));
SQL
my $fixture_token = 'f1f1f1f1-0000-4000-8000-000000000001';

# probe_sql(API, FIXTURE): read-only questions about the data (rolled
# back), asked before and after the update; the answers must not change.
sub probe_sql
{
	my ($api, $fixture) = @_;
	my $s = "BEGIN;\n" . q{CREATE FUNCTION pg_temp.sqlstate_of(q text) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN EXECUTE q; RETURN 'no error'; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $f$;
};
	$s .= <<'SQL' if $api;
SELECT 'usage ws:1 api', entitlock.usage('ws:1', 'api');
SELECT 'usage ws:1 seats', entitlock.usage('ws:1', 'seats');
SELECT 'usage ws:2 api', entitlock.usage('ws:2', 'api');
SELECT 'retry req-1', r.* FROM entitlock.record_usage_if_under_limit('ws:1', 'api', 2, 10, 'lifetime', 'req-1') AS r;
SELECT 'retry req-denied', r.* FROM entitlock.record_usage_if_under_limit('ws:1', 'api', 100, 10, 'lifetime', 'req-denied') AS r;
SELECT 'retry m-1', entitlock.record_usage('ws:2', 'api', 7, 'lifetime', 'm-1');
SELECT 'usage after the retries', entitlock.usage('ws:1', 'api'), entitlock.usage('ws:2', 'api');
SELECT 'replay order-1', b.* FROM entitlock.idempotency_begin('order-1', 'fp-1') AS b;
SELECT 'replay order-2', b.* FROM entitlock.idempotency_begin('order-2') AS b;
SELECT 'order-1 with another fingerprint', pg_temp.sqlstate_of($q$SELECT entitlock.idempotency_begin('order-1', 'fp-2')$q$);
SELECT 'first_time webhook-1', entitlock.first_time('webhook-1');
SELECT 'job-a is held', count(*) = 0 FROM entitlock.lease_acquire('job-a', '1 minute');
SELECT 'a stranger releases job-a', entitlock.lease_release('job-a', '00000000-0000-4000-8000-000000000000');
SQL
	$s .= <<'SQL' if $fixture;
SELECT 'usage fx:1 api', entitlock.usage('fx:1', 'api');
SELECT 'retry fx-req', r.* FROM entitlock.record_usage_if_under_limit('fx:1', 'api', 4, 10, 'lifetime', 'fx-req') AS r;
SELECT 'usage fx:1 api after the retry', entitlock.usage('fx:1', 'api');
SELECT 'replay fx-order', b.* FROM entitlock.idempotency_begin('fx-order', 'fx-fp') AS b;
SELECT 'fx-order with another fingerprint', pg_temp.sqlstate_of($q$SELECT entitlock.idempotency_begin('fx-order', 'other')$q$);
SELECT 'first_time fx-hook', entitlock.first_time('fx-hook');
SELECT 'fx-job is held', count(*) = 0 FROM entitlock.lease_acquire('fx-job', '1 minute');
SQL
	$s .= "SELECT 'lease', name, holder, fencing FROM entitlock.leases ORDER BY name;\nROLLBACK;\n";
	return $s;
}

# probe_expected(API, FIXTURE, FENCING_A, FENCING_B)
sub probe_expected
{
	my ($api, $fixture, $fa, $fb) = @_;
	my $e = '';
	$e .= <<'EOT' if $api;
usage ws:1 api|5
usage ws:1 seats|3
usage ws:2 api|8
retry req-1|t|5|5|
retry req-denied|f|5|5|
retry m-1|7
usage after the retries|5|8
replay order-1|replay|{"id": 1}
replay order-2|replay|
order-1 with another fingerprint|22023
first_time webhook-1|f
job-a is held|t
a stranger releases job-a|f
EOT
	$e .= <<'EOT' if $fixture;
usage fx:1 api|4
retry fx-req|t|4|6|
usage fx:1 api after the retry|4
replay fx-order|replay|{"fx": true}
fx-order with another fingerprint|22023
first_time fx-hook|f
fx-job is held|t
EOT
	my @leases;
	push @leases, 'lease|fx-job|fx-worker|1000' if $fixture;
	push @leases, "lease|job-a|worker-1|$fa", "lease|job-b|worker-2|$fb" if $api;
	$e .= join('', map { "$_\n" } sort @leases);
	chomp $e;
	return $e;
}

# mutate_sql(API, FIXTURE): after the update, the data must go on working.
# Variables: token_a, token_b, max (the last fencing number handed out),
# fixture_token.
sub mutate_sql
{
	my ($api, $fixture) = @_;
	my $s = '';
	$s .= <<'SQL' if $api;
SELECT 'renew job-a with its old token', entitlock.lease_renew('job-a', :'token_a', '2 hours');
SELECT 'release job-b with its old token', entitlock.lease_release('job-b', :'token_b');
SELECT 'job-b taken again, fencing above the old ones', fencing > :max FROM entitlock.lease_acquire('job-b', '1 hour', 'worker-3');
SELECT 'usage ws:1 api goes on from 5', r.* FROM entitlock.record_usage_if_under_limit('ws:1', 'api', 5, 10) AS r;
SELECT 'usage ws:1 api at its limit', r.* FROM entitlock.record_usage_if_under_limit('ws:1', 'api', 1, 10) AS r;
SELECT 'refund req-1, an old key', entitlock.refund_usage('ws:1', 'api', 'req-1');
SELECT 'refund req-1 only once', entitlock.refund_usage('ws:1', 'api', 'req-1');
SELECT 'refund req-denied, which recorded nothing', entitlock.refund_usage('ws:1', 'api', 'req-denied');
SELECT 'refund m-1, an old record_usage key', entitlock.refund_usage('ws:2', 'api', 'm-1');
SELECT 'usage after the refunds', entitlock.usage('ws:1', 'api'), entitlock.usage('ws:2', 'api');
SELECT 'first_time webhook-2', entitlock.first_time('webhook-2');
BEGIN;
SELECT 'begin order-3', status FROM entitlock.idempotency_begin('order-3');
SELECT 'complete order-3', entitlock.idempotency_complete('order-3', '{"id": 3}')::text;
COMMIT;
SELECT 'replay order-3', b.* FROM entitlock.idempotency_begin('order-3') AS b;
SQL
	$s .= <<'SQL' if $fixture;
SELECT 'renew fx-job with its old token', entitlock.lease_renew('fx-job', :'fixture_token', '2 hours');
SELECT 'usage fx:1 api goes on from 4', r.* FROM entitlock.record_usage_if_under_limit('fx:1', 'api', 6, 10) AS r;
SELECT 'refund fx-req, a key stored as a 1.0 row', entitlock.refund_usage('fx:1', 'api', 'fx-req');
SELECT 'release fx-job with its old token', entitlock.lease_release('fx-job', :'fixture_token');
SQL
	$s .= <<'SQL';
SELECT 'a new lease, fencing above the old ones', fencing > :max FROM entitlock.lease_acquire('job-new', '1 hour');
SELECT 'purge_expired', entitlock.purge_expired();
BEGIN;
SELECT 'try_lock', entitlock.try_lock('upgrade-check');
SELECT 'holders', count(*) FROM entitlock.holders('upgrade-check');
COMMIT;
SQL
	return $s;
}

sub mutate_expected
{
	my ($api, $fixture) = @_;
	my $e = '';
	$e .= <<'EOT' if $api;
renew job-a with its old token|t
release job-b with its old token|t
job-b taken again, fencing above the old ones|t
usage ws:1 api goes on from 5|t|10|0|
usage ws:1 api at its limit|f|10|0|
refund req-1, an old key|2
refund req-1 only once|0
refund req-denied, which recorded nothing|0
refund m-1, an old record_usage key|7
usage after the refunds|8|1
first_time webhook-2|t
begin order-3|new
complete order-3|
replay order-3|replay|{"id": 3}
EOT
	$e .= <<'EOT' if $fixture;
renew fx-job with its old token|t
usage fx:1 api goes on from 4|t|10|0|
refund fx-req, a key stored as a 1.0 row|4
release fx-job with its old token|t
EOT
	$e .= <<'EOT';
a new lease, fencing above the old ones|t
purge_expired|0
try_lock|t
holders|1
EOT
	chomp $e;
	return $e;
}

# table_columns(NODE, DB): [relation, columns] for each table and sequence
# of the extension, columns as they are now.
sub table_columns
{
	my ($n, $db) = @_;
	my $out = q1($n, $db, q{
		SELECT c.oid::regclass || E'\t' ||
			   CASE c.relkind WHEN 'S' THEN 'last_value, is_called'
			   ELSE string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) END
		  FROM pg_depend AS d
		  JOIN pg_extension AS e ON d.refobjid = e.oid
		  JOIN pg_class AS c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid
		  LEFT JOIN pg_attribute AS a
				 ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
		 WHERE e.extname = 'entitlock' AND d.refclassid = 'pg_extension'::regclass
		   AND d.deptype = 'e' AND c.relkind IN ('r', 'p', 'S')
		 GROUP BY c.oid, c.relkind ORDER BY c.oid::regclass::text});
	return [ map { [ split /\t/ ] } split /\n/, $out ];
}

# table_rows(NODE, DB, COLUMNS): every row of those tables, those columns
# only.
sub table_rows
{
	my ($n, $db, $cols) = @_;
	return '' unless @$cols;
	my $sql = join('',
		map { "SELECT '$_->[0]: ' || t::text FROM (SELECT $_->[1] FROM $_->[0]) AS t ORDER BY 1;\n" }
		  @$cols);
	my ($rc, $out, $err) = psql_run($n, $db, $sql, on_error_stop => 0);
	return $out . ($err ne '' ? "\n$err" : '');
}

# dump_schema(NODE, DB): pg_dump's view of every member, without what is
# specific to one database (OIDs, xids, sequence positions).
sub dump_schema
{
	my ($n, $db) = @_;
	my ($rc, $out, $err) =
	  run_cmd('pg_dump', '--binary-upgrade', '--schema-only', '-d', $n->connstr($db));
	return "pg_dump failed: $err" if $rc;
	my @lines;
	for (split /\n/, $out)
	{
		next if /^\\(?:un)?restrict / || /binary_upgrade_set_next_/ || /^SELECT pg_catalog\.setval\(/;
		s/(binary_upgrade_create_empty_extension\(.*, )'\{[0-9,]*\}'(, '\{)/$1'{...}'$2/;
		s/relfrozenxid = '[0-9]+', relminmxid = '[0-9]+'/relfrozenxid = ..., relminmxid = .../;
		s/WHERE oid = '[0-9]+'/WHERE oid = .../;
		push @lines, $_;
	}
	return join("\n", @lines);
}

# The installed library's symbols.
my %nm;
{
	my ($rc, $out, $err) = run_cmd('nm', '-D', '--defined-only', "$libdir/entitlock.so");
	for (split /\n/, $out)
	{
		my @f = split ' ';
		$nm{ $f[2] } = 1 if @f >= 3;
	}
}

# missing_symbols(LINES): each line "WHERE<TAB>SYMBOL"; every symbol and
# its pg_finfo_ record must be in the installed library.  The problems.
sub missing_symbols
{
	my @problems;
	for (@_)
	{
		my ($where, $sym) = split /\t/;
		if ($sym =~ /^\?(.*)/)
		{
			push @problems, "$where: $1";
			next;
		}
		push @problems, "$where: C symbol $sym (or pg_finfo_$sym) is not in $libdir/entitlock.so"
		  unless $nm{$sym} && $nm{"pg_finfo_$sym"};
	}
	return @problems;
}

# Results of the comparisons: [name, ok, detail] each.  In the main run
# each becomes an ok(); in the self-test they are the verdict on a
# synthetic version.
sub result { return [ $_[0], $_[1] ? 1 : 0, $_[2] // '' ]; }

sub same_text
{
	my ($what, $a, $b, $la, $lb, $max) = @_;
	return result("$what are the same", $a eq $b, text_diff($a, $b, $la, $lb, $max // 80));
}

# rules_check(NODE, DB, LABEL): the per-database rules, and the C symbols
# its functions call.
sub rules_check
{
	my ($n, $db, $label) = @_;
	my ($rc, $out, $err) = psql_run($n, $db, $rules_sql);
	return result("$label: rules query runs", 0, $err) if $rc;
	my @problems = map { s/^problem: //r } grep { /^problem: / } split /\n/, $out;
	my @csym = map { /^csym: (\S+) (.*)$/ ? "$label: function $2\t$1" : () } split /\n/, $out;
	push @problems, missing_symbols(@csym);
	return result(
		"$label: tables and sequences registered for pg_dump, search_path pinned, C symbols present",
		!@problems, join("\n", map { "FAILED: $label: $_" } @problems));
}

# compare_update(NODE, FROM, TO, [max diff lines]): the update from FROM
# to TO against a fresh install of TO, as described at the top.  The
# list of results.
sub compare_update
{
	my ($n, $from, $to, $max) = @_;
	my $id = ++$dbseq;
	my ($a, $b) = ("upd_${id}_a", "upd_${id}_b");
	my @r;
	my ($api, $fixture, $token_a, $token_b, $fa, $fb) = (0, 0, '', '', '', '');

	$n->safe_psql('postgres', "CREATE DATABASE $a");
	my ($rc, $out, $err) = psql_run($n, $a, "CREATE EXTENSION entitlock VERSION '$from';");
	push @r, result("CREATE EXTENSION entitlock VERSION '$from'", !$rc, $err);
	return @r if $rc;

	($rc, $out, $err) = psql_run($n, $a, $seed_api_sql, extra => ['-1']);
	if (!$rc)
	{
		$api = 1;
		($token_a, $fa) = $out =~ /^lease job-a\|(.*)\|(.*)$/m;
		($token_b, $fb) = $out =~ /^lease job-b\|(.*)\|(.*)$/m;
	}
	elsif ($err =~ /is not as this version of entitlock created it/)
	{
		note("the installed library refuses version ${from}'s tables (as designed, until ALTER EXTENSION UPDATE), so its data comes from the fixture only");
	}
	else
	{
		push @r, result("putting data into version $from through the API", 0, $err);
	}
	if ($from eq '1.0')
	{
		($rc, $out, $err) = psql_run($n, $a, $seed_fixture_sql, extra => ['-1']);
		$fixture = !$rc;
		push @r, result("the 1.0 fixture rows go into version $from", $fixture, $err);
	}
	if (!$api && !$fixture)
	{
		push @r, result("some data goes into version $from (add a fixture for it to this test)", 0);
		return @r;
	}

	my $probe = probe_sql($api, $fixture);
	my $probe_expected = probe_expected($api, $fixture, $fa, $fb);
	if ($api)
	{
		my (undef, $o, $e) = psql_run($n, $a, $probe, on_error_stop => 0);
		push @r, same_text("answers about the data at $from (the test's own expectations)",
			$probe_expected, $o . ($e ne '' ? "\n$e" : ''), 'expected', "at $from", $max);
	}
	my $maxf = q1($n, $a, 'SELECT last_value FROM entitlock.lease_fencing');
	my $cols = table_columns($n, $a);
	my $rows_before = table_rows($n, $a, $cols);

	($rc, $out, $err) = psql_run($n, $a, "ALTER EXTENSION entitlock UPDATE TO '$to';");
	push @r, result("ALTER EXTENSION entitlock UPDATE TO '$to' from $from", !$rc, $err);
	return @r if $rc;
	my $installed = q1($n, $a, "SELECT extversion FROM pg_extension WHERE extname = 'entitlock'");
	push @r, result("version after ALTER EXTENSION entitlock UPDATE from $from is $to",
		$installed eq $to, "installed: $installed");

	push @r, same_text("rows of the extension's tables (the columns $from had) before and after the update",
		$rows_before, table_rows($n, $a, $cols), 'before the update', 'after the update', $max);
	{
		my (undef, $o, $e) = psql_run($n, $a, $probe, on_error_stop => 0);
		push @r, same_text("answers about the data from $from", $probe_expected,
			$o . ($e ne '' ? "\n$e" : ''), 'expected', "after the update to $to", $max);
	}
	{
		my (undef, $o, $e) = psql_run($n, $a, mutate_sql($api, $fixture), on_error_stop => 0,
			extra => [ '-v', "token_a=$token_a", '-v', "token_b=$token_b", '-v', "max=$maxf",
				'-v', "fixture_token=$fixture_token" ]);
		push @r, same_text("uses of the data from $from", mutate_expected($api, $fixture),
			$o . ($e ne '' ? "\n$e" : ''), 'expected', "after the update to $to", $max);
	}

	$n->safe_psql('postgres', "CREATE DATABASE $b");
	($rc, $out, $err) = psql_run($n, $b, "CREATE EXTENSION entitlock VERSION '$to';");
	push @r, result("CREATE EXTENSION entitlock VERSION '$to'", !$rc, $err);
	return @r if $rc;

	my ($rca, $cat_a, $ea) = psql_run($n, $a, $snapshot_sql);
	my ($rcb, $cat_b, $eb) = psql_run($n, $b, $snapshot_sql);
	push @r, result('the catalog snapshot query runs', !$rca && !$rcb, "$ea$eb");
	my $facts = () = $cat_b =~ /\n/g;
	push @r, same_text('catalogs (' . ($facts + 1) . ' facts)', $cat_a, $cat_b,
		"updated from $from", "created at $to", $max);
	push @r, same_text('pg_dump --binary-upgrade --schema-only outputs',
		dump_schema($n, $a), dump_schema($n, $b), "updated from $from", "created at $to", $max);

	push @r, rules_check($n, $a, "updated from $from");
	push @r, rules_check($n, $b, "created at $to");

	$n->safe_psql('postgres', "DROP DATABASE $a");
	$n->safe_psql('postgres', "DROP DATABASE $b");
	return @r;
}

sub report
{
	my ($prefix, @results) = @_;
	for my $r (@results)
	{
		ok($r->[1], "$prefix$r->[0]") or diag($r->[2]);
	}
}

#
# 1. The scripts the server reads are the ones in sql/.
#
{
	my @mismatch;
	my @ours = (glob("$src/sql/entitlock--*.sql"), glob("$src/entitlock.control"),
		glob("$src/entitlock--*.control"));
	for my $f (@ours)
	{
		my $inst = "$extdir/" . basename($f);
		if (!-e $inst) { push @mismatch, basename($f) . " is not installed in $extdir"; }
		elsif (compare($f, $inst) != 0) { push @mismatch, basename($f) . " differs from the installed $inst"; }
	}
	for my $inst (glob("$extdir/entitlock--*.sql"), glob("$extdir/entitlock--*.control"))
	{
		my $base = basename($inst);
		push @mismatch,
		  "$inst is installed but not in sql/ (left from an older install? remove it, or restore it to sql/)"
		  unless -e "$src/sql/$base" || -e "$src/$base";
	}
	push @mismatch, "entitlock.so differs from the installed $libdir/entitlock.so"
	  if -e "$src/entitlock.so" && compare("$src/entitlock.so", "$libdir/entitlock.so") != 0;
	ok(!@mismatch, "sql/, entitlock.control and entitlock.so are the installed ones")
	  or BAIL_OUT("the server would test other files than the repository's: run make install\n"
		  . join("\n", @mismatch));
}

#
# 2. The control file.
#
is(control_value('relocatable'),     'false',             'control file: not relocatable');
is(control_value('schema'),          'entitlock',         'control file: schema entitlock');
is(control_value('module_pathname'), '$libdir/entitlock', 'control file: module_pathname');
ok(!defined control_value('directory'),
	"control file: no 'directory' (scripts must be in the server's extension directory)");
ok(-f "$libdir/entitlock.so", "control file: module_pathname names $libdir/entitlock.so, which exists");
my $requires = control_value('requires') // '';
for my $r (grep { $_ ne '' } split /[\s,]+/, $requires)
{
	is(q1($node, 'postgres', "SELECT count(*) FROM pg_available_extensions WHERE name = '$r'"),
		1, "control file: required extension $r is available");
}
# A procedural language that is itself an extension (plpgsql) can be
# dropped from a database; requires names it so CREATE EXTENSION says so.
{
	my %langs;
	for my $f (glob("$src/sql/entitlock--*.sql"))
	{
		my $text = slurp($f);
		$langs{ lc $1 } = 1 while $text =~ /\bLANGUAGE\s+([A-Za-z0-9_]+)/gi;
	}
	for my $lang (sort keys %langs)
	{
		next if $lang =~ /^(?:c|internal|sql)$/;
		note("the scripts use LANGUAGE $lang, an extension not listed in requires")
		  if q1($node, 'postgres', "SELECT count(*) FROM pg_available_extensions WHERE name = '$lang'") == 1
		  && ",$requires," !~ /,\s*\Q$lang\E\s*,/;
	}
}
is( q1( $node, 'postgres',
		"SELECT count(*) FROM pg_available_extension_versions WHERE name = 'entitlock' AND version = '$default_version'"
	),
	1,
	"default_version $default_version can be installed");

#
# 3. Static checks of every script.
#
my @scripts = sort glob("$src/sql/entitlock--*.sql");
ok($nm{entitlock_key}, "nm finds entitlock_key in $libdir/entitlock.so")
  or BAIL_OUT('cannot check symbols');
{
	my ($rc, $out, $err) = run_cmd($^X, $sqlscan, 'symbols', @scripts);
	is($rc, 0, 'the symbol scan runs') or diag($err);
	my @lines = split /\n/, $out;
	my @missing = missing_symbols(@lines);
	ok(!@missing && @lines > 0,
		'the ' . scalar(@lines) . ' C function definitions in the scripts name symbols the installed library has')
	  or diag(join("\n", @missing));
	($rc, $out, $err) = run_cmd($^X, $sqlscan, 'qualify', @scripts);
	chomp $err;
	is($rc, 0, "every object the scripts create or name is qualified with schema entitlock ($err)")
	  or diag($out);
}

#
# 4. Versions and update paths.
#
my (@full_versions, %mentioned);
for my $f (@scripts)
{
	my $v = basename($f) =~ s/^entitlock--(.*)\.sql$/$1/r;
	if ($v =~ /^(.*)--(.*)$/) { $mentioned{$1} = $mentioned{$2} = 1; }
	else { push @full_versions, $v; $mentioned{$v} = 1; }
}
my @older = sort grep { $_ ne $default_version } keys %mentioned;
note('full install scripts: ' . join(' ', @full_versions) . '; older versions: '
	  . (join(' ', @older) || 'none') . "; default_version $default_version");
ok($mentioned{$default_version}, "the scripts in sql/ reach default_version $default_version");

my %path;
for (split /\n/, q1($node, 'postgres', qq{
	SELECT source || E'\\t' || path FROM pg_extension_update_paths('entitlock')
	 WHERE target = '$default_version' AND path IS NOT NULL AND source <> target
	 ORDER BY source}))
{
	my ($s, $p) = split /\t/;
	$path{$s} = $p;
}
# Every version the scripts mention must be able to reach default_version.
for my $v (@older)
{
	ok(defined $path{$v}, "version $v has an update path to $default_version");
}

note("there is no full sql/entitlock--$default_version.sql, so CREATE EXTENSION runs an older script and the updates too: the catalogs agree by construction, the data checks still count")
  if !-f "$src/sql/entitlock--$default_version.sql" && %path;
if (!%path)
{
	note("no version has an update path to $default_version: comparing a fresh install holding data with another fresh install instead");
	report("same version: ", compare_update($node, $default_version, $default_version));
}
for my $v (sort keys %path)
{
	note("update $path{$v}");
	report("update from $v: ", compare_update($node, $v, $default_version));
}

#
# 4b. User objects that depend on the old version's functions survive the
# update and keep working: a view over holders() (whose result gains
# columns in 1.1), SQL-standard function bodies calling idempotency_begin
# and lease_acquire (which gain an argument in 1.1), a column default and
# an expression index on key(), a GRANT on the old version's signature.  pg_dump of
# the updated database restores.
#
for my $from (sort keys %path)
{
	my $a = "dep_" . ++$dbseq;
	my $b = "${a}_restored";
	$node->safe_psql('postgres', "CREATE DATABASE $a");
	$node->safe_psql('postgres', "CREATE DATABASE $b");
	my ($rc, $out, $err) = psql_run($node, $a, <<SQL);
CREATE EXTENSION entitlock VERSION '$from';
CREATE SCHEMA app;
CREATE VIEW app.job_lock AS SELECT * FROM entitlock.holders('job');
CREATE FUNCTION app.begin_request(k text) RETURNS text LANGUAGE sql
BEGIN ATOMIC
	SELECT status FROM entitlock.idempotency_begin(k, NULL, '1 hour');
END;
CREATE FUNCTION app.take_job(n text) RETURNS bigint LANGUAGE sql
BEGIN ATOMIC
	SELECT fencing FROM entitlock.lease_acquire(n, '1 minute', 'worker');
END;
CREATE TABLE app.item (name text NOT NULL, k bigint DEFAULT entitlock.key('item'));
CREATE INDEX item_key_idx ON app.item (entitlock.key(name));
-- A grant on idempotency_begin as it is at this version (its arguments
-- change between versions); it must survive the update.
DO \$\$ BEGIN
	EXECUTE (SELECT string_agg(format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC', oid::regprocedure), '; ')
			   FROM pg_proc WHERE proname = 'idempotency_begin' AND pronamespace = 'entitlock'::regnamespace);
END \$\$;
SQL
	ok(!$rc, "dependent objects created at $from") or diag($err);
	($rc, $out, $err) = psql_run($node, $a, 'ALTER EXTENSION entitlock UPDATE');
	ok(!$rc, "ALTER EXTENSION entitlock UPDATE from $from with dependent objects") or diag($err);
	($rc, $out, $err) = psql_run($node, $a, <<'SQL', extra => [ '-F', ' ' ]);
INSERT INTO app.item (name) VALUES ('a');
SELECT app.begin_request('dep-1'), app.begin_request('dep-1'), app.take_job('dep-job') > 0;
BEGIN;
SELECT entitlock.lock('job');
SELECT count(*), min(mode) FROM app.job_lock;
COMMIT;
SELECT count(*) FROM app.item WHERE k = entitlock.key('item') AND entitlock.key(name) = entitlock.key('a');
SELECT status FROM entitlock.idempotency_begin('dep-2', wait => '0');
SELECT bool_and(has_function_privilege('public', oid, 'EXECUTE')) FROM pg_proc WHERE proname = 'idempotency_begin' AND pronamespace = 'entitlock'::regnamespace;
SQL
	is(join('|', split /\n/, "$out$err", -1) . '|', "new replay t||1 exclusive|1|new|t|",
		"dependent objects work after the update from $from");
	$node->safe_psql('postgres', "ALTER DATABASE $b SET client_min_messages = warning");
	my ($drc, $dump, $derr) = run_cmd('pg_dump', '-d', $node->connstr($a));
	($rc, $out, $err) = psql_run($node, $b, $dump);
	ok(!$drc && !$rc, "pg_dump of the database updated from $from restores") or diag("$derr$err");
	is(q1($node, $b, "SELECT app.begin_request('dep-1') || ' ' || (SELECT count(*) FROM app.job_lock)"),
		'replay 0', "the restored dependent objects work (from $from)");
	$node->safe_psql('postgres', "DROP DATABASE $a");
	$node->safe_psql('postgres', "DROP DATABASE $b");
}

#
# 5. Self-test: the checks above must catch a bad script.
#
# The static scanners, on a script with a missing symbol and unqualified
# names.
write_file("$tmp/bad.sql", <<'SQL');
CREATE FUNCTION entitlock.vanished(name text) RETURNS bigint
AS 'MODULE_PATHNAME', 'entitlock_upgrade_selftest_vanished' LANGUAGE C;
CREATE FUNCTION unqualified_fn() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
REVOKE ALL ON FUNCTION unqualified_fn() FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('lease_record', '');
SQL
{
	my (undef, $out) = run_cmd($^X, $sqlscan, 'symbols', "$tmp/bad.sql");
	my @missing = missing_symbols(split /\n/, $out);
	ok(scalar(grep { /entitlock_upgrade_selftest_vanished/ } @missing),
		'control: a symbol missing from the library is caught and named')
	  or diag(join("\n", @missing));
	my ($rc, $q) = run_cmd($^X, $sqlscan, 'qualify', "$tmp/bad.sql");
	my $bad = () = $q =~ /not schema-qualified/g;
	ok($rc != 0 && $bad == 3, 'control: the 3 unqualified names in a bad script are caught')
	  or diag($q);
}

if (($ENV{UPGRADE_SELFTEST} // 1) eq '0')
{
	note('synthetic versions skipped (UPGRADE_SELFTEST=0)');
	$node->stop;
	done_testing();
	exit 0;
}

# A private mirror of the installation, whose extension directory may be
# written to.  PostgreSQL finds its share and library directories relative
# to where its binaries are (that is also how the relocated copies in
# ENTITLOCK_PG_BINDIR work), so the binaries that locate the others are
# copied and the rest is linked.
my $bindir   = pg_config_value('--bindir');
my $sharedir = pg_config_value('--sharedir');
my $mirror   = "$tmp/mirror";
make_path("$mirror$bindir", "$mirror$sharedir/extension", dirname("$mirror$libdir"));
for my $f (glob("$bindir/*"))
{
	my $to = "$mirror$bindir/" . basename($f);
	if (basename($f) =~ /^(?:postgres|initdb|pg_ctl|pg_config)$/)
	{
		copy($f, $to) or die "copy $f: $!";
		chmod 0755, $to;
	}
	else { symlink($f, $to) or die "symlink $f: $!"; }
}
symlink($libdir, "$mirror$libdir") or die "symlink $libdir: $!" unless -e "$mirror$libdir";
for my $f (glob("$sharedir/*"))
{
	next if basename($f) eq 'extension';
	symlink($f, "$mirror$sharedir/" . basename($f)) or die "symlink $f: $!";
}
for my $f (glob("$sharedir/extension/*"))
{
	symlink($f, "$mirror$sharedir/extension/" . basename($f)) or die "symlink $f: $!";
}
my $mext = "$mirror$sharedir/extension";
my $st = new_node('selftest', undef, install_path => dirname("$mirror$bindir"));
is(q1($st, 'postgres', "SELECT count(*) FROM pg_available_extension_versions WHERE name = 'entitlock' AND version = '$default_version'"),
	1, 'the mirror installation serves entitlock');

# The version the synthetic one updates from: default_version's full
# script, or the base script and updates PostgreSQL would run.
sub base_script
{
	return slurp("$src/sql/entitlock--$default_version.sql")
	  if -f "$src/sql/entitlock--$default_version.sql";
	for my $f (@full_versions)
	{
		next unless defined $path{$f};
		my @steps = split /--/, $path{$f};
		my $text = slurp("$src/sql/entitlock--$f.sql");
		$text .= slurp("$src/sql/entitlock--$steps[$_ - 1]--$steps[$_].sql") for 1 .. $#steps;
		return $text;
	}
	return undef;
}
my $base = base_script();
ok(defined $base, "an install script for $default_version") or BAIL_OUT('no base script');

my $fn_sql = q{CREATE FUNCTION entitlock.upgrade_selftest_probe(n integer DEFAULT 1)
RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT n OPERATOR(pg_catalog.+) 1 $$;
COMMENT ON FUNCTION entitlock.upgrade_selftest_probe(integer) IS 'harness self-test';};
my $revoke_sql = 'REVOKE ALL ON FUNCTION entitlock.upgrade_selftest_probe(integer) FROM PUBLIC;';
my $table_sql = 'CREATE TABLE entitlock.upgrade_selftest_table (id bigint PRIMARY KEY, note text COLLATE pg_catalog."C");';
my $dump_sql = "SELECT pg_catalog.pg_extension_config_dump('entitlock.upgrade_selftest_table', '');";
my $volatility_sql = 'ALTER FUNCTION entitlock.usage_period(text, timestamptz) STABLE;';
my $complete = "$fn_sql\n$revoke_sql\n$table_sql\n$dump_sql";

# variant(NAME, EXPECTED-TEXT, FULL-EXTRA, UPDATE-SCRIPT): install version
# 9.9-selftest-NAME (full script: the base plus FULL-EXTRA; update script
# from default_version: UPDATE-SCRIPT) and compare.  With EXPECTED-TEXT
# empty the comparison must pass, else fail naming it.
sub variant
{
	my ($name, $want, $full_extra, $update) = @_;
	my $v = "9.9-selftest-$name";
	write_file("$mext/entitlock--$v.sql", "$base\n$full_extra\n");
	write_file("$mext/entitlock--$default_version--$v.sql",
		"\\echo Use \"ALTER EXTENSION entitlock UPDATE TO '$v'\" to load this file. \\quit\n$update\n");
	my @results = compare_update($st, $default_version, $v, 400);
	unlink("$mext/entitlock--$v.sql", "$mext/entitlock--$default_version--$v.sql");
	my @failed = grep { !$_->[1] } @results;
	if ($want eq '')
	{
		ok(!@failed, "self-test $name: a correct update script passes")
		  or diag(join("\n", map { "FAILED: $_->[0]\n$_->[2]" } @failed));
		return;
	}
	my @named = grep {
		my $r = $_;
		index($r->[0], $want) >= 0
		  || grep { /^[-+]/ && index($_, $want) >= 0 } split /\n/, $r->[2]
	} @failed;
	ok(@named, "control: self-test $name: the broken update script fails, naming '$want'")
	  or diag(@failed ? join("\n", map { "FAILED: $_->[0]\n$_->[2]" } @failed) : 'it passed');
}

variant('good', '', $complete, $complete);
variant('missing-function', 'object function entitlock.upgrade_selftest_probe(integer): member',
	$complete, "$table_sql\n$dump_sql");
variant('missing-revoke', 'function entitlock.upgrade_selftest_probe(integer) | acl: PUBLIC EXECUTE',
	$complete, "$fn_sql\n$table_sql\n$dump_sql");
variant('missing-config-dump', 'config dump: entitlock.upgrade_selftest_table',
	$complete, "$fn_sql\n$revoke_sql\n$table_sql");
variant('changed-volatility', 'usage_period(text,timestamp with time zone) | volatility',
	"$complete\n$volatility_sql", $complete);
variant('lost-tokens', 'renew job-a with its old token',
	$complete, "$complete\nUPDATE entitlock.lease_record SET token = gen_random_uuid();");
variant('lost-usage-keys', 'retry req-1',
	$complete, "$complete\nDELETE FROM entitlock.usage_idempotency;");

$st->stop;
$node->stop;
done_testing();
