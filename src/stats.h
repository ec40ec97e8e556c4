/*-------------------------------------------------------------------------
 *
 * stats.h
 *	  Per-label call statistics (stats.c): a leaf every feature calls and
 *	  that calls nothing of entitlock's.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ENTITLOCK_STATS_H
#define ENTITLOCK_STATS_H

#include "datatype/timestamp.h"

typedef enum EntitlockStatsKind
{
	ENTITLOCK_STATS_LOCK,
	ENTITLOCK_STATS_USAGE,
	ENTITLOCK_STATS_RATE,
	ENTITLOCK_STATS_IDEMPOTENCY,
	ENTITLOCK_STATS_LEASE,
	ENTITLOCK_STATS_SLOT		/* 1.2: lock_slot, lease_acquire_slot */
} EntitlockStatsKind;
#define ENTITLOCK_STATS_NKINDS 6

/* What a counted call found, for entitlock_stats_count()'s flags. */
#define ENTITLOCK_STATS_TIMEOUT 0x01
#define ENTITLOCK_STATS_DENIED 0x02
#define ENTITLOCK_STATS_REPLAY 0x04
#define ENTITLOCK_STATS_TAKEOVER 0x08

/* Non-NULL once statistics are in shared memory (the library preloaded). */
extern struct EntitlockStatsShared *entitlock_stats_shared;
#define entitlock_stats_on() (entitlock_stats_shared != NULL)
extern void entitlock_stats_begin(void);
extern void entitlock_stats_waited(TimestampTz start);
extern void entitlock_stats_add(int kind, text *name, bool whole_label,
								int flags);

/*
 * Count a call of kind on name (see stats.c); without the preload, this
 * test is all it costs.
 */
static inline void
entitlock_stats_count(int kind, text *name, bool whole_label, int flags)
{
	if (entitlock_stats_on())
		entitlock_stats_add(kind, name, whole_label, flags);
}

extern void entitlock_stats_init(void);

#endif							/* ENTITLOCK_STATS_H */
