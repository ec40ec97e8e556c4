/*-------------------------------------------------------------------------
 *
 * periods.c
 *	  Usage periods: reading a period argument, its canonical spelling, the
 *	  bounds of the period holding a moment, and entitlock.usage_period.
 *
 * A period is 'lifetime', a calendar period ('minute', 'hour', 'day',
 * 'week', 'month', 'year', in any case), or (1.2) an anchored period
 * '[N ]unit@anchor': unit day, week, month or year (or their plurals), N
 * from 1 to PERIOD_MAX_COUNT, anchor a finite timestamptz.  Everything is
 * computed in UTC, so a period never depends on the session's TimeZone:
 * an anchor written without a zone is read as UTC, as calendar periods
 * are UTC periods.
 *
 * Anchored periods start at anchor + k * N units for every whole k, before
 * and after the anchor.  Days and weeks are fixed lengths of UTC time.
 * Months and years keep the anchor's day of the month and time of day,
 * clamped to the month's last day (an anchor on January 31 gives February
 * 28 or 29, March 31, April 30), and every start is computed from the
 * anchor, never from the previous period, so a clamped month does not
 * shift the ones after it.
 *
 * The canonical spelling.  A meter is (subject, feature, period) and the
 * tables key it by the period's text, so two spellings of one period must
 * be stored as one.  Calendar periods are stored as their lower-case names
 * (as 1.0 and 1.1 stored them).  An anchored period is stored as
 *
 *		[N ]unit@YYYY-MM-DD HH:MM:SS[.ffffff]+00[ BC]
 *
 * with N and the plural only when N > 1, a number of days that makes whole
 * weeks written as weeks and a number of months that makes whole years as
 * years ('14 days' and '2 weeks' are one period, as are '12 months' and
 * 'year'), the anchor in UTC, and fractional seconds only when there are
 * any, without trailing zeros: what PostgreSQL
 * prints for the anchor with DateStyle ISO and TimeZone UTC, for example
 * 'month@2026-01-31 10:00:00+00' or '3 months@2026-01-15 00:00:00+00'.  It
 * reads back as the same period.
 *
 * Relies on PostgreSQL's timestamptz input for the anchor; nothing here
 * touches a table or takes a lock.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/int.h"
#include "funcapi.h"
#include "periods.h"
#include "pgtime.h"
#include "util.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(entitlock_usage_period);

/* Indexed by UsagePeriodKind; these spellings are what the tables store. */
static const char *const period_names[] = {
	"lifetime", "minute", "hour", "day", "week", "month", "year"
};

/* Plurals of the units of anchored periods, by kind; NULL: not a unit. */
static const char *const unit_plurals[] = {
	NULL, NULL, NULL, "days", "weeks", "months", "years"
};

/* Inputs longer than this are not remembered (see period_cache). */
#define PERIOD_CACHE_INPUT 96
#define PERIOD_CACHE_SLOTS 256	/* a power of two; two ways per hash */
#define PERIOD_CACHE_SEED UINT64CONST(0x656e746c6f636b33)

/*
 * Anchored periods read lately, by their exact spelling, each in one of the
 * two slots its spelling hashes to.  Reading an anchor costs more than the rest of
 * reading a call's arguments, and callers name the same few periods call
 * after call (a customer's billing period, on every request of that
 * customer).  Only an ISO anchor made of digits and punctuation is
 * remembered: its meaning depends on the text alone, while a zone
 * abbreviation depends on timezone_abbreviations and a date such as
 * 01/02/2026 on DateStyle.  At most 48 kB per backend, in the pages used.
 */
typedef struct PeriodCacheEntry
{
	int			len;			/* 0: empty */
	char		input[PERIOD_CACHE_INPUT];
	UsagePeriod period;
} PeriodCacheEntry;

static PeriodCacheEntry period_cache[PERIOD_CACHE_SLOTS];

static void
timestamp_out_of_range(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
			 errmsg("timestamp out of range")));
}

/* The calendar period or lifetime spelled name (in any case), or -1. */
static int
period_lookup(const char *name, int len)
{
	int			i;

	/* Case-insensitive, as date_trunc() is. */
	for (i = 0; i < (int) lengthof(period_names); i++)
	{
		if ((int) strlen(period_names[i]) == len &&
			pg_strncasecmp(name, period_names[i], len) == 0)
			return i;
	}
	return -1;
}

/* The unit of an anchored period spelled name, singular or plural, or -1. */
static int
unit_lookup(const char *name, int len)
{
	int			i;

	for (i = PERIOD_DAY; i <= PERIOD_YEAR; i++)
	{
		if (((int) strlen(period_names[i]) == len &&
			 pg_strncasecmp(name, period_names[i], len) == 0) ||
			((int) strlen(unit_plurals[i]) == len &&
			 pg_strncasecmp(name, unit_plurals[i], len) == 0))
			return i;
	}
	return -1;
}

/* May an anchor with this spelling be remembered?  See period_cache. */
static bool
anchor_cacheable(const char *anchor)
{
	const char *p = anchor;

	while (*p == ' ')
		p++;
	if (strspn(p, "0123456789") < 4 || p[strspn(p, "0123456789")] != '-')
		return false;
	return p[strspn(p, "0123456789 -:.+TZtz")] == '\0';
}

/*
 * Does the anchor use a word naming a moment relative to the clock (now,
 * today, tomorrow, yesterday)?  Such an anchor would name a new period in
 * each transaction.
 */
static bool
anchor_is_relative(const char *anchor)
{
	static const char *const words[] = {"now", "today", "tomorrow", "yesterday"};
	const char *p = anchor;

	while (*p != '\0')
	{
		int			len = 0;
		int			i;

		while (p[len] != '\0' && isalpha((unsigned char) p[len]))
			len++;
		for (i = 0; len > 0 && i < (int) lengthof(words); i++)
		{
			if ((int) strlen(words[i]) == len &&
				pg_strncasecmp(p, words[i], len) == 0)
				return true;
		}
		p += len > 0 ? len : 1;
	}
	return false;
}

/*
 * Read anchor with PostgreSQL's timestamptz input, as if the session's
 * TimeZone were UTC.  A malformed anchor is reported as a bad period
 * (22023) with the input's own message as detail.
 */
static TimestampTz
read_anchor(const char *anchor, const char *spelled)
{
	static pg_tz *utc = NULL;
	pg_tz	   *saved = session_timezone;
	MemoryContext oldcxt = CurrentMemoryContext;
	TimestampTz result = 0;

	if (utc == NULL)
	{
		utc = pg_tzset("UTC");
		if (utc == NULL)
			elog(ERROR, "could not load time zone \"UTC\"");
	}

	session_timezone = utc;
	PG_TRY();
	{
		result = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in,
														 CStringGetDatum(anchor),
														 ObjectIdGetDatum(InvalidOid),
														 Int32GetDatum(-1)));
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		session_timezone = saved;
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		/* Only a bad value is a bad period; anything else goes on as is. */
		if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_DATA_EXCEPTION)
			PG_RE_THROW();
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid anchor in period \"%s\"", spelled),
				 errdetail_internal("%s", edata->message),
				 errhint("Write the anchor as a timestamptz, such as \"2026-01-31 10:00:00+00\".")));
	}
	PG_END_TRY();
	session_timezone = saved;

	if (TIMESTAMP_NOT_FINITE(result))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("anchor of period \"%s\" must be finite", spelled)));
	if (anchor_is_relative(anchor))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("anchor of period \"%s\" must be a fixed moment",
						spelled),
				 errdetail("Words such as now and today name a different moment in each transaction.")));
	return result;
}

/* Fill in period->name, the canonical spelling of an anchored period. */
static void
canonical_name(UsagePeriod *period)
{
	struct pg_tm tm;
	fsec_t		fsec;
	int			year;
	int			len;

	/* With no time zone argument timestamp2tm gives UTC fields. */
	if (timestamp2tm(period->anchor, NULL, &tm, &fsec, NULL, NULL) != 0)
		timestamp_out_of_range();
	year = tm.tm_year > 0 ? tm.tm_year : 1 - tm.tm_year;
	if (period->count > 1)
		len = snprintf(period->name, PERIOD_NAME_LEN, "%d %s@",
					   period->count, unit_plurals[period->kind]);
	else
		len = snprintf(period->name, PERIOD_NAME_LEN, "%s@",
					   period_names[period->kind]);
	len += snprintf(period->name + len, PERIOD_NAME_LEN - len,
					"%04d-%02d-%02d %02d:%02d:%02d", year, tm.tm_mon,
					tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
	if (fsec != 0)
	{
		len += snprintf(period->name + len, PERIOD_NAME_LEN - len, ".%06d",
						(int) fsec);
		while (period->name[len - 1] == '0')
			period->name[--len] = '\0';
	}
	snprintf(period->name + len, PERIOD_NAME_LEN - len, "+00%s",
			 tm.tm_year > 0 ? "" : " BC");
}

/* Read an anchored period, '[N ]unit@anchor'; at is where its '@' is. */
static void
parse_anchored(const char *str, const char *at, UsagePeriod *period)
{
	const char *p = str;
	const char *unit;
	const char *unit_end;
	int64		count = 1;
	int			kind;

	if (isdigit((unsigned char) *p))
	{
		count = 0;
		while (isdigit((unsigned char) *p))
		{
			/* Saturate: any number past the range is as bad as any other. */
			if (count <= PERIOD_MAX_COUNT)
				count = count * 10 + (*p - '0');
			p++;
		}
		if (*p != ' ')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unrecognized unit in period \"%s\"", str),
					 errhint("The unit of an anchored period is day, week, month or year, as in \"3 months@2026-01-15 00:00:00+00\".")));
		while (*p == ' ')
			p++;
	}
	unit = p;
	unit_end = at;
	while (unit_end > unit && unit_end[-1] == ' ')
		unit_end--;
	kind = unit_lookup(unit, (int) (unit_end - unit));
	if (kind < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unrecognized unit in period \"%s\"", str),
				 errhint("The unit of an anchored period is day, week, month or year, as in \"3 months@2026-01-15 00:00:00+00\".")));
	if (count < 1 || count > PERIOD_MAX_COUNT)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("number of units in period \"%s\" is out of range",
						str),
				 errdetail("An anchored period is 1 to %d units long.",
						   PERIOD_MAX_COUNT)));

	/* Whole weeks and whole years are one period however they are written. */
	if (kind == PERIOD_DAY && count % 7 == 0)
	{
		kind = PERIOD_WEEK;
		count /= 7;
	}
	else if (kind == PERIOD_MONTH && count % MONTHS_PER_YEAR == 0)
	{
		kind = PERIOD_YEAR;
		count /= MONTHS_PER_YEAR;
	}
	period->kind = (UsagePeriodKind) kind;
	period->count = (int) count;
	period->anchor = read_anchor(at + 1, str);
	canonical_name(period);
}

/*
 * Read the period spelled; every bad spelling is an error (22023).  Fills
 * in period, whose name is then the canonical spelling.
 */
void
entitlock_period_parse(text *spelled, UsagePeriod *period)
{
	int			len = VARSIZE_ANY_EXHDR(spelled);
	const char *data = VARDATA_ANY(spelled);
	const char *at = memchr(data, '@', len);
	PeriodCacheEntry *slot = NULL;
	char	   *str;
	int			kind;

	if (at == NULL)
	{
		kind = period_lookup(data, len);
		if (kind < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unrecognized period \"%s\"",
							entitlock_text_for_message(spelled)),
					 errhint("Valid periods are lifetime, minute, hour, day, week, month and year.")));
		period->kind = (UsagePeriodKind) kind;
		period->count = 0;
		period->anchor = 0;
		strlcpy(period->name, period_names[kind], PERIOD_NAME_LEN);
		return;
	}

	if (len <= PERIOD_CACHE_INPUT)
	{
		uint64		h = entitlock_hash_bytes(data, len, PERIOD_CACHE_SEED);
		PeriodCacheEntry *ways = &period_cache[h & (PERIOD_CACHE_SLOTS - 2)];
		int			i;

		for (i = 0; i < 2; i++)
		{
			if (ways[i].len == len && memcmp(ways[i].input, data, len) == 0)
			{
				*period = ways[i].period;
				return;
			}
		}
		/* A miss replaces an empty way, else the one the hash picks. */
		slot = ways[0].len == 0 ? &ways[0] : ways[1].len == 0 ? &ways[1] :
			&ways[(h >> 32) & 1];
	}

	str = text_to_cstring(spelled);
	if (len > 200)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("period \"%s\" is too long",
						entitlock_text_for_message(spelled))));
	parse_anchored(str, str + (at - data), period);

	if (slot != NULL && anchor_cacheable(str + (at - data) + 1))
	{
		memcpy(slot->input, data, len);
		slot->len = len;
		slot->period = *period;
	}
	pfree(str);
}

/* A period argument or field, which must not be NULL. */
void
entitlock_period_value(Datum value, bool isnull, UsagePeriod *period)
{
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("period must not be null")));
	entitlock_period_parse(DatumGetTextPP(value), period);
}

/* A period as the table relname stores it. */
void
entitlock_period_stored(Datum value, const char *relname, UsagePeriod *period)
{
	text	   *name = DatumGetTextPP(value);

	if (VARSIZE_ANY_EXHDR(name) == 0)
		elog(ERROR, "unexpected period in entitlock.%s", relname);
	entitlock_period_parse(name, period);
}

/* Do a and b name the same period (however they were spelled)? */
bool
entitlock_period_equal(const UsagePeriod *a, const UsagePeriod *b)
{
	return a->kind == b->kind && a->count == b->count &&
		(a->count == 0 || a->anchor == b->anchor);
}

/*
 * The canonical order of periods: by kind, then (anchored) by N and by
 * anchor.  Calendar periods come in the order 1.1 locked them in.
 */
int
entitlock_period_cmp(const UsagePeriod *a, const UsagePeriod *b)
{
	if (a->kind != b->kind)
		return (int) a->kind - (int) b->kind;
	if (a->count != b->count)
		return a->count - b->count;
	if (a->count == 0)
		return 0;
	return (a->anchor > b->anchor) - (a->anchor < b->anchor);
}

/* a / b rounded towards minus infinity, for b > 0. */
static int64
floor_div(int64 a, int64 b)
{
	int64		q = a / b;

	if (a % b < 0)
		q--;
	return q;
}

static bool
is_leap(int year)
{
	/* astronomical numbering, as timestamp2tm's: year 0 is 1 BC */
	return year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
}

/*
 * The start of an anchored month or year period: the anchor's fields
 * (tm, in UTC) moved by months, keeping the day of the month but never
 * past the month's last day.
 */
static TimestampTz
month_start(const struct pg_tm *anchor, fsec_t fsec, int64 months)
{
	static const int month_days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	struct pg_tm tm = *anchor;
	int64		total = (int64) anchor->tm_year * MONTHS_PER_YEAR +
		(anchor->tm_mon - 1) + months;
	int64		year = floor_div(total, MONTHS_PER_YEAR);
	int			last;
	Timestamp	result;

	if (year < -10000 || year > 1000000)
		timestamp_out_of_range();
	tm.tm_year = (int) year;
	tm.tm_mon = (int) (total - year * MONTHS_PER_YEAR) + 1;
	last = month_days[tm.tm_mon - 1] + (tm.tm_mon == 2 && is_leap(tm.tm_year));
	if (tm.tm_mday > last)
		tm.tm_mday = last;
	if (tm2timestamp(&tm, fsec, NULL, &result) != 0 ||
		!IS_VALID_TIMESTAMP(result))
		timestamp_out_of_range();
	return result;
}

/* Fill in the bounds of the anchored period holding "at". */
static void
anchored_bounds(const UsagePeriod *period, TimestampTz at,
				TimestampTz *start, TimestampTz *end)
{
	if (period->kind == PERIOD_DAY || period->kind == PERIOD_WEEK)
	{
		int64		length = (int64) period->count * USECS_PER_DAY *
			(period->kind == PERIOD_WEEK ? 7 : 1);
		int64		since;
		int64		k;

		if (pg_sub_s64_overflow(at, period->anchor, &since))
			timestamp_out_of_range();
		k = floor_div(since, length);
		*start = period->anchor + k * length;
		*end = *start + length;
	}
	else
	{
		struct pg_tm atm;
		struct pg_tm ttm;
		fsec_t		afsec;
		fsec_t		tfsec;
		int64		step = (int64) period->count *
			(period->kind == PERIOD_YEAR ? MONTHS_PER_YEAR : 1);
		int64		k;

		if (timestamp2tm(period->anchor, NULL, &atm, &afsec, NULL, NULL) != 0 ||
			timestamp2tm(at, NULL, &ttm, &tfsec, NULL, NULL) != 0)
			timestamp_out_of_range();

		/*
		 * The last start at or before at's month, and the one before it
		 * when that start falls later in the month than at.
		 */
		k = floor_div(((int64) ttm.tm_year - atm.tm_year) * MONTHS_PER_YEAR +
					  (ttm.tm_mon - atm.tm_mon), step);
		*start = month_start(&atm, afsec, k * step);
		if (*start > at)
		{
			k--;
			*start = month_start(&atm, afsec, k * step);
		}
		*end = month_start(&atm, afsec, (k + 1) * step);
	}
	if (!IS_VALID_TIMESTAMP(*start) || !IS_VALID_TIMESTAMP(*end))
		timestamp_out_of_range();
}

/* Fill in the bounds of the UTC calendar period of kind holding "at". */
static void
calendar_bounds(UsagePeriodKind kind, TimestampTz at,
				TimestampTz *startp, TimestampTz *endp)
{
	struct pg_tm tm;
	fsec_t		fsec;
	Timestamp	start;
	Timestamp	end;

	/* With no time zone argument timestamp2tm gives UTC fields. */
	if (timestamp2tm(at, NULL, &tm, &fsec, NULL, NULL) != 0)
		timestamp_out_of_range();

	fsec = 0;
	tm.tm_sec = 0;
	if (kind != PERIOD_MINUTE)
		tm.tm_min = 0;
	if (kind != PERIOD_MINUTE && kind != PERIOD_HOUR)
		tm.tm_hour = 0;
	if (kind == PERIOD_WEEK)
	{
		int			jd = date2j(tm.tm_year, tm.tm_mon, tm.tm_mday);

		/* j2day() counts from Sunday = 0; step back to Monday. */
		jd -= (j2day(jd) + 6) % 7;
		j2date(jd, &tm.tm_year, &tm.tm_mon, &tm.tm_mday);
	}
	if (kind == PERIOD_MONTH || kind == PERIOD_YEAR)
		tm.tm_mday = 1;
	if (kind == PERIOD_YEAR)
		tm.tm_mon = 1;

	if (tm2timestamp(&tm, fsec, NULL, &start) != 0)
		timestamp_out_of_range();

	switch (kind)
	{
		case PERIOD_MINUTE:
			end = start + USECS_PER_MINUTE;
			break;
		case PERIOD_HOUR:
			end = start + USECS_PER_HOUR;
			break;
		case PERIOD_DAY:
			end = start + USECS_PER_DAY;
			break;
		case PERIOD_WEEK:
			end = start + 7 * USECS_PER_DAY;
			break;
		case PERIOD_MONTH:
		case PERIOD_YEAR:
			if (kind == PERIOD_YEAR)
				tm.tm_year++;
			else if (++tm.tm_mon > MONTHS_PER_YEAR)
			{
				tm.tm_mon = 1;
				tm.tm_year++;
			}
			if (tm2timestamp(&tm, fsec, NULL, &end) != 0)
				timestamp_out_of_range();
			break;
		default:
			elog(ERROR, "unexpected usage period %d", (int) kind);
			pg_unreachable();
	}
	if (!IS_VALID_TIMESTAMP(end))
		timestamp_out_of_range();
	*startp = start;
	*endp = end;
}

/*
 * The bounds of the period holding "at": its first instant and the first
 * instant of the next one.  Returns false for lifetime, which has no end
 * (*start is then -infinity and *end 0).  Weeks start on Monday, as in
 * date_trunc('week', ...).
 */
bool
entitlock_period_bounds(const UsagePeriod *period, TimestampTz at,
						TimestampTz *start, TimestampTz *end)
{
	if (period->kind == PERIOD_LIFETIME)
	{
		TIMESTAMP_NOBEGIN(*start);
		*end = 0;
		return false;
	}
	if (TIMESTAMP_NOT_FINITE(at))
		timestamp_out_of_range();
	if (period->count > 0)
	{
		/*
		 * The bounds of an anchored period depend only on the period and
		 * the moment; calls in a row mostly ask for the same period of the
		 * same meter, so the last one computed answers them.
		 */
		static UsagePeriodKind last_kind;
		static int	last_count = 0;
		static TimestampTz last_anchor;
		static TimestampTz last_start;
		static TimestampTz last_end;

		if (last_count == period->count && last_kind == period->kind &&
			last_anchor == period->anchor &&
			at >= last_start && at < last_end)
		{
			*start = last_start;
			*end = last_end;
			return true;
		}
		anchored_bounds(period, at, start, end);
		last_kind = period->kind;
		last_count = period->count;
		last_anchor = period->anchor;
		last_start = *start;
		last_end = *end;
	}
	else
		calendar_bounds(period->kind, at, start, end);
	return true;
}

/*
 * entitlock.usage_period(period text, at timestamptz DEFAULT now())
 * returns table (period_start timestamptz, period_end timestamptz)
 *
 * The period holding "at", exactly as the usage functions compute it; both
 * columns are NULL for lifetime.  NULL arguments are errors.
 */
Datum
entitlock_usage_period(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = entitlock_init_srf(fcinfo);
	UsagePeriod period;
	TimestampTz start;
	TimestampTz end;
	Datum		values[2];
	bool		nulls[2];

	entitlock_period_value(PG_GETARG_DATUM(0), PG_ARGISNULL(0), &period);
	entitlock_require_arg(fcinfo, 1, "timestamp must not be null");
	nulls[0] = nulls[1] =
		!entitlock_period_bounds(&period, PG_GETARG_TIMESTAMPTZ(1), &start,
								 &end);
	values[0] = TimestampTzGetDatum(start);
	values[1] = TimestampTzGetDatum(end);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}
