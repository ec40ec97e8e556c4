/*-------------------------------------------------------------------------
 *
 * stats.c
 *	  Call statistics in shared memory: entitlock.stats and stats_reset().
 *
 * When the library is loaded through shared_preload_libraries, every call
 * is counted in a hash table in shared memory, keyed by the call's kind
 * (lock, usage, rate, idempotency, lease) and a label: the feature for
 * usage, otherwise the name's prefix up to its first ':'.  A call is
 * counted when it decides, so a refusal is counted even if the caller then
 * rolls back; counts are lost at a restart.
 *
 * The table holds at most entitlock.stats_max labels, plus one 'other'
 * entry per kind, made at startup, that counts every label past the bound
 * (so no call ever has to evict or wait for an entry).  Counting takes the
 * table's LWLock in shared mode, looks the label up and adds to its atomic
 * counters; only a label's first call takes the lock exclusively, to enter
 * it.  Readers take it shared too, and stats_reset() exclusively, as in
 * pg_stat_statements, on which this is modelled.
 *
 * A label is a name's prefix, so a name "other:..." counts under the
 * same label as the overflow.  Calls that end in an error (bad input,
 * lock_timeout, a deadlock) are not counted: they decided nothing.
 *
 * Without the preload nothing is allocated, every counting call returns at
 * its first test, and the view is empty.
 *
 * Waits are timed where entitlock takes its locks (locks.c) and reported
 * here for the call in progress: entitlock_stats_begin() starts a call,
 * entitlock_stats_waited() adds a wait to it, entitlock_stats_count()
 * (entitlock.h, which calls entitlock_stats_add() here) counts it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "stats.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "util.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(entitlock_stats_entries);
PG_FUNCTION_INFO_V1(entitlock_stats_reset);


/* Labels are cut to this many bytes (less one), at a character boundary. */
#define STATS_LABEL_LEN 64

#define OTHER_LABEL "other"

static const char *const kind_names[ENTITLOCK_STATS_NKINDS] = {
	"lock", "usage", "rate", "idempotency", "lease", "slot"
};

typedef struct StatsKey
{
	uint32		kind;
	char		label[STATS_LABEL_LEN];	/* NUL-padded */
} StatsKey;

typedef struct StatsEntry
{
	StatsKey	key;
	pg_atomic_uint64 calls;
	pg_atomic_uint64 waits;
	pg_atomic_uint64 wait_us;	/* microseconds */
	pg_atomic_uint64 timeouts;
	pg_atomic_uint64 denied;
	pg_atomic_uint64 replays;
	pg_atomic_uint64 takeovers;
} StatsEntry;

typedef struct EntitlockStatsShared
{
	LWLock	   *lock;			/* guards the hash table's entries */
	int			max;			/* entitlock.stats_max at startup */
} StatsShared;

/* Set in every backend once shared memory is attached; else NULL. */
StatsShared *entitlock_stats_shared = NULL;
static HTAB *stats_hash = NULL;

static int	stats_max = 1000;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* The call in progress: its waits so far. */
static int	call_waits = 0;
static int64 call_wait_us = 0;

static Size
stats_memsize(void)
{
	return add_size(MAXALIGN(sizeof(StatsShared)),
					hash_estimate_size(stats_max + ENTITLOCK_STATS_NKINDS,
									   sizeof(StatsEntry)));
}

static void
stats_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(stats_memsize());
	RequestNamedLWLockTranche("entitlock", 1);
}

static StatsEntry *
enter_entry(const StatsKey *key)
{
	bool		found;
	StatsEntry *e = hash_search(stats_hash, key, HASH_ENTER_NULL, &found);

	if (e != NULL && !found)
	{
		pg_atomic_init_u64(&e->calls, 0);
		pg_atomic_init_u64(&e->waits, 0);
		pg_atomic_init_u64(&e->wait_us, 0);
		pg_atomic_init_u64(&e->timeouts, 0);
		pg_atomic_init_u64(&e->denied, 0);
		pg_atomic_init_u64(&e->replays, 0);
		pg_atomic_init_u64(&e->takeovers, 0);
	}
	return e;
}

static void
make_key(StatsKey *key, int kind, const char *label, int len)
{
	memset(key, 0, sizeof(StatsKey));
	key->kind = kind;
	memcpy(key->label, label, len);
}

/* The 'other' entries; the caller holds the lock exclusively. */
static void
enter_other_entries(void)
{
	int			kind;

	for (kind = 0; kind < ENTITLOCK_STATS_NKINDS; kind++)
	{
		StatsKey	key;

		make_key(&key, kind, OTHER_LABEL, strlen(OTHER_LABEL));
		if (enter_entry(&key) == NULL)
			elog(ERROR, "out of entitlock statistics entries");
	}
}

static void
stats_shmem_startup(void)
{
	bool		found;
	HASHCTL		info;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	entitlock_stats_shared = ShmemInitStruct("entitlock stats",
											 sizeof(StatsShared), &found);
	if (!found)
	{
		entitlock_stats_shared->lock =
			&(GetNamedLWLockTranche("entitlock"))->lock;
		entitlock_stats_shared->max = stats_max;
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(StatsKey);
	info.entrysize = sizeof(StatsEntry);
	stats_hash = ShmemInitHash("entitlock stats hash",
							   stats_max + ENTITLOCK_STATS_NKINDS,
							   stats_max + ENTITLOCK_STATS_NKINDS,
							   &info, HASH_ELEM | HASH_BLOBS);
	if (!found)
		enter_other_entries();
	LWLockRelease(AddinShmemInitLock);
}

/* Called by _PG_init (entitlock.c). */
void
entitlock_stats_init(void)
{
	/*
	 * Statistics need shared memory, which only the postmaster can set
	 * aside; loaded any later, the library counts nothing.  The GUC can only
	 * be defined then, too.
	 */
	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomIntVariable("entitlock.stats_max",
							"Sets the number of labels entitlock.stats keeps apart.",
							"Calls with further labels are counted under the label \"other\".",
							&stats_max,
							1000, 1, INT_MAX / 2,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	MarkGUCPrefixReserved("entitlock");

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = stats_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = stats_shmem_startup;
}

/*
 * Counting
 */

void
entitlock_stats_begin(void)
{
	call_waits = 0;
	call_wait_us = 0;
}

/* The call in progress waited for a lock from start until now. */
void
entitlock_stats_waited(TimestampTz start)
{
	call_waits++;
	call_wait_us += Max(GetCurrentTimestamp() - start, 0);
}

static void
add_counts(StatsEntry *e, int flags, int waits, int64 wait_us)
{
	pg_atomic_fetch_add_u64(&e->calls, 1);
	if (waits > 0)
	{
		pg_atomic_fetch_add_u64(&e->waits, 1);
		pg_atomic_fetch_add_u64(&e->wait_us, wait_us);
	}
	if (flags & ENTITLOCK_STATS_TIMEOUT)
		pg_atomic_fetch_add_u64(&e->timeouts, 1);
	if (flags & ENTITLOCK_STATS_DENIED)
		pg_atomic_fetch_add_u64(&e->denied, 1);
	if (flags & ENTITLOCK_STATS_REPLAY)
		pg_atomic_fetch_add_u64(&e->replays, 1);
	if (flags & ENTITLOCK_STATS_TAKEOVER)
		pg_atomic_fetch_add_u64(&e->takeovers, 1);
}

/*
 * Count a call of kind on name, with what it found (flags) and the waits
 * since entitlock_stats_begin().  The label is the name's prefix up to its
 * first ':', or the whole name with whole_label (a usage call's feature).
 */
void
entitlock_stats_add(int kind, text *name, bool whole_label, int flags)
{
	StatsKey	key;
	StatsEntry *e;
	const char *label;
	const char *colon;
	int			len;
	int			waits = call_waits;
	int64		wait_us = call_wait_us;

	Assert(entitlock_stats_shared != NULL);
	call_waits = 0;
	call_wait_us = 0;

	label = VARDATA_ANY(name);
	len = VARSIZE_ANY_EXHDR(name);
	if (!whole_label && (colon = memchr(label, ':', len)) != NULL)
		len = colon - label;
	if (len >= STATS_LABEL_LEN)
		len = pg_mbcliplen(label, len, STATS_LABEL_LEN - 1);
	make_key(&key, kind, label, len);

	LWLockAcquire(entitlock_stats_shared->lock, LW_SHARED);
	e = hash_search(stats_hash, &key, HASH_FIND, NULL);
	if (e != NULL)
	{
		add_counts(e, flags, waits, wait_us);
		LWLockRelease(entitlock_stats_shared->lock);
		return;
	}
	LWLockRelease(entitlock_stats_shared->lock);

	/* A label's first call enters it, while there is room. */
	LWLockAcquire(entitlock_stats_shared->lock, LW_EXCLUSIVE);
	e = NULL;
	if (hash_get_num_entries(stats_hash) <
		entitlock_stats_shared->max + ENTITLOCK_STATS_NKINDS)
		e = enter_entry(&key);
	else
		e = hash_search(stats_hash, &key, HASH_FIND, NULL);
	if (e == NULL)
	{
		make_key(&key, kind, OTHER_LABEL, strlen(OTHER_LABEL));
		e = hash_search(stats_hash, &key, HASH_FIND, NULL);
	}
	if (e != NULL)
		add_counts(e, flags, waits, wait_us);
	LWLockRelease(entitlock_stats_shared->lock);
}

/*
 * The view
 */

/*
 * entitlock.stats is the way to read the counts, and like entitlock's
 * other views it is readable only by roles granted SELECT on it.  A
 * view's functions run with the rights of whoever queries it, so this
 * function checks that right itself: granting SELECT on the view is all
 * a monitoring role needs.
 */
static void
check_may_read_stats(void)
{
	Oid			nsp = get_namespace_oid("entitlock", false);
	Oid			view = get_relname_relid("stats", nsp);

	if (!OidIsValid(view) ||
		pg_class_aclcheck(view, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for view stats"),
				 errhint("Grant SELECT on entitlock.stats to the role.")));
}

#define STATS_NATTS 9

/*
 * entitlock.stats_entries() returns setof record, the rows of
 * entitlock.stats: every label counted since startup or the last reset.
 */
Datum
entitlock_stats_entries(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = entitlock_init_srf(fcinfo);
	HASH_SEQ_STATUS seq;
	StatsEntry *e;
	Datum	   *values;
	bool	   *nulls;
	int			n = 0;
	int			cap;
	int			i;

	check_may_read_stats();
	if (entitlock_stats_shared == NULL)
		return (Datum) 0;		/* no rows */

	LWLockAcquire(entitlock_stats_shared->lock, LW_SHARED);
	cap = hash_get_num_entries(stats_hash);
	values = palloc(sizeof(Datum) * STATS_NATTS * Max(cap, 1));
	nulls = palloc0(sizeof(bool) * STATS_NATTS * Max(cap, 1));
	hash_seq_init(&seq, stats_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		Datum	   *v = values + n * STATS_NATTS;
		uint64		calls = pg_atomic_read_u64(&e->calls);

		/* An 'other' entry nothing was counted under yet. */
		if (calls == 0)
			continue;
		v[0] = CStringGetTextDatum(kind_names[e->key.kind]);
		v[1] = CStringGetTextDatum(e->key.label);
		v[2] = Int64GetDatum((int64) calls);
		v[3] = Int64GetDatum((int64) pg_atomic_read_u64(&e->waits));
		v[4] = Float8GetDatum(pg_atomic_read_u64(&e->wait_us) / 1000.0);
		v[5] = Int64GetDatum((int64) pg_atomic_read_u64(&e->timeouts));
		v[6] = Int64GetDatum((int64) pg_atomic_read_u64(&e->denied));
		v[7] = Int64GetDatum((int64) pg_atomic_read_u64(&e->replays));
		v[8] = Int64GetDatum((int64) pg_atomic_read_u64(&e->takeovers));
		n++;
	}
	LWLockRelease(entitlock_stats_shared->lock);

	/* Into the result only now, not to hold the lock while it is written. */
	for (i = 0; i < n; i++)
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc,
							 values + i * STATS_NATTS, nulls + i * STATS_NATTS);
	return (Datum) 0;
}

/*
 * entitlock.stats_reset() returns void
 *
 * Forgets every count and label.  Without the preload there is nothing to
 * forget.
 */
Datum
entitlock_stats_reset(PG_FUNCTION_ARGS)
{
	HASH_SEQ_STATUS seq;
	StatsEntry *e;

	if (entitlock_stats_shared == NULL)
		PG_RETURN_VOID();

	LWLockAcquire(entitlock_stats_shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, stats_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
		hash_search(stats_hash, &e->key, HASH_REMOVE, NULL);
	enter_other_entries();
	LWLockRelease(entitlock_stats_shared->lock);
	PG_RETURN_VOID();
}
