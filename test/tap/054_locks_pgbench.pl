# test/tap/054_locks_pgbench.pl: locks (lock_all, lock_entity, timed and realm locks) under 24 pgbench clients.
#
# The workload and its checks are locks_workload in EntitlockStress.pm,
# shared with 059_pgbouncer.pl, which runs it behind a pooler.
#
# Run with: bash test/tap.sh test/tap/054_locks_pgbench.pl

use strict;
use warnings;

use EntitlockStress;
use Test::More;

my $node = stress_node('main');
locks_workload(target($node, 'entitlock_stress_locks'));
$node->stop;
done_testing();
