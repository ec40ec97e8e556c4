// billing-day.js: a monthly quota anchored on the customer's billing day
// holds under concurrency, its periods clamp to short months, and a plan
// change resets the month in its own transaction.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import pg from 'pg';
import { billingPeriod, changePlan, pool, useApi } from './billing-day.js';

const db = new pg.Pool();
after(() => Promise.all([db.end(), pool.end()]));

const customer = () => 1 + Math.floor(Math.random() * 1_000_000_000);
const jan31 = new Date('2026-01-31T10:00:00Z');

test('the billing month runs from the anchor, clamped to short months', async () => {
  const period = billingPeriod({ anchor: jan31 });
  const { rows } = await db.query(
    `SELECT at::text, to_char(period_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') AS start,
            to_char(period_end AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') AS end
       FROM unnest($2::timestamptz[]) AS at, entitlock.usage_period($1, at)
      ORDER BY at`,
    [period, ['2026-02-15T00:00:00Z', '2026-03-01T00:00:00Z', '2028-03-30T00:00:00Z']]);
  assert.deepEqual(rows.map((r) => [r.start, r.end]), [
    ['2026-01-31 10:00', '2026-02-28 10:00'],
    ['2026-02-28 10:00', '2026-03-31 10:00'],
    ['2028-02-29 10:00', '2028-03-31 10:00'],
  ]);
});

test('30 concurrent calls against a quota of 12: exactly 12 allowed', async () => {
  const sub = { customerId: customer(), anchor: jan31, monthlyCalls: 12 };
  const answers = await Promise.all(Array.from({ length: 30 }, () => useApi(sub)));
  assert.equal(answers.filter((a) => a.allowed).length, 12);
  assert.ok(answers.every((a) => a.used <= 12));
  const { rows: [p] } = await db.query(
    'SELECT period_end FROM entitlock.usage_period($1, now())', [billingPeriod(sub)]);
  assert.deepEqual(answers[0].periodEnd, p.period_end);
  // The same period written with another offset is the same meter.
  const { rows: [u] } = await db.query(
    "SELECT entitlock.usage($1, 'api_calls', 'month@2026-01-31 05:00-05') AS used",
    [`customer:${sub.customerId}`]);
  assert.equal(Number(u.used), 12);
});

test('a plan change resets the month; a failed one keeps the usage', async () => {
  const sub = { customerId: customer(), anchor: jan31, monthlyCalls: 5 };
  for (let i = 0; i < 5; i++) assert.equal((await useApi(sub)).allowed, true);
  assert.equal((await useApi(sub)).allowed, false);

  await assert.rejects(changePlan(sub, async () => { throw new Error('payment failed'); }));
  assert.equal((await useApi(sub)).allowed, false, 'the failed change reset nothing');

  const removed = await changePlan({ ...sub }, async (client) => {
    await client.query('SELECT 1');   // the application's plan update
  });
  assert.equal(removed, 5);
  const bigger = { ...sub, monthlyCalls: 50 };
  assert.deepEqual(
    (({ allowed, used, remaining }) => ({ allowed, used, remaining }))(await useApi(bigger, 10)),
    { allowed: true, used: 10, remaining: 40 });
});
