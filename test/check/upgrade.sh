#!/usr/bin/env bash
#
# ALTER EXTENSION entitlock UPDATE: a database updated from an older version
# must end up exactly like a fresh CREATE EXTENSION of the new version, with
# its data intact.  PostgreSQL runs the update scripts
# (sql/entitlock--OLD--NEW.sql) on existing databases and the full script
# (or the base script plus updates) on new ones; nothing makes the two
# agree except a test, and a difference (a forgotten REVOKE, a function left
# VOLATILE, a table not registered for pg_dump) only shows later, in a
# customer's database that was updated rather than created.
#
# For every version that has an update path to default_version (from the
# server: pg_extension_update_paths), this script:
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
#     numbers continuing above every one handed out.
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
# Self-test: a synthetic next version is installed into the server's
# extension directory under a name no one else uses (9.9-upgrade-selftest-
# PID-...; default_version is untouched, so other sessions do not see it)
# in several broken forms (the update script forgets a function, a REVOKE,
# a pg_extension_config_dump, a volatility change; or loses lease tokens or
# usage idempotency keys) and one correct form.  Each broken form must fail
# naming what is missing; the correct one must pass.  The synthetic files
# are removed on exit.  Set UPGRADE_SELFTEST=0 to skip it.
#
# Runs against $PGHOST when set (the suite's cluster), else starts a
# throwaway cluster of its own.  PG_CONFIG picks another installation.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$ENTITLOCK_ROOT" || exit 1

pgc=${PG_CONFIG:-$(pg_bindir)/pg_config}
extdir="$("$pgc" --sharedir)/extension"
libdir="$("$pgc" --pkglibdir)"
bindir="$("$pgc" --bindir)"
selftest_tag="upgrade-selftest-$$"
dbprefix="entitlock_upgrade_$$"
tmp=$(mktemp -d)
chmod 755 "$tmp"
own_cluster=

cleanup() {
	rm -f "$extdir"/entitlock--*"$selftest_tag"* 2>/dev/null ||
		as_root rm -f "$extdir"/entitlock--*"$selftest_tag"*
	if [ -n "${PGHOST:-}" ]; then
		local db
		for db in $(psql -X -At -c "SELECT datname FROM pg_database WHERE datname LIKE '${dbprefix}\_%'" 2>/dev/null); do
			test_db_drop "$db"
		done
	fi
	[ -n "$own_cluster" ] && cluster_destroy "$own_cluster"
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

if [ -z "${PGHOST:-}" ]; then
	own_cluster=$(mktemp -d /tmp/entitlock-upgrade.XXXXXX)
	cluster_start "$own_cluster" >/dev/null
fi

# Synthetic files left by a run that was killed outright.
for f in "$extdir"/entitlock--*-upgrade-selftest-*; do
	[ -e "$f" ] || continue
	pid=${f##*-upgrade-selftest-}
	pid=${pid%%-*}
	kill -0 "$pid" 2>/dev/null || as_root rm -f "$f"
done

# The catalog queries join temporary tables the planner knows nothing
# about; its guesses would make JIT compile them for a second each.
export PGOPTIONS="${PGOPTIONS:-} -c jit=off"

q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }

default_version=$(control_value default_version)
[ -n "$default_version" ] || die "no default_version in entitlock.control"

# Helper scripts, written to $tmp.

cat >"$tmp/sqlscan.pl" <<'PERL'
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
# two databases can be compared with diff.
cat >"$tmp/snapshot.sql" <<'SQL'
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
cat >"$tmp/rules.sql" <<'SQL'
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
cat >"$tmp/seed_api.sql" <<'SQL'
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
cat >"$tmp/seed_fixture_1.0.sql" <<'SQL'
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
fixture_token=f1f1f1f1-0000-4000-8000-000000000001

# probe_sql API FIXTURE: read-only questions about the data (rolled back),
# asked before and after the update; the answers must not change.
probe_sql() {
	echo "BEGIN;"
	echo "CREATE FUNCTION pg_temp.sqlstate_of(q text) RETURNS text LANGUAGE plpgsql AS \$f\$
BEGIN EXECUTE q; RETURN 'no error'; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END \$f\$;"
	[ "$1" = 1 ] && cat <<'SQL'
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
	[ "$2" = 1 ] && cat <<'SQL'
SELECT 'usage fx:1 api', entitlock.usage('fx:1', 'api');
SELECT 'retry fx-req', r.* FROM entitlock.record_usage_if_under_limit('fx:1', 'api', 4, 10, 'lifetime', 'fx-req') AS r;
SELECT 'usage fx:1 api after the retry', entitlock.usage('fx:1', 'api');
SELECT 'replay fx-order', b.* FROM entitlock.idempotency_begin('fx-order', 'fx-fp') AS b;
SELECT 'fx-order with another fingerprint', pg_temp.sqlstate_of($q$SELECT entitlock.idempotency_begin('fx-order', 'other')$q$);
SELECT 'first_time fx-hook', entitlock.first_time('fx-hook');
SELECT 'fx-job is held', count(*) = 0 FROM entitlock.lease_acquire('fx-job', '1 minute');
SQL
	echo "SELECT 'lease', name, holder, fencing FROM entitlock.leases ORDER BY name;"
	echo "ROLLBACK;"
}

# probe_expected API FIXTURE FENCING_A FENCING_B
probe_expected() {
	[ "$1" = 1 ] && cat <<EOF
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
EOF
	[ "$2" = 1 ] && cat <<EOF
usage fx:1 api|4
retry fx-req|t|4|6|
usage fx:1 api after the retry|4
replay fx-order|replay|{"fx": true}
fx-order with another fingerprint|22023
first_time fx-hook|f
fx-job is held|t
EOF
	{
		[ "$2" = 1 ] && echo "lease|fx-job|fx-worker|1000"
		[ "$1" = 1 ] && echo "lease|job-a|worker-1|$3" && echo "lease|job-b|worker-2|$4"
	} | sort
	return 0
}

# mutate_sql API FIXTURE: after the update, the data must go on working.
# Variables: token_a, token_b, max (the last fencing number handed out).
mutate_sql() {
	[ "$1" = 1 ] && cat <<'SQL'
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
	[ "$2" = 1 ] && cat <<'SQL'
SELECT 'renew fx-job with its old token', entitlock.lease_renew('fx-job', :'fixture_token', '2 hours');
SELECT 'usage fx:1 api goes on from 4', r.* FROM entitlock.record_usage_if_under_limit('fx:1', 'api', 6, 10) AS r;
SELECT 'refund fx-req, a key stored as a 1.0 row', entitlock.refund_usage('fx:1', 'api', 'fx-req');
SELECT 'release fx-job with its old token', entitlock.lease_release('fx-job', :'fixture_token');
SQL
	cat <<'SQL'
SELECT 'a new lease, fencing above the old ones', fencing > :max FROM entitlock.lease_acquire('job-new', '1 hour');
SELECT 'purge_expired', entitlock.purge_expired();
BEGIN;
SELECT 'try_lock', entitlock.try_lock('upgrade-check');
SELECT 'holders', count(*) FROM entitlock.holders('upgrade-check');
COMMIT;
SQL
}

mutate_expected() {
	[ "$1" = 1 ] && cat <<'EOF'
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
EOF
	[ "$2" = 1 ] && cat <<'EOF'
renew fx-job with its old token|t
usage fx:1 api goes on from 4|t|10|0|
refund fx-req, a key stored as a 1.0 row|4
release fx-job with its old token|t
EOF
	cat <<'EOF'
a new lease, fencing above the old ones|t
purge_expired|0
try_lock|t
holders|1
EOF
}

# table_columns DB: "relation<TAB>relkind<TAB>columns" for each table and
# sequence of the extension, columns as they are now.
table_columns() {
	q "$1" "SELECT c.oid::regclass, c.relkind,
				   CASE c.relkind WHEN 'S' THEN 'last_value, is_called'
				   ELSE string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) END
			  FROM pg_depend AS d
			  JOIN pg_extension AS e ON d.refobjid = e.oid
			  JOIN pg_class AS c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid
			  LEFT JOIN pg_attribute AS a
					 ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
			 WHERE e.extname = 'entitlock' AND d.refclassid = 'pg_extension'::regclass
			   AND d.deptype = 'e' AND c.relkind IN ('r', 'p', 'S')
			 GROUP BY c.oid, c.relkind ORDER BY 1::text" | tr '|' '\t'
}

# table_rows DB COLUMNS-FILE: every row of those tables, those columns only.
table_rows() {
	local rel kind cols args=()
	while IFS=$'\t' read -r rel kind cols; do
		args+=(-c "SELECT '$rel: ' || t::text FROM (SELECT $cols FROM $rel) AS t ORDER BY 1")
	done <"$2"
	[ ${#args[@]} -eq 0 ] || psql -X -q -At -d "$1" "${args[@]}" 2>&1
}

# dump_schema DB: pg_dump's view of every member, without what is
# specific to one database (OIDs, xids, sequence positions).
dump_schema() {
	"$bindir/pg_dump" --binary-upgrade --schema-only -d "$1" |
		grep -v -e '^\\restrict ' -e '^\\unrestrict ' -e 'binary_upgrade_set_next_' \
			-e '^SELECT pg_catalog.setval(' |
		sed -E -e "s/(binary_upgrade_create_empty_extension\(.*, )'\{[0-9,]*\}'(, '\{)/\1'{...}'\2/" \
			-e "s/relfrozenxid = '[0-9]+', relminmxid = '[0-9]+'/relfrozenxid = ..., relminmxid = .../" \
			-e "s/WHERE oid = '[0-9]+'/WHERE oid = .../"
}

# show_diff WHAT FILE-A FILE-B LABEL-A LABEL-B: fail with a readable diff
# when they differ.
show_diff() {
	if ! cmp -s "$2" "$3"; then
		log "FAILED: $1 differ (- $4, + $5):"
		diff -U0 --label "$4" --label "$5" "$2" "$3" | grep -v '^@@' | head -"${DIFF_LINES:-80}" >&2
		check_failed=1
	else
		log "ok: $1 are the same"
	fi
}

nm_symbols() {
	nm -D --defined-only "$libdir/entitlock.so" | awk '{ print $3 }' | sort -u
}

# check_symbols LIST-FILE: each line "WHERE<TAB>SYMBOL"; every symbol and
# its pg_finfo_ record must be in the installed library.
check_symbols() {
	local where sym missing=0
	while IFS=$'\t' read -r where sym; do
		if [[ $sym == \?* ]]; then
			log "FAILED: $where: ${sym#\?}"
			missing=1
			continue
		fi
		grep -qx -- "$sym" "$tmp/nm.txt" && grep -qx -- "pg_finfo_$sym" "$tmp/nm.txt" && continue
		log "FAILED: $where: C symbol $sym (or pg_finfo_$sym) is not in $libdir/entitlock.so"
		missing=1
	done <"$1"
	[ $missing -eq 0 ]
}

# rules_check DB LABEL: the per-database rules, and the C symbols its
# functions call.
rules_check() {
	local out=$tmp/rules.$2
	psql -X -q -At -d "$1" -f "$tmp/rules.sql" >"$out" || { check_failed=1; return; }
	if grep -q '^problem: ' "$out"; then
		sed -n "s/^problem: /FAILED: $2: /p" "$out" >&2
		check_failed=1
	fi
	sed -n 's/^csym: \([^ ]*\) \(.*\)$/'"$2"': function \2\t\1/p' "$out" >"$out.sym"
	if check_symbols "$out.sym" && ! grep -q '^problem: ' "$out"; then
		log "ok: $2: tables and sequences registered for pg_dump, search_path pinned, C symbols present"
	else
		check_failed=1
	fi
}

# compare_update FROM TO NAME: the update from FROM to TO against a fresh
# install of TO, as described at the top.  Run it in a subshell: it exits
# with its own verdict.
compare_update() {
	local from=$1 to=$2 name=$3
	local a=${dbprefix}_${name}_a b=${dbprefix}_${name}_b dir=$tmp/$name
	local api=0 fixture=0 token_a= token_b= fa= fb= max installed
	mkdir -p "$dir"
	check_failed=0

	psql -X -q -c "CREATE DATABASE $a" || exit 1
	printf "CREATE EXTENSION entitlock VERSION %s;\n" "'$from'" | psql -X -q -v ON_ERROR_STOP=1 -d "$a" ||
		{ log "FAILED: CREATE EXTENSION entitlock VERSION '$from'"; exit 1; }

	if psql -X -q -At -1 -v ON_ERROR_STOP=1 -d "$a" -f "$tmp/seed_api.sql" >"$dir/seed.out" 2>"$dir/seed.err"; then
		api=1
		read -r token_a fa < <(sed -n 's/^lease job-a|\(.*\)|\(.*\)$/\1 \2/p' "$dir/seed.out")
		read -r token_b fb < <(sed -n 's/^lease job-b|\(.*\)|\(.*\)$/\1 \2/p' "$dir/seed.out")
	elif grep -q 'is not as this version of entitlock created it' "$dir/seed.err"; then
		log "note: the installed library refuses version $from's tables (as designed, until ALTER EXTENSION UPDATE), so its data comes from the fixture only"
	else
		log "FAILED: putting data into version $from through the API:"
		cat "$dir/seed.err" >&2
		check_failed=1
	fi
	if [ "$from" = 1.0 ]; then
		psql -X -q -At -1 -v ON_ERROR_STOP=1 -d "$a" -f "$tmp/seed_fixture_1.0.sql" >/dev/null &&
			fixture=1 || check_failed=1
	fi
	if [ $api = 0 ] && [ $fixture = 0 ]; then
		log "FAILED: no data could be put into version $from; add a fixture for it to $0"
		exit 1
	fi

	probe_sql $api $fixture >"$dir/probe.sql"
	probe_expected $api $fixture "$fa" "$fb" >"$dir/probe.expected"
	if [ $api = 1 ]; then
		psql -X -q -At -d "$a" -f "$dir/probe.sql" >"$dir/probe.before" 2>&1
		show_diff "answers about the data at $from (the test's own expectations)" \
			"$dir/probe.expected" "$dir/probe.before" expected "at $from"
	fi
	max=$(q "$a" "SELECT last_value FROM entitlock.lease_fencing")
	table_columns "$a" >"$dir/columns"
	table_rows "$a" "$dir/columns" >"$dir/rows.before"

	printf "ALTER EXTENSION entitlock UPDATE TO %s;\n" "'$to'" |
		psql -X -q -v ON_ERROR_STOP=1 -d "$a" 2>"$dir/update.err" ||
		{ log "FAILED: ALTER EXTENSION entitlock UPDATE TO '$to' from $from:"; cat "$dir/update.err" >&2; exit 1; }
	installed=$(q "$a" "SELECT extversion FROM pg_extension WHERE extname = 'entitlock'")
	expect "version after ALTER EXTENSION entitlock UPDATE from $from" "$installed" "$to"

	table_rows "$a" "$dir/columns" >"$dir/rows.after"
	show_diff "rows of the extension's tables (the columns $from had) before and after the update" \
		"$dir/rows.before" "$dir/rows.after" "before the update" "after the update"
	psql -X -q -At -d "$a" -f "$dir/probe.sql" >"$dir/probe.after" 2>&1
	show_diff "answers about the data from $from" \
		"$dir/probe.expected" "$dir/probe.after" "expected" "after the update to $to"
	mutate_sql $api $fixture >"$dir/mutate.sql"
	mutate_expected $api $fixture >"$dir/mutate.expected"
	psql -X -q -At -d "$a" -v token_a="$token_a" -v token_b="$token_b" -v max="$max" \
		-v fixture_token="$fixture_token" -f "$dir/mutate.sql" >"$dir/mutate.after" 2>&1
	show_diff "uses of the data from $from" \
		"$dir/mutate.expected" "$dir/mutate.after" "expected" "after the update to $to"

	psql -X -q -c "CREATE DATABASE $b" || exit 1
	printf "CREATE EXTENSION entitlock VERSION %s;\n" "'$to'" | psql -X -q -v ON_ERROR_STOP=1 -d "$b" ||
		{ log "FAILED: CREATE EXTENSION entitlock VERSION '$to'"; exit 1; }

	psql -X -q -At -d "$a" -f "$tmp/snapshot.sql" >"$dir/catalog.a" || check_failed=1
	psql -X -q -At -d "$b" -f "$tmp/snapshot.sql" >"$dir/catalog.b" || check_failed=1
	show_diff "catalogs ($(wc -l <"$dir/catalog.b") facts)" "$dir/catalog.a" "$dir/catalog.b" \
		"updated from $from" "created at $to"
	dump_schema "$a" >"$dir/dump.a"
	dump_schema "$b" >"$dir/dump.b"
	show_diff "pg_dump --binary-upgrade --schema-only outputs" "$dir/dump.a" "$dir/dump.b" \
		"updated from $from" "created at $to"

	rules_check "$a" "updated from $from"
	rules_check "$b" "created at $to"

	test_db_drop "$a"
	test_db_drop "$b"
	exit "$check_failed"
}

status=0

#
# 1. The scripts the server reads are the ones in sql/.
#
mismatch=0
for f in sql/entitlock--*.sql entitlock.control entitlock--*.control; do
	[ -e "$f" ] || continue
	inst="$extdir/$(basename "$f")"
	if [ ! -e "$inst" ]; then
		log "FAILED: $f is not installed in $extdir"
		mismatch=1
	elif ! cmp -s "$f" "$inst"; then
		log "FAILED: $f differs from the installed $inst"
		mismatch=1
	fi
done
for inst in "$extdir"/entitlock--*.sql "$extdir"/entitlock--*.control; do
	[ -e "$inst" ] || continue
	case $inst in *-upgrade-selftest-*) continue ;; esac
	base=$(basename "$inst")
	[ -e "sql/$base" ] || [ -e "$base" ] ||
		{ log "FAILED: $inst is installed but not in sql/ (left from an older install? remove it, or restore it to sql/)"; mismatch=1; }
done
if [ -e entitlock.so ] && ! cmp -s entitlock.so "$libdir/entitlock.so"; then
	log "FAILED: entitlock.so differs from the installed $libdir/entitlock.so"
	mismatch=1
fi
if [ $mismatch -ne 0 ]; then
	log "the server would test other files than the repository's: run make install"
	exit 1
fi
log "ok: sql/, entitlock.control and entitlock.so are the installed ones"

#
# 2. The control file.
#
expect "control file: relocatable" "$(control_value relocatable)" false
expect "control file: schema" "$(control_value schema)" entitlock
expect "control file: module_pathname" "$(control_value module_pathname)" '$libdir/entitlock'
check "[ -z '$(control_value directory)' ]" "control file: no 'directory' (scripts must be in the server's extension directory)"
check "[ -f '$libdir/entitlock.so' ]" "control file: module_pathname names $libdir/entitlock.so, which does not exist"
requires=$(control_value requires)
for r in ${requires//,/ }; do
	expect "control file: required extension $r is available" \
		"$(q postgres "SELECT count(*) FROM pg_available_extensions WHERE name = '$r'")" 1
done
# A procedural language that is itself an extension (plpgsql) can be
# dropped from a database; requires names it so CREATE EXTENSION says so.
for lang in $(grep -ohiE '\bLANGUAGE[[:space:]]+[A-Za-z0-9_]+' sql/entitlock--*.sql |
	awk '{ print tolower($2) }' | sort -u); do
	case $lang in c | internal | sql) continue ;; esac
	[ "$(q postgres "SELECT count(*) FROM pg_available_extensions WHERE name = '$lang'")" = 1 ] &&
		[[ ",${requires// /}," != *",$lang,"* ]] &&
		log "note: the scripts use LANGUAGE $lang, an extension not listed in requires"
done
expect "default_version $default_version can be installed" \
	"$(q postgres "SELECT count(*) FROM pg_available_extension_versions WHERE name = 'entitlock' AND version = '$default_version'")" 1

#
# 3. Static checks of every script.
#
scripts=(sql/entitlock--*.sql)
nm_symbols >"$tmp/nm.txt"
grep -qx entitlock_key "$tmp/nm.txt" ||
	{ log "FAILED: nm found no entitlock_key in $libdir/entitlock.so; cannot check symbols"; exit 1; }
perl "$tmp/sqlscan.pl" symbols "${scripts[@]}" >"$tmp/symbols" || exit 1
if check_symbols "$tmp/symbols"; then
	log "ok: the $(wc -l <"$tmp/symbols") C function definitions in the scripts name symbols the installed library has"
else
	check_failed=1
fi
if perl "$tmp/sqlscan.pl" qualify "${scripts[@]}" >"$tmp/qualify" 2>"$tmp/qualify.err"; then
	log "ok: every object the scripts create or name is qualified with schema entitlock ($(cat "$tmp/qualify.err"))"
else
	log "FAILED: names not qualified with schema entitlock:"
	cat "$tmp/qualify" >&2
	check_failed=1
fi

#
# 4. Versions and update paths.
#
full_versions=()
update_scripts=()
for f in "${scripts[@]}"; do
	v=${f#sql/entitlock--}
	v=${v%.sql}
	if [[ $v == *--* ]]; then update_scripts+=("$v"); else full_versions+=("$v"); fi
done
log "full install scripts: ${full_versions[*]:-none}; update scripts: ${update_scripts[*]:-none}; default_version $default_version"

mapfile -t sources < <(q postgres "
	SELECT source FROM pg_extension_update_paths('entitlock')
	 WHERE target = '$default_version' AND path IS NOT NULL
	   AND source <> target AND source NOT LIKE '%-upgrade-selftest-%'
	 ORDER BY source")
# Every version the scripts mention must be able to reach default_version.
for v in "${full_versions[@]}" $(printf '%s\n' "${update_scripts[@]}" | sed 's/--/\n/g'); do
	[ "$v" = "$default_version" ] && continue
	printf '%s\n' "${sources[@]}" | grep -qxF -- "$v" ||
		{ log "FAILED: version $v has no update path to $default_version: a database at $v cannot be updated"; check_failed=1; }
done

if [ ! -f "sql/entitlock--$default_version.sql" ] && [ ${#sources[@]} -gt 0 ]; then
	log "note: there is no full sql/entitlock--$default_version.sql, so CREATE EXTENSION runs an" \
		"older script and the updates too: the catalogs agree by construction, the data checks still count"
fi
if [ ${#sources[@]} -eq 0 ]; then
	log "no version has an update path to $default_version: the update path is trivially identical." \
		"Comparing a fresh install holding data with another fresh install instead."
	(compare_update "$default_version" "$default_version" same) || status=1
else
	n=0
	for v in "${sources[@]}"; do
		n=$((n + 1))
		path=$(q postgres "SELECT path FROM pg_extension_update_paths('entitlock') WHERE source = '$v' AND target = '$default_version'")
		log "--- update $path"
		(compare_update "$v" "$default_version" "path$n") || status=1
	done
fi
[ "$check_failed" -eq 0 ] || status=1

#
# 4b. User objects that depend on the old version's functions survive the
# update and keep working: a view over holders() (whose result gains
# columns in 1.1), SQL-standard function bodies calling idempotency_begin
# and lease_acquire (which gain an argument), a column default and an
# expression index on key().  pg_dump of the updated database restores.
#
check_dependents() {
	local from=$1 a=${dbprefix}_dep b=${dbprefix}_dep_restored out
	test_db_drop "$a"
	test_db_drop "$b"
	psql -X -q -c "CREATE DATABASE $a" -c "CREATE DATABASE $b" || return 1
	psql -X -q -At -v ON_ERROR_STOP=1 -d "$a" >/dev/null <<SQL || { log "FAILED: dependent objects at $from"; return 1; }
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
GRANT EXECUTE ON FUNCTION entitlock.idempotency_begin TO PUBLIC;
SQL
	if ! out=$(psql -X -q -At -v ON_ERROR_STOP=1 -d "$a" -c "ALTER EXTENSION entitlock UPDATE" 2>&1); then
		log "FAILED: ALTER EXTENSION entitlock UPDATE from $from with dependent objects: $out"
		return 1
	fi
	out=$(psql -X -q -At -F ' ' -v ON_ERROR_STOP=1 -d "$a" 2>&1 <<'SQL'
INSERT INTO app.item (name) VALUES ('a');
SELECT app.begin_request('dep-1'), app.begin_request('dep-1'), app.take_job('dep-job') > 0;
BEGIN;
SELECT entitlock.lock('job');
SELECT count(*), min(mode) FROM app.job_lock;
COMMIT;
SELECT count(*) FROM app.item WHERE k = entitlock.key('item') AND entitlock.key(name) = entitlock.key('a');
SELECT status FROM entitlock.idempotency_begin('dep-2', wait => '0');
SELECT has_function_privilege('public', 'entitlock.idempotency_begin(text, text, interval, interval)', 'EXECUTE');
SQL
)
	expect "dependent objects work after the update from $from" "$(tr '\n' '|' <<<"$out")" \
		"new replay t||1 exclusive|1|new|t|"
	psql -X -q -c "ALTER DATABASE $b SET client_min_messages = warning" >/dev/null
	if out=$(pg_dump -d "$a" | psql -X -q -v ON_ERROR_STOP=1 -d "$b" 2>&1); then
		expect "the updated database with its dependent objects restores" \
			"$(q "$b" "SELECT app.begin_request('dep-1') || ' ' || (SELECT count(*) FROM app.job_lock)")" "replay 0"
	else
		log "FAILED: restoring pg_dump of the database updated from $from: $out"
		check_failed=1
	fi
	test_db_drop "$a"
	test_db_drop "$b"
}
for v in "${sources[@]}"; do
	check_dependents "$v" || check_failed=1
done
[ "$check_failed" -eq 0 ] || status=1

#
# 5. Self-test: the checks above must catch a bad update script.
#
if [ "${UPGRADE_SELFTEST:-1}" = 0 ]; then
	log "self-test skipped (UPGRADE_SELFTEST=0)"
	exit "$status"
fi
selftest_failed=0
selftest_fail() { log "FAILED: self-test: $*"; selftest_failed=1; }

# The static scanners, on a script with a missing symbol and unqualified names.
cat >"$tmp/bad.sql" <<'SQL'
CREATE FUNCTION entitlock.vanished(name text) RETURNS bigint
AS 'MODULE_PATHNAME', 'entitlock_upgrade_selftest_vanished' LANGUAGE C;
CREATE FUNCTION unqualified_fn() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
REVOKE ALL ON FUNCTION unqualified_fn() FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('lease_record', '');
SQL
perl "$tmp/sqlscan.pl" symbols "$tmp/bad.sql" >"$tmp/bad.symbols"
check_symbols "$tmp/bad.symbols" 2>"$tmp/bad.symbols.log" &&
	selftest_fail "a symbol missing from the library went unnoticed"
grep -q entitlock_upgrade_selftest_vanished "$tmp/bad.symbols.log" ||
	selftest_fail "the missing symbol was not named"
bad_names=$(perl "$tmp/sqlscan.pl" qualify "$tmp/bad.sql" 2>/dev/null | grep -c 'not schema-qualified')
[ "$bad_names" = 3 ] ||
	selftest_fail "expected 3 unqualified names in the bad script, found $bad_names"

# The version the synthetic one updates from: default_version's full
# script, or the base script and updates PostgreSQL would run.
base_script() {
	local f p
	if [ -f "sql/entitlock--$default_version.sql" ]; then
		cat "sql/entitlock--$default_version.sql"
		return
	fi
	for f in "${full_versions[@]}"; do
		p=$(q postgres "SELECT path FROM pg_extension_update_paths('entitlock') WHERE source = '$f' AND target = '$default_version'")
		[ -n "$p" ] || continue
		cat "sql/entitlock--$f.sql"
		printf '%s\n' "${p//--/$'\n'}" | awk 'NR > 1 { print prev "--" $0 } { prev = $0 }' |
			while read -r step; do cat "sql/entitlock--$step.sql"; done
		return
	done
	return 1
}

fn_sql="CREATE FUNCTION entitlock.upgrade_selftest_probe(n integer DEFAULT 1)
RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS \$\$ SELECT n OPERATOR(pg_catalog.+) 1 \$\$;
COMMENT ON FUNCTION entitlock.upgrade_selftest_probe(integer) IS 'harness self-test';"
revoke_sql="REVOKE ALL ON FUNCTION entitlock.upgrade_selftest_probe(integer) FROM PUBLIC;"
table_sql="CREATE TABLE entitlock.upgrade_selftest_table (id bigint PRIMARY KEY, note text COLLATE pg_catalog.\"C\");"
dump_sql="SELECT pg_catalog.pg_extension_config_dump('entitlock.upgrade_selftest_table', '');"
volatility_sql="ALTER FUNCTION entitlock.usage_period(text, timestamptz) STABLE;"
complete="$fn_sql
$revoke_sql
$table_sql
$dump_sql"

# variant NAME EXPECTED-TEXT FULL-EXTRA UPDATE-SCRIPT: install version
# 9.9-upgrade-selftest-PID-NAME (full script: the base plus FULL-EXTRA;
# update script from default_version: UPDATE-SCRIPT) and compare.  With
# EXPECTED-TEXT empty the comparison must pass, else fail naming it.
variant() {
	local name=$1 want=$2 v="9.9-$selftest_tag-$1" rc
	{ base_script && printf '\n%s\n' "$3"; } >"$tmp/entitlock--$v.sql" ||
		{ selftest_fail "no install script for $default_version"; return; }
	printf '%s\n' "\\echo Use \"ALTER EXTENSION entitlock UPDATE TO '$v'\" to load this file. \\quit" "$4" \
		>"$tmp/entitlock--$default_version--$v.sql"
	as_root install -m 644 "$tmp/entitlock--$v.sql" "$tmp/entitlock--$default_version--$v.sql" "$extdir/" ||
		{ selftest_fail "cannot write to $extdir"; return; }
	(DIFF_LINES=400 compare_update "$default_version" "$v" "st_${name//-/_}") >"$tmp/selftest.$name.log" 2>&1
	rc=$?
	as_root rm -f "$extdir/entitlock--$v.sql" "$extdir/entitlock--$default_version--$v.sql"
	if [ -z "$want" ]; then
		if [ $rc -eq 0 ]; then
			log "ok: self-test $name: a correct update script passes"
		else
			selftest_fail "$name: a correct update script failed:"
			cat "$tmp/selftest.$name.log" >&2
		fi
	elif [ $rc -eq 0 ]; then
		selftest_fail "$name: the broken update script passed"
	elif ! grep -F -- "$want" "$tmp/selftest.$name.log" | grep -q '^[-+]\|FAILED'; then
		selftest_fail "$name: failed, but without naming '$want':"
		cat "$tmp/selftest.$name.log" >&2
	else
		log "ok: self-test $name: caught ($(grep -F -- "$want" "$tmp/selftest.$name.log" | grep '^[-+]\|FAILED' | head -1))"
	fi
}

variant good "" "$complete" "$complete"
variant missing-function "object function entitlock.upgrade_selftest_probe(integer): member" \
	"$complete" "$table_sql
$dump_sql"
variant missing-revoke "function entitlock.upgrade_selftest_probe(integer) | acl: PUBLIC EXECUTE" \
	"$complete" "$fn_sql
$table_sql
$dump_sql"
variant missing-config-dump "config dump: entitlock.upgrade_selftest_table" \
	"$complete" "$fn_sql
$revoke_sql
$table_sql"
variant changed-volatility "usage_period(text,timestamp with time zone) | volatility" \
	"$complete
$volatility_sql" "$complete"
variant lost-tokens "renew job-a with its old token" \
	"$complete" "$complete
UPDATE entitlock.lease_record SET token = gen_random_uuid();"
variant lost-usage-keys "retry req-1" \
	"$complete" "$complete
DELETE FROM entitlock.usage_idempotency;"

[ $selftest_failed -eq 0 ] || status=1
exit "$status"
