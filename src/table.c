/*-------------------------------------------------------------------------
 *
 * table.c
 *	  Reading and writing entitlock's own tables beneath SQL: the storage
 *	  layer.  It calls nothing above it; the creation lock and the timing
 *	  of waits come through the hooks in table.h.
 *
 * Rows are read with direct index scans: a call is then an index probe,
 * with nothing to parse, plan or start up, and a hot key's lock is held for
 * as short a time as possible.  Rows are written through the executor's
 * single-row routines (see "Writing" below), so that entitlock's writes
 * obey every rule any other write to the table obeys: indexes, constraints,
 * row triggers and replica identity.  Neither path checks privileges on
 * the tables, which is the intent: EXECUTE on a function is the
 * permission, and no role needs or gets rights on the tables themselves.
 *
 * Each table is described once (EntitlockTableDef), with the columns and
 * indexes the code reads, and checked against the catalogs on every open:
 * a column dropped, added or retyped behind entitlock's back must stop it
 * rather than be read or written wrongly.  Indexes, constraints and
 * triggers an operator adds are fine; the writes maintain and obey them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "compat.h"
#include "executor/executor.h"
#include "executor/nodeModifyTable.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "storage/procarray.h"
#include "table.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

static void end_writes(EntitlockTable *t);

/* Set by _PG_init before any function runs (see table.h). */
static const EntitlockTableHooks *hooks = NULL;

void
entitlock_table_set_hooks(const EntitlockTableHooks *h)
{
	hooks = h;
}

/* Every table opened so far, so an invalidation can reach its cached OIDs. */
static EntitlockTableDef *known_tables = NULL;

static void
forget_table_ids(Datum arg, Oid relid)
{
	EntitlockTableDef *def;
	int			i;

	for (def = known_tables; def != NULL; def = def->next)
	{
		bool		hit = !OidIsValid(relid) || relid == def->relid;

		for (i = 0; i < def->nindexes; i++)
			hit |= relid == def->indexes[i].indexid;
		if (!hit)
			continue;
		def->relid = InvalidOid;
		for (i = 0; i < def->nindexes; i++)
			def->indexes[i].indexid = InvalidOid;
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
 * Where the table and its indexes are.  Looked up in schema entitlock once
 * per backend and cached in def.  The caller works on its own copies:
 * opening a relation can process invalidations, and forget_table_ids()
 * then clears def under its feet.
 */
static void
table_ids(EntitlockTableDef *def, Oid *relid, Oid *indexids)
{
	static bool callback_registered = false;
	Oid			nspid;
	int			i;

	if (OidIsValid(def->relid))
	{
		*relid = def->relid;
		for (i = 0; i < def->nindexes; i++)
			indexids[i] = def->indexes[i].indexid;
		return;
	}

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(forget_table_ids, (Datum) 0);
		callback_registered = true;
	}
	if (!def->known)
	{
		def->next = known_tables;
		known_tables = def;
		def->known = true;
	}

	nspid = get_namespace_oid("entitlock", false);
	*relid = get_relname_relid(def->relname, nspid);
	for (i = 0; i < def->nindexes; i++)
	{
		const EntitlockIndexDef *idef = &def->indexes[i];

		indexids[i] = get_relname_relid(idef->name, nspid);
		if (!OidIsValid(indexids[i]) && idef->older != NULL)
		{
			idef = idef->older;
			indexids[i] = get_relname_relid(idef->name, nspid);
		}
		if (!OidIsValid(indexids[i]))
			table_layout_error(def->relname);
		def->indexes[i].layout = idef;
	}
	if (!OidIsValid(*relid))
		table_layout_error(def->relname);

	for (i = 0; i < def->nindexes; i++)
		def->indexes[i].indexid = indexids[i];
	def->relid = *relid;
}

static void
check_index(EntitlockTableDef *def, const EntitlockIndexDef *idef,
			Relation index, Oid relid)
{
	Form_pg_index form = index->rd_index;
	int			i;

	if (form->indrelid != relid || form->indisunique != idef->unique ||
		!form->indisvalid || form->indnatts != idef->nkeys ||
		RelationGetForm(index)->relam != BTREE_AM_OID ||
		RelationGetIndexExpressions(index) != NIL ||
		RelationGetIndexPredicate(index) != NIL)
		table_layout_error(def->relname);
	for (i = 0; i < idef->nkeys; i++)
	{
		if (form->indkey.values[i] != idef->keys[i])
			table_layout_error(def->relname);
	}
}

/*
 * Open the table and its indexes with lockmode and check their layout.
 * Locks are kept until the end of the transaction, as the executor's are.
 */
void
entitlock_table_open(EntitlockTable *t, EntitlockTableDef *def,
					 LOCKMODE lockmode)
{
	TupleDesc	desc;
	Oid			relid;
	Oid			indexids[ENTITLOCK_MAX_INDEXES];
	int			i;

	table_ids(def, &relid, indexids);

	t->def = def;
	t->heap = table_open(relid, lockmode);
	desc = RelationGetDescr(t->heap);
	if (t->heap->rd_rel->relkind != RELKIND_RELATION ||
		t->heap->rd_rel->relam != HEAP_TABLE_AM_OID ||
		desc->natts < def->min_natts || desc->natts > def->natts)
		table_layout_error(def->relname);
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || att->atttypid != def->types[i] ||
			(def->types[i] == TEXTOID && att->attcollation != C_COLLATION_OID))
			table_layout_error(def->relname);
	}

	for (i = 0; i < def->nindexes; i++)
	{
		t->index[i] = index_open(indexids[i], lockmode);
		check_index(def, def->indexes[i].layout, t->index[i], relid);
	}
	t->slot = table_slot_create(t->heap, NULL);
	t->estate = NULL;
	t->plainslot = NULL;
}

void
entitlock_table_close(EntitlockTable *t)
{
	int			i;

	end_writes(t);
	ExecDropSingleTupleTableSlot(t->slot);
	if (t->plainslot != NULL)
		ExecDropSingleTupleTableSlot(t->plainslot);
	for (i = 0; i < t->def->nindexes; i++)
		index_close(t->index[i], NoLock);
	table_close(t->heap, NoLock);
}

/* The comparison function for a key column of type typid. */
static RegProcedure
scan_proc(Oid typid, StrategyNumber strategy)
{
	if (strategy == BTEqualStrategyNumber)
	{
		switch (typid)
		{
			case TEXTOID:
				return F_TEXTEQ;
			case INT8OID:
				return F_INT8EQ;
			case TIMESTAMPTZOID:
				return F_TIMESTAMPTZ_EQ;
		}
	}
	else if (strategy == BTLessStrategyNumber && typid == TIMESTAMPTZOID)
		return F_TIMESTAMPTZ_LT;
	elog(ERROR, "no scan function for type %u, strategy %d",
		 typid, (int) strategy);
	pg_unreachable();
}

/*
 * Start a scan of index indexno for rows whose first nkeys key columns
 * compare with keyvals by strategy, as snapshot sees them.  Fetch rows into
 * t->slot with index_getnext_slot(); end with index_endscan().  The
 * snapshot is only used while the scan is open, so GetLatestSnapshot()'s
 * needs no registering.
 */
IndexScanDesc
entitlock_table_scan(EntitlockTable *t, int indexno, Snapshot snapshot,
					 StrategyNumber strategy, int nkeys, const Datum *keyvals)
{
	const EntitlockIndexDef *idef = t->def->indexes[indexno].layout;
	ScanKeyData skey[ENTITLOCK_MAX_INDEX_KEYS];
	IndexScanDesc scan;
	int			i;

	Assert(nkeys <= idef->nkeys);
	for (i = 0; i < nkeys; i++)
	{
		Oid			typid = t->def->types[idef->keys[i] - 1];

		ScanKeyEntryInitialize(&skey[i], 0, i + 1, strategy, InvalidOid,
							   typid == TEXTOID ? C_COLLATION_OID : InvalidOid,
							   scan_proc(typid, strategy), keyvals[i]);
	}

	scan = compat_index_beginscan(t->heap, t->index[indexno], snapshot, nkeys, 0);
	index_rescan(scan, skey, nkeys, NULL, 0);
	return scan;
}

/*
 * Why the features read with SnapshotSelf
 *
 * A feature that looks for a key's row under that key's lock wants the
 * row as of now: committed versions and the transaction's own.
 * SnapshotSelf judges each version when the scan reaches it, which gives
 * that.  Unlike an MVCC snapshot it takes no SERIALIZABLE predicate locks,
 * which would sit on index pages that all keys share and make calls on
 * unrelated keys fail each other with serialization errors.  Where the
 * transaction's own snapshot matters (REPEATABLE READ, SERIALIZABLE), the
 * caller checks the row it found with
 * entitlock_check_visible_to_transaction(); where a row not found must
 * really be absent, entitlock_table_probe_stable() looks again.
 *
 * Buffer pins
 *
 * A row left in t->slot (or read through a scan) keeps its buffer pinned,
 * and a pinned page cannot be pruned: a hot row's page would fill with dead
 * versions.  So a caller clears the slot (ExecClearTuple) as soon as it has
 * read what it needs, before it waits or writes.
 */

/*
 * Find the row whose key in the first index (unique) equals keyvals, as
 * snapshot sees it, and leave it in t->slot with all its columns
 * extracted.
 */
bool
entitlock_table_probe(EntitlockTable *t, Snapshot snapshot,
					  const Datum *keyvals)
{
	IndexScanDesc scan;
	bool		found;

	Assert(t->def->indexes[0].layout->unique);
	scan = entitlock_table_scan(t, 0, snapshot, BTEqualStrategyNumber,
								t->def->indexes[0].layout->nkeys, keyvals);
	found = index_getnext_slot(scan, ForwardScanDirection, t->slot);
	index_endscan(scan);

	if (found)
		slot_getallattrs(t->slot);
	return found;
}

/*
 * Find the row whose key in the first index (unique) equals keyvals as a
 * snapshot taken now sees it, and leave it in t->slot with all its columns
 * extracted, as entitlock_table_probe() does; for a caller about to
 * conclude that the row is not there.
 *
 * A probe with SnapshotSelf (or a dirty snapshot) judges each version when
 * it reaches it, and that can miss a row that another transaction is
 * updating: an update that cannot stay on the page (not HOT, which a long
 * snapshot elsewhere makes common, as it keeps pages full of dead
 * versions) adds an index entry for the new version, and a probe that read
 * the index page before that entry was added, or reached the new version
 * while its updater was still running, reaches the old version once the
 * updater has committed: it sees no version at all.  Inserting then fails
 * with a unique violation.  Judged against one MVCC snapshot, exactly one
 * version of a row committed before the snapshot is visible, and its index
 * entry was there before the scan began.
 *
 * The scan itself is made with SnapshotAny and each version is judged here,
 * under its buffer's share lock as the heap's own scans judge them: an
 * index scan with an MVCC snapshot would take SERIALIZABLE predicate locks
 * on index pages that every key shares, which the SnapshotSelf probes avoid
 * so that calls on unrelated keys do not fail each other.  The version
 * found may have been changed since the snapshot; the caller's update or
 * row lock finds that out, as it does after any probe.
 */
bool
entitlock_table_probe_stable(EntitlockTable *t, const Datum *keyvals)
{
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	IndexScanDesc scan;
	bool		found = false;

	Assert(t->def->indexes[0].layout->unique);
	scan = entitlock_table_scan(t, 0, SnapshotAny, BTEqualStrategyNumber,
								t->def->indexes[0].layout->nkeys, keyvals);
	while (index_getnext_slot(scan, ForwardScanDirection, t->slot))
	{
		BufferHeapTupleTableSlot *bslot = (BufferHeapTupleTableSlot *) t->slot;

		CHECK_FOR_INTERRUPTS();
		Assert(TTS_IS_BUFFERTUPLE(t->slot));
		LockBuffer(bslot->buffer, BUFFER_LOCK_SHARE);
		found = HeapTupleSatisfiesVisibility(bslot->base.tuple, snapshot,
											 bslot->buffer);
		LockBuffer(bslot->buffer, BUFFER_LOCK_UNLOCK);
		if (found)
			break;
	}
	index_endscan(scan);
	UnregisterSnapshot(snapshot);

	if (found)
		slot_getallattrs(t->slot);
	else
		ExecClearTuple(t->slot);
	return found;
}

/* Does stored, which may be toasted, hold the same bytes as t? */
bool
entitlock_datum_equals_text(Datum stored, text *t)
{
	int			len = VARSIZE_ANY_EXHDR(t);
	text	   *s;
	bool		same;

	/* Compare lengths first: a key whose hash collides is not detoasted. */
	if (toast_raw_datum_size(stored) != (Size) len + VARHDRSZ)
		return false;
	s = DatumGetTextPP(stored);
	same = memcmp(VARDATA_ANY(s), VARDATA_ANY(t), len) == 0;
	if ((Pointer) s != DatumGetPointer(stored))
		pfree(s);
	return same;
}

/*
 * Tables keyed by text of any length index a 64-bit hash of it, not the
 * text itself.  Advance scan (over such a hash index) to the next row whose
 * column attno (1-based) equals value, leaving it in t->slot; rows of
 * other values with the same hash are skipped.
 */
bool
entitlock_next_row_with_text(EntitlockTable *t, IndexScanDesc scan,
							 int attno, text *value)
{
	while (index_getnext_slot(scan, ForwardScanDirection, t->slot))
	{
		bool		isnull;
		Datum		stored = slot_getattr(t->slot, attno, &isnull);

		if (!isnull && entitlock_datum_equals_text(stored, value))
			return true;
	}
	return false;
}

/* The transaction that wrote the row in slot. */
static TransactionId
slot_xmin(TupleTableSlot *slot)
{
	HeapTuple	tuple;
	bool		should_free;
	TransactionId xmin;

	tuple = ExecFetchSlotHeapTuple(slot, false, &should_free);
	xmin = HeapTupleHeaderGetXmin(tuple->t_data);
	if (should_free)
		heap_freetuple(tuple);
	return xmin;
}

/* Did this transaction (or one of its subtransactions) write the row? */
bool
entitlock_slot_is_mine(TupleTableSlot *slot)
{
	return TransactionIdIsCurrentTransactionId(slot_xmin(slot));
}

/*
 * The probes read with a snapshot taken after a lock was granted, which is
 * what READ COMMITTED wants.  REPEATABLE READ and SERIALIZABLE promise the
 * transaction a single older snapshot; a row that snapshot cannot see was
 * committed since, and deciding on it would mix the two.  Fail the way
 * UPDATE does on a row changed since the snapshot, so the caller retries
 * the transaction.
 */
void
entitlock_check_visible_to_transaction(TupleTableSlot *slot)
{
	TransactionId xmin;

	if (!IsolationUsesXactSnapshot())
		return;

	xmin = slot_xmin(slot);
	if (!TransactionIdIsCurrentTransactionId(xmin) &&
		XidInMVCCSnapshot(xmin, GetTransactionSnapshot()))
		entitlock_serialization_failure();
}

/* Fail the way UPDATE does on a row changed since the snapshot. */
void
entitlock_serialization_failure(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("could not serialize access due to concurrent update")));
}

/*
 * Writing
 *
 * Every write goes through the executor's single-row routines, the ones
 * logical replication's apply worker uses (ExecSimpleRelationInsert,
 * Update and Delete): they maintain every index of the table, including
 * indexes an operator added, check its constraints, fire its row
 * triggers, and refuse an update or delete that a publication could not
 * replicate, exactly as an INSERT, UPDATE or DELETE statement would.
 * Statement triggers do not fire, as they do not for the apply worker: an
 * entitlock call is not a statement on the table.  The executor state is
 * made by the first write of a call and freed when the table is closed.  A
 * caller that will write under a contended lock may prepare before taking
 * it, so that the lock is held no longer than the write takes.
 */
void
entitlock_table_prepare_writes(EntitlockTable *t)
{
	MemoryContext oldcontext;
	EState	   *estate;

	if (t->estate != NULL)
	{
		/* a command counter increment since may have moved it */
		t->estate->es_output_cid = GetCurrentCommandId(true);
		return;
	}

	estate = CreateExecutorState();
	oldcontext = MemoryContextSwitchTo(estate->es_query_cxt);

	t->updated_cols = compat_init_range_table(estate, t->heap);
	estate->es_output_cid = GetCurrentCommandId(true);
	if (ActiveSnapshotSet())
		estate->es_snapshot = GetActiveSnapshot();

	t->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(t->rri, t->heap, 1, NULL, 0);

	/*
	 * As the apply worker does: listed here, though not in the array of
	 * result relations, the relation is where the trigger machinery finds
	 * it.  Its indexes are closed with ExecCloseResultRelations(); the
	 * relation itself stays open, as table_open() opened it.
	 */
	estate->es_opened_result_relations =
		lappend(estate->es_opened_result_relations, t->rri);
	ExecOpenIndices(t->rri, false);
	compat_EvalPlanQualInit(&t->epqstate, estate);

	t->newslot = ExecInitExtraTupleSlot(estate, RelationGetDescr(t->heap),
										&TTSOpsVirtual);
	t->oldslot = NULL;

	MemoryContextSwitchTo(oldcontext);
	t->estate = estate;
}

static void
end_writes(EntitlockTable *t)
{
	EState	   *estate = t->estate;
	MemoryContext oldcontext;

	if (estate == NULL)
		return;

	oldcontext = MemoryContextSwitchTo(estate->es_query_cxt);
	EvalPlanQualEnd(&t->epqstate);
	ExecCloseResultRelations(estate);
	ExecResetTupleTable(estate->es_tupleTable, false);
	MemoryContextSwitchTo(oldcontext);
	FreeExecutorState(estate);
	t->estate = NULL;
}

/* Put the row values/nulls, in the table's columns, in t->newslot. */
static TupleTableSlot *
new_row(EntitlockTable *t, Datum *values, bool *nulls)
{
	TupleTableSlot *slot = t->newslot;
	int			natts = RelationGetDescr(t->heap)->natts;

	ExecClearTuple(slot);
	memcpy(slot->tts_values, values, natts * sizeof(Datum));
	memcpy(slot->tts_isnull, nulls, natts * sizeof(bool));
	return ExecStoreVirtualTuple(slot);
}

/* A slot for the row being changed, made when first needed. */
static TupleTableSlot *
old_slot(EntitlockTable *t)
{
	if (t->oldslot == NULL)
		t->oldslot = table_slot_create(t->heap, &t->estate->es_tupleTable);
	return t->oldslot;
}

/*
 * The row version at tid, to change: where the caller's read (t->slot) or
 * entitlock_table_lock_row() left it, or else fetched.
 */
static TupleTableSlot *
old_row(EntitlockTable *t, ItemPointer tid)
{
	TupleTableSlot *slot;

	if (!TTS_EMPTY(t->slot) && ItemPointerEquals(&t->slot->tts_tid, tid))
		return t->slot;
	slot = old_slot(t);
	if (!TTS_EMPTY(slot) && ItemPointerEquals(&slot->tts_tid, tid))
		return slot;
	if (!table_tuple_fetch_row_version(t->heap, tid, SnapshotAny, slot))
		elog(ERROR, "could not find the row of \"entitlock.%s\" to change",
			 t->def->relname);
	return slot;
}

/*
 * Write one row: oldslot is the row an update or delete changes, newslot
 * the row an insert or update writes.  Like the apply worker, each row
 * write is a query of its own for AFTER triggers (foreign keys and
 * deferred unique checks are such triggers too), which fire before this
 * returns; a table without triggers queues none.
 */
static void
write_row(EntitlockTable *t, CmdType operation, TupleTableSlot *oldslot,
		  TupleTableSlot *newslot)
{
	MemoryContext oldcontext;
	bool		triggers = t->rri->ri_TrigDesc != NULL;

	oldcontext = MemoryContextSwitchTo(t->estate->es_query_cxt);
	if (triggers)
		AfterTriggerBeginQuery();
	switch (operation)
	{
		case CMD_INSERT:
			ExecSimpleRelationInsert(t->rri, t->estate, newslot);
			break;
		case CMD_UPDATE:
			ExecSimpleRelationUpdate(t->rri, t->estate, &t->epqstate,
									 oldslot, newslot);
			break;
		case CMD_DELETE:
			ExecSimpleRelationDelete(t->rri, t->estate, &t->epqstate,
									 oldslot);
			break;
		default:
			elog(ERROR, "unexpected operation %d", (int) operation);
	}
	if (triggers)
		AfterTriggerEndQuery(t->estate);
	MemoryContextSwitchTo(oldcontext);
	ResetPerTupleExprContext(t->estate);
	if (oldslot != NULL && oldslot != t->slot)
		ExecClearTuple(oldslot);
}

/*
 * Insert the row values/nulls.  values has a value for each of
 * t->def->natts columns; a table of an older layout takes only the
 * columns it has.
 */
void
entitlock_table_insert(EntitlockTable *t, Datum *values, bool *nulls)
{
	entitlock_table_prepare_writes(t);
	write_row(t, CMD_INSERT, NULL, new_row(t, values, nulls));
}

/*
 * Lock the row at tid in mode, as SELECT ... FOR UPDATE would, before
 * changing it: a writer that does not hold the row's entitlock lock (a
 * purge, a prune) may be deleting it, and concurrent recorders of a usage
 * counter meet here.  With wait, waits for a transaction that is changing
 * the row; without, returns TM_WouldBlock at once.  With latest, a row
 * updated meanwhile is followed to its newest version, which is locked
 * instead and whose position is left in *tid, as READ COMMITTED's UPDATE
 * does.  Returns TM_Ok, with the locked row in t->oldslot for the caller
 * to read and for entitlock_table_update() or _delete(), or why the row
 * cannot be had: TM_Deleted or TM_Updated (it is gone, or, without
 * latest, not the newest version any more).
 */
TM_Result
entitlock_table_lock_row(EntitlockTable *t, ItemPointer tid,
						 LockTupleMode mode, bool wait, bool latest)
{
	TM_FailureData tmfd;
	TM_Result	result;
	uint8		flags = latest ? TUPLE_LOCK_FLAG_FIND_LAST_VERSION : 0;
	bool		timed;

	entitlock_table_prepare_writes(t);

	/*
	 * With statistics on, a row that is not free at once is a wait, timed:
	 * try without waiting first.
	 */
	timed = wait && hooks->time_waits();
	result = table_tuple_lock(t->heap, tid, t->estate->es_snapshot,
							  old_slot(t), t->estate->es_output_cid, mode,
							  wait && !timed ? LockWaitBlock : LockWaitSkip,
							  flags, &tmfd);
	if (timed && result == TM_WouldBlock)
	{
		TimestampTz start = GetCurrentTimestamp();

		result = table_tuple_lock(t->heap, tid, t->estate->es_snapshot,
								  old_slot(t), t->estate->es_output_cid, mode,
								  LockWaitBlock, flags, &tmfd);
		hooks->waited(start);
	}
	if (result != TM_Ok)
		ExecClearTuple(t->oldslot);
	else
		slot_getallattrs(t->oldslot);
	return result;
}

/* The columns an UPDATE's SET list would name: changed's bits. */
static void
set_updated_columns(EntitlockTable *t, uint32 changed)
{
	MemoryContext oldcontext;
	Bitmapset  *cols = NULL;
	int			natts = RelationGetDescr(t->heap)->natts;
	int			i;

	oldcontext = MemoryContextSwitchTo(t->estate->es_query_cxt);
	for (i = 0; i < natts; i++)
	{
		if (changed & ENTITLOCK_COLUMN(i))
			cols = bms_add_member(cols,
								  i + 1 - FirstLowInvalidHeapAttributeNumber);
	}
	MemoryContextSwitchTo(oldcontext);
	*t->updated_cols = cols;
}

/*
 * Creating a row
 *
 * Two transactions may want to create the same row (a meter's counter for
 * a new period, a rate limit's first state) at once; the unique index
 * would fail the second.  So a creator first takes the internal lock
 * create_key, which only that row's creators take, and looks again, this
 * time also for a row another transaction has inserted and not yet
 * committed; if there is none, the row is its to create.  It gives the
 * lock back as soon as its row is in the table: from then on a second
 * creator finds that row and waits for its creator's transaction, as a
 * unique index insertion would, and decides once it has ended.  Holding
 * the lock only that long, rather than until the transaction ends, lets
 * one transaction create any number of rows without filling the shared
 * lock table.  A creator that inserts nothing keeps the lock until its
 * transaction ends.
 */

/*
 * Take create_key and look for the row keyed keyvals.  Returns true,
 * holding the lock, when there is no row at all: the caller may create it
 * with entitlock_table_create() (or keep the lock until the transaction
 * ends).  Otherwise gives the lock back, waits for a transaction still
 * creating the row, and returns false: the caller looks for the row again.
 */
bool
entitlock_table_claim_creation(EntitlockTable *t, const Datum *keyvals,
							   int64 create_key)
{
	SnapshotData dirty;
	TransactionId creator;
	TimestampTz start;

	hooks->lock_creation(create_key);
	InitDirtySnapshot(dirty);
	if (!entitlock_table_probe(t, &dirty, keyvals))
	{
		/*
		 * No creator is at work (they hold create_key), but a committed row
		 * replaced meanwhile by a non-HOT update can escape any probe that
		 * judges versions as it meets them; only a look against one fixed
		 * snapshot may conclude that the row is not there.
		 */
		if (!entitlock_table_probe_stable(t, keyvals))
			return true;
		ExecClearTuple(t->slot);
		hooks->unlock_creation(create_key);
		return false;
	}
	ExecClearTuple(t->slot);
	creator = dirty.xmin;
	hooks->unlock_creation(create_key);
	if (TransactionIdIsValid(creator))
	{
		start = hooks->time_waits() ? GetCurrentTimestamp() : 0;
		XactLockTableWait(creator, NULL, NULL, XLTW_None);
		if (start != 0)
			hooks->waited(start);
	}
	return false;
}

/*
 * Insert the row values/nulls that entitlock_table_claim_creation() let
 * the caller create, and give back its create_key.
 */
void
entitlock_table_create(EntitlockTable *t, Datum *values, bool *nulls,
					   int64 create_key)
{
	entitlock_table_insert(t, values, nulls);
	hooks->unlock_creation(create_key);
}

/*
 * Find the row whose unique key (index 0) is keyvals as of now
 * (SnapshotSelf) and return true with it in t->slot; or, when there is
 * none, claim its creation (entitlock_table_claim_creation()) and return
 * false, the caller holding create_key.  Every caller that may create a
 * row it looks for starts here.
 */
bool
entitlock_table_find_or_claim(EntitlockTable *t, const Datum *keyvals,
							  int64 create_key)
{
	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (entitlock_table_probe(t, SnapshotSelf, keyvals))
			return true;
		if (entitlock_table_claim_creation(t, keyvals, create_key))
			return false;
	}
}

/*
 * Find the row whose unique key (index 0) is keyvals and lock it for an
 * update, or make sure no one else creates it first; returns whether it
 * was found.  A found row is locked in its newest version (under READ
 * COMMITTED; REPEATABLE READ and SERIALIZABLE fail instead, as UPDATE
 * does, when it changed since the snapshot) and left in t->oldslot.  When
 * it returns false the caller holds create_key (see
 * entitlock_table_claim_creation()).  A row deleted meanwhile (a prune) is
 * looked for again.
 */
bool
entitlock_table_lock_or_create(EntitlockTable *t, const Datum *keyvals,
							   int64 create_key)
{
	bool		latest = !IsolationUsesXactSnapshot();

	for (;;)
	{
		ItemPointerData tid;
		TM_Result	result;

		if (!entitlock_table_find_or_claim(t, keyvals, create_key))
			return false;
		tid = t->slot->tts_tid;
		ExecClearTuple(t->slot);	/* see "Buffer pins" */
		result = entitlock_table_lock_row(t, &tid, LockTupleNoKeyExclusive,
										  true, latest);
		if (result == TM_Ok)
		{
			entitlock_check_visible_to_transaction(t->oldslot);
			return true;
		}
		if (result != TM_Deleted && result != TM_Updated)
			elog(ERROR, "unexpected result %d locking a row of \"entitlock.%s\"",
				 (int) result, t->def->relname);
		if (!latest)
			entitlock_serialization_failure();
	}
}

/*
 * Replace the row at otid with values/nulls; changed has a bit
 * (ENTITLOCK_COLUMN) for each column the caller sets, which is what an
 * UPDATE's SET list would name, for column triggers.  Every writer of the
 * row holds the lock that serialises it (or has locked the row itself), so
 * the row is there to change; anything else is an error.
 */
void
entitlock_table_update(EntitlockTable *t, ItemPointer otid, Datum *values,
					   bool *nulls, uint32 changed)
{

	entitlock_table_prepare_writes(t);
	set_updated_columns(t, changed);
	write_row(t, CMD_UPDATE, old_row(t, otid), new_row(t, values, nulls));
}

/*
 * Can entitlock_table_try_update() write this table?  Not when it has
 * BEFORE UPDATE row triggers: those lock and fetch the row themselves
 * (GetTupleForTrigger), and a concurrent change would need the executor's
 * EvalPlanQual, so such tables take the lock-first path of
 * entitlock_table_lock_row() and entitlock_table_update().
 */
bool
entitlock_table_can_try_update(EntitlockTable *t)
{
	TriggerDesc *trigdesc = t->heap->trigdesc;

	return trigdesc == NULL || !trigdesc->trig_update_before_row;
}

/*
 * Is an update of this table, when it needs no new index entries (a HOT
 * update), nothing but the heap update for the executor?  That is when the
 * table has no triggers, no CHECK constraints, no generated columns and is
 * not a partition, and the new row has a value in every NOT NULL column.
 * Then ExecSimpleRelationUpdate() would check the replica identity, update
 * the heap and stop, and so does entitlock_table_try_update(), without
 * building an executor state for it.
 */
static bool
update_is_plain(EntitlockTable *t, const bool *nulls)
{
	Relation	rel = t->heap;
	TupleDesc	desc = RelationGetDescr(rel);
	TupleConstr *constr = desc->constr;
	int			i;

	if (rel->trigdesc != NULL || rel->rd_rel->relispartition)
		return false;
	if (constr == NULL)
		return true;
	if (constr->num_check > 0 || compat_has_generated(constr))
		return false;
	for (i = 0; i < desc->natts; i++)
	{
		if (TupleDescAttr(desc, i)->attnotnull && nulls[i])
			return false;		/* ExecConstraints() raises the error */
	}
	return true;
}

/*
 * Whether a transaction still in progress is changing or deleting the row
 * version in slot (as read, not locked), so that writing it would wait:
 * for statistics, which count such a wait.  A row only locked is not
 * being changed.
 *
 * The slot holds a pin on the row's buffer, which keeps the row where it
 * is but not its header still: a row lock or an update by another backend
 * rewrites xmax and the infomask under the buffer's exclusive content
 * lock, turning a plain xid into a MultiXactId or back.  Read without the
 * lock, the infomask could say MultiXactId while xmax already holds a
 * plain xid, and looking that up as a MultiXactId fails (XX000).  So the
 * header is read under the share lock, as the heap's visibility checks
 * read it; only hint bits change under a share lock, never xmax.
 */
bool
entitlock_slot_being_changed(TupleTableSlot *slot)
{
	BufferHeapTupleTableSlot *bslot = (BufferHeapTupleTableSlot *) slot;
	HeapTupleHeader header;
	TransactionId xmax = InvalidTransactionId;

	Assert(TTS_IS_BUFFERTUPLE(slot) && BufferIsValid(bslot->buffer));
	LockBuffer(bslot->buffer, BUFFER_LOCK_SHARE);
	header = bslot->base.tuple->t_data;
	if (!(header->t_infomask & HEAP_XMAX_INVALID) &&
		!HEAP_XMAX_IS_LOCKED_ONLY(header->t_infomask))
		xmax = HeapTupleHeaderGetUpdateXid(header);
	LockBuffer(bslot->buffer, BUFFER_LOCK_UNLOCK);

	return TransactionIdIsValid(xmax) &&
		!TransactionIdIsCurrentTransactionId(xmax) &&
		TransactionIdIsInProgress(xmax);
}

/*
 * Replace the row version at otid with values/nulls, as
 * entitlock_table_update() does, if no one has changed it since it was
 * read, without locking it first.  A transaction changing the row is
 * waited for.  Returns TM_Ok when written, or TM_Updated or TM_Deleted
 * with nothing written when the row was changed or deleted meanwhile: the
 * caller reads it again and decides again.  This is the executor's
 * single-row update (ExecSimpleRelationUpdate) with the concurrent change
 * reported instead of raised, and is the whole of a hot usage counter's
 * update: a lock before it would cost a second visit to the buffer and a
 * WAL record of its own.  Only for tables entitlock_table_can_try_update()
 * accepts.
 *
 * On a table where the update is plain (update_is_plain()), the executor
 * state is only made if the heap update turns out to need index entries.
 */
TM_Result
entitlock_table_try_update(EntitlockTable *t, ItemPointer otid, Datum *values,
						   bool *nulls, uint32 changed)
{
	MemoryContext oldcontext;
	Relation	rel = t->heap;
	ResultRelInfo *rri;
	EState	   *estate;
	TupleTableSlot *slot;
	TM_FailureData tmfd;
	LockTupleMode lockmode;
	compat_update_indexes update_indexes;
	TM_Result	result;
	bool		triggers;

	Assert(entitlock_table_can_try_update(t));
	if (t->estate == NULL && update_is_plain(t, nulls))
	{
		int			natts = RelationGetDescr(rel)->natts;

		if (t->plainslot == NULL)
			t->plainslot = MakeSingleTupleTableSlot(RelationGetDescr(rel),
													&TTSOpsVirtual);
		slot = t->plainslot;
		ExecClearTuple(slot);
		memcpy(slot->tts_values, values, natts * sizeof(Datum));
		memcpy(slot->tts_isnull, nulls, natts * sizeof(bool));
		ExecStoreVirtualTuple(slot);

		CheckCmdReplicaIdentity(rel, CMD_UPDATE);
		result = table_tuple_update(rel, otid, slot, GetCurrentCommandId(true),
									InvalidSnapshot, InvalidSnapshot,
									true, &tmfd, &lockmode, &update_indexes);
		if (result == TM_Ok && RelationGetForm(rel)->relhasindex &&
			compat_update_needs_indexes(update_indexes))
		{
			entitlock_table_prepare_writes(t);
			set_updated_columns(t, changed);
			oldcontext = MemoryContextSwitchTo(t->estate->es_query_cxt);
			list_free(compat_ExecInsertIndexTuples_update(t->rri, slot,
														  t->estate,
														  update_indexes));
			MemoryContextSwitchTo(oldcontext);
			ResetPerTupleExprContext(t->estate);
		}
		else if (result != TM_Ok && result != TM_Updated &&
				 result != TM_Deleted)
			elog(ERROR, "unexpected result %d updating \"entitlock.%s\"",
				 (int) result, t->def->relname);
		return result;
	}

	entitlock_table_prepare_writes(t);
	set_updated_columns(t, changed);
	rri = t->rri;
	estate = t->estate;
	slot = new_row(t, values, nulls);
	triggers = rri->ri_TrigDesc != NULL;

	oldcontext = MemoryContextSwitchTo(estate->es_query_cxt);
	if (triggers)
		AfterTriggerBeginQuery();
	CheckCmdReplicaIdentity(rel, CMD_UPDATE);
	if (rel->rd_att->constr && rel->rd_att->constr->has_generated_stored)
		ExecComputeStoredGenerated(rri, estate, slot, CMD_UPDATE);
	if (rel->rd_att->constr)
		ExecConstraints(rri, slot, estate);
	if (rel->rd_rel->relispartition)
		ExecPartitionCheck(rri, slot, estate, true);

	result = table_tuple_update(rel, otid, slot, estate->es_output_cid,
								estate->es_snapshot, InvalidSnapshot,
								true, &tmfd, &lockmode, &update_indexes);
	if (result == TM_Ok)
	{
		List	   *recheck = NIL;

		if (rri->ri_NumIndices > 0 && compat_update_needs_indexes(update_indexes))
			recheck = compat_ExecInsertIndexTuples_update(rri, slot, estate,
														  update_indexes);
		ExecARUpdateTriggers(estate, rri, NULL, NULL, otid, NULL, slot,
							 recheck, NULL, false);
		list_free(recheck);
	}
	else if (result != TM_Updated && result != TM_Deleted)
		elog(ERROR, "unexpected result %d updating \"entitlock.%s\"",
			 (int) result, t->def->relname);
	if (triggers)
		AfterTriggerEndQuery(estate);
	MemoryContextSwitchTo(oldcontext);
	ResetPerTupleExprContext(estate);
	return result;
}

/* Delete the row at tid, under the same rules as entitlock_table_update(). */
void
entitlock_table_delete(EntitlockTable *t, ItemPointer tid)
{
	entitlock_table_prepare_writes(t);
	write_row(t, CMD_DELETE, old_row(t, tid), NULL);
}

/*
 * Result rows
 */
