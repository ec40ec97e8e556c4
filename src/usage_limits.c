/*-------------------------------------------------------------------------
 *
 * usage_limits.c
 *	  Values of the row type entitlock.usage_limit: the SQL function
 *	  entitlock.usage_limit that makes one, and the taking apart of the
 *	  array of them that record_usage_if_under_limits() is given.
 *
 * Each field is checked as record_usage_if_under_limit() checks the
 * argument it stands for (usage.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "usage.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/typcache.h"

PG_FUNCTION_INFO_V1(entitlock_usage_limit);

/* The fields of the row type entitlock.usage_limit, as this code reads it. */
#define LIMIT_SUBJECT 0
#define LIMIT_FEATURE 1
#define LIMIT_USAGE_LIMIT 2
#define LIMIT_PERIOD 3
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

	call->meter.subject = entitlock_name_value(fields[LIMIT_SUBJECT],
											   isnull[LIMIT_SUBJECT],
											   &usage_subject_messages);
	call->meter.feature = entitlock_name_value(fields[LIMIT_FEATURE],
											   isnull[LIMIT_FEATURE],
											   &usage_feature_messages);
	call->limit = usage_limit_value(fields[LIMIT_USAGE_LIMIT],
									isnull[LIMIT_USAGE_LIMIT]);
	entitlock_period_value(fields[LIMIT_PERIOD], isnull[LIMIT_PERIOD],
						   &period);
	compute_period(&call->meter, &period,
				   GetCurrentTransactionStartTimestamp());
}

/* Take the limits array apart; *n gets its length. */
MeterCall *
usage_limits_arg(FunctionCallInfo fcinfo, int argno, int *n)
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

	entitlock_require_arg(fcinfo, argno, "limits must not be null");
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
		usage_meter_call_init(&calls[i], i, calls[i].limit);
	}
	error_context_stack = errcallback.previous;
	ReleaseTupleDesc(desc);

	/* The same meter twice is a caller's mistake. */
	sorted = palloc(sizeof(MeterCall *) * count);
	for (i = 0; i < count; i++)
		sorted[i] = &calls[i];
	qsort(sorted, count, sizeof(MeterCall *), usage_cmp_meters);
	for (i = 1; i < count; i++)
	{
		if (usage_cmp_meters(&sorted[i - 1], &sorted[i]) == 0)
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
	values[attnos[LIMIT_SUBJECT]] = PointerGetDatum(call.meter.subject);
	values[attnos[LIMIT_FEATURE]] = PointerGetDatum(call.meter.feature);
	values[attnos[LIMIT_USAGE_LIMIT]] = Int64GetDatum(call.limit);
	values[attnos[LIMIT_PERIOD]] = CStringGetTextDatum(call.meter.period.name);
	for (i = 0; i < LIMIT_NATTS; i++)
		nulls[attnos[i]] = false;
	desc = BlessTupleDesc(desc);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}
