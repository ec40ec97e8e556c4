--
-- leases: leases as seen from one session.  Races between sessions are in
-- test/isolation/specs/lease-*.spec.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS entitlock;
RESET client_min_messages;

-- Fencing numbers come from a sequence; show them relative to where it
-- stands now, so this file does not depend on what ran before it.
SELECT last_value - (NOT is_called)::int AS base
  FROM entitlock.lease_fencing \gset

-- Every acquisition this file makes, by a label, with what it returned.
CREATE TEMP TABLE got (label text PRIMARY KEY, token uuid, fencing bigint);
CREATE FUNCTION acquire(label text, name text, ttl interval,
						holder text DEFAULT NULL)
RETURNS TABLE (acquired boolean, fencing bigint)
LANGUAGE sql AS $$
	INSERT INTO got
	SELECT label, a.token, a.fencing
	  FROM entitlock.lease_acquire(name, ttl, holder) AS a;
	SELECT count(*) > 0, max(g.fencing) - current_setting('test.base')::bigint
	  FROM got AS g WHERE g.label = acquire.label;
$$;
SELECT set_config('test.base', :'base', false) IS NOT NULL AS base_set;
CREATE FUNCTION tok(label text) RETURNS uuid
LANGUAGE sql AS $$ SELECT token FROM got WHERE got.label = tok.label $$;

-- Every stored lease, with its token named by the acquisition it came
-- from (tokens themselves are random).
CREATE TEMP VIEW records AS
SELECT r.name, r.holder, r.fencing - current_setting('test.base')::bigint AS fencing,
	   (SELECT string_agg(g.label, ',') FROM got g WHERE g.token = r.token) AS token_of,
	   r.key_hash = entitlock.key('entitlock.lease', r.name) AS hash_ok,
	   r.expires_at > clock_timestamp() AS live
  FROM entitlock.lease_record r
 ORDER BY r.name;

--
-- Acquire, hold, renew, release
--
SELECT * FROM acquire('a1', 'report', '1 minute', 'worker-1');
-- held: another acquirer gets no row, and no error
SELECT * FROM entitlock.lease_acquire('report', '1 minute', 'worker-2');
SELECT * FROM acquire('a1-again', 'report', '1 minute', 'worker-2');
SELECT tok('a1') IS NOT NULL AS has_token,
	   tok('a1')::text ~ '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$' AS is_v4_uuid;
SELECT * FROM records;
SELECT name, holder, fencing - :base AS fencing,
	   expires_at - acquired_at AS ttl,
	   acquired_at <= clock_timestamp() AS acquired_in_past
  FROM entitlock.leases;

-- renew moves the expiry to ttl from now; only the token renews
SELECT entitlock.lease_renew('report', tok('a1'), '2 hours');
SELECT expires_at - clock_timestamp() BETWEEN '1 hour 59 minutes' AND '2 hours' AS renewed
  FROM entitlock.leases WHERE name = 'report';
SELECT entitlock.lease_renew('report', gen_random_uuid(), '3 hours');
-- a token is only good for its own name
SELECT * FROM acquire('b1', 'billing', '1 minute');
SELECT entitlock.lease_renew('billing', tok('a1'), '3 hours');
SELECT entitlock.lease_release('billing', tok('a1'));
SELECT entitlock.lease_renew('no-such-lease', tok('a1'), '3 hours');
SELECT entitlock.lease_release('no-such-lease', tok('a1'));
SELECT * FROM records;

-- release: a stranger cannot; the owner can, once
SELECT entitlock.lease_release('report', gen_random_uuid());
SELECT entitlock.lease_release('report', tok('a1'));
SELECT entitlock.lease_release('report', tok('a1'));
SELECT entitlock.lease_renew('report', tok('a1'), '1 hour');
SELECT * FROM records;

-- the next acquisition gets a higher fencing number
SELECT * FROM acquire('a2', 'report', '1 minute', 'worker-2');
SELECT entitlock.lease_release('report', tok('a2'));

--
-- Expiry and takeover
--
SELECT * FROM acquire('e1', 'nightly', '50 milliseconds', 'worker-1');
SELECT pg_sleep(0.1);
-- expired: gone from the view, but nobody has taken it over, so its token
-- still renews it (its fencing number is still the latest)
SELECT count(*) AS leases_shown FROM entitlock.leases WHERE name = 'nightly';
SELECT entitlock.lease_renew('nightly', tok('e1'), '50 milliseconds');
SELECT count(*) AS leases_shown FROM entitlock.leases WHERE name = 'nightly';
SELECT pg_sleep(0.1);
-- taken over: a new token and a higher fencing number
SELECT * FROM acquire('e2', 'nightly', '1 minute', 'worker-2');
SELECT * FROM records;
-- the old holder can neither renew nor release the new holder's lease
SELECT entitlock.lease_renew('nightly', tok('e1'), '1 hour');
SELECT entitlock.lease_release('nightly', tok('e1'));
SELECT name, holder, fencing - :base AS fencing FROM entitlock.leases
 WHERE name = 'nightly';
SELECT entitlock.lease_release('nightly', tok('e2'));

--
-- Fencing numbers never go back: not after release, expiry or rollback
--
BEGIN;
SELECT * FROM acquire('r1', 'rolled', '1 minute');
ROLLBACK;
SELECT * FROM acquire('r2', 'rolled', '1 minute');
SELECT * FROM records WHERE name = 'rolled';
SELECT entitlock.lease_release('rolled', tok('r2'));
-- a savepoint rolled back takes the acquisition (and its lock) with it
BEGIN;
SAVEPOINT s;
SELECT acquired FROM acquire('r3', 'rolled', '1 minute');
ROLLBACK TO SAVEPOINT s;
SELECT count(*) AS advisory_locks FROM pg_locks
 WHERE locktype = 'advisory' AND pid = pg_backend_pid();
SELECT * FROM acquire('r4', 'rolled', '1 minute');
COMMIT;
SELECT * FROM records WHERE name = 'rolled';
-- many names, many acquisitions: strictly increasing, in order taken
DELETE FROM got WHERE label LIKE 'm%';
DO $$
BEGIN
	FOR g IN 1..50 LOOP
		PERFORM acquire('m' || g, 'many-' || (g % 3), '1 minute');
		IF NOT entitlock.lease_release('many-' || (g % 3), tok('m' || g)) THEN
			RAISE EXCEPTION 'acquisition % was not released', g;
		END IF;
	END LOOP;
END
$$;
SELECT count(*) AS acquisitions,
	   count(*) FILTER (WHERE fencing <= prev) AS not_increasing
  FROM (SELECT fencing, lag(fencing) OVER (ORDER BY substr(label, 2)::int) AS prev
		  FROM got WHERE label LIKE 'm%') AS s;

--
-- In one transaction
--
BEGIN;
SELECT * FROM acquire('t1', 'txn', '1 minute');
-- held by this transaction's own lease: no second one
SELECT * FROM entitlock.lease_acquire('txn', '1 minute');
SELECT entitlock.lease_renew('txn', tok('t1'), '5 minutes');
SELECT name, expires_at - acquired_at >= '5 minutes' AS renewed
  FROM entitlock.leases WHERE name = 'txn';
SELECT entitlock.lease_release('txn', tok('t1'));
SELECT * FROM acquire('t2', 'txn', '1 minute');
COMMIT;
SELECT * FROM records WHERE name = 'txn';

-- A call that took nothing holds no lock afterwards, so it cannot hold up
-- the owner for the rest of the caller's transaction.  One that took the
-- lease keeps the name's lock until commit.
BEGIN;
SELECT * FROM entitlock.lease_acquire('txn', '1 minute');
SELECT entitlock.lease_renew('txn', gen_random_uuid(), '1 minute');
SELECT entitlock.lease_release('txn', gen_random_uuid());
SELECT count(*) AS advisory_locks FROM pg_locks
 WHERE locktype = 'advisory' AND pid = pg_backend_pid();
SELECT * FROM acquire('t3', 'txn-2', '1 minute');
SELECT ((l.classid::bigint << 32) | l.objid::bigint) = entitlock.key('entitlock.lease', 'txn-2') AS name_lock,
	   l.mode
  FROM pg_locks l
 WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid();
COMMIT;

--
-- Holders and names
--
SELECT * FROM acquire('h1', 'no holder', '1 minute');
SELECT * FROM acquire('h2', 'ünïcødé ✓', '1 minute', '');
SELECT * FROM acquire('h3', 'Report', '1 minute', 'case differs');
-- a 1 MB name works (only a hash of it is indexed)
SELECT * FROM acquire('h4', repeat('n', 1000000), '1 minute', 'long');
SELECT * FROM entitlock.lease_acquire(repeat('n', 1000000), '1 minute');
SELECT entitlock.lease_release(repeat('n', 999999) || 'x', tok('h4'));
SELECT entitlock.lease_release(repeat('n', 1000000), tok('h4'));
SELECT name, holder FROM entitlock.leases ORDER BY name COLLATE "C";

-- The view never shows a token.
SELECT attname FROM pg_attribute
 WHERE attrelid = 'entitlock.leases'::regclass AND attnum > 0
 ORDER BY attnum;

--
-- Bad arguments: an error with its SQLSTATE, and nothing written
--
CREATE TEMP TABLE before AS SELECT * FROM entitlock.lease_record;
SELECT last_value AS fencing_before FROM entitlock.lease_fencing \gset
\set VERBOSITY default
SELECT * FROM entitlock.lease_acquire('bad', '0');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.lease_acquire('bad', '-1 second');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.lease_acquire('bad', make_interval(days => 1, hours => -25));
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.lease_acquire('bad', '367 days');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.lease_acquire('bad', '1000000 years');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.lease_acquire('bad', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.lease_acquire(NULL, '1 minute');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.lease_acquire('', '1 minute');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.lease_renew('billing', tok('b1'), '0');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.lease_renew('billing', tok('b1'), '400 days');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.lease_renew('billing', tok('b1'), NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.lease_renew('billing', NULL, '1 minute');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.lease_renew(NULL, tok('b1'), '1 minute');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.lease_release('billing', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.lease_release('', tok('b1'));
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY terse
SELECT (SELECT count(*) FROM entitlock.lease_record) = (SELECT count(*) FROM before) AS rows_unchanged,
	   NOT EXISTS (SELECT * FROM entitlock.lease_record EXCEPT SELECT * FROM before) AS same_rows,
	   last_value = :fencing_before AS fencing_unchanged
  FROM entitlock.lease_fencing;

-- The longest ttl is accepted.
SELECT * FROM acquire('long-ttl', 'long ttl', '366 days');
SELECT expires_at - acquired_at AS ttl FROM entitlock.leases WHERE name = 'long ttl';
SELECT entitlock.lease_renew('long ttl', tok('long-ttl'), '1 year');

-- Not in a read-only transaction, not as a set-returning call that cannot
-- take a set.
BEGIN READ ONLY;
SELECT * FROM entitlock.lease_acquire('ro', '1 minute');
ROLLBACK;
BEGIN READ ONLY;
SELECT entitlock.lease_release('billing', tok('b1'));
ROLLBACK;

-- A cached sequence would hand out fencing numbers out of order.
ALTER SEQUENCE entitlock.lease_fencing CACHE 10;
SELECT * FROM entitlock.lease_acquire('cache', '1 minute');
ALTER SEQUENCE entitlock.lease_fencing CACHE 1;
-- A sequence set back behind a lease's fencing number is caught when the
-- lease is taken over, and nothing is written.
SELECT * FROM acquire('sb1', 'set back', '10 milliseconds');
SELECT pg_sleep(0.05);
SELECT last_value AS fencing_now FROM entitlock.lease_fencing \gset
SELECT setval('entitlock.lease_fencing', 1) IS NOT NULL AS set_back;
\set VERBOSITY default
SELECT * FROM entitlock.lease_acquire('set back', '1 minute');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY terse
SELECT setval('entitlock.lease_fencing', :fencing_now) IS NOT NULL AS restored;
SELECT token_of, fencing FROM records WHERE name = 'set back';

--
-- Privileges: nothing by default
--
CREATE ROLE entitlock_lease_nobody;
SET ROLE entitlock_lease_nobody;
SELECT * FROM entitlock.lease_acquire('priv', '1 minute');
SELECT entitlock.lease_renew('priv', gen_random_uuid(), '1 minute');
SELECT entitlock.lease_release('priv', gen_random_uuid());
SELECT * FROM entitlock.leases;
RESET ROLE;
-- Granted the functions and the view, a role still cannot read tokens or
-- write the table.
GRANT USAGE ON SCHEMA entitlock TO entitlock_lease_nobody;
GRANT EXECUTE ON FUNCTION entitlock.lease_acquire(text, interval, text, interval),
	entitlock.lease_renew(text, uuid, interval),
	entitlock.lease_release(text, uuid) TO entitlock_lease_nobody;
GRANT SELECT ON entitlock.leases TO entitlock_lease_nobody;
SET ROLE entitlock_lease_nobody;
SELECT acquired FROM (SELECT token IS NOT NULL AS acquired
						FROM entitlock.lease_acquire('priv', '1 minute')) AS a;
SELECT name FROM entitlock.leases WHERE name = 'priv';
SELECT token FROM entitlock.lease_record;
UPDATE entitlock.lease_record SET expires_at = now();
SELECT nextval('entitlock.lease_fencing');
RESET ROLE;
DROP OWNED BY entitlock_lease_nobody;
DROP ROLE entitlock_lease_nobody;

-- Clean up what this file made.
DELETE FROM entitlock.lease_record;
DROP FUNCTION acquire(text, text, interval, text);
DROP FUNCTION tok(text);
