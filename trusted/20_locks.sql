/* trusted/20_locks.sql */

--
-- Transaction-scoped named locks.  Each is the very advisory lock that
-- pg_advisory_xact_lock(entitlock.key(name)) takes (the 64-bit form, lock
-- tag field 4 = 1), as in the C edition, so the two editions and plain
-- pg_advisory_xact_lock callers meet.  Waiting is left to PostgreSQL's
-- lock manager: lock_timeout, statement_timeout, cancels and deadlock
-- detection apply as to any lock.
--
-- What the C edition does and this one does not: it also takes an
-- "escalation stripe" with every exclusive lock, so that a transaction
-- recording usage on thousands of meters can trade its per-meter locks
-- for a few coarse ones.  SQL can only take advisory locks in share and
-- exclusive mode, which cannot express that, so here a recording call
-- always takes its per-meter locks (see trusted/30_usage.sql) and a
-- transaction recording on very many meters needs room in the lock table
-- (max_locks_per_transaction) for two locks per meter.
--
-- Not STRICT: a NULL name raises an error instead of quietly taking no
-- lock.  The single-name functions compute key(name) themselves, with
-- key()'s check, to spare a function call on every lock.  VOLATILE and PARALLEL UNSAFE: they change lock state.
--

--
-- A wait limit in whole milliseconds, rounded up so that a wait of one
-- microsecond still waits; months count as 30 days, as in the C edition
-- and elsewhere in PostgreSQL.  Anything beyond what lock_timeout accepts
-- (about 24 days) is clamped to that.  NULL gives NULL; negative is an
-- error naming what.
--
CREATE OR REPLACE FUNCTION entitlock._interval_ms(span interval, what text)
RETURNS integer
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	months numeric;
	days numeric;
	usecs numeric;
BEGIN
	IF span IS NULL THEN
		RETURN NULL;
	END IF;
	months := extract(year FROM span) * 12 + extract(month FROM span);
	days := extract(day FROM span);
	usecs := extract(epoch FROM span - make_interval(months => months::integer,
													 days => days::integer)) * 1000000
			 + (months * 30 + days) * 86400000000;
	IF usecs < 0 THEN
		RAISE EXCEPTION '% must not be negative', what
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN least(ceil(usecs / 1000), 2147483647)::integer;
END
$$;

COMMENT ON FUNCTION entitlock._interval_ms(interval, text) IS
'a wait limit in milliseconds, rounded up, months as 30 days (internal to the trusted edition)';

--
-- Wait for the advisory lock on key, exclusive or shared, for at most
-- timeout_ms (more than zero); false when that expires.
--
-- The wait runs with lock_timeout set to the limit, inside a
-- subtransaction (the BEGIN ... EXCEPTION block).  When the lock manager
-- gives up it raises lock_not_available, and rolling the subtransaction
-- back takes us out of the wait queue while everything the transaction
-- did and held before stays as it was.  Polling with try-lock instead
-- would lose the queue position to newcomers and hide deadlocks from
-- PostgreSQL's detector.  Any other error (deadlock, statement_timeout,
-- cancel) goes through unchanged.
--
-- The function's own SET clause makes lock_timeout local to the call:
-- PostgreSQL restores the caller's value when the function returns or
-- fails, also when the SET LOCAL inside the block was committed with the
-- subtransaction.
--
-- When the statement timer and the lock timer go off in the same
-- interrupt check, PostgreSQL reports only the lock timeout.  A lock
-- timeout that comes when statement_timeout has run out is therefore
-- reported as the statement timeout it also is, as in the C edition.
--
CREATE OR REPLACE FUNCTION entitlock._wait_advisory(key bigint, shared boolean, timeout_ms integer)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET lock_timeout = 0
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	done boolean;	-- a void call's result, thrown away
	st text;
	st_ms bigint;
BEGIN
	BEGIN
		done := (set_config('lock_timeout', timeout_ms::text, true)) IS NULL;
		IF shared THEN
			done := (pg_advisory_xact_lock_shared(key)) IS NULL;
		ELSE
			done := (pg_advisory_xact_lock(key)) IS NULL;
		END IF;
		RETURN true;
	EXCEPTION WHEN lock_not_available THEN
		st := current_setting('statement_timeout');
		st_ms := extract(epoch FROM st::interval) * 1000;
		IF st_ms > 0
		   AND clock_timestamp() >= statement_timestamp() + make_interval(secs => st_ms / 1000.0) THEN
			RAISE EXCEPTION 'canceling statement due to statement timeout'
				USING ERRCODE = 'query_canceled';
		END IF;
		RETURN false;
	END;
END
$$;

COMMENT ON FUNCTION entitlock._wait_advisory(bigint, boolean, integer) IS
'waits at most timeout_ms for an advisory transaction lock on key, with lock_timeout in a subtransaction (internal to the trusted edition)';

--
-- The advisory lock on key in exclusive or shared mode, waiting at most
-- timeout_ms; NULL waits as long as it takes, 0 never waits.
--
CREATE OR REPLACE FUNCTION entitlock._acquire_advisory(key bigint, shared boolean, timeout_ms integer)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	done boolean;	-- a void call's result, thrown away
BEGIN
	-- Most calls find the lock free; spare them the subtransaction.
	IF shared THEN
		IF pg_try_advisory_xact_lock_shared(key) THEN
			RETURN true;
		END IF;
	ELSIF pg_try_advisory_xact_lock(key) THEN
		RETURN true;
	END IF;
	IF timeout_ms IS NULL THEN
		IF shared THEN
			done := (pg_advisory_xact_lock_shared(key)) IS NULL;
		ELSE
			done := (pg_advisory_xact_lock(key)) IS NULL;
		END IF;
		RETURN true;
	END IF;
	-- lock_timeout = 0 means "wait forever", so a zero limit stops here.
	IF timeout_ms = 0 THEN
		RETURN false;
	END IF;
	RETURN entitlock._wait_advisory(key, shared, timeout_ms);
END
$$;

COMMENT ON FUNCTION entitlock._acquire_advisory(bigint, boolean, integer) IS
'advisory transaction lock on key, waiting at most timeout_ms (NULL: as long as it takes) (internal to the trusted edition)';

CREATE OR REPLACE FUNCTION entitlock.lock(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	done boolean;	-- a void call's result, thrown away
BEGIN
	IF name IS NULL THEN
		RAISE EXCEPTION 'lock name must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF name = '' THEN
		RAISE EXCEPTION 'lock name must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	done := (pg_advisory_xact_lock(entitlock._xxh64(convert_to(name, 'UTF8'), 0))) IS NULL;
END
$$;

COMMENT ON FUNCTION entitlock.lock(text) IS
'exclusive lock on a name until the end of the transaction; waits';

CREATE OR REPLACE FUNCTION entitlock.lock(name text, timeout interval)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k bigint;
BEGIN
	IF name IS NULL THEN
		RAISE EXCEPTION 'lock name must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF name = '' THEN
		RAISE EXCEPTION 'lock name must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	k := entitlock._xxh64(convert_to(name, 'UTF8'), 0);
	IF timeout IS NULL THEN
		RAISE EXCEPTION 'timeout must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	RETURN entitlock._acquire_advisory(k, false, entitlock._interval_ms(timeout, 'timeout'));
END
$$;

COMMENT ON FUNCTION entitlock.lock(text, interval) IS
'exclusive lock on a name until the end of the transaction; waits at most timeout, false when it expires';

CREATE OR REPLACE FUNCTION entitlock.try_lock(name text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF name IS NULL THEN
		RAISE EXCEPTION 'lock name must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF name = '' THEN
		RAISE EXCEPTION 'lock name must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN pg_try_advisory_xact_lock(entitlock._xxh64(convert_to(name, 'UTF8'), 0));
END
$$;

COMMENT ON FUNCTION entitlock.try_lock(text) IS
'exclusive lock on a name until the end of the transaction if it is free now; never waits';

CREATE OR REPLACE FUNCTION entitlock.lock_shared(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	done boolean;	-- a void call's result, thrown away
BEGIN
	IF name IS NULL THEN
		RAISE EXCEPTION 'lock name must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF name = '' THEN
		RAISE EXCEPTION 'lock name must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	done := (pg_advisory_xact_lock_shared(entitlock._xxh64(convert_to(name, 'UTF8'), 0))) IS NULL;
END
$$;

COMMENT ON FUNCTION entitlock.lock_shared(text) IS
'shared lock on a name until the end of the transaction; waits';

CREATE OR REPLACE FUNCTION entitlock.try_lock_shared(name text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF name IS NULL THEN
		RAISE EXCEPTION 'lock name must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF name = '' THEN
		RAISE EXCEPTION 'lock name must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN pg_try_advisory_xact_lock_shared(entitlock._xxh64(convert_to(name, 'UTF8'), 0));
END
$$;

COMMENT ON FUNCTION entitlock.try_lock_shared(text) IS
'shared lock on a name until the end of the transaction if it is free now; never waits';

--
-- Exclusive lock on every name, in ascending (signed) key order with
-- duplicate keys once, so that any two lock_all callers agree on the
-- order and cannot deadlock each other however their arrays overlap.
-- NULL elements are skipped; an empty element or a NULL array is an
-- error.  Every name is checked before the first lock is taken.
--
CREATE OR REPLACE FUNCTION entitlock.lock_all(names text[])
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	done boolean;	-- a void call's result, thrown away
	lbound integer;
	bad integer;
	keys bigint[];
	k bigint;
BEGIN
	IF names IS NULL THEN
		RAISE EXCEPTION 'lock name array must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	-- Positions are the array's own subscripts when it has one dimension.
	lbound := CASE WHEN array_ndims(names) = 1 THEN array_lower(names, 1) ELSE 1 END;
	SELECT min(u.ord) INTO bad
	  FROM unnest(names) WITH ORDINALITY AS u(name, ord)
	 WHERE u.name = '';
	IF bad IS NOT NULL THEN
		RAISE EXCEPTION 'lock name must not be empty'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('Array element %s is an empty string.', lbound + bad - 1);
	END IF;
	SELECT array_agg(DISTINCT entitlock.key(u.name) ORDER BY entitlock.key(u.name)) INTO keys
	  FROM unnest(names) AS u(name)
	 WHERE u.name IS NOT NULL;
	IF keys IS NOT NULL THEN
		FOREACH k IN ARRAY keys LOOP
			done := (pg_advisory_xact_lock(k)) IS NULL;
		END LOOP;
	END IF;
END
$$;

COMMENT ON FUNCTION entitlock.lock_all(text[]) IS
'exclusive locks on every name, in ascending key order, until the end of the transaction';

--
-- Shared lock on key(realm), then exclusive on key(realm, entity).
-- Callers on different entities of one realm run side by side; an
-- exclusive lock(realm) waits for all of them and holds off new ones.
-- The realm is always locked first, which keeps the hierarchy free of
-- deadlocks.
--
CREATE OR REPLACE FUNCTION entitlock.lock_entity(realm text, entity text)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	done boolean;	-- a void call's result, thrown away
	pair_key bigint;
BEGIN
	IF realm IS NULL THEN
		RAISE EXCEPTION 'realm must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF entity IS NULL THEN
		RAISE EXCEPTION 'entity must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	-- The pair first: its checks name the empty part.
	pair_key := entitlock.key(realm, entity);
	done := (pg_advisory_xact_lock_shared(entitlock.key(realm))) IS NULL;
	done := (pg_advisory_xact_lock(pair_key)) IS NULL;
END
$$;

COMMENT ON FUNCTION entitlock.lock_entity(text, text) IS
'shared lock on realm, then exclusive lock on (realm, entity), until the end of the transaction';

--
-- As lock_entity, without waiting.  On false the transaction holds
-- nothing new: transaction-scoped advisory locks cannot be released one
-- by one, so both are tried inside a subtransaction, whose rollback gives
-- back a realm lock taken on the way (and only that one).
--
CREATE OR REPLACE FUNCTION entitlock.try_lock_entity(realm text, entity text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	realm_key bigint;
	pair_key bigint;
BEGIN
	IF realm IS NULL THEN
		RAISE EXCEPTION 'realm must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF entity IS NULL THEN
		RAISE EXCEPTION 'entity must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	pair_key := entitlock.key(realm, entity);
	realm_key := entitlock.key(realm);
	BEGIN
		IF NOT pg_try_advisory_xact_lock_shared(realm_key) THEN
			RETURN false;
		END IF;
		IF pg_try_advisory_xact_lock(pair_key) THEN
			RETURN true;
		END IF;
		-- Roll back the subtransaction, and with it the realm lock it took.
		RAISE EXCEPTION USING ERRCODE = 'lock_not_available';
	EXCEPTION WHEN lock_not_available THEN
		RETURN false;
	END;
END
$$;

COMMENT ON FUNCTION entitlock.try_lock_entity(text, text) IS
'lock_entity if both locks are free now; never waits and takes nothing on false';

--
-- Who holds or waits for a lock: the C edition's function, word for word.
--
CREATE OR REPLACE FUNCTION entitlock.holders(name text)
RETURNS TABLE (pid integer, mode text, granted boolean,
			   xact_start timestamptz, application_name text,
			   wait_start timestamptz, blocked_by integer[])
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
		   a.application_name::text,
		   l.waitstart,
		   CASE WHEN l.granted THEN '{}'::integer[]
				ELSE pg_catalog.pg_blocking_pids(l.pid)
		   END
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
	 ORDER BY l.granted DESC, l.waitstart NULLS LAST, a.xact_start NULLS LAST,
			  l.pid;
END
$$;

COMMENT ON FUNCTION entitlock.holders(text) IS
'sessions that hold or wait for the lock on a name, from pg_locks and pg_stat_activity; a waiter''s wait_start and the pids it waits for';
