--
-- security: privileges, search_path safety and the trusted decision, for
-- every object of the extension at once.  Listing the objects from the
-- catalog (not by hand) makes a function or table added later show up
-- here with its privileges, so a new function that anyone may call, or a
-- new table somebody can write, is a diff.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS entitlock;
DROP DATABASE IF EXISTS regress_entitlock_trust;
DROP ROLE IF EXISTS regress_entitlock_none;
DROP ROLE IF EXISTS regress_entitlock_schema_only;
DROP ROLE IF EXISTS regress_entitlock_granted;
DROP ROLE IF EXISTS regress_entitlock_hostile;
RESET client_min_messages;

CREATE ROLE regress_entitlock_none;
CREATE ROLE regress_entitlock_schema_only;
CREATE ROLE regress_entitlock_granted;
GRANT USAGE ON SCHEMA entitlock
   TO regress_entitlock_schema_only, regress_entitlock_granted;

-- The grants README.md tells an application role to have.
GRANT EXECUTE ON FUNCTION
	entitlock.record_usage_if_under_limit(text, text, bigint, bigint, text, text),
	entitlock.record_usage(text, text, bigint, text, text),
	entitlock.usage(text, text, text),
	entitlock.record_usage_if_under_limits(entitlock.usage_limit[], bigint, text),
	entitlock.refund_usage(text, text, text),
	entitlock.rate_limit(text, bigint, interval, bigint, bigint),
	entitlock.idempotency_begin(text, text, interval, interval),
	entitlock.idempotency_complete(text, jsonb),
	entitlock.first_time(text, interval),
	entitlock.lease_acquire(text, interval, text, interval),
	entitlock.lease_renew(text, uuid, interval),
	entitlock.lease_release(text, uuid)
  TO regress_entitlock_granted;
GRANT SELECT ON entitlock.leases TO regress_entitlock_granted;

CREATE TEMP VIEW members AS
SELECT d.classid, d.objid
  FROM pg_depend AS d
  JOIN pg_extension AS e ON e.oid = d.refobjid
 WHERE d.refclassid = 'pg_extension'::regclass
   AND d.deptype = 'e' AND e.extname = 'entitlock';

--
-- Functions.  Those anyone with USAGE on the schema may call touch no
-- stored data: keys, transaction locks (as pg_advisory_xact_lock, which
-- PUBLIC may call too), holders (pg_locks) and the period arithmetic.
-- Everything that reads or writes entitlock's tables needs a grant.
--
SELECT p.oid::regprocedure AS function,
	   has_function_privilege('public', p.oid, 'EXECUTE') AS public,
	   has_function_privilege('regress_entitlock_granted', p.oid, 'EXECUTE') AS app,
	   p.prosecdef AS security_definer
  FROM members AS m
  JOIN pg_proc AS p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
 ORDER BY p.oid::regprocedure::text;

-- Nobody but the owner can do anything with a table, view or sequence;
-- the granted role may only read the token-free view.
SELECT c.oid::regclass AS relation, c.relkind,
	   has_table_privilege('regress_entitlock_granted', c.oid,
		   'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') AS app_any,
	   has_table_privilege('regress_entitlock_granted', c.oid, 'SELECT') AS app_select,
	   has_table_privilege('public', c.oid,
		   'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') AS public_any,
	   CASE WHEN c.relkind = 'S'
			THEN has_sequence_privilege('regress_entitlock_granted', c.oid,
										'USAGE, SELECT, UPDATE') END AS app_sequence
  FROM members AS m
  JOIN pg_class AS c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
 ORDER BY c.oid::regclass::text;

-- No column privileges either.
SELECT count(*) AS column_grants
  FROM members AS m
  JOIN pg_attribute AS a ON m.classid = 'pg_class'::regclass AND a.attrelid = m.objid
 WHERE a.attacl IS NOT NULL;

-- Every SECURITY DEFINER function pins search_path to pg_catalog, pg_temp.
SELECT p.oid::regprocedure AS function, p.proconfig
  FROM members AS m
  JOIN pg_proc AS p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
 WHERE p.prosecdef
 ORDER BY 1;
SELECT count(*) AS definer_without_pinned_path
  FROM members AS m
  JOIN pg_proc AS p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
 WHERE p.prosecdef
   AND (p.proconfig IS NULL OR
		NOT 'search_path=pg_catalog, pg_temp' = ANY (p.proconfig));

--
-- A role with no grants at all: every call that reads or writes data is
-- refused with 42501, and so is reading the tables.
--
SET ROLE regress_entitlock_none;
\set VERBOSITY sqlstate
SELECT entitlock.record_usage_if_under_limit('ws', 'api', 1, 10);
SELECT entitlock.record_usage('ws', 'api', 1);
SELECT entitlock.usage('ws', 'api');
SELECT entitlock.prune_usage(now());
SELECT entitlock.idempotency_begin('k');
SELECT entitlock.idempotency_complete('k');
SELECT entitlock.first_time('k');
SELECT entitlock.purge_expired();
SELECT entitlock.lease_acquire('l', '1 minute');
SELECT entitlock.lease_renew('l', gen_random_uuid(), '1 minute');
SELECT entitlock.lease_release('l', gen_random_uuid());
SELECT * FROM entitlock.leases;
SELECT * FROM entitlock.lease_record;
SELECT * FROM entitlock.usage_counter;
SELECT nextval('entitlock.lease_fencing');
-- Without USAGE on the schema even the lock functions are out of reach.
SELECT entitlock.lock('x');
\set VERBOSITY default
SELECT entitlock.usage('ws', 'api');
RESET ROLE;

--
-- USAGE on the schema, but no EXECUTE: the data functions still refuse.
--
SET ROLE regress_entitlock_schema_only;
\set VERBOSITY sqlstate
SELECT entitlock.record_usage_if_under_limit('ws', 'api', 1, 10);
SELECT entitlock.record_usage('ws', 'api', 1);
SELECT entitlock.usage('ws', 'api');
SELECT entitlock.prune_usage(now());
SELECT entitlock.idempotency_begin('k');
SELECT entitlock.idempotency_complete('k');
SELECT entitlock.first_time('k');
SELECT entitlock.purge_expired();
SELECT entitlock.lease_acquire('l', '1 minute');
SELECT entitlock.lease_renew('l', gen_random_uuid(), '1 minute');
SELECT entitlock.lease_release('l', gen_random_uuid());
SELECT * FROM entitlock.leases;
\set VERBOSITY default
SELECT entitlock.first_time('k');
-- Locks and keys need no grant; they are the advisory locks PUBLIC has.
BEGIN;
SELECT entitlock.lock('schema-only'), entitlock.try_lock_shared('other'),
	   entitlock.key('schema-only') = entitlock.key('schema-only') AS same_key;
SELECT count(*) AS held FROM entitlock.holders('schema-only');
COMMIT;
RESET ROLE;

--
-- The granted role works through the functions, and still cannot touch
-- the tables, the sequence or tokens directly.
--
SET ROLE regress_entitlock_granted;
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('sec:ws', 'api', 3, 10);
SELECT entitlock.record_usage('sec:ws', 'api', 2, 'lifetime', 'sec:req-1');
SELECT entitlock.usage('sec:ws', 'api');
SELECT subject, allowed, used FROM entitlock.record_usage_if_under_limits(
	ARRAY[entitlock.usage_limit('sec:ws', 'api', 10),
		  entitlock.usage_limit('sec:org', 'api', 100, 'month')], 1, 'sec:req-2');
SELECT entitlock.refund_usage('sec:ws', 'api', 'sec:req-2');
SELECT allowed, remaining FROM entitlock.rate_limit('sec:rl', 10, '1 minute');
BEGIN;
SELECT status FROM entitlock.idempotency_begin('sec:order-1', 'fp');
SELECT entitlock.idempotency_complete('sec:order-1', '{"id": 1}');
COMMIT;
SELECT status, response FROM entitlock.idempotency_begin('sec:order-1', 'fp');
SELECT entitlock.first_time('sec:job-1'), entitlock.first_time('sec:job-1');
CREATE TEMP TABLE my_lease AS
SELECT * FROM entitlock.lease_acquire('sec:lease', '1 minute', 'granted');
SELECT entitlock.lease_renew('sec:lease', token, '2 minutes') FROM my_lease;
SELECT name, holder FROM entitlock.leases WHERE name = 'sec:lease';
\set VERBOSITY sqlstate
INSERT INTO entitlock.usage_counter VALUES ('sec:ws', 'api', 'lifetime', '-infinity', NULL, 0);
UPDATE entitlock.usage_counter SET used = 0;
DELETE FROM entitlock.usage_counter;
TRUNCATE entitlock.usage_counter;
UPDATE entitlock.usage_idempotency SET allowed = true;
DELETE FROM entitlock.usage_limits_idempotency;
UPDATE entitlock.rate_limit_state SET tat = now();
DELETE FROM entitlock.idempotency_key;
UPDATE entitlock.idempotency_key SET response = '{}';
SELECT token FROM entitlock.lease_record;
UPDATE entitlock.lease_record SET expires_at = now();
DELETE FROM entitlock.lease_record;
SELECT nextval('entitlock.lease_fencing');
SELECT setval('entitlock.lease_fencing', 1);
SELECT last_value FROM entitlock.lease_fencing;
ALTER SEQUENCE entitlock.lease_fencing RESTART;
CREATE TRIGGER t BEFORE INSERT ON entitlock.lease_record
	FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger();
ALTER TABLE entitlock.usage_counter DROP CONSTRAINT usage_counter_used_check;
CREATE FUNCTION entitlock.evil() RETURNS int LANGUAGE sql AS 'SELECT 1';
SELECT entitlock.prune_usage(now());
SELECT entitlock.prune_rate_limits();
SELECT entitlock.purge_expired();
\set VERBOSITY default
-- The view never shows a token.
SELECT count(*) AS token_columns
  FROM information_schema.columns
 WHERE table_schema = 'entitlock' AND table_name = 'leases'
   AND data_type = 'uuid';
SELECT entitlock.lease_release('sec:lease', token) FROM my_lease;
DROP TABLE my_lease;
RESET ROLE;
-- What the granted role did is there, and nothing else changed.
SELECT entitlock.usage('sec:ws', 'api') AS usage,
	   (SELECT count(*) FROM entitlock.idempotency_key WHERE key LIKE 'sec:%') AS claims,
	   (SELECT count(*) FROM entitlock.lease_record WHERE name LIKE 'sec:%') AS leases;

--
-- A hostile search_path.  A role that may create objects in public plants
-- look-alikes of what entitlock's SQL uses: now(), clock_timestamp(), and
-- the comparison, arithmetic and bit operators, each raising an error when
-- called.  With search_path = public, pg_catalog they shadow the built-in
-- ones for any unqualified name; entitlock's functions, its SECURITY
-- DEFINER prune_usage, its view and its defaults must not call a single one.
--
CREATE ROLE regress_entitlock_hostile;
GRANT CREATE ON SCHEMA public TO regress_entitlock_hostile;
SET ROLE regress_entitlock_hostile;
CREATE FUNCTION public.now() RETURNS timestamptz
LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hostile now() called'; END $$;
CREATE FUNCTION public.clock_timestamp() RETURNS timestamptz
LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hostile clock_timestamp() called'; END $$;
CREATE FUNCTION public.count(anyelement) RETURNS bigint
LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hostile count() called'; END $$;
-- One trap operator per operator and type that entitlock's SQL applies.
DO $$
DECLARE
	op record;
BEGIN
	FOR op IN
		SELECT * FROM (VALUES
			('=', 'text', 'text', 'boolean'), ('=', 'bigint', 'bigint', 'boolean'),
			('=', 'oid', 'oid', 'boolean'), ('=', 'uuid', 'uuid', 'boolean'),
			('=', 'name', 'name', 'boolean'),
			('<', 'timestamptz', 'timestamptz', 'boolean'),
			('<=', 'timestamptz', 'timestamptz', 'boolean'),
			('>', 'timestamptz', 'timestamptz', 'boolean'),
			('>=', 'timestamptz', 'timestamptz', 'boolean'),
			('+', 'bigint', 'bigint', 'bigint'), ('&', 'bigint', 'bigint', 'bigint'),
			('>>', 'bigint', 'integer', 'bigint'),
			('-', 'timestamptz', 'timestamptz', 'interval'))
			AS t(oprname, lefttype, righttype, result)
	LOOP
		EXECUTE format(
			'CREATE FUNCTION public.hostile_%s_%s_%s(a %s, b %s) RETURNS %s '
			'LANGUAGE plpgsql AS $f$ BEGIN RAISE EXCEPTION %L, a, b; END $f$',
			md5(op.oprname), op.lefttype, op.righttype, op.lefttype,
			op.righttype, op.result,
			'hostile operator ' || op.oprname || ' called on % and %');
		EXECUTE format(
			'CREATE OPERATOR public.%s (LEFTARG = %s, RIGHTARG = %s, '
			'FUNCTION = public.hostile_%s_%s_%s)',
			op.oprname, op.lefttype, op.righttype, md5(op.oprname),
			op.lefttype, op.righttype);
	END LOOP;
END
$$;
SELECT count(*) AS traps FROM pg_operator
 WHERE oprnamespace = 'public'::regnamespace;
RESET ROLE;

SET search_path = public, pg_catalog;
-- The trap works: an unqualified call from outside entitlock springs it.
SELECT now();
SELECT 'a'::text = 'a'::text;

-- Now everything entitlock does, as a superuser and as the granted role.
CREATE TEMP TABLE hostile_lease AS
SELECT * FROM entitlock.lease_acquire('sec:hostile', '1 minute', 'h');
SELECT pg_catalog.count(*) AS acquired FROM hostile_lease;
SELECT entitlock.lease_renew('sec:hostile', token, '1 minute') FROM hostile_lease;
SELECT name, holder FROM entitlock.leases WHERE name OPERATOR(pg_catalog.=) 'sec:hostile';
SELECT entitlock.lease_release('sec:hostile', token) FROM hostile_lease;
SELECT allowed, used, remaining FROM entitlock.record_usage_if_under_limit('sec:hostile', 'api', 4, 5, 'day');
SELECT allowed, used, remaining FROM entitlock.record_usage_if_under_limit('sec:hostile', 'api', 4, 5, 'day', 'sec:req');
SELECT entitlock.record_usage('sec:hostile', 'api', -1, 'day');
SELECT entitlock.usage('sec:hostile', 'api', 'day');
SELECT period_end OPERATOR(pg_catalog.-) period_start AS length
  FROM entitlock.usage_period('day');
SELECT status FROM entitlock.idempotency_begin('sec:hostile-order');
SELECT entitlock.first_time('sec:hostile-job');
SELECT entitlock.purge_expired();
SELECT entitlock.prune_usage('2000-01-01');
BEGIN;
SELECT entitlock.lock('sec:hostile'), entitlock.lock('sec:hostile', '1 s'),
	   entitlock.try_lock('sec:hostile-2');
SELECT entitlock.lock_all(ARRAY['sec:a', 'sec:b']),
	   entitlock.lock_entity('sec:realm', 'e'),
	   entitlock.try_lock_entity('sec:realm', 'f');
SELECT mode, granted FROM entitlock.holders('sec:hostile');
COMMIT;
SET ROLE regress_entitlock_granted;
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('sec:hostile', 'api', 1, 5, 'day');
SELECT status FROM entitlock.idempotency_begin('sec:hostile-order');
SELECT pg_catalog.count(*) AS acquired
  FROM entitlock.lease_acquire('sec:hostile-2', '1 minute');
SELECT name FROM entitlock.leases WHERE name OPERATOR(pg_catalog.=) 'sec:hostile-2';
RESET ROLE;
-- A maintenance role granted prune_usage runs it with the owner's rights;
-- its pinned search_path ignores the caller's.
GRANT USAGE ON SCHEMA entitlock TO regress_entitlock_hostile;
GRANT EXECUTE ON FUNCTION entitlock.prune_usage(timestamptz),
   entitlock.prune_rate_limits()
   TO regress_entitlock_hostile;
SET ROLE regress_entitlock_hostile;
SELECT entitlock.prune_usage('2000-01-01');
SELECT entitlock.prune_rate_limits();
RESET ROLE;
RESET search_path;

DROP OWNED BY regress_entitlock_hostile;
REVOKE CREATE ON SCHEMA public FROM regress_entitlock_hostile;

--
-- Not trusted: installing needs a superuser.  Its functions write their
-- tables beneath SQL, so EXECUTE is the whole permission, and a database
-- owner must not be able to hand that out by installing it.  See README,
-- Security.
--
SELECT name, version, superuser, trusted, relocatable, schema
  FROM pg_available_extension_versions WHERE name = 'entitlock';
SET client_min_messages = warning;
DROP DATABASE IF EXISTS regress_entitlock_trust;
RESET client_min_messages;
CREATE DATABASE regress_entitlock_trust OWNER regress_entitlock_granted;
SELECT current_database() AS regress_db \gset
\c regress_entitlock_trust
-- The database's owner, who could install a trusted extension, cannot.
SET ROLE regress_entitlock_granted;
CREATE EXTENSION entitlock;
RESET ROLE;
SELECT count(*) AS installed FROM pg_extension WHERE extname = 'entitlock';
\c :regress_db
DROP DATABASE regress_entitlock_trust;

-- Leave nothing behind.
SELECT entitlock.lease_release(name, token)
  FROM entitlock.lease_record WHERE name LIKE 'sec:%';
DELETE FROM entitlock.usage_counter WHERE subject LIKE 'sec:%';
DELETE FROM entitlock.usage_idempotency WHERE subject LIKE 'sec:%';
DELETE FROM entitlock.idempotency_key WHERE key LIKE 'sec:%';
DROP OWNED BY regress_entitlock_none, regress_entitlock_schema_only,
	regress_entitlock_granted, regress_entitlock_hostile;
DROP ROLE regress_entitlock_none;
DROP ROLE regress_entitlock_schema_only;
DROP ROLE regress_entitlock_granted;
DROP ROLE regress_entitlock_hostile;
