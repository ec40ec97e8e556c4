// exports.js: at most N exports per organisation at once; the rest wait
// their turn and all run; other organisations are not held up; a bounded
// wait gives up with false; an error gives the slot back.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, test } from 'node:test';
import pg from 'pg';
import { withExportSlot } from './exports.js';

const pool = new pg.Pool({ max: 20 });
after(() => pool.end());

test('8 exports of one organisation, 3 slots: never more than 3 at once, all run', async () => {
  const org = randomUUID();
  let running = 0;
  let most = 0;
  const slots = new Set();
  const work = async (client, slot) => {
    most = Math.max(most, ++running);
    slots.add(slot);
    await sleep(150);
    running--;
  };
  const results = await Promise.all(
    Array.from({ length: 8 }, () => withExportSlot(pool, org, 3, work)));
  assert.deepEqual(results, Array(8).fill(true));
  assert.equal(most, 3);
  assert.deepEqual([...slots].sort(), [1, 2, 3]);
});

test('another organisation is not held up', async () => {
  const busy = randomUUID();
  const release = [];
  const holders = Array.from({ length: 2 }, () => withExportSlot(pool, busy, 2,
    () => new Promise((resolve) => release.push(resolve))));
  while (release.length < 2) await sleep(10);
  const started = Date.now();
  assert.equal(await withExportSlot(pool, randomUUID(), 2, async () => {}), true);
  assert.ok(Date.now() - started < 1000);
  assert.equal(await withExportSlot(pool, busy, 2, async () => {}, { wait: 0.2 }), false,
    'the busy organisation gives up after its wait');
  release.forEach((r) => r());
  await Promise.all(holders);
});

test('an export that throws gives its slot back', async () => {
  const org = randomUUID();
  await assert.rejects(withExportSlot(pool, org, 1, async () => { throw new Error('boom'); }), /boom/);
  assert.equal(await withExportSlot(pool, org, 1, async () => {}, { wait: 0 }), true);
});
