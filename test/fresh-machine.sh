#!/usr/bin/env bash
#
# test/fresh-machine.sh: the README's two commands on a fresh Debian 12, as
# a new user runs them.
#
#   bash test/fresh-machine.sh                      (as root; 30 to 60 minutes)
#   ENTITLOCK_MATRIX= bash test/fresh-machine.sh    (without PostgreSQL 17 and 18)
#
# Builds a bare Debian 12 root (debootstrap --variant=minbase bookworm) in a
# new directory under /var/tmp, with nothing cached; mounts /proc, /sys,
# /dev/pts and a tmpfs on /dev/shm in it; installs git there with apt-get;
# clones this repository's current commit (HEAD: commit your changes
# first) into /root/entitlock there; and runs, as root, from that
# directory, with no stdin:
#
#   bash test/demo.sh
#   bash test/run.sh
#
# test/run.sh then runs test/matrix.sh, which builds the PostgreSQL 17 and
# 18 roots inside this one.  ENTITLOCK_MATRIX is passed on when set.  No
# service starts in the root (no init runs there; policy-rc.d says so, as
# in test/matrix.sh's roots).  The output goes to the terminal and to
# demo.log and run.log in the directory printed at the start, which is kept;
# the root is unmounted and removed at exit, even on failure
# (ENTITLOCK_KEEP=1 keeps it).  Prints the last lines of both commands and
# exits non-zero when either fails.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot, mount)"
mirror=${ENTITLOCK_MIRROR:-http://deb.debian.org/debian}
commit=$(git -C "$ENTITLOCK_ROOT" rev-parse HEAD) || die "$ENTITLOCK_ROOT is not a git clone"
[ -z "$(git -C "$ENTITLOCK_ROOT" status --porcelain)" ] ||
	log "note: uncommitted changes are not tested, only $commit"
command -v debootstrap >/dev/null || ensure_installed debootstrap debian-archive-keyring

base=$(mktemp -d /var/tmp/entitlock-fresh.XXXXXX) || die "mktemp failed"
root=$base/root
log "fresh root $root, logs in $base, commit $commit"

in_root() {
	chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb \
		PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		${ENTITLOCK_MATRIX+ENTITLOCK_MATRIX="$ENTITLOCK_MATRIX"} "$@" </dev/null
}

# mounts_under DIR: mount points at or below DIR, deepest first.
mounts_under() {
	awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r
}

# At exit: stop the demo's cluster, end whatever still runs in the root
# (or in roots inside it), unmount everything under it and remove it.
cleanup() {
	local p pids sig mp
	[ -e "$root/root/entitlock/test/demo.sh" ] &&
		in_root bash -c 'cd /root/entitlock && bash test/demo.sh stop' >/dev/null 2>&1
	for sig in TERM KILL; do
		pids=()
		for p in /proc/[0-9]*; do
			case $(readlink "$p/root" 2>/dev/null) in
			"$root" | "$root"/*) pids+=("${p#/proc/}") ;;
			esac
		done
		[ ${#pids[@]} -eq 0 ] && break
		log "ending processes left in $root: ${pids[*]}"
		kill -"$sig" "${pids[@]}" 2>/dev/null
		sleep 3
	done
	mounts_under "$root" | while read -r mp; do umount "$mp" 2>/dev/null || umount -l "$mp"; done
	if [ -n "${ENTITLOCK_KEEP:-}" ] || [ -n "$(mounts_under "$root")" ]; then
		log "kept $root"
	else
		rm -rf --one-file-system "$root"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started=$SECONDS
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$base/debootstrap.log" 2>&1 ||
	{ tail -20 "$base/debootstrap.log"; die "debootstrap failed"; }
log "debootstrap: $((SECONDS - started))s"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d" && chmod 755 "$root/usr/sbin/policy-rc.d"
# This machine's own certificate authorities (a TLS-inspecting proxy's),
# which ca-certificates adds when it is installed, so that the root
# reaches the npm registry as the host does.
mkdir -p "$root/usr/local/share/ca-certificates" &&
	cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/" 2>/dev/null
mount -t proc proc "$root/proc" && mount -t sysfs sysfs "$root/sys" &&
	mount --bind /dev/pts "$root/dev/pts" &&
	mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm" || die "cannot mount in $root"

git -C "$ENTITLOCK_ROOT" bundle create "$root/tmp/entitlock.bundle" HEAD 2>/dev/null ||
	die "git bundle failed"
in_root bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git >/dev/null &&
	cd /root && git -c advice.detachedHead=false clone -q /tmp/entitlock.bundle entitlock &&
	rm /tmp/entitlock.bundle' || die "cannot install git and clone in the root"

# run NAME COMMAND: COMMAND from /root/entitlock in the root, logged.
declare -A status elapsed
run() {
	local t=$SECONDS
	log "=== $2 (in $root/root/entitlock)"
	in_root bash -c "cd /root/entitlock && $2" 2>&1 | tee "$base/$1.log"
	status[$1]=${PIPESTATUS[0]}
	elapsed[$1]=$((SECONDS - t))
}
# The README's two commands, checked against its text.
for c in 'bash test/demo.sh' 'bash test/run.sh'; do
	grep -q "^$c " "$ENTITLOCK_ROOT/README.md" || die "README.md no longer says '$c'"
done
run demo 'bash test/demo.sh'
run run 'bash test/run.sh'

echo
for n in demo run; do
	printf '=== %s: exit %d after %ds; its last lines (%s):\n' \
		"$n" "${status[$n]}" "${elapsed[$n]}" "$base/$n.log"
	tail -n 5 "$base/$n.log" | sed 's/^/  /'
done
[ "${status[demo]}" -eq 0 ] && [ "${status[run]}" -eq 0 ]
