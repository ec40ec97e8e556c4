/*-------------------------------------------------------------------------
 *
 * usage.c
 *	  Usage limits: entitlock.record_usage_if_under_limit, record_usage,
 *	  record_usage_if_under_limits, refund_usage, usage, usage_limit and
 *	  (1.2) reset_usage.  Periods are periods.c's.
 *
 * A meter is (subject, feature, period kind).  Each calendar period of a
 * meter is one row of entitlock.usage_counter holding a running total, so
 * a decision is one index probe and one update, however much usage there
 * has been.  Idempotency keys live in entitlock.usage_idempotency (one
 * meter) and entitlock.usage_limits_idempotency (a set of meters) with the
 * decisions they got, so a retry can be answered without recording again.
 *
 * How calls on one meter serialise.  Every recording call first takes
 * shared advisory locks on the subject and on the (subject, feature) pair:
 * an exclusive lock(subject) then freezes all of a subject's usage, and an
 * exclusive lock_entity(subject, feature) taken by application code
 * excludes recording on that meter, while recorders do not exclude each
 * other there.  (A transaction that has taken many of these takes coarser
 * locks with the same effect instead; see "Lock escalation" in locks.c.)
 * Recorders meet on the counter row itself: it is locked, as SELECT ... FOR
 * NO KEY UPDATE would, before its usage is read, so a hot meter behaves
 * like a single-row UPDATE, where whichever session runs first goes ahead,
 * rather than a queue on an exclusive lock that is handed to a sleeping
 * waiter.  A period's first row has no row to lock yet: its creators
 * serialise on an internal lock for that row and look again once they hold
 * it (see "Creating a row" in table.c).  Calls with an idempotency key also
 * take an internal lock on the key, so that a retry racing its first call
 * waits for it and then answers from its record.
 *
 * Rows are found with SnapshotSelf and locked in their newest version, so
 * a decision reads the usage as of after the row lock was granted, as
 * READ COMMITTED's UPDATE does.  Unlike an MVCC snapshot, SnapshotSelf
 * takes no SERIALIZABLE predicate locks on the index pages that all pairs
 * share, which would make calls on unrelated pairs fail each other.  See
 * entitlock_check_visible_to_transaction() for REPEATABLE READ and
 * SERIALIZABLE.  A row that such a probe does not find may still be there,
 * hidden by a concurrent update, so the creation lock is followed by a look
 * against one snapshot (entitlock_table_probe_stable()) before a row is
 * created.
 *
 * A call naming several meters locks all of them, in one canonical order,
 * before it reads any, decides every limit, and then writes all or none.
 *
 * The tables are not granted to anyone and are accessed beneath SQL, by
 * table.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "entitlock.h"
#include "funcapi.h"
#include "periods.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

PG_FUNCTION_INFO_V1(entitlock_record_usage_if_under_limit);
PG_FUNCTION_INFO_V1(entitlock_record_usage);
PG_FUNCTION_INFO_V1(entitlock_record_usage_if_under_limits);
PG_FUNCTION_INFO_V1(entitlock_refund_usage);
PG_FUNCTION_INFO_V1(entitlock_usage);
PG_FUNCTION_INFO_V1(entitlock_usage_limit);
PG_FUNCTION_INFO_V1(entitlock_reset_usage);

/*
 * Subjects, features and idempotency keys are stored in full and indexed,
 * so together they must fit in a btree entry (about 2.7 kB).
 */
#define USAGE_MAX_NAME_BYTES 512

/* At most this many limits in one record_usage_if_under_limits() call. */
#define USAGE_MAX_LIMITS 100

/* Seeds of the internal lock keys; any fixed values, never changed. */
#define KEY_LOCK_SEED		UINT64CONST(0x656e746c6f636b31)	/* idempotency key */
#define CREATE_LOCK_SEED	UINT64CONST(0x656e746c6f636b32)	/* first row */

/* One meter's period, as the tables key it. */
typedef struct UsageMeter
{
	text	   *subject;
	text	   *feature;
	UsagePeriod period;
	TimestampTz period_start;	/* -infinity for lifetime */
	TimestampTz period_end;		/* only valid when has_end */
	bool		has_end;
} UsageMeter;

/*
 * One meter of a call, through locking, deciding and writing it.  limit
 * bounds the usage after the call (bigint's largest for record_usage).
 */
typedef struct MeterCall
{
	UsageMeter	meter;
	int64		limit;
	int64		subject_key;	/* the advisory lock keys */
	int64		pair_key;
	int			position;		/* 0-based, in the caller's list */
	bool		found;			/* its counter row exists, locked at tid */
	ItemPointerData tid;
	int64		used;			/* before the decision */
	bool		allowed;		/* the limit had room */
	int64		new_used;		/* after the decision */
	bool		replayed;		/* answered from its idempotency key */
} MeterCall;

/*
 * Argument checks
 *
 * The same checks apply to a function's arguments and to the fields of an
 * entitlock.usage_limit, so they take a value and whether it is NULL.
 */

static text *
name_value(Datum value, bool isnull, const char *what)
{
	text	   *name;
	int			len;

	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
	name = DatumGetTextPP(value);
	len = VARSIZE_ANY_EXHDR(name);
	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", what)));
	if (len > USAGE_MAX_NAME_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s is too long", what),
				 errdetail("It is %d bytes long; the limit is %d bytes.",
						   len, USAGE_MAX_NAME_BYTES)));
	return name;
}

static text *
name_arg(FunctionCallInfo fcinfo, int argno, const char *what)
{
	return name_value(PG_GETARG_DATUM(argno), PG_ARGISNULL(argno), what);
}

static int64
int8_arg(FunctionCallInfo fcinfo, int argno, const char *what)
{
	entitlock_require_arg(fcinfo, argno, what);
	return PG_GETARG_INT64(argno);
}

/* The optional idempotency key in argno, or NULL. */
static text *
idempotency_key_arg(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		return NULL;
	return name_arg(fcinfo, argno, "idempotency key");
}

static int64
positive_amount_arg(FunctionCallInfo fcinfo, int argno)
{
	int64		amount = int8_arg(fcinfo, argno, "amount");

	if (amount <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("amount must be greater than zero"),
				 errhint("Use record_usage() with a negative amount to give usage back.")));
	return amount;
}

static int64
limit_value(Datum value, bool isnull)
{
	int64		limit;

	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("usage limit must not be null")));
	limit = DatumGetInt64(value);
	if (limit < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("usage limit must not be negative")));
	return limit;
}

/*
 * Periods (see periods.c)
 */

/* Fill in the meter's period and its bounds for the one holding "at". */
static void
compute_period(UsageMeter *meter, const UsagePeriod *period, TimestampTz at)
{
	if (&meter->period != period)
		meter->period = *period;
	meter->has_end = entitlock_period_bounds(&meter->period, at,
											 &meter->period_start,
											 &meter->period_end);
}

/*
 * Usage is attributed to the period holding the transaction's start,
 * now(), so that every call of one transaction agrees on the period (and
 * on period_end) even when the transaction straddles a boundary.
 */
static void
meter_args(FunctionCallInfo fcinfo, UsageMeter *meter, int period_argno)
{
	UsagePeriod period;

	meter->subject = name_arg(fcinfo, 0, "subject");
	meter->feature = name_arg(fcinfo, 1, "feature");
	entitlock_period_value(PG_GETARG_DATUM(period_argno),
						   PG_ARGISNULL(period_argno), &period);
	compute_period(meter, &period, GetCurrentTransactionStartTimestamp());
}

/*
 * Tables
 *
 * Written beneath SQL through table.c; see there.
 */

#define COUNTER_NATTS 6
#define COUNTER_USED 5			/* 0-based column numbers */

#define IDEM_NATTS 10
#define IDEM_REFUNDED_AT 9		/* added in 1.1 */

#define SETKEY_NATTS 10
#define SETKEY_REFUNDED 8

static const Oid counter_types[COUNTER_NATTS] = {
	TEXTOID,					/* subject */
	TEXTOID,					/* feature */
	TEXTOID,					/* period */
	TIMESTAMPTZOID,				/* period_start */
	TIMESTAMPTZOID,				/* period_end */
	INT8OID						/* used */
};

static const Oid idem_types[IDEM_NATTS] = {
	TEXTOID,					/* subject */
	TEXTOID,					/* feature */
	TEXTOID,					/* idempotency_key */
	TEXTOID,					/* period */
	INT8OID,					/* amount */
	BOOLOID,					/* allowed */
	INT8OID,					/* used */
	TIMESTAMPTZOID,				/* period_end */
	TIMESTAMPTZOID,				/* recorded_at */
	TIMESTAMPTZOID				/* refunded_at (1.1) */
};

/* One row per record_usage_if_under_limits() call with a key (1.1). */
static const Oid setkey_types[SETKEY_NATTS] = {
	TEXTOID,					/* idempotency_key */
	INT8OID,					/* amount */
	TEXTARRAYOID,				/* subjects, in the call's order */
	TEXTARRAYOID,				/* features */
	TEXTARRAYOID,				/* periods */
	BOOLARRAYOID,				/* allowed, per limit */
	INT8ARRAYOID,				/* used, per limit, after the decision */
	TIMESTAMPTZARRAYOID,		/* period_ends */
	BOOLARRAYOID,				/* refunded, per limit */
	TIMESTAMPTZOID				/* recorded_at */
};

static EntitlockTableDef counter_def = {
	"usage_counter", counter_types, COUNTER_NATTS, COUNTER_NATTS, 1,
	{{"usage_counter_pkey", true, 4, {1, 2, 3, 4}}}
};
static EntitlockTableDef idem_def = {
	"usage_idempotency", idem_types, IDEM_NATTS, IDEM_NATTS - 1, 1,
	{{"usage_idempotency_pkey", true, 3, {1, 2, 3}}}
};
static EntitlockTableDef setkey_def = {
	"usage_limits_idempotency", setkey_types, SETKEY_NATTS, SETKEY_NATTS, 1,
	{{"usage_limits_idempotency_pkey", true, 1, {1}}}
};

/*
 * Locks
 */

/*
 * Take the shared advisory locks of every meter of a call (sorted in
 * canonical order), subjects and then pairs, each in ascending key order
 * as lock_all() takes its keys, so that no order of calls can deadlock on
 * them.  A transaction that has taken many of them takes coarser locks
 * instead, which exclude the same lock callers (see locks.c).
 */
static int
cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

static void
lock_meters_shared(MeterCall *calls, int n)
{
	int64	   *keys = palloc(sizeof(int64) * 2 * n);
	int			nkeys = 0;
	int			pass;
	int			i;

	for (pass = 0; pass < 2; pass++)
	{
		int64	   *these = keys + nkeys;
		int			m = 0;

		for (i = 0; i < n; i++)
			these[i] = pass == 0 ? calls[i].subject_key : calls[i].pair_key;
		qsort(these, n, sizeof(int64), cmp_int64);
		for (i = 0; i < n; i++)
		{
			if (i == 0 || these[i] != these[m - 1])
				these[m++] = these[i];
		}
		nkeys += m;
	}
	entitlock_acquire_recording(keys, nkeys);
	pfree(keys);
}

/* Serialise every call using this idempotency key. */
static void
lock_idempotency_key(text *key)
{
	entitlock_acquire_internal((int64)
							   entitlock_hash_bytes(VARDATA_ANY(key),
													VARSIZE_ANY_EXHDR(key),
													KEY_LOCK_SEED),
							   ExclusiveLock);
}

/*
 * The internal lock that serialises the creators of a meter's counter row
 * for its period.  An anchored period's N and anchor go into it too (1.2),
 * so that periods of one kind starting together do not share it.
 */
static int64
counter_creation_key(const MeterCall *call)
{
	char		buf[sizeof(int64) + sizeof(TimestampTz) + 1 +
					sizeof(int) + sizeof(TimestampTz)];
	size_t		len = sizeof(int64) + sizeof(TimestampTz) + 1;

	memcpy(buf, &call->pair_key, sizeof(int64));
	memcpy(buf + sizeof(int64), &call->meter.period_start,
		   sizeof(TimestampTz));
	buf[len - 1] = (char) call->meter.period.kind;
	if (call->meter.period.count > 0)
	{
		memcpy(buf + len, &call->meter.period.count, sizeof(int));
		memcpy(buf + len + sizeof(int), &call->meter.period.anchor,
			   sizeof(TimestampTz));
		len = sizeof(buf);
	}
	return (int64) entitlock_hash_bytes(buf, len, CREATE_LOCK_SEED);
}

/*
 * The canonical order meters are locked in: by pair key, then by the
 * names (should two pairs share a key), period (kind, then N and anchor)
 * and period start.
 */
static int
cmp_text_bytes(text *a, text *b)
{
	int			alen = VARSIZE_ANY_EXHDR(a);
	int			blen = VARSIZE_ANY_EXHDR(b);
	int			c = memcmp(VARDATA_ANY(a), VARDATA_ANY(b), Min(alen, blen));

	return c != 0 ? c : (alen > blen) - (alen < blen);
}

static int
cmp_meter_calls(const void *a, const void *b)
{
	const MeterCall *x = *(const MeterCall *const *) a;
	const MeterCall *y = *(const MeterCall *const *) b;
	int			c;

	if (x->pair_key != y->pair_key)
		return x->pair_key < y->pair_key ? -1 : 1;
	c = cmp_text_bytes(x->meter.subject, y->meter.subject);
	if (c != 0)
		return c;
	c = cmp_text_bytes(x->meter.feature, y->meter.feature);
	if (c != 0)
		return c;
	c = entitlock_period_cmp(&x->meter.period, &y->meter.period);
	if (c != 0)
		return c;
	return (x->meter.period_start > y->meter.period_start) -
		(x->meter.period_start < y->meter.period_start);
}

static bool
same_text(text *a, text *b)
{
	return VARSIZE_ANY_EXHDR(a) == VARSIZE_ANY_EXHDR(b) &&
		memcmp(VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a)) == 0;
}

static bool
same_pair(const UsageMeter *a, const UsageMeter *b)
{
	return same_text(a->subject, b->subject) &&
		same_text(a->feature, b->feature);
}

/*
 * Counters
 */

/* The meter's counter row, with used = 0 for the caller to set. */
static void
counter_values(const UsageMeter *meter, Datum *values, bool *nulls)
{
	values[0] = PointerGetDatum(meter->subject);
	values[1] = PointerGetDatum(meter->feature);
	values[2] = CStringGetTextDatum(meter->period.name);
	values[3] = TimestampTzGetDatum(meter->period_start);
	values[4] = TimestampTzGetDatum(meter->period_end);
	values[COUNTER_USED] = Int64GetDatum(0);
	memset(nulls, 0, sizeof(bool) * COUNTER_NATTS);
	nulls[4] = !meter->has_end;
}

/*
 * Lock the meter's counter row for its period and read its usage; or, if
 * there is none, make sure no one else can create it first (see
 * entitlock_table_lock_or_create(); write_counter() creates it).  Leaves
 * call->found, ->tid and ->used.
 */
static void
lock_counter(EntitlockTable *counter, MeterCall *call)
{
	Datum		values[COUNTER_NATTS];
	bool		nulls[COUNTER_NATTS];

	counter_values(&call->meter, values, nulls);
	call->found = entitlock_table_lock_or_create(counter, values,
												 counter_creation_key(call));
	if (call->found)
	{
		TupleTableSlot *slot = counter->oldslot;

		call->tid = slot->tts_tid;
		call->used = DatumGetInt64(slot->tts_values[COUNTER_USED]);
	}
	else
		call->used = 0;
}

/*
 * Decide one meter: with conditional, record amount only within the limit;
 * without, record it (negative gives back, usage stays at zero or more)
 * unless the total would pass limit, bigint's largest for record_usage.
 */
static void
decide(MeterCall *call, int64 amount, bool conditional)
{
	int64		used = call->used;

	if (amount > 0)
	{
		/* used + amount <= limit, without overflowing */
		call->allowed = amount <= call->limit && used <= call->limit - amount;
		if (!call->allowed && !conditional)
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("usage would be out of range for type bigint"),
					 errdetail("Usage is " INT64_FORMAT "; adding " INT64_FORMAT " would exceed " INT64_FORMAT ".",
							   used, amount, PG_INT64_MAX)));
		call->new_used = call->allowed ? used + amount : used;
	}
	else
	{
		/* refunds, unconditional only; used >= 0 cannot overflow */
		call->allowed = true;
		call->new_used = Max(used + amount, 0);
	}
}

/*
 * A meter found without a counter row and left without one (a denial, a
 * refund of nothing): give back the claim on creating its row at once, as
 * the decision needed it only while it was being made.  Held to the end of
 * the transaction, one claim per such meter would fill the shared lock
 * table in a transaction making many of them.
 */
static void
release_creation_claim(const MeterCall *call)
{
	entitlock_release_internal(counter_creation_key(call), ExclusiveLock);
}

/* Write the decided usage, if it changed. */
static void
write_counter(EntitlockTable *counter, MeterCall *call)
{
	Datum		values[COUNTER_NATTS];
	bool		nulls[COUNTER_NATTS];

	if (call->new_used == call->used)
	{
		if (!call->found)
			release_creation_claim(call);
		return;
	}
	counter_values(&call->meter, values, nulls);
	values[COUNTER_USED] = Int64GetDatum(call->new_used);
	if (call->found)
		entitlock_table_update(counter, &call->tid, values, nulls,
							   ENTITLOCK_COLUMN(COUNTER_USED));
	else
	{
		entitlock_table_create(counter, values, nulls,
							   counter_creation_key(call));
		call->found = true;
	}
}

/*
 * Decide and record one meter without locking its row first, for a call on
 * a single meter: read the newest version, decide, and replace exactly
 * that version.  If another recorder replaced it meanwhile (the update
 * waits for that recorder's transaction to end), read again and decide
 * again, as READ COMMITTED's UPDATE rechecks a changed row; REPEATABLE
 * READ and SERIALIZABLE fail instead.  A decision that changes nothing
 * (a denial) writes nothing, so it leaves the row unlocked: it was right
 * for the usage committed when it was read.  This saves the row lock's
 * second visit to the buffer and its WAL record on every call.  Calls on
 * several meters lock them all first (lock_counter()), which this
 * composes with: an update waits for their row locks.
 */
static void
record_meter(EntitlockTable *counter, MeterCall *call, int64 amount,
			 bool conditional)
{
	Datum		values[COUNTER_NATTS];
	bool		nulls[COUNTER_NATTS];
	TimestampTz start;
	TM_Result	result;

	counter_values(&call->meter, values, nulls);
	for (;;)
	{
		TupleTableSlot *slot = counter->slot;
		ItemPointerData tid;

		CHECK_FOR_INTERRUPTS();
		if (!entitlock_table_probe(counter, SnapshotSelf, values))
		{
			/* see lock_counter() */
			if (!entitlock_table_claim_creation(counter, values,
												counter_creation_key(call)))
				continue;
			call->found = false;
			call->used = 0;
			decide(call, amount, conditional);
			write_counter(counter, call);
			return;
		}

		entitlock_check_visible_to_transaction(slot);
		call->found = true;
		call->used = DatumGetInt64(slot->tts_values[COUNTER_USED]);
		tid = slot->tts_tid;
		/* Statistics: the update will wait for a recorder still at work. */
		start = entitlock_stats_on() && entitlock_slot_being_changed(slot) ?
			GetCurrentTimestamp() : 0;
		/* The probe's buffer pin would keep the page from being pruned. */
		ExecClearTuple(slot);
		decide(call, amount, conditional);
		if (call->new_used == call->used)
			return;
		values[COUNTER_USED] = Int64GetDatum(call->new_used);
		result = entitlock_table_try_update(counter, &tid, values, nulls,
											ENTITLOCK_COLUMN(COUNTER_USED));
		if (start != 0)
			entitlock_stats_waited(start);
		if (result == TM_Ok)
			return;
		if (IsolationUsesXactSnapshot())
			entitlock_serialization_failure();
	}
}

/*
 * Idempotency keys of single-meter calls
 */

/* An earlier call's record under the same idempotency key. */
typedef struct IdempotentRecord
{
	bool		found;
	UsagePeriod period;
	int64		amount;
	bool		allowed;
	int64		used;
	TimestampTz recorded_at;
	bool		refunded;
	ItemPointerData tid;
} IdempotentRecord;

static void
idempotency_values(const UsageMeter *meter, text *key, Datum *values,
				   bool *nulls)
{
	values[0] = PointerGetDatum(meter->subject);
	values[1] = PointerGetDatum(meter->feature);
	values[2] = PointerGetDatum(key);
	memset(nulls, 0, sizeof(bool) * IDEM_NATTS);
}

/* What an earlier call with this idempotency key recorded, if any. */
static IdempotentRecord
idempotent_lookup(EntitlockTable *idem, const UsageMeter *meter, text *key)
{
	IdempotentRecord rec = {0};
	Datum		values[IDEM_NATTS];
	bool		nulls[IDEM_NATTS];

	idempotency_values(meter, key, values, nulls);

	rec.found = entitlock_table_probe(idem, SnapshotSelf, values);

	if (rec.found)
	{
		TupleTableSlot *slot = idem->slot;
		Datum	   *cols = slot->tts_values;

		entitlock_check_visible_to_transaction(slot);
		entitlock_period_stored(cols[3], "usage_idempotency", &rec.period);
		rec.amount = DatumGetInt64(cols[4]);
		rec.allowed = DatumGetBool(cols[5]);
		rec.used = DatumGetInt64(cols[6]);
		rec.recorded_at = DatumGetTimestampTz(cols[8]);
		rec.refunded = slot->tts_tupleDescriptor->natts > IDEM_REFUNDED_AT &&
			!slot->tts_isnull[IDEM_REFUNDED_AT];
		rec.tid = slot->tts_tid;
	}
	ExecClearTuple(idem->slot);
	return rec;
}

static void
key_reused_error(text *key, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("idempotency key \"%s\" was already used with a different request",
					entitlock_text_for_message(key)),
			 errdetail_internal("%s", detail)));
}

/*
 * A retry must ask for what the first call asked for; anything else is a
 * client bug that answering with the old outcome would hide.  The limit is
 * not compared: a plan may change between a call and its retry.
 */
static void
idempotent_check_same(const IdempotentRecord *rec, const UsageMeter *meter,
					  int64 amount, text *key)
{
	if (rec->amount != amount ||
		!entitlock_period_equal(&rec->period, &meter->period))
		key_reused_error(key,
						 psprintf("The first call recorded amount " INT64_FORMAT " for period \"%s\"; this call asks for amount " INT64_FORMAT " for period \"%s\".",
								  rec->amount, rec->period.name,
								  amount, meter->period.name));
}

/*
 * Under the key's lock the probe has just seen that the key is free, and
 * every writer of the key holds that lock, so the insert cannot conflict.
 */
static void
idempotent_store(EntitlockTable *idem, const MeterCall *call, text *key,
				 int64 amount)
{
	Datum		values[IDEM_NATTS];
	bool		nulls[IDEM_NATTS];

	idempotency_values(&call->meter, key, values, nulls);
	values[3] = CStringGetTextDatum(call->meter.period.name);
	values[4] = Int64GetDatum(amount);
	values[5] = BoolGetDatum(call->allowed);
	values[6] = Int64GetDatum(call->new_used);
	values[7] = TimestampTzGetDatum(call->meter.period_end);
	nulls[7] = !call->meter.has_end;
	values[8] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	nulls[IDEM_REFUNDED_AT] = true;
	entitlock_table_insert(idem, values, nulls);
}

/*
 * Idempotency keys of calls on several meters
 *
 * Their keys are one namespace, and a key of such a call may not also be
 * the key of a single-meter call on one of its (subject, feature) pairs:
 * refund_usage(subject, feature, key) must know which call it undoes.
 */

/* A stored set call, its arrays taken apart. */
typedef struct SetRecord
{
	bool		found;
	int64		amount;
	int			n;
	Datum	   *subjects;
	Datum	   *features;
	Datum	   *periods;
	Datum	   *allowed;
	Datum	   *used;
	Datum	   *period_ends;
	bool	   *period_end_nulls;
	Datum	   *refunded;
	TimestampTz recorded_at;
	ItemPointerData tid;
} SetRecord;

/* Is the table there?  It is not in a 1.0 database not yet updated. */
static bool
setkey_table_exists(void)
{
	return OidIsValid(get_relname_relid(setkey_def.relname,
										get_namespace_oid("entitlock", false)));
}

static void
setkey_layout_error(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("table \"entitlock.%s\" holds arrays of different lengths",
					setkey_def.relname)));
}

static Datum *
stored_array(Datum value, Oid elemtype, int n, bool **nulls_out)
{
	Datum	   *elems;
	bool	   *nulls;
	int			count;
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	/* a copy: the arrays must outlive the slot they were read from */
	deconstruct_array(DatumGetArrayTypePCopy(value), elemtype, typlen, typbyval,
					  typalign, &elems, &nulls, &count);
	if (count != n)
		setkey_layout_error();
	if (nulls_out != NULL)
		*nulls_out = nulls;
	return elems;
}

static SetRecord
setkey_lookup(EntitlockTable *sk, text *key)
{
	SetRecord	rec = {0};
	Datum		keyval = PointerGetDatum(key);

	rec.found = entitlock_table_probe(sk, SnapshotSelf, &keyval);
	if (rec.found)
	{
		TupleTableSlot *slot = sk->slot;
		Datum	   *cols = slot->tts_values;

		entitlock_check_visible_to_transaction(slot);
		rec.amount = DatumGetInt64(cols[1]);
		rec.n = ArrayGetNItems(ARR_NDIM(DatumGetArrayTypeP(cols[2])),
							   ARR_DIMS(DatumGetArrayTypeP(cols[2])));
		rec.subjects = stored_array(cols[2], TEXTOID, rec.n, NULL);
		rec.features = stored_array(cols[3], TEXTOID, rec.n, NULL);
		rec.periods = stored_array(cols[4], TEXTOID, rec.n, NULL);
		rec.allowed = stored_array(cols[5], BOOLOID, rec.n, NULL);
		rec.used = stored_array(cols[6], INT8OID, rec.n, NULL);
		rec.period_ends = stored_array(cols[7], TIMESTAMPTZOID, rec.n,
									   &rec.period_end_nulls);
		rec.refunded = stored_array(cols[8], BOOLOID, rec.n, NULL);
		rec.recorded_at = DatumGetTimestampTz(cols[9]);
		rec.tid = slot->tts_tid;
	}
	ExecClearTuple(sk->slot);
	return rec;
}

/* Is element i of the stored set on meter's (subject, feature)? */
static bool
setkey_element_on_pair(const SetRecord *rec, int i, const UsageMeter *meter)
{
	return same_text(DatumGetTextPP(rec->subjects[i]), meter->subject) &&
		same_text(DatumGetTextPP(rec->features[i]), meter->feature);
}

/* Element i of a stored set: is it meter? */
static bool
setkey_element_is(const SetRecord *rec, int i, const UsageMeter *meter)
{
	UsagePeriod period;

	if (!setkey_element_on_pair(rec, i, meter))
		return false;
	entitlock_period_stored(rec->periods[i], setkey_def.relname, &period);
	return entitlock_period_equal(&period, &meter->period);
}

/* Does the stored set include (subject, feature)? */
static bool
setkey_has_pair(const SetRecord *rec, const UsageMeter *meter)
{
	int			i;

	for (i = 0; i < rec->n; i++)
	{
		if (setkey_element_on_pair(rec, i, meter))
			return true;
	}
	return false;
}

static Datum
build_array(Datum *elems, bool *nulls, int n, Oid elemtype)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1] = {n};
	int			lbs[1] = {1};

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs,
											  elemtype, typlen, typbyval,
											  typalign));
}

static void
setkey_store(EntitlockTable *sk, MeterCall *calls, int n, text *key,
			 int64 amount)
{
	Datum		values[SETKEY_NATTS];
	bool		nulls[SETKEY_NATTS];
	Datum	   *cols[7];
	bool	   *end_nulls = palloc0(sizeof(bool) * n);
	int			c;
	int			i;

	for (c = 0; c < 7; c++)
		cols[c] = palloc(sizeof(Datum) * n);
	for (i = 0; i < n; i++)
	{
		MeterCall  *call = &calls[i];

		cols[0][i] = PointerGetDatum(call->meter.subject);
		cols[1][i] = PointerGetDatum(call->meter.feature);
		cols[2][i] = CStringGetTextDatum(call->meter.period.name);
		cols[3][i] = BoolGetDatum(call->allowed);
		cols[4][i] = Int64GetDatum(call->new_used);
		cols[5][i] = TimestampTzGetDatum(call->meter.period_end);
		end_nulls[i] = !call->meter.has_end;
		cols[6][i] = BoolGetDatum(false);
	}
	memset(nulls, 0, sizeof(nulls));
	values[0] = PointerGetDatum(key);
	values[1] = Int64GetDatum(amount);
	values[2] = build_array(cols[0], NULL, n, TEXTOID);
	values[3] = build_array(cols[1], NULL, n, TEXTOID);
	values[4] = build_array(cols[2], NULL, n, TEXTOID);
	values[5] = build_array(cols[3], NULL, n, BOOLOID);
	values[6] = build_array(cols[4], NULL, n, INT8OID);
	values[7] = build_array(cols[5], end_nulls, n, TIMESTAMPTZOID);
	values[8] = build_array(cols[6], NULL, n, BOOLOID);
	values[9] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	entitlock_table_insert(sk, values, nulls);
}

/*
 * Recording on one meter
 */

static void
meter_call_init(MeterCall *call, int position, int64 limit)
{
	call->limit = limit;
	call->position = position;
	call->subject_key = entitlock_name_key(call->meter.subject);
	call->pair_key = entitlock_pair_key(call->meter.subject,
										call->meter.feature);
	call->found = false;
	call->replayed = false;
}

/* Count a call on a meter of feature, if statistics are on (stats.c). */
static void
count_usage_call(text *feature, bool denied, bool replayed)
{
	entitlock_stats_count(ENTITLOCK_STATS_USAGE, feature, true,
						  (denied ? ENTITLOCK_STATS_DENIED : 0) |
						  (replayed ? ENTITLOCK_STATS_REPLAY : 0));
}

/*
 * Everything a single-meter recording call does once its arguments are
 * checked: lock, answer a retry from its first outcome, otherwise decide
 * and record.  Fills in call->allowed and ->new_used (for a retry, the
 * first call's).
 */
static void
record(MeterCall *call, int64 amount, bool conditional, text *key,
	   const char *cmdname)
{
	EntitlockTable counter;
	EntitlockTable idem;

	PreventCommandIfReadOnly(cmdname);
	PreventCommandDuringRecovery(cmdname);

	/*
	 * The counter's writes are prepared when they are made: a call that
	 * replaces its counter in a plain HOT update needs no executor state
	 * (see entitlock_table_try_update()).
	 */
	meter_call_init(call, 0, call->limit);
	entitlock_table_open(&counter, &counter_def, RowExclusiveLock);
	if (key != NULL)
	{
		entitlock_table_open(&idem, &idem_def, RowExclusiveLock);
		entitlock_table_prepare_writes(&idem);
	}

	lock_meters_shared(call, 1);
	if (key != NULL)
		lock_idempotency_key(key);

	/*
	 * Make the transaction's own earlier writes, including those of an
	 * earlier call in this same statement, visible to the probes.
	 */
	CommandCounterIncrement();

	if (key != NULL)
	{
		IdempotentRecord rec = idempotent_lookup(&idem, &call->meter, key);

		if (rec.found)
		{
			idempotent_check_same(&rec, &call->meter, amount, key);
			entitlock_table_close(&idem);
			entitlock_table_close(&counter);
			/* The first call's answer, in the first call's period. */
			compute_period(&call->meter, &rec.period, rec.recorded_at);
			call->allowed = rec.allowed;
			call->new_used = rec.used;
			call->replayed = true;
			return;
		}
		if (setkey_table_exists())
		{
			EntitlockTable sk;
			SetRecord	set;

			entitlock_table_open(&sk, &setkey_def, AccessShareLock);
			set = setkey_lookup(&sk, key);
			if (set.found && setkey_has_pair(&set, &call->meter))
				key_reused_error(key, "It is the key of a record_usage_if_under_limits() call on this subject and feature.");
			entitlock_table_close(&sk);
		}
	}

	if (entitlock_table_can_try_update(&counter))
		record_meter(&counter, call, amount, conditional);
	else
	{
		lock_counter(&counter, call);
		decide(call, amount, conditional);
		write_counter(&counter, call);
	}
	entitlock_table_close(&counter);

	if (key != NULL)
	{
		idempotent_store(&idem, call, key, amount);
		entitlock_table_close(&idem);
	}
}

/* The meter's usage in its period as the active snapshot sees it. */
static int64
read_usage(const UsageMeter *meter)
{
	EntitlockTable counter;
	Datum		values[COUNTER_NATTS];
	bool		nulls[COUNTER_NATTS];
	int64		used = 0;

	entitlock_table_open(&counter, &counter_def, AccessShareLock);
	counter_values(meter, values, nulls);
	if (entitlock_table_probe(&counter,
							  ActiveSnapshotSet() ? GetActiveSnapshot() :
							  GetTransactionSnapshot(),
							  values))
		used = DatumGetInt64(counter.slot->tts_values[COUNTER_USED]);
	entitlock_table_close(&counter);
	return used;
}

/* Usage above the limit (the limit was lowered) leaves nothing. */
static int64
remaining(int64 used, int64 limit)
{
	return used < limit ? limit - used : 0;
}

/*
 * entitlock.record_usage_if_under_limit(subject text, feature text,
 *	   amount bigint, usage_limit bigint, period text DEFAULT 'lifetime',
 *	   idempotency_key text DEFAULT NULL)
 * returns table (allowed boolean, used bigint, remaining bigint,
 *	   period_end timestamptz)
 *
 * Records amount in the current period when used + amount <= usage_limit.
 * used and remaining are as of after the decision; period_end is NULL for
 * lifetime.  A call repeating an earlier call's idempotency key records
 * nothing and returns that call's decision and usage.  Only
 * idempotency_key may be NULL; amount must be positive and usage_limit not
 * negative.  One row, always.
 */
Datum
entitlock_record_usage_if_under_limit(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = entitlock_materialize_resultinfo(fcinfo);
	MeterCall	call;
	int64		amount;
	text	   *key;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};

	meter_args(fcinfo, &call.meter, 4);
	entitlock_require_arg(fcinfo, 2, "amount");
	entitlock_require_arg(fcinfo, 3, "usage limit");
	key = idempotency_key_arg(fcinfo, 5);
	amount = positive_amount_arg(fcinfo, 2);
	call.limit = limit_value(PG_GETARG_DATUM(3), false);

	entitlock_stats_begin();
	record(&call, amount, true, key, "record_usage_if_under_limit()");
	count_usage_call(call.meter.feature, !call.allowed, call.replayed);

	values[0] = BoolGetDatum(call.allowed);
	values[1] = Int64GetDatum(call.new_used);
	values[2] = Int64GetDatum(remaining(call.new_used, call.limit));
	values[3] = TimestampTzGetDatum(call.meter.period_end);
	nulls[3] = !call.meter.has_end;
	entitlock_return_one_row(fcinfo, rsinfo, values, nulls);
	return (Datum) 0;
}

/*
 * entitlock.record_usage(subject text, feature text, amount bigint,
 *	   period text DEFAULT 'lifetime', idempotency_key text DEFAULT NULL)
 * returns bigint
 *
 * Records amount unconditionally, under the same locks; a negative amount
 * is a refund, and usage never goes below zero.  Returns the usage after
 * it (for a repeated idempotency key, the usage the first call returned).
 * A total beyond bigint is an error and records nothing.
 */
Datum
entitlock_record_usage(PG_FUNCTION_ARGS)
{
	MeterCall	call;
	int64		amount;
	text	   *key;

	meter_args(fcinfo, &call.meter, 3);
	amount = int8_arg(fcinfo, 2, "amount");
	key = idempotency_key_arg(fcinfo, 4);

	/* Unconditional usage is only bounded by what bigint can hold. */
	call.limit = PG_INT64_MAX;
	entitlock_stats_begin();
	record(&call, amount, false, key, "record_usage()");
	count_usage_call(call.meter.feature, false, call.replayed);
	PG_RETURN_INT64(call.new_used);
}

/*
 * Several meters
 */

/* The row type entitlock.usage_limit, as this code reads it. */
#define LIMIT_NATTS 4

/*
 * Check that desc, the row type entitlock.usage_limit, has the four fields
 * this code reads, of their types and in their order, and set attnos[i]
 * to the 0-based position of field i in desc.  Dropped attributes are
 * skipped: a superuser's ALTER TYPE ... ADD ATTRIBUTE and DROP ATTRIBUTE
 * leave one behind, which a row of the type still has a place for, so
 * desc can have more attributes than fields, and its rows are taken apart
 * and built with desc->natts places, never LIMIT_NATTS.
 */
static void
check_limit_type(TupleDesc desc, int *attnos)
{
	static const Oid types[LIMIT_NATTS] = {TEXTOID, TEXTOID, INT8OID, TEXTOID};
	int			nfields = 0;
	int			i;

	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped)
			continue;
		if (nfields >= LIMIT_NATTS || att->atttypid != types[nfields])
		{
			nfields = -1;
			break;
		}
		attnos[nfields++] = i;
	}
	if (nfields != LIMIT_NATTS)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("type \"entitlock.usage_limit\" has been changed"),
				 errdetail("It must have the fields subject text, feature text, usage_limit bigint and period text, in that order."),
				 errhint("Reinstall the entitlock extension.")));
}

/* Where an error in an element of limits is, for its CONTEXT line. */
static void
limit_element_context(void *arg)
{
	errcontext("usage limit %d of the array", *(int *) arg);
}

/*
 * The fields of one entitlock.usage_limit, checked as record_usage_if_under_limit()
 * checks its arguments.
 */
static void
limit_fields(Datum *fields, bool *isnull, MeterCall *call)
{
	UsagePeriod period;

	call->meter.subject = name_value(fields[0], isnull[0], "subject");
	call->meter.feature = name_value(fields[1], isnull[1], "feature");
	call->limit = limit_value(fields[2], isnull[2]);
	entitlock_period_value(fields[3], isnull[3], &period);
	compute_period(&call->meter, &period,
				   GetCurrentTransactionStartTimestamp());
}

/* Take the limits array apart; *n gets its length. */
static MeterCall *
limits_arg(FunctionCallInfo fcinfo, int argno, int *n)
{
	ArrayType  *arr;
	Oid			elemtype;
	TupleDesc	desc;
	Datum	   *elems;
	bool	   *elem_nulls;
	int			count;
	MeterCall  *calls;
	MeterCall **sorted;
	ErrorContextCallback errcallback;
	int			attnos[LIMIT_NATTS];
	Datum	   *values;
	bool	   *nulls;
	int			position = 0;
	int			i;

	entitlock_require_arg(fcinfo, argno, "limits");
	arr = PG_GETARG_ARRAYTYPE_P(argno);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("limits must be a one-dimensional array")));
	elemtype = ARR_ELEMTYPE(arr);
	desc = lookup_rowtype_tupdesc(elemtype, -1);
	check_limit_type(desc, attnos);
	values = palloc(sizeof(Datum) * desc->natts);
	nulls = palloc(sizeof(bool) * desc->natts);
	deconstruct_array(arr, elemtype, -1, false, TYPALIGN_DOUBLE, &elems,
					  &elem_nulls, &count);
	if (count == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("limits must not be empty")));
	if (count > USAGE_MAX_LIMITS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many usage limits in one call"),
				 errdetail("There are %d; the limit is %d.", count,
						   USAGE_MAX_LIMITS)));

	errcallback.callback = limit_element_context;
	errcallback.arg = &position;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	calls = palloc0(sizeof(MeterCall) * count);
	for (i = 0; i < count; i++)
	{
		HeapTupleData tuple;
		HeapTupleHeader th;
		Datum		fields[LIMIT_NATTS];
		bool		isnull[LIMIT_NATTS];
		int			f;

		position = i + 1;
		if (elem_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("usage limit must not be null")));
		th = DatumGetHeapTupleHeader(elems[i]);
		tuple.t_len = HeapTupleHeaderGetDatumLength(th);
		ItemPointerSetInvalid(&tuple.t_self);
		tuple.t_tableOid = InvalidOid;
		tuple.t_data = th;
		heap_deform_tuple(&tuple, desc, values, nulls);
		for (f = 0; f < LIMIT_NATTS; f++)
		{
			fields[f] = values[attnos[f]];
			isnull[f] = nulls[attnos[f]];
		}
		limit_fields(fields, isnull, &calls[i]);
		meter_call_init(&calls[i], i, calls[i].limit);
	}
	error_context_stack = errcallback.previous;
	ReleaseTupleDesc(desc);

	/* The same meter twice is a caller's mistake. */
	sorted = palloc(sizeof(MeterCall *) * count);
	for (i = 0; i < count; i++)
		sorted[i] = &calls[i];
	qsort(sorted, count, sizeof(MeterCall *), cmp_meter_calls);
	for (i = 1; i < count; i++)
	{
		if (cmp_meter_calls(&sorted[i - 1], &sorted[i]) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("usage limits %d and %d name the same meter",
							Min(sorted[i - 1]->position, sorted[i]->position) + 1,
							Max(sorted[i - 1]->position, sorted[i]->position) + 1),
					 errdetail("Both are subject \"%s\", feature \"%s\", period \"%s\".",
							   entitlock_text_for_message(sorted[i]->meter.subject),
							   entitlock_text_for_message(sorted[i]->meter.feature),
							   sorted[i]->meter.period.name)));
	}
	pfree(sorted);
	*n = count;
	return calls;
}

/*
 * A retry of a set call must name the same meters (in any order) and the
 * same amount.  Returns, for each of calls, its element in rec.
 */
static int *
setkey_match(const SetRecord *rec, MeterCall *calls, int n, int64 amount,
			 text *key)
{
	int		   *match = palloc(sizeof(int) * n);
	int			i;
	int			j;

	if (rec->amount != amount)
		key_reused_error(key,
						 psprintf("The first call recorded amount " INT64_FORMAT "; this call asks for amount " INT64_FORMAT ".",
								  rec->amount, amount));
	if (rec->n != n)
		key_reused_error(key,
						 psprintf("The first call named %d usage limits; this call names %d.",
								  rec->n, n));
	for (i = 0; i < n; i++)
	{
		for (j = 0; j < rec->n; j++)
		{
			if (setkey_element_is(rec, j, &calls[i].meter))
				break;
		}
		if (j == rec->n)
			key_reused_error(key,
							 psprintf("The first call did not name subject \"%s\", feature \"%s\", period \"%s\".",
									  entitlock_text_for_message(calls[i].meter.subject),
									  entitlock_text_for_message(calls[i].meter.feature),
									  calls[i].meter.period.name));
		match[i] = j;
	}
	return match;
}

#define LIMITS_RESULT_NATTS 7

static void
limits_result_row(Datum *values, bool *nulls, const MeterCall *call,
				  bool allowed, int64 used)
{
	values[0] = PointerGetDatum(call->meter.subject);
	values[1] = PointerGetDatum(call->meter.feature);
	values[2] = CStringGetTextDatum(call->meter.period.name);
	values[3] = BoolGetDatum(allowed);
	values[4] = Int64GetDatum(used);
	values[5] = Int64GetDatum(remaining(used, call->limit));
	values[6] = TimestampTzGetDatum(call->meter.period_end);
	memset(nulls, 0, sizeof(bool) * LIMITS_RESULT_NATTS);
	nulls[6] = !call->meter.has_end;
}

/*
 * entitlock.record_usage_if_under_limits(limits entitlock.usage_limit[],
 *	   amount bigint DEFAULT 1, idempotency_key text DEFAULT NULL)
 * returns table (subject text, feature text, period text, allowed boolean,
 *	   used bigint, remaining bigint, period_end timestamptz)
 *
 * Records amount on every meter of limits when every limit has room for
 * it, and on none otherwise; one row per limit, in the order given, saying
 * whether that limit had room.  Every meter is locked, in canonical order,
 * before any is read.  A repeat of a keyed call with the same meters and
 * amount returns the first call's rows and records nothing.
 */
Datum
entitlock_record_usage_if_under_limits(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = entitlock_materialize_resultinfo(fcinfo);
	MeterCall  *calls;
	MeterCall **sorted;
	int			n;
	int64		amount;
	text	   *key;
	bool		all_allowed = true;
	EntitlockTable counter;
	EntitlockTable sk;
	Datum	   *values;
	bool	   *nulls;
	int			i;

	calls = limits_arg(fcinfo, 0, &n);
	amount = positive_amount_arg(fcinfo, 1);
	key = idempotency_key_arg(fcinfo, 2);

	PreventCommandIfReadOnly("record_usage_if_under_limits()");
	PreventCommandDuringRecovery("record_usage_if_under_limits()");
	entitlock_stats_begin();

	sorted = palloc(sizeof(MeterCall *) * n);
	for (i = 0; i < n; i++)
		sorted[i] = &calls[i];
	qsort(sorted, n, sizeof(MeterCall *), cmp_meter_calls);
	values = palloc(sizeof(Datum) * n * LIMITS_RESULT_NATTS);
	nulls = palloc(sizeof(bool) * n * LIMITS_RESULT_NATTS);

	entitlock_table_open(&counter, &counter_def, RowExclusiveLock);
	entitlock_table_prepare_writes(&counter);
	if (key != NULL)
	{
		entitlock_table_open(&sk, &setkey_def, RowExclusiveLock);
		entitlock_table_prepare_writes(&sk);
	}

	lock_meters_shared(calls, n);
	if (key != NULL)
		lock_idempotency_key(key);
	CommandCounterIncrement();

	if (key != NULL)
	{
		SetRecord	rec = setkey_lookup(&sk, key);
		EntitlockTable idem;

		if (rec.found)
		{
			int		   *match = setkey_match(&rec, calls, n, amount, key);

			for (i = 0; i < n; i++)
			{
				int			j = match[i];

				/* The first call's answer, in the first call's period. */
				compute_period(&calls[i].meter, &calls[i].meter.period,
							   rec.recorded_at);
				limits_result_row(values + i * LIMITS_RESULT_NATTS,
								  nulls + i * LIMITS_RESULT_NATTS, &calls[i],
								  DatumGetBool(rec.allowed[j]),
								  DatumGetInt64(rec.used[j]));
				count_usage_call(calls[i].meter.feature,
								 !DatumGetBool(rec.allowed[j]), true);
			}
			entitlock_table_close(&sk);
			entitlock_table_close(&counter);
			entitlock_return_rows(fcinfo, rsinfo, n, LIMITS_RESULT_NATTS,
								  values, nulls);
			return (Datum) 0;
		}
		/* The key may not be a single-meter call's on one of the pairs. */
		entitlock_table_open(&idem, &idem_def, AccessShareLock);
		for (i = 0; i < n; i++)
		{
			if (i > 0 && same_pair(&sorted[i - 1]->meter, &sorted[i]->meter))
				continue;
			if (idempotent_lookup(&idem, &sorted[i]->meter, key).found)
				key_reused_error(key,
								 psprintf("It is the key of a single-limit call on subject \"%s\", feature \"%s\".",
										  entitlock_text_for_message(sorted[i]->meter.subject),
										  entitlock_text_for_message(sorted[i]->meter.feature)));
		}
		entitlock_table_close(&idem);
	}

	/*
	 * Lock every meter (in canonical order), then decide every limit, then
	 * settle the outcome of every meter, and only then write (in canonical
	 * order again).  Deciding and writing are separate passes so that the
	 * order meters are written in can never see a decision half made: a
	 * denial by any limit must reach every meter before the first write.
	 */
	for (i = 0; i < n; i++)
		lock_counter(&counter, sorted[i]);
	for (i = 0; i < n; i++)
	{
		decide(&calls[i], amount, true);
		all_allowed &= calls[i].allowed;
	}
	if (!all_allowed)
	{
		for (i = 0; i < n; i++)
			calls[i].new_used = calls[i].used;
	}
	for (i = 0; i < n; i++)
		write_counter(&counter, sorted[i]);
	entitlock_table_close(&counter);

	if (key != NULL)
	{
		setkey_store(&sk, calls, n, key, amount);
		entitlock_table_close(&sk);
	}

	/* One call per meter; the waits count with the first. */
	for (i = 0; i < n; i++)
	{
		limits_result_row(values + i * LIMITS_RESULT_NATTS,
						  nulls + i * LIMITS_RESULT_NATTS, &calls[i],
						  calls[i].allowed, calls[i].new_used);
		count_usage_call(calls[i].meter.feature, !calls[i].allowed, false);
	}
	entitlock_return_rows(fcinfo, rsinfo, n, LIMITS_RESULT_NATTS, values,
						  nulls);
	return (Datum) 0;
}

/*
 * Refunds
 */

/*
 * Give amount back to the meter's counter of the period holding
 * recorded_at, under the caller's locks; returns how much it gave back
 * (less than amount when usage was lower, 0 when the counter is gone).
 */
static int64
give_back(EntitlockTable *counter, MeterCall *call, const UsagePeriod *period,
		  TimestampTz recorded_at, int64 amount)
{
	compute_period(&call->meter, period, recorded_at);
	lock_counter(counter, call);
	if (!call->found)
	{
		release_creation_claim(call);
		return 0;
	}
	decide(call, -amount, false);
	write_counter(counter, call);
	return call->used - call->new_used;
}

/* Lock a key's row before marking it, as prune_usage() may delete it. */
static bool
lock_key_row(EntitlockTable *t, ItemPointer tid)
{
	TM_Result	result = entitlock_table_lock_row(t, tid,
												  LockTupleNoKeyExclusive,
												  true, false);

	if (result == TM_Ok)
		return true;
	if (IsolationUsesXactSnapshot())
		entitlock_serialization_failure();
	return false;
}

/* Is element i of the stored set a recorded, unrefunded use of the pair? */
static bool
setkey_refund_due(const SetRecord *set, int i, const UsageMeter *meter)
{
	return setkey_element_on_pair(set, i, meter) &&
		DatumGetBool(set->allowed[i]) && !DatumGetBool(set->refunded[i]);
}

static int
cmp_periods(const void *a, const void *b)
{
	return entitlock_period_cmp((const UsagePeriod *) a,
								(const UsagePeriod *) b);
}

/* refund_usage() of a record_usage_if_under_limits() call's key. */
static int64
refund_set(EntitlockTable *counter, MeterCall *call, text *key)
{
	EntitlockTable sk;
	SetRecord	set;
	int64		given = 0;
	bool		due = false;
	int			i;

	if (!setkey_table_exists())
		return 0;
	entitlock_table_open(&sk, &setkey_def, RowExclusiveLock);
	entitlock_table_prepare_writes(&sk);
	set = setkey_lookup(&sk, key);
	/*
	 * A set call records on every meter or on none: one whose elements were
	 * not all allowed recorded nothing, even on the meters whose own limit
	 * had room, so it has nothing to give back.
	 */
	for (i = 0; set.found && i < set.n; i++)
	{
		if (!DatumGetBool(set.allowed[i]))
			set.found = false;
	}
	for (i = 0; set.found && i < set.n; i++)
		due |= setkey_refund_due(&set, i, &call->meter);

	if (due && lock_key_row(&sk, &set.tid))
	{
		TupleTableSlot *slot = sk.oldslot;
		Datum		values[SETKEY_NATTS];
		bool		nulls[SETKEY_NATTS];
		Datum	   *refunded = palloc(sizeof(Datum) * set.n);
		UsagePeriod *periods = palloc(sizeof(UsagePeriod) * set.n);
		int			ndue = 0;

		memcpy(values, slot->tts_values, sizeof(values));
		memcpy(nulls, slot->tts_isnull, sizeof(nulls));
		for (i = 0; i < set.n; i++)
			refunded[i] = setkey_refund_due(&set, i, &call->meter) ?
				BoolGetDatum(true) : set.refunded[i];
		values[SETKEY_REFUNDED] = build_array(refunded, NULL, set.n, BOOLOID);
		entitlock_table_update(&sk, &set.tid, values, nulls,
							   ENTITLOCK_COLUMN(SETKEY_REFUNDED));

		/* The pair's counters in canonical order, that is by period. */
		for (i = 0; i < set.n; i++)
		{
			if (setkey_refund_due(&set, i, &call->meter))
				entitlock_period_stored(set.periods[i], setkey_def.relname,
										&periods[ndue++]);
		}
		qsort(periods, ndue, sizeof(UsagePeriod), cmp_periods);
		for (i = 0; i < ndue; i++)
		{
			int64		g = give_back(counter, call, &periods[i],
									  set.recorded_at, set.amount);

			given = Max(given, g);
		}
	}
	entitlock_table_close(&sk);
	return given;
}

/*
 * entitlock.refund_usage(subject text, feature text, idempotency_key text)
 * returns bigint
 *
 * Gives back what the call with this key recorded on (subject, feature),
 * in the period it was recorded in, once; returns the amount given back.
 * For a record_usage_if_under_limits() call, every period of the pair that
 * the call recorded gets the amount back.  A key that recorded nothing, or
 * was refunded already, or is unknown, returns 0 and changes nothing.
 * Takes the locks a recording call takes, and the key's.
 */
Datum
entitlock_refund_usage(PG_FUNCTION_ARGS)
{
	MeterCall	call;
	text	   *key;
	EntitlockTable counter;
	EntitlockTable idem;
	IdempotentRecord rec;
	int64		given = 0;

	call.meter.subject = name_arg(fcinfo, 0, "subject");
	call.meter.feature = name_arg(fcinfo, 1, "feature");
	entitlock_require_arg(fcinfo, 2, "idempotency key");
	key = idempotency_key_arg(fcinfo, 2);

	PreventCommandIfReadOnly("refund_usage()");
	PreventCommandDuringRecovery("refund_usage()");
	entitlock_stats_begin();

	meter_call_init(&call, 0, PG_INT64_MAX);
	entitlock_table_open(&counter, &counter_def, RowExclusiveLock);
	entitlock_table_open(&idem, &idem_def, RowExclusiveLock);
	entitlock_table_prepare_writes(&counter);
	entitlock_table_prepare_writes(&idem);

	lock_meters_shared(&call, 1);
	lock_idempotency_key(key);
	CommandCounterIncrement();

	rec = idempotent_lookup(&idem, &call.meter, key);
	if (!rec.found)
		given = refund_set(&counter, &call, key);
	else if (rec.allowed && rec.amount > 0 && !rec.refunded &&
			 lock_key_row(&idem, &rec.tid))
	{
		TupleTableSlot *slot = idem.oldslot;
		Datum		values[IDEM_NATTS];
		bool		nulls[IDEM_NATTS];

		if (slot->tts_tupleDescriptor->natts <= IDEM_REFUNDED_AT)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("refund_usage() needs version 1.1 of the entitlock tables"),
					 errhint("Run ALTER EXTENSION entitlock UPDATE.")));
		memcpy(values, slot->tts_values, sizeof(values));
		memcpy(nulls, slot->tts_isnull, sizeof(nulls));
		values[IDEM_REFUNDED_AT] =
			TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
		nulls[IDEM_REFUNDED_AT] = false;
		entitlock_table_update(&idem, &rec.tid, values, nulls,
							   ENTITLOCK_COLUMN(IDEM_REFUNDED_AT));
		given = give_back(&counter, &call, &rec.period, rec.recorded_at,
						  rec.amount);
	}
	entitlock_table_close(&idem);
	entitlock_table_close(&counter);
	count_usage_call(call.meter.feature, false, false);
	PG_RETURN_INT64(given);
}

/*
 * Reading
 */

/*
 * entitlock.usage(subject text, feature text, period text DEFAULT
 *	   'lifetime') returns bigint
 *
 * Usage in the current period, 0 when nothing was recorded.  Takes no lock
 * and reads with the statement's snapshot, like any SELECT.
 */
Datum
entitlock_usage(PG_FUNCTION_ARGS)
{
	UsageMeter	meter;

	meter_args(fcinfo, &meter, 2);
	PG_RETURN_INT64(read_usage(&meter));
}

/*
 * entitlock.usage_limit(subject text, feature text, usage_limit bigint,
 *	   period text DEFAULT 'lifetime') returns entitlock.usage_limit
 *
 * One limit for record_usage_if_under_limits(), checked as that function
 * checks it, with the period spelled as the tables spell it.
 */
Datum
entitlock_usage_limit(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		fields[LIMIT_NATTS];
	bool		isnull[LIMIT_NATTS] = {false, false, false, false};
	int			attnos[LIMIT_NATTS];
	Datum	   *values;
	bool	   *nulls;
	MeterCall	call;
	int			i;

	for (i = 0; i < LIMIT_NATTS; i++)
		fields[i] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
	for (i = 0; i < LIMIT_NATTS; i++)
		isnull[i] = PG_ARGISNULL(i);
	limit_fields(fields, isnull, &call);

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	check_limit_type(desc, attnos);

	/* A dropped attribute's place in the row is NULL. */
	values = palloc0(sizeof(Datum) * desc->natts);
	nulls = palloc(sizeof(bool) * desc->natts);
	memset(nulls, true, sizeof(bool) * desc->natts);
	values[attnos[0]] = PointerGetDatum(call.meter.subject);
	values[attnos[1]] = PointerGetDatum(call.meter.feature);
	values[attnos[2]] = Int64GetDatum(call.limit);
	values[attnos[3]] = CStringGetTextDatum(call.meter.period.name);
	for (i = 0; i < LIMIT_NATTS; i++)
		nulls[attnos[i]] = false;
	desc = BlessTupleDesc(desc);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

/*
 * Resets (1.2)
 */

/*
 * entitlock.reset_usage(subject text, feature text, period text DEFAULT
 *	   'lifetime') returns bigint
 *
 * Sets the usage of the meter's current period to 0 and returns the usage
 * it removed (0 when there was none).  It takes the locks a recording call
 * takes and locks the counter row, so it serialises with recorders: a
 * recorder after it sees 0, and a recorder before it is what it removes.
 * A rollback undoes it.  Idempotency keys are left alone: a retry of a
 * call made before the reset still gets the first call's answer, and
 * refund_usage() of it gives back only what is left (decide() never goes
 * below zero).  NULL arguments and bad ones are errors, as for usage().
 */
Datum
entitlock_reset_usage(PG_FUNCTION_ARGS)
{
	MeterCall	call;
	EntitlockTable counter;

	meter_args(fcinfo, &call.meter, 2);

	PreventCommandIfReadOnly("reset_usage()");
	PreventCommandDuringRecovery("reset_usage()");
	entitlock_stats_begin();

	meter_call_init(&call, 0, PG_INT64_MAX);
	entitlock_table_open(&counter, &counter_def, RowExclusiveLock);
	entitlock_table_prepare_writes(&counter);
	lock_meters_shared(&call, 1);
	CommandCounterIncrement();

	lock_counter(&counter, &call);
	call.allowed = true;
	call.new_used = 0;
	write_counter(&counter, &call);
	entitlock_table_close(&counter);

	count_usage_call(call.meter.feature, false, false);
	PG_RETURN_INT64(call.used);
}
