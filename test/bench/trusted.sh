#!/usr/bin/env bash
#
# test/bench/trusted.sh: the trusted edition (SQL and PL/pgSQL) against
# the C edition, on the same server in the same run.
#
#   bash test/bench/trusted.sh                    (starts its own cluster)
#   BENCH_SECONDS=10 BENCH_ROUNDS=5 BENCH_CLIENTS="1 8" bash test/bench/trusted.sh
#
# Two databases, one with CREATE EXTENSION entitlock, one with
# dist/entitlock-trusted.sql installed by its owner.  Each workload is a
# pgbench script run on both; the variants take turns within each round
# and the medians are compared.  Workloads: lock (1,000 names), usage on
# 1,000 meters and on one hot meter, idempotency_begin on new keys, a lease
# acquired and released, a rate limit on 1,000 names; and the trusted
# edition's usage against careful hand-written PL/pgSQL (a counter row
# locked with SELECT ... FOR UPDATE, the check, the update: what a team
# writes without entitlock), target >= 1.0x.  A benchmark, not a test: it
# asserts nothing.  (Names avoid ":", which pgbench reads as a variable.)

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

SECS=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-3}
CLIENT_COUNTS=${BENCH_CLIENTS:-"1 8"}

db_c=entitlock_bench_c
db_t=entitlock_bench_trusted
bench_start "$db_c"
trap 'rm -rf "$scripts"; test_db_drop "$db_t" 2>/dev/null; [ -n "$bench_dir" ] && cluster_destroy "$bench_dir"' EXIT

bash "$ENTITLOCK_ROOT/trusted/build.sh" "$scripts" >/dev/null || die "trusted/build.sh failed"
psql -X -q -c "SET client_min_messages = warning" -c "DROP ROLE IF EXISTS bench_owner" \
	-c "CREATE ROLE bench_owner LOGIN" >/dev/null
test_db_drop "$db_t"
psql -X -q -c "CREATE DATABASE $db_t OWNER bench_owner" || exit 1
chmod a+r "$scripts/entitlock-trusted.sql"; chmod a+x "$scripts"
psql -X -q -v ON_ERROR_STOP=1 -U bench_owner -d "$db_t" -f "$scripts/entitlock-trusted.sql" >/dev/null ||
	die "installing the trusted edition failed"

# Careful hand-written PL/pgSQL usage limit, in the trusted database.
psql -X -q -v ON_ERROR_STOP=1 -d "$db_t" <<'SQL'
CREATE TABLE hand_usage (subject text, feature text, used bigint NOT NULL,
	PRIMARY KEY (subject, feature));
CREATE FUNCTION hand_record(s text, f text, amount bigint, lim bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
	u bigint;
BEGIN
	SELECT used INTO u FROM hand_usage WHERE subject = s AND feature = f FOR UPDATE;
	IF NOT FOUND THEN
		INSERT INTO hand_usage VALUES (s, f, 0) ON CONFLICT DO NOTHING;
		SELECT used INTO u FROM hand_usage WHERE subject = s AND feature = f FOR UPDATE;
	END IF;
	IF u + amount > lim THEN
		RETURN false;
	END IF;
	UPDATE hand_usage SET used = used + amount WHERE subject = s AND feature = f;
	RETURN true;
END
$$;
SQL

w() { printf '\\set i random(1, 1000)\n\\set r random(1, 1000000000)\nBEGIN;\n%s;\nCOMMIT;\n' "$2" >"$scripts/$1.sql"; }
w lock "SELECT entitlock.lock('name-' || :i)"
w usage1000 "SELECT allowed FROM entitlock.record_usage_if_under_limit('ws-' || :i, 'api', 1, 1000000000000)"
w usagehot "SELECT allowed FROM entitlock.record_usage_if_under_limit('ws-hot', 'api', 1, 1000000000000)"
w idempotency "SELECT status FROM entitlock.idempotency_begin('evt-' || :r || '-' || :i)"
w lease "SELECT count(entitlock.lease_release('job-' || :i, token)) FROM entitlock.lease_acquire('job-' || :i, '1 min')"
w rate "SELECT allowed FROM entitlock.rate_limit('rl-' || :i, 1000000, '1 s')"
w hand1000 "SELECT hand_record('ws-' || :i, 'api', 1, 1000000000000)"
w handhot "SELECT hand_record('ws-hot', 'api', 1, 1000000000000)"

# run WORKLOAD DB CLIENTS: one pgbench run's TPS.
run() {
	PGDATABASE=$2 pgbench -n -M prepared -c "$3" -j "$(($3 < 2 ? 1 : 2))" -T "$SECS" \
		-f "$scripts/$1.sql" 2>&1 | sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}

# compare LABEL CLIENTS A-WORKLOAD A-DB B-WORKLOAD B-DB: medians of
# alternating rounds, and A / B.
compare() {
	local label=$1 c=$2 r a b
	: >"$scripts/a"; : >"$scripts/b"
	for r in $(seq "$ROUNDS"); do
		run "$3" "$4" "$c" >>"$scripts/a"
		run "$5" "$6" "$c" >>"$scripts/b"
	done
	a=$(bench_median <"$scripts/a")
	b=$(bench_median <"$scripts/b")
	printf '%-34s %7s %10.0f %10.0f %7s\n' "$label" "$c" "$a" "$b" "$(bench_ratio "$a" "$b")"
}

printf '%-34s %7s %10s %10s %7s\n' comparison clients A B 'A/B'
for c in $CLIENT_COUNTS; do
	for wl in lock usage1000 usagehot idempotency lease rate; do
		compare "trusted/C $wl" "$c" "$wl" "$db_t" "$wl" "$db_c"
	done
	compare "trusted usage / hand PL/pgSQL 1000" "$c" usage1000 "$db_t" hand1000 "$db_t"
	compare "trusted usage / hand PL/pgSQL hot" "$c" usagehot "$db_t" handhot "$db_t"
done
test_db_drop "$db_c"
