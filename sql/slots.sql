--
-- slots: semaphores (lock_slot, slot_holders) and lease slots
-- (lease_acquire_slot) as seen from one session.  Waits between sessions
-- are in test/isolation/specs/slot-*.spec.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS entitlock;
RESET client_min_messages;

-- What this session holds of semaphores, from pg_locks: nothing yet.
CREATE FUNCTION my_slot_locks() RETURNS bigint
LANGUAGE sql AS $$
	SELECT count(*) FROM pg_locks
	 WHERE locktype = 'advisory' AND pid = pg_backend_pid()
	   AND objsubid >= 16384
$$;

-- Every error takes nothing, not even the gate.
BEGIN;
SELECT entitlock.lock_slot(NULL, 3);
ROLLBACK;
BEGIN;
SELECT entitlock.lock_slot('', 3);
ROLLBACK;
BEGIN;
SELECT entitlock.lock_slot('exports', NULL);
ROLLBACK;
BEGIN;
SELECT entitlock.lock_slot('exports', 0);
ROLLBACK;
BEGIN;
SELECT entitlock.lock_slot('exports', -1);
ROLLBACK;
BEGIN;
SELECT entitlock.lock_slot('exports', 10001);
ROLLBACK;
BEGIN;
SELECT entitlock.lock_slot('exports', 3, '-1 second');
ROLLBACK;
BEGIN;
SELECT entitlock.slot_holders(NULL, 3);
ROLLBACK;
BEGIN;
SELECT entitlock.slot_holders('exports', 0);
ROLLBACK;
BEGIN;
SELECT entitlock.slot_holders('', 1);
ROLLBACK;
SELECT my_slot_locks() AS held_after_errors;

-- The upper bound itself is accepted.
BEGIN;
SELECT entitlock.lock_slot('exports-max', 10000) AS slot;
ROLLBACK;

-- A slot is held until the end of the transaction; asking again gives it
-- back at once, with any wait; a different name is a different semaphore.
BEGIN;
SELECT entitlock.lock_slot('exports', 3) AS first;
SELECT entitlock.lock_slot('exports', 3) AS again;
SELECT entitlock.lock_slot('exports', 3, '0') AS again_no_wait;
SELECT entitlock.lock_slot('exports:other', 1) AS other_name;
SELECT slot, pid = pg_backend_pid() AS mine, granted,
	   xact_start = now() AS since_xact_start, application_name,
	   wait_start
  FROM entitlock.slot_holders('exports', 3);
-- slot_holders of a semaphore only lists slots 1..slots
SELECT count(*) AS listed FROM entitlock.slot_holders('exports', 1);
-- lock(name) of the same name is a different lock: it is free.
SELECT entitlock.try_lock('exports') AS lock_of_same_name_free;
SELECT my_slot_locks() AS slot_locks;	-- two slots, no gate
COMMIT;
SELECT my_slot_locks() AS after_commit;
SELECT count(*) AS holders_after_commit
  FROM entitlock.slot_holders('exports', 3);

-- A slot taken in a subtransaction that rolls back is given back.
BEGIN;
SAVEPOINT a;
SELECT entitlock.lock_slot('exports', 2) AS in_savepoint;
ROLLBACK TO a;
SELECT my_slot_locks() AS after_rollback_to;
SELECT entitlock.lock_slot('exports', 2) AS after_savepoint;
ROLLBACK;

-- lock_slot's slots are not pg_advisory_xact_lock(key(name))'s lock.
BEGIN;
SELECT pg_advisory_xact_lock(entitlock.key('exports'));
SELECT entitlock.lock_slot('exports', 1, '0') AS slot_despite_advisory;
ROLLBACK;

--
-- Lease slots
--
SELECT last_value - (NOT is_called)::int AS base
  FROM entitlock.lease_fencing \gset
CREATE TEMP TABLE got (label text PRIMARY KEY, slot int, token uuid,
					   fencing bigint);
CREATE FUNCTION take(label text, name text, slots int, ttl interval,
					 holder text DEFAULT NULL)
RETURNS TABLE (slot int, fencing bigint)
LANGUAGE sql AS $$
	INSERT INTO got
	SELECT label, a.slot, a.token, a.fencing
	  FROM entitlock.lease_acquire_slot(name, slots, ttl, holder) AS a;
	SELECT g.slot, g.fencing - current_setting('test.base')::bigint
	  FROM got AS g WHERE g.label = take.label;
$$;
SELECT set_config('test.base', :'base', false) IS NOT NULL AS base_set;
CREATE FUNCTION tok(label text) RETURNS uuid
LANGUAGE sql AS $$ SELECT token FROM got WHERE got.label = tok.label $$;

-- Errors store nothing.
SELECT * FROM entitlock.lease_acquire_slot(NULL, 2, '1 min');
SELECT * FROM entitlock.lease_acquire_slot('', 2, '1 min');
SELECT * FROM entitlock.lease_acquire_slot('workers', 0, '1 min');
SELECT * FROM entitlock.lease_acquire_slot('workers', 10001, '1 min');
SELECT * FROM entitlock.lease_acquire_slot('workers', NULL, '1 min');
SELECT * FROM entitlock.lease_acquire_slot('workers', 2, NULL);
SELECT * FROM entitlock.lease_acquire_slot('workers', 2, '-1 min');
SELECT * FROM entitlock.lease_acquire_slot('workers', 2, '1 min', NULL, '-1 s');
SELECT count(*) AS stored_after_errors FROM entitlock.lease_record
 WHERE name = 'workers';

-- Two slots: two leases, each its own token and increasing fencing; the
-- third gets no row.
SELECT * FROM take('a', 'workers', 2, '1 min', 'worker-a');
SELECT * FROM take('b', 'workers', 2, '1 min', 'worker-b');
SELECT * FROM take('c', 'workers', 2, '1 min', 'worker-c');
SELECT tok('a') <> tok('b') AS own_tokens;
-- The plain lease of the name is apart from its slots.
SELECT fencing - :base AS plain_fencing
  FROM entitlock.lease_acquire('workers', '1 min', 'plain');
SELECT name, holder, fencing - :base AS fencing, slot
  FROM entitlock.leases WHERE name = 'workers' ORDER BY fencing;
-- The view's slot is its last column.
SELECT attname FROM pg_attribute
 WHERE attrelid = 'entitlock.leases'::regclass AND attnum > 0
 ORDER BY attnum DESC LIMIT 1;

-- Renew and release by token, as for plain leases; a wrong token does
-- nothing.
SELECT entitlock.lease_renew('workers', tok('a'), '2 min') AS renewed_a;
SELECT entitlock.lease_renew('workers', gen_random_uuid(), '2 min') AS renewed_other;
SELECT entitlock.lease_release('workers', tok('a')) AS released_a;
SELECT entitlock.lease_release('workers', tok('a')) AS released_a_again;
-- The freed slot is taken again, with a higher fencing number.
SELECT * FROM take('d', 'workers', 2, '1 min', 'worker-d');
-- An expired slot is taken over, keeping its number, with a new token and
-- a higher fencing number; the old token no longer renews it.
SELECT * FROM take('e', 'expiring', 1, '10 ms', 'worker-e');
SELECT pg_sleep(0.05);
SELECT * FROM take('f', 'expiring', 1, '1 min', 'worker-f');
SELECT entitlock.lease_renew('expiring', tok('e'), '1 min') AS stale_renewed;
SELECT count(*) AS rows_for_expiring FROM entitlock.lease_record
 WHERE name = 'expiring';
SELECT entitlock.lease_release('workers', tok('b')),
	   entitlock.lease_release('workers', tok('d')),
	   entitlock.lease_release('expiring', tok('f'));
DELETE FROM entitlock.lease_record WHERE name IN ('workers', 'expiring');
