# test/lib.sh: helpers shared by test/run.sh, test/demo.sh and the stress
# and benchmark scripts.  Source it; it defines functions and changes nothing.
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

# bench_start DB: what every benchmark needs.  Uses the cluster PGHOST
# points at, if any; otherwise builds, installs and starts a throwaway one
# (fsync on, synchronous_commit off, so that commits do not hide the
# difference being measured).  Creates DB with the extension and sets
# $scripts to a scratch directory; both are removed at exit.
bench_start() {
	ensure_packages
	scripts=$(mktemp -d)
	bench_dir=
	trap 'rm -rf "$scripts"; [ -n "$bench_dir" ] && cluster_destroy "$bench_dir"' EXIT
	if [ -z "${PGHOST:-}" ]; then
		build_install
		bench_dir=$(mktemp -d /tmp/entitlock-bench.XXXXXX)
		cluster_start "$bench_dir" "fsync = on" "synchronous_commit = off"
	fi
	test_db_create "$1" || exit 1
}

# pgbench_unexpected_errors FILE...: pgbench's error lines in the given
# outputs other than those a terminated backend causes (its FATAL, the
# lost connection, the aborted client and run) and those matching the
# extended regular expression $PGBENCH_EXPECTED_ERRORS, if set (errors a
# caller causes on purpose, or a pooler's words for a lost backend); at
# most five.
pgbench_unexpected_errors() {
	cat "$@" |
		grep -iE 'error|aborted|fatal' |
		grep -viE 'terminating connection due to administrator command|server closed the connection|connection to server .* lost|lost synchronization with server|perhaps the backend died|Run was aborted|number of failed transactions' |
		grep -vE "${PGBENCH_EXPECTED_ERRORS:-^\$}" |
		head -5
}

# bench_tps SCRIPT CLIENTS: the TPS of one pgbench run of SCRIPT on $db,
# $SECS seconds long, with pgbench -M ${PROTOCOL:-simple}.
bench_tps() {
	PGDATABASE=$db pgbench -n -M "${PROTOCOL:-simple}" -c "$2" \
		-j "$(($2 < 2 ? 1 : 2))" -T "$SECS" -f "$1" 2>&1 |
		sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}

# The median of the numbers on standard input, one per line.
bench_median() {
	sort -n | awk '{ a[NR] = $1 } END { print (NR ? a[int((NR + 1) / 2)] : 0) }'
}

# bench_ratio A B: A / B with two decimals (0 when B is 0).
bench_ratio() {
	awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'
}

# bench_rounds CLIENTS [RESET-ARGS...]: ROUNDS pgbench runs of each of
# VARIANTS ($scripts/<variant>.sql) with CLIENTS clients, each run after
# "reset RESET-ARGS".  The variants take turns within each round, so that a
# slow moment of the machine does not land on one variant only.  Leaves
# each variant's median TPS in median[<variant>].
bench_rounds() {
	local c=$1 v r t
	shift
	declare -gA median
	for v in $VARIANTS; do : >"$scripts/tps-$v"; done
	for r in $(seq "$ROUNDS"); do
		for v in $VARIANTS; do
			reset "$@"
			t=$(bench_tps "$scripts/$v.sql" "$c")
			echo "${t:-0}" >>"$scripts/tps-$v"
		done
	done
	for v in $VARIANTS; do median[$v]=$(bench_median <"$scripts/tps-$v"); done
}

# kill_loop DB: terminate a random pgbench backend of DB every 0.2-0.5 s,
# printing how many each time, until killed.
kill_loop() {
	while :; do
		psql -X -At -d "$1" -c "SELECT count(pg_terminate_backend(pid)) FROM (
			SELECT pid FROM pg_stat_activity
			 WHERE datname = '$1' AND application_name = 'pgbench'
			 ORDER BY random() LIMIT 1) AS victim" 2>/dev/null
		sleep "0.$((RANDOM % 4 + 2))"
	done
}

# stress_under_kills DB SECONDS DIR PGBENCH-ARGS...: rounds of 3 s of
# pgbench on DB (pgbench gives up on a client whose backend was killed)
# while kill_loop runs, until SECONDS are up; each round gets -D round=N.
# Outputs go to DIR/out.N.  Sets rounds, kills, committed (transactions)
# and unexpected (pgbench errors a kill does not explain).  $killer is the
# kill loop's pid while it runs, for the caller's EXIT trap.
stress_under_kills() {
	local db=$1 secs=$2 dir=$3 end
	shift 3
	kill_loop "$db" >"$dir/kills" &
	killer=$!
	end=$((SECONDS + secs))
	rounds=0
	while [ "$SECONDS" -lt "$end" ]; do
		PGDATABASE=$db pgbench -n -T 3 -D round=$rounds "$@" \
			>"$dir/out.$rounds" 2>&1
		rounds=$((rounds + 1))
	done
	kill "$killer" 2>/dev/null
	wait "$killer" 2>/dev/null
	killer=
	kills=$(awk '{ s += $1 } END { print s + 0 }' "$dir/kills")
	committed=$(cat "$dir"/out.* |
		sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' |
		awk '{ s += $1 } END { print s + 0 }')
	unexpected=$(pgbench_unexpected_errors "$dir"/out.*)
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
