/* sql/entitlock--1.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION entitlock" to load this file. \quit

--
-- Keys
--

CREATE FUNCTION entitlock.key(name text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'entitlock_key'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION entitlock.key(text) IS
'lock key of a name: XXH64 (seed 0) of its UTF-8 bytes, as a signed bigint';

CREATE FUNCTION entitlock.key(realm text, entity text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'entitlock_key_pair'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION entitlock.key(text, text) IS
'lock key of a (realm, entity) pair: XXH64 of realm, a zero byte and entity';

--
-- Transaction-scoped locks
--
-- Not STRICT: a NULL name raises an error instead of quietly taking no lock.
-- VOLATILE and PARALLEL UNSAFE: they change lock state.
--

CREATE FUNCTION entitlock.lock(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'entitlock_lock'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION entitlock.lock(text) IS
'exclusive lock on a name until the end of the transaction; waits';

CREATE FUNCTION entitlock.lock(name text, timeout interval)
RETURNS boolean
AS 'MODULE_PATHNAME', 'entitlock_lock_timeout'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION entitlock.lock(text, interval) IS
'exclusive lock on a name until the end of the transaction; waits at most timeout, false when it expires';

CREATE FUNCTION entitlock.try_lock(name text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'entitlock_try_lock'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION entitlock.try_lock(text) IS
'exclusive lock on a name until the end of the transaction if it is free now; never waits';

CREATE FUNCTION entitlock.lock_shared(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'entitlock_lock_shared'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION entitlock.lock_shared(text) IS
'shared lock on a name until the end of the transaction; waits';

CREATE FUNCTION entitlock.try_lock_shared(name text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'entitlock_try_lock_shared'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION entitlock.try_lock_shared(text) IS
'shared lock on a name until the end of the transaction if it is free now; never waits';

CREATE FUNCTION entitlock.lock_all(names text[])
RETURNS void
AS 'MODULE_PATHNAME', 'entitlock_lock_all'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION entitlock.lock_all(text[]) IS
'exclusive locks on every name, in ascending key order, until the end of the transaction';

CREATE FUNCTION entitlock.lock_entity(realm text, entity text)
RETURNS void
AS 'MODULE_PATHNAME', 'entitlock_lock_entity'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION entitlock.lock_entity(text, text) IS
'shared lock on realm, then exclusive lock on (realm, entity), until the end of the transaction';

CREATE FUNCTION entitlock.try_lock_entity(realm text, entity text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'entitlock_try_lock_entity'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION entitlock.try_lock_entity(text, text) IS
'lock_entity if both locks are free now; never waits and takes nothing on false';

--
-- Who holds or waits for a lock.  PostgreSQL's own views already answer
-- this and apply their privilege rules (xact_start of other roles' sessions
-- shows as NULL unless the caller may see it).
--
CREATE FUNCTION entitlock.holders(name text)
RETURNS TABLE (pid integer, mode text, granted boolean,
			   xact_start timestamptz, application_name text)
LANGUAGE plpgsql VOLATILE STRICT PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	-- Computed up front so that a bad name is an error even when no
	-- advisory lock exists at all.
	k bigint := entitlock.key(holders.name);
BEGIN
	RETURN QUERY
	SELECT l.pid,
		   CASE l.mode
			   WHEN 'ExclusiveLock' THEN 'exclusive'
			   WHEN 'ShareLock' THEN 'shared'
			   ELSE l.mode
		   END,
		   l.granted,
		   a.xact_start,
		   a.application_name::text
	  FROM pg_catalog.pg_locks AS l
	  LEFT JOIN pg_catalog.pg_stat_activity AS a
		ON a.pid OPERATOR(pg_catalog.=) l.pid
	 WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory'
	   AND l.database OPERATOR(pg_catalog.=)
		   (SELECT d.oid FROM pg_catalog.pg_database AS d
			 WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
	   AND l.classid OPERATOR(pg_catalog.=)
		   pg_catalog.oid((k OPERATOR(pg_catalog.>>) 32)
						  OPERATOR(pg_catalog.&) 4294967295)
	   AND l.objid OPERATOR(pg_catalog.=)
		   pg_catalog.oid(k OPERATOR(pg_catalog.&) 4294967295)
	   AND l.objsubid OPERATOR(pg_catalog.=) 1
	 ORDER BY l.granted DESC, a.xact_start NULLS LAST, l.pid;
END
$$;

COMMENT ON FUNCTION entitlock.holders(text) IS
'sessions that hold or wait for the lock on a name, from pg_locks and pg_stat_activity';
