/*-------------------------------------------------------------------------
 *
 * usage_keys.c
 *	  The idempotency keys of usage calls: entitlock.usage_idempotency for
 *	  calls on one meter, entitlock.usage_limits_idempotency for calls on
 *	  several, each row holding the decision its call got, so that a retry
 *	  is answered without recording again; and the refunds that undo a
 *	  keyed call once.
 *
 * Every writer of a key holds the key's internal lock (usage_lock_key()),
 * so a probe under it sees the key's final state.  Rows are found as
 * usage.c's header describes (SnapshotSelf, then a visibility check).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "usage.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* Seed of the keys' internal lock keys; any fixed value, never changed. */
#define KEY_LOCK_SEED		UINT64CONST(0x656e746c6f636b31)

/* entitlock.usage_idempotency, 0-based column numbers */
#define IDEM_SUBJECT 0
#define IDEM_FEATURE 1
#define IDEM_KEY 2
#define IDEM_PERIOD 3
#define IDEM_AMOUNT 4
#define IDEM_ALLOWED 5
#define IDEM_USED 6
#define IDEM_PERIOD_END 7
#define IDEM_RECORDED_AT 8
#define IDEM_REFUNDED_AT 9		/* added in 1.1 */
#define IDEM_NATTS 10

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

EntitlockTableDef usage_key_def = {
	"usage_idempotency", idem_types, IDEM_NATTS, IDEM_NATTS - 1, 1,
	{{"usage_idempotency_pkey", true, 3, {IDEM_SUBJECT + 1, IDEM_FEATURE + 1,
	IDEM_KEY + 1}}}
};

/*
 * entitlock.usage_limits_idempotency (1.1): one row per
 * record_usage_if_under_limits() call with a key, 0-based column numbers
 */
#define SETKEY_KEY 0
#define SETKEY_AMOUNT 1
#define SETKEY_SUBJECTS 2
#define SETKEY_FEATURES 3
#define SETKEY_PERIODS 4
#define SETKEY_ALLOWED 5
#define SETKEY_USED 6
#define SETKEY_PERIOD_ENDS 7
#define SETKEY_REFUNDED 8
#define SETKEY_RECORDED_AT 9
#define SETKEY_NATTS 10

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

EntitlockTableDef usage_setkey_def = {
	"usage_limits_idempotency", setkey_types, SETKEY_NATTS, SETKEY_NATTS, 1,
	{{"usage_limits_idempotency_pkey", true, 1, {SETKEY_KEY + 1}}}
};

/* Serialise every call using this idempotency key. */
void
usage_lock_key(text *key)
{
	entitlock_acquire_internal((int64)
							   entitlock_hash_bytes(VARDATA_ANY(key),
													VARSIZE_ANY_EXHDR(key),
													KEY_LOCK_SEED),
							   ExclusiveLock);
}

/*
 * Idempotency keys of single-meter calls
 */

static void
idempotency_values(const UsageMeter *meter, text *key, Datum *values,
				   bool *nulls)
{
	values[IDEM_SUBJECT] = PointerGetDatum(meter->subject);
	values[IDEM_FEATURE] = PointerGetDatum(meter->feature);
	values[IDEM_KEY] = PointerGetDatum(key);
	memset(nulls, 0, sizeof(bool) * IDEM_NATTS);
}

/* What an earlier call with this idempotency key recorded, if any. */
IdempotentRecord
usage_key_lookup(EntitlockTable *idem, const UsageMeter *meter, text *key)
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
		entitlock_period_stored(cols[IDEM_PERIOD], usage_key_def.relname,
								&rec.period);
		rec.amount = DatumGetInt64(cols[IDEM_AMOUNT]);
		rec.allowed = DatumGetBool(cols[IDEM_ALLOWED]);
		rec.used = DatumGetInt64(cols[IDEM_USED]);
		rec.recorded_at = DatumGetTimestampTz(cols[IDEM_RECORDED_AT]);
		rec.refunded = slot->tts_tupleDescriptor->natts > IDEM_REFUNDED_AT &&
			!slot->tts_isnull[IDEM_REFUNDED_AT];
		rec.tid = slot->tts_tid;
	}
	ExecClearTuple(idem->slot);
	return rec;
}

/*
 * A retry must ask for what the first call asked for; anything else is a
 * client bug that answering with the old outcome would hide.  The limit is
 * not compared: a plan may change between a call and its retry.
 */
void
usage_key_check_same(const IdempotentRecord *rec, const UsageMeter *meter,
					 int64 amount, text *key)
{
	if (rec->amount != amount ||
		!entitlock_period_equal(&rec->period, &meter->period))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency key \"%s\" was already used with a different request",
						entitlock_text_for_message(key)),
				 errdetail("The first call recorded amount " INT64_FORMAT " for period \"%s\"; this call asks for amount " INT64_FORMAT " for period \"%s\".",
						   rec->amount, rec->period.name,
						   amount, meter->period.name)));
}

/*
 * Under the key's lock the probe has just seen that the key is free, and
 * every writer of the key holds that lock, so the insert cannot conflict.
 */
void
usage_key_store(EntitlockTable *idem, const MeterCall *call, text *key,
				int64 amount)
{
	Datum		values[IDEM_NATTS];
	bool		nulls[IDEM_NATTS];

	idempotency_values(&call->meter, key, values, nulls);
	values[IDEM_PERIOD] = CStringGetTextDatum(call->meter.period.name);
	values[IDEM_AMOUNT] = Int64GetDatum(amount);
	values[IDEM_ALLOWED] = BoolGetDatum(call->allowed);
	values[IDEM_USED] = Int64GetDatum(call->new_used);
	values[IDEM_PERIOD_END] = TimestampTzGetDatum(call->meter.period_end);
	nulls[IDEM_PERIOD_END] = !call->meter.has_end;
	values[IDEM_RECORDED_AT] =
		TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
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

/* Is the table there?  It is not in a 1.0 database not yet updated. */
static bool
setkey_table_exists(void)
{
	return OidIsValid(get_relname_relid(usage_setkey_def.relname,
										get_namespace_oid("entitlock", false)));
}

static void
setkey_layout_error(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("table \"entitlock.%s\" holds arrays of different lengths",
					usage_setkey_def.relname)));
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

/* What an earlier set call with this key recorded, if any. */
SetRecord
usage_setkey_lookup(EntitlockTable *sk, text *key)
{
	SetRecord	rec = {0};
	Datum		keyval = PointerGetDatum(key);

	rec.found = entitlock_table_probe(sk, SnapshotSelf, &keyval);
	if (rec.found)
	{
		TupleTableSlot *slot = sk->slot;
		Datum	   *cols = slot->tts_values;
		ArrayType  *subjects = DatumGetArrayTypeP(cols[SETKEY_SUBJECTS]);

		entitlock_check_visible_to_transaction(slot);
		rec.amount = DatumGetInt64(cols[SETKEY_AMOUNT]);
		rec.n = ArrayGetNItems(ARR_NDIM(subjects), ARR_DIMS(subjects));
		rec.subjects = stored_array(cols[SETKEY_SUBJECTS], TEXTOID, rec.n,
									NULL);
		rec.features = stored_array(cols[SETKEY_FEATURES], TEXTOID, rec.n,
									NULL);
		rec.periods = stored_array(cols[SETKEY_PERIODS], TEXTOID, rec.n,
								   NULL);
		rec.allowed = stored_array(cols[SETKEY_ALLOWED], BOOLOID, rec.n,
								   NULL);
		rec.used = stored_array(cols[SETKEY_USED], INT8OID, rec.n, NULL);
		rec.period_ends = stored_array(cols[SETKEY_PERIOD_ENDS],
									   TIMESTAMPTZOID, rec.n,
									   &rec.period_end_nulls);
		rec.refunded = stored_array(cols[SETKEY_REFUNDED], BOOLOID, rec.n,
									NULL);
		rec.recorded_at = DatumGetTimestampTz(cols[SETKEY_RECORDED_AT]);
		rec.tid = slot->tts_tid;
	}
	ExecClearTuple(sk->slot);
	return rec;
}

/* Is element i of the stored set on meter's (subject, feature)? */
static bool
setkey_element_on_pair(const SetRecord *rec, int i, const UsageMeter *meter)
{
	return usage_same_text(DatumGetTextPP(rec->subjects[i]), meter->subject) &&
		usage_same_text(DatumGetTextPP(rec->features[i]), meter->feature);
}

/* Element i of a stored set: is it meter? */
static bool
setkey_element_is(const SetRecord *rec, int i, const UsageMeter *meter)
{
	UsagePeriod period;

	if (!setkey_element_on_pair(rec, i, meter))
		return false;
	entitlock_period_stored(rec->periods[i], usage_setkey_def.relname,
							&period);
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

/*
 * Store a set call's decisions under its key; as for usage_key_store(), the
 * key's lock makes the insert safe.
 */
void
usage_setkey_store(EntitlockTable *sk, MeterCall *calls, int n, text *key,
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
	values[SETKEY_KEY] = PointerGetDatum(key);
	values[SETKEY_AMOUNT] = Int64GetDatum(amount);
	values[SETKEY_SUBJECTS] = build_array(cols[0], NULL, n, TEXTOID);
	values[SETKEY_FEATURES] = build_array(cols[1], NULL, n, TEXTOID);
	values[SETKEY_PERIODS] = build_array(cols[2], NULL, n, TEXTOID);
	values[SETKEY_ALLOWED] = build_array(cols[3], NULL, n, BOOLOID);
	values[SETKEY_USED] = build_array(cols[4], NULL, n, INT8OID);
	values[SETKEY_PERIOD_ENDS] = build_array(cols[5], end_nulls, n,
											 TIMESTAMPTZOID);
	values[SETKEY_REFUNDED] = build_array(cols[6], NULL, n, BOOLOID);
	values[SETKEY_RECORDED_AT] =
		TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	entitlock_table_insert(sk, values, nulls);
}

/*
 * A retry of a set call must name the same meters (in any order) and the
 * same amount.  Returns, for each of calls, its element in rec.
 */
int *
usage_setkey_match(const SetRecord *rec, MeterCall *calls, int n,
				   int64 amount, text *key)
{
	int		   *match = palloc(sizeof(int) * n);
	int			i;
	int			j;

	if (rec->amount != amount)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency key \"%s\" was already used with a different request",
						entitlock_text_for_message(key)),
				 errdetail("The first call recorded amount " INT64_FORMAT "; this call asks for amount " INT64_FORMAT ".",
						   rec->amount, amount)));
	if (rec->n != n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency key \"%s\" was already used with a different request",
						entitlock_text_for_message(key)),
				 errdetail("The first call named %d usage limits; this call names %d.",
						   rec->n, n)));
	for (i = 0; i < n; i++)
	{
		for (j = 0; j < rec->n; j++)
		{
			if (setkey_element_is(rec, j, &calls[i].meter))
				break;
		}
		if (j == rec->n)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("idempotency key \"%s\" was already used with a different request",
							entitlock_text_for_message(key)),
					 errdetail("The first call did not name subject \"%s\", feature \"%s\", period \"%s\".",
							   entitlock_text_for_message(calls[i].meter.subject),
							   entitlock_text_for_message(calls[i].meter.feature),
							   calls[i].meter.period.name)));
		match[i] = j;
	}
	return match;
}

/*
 * A set call's key may not be the key of a single-meter call on one of its
 * pairs; sorted holds the call's meters in canonical order, so that the
 * meters of one pair are neighbours.
 */
void
usage_setkey_check_not_single_key(text *key, MeterCall **sorted, int n)
{
	EntitlockTable idem;
	int			i;

	entitlock_table_open(&idem, &usage_key_def, AccessShareLock);
	for (i = 0; i < n; i++)
	{
		if (i > 0 && usage_same_pair(&sorted[i - 1]->meter, &sorted[i]->meter))
			continue;
		if (usage_key_lookup(&idem, &sorted[i]->meter, key).found)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("idempotency key \"%s\" was already used with a different request",
							entitlock_text_for_message(key)),
					 errdetail("It is the key of a single-limit call on subject \"%s\", feature \"%s\".",
							   entitlock_text_for_message(sorted[i]->meter.subject),
							   entitlock_text_for_message(sorted[i]->meter.feature))));
	}
	entitlock_table_close(&idem);
}

/*
 * A single-meter call's key may not be the key of a set call on its
 * (subject, feature).
 */
void
usage_key_check_not_set_key(text *key, const UsageMeter *meter)
{
	EntitlockTable sk;
	SetRecord	set;

	if (!setkey_table_exists())
		return;
	entitlock_table_open(&sk, &usage_setkey_def, AccessShareLock);
	set = usage_setkey_lookup(&sk, key);
	if (set.found && setkey_has_pair(&set, meter))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency key \"%s\" was already used with a different request",
						entitlock_text_for_message(key)),
				 errdetail("It is the key of a record_usage_if_under_limits() call on this subject and feature.")));
	entitlock_table_close(&sk);
}

/*
 * Refunds
 */

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
int64
usage_refund_set(EntitlockTable *counter, MeterCall *call, text *key)
{
	EntitlockTable sk;
	SetRecord	set;
	int64		given = 0;
	bool		due = false;
	int			i;

	if (!setkey_table_exists())
		return 0;
	entitlock_table_open(&sk, &usage_setkey_def, RowExclusiveLock);
	entitlock_table_prepare_writes(&sk);
	set = usage_setkey_lookup(&sk, key);

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
				entitlock_period_stored(set.periods[i],
										usage_setkey_def.relname,
										&periods[ndue++]);
		}
		qsort(periods, ndue, sizeof(UsagePeriod), cmp_periods);
		for (i = 0; i < ndue; i++)
		{
			int64		g = usage_give_back(counter, call, &periods[i],
											set.recorded_at, set.amount);

			given = Max(given, g);
		}
	}
	entitlock_table_close(&sk);
	return given;
}

/*
 * Mark a single-meter call's key refunded, when it recorded something not
 * refunded yet and its row is still there; returns whether it did, and so
 * whether the caller is to give the amount back.
 */
bool
usage_key_mark_refunded(EntitlockTable *idem, const IdempotentRecord *rec)
{
	TupleTableSlot *slot;
	Datum		values[IDEM_NATTS];
	bool		nulls[IDEM_NATTS];
	ItemPointerData tid = rec->tid;

	if (!rec->allowed || rec->amount <= 0 || rec->refunded ||
		!lock_key_row(idem, &tid))
		return false;
	slot = idem->oldslot;		/* the locked row */
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
	entitlock_table_update(idem, &tid, values, nulls,
						   ENTITLOCK_COLUMN(IDEM_REFUNDED_AT));
	return true;
}
