# test/tap/052_idempotency_pgbench.pl: idempotency keys under 32 pgbench clients while backends are terminated at random.
#
# The workload and its checks are idempotency_workload in EntitlockStress.pm,
# shared with 059_pgbouncer.pl, which runs it behind a pooler.
#
# Run with: bash test/tap.sh test/tap/052_idempotency_pgbench.pl

use strict;
use warnings;

use EntitlockStress;
use Test::More;

my $node = stress_node('main');
idempotency_workload(target($node, 'entitlock_stress_idem'));
$node->stop;
done_testing();
