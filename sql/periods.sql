--
-- periods: anchored billing periods '[N ]unit@anchor' (1.2, src/periods.c)
-- and reset_usage().  Calendar periods are in usage.sql; races of
-- reset_usage() with recorders in test/isolation/specs/usage-reset-*.spec.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS entitlock;
RESET client_min_messages;
SET DateStyle = ISO;
SET TimeZone = 'UTC';

CREATE FUNCTION pg_temp.outcome(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	result text;
BEGIN
	EXECUTE stmt INTO result;
	RETURN 'ok: ' || coalesce(left(result, 100), 'NULL');
EXCEPTION WHEN OTHERS THEN
	RETURN 'ERROR ' || SQLSTATE || ': ' || left(SQLERRM, 100);
END
$$;

-- Every stored usage row, to compare before and after an error.
CREATE FUNCTION pg_temp.stored() RETURNS text
LANGUAGE sql AS $$
	SELECT md5(coalesce(string_agg(c::text, ',' ORDER BY c::text), '')) ||
		   md5(coalesce((SELECT string_agg(i::text, ',' ORDER BY i::text)
						   FROM entitlock.usage_idempotency i), '')) ||
		   md5(coalesce((SELECT string_agg(s::text, ',' ORDER BY s::text)
						   FROM entitlock.usage_limits_idempotency s), ''))
	  FROM entitlock.usage_counter c
$$;

--
-- Period arithmetic, against hand-checked starts
--
-- Month-end anchors clamp to the month's last day and never drift: after
-- February the 31st comes back.
SELECT at, s.*
  FROM unnest(ARRAY['2026-01-31 10:00+00', '2026-02-28 09:59:59.999999+00',
					'2026-02-28 10:00+00', '2026-03-31 09:00+00',
					'2026-03-31 10:00+00', '2026-04-30 10:00+00',
					'2026-05-30 12:00+00', '2026-05-31 10:00+00',
					'2028-02-29 10:00+00', '2025-12-31 10:00+00',
					'2025-12-31 09:00+00']::timestamptz[]) AS at,
	   entitlock.usage_period('month@2026-01-31 10:00:00+00', at) AS s
 ORDER BY at;
-- Anchors on the 29th and 30th.
SELECT p, at, s.*
  FROM unnest(ARRAY['month@2026-01-29', 'month@2026-01-30',
					'month@2027-01-29']) AS p,
	   unnest(ARRAY['2026-02-15', '2026-03-29', '2028-02-29 12:00',
					'2027-03-01']::timestamptz[]) AS at,
	   entitlock.usage_period(p, at) AS s
 ORDER BY p, at;
-- A February 29 anchor: yearly periods start on February 28 in common
-- years and February 29 in leap years; monthly ones on the 29th (28th in
-- common Februaries).
SELECT p, at, s.*
  FROM unnest(ARRAY['year@2024-02-29 00:00+00', 'month@2024-02-29',
					'4 years@2024-02-29']) AS p,
	   unnest(ARRAY['2025-02-28', '2025-02-27 23:59', '2028-02-29',
					'2028-02-28 12:00', '2100-03-01', '2023-03-01',
					'2025-03-29']::timestamptz[]) AS at,
	   entitlock.usage_period(p, at) AS s
 ORDER BY p, at;
-- N > 1, anchors before and after the moment (periods also before the
-- anchor), days and weeks as fixed lengths.
SELECT p, at, s.*
  FROM unnest(ARRAY['3 months@2026-01-15', '12 months@2026-01-31 23:00+00',
					'2 weeks@2026-01-05 08:00+00', 'week@2026-01-07',
					'7 days@2026-01-07', 'day@2026-01-01 06:30+00',
					'10 days@2030-01-01', '1000 years@2000-01-01',
					'2 years@2020-06-30 12:00+00']) AS p,
	   unnest(ARRAY['2026-01-15 00:00+00', '2026-01-14 23:59:59.999999+00',
					'2025-11-30', '2031-06-15']::timestamptz[]) AS at,
	   entitlock.usage_period(p, at) AS s
 ORDER BY p, at;
-- Anchors BC and far away; moments at the ends of timestamptz.
SELECT p, at, pg_temp.outcome(format('SELECT entitlock.usage_period(%L, %L)::text', p, at))
  FROM unnest(ARRAY['month@0001-01-31 00:00+00 BC', 'day@294276-12-31 00:00+00',
					'1000 weeks@4713-11-24 00:00+00 BC', 'year@2000-01-01']) AS p,
	   unnest(ARRAY['2026-02-01 00:00+00', '294276-12-31 23:59:59+00',
					'4713-11-24 00:00+00 BC', 'infinity']) AS at
 ORDER BY p, at;

--
-- The canonical spelling: one per period, whatever the offset, the case,
-- N = 1 or none, the plural, spaces or fractions; whole weeks written in
-- days are weeks, whole years written in months are years.
--
SELECT p, (entitlock.usage_limit('s', 'f', 1, p)).period AS canonical
  FROM unnest(ARRAY['month@2026-01-31 10:00:00+00', '1 month@2026-01-31 10:00:00+00',
					'1 months@2026-01-31 05:00-05', 'MONTH@2026-01-31T10:00:00Z',
					'Month @ 2026-01-31 15:45+05:45', 'month@2026-01-31 10:00 UTC',
					'month@2026-01-31 05:00 America/New_York',
					'month@January 31, 2026 10:00 +00',
					'3 months@2026-01-15', '3 Months@2026-01-15 00:00:00.000000+00',
					'001 day@2026-01-01 00:00:00.5+00', '2 weeks@2026-01-05',
					'year@0044-03-15 12:00 BC', '1000 years@2000-01-01',
					'14 days@2026-01-05', '7 days@2026-01-05', '15 days@2026-01-05',
					'12 months@2026-01-31', '24 Months@2026-01-31', '18 months@2026-01-31',
					'1000 days@2026-01-01', '994 days@2026-01-01']) AS p
 ORDER BY p;
-- Calendar periods keep the names 1.0 and 1.1 stored.
SELECT p, (entitlock.usage_limit('s', 'f', 1, p)).period AS canonical
  FROM unnest(ARRAY['LIFETIME', 'Minute', 'hour', 'DAY', 'week', 'Month', 'year']) AS p
 ORDER BY p;

--
-- Answers do not depend on the session's TimeZone, with DST or an odd
-- offset: an anchor written without a zone is UTC.
--
CREATE TEMP TABLE tz_answers (tz text, p text, at timestamptz, canonical text,
							  period_start timestamptz, period_end timestamptz);
CREATE FUNCTION pg_temp.answers(tz text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM set_config('TimeZone', tz, true);
	INSERT INTO tz_answers
	SELECT tz, p, at, (entitlock.usage_limit('s', 'f', 1, p)).period, s.*
	  FROM unnest(ARRAY['month@2026-03-08 02:30', 'month@2026-01-31',
						'day@2026-03-08 07:00', 'week@2026-11-01 01:30',
						'3 months@2026-01-15', 'year@2024-02-29']) AS p,
		   unnest(ARRAY['2026-03-08 06:59:59+00', '2026-03-08 07:00+00',
						'2026-11-01 05:30+00', '2026-11-01 06:30+00',
						'2027-02-28 23:00+00']::timestamptz[]) AS at,
		   entitlock.usage_period(p, at) AS s;
END
$$;
BEGIN;
SELECT pg_temp.answers(tz)
  FROM unnest(ARRAY['UTC', 'America/New_York', 'Asia/Kathmandu', 'Pacific/Chatham']) AS tz;
COMMIT;
SELECT count(*) AS answers, count(DISTINCT tz) AS zones,
	   count(DISTINCT (p, at, canonical, period_start, period_end)) AS distinct_answers
  FROM tz_answers;
SELECT DISTINCT p, canonical FROM tz_answers ORDER BY p;
-- Recording in one zone and reading in another meet on one meter.
BEGIN;
SET LOCAL TimeZone = 'America/New_York';
SELECT used FROM entitlock.record_usage_if_under_limit('per-tz:1', 'f', 2, 10, 'month@2026-01-31');
SET LOCAL TimeZone = 'Asia/Kathmandu';
SELECT used FROM entitlock.record_usage_if_under_limit('per-tz:1', 'f', 3, 10, 'month@2026-01-31 05:45+05:45');
SELECT entitlock.usage('per-tz:1', 'f', '1 month@2026-01-30 19:00-05');
COMMIT;
SELECT subject, period, used,
	   (period_start, period_end) = (SELECT * FROM entitlock.usage_period('month@2026-01-31', now())) AS current_period
  FROM entitlock.usage_counter WHERE subject = 'per-tz:1';

--
-- Every usage function takes anchored periods.
--
SET TimeZone = 'UTC';
SELECT allowed, used, remaining,
	   period_end = (SELECT period_end FROM entitlock.usage_period('2 weeks@2026-01-05', now())) AS end_ok
  FROM entitlock.record_usage_if_under_limit('per-a:1', 'api', 3, 5, '2 weeks@2026-01-05');
SELECT allowed, used, remaining
  FROM entitlock.record_usage_if_under_limit('per-a:1', 'api', 3, 5, '2 weeks@2026-01-05 00:00:00+00');
SELECT entitlock.record_usage('per-a:1', 'api', 1, '2 WEEKS@2026-01-04 19:00-05');
SELECT entitlock.record_usage('per-a:1', 'api', -10, '15 days@2026-01-05');  -- another meter
SELECT entitlock.usage('per-a:1', 'api', '2 weeks@2026-01-05'),
	   entitlock.usage('per-a:1', 'api', '14 days@2026-01-05'),
	   entitlock.usage('per-a:1', 'api', '15 days@2026-01-05'),
	   entitlock.usage('per-a:1', 'api', '2 weeks@2026-01-06');
-- Sets: the same meter spelled twice is one meter; periods of one pair mix.
SELECT pg_temp.outcome($$SELECT count(*) FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('per-a:1', 'api', 10, 'month@2026-01-31'),
	entitlock.usage_limit('per-a:1', 'api', 10, '1 month@2026-01-31 00:00:00+00')])$$);
SELECT subject, period, allowed, used, remaining, period_end IS NOT NULL AS has_end
  FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('per-a:1', 'api', 10, 'month@2026-01-31'),
	entitlock.usage_limit('per-a:1', 'api', 100, 'day'),
	entitlock.usage_limit('per-a:1', 'api', 6, '2 weeks@2026-01-05'),
	entitlock.usage_limit('per-a:1', 'api', 10, 'year@2020-07-01')], 2, 'set-1');
-- A retry spelled differently is the same call.
SELECT subject, period, allowed, used
  FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('per-a:1', 'api', 10, 'year@2020-06-30 20:00-04'),
	entitlock.usage_limit('per-a:1', 'api', 100, 'DAY'),
	entitlock.usage_limit('per-a:1', 'api', 6, '14 days @ 2026-01-05'),
	entitlock.usage_limit('per-a:1', 'api', 10, '1 months@2026-01-31')], 2, 'set-1');
-- Another anchor is another period, so another request.
SELECT pg_temp.outcome($$SELECT count(*) FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('per-a:1', 'api', 10, 'year@2020-07-01'),
	entitlock.usage_limit('per-a:1', 'api', 100, 'day'),
	entitlock.usage_limit('per-a:1', 'api', 6, '2 weeks@2026-01-05'),
	entitlock.usage_limit('per-a:1', 'api', 10, 'month@2026-02-28')], 2, 'set-1')$$);
SELECT period, used FROM entitlock.usage_counter WHERE subject = 'per-a:1' ORDER BY period;
-- Refunds give back into the anchored periods the call recorded in.
SELECT entitlock.refund_usage('per-a:1', 'api', 'set-1');
SELECT entitlock.refund_usage('per-a:1', 'api', 'set-1');
SELECT period, used FROM entitlock.usage_counter WHERE subject = 'per-a:1' ORDER BY period;
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('per-a:1', 'api', 4, 10, 'month@2026-01-31', 'one-1');
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('per-a:1', 'api', 4, 10, 'month@2026-01-30 19:00-05', 'one-1');
SELECT pg_temp.outcome($$SELECT used FROM entitlock.record_usage_if_under_limit('per-a:1', 'api', 4, 10, 'month@2026-01-30', 'one-1')$$);
SELECT entitlock.refund_usage('per-a:1', 'api', 'one-1');
SELECT idempotency_key, period, amount, used FROM entitlock.usage_idempotency
 WHERE subject = 'per-a:1' ORDER BY idempotency_key;
-- A refund of a key goes into the period it was recorded in, computed from
-- recorded_at: a call made in an earlier anchored period refunds there.
BEGIN;
INSERT INTO entitlock.usage_counter
SELECT 'per-a:2', 'api', 'month@2026-01-31 00:00:00+00', s.period_start, s.period_end, 7
  FROM entitlock.usage_period('month@2026-01-31', '2026-03-15 00:00+00') s;
INSERT INTO entitlock.usage_idempotency
VALUES ('per-a:2', 'api', 'old', 'month@2026-01-31 00:00:00+00', 5, true, 7,
		'2026-03-31 00:00+00', '2026-03-15 00:00+00', NULL);
SELECT entitlock.refund_usage('per-a:2', 'api', 'old');
SELECT period_start, period_end, used FROM entitlock.usage_counter WHERE subject = 'per-a:2';
ROLLBACK;

-- prune_usage() forgets anchored periods that ended, like calendar ones.
BEGIN;
INSERT INTO entitlock.usage_counter
SELECT 'per-p:1', 'api', 'month@2026-01-31 00:00:00+00', s.period_start, s.period_end, 1
  FROM unnest(ARRAY['2020-02-15', '2020-03-15', '2020-04-15']::timestamptz[]) AS at,
	   entitlock.usage_period('month@2026-01-31', at) s;
SELECT entitlock.prune_usage('2020-03-31 00:00+00') >= 2 AS pruned;
SELECT period_start, period_end FROM entitlock.usage_counter WHERE subject = 'per-p:1';
ROLLBACK;

--
-- Every bad period is 22023 (NULL 22004) and stores nothing, in every
-- function.
--
SELECT pg_temp.stored() AS before \gset
SELECT left(p, 40) AS p, pg_temp.outcome(format('SELECT entitlock.usage(''per-e:1'', ''f'', %L)', p))
  FROM unnest(ARRAY['minute@2026-01-01', 'hour@2026-01-01', 'lifetime@2026-01-01',
					'fortnight@2026-01-01', 'months2026-01-01', '@2026-01-01',
					' month@2026-01-01', '1month@2026-01-01', '1 @2026-01-01',
					'-1 month@2026-01-01', '+1 month@2026-01-01', '1.5 months@2026-01-01',
					'0 days@2026-01-01', '1001 days@2026-01-01', '000 weeks@2026-01-01',
					'99999999999999999999 days@2026-01-01', 'day@', 'day@ ',
					'day@garbage', 'day@2026-13-01', 'day@2026-02-30',
					'month@2026-01-31 10:00 Mars/Olympus', 'day@infinity',
					'day@-infinity', 'day@now', 'day@today', 'day@Tomorrow',
					'day@yesterday 10:00', 'day@2026-01-01@2026-01-02',
					'day@294277-01-01', 'day@4714-11-23 BC',
					'month@' || repeat('9', 300)]) AS p
 ORDER BY p;
SELECT p, pg_temp.outcome(format('SELECT entitlock.usage(''per-e:1'', ''f'', %s)', p))
  FROM unnest(ARRAY['NULL']) AS p;
SELECT f, pg_temp.outcome(format(f, p))
  FROM unnest(ARRAY[
	'SELECT allowed FROM entitlock.record_usage_if_under_limit(''per-e:1'', ''f'', 1, 5, %L)',
	'SELECT allowed FROM entitlock.record_usage_if_under_limit(''per-e:1'', ''f'', 1, 5, %L, ''k'')',
	'SELECT entitlock.record_usage(''per-e:1'', ''f'', 1, %L)',
	'SELECT entitlock.record_usage(''per-e:1'', ''f'', 1, %L, ''k'')',
	'SELECT count(*) FROM entitlock.record_usage_if_under_limits(ARRAY[entitlock.usage_limit(''per-e:1'', ''f'', 5, ''day''), ROW(''per-e:1'', ''f'', 5, %L)::entitlock.usage_limit])',
	'SELECT entitlock.usage_limit(''per-e:1'', ''f'', 5, %L)',
	'SELECT entitlock.reset_usage(''per-e:1'', ''f'', %L)',
	'SELECT count(*) FROM entitlock.usage_period(%L)']) AS f,
	   unnest(ARRAY['0 months@2026-01-01', 'year@tomorrow', NULL]) AS p
 ORDER BY f, p;
SELECT pg_temp.stored() = :'before' AS nothing_stored;

--
-- reset_usage()
--
SELECT entitlock.record_usage('per-r:1', 'api', 7, 'month@2026-01-31', 'before-reset');
SELECT entitlock.record_usage('per-r:1', 'api', 5);
SELECT entitlock.record_usage('per-r:1', 'api', 1, 'day');
-- Returns what it removed; only that meter's current period.
SELECT entitlock.reset_usage('per-r:1', 'api', '1 month@2026-01-31 00:00+00');
SELECT entitlock.usage('per-r:1', 'api', 'month@2026-01-31'),
	   entitlock.usage('per-r:1', 'api'), entitlock.usage('per-r:1', 'api', 'day');
SELECT entitlock.reset_usage('per-r:1', 'api', 'month@2026-01-31');
SELECT entitlock.reset_usage('per-r:1', 'api');
SELECT entitlock.reset_usage('per-r:1', 'nothing-here', 'week');
SELECT count(*) AS rows_for_nothing FROM entitlock.usage_counter WHERE feature = 'nothing-here';
-- A rollback undoes it.
BEGIN;
SELECT entitlock.reset_usage('per-r:1', 'api', 'day');
SELECT entitlock.usage('per-r:1', 'api', 'day');
ROLLBACK;
SELECT entitlock.usage('per-r:1', 'api', 'day');
-- So does a savepoint's.
BEGIN;
SAVEPOINT s;
SELECT entitlock.reset_usage('per-r:1', 'api', 'day');
ROLLBACK TO s;
SELECT entitlock.usage('per-r:1', 'api', 'day');
COMMIT;
-- A key recorded before the reset still replays its first answer, and
-- records nothing.
SELECT entitlock.record_usage('per-r:1', 'api', 7, 'month@2026-01-31', 'before-reset');
SELECT entitlock.usage('per-r:1', 'api', 'month@2026-01-31');
-- After the reset, usage starts again from zero; a refund of the old key
-- gives back only what is still there.
SELECT entitlock.record_usage('per-r:1', 'api', 3, 'month@2026-01-31');
SELECT entitlock.refund_usage('per-r:1', 'api', 'before-reset');
SELECT entitlock.usage('per-r:1', 'api', 'month@2026-01-31');
SELECT entitlock.refund_usage('per-r:1', 'api', 'before-reset');
-- The same for a set call's key.
SELECT allowed, used FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('per-r:2', 'api', 10, 'week@2026-01-07'),
	entitlock.usage_limit('per-r:2', 'api', 10)], 4, 'set-r');
SELECT entitlock.reset_usage('per-r:2', 'api', 'week@2026-01-07');
SELECT entitlock.record_usage('per-r:2', 'api', 1, 'week@2026-01-07');
SELECT allowed, used FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('per-r:2', 'api', 10, 'week@2026-01-07'),
	entitlock.usage_limit('per-r:2', 'api', 10)], 4, 'set-r');
SELECT entitlock.refund_usage('per-r:2', 'api', 'set-r');
SELECT entitlock.usage('per-r:2', 'api', 'week@2026-01-07'), entitlock.usage('per-r:2', 'api');
-- Conditional recording after a reset has the whole limit again.
SELECT allowed, used, remaining FROM entitlock.record_usage_if_under_limit('per-r:3', 'api', 5, 5, 'day@2026-01-01');
SELECT allowed, used, remaining FROM entitlock.record_usage_if_under_limit('per-r:3', 'api', 1, 5, 'day@2026-01-01');
SELECT entitlock.reset_usage('per-r:3', 'api', 'day@2026-01-01');
SELECT allowed, used, remaining FROM entitlock.record_usage_if_under_limit('per-r:3', 'api', 5, 5, 'day@2026-01-01');
-- Bad arguments are the usage functions' errors, and store nothing.
SELECT pg_temp.stored() AS before \gset
SELECT a, pg_temp.outcome(format('SELECT entitlock.reset_usage(%s)', a))
  FROM unnest(ARRAY['NULL, ''f''', '''per-r:1'', NULL', '''per-r:1'', ''api'', NULL',
					''''', ''f''', '''per-r:1'', ''''', '''per-r:1'', ''api'', ''days''',
					'repeat(''x'', 600), ''f''']) AS a
 ORDER BY a;
SELECT pg_temp.stored() = :'before' AS nothing_stored;
-- Read-only transactions cannot reset.
BEGIN READ ONLY;
SELECT pg_temp.outcome($$SELECT entitlock.reset_usage('per-r:1', 'api', 'day')$$);
ROLLBACK;

--
-- Anchored period starts against an independent calendar model: PostgreSQL's
-- own timestamp arithmetic (which clamps month ends), each start computed
-- from the anchor, for random anchors (half on the 28th to 31st) and
-- moments (some exactly on a start, or just before one), in three zones.
--
CREATE FUNCTION pg_temp.model_start(unit text, n int, anchor timestamptz,
									k bigint) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
	SELECT ((anchor AT TIME ZONE 'UTC') +
			(k * n) * CASE unit WHEN 'day' THEN interval '1 day'
								WHEN 'week' THEN interval '7 days'
								WHEN 'month' THEN interval '1 month'
								ELSE interval '1 year' END) AT TIME ZONE 'UTC'
$$;
-- The period of the model holding at: the last start at or before it.
CREATE FUNCTION pg_temp.model_period(unit text, n int, anchor timestamptz,
									 at timestamptz,
									 OUT period_start timestamptz,
									 OUT period_end timestamptz)
LANGUAGE sql IMMUTABLE AS $$
	WITH guess AS (
		SELECT floor(extract(epoch FROM at - anchor) /
					 (n * CASE unit WHEN 'day' THEN 86400.0 WHEN 'week' THEN 604800.0
									WHEN 'month' THEN 2629746.0 ELSE 31556952.0 END))::bigint AS k0
	), k AS (
		SELECT max(k) AS k
		  FROM guess, generate_series(k0 - 3, k0 + 3) AS k
		 WHERE pg_temp.model_start(unit, n, anchor, k) <= at
	)
	SELECT pg_temp.model_start(unit, n, anchor, k.k),
		   pg_temp.model_start(unit, n, anchor, k.k + 1)
	  FROM k
$$;
-- The canonical spelling (src/periods.c): whole weeks and years in their
-- unit, N and the plural only when N > 1, then the anchor as PostgreSQL
-- prints it in UTC with DateStyle ISO.
CREATE FUNCTION pg_temp.model_name(unit text, n int, anchor timestamptz)
RETURNS text
LANGUAGE sql STABLE SET TimeZone = 'UTC' SET DateStyle = 'ISO' AS $$
	SELECT CASE WHEN u.n = 1 THEN u.unit ELSE u.n || ' ' || u.unit || 's' END || '@' || anchor::text
	  FROM (SELECT CASE WHEN unit = 'day' AND n % 7 = 0 THEN 'week'
						WHEN unit = 'month' AND n % 12 = 0 THEN 'year'
						ELSE unit END AS unit,
				   CASE WHEN unit = 'day' AND n % 7 = 0 THEN n / 7
						WHEN unit = 'month' AND n % 12 = 0 THEN n / 12
						ELSE n END AS n) AS u
$$;
SELECT setseed(0.2026);
CREATE TEMP TABLE model_cases AS
SELECT i, unit, n, anchor,
	   anchor + (random() - 0.5) * interval '60 years' AS at
  FROM (SELECT i,
			   (ARRAY['day', 'week', 'month', 'month', 'month', 'year', 'year'])[1 + floor(random() * 7)::int] AS unit,
			   CASE WHEN random() < 0.6 THEN 1
					ELSE (ARRAY[2, 3, 6, 7, 12, 13, 14, 24, 1000])[1 + floor(random() * 9)::int] END AS n,
			   (CASE WHEN random() < 0.5
					 -- one of the last four days of a month
					 THEN date_trunc('month', m) + interval '1 month' - (floor(random() * 4) + 1) * interval '1 day'
					 ELSE m END
				+ floor(random() * 86400000000) * interval '1 microsecond') AT TIME ZONE 'UTC' AS anchor
		  FROM generate_series(1, 600) AS i,
			   LATERAL (SELECT timestamp '1950-01-01' + random() * interval '150 years' + i * interval '0' AS m) AS m) AS c;
-- A third of the moments exactly on a period start, or just before one.
UPDATE model_cases c
   SET at = (SELECT m.period_start FROM pg_temp.model_period(c.unit, c.n, c.anchor, c.at) AS m) -
			CASE WHEN i % 2 = 0 THEN interval '0' ELSE interval '1 microsecond' END
 WHERE i % 3 = 0;
CREATE TEMP TABLE model_mismatches (tz text, i int, period text, at timestamptz,
									got_start timestamptz, got_end timestamptz,
									want_start timestamptz, want_end timestamptz);
CREATE FUNCTION pg_temp.check_model(tz text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
	checked bigint;
BEGIN
	PERFORM set_config('TimeZone', tz, true);
	-- The anchor is written in the session's zone, with its offset.
	INSERT INTO model_mismatches
	SELECT tz, c.i, p.text, c.at, got.*, want.*
	  FROM model_cases c,
		   LATERAL (SELECT CASE WHEN c.n = 1 AND c.i % 2 = 0 THEN '' ELSE c.n || ' ' END ||
						   c.unit || CASE WHEN c.n > 1 THEN 's' ELSE '' END || '@' || c.anchor::text AS text) AS p,
		   LATERAL entitlock.usage_period(p.text, c.at) AS got,
		   LATERAL pg_temp.model_period(c.unit, c.n, c.anchor, c.at) AS want
	 WHERE (got.period_start, got.period_end) IS DISTINCT FROM (want.period_start, want.period_end)
		OR (entitlock.usage_limit('s', 'f', 1, p.text)).period IS DISTINCT FROM pg_temp.model_name(c.unit, c.n, c.anchor);
	SELECT count(*) INTO checked FROM model_cases;
	RETURN checked;
END
$$;
BEGIN;
SELECT pg_temp.check_model('UTC') AS checked;
SELECT pg_temp.check_model('America/New_York') AS checked;
SELECT pg_temp.check_model('Asia/Kathmandu') AS checked;
COMMIT;
SELECT count(*) AS mismatches FROM model_mismatches;
SELECT * FROM model_mismatches ORDER BY tz, i LIMIT 5;
-- The cases covered what they should.
SELECT unit, count(*) >= 50 AS cases, count(*) FILTER (WHERE n > 1) >= 20 AS n_gt_1,
	   count(*) FILTER (WHERE extract(day FROM anchor AT TIME ZONE 'UTC') >= 29) >= 20 AS anchors_29_to_31,
	   count(*) FILTER (WHERE at < anchor) >= 20 AS before_anchor,
	   count(*) FILTER (WHERE i % 3 = 0) >= 15 AS on_or_before_a_start
  FROM model_cases GROUP BY unit ORDER BY unit;

-- Leave nothing for the tests after this one.
DELETE FROM entitlock.usage_counter WHERE subject LIKE 'per-%';
DELETE FROM entitlock.usage_idempotency WHERE subject LIKE 'per-%';
DELETE FROM entitlock.usage_limits_idempotency WHERE subjects[1] LIKE 'per-%';
RESET TimeZone;
RESET DateStyle;
