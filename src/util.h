/*-------------------------------------------------------------------------
 *
 * util.h
 *	  The bottom layer every feature uses: argument checks, the name limit,
 *	  interval conversion, realm keys, the start of a writing call and the
 *	  set-returning result (util.c); lock keys (keys.c).
 *
 * Nothing here calls up into storage, locks, statistics or a feature.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ENTITLOCK_UTIL_H
#define ENTITLOCK_UTIL_H

#include "fmgr.h"
#include "datatype/timestamp.h"
#include "funcapi.h"
#include "utils/uuid.h"

/* keys.c */
extern int64 entitlock_name_key(text *name);
extern int64 entitlock_pair_key(text *realm, text *entity);
extern uint64 entitlock_hash_bytes(const void *data, size_t len, uint64 seed);

/*
 * util.c
 *
 * The const char * message parameters below take whole messages, such as
 * "amount must not be null", which are raised as given (translated with
 * _()); never fragments to be assembled.
 */

/*
 * Names, subjects, features and idempotency keys are stored in full and
 * indexed, so together they must fit in a btree entry (about 2.7 kB).
 */
#define ENTITLOCK_MAX_NAME_BYTES 512

/* The most slots a semaphore (slots.c, leases.c) may have. */
#define ENTITLOCK_MAX_SLOTS 10000

/* The messages a name argument's checks raise; if_long NULL: no limit. */
typedef struct EntitlockNameMessages
{
	const char *if_null;
	const char *if_empty;
	const char *if_long;
} EntitlockNameMessages;

extern void entitlock_require_arg(FunctionCallInfo fcinfo, int argno,
								  const char *if_null);
extern text *entitlock_text_arg(FunctionCallInfo fcinfo, int argno,
								const char *if_null);
extern int64 entitlock_int8_arg(FunctionCallInfo fcinfo, int argno,
								const char *if_null);
extern int	entitlock_slots_arg(FunctionCallInfo fcinfo, int argno);
extern text *entitlock_name_value(Datum value, bool isnull,
								  const EntitlockNameMessages *messages);
extern text *entitlock_name_arg(FunctionCallInfo fcinfo, int argno,
								const EntitlockNameMessages *messages);
extern char *entitlock_text_for_message(text *t);

extern bool entitlock_interval_usecs(const Interval *span, int64 *usecs);
extern int	entitlock_interval_ms(const Interval *span,
								  const char *if_negative);
extern Interval *entitlock_usecs_interval(int64 usecs);
extern TimestampTz entitlock_expiry(TimestampTz now, Interval *ttl);
extern Interval *entitlock_ttl_arg(FunctionCallInfo fcinfo, int argno,
								   const Interval *max, const char *max_text);

extern int64 entitlock_realm_key(const char *realm, text *name);
extern pg_uuid_t *entitlock_random_uuid(void);
extern void entitlock_begin_write(const char *cmdname);
extern ReturnSetInfo *entitlock_init_srf(FunctionCallInfo fcinfo);

#endif							/* ENTITLOCK_UTIL_H */
