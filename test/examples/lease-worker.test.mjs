// lease-worker.js: one worker at a time per name; the heartbeat keeps the
// lease past its ttl; a worker that cannot renew in time is told by its
// AbortSignal, and whoever takes over gets a higher fencing number.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, test } from 'node:test';
import pg from 'pg';
import { runExclusively } from './lease-worker.js';

const pool = new pg.Pool();
after(() => pool.end());

const held = async (name) => (await pool.query(
  'SELECT count(*)::int AS n FROM entitlock.leases WHERE name = $1', [name])).rows[0].n;
const abortedWithin = (signal, ms) =>
  signal.aborted || Promise.race([once(signal, 'abort'), sleep(ms)]);

test('5 concurrent workers on one name: exactly one works', async () => {
  const name = `report:${randomUUID()}`;
  let working = 0;
  let ran = 0;
  const work = async () => {
    ran++;
    assert.equal(++working, 1);
    await sleep(300);
    working--;
  };
  const results = await Promise.all(
    Array.from({ length: 5 }, () => runExclusively(pool, name, work)));
  assert.equal(results.filter(Boolean).length, 1);
  assert.equal(ran, 1);
  assert.equal(await held(name), 0, 'released in finally');
  assert.equal(await runExclusively(pool, name, async () => {}), true, 'free again');
});

test('the heartbeat keeps the lease for work longer than its ttl', async () => {
  const name = `report:${randomUUID()}`;
  let signal;
  const worker = runExclusively(pool, name, async (fencing, s) => {
    signal = s;
    await sleep(2000);   // more than three ttls
  }, { ttl: 0.6 });
  await sleep(1500);
  assert.equal(await runExclusively(pool, name, async () => {}), false, 'still held');
  assert.equal(await worker, true);
  assert.equal(signal.aborted, false);
});

test('a stalled heartbeat: the signal fires, the new holder has a higher fencing number', async () => {
  const name = `report:${randomUUID()}`;
  const stalled = new pg.Pool({ max: 1 });
  const a = {};
  const b = {};
  const started = Date.now();
  const first = runExclusively(stalled, name, async (fencing, signal) => {
    Object.assign(a, { fencing, signal });
    // A long query takes the pool's only connection: no renewal gets through.
    await stalled.query('SELECT pg_sleep(1.5)');
    await abortedWithin(signal, 2000);
  }, { ttl: 0.6 });
  // The second worker starts once the first holds the lease (its pool's
  // first connection can take longer than any fixed pause on a busy machine).
  while (!a.signal) await sleep(10);
  const second = runExclusively(pool, name, async (fencing, signal) => {
    Object.assign(b, { fencing, signal, at: Date.now() - started });
    await abortedWithin(a.signal, 3000);
  }, { ttl: 5, wait: 3 });
  assert.equal(await first, true);
  assert.equal(await second, true);
  await stalled.end();
  assert.equal(a.signal.aborted, true, 'the stalled worker was told');
  assert.equal(b.signal.aborted, false);
  assert.ok(b.at >= 500, `taken over only after the ttl (${b.at} ms)`);
  assert.ok(a.fencing < b.fencing, `fencing ${a.fencing} < ${b.fencing}`);
});
