/*-------------------------------------------------------------------------
 *
 * table.h
 *	  entitlock's own tables as the features read and write them, beneath
 *	  SQL (table.c): the storage layer.  It knows nothing of entitlock's
 *	  locks or statistics; what it needs of them it gets through the hooks
 *	  below, which the module sets when it is loaded (entitlock.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef ENTITLOCK_TABLE_H
#define ENTITLOCK_TABLE_H

#include "access/genam.h"
#include "access/tableam.h"
#include "datatype/timestamp.h"
#include "nodes/execnodes.h"
#include "nodes/lockoptions.h"
#include "storage/lockdefs.h"

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
extern bool entitlock_table_find_or_claim(EntitlockTable *t,
										  const Datum *keyvals,
										  int64 create_key);
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

/*
 * What the storage layer needs from the layers above it, set once by
 * entitlock_table_set_hooks():
 *	lock_creation		take the internal lock create_key exclusively, until
 *						unlock_creation or the end of the transaction (see
 *						"Creating a row" in table.c)
 *	unlock_creation		give it back
 *	time_waits			whether waits for other transactions are timed
 *	waited				a wait that began at start has just ended
 */
typedef struct EntitlockTableHooks
{
	void		(*lock_creation) (int64 create_key);
	void		(*unlock_creation) (int64 create_key);
	bool		(*time_waits) (void);
	void		(*waited) (TimestampTz start);
} EntitlockTableHooks;

extern void entitlock_table_set_hooks(const EntitlockTableHooks *hooks);

#endif							/* ENTITLOCK_TABLE_H */
