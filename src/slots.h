/*-------------------------------------------------------------------------
 *
 * slots.h
 *	  Semaphores (1.2): what slots.c shares with leases.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ENTITLOCK_SLOTS_H
#define ENTITLOCK_SLOTS_H

#include "fmgr.h"
#include "storage/lock.h"

/* The most slots a semaphore may have. */
#define ENTITLOCK_MAX_SLOTS 10000

/*
 * The fourth field of a semaphore's advisory lock tags: this for its gate,
 * this plus the slot number for a slot (see slots.c).  Clear of 1 and 2
 * (pg_advisory_lock) and 3 (ENTITLOCK_INTERNAL_LOCKS); the largest value,
 * 0x4000 + 10000, fits the field's 16 bits.
 */
#define ENTITLOCK_SLOT_TAG_BASE 0x4000

extern void entitlock_slot_locktag(LOCKTAG *tag, int64 key, int slot);
extern int	entitlock_slots_arg(FunctionCallInfo fcinfo, int argno);

#endif							/* ENTITLOCK_SLOTS_H */
