--
-- idempotency: idempotent writes as seen from one session.  Races between
-- sessions are in test/isolation/specs/idempotency-*.spec.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS entitlock;
RESET client_min_messages;

-- Every stored claim, to show what a call wrote (or, after an error, that
-- it wrote nothing).  Long keys are shown by length and a digest.
CREATE TEMP VIEW claims AS
SELECT CASE WHEN length(key) <= 40 THEN key
            ELSE length(key) || ' chars, md5 ' || md5(key) END AS key,
       key_hash = entitlock.key('entitlock.idempotency', key) AS hash_ok,
       fingerprint, response,
       expires_at > clock_timestamp() AS live,
       expires_at - claimed_at AS ttl,
       completed_at IS NOT NULL AS completed
  FROM entitlock.idempotency_key
 ORDER BY 1, claimed_at;

-- An application's own table, written only by the transaction that owns
-- the key.
CREATE TEMP TABLE payments (webhook_id text, amount int);

--
-- 'new', then 'replay' with the stored response
--
BEGIN;
SELECT * FROM entitlock.idempotency_begin('evt_1', 'sha:aa');
INSERT INTO payments VALUES ('evt_1', 100);
SELECT entitlock.idempotency_complete('evt_1', '{"payment": 1, "status": "paid"}');
COMMIT;
SELECT * FROM claims;
BEGIN;
SELECT * FROM entitlock.idempotency_begin('evt_1', 'sha:aa');
COMMIT;
-- the same key with no fingerprint replays too
SELECT * FROM entitlock.idempotency_begin('evt_1');
SELECT * FROM payments;

-- A claim committed without a response replays NULL.
SELECT * FROM entitlock.idempotency_begin('evt_2');
SELECT * FROM entitlock.idempotency_begin('evt_2');

-- Responses of every JSON kind come back as stored.
BEGIN;
SELECT status FROM entitlock.idempotency_begin('r:array');
SELECT entitlock.idempotency_complete('r:array', '[1, "two", null, {"3": [4]}]');
SELECT status FROM entitlock.idempotency_begin('r:scalar');
SELECT entitlock.idempotency_complete('r:scalar', '"ok"');
SELECT status FROM entitlock.idempotency_begin('r:null');
SELECT entitlock.idempotency_complete('r:null', 'null');
SELECT status FROM entitlock.idempotency_begin('r:big');
SELECT entitlock.idempotency_complete('r:big',
    jsonb_build_object('rows', (SELECT jsonb_agg(g) FROM generate_series(1, 100000) AS g)));
COMMIT;
SELECT status, response FROM entitlock.idempotency_begin('r:array');
SELECT status, response FROM entitlock.idempotency_begin('r:scalar');
SELECT status, response, response IS NULL AS sql_null FROM entitlock.idempotency_begin('r:null');
SELECT status, jsonb_array_length(response -> 'rows') AS n,
       response -> 'rows' -> 99999 AS last
  FROM entitlock.idempotency_begin('r:big');

--
-- Within one transaction: the first call claims, repeats replay (what has
-- been completed so far), and completing again replaces the response.
--
BEGIN;
SELECT * FROM entitlock.idempotency_begin('evt_3');
SELECT * FROM entitlock.idempotency_begin('evt_3');
SELECT entitlock.idempotency_complete('evt_3', '{"try": 1}');
SELECT * FROM entitlock.idempotency_begin('evt_3');
SELECT entitlock.idempotency_complete('evt_3', '{"try": 2}');
SELECT entitlock.idempotency_complete('evt_3');
SELECT entitlock.idempotency_complete('evt_3', '{"try": 3}');
COMMIT;
SELECT * FROM entitlock.idempotency_begin('evt_3');

-- Several calls in one statement see each other.
SELECT k, entitlock.first_time(k)
  FROM (VALUES (1, 'row:a'), (2, 'row:a'), (3, 'row:b'), (4, 'row:a')) AS v(i, k)
 ORDER BY i;

--
-- A rolled-back claim leaves nothing: the key is new again.
--
BEGIN;
SELECT * FROM entitlock.idempotency_begin('evt_4', 'f');
SELECT entitlock.idempotency_complete('evt_4', '{"lost": true}');
ROLLBACK;
SELECT count(*) FROM entitlock.idempotency_key WHERE key = 'evt_4';
BEGIN;
SELECT * FROM entitlock.idempotency_begin('evt_4', 'other');
ROLLBACK;

-- So does one rolled back to a savepoint, and completing it then fails.
BEGIN;
SAVEPOINT s;
SELECT * FROM entitlock.idempotency_begin('evt_5');
ROLLBACK TO SAVEPOINT s;
SELECT entitlock.idempotency_complete('evt_5', '{}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SAVEPOINT s;
SELECT * FROM entitlock.idempotency_begin('evt_5');
RELEASE SAVEPOINT s;
SELECT entitlock.idempotency_complete('evt_5', '{"sub": true}');
COMMIT;
SELECT * FROM entitlock.idempotency_begin('evt_5');

--
-- A different fingerprint is a different request: an error, and nothing
-- changes.  NULL on either side is not compared.
--
SELECT * FROM entitlock.idempotency_begin('evt_1', 'sha:bb');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.idempotency_begin('evt_1', '');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.idempotency_begin('evt_2', 'sha:anything');
BEGIN;
SELECT * FROM entitlock.idempotency_begin('fp:1', 'a');
SELECT * FROM entitlock.idempotency_begin('fp:1', 'b');
ROLLBACK;
-- Long keys are quoted by their start only.
SELECT * FROM entitlock.idempotency_begin(repeat('long-key-', 100), 'x');
SELECT * FROM entitlock.idempotency_begin(repeat('long-key-', 100), 'y');
SELECT * FROM claims WHERE key LIKE 'evt_%' OR key LIKE '900 chars%';

--
-- idempotency_complete needs this transaction's own claim.
--
SELECT entitlock.idempotency_complete('never-begun', '{}');
\echo :LAST_ERROR_SQLSTATE
-- a key an earlier transaction claimed (begin said 'replay')
BEGIN;
SELECT * FROM entitlock.idempotency_begin('evt_1');
SELECT entitlock.idempotency_complete('evt_1', '{"overwrite": true}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT response FROM entitlock.idempotency_key WHERE key = 'evt_1';

--
-- first_time: true once, false after; it shares keys with
-- idempotency_begin.
--
SELECT entitlock.first_time('job:1');
SELECT entitlock.first_time('job:1');
SELECT entitlock.first_time('evt_1');
SELECT * FROM entitlock.idempotency_begin('job:1');
BEGIN;
SELECT entitlock.first_time('job:2');
ROLLBACK;
SELECT entitlock.first_time('job:2');

--
-- Expiry: an expired key behaves as absent, whatever it stored.
--
SELECT * FROM entitlock.idempotency_begin('exp:1', 'a', '10 milliseconds');
SELECT entitlock.first_time('exp:2', '10 milliseconds');
SELECT * FROM entitlock.idempotency_begin('exp:3', NULL, '1 hour');
SELECT pg_sleep(0.05);
SELECT * FROM claims WHERE key LIKE 'exp:%';
-- a new claim on an expired key takes its row over, fingerprint and all
BEGIN;
SELECT * FROM entitlock.idempotency_begin('exp:1', 'b', '1 hour');
SELECT entitlock.idempotency_complete('exp:1', '{"second": true}');
COMMIT;
SELECT * FROM entitlock.idempotency_begin('exp:1', 'b');
SELECT entitlock.first_time('exp:2');
SELECT * FROM claims WHERE key LIKE 'exp:%';

--
-- purge_expired deletes expired keys only, and says how many.
--
SELECT entitlock.purge_expired();
SELECT entitlock.first_time('exp:' || g, '1 millisecond') FROM generate_series(10, 14) AS g;
SELECT pg_sleep(0.05);
SELECT count(*) AS expired FROM entitlock.idempotency_key WHERE expires_at <= clock_timestamp();
-- in bounded batches: at most max_rows per call
SELECT entitlock.purge_expired(2);
SELECT entitlock.purge_expired(0);
SELECT entitlock.purge_expired();
SELECT entitlock.purge_expired();
SELECT count(*) AS expired FROM entitlock.idempotency_key WHERE expires_at <= clock_timestamp();
SELECT * FROM claims WHERE key LIKE 'exp:%';
-- the caller's own expired claim is left alone
BEGIN;
SELECT entitlock.first_time('exp:20', '1 millisecond');
SELECT pg_sleep(0.05);
SELECT entitlock.purge_expired();
COMMIT;
SELECT entitlock.purge_expired();
SELECT entitlock.purge_expired(-1);
\echo :LAST_ERROR_SQLSTATE

--
-- Keys of any length are compared in full.
--
CREATE TEMP TABLE big AS
SELECT string_agg(md5(g::text), '') AS k FROM generate_series(1, 32768) AS g;
SELECT length(k) FROM big;
SELECT s.* FROM big, entitlock.idempotency_begin(k, 'f') AS s;
SELECT s.* FROM big, entitlock.idempotency_begin(k, 'f') AS s;
-- the same megabyte but for its last character is another key
SELECT s.* FROM big, entitlock.idempotency_begin(left(k, -1) || 'x', 'f') AS s;
SELECT s.* FROM big, entitlock.idempotency_begin(k, 'g') AS s;
SELECT key, hash_ok FROM claims WHERE key LIKE '1048576 chars%';

-- Two keys whose hashes collide are still two keys.  (A collision is made
-- here by planting a row with another key under 'evt_collide''s hash.)
INSERT INTO entitlock.idempotency_key
VALUES (entitlock.key('entitlock.idempotency', 'evt_collide'), 'impostor',
        NULL, '{"impostor": true}', now(), now() + interval '1 day', now(),
        gen_random_uuid());
SELECT * FROM entitlock.idempotency_begin('evt_collide');
SELECT * FROM entitlock.idempotency_begin('evt_collide');
SELECT key, response FROM entitlock.idempotency_key
 WHERE key_hash = entitlock.key('entitlock.idempotency', 'evt_collide')
 ORDER BY key;
-- multibyte keys are bytes, not characters
SELECT entitlock.first_time('clé'), entitlock.first_time('cle'),
       entitlock.first_time('clé');

--
-- Bad arguments: an error with its SQLSTATE, and nothing written.
--
CREATE TEMP TABLE before AS SELECT count(*) AS n FROM entitlock.idempotency_key;
SELECT * FROM entitlock.idempotency_begin(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.idempotency_begin('');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.idempotency_begin('bad:1', NULL, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.idempotency_begin('bad:1', NULL, '0');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.idempotency_begin('bad:1', NULL, '-1 hour');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.idempotency_begin('bad:1', NULL, '1 month -31 days');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM entitlock.idempotency_begin('bad:1', NULL, '300000 years');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.first_time(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.first_time('');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.first_time('bad:1', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.first_time('bad:1', '-1 second');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.idempotency_complete(NULL, '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.idempotency_complete('', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT (SELECT count(*) FROM entitlock.idempotency_key) - n AS written FROM before;

-- Nothing is claimed where nothing can be written.
BEGIN READ ONLY;
SELECT * FROM entitlock.idempotency_begin('ro:1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN READ ONLY;
SELECT entitlock.purge_expired();
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- In a select list the result is one composite value.
SELECT entitlock.idempotency_begin('srf:1');

--
-- Isolation levels: the claim behaves the same at every level.
--
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM entitlock.idempotency_begin('iso:rr');
SELECT entitlock.idempotency_complete('iso:rr', '"rr"');
COMMIT;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT * FROM entitlock.idempotency_begin('iso:rr');
SELECT * FROM entitlock.idempotency_begin('iso:ser');
COMMIT;

--
-- Privileges: EXECUTE is granted explicitly; the table never is.
--
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_entitlock_idem;
RESET client_min_messages;
CREATE ROLE regress_entitlock_idem;
GRANT USAGE ON SCHEMA entitlock TO regress_entitlock_idem;
SET ROLE regress_entitlock_idem;
SELECT * FROM entitlock.idempotency_begin('priv:1');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT EXECUTE ON FUNCTION entitlock.idempotency_begin(text, text, interval, interval),
                          entitlock.idempotency_complete(text, jsonb)
   TO regress_entitlock_idem;
SET ROLE regress_entitlock_idem;
BEGIN;
SELECT * FROM entitlock.idempotency_begin('priv:1');
SELECT entitlock.idempotency_complete('priv:1', '{"by": "app"}');
COMMIT;
SELECT * FROM entitlock.idempotency_begin('priv:1');
SELECT count(*) FROM entitlock.idempotency_key;
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.purge_expired();
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
REVOKE ALL ON SCHEMA entitlock FROM regress_entitlock_idem;
REVOKE ALL ON FUNCTION entitlock.idempotency_begin(text, text, interval, interval),
                       entitlock.idempotency_complete(text, jsonb)
  FROM regress_entitlock_idem;
DROP ROLE regress_entitlock_idem;

DROP VIEW claims;

-- A table changed behind entitlock's back stops it.
DROP INDEX entitlock.idempotency_key_expires_at_idx;
SELECT entitlock.first_time('layout:1');
\echo :LAST_ERROR_SQLSTATE
CREATE INDEX idempotency_key_expires_at_idx
    ON entitlock.idempotency_key (claimed_at);
SELECT entitlock.first_time('layout:1');
\echo :LAST_ERROR_SQLSTATE
DROP INDEX entitlock.idempotency_key_expires_at_idx;
CREATE INDEX idempotency_key_expires_at_idx
    ON entitlock.idempotency_key (expires_at);
SELECT entitlock.first_time('layout:1');
ALTER TABLE entitlock.idempotency_key ALTER COLUMN fingerprint TYPE varchar;
SELECT entitlock.first_time('layout:2');
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE entitlock.idempotency_key ALTER COLUMN fingerprint TYPE text COLLATE "C";
SELECT entitlock.first_time('layout:2');

-- pg_dump keeps the claims.
SELECT unnest(extconfig)::regclass AS dumped FROM pg_extension
 WHERE extname = 'entitlock' ORDER BY 1;

-- How the functions are declared.
SELECT p.oid::regprocedure AS function, p.provolatile, p.proisstrict,
       p.proparallel, p.prosecdef, pg_get_function_result(p.oid) AS result,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public_execute
  FROM pg_proc AS p
 WHERE p.pronamespace = 'entitlock'::regnamespace
   AND p.proname IN ('idempotency_begin', 'idempotency_complete',
                     'first_time', 'purge_expired')
 ORDER BY p.oid::regprocedure::text;

