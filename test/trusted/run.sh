#!/usr/bin/env bash
#
# test/trusted/run.sh: the regression and isolation suites against the
# trusted edition (dist/entitlock-trusted.sql), installed as a managed
# database's owner would: a role that owns the database and is not a
# superuser.  test/run.sh runs it after the C edition's suites; alone:
#
#   bash test/trusted/run.sh        (uses the cluster PGHOST points at unless
#                                    it preloads the C library, else starts
#                                    a throwaway one)
#
# ENTITLOCK_TRUSTED_ONLY="NAME ..." runs only those tests (regression or
# isolation).  Prints one line per test, trusted/regress/NAME and trusted/isolation/NAME
# ("ok" or "FAILED"), and, sourced by test/run.sh, counts them in its tally.
#
# The tests are the C edition's own files, with two mechanical changes
# made in a scratch copy:
# - each "CREATE EXTENSION [IF NOT EXISTS] entitlock;" runs the trusted
#   file instead, as the owner role (SET ROLE), with psql's echo off; and
#   "DROP EXTENSION entitlock;" drops the schema.  The expected output gets
#   the matching lines.
# - the output drops the CONTEXT frames of entitlock's own PL/pgSQL and SQL
#   functions (test/trusted/context-filter.pl), which the C edition's
#   functions do not have; the expected output goes through the same
#   filter, for the C edition's few PL/pgSQL functions.
# Where the output must differ otherwise (the catalog describes PL/pgSQL
# functions and no extension), test/trusted/expected/NAME.out replaces the
# expected file; test/trusted/exclude lists the tests that are about the C
# edition alone, each with its reason.

set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../lib.sh"
if ! declare -F pass >/dev/null; then
	. "$here/../tally.sh"
	trusted_standalone=1
else
	trusted_standalone=
fi

trusted_main() {
	local root=$ENTITLOCK_ROOT work bindir pgxs regress_bin iso_bin t name
	local owner=entitlock_owner
	work=$(mktemp -d /tmp/entitlock-trusted.XXXXXX)
	chmod 755 "$work"
	bindir=$(pg_bindir)
	pgxs=$(dirname "$("$bindir/pg_config" --pgxs)")
	regress_bin=$pgxs/../test/regress/pg_regress
	iso_bin=$pgxs/../test/isolation/pg_isolation_regress

	# A cluster of its own when none is given, or when the given one
	# preloads the C library (test/run.sh's, by now): a managed database
	# has no C library loaded, and a loaded one defines the entitlock.*
	# settings and reserves that prefix.  The caller's PGHOST and PGPORT
	# are set back at the end.
	local saved_pghost=${PGHOST:-} saved_pgport=${PGPORT:-}
	trusted_own_cluster=
	if [ -z "${PGHOST:-}" ] ||
		[[ $(psql -X -At -c "SHOW shared_preload_libraries" 2>/dev/null) == *entitlock* ]]; then
		cluster_start "$work/cluster" >/dev/null
		trusted_own_cluster=$work/cluster
	fi

	# The file, as "make trusted" writes it (no PostgreSQL headers needed).
	bash "$root/trusted/build.sh" "$work/dist" >/dev/null ||
		{ fail "trusted/build"; trusted_cleanup; return; }
	pass trusted/build
	local dist=$work/dist/entitlock-trusted.sql

	psql -X -q -v ON_ERROR_STOP=1 <<SQL || { fail "trusted/owner-role"; trusted_cleanup; return; }
SET client_min_messages = warning;
DO \$\$BEGIN
	IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$owner') THEN
		CREATE ROLE $owner LOGIN NOSUPERUSER CREATEDB CREATEROLE;
	END IF;
END\$\$;
SQL

	# The excluded tests and their reasons.
	declare -A excluded=()
	while IFS='|' read -r name _; do
		name=$(echo "$name" | tr -d '[:space:]')
		[ -n "$name" ] && [[ $name != \#* ]] && excluded[$name]=1
	done <"$here/exclude"

	trusted_install_checks "$dist" "$work/dist/entitlock-pgtle.sql" "$owner" "$work"

	#
	# Regression suite: one database for all tests, in the Makefile's
	# order, as "make installcheck" runs them.
	#
	mkdir -p "$work/regress/sql" "$work/regress/expected" "$work/regress/out"
	local install_sql
	install_sql=$(printf '%s\n' \
		'\set ECHO none' \
		"SELECT format('ALTER DATABASE %I OWNER TO $owner', current_database()) \\gexec" \
		"SET ROLE $owner;" \
		"\\i $dist" \
		'RESET ROLE;' \
		'\set ECHO all')
	local drop_sql
	drop_sql=$(printf '%s\n' \
		'\set ECHO none' \
		"DO \$\$BEGIN PERFORM set_config('client_min_messages', 'warning', true); DROP SCHEMA entitlock CASCADE; END\$\$;" \
		'\set ECHO all')
	local tests=()
	for t in $(make_list REGRESS); do
		if [ -n "${ENTITLOCK_TRUSTED_ONLY:-}" ] && [[ " $ENTITLOCK_TRUSTED_ONLY " != *" $t "* ]]; then
			continue
		fi
		if [ -n "${excluded[regress/$t]:-}" ]; then
			skip "trusted/regress/$t"
			continue
		fi
		tests+=("$t")
		perl -pe '
			BEGIN { ($inst, $drop) = (shift, shift); }
			s/^CREATE EXTENSION (IF NOT EXISTS )?entitlock;\n/$inst\n/;
			s/^DROP EXTENSION entitlock;\n/$drop\n/;
		' "$install_sql" "$drop_sql" "$root/sql/$t.sql" >"$work/regress/sql/$t.sql"
		if [ -f "$here/expected/$t.out" ]; then
			cp "$here/expected/$t.out" "$work/regress/expected/$t.out"
		else
			perl -ne '
				if (/^CREATE EXTENSION (IF NOT EXISTS )?entitlock;$/) { print "\\set ECHO none\n"; $skip = 1; next; }
				if (/^DROP EXTENSION entitlock;$/) { print "\\set ECHO none\n"; $skip = 1; next; }
				if ($skip && /^NOTICE:  (extension "entitlock" already exists, skipping|drop cascades to)/) { next; }
				if ($skip && /^DETAIL:  drop cascades to/) { $skip = 2; next; }
				if ($skip == 2 && /^(drop cascades to|and \d+ other objects)/) { next; }
				$skip = 0; print;
			' "$root/expected/$t.out" >"$work/regress/expected/$t.out"
		fi
	done
	psql -X -q -c "DROP DATABASE IF EXISTS trusted_regression WITH (FORCE)" \
		-c "CREATE DATABASE trusted_regression OWNER $owner TEMPLATE template0" >/dev/null
	# What pg_regress sets on the databases it creates.
	psql -X -q -d trusted_regression -c "ALTER DATABASE trusted_regression SET lc_messages TO 'C';
		ALTER DATABASE trusted_regression SET lc_monetary TO 'C';
		ALTER DATABASE trusted_regression SET lc_numeric TO 'C';
		ALTER DATABASE trusted_regression SET lc_time TO 'C';
		ALTER DATABASE trusted_regression SET bytea_output TO 'hex';
		ALTER DATABASE trusted_regression SET timezone_abbreviations TO 'Default';" >/dev/null
	# Installed once as the owner, with psql -f, before the tests.
	if psql -X -q -v ON_ERROR_STOP=1 -U "$owner" -d trusted_regression -f "$dist" \
		>"$work/install.log" 2>&1; then
		pass trusted/install-as-owner
	else
		cat "$work/install.log"
		fail trusted/install-as-owner
	fi
	if [ ${#tests[@]} -gt 0 ]; then
		(cd "$work/regress" && "$regress_bin" --bindir="$bindir" --use-existing \
			--dbname=trusted_regression --inputdir="$work/regress" \
			--outputdir="$work/regress/out" "${tests[@]}") >"$work/regress.log" 2>&1
	fi
	: >"$work/regress.diffs"
	for t in "${tests[@]}"; do
		local got=$work/regress/out/results/$t.out
		if [ ! -f "$got" ]; then
			fail "trusted/regress/$t"
			continue
		fi
		perl "$here/context-filter.pl" <"$got" >"$got.filtered"
		# The same filter on the expected output: some of the C edition's
		# functions are PL/pgSQL too (slot_holders), with CONTEXT lines.
		perl "$here/context-filter.pl" <"$work/regress/expected/$t.out" >"$work/regress/expected/$t.out.filtered"
		if diff -u "$work/regress/expected/$t.out.filtered" "$got.filtered" >>"$work/regress.diffs"; then
			pass "trusted/regress/$t"
		else
			fail "trusted/regress/$t"
		fi
	done
	[ -s "$work/regress.diffs" ] && head -${ENTITLOCK_TRUSTED_DIFF_LINES:-300} "$work/regress.diffs"

	#
	# Isolation suite: the specs as they are, in a database where the
	# owner installed the file.
	#
	local specs=()
	for t in $(make_list ISOLATION); do
		if [ -n "${ENTITLOCK_TRUSTED_ONLY:-}" ] && [[ " $ENTITLOCK_TRUSTED_ONLY " != *" $t "* ]]; then
			continue
		fi
		if [ -n "${excluded[isolation/$t]:-}" ]; then
			skip "trusted/isolation/$t"
			continue
		fi
		specs+=("$t")
	done
	mkdir -p "$work/iso"
	cp -r "$root/test/isolation/specs" "$root/test/isolation/expected" "$work/iso/"
	if [ -d "$here/isolation-expected" ]; then
		cp "$here"/isolation-expected/*.out "$work/iso/expected/" 2>/dev/null
	fi
	psql -X -q -c "DROP DATABASE IF EXISTS trusted_isolation WITH (FORCE)" \
		-c "CREATE DATABASE trusted_isolation OWNER $owner TEMPLATE template0" >/dev/null
	psql -X -q -v ON_ERROR_STOP=1 -U "$owner" -d trusted_isolation -f "$dist" \
		>"$work/install-iso.log" 2>&1 || { cat "$work/install-iso.log"; fail trusted/isolation-install; }
	if [ ${#specs[@]} -gt 0 ]; then
		(cd "$work/iso" && "$iso_bin" --bindir="$bindir" --use-existing \
			--dbname=trusted_isolation --inputdir="$work/iso" \
			--outputdir="$work/iso/out" "${specs[@]}") >"$work/isolation.log" 2>&1
	fi
	: >"$work/isolation.diffs"
	for t in "${specs[@]}"; do
		local got=$work/iso/out/results/$t.out exp
		if [ ! -f "$got" ]; then
			fail "trusted/isolation/$t"
			continue
		fi
		perl "$here/context-filter.pl" <"$got" >"$got.filtered"
		# isolation expected files may have alternatives (NAME_1.out)
		local ok=
		for exp in "$work/iso/expected/$t.out" "$work/iso/expected/${t}"_[0-9].out; do
			[ -f "$exp" ] || continue
			perl "$here/context-filter.pl" <"$exp" >"$got.expected"
			if diff -u "$got.expected" "$got.filtered" >"$got.diff"; then ok=1; break; fi
		done
		if [ -n "$ok" ]; then
			pass "trusted/isolation/$t"
		else
			cat "$got.diff" >>"$work/isolation.diffs"
			fail "trusted/isolation/$t"
		fi
	done
	[ -s "$work/isolation.diffs" ] && head -${ENTITLOCK_TRUSTED_DIFF_LINES:-300} "$work/isolation.diffs"

	psql -X -q -c "DROP DATABASE IF EXISTS trusted_regression WITH (FORCE)" \
		-c "DROP DATABASE IF EXISTS trusted_isolation WITH (FORCE)" >/dev/null 2>&1
	trusted_cleanup
}

# trusted_cleanup: stops trusted_main's own cluster, removes its work
# directory (unless ENTITLOCK_KEEP) and sets back the caller's cluster.
trusted_cleanup() {
	if [ -n "${ENTITLOCK_KEEP:-}" ]; then
		[ -n "$trusted_own_cluster" ] && cluster_stop "$trusted_own_cluster"
		log "kept $work"
	else
		[ -n "$trusted_own_cluster" ] && cluster_destroy "$trusted_own_cluster"
		rm -rf "$work"
	fi
	if [ -n "$trusted_own_cluster" ] && [ -n "$saved_pghost" ]; then
		export PGHOST=$saved_pghost PGPORT=$saved_pgport
	fi
}

# trusted_install_checks DIST PGTLE OWNER WORK: installing as a managed
# database's owner would, updating in place, refusing the C extension, and
# the pg_tle file's call and script.
trusted_install_checks() {
	local dist=$1 pgtle=$2 owner=$3 work=$4 db=trusted_install got
	psql -X -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" \
		-c "CREATE DATABASE $db OWNER $owner" >/dev/null

	# Update in place: rows written through the API survive a re-run of
	# the file (the same version here; any newer file runs the same way).
	got=$(
		psql -X -q -v ON_ERROR_STOP=1 -U "$owner" -d $db -f "$dist" >/dev/null 2>&1 &&
		psql -X -At -v ON_ERROR_STOP=1 -U "$owner" -d $db <<'SQL' 2>&1
SELECT used FROM entitlock.record_usage_if_under_limit('ws:1', 'api', 3, 10);
SELECT status FROM entitlock.idempotency_begin('evt:1');
SELECT count(*) FROM entitlock.lease_acquire('job:1', '1 hour', 'w1');
SQL
	)
	if [ "$got" = $'3\nnew\n1' ] &&
		psql -X -q -v ON_ERROR_STOP=1 -U "$owner" -d $db -f "$dist" >/dev/null 2>&1; then
		got=$(psql -X -At -U "$owner" -d $db -c "SELECT entitlock.usage('ws:1', 'api') || ' ' ||
			(SELECT status FROM entitlock.idempotency_begin('evt:1')) || ' ' ||
			(SELECT count(*) FROM entitlock.leases WHERE name = 'job:1') || ' ' ||
			entitlock.trusted_version()" 2>&1)
	fi
	if [ "$got" = "3 replay 1 $(control_value default_version)" ]; then
		pass trusted/update-in-place
	else
		log "update in place: got '$got'"
		fail trusted/update-in-place
	fi

	# Refused over the C extension, changing nothing.
	if [ "$(psql -X -At -c "SELECT count(*) FROM pg_available_extensions WHERE name = 'entitlock'")" = 1 ]; then
		psql -X -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" \
			-c "CREATE DATABASE $db OWNER $owner" >/dev/null
		psql -X -q -d $db -c "CREATE EXTENSION entitlock" >/dev/null
		got=$(psql -X -q -v ON_ERROR_STOP=1 -d $db -f "$dist" 2>&1)
		if [ $? -ne 0 ] && [[ $got == *"over the C extension"* ]] &&
			[ "$(psql -X -At -d $db -c "SELECT to_regprocedure('entitlock.trusted_version()') IS NULL")" = t ]; then
			pass trusted/refuses-c-extension
		else
			log "over the C extension: $got"
			fail trusted/refuses-c-extension
		fi
	else
		skip trusted/refuses-c-extension
	fi

	# The pg_tle file: pg_tle is not packaged for Debian, so a stand-in
	# pgtle.install_extension with pg_tle's signature stores the call's
	# arguments and runs the script it wraps, as CREATE EXTENSION would.
	# What is not run: pg_tle itself and its CREATE EXTENSION.
	psql -X -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" \
		-c "CREATE DATABASE $db OWNER $owner" >/dev/null
	psql -X -q -v ON_ERROR_STOP=1 -d $db >/dev/null <<SQL
CREATE SCHEMA pgtle;
CREATE TABLE pgtle.registered (name text, version text, description text, ext text, requires text[]);
CREATE FUNCTION pgtle.install_extension(name text, version text, description text, ext text,
										requires text[] DEFAULT NULL)
RETURNS boolean LANGUAGE plpgsql AS \$\$
BEGIN
	INSERT INTO pgtle.registered VALUES (name, version, description, ext, requires);
	EXECUTE ext;
	RETURN true;
END\$\$;
GRANT USAGE ON SCHEMA pgtle TO $owner;
GRANT INSERT ON pgtle.registered TO $owner;
SQL
	got=$(psql -X -At -v ON_ERROR_STOP=1 -U "$owner" -d $db -f "$pgtle" 2>&1 &&
		psql -X -At -d $db -c "SELECT name || ' ' || version || ' ' || (position('entitlock.trusted_version()' IN ext) > 0)
			FROM pgtle.registered" -c "SELECT lpad(to_hex(entitlock.key('café')), 16, '0')" 2>&1)
	if [ "$got" = $'t\nentitlock '"$(control_value default_version)"$' true\n9a40a9b974d85a6a' ]; then
		pass trusted/pgtle-call
	else
		log "pg_tle file: got '$got'"
		fail trusted/pgtle-call
	fi
	psql -X -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
}

# make_list VAR: the names in the Makefile's VAR = \ list.
make_list() {
	awk -v var="$1" '
		$1 == var && $2 == "=" { on = 1; next }
		on { line = $0; sub(/\\$/, "", line); n = split(line, w, /[ \t]+/);
			 for (i = 1; i <= n; i++) if (w[i] != "") print w[i];
			 if ($0 !~ /\\$/) on = 0 }
	' "$ENTITLOCK_ROOT/Makefile"
}

trusted_main
if [ -n "$trusted_standalone" ]; then
	print_summary
	[ "$failed" -eq 0 ]
fi
