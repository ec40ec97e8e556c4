#!/usr/bin/env bash
#
# test/deb.sh: build the Debian packages of entitlock into dist/ ("make deb"
# runs it).
#
#   bash test/deb.sh            (as root, or as a user with sudo)
#
# Installs the build dependencies when they are missing (build-essential,
# debhelper, dpkg-dev and postgresql-server-dev-all, which brings the
# server headers of the majors Debian supports here), copies the source
# tree, uncommitted files included, to a scratch directory, and runs
# dpkg-buildpackage -us -uc there, so that neither the working tree nor its
# parent gets build files.  pg_buildext builds one postgresql-NN-entitlock
# package for each major that debian/pgversions allows and postgresql-common
# supports on this machine: 15 on Debian 12, 17 on Debian 13, 18 on sid.
#
# debian/control is committed as "pg_buildext updatecontrol" makes it for
# the majors it names (the PostgreSQL team's way); the build fails when it
# is not what debian/control.in gives for them, and otherwise regenerates it
# in the copy for the majors supported here (PG_UPDATECONTROL).  The Debian
# version is entitlock.control's default_version (native package); the
# build fails when debian/changelog says otherwise.
#
# The binary packages, their -dbgsym packages, the source package, the
# .buildinfo and the .changes end up in dist/; the paths of the binary
# packages are printed, one a line, everything else goes to stderr.  Set
# ENTITLOCK_KEEP=1 to keep the scratch directory.

set -uo pipefail

# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ENTITLOCK_ROOT" || exit 1
started=$SECONDS

command -v dpkg >/dev/null || die "not a Debian system: no dpkg"
ensure_installed build-essential debhelper dpkg-dev postgresql-server-dev-all

version=$(control_value default_version)
[ -n "$version" ] || die "no default_version in entitlock.control"
changelog_version=$(dpkg-parsechangelog -S Version) || die "cannot read debian/changelog"
[ "$changelog_version" = "$version" ] ||
	die "debian/changelog is at $changelog_version, entitlock.control at $version: add a debian/changelog entry (dch -v $version)"

tmp=$(mktemp -d /tmp/entitlock-deb.XXXXXX)
cleanup() {
	if [ -n "${ENTITLOCK_KEEP:-}" ]; then log "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
build=$tmp/entitlock-$version

# The tree without .git and build outputs (as test/matrix.sh copies it).
mkdir -p "$build" || exit 1
if [ "$(git rev-parse --show-toplevel 2>/dev/null)" = "$ENTITLOCK_ROOT" ]; then
	git ls-files -z -co --exclude-standard |
		while IFS= read -r -d '' f; do
			[ -e "$f" ] && printf '%s\0' "$f" # not deleted
		done | tar --null -T - -cf - | tar -C "$build" -xf -
else
	tar --exclude=.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' \
		--exclude=results --exclude=output_iso --exclude=tmp_check \
		--exclude=tmp_check_iso --exclude=log --exclude=regression.diffs \
		--exclude=regression.out --exclude=./dist -cf - . | tar -C "$build" -xf -
fi || die "cannot copy the source tree to $build"

# debian/control must be what control.in gives for the majors it names.
cd "$build" || exit 1
named=$(sed -n 's/^Package: postgresql-\([0-9][0-9]*\)-entitlock$/\1/p' debian/control | xargs)
PG_SUPPORTED_VERSIONS=$named pg_buildext updatecontrol ||
	die "pg_buildext updatecontrol failed"
cmp -s debian/control "$ENTITLOCK_ROOT/debian/control" ||
	die "debian/control is not what debian/control.in gives for PostgreSQL $named: run PG_SUPPORTED_VERSIONS='$named' pg_buildext updatecontrol and commit the result"

majors=$(pg_buildext supported-versions | xargs)
[ -n "$majors" ] || die "debian/pgversions allows none of the PostgreSQL majors supported here ($(/usr/share/postgresql-common/supported-versions | xargs))"
log "building postgresql-NN-entitlock $version for PostgreSQL $majors in $build"

# Not the variables of a calling make ("make deb"): debian/rules is a
# makefile too, and would take the caller's command-line variables.
if ! env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u MAKEOVERRIDES PG_UPDATECONTROL=yes \
	dpkg-buildpackage -us -uc >"$tmp/build.log" 2>&1; then
	tail -n 60 "$tmp/build.log" >&2
	die "dpkg-buildpackage failed (the last 60 lines are above; ENTITLOCK_KEEP=1 keeps $tmp/build.log)"
fi

cd "$ENTITLOCK_ROOT" || exit 1
mkdir -p dist || exit 1
# Only this build's packages in dist/, next to its .changes.
rm -f dist/postgresql-*-entitlock_* dist/postgresql-*-entitlock-dbgsym_* dist/entitlock_*
arch=$(dpkg --print-architecture)
files=("$tmp"/*.deb "$tmp"/entitlock_"$version".dsc "$tmp"/entitlock_"$version".tar.* \
	"$tmp"/entitlock_"$version"_"$arch".buildinfo "$tmp"/entitlock_"$version"_"$arch".changes)
cp "${files[@]}" dist/ || die "cannot copy the packages to dist/"
log "built in $((SECONDS - started))s: $(cd "$tmp" && echo *.deb entitlock_*)"
for f in "$tmp"/postgresql-*-entitlock_*.deb; do
	echo "dist/$(basename "$f")"
done
