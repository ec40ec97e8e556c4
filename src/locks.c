/*-------------------------------------------------------------------------
 *
 * locks.c
 *	  Transaction-scoped named locks: entitlock.lock, try_lock, lock_shared,
 *	  try_lock_shared, lock_all, lock_entity and try_lock_entity.
 *
 * Each lock is the very advisory lock that pg_advisory_xact_lock(key) takes
 * (same lock tag, same lock method), so it appears in pg_locks, is released
 * by COMMIT, ROLLBACK or the death of the backend, and code that cannot load
 * the extension can still coordinate with code that does.  Waiting is left
 * entirely to PostgreSQL's lock manager, which gives lock_timeout,
 * statement_timeout, cancellation and deadlock detection for free.  An
 * exclusive lock also takes one internal lock, its key's stripe (below).
 *
 * Lock escalation.  A recording call (usage.c) holds shared locks on its
 * subjects' and pairs' keys until its transaction ends, which is what makes
 * an exclusive lock(subject) or lock_entity(subject, feature) hold it back
 * and be held back by it.  Each such lock is an entry in the shared lock
 * table, which has room for about max_locks_per_transaction entries per
 * connection (some 7,800 in all at default settings), so one transaction
 * recording on many meters would run out of it.  Once a transaction has
 * taken entitlock.lock_escalation_threshold of those locks, its recording
 * calls take no more: instead it holds every escalation stripe, a small
 * fixed set of locks in the internal key space, in RowExclusiveLock, and
 * every exclusive lock taken through this file (lock, try_lock, the timed
 * lock, lock_all, lock_entity and try_lock_entity) also takes its key's
 * stripe in ShareLock.  Those two modes conflict and neither conflicts
 * with itself, so lock callers do not hold each other back there, nor do
 * escalated recorders, but an escalated recorder and an exclusive lock
 * holder wait for each other as if the recorder held a shared lock on
 * every key.  So escalation keeps every guarantee of the per-key locks,
 * at the price of also holding back exclusive lockers of names it never
 * recorded on, until it ends.
 *
 * The details, and why:
 *	- Striping the coarse lock by key keeps the lock() calls of a whole
 *	  database off one lock tag, so they spread over the lock manager's
 *	  partitions as their own keys do.
 *	- A transaction escalates by taking every stripe, in ascending order,
 *	  waiting for the exclusive lock holders of the moment, for up to a
 *	  second (escalate()); once escalated it never waits for a
 *	  stripe again.  But a transaction that holds a
 *	  stripe itself, as an exclusive lock holder, takes them only all at
 *	  once without waiting (escalate(0)), and otherwise goes on with
 *	  per-key locks and tries again later: two transactions that each lock
 *	  a name of their own and then record in bulk would else wait for each
 *	  other's stripe, though they share no name.  (Such a transaction can
 *	  still run out of the lock table if others hold exclusive locks all
 *	  along.)  lock_all() takes its keys' stripes in ascending order, after
 *	  the keys.
 *	- A lock caller takes its key first and the stripe second, so that while
 *	  it waits for a recorder's key it holds no stripe an escalating
 *	  recorder could be waiting for.
 *	- Whether a transaction has escalated is asked of the lock manager
 *	  (does it hold the last stripe?), not remembered: a subtransaction
 *	  that escalated and rolled back has given the stripes back.  The count
 *	  of locks taken only grows until the transaction ends (a rolled back
 *	  subtransaction's locks stay counted), which can only make escalation
 *	  come early.
 *	- pg_advisory_xact_lock() called directly takes no stripe, so an
 *	  escalated recorder does not wait for it, nor it for the recorder.
 *
 * Relies on keys.c for turning names into keys.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/subtrans.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "compat.h"
#include "datatype/timestamp.h"
#include "locks.h"
#include "miscadmin.h"
#include "stats.h"
#include "storage/lock.h"
#include "storage/procarray.h"
#include "util.h"
#include "utils/array.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(entitlock_lock);
PG_FUNCTION_INFO_V1(entitlock_lock_timeout);
PG_FUNCTION_INFO_V1(entitlock_try_lock);
PG_FUNCTION_INFO_V1(entitlock_lock_shared);
PG_FUNCTION_INFO_V1(entitlock_try_lock_shared);
PG_FUNCTION_INFO_V1(entitlock_lock_all);
PG_FUNCTION_INFO_V1(entitlock_lock_entity);
PG_FUNCTION_INFO_V1(entitlock_try_lock_entity);

/*
 * The escalation stripes: ESCALATION_STRIPES internal locks with fixed keys
 * (any fixed values, never changed), a key's stripe chosen by its low bits.
 */
#define ESCALATION_STRIPES 64	/* at most 64: lock_all() keeps a bitmap */
#define ESCALATION_KEY_BASE INT64CONST(0x656e746c65736300)

/*
 * Lock callers take their key's stripe in one mode, escalated recorders
 * every stripe in the other.
 */
#define STRIPE_LOCKER_MODE ShareLock
#define STRIPE_RECORDER_MODE RowExclusiveLock

/* entitlock.lock_escalation_threshold */
static int	lock_escalation_threshold = 1000;

/* Recording locks this transaction has taken; see forget_recording_locks(). */
static int64 recording_locks_taken = 0;

/*
 * A transaction that could not escalate (a stripe was held) tries again
 * once it has taken this many more per-key locks, not at every call.
 */
#define ESCALATION_RETRY 64
static int64 next_escalation_try = 0;
static int64 escalation_retry_gap = ESCALATION_RETRY;

/* How long an escalation waits for exclusive lock holders, at most. */
#define ESCALATION_WAIT_MS 1000

/* The lock tag pg_advisory_xact_lock(bigint) uses; see lockfuncs.c. */
static inline void
set_key_locktag(LOCKTAG *tag, int64 key)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId,
						 (uint32) (key >> 32), (uint32) key, 1);
}

/* The tag of key in the internal key space; see entitlock_acquire_internal() */
static inline void
set_internal_locktag(LOCKTAG *tag, int64 key)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId,
						 (uint32) (key >> 32), (uint32) key,
						 ENTITLOCK_INTERNAL_LOCKS);
}

static inline void
set_stripe_locktag(LOCKTAG *tag, int stripe)
{
	set_internal_locktag(tag, ESCALATION_KEY_BASE + stripe);
}

static inline int
key_stripe(int64 key)
{
	return (int) ((uint64) key % ESCALATION_STRIPES);
}

/*
 * Parallel workers do not share their leader's lock owner, so a lock taken
 * in one would not protect the leader's work.  PostgreSQL forbids advisory
 * locks there for the same reason.
 */
void
entitlock_check_not_parallel(void)
{
	if (IsInParallelMode())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
				 errmsg("cannot take entitlock locks during a parallel operation")));
}

/*
 * Take the lock tag in mode, waiting or not; returns what LockAcquire()
 * says.  With statistics on, a lock that is not free at once is a wait,
 * and is timed for the call in progress.  The first try does not queue,
 * so the lock is granted in the same order as without statistics.
 */
static LockAcquireResult
acquire_tag(const LOCKTAG *tag, LOCKMODE mode, bool wait)
{
	LockAcquireResult result;
	TimestampTz start;

	entitlock_check_not_parallel();
	if (!wait || !entitlock_stats_on())
		return LockAcquire(tag, mode, false, !wait);
	result = LockAcquire(tag, mode, false, true);
	if (result != LOCKACQUIRE_NOT_AVAIL)
		return result;
	start = GetCurrentTimestamp();
	result = LockAcquire(tag, mode, false, false);
	entitlock_stats_waited(start);
	return result;
}

/*
 * Take a transaction-scoped lock on key in mode.  With wait, block in the
 * lock manager (subject to lock_timeout, statement_timeout and deadlock
 * detection) and return true; without, return whether it was granted.
 * Re-taking a lock the transaction already holds succeeds at once.
 */
bool
entitlock_acquire(int64 key, LOCKMODE mode, bool wait)
{
	LOCKTAG		tag;

	set_key_locktag(&tag, key);
	return acquire_tag(&tag, mode, wait) != LOCKACQUIRE_NOT_AVAIL;
}

/*
 * Take a transaction-scoped lock in entitlock's internal key space, which
 * no SQL function reaches: an advisory lock tag whose fourth field is
 * ENTITLOCK_INTERNAL_LOCKS (pg_advisory_lock() uses 1 and 2).  entitlock's
 * own code serialises on these where no user-visible name is involved
 * (a usage idempotency key, a counter row being created), so that they
 * can never collide with, or be taken by, an application's locks.  They
 * show in pg_locks as advisory locks with objsubid 3.  Always waits.
 */
void
entitlock_acquire_internal(int64 key, LOCKMODE mode)
{
	LOCKTAG		tag;

	set_internal_locktag(&tag, key);
	(void) acquire_tag(&tag, mode, true);
}

/*
 * Give back one entitlock_acquire_internal() of key in mode, before the
 * transaction ends: for a lock that only had to be held until the caller
 * had done something.
 */
void
entitlock_release_internal(int64 key, LOCKMODE mode)
{
	LOCKTAG		tag;

	set_internal_locktag(&tag, key);
	if (!LockRelease(&tag, mode, false))
		elog(ERROR, "entitlock internal lock %lld was not held",
			 (long long) key);
}

/*
 * Undo one entitlock_acquire of key in mode by this transaction.  Used to
 * back out of a half-taken pair of locks, and by a lease call that changed
 * nothing; a lock taken earlier in the transaction stays held, as its
 * count only drops by one.
 */
void
entitlock_release(int64 key, LOCKMODE mode)
{
	LOCKTAG		tag;

	set_key_locktag(&tag, key);
	if (!LockRelease(&tag, mode, false))
		elog(ERROR, "entitlock lock %lld was not held",
			 (long long) key);
}

/*
 * Wait in the lock manager for the lock tag in mode, for at most timeout_ms
 * (more than zero); false when that expires.  With keep, the lock is then
 * held until the end of the transaction; without, it is given back as soon
 * as it is granted, for a caller that only waits for its holders to go.
 *
 * The wait runs with lock_timeout set to the limit, inside an internal
 * subtransaction.  When the lock manager gives up it raises
 * lock_not_available; rolling back the subtransaction takes us out of the
 * lock's wait queue and restores lock_timeout, while everything the
 * transaction did and held before stays as it was.  Polling with
 * try-lock instead would lose the queue position to newcomers and would
 * hide deadlocks from PostgreSQL's detector.  Any other error (deadlock,
 * statement_timeout, cancel) is re-raised unchanged.
 *
 * When the statement timer expires in the same interrupt check as the lock
 * timer, ProcessInterrupts() reports only the lock timeout and clears the
 * statement timeout's indicator.  Core can afford that, as either error
 * ends the statement, but turning it into "false" would let the statement
 * run on past statement_timeout.  So a lock timeout that arrives after the
 * statement timer went off is reported as the statement timeout it also
 * is.  (A user's cancel request landing in that same instant cannot be
 * told apart from the lock timeout; PL/pgSQL's EXCEPTION WHEN
 * lock_not_available has the same blind spot.)
 */
static bool
wait_with_lock_timeout(const LOCKTAG *tag, LOCKMODE mode, int timeout_ms,
					   bool keep)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	char		timeout_str[32];
	volatile bool acquired = false;
	bool		statement_timer_armed;

	snprintf(timeout_str, sizeof(timeout_str), "%d", timeout_ms);
	statement_timer_armed = get_timeout_active(STATEMENT_TIMEOUT);

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcontext);

	PG_TRY();
	{
		int			save_nestlevel = NewGUCNestLevel();

		(void) set_config_option("lock_timeout", timeout_str,
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);

		(void) LockAcquire(tag, mode, false, false);

		/*
		 * The lock timer can go off after the lock was granted, before the
		 * woken waiter ran: ProcSleep() then returns success with the
		 * timeout's cancel still pending.  Raise it here, where it means
		 * "false", not at the caller's next statement.
		 */
		CHECK_FOR_INTERRUPTS();
		AtEOXact_GUC(true, save_nestlevel);
		if (!keep)
			(void) LockRelease(tag, mode, false);

		/* A kept lock now passes to the outer transaction's resource owner. */
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
		acquired = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcontext);
		edata = CopyErrorData();
		FlushErrorState();

		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;

		if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
			ReThrowError(edata);
		FreeErrorData(edata);

		/*
		 * An expired timer is no longer active; see above.  If it expired
		 * only during the rollback, its cancel is still pending: let
		 * PostgreSQL raise that one, so that no second cancel is left behind
		 * for a caller that catches this error.
		 */
		CHECK_FOR_INTERRUPTS();
		if (statement_timer_armed && !get_timeout_active(STATEMENT_TIMEOUT))
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("canceling statement due to statement timeout")));
	}
	PG_END_TRY();

	return acquired;
}

/*
 * Wait for the lock tag for at most timeout_ms; false when that expires.
 * A negative timeout_ms waits as long as it takes, as entitlock_acquire();
 * see wait_with_lock_timeout() for how.
 */
static bool
acquire_tag_timeout(const LOCKTAG *tag, LOCKMODE mode, int timeout_ms)
{
	bool		acquired;
	TimestampTz start;

	/* Most calls find the lock free; spare them the subtransaction. */
	if (acquire_tag(tag, mode, false) != LOCKACQUIRE_NOT_AVAIL)
		return true;
	/* lock_timeout = 0 means "wait forever", so a zero limit stops here. */
	if (timeout_ms == 0)
		return false;
	if (timeout_ms < 0)
		return acquire_tag(tag, mode, true) != LOCKACQUIRE_NOT_AVAIL;

	start = GetCurrentTimestamp();
	/* The wait is timed once, here. */
	acquired = wait_with_lock_timeout(tag, mode, timeout_ms, true);
	if (entitlock_stats_on())
		entitlock_stats_waited(start);
	return acquired;
}

/* entitlock_acquire(), waiting at most timeout_ms; see acquire_tag_timeout() */
bool
entitlock_acquire_timeout(int64 key, LOCKMODE mode, int timeout_ms)
{
	LOCKTAG		tag;

	set_key_locktag(&tag, key);
	return acquire_tag_timeout(&tag, mode, timeout_ms);
}

/*
 * Wait for the transaction that wrote xid to end, for at most timeout_ms
 * (more than zero); false when that expires, true once it has ended.
 *
 * This is how a row lock waits for a row's writer: a transaction holds the
 * lock on its own transaction id exclusively until it ends, and a waiter
 * asks for it in share mode.  So the wait is a lock wait, which
 * PostgreSQL's deadlock detector sees (a cycle through it ends with
 * deadlock_detected), and statement_timeout and cancels end it with their
 * usual errors.  The waiter keeps nothing: the lock is given back as soon
 * as it is granted, and no one else asks for it in a mode that would
 * queue behind ours.
 *
 * xid may be a subtransaction's, whose lock goes at its own commit: if it
 * is then still in progress, it lives on in its parent, which is waited
 * for next.  Callers time their own waits, so this one is not counted for
 * statistics.
 */
bool
entitlock_wait_for_xact(TransactionId xid, int timeout_ms)
{
	TimestampTz deadline;

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	while (TransactionIdIsValid(xid))
	{
		LOCKTAG		tag;

		SET_LOCKTAG_TRANSACTION(tag, xid);
		if (LockAcquire(&tag, ShareLock, false, true) != LOCKACQUIRE_NOT_AVAIL)
			(void) LockRelease(&tag, ShareLock, false);
		else
		{
			long		left;

			left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
												   deadline);
			if (left <= 0 ||
				!wait_with_lock_timeout(&tag, ShareLock, (int) left, false))
				return false;
		}
		if (!TransactionIdIsInProgress(xid))
			break;
		xid = SubTransGetParent(xid);
	}
	return true;
}

/*
 * Exclusive locks
 *
 * An exclusive lock on a name is its key in ExclusiveLock, then its
 * stripe in STRIPE_LOCKER_MODE, so that escalated recorders and exclusive
 * lock holders exclude each other (see the file header).  When the stripe
 * cannot be had, the key is given back: the caller holds nothing new.
 */
static bool
acquire_exclusive(int64 key, bool wait)
{
	LOCKTAG		tag;

	if (!entitlock_acquire(key, ExclusiveLock, wait))
		return false;
	set_stripe_locktag(&tag, key_stripe(key));
	if (acquire_tag(&tag, STRIPE_LOCKER_MODE, wait) != LOCKACQUIRE_NOT_AVAIL)
		return true;
	entitlock_release(key, ExclusiveLock);
	return false;
}

/* As acquire_exclusive(), both locks within timeout_ms in all. */
static bool
acquire_exclusive_timeout(int64 key, int timeout_ms)
{
	LOCKTAG		tag;
	TimestampTz start;
	int64		elapsed_ms;

	if (timeout_ms < 0)
		return acquire_exclusive(key, true);
	start = GetCurrentTimestamp();
	if (!entitlock_acquire_timeout(key, ExclusiveLock, timeout_ms))
		return false;
	elapsed_ms = (GetCurrentTimestamp() - start) / 1000;
	set_stripe_locktag(&tag, key_stripe(key));
	if (acquire_tag_timeout(&tag, STRIPE_LOCKER_MODE,
							(int) Max(timeout_ms - elapsed_ms, 0)))
		return true;
	entitlock_release(key, ExclusiveLock);
	return false;
}

/*
 * Recording locks
 */

/*
 * Escalate: take every stripe in STRIPE_RECORDER_MODE, in ascending order,
 * waiting for exclusive lock holders for at most wait_ms in all (0: not at
 * all).  When one cannot be had in time, give back those this attempt took
 * and return false; the caller goes on with per-key locks and tries again
 * later.
 *
 * A transaction that holds a stripe itself, as an exclusive lock holder (a
 * lock() on its tenant before a bulk import, say), must not wait: it could
 * wait for another such transaction that waits for it in turn, though the
 * two share no name.  Others wait, but only ESCALATION_WAIT_MS: exclusive
 * locks are mostly held for a request's length, but a session idle in its
 * transaction with a lock() held would hold them back indefinitely.
 */
static bool
escalate(int wait_ms)
{
	LOCKTAG		tag;
	TimestampTz deadline;
	int			i;

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), wait_ms);
	for (i = 0; i < ESCALATION_STRIPES; i++)
	{
		long		left = 0;

		if (wait_ms > 0)
			left = Max(TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
													   deadline), 1);
		set_stripe_locktag(&tag, i);
		if (!acquire_tag_timeout(&tag, STRIPE_RECORDER_MODE, (int) left))
		{
			while (--i >= 0)
			{
				set_stripe_locktag(&tag, i);
				LockRelease(&tag, STRIPE_RECORDER_MODE, false);
			}
			return false;
		}
	}
	return true;
}

/* Does this transaction hold a stripe as an exclusive lock holder? */
static bool
holds_locker_stripe(void)
{
	LOCKTAG		tag;
	int			i;

	for (i = 0; i < ESCALATION_STRIPES; i++)
	{
		set_stripe_locktag(&tag, i);
		if (compat_LockHeldByMe(&tag, STRIPE_LOCKER_MODE))
			return true;
	}
	return false;
}

/* Order two elements by the int64 key they start with. */
static int
cmp_leading_keys(const void *a, const void *b)
{
	int64		x;
	int64		y;

	memcpy(&x, a, sizeof(int64));
	memcpy(&y, b, sizeof(int64));
	return (x > y) - (x < y);
}

/*
 * The order every caller taking several keys takes them in, so that no two
 * such callers can deadlock on them: ascending (signed) key order, each key
 * once.  Sorts the n elements of elemsize bytes at elems, each starting
 * with its int64 key, drops all but one element of each key, and returns
 * how many are left.
 */
int
entitlock_sort_keys(void *elems, int n, size_t elemsize)
{
	char	   *base = (char *) elems;
	int			m = 0;
	int			i;

	qsort(elems, n, elemsize, cmp_leading_keys);
	for (i = 0; i < n; i++)
	{
		if (m > 0 && cmp_leading_keys(base + (m - 1) * elemsize,
									  base + i * elemsize) == 0)
			continue;
		if (m != i)
			memcpy(base + m * elemsize, base + i * elemsize, elemsize);
		m++;
	}
	return m;
}

/* Has this transaction (still) escalated? */
static bool
escalated(void)
{
	LOCKTAG		tag;

	set_stripe_locktag(&tag, ESCALATION_STRIPES - 1);
	return compat_LockHeldByMe(&tag, STRIPE_RECORDER_MODE);
}

/*
 * Hold back exclusive lock callers on the keys of a recording call until
 * the transaction ends, and wait for those holding them now: keys in
 * ShareLock, in the order given, or once the transaction has taken
 * entitlock.lock_escalation_threshold of those, every stripe in
 * STRIPE_RECORDER_MODE instead (see the file header).
 */
void
entitlock_acquire_recording(const int64 *keys, int nkeys)
{
	LOCKTAG		tag;
	int			i;

	if (recording_locks_taken + nkeys > lock_escalation_threshold &&
		recording_locks_taken >= next_escalation_try)
	{
		if (escalated() ||
			escalate(holds_locker_stripe() ? 0 : ESCALATION_WAIT_MS))
		{
			/* Counted as if taken, so that the next call escalates too. */
			recording_locks_taken += nkeys;
			return;
		}
		/*
		 * Some stripe is held: per-key locks for a while, then again, after
		 * twice as many each time (each try may wait ESCALATION_WAIT_MS).
		 */
		next_escalation_try = recording_locks_taken + escalation_retry_gap;
		escalation_retry_gap *= 2;
	}
	for (i = 0; i < nkeys; i++)
	{
		set_key_locktag(&tag, keys[i]);
		if (acquire_tag(&tag, ShareLock, true) == LOCKACQUIRE_OK)
			recording_locks_taken++;
	}
}

/* A transaction's end has released its recording locks. */
static void
forget_recording_locks(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			recording_locks_taken = 0;
			next_escalation_try = 0;
			escalation_retry_gap = ESCALATION_RETRY;
			break;
		default:
			break;
	}
}

/* At load: the escalation threshold, and its count's reset. */
void
entitlock_locks_init(void)
{
	DefineCustomIntVariable("entitlock.lock_escalation_threshold",
							"Sets how many usage locks a transaction takes before it locks coarsely instead.",
							"Past it, the transaction's recording calls take no lock per subject and feature, "
							"and exclusive entitlock locks taken by other transactions wait for it to end.",
							&lock_escalation_threshold,
							1000, 0, INT_MAX,
							PGC_USERSET, 0,
							NULL, NULL, NULL);
	RegisterXactCallback(forget_recording_locks, NULL);
}

/* The lock name in argument 0, which must be non-NULL and not empty. */
static text *
name_arg(FunctionCallInfo fcinfo, int64 *key)
{
	text	   *name = entitlock_text_arg(fcinfo, 0, "lock name must not be null");

	*key = entitlock_name_key(name);
	return name;
}

/* Count a lock call on name, if statistics are on (see stats.c). */
static inline void
count_lock_call(text *name, int flags)
{
	entitlock_stats_count(ENTITLOCK_STATS_LOCK, name, false, flags);
}

/* The common shape of lock, try_lock, lock_shared and try_lock_shared. */
static bool
lock_name_arg(FunctionCallInfo fcinfo, LOCKMODE mode, bool wait)
{
	int64		key;
	text	   *name = name_arg(fcinfo, &key);
	bool		got;

	entitlock_stats_begin();
	if (mode == ExclusiveLock)
		got = acquire_exclusive(key, wait);
	else
		got = entitlock_acquire(key, mode, wait);

	count_lock_call(name, 0);
	return got;
}

/*
 * entitlock.lock(name text) returns void
 *
 * Exclusive lock on key(name) until the end of the transaction, with its
 * escalation stripe (see the file header); waits.
 * NULL or empty name is an error.
 */
Datum
entitlock_lock(PG_FUNCTION_ARGS)
{
	(void) lock_name_arg(fcinfo, ExclusiveLock, true);
	PG_RETURN_VOID();
}

/*
 * entitlock.lock(name text, timeout interval) returns boolean
 *
 * Exclusive lock, waiting at most timeout (which replaces lock_timeout for
 * this wait; statement_timeout and deadlock detection still apply).  False
 * when the time runs out; the transaction stays usable and keeps its other
 * locks.  A zero timeout never waits.  NULL arguments are errors.
 */
Datum
entitlock_lock_timeout(PG_FUNCTION_ARGS)
{
	int64		key;
	text	   *name = name_arg(fcinfo, &key);
	int			timeout_ms;
	bool		got;

	entitlock_require_arg(fcinfo, 1, "timeout must not be null");
	timeout_ms = entitlock_interval_ms(PG_GETARG_INTERVAL_P(1),
									   "timeout must not be negative");

	entitlock_stats_begin();
	got = acquire_exclusive_timeout(key, timeout_ms);
	count_lock_call(name, got ? 0 : ENTITLOCK_STATS_TIMEOUT);
	PG_RETURN_BOOL(got);
}

/*
 * entitlock.try_lock(name text) returns boolean
 *
 * Exclusive lock if it is free (or already ours) now; never waits.
 */
Datum
entitlock_try_lock(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(lock_name_arg(fcinfo, ExclusiveLock, false));
}

/*
 * entitlock.lock_shared(name text) returns void
 *
 * Shared lock on key(name): compatible with other shared holders, excluded
 * by an exclusive one.  Waits.
 */
Datum
entitlock_lock_shared(PG_FUNCTION_ARGS)
{
	(void) lock_name_arg(fcinfo, ShareLock, true);
	PG_RETURN_VOID();
}

/*
 * entitlock.try_lock_shared(name text) returns boolean
 */
Datum
entitlock_try_lock_shared(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(lock_name_arg(fcinfo, ShareLock, false));
}

/* A name of lock_all()'s array, with its key. */
typedef struct NamedKey
{
	int64		key;
	text	   *name;
} NamedKey;


/*
 * entitlock.lock_all(names text[]) returns void
 *
 * Exclusive lock on every name, taken in ascending (signed) key order with
 * duplicate keys once, so any two lock_all callers agree on the order and
 * cannot deadlock each other however their arrays overlap.  NULL elements
 * are skipped; an empty element or a NULL array is an error.  Every name is
 * checked before the first lock is taken, so bad input takes no lock.
 */
Datum
entitlock_lock_all(PG_FUNCTION_ARGS)
{
	ArrayType  *names;
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	NamedKey   *keys;
	int			nkeys = 0;
	int			lbound;
	int			last = -1;
	uint64		stripes = 0;
	int			i;

	entitlock_require_arg(fcinfo, 0, "lock name array must not be null");
	names = PG_GETARG_ARRAYTYPE_P(0);
	deconstruct_array(names, TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &nelems);

	/* Report positions as subscripts when the array has one dimension. */
	lbound = ARR_NDIM(names) == 1 ? ARR_LBOUND(names)[0] : 1;

	keys = palloc(sizeof(NamedKey) * Max(nelems, 1));
	for (i = 0; i < nelems; i++)
	{
		text	   *name;

		/* Hashing a very large array takes a while; let it be cancelled. */
		CHECK_FOR_INTERRUPTS();
		if (nulls[i])
			continue;
		name = DatumGetTextPP(elems[i]);
		if (VARSIZE_ANY_EXHDR(name) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("lock name must not be empty"),
					 errdetail("Array element %d is an empty string.",
							   lbound + i)));
		keys[nkeys].key = entitlock_name_key(name);
		keys[nkeys++].name = name;
	}

	nkeys = entitlock_sort_keys(keys, nkeys, sizeof(NamedKey));

	/*
	 * The keys, and then their stripes in ascending order, as an escalating
	 * recorder takes them (see the file header), so that the two cannot
	 * deadlock over the stripes.  Each lock taken is a call, for
	 * statistics; waits for the stripes count with the last.
	 */
	for (i = 0; i < nkeys; i++)
	{
		if (last >= 0)
			count_lock_call(keys[last].name, 0);
		entitlock_stats_begin();
		(void) entitlock_acquire(keys[i].key, ExclusiveLock, true);
		stripes |= UINT64CONST(1) << key_stripe(keys[i].key);
		last = i;
	}
	for (i = 0; i < ESCALATION_STRIPES; i++)
	{
		LOCKTAG		tag;

		if ((stripes & (UINT64CONST(1) << i)) == 0)
			continue;
		set_stripe_locktag(&tag, i);
		(void) acquire_tag(&tag, STRIPE_LOCKER_MODE, true);
	}
	if (last >= 0)
		count_lock_call(keys[last].name, 0);
	PG_RETURN_VOID();
}

/* The realm (returned), its key and the pair's key from arguments 0 and 1. */
static text *
entity_arg_keys(FunctionCallInfo fcinfo, int64 *realm_key, int64 *pair_key)
{
	text	   *realm = entitlock_text_arg(fcinfo, 0, "realm must not be null");
	text	   *entity = entitlock_text_arg(fcinfo, 1, "entity must not be null");

	/* The pair first: its checks name the empty part. */
	*pair_key = entitlock_pair_key(realm, entity);
	*realm_key = entitlock_name_key(realm);
	return realm;
}

/*
 * entitlock.lock_entity(realm text, entity text) returns void
 *
 * Shared lock on key(realm), then exclusive on key(realm, entity) (with its
 * stripe, see the file header).  Callers on different entities of one
 * realm run side by side; an exclusive lock(realm) waits for all of them
 * and holds off new ones.  The realm is always locked first, which is what
 * keeps the hierarchy deadlock-free.
 */
Datum
entitlock_lock_entity(PG_FUNCTION_ARGS)
{
	int64		realm_key;
	int64		pair_key;
	text	   *realm = entity_arg_keys(fcinfo, &realm_key, &pair_key);

	entitlock_stats_begin();
	(void) entitlock_acquire(realm_key, ShareLock, true);
	(void) acquire_exclusive(pair_key, true);
	count_lock_call(realm, 0);
	PG_RETURN_VOID();
}

/*
 * entitlock.try_lock_entity(realm text, entity text) returns boolean
 *
 * As lock_entity, without waiting.  On false the transaction holds nothing
 * new: a realm lock taken on the way is given back.
 */
Datum
entitlock_try_lock_entity(PG_FUNCTION_ARGS)
{
	int64		realm_key;
	int64		pair_key;
	text	   *realm = entity_arg_keys(fcinfo, &realm_key, &pair_key);
	bool		got = false;

	entitlock_stats_begin();
	if (entitlock_acquire(realm_key, ShareLock, false))
	{
		got = acquire_exclusive(pair_key, false);
		if (!got)
			entitlock_release(realm_key, ShareLock);
	}
	count_lock_call(realm, 0);
	PG_RETURN_BOOL(got);
}

/*
 * For lock tags of other files' own (1.2: slots.c, whose semaphores live in
 * tags of their own): wait in the lock manager for tag in mode, for at most
 * timeout_ms (more than zero), and keep it when granted; false when the
 * bound runs out, with the transaction as it was.  See
 * wait_with_lock_timeout().  Not timed for statistics.
 */
bool
entitlock_wait_tag(const LOCKTAG *tag, LOCKMODE mode, int timeout_ms)
{
	entitlock_check_not_parallel();
	return wait_with_lock_timeout(tag, mode, timeout_ms, true);
}
