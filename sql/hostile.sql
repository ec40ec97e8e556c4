--
-- hostile: every argument of every function NULL in turn, 10 MB names,
-- extreme amounts and limits, absurd periods, ttls and timeouts.  Each
-- must give a clear error with its SQLSTATE, or the right answer; never a
-- crash, an internal error or a write.  The other files test the meaning
-- of each error; this one sweeps the whole surface the same way, so a new
-- function or argument without checks shows up here.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS entitlock;
RESET client_min_messages;
SET timezone = 'UTC';

-- What a statement does, in one line: its result, or its error's SQLSTATE
-- and message (messages cut at 100 characters: some quote arguments).
CREATE FUNCTION outcome(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	result text;
BEGIN
	EXECUTE stmt INTO result;
	RETURN 'ok: ' || coalesce(left(result, 100), 'NULL');
EXCEPTION WHEN OTHERS THEN
	RETURN 'ERROR ' || SQLSTATE || ': ' || left(SQLERRM, 100);
END
$$;

-- Everything entitlock stores, as one checksum: "changes nothing" is
-- checked by comparing it before and after.
CREATE FUNCTION stored() RETURNS text
LANGUAGE sql AS $$
	SELECT md5(concat_ws('|',
		(SELECT string_agg(u::text, ',' ORDER BY u::text) FROM entitlock.usage_counter u),
		(SELECT string_agg(u::text, ',' ORDER BY u::text) FROM entitlock.usage_idempotency u),
		(SELECT string_agg(md5(k::text), ',' ORDER BY md5(k::text)) FROM entitlock.idempotency_key k),
		(SELECT string_agg(md5(l::text), ',' ORDER BY md5(l::text)) FROM entitlock.lease_record l)))
$$;

-- One valid call of each function, as SQL argument lists, and how to
-- call it so that any result comes back as one text value.
CREATE TEMP TABLE calls (fn text, args text[], wrap text);
INSERT INTO calls VALUES
	('entitlock.key', ARRAY['''n'''], 'SELECT (%s)::text'),
	('entitlock.key', ARRAY['''r''', '''e'''], 'SELECT (%s)::text'),
	('entitlock.lock', ARRAY['''n'''], 'SELECT (%s)::text'),
	('entitlock.lock', ARRAY['''n''', '''1 s''::interval'], 'SELECT (%s)::text'),
	('entitlock.try_lock', ARRAY['''n'''], 'SELECT (%s)::text'),
	('entitlock.lock_shared', ARRAY['''s'''], 'SELECT (%s)::text'),
	('entitlock.try_lock_shared', ARRAY['''s'''], 'SELECT (%s)::text'),
	('entitlock.lock_all', ARRAY['ARRAY[''a'', ''b'']'], 'SELECT (%s)::text'),
	('entitlock.lock_entity', ARRAY['''r''', '''e'''], 'SELECT (%s)::text'),
	('entitlock.try_lock_entity', ARRAY['''r''', '''e'''], 'SELECT (%s)::text'),
	('entitlock.holders', ARRAY['''n'''], 'SELECT count(*)::text FROM %s'),
	('entitlock.record_usage_if_under_limit',
	  ARRAY['''h:s''', '''f''', '1', '10', '''lifetime''', '''h:k'''], 'SELECT (%s)::text'),
	('entitlock.record_usage',
	 ARRAY['''h:s''', '''f''', '1', '''day''', '''h:k2'''], 'SELECT (%s)::text'),
	('entitlock.usage', ARRAY['''h:s''', '''f''', '''day'''], 'SELECT (%s)::text'),
	('entitlock.usage_period', ARRAY['''day''', '''2026-11-22 12:00+00''::timestamptz'], 'SELECT (%s)::text'),
	('entitlock.prune_usage', ARRAY['''2000-01-01''::timestamptz'], 'SELECT (%s)::text'),
	('entitlock.idempotency_begin', ARRAY['''h:k''', '''fp''', '''1 hour''::interval'], 'SELECT (%s)::text'),
	('entitlock.idempotency_complete', ARRAY['''h:k''', '''{}''::jsonb'], 'SELECT (%s)::text'),
	('entitlock.first_time', ARRAY['''h:job''', '''1 hour''::interval'], 'SELECT (%s)::text'),
	('entitlock.purge_expired', ARRAY['10'], 'SELECT (%s)::text'),
	('entitlock.lease_acquire', ARRAY['''h:l''', '''1 minute''::interval', '''me'''],
	 'SELECT count(*)::text FROM %s'),
	('entitlock.lease_renew',
	 ARRAY['''h:l''', '''00000000-0000-4000-8000-000000000000''::uuid', '''1 minute''::interval'], 'SELECT (%s)::text'),
	('entitlock.lease_release',
	 ARRAY['''h:l''', '''00000000-0000-4000-8000-000000000000''::uuid'], 'SELECT (%s)::text');

-- Each argument NULL in turn.  Optional arguments (idempotency key,
-- fingerprint, response, holder, max_rows) may be NULL; STRICT functions
-- (key, holders, usage_period's moment, prune_usage) return NULL;
-- everything else is 22004.  Each call runs in a transaction that is
-- rolled back, so nothing is left behind either way.
SELECT stored() AS before \gset
BEGIN;
SELECT c.fn, i AS null_arg,
	   outcome(format(c.wrap,
					  c.fn || '(' || array_to_string(
						  (SELECT array_agg(CASE WHEN j = i THEN 'NULL' ELSE c.args[j] END
											ORDER BY j)
							 FROM generate_subscripts(c.args, 1) AS j), ', ') || ')'))
  FROM calls AS c, generate_subscripts(c.args, 1) AS i
 ORDER BY c.fn, cardinality(c.args), i;
ROLLBACK;
SELECT stored() = :'before' AS nothing_stored;

--
-- 10 MB names.  Locks, claims and leases take any length (only the hash
-- is indexed); usage names are capped, as they are a btree key (54000).
--
CREATE TEMP TABLE big AS SELECT repeat('€', 3495254) AS s;	-- 10 MB of UTF-8
SELECT octet_length(s) FROM big;
SELECT entitlock.key(s) = entitlock.key(s) AS stable,
	   entitlock.key(s) <> entitlock.key(s || 'x') AS differs,
	   entitlock.key(s, s) <> entitlock.key(s) AS pair_differs
  FROM big;
BEGIN;
SELECT entitlock.lock(s), entitlock.try_lock(s), entitlock.lock(s, '1 s'),
	   entitlock.lock_all(ARRAY[s, s || 'y']), entitlock.lock_entity(s, s)
  FROM big;
SELECT count(*) AS holders FROM big, entitlock.holders(s);
COMMIT;
SELECT stored() AS before \gset
\set VERBOSITY sqlstate
SELECT entitlock.record_usage_if_under_limit(s, 'f', 1, 10) FROM big;
SELECT entitlock.record_usage('h:s', s, 1) FROM big;
SELECT entitlock.record_usage('h:s', 'f', 1, 'day', s) FROM big;
SELECT entitlock.usage(s, 'f') FROM big;
SELECT entitlock.usage('h:s', 'f', s) FROM big;
\set VERBOSITY default
SELECT entitlock.usage('h:s', 'f', s) FROM big;
SELECT stored() = :'before' AS nothing_stored;
BEGIN;
SELECT status FROM big, entitlock.idempotency_begin(s, s);
SELECT entitlock.idempotency_complete(s, to_jsonb(s)) FROM big;
SELECT status, octet_length(response #>> '{}') FROM big, entitlock.idempotency_begin(s, s);
SELECT entitlock.first_time(s || 'job') FROM big;
SELECT count(*) AS acquired FROM big, entitlock.lease_acquire(s, '1 minute', s);
SELECT octet_length(name), octet_length(holder) FROM entitlock.leases
 WHERE octet_length(name) > 1000000;
ROLLBACK;
SELECT stored() = :'before' AS nothing_stored;

--
-- Extreme amounts and limits.
--
SELECT stored() AS before \gset
\set VERBOSITY sqlstate
SELECT * FROM entitlock.record_usage_if_under_limit('h:x', 'f', 0, 10);
SELECT * FROM entitlock.record_usage_if_under_limit('h:x', 'f', -9223372036854775808, 10);
SELECT * FROM entitlock.record_usage_if_under_limit('h:x', 'f', 1, -1);
SELECT * FROM entitlock.record_usage_if_under_limit('h:x', 'f', 1, -9223372036854775808);
SELECT * FROM entitlock.record_usage_if_under_limit('h:x', 'f', 9223372036854775807 + 1, 10);
\set VERBOSITY default
SELECT stored() = :'before' AS nothing_stored;
BEGIN;
-- The largest amount fits the largest limit once; then nothing more does.
SELECT allowed, used, remaining
  FROM entitlock.record_usage_if_under_limit('h:x', 'f', 9223372036854775807, 9223372036854775807);
SELECT allowed, used, remaining
  FROM entitlock.record_usage_if_under_limit('h:x', 'f', 1, 9223372036854775807);
SELECT allowed, used, remaining
  FROM entitlock.record_usage_if_under_limit('h:x', 'f', 9223372036854775807, 0);
-- Unconditional usage past bigint is an error, not a wrap.
SAVEPOINT s;
SELECT entitlock.record_usage('h:x', 'f', 1);
ROLLBACK TO s;
-- The largest refund empties the meter and no more.
SELECT entitlock.record_usage('h:x', 'f', -9223372036854775808);
SELECT entitlock.record_usage('h:x', 'f', -1);
SELECT entitlock.record_usage('h:x', 'f', 9223372036854775807);
SELECT allowed, used, remaining
  FROM entitlock.record_usage_if_under_limit('h:x', 'f', 1, 0);
ROLLBACK;
SELECT stored() = :'before' AS nothing_stored;

--
-- Periods: the seven names in any case, nothing else; moments at the ends
-- of timestamptz.
--
SELECT p, outcome(format('SELECT entitlock.usage(''h:s'', ''f'', %L)', p))
  FROM unnest(ARRAY['LIFETIME', 'Month', 'weeK', ' day', 'day ', 'days', '',
					'hour;', E'day\n', 'décade', 'infinity']) AS p;
SELECT p, at, outcome(format('SELECT entitlock.usage_period(%L, %L)::text', p, at))
  FROM unnest(ARRAY['lifetime', 'year', 'week', 'minute']) AS p,
	   unnest(ARRAY['infinity', '-infinity', '294276-12-31 23:59:59+00',
					'4713-01-01 00:00+00 BC']) AS at
 ORDER BY p, at;

--
-- ttls and timeouts: zero, negative, mixed signs, absurdly long.
--
SELECT stored() AS before \gset
BEGIN;
SELECT ttl,
	   outcome(format('SELECT entitlock.first_time(''h:ttl'', %L)', ttl)) AS first_time,
	   outcome(format('SELECT status FROM entitlock.idempotency_begin(''h:ttl2'', NULL, %L)', ttl)) AS begin,
	   outcome(format('SELECT count(*) FROM entitlock.lease_acquire(''h:ttl'', %L)', ttl)) AS lease
  FROM unnest(ARRAY['0', '-1 s', '-1000000 years', '1 month -31 days',
					'-1 month 32 days', '10001 years', '1000000 years',
					'178000000 years', '-178000000 years']) AS ttl;
ROLLBACK;
SELECT stored() = :'before' AS nothing_stored;
SELECT t AS timeout, outcome(format('SELECT entitlock.lock(''h:t'', %L)', t))
  FROM unnest(ARRAY['0', '-1 s', '-1 month 29 days', '1 month -29 days',
					'178000000 years', '-178000000 years']) AS t;

--
-- Lock names: empty, NULL elements, odd arrays.
--
SELECT a, outcome(format('SELECT entitlock.lock_all(%s)', a))
  FROM unnest(ARRAY['ARRAY[]::text[]', 'ARRAY[NULL]::text[]', 'ARRAY['''']',
					'ARRAY[''a'', NULL, ''a'']', 'ARRAY[[''a'', ''b''], [''c'', ''d'']]',
					'''[5:6]={x,y}''::text[]']) AS a;

--
-- The type entitlock.usage_limit altered by a superuser.  Attributes added
-- and dropped again leave dropped places in the type's rows (forty here:
-- code that took a row apart into room for four fields would write far
-- past it); the functions skip them.  A field added and kept is refused
-- with a clear error.  All in a transaction rolled back at the end, so the
-- type is as installed for everything after.
--
BEGIN;
DO $$
BEGIN
	FOR i IN 1..40 LOOP
		EXECUTE format('ALTER TYPE entitlock.usage_limit ADD ATTRIBUTE x%s bigint', i);
	END LOOP;
	FOR i IN 1..40 LOOP
		EXECUTE format('ALTER TYPE entitlock.usage_limit DROP ATTRIBUTE x%s', i);
	END LOOP;
END
$$;
SELECT entitlock.usage_limit('h:type', 'api', 10, 'Day');
SELECT subject, feature, period, allowed, used, remaining
  FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('h:type', 'api', 10, 'day'),
	entitlock.usage_limit('h:type-org', 'api', 5)], 3);
SELECT subject, feature, period, allowed, used, remaining
  FROM entitlock.record_usage_if_under_limits(
	ARRAY[ROW('h:type', 'api', 4, 'day')]::entitlock.usage_limit[], 3);
-- A dropped place between the fields: period dropped and added again.
ALTER TYPE entitlock.usage_limit DROP ATTRIBUTE period;
ALTER TYPE entitlock.usage_limit ADD ATTRIBUTE period text;
SELECT entitlock.usage_limit('h:type', 'api', 10, 'day');
SELECT subject, feature, period, allowed, used, remaining
  FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('h:type', 'api', 10, 'day')], 2);
-- A field added and kept.
ALTER TYPE entitlock.usage_limit ADD ATTRIBUTE extra int;
SELECT outcome('SELECT entitlock.usage_limit(''h:type'', ''api'', 10)::text');
SELECT outcome('SELECT count(*) FROM entitlock.record_usage_if_under_limits(
	ARRAY[ROW(''h:type'', ''api'', 10, ''day'', 1)]::entitlock.usage_limit[])');
ROLLBACK;
SELECT entitlock.usage_limit('h:type', 'api', 10) AS type_as_installed;

-- The server is still here, and nothing was left stored.
SELECT 1 AS alive;
SELECT count(*) AS left_behind FROM entitlock.usage_counter WHERE subject LIKE 'h:%';
SELECT count(*) AS left_behind FROM entitlock.idempotency_key WHERE key LIKE 'h:%';
SELECT count(*) AS left_behind FROM entitlock.lease_record WHERE name LIKE 'h:%';
DROP FUNCTION outcome(text);
DROP FUNCTION stored();
