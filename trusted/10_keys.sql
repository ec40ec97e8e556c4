/* trusted/10_keys.sql */

--
-- Keys: XXH64 (seed 0) of the UTF-8 bytes of a name, read as a signed
-- bigint, exactly as the C edition computes it (src/keys.c), so that locks
-- taken by either edition, by pg_advisory_xact_lock(entitlock.key(n)) or by
-- a client's own XXH64 meet.
--
-- PL/pgSQL has no unsigned 64-bit type, and bigint arithmetic raises an
-- error on overflow, so the 64-bit words live in bigint as their two's
-- complement bit patterns.  Rotations, shifts and exclusive or are bigint
-- operators (which never raise); sums and products modulo 2^64 are exact
-- numeric expressions brought back into bigint's range.  Each helper is
-- one SQL expression, which the planner inlines into the PL/pgSQL
-- expression that calls it and folds when an argument is a constant (the
-- XXH64 primes).
--
-- What a key costs is mostly compiling: PL/pgSQL compiles the expressions
-- a transaction evaluates again in the next transaction, so one call per
-- transaction pays for every step of every statement it runs.  Hence
-- numeric (a product is 6 steps; with bigint operators on 16-bit pieces
-- it was about 70) and few statements on the way of a short name.
--

-- a + b modulo 2^64: the exact sum in numeric, brought into bigint's range
-- (a + b + 2^64 + 2^63 is never negative, so % gives its residue).
CREATE OR REPLACE FUNCTION entitlock._u64_add(a bigint, b bigint)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
	SELECT pg_catalog.int8(((((a::pg_catalog.numeric OPERATOR(pg_catalog.+) b::pg_catalog.numeric) OPERATOR(pg_catalog.+) 27670116110564327424::pg_catalog.numeric) OPERATOR(pg_catalog.%) 18446744073709551616::pg_catalog.numeric) OPERATOR(pg_catalog.-) 9223372036854775808::pg_catalog.numeric))
$$;

-- a * b modulo 2^64, likewise: |a * b| <= 2^126, so adding 2^127 + 2^63
-- (a multiple of 2^64, plus 2^63) makes it positive.
CREATE OR REPLACE FUNCTION entitlock._u64_mul(a bigint, b bigint)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
	SELECT pg_catalog.int8(((((a::pg_catalog.numeric OPERATOR(pg_catalog.*) b::pg_catalog.numeric) OPERATOR(pg_catalog.+) 170141183460469231740910675752738881536::pg_catalog.numeric) OPERATOR(pg_catalog.%) 18446744073709551616::pg_catalog.numeric) OPERATOR(pg_catalog.-) 9223372036854775808::pg_catalog.numeric))
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
--
-- No SET clause: every caller (key(), and the functions that lock names)
-- runs with search_path = pg_catalog, pg_temp already, and a SET clause
-- costs each call a configuration change and its undoing, more than the
-- hash of a short name.
--
CREATE OR REPLACE FUNCTION entitlock._xxh64(data bytea, seed bigint DEFAULT 0)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
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
	-- Every helper is called with plain variables, constants and cheap
	-- operators only, so that the planner inlines it (an argument that is
	-- itself a costly expression is not inlined, and a call of an SQL
	-- function costs far more than the arithmetic).
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
		h := entitlock._u64_add(h, len);
	ELSE
		-- seed + P5 + len (P5 + len < 2^63)
		h := entitlock._u64_add(seed, 2870177450012600261 + len);
	END IF;
	-- Few statements from here on, each one round: the expressions a
	-- transaction evaluates are compiled again in the next one, so every
	-- statement costs each call of the first key in a transaction.
	WHILE len - p >= 8 LOOP
		w := get_byte(data, p)::bigint | (get_byte(data, p + 1)::bigint << 8)
			 | (get_byte(data, p + 2)::bigint << 16) | (get_byte(data, p + 3)::bigint << 24)
			 | (get_byte(data, p + 4)::bigint << 32) | (get_byte(data, p + 5)::bigint << 40)
			 | (get_byte(data, p + 6)::bigint << 48) | (get_byte(data, p + 7)::bigint << 56);
		t := entitlock._u64_mul(w, -4417276706812531889);
		t := entitlock._u64_mul(entitlock._u64_rotl(t, 31), -7046029288634856825);
		h := entitlock._u64_add(entitlock._u64_mul(entitlock._u64_rotl(h # t, 27), -7046029288634856825),
								-8796714831421723037);
		p := p + 8;
	END LOOP;
	IF len - p >= 4 THEN
		t := entitlock._u64_mul(get_byte(data, p)::bigint | (get_byte(data, p + 1)::bigint << 8)
								| (get_byte(data, p + 2)::bigint << 16) | (get_byte(data, p + 3)::bigint << 24),
								-7046029288634856825);
		h := entitlock._u64_add(entitlock._u64_mul(entitlock._u64_rotl(h # t, 23), -4417276706812531889),
								1609587929392839161);
		p := p + 4;
	END IF;
	WHILE p < len LOOP
		-- byte * P5 modulo 2^64 for every byte value: a constant of the
		-- statement (a variable would be copied by every call)
		h := entitlock._u64_mul(entitlock._u64_rotl(h # ('{0,2870177450012600261,5740354900025200522,8610532350037800783,
				-6966034273659150572,-4095856823646550311,-1225679373633950050,
				1644498076378650211,4514675526391250472,7384852976403850733,
				-8191713647293100622,-5321536197280500361,-2451358747267900100,
				418818702744700161,3288996152757300422,6159173602769900683,
				9029351052782500944,-6547215570914450411,-3677038120901850150,
				-806860670889249889,2063316779123350372,4933494229135950633,
				7803671679148550894,-7772894944548400461,-4902717494535800200,
				-2032540044523199939,837637405489400322,3707814855502000583,
				6577992305514600844,-8998574318182350511,-6128396868169750250,
				-3258219418157149989,-388041968144549728,2482135481868050533,
				5352312931880650794,8222490381893251055,-7354076241803700300,
				-4483898791791100039,-1613721341778499778,1256456108234100483,
				4126633558246700744,6996811008259301005,-8579755615437650350,
				-5709578165425050089,-2839400715412449828,30776734600150433,
				2900954184612750694,5771131634625350955,8641309084637951216,
				-6935257539059000139,-4065080089046399878,-1194902639033799617,
				1675274810978800644,4545452260991400905,7415629711004001166,
				-8160936912692950189,-5290759462680349928,-2420582012667749667,
				449595437344850594,3319772887357450855,6189950337370051116,
				9060127787382651377,-6516438836314299978,-3646261386301699717,
				-776083936289099456,2094093513723500805,4964270963736101066,
				7834448413748701327,-7742118209948250028,-4871940759935649767,
				-2001763309923049506,868414140089550755,3738591590102151016,
				6608769040114751277,-8967797583582200078,-6097620133569599817,
				-3227442683556999556,-357265233544399295,2512912216468200966,
				5383089666480801227,8253267116493401488,-7323299507203549867,
				-4453122057190949606,-1582944607178349345,1287232842834250916,
				4157410292846851177,7027587742859451438,-8548978880837499917,
				-5678801430824899656,-2808623980812299395,61553469200300866,
				2931730919212901127,5801908369225501388,8672085819238101649,
				-6904480804458849706,-4034303354446249445,-1164125904433649184,
				1706051545578951077,4576228995591551338,7446406445604151599,
				-8130160178092799756,-5259982728080199495,-2389805278067599234,
				480372171945001027,3350549621957601288,6220727071970201549,
				9090904521982801810,-6485662101714149545,-3615484651701549284,
				-745307201688949023,2124870248323651238,4995047698336251499,
				7865225148348851760,-7711341475348099595,-4841164025335499334,
				-1970986575322899073,899190874689701188,3769368324702301449,
				6639545774714901710,-8937020848982049645,-6066843398969449384,
				-3196665948956849123,-326488498944248862,2543688951068351399,
				5413866401080951660,8284043851093551921,-7292522772603399434,
				-4422345322590799173,-1552167872578198912,1318009577434401349,
				4188187027447001610,7058364477459601871,-8518202146237349484,
				-5648024696224749223,-2777847246212148962,92330203800451299,
				2962507653813051560,5832685103825651821,8702862553838252082,
				-6873704069858699273,-4003526619846099012,-1133349169833498751,
				1736828280179101510,4607005730191701771,7477183180204302032,
				-8099383443492649323,-5229205993480049062,-2359028543467448801,
				511148906545151460,3381326356557751721,6251503806570351982,
				9121681256582952243,-6454885367113999112,-3584707917101398851,
				-714530467088798590,2155646982923801671,5025824432936401932,
				7896001882949002193,-7680564740747949162,-4810387290735348901,
				-1940209840722748640,929967609289851621,3800145059302451882,
				6670322509315052143,-8906244114381899212,-6036066664369298951,
				-3165889214356698690,-295711764344098429,2574465685668501832,
				5444643135681102093,8314820585693702354,-7261746038003249001,
				-4391568587990648740,-1521391137978048479,1348786312034551782,
				4218963762047152043,7089141212059752304,-8487425411637199051,
				-5617247961624598790,-2747070511611998529,123106938400601732,
				2993284388413201993,5863461838425802254,8733639288438402515,
				-6842927335258548840,-3972749885245948579,-1102572435233348318,
				1767605014779251943,4637782464791852204,7507959914804452465,
				-8068606708892498890,-5198429258879898629,-2328251808867298368,
				541925641145301893,3412103091157902154,6282280541170502415,
				9152457991183102676,-6424108632513848679,-3553931182501248418,
				-683753732488648157,2186423717523952104,5056601167536552365,
				7926778617549152626,-7649788006147798729,-4779610556135198468,
				-1909433106122598207,960744343890002054,3830921793902602315,
				6701099243915202576,-8875467379781748779,-6005289929769148518,
				-3135112479756548257,-264935029743947996,2605242420268652265,
				5475419870281252526,8345597320293852787,-7230969303403098568,
				-4360791853390498307,-1490614403377898046,1379563046634702215,
				4249740496647302476,7119917946659902737,-8456648677037048618,
				-5586471227024448357,-2716293777011848096,153883673000752165,
				3024061123013352426,5894238573025952687,8764416023038552948,
				-6812150600658398407,-3941973150645798146,-1071795700633197885,
				1798381749379402376,4668559199392002637,7538736649404602898,
				-8037829974292348457,-5167652524279748196,-2297475074267147935,
				572702375745452326,3442879825758052587,6313057275770652848,
				9183234725783253109,-6393331897913698246,-3523154447901097985,
				-652976997888497724,2217200452124102537,5087377902136702798,
				7957555352149303059,-7619011271547648296,-4748833821535048035,
				-1878656371522447774,991521078490152487,3861698528502752748,
				6731875978515353009,-8844690645181598346,-5974513195168998085}'::bigint[])[get_byte(data, p) + 1], 11),
								-7046029288634856825);
		p := p + 1;
	END LOOP;

	-- avalanche
	h := entitlock._u64_mul(h # entitlock._u64_shr(h, 33), -4417276706812531889);
	h := entitlock._u64_mul(h # entitlock._u64_shr(h, 29), 1609587929392839161);
	RETURN h # entitlock._u64_shr(h, 32);
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
