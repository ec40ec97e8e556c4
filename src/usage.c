/*-------------------------------------------------------------------------
 *
 * usage.c
 *	  Usage limits: entitlock.record_usage_if_under_limit, record_usage,
 *	  record_usage_if_under_limits, refund_usage, usage and (1.2)
 *	  reset_usage; usage_limit is usage_limits.c's, periods are periods.c's.
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
 * Rows are found with SnapshotSelf (see "Why the features read with
 * SnapshotSelf" in table.c) and locked in their newest version, so a
 * decision reads the usage as of after the row lock was granted, as READ
 * COMMITTED's UPDATE does.  A row that such a probe does not find may
 * still be there, hidden by a concurrent update, so the creation lock is
 * followed by a look against one snapshot (entitlock_table_probe_stable())
 * before a row is created.
 *
 * A call naming several meters locks all of them, in one canonical order,
 * before it reads any, decides every limit, and then writes all or none.
 *
 * The tables are not granted to anyone and are accessed beneath SQL, by
 * table.c.  This file holds the SQL entry points and their argument
 * checks; usage_counter.c the counters, usage_keys.c the idempotency keys
 * and refunds, usage_limits.c the usage_limit values (see usage.h), and
 * periods.c what a period argument names and its bounds.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "usage.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(entitlock_record_usage_if_under_limit);
PG_FUNCTION_INFO_V1(entitlock_record_usage);
PG_FUNCTION_INFO_V1(entitlock_record_usage_if_under_limits);
PG_FUNCTION_INFO_V1(entitlock_refund_usage);
PG_FUNCTION_INFO_V1(entitlock_usage);
PG_FUNCTION_INFO_V1(entitlock_reset_usage);

/*
 * Argument checks
 *
 * The same checks apply to a function's arguments and to the fields of an
 * entitlock.usage_limit, so they take a value and whether it is NULL.
 */

const EntitlockNameMessages usage_subject_messages = {
	"subject must not be null", "subject must not be empty",
	"subject is too long"
};
const EntitlockNameMessages usage_feature_messages = {
	"feature must not be null", "feature must not be empty",
	"feature is too long"
};
static const EntitlockNameMessages key_messages = {
	"idempotency key must not be null", "idempotency key must not be empty",
	"idempotency key is too long"
};

/* The optional idempotency key in argno, or NULL. */
static text *
idempotency_key_arg(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		return NULL;
	return entitlock_name_arg(fcinfo, argno, &key_messages);
}

static int64
positive_amount_arg(FunctionCallInfo fcinfo, int argno)
{
	int64		amount = entitlock_int8_arg(fcinfo, argno,
											"amount must not be null");

	if (amount <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("amount must be greater than zero"),
				 errhint("Use record_usage() with a negative amount to give usage back.")));
	return amount;
}

int64
usage_limit_value(Datum value, bool isnull)
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
void
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

	meter->subject = entitlock_name_arg(fcinfo, 0, &usage_subject_messages);
	meter->feature = entitlock_name_arg(fcinfo, 1, &usage_feature_messages);
	entitlock_period_value(PG_GETARG_DATUM(period_argno),
						   PG_ARGISNULL(period_argno), &period);
	compute_period(meter, &period, GetCurrentTransactionStartTimestamp());
}

/*
 * Recording on one meter
 */

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

	entitlock_begin_write(cmdname);

	/*
	 * The counter's writes are prepared when they are made: a call that
	 * replaces its counter in a plain HOT update needs no executor state
	 * (see entitlock_table_try_update()).
	 */
	usage_meter_call_init(call, 0, call->limit);
	entitlock_table_open(&counter, &usage_counter_def, RowExclusiveLock);
	if (key != NULL)
	{
		entitlock_table_open(&idem, &usage_key_def, RowExclusiveLock);
		entitlock_table_prepare_writes(&idem);
	}

	usage_lock_meters(call, 1);
	if (key != NULL)
		usage_lock_key(key);

	/*
	 * Make the transaction's own earlier writes, including those of an
	 * earlier call in this same statement, visible to the probes.
	 */
	CommandCounterIncrement();

	if (key != NULL)
	{
		IdempotentRecord rec = usage_key_lookup(&idem, &call->meter, key);

		if (rec.found)
		{
			usage_key_check_same(&rec, &call->meter, amount, key);
			entitlock_table_close(&idem);
			entitlock_table_close(&counter);
			/* The first call's answer, in the first call's period. */
			compute_period(&call->meter, &rec.period, rec.recorded_at);
			call->allowed = rec.allowed;
			call->new_used = rec.used;
			call->replayed = true;
			return;
		}
		usage_key_check_not_set_key(key, &call->meter);
	}

	if (entitlock_table_can_try_update(&counter))
		usage_record_meter(&counter, call, amount, conditional);
	else
	{
		usage_lock_counter(&counter, call);
		usage_decide(call, amount, conditional);
		usage_write_counter(&counter, call);
	}
	entitlock_table_close(&counter);

	if (key != NULL)
	{
		usage_key_store(&idem, call, key, amount);
		entitlock_table_close(&idem);
	}
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
	ReturnSetInfo *rsinfo = entitlock_init_srf(fcinfo);
	MeterCall	call;
	int64		amount;
	text	   *key;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};

	meter_args(fcinfo, &call.meter, 4);
	entitlock_require_arg(fcinfo, 2, "amount must not be null");
	entitlock_require_arg(fcinfo, 3, "usage limit must not be null");
	key = idempotency_key_arg(fcinfo, 5);
	amount = positive_amount_arg(fcinfo, 2);
	call.limit = usage_limit_value(PG_GETARG_DATUM(3), false);

	entitlock_stats_begin();
	record(&call, amount, true, key, "record_usage_if_under_limit()");
	count_usage_call(call.meter.feature, !call.allowed, call.replayed);

	values[0] = BoolGetDatum(call.allowed);
	values[1] = Int64GetDatum(call.new_used);
	values[2] = Int64GetDatum(remaining(call.new_used, call.limit));
	values[3] = TimestampTzGetDatum(call.meter.period_end);
	nulls[3] = !call.meter.has_end;
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
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
	amount = entitlock_int8_arg(fcinfo, 2, "amount must not be null");
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

#define LIMITS_RESULT_NATTS 7

/* Add call's row to the result of record_usage_if_under_limits(). */
static void
limits_result_row(ReturnSetInfo *rsinfo, const MeterCall *call,
				  bool allowed, int64 used)
{
	Datum		values[LIMITS_RESULT_NATTS];
	bool		nulls[LIMITS_RESULT_NATTS];

	values[0] = PointerGetDatum(call->meter.subject);
	values[1] = PointerGetDatum(call->meter.feature);
	values[2] = CStringGetTextDatum(call->meter.period.name);
	values[3] = BoolGetDatum(allowed);
	values[4] = Int64GetDatum(used);
	values[5] = Int64GetDatum(remaining(used, call->limit));
	values[6] = TimestampTzGetDatum(call->meter.period_end);
	memset(nulls, 0, sizeof(bool) * LIMITS_RESULT_NATTS);
	nulls[6] = !call->meter.has_end;
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
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
	ReturnSetInfo *rsinfo = entitlock_init_srf(fcinfo);
	MeterCall  *calls;
	MeterCall **sorted;
	int			n;
	int64		amount;
	text	   *key;
	bool		all_allowed = true;
	EntitlockTable counter;
	EntitlockTable sk;
	int			i;

	calls = usage_limits_arg(fcinfo, 0, &n);
	amount = positive_amount_arg(fcinfo, 1);
	key = idempotency_key_arg(fcinfo, 2);

	entitlock_begin_write("record_usage_if_under_limits()");
	entitlock_stats_begin();

	sorted = palloc(sizeof(MeterCall *) * n);
	for (i = 0; i < n; i++)
		sorted[i] = &calls[i];
	qsort(sorted, n, sizeof(MeterCall *), usage_cmp_meters);

	entitlock_table_open(&counter, &usage_counter_def, RowExclusiveLock);
	entitlock_table_prepare_writes(&counter);
	if (key != NULL)
	{
		entitlock_table_open(&sk, &usage_setkey_def, RowExclusiveLock);
		entitlock_table_prepare_writes(&sk);
	}

	usage_lock_meters(calls, n);
	if (key != NULL)
		usage_lock_key(key);
	CommandCounterIncrement();

	if (key != NULL)
	{
		SetRecord	rec = usage_setkey_lookup(&sk, key);

		if (rec.found)
		{
			int		   *match = usage_setkey_match(&rec, calls, n, amount, key);

			for (i = 0; i < n; i++)
			{
				int			j = match[i];

				/* The first call's answer, in the first call's period. */
				compute_period(&calls[i].meter, &calls[i].meter.period,
							   rec.recorded_at);
				limits_result_row(rsinfo, &calls[i],
								  DatumGetBool(rec.allowed[j]),
								  DatumGetInt64(rec.used[j]));
				count_usage_call(calls[i].meter.feature,
								 !DatumGetBool(rec.allowed[j]), true);
			}
			entitlock_table_close(&sk);
			entitlock_table_close(&counter);
			return (Datum) 0;
		}
		usage_setkey_check_not_single_key(key, sorted, n);
	}

	/*
	 * Lock every meter (in canonical order), then decide every limit, then
	 * settle the outcome of every meter, and only then write (in canonical
	 * order again).  Deciding and writing are separate passes so that the
	 * order meters are written in can never see a decision half made: a
	 * denial by any limit must reach every meter before the first write.
	 */
	for (i = 0; i < n; i++)
		usage_lock_counter(&counter, sorted[i]);
	for (i = 0; i < n; i++)
	{
		usage_decide(&calls[i], amount, true);
		all_allowed &= calls[i].allowed;
	}
	if (!all_allowed)
	{
		for (i = 0; i < n; i++)
			calls[i].new_used = calls[i].used;
	}
	for (i = 0; i < n; i++)
		usage_write_counter(&counter, sorted[i]);
	entitlock_table_close(&counter);

	if (key != NULL)
	{
		usage_setkey_store(&sk, calls, n, key, amount);
		entitlock_table_close(&sk);
	}

	/* One call per meter; the waits count with the first. */
	for (i = 0; i < n; i++)
	{
		limits_result_row(rsinfo, &calls[i], calls[i].allowed,
						  calls[i].new_used);
		count_usage_call(calls[i].meter.feature, !calls[i].allowed, false);
	}
	return (Datum) 0;
}

/*
 * Refunds
 */

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

	call.meter.subject = entitlock_name_arg(fcinfo, 0,
											&usage_subject_messages);
	call.meter.feature = entitlock_name_arg(fcinfo, 1,
											&usage_feature_messages);
	entitlock_require_arg(fcinfo, 2, "idempotency key must not be null");
	key = idempotency_key_arg(fcinfo, 2);

	entitlock_begin_write("refund_usage()");
	entitlock_stats_begin();

	usage_meter_call_init(&call, 0, PG_INT64_MAX);
	entitlock_table_open(&counter, &usage_counter_def, RowExclusiveLock);
	entitlock_table_open(&idem, &usage_key_def, RowExclusiveLock);
	entitlock_table_prepare_writes(&counter);
	entitlock_table_prepare_writes(&idem);

	usage_lock_meters(&call, 1);
	usage_lock_key(key);
	CommandCounterIncrement();

	rec = usage_key_lookup(&idem, &call.meter, key);
	if (!rec.found)
		given = usage_refund_set(&counter, &call, key);
	else if (usage_key_mark_refunded(&idem, &rec))
		given = usage_give_back(&counter, &call, &rec.period, rec.recorded_at,
								rec.amount);
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
	PG_RETURN_INT64(usage_read(&meter));
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
 * refund_usage() of it gives back only what is left (usage_decide() never
 * goes below zero).  NULL arguments and bad ones are errors, as for usage().
 */
Datum
entitlock_reset_usage(PG_FUNCTION_ARGS)
{
	MeterCall	call;
	EntitlockTable counter;

	meter_args(fcinfo, &call.meter, 2);

	entitlock_begin_write("reset_usage()");
	entitlock_stats_begin();

	usage_meter_call_init(&call, 0, PG_INT64_MAX);
	entitlock_table_open(&counter, &usage_counter_def, RowExclusiveLock);
	entitlock_table_prepare_writes(&counter);
	usage_lock_meters(&call, 1);
	CommandCounterIncrement();

	usage_lock_counter(&counter, &call);
	call.allowed = true;
	call.new_used = 0;
	usage_write_counter(&counter, &call);
	entitlock_table_close(&counter);

	count_usage_call(call.meter.feature, false, false);
	PG_RETURN_INT64(call.used);
}
