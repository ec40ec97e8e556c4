/* trusted/40_ratelimit.sql */

--
-- Rolling rate limits: entitlock.rate_limit, entitlock.gcra and
-- entitlock.prune_rate_limits, as in the C edition (src/ratelimit.c).
--
-- The generic cell rate algorithm.  A limit of rate units per "per", with
-- bursts of up to burst units, has an emission interval T = per / rate
-- (rounded up to a whole microsecond) and a tolerance tau = burst * T.
-- Its whole state is one instant, the theoretical arrival time (tat): the
-- bucket is full when tat is not after now, and each unit taken pushes
-- tat T further.  A call for cost units is allowed when
-- max(tat, now) + cost * T - now <= tau.
--
-- State is one row per name in entitlock.rate_limit_state.  Calls on one
-- name meet on that row's lock (SELECT ... FOR NO KEY UPDATE), taken before
-- the clock is read, so a call decides on the time it actually decides
-- at; the row stays locked until the caller's transaction ends, so a
-- rollback gives the units back.  A name's first row is created by an
-- INSERT ... ON CONFLICT DO NOTHING, and a creator that loses the race
-- looks again.  Under REPEATABLE READ a row changed after the snapshot
-- fails the call with 40001, as for usage counters.
--

-- A limit's parameters, checked, in microseconds: {T, tau}.  An array
-- rather than a row, as a call returning a row costs a query.  Checked
-- before anything is locked.
CREATE OR REPLACE FUNCTION entitlock._rate_limit_args(rate bigint, per interval,
	burst bigint, cost bigint)
RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	-- 10000 years of 365.25 days, in microseconds
	max_window constant numeric := 10000 * 365.25 * 86400000000;
	months numeric;
	days numeric;
	per_us numeric;
	tol numeric;
	t_interval bigint;
	burst_out bigint;
BEGIN
	IF rate IS NULL THEN
		RAISE EXCEPTION 'rate must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF per IS NULL THEN
		RAISE EXCEPTION 'per must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	-- per as microseconds, a month counting as 30 days, as elsewhere.
	months := extract(year FROM per) * 12 + extract(month FROM per);
	days := extract(day FROM per);
	per_us := (months * 30 + days) * 86400000000
			  + extract(epoch FROM per - make_interval(months => months::integer,
													   days => days::integer)) * 1000000;
	IF per_us > max_window THEN
		RAISE EXCEPTION 'per is too long'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'The longest is 10000 years.';
	END IF;
	burst_out := coalesce(burst, rate);
	IF cost IS NULL THEN
		RAISE EXCEPTION 'cost must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF rate <= 0 THEN
		RAISE EXCEPTION 'rate must be greater than zero'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF per_us <= 0 THEN
		RAISE EXCEPTION 'per must be greater than zero'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF burst_out <= 0 THEN
		RAISE EXCEPTION 'burst must be greater than zero'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF cost < 0 THEN
		RAISE EXCEPTION 'cost must not be negative'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'A cost of 0 reports the state without taking anything.';
	END IF;
	IF cost > burst_out THEN
		RAISE EXCEPTION 'cost % is greater than burst %', cost, burst_out
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A call for more than burst units could never be allowed.';
	END IF;
	-- T = per / rate rounded up: never lets more than rate per per through
	t_interval := ceil(trunc(per_us) / rate)::bigint;
	tol := burst_out::numeric * t_interval;
	IF tol > max_window THEN
		RAISE EXCEPTION 'burst is too large for this rate'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'burst * per / rate must be at most 10000 years.';
	END IF;
	RETURN ARRAY[t_interval, tol::bigint];
END
$$;

COMMENT ON FUNCTION entitlock._rate_limit_args(bigint, interval, bigint, bigint) IS
'checks a rate limit''s parameters and derives T and tau in microseconds (internal to the trusted edition)';

-- A span of microseconds as an interval of hours and seconds only (no
-- days, whose length would depend on the session's time zone), as the C
-- edition returns it.
CREATE OR REPLACE FUNCTION entitlock._usecs_interval(usecs bigint)
RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
	SELECT pg_catalog.make_interval(
		hours => (usecs OPERATOR(pg_catalog./) 3600000000)::integer,
		secs => (usecs OPERATOR(pg_catalog.%) 3600000000)::double precision
				OPERATOR(pg_catalog./) 1000000)
$$;

--
-- Decide a call for cost units at "now" on a name whose state is tat
-- (NULL: the bucket is full).  A state further ahead than any window
-- (written by hand) counts as the longest window ahead.
--
CREATE OR REPLACE FUNCTION entitlock._gcra_decide(t_interval bigint, tolerance bigint,
	cost bigint, tat timestamptz, now timestamptz,
	OUT allowed boolean, OUT remaining bigint, OUT retry_after interval,
	OUT reset_after interval, OUT new_tat timestamptz)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	max_window constant bigint := 315576000000000000;
	from_us bigint := 0;		-- max(tat, now) - now
	ahead bigint;
	backlog bigint;
BEGIN
	IF tat IS NOT NULL AND tat > now THEN
		from_us := least(extract(epoch FROM tat - now) * 1000000, max_window)::bigint;
	END IF;
	ahead := from_us + cost * t_interval;
	allowed := ahead <= tolerance;
	IF allowed THEN
		backlog := ahead;
		retry_after := NULL;
	ELSE
		backlog := from_us;
		retry_after := entitlock._usecs_interval(ahead - tolerance);
	END IF;
	new_tat := now + entitlock._usecs_interval(backlog);
	remaining := CASE WHEN backlog < tolerance THEN (tolerance - backlog) / t_interval ELSE 0 END;
	reset_after := entitlock._usecs_interval(backlog);
END
$$;

COMMENT ON FUNCTION entitlock._gcra_decide(bigint, bigint, bigint, timestamptz, timestamptz) IS
'the generic cell rate algorithm''s decision (internal to the trusted edition)';

CREATE OR REPLACE FUNCTION entitlock.rate_limit(
	name text,
	rate bigint,
	per interval,
	burst bigint DEFAULT NULL,
	cost bigint DEFAULT 1)
RETURNS TABLE (allowed boolean, remaining bigint, retry_after interval,
			   reset_after interval)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE ROWS 1 SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	done boolean;	-- a void call's result, thrown away
	lim bigint[];
	t_interval bigint;
	tolerance bigint;
	t timestamptz;
	found_row boolean;
	now timestamptz;
	from_us bigint;
	ahead bigint;
	backlog bigint;
	new_tat timestamptz;
BEGIN
	IF name IS NULL THEN
		RAISE EXCEPTION 'name must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF name = '' THEN
		RAISE EXCEPTION 'name must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF octet_length(name) > 512 THEN
		RAISE EXCEPTION 'name is too long'
			USING ERRCODE = 'program_limit_exceeded',
				  DETAIL = format('It is %s bytes long; the limit is 512 bytes.', octet_length(name));
	END IF;
	lim := entitlock._rate_limit_args(rate, per, burst, cost);
	t_interval := lim[1];
	tolerance := lim[2];
	IF cost > 0 THEN
		done := (entitlock._check_writable('rate_limit()')) IS NULL;
	END IF;

	-- The decision, as _gcra_decide() makes it, written out here because
	-- a call returning a row costs a query.
	LOOP
		IF cost = 0 THEN
			-- A peek: the state as the statement's snapshot sees it.
			SELECT s.tat INTO t FROM entitlock.rate_limit_state AS s WHERE s.name = name;
		ELSE
			SELECT s.tat INTO t FROM entitlock.rate_limit_state AS s
			 WHERE s.name = name
			   FOR NO KEY UPDATE;
		END IF;
		found_row := FOUND;
		-- The clock is read once the call holds the name.
		now := clock_timestamp();
		from_us := 0;
		IF found_row AND t > now THEN
			-- A state further ahead than any window (written by hand)
			-- counts as the longest window ahead.
			from_us := least(extract(epoch FROM t - now) * 1000000, 315576000000000000)::bigint;
		END IF;
		ahead := from_us + cost * t_interval;
		allowed := ahead <= tolerance;
		IF allowed THEN
			backlog := ahead;
			retry_after := NULL;
		ELSE
			backlog := from_us;
			retry_after := entitlock._usecs_interval(ahead - tolerance);
		END IF;
		remaining := CASE WHEN backlog < tolerance THEN (tolerance - backlog) / t_interval ELSE 0 END;
		reset_after := entitlock._usecs_interval(backlog);
		EXIT WHEN cost = 0 OR NOT allowed;
		new_tat := now + reset_after;
		IF found_row THEN
			UPDATE entitlock.rate_limit_state AS s
			   SET tat = new_tat
			 WHERE s.name = name;
			EXIT;
		END IF;
		INSERT INTO entitlock.rate_limit_state AS s (name, tat)
		VALUES (name, new_tat)
		ON CONFLICT ON CONSTRAINT rate_limit_state_pkey DO NOTHING;
		EXIT WHEN FOUND;
		-- Another call created the row meanwhile: lock it and decide again.
	END LOOP;
	RETURN NEXT;
END
$$;

COMMENT ON FUNCTION entitlock.rate_limit(text, bigint, interval, bigint, bigint) IS
'takes cost units of a rolling limit of rate per per (bursts up to burst) if they fit now; atomic per name';

-- The checks and the arithmetic of gcra(), below.  PL/pgSQL cannot have
-- an argument and a result column of one name (tat), so gcra() itself is
-- an SQL function calling this one.
CREATE OR REPLACE FUNCTION entitlock._gcra(stored timestamptz, at timestamptz,
	rate bigint, per interval, burst bigint, cost bigint,
	OUT allowed boolean, OUT remaining bigint, OUT retry_after interval,
	OUT reset_after interval, OUT new_tat timestamptz)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	lim bigint[];
	d record;
BEGIN
	IF at IS NULL THEN
		RAISE EXCEPTION 'at must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	lim := entitlock._rate_limit_args(rate, per, burst, cost);
	IF NOT isfinite(at) OR (stored IS NOT NULL AND NOT isfinite(stored))
	   OR at > '294000-01-01 00:00:00+00'::timestamptz - interval '20000 years' THEN
		RAISE EXCEPTION 'timestamp out of range'
			USING ERRCODE = 'datetime_field_overflow';
	END IF;
	d := entitlock._gcra_decide(lim[1], lim[2], cost, stored, at);
	allowed := d.allowed;
	remaining := d.remaining;
	retry_after := d.retry_after;
	reset_after := d.reset_after;
	new_tat := d.new_tat;
END
$$;

CREATE OR REPLACE FUNCTION entitlock.gcra(
	tat timestamptz,
	at timestamptz,
	rate bigint,
	per interval,
	burst bigint DEFAULT NULL,
	cost bigint DEFAULT 1)
RETURNS TABLE (allowed boolean, remaining bigint, retry_after interval,
			   reset_after interval, tat timestamptz)
LANGUAGE sql IMMUTABLE PARALLEL SAFE ROWS 1
AS $$
	SELECT d.allowed, d.remaining, d.retry_after, d.reset_after, d.new_tat
	  FROM entitlock._gcra($1, $2, $3, $4, $5, $6) AS d
$$;

COMMENT ON FUNCTION entitlock.gcra(timestamptz, timestamptz, bigint, interval, bigint, bigint) IS
'what rate_limit() decides at a given moment for a stored state tat (NULL: none), and the state it leaves';

CREATE OR REPLACE FUNCTION entitlock.prune_rate_limits()
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
