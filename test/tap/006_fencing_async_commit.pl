# test/tap/006_fencing_async_commit.pl: a fencing number is never handed
# out twice, even when the WAL that covers it was written by another
# backend and not flushed yet.
#
# A sequence writes one WAL record for a batch of numbers ahead, and the
# backends that then take numbers from the batch write nothing.  Under
# synchronous_commit = off the record's writer need not flush it, so a
# lease_acquire in another backend could hand out a number from that
# batch, and after a crash the sequence would start again below it.  Here
# a superuser's nextval() writes the record in an asynchronously committed
# transaction; another backend's lease_acquire then draws a number from
# that batch; the server crashes; after recovery a new acquisition must
# get a higher number.
#
# An immediate stop kills the server's processes, not the operating
# system, so WAL that was written out survives it even unflushed.  For the
# record to be lost it must still be in the WAL buffers at the crash.  The
# WAL writer writes out asynchronous commits every wal_writer_delay (10 s
# here), and completed WAL pages when a commit wakes it; so the test
# starts right after one of its timed rounds, on a fresh WAL page.
# Autovacuum, the background writer's buffer writes and timed checkpoints,
# which would write WAL out too, are off.
#
# Run with: bash test/tap.sh test/tap/006_fencing_async_commit.pl

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('main');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
synchronous_commit = off
wal_writer_delay = '10s'
autovacuum = off
bgwriter_lru_maxpages = 0
checkpoint_timeout = '1h'
});
$node->start;

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql('CREATE EXTENSION entitlock');
sql('CREATE TABLE tick (i int)');

# A first acquisition prunes the catalog pages CREATE EXTENSION left dead
# rows on.  After the checkpoint the calls below then write little WAL
# (pruning would write whole pages), and stay on one WAL page.
sql("SELECT count(*) FROM entitlock.lease_acquire('warm-up', '1 hour')");
sql('CHECKPOINT');

# Wait for the WAL writer to write out an asynchronous commit: its next
# timed round is wal_writer_delay away.
sql('INSERT INTO tick VALUES (1)');
my $tick = sql('SELECT pg_current_wal_insert_lsn()');
$node->poll_query_until('postgres',
	"SELECT pg_current_wal_lsn() >= '$tick'::pg_lsn")
  or die 'the WAL writer did not write';

# Fill the current WAL page, with a message that is not a transaction, so
# that what follows starts a page that stays in the WAL buffers.
sql(q{SELECT pg_logical_emit_message(false, 'pad',
		repeat('x', 8192 - ((pg_current_wal_insert_lsn() - '0/0')::bigint % 8192)::int))});

# Backend 1: nextval() writes the sequence's record for the numbers ahead
# (its first call since the checkpoint), and its transaction commits
# without writing it out.
my $before = sql('SELECT pg_current_wal_insert_lsn()');
my $first = sql("SELECT nextval('entitlock.lease_fencing')");
is( sql("SELECT pg_current_wal_lsn() <= '$before'::pg_lsn"),
	't', "the sequence's WAL record (from $before on) is not written out yet");

# Backend 2: an acquisition draws the next number, from that batch.
my $handed = sql(
	"SELECT fencing FROM entitlock.lease_acquire('fence', '1 hour', 'w1')");
cmp_ok($handed, '>', $first, "lease_acquire was handed fencing $handed");

$node->stop('immediate');
$node->start;

my $after = sql(
	"SELECT fencing FROM entitlock.lease_acquire('fence-after', '1 hour', 'w2')"
);
cmp_ok($after, '>', $handed,
	"after a crash the next fencing number ($after) is above every number handed out ($handed)"
);

$node->stop;
done_testing();
