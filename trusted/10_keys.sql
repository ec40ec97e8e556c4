/* trusted/10_keys.sql */

--
-- Keys: XXH64 (seed 0) of the UTF-8 bytes of a name, read as a signed
-- bigint, exactly as the C edition computes it (src/keys.c), so that locks
-- taken by either edition, by pg_advisory_xact_lock(entitlock.key(n)) or by
-- a client's own XXH64 meet.
--
-- PL/pgSQL has no unsigned 64-bit type, and bigint arithmetic raises an
-- error on overflow, so the 64-bit words live in bigint as their two's
-- complement bit patterns and the arithmetic modulo 2^64 is built from
-- operations that cannot overflow: bitwise operators and shifts (which
-- never raise) and products of 32-bit halves cut into 16-bit pieces, whose
-- sums stay below 2^50.  numeric would be simpler but allocates on every
-- operation; these stay in registers.  Each helper is one SQL expression,
-- which the planner inlines into the PL/pgSQL expression that calls it and
-- folds when an argument is a constant (the XXH64 primes).
--

-- a + b modulo 2^64.
CREATE OR REPLACE FUNCTION entitlock._u64_add(a bigint, b bigint)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
	SELECT (((((a OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.+) (b OPERATOR(pg_catalog.>>) 32)) OPERATOR(pg_catalog.+) (((a OPERATOR(pg_catalog.&) 4294967295) OPERATOR(pg_catalog.+) (b OPERATOR(pg_catalog.&) 4294967295)) OPERATOR(pg_catalog.>>) 32)) OPERATOR(pg_catalog.<<) 32) OPERATOR(pg_catalog.|) (((a OPERATOR(pg_catalog.&) 4294967295) OPERATOR(pg_catalog.+) (b OPERATOR(pg_catalog.&) 4294967295)) OPERATOR(pg_catalog.&) 4294967295))
$$;

-- a * b modulo 2^64.  With a = ah:al and b = bh:bl in 32-bit halves, the
-- product is al*bl + ((ah*bl + al*bh) mod 2^32) * 2^32; al*bl is formed
-- from al's 16-bit pieces so that no partial product reaches 2^63.
CREATE OR REPLACE FUNCTION entitlock._u64_mul(a bigint, b bigint)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
	SELECT ((((((((((((a OPERATOR(pg_catalog.&) 65535) OPERATOR(pg_catalog.*) (b OPERATOR(pg_catalog.&) 4294967295)) OPERATOR(pg_catalog.&) 4294967295) OPERATOR(pg_catalog.+) (((((a OPERATOR(pg_catalog.>>) 16) OPERATOR(pg_catalog.&) 65535) OPERATOR(pg_catalog.*) (b OPERATOR(pg_catalog.&) 4294967295)) OPERATOR(pg_catalog.&) 65535) OPERATOR(pg_catalog.<<) 16)) OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.+) (((a OPERATOR(pg_catalog.&) 65535) OPERATOR(pg_catalog.*) (b OPERATOR(pg_catalog.&) 4294967295)) OPERATOR(pg_catalog.>>) 32)) OPERATOR(pg_catalog.+) ((((a OPERATOR(pg_catalog.>>) 16) OPERATOR(pg_catalog.&) 65535) OPERATOR(pg_catalog.*) (b OPERATOR(pg_catalog.&) 4294967295)) OPERATOR(pg_catalog.>>) 16)) OPERATOR(pg_catalog.+) (((((a OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.&) 65535) OPERATOR(pg_catalog.*) (b OPERATOR(pg_catalog.&) 4294967295)) OPERATOR(pg_catalog.+) (((((a OPERATOR(pg_catalog.>>) 48) OPERATOR(pg_catalog.&) 65535) OPERATOR(pg_catalog.*) (b OPERATOR(pg_catalog.&) 4294967295)) OPERATOR(pg_catalog.&) 65535) OPERATOR(pg_catalog.<<) 16)) OPERATOR(pg_catalog.&) 4294967295)) OPERATOR(pg_catalog.+) ((((a OPERATOR(pg_catalog.&) 65535) OPERATOR(pg_catalog.*) ((b OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.&) 4294967295)) OPERATOR(pg_catalog.+) (((((a OPERATOR(pg_catalog.>>) 16) OPERATOR(pg_catalog.&) 65535) OPERATOR(pg_catalog.*) ((b OPERATOR(pg_catalog.>>) 32) OPERATOR(pg_catalog.&) 4294967295)) OPERATOR(pg_catalog.&) 65535) OPERATOR(pg_catalog.<<) 16)) OPERATOR(pg_catalog.&) 4294967295)) OPERATOR(pg_catalog.&) 4294967295) OPERATOR(pg_catalog.<<) 32) OPERATOR(pg_catalog.|) (((((a OPERATOR(pg_catalog.&) 65535) OPERATOR(pg_catalog.*) (b OPERATOR(pg_catalog.&) 4294967295)) OPERATOR(pg_catalog.&) 4294967295) OPERATOR(pg_catalog.+) (((((a OPERATOR(pg_catalog.>>) 16) OPERATOR(pg_catalog.&) 65535) OPERATOR(pg_catalog.*) (b OPERATOR(pg_catalog.&) 4294967295)) OPERATOR(pg_catalog.&) 65535) OPERATOR(pg_catalog.<<) 16)) OPERATOR(pg_catalog.&) 4294967295))
$$;

-- x rotated left by r bits (0 < r < 64).
CREATE OR REPLACE FUNCTION entitlock._u64_rotl(x bigint, r integer)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
	SELECT (x OPERATOR(pg_catalog.<<) r) OPERATOR(pg_catalog.|) ((x OPERATOR(pg_catalog.>>) (64 OPERATOR(pg_catalog.-) r)) OPERATOR(pg_catalog.&) (OPERATOR(pg_catalog.~) ((-1)::bigint OPERATOR(pg_catalog.<<) r)))
$$;

-- x shifted right by s bits, filling with zeros (0 < s < 64).
CREATE OR REPLACE FUNCTION entitlock._u64_shr(x bigint, s integer)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
	SELECT (x OPERATOR(pg_catalog.>>) s) OPERATOR(pg_catalog.&) (OPERATOR(pg_catalog.~) ((-1)::bigint OPERATOR(pg_catalog.<<) (64 OPERATOR(pg_catalog.-) s)))
$$;

--
-- XXH64 of a byte string with a seed, as the xxHash format document
-- (0.8) specifies it and src/keys.c implements it: four accumulators over
-- 32-byte stripes, then the tail in 8-, 4- and 1-byte steps, then the
-- avalanche.  Words are read little-endian.  Primes, as signed bigint:
--   P1 0x9E3779B185EBCA87 = -7046029288634856825
--   P2 0xC2B2AE3D27D4EB4F = -4417276706812531889
--   P3 0x165667B19E3779F9 =  1609587929392839161
--   P4 0x85EBCA77C2B2AE63 = -8796714831421723037
--   P5 0x27D4EB2F165667C5 =  2870177450012600261
--
CREATE OR REPLACE FUNCTION entitlock._xxh64(data bytea, seed bigint DEFAULT 0)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	len integer := length(data);
	p integer := 0;
	h bigint;
	v1 bigint;
	v2 bigint;
	v3 bigint;
	v4 bigint;
	w bigint;
	t bigint;
BEGIN
	-- Every helper is called with plain variables and constants only, so
	-- that the planner inlines it (an argument that is itself a call is
	-- not inlined, and a call of an SQL function costs far more than the
	-- arithmetic).
	IF len >= 32 THEN
		v1 := entitlock._u64_add(seed, 6983438078262162902);  -- P1 + P2
		v2 := entitlock._u64_add(seed, -4417276706812531889);
		v3 := seed;
		v4 := entitlock._u64_add(seed, 7046029288634856825);  -- -P1
		WHILE p <= len - 32 LOOP
			w := get_byte(data, p)::bigint | (get_byte(data, p + 1)::bigint << 8)
					 | (get_byte(data, p + 2)::bigint << 16) | (get_byte(data, p + 3)::bigint << 24)
					 | (get_byte(data, p + 4)::bigint << 32) | (get_byte(data, p + 5)::bigint << 40)
					 | (get_byte(data, p + 6)::bigint << 48) | (get_byte(data, p + 7)::bigint << 56);
			t := entitlock._u64_mul(w, -4417276706812531889);
			t := entitlock._u64_add(v1, t);
			t := entitlock._u64_rotl(t, 31);
			v1 := entitlock._u64_mul(t, -7046029288634856825);
			w := get_byte(data, p + 8)::bigint | (get_byte(data, p + 9)::bigint << 8)
					 | (get_byte(data, p + 10)::bigint << 16) | (get_byte(data, p + 11)::bigint << 24)
					 | (get_byte(data, p + 12)::bigint << 32) | (get_byte(data, p + 13)::bigint << 40)
					 | (get_byte(data, p + 14)::bigint << 48) | (get_byte(data, p + 15)::bigint << 56);
			t := entitlock._u64_mul(w, -4417276706812531889);
			t := entitlock._u64_add(v2, t);
			t := entitlock._u64_rotl(t, 31);
			v2 := entitlock._u64_mul(t, -7046029288634856825);
			w := get_byte(data, p + 16)::bigint | (get_byte(data, p + 17)::bigint << 8)
					 | (get_byte(data, p + 18)::bigint << 16) | (get_byte(data, p + 19)::bigint << 24)
					 | (get_byte(data, p + 20)::bigint << 32) | (get_byte(data, p + 21)::bigint << 40)
					 | (get_byte(data, p + 22)::bigint << 48) | (get_byte(data, p + 23)::bigint << 56);
			t := entitlock._u64_mul(w, -4417276706812531889);
			t := entitlock._u64_add(v3, t);
			t := entitlock._u64_rotl(t, 31);
			v3 := entitlock._u64_mul(t, -7046029288634856825);
			w := get_byte(data, p + 24)::bigint | (get_byte(data, p + 25)::bigint << 8)
					 | (get_byte(data, p + 26)::bigint << 16) | (get_byte(data, p + 27)::bigint << 24)
					 | (get_byte(data, p + 28)::bigint << 32) | (get_byte(data, p + 29)::bigint << 40)
					 | (get_byte(data, p + 30)::bigint << 48) | (get_byte(data, p + 31)::bigint << 56);
			t := entitlock._u64_mul(w, -4417276706812531889);
			t := entitlock._u64_add(v4, t);
			t := entitlock._u64_rotl(t, 31);
			v4 := entitlock._u64_mul(t, -7046029288634856825);
			p := p + 32;
		END LOOP;
		h := entitlock._u64_rotl(v1, 1);
		t := entitlock._u64_rotl(v2, 7);
		h := entitlock._u64_add(h, t);
		t := entitlock._u64_rotl(v3, 12);
		h := entitlock._u64_add(h, t);
		t := entitlock._u64_rotl(v4, 18);
		h := entitlock._u64_add(h, t);
		-- merge rounds: h ^= round(0, v); h = h * P1 + P4
		t := entitlock._u64_mul(v1, -4417276706812531889);
		t := entitlock._u64_rotl(t, 31);
		t := entitlock._u64_mul(t, -7046029288634856825);
		h := h # t;
		h := entitlock._u64_mul(h, -7046029288634856825);
		h := entitlock._u64_add(h, -8796714831421723037);
		t := entitlock._u64_mul(v2, -4417276706812531889);
		t := entitlock._u64_rotl(t, 31);
		t := entitlock._u64_mul(t, -7046029288634856825);
		h := h # t;
		h := entitlock._u64_mul(h, -7046029288634856825);
		h := entitlock._u64_add(h, -8796714831421723037);
		t := entitlock._u64_mul(v3, -4417276706812531889);
		t := entitlock._u64_rotl(t, 31);
		t := entitlock._u64_mul(t, -7046029288634856825);
		h := h # t;
		h := entitlock._u64_mul(h, -7046029288634856825);
		h := entitlock._u64_add(h, -8796714831421723037);
		t := entitlock._u64_mul(v4, -4417276706812531889);
		t := entitlock._u64_rotl(t, 31);
		t := entitlock._u64_mul(t, -7046029288634856825);
		h := h # t;
		h := entitlock._u64_mul(h, -7046029288634856825);
		h := entitlock._u64_add(h, -8796714831421723037);
	ELSE
		h := entitlock._u64_add(seed, 2870177450012600261);  -- P5
	END IF;
	
	t := len;
	h := entitlock._u64_add(h, t);
	
	WHILE len - p >= 8 LOOP
		w := get_byte(data, p)::bigint | (get_byte(data, p + 1)::bigint << 8)
			 | (get_byte(data, p + 2)::bigint << 16) | (get_byte(data, p + 3)::bigint << 24)
			 | (get_byte(data, p + 4)::bigint << 32) | (get_byte(data, p + 5)::bigint << 40)
			 | (get_byte(data, p + 6)::bigint << 48) | (get_byte(data, p + 7)::bigint << 56);
		t := entitlock._u64_mul(w, -4417276706812531889);
		t := entitlock._u64_rotl(t, 31);
		t := entitlock._u64_mul(t, -7046029288634856825);
		h := h # t;
		h := entitlock._u64_rotl(h, 27);
		h := entitlock._u64_mul(h, -7046029288634856825);
		h := entitlock._u64_add(h, -8796714831421723037);
		p := p + 8;
	END LOOP;
	IF len - p >= 4 THEN
		w := get_byte(data, p)::bigint | (get_byte(data, p + 1)::bigint << 8)
			 | (get_byte(data, p + 2)::bigint << 16) | (get_byte(data, p + 3)::bigint << 24);
		t := entitlock._u64_mul(w, -7046029288634856825);
		h := h # t;
		h := entitlock._u64_rotl(h, 23);
		h := entitlock._u64_mul(h, -4417276706812531889);
		h := entitlock._u64_add(h, 1609587929392839161);
		p := p + 4;
	END IF;
	WHILE p < len LOOP
		w := get_byte(data, p);
		t := entitlock._u64_mul(w, 2870177450012600261);
		h := h # t;
		h := entitlock._u64_rotl(h, 11);
		h := entitlock._u64_mul(h, -7046029288634856825);
		p := p + 1;
	END LOOP;
	
	-- avalanche
	t := entitlock._u64_shr(h, 33);
	h := h # t;
	h := entitlock._u64_mul(h, -4417276706812531889);
	t := entitlock._u64_shr(h, 29);
	h := h # t;
	h := entitlock._u64_mul(h, 1609587929392839161);
	t := entitlock._u64_shr(h, 32);
	RETURN h # t;
END
$$;

COMMENT ON FUNCTION entitlock._xxh64(bytea, bigint) IS
'XXH64 of data with seed, as a signed bigint (internal to the trusted edition)';

CREATE OR REPLACE FUNCTION entitlock.key(name text)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF name = '' THEN
		RAISE EXCEPTION 'lock name must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN entitlock._xxh64(convert_to(name, 'UTF8'), 0);
END
$$;

COMMENT ON FUNCTION entitlock.key(text) IS
'lock key of a name: XXH64 (seed 0) of its UTF-8 bytes, as a signed bigint';

CREATE OR REPLACE FUNCTION entitlock.key(realm text, entity text)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF realm = '' THEN
		RAISE EXCEPTION 'realm must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF entity = '' THEN
		RAISE EXCEPTION 'entity must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN entitlock._xxh64(convert_to(realm, 'UTF8') || decode('00', 'hex') || convert_to(entity, 'UTF8'), 0);
END
$$;

COMMENT ON FUNCTION entitlock.key(text, text) IS
'lock key of a (realm, entity) pair: XXH64 of realm, a zero byte and entity';
