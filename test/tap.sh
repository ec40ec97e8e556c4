#!/usr/bin/env bash
#
# test/tap.sh: run entitlock's TAP tests, written with PostgreSQL's own
# framework (PostgreSQL::Test::Cluster, PostgreSQL::Test::Utils), with prove.
#
#   bash test/tap.sh                                   (every test/tap/*.pl)
#   bash test/tap.sh test/tap/001_logical_replication.pl
#
# The extension must already be built and installed into the server's
# directories (make && make install, or test/run.sh).  Missing Debian
# packages (postgresql-server-dev-$PG_MAJOR ships the Perl modules and
# pg_regress, libipc-run-perl the IPC::Run they use, pgbouncer the pooler
# 059_pgbouncer.pl puts in front of its node) are installed by
# ensure_packages from test/lib.sh.
#
# PostgreSQL refuses to run as root, so as root prove runs as the postgres
# OS user.  The tests' clusters and logs (tmp_check/) go to a fresh scratch
# directory under /tmp; it is removed when every test passes, and kept (its
# path printed, with the regress_log and server log tails of each failed
# test) when one fails.  ENTITLOCK_KEEP=1 keeps it in any case.
# PROVE_FLAGS adds options to prove (e.g. PROVE_FLAGS=--verbose).
#
# Exits 0 only when every test passes.

set -uo pipefail

# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# pgbouncer for test/tap/059_pgbouncer.pl.
ensure_packages pgbouncer

bindir=$(pg_bindir)
pgxs=$(dirname "$bindir")/lib/pgxs
perl_lib=$pgxs/src/test/perl
pg_regress=$pgxs/src/test/regress/pg_regress

[ -f "$perl_lib/PostgreSQL/Test/Cluster.pm" ] ||
	die "$perl_lib/PostgreSQL/Test/Cluster.pm not found (postgresql-server-dev-$PG_MAJOR)"
[ -x "$pg_regress" ] || die "$pg_regress not found (postgresql-server-dev-$PG_MAJOR)"
[ -f "$("$bindir/pg_config" --sharedir)/extension/entitlock.control" ] ||
	die "entitlock is not installed for PostgreSQL $PG_MAJOR (make && make install first)"

# The tests to run.
sources=()
if [ $# -eq 0 ]; then
	shopt -s nullglob
	sources=("$ENTITLOCK_ROOT"/test/tap/*.pl)
	shopt -u nullglob
	[ ${#sources[@]} -gt 0 ] || die "no tests in $ENTITLOCK_ROOT/test/tap"
else
	for t in "$@"; do
		[ -f "$t" ] || die "no such test: $t"
		sources+=("$t")
	done
fi

work=$(mktemp -d /tmp/entitlock-tap.XXXXXX) || die "mktemp failed"
chmod 755 "$work"

# prove runs as postgres, which may not read the tree (a clone in /root):
# the tests, and any module beside them (-I), are copied to $work/tap, and
# run from there.
mkdir "$work/tap" || die "cannot create $work/tap"
cp "${sources[@]}" "$work/tap/" || die "cannot copy the tests to $work/tap"
shopt -s nullglob
for m in "$ENTITLOCK_ROOT"/test/tap/*.pm; do cp "$m" "$work/tap/" || die "cannot copy $m"; done
shopt -u nullglob
tests=()
for t in "${sources[@]}"; do tests+=("$work/tap/$(basename "$t")"); done
# The trusted edition's install file, for tests that run against it
# (030_model.pl with ENTITLOCK_EDITION=trusted or in differential mode).
bash "$ENTITLOCK_ROOT/trusted/build.sh" "$work/tap" >/dev/null ||
	die "trusted/build.sh failed"
chmod -R a+rX "$work/tap"
# What some tests read from the tree (the version, the install and update
# scripts, the built library), copied likewise; ENTITLOCK_SRC names it.
mkdir "$work/src" || die "cannot create $work/src"
cp -r "$ENTITLOCK_ROOT/sql" "$ENTITLOCK_ROOT/entitlock.control" "$ENTITLOCK_ROOT/META.json" "$work/src/" ||
	die "cannot copy the tree's files to $work/src"
[ -f "$ENTITLOCK_ROOT/entitlock.so" ] && cp "$ENTITLOCK_ROOT/entitlock.so" "$work/src/"
chmod -R a+rX "$work/tap" "$work/src"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$work"

# PostgreSQL 15's PostgreSQL::Test::Utils writes to $TESTDIR/tmp_check;
# 16 and later read TESTDATADIR and TESTLOGDIR instead.  Set all three so
# that the logs land in the same place on any major (as_pg runs prove
# from /).  PROVE_FLAGS is split into words on purpose.
# shellcheck disable=SC2086
as_pg env \
	PATH="$bindir:$PATH" \
	PG_REGRESS="$pg_regress" \
	TESTDIR="$work" \
	TESTDATADIR="$work/tmp_check" \
	TESTLOGDIR="$work/tmp_check/log" \
	PG_MAJOR="$PG_MAJOR" \
	ENTITLOCK_TRUSTED_SQL="$work/tap/entitlock-trusted.sql" \
	ENTITLOCK_SRC="$work/src" \
	prove -I "$perl_lib" -I "$work/tap" ${PROVE_FLAGS:-} \
	"${tests[@]}" 2>&1 | tee "$work/prove.out"
status=${PIPESTATUS[0]}

if [ "$status" -eq 0 ]; then
	if [ "${ENTITLOCK_KEEP:-0}" = 1 ]; then
		log "logs kept in $work/tmp_check/log"
	else
		rm -rf "$work"
	fi
	exit 0
fi

# Which tests failed: prove's summary names them; when it names none (it
# died before its summary), show every test's log.
failed=()
for t in "${tests[@]}"; do
	grep -qF -- "$t (Wstat:" "$work/prove.out" && failed+=("$t")
done
[ ${#failed[@]} -gt 0 ] || failed=("${tests[@]}")

for t in "${failed[@]}"; do
	name=$(basename "$t")
	name=${name%.*}
	rlog=$work/tmp_check/log/regress_log_$name
	printf '\n======== %s: %s\n' "$name" "$rlog"
	if [ -f "$rlog" ]; then cat "$rlog"; else echo "(no regress_log)"; fi
	for slog in "$work"/tmp_check/log/"${name}"_*.log; do
		[ -f "$slog" ] || continue
		printf '\n======== %s (last 60 lines)\n' "$slog"
		tail -n 60 "$slog"
	done
done
printf '\nFAILED: logs of the TAP tests are in %s/tmp_check/log\n' "$work"
exit 1
