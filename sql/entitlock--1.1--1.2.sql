/* sql/entitlock--1.1--1.2.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION entitlock UPDATE TO '1.2'" to load this file. \quit

--
-- Lease slots: every existing lease is a plain one (slot NULL), so every
-- row is kept as it is.  The view gains slot as its last column, so views
-- built on it keep working.
--
ALTER TABLE entitlock.lease_record ADD COLUMN slot integer;
COMMENT ON TABLE entitlock.lease_record IS
'the current lease on each name (slot NULL) and on each slot of a name''s lease semaphore, with its token; written only by entitlock''s functions (read entitlock.leases instead)';

CREATE OR REPLACE VIEW entitlock.leases AS
SELECT name, holder, fencing, acquired_at, expires_at, slot
  FROM entitlock.lease_record
 WHERE expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp();

--
-- Semaphores (1.2, src/slots.c)
--
-- lock_slot takes one of N slots of a name in PostgreSQL's lock manager,
-- until the end of the transaction.  A name's slots and its gate are
-- advisory locks with the name's key and, in objsubid, 16384 (the gate)
-- or 16384 plus the slot number: no SQL function reaches them, and they
-- never share a lock with lock(name).
--
CREATE FUNCTION entitlock.lock_slot(
	name text,
	slots integer,
	wait interval DEFAULT NULL)
RETURNS integer
AS 'MODULE_PATHNAME', 'entitlock_lock_slot'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION entitlock.lock_slot(text, integer, interval) IS
'takes one of slots slots of the semaphore name until the end of the transaction and returns its number; NULL when wait runs out';

-- Holders (granted, with their slot) and waiters (slot NULL), from pg_locks.
-- A waiter shows once, by when it began waiting: it waits at the gate, or,
-- first in line, holds the gate and waits for a slot.
CREATE FUNCTION entitlock.slot_holders(name text, slots integer)
RETURNS TABLE (slot integer, pid integer, granted boolean,
			   xact_start timestamptz, application_name text,
			   wait_start timestamptz)
LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k bigint;
BEGIN
	IF slot_holders.name IS NULL OR slot_holders.slots IS NULL THEN
		RAISE EXCEPTION USING
			ERRCODE = 'null_value_not_allowed',
			MESSAGE = CASE WHEN slot_holders.name IS NULL
						   THEN 'semaphore name must not be null'
						   ELSE 'slots must not be null' END;
	END IF;
	IF slot_holders.name OPERATOR(pg_catalog.=) '' THEN
		RAISE EXCEPTION USING
			ERRCODE = 'invalid_parameter_value',
			MESSAGE = 'semaphore name must not be empty';
	END IF;
	IF slot_holders.slots OPERATOR(pg_catalog.<) 1
	   OR slot_holders.slots OPERATOR(pg_catalog.>) 10000 THEN
		RAISE EXCEPTION USING
			ERRCODE = 'invalid_parameter_value',
			MESSAGE = 'slots must be between 1 and 10000',
			DETAIL = pg_catalog.format('The value given was %s.',
									   slot_holders.slots);
	END IF;
	k := entitlock.key(slot_holders.name);
	RETURN QUERY
	WITH l AS (
		SELECT l.pid, l.granted, l.waitstart,
			   l.objsubid OPERATOR(pg_catalog.-) 16384 AS s
		  FROM pg_catalog.pg_locks AS l
		 WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory'
		   AND l.database OPERATOR(pg_catalog.=)
			   (SELECT d.oid FROM pg_catalog.pg_database AS d
				 WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
		   AND l.classid OPERATOR(pg_catalog.=)
			   pg_catalog.oid((k OPERATOR(pg_catalog.>>) 32)
							  OPERATOR(pg_catalog.&) 4294967295)
		   AND l.objid OPERATOR(pg_catalog.=)
			   pg_catalog.oid(k OPERATOR(pg_catalog.&) 4294967295)
		   AND l.objsubid OPERATOR(pg_catalog.>=) 16384
		   AND l.objsubid OPERATOR(pg_catalog.<=)
			   (16384 OPERATOR(pg_catalog.+) slot_holders.slots)
	)
	-- The holder of the gate (s = 0, granted) is the first waiter: it
	-- waits for a slot in short turns on one slot's lock after another,
	-- so its own lock waits (hidden below) restart, and for a moment are
	-- absent, every turn.  Its wait_start is when its statement began
	-- (pg_stat_activity.query_start), which stays put.  A gate holder that
	-- already holds a slot has just taken one and is about to let go of
	-- the gate: it is listed as a holder only.  The others wait for the
	-- gate, in its queue, since their pg_locks.waitstart.
	SELECT CASE WHEN l.granted THEN l.s::integer END,
		   l.pid, l.granted, a.xact_start, a.application_name::text,
		   CASE WHEN l.gate THEN a.query_start ELSE l.waitstart END
	  FROM (SELECT l.pid, l.s, l.waitstart,
				   l.granted AND l.s OPERATOR(pg_catalog.>) 0 AS granted,
				   l.granted AND l.s OPERATOR(pg_catalog.=) 0 AS gate
			  FROM l
			 WHERE (l.granted AND l.s OPERATOR(pg_catalog.>) 0)
				OR (l.granted AND l.s OPERATOR(pg_catalog.=) 0
					AND NOT EXISTS (SELECT FROM l AS h
									 WHERE h.pid OPERATOR(pg_catalog.=) l.pid
									   AND h.granted
									   AND h.s OPERATOR(pg_catalog.>) 0))
				OR (NOT l.granted
					AND NOT EXISTS (SELECT FROM l AS g
									 WHERE g.pid OPERATOR(pg_catalog.=) l.pid
									   AND g.granted
									   AND g.s OPERATOR(pg_catalog.=) 0))) AS l
	  LEFT JOIN pg_catalog.pg_stat_activity AS a
		ON a.pid OPERATOR(pg_catalog.=) l.pid
	 ORDER BY l.granted DESC, CASE WHEN l.granted THEN l.s END,
			  l.gate DESC, l.waitstart NULLS LAST, l.pid;
END
$$;

COMMENT ON FUNCTION entitlock.slot_holders(text, integer) IS
'sessions that hold a slot of the semaphore name (with its number) or wait for one (slot NULL, by wait_start; the first waiter''s wait_start is when its statement began), from pg_locks and pg_stat_activity';

--
-- Lease slots (1.2, src/leases.c): up to N leases of a name, one row each,
-- slot saying which; a plain lease has slot NULL.  Each (name, slot) has
-- at most one row, as only the holder of the name's lock writes its rows.
--
CREATE FUNCTION entitlock.lease_acquire_slot(
	name text,
	slots integer,
	ttl interval,
	holder text DEFAULT NULL,
	wait interval DEFAULT '0')
RETURNS TABLE (slot integer, token uuid, fencing bigint)
AS 'MODULE_PATHNAME', 'entitlock_lease_acquire_slot'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 1;

COMMENT ON FUNCTION entitlock.lease_acquire_slot(text, integer, interval, text, interval) IS
'takes a free slot of name''s lease semaphore for ttl and returns its number, token and fencing number; no row when every slot is held and stays held for wait';

-- Granted explicitly, like the other lease functions; see README, Privileges.
REVOKE ALL ON FUNCTION entitlock.lease_acquire_slot(text, integer, interval, text, interval) FROM PUBLIC;

--
-- Billing periods (1.2): every usage function also takes anchored periods
-- '[N ]unit@anchor' (src/periods.c); their signatures do not change.
--
COMMENT ON FUNCTION entitlock.usage_period(text, timestamptz) IS
'the period (UTC calendar, or anchored at a moment) holding a moment, as the usage functions count it';

--
-- Resetting a meter (1.2): the current period's usage to 0, under the
-- recorders' locks (src/usage.c).
--
CREATE FUNCTION entitlock.reset_usage(
	subject text,
	feature text,
	period text DEFAULT 'lifetime')
RETURNS bigint
AS 'MODULE_PATHNAME', 'entitlock_reset_usage'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION entitlock.reset_usage(text, text, text) IS
'sets the usage of (subject, feature, period) in the current period to 0 and returns the usage removed';

REVOKE ALL ON FUNCTION entitlock.reset_usage(text, text, text) FROM PUBLIC;
