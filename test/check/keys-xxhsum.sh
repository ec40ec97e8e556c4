#!/usr/bin/env bash
#
# Cross-check entitlock.key against an independent XXH64: xxhsum from
# Debian's xxhash package.  Random names of every length from 1 to 300
# bytes (all stripe and tail paths), ASCII and multi-byte UTF-8, and pairs
# hashed as realm, a zero byte and entity.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

command -v xxhsum >/dev/null || { log "xxhsum not installed"; exit 77; }

db=entitlock_keys_check
trap 'test_db_drop "$db"' EXIT
test_db_create "$db" || exit 1

xxh() { xxhsum -H1 | cut -c1-16; }

# Random text without tabs or newlines, so psql's unaligned output splits
# cleanly: code points from ASCII, Latin-1, CJK and emoji ranges.
names_sql="
SELECT string_agg(
         CASE (random() * 3)::int
           WHEN 0 THEN chr(33 + (random() * 93)::int)
           WHEN 1 THEN chr(161 + (random() * 94)::int)
           WHEN 2 THEN chr(19968 + (random() * 2000)::int)
           ELSE chr(128512 + (random() * 60)::int)
         END, '')
  FROM generate_series(1, len)"

checked=0
mismatches=0

# compare WHAT ENTITLOCK_HEX XXHSUM_HEX
compare() {
	if [ "$3" != "$2" ]; then
		mismatches=$((mismatches + 1))
		log "key mismatch for $1: entitlock $2, xxhsum $3"
	fi
	checked=$((checked + 1))
}

while IFS=$'\t' read -r name key; do
	compare "'$name'" "$key" "$(printf '%s' "$name" | xxh)"
done < <(psql -X -At -F $'\t' -d "$db" -c "
	WITH n AS (
		SELECT repeat('k', len) AS name FROM generate_series(1, 300) AS len
		UNION ALL
		SELECT ($names_sql) FROM generate_series(1, 200) AS len)
	SELECT name, lpad(to_hex(entitlock.key(name)), 16, '0') FROM n")

while IFS=$'\t' read -r realm entity key; do
	compare "('$realm', '$entity')" "$key" \
		"$( (printf '%s' "$realm"; printf '\0'; printf '%s' "$entity") | xxh)"
done < <(psql -X -At -F $'\t' -d "$db" -c "
	WITH p AS (
		SELECT ($names_sql) AS realm, (SELECT ($names_sql) FROM (SELECT len % 50 + 1 AS len) AS l) AS entity
		  FROM generate_series(1, 100) AS len)
	SELECT realm, entity, lpad(to_hex(entitlock.key(realm, entity)), 16, '0') FROM p")

log "keys checked against xxhsum: $checked, mismatches: $mismatches"
[ "$checked" -ge 600 ] || { log "expected at least 600 keys, checked $checked"; exit 1; }
[ "$mismatches" -eq 0 ]
