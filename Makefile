# entitlock/Makefile
#
# Build with PGXS:  make && make install
# Test everything:  bash test/run.sh   (installs what it needs, see README)
# Debian packages:  make deb           (into dist/, see test/deb.sh)
# Trusted edition:  make trusted       (SQL only, into dist/, see trusted/build.sh)

EXTENSION = entitlock
MODULE_big = entitlock

# The version lives in entitlock.control; everything else derives from it.
EXTVERSION = $(shell sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p" $(EXTENSION).control)

OBJS = \
	src/entitlock.o \
	src/util.o \
	src/keys.o \
	src/locks.o \
	src/table.o \
	src/usage.o \
	src/usage_counter.o \
	src/usage_keys.o \
	src/usage_limits.o \
	src/periods.o \
	src/idempotency.o \
	src/leases.o \
	src/ratelimit.o \
	src/stats.o \
	src/slots.o

DATA = $(wildcard sql/$(EXTENSION)--*.sql)
PGFILEDESC = "entitlock - named locks, usage limits, idempotency and leases"

REGRESS = \
	keys \
	locks \
	usage \
	periods \
	escalation \
	idempotency \
	leases \
	compose \
	quota \
	security \
	hostile \
	fuzz \
	waits \
	slots

ISOLATION = \
	lock-exclusive \
	lock-shared \
	lock-identity \
	lock-timeout \
	lock-release \
	lock-entity-hierarchy \
	lock-all-crossing-order \
	lock-deadlock \
	lock-holders-waiting \
	usage-race-at-limit \
	usage-rollback-lets-waiter-in \
	usage-idempotency-concurrent \
	usage-features-independent \
	usage-prune-concurrent \
	usage-first-row-concurrent \
	usage-lock-entity-excludes \
	usage-escalated-lock-entity-excludes \
	usage-escalation-no-deadlock \
	usage-limits-crossing-order \
	usage-limits-denial-untouched \
	usage-limits-idempotency-concurrent \
	usage-limits-savepoint \
	usage-reset-serialises \
	rate-limit-rollback \
	idempotency-duplicate-waits \
	idempotency-owner-rollback \
	idempotency-first-time \
	idempotency-keys-independent \
	idempotency-purge-concurrent \
	idempotency-in-progress \
	lease-acquire-race \
	lease-loser-retries \
	lease-stale-owner \
	lease-serializable \
	lease-wait \
	lease-wait-deadlock \
	serializable-independent \
	slot-waiter-first-commit \
	slot-rollback-frees \
	slot-bounded-wait \
	slot-deadlock \
	slot-lease-takeover \
	slot-reask-fewer-slots \
	lease-slot-busy-no-row \
	slot-stats \
	slot-holders-order

# Isolation specs live under test/; pg_isolation_regress takes the last
# --inputdir it is given.
ISOLATION_OPTS = --inputdir=test/isolation --load-extension=$(EXTENSION)

# PostgreSQL's own flags plus -Wextra; parameters such as fcinfo are often
# unused by design.  "make WERROR=1" (the test suite does) turns warnings
# into errors.
PG_CFLAGS = -Wextra -Wno-unused-parameter -Wno-missing-field-initializers
ifdef WERROR
PG_CFLAGS += -Werror
endif

# "make deb" needs no PostgreSQL yet: test/deb.sh installs what it needs;
# "make trusted" needs none at all.
ifeq ($(filter-out deb trusted,$(MAKECMDGOALS)),)
ifeq ($(MAKECMDGOALS),)
NEED_PGXS = 1
endif
else
NEED_PGXS = 1
endif
ifdef NEED_PGXS
PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
endif

# PGXS tracks no header dependencies.
$(OBJS): src/compat.h src/util.h src/table.h src/locks.h src/stats.h \
	src/usage.h src/periods.h

# A PGXN distribution archive of the committed tree.
dist:
	mkdir -p dist
	git archive --format zip --prefix=$(EXTENSION)-$(EXTVERSION)/ \
		-o dist/$(EXTENSION)-$(EXTVERSION).zip HEAD

# Debian packages, postgresql-NN-entitlock for each major supported here,
# built in a copy of the tree into dist/ (test/deb.sh says how).
deb:
	bash test/deb.sh

# The trusted edition (SQL and PL/pgSQL only, for managed PostgreSQL):
# trusted/*.sql in name order, as dist/entitlock-trusted.sql and, for
# pg_tle, dist/entitlock-pgtle.sql.
TRUSTED_SOURCES = $(sort $(wildcard trusted/[0-9]*.sql))

trusted: dist/entitlock-trusted.sql

dist/entitlock-trusted.sql dist/entitlock-pgtle.sql: trusted/build.sh $(EXTENSION).control $(TRUSTED_SOURCES)
	bash trusted/build.sh dist

.PHONY: dist deb trusted
