--
-- usage: usage limits as seen from one session.  Races between sessions
-- are in test/isolation/specs/usage-*.spec.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS entitlock;
RESET client_min_messages;

-- Every stored row, to show what a call wrote (or, after an error, that it
-- wrote nothing).
CREATE TEMP VIEW counters AS
SELECT subject, feature, period,
       CASE WHEN period = 'lifetime' THEN period_start::text
            ELSE 'current' END AS period_start,
       period_end IS NULL AS no_end, used
  FROM entitlock.usage_counter
 ORDER BY subject, feature, period;
CREATE TEMP VIEW idempotency AS
SELECT subject, feature, idempotency_key, period, amount, allowed, used
  FROM entitlock.usage_idempotency
 ORDER BY subject, feature, idempotency_key;

--
-- record_usage_if_under_limit: the decision and what it reports
--
SELECT * FROM entitlock.record_usage_if_under_limit('ws:1', 'api', 3, 5);
-- 3 + 3 > 5: denied, nothing recorded
SELECT * FROM entitlock.record_usage_if_under_limit('ws:1', 'api', 3, 5);
-- 3 + 2 = 5: exactly at the limit is allowed
SELECT * FROM entitlock.record_usage_if_under_limit('ws:1', 'api', 2, 5);
SELECT * FROM entitlock.record_usage_if_under_limit('ws:1', 'api', 1, 5);
-- a higher limit lets more in
SELECT * FROM entitlock.record_usage_if_under_limit('ws:1', 'api', 1, 6);
-- usage above a lowered limit: denied, and nothing remains
SELECT * FROM entitlock.record_usage_if_under_limit('ws:1', 'api', 1, 2);
SELECT entitlock.usage('ws:1', 'api');
-- a limit of zero allows nothing; an amount over the limit on a fresh meter
-- is denied without creating a counter
SELECT * FROM entitlock.record_usage_if_under_limit('ws:2', 'api', 1, 0);
SELECT * FROM entitlock.record_usage_if_under_limit('ws:2', 'api', 10, 9);
SELECT * FROM counters;

-- Named arguments and defaults, as the SPEC spells them.
SELECT allowed, used, remaining, period_end
  FROM entitlock.record_usage_if_under_limit(subject => 'ws:2', feature => 'api',
                                             amount => 4, usage_limit => 4);
-- The largest amounts: no overflow, just a decision.
SELECT * FROM entitlock.record_usage_if_under_limit('ws:big', 'api',
    9223372036854775807, 9223372036854775807);
SELECT * FROM entitlock.record_usage_if_under_limit('ws:big', 'api',
    9223372036854775807, 9223372036854775807);
SELECT * FROM entitlock.record_usage_if_under_limit('ws:big', 'api', 1,
    9223372036854775807);

-- Subjects and features are told apart byte by byte.
SELECT entitlock.usage('WS:1', 'api') AS upper_case,
       entitlock.usage('ws:1', 'API') AS other_feature,
       entitlock.usage('ws:1 ', 'api') AS trailing_space;

-- Several calls in one statement see each other.
SELECT g, allowed, used, remaining
  FROM generate_series(1, 4) AS g,
       LATERAL entitlock.record_usage_if_under_limit('ws:3', 'api', g - g + 1, 3);
-- In the select list too, and (f()).* calls it once.
SELECT (entitlock.record_usage_if_under_limit('ws:3', 'seats', 1, 3)).*;
SELECT entitlock.record_usage_if_under_limit('ws:3', 'seats', 1, 3);
SELECT entitlock.usage('ws:3', 'seats');

--
-- Periods: each kind is its own meter; a period's counter starts at zero
--
SELECT period, allowed, used, remaining,
       period_end IS NOT DISTINCT FROM
         (SELECT p.period_end FROM entitlock.usage_period(k.period, now()) p)
         AS period_end_is_next_period_start
  FROM unnest(ARRAY['lifetime', 'minute', 'hour', 'day', 'week', 'month',
                    'year']) WITH ORDINALITY AS k(period, n),
       LATERAL entitlock.record_usage_if_under_limit('ws:4', 'api', n, 10, period)
 ORDER BY n;
SELECT period, entitlock.usage('ws:4', 'api', period)
  FROM unnest(ARRAY['lifetime', 'minute', 'hour', 'day', 'week', 'month',
                    'year']) AS period;
-- Period names are case-insensitive, as date_trunc's are.
SELECT used FROM entitlock.record_usage_if_under_limit('ws:4', 'api', 1, 10, 'DAY');
SELECT entitlock.usage('ws:4', 'api', 'Day');
-- The counter's period is the one holding now(), in UTC, whatever the
-- session's time zone.
SET TimeZone = 'Pacific/Kiritimati';
BEGIN;
SELECT allowed, used, remaining FROM entitlock.record_usage_if_under_limit('ws:5', 'api', 1, 10, 'day');
SELECT c.period_start = p.period_start AS start_ok,
       c.period_end = p.period_end AS end_ok,
       p.period_start = date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
         AS is_utc_midnight
  FROM entitlock.usage_counter AS c,
       entitlock.usage_period('day', now()) AS p
 WHERE c.subject = 'ws:5';
COMMIT;
RESET TimeZone;

-- usage_period: the arithmetic, on fixed instants.
SET TimeZone = 'UTC';
SELECT period, at, p.period_start, p.period_end
  FROM (VALUES
        ('minute', '2024-02-29 23:59:59.999999+00'::timestamptz),
        ('minute', '2024-03-01 00:00:00+00'),
        ('hour',   '2024-02-29 23:30:00+00'),
        ('day',    '2024-02-29 23:59:59.999999+00'),
        ('day',    '2024-03-01 00:00:00+00'),
        -- weeks start on Monday: 2024-03-03 is a Sunday, 2024-03-04 a Monday
        ('week',   '2024-03-03 23:59:59+00'),
        ('week',   '2024-03-04 00:00:00+00'),
        ('week',   '2024-12-31 12:00:00+00'),
        ('month',  '2024-02-15 12:00:00+00'),
        ('month',  '2023-02-28 23:59:59+00'),
        ('month',  '2024-12-31 23:59:59+00'),
        ('year',   '2024-12-31 23:59:59.999999+00'),
        ('year',   '2025-01-01 00:00:00+00'),
        ('lifetime', '2024-06-01 00:00:00+00'),
        -- an instant given in another zone is still cut in UTC
        ('day',    '2024-03-10 22:30:00-05'),
        ('month',  '2024-03-31 20:00:00-08'),
        ('day',    '1999-12-31 23:59:59+00'),
        ('year',   '0044-03-15 12:00:00+00')
       ) AS v(period, at),
       LATERAL entitlock.usage_period(v.period, v.at) AS p;
-- It agrees with date_trunc in UTC over a few thousand instants.
SELECT period, count(*) AS instants,
       count(*) FILTER (WHERE p.period_start = date_trunc(period, at, 'UTC')
                          AND p.period_end = date_trunc(period, at, 'UTC') +
                              ('1 ' || period)::interval) AS agree
  FROM unnest(ARRAY['minute', 'hour', 'day', 'week', 'month', 'year']) AS period,
       generate_series('2023-12-25'::timestamptz, '2025-01-05', '4 hours 7 minutes 13.5 seconds') AS at,
       LATERAL entitlock.usage_period(period, at) AS p
 GROUP BY period ORDER BY period;
SELECT * FROM entitlock.usage_period('day', 'infinity');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.usage_period('year', '294276-12-31 00:00:00+00');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.usage_period('fortnight', now());
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.usage_period(NULL, now());
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.usage_period('day', NULL);
\echo :LAST_ERROR_SQLSTATE
RESET TimeZone;

--
-- Idempotency keys
--
SELECT * FROM entitlock.record_usage_if_under_limit('ws:6', 'api', 2, 3, 'lifetime', 'req-1');
-- the retry records nothing and gets the same answer
SELECT * FROM entitlock.record_usage_if_under_limit('ws:6', 'api', 2, 3, 'lifetime', 'req-1');
-- a new request is denied...
SELECT * FROM entitlock.record_usage_if_under_limit('ws:6', 'api', 2, 3, 'lifetime', 'req-2');
-- ...and its retry stays denied even though the limit was raised since:
-- the first decision stands
SELECT * FROM entitlock.record_usage_if_under_limit('ws:6', 'api', 2, 100, 'lifetime', 'req-2');
SELECT entitlock.usage('ws:6', 'api');
-- keys belong to a (subject, feature): the same key elsewhere is new
SELECT * FROM entitlock.record_usage_if_under_limit('ws:6', 'seats', 2, 3, 'lifetime', 'req-1');
SELECT * FROM entitlock.record_usage_if_under_limit('ws:7', 'api', 2, 3, 'lifetime', 'req-1');
-- keys are compared in full, byte by byte
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('ws:6', 'api', 1, 100, 'lifetime', 'REQ-1');
-- a key reused for a different amount or period is an error
SELECT * FROM entitlock.record_usage_if_under_limit('ws:6', 'api', 3, 3, 'lifetime', 'req-1');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.record_usage_if_under_limit('ws:6', 'api', 2, 3, 'day', 'req-1');
\echo :LAST_ERROR_SQLSTATE
-- record_usage shares the keys: a retry returns the first call's usage
SELECT entitlock.record_usage('ws:6', 'api', 5, 'lifetime', 'req-9');
SELECT entitlock.record_usage('ws:6', 'api', 5, 'lifetime', 'req-9');
SELECT entitlock.record_usage('ws:6', 'api', 2, 'lifetime', 'req-1') AS replay_of_conditional;
SELECT * FROM entitlock.record_usage_if_under_limit('ws:6', 'api', 5, 10, 'lifetime', 'req-9')
  AS replay_of_unconditional;
SELECT entitlock.usage('ws:6', 'api');
SELECT * FROM idempotency WHERE subject IN ('ws:6', 'ws:7');

--
-- record_usage: unconditional, refunds never below zero
--
SELECT entitlock.record_usage('ws:8', 'api', 10);
SELECT entitlock.record_usage('ws:8', 'api', -3);
SELECT entitlock.record_usage('ws:8', 'api', 0);
SELECT entitlock.record_usage('ws:8', 'api', -100);
SELECT entitlock.usage('ws:8', 'api');
-- a refund on a meter that never recorded anything writes nothing
SELECT entitlock.record_usage('ws:9', 'api', -5);
SELECT count(*) FROM entitlock.usage_counter WHERE subject = 'ws:9';
SELECT entitlock.record_usage('ws:8', 'api', -9223372036854775808);
SELECT entitlock.record_usage('ws:8', 'api', 9223372036854775807);
-- past bigint: an error, and nothing recorded
SELECT entitlock.record_usage('ws:8', 'api', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.record_usage('ws:8', 'api', 1, 'lifetime', 'overflow');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.usage('ws:8', 'api');
SELECT count(*) FROM entitlock.usage_idempotency WHERE idempotency_key = 'overflow';
-- usage() of a meter that has none
SELECT entitlock.usage('nobody', 'nothing'), entitlock.usage('nobody', 'nothing', 'month');

--
-- Transactions: a rollback un-records, keys included
--
BEGIN;
SELECT used FROM entitlock.record_usage_if_under_limit('ws:10', 'api', 1, 1, 'lifetime', 'k');
SELECT entitlock.usage('ws:10', 'api');
ROLLBACK;
SELECT entitlock.usage('ws:10', 'api');
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('ws:10', 'api', 1, 1, 'lifetime', 'k');
BEGIN;
SELECT entitlock.record_usage('ws:10', 'api', 5);
SAVEPOINT s;
SELECT entitlock.record_usage('ws:10', 'api', 100);
ROLLBACK TO s;
SELECT entitlock.usage('ws:10', 'api');
COMMIT;
SELECT entitlock.usage('ws:10', 'api');
-- REPEATABLE READ: a transaction sees its own recording
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT entitlock.usage('ws:11', 'api');
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('ws:11', 'api', 2, 3);
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('ws:11', 'api', 1, 3);
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('ws:11', 'api', 1, 3);
SELECT entitlock.usage('ws:11', 'api');
COMMIT;
-- the locks a call holds until the end of its transaction:
-- lock_entity(subject, feature)
CREATE TEMP VIEW my_locks AS
SELECT (l.classid::bigint << 32) | l.objid::bigint AS key, l.mode
  FROM pg_locks AS l
 WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid() AND l.objsubid = 1;
BEGIN;
SELECT allowed FROM entitlock.record_usage_if_under_limit('ws:12', 'api', 1, 1);
SELECT CASE key WHEN entitlock.key('ws:12') THEN 'subject'
                WHEN entitlock.key('ws:12', 'api') THEN 'pair' END AS lock, mode
  FROM my_locks ORDER BY 1;
COMMIT;
-- usage() takes none
BEGIN;
SELECT entitlock.usage('ws:12', 'api');
SELECT count(*) FROM my_locks;
COMMIT;
-- a read-only transaction cannot record
BEGIN READ ONLY;
SELECT * FROM entitlock.record_usage_if_under_limit('ws:12', 'api', 1, 1);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN READ ONLY;
SELECT entitlock.record_usage('ws:12', 'api', 1);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

--
-- Bad input: an error with a SQLSTATE, and nothing stored
--
CREATE TEMP TABLE before AS
SELECT (SELECT count(*) FROM entitlock.usage_counter) AS counters,
       (SELECT sum(used) FROM entitlock.usage_counter) AS used,
       (SELECT count(*) FROM entitlock.usage_idempotency) AS keys;
\set VERBOSITY default
SELECT * FROM entitlock.record_usage_if_under_limit(NULL, 'api', 1, 1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.record_usage_if_under_limit('ws:e', NULL, 1, 1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.record_usage_if_under_limit('', 'api', 1, 1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.record_usage_if_under_limit('ws:e', '', 1, 1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.record_usage_if_under_limit('ws:e', 'api', NULL, 1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.record_usage_if_under_limit('ws:e', 'api', 0, 1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.record_usage_if_under_limit('ws:e', 'api', -1, 1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.record_usage_if_under_limit('ws:e', 'api', 1, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.record_usage_if_under_limit('ws:e', 'api', 1, -1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.record_usage_if_under_limit('ws:e', 'api', 1, 1, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.record_usage_if_under_limit('ws:e', 'api', 1, 1, 'fortnight');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.record_usage_if_under_limit('ws:e', 'api', 1, 1, ' day');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.record_usage_if_under_limit('ws:e', 'api', 1, 1, 'lifetime', '');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.record_usage_if_under_limit(repeat('s', 513), 'api', 1, 1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.record_usage_if_under_limit('ws:e', repeat('f', 513), 1, 1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.record_usage_if_under_limit('ws:e', 'api', 1, 1, 'lifetime', repeat('k', 513));
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.record_usage(NULL, 'api', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.record_usage('ws:e', 'api', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.record_usage('ws:e', '', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.record_usage('ws:e', 'api', 1, 'decade');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.usage(NULL, 'api');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.usage('ws:e', 'api', 'weekly');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY terse
-- 512 bytes is still fine (multibyte characters count in bytes)
SELECT allowed FROM entitlock.record_usage_if_under_limit(repeat('é', 256), repeat('f', 512), 1, 1, 'lifetime', repeat('k', 512));
SELECT * FROM entitlock.record_usage_if_under_limit(repeat('é', 257), 'api', 1, 1);
\echo :LAST_ERROR_SQLSTATE
DELETE FROM entitlock.usage_counter WHERE feature = repeat('f', 512);
DELETE FROM entitlock.usage_idempotency WHERE feature = repeat('f', 512);
SELECT b.counters = (SELECT count(*) FROM entitlock.usage_counter) AS same_counters,
       b.used = (SELECT sum(used) FROM entitlock.usage_counter) AS same_usage,
       b.keys = (SELECT count(*) FROM entitlock.usage_idempotency) AS same_keys
  FROM before AS b;

--
-- Any search_path: nothing resolves through it
--
SET search_path = '';
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('ws:13', 'api', 1, 5, 'day', 'sp');
SELECT entitlock.record_usage('ws:13', 'api', 1, 'day');
SELECT entitlock.usage('ws:13', 'api', 'day');
RESET search_path;

--
-- Privileges: EXECUTE is granted explicitly; the tables never are
--
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_entitlock_app;
DROP ROLE IF EXISTS regress_entitlock_nobody;
RESET client_min_messages;
CREATE ROLE regress_entitlock_app;
CREATE ROLE regress_entitlock_nobody;
GRANT USAGE ON SCHEMA entitlock TO regress_entitlock_app, regress_entitlock_nobody;
GRANT EXECUTE ON FUNCTION
    entitlock.record_usage_if_under_limit(text, text, bigint, bigint, text, text),
    entitlock.record_usage(text, text, bigint, text, text),
    entitlock.usage(text, text, text)
  TO regress_entitlock_app;
SET ROLE regress_entitlock_nobody;
SELECT * FROM entitlock.record_usage_if_under_limit('ws:14', 'api', 1, 5);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.record_usage('ws:14', 'api', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.usage('ws:14', 'api');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.prune_usage(now());
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.usage_counter;
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.usage_period('day', '2024-01-01 12:00+00');
RESET ROLE;
SET ROLE regress_entitlock_app;
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('ws:14', 'api', 1, 5);
SELECT entitlock.record_usage('ws:14', 'api', 1);
SELECT entitlock.usage('ws:14', 'api');
UPDATE entitlock.usage_counter SET used = 0;
\echo :LAST_ERROR_SQLSTATE
INSERT INTO entitlock.usage_idempotency VALUES ('a', 'b', 'c', 'lifetime', 1, true, 1, NULL, now());
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.usage_idempotency;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
REVOKE ALL ON SCHEMA entitlock FROM regress_entitlock_app, regress_entitlock_nobody;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA entitlock FROM regress_entitlock_app;
DROP ROLE regress_entitlock_app;
DROP ROLE regress_entitlock_nobody;

--
-- Pruning old periods
--
INSERT INTO entitlock.usage_counter VALUES
    ('ws:old', 'api', 'day', '2020-01-01 00:00+00', '2020-01-02 00:00+00', 7),
    ('ws:old', 'api', 'month', '2020-01-01 00:00+00', '2020-02-01 00:00+00', 9);
INSERT INTO entitlock.usage_idempotency VALUES
    ('ws:old', 'api', 'old-key', 'day', 1, true, 7, '2020-01-02 00:00+00', '2020-01-01 10:00+00');
SELECT entitlock.prune_usage('2020-01-15 00:00+00');
SELECT period, used FROM entitlock.usage_counter WHERE subject = 'ws:old';
-- keys go by age: every key so far was recorded before this transaction
SELECT entitlock.prune_usage(now());
SELECT count(*) FROM entitlock.usage_counter WHERE subject = 'ws:old';
SELECT count(*) FROM entitlock.usage_idempotency;
-- current periods and lifetime counters stay
SELECT count(*) > 0 AS current_kept FROM entitlock.usage_counter WHERE period_end > now() OR period_end IS NULL;
SELECT entitlock.prune_usage(NULL);

--
-- pg_dump keeps the tables' rows
--
SELECT unnest(extconfig)::regclass AS dumped FROM pg_extension WHERE extname = 'entitlock' ORDER BY 1;

--
-- A table changed behind entitlock's back stops it instead of being
-- written wrongly.
--
ALTER TABLE entitlock.usage_counter ADD COLUMN note text;
SELECT * FROM entitlock.record_usage_if_under_limit('ws:15', 'api', 1, 5);
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE entitlock.usage_counter DROP COLUMN note;
SELECT * FROM entitlock.record_usage_if_under_limit('ws:15', 'api', 1, 5);
\echo :LAST_ERROR_SQLSTATE
DROP VIEW counters, idempotency;
DROP EXTENSION entitlock;
CREATE EXTENSION entitlock;
-- (and this backend notices the new tables)
SELECT * FROM entitlock.record_usage_if_under_limit('ws:15', 'api', 1, 5);

-- How the usage functions are declared.
SELECT p.oid::regprocedure AS function, p.provolatile, p.proisstrict,
       p.proparallel, p.prosecdef, pg_get_function_result(p.oid) AS result
  FROM pg_proc AS p
 WHERE p.pronamespace = 'entitlock'::regnamespace AND p.proname LIKE '%usage%'
 ORDER BY p.oid::regprocedure::text;
