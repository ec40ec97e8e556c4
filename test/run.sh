#!/usr/bin/env bash
#
# test/run.sh: the whole entitlock test suite, from a fresh machine.
#
#   bash test/run.sh            (as root, or as a user with sudo)
#
# Installs the Debian packages it needs when they are missing, builds with
# -Werror, installs the extension, starts a throwaway cluster owned by the
# postgres OS user on a private port and socket, runs the regression and
# isolation suites (make installcheck) on the C edition and then on the
# trusted edition (test/trusted/run.sh), then every script under test/check
# and the TAP tests under test/tap (pgbench stress included), and stops the
# cluster.
# Then test/matrix.sh builds and runs the regression and isolation suites
# again on PostgreSQL 17 and 18, each in a Debian chroot it creates when
# missing (ENTITLOCK_MATRIX="17 18" picks the majors, ENTITLOCK_MATRIX=
# skips them).  Everything counts in one closing line:
#   N passed, N failed[, N skipped]
#
# It exits non-zero when anything failed.  Set ENTITLOCK_KEEP=1 to keep the
# cluster's directory (logs, data) for a post-mortem.  ENTITLOCK_SUITE=core
# stops after the regression and isolation suites (test/matrix.sh runs that
# inside each chroot, with PG_MAJOR set).

set -uo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/tally.sh"
cd "$ENTITLOCK_ROOT" || exit 1

# Count pg_regress's per-test lines.  PostgreSQL 15 prints
# "test name ... ok" ("... FAILED"); 16 and later print TAP-style
# "ok 1 - name" ("not ok 1 - name").
count_pg_regress() {
	local label=$1 log=$2 line name found=0
	while IFS= read -r line; do
		if [[ $line =~ ^(test|\ +)\ *([^ ]+)\ +\.\.\.\ +(ok|FAILED|failed) ]]; then
			name=${BASH_REMATCH[2]}
			if [ "${BASH_REMATCH[3]}" = ok ]; then pass "$label/$name"; else fail "$label/$name"; fi
			found=1
		elif [[ $line =~ ^(not\ )?ok\ +[0-9]+\ +[-+]\ +([^ ]+) ]]; then
			name=${BASH_REMATCH[2]}
			if [ -z "${BASH_REMATCH[1]}" ]; then pass "$label/$name"; else fail "$label/$name"; fi
			found=1
		fi
	done <"$log"
	[ $found -eq 1 ] || fail "$label (no test ran; see $log)"
}

# Run one script; exit status 0 passes, 77 skips, anything else fails.
run_script() {
	local script=$1 name status started
	name=${script#test/}
	name=${name%.sh}
	started=$SECONDS
	printf -- '--- %s\n' "$name"
	bash "$script"
	status=$?
	printf -- '--- %s: exit %d after %ds\n' "$name" "$status" $((SECONDS - started))
	case $status in
	0) pass "$name" ;;
	77) skip "$name" ;;
	*) fail "$name" ;;
	esac
}

# Each TAP test (test/tap/*.pl, PostgreSQL::Test::Cluster) through
# test/tap.sh; they start clusters of their own.
run_tap() {
	local t name status started
	for t in test/tap/*.pl; do
		[ -e "$t" ] || continue
		name=tap/$(basename "$t" .pl)
		started=$SECONDS
		printf -- '--- %s\n' "$name"
		bash test/tap.sh "$t" 2>&1 | tee "$workdir/tap.log"
		status=${PIPESTATUS[0]}
		printf -- '--- %s: exit %d after %ds\n' "$name" "$status" $((SECONDS - started))
		# A test that skips itself (plan skip_all) says why and counts as
		# skipped.
		if [ "$status" -ne 0 ]; then
			fail "$name"
		elif grep -q '\.\. skipped: ' "$workdir/tap.log"; then
			skip "$name"
		else
			pass "$name"
		fi
	done
}

# test/matrix.sh, with its output shown as it comes; its ok/FAILED/skipped
# lines count here.
run_matrix() {
	local line status started=$SECONDS before=$failed
	printf -- '--- matrix\n'
	ENTITLOCK_MATRIX_NESTED=1 bash test/matrix.sh 2>&1 | tee "$workdir/matrix.log"
	status=${PIPESTATUS[0]}
	printf -- '--- matrix: exit %d after %ds\n' "$status" $((SECONDS - started))
	while IFS= read -r line; do
		case $line in
		'ok      '*) passed=$((passed + 1)) ;;
		'FAILED  '*) failed=$((failed + 1)); failures+=("${line:8}") ;;
		'skipped '*) skipped=$((skipped + 1)) ;;
		esac
	done <"$workdir/matrix.log"
	case $status in
	0) ;;
	77) skip matrix ;;
	*) [ $failed -gt "$before" ] || fail "matrix (exit $status)" ;;
	esac
}

ensure_packages
build_install

workdir=$(mktemp -d /tmp/entitlock-test.XXXXXX)
cleanup() {
	if [ -n "${ENTITLOCK_KEEP:-}" ]; then
		cluster_stop "$workdir"
		log "kept $workdir"
	else
		cluster_destroy "$workdir"
	fi
}
trap cleanup EXIT
cluster_start "$workdir"
log "throwaway cluster: $PGHOST port $PGPORT"
export ENTITLOCK_SERVER_LOG=$workdir/server.log

pgc="$(pg_bindir)/pg_config"

make -s PG_CONFIG="$pgc" installcheck ISOLATION= >"$workdir/regress.log" 2>&1
cat "$workdir/regress.log"
count_pg_regress regress "$workdir/regress.log"
[ -f regression.diffs ] && head -200 regression.diffs

make -s PG_CONFIG="$pgc" installcheck REGRESS= >"$workdir/isolation.log" 2>&1
cat "$workdir/isolation.log"
count_pg_regress isolation "$workdir/isolation.log"
[ -f output_iso/regression.diffs ] && head -200 output_iso/regression.diffs
# The isolation suite again with the library preloaded, so that every call
# is also counted in shared memory (src/stats.c), under every interleaving
# above; the counts must then be there.  The rest of the suite keeps the
# preload (test/tap/002_statistics.pl checks the counts themselves).
echo "shared_preload_libraries = 'entitlock'" | as_pg tee -a "$PGHOST/data/postgresql.conf" >/dev/null
if as_pg "$(pg_bindir)/pg_ctl" -D "$PGHOST/data" -l "$PGHOST/server.log" -w restart >/dev/null; then
	make -s PG_CONFIG="$pgc" installcheck REGRESS= >"$workdir/isolation-preloaded.log" 2>&1
	cat "$workdir/isolation-preloaded.log"
	count_pg_regress isolation-preloaded "$workdir/isolation-preloaded.log"
	[ -f output_iso/regression.diffs ] && head -200 output_iso/regression.diffs
	counted=$(psql -X -At -d isolation_regression -c "SELECT count(DISTINCT kind) || ' ' || sum(calls) FROM entitlock.stats" 2>&1)
	log "statistics after the preloaded isolation suite: kinds and calls: $counted"
	if [[ $counted =~ ^6\ [0-9]+$ ]]; then pass stats/preloaded-counts; else fail stats/preloaded-counts; fi
else
	tail -20 "$PGHOST/server.log"
	fail "restart with shared_preload_libraries"
fi

# The same regression and isolation suites against the trusted edition
# (SQL and PL/pgSQL only, dist/entitlock-trusted.sql), installed by a
# database owner that is not a superuser; reported as trusted/...  Part of
# the core suite, so the 17 and 18 roots of test/matrix.sh run it too.
printf -- '--- trusted\n'
. test/trusted/run.sh

# In the matrix's roots (core suite), the Debian package of that major.
if [ "${ENTITLOCK_SUITE:-}" = core ] && [ -n "${ENTITLOCK_PACKAGE:-}" ]; then
	run_script test/check/package.sh
fi

if [ "${ENTITLOCK_SUITE:-}" != core ]; then
	for script in test/check/*.sh; do
		[ -e "$script" ] || continue
		run_script "$script"
	done
	run_tap
	run_matrix
fi

print_summary
[ $failed -eq 0 ]
