#!/usr/bin/env bash
#
# test/valgrind.sh: the regression suite against a server that runs under
# Valgrind's memcheck, then a summary of what memcheck found.
#
#   bash test/valgrind.sh      (as root, or as a user with sudo)
#
# Not part of test/run.sh: it takes 3 to 5 minutes on two cores, 5 to 7 with
# the isolation tests, against seconds without valgrind.  It looks for
# what the suite cannot see: a jump or a system call that depends on bytes
# nobody initialised, a read or write outside any allocated block.  Such
# bugs pass every test until the day the memory holds something else.
#
# It starts a throwaway cluster (as test/run.sh does), restarts its
# postmaster under valgrind, so that every backend forked from it runs
# under memcheck too, and runs the regression tests (the Makefile's
# REGRESS) with pg_regress, writing results to its own directory, not to
# the source tree.  VALGRIND_ISOLATION=1 runs the isolation tests as well;
# VALGRIND_TESTS="keys locks" runs only those regression tests.
#
# Each process writes DIR/valgrind.<pid>.log.  An error in any backend makes
# it exit with status 128, which the postmaster takes for a crash: so an
# error also shows as failed tests and "exited with exit code 128" in
# DIR/server.log.  The summary counts errors whose stack passes through
# entitlock (its source files or entitlock.so) apart from the rest, prints
# the first lines of each distinct one, and counts the suppressed ones.
# Exit status: 0 when no error and no failed test, 1 otherwise.  Tests
# that depend on timing can fail under valgrind's slowness alone (the
# isolation test lease-stale-owner, whose lease lasts 500 ms, does).
#
# test/valgrind.supp lists the known false positives (padding bytes
# written to WAL and to the relation cache's init file).  Each error's log
# entry ends with a suppression for it (--gen-suppressions=all), to add
# there once it is understood to be harmless.
#
# Debian's PostgreSQL is not built with USE_VALGRIND: its memory contexts
# do not tell valgrind which parts of their blocks are free or unused.  So
# a read of freed palloc'd memory, of a palloc'd chunk never written, or
# past a chunk's end but within its block, goes unseen.  Only a server
# built with -DUSE_VALGRIND (and entitlock installed into it) sees those.
#
# The directory (DIR, printed at the start) is kept: it holds the logs.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ENTITLOCK_ROOT" || exit 1

ensure_packages valgrind

bindir=$(pg_bindir)
pgc="$bindir/pg_config"
pgxs=$(dirname "$("$pgc" --pgxs)")/../..
dir=$(mktemp -d /tmp/entitlock-valgrind.XXXXXX)
vg_pid=
trap 'if [ -n "$vg_pid" ]; then as_pg "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1; wait "$vg_pid"; fi' EXIT
log "valgrind run in $dir"

# The Makefile's test lists, without running anything it builds.
vars=$(printf 'entitlock-print-vars:\n\t@echo "$(REGRESS)"; echo "$(REGRESS_OPTS)"; echo "$(ISOLATION)"; echo "$(ISOLATION_OPTS)"\n' |
	make -s --no-print-directory -f Makefile -f - PG_CONFIG="$pgc" entitlock-print-vars) ||
	die "cannot read the test lists from the Makefile"
{ read -r regress; read -r regress_opts; read -r isolation; read -r isolation_opts; } <<<"$vars"
regress=${VALGRIND_TESTS:-$regress}

# An ordinary throwaway cluster, stopped again, then its postmaster
# started under valgrind.  JIT is off: LLVM under memcheck is slow and
# none of it is entitlock's.  Autovacuum is off, to keep the two cores for
# the tests.
cluster_start "$dir" "jit = off" "autovacuum = off" >/dev/null
cluster_stop "$dir"
# valgrind runs as postgres, which may not read the tree (a clone in /root).
cp "$ENTITLOCK_ROOT/test/valgrind.supp" "$dir/" && chmod 644 "$dir/valgrind.supp" ||
	die "cannot copy test/valgrind.supp to $dir"
as_pg valgrind --quiet --trace-children=yes --track-origins=yes \
	--read-var-info=no --leak-check=no --num-callers=40 --error-limit=no \
	--gen-suppressions=all --show-error-list=yes --fullpath-after= \
	--error-markers=VALGRINDERROR-BEGIN,VALGRINDERROR-END \
	--error-exitcode=128 --suppressions="$dir/valgrind.supp" \
	--log-file="$dir/valgrind.%p.log" \
	"$bindir/postgres" -D "$dir/data" >"$dir/server.log" 2>&1 &
vg_pid=$!
up=0
for _ in $(seq 1 600); do
	"$bindir/pg_isready" -q && { up=1; break; }
	sleep 0.5
done

status=0
if [ $up -eq 0 ]; then
	# Typically an unsuppressed report in every new backend, each one then
	# taken for a crash: the summary below shows it.
	tail -5 "$dir/server.log" >&2
	log "the server under valgrind did not start"
	status=1
else
	log "server under valgrind is up (postmaster pid $vg_pid)"
	started=$SECONDS
	# shellcheck disable=SC2086 # the lists are words
	"$pgxs/src/test/regress/pg_regress" --inputdir=. --outputdir="$dir/regress" \
		--bindir="$bindir" $regress_opts $regress 2>&1 | tee "$dir/regress.log" >&2
	grep -q 'All [0-9]* tests passed' "$dir/regress.log" || status=1
	log "regression tests took $((SECONDS - started)) s under valgrind"

	if [ -n "${VALGRIND_ISOLATION:-}" ]; then
		started=$SECONDS
		# shellcheck disable=SC2086
		"$pgxs/src/test/isolation/pg_isolation_regress" --inputdir=./ \
			--outputdir="$dir/isolation" --bindir="$bindir" $isolation_opts \
			$isolation 2>&1 | tee "$dir/isolation.log" >&2
		grep -q 'All [0-9]* tests passed' "$dir/isolation.log" || status=1
		log "isolation tests took $((SECONDS - started)) s under valgrind"
	fi
fi

# Stop the server, so every process has written its log.
as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 300 stop >/dev/null 2>&1 ||
	as_pg "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1
wait "$vg_pid"
vg_pid=

# The summary.  An error is entitlock's when a frame of its stack is in
# entitlock's sources or in entitlock.so.
ours="$ENTITLOCK_ROOT/src/|/entitlock\\.so|: entitlock_"
awk -v ours="$ours" -v out="$dir/errors" '
	/VALGRINDERROR-BEGIN/ { inerr = 1; text = ""; mine = 0; next }
	/VALGRINDERROR-END/ {
		inerr = 0
		n = split(text, l, "\n")
		what = l[1]
		# The first frames tell one error from another.
		key = what
		for (i = 2; i <= n && i <= 6; i++) key = key "\n" l[i]
		kind = mine ? "entitlock" : "elsewhere"
		count[kind]++
		if (!((kind, key) in seen)) { seen[kind, key] = 1; print kind "\t" FILENAME "\n" text > out }
		next
	}
	inerr {
		sub(/^==[0-9]+== ?/, "")
		if ($0 ~ ours) mine = 1
		text = text $0 "\n"
	}
	END { printf "%d %d\n", count["entitlock"], count["elsewhere"] }
' "$dir"/valgrind.*.log >"$dir/counts"
read -r in_ours elsewhere <"$dir/counts"
processes=$(find "$dir" -maxdepth 1 -name 'valgrind.*.log' | wc -l)
crashes=$(grep -c 'exit code 128' "$dir/server.log")
log ""
log "valgrind: $processes processes checked; errors through entitlock's code: $in_ours; elsewhere: $elsewhere"
log "backends that exited with valgrind's error status: $crashes"
log "known false positives suppressed (test/valgrind.supp):"
sed -n 's/^[-=]*[0-9]*[-=]* used_suppression: *\([0-9]*\) \([^ ]*\) .*/\2 \1/p' "$dir"/valgrind.*.log |
	awk '{ n[$1] += $2 } END { for (s in n) printf "  %6d  %s\n", n[s], s }' | sort >&2
failed=$(cat "$dir/regress.log" "$dir/isolation.log" 2>/dev/null |
	sed -n 's/^test \([^ ]*\) *\.\.\. FAILED.*/\1/p' | tr '\n' ' ')
[ -n "$failed" ] && log "failed tests: $failed(see $dir/*/regression.diffs)"
if [ -s "$dir/errors" ]; then
	log "distinct errors (details in $dir/errors and the valgrind.*.log files):"
	grep -A14 -E '^(entitlock|elsewhere)	' "$dir/errors" >&2
fi
[ "$in_ours" -eq 0 ] && [ "$elsewhere" -eq 0 ] && [ "$crashes" -eq 0 ] || status=1
log "logs kept in $dir"
exit $status
