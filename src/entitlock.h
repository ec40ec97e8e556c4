/*-------------------------------------------------------------------------
 *
 * entitlock.h
 *	  Declarations shared between entitlock's source files.
 *
 * Only what at least two files need lives here: turning SQL text arguments
 * into lock keys (keys.c) and taking transaction-scoped advisory locks on
 * those keys (locks.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef ENTITLOCK_H
#define ENTITLOCK_H

#include "fmgr.h"
#include "storage/lockdefs.h"

/* keys.c */
extern int64 entitlock_name_key(text *name);
extern int64 entitlock_pair_key(text *realm, text *entity);
extern void entitlock_require_arg(FunctionCallInfo fcinfo, int argno,
								  const char *what);
extern text *entitlock_text_arg(FunctionCallInfo fcinfo, int argno,
								const char *what);

/* locks.c */
extern bool entitlock_acquire(int64 key, LOCKMODE mode, bool wait);

#endif							/* ENTITLOCK_H */
