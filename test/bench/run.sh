#!/usr/bin/env bash
#
# test/bench/run.sh: run one benchmark, test/bench/NAME.pl (written with
# PostgreSQL's PostgreSQL::Test::Cluster and pgbench; EntitlockBench.pm).
#
#   bash test/bench/run.sh locks              (starts its own throwaway node)
#   BENCH_SECONDS=10 bash test/bench/run.sh usage
#
# Without PGHOST it builds and installs the extension first, and the
# benchmark starts a node of its own; with PGHOST (and PGPORT) it runs on
# that cluster.  As root it runs as the postgres OS user, from a copy in a
# scratch directory (postgres may not read a clone in /root).

set -uo pipefail

# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

[ $# -eq 1 ] || die "usage: bash test/bench/run.sh NAME (one of: $(cd "$ENTITLOCK_ROOT/test/bench" && ls ./*.pl | sed 's|^\./||; s|\.pl$||' | tr '\n' ' '))"
src=$ENTITLOCK_ROOT/test/bench/$1.pl
[ -f "$src" ] || die "no such benchmark: $src"

# shellcheck disable=SC2119 # no extra packages
ensure_packages
[ -n "${PGHOST:-}" ] || build_install
bindir=$(pg_bindir)
perl_lib=$(dirname "$bindir")/lib/pgxs/src/test/perl

work=$(mktemp -d /tmp/entitlock-bench.XXXXXX) || die "mktemp failed"
trap 'rm -rf "$work"' EXIT
cp "$src" "$ENTITLOCK_ROOT"/test/bench/*.pm "$work/" || die "cannot copy $src"
# The trusted edition's install file, for trusted.pl (BENCH_TRUSTED_SQL).
bash "$ENTITLOCK_ROOT/trusted/build.sh" "$work" >/dev/null || die "trusted/build.sh failed"
chmod -R a+rX "$work"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$work"

# Errors go to the log PostgreSQL::Test::Utils writes: shown on failure.
as_pg env PATH="$bindir:$PATH" PG_REGRESS="$(dirname "$bindir")/lib/pgxs/src/test/regress/pg_regress" \
	TESTDIR="$work" TESTDATADIR="$work/tmp_check" \
	TESTLOGDIR="$work/tmp_check/log" BENCH_HOST="${PGHOST:-}" BENCH_PORT="${PGPORT:-}" \
	BENCH_TRUSTED_SQL="${BENCH_TRUSTED_SQL:-$work/entitlock-trusted.sql}" \
	perl -I "$perl_lib" -I "$work" "$work/$1.pl"
status=$?
if [ "$status" -ne 0 ]; then
	tail -n 30 "$work/tmp_check/log/regress_log_$1" >&2
	die "$1 failed (exit $status)"
fi
