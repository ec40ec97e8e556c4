import { createHash } from 'node:crypto';
import pg from 'pg';

export const pool = new pg.Pool();

const fingerprint = (body) =>
  createHash('sha256').update(JSON.stringify(body)).digest('hex');

// POST /payments, as checkout.js, but a duplicate that arrives while the
// first request is still running gets 409 after 2 s instead of waiting.
export async function postPayment(req) {
  const requestKey = req.headers['idempotency-key'];
  if (!requestKey) return { status: 400, body: { error: 'Idempotency-Key required' } };
  const key = `payment:${requestKey}`;
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const { rows: [claim] } = await client.query(
      `SELECT status, response
         FROM entitlock.idempotency_begin($1, $2, '24 hours', wait => '2 s')`,
      [key, fingerprint(req.body)]);
    if (claim.status === 'in_progress') {
      await client.query('ROLLBACK');
      return { status: 409, headers: { 'Retry-After': '1' },
               body: { error: 'a request with this key is still in progress' } };
    }
    if (claim.status === 'replay') {
      await client.query('COMMIT');
      return { status: 201, headers: { 'Idempotent-Replayed': 'true' },
               body: claim.response };
    }
    const payment = await createPayment(client, req.body);   // 'new'
    await client.query('SELECT entitlock.idempotency_complete($1, $2)',
                       [key, payment]);
    await client.query('COMMIT');
    return { status: 201, body: payment };
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    if (err.code === '22023')
      return { status: 422, body: { error: 'Idempotency-Key reused with a different request' } };
    throw err;
  } finally {
    client.release();
  }
}

async function createPayment(client, { amount, currency }) {
  const { rows: [payment] } = await client.query(
    'INSERT INTO payments (amount, currency) VALUES ($1, $2) RETURNING id, amount::text, currency',
    [amount, currency]);
  return payment;
}
