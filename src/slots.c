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
 *	1. A transaction that holds a slot of the name already gets it back.
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
 *	   queues on one slot's lock; when that has not come free within
 *	   ROTATE_FACTOR times deadlock_timeout, it tries all slots again
 *	   without waiting and then queues on the next one.  Each queueing
 *	   lasts longer than deadlock_timeout, so the deadlock detector
 *	   examines it: a cycle of waits that runs through the slot being
 *	   waited for ends with deadlock_detected (40P01).  (A cycle through a
 *	   slot other than the one waited for is found once the rotation
 *	   reaches that slot.)  The price is that a slot that frees while the
 *	   gate holder waits on another one stays free until that one frees or
 *	   the rotation comes round; the waiters behind the gate then find it
 *	   free at once.
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
#include "entitlock.h"
#include "miscadmin.h"
#include "slots.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(entitlock_lock_slot);

/*
 * The gate holder queues on one slot for ROTATE_FACTOR times
 * deadlock_timeout (at least ROTATE_MIN_MS) before trying the others.
 */
#define ROTATE_FACTOR 2
#define ROTATE_MIN_MS 100

/* The lock tag of slot (1 to ENTITLOCK_MAX_SLOTS) of key, or its gate (0). */
void
entitlock_slot_locktag(LOCKTAG *tag, int64 key, int slot)
{
	Assert(slot >= 0 && slot <= ENTITLOCK_MAX_SLOTS);
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId,
						 (uint32) (key >> 32), (uint32) key,
						 ENTITLOCK_SLOT_TAG_BASE + slot);
}

/*
 * The slot count in argument argno: present, 1 to ENTITLOCK_MAX_SLOTS.
 */
int
entitlock_slots_arg(FunctionCallInfo fcinfo, int argno)
{
	int32		slots;

	entitlock_require_arg(fcinfo, argno, "slots");
	slots = PG_GETARG_INT32(argno);
	if (slots < 1 || slots > ENTITLOCK_MAX_SLOTS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("slots must be between 1 and %d", ENTITLOCK_MAX_SLOTS),
				 errdetail("The value given was %d.", slots)));
	return slots;
}

/* The slot of key among 1..slots this transaction holds, or 0. */
static int
held_slot(int64 key, int slots)
{
	int			slot;

	for (slot = 1; slot <= slots; slot++)
	{
		LOCKTAG		tag;

		entitlock_slot_locktag(&tag, key, slot);
		if (compat_LockHeldByMe(&tag, ExclusiveLock))
			return slot;
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

		entitlock_slot_locktag(&tag, key, slot);
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
	int			slot;
	int			rotate_ms;
	TimestampTz deadline = 0;
	bool		bounded = wait_ms >= 0;
	bool		lock_timeout_bound = false;

	*waited = false;
	entitlock_slot_locktag(&gate, key, 0);

	/*
	 * '0' never waits, not even for the gate, which another caller may hold
	 * for a moment: it tries the slots directly.
	 */
	if (wait_ms == 0)
		return try_any_slot(key, slots, 1);

	if (bounded)
		deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), wait_ms);

	/* The gate: most calls find it free and spare the subtransaction. */
	if (LockAcquire(&gate, ExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
	{
		*waited = true;
		if (!bounded)
			(void) LockAcquire(&gate, ExclusiveLock, false, false);
		else if (!entitlock_wait_tag(&gate, ExclusiveLock, wait_ms))
			return 0;
	}

	slot = try_any_slot(key, slots, 1);
	if (slot == 0)
	{
		/*
		 * Wait with the gate held.  An unbounded wait still obeys lock_timeout,
		 * counted from here, as each of the waits below replaces it.
		 */
		int			next = 1 + (int) ((uint32) MyProcPid % (uint32) slots);

		*waited = true;
		if (!bounded && LockTimeout > 0)
		{
			deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												   LockTimeout);
			lock_timeout_bound = true;
		}
		rotate_ms = Max(ROTATE_MIN_MS, Min(DeadlockTimeout, INT_MAX / ROTATE_FACTOR) *
						ROTATE_FACTOR);
		for (;;)
		{
			LOCKTAG		tag;
			int			this_ms = rotate_ms;

			if (bounded || lock_timeout_bound)
			{
				int			left = ms_left(deadline);

				if (left <= 0)
					break;
				this_ms = Min(this_ms, left);
			}
			entitlock_slot_locktag(&tag, key, next);
			if (entitlock_wait_tag(&tag, ExclusiveLock, this_ms))
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

	if (!LockRelease(&gate, ExclusiveLock, false))
		elog(ERROR, "entitlock semaphore gate was not held");
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
	text	   *name = entitlock_nonempty_text_arg(fcinfo, 0, "semaphore name");
	int			slots = entitlock_slots_arg(fcinfo, 1);
	int			wait_ms = -1;
	int64		key;
	int			slot;
	bool		waited;
	TimestampTz start;
	int			flags = 0;

	if (PG_NARGS() > 2 && !PG_ARGISNULL(2))
		wait_ms = entitlock_interval_ms(PG_GETARG_INTERVAL_P(2), "wait");
	if (IsInParallelMode())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
				 errmsg("cannot take entitlock locks during a parallel operation")));
	key = entitlock_name_key(name);

	slot = held_slot(key, slots);
	if (slot != 0)
	{
		entitlock_stats_begin();
		entitlock_stats_count(ENTITLOCK_STATS_SLOT, name, false, 0);
		PG_RETURN_INT32(slot);
	}

	entitlock_stats_begin();
	start = GetCurrentTimestamp();
	slot = take_slot(key, slots, wait_ms, &waited);
	if (waited && entitlock_stats_on())
		entitlock_stats_waited(start);
	if (slot == 0)
		flags |= ENTITLOCK_STATS_TIMEOUT;
	entitlock_stats_count(ENTITLOCK_STATS_SLOT, name, false, flags);

	if (slot == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT32(slot);
}
