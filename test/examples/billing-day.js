import pg from 'pg';

export const pool = new pg.Pool();

// region quota
// A monthly quota that starts again on the customer's billing day, not on
// the 1st.  subscription is { customerId, anchor (a Date: when the plan
// started), monthlyCalls }.  The period is the anchor written after
// 'month@': a plan started on January 31 at 10:00 UTC counts from then to
// February 28 (29 in leap years) at 10:00, then to March 31, April 30, ...
export function billingPeriod(subscription) {
  return `month@${subscription.anchor.toISOString()}`;
}

// Records units of API use when the month has room; returns { allowed,
// used, remaining, periodEnd }.  Atomic: concurrent calls never pass the
// quota.
export async function useApi(subscription, units = 1) {
  const { rows: [r] } = await pool.query(
    `SELECT allowed, used, remaining, period_end
       FROM entitlock.record_usage_if_under_limit($1, 'api_calls', $2, $3, $4)`,
    [`customer:${subscription.customerId}`, units,
     subscription.monthlyCalls, billingPeriod(subscription)]);
  return { allowed: r.allowed, used: Number(r.used),
           remaining: Number(r.remaining), periodEnd: r.period_end };
}
// endregion

// region plan-change
// A plan change gives a fresh allowance for the rest of the month: the
// month's usage is reset in the transaction that changes the plan, so a
// change that fails keeps the usage.  applyChange(client) is the
// application's own write (the new plan).  Returns the usage removed.
export async function changePlan(subscription, applyChange) {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await applyChange(client);
    const { rows: [{ removed }] } = await client.query(
      "SELECT entitlock.reset_usage($1, 'api_calls', $2) AS removed",
      [`customer:${subscription.customerId}`, billingPeriod(subscription)]);
    await client.query('COMMIT');
    return Number(removed);
  } catch (err) {
    await client.query('ROLLBACK');
    throw err;
  } finally {
    client.release();
  }
}
// endregion
