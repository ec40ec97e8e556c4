// entitlock.key on the client: XXH64 (seed 0) of the name's UTF-8 bytes,
// read as a signed 64-bit integer, exactly as the SQL function returns it.
// A pair key hashes realm, one zero byte, entity.
const P1 = 0x9e3779b185ebca87n;
const P2 = 0xc2b2ae3d27d4eb4fn;
const P3 = 0x165667b19e3779f9n;
const P4 = 0x85ebca77c2b2ae63n;
const P5 = 0x27d4eb2f165667c5n;

const u64 = (x) => BigInt.asUintN(64, x);
const rotl = (x, r) => u64((x << r) | (x >> (64n - r)));
const round = (acc, lane) => u64(rotl(u64(acc + lane * P2), 31n) * P1);
const merge = (h, acc) => u64((h ^ round(0n, acc)) * P1 + P4);

export function xxh64(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const n = bytes.length;
  let i = 0;
  let h;
  if (n >= 32) {
    let v = [u64(P1 + P2), P2, 0n, u64(-P1)];
    for (; i + 32 <= n; i += 32)
      v = v.map((acc, k) => round(acc, view.getBigUint64(i + 8 * k, true)));
    h = u64(rotl(v[0], 1n) + rotl(v[1], 7n) + rotl(v[2], 12n) + rotl(v[3], 18n));
    h = v.reduce(merge, h);
  } else {
    h = P5;
  }
  h = u64(h + BigInt(n));
  for (; i + 8 <= n; i += 8)
    h = u64(rotl(h ^ round(0n, view.getBigUint64(i, true)), 27n) * P1 + P4);
  if (i + 4 <= n) {
    h = u64(rotl(h ^ u64(BigInt(view.getUint32(i, true)) * P1), 23n) * P2 + P3);
    i += 4;
  }
  for (; i < n; i++)
    h = u64(rotl(h ^ u64(BigInt(bytes[i]) * P5), 11n) * P1);
  h = u64((h ^ (h >> 33n)) * P2);
  h = u64((h ^ (h >> 29n)) * P3);
  return h ^ (h >> 32n);
}

const utf8 = new TextEncoder();

// entitlockKey('workspace:42') === 9096947617580596124n
// entitlockKey('workspace:42', 'seats') === 4465559587734303253n
export function entitlockKey(name, entity) {
  if (name === '' || entity === '')
    throw new RangeError('entitlock key names must not be empty');
  if (`${name}${entity ?? ''}`.includes('\0'))
    throw new RangeError('entitlock key names cannot contain a zero byte');
  const bytes = entity === undefined
    ? utf8.encode(name)
    : utf8.encode(`${name}\0${entity}`);
  return BigInt.asIntN(64, xxh64(bytes));
}
