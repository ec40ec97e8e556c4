// Runs work(client, slot) in a transaction that holds one of `limit`
// export slots of the organisation: at most `limit` exports per
// organisation run at once, and the others wait their turn, in about the
// order they asked.  Returns false, without running work, when no slot
// frees within `wait` seconds.  The slot goes with the transaction: a
// crash or a dropped connection gives it back.
export async function withExportSlot(pool, org, limit, work, { wait = 30 } = {}) {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const { rows: [{ slot }] } = await client.query(
      'SELECT entitlock.lock_slot($1, $2, make_interval(secs => $3)) AS slot',
      [`exports:${org}`, limit, wait]);
    if (slot === null) {                     // every slot stayed taken
      await client.query('ROLLBACK');
      return false;
    }
    await work(client, slot);
    await client.query('COMMIT');
    return true;
  } catch (err) {
    await client.query('ROLLBACK');
    throw err;
  } finally {
    client.release();
  }
}
