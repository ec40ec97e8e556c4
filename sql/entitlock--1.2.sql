/* sql/entitlock--1.2.sql */

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
-- shows as NULL unless the caller may see it).  For a waiter, wait_start
-- is pg_locks.waitstart and blocked_by the pids pg_blocking_pids() names;
-- holders have NULL and an empty array.
--
CREATE FUNCTION entitlock.holders(name text)
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
-- Usage limits
--
-- A meter is (subject, feature, period kind); each calendar period of it is
-- one counter row, so deciding is one index probe and one update.  Names
-- use the "C" collation: meters are told apart byte by byte, and lookups
-- skip locale-aware comparison.  The counter is rewritten on every call,
-- so pages keep room for HOT updates.  The table has no CHECK constraints
-- of its own: its only writer checks the period and keeps used at zero or
-- more, and a CHECK is parsed and planned on every call that writes, as for
-- every INSERT (1.0 had two; they cost more than the rest of the call's
-- write).  Constraints an operator adds are enforced.
--
CREATE TABLE entitlock.usage_counter (
	subject text COLLATE pg_catalog."C" NOT NULL,
	feature text COLLATE pg_catalog."C" NOT NULL,
	period text COLLATE pg_catalog."C" NOT NULL,
	period_start timestamptz NOT NULL,
	period_end timestamptz,
	used bigint NOT NULL,
	CONSTRAINT usage_counter_pkey
		PRIMARY KEY (subject, feature, period, period_start)
) USING heap WITH (fillfactor = 50);

COMMENT ON TABLE entitlock.usage_counter IS
'usage recorded per (subject, feature, period kind) and calendar period; period_start is -infinity for lifetime; written only by entitlock''s functions';

CREATE TABLE entitlock.usage_idempotency (
	subject text COLLATE pg_catalog."C" NOT NULL,
	feature text COLLATE pg_catalog."C" NOT NULL,
	idempotency_key text COLLATE pg_catalog."C" NOT NULL,
	period text COLLATE pg_catalog."C" NOT NULL,
	amount bigint NOT NULL,
	allowed boolean NOT NULL,
	used bigint NOT NULL,
	period_end timestamptz,
	recorded_at timestamptz NOT NULL,
	refunded_at timestamptz,
	CONSTRAINT usage_idempotency_pkey
		PRIMARY KEY (subject, feature, idempotency_key)
) USING heap;

COMMENT ON TABLE entitlock.usage_idempotency IS
'the first outcome of each usage call made with an idempotency key, returned again to its retries; refunded_at is set by refund_usage()';

-- pg_dump keeps their rows (CREATE EXTENSION recreates the tables).
SELECT pg_catalog.pg_extension_config_dump('entitlock.usage_counter', '');
SELECT pg_catalog.pg_extension_config_dump('entitlock.usage_idempotency', '');

CREATE FUNCTION entitlock.record_usage_if_under_limit(
	subject text,
	feature text,
	amount bigint,
	usage_limit bigint,
	period text DEFAULT 'lifetime',
	idempotency_key text DEFAULT NULL)
RETURNS TABLE (allowed boolean, used bigint, remaining bigint,
			   period_end timestamptz)
AS 'MODULE_PATHNAME', 'entitlock_record_usage_if_under_limit'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 1;

COMMENT ON FUNCTION entitlock.record_usage_if_under_limit(text, text, bigint, bigint, text, text) IS
'records amount in the current period only if usage stays within usage_limit; atomic per (subject, feature)';

CREATE FUNCTION entitlock.record_usage(
	subject text,
	feature text,
	amount bigint,
	period text DEFAULT 'lifetime',
	idempotency_key text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'entitlock_record_usage'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION entitlock.record_usage(text, text, bigint, text, text) IS
'records amount (negative: a refund, never below zero) in the current period; returns the usage after it';

CREATE FUNCTION entitlock.usage(
	subject text,
	feature text,
	period text DEFAULT 'lifetime')
RETURNS bigint
AS 'MODULE_PATHNAME', 'entitlock_usage'
LANGUAGE C STABLE PARALLEL RESTRICTED;

COMMENT ON FUNCTION entitlock.usage(text, text, text) IS
'usage of (subject, feature) in the current period, 0 if none';

CREATE FUNCTION entitlock.usage_period(
	period text,
	at timestamptz DEFAULT pg_catalog.now())
RETURNS TABLE (period_start timestamptz, period_end timestamptz)
AS 'MODULE_PATHNAME', 'entitlock_usage_period'
LANGUAGE C IMMUTABLE PARALLEL SAFE ROWS 1;

COMMENT ON FUNCTION entitlock.usage_period(text, timestamptz) IS
'the period (UTC calendar, or anchored at a moment) holding a moment, as the usage functions count it';

-- Reading or writing usage is granted explicitly; see README, Privileges.
REVOKE ALL ON FUNCTION entitlock.record_usage_if_under_limit(text, text, bigint, bigint, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.record_usage(text, text, bigint, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.usage(text, text, text) FROM PUBLIC;

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
CREATE FUNCTION entitlock.prune_usage(before timestamptz)
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
REVOKE ALL ON FUNCTION entitlock.prune_usage(timestamptz) FROM PUBLIC;

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
-- Idempotent writes (src/idempotency.c)
--
-- A claim is a row written in the caller's transaction under the key's
-- transaction lock, so it commits or rolls back with the caller's write.
-- Keys are stored in full and compared in full; only a 64-bit hash of the
-- key is indexed, so a key of any length fits.  Two keys may share a hash,
-- so the hash is not unique; the key's lock keeps one claim per key.  Each
-- row has a random identity, claim_id, and (key_hash, claim_id) is the
-- primary key: the index that finds a key's rows by its hash, and the
-- replica identity by which logical replication identifies a row.
--
CREATE TABLE entitlock.idempotency_key (
	key_hash bigint NOT NULL,
	key text COLLATE pg_catalog."C" NOT NULL,
	fingerprint text COLLATE pg_catalog."C",
	response jsonb,
	claimed_at timestamptz NOT NULL,
	expires_at timestamptz NOT NULL,
	completed_at timestamptz,
	claim_id uuid NOT NULL,
	CONSTRAINT idempotency_key_pkey PRIMARY KEY (key_hash, claim_id)
) USING heap;

CREATE INDEX idempotency_key_expires_at_idx
	ON entitlock.idempotency_key USING btree (expires_at);

COMMENT ON TABLE entitlock.idempotency_key IS
'idempotency keys claimed by committed transactions, with the response to replay; written only by entitlock''s functions';

SELECT pg_catalog.pg_extension_config_dump('entitlock.idempotency_key', '');

CREATE FUNCTION entitlock.idempotency_begin(
	key text,
	fingerprint text DEFAULT NULL,
	ttl interval DEFAULT '24 hours',
	wait interval DEFAULT NULL)
RETURNS TABLE (status text, response jsonb)
AS 'MODULE_PATHNAME', 'entitlock_idempotency_begin'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 1;

COMMENT ON FUNCTION entitlock.idempotency_begin(text, text, interval, interval) IS
'claims key for this transaction (status new), or returns the stored response of the transaction that did (status replay); waits while another transaction holds key, at most wait (then status in_progress, claiming nothing)';

CREATE FUNCTION entitlock.idempotency_complete(
	key text,
	response jsonb DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'entitlock_idempotency_complete'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION entitlock.idempotency_complete(text, jsonb) IS
'stores the response replayed for key; key must have been claimed by this transaction';

CREATE FUNCTION entitlock.first_time(
	key text,
	ttl interval DEFAULT '24 hours')
RETURNS boolean
AS 'MODULE_PATHNAME', 'entitlock_first_time'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION entitlock.first_time(text, interval) IS
'true for the one transaction that claims key until it expires, false for every other';

CREATE FUNCTION entitlock.purge_expired(max_rows bigint DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'entitlock_purge_expired'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION entitlock.purge_expired(bigint) IS
'deletes expired idempotency keys (at most max_rows, all when NULL); returns how many';

-- Granted explicitly, like the usage functions; see README, Privileges.
REVOKE ALL ON FUNCTION entitlock.idempotency_begin(text, text, interval, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.idempotency_complete(text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.first_time(text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.purge_expired(bigint) FROM PUBLIC;

--
-- Leases (src/leases.c)
--
-- A lease is a row naming its holder, a random token and an expiry time,
-- written under the name's transaction lock.  The name is stored in full
-- and only a 64-bit hash of it is indexed, as for idempotency keys: the
-- primary key is (key_hash, fencing), as each acquisition has a fencing
-- number of its own.  Fencing numbers come from one sequence, without
-- cache, so they never go back, not even for an acquisition that rolled
-- back.
--
CREATE TABLE entitlock.lease_record (
	key_hash bigint NOT NULL,
	name text COLLATE pg_catalog."C" NOT NULL,
	token uuid NOT NULL,
	holder text COLLATE pg_catalog."C",
	fencing bigint NOT NULL,
	acquired_at timestamptz NOT NULL,
	expires_at timestamptz NOT NULL,
	slot integer,
	CONSTRAINT lease_record_pkey PRIMARY KEY (key_hash, fencing)
) USING heap;

COMMENT ON TABLE entitlock.lease_record IS
'the current lease on each name (slot NULL) and on each slot of a name''s lease semaphore, with its token; written only by entitlock''s functions (read entitlock.leases instead)';

CREATE SEQUENCE entitlock.lease_fencing AS bigint
	MINVALUE 1 NO MAXVALUE CACHE 1 NO CYCLE;

COMMENT ON SEQUENCE entitlock.lease_fencing IS
'fencing numbers of lease acquisitions; must not cache or cycle';

SELECT pg_catalog.pg_extension_config_dump('entitlock.lease_record', '');
SELECT pg_catalog.pg_extension_config_dump('entitlock.lease_fencing', '');

CREATE FUNCTION entitlock.lease_acquire(
	name text,
	ttl interval,
	holder text DEFAULT NULL,
	wait interval DEFAULT '0')
RETURNS TABLE (token uuid, fencing bigint)
AS 'MODULE_PATHNAME', 'entitlock_lease_acquire'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 1;

COMMENT ON FUNCTION entitlock.lease_acquire(text, interval, text, interval) IS
'takes the lease on name for ttl and returns its token and fencing number; no row when it is held and stays held for wait';

CREATE FUNCTION entitlock.lease_renew(
	name text,
	token uuid,
	ttl interval)
RETURNS boolean
AS 'MODULE_PATHNAME', 'entitlock_lease_renew'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION entitlock.lease_renew(text, uuid, interval) IS
'makes the lease on name expire ttl from now, if token is its current token';

CREATE FUNCTION entitlock.lease_release(
	name text,
	token uuid)
RETURNS boolean
AS 'MODULE_PATHNAME', 'entitlock_lease_release'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION entitlock.lease_release(text, uuid) IS
'ends the lease on name, if token is its current token';

-- The token is its holder's capability, so the view leaves it out.  The
-- view reads the table with its owner's rights; granting SELECT on it
-- shows leases without giving any access to the table.
CREATE VIEW entitlock.leases AS
SELECT name, holder, fencing, acquired_at, expires_at, slot
  FROM entitlock.lease_record
 WHERE expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp();

COMMENT ON VIEW entitlock.leases IS
'leases held now (not released, not expired); never shows tokens';

-- Granted explicitly, like the other functions; see README, Privileges.
REVOKE ALL ON FUNCTION entitlock.lease_acquire(text, interval, text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.lease_renew(text, uuid, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.lease_release(text, uuid) FROM PUBLIC;
REVOKE ALL ON entitlock.leases FROM PUBLIC;

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
