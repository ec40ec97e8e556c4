/*-------------------------------------------------------------------------
 *
 * compat.h
 *	  Differences between the PostgreSQL major versions entitlock builds
 *	  against (15, 17 and 18; the README names the tested ones).
 *
 * Every #if on PG_VERSION_NUM lives here, so the rest of the code is
 * written once against one API.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ENTITLOCK_COMPAT_H
#define ENTITLOCK_COMPAT_H

#include "access/genam.h"
#include "access/tableam.h"
#include "executor/executor.h"
#include "nodes/parsenodes.h"
#include "parser/parse_relation.h"
#include "storage/lock.h"
#include "utils/rel.h"

#if PG_VERSION_NUM < 150000
#error "entitlock needs PostgreSQL 15 or later"
#endif

/*
 * 17 numbered backends by ProcNumber instead of BackendId, and renamed the
 * lookup of a backend's status by its index.
 */
#if PG_VERSION_NUM >= 170000
#define compat_vxid_proc(vxid) ProcNumberGetProc((vxid).procNumber)
#define compat_local_beentry(idx) pgstat_get_local_beentry_by_index(idx)
#else
#define compat_vxid_proc(vxid) BackendIdGetProc((vxid).backendId)
#define compat_local_beentry(idx) pgstat_fetch_stat_local_beentry(idx)
#endif

/*
 * 15.1 renamed 15.0's SetSingleFuncCall() and SRF_SINGLE_USE_EXPECTED to
 * InitMaterializedSRF() and MAT_SRF_USE_EXPECTED_DESC (15.0 has only the
 * old names).
 */
#if PG_VERSION_NUM < 150001
#define InitMaterializedSRF(fcinfo, flags) SetSingleFuncCall(fcinfo, flags)
#define MAT_SRF_USE_EXPECTED_DESC SRF_SINGLE_USE_EXPECTED
#endif

/* 18 added instrumentation to index scans. */
#if PG_VERSION_NUM >= 180000
#define compat_index_beginscan(heap, index, snapshot, nkeys, norderbys) \
	index_beginscan(heap, index, snapshot, NULL, nkeys, norderbys)
#else
#define compat_index_beginscan(heap, index, snapshot, nkeys, norderbys) \
	index_beginscan(heap, index, snapshot, nkeys, norderbys)
#endif

/* 17 let LockHeldByMe() also accept a stronger mode than the one asked. */
#if PG_VERSION_NUM >= 170000
#define compat_LockHeldByMe(tag, mode) LockHeldByMe(tag, mode, false)
#else
#define compat_LockHeldByMe(tag, mode) LockHeldByMe(tag, mode)
#endif

/* 17 moved the backend's local transaction id into MyProc->vxid (slots.c). */
#if PG_VERSION_NUM >= 170000
#define compat_my_lxid() (MyProc->vxid.lxid)
#else
#define compat_my_lxid() (MyProc->lxid)
#endif

/* 16 added the result relations an EvalPlanQual recheck may touch. */
#if PG_VERSION_NUM >= 160000
#define compat_EvalPlanQualInit(epqstate, estate) \
	EvalPlanQualInit(epqstate, estate, NULL, NIL, -1, NIL)
#else
#define compat_EvalPlanQualInit(epqstate, estate) \
	EvalPlanQualInit(epqstate, estate, NULL, NIL, -1)
#endif

/*
 * 16 made table_tuple_update() say which indexes need new entries (all, or
 * only summarizing ones) instead of a boolean, and ExecInsertIndexTuples()
 * take the answer.
 */
#if PG_VERSION_NUM >= 160000
typedef TU_UpdateIndexes compat_update_indexes;
#define compat_update_needs_indexes(u) ((u) != TU_None)
#define compat_ExecInsertIndexTuples_update(rri, slot, estate, u) \
	ExecInsertIndexTuples(rri, slot, estate, true, false, NULL, NIL, \
						  (u) == TU_Summarizing)
#else
typedef bool compat_update_indexes;
#define compat_update_needs_indexes(u) (u)
#define compat_ExecInsertIndexTuples_update(rri, slot, estate, u) \
	ExecInsertIndexTuples(rri, slot, estate, true, false, NULL, NIL)
#endif

/* 18 added virtual generated columns. */
#if PG_VERSION_NUM >= 180000
#define compat_has_generated(constr) \
	((constr)->has_generated_stored || (constr)->has_generated_virtual)
#else
#define compat_has_generated(constr) ((constr)->has_generated_stored)
#endif

/*
 * Give estate a range table of one entry, rel, as a statement writing rel
 * would have.  The executor's per-row routines look there for the columns
 * an update sets (column triggers, the index-unchanged hint) and for the
 * permission information behind error details.  Returns where the updated
 * columns are kept: 16 moved them from the range table entry into a
 * separate RTEPermissionInfo, and 18 added the set of unpruned relations.
 */
static inline Bitmapset **
compat_init_range_table(EState *estate, Relation rel)
{
	RangeTblEntry *rte = makeNode(RangeTblEntry);

	rte->rtekind = RTE_RELATION;
	rte->relid = RelationGetRelid(rel);
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
#if PG_VERSION_NUM >= 160000
	{
		List	   *perminfos = NIL;
		RTEPermissionInfo *perminfo = addRTEPermissionInfo(&perminfos, rte);

#if PG_VERSION_NUM >= 180000
		ExecInitRangeTable(estate, list_make1(rte), perminfos,
						   bms_make_singleton(1));
#else
		ExecInitRangeTable(estate, list_make1(rte), perminfos);
#endif
		return &perminfo->updatedCols;
	}
#else
	ExecInitRangeTable(estate, list_make1(rte));
	return &rte->updatedCols;
#endif
}

#endif							/* ENTITLOCK_COMPAT_H */
