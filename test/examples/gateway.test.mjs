// gateway.js: exactly the limit passes under concurrency, the rest get 429
// with a Retry-After, a retry with the same Idempotency-Key counts once, a
// failed request gives its units back; rate_limit answers 429 past its rate.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { pool, rateLimit, withApiLimits } from './gateway.js';

const db = new pg.Pool();
after(() => Promise.all([db.end(), pool.end()]));

// The minute limit is a calendar minute: start well away from its end.
before(async () => {
  const { rows: [t] } = await db.query(
    'SELECT extract(second FROM clock_timestamp())::float8 AS s');
  if (t.s > 55) await sleep((60.2 - t.s) * 1000);
});

const user = () => `${Math.floor(Math.random() * 1e9)}`;
const request = (userId, key) =>
  ({ userId, orgId: `org-of-${userId}`, headers: key ? { 'idempotency-key': key } : {} });
const ok = async () => ({ status: 200 });
async function usage(subject, period) {
  const { rows: [r] } = await db.query(
    "SELECT entitlock.usage($1, 'api', $2)::int AS n", [subject, period]);
  return r.n;
}

test('80 concurrent requests against 60 a minute: 60 pass, 20 get 429', async () => {
  const userId = user();
  const answers = await Promise.all(Array.from({ length: 80 }, (_, i) =>
    withApiLimits(request(userId, `r${i}`), ok)));
  const limited = answers.filter((a) => a.status === 429);
  assert.equal(answers.filter((a) => a.status === 200).length, 60);
  assert.equal(limited.length, 20);
  for (const a of limited) {
    const retryAfter = Number(a.headers['Retry-After']);
    assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 60,
      `Retry-After ${a.headers['Retry-After']}`);
    assert.equal(a.body.limit, 'minute');
  }
  assert.equal(await usage(`user:${userId}`, 'minute'), 60);
  assert.equal(await usage(`user:${userId}`, 'day'), 60, 'denials burn no daily quota');
  assert.equal(await usage(`org:org-of-${userId}`, 'month'), 60);
});

test('a retried request with the same Idempotency-Key is counted once', async () => {
  const userId = user();
  const answers = await Promise.all(Array.from({ length: 5 }, () =>
    withApiLimits(request(userId, 'req-5e1b'), ok)));
  answers.push(await withApiLimits(request(userId, 'req-5e1b'), ok));
  assert.ok(answers.every((a) => a.status === 200));
  assert.equal(await usage(`user:${userId}`, 'minute'), 1);
  await withApiLimits(request(userId, 'req-other'), ok);
  await withApiLimits(request(userId), ok);
  assert.equal(await usage(`user:${userId}`, 'minute'), 3);
});

test('a request that fails gives its units back', async () => {
  const userId = user();
  await assert.rejects(withApiLimits(request(userId, 'k'), async (client) => {
    await client.query('SELECT 1/0');
  }), { code: '22012' });
  assert.equal(await usage(`user:${userId}`, 'minute'), 0);
});

test('rate_limit: past 100 a second, 429 with Retry-After', async () => {
  const apiKey = randomUUID();
  const started = Date.now();
  const answers = await Promise.all(Array.from({ length: 300 }, () => rateLimit(apiKey)));
  const elapsed = Date.now() - started;
  const passed = answers.filter((a) => a === null).length;
  // 100 at once, plus one per 10 ms that the calls took.
  assert.ok(passed >= 100 && passed <= 101 + elapsed / 10,
    `${passed} passed in ${elapsed} ms`);
  assert.ok(passed < 300, 'some were limited');
  for (const a of answers.filter(Boolean)) {
    assert.equal(a.status, 429);
    assert.equal(a.headers['Retry-After'], '1');
  }
  await sleep(1000);
  const again = await Promise.all(Array.from({ length: 100 }, () => rateLimit(apiKey)));
  assert.ok(again.every((a) => a === null), 'the whole burst again after a second');
});
