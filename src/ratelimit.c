/*-------------------------------------------------------------------------
 *
 * ratelimit.c
 *	  Rolling rate limits: entitlock.rate_limit and entitlock.gcra.
 *
 * The generic cell rate algorithm, as redis-cell and others implement it.
 * A limit of rate units per "per", with bursts of up to burst units, has an
 * emission interval T = per / rate (rounded up to a whole microsecond) and
 * a tolerance tau = burst * T.  Its whole state is one instant, the
 * theoretical arrival time (tat): the bucket is full when tat is not after
 * now, and each unit taken pushes tat T further.  A call for cost units is
 * allowed when max(tat, now) + cost * T - now <= tau.  Unlike a calendar
 * period there is no window edge, so twice the rate never gets through
 * across one.
 *
 * State is one row per name in entitlock.rate_limit_state.  Calls on one
 * name meet on that row's lock, taken before the row is read, exactly as
 * usage counters are (see usage.c): the clock is read after the lock is
 * granted, so a call decides on the time it actually decides at, and the
 * row stays locked until the caller's transaction ends, so a rollback gives
 * the units back.  A name's first row is created under an internal lock.
 *
 * entitlock.gcra() is the arithmetic alone, at a given instant, for tests
 * and for callers who keep the state themselves.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/int.h"
#include "locks.h"
#include "miscadmin.h"
#include "stats.h"
#include "table.h"
#include "util.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(entitlock_rate_limit);
PG_FUNCTION_INFO_V1(entitlock_gcra);

/* The longest window, burst * per / rate, that a limit may have. */
#define RATE_MAX_WINDOW_YEARS 10000
#define RATE_MAX_WINDOW_USECS \
	((int64) RATE_MAX_WINDOW_YEARS * DAYS_PER_YEAR * USECS_PER_DAY)

/* Seed of the internal lock key of a name's first row. */
#define RATE_CREATE_LOCK_SEED UINT64CONST(0x656e746c6f636b33)

/* A limit's parameters, checked, in microseconds. */
typedef struct RateLimit
{
	int64		interval;		/* T: per / rate, rounded up */
	int64		tolerance;		/* tau: burst * T */
	int64		burst;
	int64		cost;
} RateLimit;

/* What a call decides. */
typedef struct RateDecision
{
	bool		allowed;
	int64		remaining;
	bool		has_retry_after;
	int64		retry_after;
	int64		reset_after;
	TimestampTz tat;			/* the state after the call */
} RateDecision;

/*
 * Arguments
 */

static const EntitlockNameMessages name_messages = {
	"name must not be null", "name must not be empty", "name is too long"
};

/* per as microseconds (see entitlock_interval_usecs()). */
static int64
per_usecs(Interval *per)
{
	int64		usecs;

	if (!entitlock_interval_usecs(per, &usecs) ||
		usecs > RATE_MAX_WINDOW_USECS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("per is too long"),
				 errdetail("The longest is %d years.", RATE_MAX_WINDOW_YEARS)));
	return usecs;
}

/*
 * Check rate, per, burst and cost (arguments first_argno onwards, in that
 * order) and derive the limit.  Checked before anything is locked, so bad
 * parameters fail at once and change nothing.
 */
static RateLimit
limit_args(FunctionCallInfo fcinfo, int first_argno)
{
	RateLimit	limit;
	int64		rate = entitlock_int8_arg(fcinfo, first_argno,
										  "rate must not be null");
	int64		per;

	entitlock_require_arg(fcinfo, first_argno + 1, "per must not be null");
	per = per_usecs(PG_GETARG_INTERVAL_P(first_argno + 1));
	limit.burst = PG_ARGISNULL(first_argno + 2) ? rate :
		PG_GETARG_INT64(first_argno + 2);
	limit.cost = entitlock_int8_arg(fcinfo, first_argno + 3,
								   "cost must not be null");

	if (rate <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate must be greater than zero")));
	if (per <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("per must be greater than zero")));
	if (limit.burst <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("burst must be greater than zero")));
	if (limit.cost < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cost must not be negative"),
				 errhint("A cost of 0 reports the state without taking anything.")));
	if (limit.cost > limit.burst)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cost " INT64_FORMAT " is greater than burst " INT64_FORMAT,
						limit.cost, limit.burst),
				 errdetail("A call for more than burst units could never be allowed.")));

	/* T = per / rate rounded up: never lets more than rate per per through */
	limit.interval = per / rate + (per % rate != 0);
	if (pg_mul_s64_overflow(limit.burst, limit.interval, &limit.tolerance) ||
		limit.tolerance > RATE_MAX_WINDOW_USECS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("burst is too large for this rate"),
				 errdetail("burst * per / rate must be at most %d years.",
						   RATE_MAX_WINDOW_YEARS)));
	return limit;
}

/*
 * The algorithm
 */

/*
 * Decide a call for limit->cost units at now, on a name whose state is tat
 * (none: the bucket is full).  tau and T are bounded by limit_args(), and
 * tat is at most tau past the moment it was written.  A state further
 * ahead than any window (written by hand) counts as the longest window
 * ahead, so that nothing overflows.
 */
static RateDecision
gcra_decide(const RateLimit *limit, bool has_tat, TimestampTz tat,
			TimestampTz now)
{
	RateDecision d = {0};
	TimestampTz from = has_tat && tat > now ? tat : now;
	int64		ahead;
	int64		backlog;

	if (from - now > RATE_MAX_WINDOW_USECS)
		from = now + RATE_MAX_WINDOW_USECS;
	ahead = (from - now) + limit->cost * limit->interval;

	d.allowed = ahead <= limit->tolerance;
	if (d.allowed)
		d.tat = now + ahead;
	else
	{
		d.tat = from;
		d.has_retry_after = true;
		d.retry_after = ahead - limit->tolerance;
	}
	backlog = d.tat - now;
	d.remaining = backlog < limit->tolerance ?
		(limit->tolerance - backlog) / limit->interval : 0;
	d.reset_after = backlog;
	return d;
}

/* Fill in the four columns rate_limit() and gcra() share. */
static void
decision_values(const RateDecision *d, Datum *values, bool *nulls)
{
	values[0] = BoolGetDatum(d->allowed);
	values[1] = Int64GetDatum(d->remaining);
	values[2] = IntervalPGetDatum(entitlock_usecs_interval(d->retry_after));
	nulls[2] = !d->has_retry_after;
	values[3] = IntervalPGetDatum(entitlock_usecs_interval(d->reset_after));
}

/*
 * The table
 */

#define STATE_NATTS 2
#define STATE_TAT 1

static const Oid state_types[STATE_NATTS] = {
	TEXTOID,					/* name */
	TIMESTAMPTZOID				/* tat */
};

static EntitlockTableDef state_def = {
	"rate_limit_state", state_types, STATE_NATTS, STATE_NATTS, 1,
	{{"rate_limit_state_pkey", true, 1, {1}}}
};

/* Count a rate_limit() call, if statistics are on (stats.c). */
static void
count_rate_call(text *name, const RateDecision *d)
{
	entitlock_stats_count(ENTITLOCK_STATS_RATE, name, false,
						  d->allowed ? 0 : ENTITLOCK_STATS_DENIED);
}

/*
 * entitlock.rate_limit(name text, rate bigint, per interval,
 *	   burst bigint DEFAULT NULL, cost bigint DEFAULT 1)
 * returns table (allowed boolean, remaining bigint, retry_after interval,
 *	   reset_after interval)
 *
 * Takes cost units from the name's bucket when they fit now.  Calls on one
 * name serialise on its row until the caller's transaction ends; the time
 * is the server's clock once the row is locked.  cost = 0 takes nothing
 * and reads the state as a SELECT would, without waiting.
 */
Datum
entitlock_rate_limit(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = entitlock_init_srf(fcinfo);
	text	   *name;
	RateLimit	limit;
	EntitlockTable t;
	Datum		row[STATE_NATTS];
	bool		row_nulls[STATE_NATTS] = {false, false};
	RateDecision d;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};
	bool		found = false;
	TimestampTz tat = 0;
	ItemPointerData tid;
	int64		create_key;

	name = entitlock_name_arg(fcinfo, 0, &name_messages);
	limit = limit_args(fcinfo, 1);
	row[0] = PointerGetDatum(name);
	entitlock_stats_begin();

	if (limit.cost == 0)
	{
		/* A peek: the state as the statement's snapshot sees it. */
		entitlock_table_open(&t, &state_def, AccessShareLock);
		if (entitlock_table_probe(&t, ActiveSnapshotSet() ?
								  GetActiveSnapshot() :
								  GetTransactionSnapshot(), row))
		{
			found = true;
			tat = DatumGetTimestampTz(t.slot->tts_values[STATE_TAT]);
		}
		entitlock_table_close(&t);
		d = gcra_decide(&limit, found, tat, GetCurrentTimestamp());
		count_rate_call(name, &d);
		decision_values(&d, values, nulls);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		return (Datum) 0;
	}

	entitlock_begin_write("rate_limit()");

	entitlock_table_open(&t, &state_def, RowExclusiveLock);
	entitlock_table_prepare_writes(&t);
	CommandCounterIncrement();

	/* Lock the name's row, or make sure no one else creates it first. */
	create_key = (int64) entitlock_hash_bytes(VARDATA_ANY(name),
											  VARSIZE_ANY_EXHDR(name),
											  RATE_CREATE_LOCK_SEED);
	found = entitlock_table_lock_or_create(&t, row, create_key);
	if (found)
	{
		tid = t.oldslot->tts_tid;
		tat = DatumGetTimestampTz(t.oldslot->tts_values[STATE_TAT]);
	}

	/* The clock is read once the call holds the name. */
	d = gcra_decide(&limit, found, tat, GetCurrentTimestamp());
	if (d.allowed)
	{
		row[STATE_TAT] = TimestampTzGetDatum(d.tat);
		if (found)
			entitlock_table_update(&t, &tid, row, row_nulls,
								   ENTITLOCK_COLUMN(STATE_TAT));
		else
			entitlock_table_create(&t, row, row_nulls, create_key);
	}
	else if (!found)
	{
		/* Nothing created: the claim was needed only for the decision. */
		entitlock_release_internal(create_key, ExclusiveLock);
	}
	entitlock_table_close(&t);
	count_rate_call(name, &d);

	decision_values(&d, values, nulls);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}

/*
 * entitlock.gcra(tat timestamptz, at timestamptz, rate bigint,
 *	   per interval, burst bigint DEFAULT NULL, cost bigint DEFAULT 1)
 * returns table (allowed boolean, remaining bigint, retry_after interval,
 *	   reset_after interval, tat timestamptz)
 *
 * What rate_limit() decides for a name whose stored state is tat (NULL:
 * no row, a full bucket) when it decides at "at", and the state it then
 * stores.  Pure arithmetic; stores nothing.
 */
Datum
entitlock_gcra(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = entitlock_init_srf(fcinfo);
	RateLimit	limit;
	TimestampTz at;
	RateDecision d;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	entitlock_require_arg(fcinfo, 1, "at must not be null");
	at = PG_GETARG_TIMESTAMPTZ(1);
	limit = limit_args(fcinfo, 2);
	if (TIMESTAMP_NOT_FINITE(at) ||
		(!PG_ARGISNULL(0) && TIMESTAMP_NOT_FINITE(PG_GETARG_TIMESTAMPTZ(0))) ||
		!IS_VALID_TIMESTAMP(at + 2 * RATE_MAX_WINDOW_USECS))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));

	d = gcra_decide(&limit, !PG_ARGISNULL(0),
					PG_ARGISNULL(0) ? 0 : PG_GETARG_TIMESTAMPTZ(0), at);
	decision_values(&d, values, nulls);
	values[4] = TimestampTzGetDatum(d.tat);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}
