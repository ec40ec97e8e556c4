#!/usr/bin/env bash
#
# The manual's node-postgres examples are real: test/examples/*.js are the
# files the manual (README.md and doc/) shows, and test/examples/*.test.mjs
# (node:test) prove each does what the manual says, against a database of
# their own on the cluster PGHOST points at, plus two more standing in for
# two primaries (shard-router).  Then test/examples/readme-check.mjs checks
# that every <!-- example: FILE[#REGION] --> marker in README.md and
# doc/**/*.md is followed by that file's text, and that every example file
# is shown.
#
# Needs Node 18 or later (installs Debian's nodejs, npm and ca-certificates
# when missing)
# and, on the first run, the npm registry for "npm ci"; skips without it.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
examples=$ENTITLOCK_ROOT/test/examples
cd "$examples" || exit 1

node_ok() {
	command -v node >/dev/null && command -v npm >/dev/null &&
		node -e 'process.exit(process.versions.node.split(".")[0] >= 18 ? 0 : 1)'
}
node_ok || ensure_packages nodejs npm
node_ok || { log "node 18 or later not available"; exit 77; }
# Debian's node trusts the system's certificate authorities only (for
# npm ci); nodejs merely recommends them.
ensure_installed ca-certificates

# npm ci only when node_modules is missing or older than the lock file.
if [ ! node_modules/.package-lock.json -nt package-lock.json ]; then
	npm ci --no-audit --no-fund --loglevel=error >&2 ||
		{ log "npm ci failed (is the npm registry reachable?)"; exit 77; }
fi

db=entitlock_examples
shards=(entitlock_examples_shard_a entitlock_examples_shard_b)
trap 'for d in "$db" "${shards[@]}"; do test_db_drop "$d"; done' EXIT
for d in "$db" "${shards[@]}"; do test_db_create "$d" || exit 1; done
psql -X -q -v ON_ERROR_STOP=1 -d "$db" -f schema.sql || exit 1

status=0
PGDATABASE=$db EXAMPLES_SHARDS=$(IFS=,; echo "${shards[*]}") \
	node --test --test-reporter=spec ./*.test.mjs || status=1
node readme-check.mjs || status=1
exit $status
