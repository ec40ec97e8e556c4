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
 * lock is granted are the tables read, with a snapshot taken then; see
 * check_visible_to_transaction() for REPEATABLE READ and SERIALIZABLE.
 *
 * The tables are not granted to anyone and are accessed beneath SQL; see
 * "Table access" below.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "entitlock.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
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
	text	   *name = entitlock_text_arg(fcinfo, argno, what);
	int			len = VARSIZE_ANY_EXHDR(name);

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
			 errmsg("unrecognized period \"%s\"", name),
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
 * Table access
 *
 * The tables are read and written through the heap and btree access
 * methods directly, not through SQL: a decision is then one index probe and
 * one heap update, with nothing to parse, plan or start up, and a hot
 * pair's lock is held for as short a time as possible.  Working beneath the
 * executor means doing here what it would do: lock the relations, add
 * index entries when an update cannot be HOT, and fail with
 * serialization_failure where it would.  It also means no privilege checks
 * apply, which is the intent: EXECUTE on a function is the permission, and
 * no role needs or gets rights on the tables themselves.
 */

#define COUNTER_NATTS 6
#define COUNTER_NKEYS 4
#define COUNTER_USED 5			/* 0-based column numbers */

#define IDEM_NATTS 9
#define IDEM_NKEYS 3

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

/* A usage table, its primary key (over its leading columns) and a slot. */
typedef struct UsageTable
{
	Relation	heap;
	Relation	index;
	int			nkeys;
	TupleTableSlot *slot;
} UsageTable;

/*
 * A usage table as this code writes it: names, column types, how many
 * leading columns its primary key covers, and where table and key are
 * (looked up once per backend, forgotten when either is invalidated:
 * altered, dropped, or the extension recreated).
 */
typedef struct UsageTableDef
{
	const char *relname;
	const char *indexname;
	const Oid  *types;
	int			natts;
	int			nkeys;
	Oid			relid;
	Oid			indexid;
} UsageTableDef;

static UsageTableDef counter_def = {
	"usage_counter", "usage_counter_pkey",
	counter_types, COUNTER_NATTS, COUNTER_NKEYS
};
static UsageTableDef idem_def = {
	"usage_idempotency", "usage_idempotency_pkey",
	idem_types, IDEM_NATTS, IDEM_NKEYS
};

static void
forget_table_ids(Datum arg, Oid relid)
{
	UsageTableDef *all[] = {&counter_def, &idem_def};
	int			i;

	for (i = 0; i < (int) lengthof(all); i++)
	{
		if (!OidIsValid(relid) || relid == all[i]->relid ||
			relid == all[i]->indexid)
			all[i]->relid = all[i]->indexid = InvalidOid;
	}
}

static void
table_layout_error(const char *relname)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("table \"entitlock.%s\" is not as this version of entitlock created it",
					relname),
			 errhint("Update the extension with ALTER EXTENSION entitlock UPDATE, or reinstall it.")));
}

/*
 * Open a usage table and its primary key, checking that both still have
 * the layout the code below writes: it forms heap tuples and index entries
 * itself, so a column added or retyped behind its back must stop it rather
 * than be written wrongly.
 */
static void
usage_table_open(UsageTable *t, UsageTableDef *def, LOCKMODE lockmode)
{
	static bool callback_registered = false;
	const char *relname = def->relname;
	const Oid  *types = def->types;
	int			natts = def->natts;
	int			nkeys = def->nkeys;
	Oid			relid;
	TupleDesc	desc;
	Form_pg_index index;
	int			i;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(forget_table_ids, (Datum) 0);
		callback_registered = true;
	}
	if (!OidIsValid(def->relid) || !OidIsValid(def->indexid))
	{
		Oid			nspid = get_namespace_oid("entitlock", false);

		def->relid = get_relname_relid(def->relname, nspid);
		def->indexid = get_relname_relid(def->indexname, nspid);
		if (!OidIsValid(def->relid) || !OidIsValid(def->indexid))
			table_layout_error(relname);
	}
	relid = def->relid;
	t->heap = table_open(relid, lockmode);
	t->index = index_open(def->indexid, lockmode);
	t->nkeys = nkeys;

	desc = RelationGetDescr(t->heap);
	if (t->heap->rd_rel->relkind != RELKIND_RELATION ||
		t->heap->rd_rel->relam != HEAP_TABLE_AM_OID ||
		desc->natts != natts)
		table_layout_error(relname);
	for (i = 0; i < natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || att->atttypid != types[i] ||
			(types[i] == TEXTOID && att->attcollation != C_COLLATION_OID))
			table_layout_error(relname);
	}

	index = t->index->rd_index;
	if (index->indrelid != relid || !index->indisunique ||
		!index->indisvalid || index->indnatts != nkeys ||
		t->index->rd_rel->relam != BTREE_AM_OID)
		table_layout_error(relname);
	for (i = 0; i < nkeys; i++)
	{
		if (index->indkey.values[i] != i + 1)
			table_layout_error(relname);
	}

	t->slot = table_slot_create(t->heap, NULL);
}

/* Locks stay until the end of the transaction, as the executor's do. */
static void
usage_table_close(UsageTable *t)
{
	ExecDropSingleTupleTableSlot(t->slot);
	index_close(t->index, NoLock);
	table_close(t->heap, NoLock);
}

/*
 * Find the row whose key columns equal keyvals, as snapshot sees it, and
 * leave it in t->slot with all its columns extracted.  The snapshot is only
 * used during the call, so GetLatestSnapshot()'s needs no registering.
 */
static bool
usage_table_probe(UsageTable *t, Snapshot snapshot, const Datum *keyvals)
{
	TupleDesc	desc = RelationGetDescr(t->heap);
	ScanKeyData skey[INDEX_MAX_KEYS];
	IndexScanDesc scan;
	bool		found;
	int			i;

	for (i = 0; i < t->nkeys; i++)
	{
		bool		is_text = TupleDescAttr(desc, i)->atttypid == TEXTOID;

		ScanKeyEntryInitialize(&skey[i], 0, i + 1, BTEqualStrategyNumber,
							   InvalidOid,
							   is_text ? C_COLLATION_OID : InvalidOid,
							   is_text ? F_TEXTEQ : F_TIMESTAMPTZ_EQ,
							   keyvals[i]);
	}

	scan = index_beginscan(t->heap, t->index, snapshot, t->nkeys, 0);
	index_rescan(scan, skey, t->nkeys, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, t->slot);
	index_endscan(scan);

	if (found)
		slot_getallattrs(t->slot);
	return found;
}

/*
 * The probes read with a snapshot taken after the pair lock was granted,
 * which is what READ COMMITTED wants.  REPEATABLE READ and SERIALIZABLE
 * promise the transaction a single older snapshot; a row that snapshot
 * cannot see was committed since, and deciding on it would mix the two.
 * Fail the way UPDATE does on a row changed since the snapshot, so the
 * caller retries the transaction.
 */
static void
check_visible_to_transaction(UsageTable *t)
{
	HeapTuple	tuple;
	TransactionId xmin;
	bool		should_free;

	if (!IsolationUsesXactSnapshot())
		return;

	tuple = ExecFetchSlotHeapTuple(t->slot, false, &should_free);
	xmin = HeapTupleHeaderGetXmin(tuple->t_data);
	if (!TransactionIdIsCurrentTransactionId(xmin) &&
		XidInMVCCSnapshot(xmin, GetTransactionSnapshot()))
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not serialize access due to concurrent update")));
}

/* Add the index entry for a heap tuple at tid with the given columns. */
static void
usage_table_index(UsageTable *t, Datum *values, bool *nulls, ItemPointer tid,
				  bool update)
{
	(void) index_insert(t->index, values, nulls, tid, t->heap,
						UNIQUE_CHECK_YES,
#if PG_VERSION_NUM >= 140000
						update,
#endif
						BuildIndexInfo(t->index));
}

static void
usage_table_insert(UsageTable *t, Datum *values, bool *nulls)
{
	HeapTuple	tuple = heap_form_tuple(RelationGetDescr(t->heap), values, nulls);

	heap_insert(t->heap, tuple, GetCurrentCommandId(true), 0, NULL);
	usage_table_index(t, values, nulls, &tuple->t_self, false);
}

/*
 * Replace the row at otid.  Waits for a transaction still changing it
 * (only prune_usage() can be, as writers of a row hold its pair lock).
 */
static TM_Result
usage_table_update(UsageTable *t, ItemPointer otid, Datum *values,
				   bool *nulls)
{
	HeapTuple	tuple = heap_form_tuple(RelationGetDescr(t->heap), values, nulls);
	TM_FailureData tmfd;
	LockTupleMode lockmode;
	TM_Result	result;
	bool		new_index_entry;

#if PG_VERSION_NUM >= 160000
	TU_UpdateIndexes update_indexes;

	result = heap_update(t->heap, otid, tuple, GetCurrentCommandId(true),
						 InvalidSnapshot, true, &tmfd, &lockmode,
						 &update_indexes);
	new_index_entry = result == TM_Ok && update_indexes != TU_None;
#else
	result = heap_update(t->heap, otid, tuple, GetCurrentCommandId(true),
						 InvalidSnapshot, true, &tmfd, &lockmode);
	new_index_entry = result == TM_Ok && !HeapTupleIsHeapOnly(tuple);
#endif

	if (new_index_entry)
		usage_table_index(t, values, nulls, &tuple->t_self, true);
	return result;
}

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
idempotent_lookup(UsageTable *idem, const UsageMeter *meter, text *key)
{
	IdempotentRecord rec = {0};
	Datum		values[IDEM_NATTS];
	bool		nulls[IDEM_NATTS];

	idempotency_values(meter, key, values, nulls);

	rec.found = usage_table_probe(idem, GetLatestSnapshot(), values);

	if (rec.found)
	{
		Datum	   *cols = idem->slot->tts_values;
		int			period;

		check_visible_to_transaction(idem);
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
						text_to_cstring(key)),
				 errdetail("The first call recorded amount " INT64_FORMAT " for period \"%s\"; this call asks for amount " INT64_FORMAT " for period \"%s\".",
						   rec->amount, period_names[rec->period],
						   amount, period_names[meter->period])));
}

/*
 * Under the pair lock the probe has just seen that the key is free, and
 * every writer of the key holds that lock, so the insert cannot conflict.
 */
static void
idempotent_store(UsageTable *idem, const UsageMeter *meter, text *key,
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
	usage_table_insert(idem, values, nulls);
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
	UsageTable	counter;
	UsageTable	idem;
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
	usage_table_open(&counter, &counter_def, RowExclusiveLock);
	if (key != NULL)
		usage_table_open(&idem, &idem_def, RowExclusiveLock);
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
			usage_table_close(&idem);
			usage_table_close(&counter);
			return rec.outcome;
		}
	}

	for (;;)
	{
		bool		found = usage_table_probe(&counter, GetLatestSnapshot(),
											  values);
		int64		used = 0;
		int64		new_used;
		ItemPointerData otid;

		if (found)
		{
			check_visible_to_transaction(&counter);
			used = DatumGetInt64(counter.slot->tts_values[COUNTER_USED]);
			otid = counter.slot->tts_tid;
		}
		/* The probe's buffer pin would keep the page from being pruned. */
		ExecClearTuple(counter.slot);

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
			break;
		values[COUNTER_USED] = Int64GetDatum(new_used);
		if (!found)
		{
			usage_table_insert(&counter, values, nulls);
			break;
		}
		if (usage_table_update(&counter, &otid, values, nulls) == TM_Ok)
			break;

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
	usage_table_close(&counter);

	if (key != NULL)
	{
		idempotent_store(&idem, meter, key, amount, &outcome);
		usage_table_close(&idem);
	}
	return outcome;
}

/* The meter's usage in its period as the active snapshot sees it. */
static int64
read_usage(const UsageMeter *meter)
{
	UsageTable	counter;
	Datum		values[COUNTER_NATTS];
	bool		nulls[COUNTER_NATTS];
	int64		used = 0;

	usage_table_open(&counter, &counter_def, AccessShareLock);
	counter_values(meter, values, nulls);
	if (usage_table_probe(&counter,
						  ActiveSnapshotSet() ? GetActiveSnapshot() :
						  GetTransactionSnapshot(),
						  values))
		used = DatumGetInt64(counter.slot->tts_values[COUNTER_USED]);
	usage_table_close(&counter);
	return used;
}

/*
 * Result rows
 */

/*
 * Check up front, before anything is locked or recorded, that the caller
 * can take a set back.
 */
static ReturnSetInfo *
materialize_resultinfo(FunctionCallInfo fcinfo)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set")));
	if (!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("materialize mode required, but it is not allowed in this context")));
	return rsinfo;
}

/* Return the single row values/nulls as the function's whole result set. */
static void
return_one_row(FunctionCallInfo fcinfo, ReturnSetInfo *rsinfo,
			   Datum *values, bool *nulls)
{
	TupleDesc	tupdesc;
	Tuplestorestate *store;
	MemoryContext oldcontext;

	oldcontext = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);

	/*
	 * The caller's expected row type, when it has one, spares a look at
	 * pg_proc.  The executor frees setDesc, so it gets a copy.
	 */
	if (rsinfo->expectedDesc != NULL)
		tupdesc = rsinfo->expectedDesc;
	else if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = CreateTupleDescCopy(tupdesc);
	store = tuplestore_begin_heap(false, false, work_mem);
	tuplestore_putvalues(store, tupdesc, values, nulls);
	MemoryContextSwitchTo(oldcontext);

	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = store;
	rsinfo->setDesc = tupdesc;
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
	ReturnSetInfo *rsinfo = materialize_resultinfo(fcinfo);
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
	return_one_row(fcinfo, rsinfo, values, nulls);
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
	ReturnSetInfo *rsinfo = materialize_resultinfo(fcinfo);
	UsageMeter	meter;
	UsagePeriod period = period_arg(fcinfo, 0);
	Datum		values[2];
	bool		nulls[2];

	entitlock_require_arg(fcinfo, 1, "timestamp");
	compute_period(&meter, period, PG_GETARG_TIMESTAMPTZ(1));

	values[0] = TimestampTzGetDatum(meter.period_start);
	values[1] = TimestampTzGetDatum(meter.period_end);
	nulls[0] = nulls[1] = !meter.has_end;
	return_one_row(fcinfo, rsinfo, values, nulls);
	return (Datum) 0;
}
