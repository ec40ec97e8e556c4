# test/tap/051_usage_pgbench.pl: usage under 32 pgbench clients while backends are terminated at random.
#
# The workload and its checks are usage_workload in EntitlockStress.pm,
# shared with 059_pgbouncer.pl, which runs it behind a pooler.
#
# Run with: bash test/tap.sh test/tap/051_usage_pgbench.pl

use strict;
use warnings;

use EntitlockStress;
use Test::More;

my $node = stress_node('main');
usage_workload(target($node, 'entitlock_stress_usage'));
$node->stop;
done_testing();
