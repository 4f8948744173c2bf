/**
 * Request ids (`x-request-id`): the sender's own when it is a sane token
 * (printable ASCII, at most 128 characters), else a new random UUID (RFC 9562
 * version 4). The UUID is formatted from a pool of random bytes straight into a
 * small buffer and read as one string: `crypto.randomUUID()` builds its string
 * from 20 pieces, which made it one of the larger sources of garbage per
 * proxied request.
 */
import { randomFillSync } from 'node:crypto';

const REQUEST_ID = /^[\x21-\x7e]{1,128}$/;

export function requestIdOf(value: string | string[] | undefined): string {
  return typeof value === 'string' && REQUEST_ID.test(value) ? value : newRequestId();
}

const UUID_BYTES = 16;
const pool = Buffer.allocUnsafe(UUID_BYTES * 256);
let offset = pool.length;
const HEX = Buffer.from('0123456789abcdef', 'latin1');
const text = Buffer.allocUnsafe(36);
const DASH = 0x2d;

/** A random version 4 UUID, lower-case hex with dashes. */
export function newRequestId(): string {
  if (offset === pool.length) {
    randomFillSync(pool);
    offset = 0;
  }
  const start = offset;
  offset += UUID_BYTES;
  pool[start + 6] = (pool[start + 6]! & 0x0f) | 0x40; // version 4
  pool[start + 8] = (pool[start + 8]! & 0x3f) | 0x80; // variant 10
  let j = 0;
  for (let i = 0; i < UUID_BYTES; i++) {
    if (i === 4 || i === 6 || i === 8 || i === 10) text[j++] = DASH;
    const byte = pool[start + i]!;
    text[j++] = HEX[byte >> 4]!;
    text[j++] = HEX[byte & 0x0f]!;
  }
  return text.toString('latin1', 0, 36);
}
