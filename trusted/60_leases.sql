/* trusted/60_leases.sql */

--
-- Leases (section 5 of the SPEC; the C edition's src/leases.c), and the
-- lease-scoped semaphores of 1.2 (lease_acquire_slot).
--
-- A lease is a row of entitlock.lease_record naming its holder, a random
-- token and an expiry time, written while holding the name's transaction
-- lock, pg_advisory_xact_lock(entitlock.key('entitlock.lease', name)), the
-- lock the C edition takes.  So calls on one name happen one at a time in
-- either edition, and each reads (READ COMMITTED: a new snapshot per
-- statement) what the ones before it committed.
--
-- A call that changes nothing must give the name's lock back at once, or
-- it would keep the owner from renewing until the end of the caller's
-- transaction.  SQL cannot release a transaction lock, so such a call
-- takes the lock inside a subtransaction and ends it by rolling that back
-- (raising a private SQLSTATE it catches), which releases the lock.
--
-- lease_acquire only tries the lock: a name another transaction is
-- working on is busy, the same answer as a held lease (no row).  With
-- wait it waits for a busy name in the lock manager (so a cycle of waits
-- through it ends with deadlock_detected), and for a held lease sleeps
-- until it expires, looking again every 20 ms for a release.  The sleeper
-- holds nothing that delays the holder's renew or release.
--
-- Fencing numbers come from entitlock.lease_fencing (no cache, no cycle),
-- drawn while holding the name's lock, so every acquisition of a name gets
-- a number larger than every earlier one's.  Unlike the C edition, which
-- flushes the WAL covering a number before returning it, SQL cannot force
-- a flush: with synchronous_commit = off, a number handed out just before
-- a crash by an acquisition whose commit was not yet flushed may be handed
-- out again (the trusted edition's guide says so).
--
-- Semaphore leases (1.2) are rows with a slot number, 1 to slots; a plain
-- lease's slot is NULL.  All of a name's rows share the name's lock.
--

ALTER TABLE entitlock.lease_record ADD COLUMN IF NOT EXISTS slot integer;

-- A ttl of a lease: at most 366 days, as in the C edition.
CREATE OR REPLACE FUNCTION entitlock._lease_args(name text, ttl interval)
RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
	IF name IS NULL THEN
		RAISE EXCEPTION 'lease name must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF name = '' THEN
		RAISE EXCEPTION 'lease name must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM entitlock._check_ttl(ttl, interval '366 days', '366 days');
	RETURN entitlock.key('entitlock.lease', name);
END
$fn$;

COMMENT ON FUNCTION entitlock._lease_args(text, interval) IS
'internal: checks a lease''s name and ttl; returns the key of the name''s lock';

-- The slot count of a semaphore (lock_slot, lease_acquire_slot).
CREATE OR REPLACE FUNCTION entitlock._check_slots(slots integer)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
	IF slots IS NULL THEN
		RAISE EXCEPTION 'slots must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF slots < 1 OR slots > 10000 THEN
		RAISE EXCEPTION 'slots must be between 1 and 10000'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given was %s.', slots);
	END IF;
END
$fn$;

COMMENT ON FUNCTION entitlock._check_slots(integer) IS
'internal: slots must be 1 to 10000';

--
-- One attempt to take a lease of name: the plain lease (p_slots NULL) or
-- a free slot of 1..p_slots.  'taken' with the new slot, token and
-- fencing; 'held' with the earliest expiry among the leases in the way;
-- 'busy' when another transaction holds the name's lock.  Changes nothing
-- and keeps no lock unless it took the lease.
--
CREATE OR REPLACE FUNCTION entitlock._lease_try(
	hash bigint, p_name text, p_ttl interval, p_holder text, p_slots integer,
	OUT outcome text, OUT got_slot integer, OUT got_token uuid,
	OUT got_fencing bigint, OUT held_until timestamptz)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	now timestamptz;
	row_ctid tid;
	old_fencing bigint;
	n_live integer;
BEGIN
	BEGIN
		IF NOT pg_try_advisory_xact_lock(hash) THEN
			outcome := 'busy';
			RETURN;
		END IF;
		now := clock_timestamp();
		IF p_slots IS NULL THEN
			SELECT r.ctid, r.fencing,
				   CASE WHEN r.expires_at > now THEN r.expires_at END
			  INTO row_ctid, old_fencing, held_until
			  FROM entitlock.lease_record AS r
			 WHERE r.key_hash = hash AND r.name = p_name AND r.slot IS NULL
			 LIMIT 1;
			got_slot := NULL;
		ELSE
			-- The lowest slot with no live lease: an expired row to take
			-- over, or a number with no row at all.
			SELECT min(r.expires_at) FILTER (WHERE r.expires_at > now)
			  INTO held_until
			  FROM entitlock.lease_record AS r
			 WHERE r.key_hash = hash AND r.name = p_name
			   AND r.slot BETWEEN 1 AND p_slots;
			SELECT s INTO got_slot
			  FROM generate_series(1, p_slots) AS s
			 WHERE NOT EXISTS (SELECT 1 FROM entitlock.lease_record AS r
								WHERE r.key_hash = hash AND r.name = p_name
								  AND r.slot = s AND r.expires_at > now)
			 ORDER BY s
			 LIMIT 1;
			IF got_slot IS NULL THEN
				held_until := coalesce(held_until, now);
			ELSE
				held_until := NULL;
				SELECT r.ctid, r.fencing INTO row_ctid, old_fencing
				  FROM entitlock.lease_record AS r
				 WHERE r.key_hash = hash AND r.name = p_name AND r.slot = got_slot
				 LIMIT 1;
			END IF;
		END IF;
		IF held_until IS NOT NULL THEN
			-- Give the name's lock back: roll the subtransaction back.
			outcome := 'held';
			RAISE EXCEPTION USING ERRCODE = 'ELT01';
		END IF;
	EXCEPTION WHEN SQLSTATE 'ELT01' THEN
		RETURN;
	END;

	-- A cached or cycling sequence would hand out numbers out of order
	-- across backends, so refuse one.
	IF NOT EXISTS (SELECT 1 FROM pg_sequence AS q
					WHERE q.seqrelid = 'entitlock.lease_fencing'::regclass
					  AND q.seqcache = 1 AND NOT q.seqcycle AND q.seqincrement > 0) THEN
		RAISE EXCEPTION 'sequence "entitlock.lease_fencing" is not as this version of entitlock created it'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'Fencing numbers need a sequence that increases, without cache or cycle.',
				  HINT = 'Update the extension with ALTER EXTENSION entitlock UPDATE, or reinstall it.';
	END IF;
	got_token := gen_random_uuid();
	got_fencing := nextval('entitlock.lease_fencing');
	-- A sequence set back by hand, or restored without its position, would
	-- hand out numbers a holder has already used; the row taken over shows
	-- it.
	IF old_fencing IS NOT NULL AND got_fencing <= old_fencing THEN
		RAISE EXCEPTION 'sequence "entitlock.lease_fencing" is behind the fencing numbers already handed out'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('The next number is %s, but the lease being taken over had %s.',
								  got_fencing, old_fencing),
				  HINT = 'Move the sequence past every fencing number in use, with setval() on entitlock.lease_fencing.';
	END IF;
	IF row_ctid IS NULL THEN
		INSERT INTO entitlock.lease_record
			(key_hash, name, token, holder, fencing, acquired_at, expires_at, slot)
		VALUES (hash, p_name, got_token, p_holder, got_fencing, now, now + p_ttl, got_slot);
	ELSE
		UPDATE entitlock.lease_record AS r
		   SET token = got_token, holder = p_holder, fencing = got_fencing,
			   acquired_at = now, expires_at = now + p_ttl
		 WHERE r.ctid = row_ctid;
	END IF;
	outcome := 'taken';
END
$fn$;

COMMENT ON FUNCTION entitlock._lease_try(bigint, text, interval, text, integer) IS
'internal: one attempt to take a lease (or a slot lease) of a name';

-- Takes a lease, waiting at most wait_ms: as one attempt above, repeated.
CREATE OR REPLACE FUNCTION entitlock._lease_take(
	hash bigint, p_name text, p_ttl interval, p_holder text, p_slots integer,
	wait_ms integer,
	OUT got_slot integer, OUT got_token uuid, OUT got_fencing bigint)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	deadline timestamptz := clock_timestamp() + make_interval(secs => wait_ms / 1000.0);
	a record;
	now timestamptz;
	left_ms integer;
	sleep_s double precision;
BEGIN
	LOOP
		a := entitlock._lease_try(hash, p_name, p_ttl, p_holder, p_slots);
		IF a.outcome = 'taken' THEN
			got_slot := a.got_slot;
			got_token := a.got_token;
			got_fencing := a.got_fencing;
			RETURN;
		END IF;
		now := clock_timestamp();
		IF now >= deadline THEN
			RETURN;
		END IF;
		left_ms := ceil(extract(epoch FROM deadline - now) * 1000)::integer;
		IF a.outcome = 'busy' THEN
			-- Wait in the lock manager for the transaction working on the
			-- name, then give the lock back at once (the subtransaction
			-- rolls back) and look again.
			BEGIN
				PERFORM entitlock._xact_lock_within(hash, left_ms);
				RAISE EXCEPTION USING ERRCODE = 'ELT01';
			EXCEPTION WHEN SQLSTATE 'ELT01' THEN
				NULL;
			END;
		ELSE
			-- Held: sleep until it expires, looking again every 20 ms.
			sleep_s := least(0.02, extract(epoch FROM deadline - now),
							 greatest(0.001, extract(epoch FROM a.held_until - now)));
			PERFORM pg_sleep(sleep_s);
		END IF;
	END LOOP;
END
$fn$;

COMMENT ON FUNCTION entitlock._lease_take(bigint, text, interval, text, integer, integer) IS
'internal: takes a lease or a slot lease, waiting at most wait_ms';

REVOKE ALL ON FUNCTION entitlock._lease_args(text, interval) FROM PUBLIC;
-- _check_slots() only checks its argument (slot_holders() runs as its caller).
REVOKE ALL ON FUNCTION entitlock._lease_try(bigint, text, interval, text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock._lease_take(bigint, text, interval, text, integer, integer) FROM PUBLIC;

CREATE OR REPLACE FUNCTION entitlock.lease_acquire(
	name text,
	ttl interval,
	holder text DEFAULT NULL,
	wait interval DEFAULT '0')
RETURNS TABLE (token uuid, fencing bigint)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE ROWS 1
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	hash bigint := entitlock._lease_args(lease_acquire.name, ttl);
	t record;
BEGIN
	IF current_setting('transaction_read_only') = 'on' THEN
		RAISE EXCEPTION 'cannot execute lease_acquire() in a read-only transaction'
			USING ERRCODE = 'read_only_sql_transaction';
	END IF;
	t := entitlock._lease_take(hash, lease_acquire.name, ttl, lease_acquire.holder,
							   NULL, coalesce(entitlock._wait_bound_ms(wait, 'wait'), 0));
	IF t.got_token IS NOT NULL THEN
		token := t.got_token;
		fencing := t.got_fencing;
		RETURN NEXT;
	END IF;
END
$fn$;

COMMENT ON FUNCTION entitlock.lease_acquire(text, interval, text, interval) IS
'takes the lease on name for ttl and returns its token and fencing number; no row when it is held and stays held for wait';

CREATE OR REPLACE FUNCTION entitlock.lease_acquire_slot(
	name text,
	slots integer,
	ttl interval,
	holder text DEFAULT NULL,
	wait interval DEFAULT '0')
RETURNS TABLE (slot integer, token uuid, fencing bigint)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE ROWS 1
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	hash bigint;
	wait_ms integer;
	t record;
BEGIN
	IF lease_acquire_slot.name IS NULL THEN
		RAISE EXCEPTION 'lease name must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF lease_acquire_slot.name = '' THEN
		RAISE EXCEPTION 'lease name must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM entitlock._check_slots(slots);
	hash := entitlock._lease_args(lease_acquire_slot.name, ttl);
	IF current_setting('transaction_read_only') = 'on' THEN
		RAISE EXCEPTION 'cannot execute lease_acquire_slot() in a read-only transaction'
			USING ERRCODE = 'read_only_sql_transaction';
	END IF;
	wait_ms := coalesce(entitlock._wait_bound_ms(wait, 'wait'), 0);
	t := entitlock._lease_take(hash, lease_acquire_slot.name, ttl,
							   lease_acquire_slot.holder, slots, wait_ms);
	IF t.got_token IS NOT NULL THEN
		slot := t.got_slot;
		token := t.got_token;
		fencing := t.got_fencing;
		RETURN NEXT;
	END IF;
END
$fn$;

COMMENT ON FUNCTION entitlock.lease_acquire_slot(text, integer, interval, text, interval) IS
'takes one of slots leases of name for ttl and returns its slot, token and fencing number; no row when every slot is held and stays held for wait';

--
-- Renew and release: wait for the name's lock (so that an acquirer that
-- is merely looking cannot make an owner believe it lost its lease), act
-- only on the row holding token, and give the lock back when they change
-- nothing.
--
CREATE OR REPLACE FUNCTION entitlock._lease_owner_call(
	p_name text, p_token uuid, p_ttl interval, p_release boolean, cmdname text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	hash bigint;
	row_ctid tid;
BEGIN
	IF p_release THEN
		hash := entitlock._lease_args(p_name, interval '1 day');
	ELSE
		hash := entitlock._lease_args(p_name, p_ttl);
	END IF;
	IF p_token IS NULL THEN
		RAISE EXCEPTION 'lease token must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF current_setting('transaction_read_only') = 'on' THEN
		RAISE EXCEPTION 'cannot execute % in a read-only transaction', cmdname
			USING ERRCODE = 'read_only_sql_transaction';
	END IF;
	BEGIN
		PERFORM pg_advisory_xact_lock(hash);
		SELECT r.ctid INTO row_ctid
		  FROM entitlock.lease_record AS r
		 WHERE r.key_hash = hash AND r.name = p_name AND r.token = p_token
		 LIMIT 1;
		IF row_ctid IS NULL THEN
			RAISE EXCEPTION USING ERRCODE = 'ELT01';
		END IF;
	EXCEPTION WHEN SQLSTATE 'ELT01' THEN
		RETURN false;
	END;
	IF p_release THEN
		DELETE FROM entitlock.lease_record AS r WHERE r.ctid = row_ctid;
	ELSE
		UPDATE entitlock.lease_record AS r
		   SET expires_at = clock_timestamp() + p_ttl
		 WHERE r.ctid = row_ctid;
	END IF;
	RETURN true;
END
$fn$;

COMMENT ON FUNCTION entitlock._lease_owner_call(text, uuid, interval, boolean, text) IS
'internal: lease_renew and lease_release';

REVOKE ALL ON FUNCTION entitlock._lease_owner_call(text, uuid, interval, boolean, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION entitlock.lease_renew(
	name text,
	token uuid,
	ttl interval)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
	RETURN entitlock._lease_owner_call(name, token, ttl, false, 'lease_renew()');
END
$fn$;

COMMENT ON FUNCTION entitlock.lease_renew(text, uuid, interval) IS
'makes the lease on name expire ttl from now, if token is its current token';

CREATE OR REPLACE FUNCTION entitlock.lease_release(
	name text,
	token uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
	RETURN entitlock._lease_owner_call(name, token, NULL, true, 'lease_release()');
END
$fn$;

COMMENT ON FUNCTION entitlock.lease_release(text, uuid) IS
'ends the lease on name, if token is its current token';

-- The token is its holder's capability, so the view leaves it out.  The
-- view reads the table with its owner's rights; granting SELECT on it
-- shows leases without giving any access to the table.  slot (1.2) is
-- NULL for plain leases.
CREATE OR REPLACE VIEW entitlock.leases AS
SELECT name, holder, fencing, acquired_at, expires_at, slot
  FROM entitlock.lease_record
 WHERE expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp();

COMMENT ON VIEW entitlock.leases IS
'leases held now (not released, not expired); never shows tokens';

-- Granted explicitly, as in the C edition; see README, Privileges.
REVOKE ALL ON FUNCTION entitlock.lease_acquire(text, interval, text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.lease_acquire_slot(text, integer, interval, text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.lease_renew(text, uuid, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.lease_release(text, uuid) FROM PUBLIC;
REVOKE ALL ON entitlock.leases FROM PUBLIC;
