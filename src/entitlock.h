/*-------------------------------------------------------------------------
 *
 * entitlock.h
 *	  Declarations shared between entitlock's source files.
 *
 * Only what at least two files need lives here: turning SQL text arguments
 * into lock keys (keys.c), taking transaction-scoped advisory locks on
 * those keys (locks.c), and reading and writing entitlock's own tables
 * (table.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef ENTITLOCK_H
#define ENTITLOCK_H

#include "fmgr.h"
#include "access/genam.h"
#include "access/tableam.h"
#include "nodes/execnodes.h"
#include "datatype/timestamp.h"
#include "nodes/lockoptions.h"
#include "storage/lockdefs.h"
#include "utils/uuid.h"

/* keys.c */
extern int64 entitlock_name_key(text *name);
extern int64 entitlock_pair_key(text *realm, text *entity);
extern uint64 entitlock_hash_bytes(const void *data, size_t len, uint64 seed);
extern void entitlock_require_arg(FunctionCallInfo fcinfo, int argno,
								  const char *what);
extern text *entitlock_text_arg(FunctionCallInfo fcinfo, int argno,
								const char *what);
extern text *entitlock_nonempty_text_arg(FunctionCallInfo fcinfo, int argno,
										 const char *what);
extern char *entitlock_text_for_message(text *t);
extern TimestampTz entitlock_expiry(TimestampTz now, Interval *ttl);
extern pg_uuid_t *entitlock_random_uuid(void);
extern Interval *entitlock_ttl_arg(FunctionCallInfo fcinfo, int argno,
								   const Interval *max, const char *max_text);

/* locks.c */
extern bool entitlock_acquire(int64 key, LOCKMODE mode, bool wait);
extern bool entitlock_acquire_timeout(int64 key, LOCKMODE mode,
									 int timeout_ms);
extern bool entitlock_wait_for_xact(TransactionId xid, int timeout_ms);
extern int	entitlock_interval_ms(Interval *span, const char *what);
extern void entitlock_release(int64 key, LOCKMODE mode);
extern void entitlock_acquire_recording(const int64 *keys, int nkeys);
extern void entitlock_locks_init(void);

/* The advisory lock tag field that marks entitlock's internal locks. */
#define ENTITLOCK_INTERNAL_LOCKS 3
extern void entitlock_acquire_internal(int64 key, LOCKMODE mode);
extern void entitlock_release_internal(int64 key, LOCKMODE mode);

/* locks.c, for lock tags of other files' own (1.2, slots.c) */
struct LOCKTAG;
extern bool entitlock_wait_tag(const struct LOCKTAG *tag, LOCKMODE mode,
							   int timeout_ms);

/* stats.c */
typedef enum EntitlockStatsKind
{
	ENTITLOCK_STATS_LOCK,
	ENTITLOCK_STATS_USAGE,
	ENTITLOCK_STATS_RATE,
	ENTITLOCK_STATS_IDEMPOTENCY,
	ENTITLOCK_STATS_LEASE,
	ENTITLOCK_STATS_SLOT		/* 1.2: lock_slot, lease_acquire_slot, and
								 * lease_renew/release of a slot lease */
} EntitlockStatsKind;
#define ENTITLOCK_STATS_NKINDS 6

/* What a counted call found, for entitlock_stats_count()'s flags. */
#define ENTITLOCK_STATS_TIMEOUT 0x01
#define ENTITLOCK_STATS_DENIED 0x02
#define ENTITLOCK_STATS_REPLAY 0x04
#define ENTITLOCK_STATS_TAKEOVER 0x08

/* Non-NULL once statistics are in shared memory (the library preloaded). */
extern struct EntitlockStatsShared *entitlock_stats_shared;
#define entitlock_stats_on() (entitlock_stats_shared != NULL)
extern void entitlock_stats_begin(void);
extern void entitlock_stats_waited(TimestampTz start);
extern void entitlock_stats_add(int kind, text *name, bool whole_label,
								int flags);

/*
 * Count a call of kind on name (see stats.c); without the preload, this
 * test is all it costs.
 */
static inline void
entitlock_stats_count(int kind, text *name, bool whole_label, int flags)
{
	if (entitlock_stats_on())
		entitlock_stats_add(kind, name, whole_label, flags);
}

/* table.c */
#define ENTITLOCK_MAX_INDEX_KEYS 4
#define ENTITLOCK_MAX_INDEXES 2

/*
 * A btree index over some of a table's columns, in order.  Where an older
 * version of the extension made a different index for the same lookups
 * (the same leading columns), older describes it: until ALTER EXTENSION
 * UPDATE replaces it, the code reads through that one.
 */
typedef struct EntitlockIndexDef
{
	const char *name;
	bool		unique;
	int			nkeys;
	AttrNumber	keys[ENTITLOCK_MAX_INDEX_KEYS]; /* 1-based column numbers */
	const struct EntitlockIndexDef *older;
	Oid			indexid;		/* cached; InvalidOid until looked up */
	const struct EntitlockIndexDef *layout; /* cached: this one or older */
} EntitlockIndexDef;

/*
 * One of entitlock's tables as the code reads and writes it: its name in
 * schema entitlock, column types in order, and the indexes the code scans.
 * Columns past min_natts were added by a later version of the extension:
 * until ALTER EXTENSION UPDATE adds them, the table has only the first
 * min_natts, and writes leave the others out.  Where table and indexes are
 * is looked up once per backend and forgotten when any of them is
 * invalidated (altered, dropped, or the extension recreated).
 */
typedef struct EntitlockTableDef
{
	const char *relname;
	const Oid  *types;
	int			natts;
	int			min_natts;
	int			nindexes;
	EntitlockIndexDef indexes[ENTITLOCK_MAX_INDEXES];
	Oid			relid;			/* cached; InvalidOid until looked up */
	bool		known;
	struct EntitlockTableDef *next;
} EntitlockTableDef;

/*
 * An open table: the heap, the indexes it is read through, a slot for
 * reading rows and, once something is written, the executor state that
 * writes go through (see table.c).
 */
typedef struct EntitlockTable
{
	EntitlockTableDef *def;
	Relation	heap;
	Relation	index[ENTITLOCK_MAX_INDEXES];
	TupleTableSlot *slot;
	struct EState *estate;
	struct ResultRelInfo *rri;
	EPQState	epqstate;
	struct Bitmapset **updated_cols;
	TupleTableSlot *newslot;	/* the row being written */
	TupleTableSlot *oldslot;	/* the row being changed */
	TupleTableSlot *plainslot;	/* entitlock_table_try_update()'s row */
} EntitlockTable;

/* The bit for 0-based column n in entitlock_table_update()'s changed. */
#define ENTITLOCK_COLUMN(n) ((uint32) 1 << (n))

extern void entitlock_table_open(EntitlockTable *t, EntitlockTableDef *def,
								 LOCKMODE lockmode);
extern void entitlock_table_close(EntitlockTable *t);
extern IndexScanDesc entitlock_table_scan(EntitlockTable *t, int indexno,
										  Snapshot snapshot,
										  StrategyNumber strategy, int nkeys,
										  const Datum *keyvals);
extern bool entitlock_table_probe(EntitlockTable *t, Snapshot snapshot,
								  const Datum *keyvals);
extern bool entitlock_table_probe_stable(EntitlockTable *t,
										 const Datum *keyvals);
extern bool entitlock_datum_equals_text(Datum stored, text *t);
extern bool entitlock_next_row_with_text(EntitlockTable *t,
										 IndexScanDesc scan, int attno,
										 text *value);
extern bool entitlock_slot_is_mine(TupleTableSlot *slot);
extern void entitlock_check_visible_to_transaction(TupleTableSlot *slot);
extern void entitlock_serialization_failure(void);
extern void entitlock_table_prepare_writes(EntitlockTable *t);
extern void entitlock_table_insert(EntitlockTable *t, Datum *values,
								   bool *nulls);
extern TM_Result entitlock_table_lock_row(EntitlockTable *t, ItemPointer tid,
										  LockTupleMode mode, bool wait,
										  bool latest);
extern bool entitlock_table_lock_or_create(EntitlockTable *t,
										   const Datum *keyvals,
										   int64 create_key);
extern bool entitlock_table_claim_creation(EntitlockTable *t,
										   const Datum *keyvals,
										   int64 create_key);
extern void entitlock_table_create(EntitlockTable *t, Datum *values,
								   bool *nulls, int64 create_key);
extern void entitlock_table_update(EntitlockTable *t, ItemPointer otid,
								   Datum *values, bool *nulls,
								   uint32 changed);
extern bool entitlock_table_can_try_update(EntitlockTable *t);
extern bool entitlock_slot_being_changed(TupleTableSlot *slot);
extern TM_Result entitlock_table_try_update(EntitlockTable *t,
											ItemPointer otid, Datum *values,
											bool *nulls, uint32 changed);
extern void entitlock_table_delete(EntitlockTable *t, ItemPointer tid);
extern ReturnSetInfo *entitlock_materialize_resultinfo(FunctionCallInfo fcinfo);
extern void entitlock_return_one_row(FunctionCallInfo fcinfo,
									 ReturnSetInfo *rsinfo,
									 Datum *values, bool *nulls);
extern void entitlock_return_no_rows(FunctionCallInfo fcinfo,
									 ReturnSetInfo *rsinfo);
extern void entitlock_return_rows(FunctionCallInfo fcinfo,
								  ReturnSetInfo *rsinfo, int nrows,
								  int ncols, Datum *values, bool *nulls);

#endif							/* ENTITLOCK_H */
