/*-------------------------------------------------------------------------
 *
 * usage.c
 *	  Usage limits: entitlock.record_usage_if_under_limit, record_usage,
 *	  usage and usage_period.
 *
 * A meter is (subject, feature, period kind).  Each calendar period of a
 * meter is one row of entitlock.usage_counter holding a running total, so
 * a decision is one index probe and one update, however much usage there
 * has been.  Idempotency keys live in entitlock.usage_idempotency with the
 * decision they got, so a retry can be answered without recording again.
 *
 * Every call that records first takes lock_entity(subject, feature) from
 * locks.c: shared on the subject, exclusive on the pair.  That serialises
 * the calls of one meter (and lets an exclusive lock(subject) freeze all of
 * a subject's usage) while other pairs run in parallel.  Only after the
 * lock is granted are the tables read.  They are read with SnapshotSelf:
 * only holders of the pair lock write the pair's rows (prune_usage only
 * deletes ended periods and old keys), so under the lock committed rows
 * are what a fresh MVCC snapshot would show, and unlike one, SnapshotSelf
 * takes no SERIALIZABLE predicate locks on the index pages that all pairs
 * share, which would make calls on unrelated pairs fail each other.  See
 * entitlock_check_visible_to_transaction() for REPEATABLE READ and
 * SERIALIZABLE.
 *
 * The tables are not granted to anyone and are accessed beneath SQL, by
 * table.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "entitlock.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(entitlock_record_usage_if_under_limit);
PG_FUNCTION_INFO_V1(entitlock_record_usage);
PG_FUNCTION_INFO_V1(entitlock_usage);
PG_FUNCTION_INFO_V1(entitlock_usage_period);

/*
 * Subjects, features and idempotency keys are stored in full and indexed,
 * so together they must fit in a btree entry (about 2.7 kB).
 */
#define USAGE_MAX_NAME_BYTES 512

typedef enum UsagePeriod
{
	PERIOD_LIFETIME,
	PERIOD_MINUTE,
	PERIOD_HOUR,
	PERIOD_DAY,
	PERIOD_WEEK,
	PERIOD_MONTH,
	PERIOD_YEAR
} UsagePeriod;

/* Indexed by UsagePeriod; these spellings are what the tables store. */
static const char *const period_names[] = {
	"lifetime", "minute", "hour", "day", "week", "month", "year"
};

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

/* What a call decided, or what an earlier call with its key decided. */
typedef struct UsageOutcome
{
	bool		allowed;
	int64		used;
} UsageOutcome;

/* An earlier call's record under the same idempotency key. */
typedef struct IdempotentRecord
{
	bool		found;
	UsagePeriod period;
	int64		amount;
	UsageOutcome outcome;
} IdempotentRecord;

/*
 * Argument checks
 */

static text *
name_arg(FunctionCallInfo fcinfo, int argno, const char *what)
{
	text	   *name = entitlock_nonempty_text_arg(fcinfo, argno, what);
	int			len = VARSIZE_ANY_EXHDR(name);

	if (len > USAGE_MAX_NAME_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s is too long", what),
				 errdetail("It is %d bytes long; the limit is %d bytes.",
						   len, USAGE_MAX_NAME_BYTES)));
	return name;
}

static int64
int8_arg(FunctionCallInfo fcinfo, int argno, const char *what)
{
	entitlock_require_arg(fcinfo, argno, what);
	return PG_GETARG_INT64(argno);
}

/* The period spelled name (in any case), or -1. */
static int
period_lookup(const char *name)
{
	int			i;

	/* Case-insensitive, as date_trunc() is. */
	for (i = 0; i < (int) lengthof(period_names); i++)
	{
		if (pg_strcasecmp(name, period_names[i]) == 0)
			return i;
	}
	return -1;
}

static UsagePeriod
period_arg(FunctionCallInfo fcinfo, int argno)
{
	char	   *name;
	int			period;

	entitlock_require_arg(fcinfo, argno, "period");
	name = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	period = period_lookup(name);
	if (period >= 0)
		return (UsagePeriod) period;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unrecognized period \"%s\"",
					entitlock_text_for_message(PG_GETARG_TEXT_PP(argno))),
			 errhint("Valid periods are lifetime, minute, hour, day, week, month and year.")));
	pg_unreachable();
}

/* The optional idempotency key in argno, or NULL. */
static text *
idempotency_key_arg(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		return NULL;
	return name_arg(fcinfo, argno, "idempotency key");
}

/*
 * Periods
 */

static void
timestamp_out_of_range(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
			 errmsg("timestamp out of range")));
}

/*
 * Fill in the UTC calendar period of kind containing "at": its first
 * instant and the first instant of the next one.  Weeks start on Monday,
 * as in date_trunc('week', ...).
 */
static void
compute_period(UsageMeter *meter, UsagePeriod period, TimestampTz at)
{
	struct pg_tm tm;
	fsec_t		fsec;
	Timestamp	start;
	Timestamp	end;

	meter->period = period;
	if (period == PERIOD_LIFETIME)
	{
		TIMESTAMP_NOBEGIN(meter->period_start);
		meter->period_end = 0;
		meter->has_end = false;
		return;
	}

	/* With no time zone argument timestamp2tm gives UTC fields. */
	if (TIMESTAMP_NOT_FINITE(at) ||
		timestamp2tm(at, NULL, &tm, &fsec, NULL, NULL) != 0)
		timestamp_out_of_range();

	fsec = 0;
	tm.tm_sec = 0;
	if (period != PERIOD_MINUTE)
		tm.tm_min = 0;
	if (period != PERIOD_MINUTE && period != PERIOD_HOUR)
		tm.tm_hour = 0;
	if (period == PERIOD_WEEK)
	{
		int			jd = date2j(tm.tm_year, tm.tm_mon, tm.tm_mday);

		/* j2day() counts from Sunday = 0; step back to Monday. */
		jd -= (j2day(jd) + 6) % 7;
		j2date(jd, &tm.tm_year, &tm.tm_mon, &tm.tm_mday);
	}
	if (period == PERIOD_MONTH || period == PERIOD_YEAR)
		tm.tm_mday = 1;
	if (period == PERIOD_YEAR)
		tm.tm_mon = 1;

	if (tm2timestamp(&tm, fsec, NULL, &start) != 0)
		timestamp_out_of_range();

	switch (period)
	{
		case PERIOD_MINUTE:
			end = start + USECS_PER_MINUTE;
			break;
		case PERIOD_HOUR:
			end = start + USECS_PER_HOUR;
			break;
		case PERIOD_DAY:
			end = start + USECS_PER_DAY;
			break;
		case PERIOD_WEEK:
			end = start + 7 * USECS_PER_DAY;
			break;
		case PERIOD_MONTH:
		case PERIOD_YEAR:
			if (period == PERIOD_YEAR)
				tm.tm_year++;
			else if (++tm.tm_mon > MONTHS_PER_YEAR)
			{
				tm.tm_mon = 1;
				tm.tm_year++;
			}
			if (tm2timestamp(&tm, fsec, NULL, &end) != 0)
				timestamp_out_of_range();
			break;
		default:
			elog(ERROR, "unexpected usage period %d", (int) period);
			pg_unreachable();
	}
	if (!IS_VALID_TIMESTAMP(end))
		timestamp_out_of_range();

	meter->period_start = start;
	meter->period_end = end;
	meter->has_end = true;
}

/*
 * Usage is attributed to the period holding the transaction's start,
 * now(), so that every call of one transaction agrees on the period (and
 * on period_end) even when the transaction straddles a boundary.
 */
static void
meter_args(FunctionCallInfo fcinfo, UsageMeter *meter, int period_argno)
{
	meter->subject = name_arg(fcinfo, 0, "subject");
	meter->feature = name_arg(fcinfo, 1, "feature");
	compute_period(meter, period_arg(fcinfo, period_argno),
				   GetCurrentTransactionStartTimestamp());
}

/*
 * Tables
 *
 * Written beneath SQL through table.c; see there.
 */

#define COUNTER_NATTS 6
#define COUNTER_USED 5			/* 0-based column numbers */

#define IDEM_NATTS 9

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
	TIMESTAMPTZOID				/* recorded_at */
};

static EntitlockTableDef counter_def = {
	"usage_counter", counter_types, COUNTER_NATTS, COUNTER_NATTS, 1,
	{{"usage_counter_pkey", true, 4, {1, 2, 3, 4}}}
};
static EntitlockTableDef idem_def = {
	"usage_idempotency", idem_types, IDEM_NATTS, IDEM_NATTS, 1,
	{{"usage_idempotency_pkey", true, 3, {1, 2, 3}}}
};

/*
 * Recording
 */

/* The meter's counter row, with used = 0 for the caller to set. */
static void
counter_values(const UsageMeter *meter, Datum *values, bool *nulls)
{
	values[0] = PointerGetDatum(meter->subject);
	values[1] = PointerGetDatum(meter->feature);
	values[2] = CStringGetTextDatum(period_names[meter->period]);
	values[3] = TimestampTzGetDatum(meter->period_start);
	values[4] = TimestampTzGetDatum(meter->period_end);
	values[COUNTER_USED] = Int64GetDatum(0);
	memset(nulls, 0, sizeof(bool) * COUNTER_NATTS);
	nulls[4] = !meter->has_end;
}

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
		Datum	   *cols = idem->slot->tts_values;
		int			period;

		entitlock_check_visible_to_transaction(idem->slot);
		period = period_lookup(TextDatumGetCString(cols[3]));
		if (period < 0)
			elog(ERROR, "unexpected period in entitlock.usage_idempotency");
		rec.period = (UsagePeriod) period;
		rec.amount = DatumGetInt64(cols[4]);
		rec.outcome.allowed = DatumGetBool(cols[5]);
		rec.outcome.used = DatumGetInt64(cols[6]);
	}
	ExecClearTuple(idem->slot);
	return rec;
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
	if (rec->amount != amount || rec->period != meter->period)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency key \"%s\" was already used with a different request",
						entitlock_text_for_message(key)),
				 errdetail("The first call recorded amount " INT64_FORMAT " for period \"%s\"; this call asks for amount " INT64_FORMAT " for period \"%s\".",
						   rec->amount, period_names[rec->period],
						   amount, period_names[meter->period])));
}

/*
 * Under the pair lock the probe has just seen that the key is free, and
 * every writer of the key holds that lock, so the insert cannot conflict.
 */
static void
idempotent_store(EntitlockTable *idem, const UsageMeter *meter, text *key,
				 int64 amount, const UsageOutcome *outcome)
{
	Datum		values[IDEM_NATTS];
	bool		nulls[IDEM_NATTS];

	idempotency_values(meter, key, values, nulls);
	values[3] = CStringGetTextDatum(period_names[meter->period]);
	values[4] = Int64GetDatum(amount);
	values[5] = BoolGetDatum(outcome->allowed);
	values[6] = Int64GetDatum(outcome->used);
	values[7] = TimestampTzGetDatum(meter->period_end);
	nulls[7] = !meter->has_end;
	values[8] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	entitlock_table_insert(idem, values, nulls);
}

/*
 * Everything a recording call does once its arguments are checked: lock
 * the pair, answer a retry from its first outcome, otherwise decide and
 * record.  With conditional, record only when used + amount <= limit;
 * without, record amount (negative refunds), keeping usage at zero or more
 * and refusing a total beyond limit (bigint's largest, from record_usage).
 */
static UsageOutcome
record(const UsageMeter *meter, int64 amount, bool conditional, int64 limit,
	   text *key, const char *cmdname)
{
	UsageOutcome outcome;
	EntitlockTable counter;
	EntitlockTable idem;
	Datum		values[COUNTER_NATTS];
	bool		nulls[COUNTER_NATTS];
	int64		subject_key;
	int64		pair_key;

	PreventCommandIfReadOnly(cmdname);
	PreventCommandDuringRecovery(cmdname);

	/*
	 * Everything that can be prepared without the pair lock is, so that a hot
	 * pair's lock is held no longer than the decision takes.
	 */
	subject_key = entitlock_name_key(meter->subject);
	pair_key = entitlock_pair_key(meter->subject, meter->feature);
	entitlock_table_open(&counter, &counter_def, RowExclusiveLock);
	if (key != NULL)
		entitlock_table_open(&idem, &idem_def, RowExclusiveLock);
	entitlock_table_prepare_writes(&counter);
	if (key != NULL)
		entitlock_table_prepare_writes(&idem);
	counter_values(meter, values, nulls);

	/* lock_entity(subject, feature), before anything is read */
	(void) entitlock_acquire(subject_key, ShareLock, true);
	(void) entitlock_acquire(pair_key, ExclusiveLock, true);

	/*
	 * Make the transaction's own earlier writes, including those of an
	 * earlier call in this same statement, visible to the probes.
	 */
	CommandCounterIncrement();

	if (key != NULL)
	{
		IdempotentRecord rec = idempotent_lookup(&idem, meter, key);

		if (rec.found)
		{
			idempotent_check_same(&rec, meter, amount, key);
			entitlock_table_close(&idem);
			entitlock_table_close(&counter);
			return rec.outcome;
		}
	}

	for (;;)
	{
		bool		found = entitlock_table_probe(&counter, SnapshotSelf,
												  values);
		int64		used = 0;
		int64		new_used;
		ItemPointerData otid;

		if (found)
		{
			entitlock_check_visible_to_transaction(counter.slot);
			used = DatumGetInt64(counter.slot->tts_values[COUNTER_USED]);
			otid = counter.slot->tts_tid;
		}

		if (amount > 0)
		{
			/* used + amount <= limit, without overflowing */
			outcome.allowed = amount <= limit && used <= limit - amount;
			if (!outcome.allowed && !conditional)
				ereport(ERROR,
						(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
						 errmsg("usage would be out of range for type bigint"),
						 errdetail("Usage is " INT64_FORMAT "; adding " INT64_FORMAT " would exceed " INT64_FORMAT ".",
								   used, amount, PG_INT64_MAX)));
			new_used = outcome.allowed ? used + amount : used;
		}
		else
		{
			/* refunds, unconditional only; used >= 0 cannot overflow */
			outcome.allowed = true;
			new_used = Max(used + amount, 0);
		}
		outcome.used = new_used;

		if (new_used == used)
		{
			/* The probe's buffer pin would keep the page from being pruned. */
			ExecClearTuple(counter.slot);
			break;
		}
		values[COUNTER_USED] = Int64GetDatum(new_used);
		if (!found)
		{
			entitlock_table_insert(&counter, values, nulls);
			break;
		}

		/*
		 * Every recorder of the meter holds the pair lock, but prune_usage()
		 * does not: lock the row of a calendar period first, and if a prune
		 * deleted it meanwhile, its usage is gone with it.  A lifetime
		 * counter has no end and is never pruned, so nothing else changes
		 * it, and it is written at once.
		 */
		if (!meter->has_end ||
			entitlock_table_lock_row(&counter, &otid, LockTupleNoKeyExclusive,
									 true) == TM_Ok)
		{
			entitlock_table_update(&counter, &otid, values, nulls,
								   ENTITLOCK_COLUMN(COUNTER_USED));
			ExecClearTuple(counter.slot);
			break;
		}

		/*
		 * prune_usage() deleted the row meanwhile.  Under READ COMMITTED look
		 * again; otherwise this is the concurrent update that REPEATABLE READ
		 * cannot see past.
		 */
		if (IsolationUsesXactSnapshot())
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not serialize access due to concurrent update")));
		CHECK_FOR_INTERRUPTS();
	}
	entitlock_table_close(&counter);

	if (key != NULL)
	{
		idempotent_store(&idem, meter, key, amount, &outcome);
		entitlock_table_close(&idem);
	}
	return outcome;
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

/*
 * entitlock.record_usage_if_under_limit(subject text, feature text,
 *	   amount bigint, usage_limit bigint, period text DEFAULT 'lifetime',
 *	   idempotency_key text DEFAULT NULL)
 * returns table (allowed boolean, used bigint, remaining bigint,
 *	   period_end timestamptz)
 *
 * Records amount in the current period when used + amount <= usage_limit,
 * under lock_entity(subject, feature).  used and remaining are as of after
 * the decision; period_end is NULL for lifetime.  A call repeating an
 * earlier call's idempotency key records nothing and returns that call's
 * decision and usage.  Only idempotency_key may be NULL; amount must be
 * positive and usage_limit not negative.  One row, always.
 */
Datum
entitlock_record_usage_if_under_limit(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = entitlock_materialize_resultinfo(fcinfo);
	UsageMeter	meter;
	int64		amount;
	int64		limit;
	text	   *key;
	UsageOutcome outcome;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};

	meter_args(fcinfo, &meter, 4);
	amount = int8_arg(fcinfo, 2, "amount");
	limit = int8_arg(fcinfo, 3, "usage limit");
	key = idempotency_key_arg(fcinfo, 5);
	if (amount <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("amount must be greater than zero"),
				 errhint("Use record_usage() with a negative amount to give usage back.")));
	if (limit < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("usage limit must not be negative")));

	outcome = record(&meter, amount, true, limit, key,
					 "record_usage_if_under_limit()");

	values[0] = BoolGetDatum(outcome.allowed);
	values[1] = Int64GetDatum(outcome.used);
	/* usage above the limit (the limit was lowered) leaves nothing */
	values[2] = Int64GetDatum(outcome.used < limit ? limit - outcome.used : 0);
	values[3] = TimestampTzGetDatum(meter.period_end);
	nulls[3] = !meter.has_end;
	entitlock_return_one_row(fcinfo, rsinfo, values, nulls);
	return (Datum) 0;
}

/*
 * entitlock.record_usage(subject text, feature text, amount bigint,
 *	   period text DEFAULT 'lifetime', idempotency_key text DEFAULT NULL)
 * returns bigint
 *
 * Records amount unconditionally, under the same lock; a negative amount
 * is a refund, and usage never goes below zero.  Returns the usage after
 * it (for a repeated idempotency key, the usage the first call returned).
 * A total beyond bigint is an error and records nothing.
 */
Datum
entitlock_record_usage(PG_FUNCTION_ARGS)
{
	UsageMeter	meter;
	int64		amount;
	text	   *key;
	UsageOutcome outcome;

	meter_args(fcinfo, &meter, 3);
	amount = int8_arg(fcinfo, 2, "amount");
	key = idempotency_key_arg(fcinfo, 4);

	/* Unconditional usage is only bounded by what bigint can hold. */
	outcome = record(&meter, amount, false, PG_INT64_MAX, key,
					 "record_usage()");
	PG_RETURN_INT64(outcome.used);
}

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
 * entitlock.usage_period(period text, at timestamptz DEFAULT now())
 * returns table (period_start timestamptz, period_end timestamptz)
 *
 * The UTC calendar period holding "at", exactly as the usage functions
 * compute it; both columns are NULL for lifetime.  NULL arguments are
 * errors.
 */
Datum
entitlock_usage_period(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = entitlock_materialize_resultinfo(fcinfo);
	UsageMeter	meter;
	UsagePeriod period = period_arg(fcinfo, 0);
	Datum		values[2];
	bool		nulls[2];

	entitlock_require_arg(fcinfo, 1, "timestamp");
	compute_period(&meter, period, PG_GETARG_TIMESTAMPTZ(1));

	values[0] = TimestampTzGetDatum(meter.period_start);
	values[1] = TimestampTzGetDatum(meter.period_end);
	nulls[0] = nulls[1] = !meter.has_end;
	entitlock_return_one_row(fcinfo, rsinfo, values, nulls);
	return (Datum) 0;
}
