/* trusted/70_slots.sql */

--
-- Semaphores (section 2b of the SPEC, 1.2): lock_slot and slot_holders.
--
-- A semaphore is a set of advisory transaction locks in PostgreSQL's lock
-- manager, so holding a slot is holding a lock: COMMIT, ROLLBACK, a killed
-- backend or a crash give it back.  SQL reaches advisory locks only
-- through pg_advisory_*, whose lock tags the C edition's semaphores (lock
-- tags of their own, src/slots.c) keep clear of; so the two editions'
-- semaphores do not meet (their named locks, keys, idempotency claims and
-- leases do).  The trusted edition uses the two-integer advisory locks:
-- with k = entitlock.key('entitlock.slot', name), split into its high and
-- low 32 bits (hi, lo), slot s is pg_advisory_xact_lock(hi, lo # s) and the
-- name's gate is (hi, lo).  lock(name) uses the one-bigint locks, so a
-- semaphore never shares a lock with lock(name) of the same name.
--
-- Taking a slot:
--  1. A transaction that holds a slot of the name gets it back (it notes
--     its slots in a transaction-local setting, entitlock_trusted.slots).
--  2. wait = '0' tries slots 1, 2, ... without waiting and takes the first
--     free one.
--  3. Otherwise it takes the name's gate, a session advisory lock, waiting
--     in the gate's queue: the lock manager grants a released lock in the
--     order its waiters came, so waiters pass the gate in about their
--     arrival order and none starves.  The gate is always given back
--     before lock_slot returns, also when it fails.
--  4. Holding the gate, it tries every slot; when none is free it waits
--     10 ms in the lock manager for one slot after another and looks
--     again (the wake-up latency the SPEC allows a trusted edition),
--     still holding the gate, so nobody who came later takes the
--     slot that frees first.  The lock manager cannot wait for "any of
--     these locks", and a wait on one of them would miss the others.
--  5. While it looks, it runs the deadlock check PostgreSQL would run for
--     it, once per deadlock_timeout: when every holder of a slot is waiting,
--     directly or through others (pg_blocking_pids), for this transaction,
--     no slot can ever free, and it fails with deadlock_detected (40P01).
--     Waiters behind the gate wait in the lock manager and are seen by
--     PostgreSQL's own detector.
-- A bound (wait) covers steps 3 and 4 and then returns NULL, having given
-- the gate back and taken nothing; without one, lock_timeout bounds the
-- whole wait as it bounds any lock wait (55P03).
--

-- The key of name's semaphore as the two integers of its gate.
CREATE OR REPLACE FUNCTION entitlock._slot_gate(name text, OUT hi integer, OUT lo integer)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	k bigint;
BEGIN
	IF name IS NULL THEN
		RAISE EXCEPTION 'semaphore name must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF name = '' THEN
		RAISE EXCEPTION 'semaphore name must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	k := entitlock.key('entitlock.slot', name);
	hi := (k >> 32)::integer;
	lo := CASE WHEN (k & 4294967295) >= 2147483648
			   THEN ((k & 4294967295) - 4294967296)::integer
			   ELSE (k & 4294967295)::integer END;
END
$fn$;

COMMENT ON FUNCTION entitlock._slot_gate(text) IS
'internal: the advisory lock key pair of a semaphore''s gate; slot s is (hi, lo # s)';

-- Try slots 1..slots without waiting; the first taken, or NULL.
CREATE OR REPLACE FUNCTION entitlock._slot_try(hi integer, lo integer, slots integer)
RETURNS integer
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
	SELECT s FROM generate_series(1, slots) AS s
	 WHERE pg_try_advisory_xact_lock(hi, lo # s)
	 LIMIT 1
$fn$;

COMMENT ON FUNCTION entitlock._slot_try(integer, integer, integer) IS
'internal: takes the first free slot without waiting';

-- Whether every holder of a slot waits, directly or through others, for
-- this backend: then none of them can ever give its slot back.
CREATE OR REPLACE FUNCTION entitlock._slot_deadlocked(hi integer, lo integer, slots integer)
RETURNS boolean
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
	WITH RECURSIVE holders AS (
		SELECT DISTINCT l.pid
		  FROM pg_locks AS l
		 WHERE l.locktype = 'advisory'
		   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		   AND l.objsubid = 2 AND l.granted
		   AND l.classid = (hi::bigint & 4294967295)::oid
		   AND ((l.objid::bigint) # (lo::bigint & 4294967295)) BETWEEN 1 AND slots
		   AND l.pid <> pg_backend_pid()),
	chain(root, pid) AS (
		SELECT h.pid, h.pid FROM holders AS h
		UNION
		SELECT c.root, b.pid
		  FROM chain AS c, LATERAL unnest(pg_blocking_pids(c.pid)) AS b(pid))
	SELECT count(*) > 0
		   AND bool_and(EXISTS (SELECT 1 FROM chain AS c
								 WHERE c.root = h.pid AND c.pid = pg_backend_pid()))
	  FROM holders AS h
$fn$;

COMMENT ON FUNCTION entitlock._slot_deadlocked(integer, integer, integer) IS
'internal: whether every holder of a slot of the semaphore waits for this backend';

CREATE OR REPLACE FUNCTION entitlock.lock_slot(
	name text,
	slots integer,
	wait interval DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	g record;
	wait_ms integer;
	got integer;
	token text;
	held text;
	deadline timestamptz;
	bounded boolean;
	by_lock_timeout boolean := false;
	next_check timestamptz;
	check_every interval;
	saved text;
	turn integer := 0;
BEGIN
	g := entitlock._slot_gate(lock_slot.name);
	PERFORM entitlock._check_slots(slots);
	wait_ms := entitlock._wait_bound_ms(wait, 'wait');

	-- 1. A slot this transaction holds already.
	token := g.hi || ':' || g.lo || ':';
	held := substring(coalesce(current_setting('entitlock_trusted.slots', true), '')
					  FROM ' ' || token || '([0-9]+) ');
	IF held IS NOT NULL THEN
		RETURN held::integer;
	END IF;

	-- 2. '0' never waits, not even for the gate.
	IF wait_ms = 0 THEN
		got := entitlock._slot_try(g.hi, g.lo, slots);
		IF got IS NOT NULL THEN
			PERFORM entitlock._note('entitlock_trusted.slots', token || got);
		END IF;
		RETURN got;
	END IF;

	bounded := wait_ms IS NOT NULL;
	IF NOT bounded THEN
		saved := current_setting('lock_timeout');
		IF saved NOT IN ('0', '0ms') THEN
			wait_ms := extract(epoch FROM saved::interval) * 1000;
			by_lock_timeout := wait_ms > 0;
		END IF;
	END IF;
	IF wait_ms IS NOT NULL THEN
		deadline := clock_timestamp() + make_interval(secs => wait_ms / 1000.0);
	END IF;

	-- 3. The gate (a session lock: given back below on every path).
	IF NOT pg_try_advisory_lock(g.hi, g.lo) THEN
		IF wait_ms IS NULL THEN
			PERFORM pg_advisory_lock(g.hi, g.lo);
		ELSE
			saved := current_setting('lock_timeout');
			BEGIN
				PERFORM set_config('lock_timeout', greatest(wait_ms, 1)::text, true);
				PERFORM pg_advisory_lock(g.hi, g.lo);
				PERFORM set_config('lock_timeout', saved, true);
			EXCEPTION WHEN lock_not_available THEN
				IF by_lock_timeout THEN
					RAISE EXCEPTION 'canceling statement due to lock timeout'
						USING ERRCODE = 'lock_not_available';
				END IF;
				RETURN NULL;
			END;
		END IF;
	END IF;

	-- 4. and 5., holding the gate.
	BEGIN
		got := entitlock._slot_try(g.hi, g.lo, slots);
		check_every := make_interval(secs => greatest(
			extract(epoch FROM current_setting('deadlock_timeout')::interval), 0.01));
		next_check := clock_timestamp() + check_every;
		WHILE got IS NULL LOOP
			IF deadline IS NOT NULL AND clock_timestamp() >= deadline THEN
				EXIT;
			END IF;
			-- The 10 ms are spent waiting in the lock manager for one of
			-- the slots in turn (lock_timeout set in a subtransaction, as
			-- in _xact_lock_within), not asleep: that slot is taken the
			-- moment it frees, and the wait shows in pg_locks and
			-- pg_blocking_pids() as a wait for its holder.
			turn := turn % slots + 1;
			saved := current_setting('lock_timeout');
			BEGIN
				PERFORM set_config('lock_timeout',
					(CASE WHEN deadline IS NULL THEN 10
						  ELSE least(10, greatest(1, ceil(extract(epoch FROM deadline - clock_timestamp()) * 1000)))
					 END)::integer::text, true);
				PERFORM pg_advisory_xact_lock(g.hi, g.lo # turn);
				PERFORM set_config('lock_timeout', saved, true);
				got := turn;
			EXCEPTION WHEN lock_not_available THEN
				-- The subtransaction's rollback has restored lock_timeout.
				got := NULL;
			END;
			IF got IS NULL THEN
				got := entitlock._slot_try(g.hi, g.lo, slots);
			END IF;
			IF got IS NULL AND clock_timestamp() >= next_check THEN
				IF entitlock._slot_deadlocked(g.hi, g.lo, slots) THEN
					RAISE EXCEPTION 'deadlock detected'
						USING ERRCODE = 'deadlock_detected',
							  DETAIL = format('Process %s waits for a slot of semaphore "%s", whose every holder waits for process %s.',
											  pg_backend_pid(), entitlock._for_message(lock_slot.name),
											  pg_backend_pid()),
							  HINT = 'See server log for query details.';
				END IF;
				next_check := clock_timestamp() + check_every;
			END IF;
		END LOOP;
	EXCEPTION WHEN OTHERS OR query_canceled THEN
		PERFORM pg_advisory_unlock(g.hi, g.lo);
		RAISE;
	END;
	PERFORM pg_advisory_unlock(g.hi, g.lo);

	IF got IS NULL THEN
		IF by_lock_timeout THEN
			RAISE EXCEPTION 'canceling statement due to lock timeout'
				USING ERRCODE = 'lock_not_available';
		END IF;
		RETURN NULL;
	END IF;
	PERFORM entitlock._note('entitlock_trusted.slots', token || got);
	RETURN got;
END
$fn$;

COMMENT ON FUNCTION entitlock.lock_slot(text, integer, interval) IS
'takes one of slots slots of the semaphore name until the end of the transaction and returns its number; waits at most wait (NULL: as long as it takes), then returns NULL';

CREATE OR REPLACE FUNCTION entitlock.slot_holders(name text, slots integer)
RETURNS TABLE (slot integer, pid integer, granted boolean, xact_start timestamptz,
			   application_name text, wait_start timestamptz)
LANGUAGE plpgsql VOLATILE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	g record;
BEGIN
	-- Run as the caller, not SECURITY DEFINER: pg_stat_activity shows
	-- xact_start and the other columns of the caller's sessions only to
	-- the caller (the C edition's function runs as the caller too).
	g := entitlock._slot_gate(slot_holders.name);
	PERFORM entitlock._check_slots(slots);
	RETURN QUERY
	WITH l AS (
		SELECT l.pid, l.granted, l.waitstart,
			   ((l.objid::bigint) # (g.lo::bigint & 4294967295))::integer AS s
		  FROM pg_locks AS l
		 WHERE l.locktype = 'advisory'
		   AND l.database = (SELECT d.oid FROM pg_database AS d
							  WHERE d.datname = current_database())
		   AND l.objsubid = 2
		   AND l.classid = (g.hi::bigint & 4294967295)::oid
		   AND ((l.objid::bigint) # (g.lo::bigint & 4294967295)) BETWEEN 0 AND slots),
	rows AS (
		-- Holders of slots.
		SELECT l.s AS slot, l.pid, true AS granted, NULL::timestamptz AS wait_start
		  FROM l WHERE l.s > 0 AND l.granted
		UNION ALL
		-- Waiters: the gate's holder (waiting for a slot) and its queue.
		SELECT NULL, l.pid, false,
			   coalesce(l.waitstart, a.query_start)
		  FROM l LEFT JOIN pg_stat_activity AS a ON a.pid = l.pid
		 WHERE l.s = 0)
	SELECT r.slot, r.pid, r.granted, a.xact_start, a.application_name::text, r.wait_start
	  FROM rows AS r
	  LEFT JOIN pg_stat_activity AS a ON a.pid = r.pid
	 ORDER BY r.granted DESC, r.slot, r.wait_start, r.pid;
END
$fn$;

COMMENT ON FUNCTION entitlock.slot_holders(text, integer) IS
'who holds a slot of the semaphore name (granted) and who waits for one, waiters by wait_start';

-- _slot_gate() and _check_slots() only compute and check arguments;
-- slot_holders(), which runs as the caller, calls them.
GRANT EXECUTE ON FUNCTION entitlock._slot_gate(text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION entitlock._check_slots(integer) TO PUBLIC;
REVOKE ALL ON FUNCTION entitlock._slot_try(integer, integer, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock._slot_deadlocked(integer, integer, integer) FROM PUBLIC;
