/* trusted/80_stats.sql */

--
-- Statistics (section 5b of the SPEC).  The C edition counts calls in
-- shared memory, which only a preloaded library can reach; a trusted
-- language cannot, and counting in a table would make every call write a
-- shared row (a hot spot, and a write in read-mostly calls).  So, as
-- section 7 of the SPEC says, the view exists with the C edition's columns
-- and is empty, and stats_reset() has nothing to clear.
--
CREATE OR REPLACE FUNCTION entitlock.stats_entries(
	OUT kind text,
	OUT label text,
	OUT calls bigint,
	OUT waits bigint,
	OUT wait_time double precision,
	OUT timeouts bigint,
	OUT denied bigint,
	OUT replays bigint,
	OUT takeovers bigint)
RETURNS SETOF record
LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
	-- As in the C edition: the view's function runs with the rights of
	-- whoever queries the view, so it checks the view's right itself.
	IF NOT has_table_privilege('entitlock.stats', 'SELECT') THEN
		RAISE EXCEPTION 'permission denied for view stats'
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'Grant SELECT on entitlock.stats to the role.';
	END IF;
	RETURN;
END
$fn$;

COMMENT ON FUNCTION entitlock.stats_entries() IS
'the rows of entitlock.stats: none in the trusted edition, which cannot count in shared memory';

CREATE OR REPLACE VIEW entitlock.stats AS
SELECT kind, label, calls, waits, wait_time, timeouts, denied, replays,
	   takeovers
  FROM entitlock.stats_entries();

COMMENT ON VIEW entitlock.stats IS
'calls of entitlock''s functions by kind and label; always empty in the trusted edition (no shared memory)';

CREATE OR REPLACE FUNCTION entitlock.stats_reset()
RETURNS void
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
	SELECT
$fn$;

COMMENT ON FUNCTION entitlock.stats_reset() IS
'forgets every count of entitlock.stats (the trusted edition keeps none)';

-- As in the C edition: granted explicitly; see README, Privileges.
REVOKE ALL ON entitlock.stats FROM PUBLIC;
REVOKE ALL ON FUNCTION entitlock.stats_reset() FROM PUBLIC;
