/*-------------------------------------------------------------------------
 *
 * usage.h
 *	  Declarations shared by the files of usage limits, and by them only.
 *
 * usage.c		the SQL entry points and their argument checks
 * usage_counter.c	the counters: locking meters, deciding, writing
 * usage_keys.c	the idempotency keys of usage calls and their refunds
 * usage_limits.c	entitlock.usage_limit values and arrays of them
 *
 * How calls on one meter serialise is described once, in usage.c's header.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ENTITLOCK_USAGE_H
#define ENTITLOCK_USAGE_H

#include "locks.h"
#include "periods.h"
#include "stats.h"
#include "table.h"
#include "util.h"

/* At most this many limits in one record_usage_if_under_limits() call. */
#define USAGE_MAX_LIMITS 100

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

/* usage.c: argument checks, a meter's period */
extern const EntitlockNameMessages usage_subject_messages;
extern const EntitlockNameMessages usage_feature_messages;
extern int64 usage_limit_value(Datum value, bool isnull);
extern void compute_period(UsageMeter *meter, const UsagePeriod *period,
						   TimestampTz at);

/* usage_counter.c */
extern EntitlockTableDef usage_counter_def;
extern void usage_meter_call_init(MeterCall *call, int position,
								  int64 limit);
extern int	usage_cmp_meters(const void *a, const void *b);
extern bool usage_same_text(text *a, text *b);
extern bool usage_same_pair(const UsageMeter *a, const UsageMeter *b);
extern void usage_lock_meters(MeterCall *calls, int n);
extern void usage_lock_counter(EntitlockTable *counter, MeterCall *call);
extern void usage_decide(MeterCall *call, int64 amount, bool conditional);
extern void usage_write_counter(EntitlockTable *counter, MeterCall *call);
extern void usage_record_meter(EntitlockTable *counter, MeterCall *call,
							   int64 amount, bool conditional);
extern int64 usage_read(const UsageMeter *meter);
extern int64 usage_give_back(EntitlockTable *counter, MeterCall *call,
							 const UsagePeriod *period,
							 TimestampTz recorded_at, int64 amount);

/* usage_keys.c: keys of single-meter calls */
extern EntitlockTableDef usage_key_def;

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

extern void usage_lock_key(text *key);
extern IdempotentRecord usage_key_lookup(EntitlockTable *idem,
										 const UsageMeter *meter, text *key);
extern void usage_key_check_same(const IdempotentRecord *rec,
								 const UsageMeter *meter, int64 amount,
								 text *key);
extern void usage_key_check_not_set_key(text *key, const UsageMeter *meter);
extern void usage_key_store(EntitlockTable *idem, const MeterCall *call,
							text *key, int64 amount);
extern bool usage_key_mark_refunded(EntitlockTable *idem,
									const IdempotentRecord *rec);

/* usage_keys.c: keys of calls on several meters */
extern EntitlockTableDef usage_setkey_def;

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

extern SetRecord usage_setkey_lookup(EntitlockTable *sk, text *key);
extern int *usage_setkey_match(const SetRecord *rec, MeterCall *calls, int n,
							   int64 amount, text *key);
extern void usage_setkey_check_not_single_key(text *key, MeterCall **sorted,
											  int n);
extern void usage_setkey_store(EntitlockTable *sk, MeterCall *calls, int n,
							   text *key, int64 amount);
extern int64 usage_refund_set(EntitlockTable *counter, MeterCall *call,
							  text *key);

/* usage_limits.c */
extern MeterCall *usage_limits_arg(FunctionCallInfo fcinfo, int argno,
								   int *n);

#endif							/* ENTITLOCK_USAGE_H */
