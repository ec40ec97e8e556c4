/* trusted/00_schema.sql */

--
-- The trusted edition of entitlock: the same SQL API as the C extension,
-- written only in SQL and PL/pgSQL, for databases that cannot load a C
-- library (managed PostgreSQL).  `make trusted` concatenates trusted/*.sql
-- in name order into dist/entitlock-trusted.sql, which a role that owns the
-- database (no superuser needed) runs with psql -v ON_ERROR_STOP=1 -f.
-- Running it again, or running a newer file, updates the functions in
-- place and keeps every row: tables are created only when missing and
-- functions with CREATE OR REPLACE.
--
-- This file: the guard against the C extension, the schema, the version
-- marker and the tables.  The tables have the names, columns and
-- constraints of the C edition's (sql/entitlock--*.sql), so rows mean the
-- same in both editions and pg_dump treats them alike.
--

-- The C extension and this edition define the same objects in the same
-- schema; one database holds one of them.  A C-language function in the
-- schema means the C extension (or part of it) is there.  Checked before
-- anything is created, so the file changes nothing in that case.
DO $guard$
BEGIN
	IF EXISTS (SELECT 1
				 FROM pg_catalog.pg_proc AS p
				 JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
				 JOIN pg_catalog.pg_language AS l ON l.oid OPERATOR(pg_catalog.=) p.prolang
				WHERE n.nspname OPERATOR(pg_catalog.=) 'entitlock'
				  AND l.lanname OPERATOR(pg_catalog.=) 'c')
	THEN
		RAISE EXCEPTION 'cannot install the trusted edition of entitlock over the C extension entitlock'
			USING ERRCODE = 'duplicate_object',
				  DETAIL = 'The schema "entitlock" holds the C extension''s functions.',
				  HINT = 'Use the C extension (ALTER EXTENSION entitlock UPDATE), or DROP EXTENSION entitlock first; its rows are lost unless dumped.';
	END IF;
END
$guard$;

-- Not CREATE SCHEMA IF NOT EXISTS: run by CREATE EXTENSION with schema =
-- entitlock in the control parameters, the schema exists already and that
-- statement would fail (it is not a member of the extension).
DO $schema$
BEGIN
	IF pg_catalog.to_regnamespace('entitlock') IS NULL THEN
		CREATE SCHEMA entitlock;
	END IF;
END
$schema$;

COMMENT ON SCHEMA entitlock IS
'entitlock, trusted edition (SQL and PL/pgSQL): named locks, usage limits, idempotency keys and fenced leases inside your own transaction';

--
-- The version marker: entitlock.trusted_version() returns the version of
-- the file that last ran (@ENTITLOCK_VERSION@ is replaced by `make
-- trusted` with the version in entitlock.control).  A function rather
-- than a table, so that the schema holds the same tables and indexes as
-- the C edition's.  Before it is replaced, the version that was installed
-- (NULL: none) is kept in the setting entitlock_trusted.previous_version
-- (not "entitlock.": a loaded C library reserves that prefix)
-- for the rest of the session, for update steps later in the file.
--
DO $previous$
BEGIN
	IF pg_catalog.to_regprocedure('entitlock.trusted_version()') IS NULL THEN
		PERFORM pg_catalog.set_config('entitlock_trusted.previous_version', '', false);
	ELSE
		EXECUTE 'SELECT pg_catalog.set_config(''entitlock_trusted.previous_version'', entitlock.trusted_version(), false)';
	END IF;
END
$previous$;

CREATE OR REPLACE FUNCTION entitlock.trusted_version()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
	SELECT '@ENTITLOCK_VERSION@'::text
$$;

COMMENT ON FUNCTION entitlock.trusted_version() IS
'the version of entitlock''s trusted edition installed in this database';

--
-- Usage limits (as sql/entitlock--1.1.sql).  Names use the "C" collation:
-- meters are told apart byte by byte.
--
CREATE TABLE IF NOT EXISTS entitlock.usage_counter (
	subject text COLLATE pg_catalog."C" NOT NULL,
	feature text COLLATE pg_catalog."C" NOT NULL,
	period text COLLATE pg_catalog."C" NOT NULL,
	period_start timestamptz NOT NULL,
	period_end timestamptz,
	used bigint NOT NULL,
	CONSTRAINT usage_counter_pkey
		PRIMARY KEY (subject, feature, period, period_start)
) USING heap WITH (fillfactor = 50);

COMMENT ON TABLE entitlock.usage_counter IS
'usage recorded per (subject, feature, period kind) and calendar period; period_start is -infinity for lifetime; written only by entitlock''s functions';

CREATE TABLE IF NOT EXISTS entitlock.usage_idempotency (
	subject text COLLATE pg_catalog."C" NOT NULL,
	feature text COLLATE pg_catalog."C" NOT NULL,
	idempotency_key text COLLATE pg_catalog."C" NOT NULL,
	period text COLLATE pg_catalog."C" NOT NULL,
	amount bigint NOT NULL,
	allowed boolean NOT NULL,
	used bigint NOT NULL,
	period_end timestamptz,
	recorded_at timestamptz NOT NULL,
	refunded_at timestamptz,
	CONSTRAINT usage_idempotency_pkey
		PRIMARY KEY (subject, feature, idempotency_key)
) USING heap;

COMMENT ON TABLE entitlock.usage_idempotency IS
'the first outcome of each usage call made with an idempotency key, returned again to its retries; refunded_at is set by refund_usage()';

CREATE TABLE IF NOT EXISTS entitlock.usage_limits_idempotency (
	idempotency_key text COLLATE pg_catalog."C" NOT NULL,
	amount bigint NOT NULL,
	subjects text[] NOT NULL,
	features text[] NOT NULL,
	periods text[] NOT NULL,
	allowed boolean[] NOT NULL,
	used bigint[] NOT NULL,
	period_ends timestamptz[] NOT NULL,
	refunded boolean[] NOT NULL,
	recorded_at timestamptz NOT NULL,
	CONSTRAINT usage_limits_idempotency_pkey PRIMARY KEY (idempotency_key)
) USING heap;

COMMENT ON TABLE entitlock.usage_limits_idempotency IS
'the first outcome of each record_usage_if_under_limits() call made with an idempotency key, returned again to its retries';

--
-- Rate limits: a name's whole state is its theoretical arrival time.
--
CREATE TABLE IF NOT EXISTS entitlock.rate_limit_state (
	name text COLLATE pg_catalog."C" NOT NULL,
	tat timestamptz NOT NULL,
	CONSTRAINT rate_limit_state_pkey PRIMARY KEY (name)
) USING heap WITH (fillfactor = 50);

COMMENT ON TABLE entitlock.rate_limit_state IS
'the theoretical arrival time of each rate limit name; a bucket is full again once tat has passed; written only by entitlock''s functions';

--
-- Idempotent writes.
--
CREATE TABLE IF NOT EXISTS entitlock.idempotency_key (
	key_hash bigint NOT NULL,
	key text COLLATE pg_catalog."C" NOT NULL,
	fingerprint text COLLATE pg_catalog."C",
	response jsonb,
	claimed_at timestamptz NOT NULL,
	expires_at timestamptz NOT NULL,
	completed_at timestamptz,
	claim_id uuid NOT NULL,
	CONSTRAINT idempotency_key_pkey PRIMARY KEY (key_hash, claim_id)
) USING heap;

CREATE INDEX IF NOT EXISTS idempotency_key_expires_at_idx
	ON entitlock.idempotency_key USING btree (expires_at);

COMMENT ON TABLE entitlock.idempotency_key IS
'idempotency keys claimed by committed transactions, with the response to replay; written only by entitlock''s functions';

--
-- Leases.  Fencing numbers come from one sequence without cache, so they
-- never go back.
--
CREATE TABLE IF NOT EXISTS entitlock.lease_record (
	key_hash bigint NOT NULL,
	name text COLLATE pg_catalog."C" NOT NULL,
	token uuid NOT NULL,
	holder text COLLATE pg_catalog."C",
	fencing bigint NOT NULL,
	acquired_at timestamptz NOT NULL,
	expires_at timestamptz NOT NULL,
	CONSTRAINT lease_record_pkey PRIMARY KEY (key_hash, fencing)
) USING heap;

COMMENT ON TABLE entitlock.lease_record IS
'the current lease on each name, with its token; written only by entitlock''s functions (read entitlock.leases instead)';

CREATE SEQUENCE IF NOT EXISTS entitlock.lease_fencing AS bigint
	MINVALUE 1 NO MAXVALUE CACHE 1 NO CYCLE;

COMMENT ON SEQUENCE entitlock.lease_fencing IS
'fencing numbers of lease acquisitions; must not cache or cycle';

-- The tables are reached only through the functions, which run as their
-- owner (SECURITY DEFINER); nobody else gets rights on them.
REVOKE ALL ON entitlock.usage_counter,
	entitlock.usage_idempotency, entitlock.usage_limits_idempotency,
	entitlock.rate_limit_state, entitlock.idempotency_key,
	entitlock.lease_record FROM PUBLIC;
REVOKE ALL ON SEQUENCE entitlock.lease_fencing FROM PUBLIC;
-- As with the C extension, the schema is usable by its owner; other roles
-- are granted USAGE on it (see README, Privileges).

--
-- Run by CREATE EXTENSION (the pg_tle route), the tables are members of
-- the extension, and pg_dump keeps their rows only when they are
-- registered, as the C extension's are.  Run by psql, they are ordinary
-- tables, which pg_dump keeps anyway, and registering fails: that error
-- is expected and ignored.
--
DO $dump$
BEGIN
	PERFORM pg_catalog.pg_extension_config_dump('entitlock.usage_counter', '');
	PERFORM pg_catalog.pg_extension_config_dump('entitlock.usage_idempotency', '');
	PERFORM pg_catalog.pg_extension_config_dump('entitlock.usage_limits_idempotency', '');
	PERFORM pg_catalog.pg_extension_config_dump('entitlock.rate_limit_state', '');
	PERFORM pg_catalog.pg_extension_config_dump('entitlock.idempotency_key', '');
	PERFORM pg_catalog.pg_extension_config_dump('entitlock.lease_record', '');
	PERFORM pg_catalog.pg_extension_config_dump('entitlock.lease_fencing', '');
EXCEPTION WHEN feature_not_supported THEN
	NULL;
END
$dump$;
