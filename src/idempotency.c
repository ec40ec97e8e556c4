/*-------------------------------------------------------------------------
 *
 * idempotency.c
 *	  Idempotent writes: entitlock.idempotency_begin, idempotency_complete,
 *	  first_time and purge_expired.
 *
 * A key is claimed by writing a row of entitlock.idempotency_key in the
 * caller's own transaction, under a transaction lock on the key.  The row
 * and the lock therefore share the fate of the caller's write: COMMIT makes
 * the claim (and the stored response) visible to every later caller, while
 * ROLLBACK, a killed backend or a crash removes both, and nothing is ever
 * left "in progress" for a reaper to clean up.  A concurrent caller with
 * the same key waits on the lock, then looks with a snapshot taken after
 * the wait, so it sees exactly what the owner's transaction decided.  A
 * caller that finds a committed claim needs no lock at all.
 *
 * Keys may be long (a request body's digest, or the body itself), so the
 * table stores each key in full next to a 64-bit hash of it, and only the
 * hash is indexed.  The index is not unique: two different keys with equal
 * hashes are two rows, told apart by comparing the full keys, and they
 * merely share a lock.  Uniqueness of a key comes from the lock: every
 * writer of a key holds it while it looks and writes.
 *
 * Expiry is by wall clock: a claim made with ttl expires ttl after the call
 * that made it, and from then on behaves as if it were absent; a new claim
 * reuses its row.  purge_expired() deletes expired rows without waiting
 * for, or making anyone wait on, a claim in progress.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "locks.h"
#include "miscadmin.h"
#include "stats.h"
#include "table.h"
#include "util.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(entitlock_idempotency_begin);
PG_FUNCTION_INFO_V1(entitlock_idempotency_complete);
PG_FUNCTION_INFO_V1(entitlock_first_time);
PG_FUNCTION_INFO_V1(entitlock_purge_expired);

/*
 * The key's lock is entitlock.key(realm, key) with this realm, so it is
 * distinct from any lock an application takes by name.
 */
#define IDEMPOTENCY_REALM "entitlock.idempotency"

/* Keys are not limited in length: the table stores their hash. */
static const EntitlockNameMessages key_messages = {
	"idempotency key must not be null", "idempotency key must not be empty",
	NULL
};

/* entitlock.idempotency_key, 0-based column numbers */
#define COL_KEY_HASH 0
#define COL_KEY 1
#define COL_FINGERPRINT 2
#define COL_RESPONSE 3
#define COL_CLAIMED_AT 4
#define COL_EXPIRES_AT 5
#define COL_COMPLETED_AT 6
#define COL_CLAIM_ID 7			/* added in 1.1 */
#define CLAIM_NATTS 8
#define CLAIM_NATTS_1_0 7

static const Oid claim_types[CLAIM_NATTS] = {
	INT8OID,					/* key_hash */
	TEXTOID,					/* key */
	TEXTOID,					/* fingerprint */
	JSONBOID,					/* response */
	TIMESTAMPTZOID,				/* claimed_at */
	TIMESTAMPTZOID,				/* expires_at */
	TIMESTAMPTZOID,				/* completed_at */
	UUIDOID						/* claim_id */
};

#define HASH_INDEX 0
#define EXPIRY_INDEX 1

/* 1.0's index on the hash, which 1.1's primary key replaces */
static const EntitlockIndexDef claim_hash_1_0 = {
	"idempotency_key_hash_idx", false, 1, {COL_KEY_HASH + 1}
};

static EntitlockTableDef claim_def = {
	"idempotency_key", claim_types, CLAIM_NATTS, CLAIM_NATTS_1_0, 2,
	{
		{"idempotency_key_pkey", true, 2, {COL_KEY_HASH + 1, COL_CLAIM_ID + 1},
		&claim_hash_1_0},
		{"idempotency_key_expires_at_idx", false, 1, {COL_EXPIRES_AT + 1}}
	}
};

/* The live claim on a key, as a claiming call finds it. */
typedef struct Claim
{
	bool		found;			/* an unexpired claim exists */
	text	   *fingerprint;	/* its fingerprint, or NULL */
	Jsonb	   *response;		/* its response, or NULL */
	bool		have_expired;	/* else, an expired row of the key exists */
	ItemPointerData expired_tid;	/* and is here */
} Claim;

/*
 * Finding a key's rows
 */

/*
 * The key's rows as of now: committed ones, and this transaction's own
 * (SnapshotSelf; see "Why the features read with SnapshotSelf" in
 * table.c).  A row it shows is final (a committed claim changes only when
 * it expires), and under the key's lock nothing else can change at all; a
 * claim committing during the lock-free first look may be missed, which
 * only sends the caller on to the lock.
 */
static IndexScanDesc
scan_key_rows(EntitlockTable *t, int64 hash)
{
	Datum		hashval = Int64GetDatum(hash);

	return entitlock_table_scan(t, HASH_INDEX, SnapshotSelf,
								BTEqualStrategyNumber, 1, &hashval);
}

/*
 * Look for the key's unexpired claim as of now.
 * Its fingerprint and response are copied out, detoasted.  Without one,
 * note an expired row of the key for reuse.
 */
static void
find_claim(EntitlockTable *t, int64 hash, text *key, TimestampTz now,
		   Claim *claim)
{
	IndexScanDesc scan = scan_key_rows(t, hash);

	memset(claim, 0, sizeof(Claim));
	while (entitlock_next_row_with_text(t, scan, COL_KEY + 1, key))
	{
		bool		isnull;
		Datum		d;

		d = slot_getattr(t->slot, COL_EXPIRES_AT + 1, &isnull);
		if (DatumGetTimestampTz(d) <= now)
		{
			if (!claim->have_expired)
			{
				claim->have_expired = true;
				claim->expired_tid = t->slot->tts_tid;
			}
			continue;
		}

		claim->found = true;
		d = slot_getattr(t->slot, COL_FINGERPRINT + 1, &isnull);
		if (!isnull)
			claim->fingerprint = DatumGetTextPCopy(d);
		d = slot_getattr(t->slot, COL_RESPONSE + 1, &isnull);
		if (!isnull)
			claim->response = DatumGetJsonbPCopy(d);
		break;
	}
	index_endscan(scan);
	ExecClearTuple(t->slot);	/* see "Buffer pins" in table.c */
}

/*
 * Claiming
 */

/*
 * A retry must be the same request.  A client that reuses a key for a
 * different one has a bug that replaying the first response would hide.
 */
static void
check_fingerprint(const Claim *claim, text *fingerprint, text *key)
{
	if (fingerprint == NULL || claim->fingerprint == NULL ||
		entitlock_datum_equals_text(PointerGetDatum(claim->fingerprint),
									fingerprint))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("idempotency key \"%s\" was reused with a different request",
					entitlock_text_for_message(key)),
			 errdetail("The fingerprint differs from the one the key was first used with."),
			 errhint("Use a new idempotency key for a different request.")));
}

/* What claim_key() found. */
typedef enum ClaimOutcome
{
	CLAIM_NEW,					/* the key is now the caller's */
	CLAIM_REPLAY,				/* a committed claim (or the caller's) has it */
	CLAIM_IN_PROGRESS			/* another transaction holds it still */
} ClaimOutcome;

/*
 * Claim key for the calling transaction, or find who has: CLAIM_NEW when
 * the key is now the caller's (the claim row is written), CLAIM_REPLAY
 * with *response set (NULL when none was stored) when a committed claim,
 * or an earlier claim of this same transaction, already has it.  A key
 * another transaction is claiming is waited for, at most wait_ms
 * milliseconds unless that is negative; CLAIM_IN_PROGRESS when that runs
 * out, having claimed and kept nothing.
 */
static ClaimOutcome
claim_key(text *key, text *fingerprint, Interval *ttl, int wait_ms,
		  Jsonb **response, const char *cmdname)
{
	EntitlockTable t;
	Claim		claim;
	int64		hash;
	TimestampTz now;
	Datum		values[CLAIM_NATTS];
	bool		nulls[CLAIM_NATTS];

	entitlock_begin_write(cmdname);

	hash = entitlock_realm_key(IDEMPOTENCY_REALM, key);
	entitlock_table_open(&t, &claim_def, RowExclusiveLock);

	/* This transaction's own earlier claims, too, must be seen. */
	CommandCounterIncrement();

	/*
	 * A claim that is already committed (or this transaction's own) is final
	 * until it expires: only its owner could change it, before its COMMIT.
	 * So a replay needs no lock, and replays of one key do not queue behind
	 * each other.  Only when no such claim is visible is the key's lock
	 * taken, which waits for a transaction that holds the key (and only for
	 * that); then look again, with a snapshot taken after the wait.
	 */
	find_claim(&t, hash, key, GetCurrentTimestamp(), &claim);
	if (!claim.found)
	{
		if (!entitlock_acquire_timeout(hash, ExclusiveLock, wait_ms))
		{
			entitlock_table_close(&t);
			*response = NULL;
			return CLAIM_IN_PROGRESS;
		}
		find_claim(&t, hash, key, GetCurrentTimestamp(), &claim);
	}
	now = GetCurrentTimestamp();
	if (claim.found)
	{
		check_fingerprint(&claim, fingerprint, key);
		entitlock_table_close(&t);
		*response = claim.response;
		return CLAIM_REPLAY;
	}

	values[COL_KEY_HASH] = Int64GetDatum(hash);
	values[COL_KEY] = PointerGetDatum(key);
	values[COL_FINGERPRINT] = PointerGetDatum(fingerprint);
	values[COL_RESPONSE] = (Datum) 0;
	values[COL_CLAIMED_AT] = TimestampTzGetDatum(now);
	values[COL_EXPIRES_AT] = TimestampTzGetDatum(entitlock_expiry(now, ttl));
	values[COL_COMPLETED_AT] = (Datum) 0;
	values[COL_CLAIM_ID] = (Datum) 0;
	memset(nulls, 0, sizeof(nulls));
	nulls[COL_FINGERPRINT] = fingerprint == NULL;
	nulls[COL_RESPONSE] = true;
	nulls[COL_COMPLETED_AT] = true;

	/*
	 * Reuse an expired row, keeping its identity (claim_id).  If
	 * purge_expired() is deleting it, do not wait for that: the row is as
	 * good as gone, and a new one serves as well (should the purge roll
	 * back, the old row is still expired and ignored).
	 */
	if (claim.have_expired &&
		entitlock_table_lock_row(&t, &claim.expired_tid,
								 LockTupleNoKeyExclusive, false, false) == TM_Ok)
	{
		if (RelationGetNumberOfAttributes(t.heap) > COL_CLAIM_ID)
			values[COL_CLAIM_ID] = slot_getattr(t.oldslot, COL_CLAIM_ID + 1,
												&nulls[COL_CLAIM_ID]);
		entitlock_table_update(&t, &claim.expired_tid, values, nulls,
							   ENTITLOCK_COLUMN(COL_FINGERPRINT) |
							   ENTITLOCK_COLUMN(COL_RESPONSE) |
							   ENTITLOCK_COLUMN(COL_CLAIMED_AT) |
							   ENTITLOCK_COLUMN(COL_EXPIRES_AT) |
							   ENTITLOCK_COLUMN(COL_COMPLETED_AT));
	}
	else
	{
		values[COL_CLAIM_ID] = UUIDPGetDatum(entitlock_random_uuid());
		entitlock_table_insert(&t, values, nulls);
	}

	entitlock_table_close(&t);
	*response = NULL;
	return CLAIM_NEW;
}

/* Count a call that ended in outcome, if statistics are on. */
static void
count_claim_call(text *key, ClaimOutcome outcome)
{
	entitlock_stats_count(ENTITLOCK_STATS_IDEMPOTENCY, key, false,
						  outcome == CLAIM_REPLAY ? ENTITLOCK_STATS_REPLAY :
						  outcome == CLAIM_IN_PROGRESS ? ENTITLOCK_STATS_TIMEOUT :
						  0);
}

/*
 * entitlock.idempotency_begin(key text, fingerprint text DEFAULT NULL,
 *	   ttl interval DEFAULT '24 hours', wait interval DEFAULT NULL)
 * returns table (status text, response jsonb)
 *
 * 'new' when the calling transaction now owns key: it should do its write,
 * optionally idempotency_complete(key, response), and commit.  'replay',
 * with the stored response, when a committed transaction (or this one,
 * earlier) claimed key and the claim has not expired: the write is done.
 * Waits while another transaction holds key: until it ends when wait is
 * NULL, else at most wait, and then 'in_progress' with a NULL response,
 * claiming nothing.  A non-NULL fingerprint that differs from the claim's
 * is an error.  One row, always.  (1.0 declared the function without
 * wait; called that way, it waits as with NULL.)
 */
Datum
entitlock_idempotency_begin(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = entitlock_init_srf(fcinfo);
	text	   *key = entitlock_name_arg(fcinfo, 0, &key_messages);
	text	   *fingerprint = PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1);
	Interval   *ttl = entitlock_ttl_arg(fcinfo, 2, NULL, NULL);
	int			wait_ms = -1;
	Jsonb	   *response;
	ClaimOutcome outcome;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	if (PG_NARGS() > 3 && !PG_ARGISNULL(3))
		wait_ms = entitlock_interval_ms(PG_GETARG_INTERVAL_P(3),
										"wait must not be negative");

	entitlock_stats_begin();
	outcome = claim_key(key, fingerprint, ttl, wait_ms, &response,
						"idempotency_begin()");
	count_claim_call(key, outcome);

	values[0] = CStringGetTextDatum(outcome == CLAIM_NEW ? "new" :
									outcome == CLAIM_REPLAY ? "replay" :
									"in_progress");
	values[1] = JsonbPGetDatum(response);
	nulls[1] = response == NULL;
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}

/*
 * entitlock.first_time(key text, ttl interval DEFAULT '24 hours')
 * returns boolean
 *
 * idempotency_begin(key, NULL, ttl) = 'new', in one call: true for the one
 * transaction that claims key, false for every other until the claim
 * expires.
 */
Datum
entitlock_first_time(PG_FUNCTION_ARGS)
{
	text	   *key = entitlock_name_arg(fcinfo, 0, &key_messages);
	Interval   *ttl = entitlock_ttl_arg(fcinfo, 1, NULL, NULL);
	Jsonb	   *response;
	ClaimOutcome outcome;

	entitlock_stats_begin();
	outcome = claim_key(key, NULL, ttl, -1, &response, "first_time()");
	count_claim_call(key, outcome);
	PG_RETURN_BOOL(outcome == CLAIM_NEW);
}

/*
 * entitlock.idempotency_complete(key text, response jsonb DEFAULT NULL)
 * returns void
 *
 * Stores response on this transaction's claim of key, for replays to
 * return once the transaction commits.  May be called again to replace it.
 * An error when this transaction does not hold a claim on key.
 */
Datum
entitlock_idempotency_complete(PG_FUNCTION_ARGS)
{
	text	   *key = entitlock_name_arg(fcinfo, 0, &key_messages);
	Jsonb	   *response = PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1);
	EntitlockTable t;
	IndexScanDesc scan;
	int64		hash;
	bool		found = false;
	Datum		values[CLAIM_NATTS];
	bool		nulls[CLAIM_NATTS];
	ItemPointerData tid;

	entitlock_begin_write("idempotency_complete()");

	hash = entitlock_realm_key(IDEMPOTENCY_REALM, key);
	entitlock_table_open(&t, &claim_def, RowExclusiveLock);

	/*
	 * A transaction that claimed key holds its lock, so re-taking it never
	 * waits.  Not getting it means another transaction is claiming key.
	 */
	if (!entitlock_acquire(hash, ExclusiveLock, false))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idempotency key \"%s\" was not claimed by this transaction",
						entitlock_text_for_message(key)),
				 errdetail("Another transaction holds the key."),
				 errhint("Call idempotency_complete() in the transaction whose idempotency_begin() returned \"new\", before it commits.")));
	CommandCounterIncrement();

	scan = scan_key_rows(&t, hash);
	while (entitlock_next_row_with_text(&t, scan, COL_KEY + 1, key))
	{
		if (entitlock_slot_is_mine(t.slot))
		{
			found = true;
			break;
		}
	}
	index_endscan(scan);
	if (!found)
	{
		ExecClearTuple(t.slot);
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idempotency key \"%s\" was not claimed by this transaction",
						entitlock_text_for_message(key)),
				 errdetail("The key is unclaimed or was claimed by an earlier transaction."),
				 errhint("Call idempotency_complete() in the transaction whose idempotency_begin() returned \"new\", before it commits.")));
	}

	/* Keep every column but the response and completed_at. */
	slot_getallattrs(t.slot);
	memcpy(values, t.slot->tts_values,
		   t.slot->tts_tupleDescriptor->natts * sizeof(Datum));
	memcpy(nulls, t.slot->tts_isnull,
		   t.slot->tts_tupleDescriptor->natts * sizeof(bool));
	tid = t.slot->tts_tid;
	values[COL_RESPONSE] = JsonbPGetDatum(response);
	nulls[COL_RESPONSE] = response == NULL;
	values[COL_COMPLETED_AT] = TimestampTzGetDatum(GetCurrentTimestamp());
	nulls[COL_COMPLETED_AT] = false;

	/* The row is this transaction's, so no one else can be changing it. */
	entitlock_table_update(&t, &tid, values, nulls,
						   ENTITLOCK_COLUMN(COL_RESPONSE) |
						   ENTITLOCK_COLUMN(COL_COMPLETED_AT));
	ExecClearTuple(t.slot);
	entitlock_table_close(&t);
	PG_RETURN_VOID();
}

/*
 * entitlock.purge_expired(max_rows bigint DEFAULT NULL) returns bigint
 *
 * Deletes expired idempotency keys, oldest expiry first, at most max_rows
 * of them (all when NULL), and returns how many.  Rows a concurrent claim
 * is reusing are skipped, not waited for; so is a claim of the calling
 * transaction itself.
 */
Datum
entitlock_purge_expired(PG_FUNCTION_ARGS)
{
	int64		max_rows = PG_ARGISNULL(0) ? -1 : PG_GETARG_INT64(0);
	int64		deleted = 0;
	EntitlockTable t;
	IndexScanDesc scan;
	Snapshot	snapshot;
	Datum		now;

	if (!PG_ARGISNULL(0) && max_rows < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_rows must not be negative")));

	entitlock_begin_write("purge_expired()");

	entitlock_table_open(&t, &claim_def, RowExclusiveLock);
	now = TimestampTzGetDatum(GetCurrentTimestamp());

	/* Registered: the scan outlives other snapshot calls while it deletes. */
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = entitlock_table_scan(&t, EXPIRY_INDEX, snapshot,
								BTLessStrategyNumber, 1, &now);
	while (max_rows < 0 || deleted < max_rows)
	{
		ItemPointerData tid;

		CHECK_FOR_INTERRUPTS();
		if (!index_getnext_slot(scan, ForwardScanDirection, t.slot))
			break;
		if (entitlock_slot_is_mine(t.slot))
			continue;
		tid = t.slot->tts_tid;

		/*
		 * A claim reusing the row, or another purge, has it locked or has
		 * changed it since the snapshot: skip it.
		 */
		if (entitlock_table_lock_row(&t, &tid, LockTupleExclusive,
									 false, false) != TM_Ok)
			continue;
		entitlock_table_delete(&t, &tid);
		deleted++;
	}
	index_endscan(scan);
	UnregisterSnapshot(snapshot);
	ExecClearTuple(t.slot);
	entitlock_table_close(&t);
	PG_RETURN_INT64(deleted);
}
