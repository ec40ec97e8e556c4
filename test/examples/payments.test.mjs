// payments.js: a duplicate of a request still in progress gets 409 with
// Retry-After after the 2 s wait, claims nothing, and a retry once the
// first committed replays its answer.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, test } from 'node:test';
import pg from 'pg';
import { pool, postPayment } from './payments.js';

const db = new pg.Pool();
after(() => Promise.all([db.end(), pool.end()]));

const amount = 1 + Math.floor(Math.random() * 1_000_000);
const request = (key) =>
  ({ headers: { 'idempotency-key': key }, body: { amount, currency: 'EUR' } });
const payments = async () => (await db.query(
  'SELECT count(*)::int AS n FROM payments WHERE amount = $1', [amount])).rows[0].n;

test('a duplicate during the first request: 409 after 2 s, then the replay', async () => {
  const key = randomUUID();
  // Hold the first request inside its transaction, after its claim.
  const blocker = await db.connect();
  await blocker.query('BEGIN');
  await blocker.query('LOCK TABLE payments IN EXCLUSIVE MODE');
  const first = postPayment(request(key));
  for (;;) {
    const { rows: [w] } = await db.query(
      `SELECT count(*)::int AS n FROM pg_stat_activity
        WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO payments%'`);
    if (w.n === 1) break;
    await sleep(20);
  }

  const started = Date.now();
  const duplicate = await postPayment(request(key));
  assert.ok(Date.now() - started >= 1900, 'waited about 2 s');
  assert.equal(duplicate.status, 409);
  assert.equal(duplicate.headers['Retry-After'], '1');

  await blocker.query('COMMIT');
  blocker.release();
  const answer = await first;
  assert.equal(answer.status, 201);
  assert.deepEqual(answer.body, { id: answer.body.id, amount: String(amount), currency: 'EUR' });

  const retry = await postPayment(request(key));
  assert.equal(retry.status, 201);
  assert.equal(retry.headers['Idempotent-Replayed'], 'true');
  assert.deepEqual(retry.body, answer.body);
  assert.equal(await payments(), 1);
});
