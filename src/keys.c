/*-------------------------------------------------------------------------
 *
 * keys.c
 *	  Lock keys: the portable 64-bit hash of a name, and the SQL functions
 *	  entitlock.key(name) and entitlock.key(realm, entity).
 *
 * Every lock entitlock takes is an advisory lock on a 64-bit key.  Clients
 * that cannot load the extension must be able to compute the same key, so
 * the hash is XXH64 with seed 0 over the UTF-8 bytes of the name, read as a
 * signed bigint.  PostgreSQL's hashtext() would be shorter to call, but its
 * values are not promised to stay the same across major versions or
 * platforms, and a key must never change.  The test vectors in
 * sql/keys.sql and README.md pin the function down.
 *
 * A (realm, entity) pair hashes realm, a zero byte and entity.  No text
 * value can contain a zero byte, so the pair key cannot be produced by any
 * single name, nor by any other split of the same characters.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "mb/pg_wchar.h"
#include "port/pg_bswap.h"
#include "util.h"

PG_FUNCTION_INFO_V1(entitlock_key);
PG_FUNCTION_INFO_V1(entitlock_key_pair);

#define XXH_PRIME64_1	UINT64CONST(0x9E3779B185EBCA87)
#define XXH_PRIME64_2	UINT64CONST(0xC2B2AE3D27D4EB4F)
#define XXH_PRIME64_3	UINT64CONST(0x165667B19E3779F9)
#define XXH_PRIME64_4	UINT64CONST(0x85EBCA77C2B2AE63)
#define XXH_PRIME64_5	UINT64CONST(0x27D4EB2F165667C5)

static inline uint64
rotl64(uint64 x, int r)
{
	return (x << r) | (x >> (64 - r));
}

/* XXH64 reads its input as little-endian words on every platform. */
static inline uint64
read_le64(const unsigned char *p)
{
	uint64		v;

	memcpy(&v, p, sizeof(v));
#ifdef WORDS_BIGENDIAN
	v = pg_bswap64(v);
#endif
	return v;
}

static inline uint32
read_le32(const unsigned char *p)
{
	uint32		v;

	memcpy(&v, p, sizeof(v));
#ifdef WORDS_BIGENDIAN
	v = pg_bswap32(v);
#endif
	return v;
}

static inline uint64
xxh64_round(uint64 acc, uint64 input)
{
	acc += input * XXH_PRIME64_2;
	acc = rotl64(acc, 31);
	return acc * XXH_PRIME64_1;
}

static inline uint64
xxh64_merge_round(uint64 acc, uint64 val)
{
	acc ^= xxh64_round(0, val);
	return acc * XXH_PRIME64_1 + XXH_PRIME64_4;
}

/*
 * XXH64 of len bytes at data, as specified in the xxHash format document
 * (version 0.8): four accumulators over 32-byte stripes, then the tail in
 * 8-, 4- and 1-byte steps, then the avalanche.
 */
static uint64
xxh64(const char *data, size_t len, uint64 seed)
{
	const unsigned char *p = (const unsigned char *) data;
	const unsigned char *end = p + len;
	uint64		h;

	if (len >= 32)
	{
		const unsigned char *limit = end - 32;
		uint64		v1 = seed + XXH_PRIME64_1 + XXH_PRIME64_2;
		uint64		v2 = seed + XXH_PRIME64_2;
		uint64		v3 = seed;
		uint64		v4 = seed - XXH_PRIME64_1;

		do
		{
			v1 = xxh64_round(v1, read_le64(p));
			v2 = xxh64_round(v2, read_le64(p + 8));
			v3 = xxh64_round(v3, read_le64(p + 16));
			v4 = xxh64_round(v4, read_le64(p + 24));
			p += 32;
		} while (p <= limit);

		h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
		h = xxh64_merge_round(h, v1);
		h = xxh64_merge_round(h, v2);
		h = xxh64_merge_round(h, v3);
		h = xxh64_merge_round(h, v4);
	}
	else
		h = seed + XXH_PRIME64_5;

	h += (uint64) len;

	while (end - p >= 8)
	{
		h ^= xxh64_round(0, read_le64(p));
		h = rotl64(h, 27) * XXH_PRIME64_1 + XXH_PRIME64_4;
		p += 8;
	}
	if (end - p >= 4)
	{
		h ^= (uint64) read_le32(p) * XXH_PRIME64_1;
		h = rotl64(h, 23) * XXH_PRIME64_2 + XXH_PRIME64_3;
		p += 4;
	}
	while (p < end)
	{
		h ^= (uint64) (*p) * XXH_PRIME64_5;
		h = rotl64(h, 11) * XXH_PRIME64_1;
		p++;
	}

	h ^= h >> 33;
	h *= XXH_PRIME64_2;
	h ^= h >> 29;
	h *= XXH_PRIME64_3;
	h ^= h >> 32;
	return h;
}

/*
 * The UTF-8 bytes of a text value.  The key is defined over UTF-8 so that a
 * database in another encoding computes the same key as a client would; in
 * a UTF-8 (or SQL_ASCII) database this is the stored bytes, not a copy.
 */
static const char *
text_utf8(text *t, size_t *len)
{
	const char *raw = VARDATA_ANY(t);
	int			rawlen = VARSIZE_ANY_EXHDR(t);
	char	   *converted;

	converted = pg_server_to_any(raw, rawlen, PG_UTF8);
	if (converted == raw)
		*len = rawlen;
	else
		*len = strlen(converted);
	return converted;
}

int64
entitlock_name_key(text *name)
{
	const char *bytes;
	size_t		len;

	if (VARSIZE_ANY_EXHDR(name) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lock name must not be empty")));
	bytes = text_utf8(name, &len);
	return (int64) xxh64(bytes, len, 0);
}

int64
entitlock_pair_key(text *realm, text *entity)
{
	const char *rbytes;
	const char *ebytes;
	size_t		rlen;
	size_t		elen;
	char	   *buf;
	int64		key;

	if (VARSIZE_ANY_EXHDR(realm) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("realm must not be empty")));
	if (VARSIZE_ANY_EXHDR(entity) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("entity must not be empty")));
	rbytes = text_utf8(realm, &rlen);
	ebytes = text_utf8(entity, &elen);

	buf = palloc(rlen + 1 + elen);
	memcpy(buf, rbytes, rlen);
	buf[rlen] = '\0';
	memcpy(buf + rlen + 1, ebytes, elen);
	key = (int64) xxh64(buf, rlen + 1 + elen, 0);
	pfree(buf);
	return key;
}

/*
 * A 64-bit hash of len bytes at data, chained on seed, for the keys of
 * entitlock's internal locks (see entitlock_acquire_internal()).  These
 * never leave the server, so they hash the stored bytes as they are.
 */
uint64
entitlock_hash_bytes(const void *data, size_t len, uint64 seed)
{
	return xxh64(data, len, seed);
}

/*
 * entitlock.key(name text) returns bigint
 *
 * STRICT.  Raises invalid_parameter_value for an empty name.
 */
Datum
entitlock_key(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(entitlock_name_key(PG_GETARG_TEXT_PP(0)));
}

/*
 * entitlock.key(realm text, entity text) returns bigint
 *
 * STRICT.  Raises invalid_parameter_value when either part is empty.
 */
Datum
entitlock_key_pair(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(entitlock_pair_key(PG_GETARG_TEXT_PP(0),
									   PG_GETARG_TEXT_PP(1)));
}
