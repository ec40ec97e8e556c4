// webhook.js: a delivery applies once, concurrently too; a failed one
// leaves no claim behind, so the provider's retry applies.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, test } from 'node:test';
import pg from 'pg';
import { handleWebhook, pool } from './webhook.js';

const db = new pg.Pool();
after(() => Promise.all([db.end(), pool.end()]));

const run = randomUUID();
let nextOrder = 1_000_000 + Math.floor(Math.random() * 1_000_000);
const newOrderId = () => nextOrder++;
const createOrder = (id) =>
  db.query('INSERT INTO orders (id, user_id, total) VALUES ($1, 1, 49.99)', [id]);
async function ledger(orderId) {
  const { rows: [r] } = await db.query(
    `SELECT count(*)::int AS n, bool_and(o.paid_at IS NOT NULL) AS paid
       FROM ledger l JOIN orders o ON o.id = l.order_id WHERE l.order_id = $1`,
    [orderId]);
  return r;
}

test('one event delivered 10 times concurrently: one ledger row, all acknowledged', async () => {
  const orderId = newOrderId();
  await createOrder(orderId);
  const event = { id: `evt_${run}_1`, orderId, amount: 4999 };
  const statuses = await Promise.all(Array.from({ length: 10 }, () => handleWebhook(event)));
  assert.deepEqual(statuses, Array(10).fill(200));
  assert.deepEqual(await ledger(orderId), { n: 1, paid: true });

  assert.equal(await handleWebhook(event), 200, 'a later redelivery is acknowledged');
  assert.equal((await ledger(orderId)).n, 1, 'and applies nothing');
});

test('distinct events each apply', async () => {
  const orderId = newOrderId();
  await createOrder(orderId);
  await Promise.all([1, 2, 3].map((i) =>
    handleWebhook({ id: `evt_${run}_2_${i}`, orderId, amount: 100 })));
  assert.equal((await ledger(orderId)).n, 3);
});

test('a failed delivery rolls its claim back: the retry applies', async () => {
  // The event arrives before its order is committed: the ledger's foreign
  // key fails the handler after the claim.
  const orderId = newOrderId();
  const event = { id: `evt_${run}_3`, orderId, amount: 4999 };
  await assert.rejects(handleWebhook(event), { code: '23503' });
  await createOrder(orderId);
  assert.equal(await handleWebhook(event), 200);
  assert.deepEqual(await ledger(orderId), { n: 1, paid: true });
});
