--
-- compose: entitlock's writes obey the rules every other write to its
-- tables obeys.  An operator adds indexes (plain, expression, partial,
-- unique), CHECK and NOT NULL constraints, a foreign key, row triggers and
-- a publication to every entitlock table; each write path (record, refund,
-- prune; claim, complete, takeover of an expired key, purge; lease
-- acquire, renew, release, takeover) then maintains every index (amcheck
-- finds each heap row in each index), is refused by a violated constraint
-- with its own SQLSTATE, storing nothing, and fires the row triggers.
--
CREATE EXTENSION IF NOT EXISTS entitlock;
CREATE EXTENSION IF NOT EXISTS amcheck;
SET client_min_messages = warning;

-- Every btree index on entitlock's tables, checked with heapallindexed:
-- each heap row must have its entry in each index.
CREATE FUNCTION compose_indexes_ok() RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	i regclass;
	n int := 0;
BEGIN
	FOR i IN
		SELECT x.indexrelid::regclass
		  FROM pg_index x
		  JOIN pg_class t ON t.oid = x.indrelid
		  JOIN pg_class ic ON ic.oid = x.indexrelid
		  JOIN pg_am am ON am.oid = ic.relam
		 WHERE t.relnamespace = 'entitlock'::regnamespace
		   AND am.amname = 'btree'
		 ORDER BY 1::text
	LOOP
		PERFORM bt_index_check(i, true);
		n := n + 1;
	END LOOP;
	RETURN n || ' indexes ok';
END
$$;

-- What the row triggers saw, in order; read_audit() shows and clears it.
CREATE TABLE compose_audit (seq serial PRIMARY KEY, event text);
CREATE FUNCTION compose_audit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.compose_audit (event)
	VALUES (TG_TABLE_NAME || ' ' || TG_WHEN || ' ' || TG_OP ||
			CASE WHEN TG_NARGS > 0 THEN ' ' || TG_ARGV[0] ELSE '' END);
	RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;
CREATE FUNCTION read_audit() RETURNS SETOF text
LANGUAGE sql AS $$
	WITH gone AS (DELETE FROM compose_audit RETURNING seq, event)
	SELECT event FROM gone ORDER BY seq
$$;

DO $$
DECLARE
	t text;
BEGIN
	FOREACH t IN ARRAY ARRAY['usage_counter', 'usage_idempotency',
							 'idempotency_key', 'lease_record']
	LOOP
		EXECUTE format('CREATE TRIGGER compose_before BEFORE INSERT OR UPDATE OR DELETE ON entitlock.%I FOR EACH ROW EXECUTE FUNCTION compose_audit()', t);
		EXECUTE format('CREATE TRIGGER compose_after AFTER INSERT OR UPDATE OR DELETE ON entitlock.%I FOR EACH ROW EXECUTE FUNCTION compose_audit()', t);
		-- statement triggers do not fire for entitlock's calls (see README)
		EXECUTE format('CREATE TRIGGER compose_statement AFTER INSERT OR UPDATE OR DELETE ON entitlock.%I FOR EACH STATEMENT EXECUTE FUNCTION compose_audit(%L)', t, 'statement');
	END LOOP;
END
$$;
-- Column triggers fire only when an update sets their column.
CREATE TRIGGER compose_used AFTER UPDATE OF used ON entitlock.usage_counter
	FOR EACH ROW EXECUTE FUNCTION compose_audit('of used');
CREATE TRIGGER compose_holder AFTER UPDATE OF holder ON entitlock.lease_record
	FOR EACH ROW EXECUTE FUNCTION compose_audit('of holder');

-- Indexes an operator adds: on the counter itself (which costs HOT
-- updates), an expression, a partial one, and a unique one.
CREATE INDEX compose_counter_used ON entitlock.usage_counter (used);
CREATE INDEX compose_idem_allowed ON entitlock.usage_idempotency (allowed, used);
CREATE INDEX compose_claim_order
	ON entitlock.idempotency_key ((response ->> 'order'));
CREATE INDEX compose_claim_open ON entitlock.idempotency_key (claimed_at)
	WHERE completed_at IS NULL;
CREATE UNIQUE INDEX compose_lease_holder ON entitlock.lease_record (holder)
	WHERE holder LIKE 'compose-%';

-- A publication of every table: updates and deletes must be replicable.
-- (The test server's wal_level need not be logical for that.)
SET client_min_messages = error;
CREATE PUBLICATION compose_pub FOR ALL TABLES;
RESET client_min_messages;
\set VERBOSITY terse

--
-- Usage: record, refund, prune
--
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('compose:1', 'api', 3, 10);
SELECT * FROM read_audit();
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('compose:1', 'api', 4, 10, 'lifetime', 'req-1');
SELECT * FROM read_audit();
-- a denial writes nothing, so no trigger fires
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('compose:1', 'api', 4, 10);
SELECT * FROM read_audit();
SELECT entitlock.record_usage('compose:1', 'api', -2);
SELECT * FROM read_audit();
SELECT entitlock.record_usage('compose:1', 'api', 1, 'day', 'req-2');
SELECT * FROM read_audit();
SELECT compose_indexes_ok();
-- the operator's index answers queries
SET enable_seqscan = off;
SELECT subject, used FROM entitlock.usage_counter WHERE used = 5;
RESET enable_seqscan;

-- CHECK: refused with 23514, and nothing stored
ALTER TABLE entitlock.usage_counter
	ADD CONSTRAINT compose_small CHECK (used <= 6);
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('compose:1', 'api', 2, 10);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.record_usage('compose:2', 'api', 7);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.usage('compose:1', 'api'), entitlock.usage('compose:2', 'api');
SELECT * FROM read_audit();
ALTER TABLE entitlock.usage_counter DROP CONSTRAINT compose_small;

-- A constraint on the keys table refuses the whole call: lifetime calls
-- store no period_end.  (NOT VALID: it holds for new rows only.)
ALTER TABLE entitlock.usage_idempotency ADD CONSTRAINT compose_dated
	CHECK (period_end IS NOT NULL) NOT VALID;
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('compose:1', 'api', 1, 10, 'lifetime', 'req-3');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM entitlock.usage_idempotency WHERE idempotency_key = 'req-3';
SELECT entitlock.usage('compose:1', 'api');
ALTER TABLE entitlock.usage_idempotency DROP CONSTRAINT compose_dated;

-- A foreign key to the operator's own table: an AFTER trigger of its own
CREATE TABLE compose_tenant (name text COLLATE "C" PRIMARY KEY);
INSERT INTO compose_tenant SELECT DISTINCT subject FROM entitlock.usage_counter;
ALTER TABLE entitlock.usage_counter ADD CONSTRAINT compose_tenant_fk
	FOREIGN KEY (subject) REFERENCES compose_tenant (name);
SELECT entitlock.record_usage('compose:1', 'api', 1);
SELECT entitlock.record_usage('compose:unknown', 'api', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT entitlock.usage('compose:unknown', 'api');
ALTER TABLE entitlock.usage_counter DROP CONSTRAINT compose_tenant_fk;
SELECT * FROM read_audit();

-- prune (SQL DELETEs, as any other; prune_usage() runs with search_path
-- pg_catalog, so the trigger function names its table in full)
SELECT entitlock.prune_usage(now() + interval '2 days');
SELECT * FROM read_audit();
SELECT compose_indexes_ok();

--
-- Idempotency: claim, complete, takeover of an expired key, purge
--
SELECT status FROM entitlock.idempotency_begin('order-1');
SELECT * FROM read_audit();
BEGIN;
SELECT status FROM entitlock.idempotency_begin('order-2');
SELECT entitlock.idempotency_complete('order-2', '{"order": 2}');
COMMIT;
SELECT * FROM read_audit();
SELECT entitlock.first_time('evt-1', '1 millisecond');
SELECT pg_sleep(0.01);
-- the expired claim's row is reused: an update
SELECT entitlock.first_time('evt-1');
SELECT * FROM read_audit();
SELECT compose_indexes_ok();
SET enable_seqscan = off;
SELECT key FROM entitlock.idempotency_key WHERE response ->> 'order' = '2';
RESET enable_seqscan;

ALTER TABLE entitlock.idempotency_key
	ADD CONSTRAINT compose_short CHECK (length(key) <= 10);
SELECT status FROM entitlock.idempotency_begin('a-key-that-is-too-long');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM entitlock.idempotency_key WHERE key = 'a-key-that-is-too-long';
ALTER TABLE entitlock.idempotency_key DROP CONSTRAINT compose_short;
ALTER TABLE entitlock.idempotency_key
	ADD CONSTRAINT compose_small_response CHECK (pg_column_size(response) < 100);
BEGIN;
SELECT status FROM entitlock.idempotency_begin('order-3');
SELECT entitlock.idempotency_complete('order-3', jsonb_build_object('body', repeat('x', 200)));
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
ALTER TABLE entitlock.idempotency_key DROP CONSTRAINT compose_small_response;
SELECT * FROM read_audit();

SELECT entitlock.first_time('evt-2', '1 millisecond');
SELECT pg_sleep(0.01);
SELECT * FROM read_audit();
SELECT entitlock.purge_expired();
SELECT * FROM read_audit();
SELECT compose_indexes_ok();

--
-- Leases: acquire, renew, release, takeover
--
CREATE TEMP TABLE compose_token (name text, token uuid);
INSERT INTO compose_token
SELECT 'job', token FROM entitlock.lease_acquire('job', '1 minute', 'compose-a');
SELECT * FROM read_audit();
SELECT entitlock.lease_renew('job', (SELECT token FROM compose_token WHERE name = 'job'), '2 minutes');
SELECT * FROM read_audit();
-- the operator's unique index on holder refuses a second lease of compose-a
SELECT count(*) FROM entitlock.lease_acquire('other-job', '1 minute', 'compose-a');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM read_audit();
SELECT entitlock.lease_release('job', (SELECT token FROM compose_token WHERE name = 'job'));
SELECT * FROM read_audit();
SELECT count(*) FROM entitlock.lease_acquire('job', '1 millisecond', 'compose-b');
SELECT pg_sleep(0.01);
SELECT * FROM read_audit();
-- takeover of the expired lease: an update that sets holder
SELECT count(*) FROM entitlock.lease_acquire('job', '1 minute', 'compose-c');
SELECT * FROM read_audit();
SELECT compose_indexes_ok();

ALTER TABLE entitlock.lease_record
	ADD CONSTRAINT compose_named CHECK (holder IS NOT NULL);
SELECT count(*) FROM entitlock.lease_acquire('anonymous', '1 minute');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM entitlock.leases WHERE name = 'anonymous';
ALTER TABLE entitlock.lease_record DROP CONSTRAINT compose_named;
ALTER TABLE entitlock.lease_record ALTER COLUMN holder SET NOT NULL;
SELECT count(*) FROM entitlock.lease_acquire('anonymous', '1 minute');
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE entitlock.lease_record ALTER COLUMN holder DROP NOT NULL;
SELECT * FROM read_audit();

-- A BEFORE trigger may veto a write, as for any statement.
CREATE FUNCTION compose_veto() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'leases are frozen' USING ERRCODE = 'object_not_in_prerequisite_state';
END
$$;
CREATE TRIGGER compose_veto BEFORE DELETE ON entitlock.lease_record
	FOR EACH ROW EXECUTE FUNCTION compose_veto();
INSERT INTO compose_token
SELECT 'veto', token FROM entitlock.lease_acquire('veto', '1 minute', 'compose-v');
SELECT entitlock.lease_release('veto', (SELECT token FROM compose_token WHERE name = 'veto'));
\echo :LAST_ERROR_SQLSTATE
SELECT name, holder FROM entitlock.leases WHERE name = 'veto';
DROP TRIGGER compose_veto ON entitlock.lease_record;
SELECT entitlock.lease_release('veto', (SELECT token FROM compose_token WHERE name = 'veto'));
SELECT * FROM read_audit();

-- Replica identity: with none, a published table refuses deletes, from
-- entitlock as from any DELETE.
INSERT INTO compose_token
SELECT 'ri', token FROM entitlock.lease_acquire('ri', '1 minute', 'compose-r');
ALTER TABLE entitlock.lease_record REPLICA IDENTITY NOTHING;
SELECT entitlock.lease_release('ri', (SELECT token FROM compose_token WHERE name = 'ri'));
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE entitlock.lease_record REPLICA IDENTITY DEFAULT;
SELECT entitlock.lease_release('ri', (SELECT token FROM compose_token WHERE name = 'ri'));
SELECT * FROM read_audit();
SELECT compose_indexes_ok();

--
-- The quota engine (1.1).  Sets of limits and refunds lock each counter
-- before they read it (the BEFORE trigger above makes single-limit calls
-- do so too); rate limits lock their state row.  Their two new tables
-- get the operator's index and triggers as well.
--
CREATE INDEX compose_set_amount ON entitlock.usage_limits_idempotency (amount);
CREATE INDEX compose_rate_tat ON entitlock.rate_limit_state (tat);
CREATE TRIGGER compose_after AFTER INSERT OR UPDATE OR DELETE
	ON entitlock.usage_limits_idempotency
	FOR EACH ROW EXECUTE FUNCTION compose_audit();
CREATE TRIGGER compose_after AFTER INSERT OR UPDATE OR DELETE
	ON entitlock.rate_limit_state
	FOR EACH ROW EXECUTE FUNCTION compose_audit();
SELECT subject, period, allowed, used FROM entitlock.record_usage_if_under_limits(ARRAY[
	entitlock.usage_limit('compose:3', 'api', 10, 'day'),
	entitlock.usage_limit('compose:org', 'api', 100, 'month')], 2, 'set-1');
SELECT * FROM read_audit();
SELECT entitlock.refund_usage('compose:3', 'api', 'set-1');
SELECT * FROM read_audit();
SELECT allowed, remaining FROM entitlock.rate_limit('compose:rl', 10, '1 hour');
SELECT allowed, remaining FROM entitlock.rate_limit('compose:rl', 10, '1 hour');
SELECT * FROM read_audit();
SELECT compose_indexes_ok();

-- Without a BEFORE UPDATE trigger, a single-limit call replaces the counter
-- without locking it first.  The operator's index on used (so no HOT
-- update: every write adds index entries) and the AFTER and column
-- triggers still apply, and a CHECK still refuses.
DROP TRIGGER compose_before ON entitlock.usage_counter;
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('compose:4', 'api', 2, 10);
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('compose:4', 'api', 3, 10);
SELECT * FROM read_audit();
ALTER TABLE entitlock.usage_counter
	ADD CONSTRAINT compose_small CHECK (used <= 6);
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('compose:4', 'api', 2, 10);
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE entitlock.usage_counter DROP CONSTRAINT compose_small;
SELECT entitlock.usage('compose:4', 'api');
SELECT * FROM read_audit();
SELECT compose_indexes_ok();
SET enable_seqscan = off;
SELECT subject, used FROM entitlock.usage_counter WHERE used = 5 AND subject = 'compose:4';
RESET enable_seqscan;
-- With no trigger at all, and no CHECK, the executor would only update the
-- heap: entitlock does that without making an executor state, unless the
-- update needs index entries, as it does with the index on used.
DROP TRIGGER compose_after ON entitlock.usage_counter;
DROP TRIGGER compose_used ON entitlock.usage_counter;
DROP TRIGGER compose_statement ON entitlock.usage_counter;
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('compose:5', 'api', 2, 10);
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('compose:5', 'api', 2, 10);
SELECT allowed, used FROM entitlock.record_usage_if_under_limit('compose:5', 'api', 2, 10);
SELECT compose_indexes_ok();
SET enable_seqscan = off;
SELECT subject, used FROM entitlock.usage_counter WHERE used = 6 AND subject = 'compose:5';
RESET enable_seqscan;
CREATE TRIGGER compose_before BEFORE INSERT OR UPDATE OR DELETE
	ON entitlock.usage_counter FOR EACH ROW EXECUTE FUNCTION compose_audit();
CREATE TRIGGER compose_after AFTER INSERT OR UPDATE OR DELETE
	ON entitlock.usage_counter FOR EACH ROW EXECUTE FUNCTION compose_audit();
CREATE TRIGGER compose_statement AFTER INSERT OR UPDATE OR DELETE
	ON entitlock.usage_counter FOR EACH STATEMENT EXECUTE FUNCTION compose_audit('statement');
CREATE TRIGGER compose_used AFTER UPDATE OF used ON entitlock.usage_counter
	FOR EACH ROW EXECUTE FUNCTION compose_audit('of used');
DROP TRIGGER compose_after ON entitlock.usage_limits_idempotency;
DROP TRIGGER compose_after ON entitlock.rate_limit_state;
DROP INDEX entitlock.compose_set_amount, entitlock.compose_rate_tat;

-- Every entitlock table has a replica identity index.
SELECT c.relname, c.relreplident, i.indexrelid::regclass AS identity
  FROM pg_class c
  LEFT JOIN pg_index i ON i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident)
 WHERE c.relnamespace = 'entitlock'::regnamespace AND c.relkind = 'r'
 ORDER BY 1;

\set VERBOSITY default
SET client_min_messages = warning;
DROP PUBLICATION compose_pub;
DROP INDEX entitlock.compose_counter_used, entitlock.compose_idem_allowed,
	entitlock.compose_claim_order, entitlock.compose_claim_open,
	entitlock.compose_lease_holder;
DO $$
DECLARE
	t text;
BEGIN
	FOREACH t IN ARRAY ARRAY['usage_counter', 'usage_idempotency',
							 'idempotency_key', 'lease_record']
	LOOP
		EXECUTE format('DROP TRIGGER compose_before ON entitlock.%I', t);
		EXECUTE format('DROP TRIGGER compose_after ON entitlock.%I', t);
		EXECUTE format('DROP TRIGGER compose_statement ON entitlock.%I', t);
	END LOOP;
END
$$;
DROP TRIGGER compose_used ON entitlock.usage_counter;
DROP TRIGGER compose_holder ON entitlock.lease_record;
DROP TABLE compose_audit, compose_tenant;
DROP FUNCTION compose_audit(), compose_veto(), read_audit(), compose_indexes_ok();
DROP EXTENSION amcheck;
RESET client_min_messages;
