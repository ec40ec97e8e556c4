#!/usr/bin/env bash
#
# test/check/package.sh: the Debian package, built, checked and used as a
# user would.
#
#   bash test/check/package.sh  (as root, or as a user with sudo)
#
# test/run.sh runs it with the other checks; test/matrix.sh runs it in each
# Debian root too, with PG_MAJOR set.  It builds with "make deb"
# (test/deb.sh) and checks that
#   - pg_buildext built exactly one postgresql-NN-entitlock for each major
#     debian/pgversions allows and postgresql-common supports here,
#     PG_MAJOR among them, at entitlock.control's version;
#   - lintian finds no error in the .changes (source package, binary
#     packages); its other tags are shown;
#   - the package holds entitlock.so, entitlock.control, every
#     sql/entitlock--*.sql, the README and nothing else but bitcode and
#     Debian's changelog and copyright (dpkg -c), its files are the tree's,
#     and it depends on postgresql-NN;
#   - dpkg -i installs it, and dpkg -L lists those files;
#   - on a throwaway cluster of its own, with the library preloaded:
#     CREATE EXTENSION gives default_version, and key, lock, holders,
#     record_usage_if_under_limit, idempotency_begin, lease_acquire and the
#     statistics view work; a database created at the oldest version with
#     rows in it reaches default_version by ALTER EXTENSION UPDATE, keeps
#     its rows and has the functions of a fresh install;
#   - dpkg -r removes every file of the package, and CREATE EXTENSION then
#     fails.
#
# dpkg -i writes over the files "make install" put in the server's
# directories (no package owns them), and dpkg -r removes them; so an EXIT
# trap removes the package and, when there was a source install, installs
# from the source tree again (build_install), even after a failure.  Skips
# (exit 77) without dpkg, or when the package is already installed (it
# would be removed).

set -uo pipefail
# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$ENTITLOCK_ROOT" || exit 1

command -v dpkg >/dev/null || { log "not a Debian system: no dpkg"; exit 77; }
ensure_packages lintian

version=$(control_value default_version)
pkg=postgresql-$PG_MAJOR-entitlock
arch=$(dpkg --print-architecture)
pgc="$(pg_bindir)/pg_config"
extdir=$("$pgc" --sharedir)/extension
installed() {
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'
}
if installed; then
	log "$pkg is installed: this check would remove it"
	exit 77
fi

dir=
source_install=
[ -e "$extdir/entitlock.control" ] && source_install=1
cleanup() {
	local rc=$?
	[ -n "$dir" ] && cluster_destroy "$dir"
	if installed; then
		as_root dpkg -r "$pkg" >/dev/null || { log "FAILED: dpkg -r $pkg"; rc=1; }
	fi
	if [ -n "$source_install" ] && [ ! -e "$extdir/entitlock.control" ]; then
		log "installing from the source tree again"
		(build_install) || rc=1
	fi
	exit "$rc"
}
trap cleanup EXIT

#
# 1. Build.
#
started=$SECONDS
mapfile -t built < <(make -s deb)
[ ${#built[@]} -gt 0 ] || { log "FAILED: make deb built no package"; exit 1; }
log "ok: make deb in $((SECONDS - started))s: ${built[*]}"
mapfile -t wanted < <(pg_buildext supported-versions |
	sed "s|.*|dist/postgresql-&-entitlock_${version}_$arch.deb|")
expect "one package per supported major (pg_buildext supported-versions: $(pg_buildext supported-versions | xargs))" \
	"$(printf '%s\n' "${built[@]}" | sort | xargs)" "$(printf '%s\n' "${wanted[@]}" | sort | xargs)"
deb=dist/${pkg}_${version}_$arch.deb
[ -f "$deb" ] || { log "FAILED: no $deb for PG_MAJOR=$PG_MAJOR"; exit 1; }

#
# 2. lintian.
#
started=$SECONDS
lintian_out=$(lintian -I "dist/entitlock_${version}_$arch.changes" 2>&1)
status=$?
lintian_out=$(grep -v '^running with root privileges' <<<"$lintian_out")
errors=$(grep -c '^E: ' <<<"$lintian_out")
[ -n "$lintian_out" ] && sed 's/^/  lintian: /' <<<"$lintian_out" >&2
log "lintian in $((SECONDS - started))s: $errors errors, $(grep -c '^W: ' <<<"$lintian_out") warnings"
expect "lintian: no error tags" "$errors" 0
if [ $status -ne 0 ] && [ "$errors" -eq 0 ]; then
	log "FAILED: lintian exited with $status"
	check_failed=1
fi

#
# 3. What the package holds.
#
required=("usr/lib/postgresql/$PG_MAJOR/lib/entitlock.so"
	"usr/share/postgresql/$PG_MAJOR/extension/entitlock.control")
for f in sql/entitlock--*.sql; do
	required+=("usr/share/postgresql/$PG_MAJOR/extension/${f#sql/}")
done
doc=usr/share/doc/$pkg
mapfile -t files < <(dpkg-deb -c "$deb" | awk '$1 ~ /^-/ { sub(/^\.\//, "", $6); print $6 }')
for f in "${required[@]}"; do
	printf '%s\n' "${files[@]}" | grep -qxF "$f" || { log "FAILED: $deb lacks /$f"; check_failed=1; }
done
printf '%s\n' "${files[@]}" | grep -qxE "$doc/README\.md(\.gz)?" ||
	{ log "FAILED: $deb lacks the README in /$doc"; check_failed=1; }
unexpected=$(printf '%s\n' "${files[@]}" | grep -vxF -f <(printf '%s\n' "${required[@]}") |
	grep -vxE "$doc/(README\.md|changelog)(\.gz)?|$doc/copyright|usr/lib/postgresql/$PG_MAJOR/lib/bitcode/entitlock(\.index\.bc|/src/[a-z_]+\.bc)")
[ -z "$unexpected" ] || { log "FAILED: $deb holds unexpected files:"; log "$unexpected"; check_failed=1; }
bitcode=$(printf '%s\n' "${files[@]}" | grep -c /bitcode/)
if "$pgc" --configure | grep -q -- --with-llvm; then
	check "[ $bitcode -gt 1 ]" "the server has JIT (--with-llvm) but $deb holds no bitcode"
fi
scripts=(sql/entitlock--*.sql)
log "ok: $deb holds ${#files[@]} files: entitlock.so, entitlock.control, ${#scripts[@]} scripts, $bitcode bitcode, $(printf '%s\n' "${files[@]}" | grep -c "^$doc/") doc"
depends=$(dpkg-deb -f "$deb" Depends)
# postgresql-NN, bare or with the version pg_buildext pins it to.
if ! [[ ", $depends," =~ ,\ postgresql-$PG_MAJOR(\ \([^\)]*\))?, ]]; then
	log "FAILED: $deb depends on '$depends', not on postgresql-$PG_MAJOR"
	check_failed=1
fi

#
# 4. Install.
#
if ! out=$(as_root dpkg -i "$deb" 2>&1); then
	log "FAILED: dpkg -i $deb: $out"
	exit 1
fi
log "ok: dpkg -i $deb"
listed=$(dpkg -L "$pkg")
for f in "${required[@]}"; do
	grep -qxF "/$f" <<<"$listed" || { log "FAILED: dpkg -L $pkg does not list /$f"; check_failed=1; }
done
check "cmp -s entitlock.control '$extdir/entitlock.control'" "the installed entitlock.control is not the tree's"
for f in sql/entitlock--*.sql; do
	check "cmp -s '$f' '$extdir/${f#sql/}'" "the installed ${f#sql/} is not the tree's"
done

#
# 5. Use it, on a cluster of its own.
#
dir=$(mktemp -d /tmp/entitlock-package.XXXXXX)
cluster_start "$dir" "shared_preload_libraries = 'entitlock'"
log "throwaway cluster with the packaged library preloaded: $PGHOST port $PGPORT"
q() { psql -X -q -At -F ' ' -v ON_ERROR_STOP=1 -d "$1" 2>&1; }

db=entitlock_package
psql -X -q -c "CREATE DATABASE $db" || exit 1
out=$(q "$db" <<'SQL'
CREATE EXTENSION entitlock;
SELECT extversion FROM pg_extension WHERE extname = 'entitlock';
SELECT entitlock.key('x') = entitlock.key('x'), entitlock.key('x') <> entitlock.key('y');
BEGIN;
SELECT entitlock.lock('job:1');
SELECT count(*), min(mode) FROM entitlock.holders('job:1');
COMMIT;
SELECT allowed, used, remaining FROM entitlock.record_usage_if_under_limit('acct', 'api', 3, 5);
SELECT allowed, used, remaining FROM entitlock.record_usage_if_under_limit('acct', 'api', 3, 5);
SELECT status FROM entitlock.idempotency_begin('req:1');
SELECT fencing > 0 FROM entitlock.lease_acquire('lease:1', '1 minute', 'worker');
SELECT sum(calls) FILTER (WHERE kind = 'usage') FROM entitlock.stats;
SQL
)
expect "fresh install: version, key, lock and holders, usage limit, idempotency, lease, statistics" \
	"$(tr '\n' '|' <<<"$out")" "$version|t t||1 exclusive|t 3 2|f 3 2|new|t|2|"

oldest=$(printf '%s\n' "${scripts[@]}" | sed -n 's/^sql\/entitlock--\([^-]*\)\.sql$/\1/p' | sort -V | head -1)
if [ "$oldest" = "$version" ]; then
	log "no older version to update from"
else
	old=entitlock_package_old
	psql -X -q -c "CREATE DATABASE $old" || exit 1
	out=$(q "$old" <<SQL
CREATE EXTENSION entitlock VERSION '$oldest';
SELECT extversion FROM pg_extension WHERE extname = 'entitlock';
SELECT allowed FROM entitlock.record_usage_if_under_limit('acct', 'api', 2, 10);
SELECT status FROM entitlock.idempotency_begin('req:1', NULL, '1 hour');
CREATE TABLE lease_token AS SELECT token FROM entitlock.lease_acquire('lease:1', '1 hour', 'worker');
SQL
)
	expect "install at $oldest with rows" "$(tr '\n' '|' <<<"$out")" "$oldest|t|new|"
	out=$(q "$old" <<'SQL'
ALTER EXTENSION entitlock UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'entitlock';
SELECT entitlock.usage('acct', 'api');
SELECT status FROM entitlock.idempotency_begin('req:1');
SELECT entitlock.lease_renew('lease:1', token, '1 hour') FROM lease_token;
SELECT count(*) FROM pg_proc WHERE pronamespace = 'entitlock'::regnamespace;
SQL
)
	fresh=$(q "$db" <<<"SELECT count(*) FROM pg_proc WHERE pronamespace = 'entitlock'::regnamespace")
	expect "ALTER EXTENSION UPDATE from $oldest: version, usage, idempotency key and lease kept, functions of a fresh install" \
		"$(tr '\n' '|' <<<"$out")" "$version|2|replay|t|$fresh|"
fi

#
# 6. Remove.
#
if ! out=$(as_root dpkg -r "$pkg" 2>&1); then
	log "FAILED: dpkg -r $pkg: $out"
	exit 1
fi
check "! installed" "$pkg is still installed after dpkg -r"
left=0
for f in "${files[@]}"; do
	[ -e "/$f" ] && { log "FAILED: /$f is still there after dpkg -r"; left=1; check_failed=1; }
done
[ $left -eq 0 ] && log "ok: dpkg -r $pkg removed its ${#files[@]} files"
psql -X -q -c "CREATE DATABASE ${db}_removed" || exit 1
out=$(q "${db}_removed" <<<"CREATE EXTENSION entitlock")
if [[ $out == *entitlock.control* || $out == *'is not available'* ]]; then
	log "ok: CREATE EXTENSION fails after dpkg -r: $(head -1 <<<"$out")"
else
	log "FAILED: CREATE EXTENSION after dpkg -r did not fail for want of the control file: '$out'"
	check_failed=1
fi

exit $check_failed
