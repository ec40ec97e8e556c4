/*-------------------------------------------------------------------------
 *
 * leases.c
 *	  Leases: entitlock.lease_acquire, lease_renew and lease_release.
 *
 * A lease is a lock that outlives the transaction that takes it: a row of
 * entitlock.lease_record naming its holder, a random token and an expiry
 * time.  Once the acquiring transaction commits, the lease is held until
 * its holder releases it or it expires; a worker that dies simply stops
 * renewing, and the lease frees itself when its time is up.
 *
 * Every call that reads or writes a name's row first takes the name's
 * transaction lock, so calls on one name happen one at a time and each
 * sees the outcome of the ones before it (it reads with a snapshot taken
 * after the lock is granted).  lease_acquire only tries that lock: a name
 * that another transaction is acquiring, renewing or releasing at that
 * moment is busy, and the answer is the same as for a held lease, no row.
 * So acquiring never queues for the name's lock and never raises a
 * duplicate-key error (only the lock holder inserts, after looking).
 * (lease_acquire_slot, 1.2, does wait for a busy name while one of its
 * slots may be free; see lease_acquire_common().)
 *
 * A caller that asks to wait (wait, 1.1) holds nothing while it waits, so
 * that its wait cannot delay the holder's renew or release.  For a held
 * lease it sleeps until the lease expires, looking again every little
 * while for a release; no transaction is in the way, so PostgreSQL has
 * nothing to wait on.  A name busy because another transaction wrote its
 * row (an acquisition, renewal or release not yet committed) stays busy
 * until that transaction ends, and its end is waited for as a row lock
 * waits for a row's writer, in the lock manager: a sleep would hide the
 * wait from the deadlock detector, and two transactions each holding an
 * uncommitted lease and waiting for the other's would both sleep out
 * their bounds.  So a wait that closes a cycle of waits fails with
 * deadlock_detected, the one error contention can bring.
 * (The lock of a lease it took stays held until its transaction ends, and
 * a renew or release of that name in another transaction waits for it.)
 * When it changes nothing, it gives the lock back at once rather than at
 * the end of its transaction, where it would keep the owner from renewing.
 * lease_renew and lease_release do wait for the lock, so that an acquirer
 * that is merely looking cannot make an owner believe it lost its lease.
 *
 * The token is the holder's proof of ownership: renew and release succeed
 * only with the token of the name's current row.  An expired lease that
 * nobody has taken over is still that row, so its holder may renew or
 * release it; once another acquirer takes it over, the row has a new token
 * and the old holder's calls return false.
 *
 * Fencing numbers come from one sequence, entitlock.lease_fencing, with
 * no cache.  A sequence never goes back: not after a rolled-back
 * acquisition (whose number a client has seen), not after release, and
 * not after a crash, as the WAL that covers a number is flushed before the
 * number is returned, whichever backend wrote it.  As acquisitions of one
 * name are serialised by the name's lock, each gets a number larger than
 * every earlier one's.  pg_dump saves its position.
 *
 * Time is the server's wall clock at the moment of each call, after the
 * name's lock is granted (clock_timestamp(), not now()): a transaction
 * that has been open for a while would otherwise judge expiry, and
 * compute new expiry times, with the clock as it was when it began.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_sequence.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "locks.h"
#include "miscadmin.h"
#include "stats.h"
#include "storage/bufmgr.h"
#include "storage/latch.h"
#include "table.h"
#include "util.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"
#include "utils/wait_event.h"

PG_FUNCTION_INFO_V1(entitlock_lease_acquire);
PG_FUNCTION_INFO_V1(entitlock_lease_renew);
PG_FUNCTION_INFO_V1(entitlock_lease_release);
PG_FUNCTION_INFO_V1(entitlock_lease_acquire_slot);

/*
 * A name's lock is entitlock.key(realm, name) with this realm, distinct
 * from any lock an application takes by name.
 */
#define LEASE_REALM "entitlock.lease"

/* Names are not limited in length: the table stores their hash. */
static const EntitlockNameMessages name_messages = {
	"lease name must not be null", "lease name must not be empty", NULL
};

#define FENCING_SEQUENCE "lease_fencing"

/*
 * The longest ttl.  A lease is meant to be renewed while its work goes on;
 * its ttl is how long a dead holder keeps others out.  A ttl beyond this
 * is almost certainly a mistake (a unit typed wrong), and would leave a
 * name blocked for good by a worker that died.  366 days lets '1 year'
 * through from any date.
 */
#define MAX_TTL_DAYS 366
#define MAX_TTL_TEXT "366 days"

/*
 * A waiting lease_acquire looks again at least this often (milliseconds),
 * so it notices a release within that time of its commit.  An expiry it
 * knows of wakes it at the moment itself.
 */
#define LEASE_POLL_MS 20

/*
 * lease_acquire_slot: how many times (1 ms apart) to look again at a name
 * whose lock is held by a transaction that writes nothing, while a slot
 * may be free; see lease_acquire_common().
 */
#define SLOT_BUSY_RETRIES 100

/* entitlock.lease_record, 0-based column numbers */
#define COL_KEY_HASH 0
#define COL_NAME 1
#define COL_TOKEN 2
#define COL_HOLDER 3
#define COL_FENCING 4
#define COL_ACQUIRED_AT 5
#define COL_EXPIRES_AT 6
#define COL_SLOT 7				/* 1.2; NULL for a plain lease */
#define LEASE_NATTS 8
#define LEASE_NATTS_1_1 7

static const Oid lease_types[LEASE_NATTS] = {
	INT8OID,					/* key_hash */
	TEXTOID,					/* name */
	UUIDOID,					/* token */
	TEXTOID,					/* holder */
	INT8OID,					/* fencing */
	TIMESTAMPTZOID,				/* acquired_at */
	TIMESTAMPTZOID,				/* expires_at */
	INT4OID						/* slot (1.2) */
};

#define HASH_INDEX 0

/* 1.0's index on the hash, which 1.1's primary key replaces */
static const EntitlockIndexDef lease_hash_1_0 = {
	"lease_record_key_hash_idx", false, 1, {COL_KEY_HASH + 1}
};

static EntitlockTableDef lease_def = {
	"lease_record", lease_types, LEASE_NATTS, LEASE_NATTS_1_1, 1,
	{
		{"lease_record_pkey", true, 2, {COL_KEY_HASH + 1, COL_FENCING + 1},
		&lease_hash_1_0}
	}
};

/* A name's current row, as a call finds it. */
typedef struct Lease
{
	bool		found;
	ItemPointerData tid;
	Datum		values[LEASE_NATTS];
	bool		nulls[LEASE_NATTS];
} Lease;

static Interval *
lease_ttl_arg(FunctionCallInfo fcinfo, int argno)
{
	Interval	max = {0};

	max.day = MAX_TTL_DAYS;
	return entitlock_ttl_arg(fcinfo, argno, &max, MAX_TTL_TEXT);
}

/*
 * The row in t's slot, into lease.  A table that 1.2 has not updated yet
 * has no slot column: its rows are all plain leases.
 */
static void
copy_lease_row(EntitlockTable *t, Lease *lease)
{
	int			natts = t->slot->tts_tupleDescriptor->natts;

	slot_getallattrs(t->slot);
	lease->tid = t->slot->tts_tid;
	memcpy(lease->values, t->slot->tts_values, natts * sizeof(Datum));
	memcpy(lease->nulls, t->slot->tts_isnull, natts * sizeof(bool));
	if (natts <= COL_SLOT)
	{
		lease->values[COL_SLOT] = (Datum) 0;
		lease->nulls[COL_SLOT] = true;
	}
}

/*
 * Is lease the row a call looks for: the one holding token, or without a
 * token the name's plain lease (the rows of its lease slots, 1.2, are the
 * slots' own)?
 */
static bool
lease_row_matches(Lease *lease, const pg_uuid_t *token)
{
	if (token == NULL)
		return lease->nulls[COL_SLOT];
	return !lease->nulls[COL_TOKEN] &&
		memcmp(DatumGetUUIDP(lease->values[COL_TOKEN])->data, token->data,
			   UUID_LEN) == 0;
}

/*
 * Take the name's lock, open the table and find the name's row as it is
 * now that the lock is granted: the row holding token, or without one the
 * plain lease's row.  Without wait, returns false (having done
 * nothing) when another transaction holds the lock.
 */
static bool
begin_lease_call(EntitlockTable *t, int64 hash, text *name, bool wait,
				 Lease *lease, const char *cmdname, const pg_uuid_t *token)
{
	IndexScanDesc scan;
	Datum		hashval = Int64GetDatum(hash);

	entitlock_begin_write(cmdname);

	if (!entitlock_acquire(hash, ExclusiveLock, wait))
		return false;

	entitlock_table_open(t, &lease_def, RowExclusiveLock);

	/* This transaction's own earlier calls, too, must be seen. */
	CommandCounterIncrement();

	/*
	 * Only the holder of the name's lock writes the name's row, and this call
	 * holds it now, so the row's committed state cannot change under the
	 * scan: SnapshotSelf reads what a fresh MVCC snapshot would, without its
	 * predicate locks (see "Why the features read with SnapshotSelf" in
	 * table.c).
	 */
	scan = entitlock_table_scan(t, HASH_INDEX, SnapshotSelf,
								BTEqualStrategyNumber, 1, &hashval);
	while ((lease->found = entitlock_next_row_with_text(t, scan, COL_NAME + 1,
														name)))
	{
		copy_lease_row(t, lease);
		if (lease_row_matches(lease, token))
			break;
	}
	index_endscan(scan);
	return true;
}

/*
 * Finish a call.  One that wrote nothing gives the name's lock back now,
 * so that it does not hold up the name's owner until the end of the
 * caller's transaction.  (The lock count only drops by one, so a lock the
 * transaction held before the call stays held.)
 */
static void
end_lease_call(EntitlockTable *t, int64 hash, bool wrote)
{
	ExecClearTuple(t->slot);
	entitlock_table_close(t);
	if (!wrote)
		entitlock_release(hash, ExclusiveLock);
}

/*
 * The start of lease_renew and lease_release: fetch the token (argument 1),
 * wait for the name's lock and find its row.  Returns whether the row
 * holds the token.  (A row's token is never NULL.)
 */
static bool
begin_owner_call(FunctionCallInfo fcinfo, EntitlockTable *t, int64 hash,
				 text *name, Lease *lease, const char *cmdname)
{
	pg_uuid_t  *token;
	pg_uuid_t  *stored;

	entitlock_require_arg(fcinfo, 1, "lease token must not be null");
	token = PG_GETARG_UUID_P(1);

	(void) begin_lease_call(t, hash, name, true, lease, cmdname, token);
	if (!lease->found || lease->nulls[COL_TOKEN])
		return false;
	stored = DatumGetUUIDP(lease->values[COL_TOKEN]);
	return memcmp(stored->data, token->data, UUID_LEN) == 0;
}

/*
 * The other transaction that is writing name's row now: the writer of a
 * version of the row that is not committed yet (a new lease, a renewal,
 * a release), or InvalidTransactionId when there is none.  Such a
 * transaction took the name's lock to write and keeps it until it ends.
 * Read without the name's lock, with a dirty snapshot, which shows rows
 * not yet committed and says who is writing them.  Like SnapshotSelf it
 * takes no SERIALIZABLE predicate locks.
 */
static TransactionId
name_writer_in_progress(int64 hash, text *name)
{
	EntitlockTable t;
	SnapshotData dirty;
	IndexScanDesc scan;
	Datum		hashval = Int64GetDatum(hash);
	TransactionId writer = InvalidTransactionId;

	InitDirtySnapshot(dirty);
	entitlock_table_open(&t, &lease_def, RowExclusiveLock);
	scan = entitlock_table_scan(&t, HASH_INDEX, &dirty,
								BTEqualStrategyNumber, 1, &hashval);

	/*
	 * The scan sets the snapshot's xmin and xmax for the version it returns:
	 * an inserter or an updater or deleter still in progress.
	 */
	while (entitlock_next_row_with_text(&t, scan, COL_NAME + 1, name))
	{
		writer = TransactionIdIsValid(dirty.xmax) ? dirty.xmax : dirty.xmin;
		if (TransactionIdIsValid(writer))
			break;
	}
	index_endscan(scan);
	ExecClearTuple(t.slot);
	entitlock_table_close(&t);
	return writer;
}

/*
 * Might one of name's lease slots 1..slots be free once the transactions
 * working on the name now have ended?  Read like name_writer_in_progress(),
 * without the name's lock, with a dirty snapshot: a slot counts as taken
 * when any version of its row, committed or not, holds a lease unexpired
 * at now (so a release not yet committed still holds its slot, and a row
 * being inserted takes one).  lease_acquire_common() waits for a busy
 * name only when this says yes.
 */
static bool
lease_slot_may_be_free(int64 hash, text *name, int slots, TimestampTz now)
{
	EntitlockTable t;
	SnapshotData dirty;
	IndexScanDesc scan;
	Datum		hashval = Int64GetDatum(hash);
	bool	   *taken;
	int			ntaken = 0;

	InitDirtySnapshot(dirty);
	entitlock_table_open(&t, &lease_def, RowExclusiveLock);
	if (RelationGetDescr(t.heap)->natts <= COL_SLOT)
	{
		/* Not updated to 1.2: try_take_lease_slot() says so. */
		entitlock_table_close(&t);
		return true;
	}
	taken = palloc0((slots + 1) * sizeof(bool));
	scan = entitlock_table_scan(&t, HASH_INDEX, &dirty,
								BTEqualStrategyNumber, 1, &hashval);
	while (entitlock_next_row_with_text(&t, scan, COL_NAME + 1, name))
	{
		bool		isnull;
		Datum		d;
		int			s;

		d = slot_getattr(t.slot, COL_SLOT + 1, &isnull);
		if (isnull)
			continue;
		s = DatumGetInt32(d);
		if (s < 1 || s > slots || taken[s])
			continue;
		d = slot_getattr(t.slot, COL_EXPIRES_AT + 1, &isnull);
		if (!isnull && DatumGetTimestampTz(d) > now)
		{
			taken[s] = true;
			ntaken++;
		}
	}
	index_endscan(scan);
	ExecClearTuple(t.slot);
	entitlock_table_close(&t);
	pfree(taken);
	return ntaken < slots;
}

/*
 * The end of the WAL that covers every number the fencing sequence has
 * handed out: its page's LSN, set by the record that last moved it ahead.
 *
 * A sequence writes WAL once for many numbers ahead, and the calls that
 * then hand out numbers from that batch, in any backend, write nothing.
 * Flushing the record is left to the commit of the transaction that wrote
 * it, so a number handed out by an acquisition that never commits (rolled
 * back, or cut short by a crash, or committed asynchronously) could be
 * handed out again after a crash; and so could one handed out from a
 * batch whose record another backend wrote and has not flushed yet (its
 * commit asynchronous, or not reached).  Flushing up to this point before
 * a number is returned keeps every number ever returned below what the
 * sequence restarts from.  Once the batch's record is flushed, as it
 * mostly is, the flush only compares two positions; calls that draw from
 * a batch while its record is being flushed wait for that flush.
 */
static XLogRecPtr
sequence_wal_end(Oid seqid)
{
	Relation	seqrel;
	Buffer		buf;
	XLogRecPtr	lsn;

	/* nextval_internal() has locked the sequence for the transaction. */
	seqrel = relation_open(seqid, NoLock);
	buf = ReadBuffer(seqrel, 0);
	LockBuffer(buf, BUFFER_LOCK_SHARE);
	lsn = PageGetLSN(BufferGetPage(buf));
	UnlockReleaseBuffer(buf);
	relation_close(seqrel, NoLock);
	return lsn;
}

/*
 * The next fencing number.  A cached or cycling sequence would hand out
 * numbers out of order across backends, so refuse one.
 */
static int64
next_fencing(void)
{
	Oid			seqid;
	HeapTuple	tuple;
	bool		usable;
	int64		fencing;

	seqid = get_relname_relid(FENCING_SEQUENCE,
							  get_namespace_oid("entitlock", false));
	tuple = SearchSysCache1(SEQRELID, ObjectIdGetDatum(seqid));
	usable = HeapTupleIsValid(tuple) &&
		((Form_pg_sequence) GETSTRUCT(tuple))->seqcache == 1 &&
		!((Form_pg_sequence) GETSTRUCT(tuple))->seqcycle &&
		((Form_pg_sequence) GETSTRUCT(tuple))->seqincrement > 0;
	if (HeapTupleIsValid(tuple))
		ReleaseSysCache(tuple);
	if (!usable)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("sequence \"entitlock.%s\" is not as this version of entitlock created it",
						FENCING_SEQUENCE),
				 errdetail("Fencing numbers need a sequence that increases, without cache or cycle."),
				 errhint("Update the extension with ALTER EXTENSION entitlock UPDATE, or reinstall it.")));

	/* Callers need no rights on the sequence, as on the table. */
	fencing = nextval_internal(seqid, false);
	XLogFlush(sequence_wal_end(seqid));
	return fencing;
}

/* What one attempt of lease_acquire found. */
typedef enum LeaseAttempt
{
	LEASE_TAKEN,				/* the lease is now the caller's */
	LEASE_HELD,					/* another holder's lease runs until expires_at */
	LEASE_BUSY					/* another transaction is working on the name */
} LeaseAttempt;

static Datum lease_acquire_common(FunctionCallInfo fcinfo, text *name,
								  int slots, Interval *ttl, text *holder,
								  int wait_ms);
static LeaseAttempt try_take_lease_slot(int64 hash, text *name, int slots,
										Interval *ttl, text *holder,
										int *slot, pg_uuid_t **token,
										int64 *fencing, bool *takeover,
										TimestampTz *expires_at);

/*
 * Write a lease just taken (slot 0: the plain lease, else that lease slot)
 * and finish the call.  A takeover (takeover_tid, the expired row) keeps
 * the row (its key_hash, name and slot) and replaces the rest.  Only the
 * holder of the name's lock writes the name's rows, and the caller holds
 * it, so that row is there to change.
 */
static void
store_lease(EntitlockTable *t, ItemPointer takeover_tid, int64 hash,
			text *name, pg_uuid_t *token, text *holder, int64 fencing,
			TimestampTz now, Interval *ttl, int slot)
{
	Datum		values[LEASE_NATTS];
	bool		nulls[LEASE_NATTS];

	values[COL_KEY_HASH] = Int64GetDatum(hash);
	values[COL_NAME] = PointerGetDatum(name);
	values[COL_TOKEN] = UUIDPGetDatum(token);
	values[COL_HOLDER] = PointerGetDatum(holder);
	values[COL_FENCING] = Int64GetDatum(fencing);
	values[COL_ACQUIRED_AT] = TimestampTzGetDatum(now);
	values[COL_EXPIRES_AT] = TimestampTzGetDatum(entitlock_expiry(now, ttl));
	values[COL_SLOT] = Int32GetDatum(slot);
	memset(nulls, 0, sizeof(nulls));
	nulls[COL_HOLDER] = holder == NULL;
	nulls[COL_SLOT] = slot == 0;

	if (takeover_tid == NULL)
		entitlock_table_insert(t, values, nulls);
	else
		entitlock_table_update(t, takeover_tid, values, nulls,
							   ENTITLOCK_COLUMN(COL_TOKEN) |
							   ENTITLOCK_COLUMN(COL_HOLDER) |
							   ENTITLOCK_COLUMN(COL_FENCING) |
							   ENTITLOCK_COLUMN(COL_ACQUIRED_AT) |
							   ENTITLOCK_COLUMN(COL_EXPIRES_AT));
	end_lease_call(t, hash, true);
}

/*
 * One attempt to take the lease on name: when it is free, write the new
 * lease and set *token, *fencing and *takeover (an expired lease was taken
 * over).  Otherwise change nothing and keep no lock.
 */
static LeaseAttempt
try_take_lease(int64 hash, text *name, Interval *ttl, text *holder,
			   pg_uuid_t **token, int64 *fencing, bool *takeover,
			   TimestampTz *expires_at)
{
	EntitlockTable t;
	Lease		lease;
	TimestampTz now;

	if (!begin_lease_call(&t, hash, name, false, &lease, "lease_acquire()",
						  NULL))
		return LEASE_BUSY;

	now = GetCurrentTimestamp();
	if (lease.found &&
		DatumGetTimestampTz(lease.values[COL_EXPIRES_AT]) > now)
	{
		*expires_at = DatumGetTimestampTz(lease.values[COL_EXPIRES_AT]);
		end_lease_call(&t, hash, false);
		return LEASE_HELD;
	}

	*token = entitlock_random_uuid();
	*fencing = next_fencing();
	*takeover = lease.found;

	/*
	 * A sequence set back by hand (or recreated by a restore or logical
	 * replication that did not carry its position) would hand out numbers a
	 * holder has already used.  The row being taken over shows it.
	 */
	if (lease.found &&
		*fencing <= DatumGetInt64(lease.values[COL_FENCING]))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("sequence \"entitlock.%s\" is behind the fencing numbers already handed out",
						FENCING_SEQUENCE),
				 errdetail("The next number is %lld, but the lease being taken over had %lld.",
						   (long long) *fencing,
						   (long long) DatumGetInt64(lease.values[COL_FENCING])),
				 errhint("Move the sequence past every fencing number in use, with setval() on entitlock.%s.",
						 FENCING_SEQUENCE)));

	store_lease(&t, lease.found ? &lease.tid : NULL, hash, name, *token,
				holder, *fencing, now, ttl, 0);
	return LEASE_TAKEN;
}

/*
 * entitlock.lease_acquire(name text, ttl interval, holder text DEFAULT NULL,
 *	   wait interval DEFAULT '0')
 * returns table (token uuid, fencing bigint)
 *
 * Takes the lease on name for ttl, from now, when nobody holds it: when it
 * was never taken, was released, or has expired (the expired holder's
 * token stops working).  Returns the new token and fencing number; others
 * see the lease once the calling transaction commits.  Returns no row when
 * another holder's lease is unexpired, or another transaction is working
 * on the name at this moment, and stays so for wait (NULL or 0: does not
 * wait; 1.0 declared the function without wait).
 *
 * A wait holds nothing: the holder's renew and release never queue behind
 * a waiter.  For a held lease the waiter sleeps until the lease's expiry
 * and looks again at least every LEASE_POLL_MS, so it notices a release
 * that soon after its commit; it looks again at once when its latch is
 * set.  For a name whose row another transaction is writing, it waits in
 * the lock manager for that transaction to end (see the file header), and
 * a cycle of waits through it ends with deadlock_detected.  Cancels and
 * statement_timeout end either wait; lock_timeout does not apply.
 */
Datum
entitlock_lease_acquire(PG_FUNCTION_ARGS)
{
	text	   *name = entitlock_name_arg(fcinfo, 0, &name_messages);
	Interval   *ttl = lease_ttl_arg(fcinfo, 1);
	text	   *holder = PG_ARGISNULL(2) ? NULL : PG_GETARG_TEXT_PP(2);
	int			wait_ms = 0;

	if (PG_NARGS() > 3 && !PG_ARGISNULL(3))
		wait_ms = entitlock_interval_ms(PG_GETARG_INTERVAL_P(3),
										"wait must not be negative");
	return lease_acquire_common(fcinfo, name, 0, ttl, holder, wait_ms);
}

/*
 * The body of lease_acquire (slots 0) and lease_acquire_slot (1.2, slots
 * 1 or more): take a lease or a lease slot of name, waiting at most
 * wait_ms, and return its row, or no row.
 */
static Datum
lease_acquire_common(FunctionCallInfo fcinfo, text *name, int slots,
					 Interval *ttl, text *holder, int wait_ms)
{
	ReturnSetInfo *rsinfo;
	int64		hash = entitlock_realm_key(LEASE_REALM, name);
	TimestampTz deadline;
	TimestampTz wait_start = 0;
	pg_uuid_t  *token = NULL;
	int64		fencing = 0;
	bool		takeover = false;
	LeaseAttempt attempt;
	int			flags = 0;
	int			slot = 0;
	int			busy_retries = 0;
	Datum		result[3];
	bool		result_nulls[3] = {false, false, false};

	rsinfo = entitlock_init_srf(fcinfo);
	entitlock_stats_begin();

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), wait_ms);
	for (;;)
	{
		TimestampTz expires_at = 0;
		TimestampTz now;
		TimestampTz wake;
		long		sleep_ms;

		if (slots == 0)
			attempt = try_take_lease(hash, name, ttl, holder, &token,
									 &fencing, &takeover, &expires_at);
		else
			attempt = try_take_lease_slot(hash, name, slots, ttl, holder,
										  &slot, &token, &fencing,
										  &takeover, &expires_at);
		if (attempt == LEASE_TAKEN)
			break;
		now = GetCurrentTimestamp();

		/*
		 * A lease slot: a name that is busy only because another transaction
		 * is working on it (taking, renewing or releasing a slot, which holds
		 * the name's lock until it ends) while a slot is free must not give
		 * "no row", whatever wait says: wait for that transaction to end,
		 * as a row lock waits for a row's writer, in the lock manager, so
		 * deadlocks are detected and cancels and statement_timeout end the
		 * wait.  A transaction that only looks gives the lock back at once,
		 * so a short sleep is enough.  This wait may outlast wait: once the
		 * name is free the attempt above decides, and "no row" then means
		 * every slot is held.
		 * (A plain lease keeps its answer: the name itself is what is
		 * busy.)
		 */
		if (attempt == LEASE_BUSY && slots > 0 &&
			lease_slot_may_be_free(hash, name, slots, now))
		{
			TransactionId writer = name_writer_in_progress(hash, name);

			if (TransactionIdIsValid(writer))
			{
				if (wait_start == 0)
					wait_start = now;
				(void) entitlock_wait_for_xact(writer, INT_MAX);
				CHECK_FOR_INTERRUPTS();
				continue;
			}

			/*
			 * No writer: the lock is held by a call that is only looking,
			 * which lets go at once, or by a session that took the lock's
			 * advisory tag itself, which may not; so look again only for a
			 * little while (SLOT_BUSY_RETRIES times 1 ms), then go by wait
			 * as before.
			 */
			if (busy_retries < SLOT_BUSY_RETRIES)
			{
				busy_retries++;
				if (wait_start == 0)
					wait_start = now;
				(void) WaitLatch(MyLatch,
								 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
								 1, PG_WAIT_EXTENSION);
				ResetLatch(MyLatch);
				CHECK_FOR_INTERRUPTS();
				continue;
			}
		}
		if (now >= deadline)
			break;
		if (wait_start == 0)
			wait_start = now;

		if (attempt == LEASE_BUSY)
		{
			TransactionId writer = name_writer_in_progress(hash, name);
			long		left = TimestampDifferenceMilliseconds(now, deadline);

			if (TransactionIdIsValid(writer))
			{
				/* Ended or not, look again: the bound is checked above. */
				(void) entitlock_wait_for_xact(writer, (int) left);
				CHECK_FOR_INTERRUPTS();
				continue;
			}
		}

		wake = Min(deadline, TimestampTzPlusMilliseconds(now, LEASE_POLL_MS));
		if (attempt == LEASE_HELD)
			wake = Min(wake, expires_at);
		/* Rounded up: waking before the expiry would only look in vain. */
		sleep_ms = (long) ((wake - now + 999) / 1000);
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(sleep_ms, 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}

	if (wait_start != 0)
		entitlock_stats_waited(wait_start);
	if (attempt != LEASE_TAKEN && wait_ms > 0)
		flags |= ENTITLOCK_STATS_TIMEOUT;
	if (attempt == LEASE_TAKEN && takeover)
		flags |= ENTITLOCK_STATS_TAKEOVER;
	entitlock_stats_count(slots == 0 ? ENTITLOCK_STATS_LEASE :
						  ENTITLOCK_STATS_SLOT, name, false, flags);

	if (attempt != LEASE_TAKEN)
		return (Datum) 0;		/* no rows */
	if (slots == 0)
	{
		result[0] = UUIDPGetDatum(token);
		result[1] = Int64GetDatum(fencing);
	}
	else
	{
		result[0] = Int32GetDatum(slot);
		result[1] = UUIDPGetDatum(token);
		result[2] = Int64GetDatum(fencing);
	}
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, result,
						 result_nulls);
	return (Datum) 0;
}

/*
 * The statistics kind of a lease_renew or lease_release call: 'slot' for a
 * lease slot's row (as lease_acquire_slot counts under 'slot'), 'lease'
 * otherwise.  Only a call whose token matched knows which row is its
 * lease, so one that returns false counts under 'lease'.
 */
static EntitlockStatsKind
lease_stats_kind(Lease *lease, bool mine)
{
	return mine && !lease->nulls[COL_SLOT] ? ENTITLOCK_STATS_SLOT :
		ENTITLOCK_STATS_LEASE;
}

/*
 * entitlock.lease_renew(name text, token uuid, ttl interval) returns boolean
 *
 * Extends the lease on name to expire ttl from now, if token is its
 * current token; false otherwise (released, taken over by another
 * acquirer, or never this token's).  Waits while another transaction is
 * working on the name.
 */
Datum
entitlock_lease_renew(PG_FUNCTION_ARGS)
{
	text	   *name = entitlock_name_arg(fcinfo, 0, &name_messages);
	Interval   *ttl = lease_ttl_arg(fcinfo, 2);
	EntitlockTable t;
	Lease		lease;
	int64		hash = entitlock_realm_key(LEASE_REALM, name);
	bool		mine;

	entitlock_stats_begin();
	mine = begin_owner_call(fcinfo, &t, hash, name, &lease, "lease_renew()");
	if (mine)
	{
		lease.values[COL_EXPIRES_AT] =
			TimestampTzGetDatum(entitlock_expiry(GetCurrentTimestamp(), ttl));
		entitlock_table_update(&t, &lease.tid, lease.values, lease.nulls,
							   ENTITLOCK_COLUMN(COL_EXPIRES_AT));
	}
	end_lease_call(&t, hash, mine);
	entitlock_stats_count(lease_stats_kind(&lease, mine), name, false, 0);
	PG_RETURN_BOOL(mine);
}

/*
 * entitlock.lease_release(name text, token uuid) returns boolean
 *
 * Ends the lease on name if token is its current token, so the next
 * acquirer gets it at once; false otherwise, changing nothing.  Waits
 * while another transaction is working on the name.
 */
Datum
entitlock_lease_release(PG_FUNCTION_ARGS)
{
	text	   *name = entitlock_name_arg(fcinfo, 0, &name_messages);
	EntitlockTable t;
	Lease		lease;
	int64		hash = entitlock_realm_key(LEASE_REALM, name);
	bool		mine;

	entitlock_stats_begin();
	mine = begin_owner_call(fcinfo, &t, hash, name, &lease,
							"lease_release()");
	if (mine)
		entitlock_table_delete(&t, &lease.tid);
	end_lease_call(&t, hash, mine);
	entitlock_stats_count(lease_stats_kind(&lease, mine), name, false, 0);
	PG_RETURN_BOOL(mine);
}


/*
 * Lease slots (1.2): entitlock.lease_acquire_slot
 *
 * A semaphore of leases: up to slots unexpired leases of one name, each a
 * row of its own whose slot column says which slot (1 to slots) it holds;
 * a plain lease of the name (slot NULL) is apart from them.  They are
 * written under the same name lock as the plain lease, so every call on a
 * name, plain or slot, happens one at a time, and one fencing sequence
 * numbers them all: a name's fencing numbers increase across all its
 * slots.  lease_renew and lease_release find a slot's row by its token.
 * Only the holder of the name's lock writes the name's rows, and it writes
 * a slot's row only after finding none, or an expired one, for that slot,
 * so each (name, slot) has at most one row.
 */

/*
 * One attempt to take a free slot of name among 1..slots: the lowest slot
 * with no row, or whose lease expired (a takeover, which keeps the row
 * and gives it a new token and fencing number).  Otherwise changes nothing,
 * keeps no lock, and sets *expires_at to the earliest expiry among the
 * slots.
 */
static LeaseAttempt
try_take_lease_slot(int64 hash, text *name, int slots, Interval *ttl,
					text *holder, int *slot, pg_uuid_t **token,
					int64 *fencing, bool *takeover, TimestampTz *expires_at)
{
	EntitlockTable t;
	Lease		lease;
	Lease		expired;
	IndexScanDesc scan;
	Datum		hashval = Int64GetDatum(hash);
	TimestampTz now;
	TimestampTz earliest = DT_NOEND;
	int64		max_fencing = 0;
	bool	   *held;
	int			free_slot = 0;
	int			i;

	if (!begin_lease_call(&t, hash, name, false, &lease,
						  "lease_acquire_slot()", NULL))
		return LEASE_BUSY;
	if (RelationGetDescr(t.heap)->natts <= COL_SLOT)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"entitlock.lease_record\" has no slot column"),
				 errhint("Update the extension with ALTER EXTENSION entitlock UPDATE.")));

	/* Every slot row of the name, as begin_lease_call() reads them. */
	now = GetCurrentTimestamp();
	held = palloc0((slots + 1) * sizeof(bool));
	expired.found = false;
	scan = entitlock_table_scan(&t, HASH_INDEX, SnapshotSelf,
								BTEqualStrategyNumber, 1, &hashval);
	while (entitlock_next_row_with_text(&t, scan, COL_NAME + 1, name))
	{
		int			s;
		TimestampTz exp;

		copy_lease_row(&t, &lease);
		max_fencing = Max(max_fencing, DatumGetInt64(lease.values[COL_FENCING]));
		if (lease.nulls[COL_SLOT])
			continue;
		s = DatumGetInt32(lease.values[COL_SLOT]);
		if (s < 1 || s > slots)
			continue;
		exp = DatumGetTimestampTz(lease.values[COL_EXPIRES_AT]);
		if (exp > now)
		{
			held[s] = true;
			earliest = Min(earliest, exp);
		}
		else if (!expired.found ||
				 s < DatumGetInt32(expired.values[COL_SLOT]))
		{
			expired = lease;
			expired.found = true;
		}
	}
	index_endscan(scan);

	for (i = 1; i <= slots; i++)
		if (!held[i])
		{
			free_slot = i;
			break;
		}
	pfree(held);
	if (free_slot == 0)
	{
		*expires_at = earliest;
		end_lease_call(&t, hash, false);
		return LEASE_HELD;
	}

	/*
	 * The free slot's expired row, if it has one, is taken over.  The lowest
	 * expired slot is not held, so it is free_slot or above: when it is not
	 * free_slot, free_slot has no row.
	 */
	*takeover = expired.found &&
		DatumGetInt32(expired.values[COL_SLOT]) == free_slot;
	*slot = free_slot;
	*token = entitlock_random_uuid();
	*fencing = next_fencing();
	if (*fencing <= max_fencing)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("sequence \"entitlock.%s\" is behind the fencing numbers already handed out",
						FENCING_SEQUENCE),
				 errdetail("The next number is %lld, but a lease of this name had %lld.",
						   (long long) *fencing, (long long) max_fencing),
				 errhint("Move the sequence past every fencing number in use, with setval() on entitlock.%s.",
						 FENCING_SEQUENCE)));

	store_lease(&t, *takeover ? &expired.tid : NULL, hash, name, *token,
				holder, *fencing, now, ttl, free_slot);
	return LEASE_TAKEN;
}

/*
 * entitlock.lease_acquire_slot(name text, slots integer, ttl interval,
 *	   holder text DEFAULT NULL, wait interval DEFAULT '0')
 * returns table (slot integer, token uuid, fencing bigint)
 *
 * Takes a free slot among 1..slots of name's lease semaphore for ttl (see
 * above), waiting as lease_acquire does; no row when none is free within
 * wait.  slots must be 1 to 10,000.
 */
Datum
entitlock_lease_acquire_slot(PG_FUNCTION_ARGS)
{
	text	   *name = entitlock_name_arg(fcinfo, 0, &name_messages);
	int			slots = entitlock_slots_arg(fcinfo, 1);
	Interval   *ttl = lease_ttl_arg(fcinfo, 2);
	text	   *holder = PG_ARGISNULL(3) ? NULL : PG_GETARG_TEXT_PP(3);
	int			wait_ms = 0;

	if (PG_NARGS() > 4 && !PG_ARGISNULL(4))
		wait_ms = entitlock_interval_ms(PG_GETARG_INTERVAL_P(4),
										"wait must not be negative");
	return lease_acquire_common(fcinfo, name, slots, ttl, holder, wait_ms);
}
