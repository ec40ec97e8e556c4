--
-- keys: entitlock.key(name) and entitlock.key(realm, entity)
--
CREATE EXTENSION entitlock;

-- Test vectors.  XXH64 with seed 0 over the UTF-8 bytes, read as a signed
-- bigint.  The expected values were computed independently with
-- "xxhsum -H1" (xxHash 0.8); a key must never change.
SELECT v.name,
       entitlock.key(v.name) AS key,
       lpad(to_hex(entitlock.key(v.name)), 16, '0') AS hex,
       lpad(to_hex(entitlock.key(v.name)), 16, '0') = v.xxhsum AS matches
  FROM (VALUES
        ('a', 'd24ec4f1a98c6e5b'),
        ('abc', '44bc2cf5ad770999'),
        ('entitlock', '9f9cd88dd80cd27a'),
        ('workspace:42', '7e3ed9a9163a3b9c'),
        ('api_calls', '165028f9d105920e'),
        ('café', '9a40a9b974d85a6a'),
        ('日本語', '7179a19f3719f5e1'),
        ('abcdefghijklmnopqrstuvwxyz012345', 'bf2cd639b4143b80'),
        ('abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'd5000c4ac53d14a0'),
        ('The quick brown fox jumps over the lazy dog', '0b242d361fda71bc')
       ) AS v(name, xxhsum)
 ORDER BY v.name COLLATE "C";

-- Pair vectors: XXH64 of realm, one zero byte, entity.
SELECT v.realm, v.entity,
       entitlock.key(v.realm, v.entity) AS key,
       lpad(to_hex(entitlock.key(v.realm, v.entity)), 16, '0') = v.xxhsum AS matches
  FROM (VALUES
        ('workspace:42', 'seats', '3df8dac9163e3215'),
        ('a', 'b', 'b51b25d68d1338c1'),
        ('ab', 'c', '94cb73913641550d'),
        ('a', 'bc', '3293bdc2cfb086a7')
       ) AS v(realm, entity, xxhsum)
 ORDER BY v.realm, v.entity;

-- The pair key differs from the realm's key and from the concatenation's,
-- and a different split of the same characters is a different pair.
SELECT entitlock.key('ab', 'c') <> entitlock.key('ab') AS differs_from_realm,
       entitlock.key('ab', 'c') <> entitlock.key('abc') AS differs_from_concat,
       entitlock.key('ab', 'c') <> entitlock.key('a', 'bc') AS differs_from_other_split;

-- Every stripe and tail length of the algorithm gives distinct keys.
SELECT count(DISTINCT entitlock.key(repeat('x', n))) AS distinct_keys
  FROM generate_series(1, 100) AS n;

-- Long names work; the key depends on every byte.
SELECT entitlock.key(repeat('y', 1000000)) <> entitlock.key(repeat('y', 999999) || 'z')
       AS last_byte_counts;

-- STRICT: NULL in, NULL out.
SELECT entitlock.key(NULL) IS NULL AS null_name,
       entitlock.key(NULL, 'e') IS NULL AS null_realm,
       entitlock.key('r', NULL) IS NULL AS null_entity;

-- Declared IMMUTABLE, STRICT and PARALLEL SAFE.
SELECT p.oid::regprocedure AS function, p.provolatile, p.proisstrict, p.proparallel
  FROM pg_proc AS p
 WHERE p.pronamespace = 'entitlock'::regnamespace AND p.proname = 'key'
 ORDER BY p.oid::regprocedure::text;

-- Empty names are errors (22023).
SELECT entitlock.key('');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.key('', 'entity');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.key('realm', '');
\echo :LAST_ERROR_SQLSTATE

-- Usable in an index expression, as an IMMUTABLE function must be.
CREATE TABLE keyed (name text PRIMARY KEY);
CREATE INDEX keyed_key ON keyed (entitlock.key(name));
INSERT INTO keyed VALUES ('a'), ('abc');
SELECT name FROM keyed WHERE entitlock.key(name) = 4952883123889572249;
DROP TABLE keyed;

-- The key is defined over UTF-8: a LATIN1 database computes the same key
-- for the same characters.
SELECT current_database() AS regression_db \gset
DROP DATABASE IF EXISTS entitlock_latin1;
CREATE DATABASE entitlock_latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'
    TEMPLATE template0;
\c entitlock_latin1
SET client_encoding = 'UTF8';
CREATE EXTENSION entitlock;
SELECT lpad(to_hex(entitlock.key('café')), 16, '0') = '9a40a9b974d85a6a' AS cafe_matches,
       lpad(to_hex(entitlock.key('café', 'crème')), 16, '0') AS pair_in_latin1;
\c :regression_db
DROP DATABASE entitlock_latin1;
SELECT lpad(to_hex(entitlock.key('café', 'crème')), 16, '0') AS pair_in_utf8;
