/* sql/entitlock--1.0--1.1.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION entitlock UPDATE TO '1.1'" to load this file. \quit

--
-- Every table gets a primary key, so that logical replication can publish
-- its updates and deletes (the primary key is the default replica
-- identity).  The usage tables have one already.  For the other two, the
-- primary key leads with the hash the functions look rows up by, and takes
-- the place of 1.0's index on it.
--

-- A claim's identity: existing rows get one each; the default is dropped
-- again, as entitlock's functions supply the value.
ALTER TABLE entitlock.idempotency_key
	ADD COLUMN claim_id uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid();
ALTER TABLE entitlock.idempotency_key
	ALTER COLUMN claim_id DROP DEFAULT;
ALTER TABLE entitlock.idempotency_key
	ADD CONSTRAINT idempotency_key_pkey PRIMARY KEY (key_hash, claim_id);
DROP INDEX entitlock.idempotency_key_hash_idx;

-- Each acquisition has a fencing number of its own.
ALTER TABLE entitlock.lease_record
	ADD CONSTRAINT lease_record_pkey PRIMARY KEY (key_hash, fencing);
DROP INDEX entitlock.lease_record_key_hash_idx;

-- Writes now go through the executor, which checks CHECK constraints on
-- every call; the two of 1.0 only restate what the functions guarantee
-- (see the comment in entitlock--1.1.sql).
ALTER TABLE entitlock.usage_counter
	DROP CONSTRAINT IF EXISTS usage_counter_used_check,
	DROP CONSTRAINT IF EXISTS usage_counter_period_check;

--
-- Usage keys remember their refund.
--
ALTER TABLE entitlock.usage_idempotency ADD COLUMN refunded_at timestamptz;
COMMENT ON TABLE entitlock.usage_idempotency IS
'the first outcome of each usage call made with an idempotency key, returned again to its retries; refunded_at is set by refund_usage()';

--
-- Several limits in one call (1.1)
--
-- One limit of a record_usage_if_under_limits() call: the meter (subject,
-- feature, period) and its limit.  The constructor checks the fields as
-- the usage functions check their arguments.
--
CREATE TYPE entitlock.usage_limit AS (
	subject text,
	feature text,
	usage_limit bigint,
	period text
);

COMMENT ON TYPE entitlock.usage_limit IS
'one limit of a record_usage_if_under_limits() call: a meter (subject, feature, period) and its limit';

CREATE FUNCTION entitlock.usage_limit(
	subject text,
	feature text,
	usage_limit bigint,
	period text DEFAULT 'lifetime')
RETURNS entitlock.usage_limit
AS 'MODULE_PATHNAME', 'entitlock_usage_limit'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

COMMENT ON FUNCTION entitlock.usage_limit(text, text, bigint, text) IS
'a checked entitlock.usage_limit, for record_usage_if_under_limits()';

-- The first outcome of each keyed record_usage_if_under_limits() call, one
-- array element per limit in the call's order; refunded marks the elements
-- refund_usage() gave back.
CREATE TABLE entitlock.usage_limits_idempotency (
	idempotency_key text COLLATE pg_catalog."C" NOT NULL,
	amount bigint NOT NULL,
	subjects text[] NOT NULL,
	features text[] NOT NULL,
	periods text[] NOT NULL,
	allowed boolean[] NOT NULL,
	used bigint[] NOT NULL,
	period_ends timestamptz[] NOT NULL,
	refunded boolean[] NOT NULL,
	recorded_at timestamptz NOT NULL,
	CONSTRAINT usage_limits_idempotency_pkey PRIMARY KEY (idempotency_key)
) USING heap;

COMMENT ON TABLE entitlock.usage_limits_idempotency IS
'the first outcome of each record_usage_if_under_limits() call made with an idempotency key, returned again to its retries';

SELECT pg_catalog.pg_extension_config_dump('entitlock.usage_limits_idempotency', '');

CREATE FUNCTION entitlock.record_usage_if_under_limits(
	limits entitlock.usage_limit[],
	amount bigint DEFAULT 1,
	idempotency_key text DEFAULT NULL)
RETURNS TABLE (subject text, feature text, period text, allowed boolean,
			   used bigint, remaining bigint, period_end timestamptz)
AS 'MODULE_PATHNAME', 'entitlock_record_usage_if_under_limits'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 3;

COMMENT ON FUNCTION entitlock.record_usage_if_under_limits(entitlock.usage_limit[], bigint, text) IS
'records amount on every meter of limits if every limit has room, on none otherwise; one row per limit';

CREATE FUNCTION entitlock.refund_usage(
	subject text,
	feature text,
	idempotency_key text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'entitlock_refund_usage'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION entitlock.refund_usage(text, text, text) IS
'gives back, once, what the call with this idempotency key recorded on (subject, feature), in the period it was recorded in';

--
-- Forgetting old periods: counters of periods that ended by "before", and
-- idempotency keys recorded before it (a retry of one after that records
-- again, and it can no longer be refunded).  Runs as the tables' owner,
-- like the other usage functions.
--
CREATE OR REPLACE FUNCTION entitlock.prune_usage(before timestamptz)
RETURNS bigint
LANGUAGE sql VOLATILE STRICT PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	WITH counters AS (
		DELETE FROM entitlock.usage_counter
		 WHERE period_end OPERATOR(pg_catalog.<=) $1
		RETURNING 1
	), idempotency AS (
		DELETE FROM entitlock.usage_idempotency
		 WHERE recorded_at OPERATOR(pg_catalog.<) $1
		RETURNING 1
	), set_idempotency AS (
		DELETE FROM entitlock.usage_limits_idempotency
		 WHERE recorded_at OPERATOR(pg_catalog.<) $1
		RETURNING 1
	)
	SELECT (SELECT pg_catalog.count(*) FROM counters) OPERATOR(pg_catalog.+)
		   (SELECT pg_catalog.count(*) FROM idempotency) OPERATOR(pg_catalog.+)
		   (SELECT pg_catalog.count(*) FROM set_idempotency)
$$;

COMMENT ON FUNCTION entitlock.prune_usage(timestamptz) IS
'deletes usage counters of periods that ended by before and usage idempotency keys recorded before it; returns how many rows';

REVOKE ALL ON FUNCTION entitlock.record_usage_if_under_limits(entitlock.usage_limit[], bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.refund_usage(text, text, text) FROM PUBLIC;

--
-- Rate limits (src/ratelimit.c, 1.1)
--
-- The generic cell rate algorithm: a name's whole state is its theoretical
-- arrival time.  A row whose tat has passed is a full bucket, the same as
-- no row, and prune_rate_limits() deletes it.
--
CREATE TABLE entitlock.rate_limit_state (
	name text COLLATE pg_catalog."C" NOT NULL,
	tat timestamptz NOT NULL,
	CONSTRAINT rate_limit_state_pkey PRIMARY KEY (name)
) USING heap WITH (fillfactor = 50);

COMMENT ON TABLE entitlock.rate_limit_state IS
'the theoretical arrival time of each rate limit name; a bucket is full again once tat has passed; written only by entitlock''s functions';

SELECT pg_catalog.pg_extension_config_dump('entitlock.rate_limit_state', '');

CREATE FUNCTION entitlock.rate_limit(
	name text,
	rate bigint,
	per interval,
	burst bigint DEFAULT NULL,
	cost bigint DEFAULT 1)
RETURNS TABLE (allowed boolean, remaining bigint, retry_after interval,
			   reset_after interval)
AS 'MODULE_PATHNAME', 'entitlock_rate_limit'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 1;

COMMENT ON FUNCTION entitlock.rate_limit(text, bigint, interval, bigint, bigint) IS
'takes cost units of a rolling limit of rate per per (bursts up to burst) if they fit now; atomic per name';

CREATE FUNCTION entitlock.gcra(
	tat timestamptz,
	at timestamptz,
	rate bigint,
	per interval,
	burst bigint DEFAULT NULL,
	cost bigint DEFAULT 1)
RETURNS TABLE (allowed boolean, remaining bigint, retry_after interval,
			   reset_after interval, tat timestamptz)
AS 'MODULE_PATHNAME', 'entitlock_gcra'
LANGUAGE C IMMUTABLE PARALLEL SAFE ROWS 1;

COMMENT ON FUNCTION entitlock.gcra(timestamptz, timestamptz, bigint, interval, bigint, bigint) IS
'what rate_limit() decides at a given moment for a stored state tat (NULL: none), and the state it leaves';

CREATE FUNCTION entitlock.prune_rate_limits()
RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	WITH pruned AS (
		DELETE FROM entitlock.rate_limit_state
		 WHERE tat OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()
		RETURNING 1
	)
	SELECT pg_catalog.count(*) FROM pruned
$$;

COMMENT ON FUNCTION entitlock.prune_rate_limits() IS
'deletes the rate limit states whose bucket is full again (equivalent to no row); returns how many rows';

REVOKE ALL ON FUNCTION entitlock.rate_limit(text, bigint, interval, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.prune_rate_limits() FROM PUBLIC;

--
-- New arguments and result columns, keeping each function's identity
--
-- idempotency_begin and lease_acquire gain a last argument, wait, and
-- holders gains two result columns.  Dropping and recreating them would
-- fail where user objects depend on them (a view over holders(), a
-- SQL-standard function body calling idempotency_begin), and CREATE OR
-- REPLACE cannot add arguments or result columns.  So the update first
-- gives each function its new parameter list in pg_proc, keeping its OID,
-- its owner and its privileges, and then redefines it in full with CREATE
-- OR REPLACE, which sets everything else (defaults, body, dependencies)
-- exactly as a new installation has it.  Dependent objects keep working:
-- a stored call with fewer arguments gets the new argument's default when
-- it is planned, as after any CREATE OR REPLACE that adds a default, and
-- a query over holders() reads the columns it named.
--
UPDATE pg_catalog.pg_proc
   SET pronargs = 4,
	   pronargdefaults = 0,
	   proargdefaults = NULL,
	   proargtypes = pg_catalog.array_to_string(ARRAY[
			'pg_catalog.text'::pg_catalog.regtype,
			'pg_catalog.text'::pg_catalog.regtype,
			'pg_catalog.interval'::pg_catalog.regtype,
			'pg_catalog.interval'::pg_catalog.regtype]::pg_catalog.oid[],
			' ')::pg_catalog.oidvector,
	   proallargtypes = ARRAY[
			'pg_catalog.text'::pg_catalog.regtype,
			'pg_catalog.text'::pg_catalog.regtype,
			'pg_catalog.interval'::pg_catalog.regtype,
			'pg_catalog.interval'::pg_catalog.regtype,
			'pg_catalog.text'::pg_catalog.regtype,
			'pg_catalog.jsonb'::pg_catalog.regtype]::pg_catalog.oid[],
	   proargmodes = '{i,i,i,i,t,t}'::pg_catalog."char"[],
	   proargnames = '{key,fingerprint,ttl,wait,status,response}'::pg_catalog.text[]
 WHERE oid OPERATOR(pg_catalog.=)
	   'entitlock.idempotency_begin(pg_catalog.text, pg_catalog.text, pg_catalog.interval)'::pg_catalog.regprocedure;

CREATE OR REPLACE FUNCTION entitlock.idempotency_begin(
	key text,
	fingerprint text DEFAULT NULL,
	ttl interval DEFAULT '24 hours',
	wait interval DEFAULT NULL)
RETURNS TABLE (status text, response jsonb)
AS 'MODULE_PATHNAME', 'entitlock_idempotency_begin'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 1;

COMMENT ON FUNCTION entitlock.idempotency_begin(text, text, interval, interval) IS
'claims key for this transaction (status new), or returns the stored response of the transaction that did (status replay); waits while another transaction holds key, at most wait (then status in_progress, claiming nothing)';

UPDATE pg_catalog.pg_proc
   SET pronargs = 4,
	   pronargdefaults = 0,
	   proargdefaults = NULL,
	   proargtypes = pg_catalog.array_to_string(ARRAY[
			'pg_catalog.text'::pg_catalog.regtype,
			'pg_catalog.interval'::pg_catalog.regtype,
			'pg_catalog.text'::pg_catalog.regtype,
			'pg_catalog.interval'::pg_catalog.regtype]::pg_catalog.oid[],
			' ')::pg_catalog.oidvector,
	   proallargtypes = ARRAY[
			'pg_catalog.text'::pg_catalog.regtype,
			'pg_catalog.interval'::pg_catalog.regtype,
			'pg_catalog.text'::pg_catalog.regtype,
			'pg_catalog.interval'::pg_catalog.regtype,
			'pg_catalog.uuid'::pg_catalog.regtype,
			'pg_catalog.int8'::pg_catalog.regtype]::pg_catalog.oid[],
	   proargmodes = '{i,i,i,i,t,t}'::pg_catalog."char"[],
	   proargnames = '{name,ttl,holder,wait,token,fencing}'::pg_catalog.text[]
 WHERE oid OPERATOR(pg_catalog.=)
	   'entitlock.lease_acquire(pg_catalog.text, pg_catalog.interval, pg_catalog.text)'::pg_catalog.regprocedure;

CREATE OR REPLACE FUNCTION entitlock.lease_acquire(
	name text,
	ttl interval,
	holder text DEFAULT NULL,
	wait interval DEFAULT '0')
RETURNS TABLE (token uuid, fencing bigint)
AS 'MODULE_PATHNAME', 'entitlock_lease_acquire'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 1;

COMMENT ON FUNCTION entitlock.lease_acquire(text, interval, text, interval) IS
'takes the lease on name for ttl and returns its token and fencing number; no row when it is held and stays held for wait';

UPDATE pg_catalog.pg_proc
   SET proallargtypes = ARRAY[
			'pg_catalog.text'::pg_catalog.regtype,
			'pg_catalog.int4'::pg_catalog.regtype,
			'pg_catalog.text'::pg_catalog.regtype,
			'pg_catalog.bool'::pg_catalog.regtype,
			'pg_catalog.timestamptz'::pg_catalog.regtype,
			'pg_catalog.text'::pg_catalog.regtype,
			'pg_catalog.timestamptz'::pg_catalog.regtype,
			'pg_catalog._int4'::pg_catalog.regtype]::pg_catalog.oid[],
	   proargmodes = '{i,t,t,t,t,t,t,t}'::pg_catalog."char"[],
	   proargnames = '{name,pid,mode,granted,xact_start,application_name,wait_start,blocked_by}'::pg_catalog.text[]
 WHERE oid OPERATOR(pg_catalog.=)
	   'entitlock.holders(pg_catalog.text)'::pg_catalog.regprocedure;

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

--
-- Statistics (src/stats.c)
--
-- Counts live in shared memory when the library is preloaded, and the
-- view shows them; without the preload it is empty.  The view is read by
-- roles granted SELECT on it.  Its function checks that right itself, as
-- a view's functions run with the rights of whoever queries the view.
--
CREATE FUNCTION entitlock.stats_entries(
	OUT kind text,
	OUT label text,
	OUT calls bigint,
	OUT waits bigint,
	OUT wait_time double precision,
	OUT timeouts bigint,
	OUT denied bigint,
	OUT replays bigint,
	OUT takeovers bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'entitlock_stats_entries'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

COMMENT ON FUNCTION entitlock.stats_entries() IS
'the rows of entitlock.stats; needs SELECT on that view';

CREATE VIEW entitlock.stats AS
SELECT kind, label, calls, waits, wait_time, timeouts, denied, replays,
	   takeovers
  FROM entitlock.stats_entries();

COMMENT ON VIEW entitlock.stats IS
'calls of entitlock''s functions since startup or stats_reset(), by kind and label; empty unless the library is in shared_preload_libraries';

CREATE FUNCTION entitlock.stats_reset()
RETURNS void
AS 'MODULE_PATHNAME', 'entitlock_stats_reset'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION entitlock.stats_reset() IS
'forgets every count and label of entitlock.stats';

-- Granted explicitly; see README, Privileges.
REVOKE ALL ON entitlock.stats FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.stats_reset() FROM PUBLIC;
