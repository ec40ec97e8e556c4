import pg from 'pg';

export const pool = new pg.Pool();   // connects as the PG* variables say

// A payment provider's webhook: the event applies once, however often and
// however concurrently it is delivered.  Returns the HTTP status to answer.
export async function handleWebhook(event) {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const { rows: [claim] } = await client.query(
      'SELECT status FROM entitlock.idempotency_begin($1, NULL, $2)',
      [`webhook:${event.id}`, '7 days']);
    if (claim.status === 'new') {
      await client.query('UPDATE orders SET paid_at = now() WHERE id = $1',
                         [event.orderId]);
      await client.query('INSERT INTO ledger (order_id, amount) VALUES ($1, $2)',
                         [event.orderId, event.amount]);
    }
    await client.query('COMMIT');   // claim and writes, together
    return 200;                     // applied now or before: acknowledge
  } catch (err) {
    await client.query('ROLLBACK'); // the claim goes too: the retry is 'new'
    throw err;                      // answer 5xx; the provider retries
  } finally {
    client.release();
  }
}
