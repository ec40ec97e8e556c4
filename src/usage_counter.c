/*-------------------------------------------------------------------------
 *
 * usage_counter.c
 *	  The counters of usage limits: the table entitlock.usage_counter, the
 *	  locks a recording call takes on its meters, the decision, and the
 *	  writing of the decided usage.
 *
 * Every rule of how recorders serialise is in usage.c's header comment;
 * this file implements them.  A period's first row is created under the
 * creation lock described at "Creating a row" in table.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "usage.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* Seed of the creation locks' keys; any fixed value, never changed. */
#define CREATE_LOCK_SEED	UINT64CONST(0x656e746c6f636b32)	/* first row */

/* entitlock.usage_counter, 0-based column numbers */
#define COUNTER_SUBJECT 0
#define COUNTER_FEATURE 1
#define COUNTER_PERIOD 2
#define COUNTER_PERIOD_START 3
#define COUNTER_PERIOD_END 4
#define COUNTER_USED 5
#define COUNTER_NATTS 6

static const Oid counter_types[COUNTER_NATTS] = {
	TEXTOID,					/* subject */
	TEXTOID,					/* feature */
	TEXTOID,					/* period */
	TIMESTAMPTZOID,				/* period_start */
	TIMESTAMPTZOID,				/* period_end */
	INT8OID						/* used */
};

EntitlockTableDef usage_counter_def = {
	"usage_counter", counter_types, COUNTER_NATTS, COUNTER_NATTS, 1,
	{{"usage_counter_pkey", true, 4, {COUNTER_SUBJECT + 1, COUNTER_FEATURE + 1,
	COUNTER_PERIOD + 1, COUNTER_PERIOD_START + 1}}}
};

/*
 * Locks
 */

/*
 * Take the shared advisory locks of every meter of a call (sorted in
 * canonical order), subjects and then pairs, each in ascending key order
 * (entitlock_sort_keys(), as lock_all() takes its keys), so that no order
 * of calls can deadlock on them.  A transaction that has taken many of
 * them takes coarser locks instead, which exclude the same lock callers
 * (see locks.c).
 */
void
usage_lock_meters(MeterCall *calls, int n)
{
	int64	   *keys = palloc(sizeof(int64) * 2 * n);
	int			nkeys = 0;
	int			pass;
	int			i;

	for (pass = 0; pass < 2; pass++)
	{
		int64	   *these = keys + nkeys;

		for (i = 0; i < n; i++)
			these[i] = pass == 0 ? calls[i].subject_key : calls[i].pair_key;
		nkeys += entitlock_sort_keys(these, n, sizeof(int64));
	}
	entitlock_acquire_recording(keys, nkeys);
	pfree(keys);
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

int
usage_cmp_meters(const void *a, const void *b)
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

bool
usage_same_text(text *a, text *b)
{
	return VARSIZE_ANY_EXHDR(a) == VARSIZE_ANY_EXHDR(b) &&
		memcmp(VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a)) == 0;
}

bool
usage_same_pair(const UsageMeter *a, const UsageMeter *b)
{
	return usage_same_text(a->subject, b->subject) &&
		usage_same_text(a->feature, b->feature);
}

/* Fill in the lock keys of a call on call->meter. */
void
usage_meter_call_init(MeterCall *call, int position, int64 limit)
{
	call->limit = limit;
	call->position = position;
	call->subject_key = entitlock_name_key(call->meter.subject);
	call->pair_key = entitlock_pair_key(call->meter.subject,
										call->meter.feature);
	call->found = false;
	call->replayed = false;
}

/*
 * Counters
 */

/* The meter's counter row, with used = 0 for the caller to set. */
static void
counter_values(const UsageMeter *meter, Datum *values, bool *nulls)
{
	values[COUNTER_SUBJECT] = PointerGetDatum(meter->subject);
	values[COUNTER_FEATURE] = PointerGetDatum(meter->feature);
	values[COUNTER_PERIOD] = CStringGetTextDatum(meter->period.name);
	values[COUNTER_PERIOD_START] = TimestampTzGetDatum(meter->period_start);
	values[COUNTER_PERIOD_END] = TimestampTzGetDatum(meter->period_end);
	values[COUNTER_USED] = Int64GetDatum(0);
	memset(nulls, 0, sizeof(bool) * COUNTER_NATTS);
	nulls[COUNTER_PERIOD_END] = !meter->has_end;
}

/*
 * Lock the meter's counter row for its period and read its usage; or, if
 * there is none, make sure no one else can create it first (see
 * entitlock_table_lock_or_create(); usage_write_counter() creates it).
 * Leaves call->found, ->tid and ->used.
 */
void
usage_lock_counter(EntitlockTable *counter, MeterCall *call)
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
void
usage_decide(MeterCall *call, int64 amount, bool conditional)
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
void
usage_write_counter(EntitlockTable *counter, MeterCall *call)
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
 * several meters lock them all first (usage_lock_counter()), which this
 * composes with: an update waits for their row locks.
 */
void
usage_record_meter(EntitlockTable *counter, MeterCall *call, int64 amount,
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

		if (!entitlock_table_find_or_claim(counter, values,
										   counter_creation_key(call)))
		{
			/* see usage_lock_counter() */
			call->found = false;
			call->used = 0;
			usage_decide(call, amount, conditional);
			usage_write_counter(counter, call);
			return;
		}

		entitlock_check_visible_to_transaction(slot);
		call->found = true;
		call->used = DatumGetInt64(slot->tts_values[COUNTER_USED]);
		tid = slot->tts_tid;
		/* Statistics: the update will wait for a recorder still at work. */
		start = entitlock_stats_on() && entitlock_slot_being_changed(slot) ?
			GetCurrentTimestamp() : 0;
		ExecClearTuple(slot);	/* see "Buffer pins" in table.c */
		usage_decide(call, amount, conditional);
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

/* The meter's usage in its period as the active snapshot sees it. */
int64
usage_read(const UsageMeter *meter)
{
	EntitlockTable counter;
	Datum		values[COUNTER_NATTS];
	bool		nulls[COUNTER_NATTS];
	int64		used = 0;

	entitlock_table_open(&counter, &usage_counter_def, AccessShareLock);
	counter_values(meter, values, nulls);
	if (entitlock_table_probe(&counter,
							  ActiveSnapshotSet() ? GetActiveSnapshot() :
							  GetTransactionSnapshot(),
							  values))
		used = DatumGetInt64(counter.slot->tts_values[COUNTER_USED]);
	entitlock_table_close(&counter);
	return used;
}

/*
 * Give amount back to the meter's counter of the period holding
 * recorded_at, under the caller's locks; returns how much it gave back
 * (less than amount when usage was lower, 0 when the counter is gone).
 */
int64
usage_give_back(EntitlockTable *counter, MeterCall *call,
				const UsagePeriod *period, TimestampTz recorded_at,
				int64 amount)
{
	compute_period(&call->meter, period, recorded_at);
	usage_lock_counter(counter, call);
	if (!call->found)
	{
		release_creation_claim(call);
		return 0;
	}
	usage_decide(call, -amount, false);
	usage_write_counter(counter, call);
	return call->used - call->new_used;
}

