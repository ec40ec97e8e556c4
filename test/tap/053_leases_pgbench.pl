# test/tap/053_leases_pgbench.pl: leases with short ttls under 32 pgbench clients.
#
# The workload and its checks are leases_workload in EntitlockStress.pm,
# shared with 059_pgbouncer.pl, which runs it behind a pooler.
#
# Run with: bash test/tap.sh test/tap/053_leases_pgbench.pl

use strict;
use warnings;

use EntitlockStress;
use Test::More;

my $node = stress_node('main');
leases_workload(target($node, 'entitlock_stress_lease'));
$node->stop;
done_testing();
