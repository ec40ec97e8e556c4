import { entitlockKey } from './key.js';

// Jump consistent hash (Lamping and Veach, 2014): the shard in
// [0, shards) of a 64-bit key.  Going from n to n + 1 shards moves only
// 1/(n + 1) of the keys, all of them to the new shard.
export function jumpHash(key, shards) {
  let k = BigInt.asUintN(64, key);
  let b = -1;
  for (let j = 0; j < shards;) {
    b = j;
    k = BigInt.asUintN(64, k * 2862933555777941757n + 1n);
    j = Math.floor((b + 1) * (2 ** 31 / (Number(k >> 33n) + 1)));
  }
  return b;
}

// Each subject's usage lives on one primary: the one its entitlock.key
// picks, the same on every client and on the server.  pools holds one
// pg.Pool per primary, always listed in the same order.
export function shardRouter(pools) {
  const poolFor = (subject) => pools[jumpHash(entitlockKey(subject), pools.length)];
  async function recordUsage(subject, feature, limit, period = 'lifetime') {
    const { rows: [r] } = await poolFor(subject).query(
      `SELECT allowed, used, remaining
         FROM entitlock.record_usage_if_under_limit($1, $2, 1, $3, $4)`,
      [subject, feature, limit, period]);
    return r;
  }
  return { poolFor, recordUsage };
}
