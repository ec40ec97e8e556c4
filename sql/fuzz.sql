--
-- fuzz: thousands of calls with arguments drawn at random from pools of
-- good and bad values (NULLs, empty and 10 MB names, odd periods, extreme
-- amounts and limits, negative and huge ttls, stale and foreign tokens),
-- each checked against a model of what entitlock must do:
--   - an error has an expected SQLSTATE (never XX000, never a crash);
--   - a conditional usage call records amount exactly when it fits the
--     limit, and a refund never takes usage below zero;
--   - a repeated usage idempotency key returns the first decision;
--   - a claim is new once, then replays the last stored response, and a
--     different fingerprint is refused;
--   - a lease name has at most one holder, only its token renews or
--     releases it, and fencing numbers only rise.
-- The draws are seeded, so a failure reproduces.  The output is only the
-- checks, so it does not depend on which values were drawn.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS entitlock;
RESET client_min_messages;

CREATE TEMP TABLE pool (kind text, weight int, val text);
INSERT INTO pool VALUES
	-- names: a few, so that calls meet; bad ones now and then
	('name', 30, 'a'), ('name', 30, 'b'), ('name', 20, 'ü-€'),
	('name', 3, NULL), ('name', 3, ''), ('name', 2, repeat('x', 600)),
	('name', 1, '<10 MB>'),
	-- periods: valid ones in any case, invalid ones; no minute or hour, as
	-- a period boundary between the model's read and the call would make
	-- the model wrong, not entitlock
	('period', 20, 'lifetime'), ('period', 10, 'DAY'), ('period', 10, 'month'),
	('period', 10, 'year'), ('period', 10, 'Week'), ('period', 2, NULL),
	('period', 2, ''), ('period', 2, 'days'), ('period', 1, '<10 MB>'),
	-- amounts and limits
	('amount', 30, '1'), ('amount', 20, '7'), ('amount', 10, '100'),
	('amount', 5, '0'), ('amount', 10, '-3'), ('amount', 3, NULL),
	('amount', 3, '9223372036854775807'), ('amount', 3, '-9223372036854775808'),
	('limit', 30, '10'), ('limit', 20, '100'), ('limit', 10, '0'),
	('limit', 5, '9223372036854775807'), ('limit', 3, '-1'), ('limit', 3, NULL),
	-- ttls: good ones last the whole test; bad ones are refused
	('ttl', 40, '1 hour'), ('ttl', 20, '10 days'), ('ttl', 5, '0'),
	('ttl', 5, '-1 s'), ('ttl', 3, NULL), ('ttl', 3, '1000000 years'),
	('ttl', 3, '-178000000 years'), ('ttl', 2, '1 month -31 days'),
	-- fingerprints and responses
	('fp', 40, NULL), ('fp', 30, 'f1'), ('fp', 20, 'f2'), ('fp', 2, ''),
	('response', 30, NULL), ('response', 30, '{"n": 1}'), ('response', 20, '[1, 2]'),
	('response', 10, 'null');

-- Each value with the range of [0, 1) that draws it.
CREATE TEMP TABLE draws AS
SELECT kind, val,
	   (sum(weight) OVER w - weight)::float8 / sum(weight) OVER (PARTITION BY kind) AS lo,
	   sum(weight) OVER w::float8 / sum(weight) OVER (PARTITION BY kind) AS hi
  FROM pool
WINDOW w AS (PARTITION BY kind ORDER BY val NULLS FIRST, weight);
CREATE TEMP TABLE big AS SELECT repeat('€', 3495254) AS s;	-- 10 MB of UTF-8

CREATE FUNCTION draw(k text) RETURNS text
LANGUAGE sql VOLATILE AS $$
	SELECT CASE WHEN d.val = '<10 MB>' THEN (SELECT s FROM big) ELSE d.val END
	  FROM draws AS d, (SELECT random() AS x) AS r
	 WHERE d.kind = k AND d.lo <= r.x AND r.x < d.hi
$$;

-- The model's state.
CREATE TEMP TABLE model_usage_key (subject text, feature text, key text,
								   amount bigint, period text, allowed boolean,
								   used bigint);
CREATE TEMP TABLE model_claim (key text PRIMARY KEY, fingerprint text,
							   response jsonb);
CREATE TEMP TABLE model_lease (name text PRIMARY KEY, token uuid, fencing bigint);
CREATE TEMP TABLE stale_token (token uuid);
CREATE TEMP TABLE violation (call int, what text);
CREATE TEMP TABLE error_seen (fn text, sqlstate text, message text);

CREATE FUNCTION fuzz(calls int) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	i int;
	fn text;
	s text; f text; p text; k text; fp text; resp jsonb;
	amount bigint; lim bigint; ttl interval; tok uuid;
	before bigint; after bigint;
	r record;
	m record;
	last_fencing bigint := 0;
	got boolean;
	state text; msg text;
BEGIN
	FOR i IN 1 .. calls LOOP
		fn := (ARRAY['usage_if', 'usage_if', 'usage', 'usage_key', 'begin',
					 'complete', 'first_time', 'acquire', 'renew', 'release',
					 'locks'])[1 + floor(random() * 11)::int];
		s := draw('name'); f := draw('name'); p := draw('period');
		k := draw('name'); fp := draw('fp');
		resp := draw('response')::jsonb;
		ttl := draw('ttl')::interval;
		BEGIN
			amount := draw('amount')::bigint;
			lim := draw('limit')::bigint;
		END;
		BEGIN
			IF fn = 'usage_if' OR fn = 'usage' OR fn = 'usage_key' THEN
				before := NULL;
				BEGIN
					before := entitlock.usage(s, f, p);
				EXCEPTION WHEN OTHERS THEN
					NULL;
				END;
				IF fn = 'usage_if' THEN
					SELECT * INTO r FROM entitlock.record_usage_if_under_limit(s, f, amount, lim, p);
					after := entitlock.usage(s, f, p);
					IF r.allowed AND NOT (r.used = before + amount AND r.used <= lim) THEN
						INSERT INTO violation VALUES (i, format('allowed %s over %s to %s, limit %s', amount, before, r.used, lim));
					ELSIF NOT r.allowed AND NOT (r.used = before AND before > lim - amount) THEN
						INSERT INTO violation VALUES (i, format('denied %s over %s (limit %s), used %s', amount, before, lim, r.used));
					ELSIF r.used <> after OR r.remaining <> greatest(lim - r.used, 0) THEN
						INSERT INTO violation VALUES (i, format('returned %s/%s, stored %s', r.used, r.remaining, after));
					END IF;
				ELSIF fn = 'usage' THEN
					after := entitlock.record_usage(s, f, amount, p);
					IF after <> greatest(before + amount, 0) OR after <> entitlock.usage(s, f, p) THEN
						INSERT INTO violation VALUES (i, format('record_usage %s over %s gave %s', amount, before, after));
					END IF;
				ELSE
					-- keyed: at most two keys per meter, so repeats are common
					k := (ARRAY['k1', 'k2'])[1 + floor(random() * 2)::int];
					SELECT * INTO m FROM model_usage_key AS u
					 WHERE u.subject = s AND u.feature = f AND u.key = k;
					SELECT * INTO r FROM entitlock.record_usage_if_under_limit(s, f, amount, lim, p, k);
					after := entitlock.usage(s, f, p);
					IF m.key IS NOT NULL THEN
						IF NOT (m.amount = amount AND lower(m.period) = lower(p)) THEN
							INSERT INTO violation VALUES (i, 'a different request under a used key was answered');
						ELSIF r.allowed <> m.allowed OR r.used <> m.used OR after <> before THEN
							INSERT INTO violation VALUES (i, format('repeat of key %s: %s/%s, first %s/%s', k, r.allowed, r.used, m.allowed, m.used));
						END IF;
					ELSE
						after := before + (CASE WHEN r.allowed THEN amount ELSE 0 END);
						IF r.allowed <> (before <= lim - amount) OR r.used <> after THEN
							INSERT INTO violation VALUES (i, format('keyed %s over %s limit %s: %s/%s', amount, before, lim, r.allowed, r.used));
						END IF;
						INSERT INTO model_usage_key VALUES (s, f, k, amount, p, r.allowed, r.used);
					END IF;
				END IF;
			ELSIF fn = 'begin' OR fn = 'first_time' THEN
				SELECT * INTO m FROM model_claim AS c WHERE c.key = k;
				IF fn = 'first_time' THEN
					got := entitlock.first_time(k, ttl);
					IF got = (m.key IS NOT NULL) THEN
						INSERT INTO violation VALUES (i, format('first_time gave %s, claimed before: %s', got, m.key IS NOT NULL));
					END IF;
					IF got THEN
						INSERT INTO model_claim VALUES (k, NULL, NULL);
					END IF;
				ELSE
					SELECT * INTO r FROM entitlock.idempotency_begin(k, fp, ttl);
					IF m.key IS NULL THEN
						IF r.status <> 'new' THEN
							INSERT INTO violation VALUES (i, 'a first claim was not new');
						END IF;
						INSERT INTO model_claim VALUES (k, fp, NULL);
					ELSIF r.status <> 'replay' OR r.response IS DISTINCT FROM m.response THEN
						INSERT INTO violation VALUES (i, format('claim again gave %s %s, expected replay %s', r.status, r.response, m.response));
					ELSIF fp <> m.fingerprint THEN
						INSERT INTO violation VALUES (i, 'a different fingerprint replayed');
					END IF;
				END IF;
			ELSIF fn = 'complete' THEN
				PERFORM entitlock.idempotency_complete(k, resp);
				-- Claims made earlier in this transaction are its own.
				UPDATE model_claim AS c SET response = resp WHERE c.key = k;
				IF NOT FOUND THEN
					INSERT INTO violation VALUES (i, 'completed a key never claimed');
				END IF;
			ELSIF fn = 'acquire' THEN
				SELECT * INTO m FROM model_lease AS l WHERE l.name = k;
				SELECT * INTO r FROM entitlock.lease_acquire(k, ttl, fp);
				IF r.token IS NOT NULL AND m.name IS NOT NULL THEN
					INSERT INTO violation VALUES (i, 'a held lease was acquired again');
				ELSIF r.token IS NULL AND m.name IS NULL THEN
					INSERT INTO violation VALUES (i, 'a free lease was refused');
				ELSIF r.token IS NOT NULL THEN
					IF r.fencing <= last_fencing THEN
						INSERT INTO violation VALUES (i, format('fencing %s after %s', r.fencing, last_fencing));
					END IF;
					last_fencing := r.fencing;
					INSERT INTO model_lease VALUES (k, r.token, r.fencing);
				END IF;
			ELSIF fn = 'renew' OR fn = 'release' THEN
				SELECT * INTO m FROM model_lease AS l WHERE l.name = k;
				-- the right token, a stale one, a stranger's, or NULL
				tok := CASE floor(random() * 4)::int
						   WHEN 0 THEN m.token
						   WHEN 1 THEN (SELECT t.token FROM stale_token t ORDER BY random() LIMIT 1)
						   WHEN 2 THEN (SELECT l.token FROM model_lease l ORDER BY random() LIMIT 1)
						   ELSE gen_random_uuid() END;
				IF fn = 'renew' THEN
					got := entitlock.lease_renew(k, tok, ttl);
				ELSE
					got := entitlock.lease_release(k, tok);
				END IF;
				IF got <> (m.token IS NOT NULL AND tok = m.token) THEN
					INSERT INTO violation VALUES (i, format('%s with %s token gave %s', fn,
						CASE WHEN tok = m.token THEN 'the right' ELSE 'a wrong' END, got));
				END IF;
				IF got AND fn = 'release' THEN
					DELETE FROM model_lease AS l WHERE l.name = k;
					INSERT INTO stale_token VALUES (tok);
				END IF;
			ELSE
				PERFORM entitlock.lock(k), entitlock.try_lock_shared(s),
						entitlock.lock_all(ARRAY[s, f, NULL, k]),
						entitlock.lock_entity(s, f);
				IF NOT entitlock.try_lock(k) THEN
					INSERT INTO violation VALUES (i, 'a lock this transaction holds was refused');
				END IF;
			END IF;
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
			INSERT INTO error_seen VALUES (fn, state, left(msg, 200));
		END;
	END LOOP;
END
$$;

SELECT setseed(0.5);
BEGIN;
SELECT fuzz(4000);

-- Every error is one entitlock means to raise for bad input.
SELECT count(*) > 0 AS errors_seen,
	   count(*) FILTER (WHERE sqlstate NOT IN ('22004', '22023', '22003', '54000', '55000'))
		 AS unexpected_errors
  FROM error_seen;
SELECT fn, sqlstate, message FROM error_seen
 WHERE sqlstate NOT IN ('22004', '22023', '22003', '54000', '55000')
 LIMIT 10;
-- Each kind of bad input was met.
SELECT array_agg(DISTINCT sqlstate ORDER BY sqlstate) AS sqlstates FROM error_seen;
-- Nothing the model disagrees with.
SELECT count(*) AS violations FROM violation;
SELECT * FROM violation ORDER BY call LIMIT 10;
-- The stored state agrees with the model as a whole.
SELECT (SELECT count(*) FROM model_lease) = (SELECT count(*) FROM entitlock.leases
											 WHERE name IN (SELECT name FROM model_lease))
		 AS leases_match,
	   (SELECT count(*) FROM model_lease AS m
		  JOIN entitlock.lease_record AS r ON r.name = m.name
		 WHERE r.token = m.token AND r.fencing = m.fencing) = (SELECT count(*) FROM model_lease)
		 AS tokens_match,
	   (SELECT count(*) FROM (SELECT name FROM entitlock.lease_record
							 GROUP BY name HAVING count(*) > 1) AS d) AS names_with_two_rows,
	   (SELECT count(*) FROM (SELECT key FROM entitlock.idempotency_key
							 GROUP BY key HAVING count(*) > 1) AS d) AS keys_with_two_claims,
	   (SELECT count(*) FROM entitlock.usage_counter WHERE used < 0) AS negative_usage;
ROLLBACK;

-- The server is still here; the rolled-back run left nothing.
SELECT 1 AS alive;
SELECT count(*) AS leases_left FROM entitlock.lease_record
 WHERE name IN ('a', 'b', 'ü-€');
DROP FUNCTION fuzz(int);
DROP FUNCTION draw(text);
