--
-- locks: transaction-scoped named locks as seen from one session.
-- What happens between sessions is in test/isolation/specs.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS entitlock;
RESET client_min_messages;

-- This session's advisory locks in the applications' key space, with the
-- 64-bit key put back together from pg_locks' classid (high half) and
-- objid (low half).  entitlock's internal locks (objsubid 3) are left out.
CREATE TEMP VIEW my_locks AS
SELECT (l.classid::bigint << 32) | l.objid::bigint AS key,
       l.objsubid, l.mode, l.granted
  FROM pg_locks AS l
 WHERE l.locktype = 'advisory'
   AND l.objsubid <> 3
   AND l.pid = pg_backend_pid()
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());

-- lock(name) takes exactly the lock pg_advisory_xact_lock(key(name)) takes:
-- taking both leaves one lock in pg_locks, under the name's key.
BEGIN;
SELECT entitlock.lock('alpha');
SELECT key = entitlock.key('alpha') AS is_alpha, objsubid, mode, granted FROM my_locks;
SELECT pg_advisory_xact_lock(entitlock.key('alpha'));
SELECT count(*) AS locks FROM my_locks;
-- Besides, an exclusive lock takes one internal lock, its key's lock
-- escalation stripe, in share mode (see sql/escalation.sql).
SELECT objsubid, mode, granted FROM pg_locks
 WHERE locktype = 'advisory' AND objsubid = 3 AND pid = pg_backend_pid();
COMMIT;
-- and COMMIT released it.
SELECT count(*) AS locks FROM my_locks;

-- lock_shared(name) is pg_advisory_xact_lock_shared(key(name)).
BEGIN;
SELECT pg_advisory_xact_lock_shared(entitlock.key('alpha'));
SELECT entitlock.lock_shared('alpha');
SELECT key = entitlock.key('alpha') AS is_alpha, mode, granted FROM my_locks;
ROLLBACK;
-- and ROLLBACK released it.
SELECT count(*) AS locks FROM my_locks;

-- Re-taking a lock the transaction holds succeeds at once, in every form.
BEGIN;
SELECT entitlock.lock('beta');
SELECT entitlock.lock('beta');
SELECT entitlock.try_lock('beta') AS try_again;
SELECT entitlock.lock('beta', '0'::interval) AS zero_wait_again;
SELECT entitlock.lock('beta', '10 ms') AS timed_again;
SELECT count(*) AS locks FROM my_locks;
COMMIT;

-- Free locks: every form takes them and reports so.
BEGIN;
SELECT entitlock.try_lock('gamma') AS try_lock,
       entitlock.try_lock_shared('delta') AS try_lock_shared,
       entitlock.lock('epsilon', '0'::interval) AS zero_timeout,
       entitlock.lock('zeta', '1000 years') AS huge_timeout;
SELECT key = entitlock.key('gamma') AS gamma,
       key = entitlock.key('delta') AS delta,
       mode
  FROM my_locks
 WHERE key IN (entitlock.key('gamma'), entitlock.key('delta'))
 ORDER BY mode;
SELECT count(*) AS locks FROM my_locks;
COMMIT;

-- A lock taken inside a savepoint is released by ROLLBACK TO, like any
-- transaction lock; one taken before it survives.
BEGIN;
SELECT entitlock.lock('outer');
SAVEPOINT sp;
SELECT entitlock.lock('inner', '1 s');
ROLLBACK TO sp;
SELECT key = entitlock.key('outer') AS only_outer_left FROM my_locks;
COMMIT;

-- lock_all: exclusive on each distinct name; duplicates and NULLs ignored.
BEGIN;
SELECT entitlock.lock_all(ARRAY['c', 'a', NULL, 'b', 'a', 'c']);
SELECT count(*) AS locks, count(*) FILTER (WHERE mode = 'ExclusiveLock') AS exclusive,
       bool_and(key IN (entitlock.key('a'), entitlock.key('b'), entitlock.key('c'))) AS right_keys
  FROM my_locks;
SELECT entitlock.lock_all('{}');
SELECT entitlock.lock_all(ARRAY[NULL, NULL]::text[]);
SELECT count(*) AS locks FROM my_locks;
COMMIT;

-- lock_entity: shared on the realm, exclusive on the pair.
BEGIN;
SELECT entitlock.lock_entity('workspace:42', 'seats');
SELECT CASE key
         WHEN entitlock.key('workspace:42') THEN 'realm'
         WHEN entitlock.key('workspace:42', 'seats') THEN 'pair'
       END AS lock, mode
  FROM my_locks ORDER BY 1;
SELECT entitlock.try_lock_entity('workspace:42', 'invoices') AS try_other_entity;
SELECT count(*) AS locks FROM my_locks;
COMMIT;

-- holders(name): who holds or waits, from pg_locks and pg_stat_activity.
SELECT count(*) AS nobody FROM entitlock.holders('alpha');
BEGIN;
SELECT entitlock.lock('alpha');
SELECT entitlock.lock_shared('omega');
SELECT pid = pg_backend_pid() AS me, mode, granted,
       xact_start = now() AS this_xact, application_name
  FROM entitlock.holders('alpha');
SELECT mode FROM entitlock.holders('omega');
-- lock_entity holders show up as shared holders of the realm.
SELECT entitlock.lock_entity('realm-h', 'e1');
SELECT mode FROM entitlock.holders('realm-h');
COMMIT;
SELECT count(*) AS nobody FROM entitlock.holders('alpha');
SELECT count(*) AS null_name FROM entitlock.holders(NULL);

-- Everything works whatever the caller's search_path.
SET search_path = '';
BEGIN;
SELECT entitlock.lock('sp');
SELECT count(*) AS held FROM entitlock.holders('sp');
COMMIT;
RESET search_path;

-- Lock functions change state: VOLATILE, not parallel safe, not STRICT
-- (a NULL must not quietly take no lock).
SELECT p.oid::regprocedure AS function, p.provolatile, p.proisstrict, p.proparallel,
       pg_get_function_result(p.oid) AS result
  FROM pg_proc AS p
 WHERE p.pronamespace = 'entitlock'::regnamespace
   AND (p.proname LIKE '%lock%' OR p.proname = 'holders')
 ORDER BY p.oid::regprocedure::text;

-- Errors: NULL is 22004, empty or negative is 22023; none takes a lock.
SELECT entitlock.lock(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.lock('');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.lock(NULL, '1 s');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.lock('x', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.lock('x', '-1 s');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.lock('x', '1 day -25 hours');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.try_lock(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.try_lock('');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.lock_shared(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.try_lock_shared('');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.lock_all(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.lock_all(ARRAY['ok', '']);
\echo :LAST_ERROR_SQLSTATE
-- positions are reported as the array's own subscripts
SELECT entitlock.lock_all('[0:2]={a,"",c}'::text[]);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.lock_entity(NULL, 'e');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.lock_entity('r', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.lock_entity('', 'e');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.try_lock_entity('r', '');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.holders('');
\echo :LAST_ERROR_SQLSTATE
-- The failed calls above left nothing behind.
SELECT count(*) AS locks FROM my_locks;

-- Inside a procedure, each COMMIT ends the transaction and its locks.
CREATE PROCEDURE lock_then_commit() LANGUAGE plpgsql AS $$
BEGIN
    PERFORM entitlock.lock('proc');
    RAISE NOTICE 'before commit: % lock(s)', (SELECT count(*) FROM my_locks);
    COMMIT;
    RAISE NOTICE 'after commit: % lock(s)', (SELECT count(*) FROM my_locks);
END $$;
CALL lock_then_commit();
DROP PROCEDURE lock_then_commit();

DROP VIEW my_locks;
