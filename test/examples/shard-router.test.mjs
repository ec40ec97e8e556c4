// shard-router.js against two databases standing in for two primaries:
// every subject's usage lands on exactly the shard that the server's own
// entitlock.key(subject) picks, and adding a shard moves few subjects.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import pg from 'pg';
import { entitlockKey } from './key.js';
import { jumpHash, shardRouter } from './shard-router.js';

const shardDatabases = (process.env.EXAMPLES_SHARDS ?? '').split(',').filter(Boolean);
const pools = shardDatabases.map((database) => new pg.Pool({ database }));
after(() => Promise.all(pools.map((p) => p.end())));

test('each subject is counted on the shard its server-side key picks', { skip: pools.length !== 2 && 'EXAMPLES_SHARDS names no two databases' }, async () => {
  const subjects = Array.from({ length: 300 }, (_, i) => `workspace:${i}`);
  subjects.push('org:café', 'user:日本語', 'team:🚀', 'x'.repeat(100));
  const router = shardRouter(pools);
  await Promise.all(subjects.map((s) => router.recordUsage(s, 'api_calls', 1000)));

  const perShard = await Promise.all(pools.map(async (p) => (await p.query(
    `SELECT entitlock.key(s)::text AS key, entitlock.usage(s, 'api_calls')::int AS used
       FROM unnest($1::text[]) WITH ORDINALITY AS t(s, i) ORDER BY i`,
    [subjects])).rows));
  const counts = [0, 0];
  subjects.forEach((s, i) => {
    assert.equal(perShard[0][i].key, perShard[1][i].key, 'both servers compute one key');
    const home = jumpHash(BigInt(perShard[0][i].key), 2);
    assert.equal(perShard[home][i].used, 1, `${s} counted on shard ${home}`);
    assert.equal(perShard[1 - home][i].used, 0, `${s} not counted on shard ${1 - home}`);
    assert.equal(router.poolFor(s), pools[home]);
    counts[home]++;
  });
  assert.ok(counts.every((c) => c > subjects.length * 0.35), `balanced: ${counts}`);
});

test('from 2 to 3 shards, a third of the subjects move, all to the new shard', () => {
  let moved = 0;
  for (let i = 0; i < 30000; i++) {
    const key = entitlockKey(`workspace:${i}`);
    const [two, three] = [jumpHash(key, 2), jumpHash(key, 3)];
    if (two !== three) {
      assert.equal(three, 2);
      moved++;
    }
  }
  assert.ok(moved > 9000 && moved < 11000, `${moved} of 30000 moved`);
});
