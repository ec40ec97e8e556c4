--
-- waits: the bounded waits of 1.1 (idempotency_begin's and lease_acquire's
-- wait, holders()' wait_start and blocked_by) and the statistics view as
-- one session sees them.  Waits on another session are in
-- test/isolation/specs/idempotency-in-progress.spec, lease-wait-*.spec and
-- lock-holders-waiting.spec; counted statistics in
-- test/tap/002_statistics.pl (they need shared_preload_libraries).
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS entitlock;
RESET client_min_messages;

--
-- idempotency_begin(key, fingerprint, ttl, wait)
--
SELECT pg_get_function_arguments('entitlock.idempotency_begin(text, text, interval, interval)'::regprocedure);

-- A free key is claimed whatever the wait: NULL (as 1.0), zero, a bound.
BEGIN;
SELECT * FROM entitlock.idempotency_begin('waits-a', NULL, '1 hour', NULL);
SELECT * FROM entitlock.idempotency_begin('waits-b', wait => '0');
SELECT * FROM entitlock.idempotency_begin('waits-c', 'fp', '1 hour', '5 s');
-- The transaction's own claim is never "in progress": it replays.
SELECT * FROM entitlock.idempotency_begin('waits-c', 'fp', '1 hour', '0');
COMMIT;
SELECT * FROM entitlock.idempotency_begin('waits-a', wait => '0');
SELECT * FROM entitlock.idempotency_begin('waits-b', wait => NULL);

-- The 1.0 call, without wait, means what it meant.
SELECT * FROM entitlock.idempotency_begin('waits-a');

-- A negative wait is an error and claims nothing; so is one with a
-- negative part that makes the whole negative.
SELECT * FROM entitlock.idempotency_begin('waits-d', wait => '-1 ms');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.idempotency_begin('waits-d', wait => '1 day -25 hours');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS claimed FROM entitlock.idempotency_key WHERE key = 'waits-d';
-- The error comes before the key is looked at, even for a key that replays.
SELECT * FROM entitlock.idempotency_begin('waits-a', wait => '-1 s');
\echo :LAST_ERROR_SQLSTATE
-- A mixed-sign interval that is positive in all waits.
SELECT * FROM entitlock.idempotency_begin('waits-e', wait => '1 day -1 hour');

--
-- lease_acquire(name, ttl, holder, wait)
--
SELECT pg_get_function_arguments('entitlock.lease_acquire(text, interval, text, interval)'::regprocedure);

-- A free name is taken at once, whatever the wait.
SELECT count(*) AS taken FROM entitlock.lease_acquire('waits-job', '1 hour', 'w1', '5 s');

-- Held by a committed lease: NULL and zero do not wait; a bound waits for
-- it and returns no row.
CREATE TEMP TABLE t0 AS SELECT clock_timestamp() AS t;
SELECT count(*) AS taken FROM entitlock.lease_acquire('waits-job', '1 hour', 'w2', NULL);
SELECT count(*) AS taken FROM entitlock.lease_acquire('waits-job', '1 hour', 'w2', '0');
SELECT count(*) AS taken FROM entitlock.lease_acquire('waits-job', '1 hour', 'w2');
SELECT clock_timestamp() - t < '500 ms' AS did_not_wait FROM t0;
UPDATE t0 SET t = clock_timestamp();
SELECT count(*) AS taken FROM entitlock.lease_acquire('waits-job', '1 hour', 'w2', '200 ms');
SELECT clock_timestamp() - t >= '200 ms' AS waited_the_bound,
	   clock_timestamp() - t < '2 s' AS and_no_longer
  FROM t0;
SELECT holder FROM entitlock.leases WHERE name = 'waits-job';

-- A lease that expires while the caller waits is taken at its expiry,
-- with a higher fencing number.
SELECT fencing AS old_fencing FROM entitlock.lease_acquire('waits-short', '300 ms', 'w1') \gset
UPDATE t0 SET t = clock_timestamp();
SELECT fencing > :old_fencing AS higher_fencing
  FROM entitlock.lease_acquire('waits-short', '1 hour', 'w2', '10 s');
SELECT clock_timestamp() - t >= '150 ms' AS waited_for_expiry,
	   clock_timestamp() - t < '2 s' AS not_for_the_bound
  FROM t0;
SELECT holder FROM entitlock.leases WHERE name = 'waits-short';

-- statement_timeout ends a wait.
SET statement_timeout = '150 ms';
SELECT count(*) FROM entitlock.lease_acquire('waits-job', '1 hour', 'w3', '10 s');
\echo :LAST_ERROR_SQLSTATE
RESET statement_timeout;

-- A negative wait is an error and changes nothing.
SELECT count(*) FROM entitlock.lease_acquire('waits-free', '1 hour', 'w1', '-1 ms');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS leases FROM entitlock.lease_record WHERE name = 'waits-free';

--
-- holders(): two new columns; a holder has no wait_start and blocks on
-- no one.
--
SELECT pg_get_function_result('entitlock.holders(text)'::regprocedure);
BEGIN;
SELECT entitlock.lock('waits-lock');
SELECT mode, granted, wait_start IS NULL AS no_wait_start, blocked_by
  FROM entitlock.holders('waits-lock');
COMMIT;

--
-- Statistics.  pg_regress runs without shared_preload_libraries, so the
-- view is empty and stats_reset() has nothing to clear; both are for
-- roles granted them.
--
SELECT count(*) AS rows FROM entitlock.stats;
SELECT entitlock.stats_reset();
SELECT count(*) AS rows FROM entitlock.stats;
SELECT attname, format_type(atttypid, atttypmod)
  FROM pg_attribute
 WHERE attrelid = 'entitlock.stats'::regclass AND attnum > 0
 ORDER BY attnum;

CREATE ROLE regress_entitlock_monitor;
GRANT USAGE ON SCHEMA entitlock TO regress_entitlock_monitor;
SET ROLE regress_entitlock_monitor;
SELECT count(*) FROM entitlock.stats;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM entitlock.stats_entries();
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.stats_reset();
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT SELECT ON entitlock.stats TO regress_entitlock_monitor;
SET ROLE regress_entitlock_monitor;
SELECT count(*) FROM entitlock.stats;
SELECT entitlock.stats_reset();
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT EXECUTE ON FUNCTION entitlock.stats_reset() TO regress_entitlock_monitor;
SET ROLE regress_entitlock_monitor;
SELECT entitlock.stats_reset();
RESET ROLE;
REVOKE ALL ON entitlock.stats FROM regress_entitlock_monitor;
REVOKE ALL ON FUNCTION entitlock.stats_reset() FROM regress_entitlock_monitor;
REVOKE USAGE ON SCHEMA entitlock FROM regress_entitlock_monitor;
DROP ROLE regress_entitlock_monitor;

-- Without the preload the GUC is not there either.
SELECT current_setting('entitlock.stats_max', true) IS NULL AS no_stats_max;
