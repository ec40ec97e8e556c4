/*-------------------------------------------------------------------------
 *
 * locks.h
 *	  Transaction-scoped advisory locks on entitlock's keys (locks.c): the
 *	  locks of applications' names, entitlock's internal locks, and the
 *	  shared locks recording calls take.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ENTITLOCK_LOCKS_H
#define ENTITLOCK_LOCKS_H

#include "storage/lockdefs.h"

extern bool entitlock_acquire(int64 key, LOCKMODE mode, bool wait);
extern bool entitlock_acquire_timeout(int64 key, LOCKMODE mode,
									 int timeout_ms);
extern bool entitlock_wait_for_xact(TransactionId xid, int timeout_ms);
extern void entitlock_release(int64 key, LOCKMODE mode);
extern void entitlock_acquire_recording(const int64 *keys, int nkeys);
extern int	entitlock_sort_keys(void *elems, int n, size_t elemsize);
extern void entitlock_locks_init(void);
extern void entitlock_check_not_parallel(void);

/* The advisory lock tag field that marks entitlock's internal locks. */
#define ENTITLOCK_INTERNAL_LOCKS 3
extern void entitlock_acquire_internal(int64 key, LOCKMODE mode);
extern void entitlock_release_internal(int64 key, LOCKMODE mode);

/* For lock tags of other files' own (1.2, slots.c) */
struct LOCKTAG;
extern bool entitlock_wait_tag(const struct LOCKTAG *tag, LOCKMODE mode,
							   int timeout_ms);

#endif							/* ENTITLOCK_LOCKS_H */
