/* trusted/30_usage.sql */

--
-- Usage limits: record_usage_if_under_limit, record_usage, usage,
-- usage_period, usage_limit, record_usage_if_under_limits, refund_usage,
-- prune_usage and (1.2) reset_usage.
--
-- A meter is (subject, feature, period); each period of it is one row of
-- entitlock.usage_counter holding a running total, as in the C edition, so
-- the rows of both editions mean the same.
--
-- How calls on one meter serialise.  Every recording call first takes
-- shared advisory locks on key(subject) and key(subject, feature), so that
-- an exclusive lock(subject) freezes a subject's usage and an exclusive
-- lock_entity(subject, feature) excludes recording on the pair, while
-- recorders do not exclude each other there.  Recorders meet on the
-- counter row itself.  A call on one meter is one INSERT ... ON CONFLICT
-- DO UPDATE ... WHERE used <= limit - amount: PostgreSQL locks the newest
-- version of the row and evaluates the condition on it, so the decision
-- reads the usage as of after the row lock was granted, as an UPDATE in
-- READ COMMITTED does, and a hot meter behaves like a single-row UPDATE.
-- Under REPEATABLE READ and SERIALIZABLE the same statement raises
-- serialization_failure (40001) when the newest version is not the one
-- the transaction's snapshot sees, so a call decides on the newest usage
-- or fails; it never records past the limit.  A first row is created by
-- the INSERT, and two creators meet on the primary key.
--
-- A call on several meters locks every row in one canonical order before
-- it reads any (SELECT ... FOR NO KEY UPDATE, which also fails with 40001
-- under REPEATABLE READ when the row changed after the snapshot), creating
-- a missing row with usage 0 to have something to lock and deleting it
-- again when it is left at 0.
--
-- Idempotency keys: calls with a key also take a transaction lock on the
-- key, so that a retry racing its first call waits for it and then
-- answers from its record.  The C edition keeps these locks in a key space
-- SQL cannot reach; here they are advisory locks of the two-integer form
-- (pg_advisory_xact_lock(int, int)) on a hash of the key, which never meet
-- entitlock's named locks (the 64-bit form), only an application's own
-- two-integer advisory locks with the same numbers, which would then wait
-- a little longer, never wrongly.  Under REPEATABLE READ a key recorded by
-- a transaction that committed after the snapshot is detected when the
-- key's row is written, which then fails with 40001.
--
-- The tables are reached only through these functions: the public ones
-- are SECURITY DEFINER, run as the tables' owner (the role that ran this
-- file), and are granted explicitly, as in the C edition; the internal
-- ones (named with a leading underscore) that touch tables are revoked
-- from PUBLIC.
--

DO $type$
BEGIN
	IF pg_catalog.to_regtype('entitlock.usage_limit') IS NULL THEN
		CREATE TYPE entitlock.usage_limit AS (
			subject text,
			feature text,
			usage_limit bigint,
			period text
		);
	END IF;
END
$type$;

COMMENT ON TYPE entitlock.usage_limit IS
'one limit of a record_usage_if_under_limits() call: a meter (subject, feature, period) and its limit';

--
-- Periods
--
-- A period is 'lifetime', a UTC calendar period ('minute' ... 'year', in
-- any case), or (1.2) an anchored period '[N ]unit@anchor', read and
-- spelled canonically as the C edition does (src/periods.c): N and the
-- plural only when N > 1, whole weeks of days as weeks and whole years of
-- months as years, the anchor in UTC as 'YYYY-MM-DD HH:MM:SS[.ffffff]+00'.
-- kind orders periods canonically: 0 lifetime, 1 minute, 2 hour, 3 day,
-- 4 week, 5 month, 6 year; count is 0 for calendar periods.
--

-- The anchor of an anchored period, read as if the session's TimeZone
-- were UTC (the SET clause), so that an anchor without a zone is UTC.
CREATE OR REPLACE FUNCTION entitlock._period_anchor(anchor text, spelled text)
RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET TimeZone = 'UTC'
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	result timestamptz;
	msg text;
BEGIN
	BEGIN
		result := anchor::timestamptz;
	EXCEPTION WHEN data_exception THEN
		GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
		RAISE EXCEPTION 'invalid anchor in period "%"', spelled
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = msg,
				  HINT = 'Write the anchor as a timestamptz, such as "2026-01-31 10:00:00+00".';
	END;
	IF NOT isfinite(result) THEN
		RAISE EXCEPTION 'anchor of period "%" must be finite', spelled
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF anchor ~* '(^|[^a-z])(now|today|tomorrow|yesterday)($|[^a-z])' THEN
		RAISE EXCEPTION 'anchor of period "%" must be a fixed moment', spelled
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Words such as now and today name a different moment in each transaction.';
	END IF;
	RETURN result;
END
$$;

COMMENT ON FUNCTION entitlock._period_anchor(text, text) IS
'the anchor of an anchored period, read in UTC (internal to the trusted edition)';

--
-- Read a period; every bad spelling is an error (22023).  name is the
-- canonical spelling.
--
CREATE OR REPLACE FUNCTION entitlock._period_parse(period text,
	OUT name text, OUT kind integer, OUT count integer, OUT anchor timestamptz)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	at integer;
	head text;
	unit text;
	m text[];
	n numeric;
	shown text;
BEGIN
	IF period IS NULL THEN
		RAISE EXCEPTION 'period must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	at := strpos(period, '@');
	IF at = 0 THEN
		kind := CASE lower(period)
					WHEN 'lifetime' THEN 0 WHEN 'minute' THEN 1 WHEN 'hour' THEN 2
					WHEN 'day' THEN 3 WHEN 'week' THEN 4 WHEN 'month' THEN 5
					WHEN 'year' THEN 6 END;
		IF kind IS NULL THEN
			shown := CASE WHEN char_length(period) <= 64 THEN period
						  ELSE left(period, 64) || '...' END;
			RAISE EXCEPTION 'unrecognized period "%"', shown
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Valid periods are lifetime, minute, hour, day, week, month and year.';
		END IF;
		name := (ARRAY['lifetime', 'minute', 'hour', 'day', 'week', 'month', 'year'])[kind + 1];
		count := 0;
		RETURN;
	END IF;

	IF octet_length(period) > 200 THEN
		RAISE EXCEPTION 'period "%" is too long', left(period, 64) || '...'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	head := left(period, at - 1);
	-- '[N ]unit', N digits followed by at least one space, no other blanks
	-- but before the '@'.
	m := regexp_match(head, '^(?:([0-9]+) +)?([A-Za-z]*) *$');
	IF m IS NULL THEN
		RAISE EXCEPTION 'unrecognized unit in period "%"', period
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The unit of an anchored period is day, week, month or year, as in "3 months@2026-01-15 00:00:00+00".';
	END IF;
	unit := lower(m[2]);
	kind := CASE unit WHEN 'day' THEN 3 WHEN 'days' THEN 3 WHEN 'week' THEN 4
					  WHEN 'weeks' THEN 4 WHEN 'month' THEN 5 WHEN 'months' THEN 5
					  WHEN 'year' THEN 6 WHEN 'years' THEN 6 END;
	IF kind IS NULL THEN
		RAISE EXCEPTION 'unrecognized unit in period "%"', period
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The unit of an anchored period is day, week, month or year, as in "3 months@2026-01-15 00:00:00+00".';
	END IF;
	n := coalesce(m[1]::numeric, 1);
	IF n < 1 OR n > 1000 THEN
		RAISE EXCEPTION 'number of units in period "%" is out of range', period
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'An anchored period is 1 to 1000 units long.';
	END IF;
	count := n::integer;
	-- Whole weeks and whole years are one period however they are written.
	IF kind = 3 AND count % 7 = 0 THEN
		kind := 4;
		count := count / 7;
	ELSIF kind = 5 AND count % 12 = 0 THEN
		kind := 6;
		count := count / 12;
	END IF;
	anchor := entitlock._period_anchor(substr(period, at + 1), period);

	name := CASE WHEN count > 1
				 THEN count::text || ' ' || (ARRAY['days', 'weeks', 'months', 'years'])[kind - 2]
				 ELSE (ARRAY['day', 'week', 'month', 'year'])[kind - 2] END
			|| '@'
			|| to_char(anchor AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
			|| CASE WHEN extract(microseconds FROM anchor) % 1000000 <> 0
					THEN rtrim(to_char(anchor AT TIME ZONE 'UTC', '.US'), '0')
					ELSE '' END
			|| '+00'
			|| CASE WHEN extract(year FROM anchor AT TIME ZONE 'UTC') < 1 THEN ' BC' ELSE '' END;
END
$$;

COMMENT ON FUNCTION entitlock._period_parse(text) IS
'reads a period argument: canonical name, kind, count and anchor (internal to the trusted edition)';

--
-- The bounds of the period holding "at": its first instant and the first
-- instant of the next one; -infinity and NULL for lifetime.  Calendar
-- periods are UTC's (weeks start on Monday, as date_trunc('week') does).
-- Anchored periods start at anchor + k * N units for every whole k:
-- days and weeks are fixed lengths of UTC time; months and years move the
-- anchor's UTC fields by whole months, which PostgreSQL's month arithmetic
-- clamps to the month's last day, every start from the anchor itself.
--
CREATE OR REPLACE FUNCTION entitlock._period_bounds(kind integer, count integer,
	anchor timestamptz, at timestamptz,
	OUT period_start timestamptz, OUT period_end timestamptz)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t timestamp;
	a timestamp;
	s timestamp;
	step integer;
	k bigint;
BEGIN
	IF kind = 0 THEN
		period_start := '-infinity';
		period_end := NULL;
		RETURN;
	END IF;
	IF NOT isfinite(at) THEN
		RAISE EXCEPTION 'timestamp out of range'
			USING ERRCODE = 'datetime_field_overflow';
	END IF;
	t := at AT TIME ZONE 'UTC';
	IF count = 0 THEN
		s := date_trunc((ARRAY['minute', 'hour', 'day', 'week', 'month', 'year'])[kind], t);
		period_start := s AT TIME ZONE 'UTC';
		period_end := (s + (ARRAY['1 minute', '1 hour', '1 day', '7 days', '1 month', '1 year'])[kind]::interval)
					  AT TIME ZONE 'UTC';
		RETURN;
	END IF;
	a := anchor AT TIME ZONE 'UTC';
	IF kind IN (3, 4) THEN
		step := count * CASE WHEN kind = 4 THEN 7 ELSE 1 END;
		-- The C edition counts in microseconds of int64, as timestamptz
		-- does; a distance beyond that is out of range there, and here.
		IF abs(extract(epoch FROM t) - extract(epoch FROM a)) * 1000000 > 9223372036854775807 THEN
			RAISE EXCEPTION 'timestamp out of range'
				USING ERRCODE = 'datetime_field_overflow';
		END IF;
		k := floor((extract(epoch FROM t) - extract(epoch FROM a)) / (step::numeric * 86400));
		s := a + make_interval(days => (k * step)::integer);
		period_start := s AT TIME ZONE 'UTC';
		period_end := (s + make_interval(days => step)) AT TIME ZONE 'UTC';
		RETURN;
	END IF;
	step := count * CASE WHEN kind = 6 THEN 12 ELSE 1 END;
	-- Months between the two, counted in astronomical years: extract()
	-- gives 1 BC as -1, with no year 0.
	k := floor(((extract(year FROM t) + CASE WHEN extract(year FROM t) < 0 THEN 1 ELSE 0 END
				 - extract(year FROM a) - CASE WHEN extract(year FROM a) < 0 THEN 1 ELSE 0 END) * 12
				+ extract(month FROM t) - extract(month FROM a)) / step::numeric);
	s := a + make_interval(months => (k * step)::integer);
	-- The day and time within the month can put the estimate one period
	-- off either way.
	WHILE s > t LOOP
		k := k - 1;
		s := a + make_interval(months => (k * step)::integer);
	END LOOP;
	WHILE a + make_interval(months => ((k + 1) * step)::integer) <= t LOOP
		k := k + 1;
		s := a + make_interval(months => (k * step)::integer);
	END LOOP;
	period_start := s AT TIME ZONE 'UTC';
	period_end := (a + make_interval(months => ((k + 1) * step)::integer)) AT TIME ZONE 'UTC';
END
$$;

COMMENT ON FUNCTION entitlock._period_bounds(integer, integer, timestamptz, timestamptz) IS
'the bounds of the period holding a moment (internal to the trusted edition)';

--
-- The first instant of the period holding "at", and the first instant of
-- the next one (NULL for lifetime), as single SQL expressions that the
-- planner inlines into the calling statement: calendar periods cost no
-- function call, anchored ones call _period_bounds().
--
CREATE OR REPLACE FUNCTION entitlock._period_start(kind integer, count integer,
	anchor timestamptz, at timestamptz)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
	SELECT CASE
		WHEN kind OPERATOR(pg_catalog.=) 0 THEN '-infinity'::timestamptz
		WHEN count OPERATOR(pg_catalog.=) 0 THEN
			pg_catalog.timezone('UTC',
				pg_catalog.date_trunc(('{minute,hour,day,week,month,year}'::text[])[kind],
									  pg_catalog.timezone('UTC', at)))
		ELSE (entitlock._period_bounds(kind, count, anchor, at)).period_start
	END
$$;

CREATE OR REPLACE FUNCTION entitlock._period_end(kind integer, count integer,
	anchor timestamptz, at timestamptz)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
	SELECT CASE
		WHEN kind OPERATOR(pg_catalog.=) 0 THEN NULL::timestamptz
		WHEN count OPERATOR(pg_catalog.=) 0 THEN
			pg_catalog.timezone('UTC',
				pg_catalog.date_trunc(('{minute,hour,day,week,month,year}'::text[])[kind],
									  pg_catalog.timezone('UTC', at))
				OPERATOR(pg_catalog.+)
				('{1 minute,1 hour,1 day,7 days,1 month,1 year}'::interval[])[kind])
		ELSE (entitlock._period_bounds(kind, count, anchor, at)).period_end
	END
$$;

CREATE OR REPLACE FUNCTION entitlock.usage_period(
	period text,
	at timestamptz DEFAULT pg_catalog.now())
RETURNS TABLE (period_start timestamptz, period_end timestamptz)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE ROWS 1
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p record;
	b record;
BEGIN
	p := entitlock._period_parse(period);
	IF at IS NULL THEN
		RAISE EXCEPTION 'timestamp must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF p.kind = 0 THEN
		period_start := NULL;
		period_end := NULL;
	ELSE
		b := entitlock._period_bounds(p.kind, p.count, p.anchor, at);
		period_start := b.period_start;
		period_end := b.period_end;
	END IF;
	RETURN NEXT;
END
$$;

COMMENT ON FUNCTION entitlock.usage_period(text, timestamptz) IS
'the period (UTC calendar, or anchored at a moment) holding a moment, as the usage functions count it';

--
-- Argument checks, with the C edition's messages and SQLSTATEs.
--

-- A subject, feature or idempotency key: not NULL, not empty, at most 512
-- bytes (they are stored in full and indexed).
CREATE OR REPLACE FUNCTION entitlock._check_name(value text, what text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF value IS NULL THEN
		RAISE EXCEPTION '% must not be null', what
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF value = '' THEN
		RAISE EXCEPTION '% must not be empty', what
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF octet_length(value) > 512 THEN
		RAISE EXCEPTION '% is too long', what
			USING ERRCODE = 'program_limit_exceeded',
				  DETAIL = format('It is %s bytes long; the limit is 512 bytes.', octet_length(value));
	END IF;
END
$$;

COMMENT ON FUNCTION entitlock._check_name(text, text) IS
'checks a subject, feature or idempotency key argument (internal to the trusted edition)';

-- Writing functions refuse to run where nothing may be written, naming
-- themselves, as the C edition's do.
CREATE OR REPLACE FUNCTION entitlock._check_writable(cmdname text)
RETURNS void
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF current_setting('transaction_read_only') = 'on' THEN
		IF pg_is_in_recovery() THEN
			RAISE EXCEPTION 'cannot execute % during recovery', cmdname
				USING ERRCODE = 'read_only_sql_transaction';
		END IF;
		RAISE EXCEPTION 'cannot execute % in a read-only transaction', cmdname
			USING ERRCODE = 'read_only_sql_transaction';
	END IF;
END
$$;

-- A name or key for an error message: whole if short, else its first 64
-- characters and "...".
CREATE OR REPLACE FUNCTION entitlock._shown(value text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
	SELECT CASE WHEN pg_catalog.char_length(value) OPERATOR(pg_catalog.<=) 64 THEN value
				ELSE pg_catalog.left(value, 64) OPERATOR(pg_catalog.||) '...' END
$$;

-- The transaction lock that serialises every call using an idempotency
-- key (see the file header).
CREATE OR REPLACE FUNCTION entitlock._key_mutex(idempotency_key text)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	done boolean;	-- a void call's result, thrown away
	h bigint := hashtextextended(idempotency_key, 7308895158006574897);
BEGIN
	done := (pg_advisory_xact_lock((h >> 32)::integer, ((h << 32) >> 32)::integer)) IS NULL;
END
$$;

COMMENT ON FUNCTION entitlock._key_mutex(text) IS
'the transaction lock on a usage idempotency key, a two-integer advisory lock (internal to the trusted edition)';

--
-- One meter: the single-meter recording call that record_usage_if_under_limit
-- and record_usage make, after their argument checks.  conditional: record
-- only within usage_limit; otherwise record amount (negative gives back,
-- usage stays at zero or more) unless the total would pass bigint.
-- Returns the decision, the usage after it and the period's end, or for a
-- repeated idempotency key the first call's.
--
CREATE OR REPLACE FUNCTION entitlock._record(
	subject text, feature text, amount bigint, usage_limit bigint,
	pname text, pkind integer, pcount integer, panchor timestamptz,
	idempotency_key text, conditional boolean,
	OUT allowed boolean, OUT used bigint, OUT period_end timestamptz)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	done boolean;	-- a void call's result, thrown away
	b record;
	rec record;
	p record;
	pstart timestamptz;
	key_tid tid;
BEGIN
	b := entitlock._period_bounds(pkind, pcount, panchor, now());
	pstart := b.period_start;
	period_end := b.period_end;

	done := (pg_advisory_xact_lock_shared(entitlock.key(subject))) IS NULL;
	done := (pg_advisory_xact_lock_shared(entitlock.key(subject, feature))) IS NULL;

	IF idempotency_key IS NOT NULL THEN
		done := (entitlock._key_mutex(idempotency_key)) IS NULL;
		-- Claim the key with a placeholder row (used -1, never a real
		-- value), completed below.  Looking for the key with an INSERT
		-- rather than a SELECT reads no index page, so under SERIALIZABLE
		-- calls on different keys take no predicate locks that would fail
		-- each other.  Under REPEATABLE READ a key committed after the
		-- snapshot is a conflict the INSERT reports as 40001.
		INSERT INTO entitlock.usage_idempotency AS i
			   (subject, feature, idempotency_key, period, amount, allowed, used,
				period_end, recorded_at, refunded_at)
		VALUES (subject, feature, idempotency_key, pname, amount, false, -1,
				period_end, now(), NULL)
		ON CONFLICT ON CONSTRAINT usage_idempotency_pkey DO NOTHING
		RETURNING i.ctid INTO key_tid;
		IF NOT FOUND THEN
			SELECT i.period, i.amount, i.allowed, i.used, i.recorded_at INTO rec
			  FROM entitlock.usage_idempotency AS i
			 WHERE i.subject = subject AND i.feature = feature
			   AND i.idempotency_key = idempotency_key;
			IF rec.amount <> amount OR rec.period <> pname THEN
				RAISE EXCEPTION 'idempotency key "%" was already used with a different request',
					entitlock._shown(idempotency_key)
					USING ERRCODE = 'invalid_parameter_value',
						  DETAIL = format('The first call recorded amount %s for period "%s"; this call asks for amount %s for period "%s".',
										  rec.amount, rec.period, amount, pname);
			END IF;
			-- The first call's answer, in the first call's period.
			p := entitlock._period_parse(rec.period);
			b := entitlock._period_bounds(p.kind, p.count, p.anchor, rec.recorded_at);
			allowed := rec.allowed;
			used := rec.used;
			period_end := b.period_end;
			RETURN;
		END IF;
		IF EXISTS (SELECT 1 FROM entitlock.usage_limits_idempotency AS s
					WHERE s.idempotency_key = idempotency_key
					  AND EXISTS (SELECT 1 FROM unnest(s.subjects, s.features) AS e(subject, feature)
								   WHERE e.subject = subject AND e.feature = feature)) THEN
			RAISE EXCEPTION 'idempotency key "%" was already used with a different request',
				entitlock._shown(idempotency_key)
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'It is the key of a record_usage_if_under_limits() call on this subject and feature.';
		END IF;
	END IF;

	IF amount > 0 THEN
		IF amount > usage_limit THEN
			-- Usage is never below zero, so this never fits.
			SELECT c.used INTO used
			  FROM entitlock.usage_counter AS c
			 WHERE c.subject = subject AND c.feature = feature
			   AND c.period = pname AND c.period_start = pstart;
			used := coalesce(used, 0);
			allowed := false;
		ELSE
			INSERT INTO entitlock.usage_counter AS c
				   (subject, feature, period, period_start, period_end, used)
			VALUES (subject, feature, pname, pstart, period_end, amount)
			ON CONFLICT ON CONSTRAINT usage_counter_pkey DO UPDATE
			   SET used = c.used + amount
			 WHERE c.used <= usage_limit - amount
			RETURNING c.used INTO used;
			allowed := FOUND;
			IF NOT allowed THEN
				-- The row is locked now (ON CONFLICT locked it before it
				-- checked the condition), so this reads what was decided on.
				SELECT c.used INTO used
				  FROM entitlock.usage_counter AS c
				 WHERE c.subject = subject AND c.feature = feature
				   AND c.period = pname AND c.period_start = pstart;
			END IF;
		END IF;
		IF NOT allowed AND NOT conditional THEN
			RAISE EXCEPTION 'usage would be out of range for type bigint'
				USING ERRCODE = 'numeric_value_out_of_range',
					  DETAIL = format('Usage is %s; adding %s would exceed %s.',
									  used, amount, 9223372036854775807);
		END IF;
	ELSE
		-- A refund (unconditional calls only): never below zero.
		allowed := true;
		IF amount < 0 THEN
			UPDATE entitlock.usage_counter AS c
			   SET used = greatest(c.used + amount, 0)
			 WHERE c.subject = subject AND c.feature = feature
			   AND c.period = pname AND c.period_start = pstart
			RETURNING c.used INTO used;
		ELSE
			SELECT c.used INTO used
			  FROM entitlock.usage_counter AS c
			 WHERE c.subject = subject AND c.feature = feature
			   AND c.period = pname AND c.period_start = pstart;
		END IF;
		used := coalesce(used, 0);
	END IF;

	IF idempotency_key IS NOT NULL THEN
		-- The placeholder is this transaction's own row: found by its
		-- ctid, it is neither searched for in the index nor predicate
		-- locked.
		UPDATE entitlock.usage_idempotency AS i
		   SET allowed = allowed, used = used
		 WHERE i.ctid = key_tid;
	END IF;
END
$$;

COMMENT ON FUNCTION entitlock._record(text, text, bigint, bigint, text, integer, integer, timestamptz, text, boolean) IS
'records on one meter under its locks (internal to the trusted edition)';

CREATE OR REPLACE FUNCTION entitlock.record_usage_if_under_limit(
	subject text,
	feature text,
	amount bigint,
	usage_limit bigint,
	period text DEFAULT 'lifetime',
	idempotency_key text DEFAULT NULL)
RETURNS TABLE (allowed boolean, used bigint, remaining bigint,
			   period_end timestamptz)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE ROWS 1 SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	done boolean;	-- a void call's result, thrown away
	p record;
	r record;
	pname text;
	pkind integer;
	pcount integer;
	panchor timestamptz;
	pstart timestamptz;
	subject_bytes bytea;
BEGIN
	-- Few statements on the way of a valid call: each expression a
	-- transaction evaluates is compiled again in the next one, so every
	-- statement costs each call.  One test finds any bad argument; the
	-- checks below it then raise the first error, in the order of the C
	-- edition.
	IF subject IS NULL OR subject = '' OR octet_length(subject) > 512
	   OR feature IS NULL OR feature = '' OR octet_length(feature) > 512
	   OR period IS NULL OR amount IS NULL OR usage_limit IS NULL
	   OR amount <= 0 OR usage_limit < 0
	   OR idempotency_key = '' OR octet_length(idempotency_key) > 512 THEN
		done := (entitlock._check_name(subject, 'subject')) IS NULL;
		done := (entitlock._check_name(feature, 'feature')) IS NULL;
		IF period IS NULL THEN
			RAISE EXCEPTION 'period must not be null'
				USING ERRCODE = 'null_value_not_allowed';
		END IF;
		p := entitlock._period_parse(period);
		IF amount IS NULL THEN
			RAISE EXCEPTION 'amount must not be null'
				USING ERRCODE = 'null_value_not_allowed';
		END IF;
		IF usage_limit IS NULL THEN
			RAISE EXCEPTION 'usage limit must not be null'
				USING ERRCODE = 'null_value_not_allowed';
		END IF;
		IF idempotency_key IS NOT NULL THEN
			done := (entitlock._check_name(idempotency_key, 'idempotency key')) IS NULL;
		END IF;
		IF amount <= 0 THEN
			RAISE EXCEPTION 'amount must be greater than zero'
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Use record_usage() with a negative amount to give usage back.';
		END IF;
		IF usage_limit < 0 THEN
			RAISE EXCEPTION 'usage limit must not be negative'
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
	END IF;
	-- Calendar periods are read here (pname is then lower(period), the
	-- canonical name); anchored ones by _period_parse().
	pkind := array_position('{lifetime,minute,hour,day,week,month,year}'::text[], lower(period)) - 1;
	IF pkind IS NULL THEN
		p := entitlock._period_parse(period);
		pname := p.name;
		pkind := p.kind;
		pcount := p.count;
		panchor := p.anchor;
	ELSE
		pname := lower(period);
		pcount := 0;
	END IF;
	IF current_setting('transaction_read_only') = 'on' THEN
		done := (entitlock._check_writable('record_usage_if_under_limit()')) IS NULL;
	END IF;

	IF idempotency_key IS NOT NULL THEN
		r := entitlock._record(subject, feature, amount, usage_limit, pname, pkind,
							   pcount, panchor, idempotency_key, true);
		allowed := r.allowed;
		used := r.used;
		period_end := r.period_end;
	ELSE
		-- The call without a key, as _record() makes it, written out here
		-- because a call of a function returning a row costs more than the
		-- rest of the call.
		pstart := entitlock._period_start(pkind, pcount, panchor, now());
		period_end := entitlock._period_end(pkind, pcount, panchor, now());
		subject_bytes := convert_to(subject, 'UTF8');
		done := pg_advisory_xact_lock_shared(entitlock._xxh64(subject_bytes, 0)) IS NULL;
		done := pg_advisory_xact_lock_shared(
					entitlock._xxh64(subject_bytes || '\x00'::bytea || convert_to(feature, 'UTF8'), 0)) IS NULL;
		IF amount > usage_limit THEN
			-- Usage is never below zero, so this never fits.
			SELECT c.used INTO used
			  FROM entitlock.usage_counter AS c
			 WHERE c.subject = subject AND c.feature = feature
			   AND c.period = pname AND c.period_start = pstart;
			used := coalesce(used, 0);
			allowed := false;
		ELSE
			INSERT INTO entitlock.usage_counter AS c
				   (subject, feature, period, period_start, period_end, used)
			VALUES (subject, feature, pname, pstart, period_end, amount)
			ON CONFLICT ON CONSTRAINT usage_counter_pkey DO UPDATE
			   SET used = c.used + amount
			 WHERE c.used <= usage_limit - amount
			RETURNING c.used INTO used;
			allowed := FOUND;
			IF NOT allowed THEN
				-- The row is locked now; see _record().
				SELECT c.used INTO used
				  FROM entitlock.usage_counter AS c
				 WHERE c.subject = subject AND c.feature = feature
				   AND c.period = pname AND c.period_start = pstart;
			END IF;
		END IF;
	END IF;
	-- Usage above the limit (the limit was lowered) leaves nothing.
	remaining := greatest(usage_limit - used, 0);
	RETURN NEXT;
END
$$;

COMMENT ON FUNCTION entitlock.record_usage_if_under_limit(text, text, bigint, bigint, text, text) IS
'records amount in the current period only if usage stays within usage_limit; atomic per (subject, feature)';

CREATE OR REPLACE FUNCTION entitlock.record_usage(
	subject text,
	feature text,
	amount bigint,
	period text DEFAULT 'lifetime',
	idempotency_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	done boolean;	-- a void call's result, thrown away
	p record;
	r record;
	pname text;
	pkind integer;
	pcount integer;
	panchor timestamptz;
	pstart timestamptz;
	pend timestamptz;
	u bigint;
	subject_bytes bytea;
BEGIN
	done := (entitlock._check_name(subject, 'subject')) IS NULL;
	done := (entitlock._check_name(feature, 'feature')) IS NULL;
	IF period IS NULL THEN
		RAISE EXCEPTION 'period must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	-- Calendar periods are read here; anchored ones by _period_parse().
	pkind := CASE lower(period)
				 WHEN 'lifetime' THEN 0 WHEN 'minute' THEN 1 WHEN 'hour' THEN 2
				 WHEN 'day' THEN 3 WHEN 'week' THEN 4 WHEN 'month' THEN 5
				 WHEN 'year' THEN 6 END;
	IF pkind IS NOT NULL THEN
		pname := ('{lifetime,minute,hour,day,week,month,year}'::text[])[pkind + 1];
		pcount := 0;
	ELSE
		p := entitlock._period_parse(period);
		pname := p.name;
		pkind := p.kind;
		pcount := p.count;
		panchor := p.anchor;
	END IF;
	IF amount IS NULL THEN
		RAISE EXCEPTION 'amount must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF idempotency_key IS NOT NULL THEN
		done := (entitlock._check_name(idempotency_key, 'idempotency key')) IS NULL;
	END IF;
	done := (entitlock._check_writable('record_usage()')) IS NULL;

	-- Unconditional usage is only bounded by what bigint can hold.
	IF idempotency_key IS NOT NULL OR amount <= 0 THEN
		r := entitlock._record(subject, feature, amount, 9223372036854775807, pname,
							   pkind, pcount, panchor, idempotency_key, false);
		RETURN r.used;
	END IF;
	-- A positive amount without a key, as _record() records it.
	pstart := entitlock._period_start(pkind, pcount, panchor, now());
	pend := entitlock._period_end(pkind, pcount, panchor, now());
	subject_bytes := convert_to(subject, 'UTF8');
	done := pg_advisory_xact_lock_shared(entitlock._xxh64(subject_bytes, 0)) IS NULL;
	done := pg_advisory_xact_lock_shared(
				entitlock._xxh64(subject_bytes || decode('00', 'hex') || convert_to(feature, 'UTF8'), 0)) IS NULL;
	INSERT INTO entitlock.usage_counter AS c
		   (subject, feature, period, period_start, period_end, used)
	VALUES (subject, feature, pname, pstart, pend, amount)
	ON CONFLICT ON CONSTRAINT usage_counter_pkey DO UPDATE
	   SET used = c.used + amount
	 WHERE c.used <= 9223372036854775807 - amount
	RETURNING c.used INTO u;
	IF NOT FOUND THEN
		SELECT c.used INTO u
		  FROM entitlock.usage_counter AS c
		 WHERE c.subject = subject AND c.feature = feature
		   AND c.period = pname AND c.period_start = pstart;
		RAISE EXCEPTION 'usage would be out of range for type bigint'
			USING ERRCODE = 'numeric_value_out_of_range',
				  DETAIL = format('Usage is %s; adding %s would exceed %s.',
								  u, amount, 9223372036854775807);
	END IF;
	RETURN u;
END
$$;

COMMENT ON FUNCTION entitlock.record_usage(text, text, bigint, text, text) IS
'records amount (negative: a refund, never below zero) in the current period; returns the usage after it';

-- Reads with the statement's snapshot and takes no lock, like any SELECT.
CREATE OR REPLACE FUNCTION entitlock.usage(
	subject text,
	feature text,
	period text DEFAULT 'lifetime')
RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	done boolean;	-- a void call's result, thrown away
	p record;
	pname text;
	pkind integer;
	pcount integer;
	panchor timestamptz;
	u bigint;
BEGIN
	done := (entitlock._check_name(subject, 'subject')) IS NULL;
	done := (entitlock._check_name(feature, 'feature')) IS NULL;
	IF period IS NULL THEN
		RAISE EXCEPTION 'period must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	pkind := CASE lower(period)
				 WHEN 'lifetime' THEN 0 WHEN 'minute' THEN 1 WHEN 'hour' THEN 2
				 WHEN 'day' THEN 3 WHEN 'week' THEN 4 WHEN 'month' THEN 5
				 WHEN 'year' THEN 6 END;
	IF pkind IS NOT NULL THEN
		pname := ('{lifetime,minute,hour,day,week,month,year}'::text[])[pkind + 1];
		pcount := 0;
	ELSE
		p := entitlock._period_parse(period);
		pname := p.name;
		pkind := p.kind;
		pcount := p.count;
		panchor := p.anchor;
	END IF;
	SELECT c.used INTO u
	  FROM entitlock.usage_counter AS c
	 WHERE c.subject = subject AND c.feature = feature
	   AND c.period = pname
	   AND c.period_start = entitlock._period_start(pkind, pcount, panchor, now());
	RETURN coalesce(u, 0);
END
$$;

COMMENT ON FUNCTION entitlock.usage(text, text, text) IS
'usage of (subject, feature) in the current period, 0 if none';

CREATE OR REPLACE FUNCTION entitlock.usage_limit(
	subject text,
	feature text,
	usage_limit bigint,
	period text DEFAULT 'lifetime')
RETURNS entitlock.usage_limit
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	done boolean;	-- a void call's result, thrown away
	p record;
	pkind integer;
	result entitlock.usage_limit;
BEGIN
	done := (entitlock._check_name(subject, 'subject')) IS NULL;
	done := (entitlock._check_name(feature, 'feature')) IS NULL;
	IF usage_limit IS NULL THEN
		RAISE EXCEPTION 'usage limit must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF usage_limit < 0 THEN
		RAISE EXCEPTION 'usage limit must not be negative'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF period IS NULL THEN
		RAISE EXCEPTION 'period must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	-- Calendar periods are read here; anchored ones by _period_parse().
	pkind := CASE lower(period)
				 WHEN 'lifetime' THEN 0 WHEN 'minute' THEN 1 WHEN 'hour' THEN 2
				 WHEN 'day' THEN 3 WHEN 'week' THEN 4 WHEN 'month' THEN 5
				 WHEN 'year' THEN 6 END;
	IF pkind IS NOT NULL THEN
		result := ROW(subject, feature, usage_limit,
					  ('{lifetime,minute,hour,day,week,month,year}'::text[])[pkind + 1]);
	ELSE
		p := entitlock._period_parse(period);
		result := ROW(subject, feature, usage_limit, p.name);
	END IF;
	RETURN result;
END
$$;

COMMENT ON FUNCTION entitlock.usage_limit(text, text, bigint, text) IS
'a checked entitlock.usage_limit, for record_usage_if_under_limits()';

--
-- Several limits in one call (1.1): every meter is locked, in canonical
-- order, before any is read; every limit is decided; then amount is
-- recorded on every meter or on none.
--
CREATE OR REPLACE FUNCTION entitlock.record_usage_if_under_limits(
	limits entitlock.usage_limit[],
	amount bigint DEFAULT 1,
	idempotency_key text DEFAULT NULL)
RETURNS TABLE (subject text, feature text, period text, allowed boolean,
			   used bigint, remaining bigint, period_end timestamptz)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE ROWS 3 SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	done boolean;	-- a void call's result, thrown away
	n integer;
	i integer;
	j integer;
	lim entitlock.usage_limit;
	p record;
	b record;
	-- per limit, in the caller's order
	subjects text[] := '{}';
	features text[] := '{}';
	pnames text[] := '{}';
	pkinds integer[] := '{}';
	pcounts integer[] := '{}';
	panchors timestamptz[] := '{}';
	pstarts timestamptz[] := '{}';
	pends timestamptz[] := '{}';
	lims bigint[] := '{}';
	pair_keys bigint[] := '{}';
	subject_keys bigint[] := '{}';
	subject_bytes bytea;
	pname text;
	pkind integer;
	pcount integer;
	panchor timestamptz;
	olds bigint[];
	news bigint[];
	oks boolean[];
	created boolean[];
	ord integer[];
	all_ok boolean := true;
	k bigint;
	u bigint;
	t tid;
	tids tid[];
	key_tid tid;
	serializable boolean;
	rec record;
BEGIN
	IF limits IS NULL THEN
		RAISE EXCEPTION 'limits must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF array_ndims(limits) > 1 THEN
		RAISE EXCEPTION 'limits must be a one-dimensional array'
			USING ERRCODE = 'array_subscript_error';
	END IF;
	n := coalesce(cardinality(limits), 0);
	IF n = 0 THEN
		RAISE EXCEPTION 'limits must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF n > 100 THEN
		RAISE EXCEPTION 'too many usage limits in one call'
			USING ERRCODE = 'program_limit_exceeded',
				  DETAIL = format('There are %s; the limit is %s.', n, 100);
	END IF;
	i := 0;
	FOREACH lim IN ARRAY limits LOOP
		i := i + 1;
		IF lim IS NULL THEN
			RAISE EXCEPTION 'usage limit must not be null'
				USING ERRCODE = 'null_value_not_allowed';
		END IF;
		done := (entitlock._check_name(lim.subject, 'subject')) IS NULL;
		done := (entitlock._check_name(lim.feature, 'feature')) IS NULL;
		IF lim.usage_limit IS NULL THEN
			RAISE EXCEPTION 'usage limit must not be null'
				USING ERRCODE = 'null_value_not_allowed';
		END IF;
		IF lim.usage_limit < 0 THEN
			RAISE EXCEPTION 'usage limit must not be negative'
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
		IF lim.period IS NULL THEN
			RAISE EXCEPTION 'period must not be null'
				USING ERRCODE = 'null_value_not_allowed';
		END IF;
		-- Calendar periods are read here; anchored ones by _period_parse().
		pkind := CASE lower(lim.period)
					 WHEN 'lifetime' THEN 0 WHEN 'minute' THEN 1 WHEN 'hour' THEN 2
					 WHEN 'day' THEN 3 WHEN 'week' THEN 4 WHEN 'month' THEN 5
					 WHEN 'year' THEN 6 END;
		IF pkind IS NOT NULL THEN
			pname := ('{lifetime,minute,hour,day,week,month,year}'::text[])[pkind + 1];
			pcount := 0;
			panchor := NULL;
		ELSE
			p := entitlock._period_parse(lim.period);
			pname := p.name;
			pkind := p.kind;
			pcount := p.count;
			panchor := p.anchor;
		END IF;
		subjects := subjects || lim.subject;
		features := features || lim.feature;
		pnames := pnames || pname;
		pkinds := pkinds || pkind;
		pcounts := pcounts || pcount;
		panchors := panchors || panchor;
		pstarts := pstarts || entitlock._period_start(pkind, pcount, panchor, now());
		pends := pends || entitlock._period_end(pkind, pcount, panchor, now());
		lims := lims || lim.usage_limit;
		subject_bytes := convert_to(lim.subject, 'UTF8');
		subject_keys := subject_keys || entitlock._xxh64(subject_bytes, 0);
		pair_keys := pair_keys || entitlock._xxh64(subject_bytes || decode('00', 'hex')
													|| convert_to(lim.feature, 'UTF8'), 0);
	END LOOP;
	IF amount IS NULL THEN
		RAISE EXCEPTION 'amount must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF amount <= 0 THEN
		RAISE EXCEPTION 'amount must be greater than zero'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use record_usage() with a negative amount to give usage back.';
	END IF;
	IF idempotency_key IS NOT NULL THEN
		done := (entitlock._check_name(idempotency_key, 'idempotency key')) IS NULL;
	END IF;

	done := (entitlock._check_writable('record_usage_if_under_limits()')) IS NULL;
	-- The canonical order: by pair key, then the names byte by byte (should
	-- two pairs share a key), period kind, N, anchor and period.
	SELECT array_agg(x.i ORDER BY pair_keys[x.i], subjects[x.i] COLLATE "C",
					 features[x.i] COLLATE "C", pkinds[x.i], pcounts[x.i],
					 panchors[x.i], pstarts[x.i])
	  INTO ord
	  FROM generate_series(1, n) AS x(i);

	-- The same meter twice is a caller's mistake.
	FOR j IN 2 .. n LOOP
		IF subjects[ord[j]] = subjects[ord[j - 1]] AND features[ord[j]] = features[ord[j - 1]]
		   AND pnames[ord[j]] = pnames[ord[j - 1]] THEN
			RAISE EXCEPTION 'usage limits % and % name the same meter',
				least(ord[j], ord[j - 1]), greatest(ord[j], ord[j - 1])
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('Both are subject "%s", feature "%s", period "%s".',
									  entitlock._shown(subjects[ord[j]]),
									  entitlock._shown(features[ord[j]]), pnames[ord[j]]);
		END IF;
	END LOOP;

	-- Shared locks on the subjects, then on the pairs, each in ascending
	-- key order as lock_all() takes its keys.
	FOR k IN SELECT DISTINCT s.k FROM unnest(subject_keys) AS s(k) ORDER BY 1 LOOP
		done := (pg_advisory_xact_lock_shared(k)) IS NULL;
	END LOOP;
	FOR k IN SELECT DISTINCT s.k FROM unnest(pair_keys) AS s(k) ORDER BY 1 LOOP
		done := (pg_advisory_xact_lock_shared(k)) IS NULL;
	END LOOP;

	IF idempotency_key IS NOT NULL THEN
		done := (entitlock._key_mutex(idempotency_key)) IS NULL;
		-- Claimed with a placeholder row, completed below; see _record()
		-- for why an INSERT rather than a SELECT.
		INSERT INTO entitlock.usage_limits_idempotency AS s
			   (idempotency_key, amount, subjects, features, periods, allowed, used,
				period_ends, refunded, recorded_at)
		VALUES (idempotency_key, amount, subjects, features, pnames,
				array_fill(false, ARRAY[n]), array_fill(-1::bigint, ARRAY[n]),
				pends, array_fill(false, ARRAY[n]), now())
		ON CONFLICT ON CONSTRAINT usage_limits_idempotency_pkey DO NOTHING
		RETURNING s.ctid INTO key_tid;
		IF NOT FOUND THEN
			SELECT * INTO rec FROM entitlock.usage_limits_idempotency AS s
			 WHERE s.idempotency_key = idempotency_key;
		END IF;
		IF key_tid IS NULL THEN
			IF rec.amount <> amount THEN
				RAISE EXCEPTION 'idempotency key "%" was already used with a different request',
				entitlock._shown(idempotency_key)
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('The first call recorded amount %s; this call asks for amount %s.',
						   rec.amount, amount);
			END IF;
			IF cardinality(rec.subjects) <> n THEN
				RAISE EXCEPTION 'idempotency key "%" was already used with a different request',
				entitlock._shown(idempotency_key)
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('The first call named %s usage limits; this call names %s.',
						   cardinality(rec.subjects), n);
			END IF;
			FOR i IN 1 .. n LOOP
				j := NULL;
				SELECT e.ord INTO j
				  FROM unnest(rec.subjects, rec.features, rec.periods) WITH ORDINALITY
					   AS e(subject, feature, period, ord)
				 WHERE e.subject = subjects[i] AND e.feature = features[i]
				   AND e.period = pnames[i];
				IF j IS NULL THEN
					RAISE EXCEPTION 'idempotency key "%" was already used with a different request',
				entitlock._shown(idempotency_key)
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('The first call did not name subject "%s", feature "%s", period "%s".',
							   entitlock._shown(subjects[i]), entitlock._shown(features[i]), pnames[i]);
				END IF;
				-- The first call's answer, in the first call's period.
				b := entitlock._period_bounds(pkinds[i], pcounts[i], panchors[i], rec.recorded_at);
				subject := subjects[i];
				feature := features[i];
				period := pnames[i];
				allowed := rec.allowed[j];
				used := rec.used[j];
				remaining := greatest(lims[i] - rec.used[j], 0);
				period_end := b.period_end;
				RETURN NEXT;
			END LOOP;
			RETURN;
		END IF;
		-- The key may not be a single-meter call's on one of the pairs.
		SELECT i.subject, i.feature INTO rec
		  FROM entitlock.usage_idempotency AS i
		  JOIN unnest(subjects, features) AS e(subject, feature)
			ON i.subject = e.subject AND i.feature = e.feature
		 WHERE i.idempotency_key = idempotency_key
		 LIMIT 1;
		IF FOUND THEN
			RAISE EXCEPTION 'idempotency key "%" was already used with a different request',
				entitlock._shown(idempotency_key)
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('It is the key of a single-limit call on subject "%s", feature "%s".',
					   entitlock._shown(rec.subject), entitlock._shown(rec.feature));
		END IF;
	END IF;

	-- Lock every counter row in canonical order, creating missing ones.
	-- Under SERIALIZABLE a row is locked by an INSERT ... ON CONFLICT DO
	-- UPDATE that leaves it as it is, which reads no index page and so
	-- takes no predicate lock that would fail calls on other meters; a
	-- row it creates holds -1 until it is written below.  Elsewhere a
	-- SELECT ... FOR NO KEY UPDATE locks it without writing.
	olds := array_fill(0::bigint, ARRAY[n]);
	created := array_fill(false, ARRAY[n]);
	tids := array_fill(NULL::tid, ARRAY[n]);
	serializable := current_setting('transaction_isolation') = 'serializable';
	FOREACH i IN ARRAY ord LOOP
		LOOP
			IF serializable THEN
				INSERT INTO entitlock.usage_counter AS c
					   (subject, feature, period, period_start, period_end, used)
				VALUES (subjects[i], features[i], pnames[i], pstarts[i], pends[i], -1)
				ON CONFLICT ON CONSTRAINT usage_counter_pkey DO UPDATE
				   SET used = c.used
				RETURNING c.used, c.ctid INTO u, t;
				tids[i] := t;
				IF u = -1 THEN
					created[i] := true;
					u := 0;
				END IF;
				olds[i] := u;
				EXIT;
			END IF;
			SELECT c.used, c.ctid INTO u, t
			  FROM entitlock.usage_counter AS c
			 WHERE c.subject = subjects[i] AND c.feature = features[i]
			   AND c.period = pnames[i] AND c.period_start = pstarts[i]
			   FOR NO KEY UPDATE;
			IF FOUND THEN
				olds[i] := u;
				tids[i] := t;
				EXIT;
			END IF;
			INSERT INTO entitlock.usage_counter AS c
				   (subject, feature, period, period_start, period_end, used)
			VALUES (subjects[i], features[i], pnames[i], pstarts[i], pends[i], 0)
			ON CONFLICT ON CONSTRAINT usage_counter_pkey DO NOTHING
			RETURNING c.ctid INTO t;
			IF FOUND THEN
				created[i] := true;
				olds[i] := 0;
				tids[i] := t;
				EXIT;
			END IF;
		END LOOP;
	END LOOP;

	-- Decide every limit, then write all or none, in canonical order.
	oks := array_fill(false, ARRAY[n]);
	news := olds;
	FOR i IN 1 .. n LOOP
		oks[i] := amount <= lims[i] AND olds[i] <= lims[i] - amount;
		all_ok := all_ok AND oks[i];
	END LOOP;
	FOREACH i IN ARRAY ord LOOP
		IF all_ok THEN
			news[i] := olds[i] + amount;
			UPDATE entitlock.usage_counter AS c
			   SET used = news[i]
			 WHERE c.ctid = tids[i];
		ELSIF created[i] THEN
			DELETE FROM entitlock.usage_counter AS c
			 WHERE c.ctid = tids[i];
		END IF;
	END LOOP;

	IF idempotency_key IS NOT NULL THEN
		UPDATE entitlock.usage_limits_idempotency AS s
		   SET allowed = oks, used = news
		 WHERE s.ctid = key_tid;
	END IF;

	FOR i IN 1 .. n LOOP
		subject := subjects[i];
		feature := features[i];
		period := pnames[i];
		allowed := oks[i];
		used := news[i];
		remaining := greatest(lims[i] - news[i], 0);
		period_end := pends[i];
		RETURN NEXT;
	END LOOP;
END
$$;

COMMENT ON FUNCTION entitlock.record_usage_if_under_limits(entitlock.usage_limit[], bigint, text) IS
'records amount on every meter of limits if every limit has room, on none otherwise; one row per limit';

--
-- Give amount back to the meter's counter of the period holding
-- recorded_at, under the caller's locks; returns how much it gave back
-- (less than amount when usage was lower, 0 when the counter is gone).
--
CREATE OR REPLACE FUNCTION entitlock._give_back(subject text, feature text,
	period text, recorded_at timestamptz, amount bigint)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	p record;
	b record;
	u bigint;
BEGIN
	p := entitlock._period_parse(period);
	b := entitlock._period_bounds(p.kind, p.count, p.anchor, recorded_at);
	SELECT c.used INTO u
	  FROM entitlock.usage_counter AS c
	 WHERE c.subject = subject AND c.feature = feature
	   AND c.period = p.name AND c.period_start = b.period_start
	   FOR NO KEY UPDATE;
	IF NOT FOUND OR u = 0 THEN
		RETURN 0;
	END IF;
	UPDATE entitlock.usage_counter AS c
	   SET used = greatest(u - amount, 0)
	 WHERE c.subject = subject AND c.feature = feature
	   AND c.period = p.name AND c.period_start = b.period_start;
	RETURN u - greatest(u - amount, 0);
END
$$;

CREATE OR REPLACE FUNCTION entitlock.refund_usage(
	subject text,
	feature text,
	idempotency_key text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	done boolean;	-- a void call's result, thrown away
	rec record;
	given bigint := 0;
	g bigint;
	i integer;
	due boolean[];
	kinds integer[];
	x record;
BEGIN
	done := (entitlock._check_name(subject, 'subject')) IS NULL;
	done := (entitlock._check_name(feature, 'feature')) IS NULL;
	IF idempotency_key IS NULL THEN
		RAISE EXCEPTION 'idempotency key must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	done := (entitlock._check_name(idempotency_key, 'idempotency key')) IS NULL;

	done := (entitlock._check_writable('refund_usage()')) IS NULL;
	done := (pg_advisory_xact_lock_shared(entitlock.key(subject))) IS NULL;
	done := (pg_advisory_xact_lock_shared(entitlock.key(subject, feature))) IS NULL;
	done := (entitlock._key_mutex(idempotency_key)) IS NULL;

	SELECT i.period, i.amount, i.allowed, i.recorded_at, i.refunded_at INTO rec
	  FROM entitlock.usage_idempotency AS i
	 WHERE i.subject = subject AND i.feature = feature
	   AND i.idempotency_key = idempotency_key
	   FOR NO KEY UPDATE;
	IF FOUND THEN
		IF rec.allowed AND rec.amount > 0 AND rec.refunded_at IS NULL THEN
			UPDATE entitlock.usage_idempotency AS i
			   SET refunded_at = now()
			 WHERE i.subject = subject AND i.feature = feature
			   AND i.idempotency_key = idempotency_key;
			given := entitlock._give_back(subject, feature, rec.period,
										  rec.recorded_at, rec.amount);
		END IF;
		RETURN given;
	END IF;

	-- A record_usage_if_under_limits() call's key.  A set call records on
	-- every meter or on none: one whose elements were not all allowed
	-- recorded nothing.
	SELECT * INTO rec FROM entitlock.usage_limits_idempotency AS s
	 WHERE s.idempotency_key = idempotency_key
	   FOR NO KEY UPDATE;
	IF NOT FOUND OR false = ANY (rec.allowed) THEN
		RETURN 0;
	END IF;
	due := ARRAY(SELECT e.subject = subject AND e.feature = feature AND NOT e.refunded
				   FROM unnest(rec.subjects, rec.features, rec.refunded) WITH ORDINALITY
						AS e(subject, feature, refunded, ord)
				  ORDER BY e.ord);
	IF NOT true = ANY (due) THEN
		RETURN 0;
	END IF;
	UPDATE entitlock.usage_limits_idempotency AS s
	   SET refunded = ARRAY(SELECT e.refunded OR e.due
							  FROM unnest(s.refunded, due) WITH ORDINALITY AS e(refunded, due, ord)
							 ORDER BY e.ord)
	 WHERE s.idempotency_key = idempotency_key;
	-- The pair's counters in canonical order, that is by period.
	FOR x IN SELECT e.period, p.kind, p.count, p.anchor
			   FROM unnest(rec.periods, due) AS e(period, due)
			   CROSS JOIN LATERAL entitlock._period_parse(e.period) AS p
			  WHERE e.due
			  ORDER BY p.kind, p.count, p.anchor LOOP
		g := entitlock._give_back(subject, feature, x.period, rec.recorded_at, rec.amount);
		given := greatest(given, g);
	END LOOP;
	RETURN given;
END
$$;

COMMENT ON FUNCTION entitlock.refund_usage(text, text, text) IS
'gives back, once, what the call with this idempotency key recorded on (subject, feature), in the period it was recorded in';

--
-- Resetting a meter (1.2): the current period's usage to 0, under the
-- recorders' locks and the counter row's lock, so that a recorder after
-- it sees 0 and a recorder before it is what it removes.  Idempotency
-- keys are left alone: a retry of a call made before the reset still gets
-- the first call's answer, and refund_usage() of it gives back only what
-- is left.
--
CREATE OR REPLACE FUNCTION entitlock.reset_usage(
	subject text,
	feature text,
	period text DEFAULT 'lifetime')
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	done boolean;	-- a void call's result, thrown away
	p record;
	b record;
	u bigint;
BEGIN
	done := (entitlock._check_name(subject, 'subject')) IS NULL;
	done := (entitlock._check_name(feature, 'feature')) IS NULL;
	p := entitlock._period_parse(period);
	b := entitlock._period_bounds(p.kind, p.count, p.anchor, now());

	done := (entitlock._check_writable('reset_usage()')) IS NULL;
	done := (pg_advisory_xact_lock_shared(entitlock.key(subject))) IS NULL;
	done := (pg_advisory_xact_lock_shared(entitlock.key(subject, feature))) IS NULL;

	SELECT c.used INTO u
	  FROM entitlock.usage_counter AS c
	 WHERE c.subject = subject AND c.feature = feature
	   AND c.period = p.name AND c.period_start = b.period_start
	   FOR NO KEY UPDATE;
	IF NOT FOUND THEN
		RETURN 0;
	END IF;
	IF u <> 0 THEN
		UPDATE entitlock.usage_counter AS c
		   SET used = 0
		 WHERE c.subject = subject AND c.feature = feature
		   AND c.period = p.name AND c.period_start = b.period_start;
	END IF;
	RETURN u;
END
$$;

COMMENT ON FUNCTION entitlock.reset_usage(text, text, text) IS
'sets the usage of (subject, feature, period) in the current period to 0 and returns the usage removed';

--
-- Forgetting old periods: counters of periods that ended by "before", and
-- idempotency keys recorded before it.  The C edition's function, word for
-- word.
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

-- Reading or writing usage is granted explicitly; see README, Privileges.
-- The internal functions that touch tables or take locks on their behalf
-- are for the public ones only.
REVOKE ALL ON FUNCTION entitlock.record_usage_if_under_limit(text, text, bigint, bigint, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.record_usage(text, text, bigint, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.usage(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.record_usage_if_under_limits(entitlock.usage_limit[], bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.refund_usage(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.prune_usage(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.reset_usage(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock._record(text, text, bigint, bigint, text, integer, integer, timestamptz, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock._give_back(text, text, text, timestamptz, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock._key_mutex(text) FROM PUBLIC;
