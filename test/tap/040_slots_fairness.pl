# test/tap/040_slots_fairness.pl: semaphores under load.
#
# 16 pgbench clients take one of 3 slots of one name with
# entitlock.lock_slot, hold it about 5 ms, and commit, for 8 seconds;
# each logs when it asked, when it got the slot and when it left.  Then:
#   - at no moment did more than 3 transactions hold a slot, nor two the
#     same slot (from the log's intervals);
#   - nobody starved: the longest wait stays far below the run (under 2 s,
#     where a queue of 16 for 3 slots of 5 ms turns over in some 30 ms),
#     and every client got its turn about as often as the others;
#   - waiters were served in about their arrival order: a caller that
#     asked more than 20 ms after another rarely got its slot first;
#   - the 'slot' kind of entitlock.stats counted the calls and the waits.
# The spread of wait times (median, 95th and 99th percentile, maximum,
# and the clients' share of turns) is printed as notes, as a figure to
# report; the bounds asserted are loose enough for a loaded machine.
#
# Run with: bash test/tap.sh test/tap/040_slots_fairness.pl

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $clients = 16;
my $slots = 3;
my $seconds = 8;

my $node = PostgreSQL::Test::Cluster->new('slots');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'entitlock'\nmax_connections = 40\nfsync = off\n");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION entitlock;
	CREATE TABLE slot_log (slot int, pid int, asked timestamptz,
		entered timestamptz, left_at timestamptz);
	SELECT entitlock.stats_reset();
});

my $script = <<"PGB";
BEGIN;
SELECT extract(epoch FROM clock_timestamp()) AS asked \\gset
SELECT entitlock.lock_slot('fair', $slots) AS slot \\gset
INSERT INTO slot_log VALUES (:slot, pg_backend_pid(), to_timestamp(:asked), clock_timestamp(), NULL);
SELECT pg_sleep(0.005);
UPDATE slot_log SET left_at = clock_timestamp() WHERE pid = pg_backend_pid() AND left_at IS NULL;
COMMIT;
PGB

$node->pgbench(
	"--no-vacuum --client=$clients --jobs=2 --time=$seconds",
	0,
	[ qr{processed: [1-9]}, qr{number of failed transactions: 0 } ],
	[qr{\A\z}],
	"$clients clients take $slots slots of one semaphore for ${seconds} s without errors",
	{ '040_slots_fairness' => $script });

sub sql { return $node->safe_psql('postgres', $_[0]); }

my $total = sql('SELECT count(*) FROM slot_log');
ok($total > 100, "the run took slots ($total times)");

is( sql(qq{
	SELECT count(*) FROM (
		SELECT a.entered
		  FROM slot_log a JOIN slot_log b
		    ON b.entered <= a.entered AND b.left_at > a.entered
		 GROUP BY a.ctid, a.entered, a.slot
		HAVING count(*) > $slots OR count(*) FILTER (WHERE b.slot = a.slot) > 1) x}),
	'0',
	"never more than $slots holders, nor two holders of one slot");
is(sql("SELECT count(*) FROM slot_log WHERE slot NOT BETWEEN 1 AND $slots OR left_at IS NULL"),
	'0', "every slot number is in 1..$slots");

# The spread of waits, in milliseconds.
my ($median, $p95, $p99, $max, $mean) = split /\|/, sql(q{
	SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY w)::numeric, 1),
	       round(percentile_cont(0.95) WITHIN GROUP (ORDER BY w)::numeric, 1),
	       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY w)::numeric, 1),
	       round(max(w)::numeric, 1), round(avg(w)::numeric, 1)
	  FROM (SELECT extract(epoch FROM entered - asked) * 1000 AS w FROM slot_log) x});
note("waits for a slot ($total calls, $clients clients, $slots slots, ~5 ms holds): "
	  . "median $median ms, mean $mean ms, 95th percentile $p95 ms, 99th $p99 ms, max $max ms");
ok($max < 2000, "nobody starved: the longest wait was $max ms (< 2000 ms)");

my ($fewest, $most, $avg) = split /\|/, sql(q{
	SELECT min(n), max(n), round(avg(n), 1) FROM (SELECT pid, count(*) AS n FROM slot_log GROUP BY pid) x});
note("turns per client: fewest $fewest, most $most, mean $avg");
ok($fewest >= 0.5 * $avg, "every client got at least half the mean number of turns ($fewest of $avg)");

# Overtaking: pairs where one asked more than 20 ms after another and
# still got its slot first.
my ($overtaken, $late) = split /\|/, sql(q{
	SELECT count(DISTINCT a.ctid), count(*) FROM slot_log a JOIN slot_log b
	    ON b.asked > a.asked + interval '20 ms' AND b.entered < a.entered});
note("callers overtaken by one that asked over 20 ms later: $overtaken of $total ($late pairs)");
ok($overtaken <= 0.01 * $total, "waiters are served in about arrival order ($overtaken of $total overtaken)");

# Statistics: every call counted under kind 'slot', most of them waits.
my ($calls, $waits) = split /\|/, sql(q{
	SELECT calls, waits FROM entitlock.stats WHERE kind = 'slot' AND label = 'fair'});
ok($calls >= $total && $calls <= $total + $clients,
	"entitlock.stats counted every lock_slot call under kind 'slot' ($calls for $total logged)");
ok($waits > 0 && $waits <= $calls, "and the calls that waited ($waits)");

$node->stop;
done_testing();
