#!/usr/bin/env bash
#
# test/matrix.sh: build entitlock and run its regression and isolation
# suites on other PostgreSQL majors, each in a Debian chroot.
#
#   bash test/matrix.sh         (as root, or as a user with sudo)
#
# test/run.sh runs it after the host suite and counts its results.  For each
# major it
#   - creates a bare Debian root (debootstrap --variant=minbase, 1 to 3
#     minutes, mostly downloads; missing roots are built in parallel) or
#     reuses the one already there,
#   - mounts /proc and a tmpfs on /dev/shm in it (unmounted at exit, even on
#     failure), and installs there with apt-get the packages it lacks,
#   - copies the source tree (with uncommitted files) to /build/entitlock,
#   - runs test/run.sh there with PG_MAJOR=NN ENTITLOCK_SUITE=core: build
#     with -Werror, install, throwaway cluster, regression and isolation
#     suites, then (ENTITLOCK_PACKAGE=1) test/check/package.sh: the Debian
#     package postgresql-NN-entitlock built, linted, installed, updated
#     from 1.0 and removed; its results are reported as pgNN/build,
#     pgNN/regress/NAME, pgNN/isolation/NAME and pgNN/check/package.
#
# Environment:
#   ENTITLOCK_MATRIX   majors to test (default "17 18"; empty: skip, exit 77)
#   ENTITLOCK_ROOTS    where the roots live (default /var/cache/entitlock-roots;
#                      pgNN/, its debootstrap log pgNN.log)
#   ENTITLOCK_SRC      source tree to test (default: the one this script is in)
#   ENTITLOCK_MIRROR   Debian mirror for debootstrap (default deb.debian.org)
#   ENTITLOCK_KEEP     passed on: keep each chroot cluster's directory
#
# Prints "ok/FAILED/skipped NAME" lines as run.sh does, the inner output
# prefixed with [pgNN], and closes with "N passed, N failed" (left out when
# run.sh runs it, ENTITLOCK_MATRIX_NESTED=1).  Exits non-zero when anything
# failed.

set -uo pipefail

# shellcheck source=test/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=test/tally.sh
. "$(dirname "${BASH_SOURCE[0]}")/tally.sh"

if [ "$(id -u)" -ne 0 ]; then
	exec sudo --preserve-env=ENTITLOCK_MATRIX,ENTITLOCK_ROOTS,ENTITLOCK_SRC,ENTITLOCK_MIRROR,ENTITLOCK_KEEP,ENTITLOCK_MATRIX_NESTED \
		bash "${BASH_SOURCE[0]}" "$@"
fi

majors=${ENTITLOCK_MATRIX-17 18}
roots=${ENTITLOCK_ROOTS:-/var/cache/entitlock-roots}
src=${ENTITLOCK_SRC:-$ENTITLOCK_ROOT}
mirror=${ENTITLOCK_MIRROR:-http://deb.debian.org/debian}

# The Debian suite that ships each major.
declare -A suites=([17]=trixie [18]=sid)

# What each root needs: the build, the regression and isolation suites, and
# whatever ensure_packages in lib.sh checks for, so that nothing in the root
# reaches for apt-get.
root_packages() {
	echo "postgresql-$1 postgresql-server-dev-$1 make gcc libc6-dev libipc-run-perl xxhash" \
		"build-essential debhelper dpkg-dev postgresql-server-dev-all lintian"
}

if [ -z "${majors// /}" ]; then
	log "ENTITLOCK_MATRIX is empty: no major to test"
	exit 77
fi
[ -d "$src" ] || die "source tree $src not found"
src=$(cd "$src" && pwd -P)
mkdir -p "$roots" || die "cannot create $roots"
roots=$(cd "$roots" && pwd -P)

# One matrix at a time per roots directory: they share the roots.  What
# runs in a root gets 9>&-, so that a process left behind there cannot
# hold the lock.
exec 9>"$roots/matrix.lock"
flock -w 1800 9 || die "another test/matrix.sh holds $roots/matrix.lock"

# Mount points to take down at exit, in order.
mounted=()

# umount_under DIR: unmount everything mounted at or below DIR, deepest
# first (a debootstrap that was killed leaves its /proc and /sys mounted).
umount_under() {
	local dir=$1 mp
	awk '{ print $2 }' /proc/mounts | while IFS= read -r mp; do
		mp=$(printf '%b' "$mp") # /proc/mounts escapes spaces as \040
		case $mp in "$dir" | "$dir"/*) echo "$mp" ;; esac
	done | sort -r | while IFS= read -r mp; do
		umount "$mp" 2>/dev/null || umount -l "$mp"
	done
}

# stop_root_processes ROOT: end what is still running chrooted in ROOT (a
# cluster left behind by an interrupted inner run): SIGTERM, then SIGKILL.
stop_root_processes() {
	local root=$1 p pids i
	for i in 1 2 3 4 5 6 7 8 9 10 11; do
		pids=()
		for p in /proc/[0-9]*; do
			# the same directory, not the same path: in a chroot, a
			# process in another root of that name would match the path
			[ "$p/root" -ef "$root" ] && pids+=("${p#/proc/}")
		done
		[ ${#pids[@]} -eq 0 ] && return 0
		if [ "$i" -eq 1 ]; then
			log "ending processes left in $root: ${pids[*]}"
			kill -TERM "${pids[@]}" 2>/dev/null
		elif [ "$i" -eq 11 ]; then
			kill -KILL "${pids[@]}" 2>/dev/null
		fi
		sleep 0.5
	done
}

umount_root() {
	local root=$1
	stop_root_processes "$root"
	umount_under "$root/dev/shm"
	umount_under "$root/proc"
}

# mount_root ROOT: after a run that was killed, end what it left in ROOT
# and remove its clusters (ENTITLOCK_KEEP's too: keep a copy before the
# next run), then mount /proc and a tmpfs on /dev/shm.
mount_root() {
	local root=$1
	umount_root "$root"
	rm -rf --one-file-system "$root"/tmp/entitlock-test.*
	mounted+=("$root")
	mount -t proc proc "$root/proc" &&
		mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
}

cleanup() {
	local root
	for root in "${mounted[@]}"; do umount_root "$root"; done
	mounted=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ensure_debootstrap() {
	command -v debootstrap >/dev/null &&
		[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] && return 0
	log "installing: debootstrap debian-archive-keyring"
	env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
		env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends debootstrap debian-archive-keyring wget >&2
}

# no_services ROOT: no package's maintainer scripts start a service there.
no_services() {
	[ -e "$1/usr/sbin/policy-rc.d" ] && return 0
	printf '#!/bin/sh\nexit 101\n' >"$1/usr/sbin/policy-rc.d" &&
		chmod 755 "$1/usr/sbin/policy-rc.d"
}

# make_root MAJOR: a bare debootstrap into pgNN.tmp, renamed to pgNN only
# when complete, so that a half-built root is never used.  The packages go
# in afterwards with apt-get (upkeep_root), which resolves what debootstrap
# --include cannot (virtual packages, such as lintian's perl-openssl-abi-3).
make_root() {
	local v=$1 root=$roots/pg$1 tmp=$roots/pg$1.tmp started=$SECONDS
	umount_under "$tmp"
	rm -rf --one-file-system "$tmp"
	log "pg$v: building root $root (debootstrap ${suites[$v]}, log $roots/pg$v.log)"
	if ! debootstrap --variant=minbase \
		"${suites[$v]}" "$tmp" "$mirror" >"$roots/pg$v.log" 2>&1 9>&-; then
		umount_under "$tmp"
		tail -n 30 "$roots/pg$v.log" | sed "s/^/[pg$v] /"
		log "pg$v: debootstrap failed after $((SECONDS - started))s"
		return 1
	fi
	no_services "$tmp" && mv "$tmp" "$root" || return 1
	log "pg$v: root built in $((SECONDS - started))s"
}

# upkeep_root MAJOR: install into the root what root_packages lists and it
# lacks: everything in a root just made, the additions in an older one.
upkeep_root() {
	local v=$1 root=$roots/pg$1 missing=() p
	for p in $(root_packages "$v"); do
		chroot "$root" dpkg-query -W -f='${Status}' "$p" 2>/dev/null 9>&- |
			grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	no_services "$root" || return 1
	log "pg$v: installing into the root: ${missing[*]}"
	cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null
	# A sid mirror's Release file may be past its Valid-Until (when the
	# mirror is a snapshot); a test root does not care.
	chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
		-o Acquire::Check-Valid-Until=false 9>&- &&
		chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends "${missing[@]}" 9>&-
}

# copy_source ROOT: the source tree, uncommitted files included, without
# .git and build outputs, to ROOT/build/entitlock.
copy_source() {
	local dest=$1/build/entitlock top f
	rm -rf --one-file-system "$dest"
	mkdir -p "$dest" || return 1
	top=$(git -C "$src" rev-parse --show-toplevel 2>/dev/null)
	if [ "$top" = "$src" ]; then
		git -C "$src" ls-files -z -co --exclude-standard |
			while IFS= read -r -d '' f; do
				[ -e "$src/$f" ] && printf '%s\0' "$f" # not deleted
			done | tar -C "$src" --null -T - -cf - | tar -C "$dest" -xf -
	else
		tar -C "$src" --exclude=.git --exclude='*.o' --exclude='*.so' \
			--exclude='*.bc' --exclude=results --exclude=output_iso \
			--exclude=tmp_check --exclude=tmp_check_iso --exclude=log \
			--exclude=regression.diffs --exclude=regression.out \
			--exclude=./dist -cf - . | tar -C "$dest" -xf -
	fi
}

# uninstall ROOT MAJOR: remove what an earlier run installed, so that a
# file no longer in the tree cannot make a test pass.
uninstall() {
	local root=$1 v=$2
	rm -rf "$root/usr/lib/postgresql/$v/lib/entitlock.so" \
		"$root/usr/lib/postgresql/$v/lib/bitcode/entitlock" \
		"$root/usr/lib/postgresql/$v/lib/bitcode/entitlock.index.bc" \
		"$root/usr/share/postgresql/$v/extension/entitlock.control" \
		"$root/usr/share/postgresql/$v/extension"/entitlock--*.sql
}

# run_core MAJOR: test/run.sh's core suite in the root; relays its output
# with a [pgNN] prefix and reports its results under pgNN/.  The build
# counts as passed once the cluster is up (run.sh builds and installs
# before it starts the cluster).
run_core() {
	local v=$1 root=$roots/pg$1 line name status started=$SECONDS
	local t_built='' t_regress='' t_isolation='' error='' results=0 fails=0 timing=''
	while IFS= read -r line; do
		case $line in
		'ok      '* | 'FAILED  '* | 'skipped '*)
			name=${line:8}
			case $name in
			regress/*) [ -n "$t_regress" ] || t_regress=$SECONDS ;;
			isolation/*) [ -n "$t_isolation" ] || t_isolation=$SECONDS ;;
			esac
			results=$((results + 1))
			case $line in
			ok*) pass "pg$v/$name" ;;
			FAILED*) fails=$((fails + 1)); fail "pg$v/$name" ;;
			*) skip "pg$v/$name" ;;
			esac
			;;
		[0-9]*' passed, '[0-9]*' failed'* | '') ;; # run.sh's closing line
		*)
			printf '[pg%s] %s\n' "$v" "$line"
			case $line in
			'throwaway cluster: '*)
				t_built=$SECONDS
				pass "pg$v/build"
				printf -- '--- pg%s: build, install and cluster start %ds\n' \
					"$v" $((t_built - started))
				;;
			'error: '*) [ -n "$error" ] || error=${line#error: } ;;
			esac
			;;
		esac
	done < <(chroot "$root" /usr/bin/env -i \
		PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		HOME=/root LANG=C.UTF-8 TERM=dumb \
		PG_MAJOR="$v" ENTITLOCK_SUITE=core ENTITLOCK_PACKAGE=1 \
		PGPORT_BASE=$((50000 + v * 100 + 29)) \
		${ENTITLOCK_KEEP:+ENTITLOCK_KEEP=1} \
		bash /build/entitlock/test/run.sh </dev/null 2>&1 9>&-)
	wait $!
	status=$?
	if [ -z "$t_built" ]; then
		case $error in
		'build failed') fail "pg$v/build" ;;
		'') fail "pg$v/build (exit $status before the cluster started)" ;;
		*) fail "pg$v/build ($error)" ;;
		esac
		fails=$((fails + 1))
	fi
	if [ $status -ne 0 ] && [ $fails -eq 0 ]; then
		fail "pg$v/core (exit $status)"
	elif [ $status -eq 0 ] && [ $results -eq 0 ]; then
		fail "pg$v/core (no test ran)"
	fi
	if [ -n "$t_built" ] && [ -n "$t_regress" ]; then
		timing=", regress $((t_regress - t_built))s"
		[ -n "$t_isolation" ] && timing+=", isolation $((t_isolation - t_regress))s"
	fi
	printf -- '--- pg%s: exit %d after %ds%s\n' "$v" "$status" $((SECONDS - started)) "$timing"
}

# Roots: build the missing ones, in parallel.
declare -A root_ok=()
pids=()
for v in $majors; do
	if ! [[ $v =~ ^[0-9]+$ ]] || [ -z "${suites[$v]:-}" ]; then
		fail "pg$v/root (no Debian suite known for PostgreSQL $v)"
		continue
	fi
	if [ -d "$roots/pg$v" ]; then
		root_ok[$v]=1
		log "pg$v: reusing root $roots/pg$v"
		continue
	fi
	if ! ensure_debootstrap; then
		fail "pg$v/root (cannot install debootstrap)"
		continue
	fi
	make_root "$v" &
	pids+=("$v:$!")
done
for p in "${pids[@]}"; do
	if wait "${p#*:}"; then root_ok[${p%%:*}]=1; else fail "pg${p%%:*}/root"; fi
done

for v in $majors; do
	[ -n "${root_ok[$v]:-}" ] || continue
	root=$roots/pg$v
	printf -- '--- pg%s (PostgreSQL %s in %s)\n' "$v" "$v" "$root"
	if ! mount_root "$root"; then
		fail "pg$v/root (cannot mount /proc or /dev/shm)"
	elif ! upkeep_root "$v"; then
		fail "pg$v/root (cannot install $(root_packages "$v"))"
	elif ! copy_source "$root"; then
		fail "pg$v/build (cannot copy $src into the root)"
	elif ! grep -q ENTITLOCK_SUITE "$root/build/entitlock/test/run.sh"; then
		fail "pg$v/core ($src/test/run.sh has no ENTITLOCK_SUITE=core)"
	else
		uninstall "$root" "$v"
		run_core "$v"
	fi
	cleanup
done

[ -n "${ENTITLOCK_MATRIX_NESTED:-}" ] || print_summary
[ $failed -eq 0 ]
