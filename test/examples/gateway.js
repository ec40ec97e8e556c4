import pg from 'pg';

export const pool = new pg.Pool();

// region limits
// An API gateway: 60 requests a minute and 1,000 a day per user, and
// 100,000 a month per organisation, decided together in the request's own
// transaction.  handle(client) does the request's work in it, so a failed
// request gives its units back; a retry with the same Idempotency-Key is
// counted once.  req is { userId, orgId, headers }.
export async function withApiLimits(req, handle) {
  const requestKey = req.headers['idempotency-key'];
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const { rows } = await client.query(
      `SELECT period, allowed,
              ceil(extract(epoch FROM period_end - clock_timestamp()))::int AS retry_s
         FROM entitlock.record_usage_if_under_limits(ARRAY[
                entitlock.usage_limit($1, 'api', 60, 'minute'),
                entitlock.usage_limit($1, 'api', 1000, 'day'),
                entitlock.usage_limit($2, 'api', 100000, 'month')], 1, $3)`,
      [`user:${req.userId}`, `org:${req.orgId}`,
       requestKey ? `user:${req.userId}:${requestKey}` : null]);
    const denied = rows.filter((r) => !r.allowed);
    if (denied.length > 0) {
      await client.query('ROLLBACK');             // nothing was recorded
      const retryAfter = Math.max(1, ...denied.map((r) => r.retry_s));
      return { status: 429, headers: { 'Retry-After': String(retryAfter) },
               body: { error: 'rate limited', limit: denied[0].period } };
    }
    const response = await handle(client);
    await client.query('COMMIT');
    return response;
  } catch (err) {
    await client.query('ROLLBACK');
    throw err;
  } finally {
    client.release();
  }
}
// endregion

// region rate-limit
// A rolling limit of 100 a second per API key, with no window edges.
// Decided in a statement of its own (a pool query is its own transaction),
// so a busy key's row is not locked while the request works.  Returns
// null to go ahead, or the 429 to answer.
export async function rateLimit(apiKey) {
  const { rows: [rl] } = await pool.query(
    `SELECT allowed, ceil(extract(epoch FROM retry_after))::int AS retry_s
       FROM entitlock.rate_limit($1, 100, '1 second')`,
    [`api-key:${apiKey}`]);
  if (rl.allowed) return null;
  return { status: 429, headers: { 'Retry-After': String(rl.retry_s) } };
}
// endregion
