// checkout.js: a double submit makes one order and answers it twice; the
// same key with another cart is refused (422).
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, test } from 'node:test';
import pg from 'pg';
import { checkout, pool } from './checkout.js';

const db = new pg.Pool();
after(() => Promise.all([db.end(), pool.end()]));

const userId = 1 + Math.floor(Math.random() * 1_000_000);
const request = (key, body) =>
  ({ user: { id: userId }, headers: key ? { 'idempotency-key': key } : {}, body });
const cart = { items: [{ sku: 'tea', qty: 2 }], total: '59.90' };
async function orders() {
  const { rows } = await db.query(
    'SELECT id, total FROM orders WHERE user_id = $1 ORDER BY id', [userId]);
  return rows;
}

test('10 concurrent submits with one key: one order, the same answer to each', async () => {
  const key = randomUUID();
  const answers = await Promise.all(
    Array.from({ length: 10 }, () => checkout(request(key, cart))));
  const made = await orders();
  assert.equal(made.length, 1);
  for (const a of answers) {
    assert.equal(a.status, 201);
    assert.deepEqual(a.body, { order_id: made[0].id, total: '59.90' });
  }
  assert.equal(answers.filter((a) => a.headers?.['Idempotent-Replayed']).length, 9);

  const later = await checkout(request(key, cart));
  assert.deepEqual(later.body, answers[0].body, 'a later retry replays too');
  assert.equal((await orders()).length, 1);
});

test('the same key with a different cart: 422, no order', async () => {
  const key = randomUUID();
  assert.equal((await checkout(request(key, cart))).status, 201);
  const other = await checkout(request(key, { ...cart, total: '99.00' }));
  assert.equal(other.status, 422);
  assert.match(other.body.error, /reused with a different request/);
  assert.equal((await orders()).length, 2);   // this test's first and the one above
});

test('another key is another order; no key is 400', async () => {
  const before = (await orders()).length;
  assert.equal((await checkout(request(randomUUID(), cart))).status, 201);
  assert.equal((await checkout(request(undefined, cart))).status, 400);
  assert.equal((await orders()).length, before + 1);
});
