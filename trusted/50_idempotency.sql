/* trusted/50_idempotency.sql */

--
-- Idempotent writes (section 4 of the SPEC; the C edition's
-- src/idempotency.c), and the helpers for bounded waits that the files
-- after this one share.
--
-- A claim is a row of entitlock.idempotency_key written in the caller's
-- transaction while it holds the key's transaction lock,
-- pg_advisory_xact_lock(entitlock.key('entitlock.idempotency', key)),
-- the very lock the C edition takes.  The row and the lock share the fate
-- of the caller's write: COMMIT makes the claim visible, ROLLBACK, a killed
-- backend or a crash remove both.  A duplicate waits on the lock and then
-- looks again; in READ COMMITTED each statement of a PL/pgSQL function
-- takes a new snapshot, so it sees what the owner committed.
--
-- REPEATABLE READ and SERIALIZABLE keep the transaction's snapshot, which
-- may predate the owner's commit.  The C edition reads with a snapshot of
-- its own; PL/pgSQL cannot.  So a key's rows are numbered in
-- generations (the first 8 hex digits of claim_id) under a unique index
-- on (key_hash, md5(key), generation): a new row takes generation 0, or
-- one past the highest the caller sees, so a committed claim the snapshot
-- cannot see has the same generation and makes the INSERT fail with
-- serialization_failure (40001), which callers at those levels retry, and
-- never gives a second 'new'.  An expired row is reused, keeping its
-- claim_id, as in the C edition; only when a purge is deleting it does a
-- claim write the next generation instead, without waiting.
--
-- idempotency_complete() must know whether this transaction claimed the
-- key.  The C edition looks at the row's inserting transaction; here the
-- calling transaction notes each key hash it claimed in a transaction-
-- local setting, entitlock_trusted.claims, which a rollback to a savepoint
-- undoes together with the claim itself.
--

-- Files before this one had one row per key, under a unique index on
-- (key_hash, md5(key)); it goes.
DO $generations$
BEGIN
	IF pg_catalog.to_regclass('entitlock.idempotency_key_trusted_key_idx') IS NOT NULL THEN
		DROP INDEX entitlock.idempotency_key_trusted_key_idx;
	END IF;
END
$generations$;
CREATE UNIQUE INDEX IF NOT EXISTS idempotency_key_trusted_generation_idx
	ON entitlock.idempotency_key USING btree
	(key_hash, pg_catalog.md5(key), pg_catalog.substr(claim_id::text, 1, 8));

--
-- Shared helpers (internal; PUBLIC cannot call them).
--

-- A wait bound in whole milliseconds, rounded up, as the C edition's
-- entitlock_interval_ms(): months count as 30 days, anything beyond what
-- lock_timeout takes (about 24 days) is clamped to that.  NULL stays NULL
-- (no bound).  what names the argument in the error.
CREATE OR REPLACE FUNCTION entitlock._wait_bound_ms(span interval, what text)
RETURNS integer
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	ms numeric;
BEGIN
	IF span IS NULL THEN
		RETURN NULL;
	END IF;
	ms := ceil(extract(epoch FROM span) * 1000);
	IF ms < 0 THEN
		RAISE EXCEPTION '% must not be negative', what
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN least(ms, 2147483647)::integer;
END
$fn$;

COMMENT ON FUNCTION entitlock._wait_bound_ms(interval, text) IS
'internal: a wait bound in milliseconds (rounded up, clamped), NULL for none; negative is an error';

-- Waits at most wait_ms for the exclusive transaction lock on k (as
-- pg_advisory_xact_lock(k)); true once it is held.  NULL waits as long as
-- it takes (lock_timeout, statement_timeout and the deadlock detector
-- apply); 0 only tries.  A bounded wait is a lock manager wait with
-- lock_timeout set inside a subtransaction, so deadlock detection still
-- sees it, and lock_timeout is set back afterwards also when the wait
-- ends in an error (the subtransaction's rollback restores it).  When the
-- bound runs out the transaction stays usable.
CREATE OR REPLACE FUNCTION entitlock._xact_lock_within(k bigint, wait_ms integer)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	saved text;
BEGIN
	IF pg_try_advisory_xact_lock(k) THEN
		RETURN true;
	END IF;
	IF wait_ms IS NULL THEN
		PERFORM pg_advisory_xact_lock(k);
		RETURN true;
	END IF;
	IF wait_ms <= 0 THEN
		RETURN false;
	END IF;
	saved := current_setting('lock_timeout');
	BEGIN
		PERFORM set_config('lock_timeout', wait_ms::text, true);
		PERFORM pg_advisory_xact_lock(k);
		PERFORM set_config('lock_timeout', saved, true);
		RETURN true;
	EXCEPTION WHEN lock_not_available THEN
		-- The subtransaction's rollback has restored lock_timeout already.
		RETURN false;
	END;
END
$fn$;

COMMENT ON FUNCTION entitlock._xact_lock_within(bigint, integer) IS
'internal: pg_advisory_xact_lock(k) waiting at most wait_ms (NULL: no bound, 0: no wait); false when the bound runs out';

-- A ttl argument as the C edition's entitlock_ttl_arg() checks it:
-- present, no longer than max (max_text in the message), and greater than
-- zero from now.
CREATE OR REPLACE FUNCTION entitlock._check_ttl(ttl interval, max interval, max_text text)
RETURNS void
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	now timestamptz := clock_timestamp();
BEGIN
	IF ttl IS NULL THEN
		RAISE EXCEPTION 'ttl must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF ttl > max THEN
		RAISE EXCEPTION 'ttl must not be longer than %', max_text
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF ttl < -max OR now + ttl <= now THEN
		RAISE EXCEPTION 'ttl must be greater than zero'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
END
$fn$;

COMMENT ON FUNCTION entitlock._check_ttl(interval, interval, text) IS
'internal: raises the C edition''s errors for a NULL, too long or not positive ttl';

-- A name or key for an error message: whole when short, else its first 64
-- characters and "...", as the C edition quotes them.
CREATE OR REPLACE FUNCTION entitlock._for_message(t text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
	SELECT CASE WHEN length(t) <= 64 THEN t ELSE substr(t, 1, 64) || '...' END
$fn$;

COMMENT ON FUNCTION entitlock._for_message(text) IS
'internal: a name or key as error messages quote it';

-- Whether this transaction noted token in the transaction-local list
-- setting (see the file header), and noting one.
CREATE OR REPLACE FUNCTION entitlock._noted(setting text, token text)
RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
	SELECT position(' ' || token || ' ' IN coalesce(current_setting(setting, true), '')) > 0
$fn$;

COMMENT ON FUNCTION entitlock._noted(text, text) IS
'internal: whether token is in the transaction-local list setting';

CREATE OR REPLACE FUNCTION entitlock._note(setting text, token text)
RETURNS void
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
	SELECT set_config(setting,
					  coalesce(nullif(current_setting(setting, true), ''), ' ') || token || ' ',
					  true)
$fn$;

COMMENT ON FUNCTION entitlock._note(text, text) IS
'internal: adds token to the transaction-local list setting';

REVOKE ALL ON FUNCTION entitlock._wait_bound_ms(interval, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock._xact_lock_within(bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock._check_ttl(interval, interval, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock._for_message(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock._noted(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock._note(text, text) FROM PUBLIC;

--
-- Claiming a key: 'new', 'replay' or 'in_progress', and the response.
--
CREATE OR REPLACE FUNCTION entitlock._claim_key(
	p_key text, p_fingerprint text, p_ttl interval, p_wait interval,
	cmdname text, OUT outcome text, OUT stored jsonb)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	hash bigint;
	found_fp text;
	found_live boolean := false;
	now timestamptz;
	wait_ms integer;
	reuse tid;
	gen text;
BEGIN
	IF p_key IS NULL THEN
		RAISE EXCEPTION 'idempotency key must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF p_key = '' THEN
		RAISE EXCEPTION 'idempotency key must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM entitlock._check_ttl(p_ttl, interval '10000 years', '10000 years');
	wait_ms := entitlock._wait_bound_ms(p_wait, 'wait');
	IF current_setting('transaction_read_only') = 'on' THEN
		RAISE EXCEPTION 'cannot execute % in a read-only transaction', cmdname
			USING ERRCODE = 'read_only_sql_transaction';
	END IF;
	hash := entitlock.key('entitlock.idempotency', p_key);

	-- A committed claim (or this transaction's own) is final until it
	-- expires, so a replay needs no lock; only when none is visible is the
	-- key's lock taken, which waits for a transaction holding the key.
	SELECT c.fingerprint, c.response, true INTO found_fp, stored, found_live
	  FROM entitlock.idempotency_key AS c
	 WHERE c.key_hash = hash AND c.key = p_key
	   AND c.expires_at > clock_timestamp()
	 LIMIT 1;
	IF NOT coalesce(found_live, false) THEN
		IF NOT entitlock._xact_lock_within(hash, wait_ms) THEN
			outcome := 'in_progress';
			stored := NULL;
			RETURN;
		END IF;
		SELECT c.fingerprint, c.response, true INTO found_fp, stored, found_live
		  FROM entitlock.idempotency_key AS c
		 WHERE c.key_hash = hash AND c.key = p_key
		   AND c.expires_at > clock_timestamp()
		 LIMIT 1;
	END IF;

	IF coalesce(found_live, false) THEN
		IF p_fingerprint IS NOT NULL AND found_fp IS NOT NULL
		   AND found_fp <> p_fingerprint THEN
			RAISE EXCEPTION 'idempotency key "%" was reused with a different request',
				entitlock._for_message(p_key)
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'The fingerprint differs from the one the key was first used with.',
					  HINT = 'Use a new idempotency key for a different request.';
		END IF;
		outcome := 'replay';
		RETURN;
	END IF;

	-- Reuse an expired row of the key, keeping its claim_id.  One that a
	-- purge_expired() is deleting (locked) is not waited for, as in the C
	-- edition: the row is as good as gone, and a new row of the next
	-- generation serves as well (should the purge roll back, the old row
	-- is still expired and ignored).  Under REPEATABLE READ, a row another
	-- claim reused after this snapshot makes the lock fail with
	-- serialization_failure.
	now := clock_timestamp();
	SELECT c.ctid INTO reuse
	  FROM entitlock.idempotency_key AS c
	 WHERE c.key_hash = hash AND c.key = p_key
	 LIMIT 1
	   FOR UPDATE SKIP LOCKED;
	IF reuse IS NOT NULL THEN
		UPDATE entitlock.idempotency_key AS c
		   SET fingerprint = p_fingerprint, response = NULL,
			   claimed_at = now, expires_at = now + p_ttl, completed_at = NULL
		 WHERE c.ctid = reuse;
	ELSE
		-- A new row, of generation 0 for a key with no row in sight, else
		-- one past the highest one seen.  A committed claim this snapshot
		-- cannot see (REPEATABLE READ) has the same generation, and the
		-- unique index makes the INSERT fail with serialization_failure
		-- (see the file header).
		SELECT max(substr(c.claim_id::text, 1, 8)) INTO gen
		  FROM entitlock.idempotency_key AS c
		 WHERE c.key_hash = hash AND c.key = p_key;
		gen := CASE WHEN gen IS NULL THEN '00000000'
					ELSE lpad(to_hex((('x' || gen)::bit(32)::bigint + 1) % 4294967296), 8, '0')
			   END;
		INSERT INTO entitlock.idempotency_key AS c
			(key_hash, key, fingerprint, response, claimed_at, expires_at,
			 completed_at, claim_id)
		VALUES (hash, p_key, p_fingerprint, NULL, now, now + p_ttl, NULL,
				(gen || substr(gen_random_uuid()::text, 9))::uuid)
		ON CONFLICT DO NOTHING;
		IF NOT FOUND THEN
			-- A row the lock should have shown: another key with the same
			-- hash and digest, or a claim this snapshot cannot see.
			RAISE EXCEPTION 'could not serialize access due to a concurrent claim of idempotency key "%"',
				entitlock._for_message(p_key)
				USING ERRCODE = 'serialization_failure';
		END IF;
	END IF;
	PERFORM entitlock._note('entitlock_trusted.claims', hash::text);
	outcome := 'new';
	stored := NULL;
END
$fn$;

COMMENT ON FUNCTION entitlock._claim_key(text, text, interval, interval, text) IS
'internal: claims an idempotency key for this transaction, or finds who has';

REVOKE ALL ON FUNCTION entitlock._claim_key(text, text, interval, interval, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION entitlock.idempotency_begin(
	key text,
	fingerprint text DEFAULT NULL,
	ttl interval DEFAULT '24 hours',
	wait interval DEFAULT NULL)
RETURNS TABLE (status text, response jsonb)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE ROWS 1
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	c record;
BEGIN
	c := entitlock._claim_key(idempotency_begin.key, idempotency_begin.fingerprint,
							  ttl, wait, 'idempotency_begin()');
	status := c.outcome;
	response := c.stored;
	RETURN NEXT;
END
$fn$;

COMMENT ON FUNCTION entitlock.idempotency_begin(text, text, interval, interval) IS
'claims key for this transaction (status new), or returns the stored response of the transaction that did (status replay); waits while another transaction holds key, at most wait (then status in_progress, claiming nothing)';

CREATE OR REPLACE FUNCTION entitlock.idempotency_complete(
	key text,
	response jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	hash bigint;
	p_key text := idempotency_complete.key;
BEGIN
	IF p_key IS NULL THEN
		RAISE EXCEPTION 'idempotency key must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF p_key = '' THEN
		RAISE EXCEPTION 'idempotency key must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF current_setting('transaction_read_only') = 'on' THEN
		RAISE EXCEPTION 'cannot execute idempotency_complete() in a read-only transaction'
			USING ERRCODE = 'read_only_sql_transaction';
	END IF;
	hash := entitlock.key('entitlock.idempotency', p_key);

	-- A transaction that claimed key holds its lock, so this never waits;
	-- not getting it means another transaction is claiming key.
	IF NOT pg_try_advisory_xact_lock(hash) THEN
		RAISE EXCEPTION 'idempotency key "%" was not claimed by this transaction',
			entitlock._for_message(p_key)
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'Another transaction holds the key.',
				  HINT = 'Call idempotency_complete() in the transaction whose idempotency_begin() returned "new", before it commits.';
	END IF;
	IF entitlock._noted('entitlock_trusted.claims', hash::text) THEN
		-- The key's newest claim, this transaction's (older rows of the
		-- key are expired ones a purge was deleting).
		UPDATE entitlock.idempotency_key AS c
		   SET response = idempotency_complete.response,
			   completed_at = clock_timestamp()
		 WHERE c.ctid = (SELECT o.ctid FROM entitlock.idempotency_key AS o
						  WHERE o.key_hash = hash AND o.key = p_key
						  ORDER BY o.claimed_at DESC LIMIT 1);
		IF FOUND THEN
			RETURN;
		END IF;
	END IF;
	RAISE EXCEPTION 'idempotency key "%" was not claimed by this transaction',
		entitlock._for_message(p_key)
		USING ERRCODE = 'object_not_in_prerequisite_state',
			  DETAIL = 'The key is unclaimed or was claimed by an earlier transaction.',
			  HINT = 'Call idempotency_complete() in the transaction whose idempotency_begin() returned "new", before it commits.';
END
$fn$;

COMMENT ON FUNCTION entitlock.idempotency_complete(text, jsonb) IS
'stores the response replayed for key; key must have been claimed by this transaction';

CREATE OR REPLACE FUNCTION entitlock.first_time(
	key text,
	ttl interval DEFAULT '24 hours')
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
	RETURN (entitlock._claim_key(first_time.key, NULL, ttl, NULL, 'first_time()')).outcome = 'new';
END
$fn$;

COMMENT ON FUNCTION entitlock.first_time(text, interval) IS
'true for the one transaction that claims key until it expires, false for every other';

CREATE OR REPLACE FUNCTION entitlock.purge_expired(max_rows bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	deleted bigint;
BEGIN
	IF max_rows < 0 THEN
		RAISE EXCEPTION 'max_rows must not be negative'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF current_setting('transaction_read_only') = 'on' THEN
		RAISE EXCEPTION 'cannot execute purge_expired() in a read-only transaction'
			USING ERRCODE = 'read_only_sql_transaction';
	END IF;
	-- Oldest expiry first; rows a concurrent claim is reusing (locked) are
	-- skipped, not waited for, and so are this transaction's own claims.
	WITH doomed AS (
		SELECT c.ctid
		  FROM entitlock.idempotency_key AS c
		 WHERE c.expires_at < clock_timestamp()
		   AND NOT entitlock._noted('entitlock_trusted.claims', c.key_hash::text)
		 ORDER BY c.expires_at
		 LIMIT max_rows
		   FOR UPDATE SKIP LOCKED)
	DELETE FROM entitlock.idempotency_key AS c
	 USING doomed
	 WHERE c.ctid = doomed.ctid;
	GET DIAGNOSTICS deleted = ROW_COUNT;
	RETURN deleted;
END
$fn$;

COMMENT ON FUNCTION entitlock.purge_expired(bigint) IS
'deletes expired idempotency keys (at most max_rows, all when NULL); returns how many';

-- Granted explicitly, as in the C edition; see README, Privileges.
REVOKE ALL ON FUNCTION entitlock.idempotency_begin(text, text, interval, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.idempotency_complete(text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.first_time(text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.purge_expired(bigint) FROM PUBLIC;
