// key.js: entitlockKey equals the server's entitlock.key, for the manual's
// test vectors and for 1,000 random names (every XXH64 path, multi-byte
// UTF-8, astral code points) and 200 random pairs.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import pg from 'pg';
import { entitlockKey, xxh64 } from './key.js';

const db = new pg.Pool();
after(() => db.end());

// doc/reference/keys.md, "The key algorithm".
const vectors = [
  ['a', 'd24ec4f1a98c6e5b', -3292477735350538661n],
  ['abc', '44bc2cf5ad770999', 4952883123889572249n],
  ['entitlock', '9f9cd88dd80cd27a', -6945438421585440134n],
  ['workspace:42', '7e3ed9a9163a3b9c', 9096947617580596124n],
  ['api_calls', '165028f9d105920e', 1607830120390038030n],
  ['café', '9a40a9b974d85a6a', -7331673579364787606n],
  ['日本語', '7179a19f3719f5e1', 8176744303664166369n],
  ['abcdefghijklmnopqrstuvwxyz012345', 'bf2cd639b4143b80', -4671123170167342208n],
  ['The quick brown fox jumps over the lazy dog', '0b242d361fda71bc', 802816344064684476n],
];
const pairVectors = [
  ['workspace:42', 'seats', 4465559587734303253n],
  ['a', 'b', -5396678125053331263n],
  ['ab', 'c', -7724953668306250483n],
  ['a', 'bc', 3644465167878620839n],
];

const serverKeys = async (names) => (await db.query(
  'SELECT entitlock.key(n)::text AS k FROM unnest($1::text[]) WITH ORDINALITY AS t(n, i) ORDER BY i',
  [names])).rows.map((r) => BigInt(r.k));

// Random text from ASCII, Latin-1, CJK, other BMP and emoji code points.
const ranges = [[0x01, 0x7f], [0x80, 0x7ff], [0x4e00, 0x9fff], [0xe000, 0xfffd], [0x1f600, 0x1f64f]];
function randomName(length) {
  let s = '';
  while (s.length < length) {
    const [lo, hi] = ranges[Math.floor(Math.random() * ranges.length)];
    s += String.fromCodePoint(lo + Math.floor(Math.random() * (hi - lo + 1)));
  }
  return s;
}

test('the documented test vectors', async () => {
  for (const [name, hex, key] of vectors) {
    assert.equal(xxh64(new TextEncoder().encode(name)).toString(16).padStart(16, '0'), hex, name);
    assert.equal(entitlockKey(name), key, name);
  }
  assert.deepEqual(await serverKeys(vectors.map((v) => v[0])), vectors.map((v) => v[2]));
  for (const [realm, entity, key] of pairVectors) {
    assert.equal(entitlockKey(realm, entity), key, `${realm} / ${entity}`);
    const { rows: [r] } = await db.query('SELECT entitlock.key($1, $2)::text AS k', [realm, entity]);
    assert.equal(BigInt(r.k), key);
  }
});

test('1,000 random names agree with the server', async () => {
  const names = [];
  for (let len = 1; len <= 100; len++) names.push('k'.repeat(len));   // every tail path
  while (names.length < 990) names.push(randomName(1 + Math.floor(Math.random() * 100)));
  for (const len of [1000, 1001, 1023, 2500, 4096, 10000, 32, 31, 33, 64])
    names.push(randomName(len));
  const expected = await serverKeys(names);
  const mismatches = names.filter((n, i) => entitlockKey(n) !== expected[i]);
  assert.deepEqual(mismatches, []);
  assert.ok(expected.some((k) => k < 0n) && expected.some((k) => k > 0n), 'both signs');
});

test('200 random pairs agree with the server', async () => {
  const pairs = Array.from({ length: 200 }, () =>
    [randomName(1 + Math.floor(Math.random() * 40)), randomName(1 + Math.floor(Math.random() * 40))]);
  const { rows } = await db.query(
    `SELECT entitlock.key(r, e)::text AS k
       FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(r, e, i) ORDER BY i`,
    [pairs.map((p) => p[0]), pairs.map((p) => p[1])]);
  const mismatches = pairs.filter(([r, e], i) => entitlockKey(r, e) !== BigInt(rows[i].k));
  assert.deepEqual(mismatches, []);
});

test('an empty name is an error, on the client as on the server', async () => {
  assert.throws(() => entitlockKey(''), RangeError);
  assert.throws(() => entitlockKey('realm', ''), RangeError);
  assert.throws(() => entitlockKey('a\0b'), RangeError);
  await assert.rejects(db.query("SELECT entitlock.key('')"), { code: '22023' });
});
