import { createHash } from 'node:crypto';
import pg from 'pg';

export const pool = new pg.Pool();

// POST /checkout.  req is { user, headers, body } as a framework hands it
// over; the result is { status, headers, body } to answer.  A double click
// sends the same Idempotency-Key twice: one order, the same answer twice.
export async function checkout(req) {
  const requestKey = req.headers['idempotency-key'];
  if (!requestKey) return { status: 400, body: { error: 'Idempotency-Key required' } };
  const key = `checkout:${req.user.id}:${requestKey}`;
  const fingerprint = createHash('sha256')
    .update(JSON.stringify(req.body)).digest('hex');
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const { rows: [claim] } = await client.query(
      'SELECT status, response FROM entitlock.idempotency_begin($1, $2)',
      [key, fingerprint]);
    if (claim.status === 'replay') {   // the first request's answer
      await client.query('COMMIT');
      return { status: 201, headers: { 'Idempotent-Replayed': 'true' },
               body: claim.response };
    }
    const { rows: [order] } = await client.query(
      'INSERT INTO orders (user_id, total) VALUES ($1, $2) RETURNING id, total',
      [req.user.id, req.body.total]);
    const response = { order_id: order.id, total: order.total };
    await client.query('SELECT entitlock.idempotency_complete($1, $2)',
                       [key, response]);
    await client.query('COMMIT');
    return { status: 201, body: response };
  } catch (err) {
    await client.query('ROLLBACK');
    if (err.code === '22023')          // same key, different cart
      return { status: 422, body: { error: 'Idempotency-Key reused with a different request' } };
    throw err;
  } finally {
    client.release();
  }
}
