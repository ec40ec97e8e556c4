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
#include "storage/lockdefs.h"

/* keys.c */
extern int64 entitlock_name_key(text *name);
extern int64 entitlock_pair_key(text *realm, text *entity);
extern void entitlock_require_arg(FunctionCallInfo fcinfo, int argno,
								  const char *what);
extern text *entitlock_text_arg(FunctionCallInfo fcinfo, int argno,
								const char *what);
extern text *entitlock_nonempty_text_arg(FunctionCallInfo fcinfo, int argno,
										 const char *what);
extern char *entitlock_text_for_message(text *t);
extern TimestampTz entitlock_expiry(TimestampTz now, Interval *ttl);
extern Interval *entitlock_ttl_arg(FunctionCallInfo fcinfo, int argno,
								   const Interval *max, const char *max_text);

/* locks.c */
extern bool entitlock_acquire(int64 key, LOCKMODE mode, bool wait);
extern void entitlock_release(int64 key, LOCKMODE mode);

/* table.c */
#define ENTITLOCK_MAX_INDEX_KEYS 4
#define ENTITLOCK_MAX_INDEXES 2

/* A btree index over some of a table's columns, in order. */
typedef struct EntitlockIndexDef
{
	const char *name;
	bool		unique;
	int			nkeys;
	AttrNumber	keys[ENTITLOCK_MAX_INDEX_KEYS]; /* 1-based column numbers */
	Oid			indexid;		/* cached; InvalidOid until looked up */
} EntitlockIndexDef;

/*
 * One of entitlock's tables as the code writes it: its name in schema
 * entitlock, column types in order, and indexes.  Where table and indexes
 * are is looked up once per backend and forgotten when any of them is
 * invalidated (altered, dropped, or the extension recreated).
 */
typedef struct EntitlockTableDef
{
	const char *relname;
	const Oid  *types;
	int			natts;
	int			nindexes;
	EntitlockIndexDef indexes[ENTITLOCK_MAX_INDEXES];
	Oid			relid;			/* cached; InvalidOid until looked up */
	bool		known;
	struct EntitlockTableDef *next;
} EntitlockTableDef;

/* An open table: the heap, its indexes and a slot for reading rows. */
typedef struct EntitlockTable
{
	EntitlockTableDef *def;
	Relation	heap;
	Relation	index[ENTITLOCK_MAX_INDEXES];
	struct IndexInfo *info[ENTITLOCK_MAX_INDEXES];
	TupleTableSlot *slot;
} EntitlockTable;

extern void entitlock_table_open(EntitlockTable *t, EntitlockTableDef *def,
								 LOCKMODE lockmode);
extern void entitlock_table_close(EntitlockTable *t);
extern IndexScanDesc entitlock_table_scan(EntitlockTable *t, int indexno,
										  Snapshot snapshot,
										  StrategyNumber strategy, int nkeys,
										  const Datum *keyvals);
extern bool entitlock_table_probe(EntitlockTable *t, Snapshot snapshot,
								  const Datum *keyvals);
extern bool entitlock_datum_equals_text(Datum stored, text *t);
extern bool entitlock_next_row_with_text(EntitlockTable *t,
										 IndexScanDesc scan, int attno,
										 text *value);
extern bool entitlock_slot_is_mine(TupleTableSlot *slot);
extern void entitlock_check_visible_to_transaction(TupleTableSlot *slot);
extern void entitlock_table_insert(EntitlockTable *t, Datum *values,
								   bool *nulls);
extern TM_Result entitlock_table_update(EntitlockTable *t, ItemPointer otid,
										Datum *values, bool *nulls, bool wait);
extern TM_Result entitlock_table_delete(EntitlockTable *t, ItemPointer tid,
										bool wait);
extern ReturnSetInfo *entitlock_materialize_resultinfo(FunctionCallInfo fcinfo);
extern void entitlock_return_one_row(FunctionCallInfo fcinfo,
									 ReturnSetInfo *rsinfo,
									 Datum *values, bool *nulls);
extern void entitlock_return_no_rows(FunctionCallInfo fcinfo,
									 ReturnSetInfo *rsinfo);

#endif							/* ENTITLOCK_H */
