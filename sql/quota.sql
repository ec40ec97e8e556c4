--
-- quota: several limits in one call, refunds of keyed calls, and rate
-- limits, as seen from one session (1.1).  Races between sessions are in
-- test/isolation/specs/usage-limits-*.spec and rate-limit-*.spec.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS entitlock;
RESET client_min_messages;
SET timezone = 'UTC';
SET IntervalStyle = 'postgres';

CREATE TEMP VIEW counters AS
SELECT subject, feature, period,
       CASE WHEN period = 'lifetime' THEN 'lifetime'
            WHEN period_end > now() THEN 'current'
            ELSE 'ended' END AS which, used
  FROM entitlock.usage_counter
 WHERE subject LIKE 'user:%' OR subject LIKE 'org:%' OR subject LIKE 'r:%'
 ORDER BY subject, feature, period, period_start;
CREATE TEMP VIEW set_keys AS
SELECT idempotency_key, amount, subjects, features, periods, allowed, used,
       refunded
  FROM entitlock.usage_limits_idempotency
 WHERE idempotency_key LIKE 'req-%' OR idempotency_key LIKE 'pay-%'
 ORDER BY idempotency_key;

--
-- entitlock.usage_limit: the type and its constructor
--
SELECT entitlock.usage_limit('user:1', 'api', 60, 'minute');
-- the period is spelled as the tables spell it; lifetime by default
SELECT (entitlock.usage_limit('user:1', 'api', 60, 'MINUTE')).period,
       (entitlock.usage_limit('user:1', 'api', 60)).period AS default_period;
SELECT pg_typeof(entitlock.usage_limit('user:1', 'api', 60));
-- the fields are checked as record_usage_if_under_limit() checks them
\set VERBOSITY sqlstate
SELECT entitlock.usage_limit(NULL, 'api', 60);
SELECT entitlock.usage_limit('user:1', '', 60);
SELECT entitlock.usage_limit('user:1', 'api', -1);
SELECT entitlock.usage_limit('user:1', 'api', NULL);
SELECT entitlock.usage_limit('user:1', 'api', 60, 'fortnight');
SELECT entitlock.usage_limit('user:1', 'api', 60, NULL);
SELECT entitlock.usage_limit(repeat('x', 513), 'api', 60);
\set VERBOSITY default

--
-- record_usage_if_under_limits: all or nothing
--
-- The API gateway's limits: 3 a minute and 5 a day per user, 8 a month
-- per organisation.  One row per limit, in the order given.  (In one
-- transaction, so that all calls fall in the same minute.)
BEGIN;
SELECT subject, feature, period, allowed, used, remaining
  FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('user:1', 'api', 3, 'minute'),
	entitlock.usage_limit('user:1', 'api', 5, 'day'),
	entitlock.usage_limit('org:1', 'api', 8, 'month')]);
SELECT subject, period, allowed, used, remaining,
       period_end = (SELECT period_end FROM entitlock.usage_period(period)) AS period_end_ok
  FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('user:1', 'api', 3, 'minute'),
	entitlock.usage_limit('user:1', 'api', 5, 'day'),
	entitlock.usage_limit('org:1', 'api', 8, 'month')], 2);
-- the per-minute limit has no room for 1 more: nothing is recorded on the
-- day or the month, and the row of each limit says which had room
SELECT subject, period, allowed, used, remaining
  FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('user:1', 'api', 3, 'minute'),
	entitlock.usage_limit('user:1', 'api', 5, 'day'),
	entitlock.usage_limit('org:1', 'api', 8, 'month')]);
SELECT * FROM counters;
-- another user of the organisation: the organisation's limit decides
SELECT subject, period, allowed, used, remaining
  FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('user:2', 'api', 60, 'minute'),
	entitlock.usage_limit('org:1', 'api', 8, 'month')], 5);
SELECT subject, period, allowed, used, remaining
  FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('user:2', 'api', 60, 'minute'),
	entitlock.usage_limit('org:1', 'api', 8, 'month')], 6);
-- usage() and record_usage_if_under_limit() see the same meters
SELECT entitlock.usage('user:1', 'api', 'minute') AS minute,
       entitlock.usage('user:1', 'api', 'day') AS day,
       entitlock.usage('org:1', 'api', 'month') AS month,
       entitlock.usage('user:2', 'api', 'minute') AS user2_minute;
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('org:1', 'api', 1, 8, 'month');
SELECT allowed, used FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('org:1', 'api', 8, 'month')]);
COMMIT;
-- a row literal works as well as the constructor; names are case-sensitive
-- and periods are not
SELECT subject, period, allowed, used FROM entitlock.record_usage_if_under_limits(
	ARRAY[ROW('user:3', 'api', 10, 'Hour'), ROW('User:3', 'api', 10, 'hour')]::entitlock.usage_limit[]);
-- a limit of zero denies, and creates no counter
SELECT subject, allowed, used, remaining FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('user:4', 'api', 0), entitlock.usage_limit('org:4', 'api', 10)]);
SELECT count(*) AS user4_counters FROM entitlock.usage_counter WHERE subject IN ('user:4', 'org:4');
-- in one transaction, the calls see each other, and ROLLBACK takes all back
BEGIN;
SELECT allowed, used FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('user:5', 'api', 3), entitlock.usage_limit('org:5', 'api', 3)], 2);
SELECT allowed, used FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('org:5', 'api', 3), entitlock.usage_limit('user:5', 'api', 3)], 2);
SELECT allowed, used FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('org:5', 'api', 3), entitlock.usage_limit('user:5', 'api', 3)], 1);
ROLLBACK;
SELECT entitlock.usage('user:5', 'api') AS user5, entitlock.usage('org:5', 'api') AS org5;
-- the amount is positive and the limits at most bigint
SELECT allowed, used, remaining FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('user:6', 'api', 9223372036854775807)], 9223372036854775807);
SELECT allowed, used, remaining FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('user:6', 'api', 9223372036854775807)], 1);

--
-- Keyed sets: a repeat answers from the first call, also in another order
--
SELECT subject, period, allowed, used FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('user:7', 'api', 10, 'hour'),
	entitlock.usage_limit('org:7', 'api', 100, 'month')], 4, 'req-1');
SELECT subject, period, allowed, used FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('org:7', 'api', 100, 'month'),
	entitlock.usage_limit('user:7', 'api', 10, 'hour')], 4, 'req-1');
-- a different limit is fine (a plan may change between a call and its
-- retry): the first decision stands, remaining follows this call's limit
SELECT subject, allowed, used, remaining FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('user:7', 'api', 5, 'hour'),
	entitlock.usage_limit('org:7', 'api', 100, 'month')], 4, 'req-1');
SELECT entitlock.usage('user:7', 'api', 'hour') AS minute,
       entitlock.usage('org:7', 'api', 'month') AS month;
-- a denied keyed set is remembered as denied
SELECT subject, allowed, used FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('user:7', 'api', 10, 'hour'),
	entitlock.usage_limit('org:7', 'api', 100, 'month')], 7, 'req-2');
SELECT subject, allowed, used FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('user:7', 'api', 1000, 'hour'),
	entitlock.usage_limit('org:7', 'api', 100, 'month')], 7, 'req-2');
SELECT * FROM set_keys;
-- the same key with another set or amount is a client bug
\set VERBOSITY terse
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('user:7', 'api', 10, 'hour')], 4, 'req-1');
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('user:7', 'api', 10, 'hour'),
	entitlock.usage_limit('org:7', 'api', 100, 'year')], 4, 'req-1');
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('user:7', 'api', 10, 'hour'),
	entitlock.usage_limit('org:7', 'api', 100, 'month')], 5, 'req-1');
-- a set's key may not also key a single-limit call on one of its pairs,
-- nor the other way round: refund_usage() must know which call it undoes
SELECT * FROM entitlock.record_usage_if_under_limit('org:7', 'api', 1, 100, 'month', 'req-1');
SELECT allowed FROM entitlock.record_usage_if_under_limit('user:8', 'api', 1, 100, 'lifetime', 'req-3');
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('user:8', 'api', 10, 'hour')], 1, 'req-3');
-- ... but a pair the set does not name may use it for a call of its own
SELECT allowed FROM entitlock.record_usage_if_under_limit('user:9', 'api', 1, 100, 'lifetime', 'req-1');
\set VERBOSITY default
SELECT * FROM set_keys;

--
-- Bad calls record nothing
--
CREATE TEMP TABLE before_errors AS
SELECT (SELECT count(*) FROM entitlock.usage_counter) AS counters,
       (SELECT sum(used) FROM entitlock.usage_counter) AS used,
       (SELECT count(*) FROM entitlock.usage_limits_idempotency) AS set_keys;
\set VERBOSITY sqlstate
SELECT * FROM entitlock.record_usage_if_under_limits(NULL);
SELECT * FROM entitlock.record_usage_if_under_limits('{}');
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[NULL::entitlock.usage_limit]);
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[entitlock.usage_limit('e', 'api', 1)], 0);
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[entitlock.usage_limit('e', 'api', 1)], -1);
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[entitlock.usage_limit('e', 'api', 1)], NULL);
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[entitlock.usage_limit('e', 'api', 1)], 1, '');
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[ROW('e', 'api', -5, 'day')]::entitlock.usage_limit[]);
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[ROW('e', 'api', 5, 'decade')]::entitlock.usage_limit[]);
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[ROW('e', NULL, 5, 'day')]::entitlock.usage_limit[]);
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[ROW('', 'api', 5, 'day')]::entitlock.usage_limit[]);
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[ROW('e', 'api', NULL, 'day')]::entitlock.usage_limit[]);
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[ROW('e', 'api', 5, NULL)]::entitlock.usage_limit[]);
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[[entitlock.usage_limit('e', 'api', 1)], [entitlock.usage_limit('f', 'api', 1)]]);
SELECT * FROM entitlock.record_usage_if_under_limits(
	(SELECT array_agg(entitlock.usage_limit('e' || i, 'api', 1)) FROM generate_series(1, 101) i));
-- a bad element after good ones, and the same meter twice
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('user:1', 'api', 100), ROW('e', 'api', 5, 'decade')::entitlock.usage_limit]);
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('e', 'api', 10, 'day'), entitlock.usage_limit('e', 'api', 20, 'DAY')]);
\set VERBOSITY default
-- with their messages
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('user:1', 'api', 100), ROW('e', 'api', 5, 'decade')::entitlock.usage_limit]);
SELECT * FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('e', 'api', 10, 'day'), entitlock.usage_limit('f', 'api', 1),
	entitlock.usage_limit('e', 'api', 20, 'DAY')]);
SELECT * FROM entitlock.record_usage_if_under_limits('{}');
SELECT (SELECT count(*) FROM entitlock.usage_counter) = counters AND
       (SELECT sum(used) FROM entitlock.usage_counter) = used AND
       (SELECT count(*) FROM entitlock.usage_limits_idempotency) = set_keys AS nothing_changed
  FROM before_errors;

--
-- refund_usage
--
-- a single-limit call's key: given back once, into its period
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('r:1', 'api', 4, 10, 'day', 'pay-1');
SELECT entitlock.refund_usage('r:1', 'api', 'pay-1') AS refunded;
SELECT entitlock.usage('r:1', 'api', 'day') AS usage_after;
SELECT entitlock.refund_usage('r:1', 'api', 'pay-1') AS again;
-- a replay after the refund still answers the first decision, recording
-- nothing
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('r:1', 'api', 4, 10, 'day', 'pay-1');
SELECT entitlock.usage('r:1', 'api', 'day');
-- record_usage's keys refund too; a key that recorded nothing gives 0
SELECT entitlock.record_usage('r:1', 'api', 3, 'lifetime', 'pay-2');
SELECT entitlock.refund_usage('r:1', 'api', 'pay-2') AS refunded;
SELECT entitlock.usage('r:1', 'api') AS lifetime;
SELECT allowed FROM entitlock.record_usage_if_under_limit('r:1', 'api', 50, 10, 'lifetime', 'pay-3');
SELECT entitlock.refund_usage('r:1', 'api', 'pay-3') AS denied_key;
SELECT entitlock.record_usage('r:1', 'api', -1, 'lifetime', 'pay-4');
SELECT entitlock.refund_usage('r:1', 'api', 'pay-4') AS negative_key;
SELECT entitlock.refund_usage('r:1', 'api', 'no-such-key') AS unknown,
       entitlock.refund_usage('r:1', 'other', 'pay-1') AS other_feature,
       entitlock.refund_usage('r:2', 'api', 'pay-1') AS other_subject;
SELECT idempotency_key, amount, allowed, refunded_at IS NOT NULL AS refunded
  FROM entitlock.usage_idempotency WHERE subject = 'r:1' ORDER BY 1;
-- usage never goes below zero: what is given back is what there was
SELECT allowed FROM entitlock.record_usage_if_under_limit('r:3', 'api', 5, 10, 'lifetime', 'pay-5');
SELECT entitlock.record_usage('r:3', 'api', -3);
SELECT entitlock.refund_usage('r:3', 'api', 'pay-5') AS refunded;
SELECT entitlock.usage('r:3', 'api') AS usage;
-- a set's key: each period of the pair that the call recorded gets the
-- amount back; the other pairs of the set keep theirs until refunded
SELECT subject, period, used FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('r:4', 'api', 10, 'minute'),
	entitlock.usage_limit('r:4', 'api', 100, 'day'),
	entitlock.usage_limit('r:org', 'api', 1000, 'month')], 3, 'pay-6');
SELECT entitlock.refund_usage('r:4', 'api', 'pay-6') AS refunded;
SELECT entitlock.usage('r:4', 'api', 'minute') AS minute, entitlock.usage('r:4', 'api', 'day') AS day,
       entitlock.usage('r:org', 'api', 'month') AS org_month;
SELECT entitlock.refund_usage('r:4', 'api', 'pay-6') AS again,
       entitlock.refund_usage('r:org', 'api', 'pay-6') AS org,
       entitlock.refund_usage('r:org', 'api', 'pay-6') AS org_again,
       entitlock.refund_usage('r:5', 'api', 'pay-6') AS not_in_set;
SELECT entitlock.usage('r:org', 'api', 'month') AS org_month;
SELECT refunded FROM set_keys WHERE idempotency_key = 'pay-6';
-- a denied set gives nothing back
SELECT allowed FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('r:4', 'api', 1, 'minute')], 3, 'pay-7');
SELECT entitlock.refund_usage('r:4', 'api', 'pay-7') AS denied_set;
-- a rolled-back refund can be done again
BEGIN;
SELECT entitlock.refund_usage('r:1', 'api', 'pay-8') AS unknown_yet;
SELECT allowed FROM entitlock.record_usage_if_under_limit('r:1', 'api', 2, 10, 'lifetime', 'pay-8');
SELECT entitlock.refund_usage('r:1', 'api', 'pay-8') AS in_same_transaction;
ROLLBACK;
SELECT allowed FROM entitlock.record_usage_if_under_limit('r:1', 'api', 2, 10, 'lifetime', 'pay-8');
BEGIN;
SELECT entitlock.refund_usage('r:1', 'api', 'pay-8');
ROLLBACK;
SELECT entitlock.refund_usage('r:1', 'api', 'pay-8') AS after_rollback;
SELECT entitlock.usage('r:1', 'api') AS lifetime;
-- A key whose period has ended gives back into that period, not the
-- current one.  The rows of a call made last month, as it left them:
INSERT INTO entitlock.usage_counter
SELECT 'r:6', 'api', 'month', s.period_start, s.period_end, 7
  FROM entitlock.usage_period('month', date_trunc('month', now()) - interval '1 day') AS s;
INSERT INTO entitlock.usage_idempotency
SELECT 'r:6', 'api', 'pay-9', 'month', 5, true, 7, s.period_end,
       s.period_end - interval '1 hour', NULL
  FROM entitlock.usage_period('month', date_trunc('month', now()) - interval '1 day') AS s;
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('r:6', 'api', 2, 100, 'month');
SELECT entitlock.refund_usage('r:6', 'api', 'pay-9') AS refunded;
SELECT which, used FROM counters WHERE subject = 'r:6';
-- ... and once that period's counter is pruned there is nothing to give
INSERT INTO entitlock.usage_idempotency
SELECT 'r:6', 'api', 'pay-10', 'month', 5, true, 7, s.period_end,
       s.period_end - interval '1 hour', NULL
  FROM entitlock.usage_period('month', date_trunc('month', now()) - interval '1 day') AS s;
DELETE FROM entitlock.usage_counter WHERE subject = 'r:6' AND period_end <= now();
SELECT entitlock.refund_usage('r:6', 'api', 'pay-10') AS pruned_period;
SELECT which, used FROM counters WHERE subject = 'r:6';
-- bad calls
\set VERBOSITY sqlstate
SELECT entitlock.refund_usage(NULL, 'api', 'pay-1');
SELECT entitlock.refund_usage('r:1', NULL, 'pay-1');
SELECT entitlock.refund_usage('r:1', 'api', NULL);
SELECT entitlock.refund_usage('r:1', 'api', '');
SELECT entitlock.refund_usage('', 'api', 'pay-1');
\set VERBOSITY default
-- prune_usage forgets set keys too
SELECT entitlock.prune_usage(now() - interval '1 year') AS nothing_that_old;

--
-- gcra: the arithmetic at fixed instants
--
-- 60 a minute, bursts of 10: T = 1 s, tau = 10 s.  A fresh name (no
-- state) takes 3 at once.
SELECT * FROM entitlock.gcra(NULL, '2030-01-01 00:00:00+00', 60, '1 minute', 10, 3);
-- 7 more at the same instant fill the burst exactly
SELECT * FROM entitlock.gcra('2030-01-01 00:00:03+00', '2030-01-01 00:00:00+00', 60, '1 minute', 10, 7);
-- the 11th is denied: retry after 1 s, the bucket is full after 10 s
SELECT * FROM entitlock.gcra('2030-01-01 00:00:10+00', '2030-01-01 00:00:00+00', 60, '1 minute', 10, 1);
-- after 1.5 s one fits again, and half a unit's time is left over
SELECT * FROM entitlock.gcra('2030-01-01 00:00:10+00', '2030-01-01 00:00:01.5+00', 60, '1 minute', 10, 1);
-- a cost of 4 must wait 3 s
SELECT * FROM entitlock.gcra('2030-01-01 00:00:10+00', '2030-01-01 00:00:01+00', 60, '1 minute', 10, 4);
-- a state in the past is a full bucket, as is no state
SELECT * FROM entitlock.gcra('2029-01-01 00:00:00+00', '2030-01-01 00:00:00+00', 60, '1 minute', 10, 1);
-- a peek takes nothing
SELECT * FROM entitlock.gcra('2030-01-01 00:00:10+00', '2030-01-01 00:00:00+00', 60, '1 minute', 10, 0);
-- the default burst is rate
SELECT allowed, remaining, reset_after FROM entitlock.gcra(NULL, '2030-01-01', 5, '1 second');
-- per / rate is rounded up to a whole microsecond: 3 a second is 333334 us
SELECT tat FROM entitlock.gcra(NULL, '2030-01-01', 3, '1 second', 3, 1);
-- no window edges: 10 a minute let through at 00:00:59 leave nothing for
-- 00:01:00, where a calendar minute would start afresh
SELECT allowed, retry_after FROM entitlock.gcra('2030-01-01 00:01:59+00', '2030-01-01 00:01:00+00', 10, '1 minute', 10, 1);
-- days and months count as 24 hours and 30 days
SELECT reset_after FROM entitlock.gcra(NULL, '2030-01-01', 1, '1 day', 1, 1);
SELECT reset_after FROM entitlock.gcra(NULL, '2030-01-01', 1, '1 mon', 1, 1);
-- a model check: 1,000 calls of random cost at random moments (asking for
-- about three times the rate), each from the state the one before left,
-- never let through more than burst + rate * elapsed over any stretch
-- starting at a call
SELECT setseed(0.25);
CREATE TEMP TABLE gcra_calls AS
WITH RECURSIVE calls(i, at, cost, allowed, tat) AS (
	SELECT 0, '2030-01-01 00:00:00+00'::timestamptz, 0::bigint, true, NULL::timestamptz
	UNION ALL
	SELECT c.i + 1, n.at, n.cost, g.allowed, g.tat
	  FROM calls c
	 CROSS JOIN LATERAL (SELECT c.at + (random() * 100)::int * interval '1 ms' AS at,
	                            (1 + (random() * 4)::int)::bigint AS cost) n
	 CROSS JOIN LATERAL entitlock.gcra(c.tat, n.at, 20, '1 second', 8, n.cost) g
	 WHERE c.i < 1000
)
SELECT * FROM calls;
SELECT count(*) FILTER (WHERE allowed) > 100 AS some_allowed,
       count(*) FILTER (WHERE NOT allowed) > 100 AS some_denied
  FROM gcra_calls WHERE i > 0;
SELECT count(*) AS windows_over_the_limit
  FROM gcra_calls a
 WHERE (SELECT sum(b.cost) FROM gcra_calls b
         WHERE b.allowed AND b.i > 0 AND b.at >= a.at AND b.at <= a.at + interval '2 seconds')
       > 8 + 20 * 2;
-- bad calls
\set VERBOSITY sqlstate
SELECT * FROM entitlock.gcra(NULL, '2030-01-01', 0, '1 second');
SELECT * FROM entitlock.gcra(NULL, '2030-01-01', 10, '0 seconds');
SELECT * FROM entitlock.gcra(NULL, '2030-01-01', 10, '-1 second');
SELECT * FROM entitlock.gcra(NULL, '2030-01-01', 10, '1 second', 0);
SELECT * FROM entitlock.gcra(NULL, '2030-01-01', 10, '1 second', 5, 6);
SELECT * FROM entitlock.gcra(NULL, '2030-01-01', 10, '1 second', 5, -1);
SELECT * FROM entitlock.gcra(NULL, '2030-01-01', 10, '1 second', 5, NULL);
SELECT * FROM entitlock.gcra(NULL, '2030-01-01', NULL, '1 second');
SELECT * FROM entitlock.gcra(NULL, '2030-01-01', 10, NULL);
SELECT * FROM entitlock.gcra(NULL, NULL, 10, '1 second');
SELECT * FROM entitlock.gcra(NULL, 'infinity', 10, '1 second');
SELECT * FROM entitlock.gcra(NULL, '2030-01-01', 1, '20000 years');
SELECT * FROM entitlock.gcra(NULL, '2030-01-01', 1, '1 year', 20000);
\set VERBOSITY default
SELECT * FROM entitlock.gcra(NULL, '2030-01-01', 10, '1 second', 5, 6);
SELECT * FROM entitlock.gcra(NULL, '2030-01-01', 1, '1 year', 20000);

--
-- rate_limit: the state in entitlock.rate_limit_state
--
-- a long period, so the clock moves the state by too little to show
SELECT * FROM entitlock.rate_limit('api:key-1', 10, '1 hour', 5);
SELECT allowed, remaining, retry_after IS NULL AS no_retry,
       reset_after BETWEEN interval '17 minutes' AND interval '18 minutes' AS reset_ok
  FROM entitlock.rate_limit('api:key-1', 10, '1 hour', 5, 2);
SELECT allowed, remaining, retry_after BETWEEN interval '5 minutes' AND interval '6 minutes' AS retry_ok
  FROM entitlock.rate_limit('api:key-1', 10, '1 hour', 5, 3);
-- the denial took nothing: 2 more still fit
SELECT allowed, remaining FROM entitlock.rate_limit('api:key-1', 10, '1 hour', 5, 2);
SELECT allowed, remaining FROM entitlock.rate_limit('api:key-1', 10, '1 hour', 5, 1);
-- a peek reports without taking
SELECT allowed, remaining, retry_after FROM entitlock.rate_limit('api:key-1', 10, '1 hour', 5, 0);
SELECT allowed, remaining, reset_after FROM entitlock.rate_limit('api:nobody', 10, '1 hour', 5, 0);
-- names are independent, and stored one row each
SELECT allowed, remaining FROM entitlock.rate_limit('api:key-2', 10, '1 hour', 5);
SELECT name, tat > now() AS ahead FROM entitlock.rate_limit_state WHERE name LIKE 'api:%' ORDER BY name;
-- a rollback gives the units back
BEGIN;
SELECT allowed, remaining FROM entitlock.rate_limit('api:key-2', 10, '1 hour', 5, 4);
ROLLBACK;
SELECT allowed, remaining FROM entitlock.rate_limit('api:key-2', 10, '1 hour', 5, 0);
-- a name whose bucket refilled equals no row; prune_rate_limits deletes it
SELECT allowed, remaining FROM entitlock.rate_limit('api:key-3', 1000000, '1 second', 10, 10);
SELECT pg_sleep(0.01);
SELECT allowed, remaining FROM entitlock.rate_limit('api:key-3', 1000000, '1 second', 10, 0);
SELECT entitlock.prune_rate_limits() AS pruned;
SELECT name FROM entitlock.rate_limit_state WHERE name LIKE 'api:%' ORDER BY name;
-- a peek works in a read-only transaction; taking does not
BEGIN READ ONLY;
SELECT allowed FROM entitlock.rate_limit('api:key-1', 10, '1 hour', 5, 0);
\set VERBOSITY sqlstate
SELECT allowed FROM entitlock.rate_limit('api:key-1', 10, '1 hour', 5, 1);
ROLLBACK;
-- bad calls change nothing
CREATE TEMP TABLE rl_before AS SELECT * FROM entitlock.rate_limit_state;
SELECT * FROM entitlock.rate_limit(NULL, 10, '1 second');
SELECT * FROM entitlock.rate_limit('', 10, '1 second');
SELECT * FROM entitlock.rate_limit(repeat('n', 513), 10, '1 second');
SELECT * FROM entitlock.rate_limit('api:key-1', 0, '1 second');
SELECT * FROM entitlock.rate_limit('api:key-1', -5, '1 second');
SELECT * FROM entitlock.rate_limit('api:key-1', 10, '0 seconds');
SELECT * FROM entitlock.rate_limit('api:key-1', 10, '-1 hour');
SELECT * FROM entitlock.rate_limit('api:key-1', 10, '1 hour', 0);
SELECT * FROM entitlock.rate_limit('api:key-1', 10, '1 hour', -1);
SELECT * FROM entitlock.rate_limit('api:key-1', 10, '1 hour', 5, 6);
SELECT * FROM entitlock.rate_limit('api:key-1', 10, '1 hour', 5, -1);
SELECT * FROM entitlock.rate_limit('api:key-1', 10, '1 hour', 5, NULL);
SELECT * FROM entitlock.rate_limit('api:key-1', NULL, '1 hour');
SELECT * FROM entitlock.rate_limit('api:key-1', 10, NULL);
\set VERBOSITY default
SELECT * FROM entitlock.rate_limit('api:key-1', 10, '1 hour', 5, 6);
SELECT * FROM entitlock.rate_limit('api:key-1', 0, '1 second');
SELECT (SELECT count(*) FROM entitlock.rate_limit_state) = (SELECT count(*) FROM rl_before)
       AND NOT EXISTS (SELECT * FROM entitlock.rate_limit_state EXCEPT SELECT * FROM rl_before)
       AS nothing_changed;

-- A denial reaches every meter of the set, whatever the caller's order:
-- every order of a set of three where one limit denies records nothing,
-- on meters with rows and without.  (1.1 wrote the canonical order while
-- resetting the caller's, and charged the meters ordered after the
-- denying one.)
SELECT entitlock.record_usage('ao:org', 'api', 1);
SELECT entitlock.record_usage('ao:user', 'api', 1);
SELECT o.perm, bool_or(r.allowed) AS any_allowed, bool_and(r.allowed) AS all_allowed
  FROM (VALUES (1, ARRAY[1, 2, 3]), (2, ARRAY[1, 3, 2]), (3, ARRAY[2, 1, 3]),
               (4, ARRAY[2, 3, 1]), (5, ARRAY[3, 1, 2]), (6, ARRAY[3, 2, 1])) AS o(perm, idx),
       LATERAL entitlock.record_usage_if_under_limits(ARRAY[
           (ARRAY[entitlock.usage_limit('ao:org', 'api', 1),
                  entitlock.usage_limit('ao:user', 'api', 5),
                  entitlock.usage_limit('ao:new', 'api', 5, 'day')])[o.idx[1]],
           (ARRAY[entitlock.usage_limit('ao:org', 'api', 1),
                  entitlock.usage_limit('ao:user', 'api', 5),
                  entitlock.usage_limit('ao:new', 'api', 5, 'day')])[o.idx[2]],
           (ARRAY[entitlock.usage_limit('ao:org', 'api', 1),
                  entitlock.usage_limit('ao:user', 'api', 5),
                  entitlock.usage_limit('ao:new', 'api', 5, 'day')])[o.idx[3]]]) AS r
 GROUP BY o.perm ORDER BY o.perm;
SELECT subject, period, used FROM entitlock.usage_counter
 WHERE subject LIKE 'ao:%' ORDER BY subject, period;

-- The key of a denied set recorded nothing, so refunding it gives back
-- nothing, even on a meter whose own limit had room and that someone
-- else then charged.
SELECT allowed FROM entitlock.record_usage_if_under_limits(ARRAY[
    entitlock.usage_limit('dr:user', 'api', 0),
    entitlock.usage_limit('dr:org', 'api', 3)], 1, 'denied-set');
SELECT entitlock.record_usage('dr:org', 'api', 1);
SELECT entitlock.refund_usage('dr:org', 'api', 'denied-set');
SELECT entitlock.usage('dr:org', 'api');

-- A retry answers with the first call's row, period_end included, also
-- once its period has ended; and a refund goes to the key's own period,
-- never the current one.  The keys are made a day old here, as a retry
-- or refund arriving the next day would find them.
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('pe:1', 'api', 1, 5, 'day', 'old-key');
SELECT subject, allowed, used FROM entitlock.record_usage_if_under_limits(ARRAY[
    entitlock.usage_limit('pe:2', 'api', 5, 'day'),
    entitlock.usage_limit('pe:3', 'api', 5)], 1, 'old-set-key');
UPDATE entitlock.usage_idempotency SET recorded_at = recorded_at - interval '1 day'
 WHERE idempotency_key = 'old-key';
UPDATE entitlock.usage_limits_idempotency SET recorded_at = recorded_at - interval '1 day'
 WHERE idempotency_key = 'old-set-key';
SELECT allowed, used,
       period_end = (date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') AS first_calls_period_end
  FROM entitlock.record_usage_if_under_limit('pe:1', 'api', 1, 5, 'day', 'old-key');
SELECT subject, allowed, used,
       period_end IS NOT DISTINCT FROM (CASE WHEN period = 'day' THEN
           date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' END) AS first_calls_period_end
  FROM entitlock.record_usage_if_under_limits(ARRAY[
    entitlock.usage_limit('pe:3', 'api', 5),
    entitlock.usage_limit('pe:2', 'api', 5, 'day')], 1, 'old-set-key');
-- Yesterday's counters are not there, so the day meters get nothing back
-- and today's usage stays; the lifetime meter gets its unit back.
SELECT entitlock.refund_usage('pe:1', 'api', 'old-key');
SELECT entitlock.refund_usage('pe:2', 'api', 'old-set-key');
SELECT entitlock.refund_usage('pe:3', 'api', 'old-set-key');
SELECT entitlock.usage('pe:1', 'api', 'day'), entitlock.usage('pe:2', 'api', 'day'),
       entitlock.usage('pe:3', 'api');

-- How the functions are declared.
SELECT p.oid::regprocedure AS function, p.provolatile, p.proisstrict,
       p.proparallel, p.prosecdef
  FROM pg_proc AS p
 WHERE p.pronamespace = 'entitlock'::regnamespace
   AND p.proname IN ('usage_limit', 'record_usage_if_under_limits', 'refund_usage',
                     'rate_limit', 'gcra', 'prune_rate_limits')
 ORDER BY p.oid::regprocedure::text;
