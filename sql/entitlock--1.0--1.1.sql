/* sql/entitlock--1.0--1.1.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION entitlock UPDATE TO '1.1'" to load this file. \quit

--
-- Every table gets a primary key, so that logical replication can publish
-- its updates and deletes (the primary key is the default replica
-- identity).  The usage tables have one already.  For the other two, the
-- primary key leads with the hash the functions look rows up by, and takes
-- the place of 1.0's index on it.
--

-- A claim's identity: existing rows get one each; the default is dropped
-- again, as entitlock's functions supply the value.
ALTER TABLE entitlock.idempotency_key
	ADD COLUMN claim_id uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid();
ALTER TABLE entitlock.idempotency_key
	ALTER COLUMN claim_id DROP DEFAULT;
ALTER TABLE entitlock.idempotency_key
	ADD CONSTRAINT idempotency_key_pkey PRIMARY KEY (key_hash, claim_id);
DROP INDEX entitlock.idempotency_key_hash_idx;

-- Each acquisition has a fencing number of its own.
ALTER TABLE entitlock.lease_record
	ADD CONSTRAINT lease_record_pkey PRIMARY KEY (key_hash, fencing);
DROP INDEX entitlock.lease_record_key_hash_idx;

-- Writes now go through the executor, which checks CHECK constraints on
-- every call; the two of 1.0 only restate what the functions guarantee
-- (see the comment in entitlock--1.1.sql).
ALTER TABLE entitlock.usage_counter
	DROP CONSTRAINT IF EXISTS usage_counter_used_check,
	DROP CONSTRAINT IF EXISTS usage_counter_period_check;
