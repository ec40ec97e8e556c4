/*-------------------------------------------------------------------------
 *
 * util.c
 *	  What every feature needs and no feature owns: the checks of SQL
 *	  arguments (NULL, empty, the name limit, ttls), the quoting of names in
 *	  messages, interval conversion, the keys of the realms entitlock locks
 *	  for its own rows, random UUIDs, the start of a call that writes, and
 *	  the start of a set-returning result.
 *
 * entitlock's functions are not STRICT: a NULL name silently returning NULL
 * would let a caller believe it holds a lock (or recorded usage) it never
 * did, so NULL is an error instead.  Each check takes the whole message it
 * raises, so that every message is one sentence, not assembled from parts.
 * Arguments are checked before any lock is taken, so a bad argument fails
 * at once and changes nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/int.h"
#include "compat.h"

#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "util.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

/*
 * Arguments
 */

/* Raise null_value_not_allowed with if_null when argument argno is NULL. */
void
entitlock_require_arg(FunctionCallInfo fcinfo, int argno, const char *if_null)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg_internal("%s", _(if_null))));
}

/* Fetch a text argument that must be present. */
text *
entitlock_text_arg(FunctionCallInfo fcinfo, int argno, const char *if_null)
{
	entitlock_require_arg(fcinfo, argno, if_null);
	return PG_GETARG_TEXT_PP(argno);
}

/* Fetch a bigint argument that must be present. */
int64
entitlock_int8_arg(FunctionCallInfo fcinfo, int argno, const char *if_null)
{
	entitlock_require_arg(fcinfo, argno, if_null);
	return PG_GETARG_INT64(argno);
}

/*
 * The slot count of a semaphore (1.2: lock_slot, lease_acquire_slot) in
 * argument argno: present, 1 to ENTITLOCK_MAX_SLOTS.
 */
int
entitlock_slots_arg(FunctionCallInfo fcinfo, int argno)
{
	int32		slots;

	entitlock_require_arg(fcinfo, argno, "slots must not be null");
	slots = PG_GETARG_INT32(argno);
	if (slots < 1 || slots > ENTITLOCK_MAX_SLOTS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("slots must be between 1 and %d", ENTITLOCK_MAX_SLOTS),
				 errdetail("The value given was %d.", slots)));
	return slots;
}

/*
 * A name: present, not empty and, where messages->if_long is set, at most
 * ENTITLOCK_MAX_NAME_BYTES long.  Takes a value and whether it is NULL, so
 * that it serves the fields of a row as well as arguments.
 */
text *
entitlock_name_value(Datum value, bool isnull,
					 const EntitlockNameMessages *messages)
{
	text	   *name;
	int			len;

	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg_internal("%s", _(messages->if_null))));
	name = DatumGetTextPP(value);
	len = VARSIZE_ANY_EXHDR(name);
	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg_internal("%s", _(messages->if_empty))));
	if (messages->if_long != NULL && len > ENTITLOCK_MAX_NAME_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg_internal("%s", _(messages->if_long)),
				 errdetail("It is %d bytes long; the limit is %d bytes.",
						   len, ENTITLOCK_MAX_NAME_BYTES)));
	return name;
}

/* A name argument; see entitlock_name_value(). */
text *
entitlock_name_arg(FunctionCallInfo fcinfo, int argno,
				   const EntitlockNameMessages *messages)
{
	return entitlock_name_value(PG_GETARG_DATUM(argno), PG_ARGISNULL(argno),
								messages);
}

/* How much of a name or key an error message quotes. */
#define MESSAGE_CHARS 64

/*
 * A name or key for an error message: whole if short, else its first
 * characters followed by "...".  Keys may be megabytes long.
 */
char *
entitlock_text_for_message(text *t)
{
	const char *s = VARDATA_ANY(t);
	int			len = VARSIZE_ANY_EXHDR(t);
	int			cut;

	if (pg_mbstrlen_with_len(s, len) <= MESSAGE_CHARS)
		return text_to_cstring(t);
	cut = pg_mbcharcliplen(s, len, MESSAGE_CHARS);
	return psprintf("%.*s...", cut, s);
}

/*
 * Intervals
 *
 * An interval as a span of time counts a month as 30 days, as elsewhere in
 * PostgreSQL (interval comparison, lock_timeout's units aside).
 */

/* span in microseconds; false when that does not fit in 64 bits. */
bool
entitlock_interval_usecs(const Interval *span, int64 *usecs)
{
	int64		days = (int64) span->month * DAYS_PER_MONTH + span->day;

	return !pg_mul_s64_overflow(days, USECS_PER_DAY, usecs) &&
		!pg_add_s64_overflow(*usecs, span->time, usecs);
}

/*
 * A wait limit in whole milliseconds, rounded up so that a wait of 1
 * microsecond still waits; anything beyond what lock_timeout accepts
 * (about 24 days) is clamped to that.  A negative span raises if_negative.
 */
int
entitlock_interval_ms(const Interval *span, const char *if_negative)
{
	int64		usecs;
	bool		negative;

	if (entitlock_interval_usecs(span, &usecs))
		negative = usecs < 0;
	else
	{
		/* Beyond 64 bits the days decide the sign: the time cannot. */
		negative = (int64) span->month * DAYS_PER_MONTH + span->day < 0;
		usecs = PG_INT64_MAX;
	}
	if (negative)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg_internal("%s", _(if_negative))));
	/* ceil(usecs / 1000), without overflowing */
	if (usecs / 1000 + (usecs % 1000 != 0) > INT_MAX)
		return INT_MAX;
	return (int) (usecs / 1000 + (usecs % 1000 != 0));
}

/* usecs as an interval of that many microseconds. */
Interval *
entitlock_usecs_interval(int64 usecs)
{
	Interval   *span = palloc0(sizeof(Interval));

	span->time = usecs;
	return span;
}

/* The moment something made at now with ttl expires. */
TimestampTz
entitlock_expiry(TimestampTz now, Interval *ttl)
{
	return DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
												   TimestampTzGetDatum(now),
												   PointerGetDatum(ttl)));
}

/*
 * Fetch a ttl argument: present, greater than zero from now, and no longer
 * than max (or, without one, than TTL_BOUND_YEARS).  The bounds are
 * checked first, as intervals compare (a month as 30 days), so that an
 * absurd ttl, long or negative, gets a message about the ttl and not a
 * timestamp overflow.  Checked before any lock is taken, so a bad ttl fails
 * without waiting.
 */
#define TTL_BOUND_YEARS 10000

Interval *
entitlock_ttl_arg(FunctionCallInfo fcinfo, int argno, const Interval *max,
				  const char *max_text)
{
	Interval   *ttl;
	Interval	bound = {0};
	Interval	negative_bound = {0};
	TimestampTz now;

	entitlock_require_arg(fcinfo, argno, "ttl must not be null");
	ttl = PG_GETARG_INTERVAL_P(argno);
	if (max == NULL)
	{
		bound.month = TTL_BOUND_YEARS * MONTHS_PER_YEAR;
		max = &bound;
		max_text = CppAsString2(TTL_BOUND_YEARS) " years";
	}
	if (DatumGetInt32(DirectFunctionCall2(interval_cmp,
										  PointerGetDatum(ttl),
										  PointerGetDatum(max))) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ttl must not be longer than %s", max_text)));

	/*
	 * Below -max it cannot come out positive, and adding it could overflow.
	 * Between the bounds, a ttl such as '1 month -30 days' is judged by what
	 * it adds up to from now.
	 */
	negative_bound.month = -max->month;
	negative_bound.day = -max->day;
	negative_bound.time = -max->time;
	now = GetCurrentTimestamp();
	if (DatumGetInt32(DirectFunctionCall2(interval_cmp,
										  PointerGetDatum(ttl),
										  PointerGetDatum(&negative_bound))) < 0 ||
		entitlock_expiry(now, ttl) <= now)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ttl must be greater than zero")));
	return ttl;
}


/*
 * Realms and identities
 */

/*
 * The key of name in realm: entitlock.key(realm, name).  Features that lock
 * names of their own (idempotency keys, leases) use a realm of their own,
 * so their locks are distinct from any lock an application takes by name.
 */
int64
entitlock_realm_key(const char *realm, text *name)
{
	return entitlock_pair_key(cstring_to_text(realm), name);
}

/*
 * A version 4 (random) UUID from the strong random source: lease tokens,
 * which are capabilities and must not be guessable, and claim identities.
 */
pg_uuid_t *
entitlock_random_uuid(void)
{
	pg_uuid_t  *uuid = palloc(sizeof(pg_uuid_t));

	if (!pg_strong_random(uuid->data, UUID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random values")));
	uuid->data[6] = (uuid->data[6] & 0x0f) | 0x40;
	uuid->data[8] = (uuid->data[8] & 0x3f) | 0x80;
	return uuid;
}

/*
 * Calls
 */

/*
 * Every SQL function that writes starts here: cmdname (such as
 * "record_usage()") may not run in a read-only transaction nor during
 * recovery.
 */
void
entitlock_begin_write(const char *cmdname)
{
	PreventCommandIfReadOnly(cmdname);
	PreventCommandDuringRecovery(cmdname);
}

/*
 * Start the result of a set-returning function, before anything is locked
 * or recorded, so that a caller that cannot take a set back fails first.
 * Rows go into rsinfo->setResult with rsinfo->setDesc.  The caller's
 * expected row type, when it has one, spares a look at pg_proc.
 */
ReturnSetInfo *
entitlock_init_srf(FunctionCallInfo fcinfo)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo,
						rsinfo != NULL && IsA(rsinfo, ReturnSetInfo) &&
						rsinfo->expectedDesc != NULL ?
						MAT_SRF_USE_EXPECTED_DESC : 0);
	return rsinfo;
}
