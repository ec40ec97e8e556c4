--
-- escalation: the locks recording calls take, and how many, as seen from
-- one session.  What they exclude in other sessions is in
-- test/isolation/specs/usage-escalated-lock-entity-excludes.spec; a
-- million meters in one transaction in test/tap/020_bulk_recording.pl.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS entitlock;
RESET client_min_messages;

-- This session's advisory locks by key space (1: the applications', as
-- pg_advisory_xact_lock takes them; 3: entitlock's internal ones), mode
-- and whether they are lock escalation stripes.
CREATE TEMP VIEW my_locks AS
SELECT objsubid, mode,
       objsubid = 3 AND classid = x'656e746c'::int
                    AND objid >= x'65736300'::bigint AND objid < x'65736340'::bigint AS stripe,
       count(*) AS locks
  FROM pg_locks
 WHERE locktype = 'advisory' AND pid = pg_backend_pid()
 GROUP BY 1, 2, 3
 ORDER BY 1, 2, 3;

-- Below the threshold (1,000 by default), a call holds shared locks on
-- its subject and pair.
BEGIN;
SELECT entitlock.record_usage('esc:1', 'api', 1);
SHOW entitlock.lock_escalation_threshold;
SELECT entitlock.record_usage('esc:2', 'api', 1);
SELECT * FROM my_locks;
COMMIT;

-- Past it, a call takes every stripe instead, once; the locks taken
-- before stay.  A set of limits counts each of its subjects and pairs.
SET entitlock.lock_escalation_threshold = 5;
BEGIN;
SELECT entitlock.record_usage('esc:1', 'api', 1);
SELECT count(*) FROM entitlock.record_usage_if_under_limits(ARRAY[
    entitlock.usage_limit('esc:2', 'api', 100),
    entitlock.usage_limit('esc:3', 'api', 100, 'day')]);
SELECT * FROM my_locks;
SELECT entitlock.record_usage('esc:' || g, 'api', 1) FROM generate_series(4, 6) g;
SELECT * FROM my_locks;
-- Its own exclusive locks do not conflict with its stripes.
SELECT entitlock.lock('esc:1'), entitlock.lock_entity('esc:2', 'api');
COMMIT;

-- The count starts again with each transaction.
BEGIN;
SELECT entitlock.record_usage('esc:7', 'api', 1);
SELECT * FROM my_locks;
COMMIT;

-- A savepoint rolled back gives the stripes back; the next call takes
-- them again.
BEGIN;
SELECT entitlock.record_usage('esc:' || g, 'api', 1) FROM generate_series(1, 2) g;
SAVEPOINT s;
SELECT entitlock.record_usage('esc:3', 'api', 1);
SELECT * FROM my_locks;
ROLLBACK TO s;
SELECT * FROM my_locks;
SELECT entitlock.record_usage('esc:3', 'api', 1);
SELECT * FROM my_locks;
COMMIT;

-- 0 escalates at the first call; refunds count as recording.
SET entitlock.lock_escalation_threshold = 0;
BEGIN;
SELECT entitlock.refund_usage('esc:1', 'api', 'no-such-key');
SELECT * FROM my_locks;
ROLLBACK;
RESET entitlock.lock_escalation_threshold;

-- The threshold cannot be negative.
SET entitlock.lock_escalation_threshold = -1;

-- A new counter or rate limit row is created under an internal lock that
-- is given back once the row is in the table, so creating many rows in
-- one transaction holds no lock per row.
BEGIN;
SELECT count(*) FROM generate_series(1, 100) g,
       entitlock.record_usage_if_under_limit('new:' || g, 'api', 1, 10) r
 WHERE r.allowed;
SELECT count(*) FROM generate_series(1, 100) g,
       entitlock.rate_limit('new:' || g, 10, '1 minute') r
 WHERE r.allowed;
SELECT * FROM my_locks WHERE objsubid = 3;
COMMIT;
-- A call that creates nothing gives it back once it has decided too.
BEGIN;
SELECT allowed FROM entitlock.record_usage_if_under_limit('new:0', 'api', 5, 1);
SELECT * FROM my_locks WHERE objsubid = 3;
COMMIT;

DROP VIEW my_locks;
TRUNCATE entitlock.usage_counter, entitlock.rate_limit_state;
