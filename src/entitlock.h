/*-------------------------------------------------------------------------
 *
 * entitlock.h
 *	  Every area header at once, for code written before the headers were
 *	  split.  entitlock's own files include only the headers of the layers
 *	  they use, lowest first:
 *
 *	util.h		keys (keys.c) and utilities (util.c): the bottom layer
 *	table.h		storage: entitlock's tables beneath SQL (table.c)
 *	locks.h		advisory locks (locks.c)
 *	stats.h		statistics (stats.c), a leaf every feature calls
 *	usage.h		private to the usage files
 *
 * The features (usage*.c, ratelimit.c, idempotency.c, leases.c) sit on
 * top; entitlock.c loads the module and joins the layers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ENTITLOCK_H
#define ENTITLOCK_H

#include "util.h"
#include "table.h"
#include "locks.h"
#include "stats.h"

#endif							/* ENTITLOCK_H */
