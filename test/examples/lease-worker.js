import os from 'node:os';

// Runs work(fencing, signal) while this process holds the lease `name`,
// renewing it every third of its ttl (in seconds).  signal aborts when the
// lease is lost, or when no renewal got through before it would expire;
// the work's writes carry the fencing number, so a resource can refuse a
// holder that lost it.  Returns false, without running work, when another
// holder keeps the lease for longer than `wait` seconds.
export async function runExclusively(pool, name, work, { ttl = 30, wait = 0 } = {}) {
  const { rows } = await pool.query(
    `SELECT token, fencing::text AS fencing
       FROM entitlock.lease_acquire($1, make_interval(secs => $2), $3,
                                    make_interval(secs => $4))`,
    [name, ttl, `${os.hostname()}:${process.pid}`, wait]);
  if (rows.length === 0) return false;           // held by someone else
  const { token, fencing } = rows[0];
  let expires = Date.now() + ttl * 1000;
  const lost = new AbortController();
  const heartbeat = setInterval(async () => {
    if (Date.now() >= expires) return lost.abort();  // no renewal in time
    const sent = Date.now();
    try {
      const { rows: [r] } = await pool.query(
        'SELECT entitlock.lease_renew($1, $2, make_interval(secs => $3)) AS ok',
        [name, token, ttl]);
      if (r.ok) expires = sent + ttl * 1000;
      else lost.abort();                             // taken over: stop
    } catch { /* the next beat tries again */ }
  }, ttl * 1000 / 3);
  try {
    await work(BigInt(fencing), lost.signal);
  } finally {
    clearInterval(heartbeat);
    await pool.query('SELECT entitlock.lease_release($1, $2)', [name, token]);
  }
  return true;
}
