/* sql/entitlock--1.1--1.2.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION entitlock UPDATE TO '1.2'" to load this file. \quit

--
-- Billing periods (1.2): every usage function also takes anchored periods
-- '[N ]unit@anchor' (src/periods.c); their signatures do not change.
--
COMMENT ON FUNCTION entitlock.usage_period(text, timestamptz) IS
'the period (UTC calendar, or anchored at a moment) holding a moment, as the usage functions count it';

--
-- Resetting a meter (1.2): the current period's usage to 0, under the
-- recorders' locks (src/usage.c).
--
CREATE FUNCTION entitlock.reset_usage(
	subject text,
	feature text,
	period text DEFAULT 'lifetime')
RETURNS bigint
AS 'MODULE_PATHNAME', 'entitlock_reset_usage'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION entitlock.reset_usage(text, text, text) IS
'sets the usage of (subject, feature, period) in the current period to 0 and returns the usage removed';

REVOKE ALL ON FUNCTION entitlock.reset_usage(text, text, text) FROM PUBLIC;
