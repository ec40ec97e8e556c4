# test/lib.sh: helpers shared by test/run.sh, test/demo.sh, test/tap.sh,
# test/bench/run.sh and the scripts under test/check.  Source it; it
# defines functions and changes nothing.  (The pgbench stress tests and the
# benchmarks are Perl: test/tap/EntitlockStress.pm, test/bench/EntitlockBench.pm.)
#
# Throwaway clusters belong to the "postgres" OS user (PostgreSQL refuses to
# run as root), live in a private directory under /tmp and listen only on a
# private Unix socket and port, so the system cluster is never touched.

PG_MAJOR=${PG_MAJOR:-15}
ENTITLOCK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Run a command as root: directly when we are root, else through sudo.
as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Run a command as the owner of throwaway clusters.  As root it runs from
# /, since postgres may not enter the caller's directory (a clone in /root:
# initdb and pg_ctl fail to change back to it); so pass absolute paths, and
# only paths postgres can read.
as_pg() {
	if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

# Install the Debian packages the build and the tests need, only when
# something is missing, so a warm machine does not touch the network.
ensure_packages() {
	ensure_installed make gcc "postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR" \
		libipc-run-perl xxhash "$@"
}

# ensure_installed PACKAGE...: apt-get install those not installed yet.
ensure_installed() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing: ${missing[*]}"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 ||
		die "apt-get update failed"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends "${missing[@]}" >&2 ||
		die "apt-get install ${missing[*]} failed"
}

# control_value NAME: the value of NAME in entitlock.control, unquoted.
control_value() {
	sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$ENTITLOCK_ROOT/entitlock.control" |
		sed -e 's/[[:space:]]*#.*$//' -e "s/^'\(.*\)'$/\1/" | tail -1
}

# ENTITLOCK_PG_BINDIR points at another installation of the same major
# (a relocated copy, so that two builds can be tested side by side).
pg_bindir() {
	echo "${ENTITLOCK_PG_BINDIR:-/usr/lib/postgresql/$PG_MAJOR/bin}"
}

# Build and install the extension into the server's directories.
build_install() {
	local pgc
	pgc="$(pg_bindir)/pg_config"
	[ -x "$pgc" ] || die "$pgc not found"
	make -C "$ENTITLOCK_ROOT" -s PG_CONFIG="$pgc" clean >/dev/null
	make -C "$ENTITLOCK_ROOT" -s PG_CONFIG="$pgc" WERROR=1 "$@" ||
		die "build failed"
	as_root make -C "$ENTITLOCK_ROOT" -s PG_CONFIG="$pgc" install >/dev/null ||
		die "make install failed"
}

free_port() {
	local port=${1:-54329}
	while (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null ||
		[ -e "/tmp/.s.PGSQL.$port" ]; do
		port=$((port + 1))
	done
	echo "$port"
}

# cluster_start DIR [postgresql.conf lines...]
# Creates a cluster in DIR/data with its socket in DIR, and exports
# PGHOST, PGPORT, PGUSER and PGDATABASE for everything that follows.
cluster_start() {
	local dir=$1
	shift
	local bindir
	bindir=$(pg_bindir)
	mkdir -p "$dir"
	chmod 755 "$dir"
	[ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
	as_pg "$bindir/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 \
		--locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
		{ cat "$dir/initdb.log" >&2; die "initdb failed"; }
	PGPORT=$(free_port "${PGPORT_BASE:-54329}")
	{
		echo "port = $PGPORT"
		echo "listen_addresses = ''"
		echo "unix_socket_directories = '$dir'"
		echo "max_connections = 120"
		echo "max_locks_per_transaction = 256"
		echo "fsync = off"
		echo "log_line_prefix = '%m [%p] %q%a '"
		local line
		for line in "$@"; do echo "$line"; done
	} | as_pg tee -a "$dir/data/postgresql.conf" >/dev/null
	as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null ||
		{ cat "$dir/server.log" >&2; die "server did not start"; }
	export PGHOST=$dir PGPORT PGUSER=postgres PGDATABASE=postgres
}

cluster_stop() {
	local dir=$1
	[ -f "$dir/data/postmaster.pid" ] || return 0
	as_pg "$(pg_bindir)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}

cluster_destroy() {
	cluster_stop "$1"
	rm -rf "$1"
}

# test_db_create NAME: a fresh database NAME with the extension installed.
# Scripts drop it again with test_db_drop, usually from an EXIT trap.
test_db_create() {
	test_db_drop "$1"
	psql -X -q -c "CREATE DATABASE $1" &&
		psql -X -q -d "$1" -c "CREATE EXTENSION entitlock"
}

# test_db_drop NAME: drop it even while sessions are still connected.
test_db_drop() {
	psql -X -q -c "SET client_min_messages = warning" \
		-c "DROP DATABASE IF EXISTS $1 WITH (FORCE)"
}

# poll_until DB SQL: run SQL in DB until it returns t; fail after 20 s.
poll_until() {
	local i
	for i in $(seq 1 400); do
		[ "$(psql -X -At -d "$1" -c "$2")" = t ] && return 0
		sleep 0.05
	done
	log "timed out waiting for: $2"
	return 1
}

# check CONDITION MESSAGE: evaluate CONDITION; when false, log MESSAGE and
# set check_failed=1.
check_failed=0
check() {
	if ! eval "$1"; then
		log "FAILED: $2"
		check_failed=1
	fi
}

# expect WHAT GOT WANTED: log "ok: WHAT" when GOT equals WANTED, else log
# both and set check_failed=1, as check does.
expect() {
	if [ "$2" = "$3" ]; then
		log "ok: $1"
	else
		log "FAILED: $1: got '$2', expected '$3'"
		check_failed=1
	fi
}
