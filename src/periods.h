/*-------------------------------------------------------------------------
 *
 * periods.h
 *	  Usage periods: what a period argument names, how the tables spell it,
 *	  and the bounds of the period holding a moment (periods.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef ENTITLOCK_PERIODS_H
#define ENTITLOCK_PERIODS_H

#include "datatype/timestamp.h"

/*
 * The kinds, in the canonical order meters are locked in.  An anchored
 * period has the unit day, week, month or year.
 */
typedef enum UsagePeriodKind
{
	PERIOD_LIFETIME,
	PERIOD_MINUTE,
	PERIOD_HOUR,
	PERIOD_DAY,
	PERIOD_WEEK,
	PERIOD_MONTH,
	PERIOD_YEAR
} UsagePeriodKind;

/* Longer than any canonical spelling (see periods.c). */
#define PERIOD_NAME_LEN 64

/*
 * A period as an argument names it.  count is 0 for the calendar periods
 * and lifetime; an anchored period has count (N) units and its anchor.
 * name is the canonical spelling, which the tables store and results show:
 * two spellings of one period get the same name.
 */
typedef struct UsagePeriod
{
	UsagePeriodKind kind;
	int			count;
	TimestampTz anchor;
	char		name[PERIOD_NAME_LEN];
} UsagePeriod;

/* The largest N of '[N ]unit@anchor'. */
#define PERIOD_MAX_COUNT 1000

extern void entitlock_period_parse(text *spelled, UsagePeriod *period);
extern void entitlock_period_value(Datum value, bool isnull,
								   UsagePeriod *period);
extern void entitlock_period_stored(Datum value, const char *relname,
									UsagePeriod *period);
extern bool entitlock_period_equal(const UsagePeriod *a, const UsagePeriod *b);
extern int	entitlock_period_cmp(const UsagePeriod *a, const UsagePeriod *b);
extern bool entitlock_period_bounds(const UsagePeriod *period, TimestampTz at,
									TimestampTz *start, TimestampTz *end);

#endif							/* ENTITLOCK_PERIODS_H */
