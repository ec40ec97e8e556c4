/*-------------------------------------------------------------------------
 *
 * entitlock.c
 *	  The module: its magic block and _PG_init, which joins the layers
 *	  that must not know each other (the storage layer gets its creation
 *	  lock from locks.c and its wait hook from stats.c) and starts lock
 *	  escalation and statistics.
 *
 * The layers, lowest first; each file includes only the headers of the
 * layers it uses, and no header includes a higher one:
 *
 *	util.h		keys (keys.c) and utilities (util.c): the bottom layer
 *	periods.h	usage periods (periods.c), on util.h
 *	table.h		storage: entitlock's tables beneath SQL (table.c)
 *	locks.h		advisory locks (locks.c)
 *	stats.h		statistics (stats.c), a leaf every feature calls
 *	usage.h		private to the usage files (usage*.c)
 *
 * The features (usage*.c, ratelimit.c, idempotency.c, leases.c, slots.c)
 * sit on top; this file loads the module and joins the layers.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "locks.h"
#include "stats.h"
#include "table.h"
#include "utils/timestamp.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static void
lock_creation(int64 create_key)
{
	entitlock_acquire_internal(create_key, ExclusiveLock);
}

static void
unlock_creation(int64 create_key)
{
	entitlock_release_internal(create_key, ExclusiveLock);
}

static bool
time_waits(void)
{
	return entitlock_stats_on();
}

static const EntitlockTableHooks table_hooks = {
	lock_creation,
	unlock_creation,
	time_waits,
	entitlock_stats_waited
};

void
_PG_init(void)
{
	entitlock_table_set_hooks(&table_hooks);

	/* Lock escalation works however the library was loaded. */
	entitlock_locks_init();

	/* Statistics only when preloaded (see stats.c). */
	entitlock_stats_init();
}
