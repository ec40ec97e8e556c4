/*-------------------------------------------------------------------------
 *
 * slots.c
 *	  Semaphores (1.2): entitlock.lock_slot, at most N transactions holding
 *	  a slot of a name at once.
 *
 * A semaphore is a set of advisory lock tags in PostgreSQL's lock manager,
 * like the named locks of locks.c, so holding a slot is holding a lock:
 * COMMIT, ROLLBACK, a killed backend or a crash give it back, and every
 * wait is a lock manager wait that lock_timeout, statement_timeout,
 * cancels and the deadlock detector see.
 *
 * The tags are advisory tags with the name's key in the two middle fields
 * (as lock(name) has) and, in the fourth, SLOT_TAG_BASE + slot number for
 * slot 1 to N, and SLOT_TAG_BASE itself for the name's gate.  lock(name)
 * uses 1 there, pg_advisory_lock() 1 and 2 and entitlock's internal locks
 * 3, so no SQL function reaches these tags and a semaphore never shares a
 * lock with lock(name) of the same name.  They show in pg_locks as
 * advisory locks whose objsubid is the slot number plus SLOT_TAG_BASE,
 * which is how slot_holders() finds them.
 *
 * Taking a slot:
 *	1. A transaction that holds a slot of the name already gets it back,
 *	   whatever slot count it passes now (see held_slot()).
 *	2. It takes the name's gate (ExclusiveLock), waiting in the gate's
 *	   queue if someone else holds it.  The lock manager grants a released
 *	   lock to its waiters in the order they came (a newcomer's request
 *	   that conflicts with a waiter queues behind it), so waiters pass the
 *	   gate in about their arrival order and none starves.
 *	3. Holding the gate, it tries every slot without waiting, from slot 1
 *	   up, and takes the first free one.
 *	4. When none is free, it waits for one while still holding the gate,
 *	   so nobody who came later can take the slot that frees first.  The
 *	   lock manager cannot wait for "any of these locks", so the waiter
 *	   queues on one slot's lock for SLOT_TICK_MS: the slot whose holder's
 *	   transaction began first, as the likeliest to end first (for up to
 *	   SLOT_OLDEST_MAX slots; beyond, each slot in turn).  When that has
 *	   not come free, it tries all slots again without waiting and queues
 *	   again.  So a slot that frees is taken within about SLOT_TICK_MS, at
 *	   once if it is the one waited on.  Waiting on the oldest holder also
 *	   finds every real deadlock: a semaphore deadlock needs every holder,
 *	   the oldest too, to wait (directly or not) for the waiter.
 *	   Each of these short waits runs with deadlock_timeout lowered to
 *	   SLOT_DEADLOCK_MS (when it is not lower already), so the deadlock
 *	   detector examines every one of them: a cycle of waits that runs
 *	   through the slot being waited for ends with deadlock_detected
 *	   (40P01), and one through another slot once the rotation reaches it,
 *	   within slots times SLOT_TICK_MS.  Only the gate holder, one backend
 *	   per name, waits like this; the waiters behind it wait for the gate
 *	   with the session's own settings.
 *	5. It gives the gate back, keeping the slot until its transaction ends.
 * A bounded wait (wait) covers steps 2 to 4 and, when it runs out, returns
 * NULL having given back the gate and taken nothing; the waits run inside
 * internal subtransactions (locks.c), so the transaction stays usable.
 *
 * Callers that pass different slot counts for one name share its gate and
 * its slots 1, 2, ...: each is held to its own count.
 *
 * slot_holders() is SQL (entitlock--1.2.sql): it reads pg_locks.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "compat.h"
#include "locks.h"
#include "miscadmin.h"
#include "stats.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "storage/sinvaladt.h"
#include "util.h"
#include "utils/backend_status.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(entitlock_lock_slot);

/* Semaphore names are not stored, so not limited in length. */
static const EntitlockNameMessages name_messages = {
	"semaphore name must not be null", "semaphore name must not be empty",
	NULL
};

/*
 * The fourth field of a semaphore's advisory lock tags: this for its gate,
 * this plus the slot number for a slot (see above).  Clear of 1 and 2
 * (pg_advisory_lock) and 3 (ENTITLOCK_INTERNAL_LOCKS); the largest value,
 * 0x4000 + ENTITLOCK_MAX_SLOTS, fits the field's 16 bits.
 */
#define SLOT_TAG_BASE 0x4000

/* The lock tag of slot (1 to ENTITLOCK_MAX_SLOTS) of key, or its gate (0). */
static void
slot_locktag(LOCKTAG *tag, int64 key, int slot)
{
	Assert(slot >= 0 && slot <= ENTITLOCK_MAX_SLOTS);
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId,
						 (uint32) (key >> 32), (uint32) key,
						 SLOT_TAG_BASE + slot);
}

/*
 * The gate holder queues on one slot for SLOT_TICK_MS before trying the
 * others, with deadlock_timeout at most SLOT_DEADLOCK_MS.
 */
#define SLOT_TICK_MS 50
#define SLOT_DEADLOCK_MS 20

/* Up to this many slots, the waiter picks the oldest holder's slot. */
#define SLOT_OLDEST_MAX 64

/* A backend's pid and when its transaction began, for oldest_slot(). */
typedef struct PidStart
{
	int			pid;
	TimestampTz start;
} PidStart;

static int
cmp_pid_start(const void *a, const void *b)
{
	int			pa = ((const PidStart *) a)->pid;
	int			pb = ((const PidStart *) b)->pid;

	return (pa > pb) - (pa < pb);
}

/*
 * The slot among 1..slots (at most SLOT_OLDEST_MAX) whose holder's
 * transaction began first, from the lock manager (who holds each slot) and
 * the backends' activity status (since when), read afresh; 0 when none is
 * held by another backend that shows there.
 */
static int
oldest_slot(int64 key, int slots)
{
	int			n;
	int			i;
	int			slot;
	int			best = 0;
	TimestampTz best_start = DT_NOEND;
	PidStart   *starts;

	pgstat_clear_backend_activity_snapshot();
	n = pgstat_fetch_stat_numbackends();
	starts = palloc((n + 1) * sizeof(PidStart));
	for (i = 0; i < n; i++)
	{
		LocalPgBackendStatus *local = compat_local_beentry(i + 1);

		starts[i].pid = local ? local->backendStatus.st_procpid : 0;
		starts[i].start = local ?
			local->backendStatus.st_xact_start_timestamp : DT_NOEND;
	}
	qsort(starts, n, sizeof(PidStart), cmp_pid_start);

	for (slot = 1; slot <= slots; slot++)
	{
		LOCKTAG		tag;
		VirtualTransactionId *vxids;
		int			count;

		slot_locktag(&tag, key, slot);
		vxids = GetLockConflicts(&tag, ExclusiveLock, &count);
		for (i = 0; i < count; i++)
		{
			PGPROC	   *proc = compat_vxid_proc(vxids[i]);
			PidStart	probe;
			PidStart   *found;

			if (proc == NULL)
				continue;
			probe.pid = proc->pid;
			found = bsearch(&probe, starts, n, sizeof(PidStart),
							cmp_pid_start);
			if (found != NULL && found->start != 0 &&
				found->start < best_start)
			{
				best = slot;
				best_start = found->start;
			}
		}
	}
	pfree(starts);
	return best;
}

/*
 * Wait for slot's lock like entitlock_wait_tag(), with deadlock_timeout
 * lowered to SLOT_DEADLOCK_MS so that the detector looks at this short
 * wait.  The setting is put back when the wait ends; an error leaves it to
 * the (sub)transaction's abort, which restores it.
 */
static bool
wait_for_slot(int64 key, int slot, int timeout_ms)
{
	LOCKTAG		tag;
	bool		got;
	int			save_nestlevel = NewGUCNestLevel();

	if (DeadlockTimeout > SLOT_DEADLOCK_MS)
		(void) set_config_option("deadlock_timeout",
								 CppAsString2(SLOT_DEADLOCK_MS),
								 PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	slot_locktag(&tag, key, slot);
	got = entitlock_wait_tag(&tag, ExclusiveLock, timeout_ms);
	AtEOXact_GUC(true, save_nestlevel);
	return got;
}

/*
 * The slots this backend's current transaction took with lock_slot, as
 * (key, slot) pairs, so that asking again finds the slot held whatever
 * slot count the new call passes (a transaction may hold slot 3 of 5 and
 * ask again with 2).  The lock manager does not export a way to list the
 * backend's own locks, and probing up to ENTITLOCK_MAX_SLOTS tags would
 * be slow.  The list is kept in TopMemoryContext and belongs to the
 * transaction whose local id is taken_lxid: a call in a later transaction
 * finds another id and starts afresh, so no end-of-transaction callback
 * is needed.  An entry may outlive its lock (a subtransaction that took
 * it rolled back), so each is checked with LockHeldByMe before use.
 */
typedef struct TakenSlot
{
	int64		key;
	int			slot;
} TakenSlot;

static TakenSlot *taken_slots = NULL;
static int	taken_count = 0;
static int	taken_size = 0;
static LocalTransactionId taken_lxid = InvalidLocalTransactionId;

/* Forget the list when it belongs to an earlier transaction. */
static void
taken_slots_check_xact(void)
{
	if (taken_lxid != compat_my_lxid())
	{
		taken_count = 0;
		taken_lxid = compat_my_lxid();
	}
}

/* Remember that this transaction took slot of key. */
static void
remember_taken_slot(int64 key, int slot)
{
	taken_slots_check_xact();
	if (taken_count == taken_size)
	{
		int			newsize = Max(taken_size * 2, 8);

		if (taken_slots == NULL)
			taken_slots = MemoryContextAlloc(TopMemoryContext,
											 newsize * sizeof(TakenSlot));
		else
			taken_slots = repalloc(taken_slots, newsize * sizeof(TakenSlot));
		taken_size = newsize;
	}
	taken_slots[taken_count].key = key;
	taken_slots[taken_count].slot = slot;
	taken_count++;
}

/*
 * The slot of key this transaction holds, whichever slot count it was
 * taken with, or 0.
 */
static int
held_slot(int64 key)
{
	int			i;

	taken_slots_check_xact();
	for (i = 0; i < taken_count; i++)
	{
		LOCKTAG		tag;

		if (taken_slots[i].key != key)
			continue;
		slot_locktag(&tag, key, taken_slots[i].slot);
		if (compat_LockHeldByMe(&tag, ExclusiveLock))
			return taken_slots[i].slot;
	}
	return 0;
}

/* Take the first free slot of key without waiting; its number, or 0. */
static int
try_any_slot(int64 key, int slots, int first)
{
	int			i;

	for (i = 0; i < slots; i++)
	{
		int			slot = (first - 1 + i) % slots + 1;
		LOCKTAG		tag;

		slot_locktag(&tag, key, slot);
		if (LockAcquire(&tag, ExclusiveLock, false, true) !=
			LOCKACQUIRE_NOT_AVAIL)
			return slot;
	}
	return 0;
}

/* Milliseconds from now until deadline, at least 0. */
static int
ms_left(TimestampTz deadline)
{
	long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
													   deadline);

	return (int) Min(Max(left, 0), INT_MAX);
}

/*
 * Take a slot of key, 1 to slots, waiting at most wait_ms (negative: as
 * long as it takes, obeying lock_timeout); the slot's number, or 0 when
 * the bound ran out, having taken nothing.  *waited says whether it had
 * to wait.
 */
static int
take_slot(int64 key, int slots, int wait_ms, bool *waited)
{
	LOCKTAG		gate;
	ResourceOwner gate_owner = CurrentResourceOwner;
	ResourceOwner save_owner;
	int			slot;
	TimestampTz deadline = 0;
	bool		bounded = wait_ms >= 0;
	bool		lock_timeout_bound = false;

	*waited = false;
	slot_locktag(&gate, key, 0);

	if (bounded)
		deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), wait_ms);

	/*
	 * The gate: most calls find it free and spare the subtransaction.  '0'
	 * never waits, not even for the gate: a gate held by someone else
	 * mostly means a waiter is first in line for the next free slot, which
	 * a caller that does not wait must not take from it.
	 */
	if (LockAcquire(&gate, ExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
	{
		if (wait_ms == 0)
			return 0;
		*waited = true;
		if (!bounded)
			(void) LockAcquire(&gate, ExclusiveLock, false, false);
		else if (!entitlock_wait_tag(&gate, ExclusiveLock, wait_ms))
			return 0;
		else
		{
			/*
			 * Taken in an internal subtransaction, the gate passed on its
			 * commit to the (sub)transaction's resource owner, which need not
			 * be the current one (a portal's, say); it is given back there.
			 */
			gate_owner = CurTransactionResourceOwner;
		}
	}

	slot = try_any_slot(key, slots, 1);
	if (slot == 0 && wait_ms != 0)
	{
		/*
		 * Wait with the gate held.  An unbounded wait still obeys lock_timeout,
		 * counted from here, as each of the waits below replaces it.
		 */
		int			next = 1;

		*waited = true;
		if (!bounded && LockTimeout > 0)
		{
			deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												   LockTimeout);
			lock_timeout_bound = true;
		}
		for (;;)
		{
			int			this_ms = SLOT_TICK_MS;

			if (bounded || lock_timeout_bound)
			{
				int			left = ms_left(deadline);

				if (left <= 0)
					break;
				this_ms = Min(this_ms, left);
			}
			if (slots <= SLOT_OLDEST_MAX)
			{
				int			oldest = oldest_slot(key, slots);

				if (oldest != 0)
					next = oldest;
			}
			if (wait_for_slot(key, next, this_ms))
			{
				slot = next;
				break;
			}
			next = next % slots + 1;
			slot = try_any_slot(key, slots, next);
			if (slot != 0)
				break;
		}
	}

	save_owner = CurrentResourceOwner;
	CurrentResourceOwner = gate_owner;
	if (!LockRelease(&gate, ExclusiveLock, false))
	{
		CurrentResourceOwner = save_owner;
		elog(ERROR, "entitlock semaphore gate was not held");
	}
	CurrentResourceOwner = save_owner;
	if (slot == 0 && lock_timeout_bound)
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("canceling statement due to lock timeout")));
	return slot;
}

/*
 * entitlock.lock_slot(name text, slots integer, wait interval DEFAULT NULL)
 * returns integer
 *
 * Takes one of slots slots of the semaphore name until the end of the
 * transaction and returns its number (1 to slots); see the file header.
 * wait NULL waits as long as it takes; a bound returns NULL when it runs
 * out; '0' never waits.  A transaction that holds a slot of name already
 * gets that slot back.  Bad arguments are errors that take nothing.
 */
Datum
entitlock_lock_slot(PG_FUNCTION_ARGS)
{
	text	   *name = entitlock_name_arg(fcinfo, 0, &name_messages);
	int			slots = entitlock_slots_arg(fcinfo, 1);
	int			wait_ms = -1;
	int64		key;
	int			slot;
	bool		waited;
	TimestampTz start;
	int			flags = 0;

	if (PG_NARGS() > 2 && !PG_ARGISNULL(2))
		wait_ms = entitlock_interval_ms(PG_GETARG_INTERVAL_P(2),
										"wait must not be negative");
	entitlock_check_not_parallel();
	key = entitlock_name_key(name);

	slot = held_slot(key);
	if (slot != 0)
	{
		entitlock_stats_begin();
		entitlock_stats_count(ENTITLOCK_STATS_SLOT, name, false, 0);
		PG_RETURN_INT32(slot);
	}

	entitlock_stats_begin();
	start = GetCurrentTimestamp();
	slot = take_slot(key, slots, wait_ms, &waited);
	if (slot != 0)
		remember_taken_slot(key, slot);
	if (waited && entitlock_stats_on())
		entitlock_stats_waited(start);
	/*
	 * A timeout is a bounded wait that ran out, as for lock(name, timeout)
	 * and leases: '0' (which never waits) returning NULL is not one.
	 */
	if (slot == 0 && wait_ms > 0)
		flags |= ENTITLOCK_STATS_TIMEOUT;
	entitlock_stats_count(ENTITLOCK_STATS_SLOT, name, false, flags);

	if (slot == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT32(slot);
}
